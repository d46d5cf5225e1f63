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

/* Lowers the MSS that p's TCP SYN or SYN-ACK offers by `by` bytes, fixing the checksum: the
 * client's packets of a DSR flow grow by the carrier on their way here (dsr.h), so the client
 * must send that much less for them to fit. Walks at most 16 options; leaves an MSS below
 * 536 + `by` alone (IPv4's minimum). */
static __always_inline void xlb_skb_clamp_mss(struct __sk_buff *skb, const struct xlb_pkt *p,
					      __u16 by)
{
	__u32 l4 = p->l4_off & XLB_L4_OFF_MASK;
	__u32 want = l4 + 60; /* the longest TCP header */
	if (skb->data_end - skb->data < want)
		bpf_skb_pull_data(skb, want < skb->len ? want : skb->len);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct tcphdr *th = data + l4;
	if ((void *)(th + 1) > data_end)
		return;
	__u32 end = th->doff * 4, at = sizeof(*th);
	for (int i = 0; i < 16 && at + 4 <= end; i++) {
		__u8 *o = data + l4 + (at & 63);
		if ((void *)(o + 4) > data_end || o[0] == 0) /* (0: the end of the options) */
			return;
		if (o[0] == 1) { /* NOP */
			at++;
			continue;
		}
		if (o[0] == 2 && o[1] == 4) {
			__be16 old = *(__be16 *)(o + 2);
			__u16 mss = bpf_ntohs(old);
			if (mss < 536 + by)
				return;
			__be16 new = bpf_htons(mss - by);
			bpf_l4_csum_replace(skb, l4 + offsetof(struct tcphdr, check), old, new,
					    sizeof(new));
			bpf_skb_store_bytes(skb, l4 + (at & 63) + 2, &new, sizeof(new), 0);
			return;
		}
		if (o[1] < 2)
			return;
		at += o[1];
	}
}

#endif
