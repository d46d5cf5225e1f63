/* tc_lb: on the uplink's egress, replies of local backends to clients from outside.
 *
 * xdp_lb hands a flow to a backend on this node through the stack (DNAT, XDP_PASS); the
 * backend's reply is routed out of the uplink by the stack, past this hook, which restores
 * the frontend the client addressed as the reply's source.
 *
 * tc_lb_in: on the uplink's ingress, with --local-delivery redirect, hands those DNATed
 * packets straight to the pod's veth (bpf_redirect_peer), past the host's routing and
 * netfilter.
 *
 * tc_lb_pod: on a pod veth's ingress (the pod's packets), with --local-delivery redirect,
 * hands the pod's replies of those flows straight to the uplink (bpf_redirect to its
 * egress, where tc_lb translates them as it does the stack's), past the same. */
#include "lib/headers.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/skb_nat.h"
#include "lib/frag.h"
#include "lib/csum.h"
#include "lib/icmp.h"
#include "lib/dsr.h"
#include "lib/fib.h"

#define XLB_PULL_LEN (sizeof(struct ethhdr) + 60 + sizeof(struct tcphdr))
/* What xlb returns for every packet it lets go on, rewritten or not: "next" (TC_ACT_UNSPEC),
 * so that the programs after it in a tcx chain, or the filters after it in tc, see the packet
 * too. TC_ACT_OK would end another's chain (a CNI's egress program, a monitor). */
#define XLB_TC_NEXT TC_ACT_UNSPEC

/* The longest ICMP error head translated: outer IPv4 with options, ICMP, quoted IPv4 with
 * options, a TCP header's first 18 bytes (to its checksum). */
#define XLB_ICMP_PULL_LEN (sizeof(struct ethhdr) + 60 + 8 + 60 + 18)

/* An ICMP error leaving towards a client, about a packet of a flow xdp_lb handed to a local
 * backend (the pod's port unreachable, the node's fragmentation needed): translated so that
 * the client sees it about what it sent, from the frontend it sent to. */
static __always_inline int xlb_tc_icmp(struct __sk_buff *skb, struct xlb_pkt *p)
{
	__u32 want = skb->len < XLB_ICMP_PULL_LEN ? skb->len : XLB_ICMP_PULL_LEN;
	if (skb->data_end - skb->data < want && bpf_skb_pull_data(skb, want))
		return XLB_TC_NEXT;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	xlb_icmp_translate(data, data_end, p, 1, bpf_ktime_get_coarse_ns(), xlb_config_get());
	return XLB_TC_NEXT;
}

/* The entry under k of a flow xdp_lb handed to a backend on this node: its reply entry (the
 * backend's tuple back to the client), without SNAT; or NULL. */
static __always_inline struct xlb_ct *xlb_local_reply(struct xlb_ct_key *k, int *pending)
{
	struct xlb_ct *ct = xlb_ct_find(k, pending);
	return ct && (ct->flags & (XLB_CT_F_REVERSE | XLB_CT_F_SNAT)) == XLB_CT_F_REVERSE ? ct : 0;
}

int tc_lb(struct __sk_buff *skb)
{
	if (skb->data_end - skb->data < XLB_PULL_LEN)
		bpf_skb_pull_data(skb, XLB_PULL_LEN); /* short packets stay short: parse decides */
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct xlb_pkt p = {};
	int r = xlb_parse(data, data_end, skb->len, &p);
	__u64 now = 0;
	if (r == XLB_R_PASS_FRAGMENT) { /* a later fragment of a reply xdp_lb's flow sent? */
		now = bpf_ktime_get_coarse_ns();
		if (!xlb_frag_ports(&p, now))
			r = XLB_OK;
	}
	if (r == XLB_R_PASS_NOT_L4 && xlb_is_icmp(&p))
		return xlb_tc_icmp(skb, &p);
	if (r != XLB_OK)
		return XLB_TC_NEXT;

	struct xlb_ct_key k = {};
	xlb_ct_key_of(&p, &k);
	int pending;
	struct xlb_ct *ct = xlb_local_reply(&k, &pending);
	if (!ct)
		return XLB_TC_NEXT; /* not a reply of a flow xdp_lb handed to a local backend */
	/* a reply is translated only while its flow lives: the backend's own connection to the
	 * same client address and port, once the Service's flow is over, leaves as it is */
	if (!now)
		now = bpf_ktime_get_coarse_ns();
	if (xlb_ct_expired(ct, p.proto, now, xlb_config_get()))
		return XLB_TC_NEXT;
	union xlb_addr frontend = ct->nat_saddr;
	__be16 fport = ct->nat_sport, cport = ct->nat_dport; /* cport: the client's own port */
	__u32 svc = ct->svc;
	__u16 flags = ct->flags;
	xlb_ct_observe(ct, pending, &p, now); /* the backend's answer, FIN or RST; may move ct */
	if ((flags & XLB_CT_F_DSR_IN) && p.proto == IPPROTO_TCP && (p.tcp_flags & XLB_TCP_SYN))
		xlb_skb_clamp_mss(skb, &p, p.family == 4 ? XLB_DSR_OPT4_LEN : XLB_DSR_EXT6_LEN);
	xlb_count_svc(svc, skb->len, 0, 0);
	xlb_frag_note(&p, now); /* the reply's own tuple: its later fragments look it up so */
	if (!xlb_skb_snat(skb, &p, &frontend, fport))
		xlb_skb_dport(skb, &p, cport);
	return XLB_TC_NEXT;
}

