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

/* The backend with this id, or NULL when there is none (an empty array slot). */
static __always_inline struct xlb_backend *xlb_backend_get(__u32 id)
{
	struct xlb_backend *be = xlb_backends.lookup(&id);
	return be && be->port ? be : 0;
}

/* The key of an entry's twin (the other direction): its own rewrite, reversed. */
static __always_inline void xlb_ct_twin_key(const struct xlb_ct *ct, __u8 proto,
					    struct xlb_ct_key *k)
{
	k->saddr = ct->nat_daddr;
	k->daddr = ct->nat_saddr;
	k->sport = ct->nat_dport;
	k->dport = ct->nat_sport;
	k->proto = proto;
}

/* Notes what a packet of a tracked flow says about the flow's life: a TCP FIN or RST marks
 * both directions closing (their SNAT port is free again after XLB_CT_CLOSED_REUSE); UDP
 * refreshes the idle stamp at most once a second. now: the coarse clock, which the caller
 * reads only when a packet needs it (UDP, FIN/RST, or a forward that consults the FIB cache). */
static __always_inline void xlb_ct_observe(struct xlb_ct *ct, const struct xlb_pkt *p, __u64 now)
{
	if (p->proto == IPPROTO_TCP) {
		if (!(p->tcp_flags & (XLB_TCP_FIN | XLB_TCP_RST)) || (ct->flags & XLB_CT_F_CLOSING))
			return;
		ct->flags |= XLB_CT_F_CLOSING;
		ct->stamp = now;
		struct xlb_ct_key k = {};
		xlb_ct_twin_key(ct, p->proto, &k);
		struct xlb_ct *twin = xlb_ct.lookup(&k);
		if (twin) {
			twin->flags |= XLB_CT_F_CLOSING;
			twin->stamp = now;
		}
		return;
	}
	if (now - ct->stamp > XLB_NS_PER_SEC)
		ct->stamp = now;
}

/* Whether a conntrack entry no longer holds its tuple (its SNAT port may be taken). */
static __always_inline int xlb_ct_expired(const struct xlb_ct *ct, __u8 proto, __u64 now)
{
	if (ct->flags & XLB_CT_F_CLOSING)
		return now - ct->stamp > XLB_CT_CLOSED_REUSE;
	return proto == IPPROTO_UDP && now - ct->stamp > XLB_CT_UDP_IDLE;
}

/* Records a new flow: val under key (the client's tuple), then the matching reverse entry
 * under the backend's reply tuple. key and val are turned into the reverse entry in place
 * (their forward contents are gone afterwards): no second pair on the stack. 0, or -1 if the
 * table refused (LRU: practically never). */
static __always_inline int xlb_ct_create(struct xlb_ct_key *key, struct xlb_ct *val)
{
	if (xlb_ct.update(key, val))
		return -1;
	/* the reply comes from the backend to whoever it saw as the client, and must look like
	 * it comes from the frontend the client addressed */
	union xlb_addr tmp = key->saddr;
	__be16 tmp_port = key->sport;
	key->saddr = val->nat_daddr;
	key->sport = val->nat_dport;
	val->nat_daddr = tmp;
	val->nat_dport = tmp_port;
	tmp = key->daddr;
	tmp_port = key->dport;
	key->daddr = val->nat_saddr;
	key->dport = val->nat_sport;
	val->nat_saddr = tmp;
	val->nat_sport = tmp_port;
	val->flags |= XLB_CT_F_REVERSE;
	return xlb_ct.update(key, val) ? -1 : 0;
}

#endif
