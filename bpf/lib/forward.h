/* Sending a rewritten packet on towards a backend on another node, or back to a client. */
#ifndef XLB_FORWARD_H
#define XLB_FORWARD_H

#include "fib.h"

/* The FIB's answers of the last 100 ms, per CPU, by destination: bpf_fib_lookup costs about
 * 105 ns a packet here (measured with bpf_stats in the packet-rate rig: 43% of xdp_lb's time
 * on an established flow), a hit in this cache about 25. Stale for at most XLB_FIB_CACHE_NS
 * after a route or neighbour changes, which the kernel's own neighbour state matches anyway;
 * only successful lookups are kept. Keyed by destination and ingress port, so used only while
 * the node has no policy routing rules (the agent says so in xlb_config.fib_cache): with
 * them, an answer may depend on the source, ports or marks. Private to the program: a
 * restart starts it empty. */
#define XLB_FIB_CACHE_SLOTS 256
#define XLB_FIB_CACHE_NS (100 * 1000 * 1000ULL)

struct xlb_fib_entry {
	union xlb_addr dst;
	__u64 stamp; /* coarse ns of the lookup; 0: empty */
	__u32 in_ifindex;
	__u32 out_ifindex;
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};
BPF_PERCPU_ARRAY(xlb_fib_cache, struct xlb_fib_entry, XLB_FIB_CACHE_SLOTS);

/* Forwarding costs a hop, as the kernel's ip_forward counts it: the TTL or hop limit goes
 * down by one (the IPv4 checksum with it, RFC 1624); 0, or -1 when the packet may go no
 * further (the kernel would answer time exceeded; here it is dropped and counted). */
static __always_inline int xlb_hop(void *data, void *data_end, __u8 family)
{
	if (family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end || ip->ttl <= 1)
			return -1;
		__u32 check = (__u32)ip->check + (__u32)bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xffff));
		ip->ttl--;
		return 0;
	}
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
		return -1;
	ip6->hop_limit--;
	return 0;
}

/* Whether the packet at data may be forwarded: a TTL / hop limit above 1 (the kernel's
 * ip_forward and ip6_forward test the same). */
static __always_inline int xlb_hops_left(void *data, void *data_end, __u8 family)
{
	if (family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		return (void *)(ip + 1) <= data_end && ip->ttl > 1;
	}
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	return (void *)(ip6 + 1) <= data_end && ip6->hop_limit > 1;
}

/* Counts a hop and rewrites the Ethernet header and transmits: XDP_TX out of the port it
 * came in on, else a redirect; XDP_DROP for a packet whose TTL ran out. */
static __always_inline int xlb_transmit(struct xdp_md *ctx, const __u8 *dmac, const __u8 *smac,
					__u32 out_ifindex, __u8 family)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (xlb_hop(data, data_end, family)) {
		xlb_count_reason(XLB_R_DROP_TTL);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	if (out_ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(out_ifindex, 0);
}

/* Routes p's (already rewritten) packet by the kernel's FIB and neighbour table (now: the
 * coarse clock, for the cache) and transmits
 * it: XDP_TX out of the same port, a redirect to another; XDP_PASS when the next hop is not
 * resolved yet, so the stack forwards it and resolves the neighbour (XDP cannot); XDP_DROP
 * (counted) when there is no route. The unresolved case is common for replies to LAN clients
 * of a LoadBalancer IP: their ARP request was answered by XDP, so the kernel never learnt
 * them. A packet SNATed to the node's own address cannot take this way (the stack drops a
 * local source arriving from outside); the agent keeps those next hops resolved instead. */
static __always_inline int xlb_fib_forward(struct xdp_md *ctx, const struct xlb_pkt *p,
					   __u64 now)
{
	__u32 zero = 0;
	struct xlb_config *cfg = xlb_config.lookup(&zero);
	__u32 slot = ((p->daddr.u32[3] ^ p->daddr.u32[2]) * 0x9e3779b1) >> 24;
	struct xlb_fib_entry *c = cfg && cfg->fib_cache ? xlb_fib_cache.lookup(&slot) : 0;
	if (c && c->stamp && now - c->stamp < XLB_FIB_CACHE_NS &&
	    c->in_ifindex == ctx->ingress_ifindex && xlb_addr_eq(&c->dst, &p->daddr))
		return xlb_transmit(ctx, c->dmac, c->smac, c->out_ifindex, p->family);

	struct bpf_fib_lookup fib = {};
	xlb_fib_params(&fib, p, ctx->ingress_ifindex);
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		xlb_count_reason(XLB_R_PASS_NO_NEIGH);
		return XDP_PASS;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		xlb_report(XLB_R_DROP_FIB, p, XLB_EVENT_NO_SVC, ctx->ingress_ifindex, XLB_HOOK_XDP);
		return XDP_DROP;
	}
	if (c) {
		c->dst = p->daddr;
		c->stamp = now;
		c->in_ifindex = ctx->ingress_ifindex;
		c->out_ifindex = fib.ifindex;
		__builtin_memcpy(c->dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(c->smac, fib.smac, ETH_ALEN);
	}
	return xlb_transmit(ctx, fib.dmac, fib.smac, fib.ifindex, p->family);
}

#endif
