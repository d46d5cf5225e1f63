/* Answering for the LoadBalancer IPs this node owns: ARP replies (IPv4) and neighbour
 * advertisements (IPv6), built in place and sent back out of the uplink, as MetalLB's layer-2
 * speaker does from user space. */
#ifndef XLB_NEIGHBOUR_H
#define XLB_NEIGHBOUR_H

struct xlb_arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

#define XLB_ARP_REQUEST 1
#define XLB_ARP_REPLY 2
#define XLB_ND_NS 135
#define XLB_ND_NA 136
#define XLB_ND_NA_LEN 32 /* header, flags, target, and one target link-layer option */

/* The MAC of the device a frame came in on, as the agent wrote it (xlb_devices), or NULL. */
static __always_inline __u8 *xlb_device_mac(const struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct xlb_device *dev = xlb_devices.lookup(&ifindex);
	return dev ? dev->mac : 0;
}

/* The MAC to answer with on the device the request came in on (its own, so that a node
 * with several LANs answers each with the right address), or NULL before the agent
 * configured it or after it fell silent. */

static __always_inline __u8 *xlb_reply_mac(const struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *beat = xlb_heartbeat.lookup(&zero);
	if (!beat || bpf_ktime_get_coarse_ns() - *beat > XLB_ANNOUNCE_GRACE)
		return 0;
	__u8 *own = xlb_device_mac(ctx);
	if (own)
		return own;
	struct xlb_config *cfg = xlb_config.lookup(&zero);
	if (!cfg || !(cfg->uplink_mac[0] | cfg->uplink_mac[1] | cfg->uplink_mac[2] |
		      cfg->uplink_mac[3] | cfg->uplink_mac[4] | cfg->uplink_mac[5]))
		return 0;
	return cfg->uplink_mac;
}

/* Whether a frame is addressed to this host: a group address, or mac (its device's). A
 * unicast frame to another MAC reached a promiscuous port (a bridge member, a mirror): the
 * stack drops it as PACKET_OTHERHOST, and xlb neither answers nor balances it. */
static __always_inline int xlb_frame_for(const struct ethhdr *eth, const __u8 *mac)
{
	if (eth->h_dest[0] & 1)
		return 1;
	__u8 diff = 0;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++) /* (no memcmp in BPF) */
		diff |= eth->h_dest[i] ^ mac[i];
	return !diff;
}

/* An ARP request for an owned IPv4 address turned into its reply: XDP_TX, or -1 if the
 * frame is anything else (it then passes). */
static __always_inline int xlb_arp_reply(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct xlb_arp_ipv4 *arp = (void *)(eth + 1);
	/* an ARP frame (not another ethertype's payload that looks like one) from a unicast
	 * sender */
	if ((void *)(arp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_ARP) ||
	    (eth->h_source[0] & 1) || (arp->sha[0] & 1) || arp->htype != bpf_htons(1) ||
	    arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != ETH_ALEN || arp->plen != 4 ||
	    arp->op != bpf_htons(XLB_ARP_REQUEST))
		return -1;
	union xlb_addr target;
	xlb_addr_set4(&target, arp->tpa);
	__u8 *mac = xlb_reply_mac(ctx);
	if (!mac || !xlb_frame_for(eth, mac) || !xlb_lb_ips.lookup(&target))
		return -1;
	__be32 asker = arp->spa;
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	__builtin_memcpy(arp->sha, mac, ETH_ALEN);
	arp->tpa = asker;
	arp->spa = target.u32[3];
	arp->op = bpf_htons(XLB_ARP_REPLY);
	__builtin_memcpy(eth->h_dest, arp->tha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return XDP_TX;
}

/* Whether a neighbour solicitation is one RFC 4861 7.1.1 lets a node act on: hop limit 255,
 * code 0 (checked by the caller), a valid checksum, ICMP length 24 or 32 (none or one option:
 * the forms hosts send; others go to the stack), an option whose length is not 0, a target
 * that is not multicast, and from the unspecified address (duplicate detection) only to the
 * target's solicited-node group and without a source link-layer address. */
static __always_inline int xlb_ns_valid(void *data, void *data_end, const struct xlb_pkt *p,
					__u8 *icmp, const union xlb_addr *target)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end || ip6->hop_limit != 255 || target->u8[0] == 0xff)
		return 0;
	__u32 len = p->l4_len;
	if (len != 24 && len != 32)
		return 0;
	int unspecified = !(p->saddr.u64[0] | p->saddr.u64[1]);
	__u32 sum = xlb_pseudo_sum(p, &p->saddr, &p->daddr, IPPROTO_ICMPV6, len);
	if (len == 32) {
		if ((void *)(icmp + 32) > data_end || icmp[25] != 1 || (unspecified && icmp[24] == 1))
			return 0;
		sum = bpf_csum_diff(0, 0, (void *)icmp, 32, sum);
	} else {
		if ((void *)(icmp + 24) > data_end)
			return 0;
		sum = bpf_csum_diff(0, 0, (void *)icmp, 24, sum);
	}
	if (xlb_csum_fold(sum) != 0xffff)
		return 0;
	if (unspecified) {
		const union xlb_addr *d = &p->daddr;
		if (d->u32[0] != bpf_htonl(0xff020000) || d->u32[1] != 0 ||
		    d->u32[2] != bpf_htonl(1) || d->u8[12] != 0xff || d->u8[13] != target->u8[13] ||
		    d->u8[14] != target->u8[14] || d->u8[15] != target->u8[15])
			return 0;
	}
	return 1;
}

