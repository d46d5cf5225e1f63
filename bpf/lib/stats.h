/* Per-CPU counters: per frontend, and per reason a packet was not balanced. */
#ifndef XLB_STATS_H
#define XLB_STATS_H

/* Counts one packet under reason r. */
static __always_inline void xlb_count_reason(__u32 r)
{
	__u64 *v = xlb_reasons.lookup(&r);
	if (v)
		*v += 1;
}

/* Counts one packet of len bytes on frontend id; new_flow and drop add to their counters. */
static __always_inline void xlb_count_svc(__u32 id, __u32 len, int new_flow, int drop)
{
	struct xlb_svc_stats *s = xlb_stats.lookup(&id);
	if (!s)
		return;
	s->packets += 1;
	s->bytes += len;
	s->new_flows += new_flow;
	s->drops += drop;
}

#endif
