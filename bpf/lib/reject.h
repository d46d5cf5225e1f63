/* Answers xdp_lb builds itself: refusing a connection to a Service with no endpoints, at
 * once, the way a host with no listener does (TCP RST, or ICMP / ICMPv6 port unreachable for
 * UDP), and time exceeded for a packet it would forward with no hop left, as the kernel's
 * forwarding does. Built in place and sent back out of the port the packet came in on. */
#ifndef XLB_REJECT_H
#define XLB_REJECT_H

#include "ratelimit.h"

#define XLB_REPLY_TTL 64

/* Swaps the Ethernet addresses of the frame at data. */
static __always_inline void xlb_eth_swap(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/* Checksum of an IPv4 header of 20 bytes (check field zeroed by the caller). */
static __always_inline __u16 xlb_ipv4_csum(struct iphdr *ip)
{
	return ~xlb_csum_fold(bpf_csum_diff(0, 0, (void *)ip, sizeof(*ip), 0));
}

/* Partial sum of the TCP/UDP/ICMPv6 pseudo header. */
static __always_inline __u32 xlb_pseudo_sum(const struct xlb_pkt *p, const union xlb_addr *src,
					    const union xlb_addr *dst, __u8 proto, __u32 len)
{
	if (p->family == 4) {
		__be32 ph[3] = {src->u32[3], dst->u32[3], bpf_htonl((proto << 16) | len)};
		return bpf_csum_diff(0, 0, ph, sizeof(ph), 0);
	}
	__be32 ph[10];
	__builtin_memcpy(ph, src, 16);
	__builtin_memcpy(&ph[4], dst, 16);
	ph[8] = bpf_htonl(len);
	ph[9] = bpf_htonl(proto);
	return bpf_csum_diff(0, 0, ph, sizeof(ph), 0);
}

/* Turns a TCP segment into the RST that answers it (RFC 9293 §3.10.7.1). */
static __always_inline int xlb_reject_tcp(struct xdp_md *ctx, const struct xlb_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = sizeof(struct ethhdr);
	__u32 l4 = p->family == 4 ? l3 + sizeof(struct iphdr) : l3 + sizeof(struct ipv6hdr);
	if (p->tcp_flags & XLB_TCP_RST || p->l4_off != l4)
		return XDP_DROP; /* never answer a RST; IPv4 options: drop rather than mis-build */
	struct tcphdr *th = data + l4;
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	__u32 payload = p->l4_len - th->doff * 4;
	__be32 seq = 0, ack = 0;
	__u8 flags = XLB_TCP_RST;
	if (p->tcp_flags & XLB_TCP_ACK) {
		seq = th->ack_seq;
	} else {
		ack = bpf_htonl(bpf_ntohl(th->seq) + payload + !!(p->tcp_flags & XLB_TCP_SYN) +
				!!(p->tcp_flags & XLB_TCP_FIN));
		flags |= XLB_TCP_ACK;
	}
	struct tcphdr rst = {};
	rst.source = p->dport;
	rst.dest = p->sport;
	rst.seq = seq;
	rst.ack_seq = ack;
	rst.doff = 5;
	((__u8 *)&rst)[13] = flags;
	__u32 sum = xlb_pseudo_sum(p, &p->daddr, &p->saddr, IPPROTO_TCP, sizeof(rst));
	rst.check = ~xlb_csum_fold(bpf_csum_diff(0, 0, (void *)&rst, sizeof(rst), sum));
	__builtin_memcpy(th, &rst, sizeof(rst));

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	xlb_eth_swap(eth);
	if (p->family == 4) {
		struct iphdr *ip = data + l3;
		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		__be32 s = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = s;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(rst));
		ip->ttl = XLB_REPLY_TTL;
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); /* DF */
		ip->tos = 0;
		ip->check = 0;
		ip->check = xlb_ipv4_csum(ip);
	} else {
		struct ipv6hdr *ip6 = data + l3;
		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		__builtin_memcpy(&ip6->saddr, &p->daddr, 16);
		__builtin_memcpy(&ip6->daddr, &p->saddr, 16);
		ip6->payload_len = bpf_htons(sizeof(rst));
		ip6->hop_limit = XLB_REPLY_TTL;
	}
	int keep = l4 + sizeof(rst);
	if (bpf_xdp_adjust_tail(ctx, keep - (int)(data_end - data)))
		return XDP_DROP;
	return XDP_TX;
}

/* ICMP errors xdp_lb sends itself (struct: ICMP type and code, then ICMPv6's). */
#define XLB_ANSWER_PORT_UNREACHABLE 0 /* a UDP frontend without endpoints (RFC 1122 3.2.2.1) */
#define XLB_ANSWER_TIME_EXCEEDED 1    /* a packet to forward with no hop left (RFC 1812 5.3.1) */

/* At most this many ICMP errors a second per CPU, with as many in a burst, as the kernel's
 * icmp_msgs_per_sec: a flood of TTL-1 packets or of datagrams to an empty Service gets
 * answers at a bounded rate, the rest dropped (XLB_R_DROP_ICMP_RATE). */
