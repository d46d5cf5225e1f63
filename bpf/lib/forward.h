/* Sending a rewritten packet on towards a backend on another node, or back to a client. */
#ifndef XLB_FORWARD_H
#define XLB_FORWARD_H

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Routes p's (already rewritten) packet by the kernel's FIB and neighbour table and transmits
 * it: XDP_TX out of the same port, a redirect to another; XDP_PASS when the next hop is not
 * resolved yet, so the stack forwards it and resolves the neighbour (XDP cannot); XDP_DROP
 * (counted) when there is no route. The unresolved case is common for replies to LAN clients
 * of a LoadBalancer IP: their ARP request was answered by XDP, so the kernel never learnt
 * them. A packet SNATed to the node's own address cannot take this way (the stack drops a
 * local source arriving from outside); the agent keeps those next hops resolved instead. */
static __always_inline int xlb_fib_forward(struct xdp_md *ctx, const struct xlb_pkt *p)
{
	struct bpf_fib_lookup fib = {};
	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = p->proto;
	fib.sport = p->sport;
	fib.dport = p->dport;
	if (p->family == 4) {
		fib.family = AF_INET;
		fib.ipv4_src = p->saddr.u32[3];
		fib.ipv4_dst = p->daddr.u32[3];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, &p->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &p->daddr, 16);
	}
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		xlb_count_reason(XLB_R_PASS_NO_NEIGH);
		return XDP_PASS;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		xlb_count_reason(XLB_R_DROP_FIB);
		return XDP_DROP;
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

#endif
