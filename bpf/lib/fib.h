/* The kernel's FIB, asked for a parsed packet's route (xdp_lb's forwarding, tc_lb_in's
 * delivery to a pod). */
#ifndef XLB_FIB_H
#define XLB_FIB_H

/* Fills fib with p's tuple, as arriving on ifindex, for bpf_fib_lookup. */
static __always_inline void xlb_fib_params(struct bpf_fib_lookup *fib, const struct xlb_pkt *p,
					   __u32 ifindex)
{
	fib->ifindex = ifindex;
	fib->l4_protocol = p->proto;
	fib->sport = p->sport;
	fib->dport = p->dport;
	if (p->family == 4) {
		fib->family = AF_INET;
		fib->ipv4_src = p->saddr.u32[3];
		fib->ipv4_dst = p->daddr.u32[3];
	} else {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_src, &p->saddr, 16);
		__builtin_memcpy(fib->ipv6_dst, &p->daddr, 16);
	}
}

#endif
