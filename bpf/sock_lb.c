/* sock_lb: Services for traffic that starts on the node or in its pods, at the socket layer.
 *
 * connect() and unconnected sendmsg() to a frontend are pointed at a backend before any
 * packet exists: no per-packet NAT, no conntrack. recvmsg() and getpeername() translate the
 * backend back into the frontend, so applications only ever see the Service address.
 * Attached to a cgroup v2 directory: every process in it, in any network namespace. */
#include "lib/headers.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/maglev.h"
#include "lib/affinity.h"
#include "lib/ranges.h"

#define XLB_SOCK_ALLOW 1
#define XLB_SOCK_REFUSE 0

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif
#ifndef EHOSTUNREACH
#define EHOSTUNREACH 113
#endif

/* A socket pointed at a frontend with loadBalancerSourceRanges carries that frontend here,
 * for sock_egress to check each packet's source: the source address is only chosen after
 * connect() returns (routing), so the connect hook cannot judge it. Per socket and gone
 * with it; not pinned (only this object's programs read it). */
struct xlb_sock_ranged {
	__u32 svc;    /* the frontend's id */
	__u8 ranged;  /* 1: its source ranges apply to this socket's packets */
	__u8 node;    /* 1: a socket of the node's own (judged as the node's address) */
	__u16 pad;
};
BPF_SK_STORAGE(xlb_sock_ranged, struct xlb_sock_ranged);

/* Remembers whether this socket's last destination was a frontend with source ranges (svc;
 * NULL: no frontend). A UDP socket may send to several, and each datagram's sendmsg runs
 * just before it leaves; a socket never pointed at one gets no storage at all. */
static __always_inline void xlb_sock_mark(struct bpf_sock_addr *ctx, const struct xlb_svc *svc,
					  __u64 netns)
{
	int ranged = svc && (svc->flags & XLB_SVC_F_SOURCE_RANGES);
	struct xlb_sock_ranged *mark =
		xlb_sock_ranged.sk_storage_get(ctx->sk, 0, ranged ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!mark)
		return;
	mark->svc = svc ? svc->id : 0;
	mark->ranged = ranged ? 1 : 0;
	__u32 zero = 0;
	struct xlb_config *cfg = xlb_config.lookup(&zero);
	mark->node = cfg && cfg->node_netns && cfg->node_netns == netns;
}

/* The destination of ctx as a datapath address (IPv4 mapped). */
static __always_inline void xlb_sock_dst(const struct bpf_sock_addr *ctx, union xlb_addr *a,
					 int v6)
{
	if (v6) {
		a->u32[0] = ctx->user_ip6[0];
		a->u32[1] = ctx->user_ip6[1];
		a->u32[2] = ctx->user_ip6[2];
		a->u32[3] = ctx->user_ip6[3];
	} else {
		xlb_addr_set4(a, ctx->user_ip4);
	}
}

static __always_inline void xlb_sock_set_dst(struct bpf_sock_addr *ctx, const union xlb_addr *a,
					     __be16 port, int v6)
{
	if (v6) {
		ctx->user_ip6[0] = a->u32[0];
		ctx->user_ip6[1] = a->u32[1];
		ctx->user_ip6[2] = a->u32[2];
		ctx->user_ip6[3] = a->u32[3];
	} else {
		ctx->user_ip4 = a->u32[3];
	}
	ctx->user_port = port;
}

/* What a destination no frontend matched gets (kube-proxy's cluster-ips-check): a live
 * ClusterIP on a port it does not serve is refused (ECONNREFUSED, as its reject); another
 * address of a service CIDR goes nowhere (EHOSTUNREACH at once: a socket cannot see a drop,
 * and the packet must not leave by the default route); anything else is left alone. */
static __always_inline int xlb_sock_unserved(const union xlb_addr *addr)
{
	struct xlb_net_key nk = {.prefixlen = 128};
	__builtin_memcpy(nk.addr, addr->u8, sizeof(nk.addr));
	__u8 *kind = xlb_service_nets.lookup(&nk);
	if (!kind)
		return XLB_SOCK_ALLOW;
	if (*kind == XLB_NET_CLUSTER_IP) {
		xlb_count_reason(XLB_R_REJECT_CLUSTER_PORT);
		bpf_set_retval(-ECONNREFUSED);
	} else {
		xlb_count_reason(XLB_R_DROP_UNALLOCATED);
		bpf_set_retval(-EHOSTUNREACH);
	}
	return XLB_SOCK_REFUSE;
}

/* Points a connect or sendmsg to a frontend at one of its backends; refuses at once when it
 * has none (ECONNREFUSED, or EHOSTUNREACH for a Local policy without a local endpoint). */
