/* Backend selection for a new flow: Maglev ring, source hash, or random over the slots. */
#ifndef XLB_MAGLEV_H
#define XLB_MAGLEV_H

/* One murmur3 round: mixes word k into h. */
static __always_inline __u32 xlb_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

/* murmur3's finaliser: every input bit affects every output bit. */
static __always_inline __u32 xlb_fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The seed of the flow and client hashes when the agent gave none: public, so that anyone
 * could craft flows that pile onto one backend or one run of SNAT ports; the agent writes
 * the cluster's own into xlb_config.hash_seed (the same on every node, so that every node
 * picks alike). */
#define XLB_HASH_SEED 0x786c6221

/* The seed to hash with: the cluster's, else the default. */
static __always_inline __u32 xlb_hash_seed(const struct xlb_config *cfg)
{
	return cfg && cfg->hash_seed ? cfg->hash_seed : XLB_HASH_SEED;
}

/* Hash of a client address: stable for the client, whatever its ports. */
static __always_inline __u32 xlb_hash_addr(const union xlb_addr *a, __u32 seed)
{
	__u32 h = seed;
	h = xlb_mix(h, a->u32[0]);
	h = xlb_mix(h, a->u32[1]);
	h = xlb_mix(h, a->u32[2]);
	h = xlb_mix(h, a->u32[3]);
	return xlb_fmix(h ^ 16);
}

/* Hash of a flow's 5-tuple as the client sent it (needs parse.h's struct xlb_pkt). */
static __always_inline __u32 xlb_hash_flow(const struct xlb_pkt *p, __u32 seed)
{
	__u32 h = seed;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		h = xlb_mix(h, p->saddr.u32[i]);
		h = xlb_mix(h, p->daddr.u32[i]);
	}
	h = xlb_mix(h, ((__u32)p->sport << 16) | p->dport);
	h = xlb_mix(h, p->proto);
	return xlb_fmix(h ^ 37);
}

/* Hash of a 64-bit identity (a socket or network namespace cookie). */
static __always_inline __u32 xlb_hash_u64(__u64 v)
{
	__u32 h = xlb_mix(XLB_HASH_SEED, (__u32)v);
	return xlb_fmix(xlb_mix(h, (__u32)(v >> 32)) ^ 8);
}

/* The backend id at flow_hash in the group's Maglev table (maps.h's xlb_maglev); 0 when the
 * group has none yet (the agent builds new tables within a time budget a sync, and an
 * upgraded datapath starts without them). */
static __always_inline __u32 xlb_maglev_pick(__u32 group, __u32 flow_hash)
{
	void *table = xlb_maglev.lookup(&group);
	if (!table)
		return 0;
	__u32 row = 0;
	struct xlb_maglev_row *head = bpf_map_lookup_elem(table, &row);
	if (!head || !head->id[0])
		return 0;
	__u32 at = flow_hash % head->id[0];
	row = 1 + at / XLB_MAGLEV_LANES;
	struct xlb_maglev_row *r = bpf_map_lookup_elem(table, &row);
	return r ? r->id[at % XLB_MAGLEV_LANES] : 0;
}

/* The backend id for a new flow to svc (svc->count > 0), or 0 when none is found.
 * flow_hash spreads flows over the Maglev table; client_hash keeps a client on one slot
 * (source-hash). Both are the same on every node for the same flow and client. A Maglev
 * group without a table yet picks its slot by flow hash (the same choice on every node). */
static __always_inline __u32 xlb_select(const struct xlb_svc *svc, __u32 flow_hash,
					__u32 client_hash)
{
	struct xlb_slot_key k = {.group = svc->group};
	if (svc->algorithm == XLB_ALG_MAGLEV) {
		__u32 id = xlb_maglev_pick(svc->group, flow_hash);
		if (id)
			return id;
		k.slot = 1 + flow_hash % svc->count;
	} else if (svc->algorithm == XLB_ALG_SOURCE_HASH) {
		k.slot = 1 + client_hash % svc->count;
	} else {
		k.slot = 1 + bpf_get_prandom_u32() % svc->count;
	}
	__u32 *id = xlb_slots.lookup(&k);
	return id ? *id : 0;
}

#endif
