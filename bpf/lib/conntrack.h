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

/* The entry under k, established (xlb_ct) or not yet answered (xlb_ct_new, then *pending
 * is 1), or NULL. */
static __always_inline struct xlb_ct *xlb_ct_find(struct xlb_ct_key *k, int *pending)
{
	struct xlb_ct *ct = xlb_ct.lookup(k);
	*pending = 0;
	if (ct)
		return ct;
	ct = xlb_ct_new.lookup(k);
	*pending = ct != 0;
	return ct;
}

/* A new flow's entry being built, zeroed: xdp_lb's stack (BPF's 512 bytes) has no room for
 * it. Per CPU, and XDP runs to its end on one. */
BPF_PERCPU_ARRAY(xlb_ct_scratch_map, struct xlb_ct, 1);
static __always_inline struct xlb_ct *xlb_ct_scratch(void)
{
	__u32 zero = 0;
	struct xlb_ct *v = xlb_ct_scratch_map.lookup(&zero);
	if (v)
		__builtin_memset(v, 0, sizeof(*v));
	return v;
}

/* The config (timeouts, SNAT ports, node addresses), or NULL before the agent wrote it. */
static __always_inline struct xlb_config *xlb_config_get(void)
{
	__u32 zero = 0;
	return xlb_config.lookup(&zero);
}

/* How long a flow in ct's state lives without a packet (ns): xlb_config's, else the default. */
static __always_inline __u64 xlb_ct_timeout(const struct xlb_ct *ct, __u8 proto,
					    const struct xlb_config *cfg)
{
	__u32 t, fallback;
	if (proto == IPPROTO_TCP) {
		if (ct->flags & XLB_CT_F_CLOSING) {
			t = XLB_CT_T_TCP_CLOSE;
			fallback = XLB_CT_DEFAULT_TCP_CLOSE;
		} else if (ct->state == XLB_CT_NEW) {
			t = XLB_CT_T_TCP_NEW;
			fallback = XLB_CT_DEFAULT_TCP_NEW;
		} else if (ct->seen & (XLB_CT_S_FIN_FWD | XLB_CT_S_FIN_REV)) {
			t = XLB_CT_T_TCP_CLOSE_WAIT;
			fallback = XLB_CT_DEFAULT_TCP_CLOSE_WAIT;
		} else {
			t = XLB_CT_T_TCP_EST;
			fallback = XLB_CT_DEFAULT_TCP_EST;
		}
	} else if (ct->state == XLB_CT_NEW) {
		t = XLB_CT_T_UDP;
		fallback = XLB_CT_DEFAULT_UDP;
	} else {
		t = XLB_CT_T_UDP_STREAM;
		fallback = XLB_CT_DEFAULT_UDP_STREAM;
	}
	__u32 seconds = cfg ? cfg->ct_timeout[t % XLB_CT_TIMEOUTS] : 0;
	return (__u64)(seconds ? seconds : fallback) * XLB_NS_PER_SEC;
}

/* Whether a conntrack entry is over: no packet for its state's timeout. An expired entry
 * holds nothing: its tuple (a SNAT port) may serve a new flow, and a packet that finds it is
 * handled as if it were not there. */
static __always_inline int xlb_ct_expired(const struct xlb_ct *ct, __u8 proto, __u64 now,
					  const struct xlb_config *cfg)
{
	return now > ct->stamp && now - ct->stamp > xlb_ct_timeout(ct, proto, cfg);
}

/* What a packet of a tracked flow says about the flow, as netfilter reads it: a completed
 * handshake or a UDP reply establishes it (and moves both entries from xlb_ct_new to xlb_ct:
 * pending says where ct is); a FIN each way, or a RST, closes it, but a RST after which both
 * sides still speak was not the flow's end (a blind forgery); any packet keeps it alive. The
 * flow's two entries are kept alike (the twin is written only when something changed or a
 * second passed). now: the coarse clock. Callers read what they need of ct first: a moved
 * entry is gone from where ct points. */
