/* Packet parsing for XDP: Ethernet, IPv4/IPv6, TCP/UDP, every read bounds-checked.
 * A packet that cannot be balanced is named by an XLB_R_PASS_* reason and left to the stack. */
#ifndef XLB_PARSE_H
#define XLB_PARSE_H

#define XLB_OK 255

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

struct xlb_pkt {
	union xlb_addr saddr;
	union xlb_addr daddr;
	__u32 l3_off;  /* IP header, from data */
	__u32 l4_off;  /* TCP/UDP header, from data */
	__u32 l4_len;  /* from the L4 header to the end of the IP payload */
	__be16 sport;
	__be16 dport;
	__u8 family;   /* 4 or 6 */
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 tcp_flags;
	__u8 frag;     /* XLB_FRAG_*: part of a fragmented datagram */
	__be32 frag_id; /* its IP identification (IPv4's 16 bits, zero-extended) */
};

/* Fragments (struct xlb_pkt.frag). A first fragment carries the L4 header and is parsed as
 * a whole packet; a later one has no ports (xlb_parse returns XLB_R_PASS_FRAGMENT with the
 * addresses, proto and id filled in), and follows the first by xlb_frags. */
#define XLB_FRAG_NONE 0
#define XLB_FRAG_FIRST 1
#define XLB_FRAG_LATER 2

/* How far into a frame the L4 header may start: IPv6 extension headers beyond this are not
 * walked (XLB_R_PASS_IPV6_EXT). A power of two minus one bounds offsets for the verifier. */
#define XLB_L4_OFF_MASK 0x1ff
#define XLB_IPV6_EXT_MAX 4

/* The IPv6 fragment header (RFC 8200 4.5). */
struct xlb_frag6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, then two reserved bits, then M */
	__be32 identification;
};

#define XLB_TCP_FIN 0x01
#define XLB_TCP_SYN 0x02
#define XLB_TCP_RST 0x04
#define XLB_TCP_ACK 0x10

/* Stores an IPv4 address as IPv4-mapped IPv6 (::ffff:a.b.c.d). */
static __always_inline void xlb_addr_set4(union xlb_addr *a, __be32 v4)
{
	a->u64[0] = 0;
	a->u32[2] = bpf_htonl(0xffff);
	a->u32[3] = v4;
}

static __always_inline int xlb_addr_eq(const union xlb_addr *a, const union xlb_addr *b)
{
	return a->u64[0] == b->u64[0] && a->u64[1] == b->u64[1];
}

/* Whether a is no address a Service's packet may come from or go to: IPv4 0/8, loopback,
 * multicast and class E (the broadcast included); IPv6 unspecified, loopback, multicast and
 * IPv4-mapped (RFC 4291 2.5.5.2: never on the wire, and never to meet IPv4 state). */
static __always_inline int xlb_addr_martian(const union xlb_addr *a, __u8 family)
{
	if (family == 4) {
		__u8 first = a->u8[12];
		return first == 0 || first == 127 || first >= 224;
	}
	if (a->u8[0] == 0xff)
		return 1;
	if (a->u64[0] == 0 && (a->u32[2] == bpf_htonl(0xffff) ||
			       (a->u32[2] == 0 && (a->u32[3] == 0 || a->u32[3] == bpf_htonl(1)))))
		return 1;
	return 0;
}

/* r, unless a parsed TCP/UDP packet came in a group frame (broadcast or multicast MAC: a
 * reply would leave with a group source) or names a martian address (netfilter's and the
 * kernel's rp checks drop those): then XLB_R_PASS_MARTIAN, and nothing balances, tracks or
 * rejects it. */
static __always_inline int xlb_parse_sane(const struct ethhdr *eth, int r, const struct xlb_pkt *p)
{
	if (r != XLB_OK)
		return r;
	if ((eth->h_source[0] | eth->h_dest[0]) & 1)
		return XLB_R_PASS_MARTIAN;
	if (xlb_addr_martian(&p->saddr, p->family) || xlb_addr_martian(&p->daddr, p->family))
		return XLB_R_PASS_MARTIAN;
	return XLB_OK;
}

/* Reads ports and flags of the L4 header at p->l4_off; XLB_OK or a pass reason. */
static __always_inline int xlb_parse_l4(void *data, void *data_end, struct xlb_pkt *p)
{
	void *l4 = data + p->l4_off;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return XLB_R_PASS_TRUNCATED;
		if (th->doff < 5 || p->l4_len < th->doff * 4)
			return XLB_R_PASS_BAD_IP;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		return XLB_OK;
	}
	if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return XLB_R_PASS_TRUNCATED;
		/* (a first fragment's UDP length is the whole datagram's) */
		if (p->l4_len < sizeof(*uh) || bpf_ntohs(uh->len) < sizeof(*uh) ||
		    (bpf_ntohs(uh->len) > p->l4_len && p->frag != XLB_FRAG_FIRST))
			return XLB_R_PASS_BAD_IP;
		p->sport = uh->source;
		p->dport = uh->dest;
		return XLB_OK;
	}
	return XLB_R_PASS_NOT_L4;
}

