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