static __always_inline void xlb_ct_observe(struct xlb_ct *ct, int pending, const struct xlb_pkt *p,
					   __u64 now)
{
	int reply = ct->flags & XLB_CT_F_REVERSE;
	/* a DSR flow's entry on its balancing node: its replies never come this way */
	int lone = ct->flags & XLB_CT_F_DSR;
	__u8 state = ct->state, seen = ct->seen;
	__u16 closing = ct->flags & XLB_CT_F_CLOSING;
	if (p->proto == IPPROTO_TCP) {
		__u8 tf = p->tcp_flags;
		/* as netfilter's SYN_RECV: a SYN-ACK alone does not establish (a spoofed SYN is
		 * answered too); the client's ACK to it does, and so does a backend speaking on a
		 * flow picked up mid-stream */
		if (reply && !(tf & XLB_TCP_RST)) {
			if (tf & XLB_TCP_SYN)
				seen |= XLB_CT_S_SYNACK;
			else
				state = XLB_CT_EST;
		} else if (!reply && ((seen & XLB_CT_S_SYNACK) || lone) && (tf & XLB_TCP_ACK) &&
			   !(tf & (XLB_TCP_SYN | XLB_TCP_RST))) {
			state = XLB_CT_EST; /* (a lone DSR entry never sees the SYN-ACK: the ACK) */
		}
		if (tf & XLB_TCP_RST) {
			seen = (seen | XLB_CT_S_RST) & ~(XLB_CT_S_AFTER_FWD | XLB_CT_S_AFTER_REV);
		} else if (seen & XLB_CT_S_RST) {
			seen |= reply ? XLB_CT_S_AFTER_REV : XLB_CT_S_AFTER_FWD;
			if ((seen & (XLB_CT_S_AFTER_FWD | XLB_CT_S_AFTER_REV)) ==
			    (XLB_CT_S_AFTER_FWD | XLB_CT_S_AFTER_REV))
				seen &= ~(XLB_CT_S_RST | XLB_CT_S_AFTER_FWD | XLB_CT_S_AFTER_REV);
		}
		if (tf & XLB_TCP_FIN)
			seen |= reply ? XLB_CT_S_FIN_REV : XLB_CT_S_FIN_FWD;
		int fins = (seen & (XLB_CT_S_FIN_FWD | XLB_CT_S_FIN_REV)) ==
			   (XLB_CT_S_FIN_FWD | XLB_CT_S_FIN_REV);
		closing = (fins || (seen & XLB_CT_S_RST)) ? XLB_CT_F_CLOSING : 0;
	} else if (reply || lone) { /* (a lone DSR flow's: its client's second datagram) */
		state = XLB_CT_EST;
	}
	int changed = state != ct->state || seen != ct->seen ||
		      closing != (ct->flags & XLB_CT_F_CLOSING);
	/* an unestablished flow lives by its client's packets: a backend repeating its SYN-ACK
	 * to a spoofed source (for up to a minute) must not keep the flow's SNAT port */
	if (!changed && (now - ct->stamp < XLB_CT_REFRESH || (reply && state == XLB_CT_NEW)))
		return;
	ct->state = state;
	ct->seen = seen;
	ct->flags = (ct->flags & ~XLB_CT_F_CLOSING) | closing;
	ct->stamp = now;
	struct xlb_ct_key k = {};
	xlb_ct_twin_key(ct, p->proto, &k);
	int twin_pending = 0;
	struct xlb_ct *twin = lone ? 0 : xlb_ct_find(&k, &twin_pending);
	if (twin) {
		twin->state = state;
		twin->seen = seen;
		twin->flags = (twin->flags & ~XLB_CT_F_CLOSING) | closing;
		twin->stamp = now;
	}
	if (lone && pending && state == XLB_CT_EST) { /* it has no twin to move first */
		struct xlb_ct_key own = {};
		xlb_ct_key_of(p, &own);
		if (!xlb_ct.update(&own, ct))
			xlb_ct_new.delete(&own);
		return;
	}
	if (!pending || state != XLB_CT_EST || !twin)
		return; /* (a lone entry, its twin evicted, stays where it is until it expires) */
	/* answered: both entries move to the established table, the twin first, so that a
	 * packet of either direction always finds its entry in one of the two */
	struct xlb_ct_key own = {};
	xlb_ct_twin_key(twin, p->proto, &own);
	/* (straight from the old table's element: no copy on the stack, which has no room) */
	if (twin_pending && !xlb_ct.update(&k, twin))
		xlb_ct_new.delete(&k);
	if (!xlb_ct.update(&own, ct))
		xlb_ct_new.delete(&own);
}

/* Deletes a flow's two entries from whichever table holds them: ct is one of them, under
 * key (an expired or superseded flow whose tuple a new one takes). */
static __always_inline void xlb_ct_forget(struct xlb_ct_key *key, const struct xlb_ct *ct,
					  __u8 proto)
{
	struct xlb_ct_key twin = {};
	xlb_ct_twin_key(ct, proto, &twin); /* before the deletes: ct may be freed by them */
	xlb_ct.delete(&twin);
	xlb_ct_new.delete(&twin);
	xlb_ct.delete(key);
	xlb_ct_new.delete(key);
}

/* Records a new flow, not answered yet (in xlb_ct_new): val under key (the client's tuple),
 * then the matching reverse entry under the backend's reply tuple. key and val are turned into the reverse entry in place
 * (their forward contents are gone afterwards): no second pair on the stack. 0, or -1 if the
 * table refused (LRU: practically never). */
static __always_inline int xlb_ct_create(struct xlb_ct_key *key, struct xlb_ct *val)
{
	if (xlb_ct_new.update(key, val))
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
	/* a live flow's reply entry under this tuple made xdp_lb remap this flow's port
	 * (xlb_reply_clash); one left here is over, and would be found first in the
	 * established table and turn this flow's replies into that one's */
	xlb_ct.delete(key);
	return xlb_ct_new.update(key, val) ? -1 : 0;
}

/* Records a DSR flow on its balancing node: val under key (the client's tuple), alone and
 * not answered yet (its replies never come this way: one insert). 0, or -1. */
static __always_inline int xlb_ct_create_lone(struct xlb_ct_key *key, struct xlb_ct *val)
{
	return xlb_ct_new.update(key, val) ? -1 : 0;
}

#endif