/* Parses an Ethernet frame of len bytes into p; XLB_OK or a pass reason. Headers are read
 * from data..data_end; len may be longer (a tc skb's payload need not be linear). */
static __always_inline int xlb_parse(void *data, void *data_end, __u32 len, struct xlb_pkt *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XLB_R_PASS_TRUNCATED;
	__be16 proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return XLB_R_PASS_VLAN;
	p->l3_off = sizeof(*eth);

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + sizeof(*eth);
		if ((void *)(ip + 1) > data_end)
			return XLB_R_PASS_TRUNCATED;
		if (ip->version != 4 || ip->ihl < 5)
			return XLB_R_PASS_BAD_IP;
		__u32 ihl = ip->ihl * 4;
		__u32 tot = bpf_ntohs(ip->tot_len);
		if ((void *)ip + ihl > data_end)
			return XLB_R_PASS_TRUNCATED;
		if (tot < ihl || sizeof(*eth) + tot > len)
			return XLB_R_PASS_BAD_IP;
		p->family = 4;
		p->proto = ip->protocol;
		xlb_addr_set4(&p->saddr, ip->saddr);
		xlb_addr_set4(&p->daddr, ip->daddr);
		p->l4_off = sizeof(*eth) + ihl;
		p->l4_len = tot - ihl;
		__u16 frag = bpf_ntohs(ip->frag_off);
		if (frag & 0x3fff) { /* MF set or an offset: not a whole datagram */
			p->frag_id = (__be32)ip->id;
			if (frag & 0x1fff) {
				p->frag = XLB_FRAG_LATER;
				return xlb_parse_sane(eth, XLB_OK, p) == XLB_OK ? XLB_R_PASS_FRAGMENT
										: XLB_R_PASS_MARTIAN;
			}
			p->frag = XLB_FRAG_FIRST;
		}
		return xlb_parse_sane(eth, xlb_parse_l4(data, data_end, p), p);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + sizeof(*eth);
		if ((void *)(ip6 + 1) > data_end)
			return XLB_R_PASS_TRUNCATED;
		if (ip6->version != 6)
			return XLB_R_PASS_BAD_IP;
		__u32 plen = bpf_ntohs(ip6->payload_len);
		if (sizeof(*eth) + sizeof(*ip6) + plen > len)
			return XLB_R_PASS_BAD_IP;
		p->family = 6;
		__builtin_memcpy(&p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(&p->daddr, &ip6->daddr, 16);
		/* the extension headers, walked to the L4 header (RFC 8200 4.1's order, at most
		 * XLB_IPV6_EXT_MAX of them) */
		__u8 nh = ip6->nexthdr;
		__u32 off = sizeof(*eth) + sizeof(*ip6);
#pragma unroll
		for (int i = 0; i < XLB_IPV6_EXT_MAX; i++) {
			if (nh == 0 || nh == 43 || nh == 60) { /* hop-by-hop, routing, destination */
				__u8 *e = data + off;
				if ((void *)(e + 8) > data_end)
					return XLB_R_PASS_TRUNCATED;
				/* a routing header with segments left: this is not the destination */
				if (nh == 43 && e[3])
					return XLB_R_PASS_IPV6_EXT;
				nh = e[0];
				off += (e[1] + 1) * 8;
			} else if (nh == 44) { /* fragment */
				struct xlb_frag6 *f = data + off;
				if ((void *)(f + 1) > data_end)
					return XLB_R_PASS_TRUNCATED;
				__u16 fo = bpf_ntohs(f->frag_off);
				nh = f->nexthdr;
				off += sizeof(*f);
				if (fo & 0xfff9) { /* an offset or MF: else an atomic fragment (RFC 6946) */
					p->frag_id = f->identification;
					p->frag = fo & 0xfff8 ? XLB_FRAG_LATER : XLB_FRAG_FIRST;
				}
				if (p->frag == XLB_FRAG_LATER)
					break;
			} else {
				break;
			}
		}
		if (off > XLB_L4_OFF_MASK || off - sizeof(*eth) - sizeof(*ip6) > plen)
			return XLB_R_PASS_IPV6_EXT;
		p->proto = nh;
		p->l4_off = off;
		p->l4_len = plen - (off - sizeof(*eth) - sizeof(*ip6));
		if (p->frag == XLB_FRAG_LATER)
			return xlb_parse_sane(eth, XLB_OK, p) == XLB_OK ? XLB_R_PASS_FRAGMENT
									: XLB_R_PASS_MARTIAN;
		/* more headers than walked, or AH (it signs the addresses a rewrite changes) */
		if (nh == 0 || nh == 43 || nh == 60 || nh == 44 || nh == 51)
			return XLB_R_PASS_IPV6_EXT;
		return xlb_parse_sane(eth, xlb_parse_l4(data, data_end, p), p);
	}
	return XLB_R_PASS_NOT_IP;
}

#endif
