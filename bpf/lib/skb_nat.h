/* Rewriting the source of a packet on the tc hook, where the kernel may still owe the L4
 * checksum (CHECKSUM_PARTIAL): the skb helpers keep that state right, direct writes would not. */
#ifndef XLB_SKB_NAT_H
#define XLB_SKB_NAT_H

/* Rewrites p's source to saddr:sport in skb, fixing the IPv4 header and L4 checksums.
 * 0, or a negative error from the helpers. */
static __always_inline int xlb_skb_snat(struct __sk_buff *skb, const struct xlb_pkt *p,
					const union xlb_addr *saddr, __be16 sport)
{
	__u32 l4 = p->l4_off & XLB_L4_OFF_MASK;
	__u32 check_off = l4 + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
						       : offsetof(struct udphdr, check));
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	int err;

	int l3_only = p->frag == XLB_FRAG_LATER; /* no L4 header: the first fragment's had it all */

	if (p->family == 4) {
		__be32 old = p->saddr.u32[3], new = saddr->u32[3];
		__u32 ip_check = sizeof(struct ethhdr) + offsetof(struct iphdr, check);
		err = bpf_l3_csum_replace(skb, ip_check, old, new, sizeof(new));
		if (!err && !l3_only)
			err = bpf_l4_csum_replace(skb, check_off, old, new,
						  BPF_F_PSEUDO_HDR | mangled | sizeof(new));
		if (!err)
			err = bpf_skb_store_bytes(skb, sizeof(struct ethhdr) +
						  offsetof(struct iphdr, saddr), &new, sizeof(new), 0);
	} else {
		__s64 diff = bpf_csum_diff((__be32 *)&p->saddr, 16, (__be32 *)saddr, 16, 0);
		err = l3_only ? 0 : bpf_l4_csum_replace(skb, check_off, 0, diff,
							 BPF_F_PSEUDO_HDR | mangled);
		if (!err)
			err = bpf_skb_store_bytes(skb, sizeof(struct ethhdr) +
						  offsetof(struct ipv6hdr, saddr), (void *)saddr, 16, 0);
	}
	if (err || l3_only)
		return err;
	err = bpf_l4_csum_replace(skb, check_off, p->sport, sport, mangled | sizeof(sport));
	if (err)
		return err;
	/* the source port is the first field of both TCP and UDP headers */
	return bpf_skb_store_bytes(skb, l4, &sport, sizeof(sport), 0);
}

/* Rewrites p's destination port to dport in skb (a reply to a client whose source port
 * xdp_lb remapped), fixing the L4 checksum. 0, or a negative error from the helpers. */
static __always_inline int xlb_skb_dport(struct __sk_buff *skb, const struct xlb_pkt *p,
					 __be16 dport)
{
	if (p->frag == XLB_FRAG_LATER || dport == p->dport)
		return 0;
	__u32 l4 = p->l4_off & XLB_L4_OFF_MASK;
	__u32 check_off = l4 + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
						       : offsetof(struct udphdr, check));
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	int err = bpf_l4_csum_replace(skb, check_off, p->dport, dport, mangled | sizeof(dport));
	if (err)
		return err;
	/* the destination port is the second field of both TCP and UDP headers */
	return bpf_skb_store_bytes(skb, l4 + 2, &dport, sizeof(dport), 0);
}

#endif
