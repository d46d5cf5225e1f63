/* What the kernel's maps cost on this machine, beside xlb's paths in the same run: an empty
 * program (the harness), one lookup that hits an LRU hash of xlb's conntrack key and value
 * sizes, and one insert of a new key into it and into a plain hash. A new flow through
 * xlb_lb makes two such inserts (forward and reverse conntrack entries): where one insert
 * costs more than the new-flow target, the target is out of reach of any design that
 * records the flow. */
#include <uapi/linux/bpf.h>

struct floor_key {
	__u64 word[5]; /* 40 bytes, as struct xlb_ct_key */
};

struct floor_value {
	__u64 word[7]; /* 56 bytes, as struct xlb_ct */
};

BPF_TABLE("lru_hash", struct floor_key, struct floor_value, floor_lru, 1 << 20);
BPF_TABLE("hash", struct floor_key, struct floor_value, floor_hash, 1 << 20);
BPF_PERCPU_ARRAY(floor_next, __u64, 1);

/* A key no run used before (a per-CPU counter in the first word). */
static __always_inline void floor_fresh_key(struct floor_key *k)
{
	__u32 zero = 0;
	__u64 *n = floor_next.lookup(&zero);
	if (n) {
		*n += 1;
		k->word[0] = *n;
	}
}

int floor_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

int floor_lru_hit(struct xdp_md *ctx)
{
	struct floor_key k = {};
	return floor_lru.lookup(&k) ? XDP_PASS : XDP_DROP;
}

int floor_lru_insert(struct xdp_md *ctx)
{
	struct floor_key k = {};
	struct floor_value v = {};
	floor_fresh_key(&k);
	return floor_lru.update(&k, &v) ? XDP_DROP : XDP_PASS;
}

int floor_hash_insert(struct xdp_md *ctx)
{
	struct floor_key k = {};
	struct floor_value v = {};
	floor_fresh_key(&k);
	return floor_hash.update(&k, &v) ? XDP_DROP : XDP_PASS;
}
