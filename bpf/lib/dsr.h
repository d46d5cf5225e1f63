/* Direct server return: the frontend a client addressed rides in the packet to the backend's
 * node (an IPv4 option, an IPv6 destination options header), so that node can answer the
 * client from the frontend itself, and the replies skip the node that balanced the flow.
 *
 * Why in the packet and not a tunnel (IPIP, GUE): the packet keeps its addresses (client to
 * backend, DNATed), so it takes the route and the FIB answer a SNATed one takes, needs no
 * tunnel device or address on either node (these machines have none), costs 8 bytes (IPv4)
 * or 24 (IPv6) instead of 20 or 40 (+8 for GUE), and leaves the L4 checksum alone: neither
 * header is in the pseudo-header. The backend's node strips it before the stack sees it.
 * The carrier is added to every packet of a DSR flow, not only its first: the backend's
 * node then needs no state of its own to recognise the flow's later packets (it tracks the
 * flow as if it had balanced it), and a node that takes an LB IP over mid-flow sends the
 * same carrier (maglev.h picks the same backend). What that costs at the MTU: see the MSS
 * clamp in tc_lb and XLB_R_DSR_TOO_BIG. */
#ifndef XLB_DSR_H
#define XLB_DSR_H

/* IPv4: option 0x9e (copied into fragments, class 0, number 30: RFC 4727's value for
 * experiments), 8 bytes: type, length, the frontend's port, its address. */
#define XLB_DSR_OPT4 0x9e
#define XLB_DSR_OPT4_LEN 8
/* IPv6: a destination options header (RFC 8200 4.6) of 24 bytes: option 0x1e (RFC 4727's
 * experiment value; top bits 00: a node that does not know it skips it, and it does not
 * change en route) with the port and address, then PadN to the 8-byte boundary. */
#define XLB_DSR_OPT6 0x1e
#define XLB_DSR_EXT6_LEN 24
#define XLB_DSR_OPT6_DATA 18 /* port and address */
#define XLB_IPPROTO_DSTOPTS 60

struct xlb_dsr_opt4 {
	__u8 type;
	__u8 len;
	__be16 port;
	__be32 addr;
};

struct xlb_dsr_ext6 {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8-byte units past the first 8: 2 */
	__u8 type;
	__u8 len;
	__be16 port;
	__u8 addr[16];
	__u8 pad_type; /* PadN */
	__u8 pad_len;  /* 0: no bytes follow */
} __attribute__((packed));

/* Moves the len bytes at data + by down to data, two at a time from the front: the regions
 * overlap, and each pair is read before anything writes it. 0, or -1 out of bounds. */
static __always_inline int xlb_move_down(void *data, void *data_end, __u32 by, __u32 len)
{
	if (data + by + len > data_end)
		return -1;
#pragma unroll
	for (__u32 i = 0; i < len; i += 2)
		*(__u16 *)(data + i) = *(__u16 *)(data + by + i);
	return 0;
}

/* Moves the len bytes at data up to data + by, two at a time from the back. 0, or -1. */
static __always_inline int xlb_move_up(void *data, void *data_end, __u32 by, __u32 len)
{
	if (data + by + len > data_end)
		return -1;
#pragma unroll
	for (__u32 i = len; i >= 2; i -= 2)
		*(__u16 *)(data + by + i - 2) = *(__u16 *)(data + i - 2);
	return 0;
}

/* Whether the carrier can be added to p's packet: a whole datagram (not a fragment), IPv4
 * without options, IPv6 without extension headers. */
static __always_inline int xlb_dsr_fits(const struct xlb_pkt *p)
{
	if (p->frag)
		return 0;
	return p->l4_off == sizeof(struct ethhdr) +
				(p->family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr));
}

/* Adds the carrier of frontend:port to p's packet (a DNATed IPv4 packet without options,
 * or an IPv6 packet whose L4 header follows the fixed header), in front of its L4 header;
 * updates p's offsets. 0, or -1 (the packet is not changed): no headroom, or a packet this
 * cannot carry (IPv4 options, IPv6 extension headers). */