/* A neighbour solicitation for an owned IPv6 address turned into a solicited advertisement
 * with our link-layer address: XDP_TX, or -1 if the packet is anything else. */
static __always_inline int xlb_nd_reply(struct xdp_md *ctx, const struct xlb_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l4 = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);
	__u8 *icmp = data + l4;
	if (p->l4_off != l4 || (void *)(icmp + 24) > data_end || icmp[0] != XLB_ND_NS ||
	    icmp[1] != 0)
		return -1;
	union xlb_addr target;
	__builtin_memcpy(&target, icmp + 8, 16);
	struct ethhdr *in = data;
	if (in->h_source[0] & 1) /* a group source MAC: nobody to answer */
		return -1;
	__u8 *mac = xlb_reply_mac(ctx);
	if (!mac || !xlb_frame_for(in, mac) || !xlb_lb_ips.lookup(&target) ||
	    !xlb_ns_valid(data, data_end, p, icmp, &target))
		return -1;
	__u8 own[ETH_ALEN];
	__builtin_memcpy(own, mac, ETH_ALEN);
	/* solicited by an address: answer it; by :: (duplicate detection): all nodes */
	union xlb_addr dst = p->saddr;
	int unspecified = !(dst.u64[0] | dst.u64[1]);
	int len = (int)(data_end - data);
	if (bpf_xdp_adjust_tail(ctx, (int)(l4 + XLB_ND_NA_LEN) - len))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	icmp = (void *)(ip6 + 1);
	if ((void *)(icmp + XLB_ND_NA_LEN) > data_end)
		return XDP_DROP;
	if (unspecified) {
		dst.u64[0] = bpf_htonl(0xff020000);
		dst.u64[1] = 0;
		dst.u32[3] = bpf_htonl(1);
	}
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	if (unspecified) {
		__u8 all_nodes[ETH_ALEN] = {0x33, 0x33, 0, 0, 0, 1};
		__builtin_memcpy(eth->h_dest, all_nodes, ETH_ALEN);
	}
	__builtin_memcpy(eth->h_source, own, ETH_ALEN);
	ip6->payload_len = bpf_htons(XLB_ND_NA_LEN);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = 255;
	__builtin_memcpy(&ip6->saddr, &target, 16);
	__builtin_memcpy(&ip6->daddr, &dst, 16);
	icmp[0] = XLB_ND_NA;
	icmp[1] = 0;
	icmp[2] = icmp[3] = 0;
	__builtin_memset(icmp + 4, 0, 4);
	icmp[4] = unspecified ? 0x20 : 0x60; /* Override, and Solicited when asked */
	__builtin_memcpy(icmp + 8, &target, 16);
	icmp[24] = 2; /* target link-layer address option, 8 bytes */
	icmp[25] = 1;
	__builtin_memcpy(icmp + 26, own, ETH_ALEN);
	__u32 sum = xlb_pseudo_sum(p, &target, &dst, IPPROTO_ICMPV6, XLB_ND_NA_LEN);
	__u16 check = ~xlb_csum_fold(bpf_csum_diff(0, 0, (void *)icmp, XLB_ND_NA_LEN, sum));
	__builtin_memcpy(icmp + 2, &check, 2);
	return XDP_TX;
}

#endif
