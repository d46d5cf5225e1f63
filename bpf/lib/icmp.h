/* ICMP errors of tracked flows (RFC 792, RFC 4443 2.4): the quoted packet is one xlb
 * rewrote, so the error is rewritten back to what its flow's other side knows, as netfilter's
 * nf_nat_icmp_reply_translation does. Without it path-MTU discovery through a Service
 * breaks (fragmentation needed / packet too big reach a node or pod address nobody sent
 * from), and a UDP client never learns that a pod's port was closed.
 *
 * The quoted packet P went out with tuple T (after xlb's rewrite). The entry under T
 * reversed is the twin E of the entry that made T; E's rewrite is the original tuple
 * reversed. So P as its sender sent it is E's rewrite, reversed, and the error goes to that
 * sender: the outer addresses change as E would change a packet of the other direction,
 * each only if E changes it (a router's source stays the router's when E keeps sources). */
#ifndef XLB_ICMP_H
#define XLB_ICMP_H

#define XLB_ICMP_NONE 0    /* not an error about a tracked flow here: left as it is */
#define XLB_ICMP_LOCAL 1   /* translated; for the stack (to a local backend, or out via tc) */
#define XLB_ICMP_FORWARD 2 /* translated; to be forwarded (the other side of a SNAT flow) */

/* Whether an ICMP / ICMPv6 type is an error that quotes the packet it is about. */
static __always_inline int xlb_icmp_is_error(__u8 family, __u8 type)
{
	if (family == 4)
		return type == 3 || type == 11 || type == 12; /* unreachable, time, parameter */
	return type >= 1 && type <= 4; /* unreachable, too big, time, parameter */
}

/* Whether p is its family's ICMP (IPv4's protocol 1, IPv6's 58: not the other's number). */
static __always_inline int xlb_is_icmp(const struct xlb_pkt *p)
{
	return p->family == 4 ? p->proto == IPPROTO_ICMP : p->proto == IPPROTO_ICMPV6;
}

/* Adds a 16-bit field's change to a running sum. */
static __always_inline __u64 xlb_csum_add16(__u64 sum, __u16 old, __u16 new)
{
	return sum + (__u16)~old + new;
}

/* Adds the change of an address (16 bytes; IPv4's in its last 4) to a running sum. */
static __always_inline __u64 xlb_csum_add_addr(__u64 sum, const union xlb_addr *old,
					       const union xlb_addr *new, __u8 family)
{
	if (family == 4)
		return xlb_csum_add32(sum, old->u32[3], new->u32[3]);
#pragma unroll
	for (int i = 0; i < 4; i++)
		sum = xlb_csum_add32(sum, old->u32[i], new->u32[i]);
	return sum;
}

/* Translates the ICMP error in p's packet if it is about a flow xdp_lb tracks (at_tc: seen
 * leaving through tc_lb, where only a local backend's reply entries apply; else in xdp_lb,
 * where those never do). On a translation p holds the new outer addresses. XLB_ICMP_*. */
