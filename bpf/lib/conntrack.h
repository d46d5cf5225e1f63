/* Connection tracking for traffic from outside: a flow keeps its backend. */
#ifndef XLB_CONNTRACK_H
#define XLB_CONNTRACK_H

/* The conntrack key of p's tuple as it is now. */
static __always_inline void xlb_ct_key_of(const struct xlb_pkt *p, struct xlb_ct_key *k)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
}

/* Marks a hit as seen now, writing at most once a second to keep the cache line clean. */
static __always_inline void xlb_ct_touch(struct xlb_ct *ct, __u64 now)
{
	if (now - ct->last_seen > XLB_NS_PER_SEC)
		ct->last_seen = now;
}

/* Records a new flow: fwd_val under fwd (the client's tuple) and the matching reverse entry under
 * the backend's reply tuple. 0, or -1 if the table refused (LRU: practically never). */
static __always_inline int xlb_ct_create(struct xlb_ct_key *fwd, struct xlb_ct *fwd_val)
{
	if (xlb_ct.update(fwd, fwd_val))
		return -1;

	/* the reply comes from the backend to whoever it saw as the client, and must look like
	 * it comes from the frontend the client addressed */
	struct xlb_ct_key rev = {};
	rev.saddr = fwd_val->nat_daddr;
	rev.daddr = fwd_val->nat_saddr;
	rev.sport = fwd_val->nat_dport;
	rev.dport = fwd_val->nat_sport;
	rev.proto = fwd->proto;
	struct xlb_ct r = {};
	r.nat_saddr = fwd->daddr;
	r.nat_daddr = fwd->saddr;
	r.nat_sport = fwd->dport;
	r.nat_dport = fwd->sport;
	r.flags = fwd_val->flags | XLB_CT_F_REVERSE;
	r.backend = fwd_val->backend;
	r.svc = fwd_val->svc;
	r.last_seen = fwd_val->last_seen;
	return xlb_ct.update(&rev, &r) ? -1 : 0;
}

#endif
