/* Rewriting a parsed packet's addresses and ports with incremental checksum updates. */
#ifndef XLB_NAT_H
#define XLB_NAT_H

/* Rewrites p's packet to saddr:sport -> daddr:dport, fixing the IPv4 header checksum and the
 * TCP/UDP checksum (an IPv4 UDP checksum of zero stays zero); updates p. A later fragment
 * has no L4 header: only its addresses change (the first fragment's checksum, which covers
 * the whole datagram, took the change for all). 0, or -1 if the packet is not where p says
 * (cannot happen after xlb_parse). */
static __always_inline int xlb_rewrite(void *data, void *data_end, struct xlb_pkt *p,
				       const union xlb_addr *saddr, __be16 sport,
				       const union xlb_addr *daddr, __be16 dport)
{
	__u32 l4_off = p->l4_off & XLB_L4_OFF_MASK; /* bounded for the verifier */
	/* both ports as one 32-bit word, in the order they sit in the header */
	__u32 old_ports = ((__u32)p->dport << 16) | p->sport;
	__u32 new_ports = ((__u32)dport << 16) | sport;
	__u16 *l4_check, none = 0;
	int l3_only = p->frag == XLB_FRAG_LATER;

	if (l3_only) {
		l4_check = &none;
	} else if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4_off;
		if ((void *)(th + 1) > data_end)
			return -1;
		l4_check = &th->check;
	} else {
		struct udphdr *uh = data + l4_off;
		if ((void *)(uh + 1) > data_end)
			return -1;
		l4_check = &uh->check;
	}
	__u16 check = *l4_check;
	int udp_none = p->proto == IPPROTO_UDP && check == 0;
	__u64 sum = (__u16)~check;
	sum = xlb_csum_add32(sum, old_ports, new_ports);

	if (p->family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end)
			return -1;
		__be32 ns = saddr->u32[3], nd = daddr->u32[3];
		__u64 ip_sum = (__u16)~ip->check;
		ip_sum = xlb_csum_add32(ip_sum, ip->saddr, ns);
		ip_sum = xlb_csum_add32(ip_sum, ip->daddr, nd);
		ip->check = ~xlb_csum_fold64(ip_sum);
		sum = xlb_csum_add32(sum, ip->saddr, ns);
		sum = xlb_csum_add32(sum, ip->daddr, nd);
		ip->saddr = ns;
		ip->daddr = nd;
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			sum = xlb_csum_add32(sum, p->saddr.u32[i], saddr->u32[i]);
			sum = xlb_csum_add32(sum, p->daddr.u32[i], daddr->u32[i]);
		}
		__builtin_memcpy(&ip6->saddr, saddr, 16);
		__builtin_memcpy(&ip6->daddr, daddr, 16);
	}
	if (l3_only)
		goto done;
	if (!udp_none) {
		check = ~xlb_csum_fold64(sum);
		if (p->proto == IPPROTO_UDP)
			check = xlb_udp_csum_mangle(check);
	}

	/* the L4 header is re-derived: the verifier forgets packet bounds across the writes */
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4_off;
		if ((void *)(th + 1) > data_end)
			return -1;
		th->source = sport;
		th->dest = dport;
		th->check = check;
	} else {
		struct udphdr *uh = data + l4_off;
		if ((void *)(uh + 1) > data_end)
			return -1;
		uh->source = sport;
		uh->dest = dport;
		uh->check = check;
	}
done:
	p->saddr = *saddr;
	p->daddr = *daddr;
	p->sport = sport;
	p->dport = dport;
	return 0;
}

#endif
