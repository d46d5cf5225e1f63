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

#define XLB_SOCK_ALLOW 1
#define XLB_SOCK_REFUSE 0

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif
#ifndef EHOSTUNREACH
#define EHOSTUNREACH 113
#endif

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
	if (!found)
		return xlb_sock_unserved(&sk.addr);
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
	if (svc.affinity_timeout)
		xlb_affinity_set(&svc, &client, pin, id, &backend, now);

	struct xlb_sock_key rk = {.cookie = cookie, .port = backend.port};
	rk.addr = backend.addr;
	struct xlb_sock_rev rev = {.port = sk.port, .svc = svc.id};
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

int sock_connect4(struct bpf_sock_addr *ctx) { return xlb_sock_translate(ctx, 0); }
int sock_connect6(struct bpf_sock_addr *ctx) { return xlb_sock_translate(ctx, 1); }
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return xlb_sock_translate(ctx, 0); }
int sock_sendmsg6(struct bpf_sock_addr *ctx) { return xlb_sock_translate(ctx, 1); }
int sock_recvmsg4(struct bpf_sock_addr *ctx) { return xlb_sock_restore(ctx, 0); }
int sock_recvmsg6(struct bpf_sock_addr *ctx) { return xlb_sock_restore(ctx, 1); }
int sock_getpeername4(struct bpf_sock_addr *ctx) { return xlb_sock_restore(ctx, 0); }
int sock_getpeername6(struct bpf_sock_addr *ctx) { return xlb_sock_restore(ctx, 1); }
