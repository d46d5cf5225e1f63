/* Token buckets: at most rate a second, with as many in a burst (per CPU: each program's
 * bucket lives in a per-CPU array of its own). */
#ifndef XLB_RATELIMIT_H
#define XLB_RATELIMIT_H

struct xlb_bucket {
	__u64 stamp;  /* coarse ns of the last refill */
	__u64 tokens;
};

/* Whether one more may go now (and takes its token). */
static __always_inline int xlb_bucket_take(struct xlb_bucket *b, __u64 now, __u64 rate)
{
	__u64 earned = (now - b->stamp) / (XLB_NS_PER_SEC / rate);
	if (earned) {
		b->tokens = b->tokens + earned > rate ? rate : b->tokens + earned;
		b->stamp = now;
	}
	if (!b->tokens)
		return 0;
	b->tokens--;
	return 1;
}

#endif