#define XLB_ICMP_RATE 1000

BPF_PERCPU_ARRAY(xlb_icmp_bucket, struct xlb_bucket, 1);

/* Whether one more ICMP error may be sent now (and takes its token). */
static __always_inline int xlb_icmp_allowed(__u64 now)
{
	__u32 zero = 0;
	struct xlb_bucket *b = xlb_icmp_bucket.lookup(&zero);
	if (b && xlb_bucket_take(b, now, XLB_ICMP_RATE))
		return 1;
	xlb_count_reason(XLB_R_DROP_ICMP_RATE);
	return 0;
}

/* Turns a packet into the ICMP (IPv4) or ICMPv6 error that answers it (an XLB_ANSWER_*),
 * from the address it was sent to, quoting the offending IP header and the first 8 bytes
 * after it, and sends it back out of the port it came in on. The caller has asked
 * xlb_icmp_allowed. */
static __always_inline int xlb_icmp_answer(struct xdp_md *ctx, const struct xlb_pkt *p, int kind)
{
	int v4 = p->family == 4;
	int ip_len = v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	int grow = ip_len + 8; /* a new IP header and an ICMP header in front */
	int quote = ip_len + 8;
	if (p->l4_off != sizeof(struct ethhdr) + ip_len)
		return XDP_DROP;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *old = data;
	if ((void *)(old + 1) > data_end)
		return XDP_DROP;
	struct ethhdr eth;
	__builtin_memcpy(eth.h_dest, old->h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, old->h_dest, ETH_ALEN);
	eth.h_proto = old->h_proto;
	int keep = sizeof(struct ethhdr) + ip_len + 8 + quote;
	/* cut the tail first: the quote must exist (a UDP header always does) */
	if (bpf_xdp_adjust_tail(ctx, sizeof(struct ethhdr) + quote - (int)(data_end - data)))
		return XDP_DROP;
	if (bpf_xdp_adjust_head(ctx, -grow)) {
		xlb_count_reason(XLB_R_DROP_HEADROOM);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + keep > data_end)
		return XDP_DROP;
	__builtin_memcpy(data, &eth, sizeof(eth));
	void *l3 = data + sizeof(struct ethhdr);
	if (v4) {
		struct iphdr *ip = l3;
		struct icmphdr *icmp = (void *)(ip + 1);
		/* (constant bounds in each branch: p may come from a tail's hint, whose family
		 * the verifier cannot tie to ip_len) */
		if ((void *)(icmp + 1) + sizeof(struct iphdr) + 8 > data_end)
			return XDP_DROP;
		__builtin_memset(ip, 0, sizeof(*ip));
		ip->version = 4;
		ip->ihl = 5;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*icmp) + quote);
		ip->frag_off = bpf_htons(0x4000);
		ip->ttl = XLB_REPLY_TTL;
		ip->protocol = IPPROTO_ICMP;
		ip->saddr = p->daddr.u32[3];
		ip->daddr = p->saddr.u32[3];
		ip->check = xlb_ipv4_csum(ip);
		__builtin_memset(icmp, 0, sizeof(*icmp));
		icmp->type = kind == XLB_ANSWER_TIME_EXCEEDED ? 11 : 3;
		icmp->code = kind == XLB_ANSWER_TIME_EXCEEDED ? 0 : 3; /* in transit; port */
		icmp->checksum = ~xlb_csum_fold(bpf_csum_diff(0, 0, (void *)icmp,
							      sizeof(*icmp) + 28, 0));
	} else {
		struct ipv6hdr *ip6 = l3;
		struct icmp6hdr *icmp6 = (void *)(ip6 + 1);
		if ((void *)(icmp6 + 1) + sizeof(struct ipv6hdr) + 8 > data_end)
			return XDP_DROP;
		__builtin_memset(ip6, 0, sizeof(*ip6));
		ip6->version = 6;
		ip6->payload_len = bpf_htons(sizeof(*icmp6) + quote);
		ip6->nexthdr = IPPROTO_ICMPV6;
		ip6->hop_limit = XLB_REPLY_TTL;
		__builtin_memcpy(&ip6->saddr, &p->daddr, 16);
		__builtin_memcpy(&ip6->daddr, &p->saddr, 16);
		__builtin_memset(icmp6, 0, sizeof(*icmp6));
		icmp6->icmp6_type = kind == XLB_ANSWER_TIME_EXCEEDED ? 3 : 1;
		icmp6->icmp6_code = kind == XLB_ANSWER_TIME_EXCEEDED ? 0 : 4; /* in transit; port */
		__u32 sum = xlb_pseudo_sum(p, &p->daddr, &p->saddr, IPPROTO_ICMPV6,
					   sizeof(*icmp6) + quote);
		icmp6->icmp6_cksum = ~xlb_csum_fold(bpf_csum_diff(0, 0, (void *)icmp6,
								  sizeof(*icmp6) + 48, sum));
	}
	return XDP_TX;
}

#endif