/* Whether p's packet, on its way in, belongs to a flow xdp_lb handed to a backend on this
 * node (its reply entry is there). */
static __always_inline int xlb_delivered_here(const struct xlb_pkt *p)
{
	struct xlb_ct_key k = {};
	k.saddr = p->daddr;
	k.daddr = p->saddr;
	k.sport = p->dport;
	k.dport = p->sport;
	k.proto = p->proto;
	int pending;
	return xlb_local_reply(&k, &pending) != 0;
}

/* With --local-delivery redirect, skb's packet parsed into p: 0, or -1 (the mode is off, or
 * a packet xlb does not parse whole: an ICMP error, a later fragment, for the stack). */
static __always_inline int xlb_redirect_parse(struct __sk_buff *skb, struct xlb_pkt *p)
{
	struct xlb_config *cfg = xlb_config_get();
	if (!cfg || !cfg->local_redirect)
		return -1;
	if (skb->data_end - skb->data < XLB_PULL_LEN)
		bpf_skb_pull_data(skb, XLB_PULL_LEN);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	return xlb_parse(data, data_end, skb->len, p) == XLB_OK ? 0 : -1;
}

/* Spends a hop as the kernel's forwarding would (the IPv4 checksum with it); -1 when none is
 * left (the stack then answers time exceeded). */
static __always_inline int xlb_skb_hop(struct __sk_buff *skb, __u8 family)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	if (family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end || ip->ttl <= 1)
			return -1;
		__be16 old = *(__be16 *)&ip->ttl; /* TTL and protocol: one 16-bit word */
		__u8 ttl = ip->ttl - 1;
		__be16 new = bpf_htons(((__u16)ttl << 8) | ip->protocol);
		bpf_l3_csum_replace(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, check), old,
				    new, sizeof(new));
		return bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, ttl),
					   &ttl, 1, 0);
	}
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
		return -1;
	__u8 hops = ip6->hop_limit - 1;
	return bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + offsetof(struct ipv6hdr, hop_limit),
				   &hops, 1, 0);
}

/* Makes skb's frame the next hop's, as fib found it: a hop spent, its MACs. 0, or -1 (no hop
 * left: the stack answers time exceeded). */
static __always_inline int xlb_skb_next_hop(struct __sk_buff *skb, __u8 family,
					    struct bpf_fib_lookup *fib)
{
	if (xlb_skb_hop(skb, family) || bpf_skb_store_bytes(skb, 0, fib->dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib->smac, ETH_ALEN, 0))
		return -1;
	return 0;
}

int tc_lb_in(struct __sk_buff *skb)
{
	struct xlb_pkt p = {};
	if (xlb_redirect_parse(skb, &p) || !xlb_delivered_here(&p))
		return XLB_TC_NEXT; /* (a later fragment too: the stack reassembles it) */
	struct bpf_fib_lookup fib = {};
	xlb_fib_params(&fib, &p, skb->ingress_ifindex);
	/* the pod's veth and its neighbour, resolved: else the stack resolves it */
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS ||
	    fib.ifindex == skb->ingress_ifindex)
		return XLB_TC_NEXT;
	__u32 out = fib.ifindex;
	if (!xlb_peer_devs.lookup(&out) || xlb_skb_next_hop(skb, p.family, &fib))
		return XLB_TC_NEXT;
	xlb_count_reason(XLB_R_LOCAL_REDIRECTED);
	return bpf_redirect_peer(out, 0);
}

int tc_lb_pod(struct __sk_buff *skb)
{
	struct xlb_pkt p = {};
	if (xlb_redirect_parse(skb, &p))
		return XLB_TC_NEXT; /* (an ICMP error, a later fragment: the stack, then tc_lb) */
	struct xlb_ct_key k = {};
	xlb_ct_key_of(&p, &k);
	int pending;
	struct xlb_ct *ct = xlb_local_reply(&k, &pending); /* a reply of a flow delivered here */
	if (!ct || xlb_ct_expired(ct, p.proto, bpf_ktime_get_coarse_ns(), xlb_config_get()))
		return XLB_TC_NEXT;
	struct bpf_fib_lookup fib = {};
	xlb_fib_params(&fib, &p, skb->ingress_ifindex);
	/* out through a device xlb serves (its tc_lb translates the reply), the client's
	 * neighbour resolved: else the stack resolves it */
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XLB_TC_NEXT;
	__u32 out = fib.ifindex, mtu_len = 0;
	if (!xlb_devices.lookup(&out))
		return XLB_TC_NEXT;
	/* too big for the uplink: the stack answers fragmentation needed / packet too big */
	if (bpf_check_mtu(skb, out, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS ||
	    xlb_skb_next_hop(skb, p.family, &fib))
		return XLB_TC_NEXT;
	xlb_count_reason(XLB_R_LOCAL_REPLY_REDIRECTED);
	return bpf_redirect(out, 0);
}