static __always_inline int xlb_sock_translate(struct bpf_sock_addr *ctx, int v6)
{
	struct xlb_svc_key sk = {};
	xlb_sock_dst(ctx, &sk.addr, v6);
	sk.port = (__be16)ctx->user_port;
	sk.proto = ctx->protocol;
	sk.scope = XLB_SCOPE_INTERNAL;
	struct xlb_svc *found = xlb_services.lookup(&sk);
	if (!found) {
		xlb_sock_mark(ctx, 0, 0);
		return xlb_sock_unserved(&sk.addr);
	}
	struct xlb_svc svc = *found;
	if (svc.count == 0) {
		xlb_count_svc(svc.id, 0, 0, 1);
		xlb_count_reason(svc.flags & XLB_SVC_F_DROP_EMPTY ? XLB_R_DROP_NO_BACKEND
								   : XLB_R_REJECT_NO_BACKEND);
		bpf_set_retval(svc.flags & XLB_SVC_F_DROP_EMPTY ? -EHOSTUNREACH : -ECONNREFUSED);
		return XLB_SOCK_REFUSE;
	}

	/* a pod's identity is its network namespace: the client address is not bound yet */
	__u64 netns = bpf_get_netns_cookie(ctx);
	__u64 cookie = bpf_get_socket_cookie(ctx);
	union xlb_addr client = {};
	client.u64[0] = netns;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct xlb_affinity *pin = svc.affinity_timeout ? xlb_affinity_find(&svc, &client, now) : 0;
	struct xlb_backend *be = xlb_affinity_backend(pin);
	__u32 id = be ? pin->backend : 0;
	if (!be || (be->flags & XLB_BE_F_TERMINATING)) {
		id = xlb_select(&svc, xlb_hash_u64(cookie), xlb_hash_u64(netns));
		be = id ? xlb_backend_get(id) : 0;
	}
	if (!be) {
		xlb_count_svc(svc.id, 0, 0, 1);
		xlb_count_reason(XLB_R_DROP_BACKEND_GONE);
		bpf_set_retval(-ECONNREFUSED);
		return XLB_SOCK_REFUSE;
	}
	struct xlb_backend backend = *be;
	xlb_sock_mark(ctx, &svc, netns);
	if (svc.affinity_timeout)
		xlb_affinity_set(&svc, &client, pin, id, &backend, now);

	struct xlb_sock_key rk = {.cookie = cookie, .port = backend.port};
	rk.addr = backend.addr;
	struct xlb_sock_rev rev = {
		.port = sk.port, .proto = sk.proto, .svc = svc.id, .netns = netns};
	rev.addr = sk.addr;
	xlb_sock_rev.update(&rk, &rev);
	xlb_sock_set_dst(ctx, &backend.addr, backend.port, v6);
	xlb_count_svc(svc.id, 0, 1, 0);
	return XLB_SOCK_ALLOW;
}

/* Shows the frontend where the kernel would show the backend this socket was pointed at. */
static __always_inline int xlb_sock_restore(struct bpf_sock_addr *ctx, int v6)
{
	struct xlb_sock_key rk = {.cookie = bpf_get_socket_cookie(ctx)};
	xlb_sock_dst(ctx, &rk.addr, v6);
	rk.port = (__be16)ctx->user_port;
	struct xlb_sock_rev *rev = xlb_sock_rev.lookup(&rk);
	if (rev) {
		union xlb_addr addr = rev->addr;
		xlb_sock_set_dst(ctx, &addr, rev->port, v6);
	}
	return XLB_SOCK_ALLOW;
}

/* cgroup egress: a packet of a socket pointed at a frontend with source ranges leaves only
 * if its source address is in them (kube-proxy's firewall-check for the node's own
 * processes and pods: a drop). A pod's source is its own address; the node's sockets count
 * as the node's address (xlb_config.node_netns). Every other packet passes after one
 * socket-storage look. */
int sock_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	struct xlb_sock_ranged *mark = xlb_sock_ranged.sk_storage_get(sk, 0, 0);
	if (!mark || !mark->ranged)
		return 1;
	union xlb_addr src = {};
	__u32 zero = 0;
	struct xlb_config *cfg = mark->node ? xlb_config.lookup(&zero) : 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__be32 s4;
		if (cfg)
			src = cfg->node_addr4;
		else if (bpf_skb_load_bytes(skb, offsetof(struct iphdr, saddr), &s4, sizeof(s4)))
			return 1;
		else
			xlb_addr_set4(&src, s4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (cfg)
			src = cfg->node_addr6;
		else if (bpf_skb_load_bytes(skb, offsetof(struct ipv6hdr, saddr), &src, sizeof(src)))
			return 1;
	} else {
		return 1;
	}
	if (xlb_range_allows(mark->svc, &src))
		return 1;
	xlb_count_svc(mark->svc, 0, 0, 1);
	xlb_count_reason(XLB_R_DROP_SOURCE_RANGE);
	return 0;
}

int sock_connect4(struct bpf_sock_addr *ctx) { return xlb_sock_translate(ctx, 0); }
int sock_connect6(struct bpf_sock_addr *ctx) { return xlb_sock_translate(ctx, 1); }
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return xlb_sock_translate(ctx, 0); }
int sock_sendmsg6(struct bpf_sock_addr *ctx) { return xlb_sock_translate(ctx, 1); }
int sock_recvmsg4(struct bpf_sock_addr *ctx) { return xlb_sock_restore(ctx, 0); }
int sock_recvmsg6(struct bpf_sock_addr *ctx) { return xlb_sock_restore(ctx, 1); }
int sock_getpeername4(struct bpf_sock_addr *ctx) { return xlb_sock_restore(ctx, 0); }
int sock_getpeername6(struct bpf_sock_addr *ctx) { return xlb_sock_restore(ctx, 1); }
