/* Rewriting a parsed packet's addresses and ports with incremental checksum updates. */
#ifndef XLB_NAT_H
#define XLB_NAT_H

/* Rewrites p's packet to saddr:sport -> daddr:dport, fixing the IPv4 header checksum and the
 * TCP/UDP checksum (an IPv4 UDP checksum of zero stays zero); updates p. 0, or -1 if the
 * packet is not where p says (cannot happen after xlb_parse). */
static __always_inline int xlb_rewrite(void *data, void *data_end, struct xlb_pkt *p,
				       const union xlb_addr *saddr, __be16 sport,
				       const union xlb_addr *daddr, __be16 dport)
{
	__u32 l4_off = p->l4_off & 0xff; /* bounded for the verifier: at most 14 + 60 */
	__be16 old_ports[2] = {p->sport, p->dport};
	__be16 new_ports[2] = {sport, dport};
	__u16 *l4_check;

	if (p->proto == IPPROTO_TCP) {
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

	if (p->family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end)
			return -1;
		__be32 old_addrs[2] = {ip->saddr, ip->daddr};
		__be32 new_addrs[2] = {saddr->u32[3], daddr->u32[3]};
		ip->check = xlb_csum_update(ip->check, old_addrs, new_addrs, sizeof(old_addrs));
		if (!udp_none) {
			__u32 sum = (__u16)~check;
			sum = xlb_csum_add(sum, old_addrs, new_addrs, sizeof(old_addrs));
			sum = xlb_csum_add(sum, old_ports, new_ports, sizeof(old_ports));
			check = ~xlb_csum_fold(sum);
		}
		ip->saddr = new_addrs[0];
		ip->daddr = new_addrs[1];
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		__u32 sum = (__u16)~check;
		sum = xlb_csum_add(sum, &p->saddr, (void *)saddr, 16);
		sum = xlb_csum_add(sum, &p->daddr, (void *)daddr, 16);
		sum = xlb_csum_add(sum, old_ports, new_ports, sizeof(old_ports));
		check = ~xlb_csum_fold(sum);
		__builtin_memcpy(&ip6->saddr, saddr, 16);
		__builtin_memcpy(&ip6->daddr, daddr, 16);
	}
	if (p->proto == IPPROTO_UDP && !udp_none)
		check = xlb_udp_csum_mangle(check);

	/* the L4 header is re-derived: the IP writes above do not move it, but the verifier
	 * forgets packet bounds across helper calls */
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
	p->saddr = *saddr;
	p->daddr = *daddr;
	p->sport = sport;
	p->dport = dport;
	return 0;
}

#endif
