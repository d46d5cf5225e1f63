/* Fragments: a datagram's later fragments follow its first (maps.h: xlb_frags). */
#ifndef XLB_FRAG_H
#define XLB_FRAG_H

static __always_inline void xlb_frag_key_of(const struct xlb_pkt *p, struct xlb_frag_key *k)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->id = p->frag_id;
	k->proto = p->proto;
}

/* Keeps a first fragment's ports (p as it arrived) for the rest of its datagram. */
static __always_inline void xlb_frag_note(const struct xlb_pkt *p, __u64 now)
{
	if (p->frag != XLB_FRAG_FIRST)
		return;
	struct xlb_frag_key k = {};
	xlb_frag_key_of(p, &k);
	struct xlb_frag v = {.sport = p->sport, .dport = p->dport, .stamp = now};
	xlb_frags.update(&k, &v);
}

/* Gives a later fragment (of TCP or UDP) its datagram's ports: 0, or -1 when its first
 * fragment was not seen here, or too long ago (then it is left to the stack). */
static __always_inline int xlb_frag_ports(struct xlb_pkt *p, __u64 now)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return -1;
	struct xlb_frag_key k = {};
	xlb_frag_key_of(p, &k);
	struct xlb_frag *f = xlb_frags.lookup(&k);
	if (!f || now - f->stamp > XLB_FRAG_TIMEOUT)
		return -1;
	p->sport = f->sport;
	p->dport = f->dport;
	return 0;
}

#endif