static __always_inline int xlb_icmp_translate(void *data, void *data_end, struct xlb_pkt *p,
					      int at_tc, __u64 now, const struct xlb_config *cfg)
{
	__u32 icmp = p->l4_off & XLB_L4_OFF_MASK;
	__u8 *ih = data + icmp;
	if (!xlb_is_icmp(p) || (void *)(ih + 8) > data_end || !xlb_icmp_is_error(p->family, ih[0]))
		return XLB_ICMP_NONE;
	/* the quoted packet: its IP header, then the first 8 bytes of its L4 header at least */
	struct xlb_ct_key k = {};
	__u32 inner = icmp + 8, l4, inner_end;
	if (p->family == 4) {
		struct iphdr *in = data + inner;
		if ((void *)(in + 1) > data_end || in->version != 4 || in->ihl < 5 ||
		    (in->frag_off & bpf_htons(0x1fff)))
			return XLB_ICMP_NONE;
		l4 = inner + (in->ihl & 0xf) * 4;
		inner_end = inner + bpf_ntohs(in->tot_len);
		k.proto = in->protocol;
		xlb_addr_set4(&k.daddr, in->saddr); /* reversed: the key of T's other direction */
		xlb_addr_set4(&k.saddr, in->daddr);
	} else {
		struct ipv6hdr *in = data + inner;
		if ((void *)(in + 1) > data_end || in->version != 6)
			return XLB_ICMP_NONE;
		l4 = inner + sizeof(*in);
		inner_end = l4 + bpf_ntohs(in->payload_len);
		k.proto = in->nexthdr; /* (a quote with extension headers is not walked) */
		__builtin_memcpy(&k.daddr, &in->saddr, 16);
		__builtin_memcpy(&k.saddr, &in->daddr, 16);
	}
	if (k.proto != IPPROTO_TCP && k.proto != IPPROTO_UDP)
		return XLB_ICMP_NONE;
	l4 &= XLB_L4_OFF_MASK;
	/* the quote ends where the error's IP packet does (which may be short of the frame's
	 * end), or where the quoted packet says it did, whichever is first */
	__u32 end = icmp + p->l4_len;
	if (inner_end < end)
		end = inner_end;
	__be16 *ports = data + l4;
	if ((void *)(ports + 4) > data_end || l4 + 8 > end)
		return XLB_ICMP_NONE;
	k.dport = ports[0];
	k.sport = ports[1];
	/* the error goes to the quoted packet's sender */
	if (!xlb_addr_eq(&p->daddr, &k.daddr))
		return XLB_ICMP_NONE;
	int pending;
	struct xlb_ct *e = xlb_ct_find(&k, &pending);
	if (!e || xlb_ct_expired(e, k.proto, now, cfg))
		return XLB_ICMP_NONE;
	int local_reply = (e->flags & (XLB_CT_F_REVERSE | XLB_CT_F_SNAT)) == XLB_CT_F_REVERSE;
	if (local_reply != at_tc)
		return XLB_ICMP_NONE;
	int forward = (e->flags & XLB_CT_F_SNAT) != 0;

	/* new outer and inner addresses and ports (copies: e stays in the map) */
	union xlb_addr in_saddr = e->nat_daddr, in_daddr = e->nat_saddr;
	__be16 in_sport = e->nat_dport, in_dport = e->nat_sport;
	union xlb_addr out_saddr = p->saddr, out_daddr = p->daddr;
	if (!xlb_addr_eq(&e->nat_daddr, &k.daddr))
		out_daddr = e->nat_daddr;
	if (!xlb_addr_eq(&e->nat_saddr, &k.saddr))
		out_saddr = e->nat_saddr;

	/* the quoted L4 checksum: UDP's is in its first 8 bytes, TCP's only in a longer quote */
	__u16 *l4_check = 0;
	if (k.proto == IPPROTO_UDP) {
		if (ports[3])
			l4_check = &ports[3];
	} else if ((void *)(ports + 9) <= data_end && l4 + 18 <= end) {
		l4_check = &ports[8];
	}
	__u32 old_ports = ((__u32)ports[1] << 16) | ports[0];
	__u32 new_ports = ((__u32)in_dport << 16) | in_sport;
	__u64 l4_sum = 0;
	if (l4_check) {
		l4_sum = (__u16)~*l4_check;
		l4_sum = xlb_csum_add_addr(l4_sum, &k.daddr, &in_saddr, p->family);
		l4_sum = xlb_csum_add_addr(l4_sum, &k.saddr, &in_daddr, p->family);
		l4_sum = xlb_csum_add32(l4_sum, old_ports, new_ports);
	}
	/* the ICMP checksum covers the quote (and, for ICMPv6, the outer addresses) */
	__u16 *icmp_check = (__u16 *)(ih + 2);
	__u64 sum = (__u16)~*icmp_check;
	sum = xlb_csum_add_addr(sum, &k.daddr, &in_saddr, p->family);
	sum = xlb_csum_add_addr(sum, &k.saddr, &in_daddr, p->family);
	sum = xlb_csum_add32(sum, old_ports, new_ports);
	if (l4_check) {
		__u16 new_check = ~xlb_csum_fold64(l4_sum);
		if (k.proto == IPPROTO_UDP)
			new_check = xlb_udp_csum_mangle(new_check);
		sum = xlb_csum_add16(sum, *l4_check, new_check);
		*l4_check = new_check;
	}
	ports[0] = in_sport;
	ports[1] = in_dport;
	if (p->family == 4) {
		struct iphdr *in = data + (inner & XLB_L4_OFF_MASK);
		if ((void *)(in + 1) > data_end)
			return XLB_ICMP_NONE;
		__u64 ip_sum = (__u16)~in->check;
		ip_sum = xlb_csum_add32(ip_sum, in->saddr, in_saddr.u32[3]);
		ip_sum = xlb_csum_add32(ip_sum, in->daddr, in_daddr.u32[3]);
		__u16 new_check = ~xlb_csum_fold64(ip_sum);
		sum = xlb_csum_add16(sum, in->check, new_check);
		in->check = new_check;
		in->saddr = in_saddr.u32[3];
		in->daddr = in_daddr.u32[3];

		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end)
			return XLB_ICMP_NONE;
		__u64 out_sum = (__u16)~ip->check;
		out_sum = xlb_csum_add32(out_sum, ip->saddr, out_saddr.u32[3]);
		out_sum = xlb_csum_add32(out_sum, ip->daddr, out_daddr.u32[3]);
		ip->check = ~xlb_csum_fold64(out_sum);
		ip->saddr = out_saddr.u32[3];
		ip->daddr = out_daddr.u32[3];
	} else {
		struct ipv6hdr *in = data + (inner & XLB_L4_OFF_MASK);
		if ((void *)(in + 1) > data_end)
			return XLB_ICMP_NONE;
		__builtin_memcpy(&in->saddr, &in_saddr, 16);
		__builtin_memcpy(&in->daddr, &in_daddr, 16);
		sum = xlb_csum_add_addr(sum, &p->saddr, &out_saddr, 6); /* the pseudo-header */
		sum = xlb_csum_add_addr(sum, &p->daddr, &out_daddr, 6);
		struct ipv6hdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end)
			return XLB_ICMP_NONE;
		__builtin_memcpy(&ip->saddr, &out_saddr, 16);
		__builtin_memcpy(&ip->daddr, &out_daddr, 16);
	}
	/* re-derived: the verifier forgets packet bounds across the writes */
	__u16 *check = data + ((icmp + 2) & XLB_L4_OFF_MASK);
	if ((void *)(check + 1) > data_end)
		return XLB_ICMP_NONE;
	*check = ~xlb_csum_fold64(sum);
	p->saddr = out_saddr;
	p->daddr = out_daddr;
	p->sport = p->dport = 0;
	xlb_count_reason(XLB_R_ICMP_TRANSLATED);
	return forward ? XLB_ICMP_FORWARD : XLB_ICMP_LOCAL;
}

#endif