static __always_inline int xlb_dsr_push(struct xdp_md *ctx, struct xlb_pkt *p,
					const union xlb_addr *frontend, __be16 port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (p->family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end || ip->ihl != 5)
			return -1;
		if (bpf_xdp_adjust_head(ctx, -XLB_DSR_OPT4_LEN))
			return -1;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (xlb_move_down(data, data_end, XLB_DSR_OPT4_LEN,
				  sizeof(struct ethhdr) + sizeof(struct iphdr)))
			return -1;
		ip = data + sizeof(struct ethhdr);
		struct xlb_dsr_opt4 *opt = (void *)(ip + 1);
		if ((void *)(opt + 1) > data_end)
			return -1;
		opt->type = XLB_DSR_OPT4;
		opt->len = XLB_DSR_OPT4_LEN;
		opt->port = port;
		opt->addr = frontend->u32[3];
		/* RFC 1624: the first word (version, IHL, TOS, total length) changes, and the
		 * option's two words join the sum */
		__u32 *first = (__u32 *)ip;
		__u32 old = *first;
		ip->ihl = 7;
		ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) + XLB_DSR_OPT4_LEN);
		__u64 sum = (__u16)~ip->check;
		sum = xlb_csum_add32(sum, old, *first);
		sum = xlb_csum_add32(sum, 0, *(__u32 *)opt);
		sum = xlb_csum_add32(sum, 0, opt->addr);
		ip->check = ~xlb_csum_fold64(sum);
		p->l4_off += XLB_DSR_OPT4_LEN;
		return 0;
	}
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end ||
	    p->l4_off != sizeof(struct ethhdr) + sizeof(struct ipv6hdr))
		return -1;
	__u8 nexthdr = ip6->nexthdr;
	if (bpf_xdp_adjust_head(ctx, -XLB_DSR_EXT6_LEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (xlb_move_down(data, data_end, XLB_DSR_EXT6_LEN,
			  sizeof(struct ethhdr) + sizeof(struct ipv6hdr)))
		return -1;
	ip6 = data + sizeof(struct ethhdr);
	struct xlb_dsr_ext6 *ext = (void *)(ip6 + 1);
	if ((void *)(ext + 1) > data_end)
		return -1;
	ext->nexthdr = nexthdr;
	ext->hdrlen = XLB_DSR_EXT6_LEN / 8 - 1;
	ext->type = XLB_DSR_OPT6;
	ext->len = XLB_DSR_OPT6_DATA;
	ext->port = port;
	__builtin_memcpy(ext->addr, frontend, 16);
	ext->pad_type = 1;
	ext->pad_len = 0;
	ip6->nexthdr = XLB_IPPROTO_DSTOPTS;
	ip6->payload_len = bpf_htons(bpf_ntohs(ip6->payload_len) + XLB_DSR_EXT6_LEN);
	p->l4_off += XLB_DSR_EXT6_LEN;
	return 0;
}

/* Whether p's packet carries a frontend in xlb's carrier (xlb_parse walked past it). */
static __always_inline int xlb_dsr_carried(void *data, void *data_end, const struct xlb_pkt *p)
{
	if (p->family == 4) {
		struct xlb_dsr_opt4 *opt = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
		return p->l4_off == sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(*opt) &&
		       (void *)(opt + 1) <= data_end && opt->type == XLB_DSR_OPT4 &&
		       opt->len == XLB_DSR_OPT4_LEN;
	}
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct xlb_dsr_ext6 *ext = (void *)(ip6 + 1);
	return p->l4_off == sizeof(struct ethhdr) + sizeof(*ip6) + sizeof(*ext) &&
	       (void *)(ext + 1) <= data_end && ip6->nexthdr == XLB_IPPROTO_DSTOPTS &&
	       ext->hdrlen == XLB_DSR_EXT6_LEN / 8 - 1 && ext->type == XLB_DSR_OPT6 &&
	       ext->len == XLB_DSR_OPT6_DATA;
}

/* Takes the carrier off p's packet (xlb_dsr_carried said it has one): *frontend and *port
 * get what it carried, the packet is as the balancing node's DNAT left it, p's offsets
 * follow. 0, or -1 (nothing changed). */
static __always_inline int xlb_dsr_pull(struct xdp_md *ctx, struct xlb_pkt *p,
					union xlb_addr *frontend, __be16 *port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (p->family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		struct xlb_dsr_opt4 *opt = (void *)(ip + 1);
		if ((void *)(opt + 1) > data_end)
			return -1;
		xlb_addr_set4(frontend, opt->addr);
		*port = opt->port;
		__u32 *first = (__u32 *)ip;
		__u32 old = *first, w0 = *(__u32 *)opt, w1 = opt->addr;
		ip->ihl = 5;
		ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) - XLB_DSR_OPT4_LEN);
		__u64 sum = (__u16)~ip->check;
		sum = xlb_csum_add32(sum, old, *first);
		sum = xlb_csum_add32(sum, w0, 0);
		sum = xlb_csum_add32(sum, w1, 0);
		ip->check = ~xlb_csum_fold64(sum);
		if (xlb_move_up(data, data_end, XLB_DSR_OPT4_LEN,
				sizeof(struct ethhdr) + sizeof(struct iphdr)))
			return -1;
		if (bpf_xdp_adjust_head(ctx, XLB_DSR_OPT4_LEN))
			return -1;
		p->l4_off -= XLB_DSR_OPT4_LEN;
		return 0;
	}
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct xlb_dsr_ext6 *ext = (void *)(ip6 + 1);
	if ((void *)(ext + 1) > data_end)
		return -1;
	__builtin_memcpy(frontend, ext->addr, 16);
	*port = ext->port;
	ip6->nexthdr = ext->nexthdr;
	ip6->payload_len = bpf_htons(bpf_ntohs(ip6->payload_len) - XLB_DSR_EXT6_LEN);
	if (xlb_move_up(data, data_end, XLB_DSR_EXT6_LEN,
			sizeof(struct ethhdr) + sizeof(struct ipv6hdr)))
		return -1;
	if (bpf_xdp_adjust_head(ctx, XLB_DSR_EXT6_LEN))
		return -1;
	p->l4_off -= XLB_DSR_EXT6_LEN;
	return 0;
}

#endif
