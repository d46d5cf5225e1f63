/* xdp_lb: Services for traffic from outside, at XDP on the node's uplink.
 *
 * A packet of a known flow is rewritten from its conntrack entry. A packet to a frontend
 * (NodePort, externalIP, LoadBalancer IP) starts a flow: source ranges, then a backend by
 * session affinity or the Service's algorithm, then DNAT (and SNAT to the node when the
 * backend is on another node), a forward and a reverse conntrack entry, and delivery: to the
 * stack for a local backend, out again via the FIB for a remote one (SNATed, or with the
 * frontend carried in the packet for direct server return, dsr.h). A packet that carries a
 * frontend to a backend on this node has the carrier taken off here. Everything else passes
 * untouched, counted by reason. */
#include "lib/headers.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/parse.h"
#include "lib/events.h"
#include "lib/csum.h"
#include "lib/nat.h"
#include "lib/conntrack.h"
#include "lib/maglev.h"
#include "lib/affinity.h"
#include "lib/ranges.h"
#include "lib/forward.h"
#include "lib/reject.h"
#include "lib/neighbour.h"
#include "lib/tail.h"
#include "lib/frag.h"
#include "lib/icmp.h"
#include "lib/verify.h"
#include "lib/dsr.h"

BPF_TABLE_PINNED("prog", __u32, __u32, xlb_tail_xdp_lb, XLB_TAILS, XLB_PIN_ROOT "/tail_xdp_lb");

#define XLB_SNAT_TRIES 16

/* The frontend addr:port/proto that traffic from outside may address (scope external). */
static __always_inline struct xlb_svc *xlb_frontend(const union xlb_addr *addr, __be16 port,
						    __u8 proto)
{
	struct xlb_svc_key k = {};
	k.addr = *addr;
	k.port = port;
	k.proto = proto;
	k.scope = XLB_SCOPE_EXTERNAL;
	return xlb_services.lookup(&k);
}

/* Whether a conntrack hit in xdp_lb is its to act on. A forward hit keeps its backend only
 * if the backend still exists with the same address (and, for UDP, still serves), and a
 * terminating or unready backend takes no new TCP connection. */
static __always_inline int xlb_ct_usable(const struct xlb_ct *ct, const struct xlb_pkt *p)
{
	/* a reply entry serves a remote backend's replies (to a SNAT port); a local backend's
	 * reply leaves through tc_lb, never in here: one from outside is a forgery */
	if (ct->flags & XLB_CT_F_REVERSE)
		return (ct->flags & XLB_CT_F_SNAT) != 0;
	struct xlb_backend *be = xlb_backend_get(ct->backend);
	if (!be || !xlb_addr_eq(&be->addr, &ct->nat_daddr) || be->port != ct->nat_dport)
		return 0;
	/* a backend that stopped serving keeps its TCP connections, as kube-proxy leaves them
	 * alone, but not its UDP flows, whose conntrack kube-proxy deletes */
	if (p->proto == IPPROTO_UDP && (be->flags & XLB_BE_F_NOT_SERVING))
		return 0;
	/* a new TCP connection on this tuple: a closing flow's or a terminating backend's entry
	 * does not carry over */
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (XLB_TCP_SYN | XLB_TCP_ACK)) == XLB_TCP_SYN &&
	    ((ct->flags & XLB_CT_F_CLOSING) || (be->flags & XLB_BE_F_TERMINATING)))
		return 0;
	return 1;
}

/* A source port on the node address for a flow to a remote backend: a port no flow to that
 * backend ever used, or else, of the candidates whose flows are over, the one that ended
 * longest ago (the backend may keep a closed tuple in TIME_WAIT for 60 s and refuse a new
 * SYN on it). A flow is over when its entry expired (a FIN each way or a RST, then the close
 * timeout; or its state's idle timeout): a half-closed flow still holds its port. When every
 * candidate is live, the one whose flow has waited longest (over XLB_CT_RECLAIM_AGE) for an
 * answer gives its port up: a SYN flood cannot hold every port for the SYN timeout. 0 when
 * none may be taken. */
static __always_inline __be16 xlb_snat_port(const struct xlb_config *cfg,
					    const struct xlb_pkt *p,
					    const union xlb_addr *node,
					    const struct xlb_backend *be, __u64 now)
{
	__u32 range = (__u32)cfg->snat_port_max - cfg->snat_port_min + 1;
	if (cfg->snat_port_max < cfg->snat_port_min)
		return 0;
	/* double hashing: with one step for every flow, probing would be linear probing in
	 * disguise, and its clusters made runs of taken candidates far likelier than chance */
	__u32 h = xlb_hash_flow(p, xlb_hash_seed(cfg));
	__u32 step = xlb_fmix(h ^ 0x9e3779b9) | 1;
	struct xlb_ct_key k = {};
	k.saddr = be->addr;
	k.daddr = *node;
	k.sport = be->port;
	k.proto = p->proto;
	__be16 best = 0, spare = 0;
	__u64 best_stamp = ~0ULL, spare_stamp = ~0ULL;
	/* a loop, not unrolled: sixteen inlined copies of the lookups overran BPF's stack */
#pragma clang loop unroll(disable)
	for (int i = 0; i < XLB_SNAT_TRIES; i++) {
		k.dport = bpf_htons(cfg->snat_port_min + (h + i * step) % range);
		int pending;
		struct xlb_ct *old = xlb_ct_find(&k, &pending);
		if (!old)
			return k.dport;
		if (xlb_ct_expired(old, p->proto, now, cfg)) {
			if (old->stamp < best_stamp) {
				best = k.dport;
				best_stamp = old->stamp;
			}
		} else if (pending && old->state == XLB_CT_NEW && now - old->stamp > XLB_CT_RECLAIM_AGE &&
			   old->stamp < spare_stamp) {
			spare = k.dport;
			spare_stamp = old->stamp;
		}
	}
	if (!best && spare) {
		best = spare; /* every candidate live: the oldest unanswered flow gives its port up */
		xlb_count_reason(XLB_R_SNAT_RECLAIMED);
	}
	if (best) { /* the old flow's entries go, or they would shadow the new one's */
		k.dport = best;
		int pending;
		struct xlb_ct *old = xlb_ct_find(&k, &pending);
		if (old)
			xlb_ct_forget(&k, old, p->proto);
	}
	return best;
}

/* Whether a new flow of p's to be (delivered without SNAT) would reply on a tuple another
 * live flow's replies use: backend -> client address and port, restoring another frontend.
 * (The same flow's older entry, superseded now, is no clash: it is forgotten.) */
static __always_inline int xlb_reply_clash(const struct xlb_pkt *p, const struct xlb_backend *be,
					   __u64 now, const struct xlb_config *cfg)
{
	struct xlb_ct_key k = {};
	k.saddr = be->addr;
	k.sport = be->port;
	k.daddr = p->saddr;
	k.dport = p->sport;
	k.proto = p->proto;
	int pending;
	struct xlb_ct *other = xlb_ct_find(&k, &pending);
	if (!other || xlb_ct_expired(other, p->proto, now, cfg))
		return 0;
	return other->nat_sport != p->dport || !xlb_addr_eq(&other->nat_saddr, &p->daddr);
}

/* Answers time exceeded for the packet in ctx, as it arrived (a tail program: no room here
 * to build it); XDP_DROP if that tail is not loaded. */
static __always_inline int xlb_time_exceeded(struct xdp_md *ctx)
{
	xlb_tail_xdp_lb.call(ctx, XLB_TAIL_TIME_EXCEEDED);
	xlb_count_reason(XLB_R_DROP_TTL);
	return XDP_DROP;
}

/* Sends a DSR flow's packet (DNATed: p is its tuple now) on to its backend's node with
 * frontend:port carried (dsr.h): XDP_TX or a redirect by the FIB; XDP_DROP, counted, if the
 * carrier cannot be added or makes the packet too big for the uplink (for TCP, tc_lb on
 * the backend's node lowered the MSS by the carrier's size, so only packets of clients that
 * ignore it, or of UDP, meet this). */
static __always_inline int xlb_dsr_send(struct xdp_md *ctx, struct xlb_pkt *p,
					const union xlb_addr *frontend, __be16 port, __u64 now)
{
	if (xlb_dsr_push(ctx, p, frontend, port)) { /* (a fragment, or no headroom) */
		xlb_count_reason(XLB_R_DSR_NOT_CARRIABLE);
		return XDP_DROP;
	}
	__u32 mtu = 0;
	if (bpf_check_mtu(ctx, 0, &mtu, 0, 0) == BPF_MTU_CHK_RET_FRAG_NEEDED) {
		xlb_report(XLB_R_DROP_DSR_TOO_BIG, p, XLB_EVENT_NO_SVC, ctx->ingress_ifindex,
			   XLB_HOOK_XDP);
		return XDP_DROP;
	}
	xlb_count_reason(XLB_R_DSR_CARRIED);
	return xlb_fib_forward(ctx, p, now);
}

/* Rewrites a packet of a tracked flow and sends it on. */
static __always_inline int xlb_tracked(struct xdp_md *ctx, struct xlb_pkt *p,
				       struct xlb_ct *ct, int pending, __u32 len, __u64 now)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 flags = ct->flags;
	union xlb_addr saddr = ct->nat_saddr, daddr = ct->nat_daddr;
	__be16 sport = ct->nat_sport, dport = ct->nat_dport;
	if ((flags & (XLB_CT_F_SNAT | XLB_CT_F_DSR)) && !xlb_hops_left(data, data_end, p->family))
		return xlb_time_exceeded(ctx); /* (before anything is noted or rewritten) */
	xlb_count_svc(ct->svc, len, 0, 0);
	xlb_frag_note(p, now); /* (the hot path takes no fragment) */
	if (now) /* (0: the fast path below, which has nothing to note) */
		xlb_ct_observe(ct, pending, p, now); /* last use of ct: it may move the entry */
	if (flags & XLB_CT_F_DSR) { /* the frontend the client addressed, for the carrier */
		saddr = p->daddr;
		sport = p->dport;
		if (xlb_rewrite(data, data_end, p, &p->saddr, p->sport, &daddr, dport))
			return XDP_DROP;
		return xlb_dsr_send(ctx, p, &saddr, sport, now);
	}
	if (xlb_rewrite(data, data_end, p, &saddr, sport, &daddr, dport))
		return XDP_DROP;
	if (flags & XLB_CT_F_SNAT)
		return xlb_fib_forward(ctx, p, now); /* to a remote backend, or its reply */
	return XDP_PASS;                        /* to a local backend, through the stack */
}

int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_pkt p = {};
	__u64 now = 0; /* 0 on the hot path: nothing there needs the clock */
	int r = xlb_parse(data, data_end, data_end - data, &p);
	if (r == XLB_R_PASS_FRAGMENT) { /* a later fragment: of a tracked flow's datagram? */
		now = bpf_ktime_get_coarse_ns();
		if (!xlb_frag_ports(&p, now))
			r = XLB_OK;
	}
	if (r != XLB_OK) {
		/* the neighbour protocols of the LoadBalancer IPs this node announces */
		int answer = -1;
		if (r == XLB_R_PASS_NOT_IP)
			answer = xlb_arp_reply(ctx);
		else if (r == XLB_R_PASS_NOT_L4 && p.family == 6 && p.proto == IPPROTO_ICMPV6)
			answer = xlb_nd_reply(ctx, &p);
		if (answer >= 0) {
			xlb_count_reason(XLB_R_NEIGHBOUR_REPLY);
			return answer;
		}
		if (r == XLB_R_PASS_NOT_L4 && xlb_is_icmp(&p))
			xlb_tail_xdp_lb.call(ctx, XLB_TAIL_ICMP_ERROR); /* (on return: not loaded) */
		xlb_count_reason(r);
		return XDP_PASS;
	}
	__u32 len = data_end - data;
	/* a DSR flow's packet to a backend on this node, its frontend carried: the tail takes
	 * the carrier off (IPv4 with options, or IPv6 with one extension header: rare) */
	if (p.l4_off != sizeof(struct ethhdr) + sizeof(struct iphdr) &&
	    p.l4_off != sizeof(struct ethhdr) + sizeof(struct ipv6hdr) &&
	    xlb_dsr_carried(data, data_end, &p)) {
		xlb_tail_xdp_lb.call(ctx, XLB_TAIL_DSR);
		xlb_count_reason(XLB_R_PASS_NO_TAIL);
		return XDP_PASS;
	}

	struct xlb_ct_key ck = {};
	xlb_ct_key_of(&p, &ck);
	int pending = 0;
	struct xlb_ct *ct = xlb_ct.lookup(&ck);
	/* The hot path: an established TCP flow to a local backend, a segment with no SYN, FIN
	 * or RST. Nothing to note and no clock to read: its backend's replies (tc_lb) keep the
	 * flow's stamp, and a forward hit on an entry past its idle timeout would pick the same
	 * local backend a new one would. */
	if (ct && p.proto == IPPROTO_TCP && ct->state == XLB_CT_EST &&
	    !(ct->flags & (XLB_CT_F_SNAT | XLB_CT_F_CLOSING | XLB_CT_F_REVERSE | XLB_CT_F_DSR)) &&
	    !(p.tcp_flags & (XLB_TCP_SYN | XLB_TCP_FIN | XLB_TCP_RST)) && !p.frag &&
	    xlb_ct_usable(ct, &p))
		goto tracked; /* (one call site for the three ways there: xlb_tracked is inlined, and
			       * three copies of it did not fit BPF's 512-byte stack) */
	/* one clock read and one config lookup for all the rest (an array lookup the JIT
	 * inlines) */
	now = bpf_ktime_get_coarse_ns();
	struct xlb_config *cfg = xlb_config_get();
	if (ct && !xlb_ct_expired(ct, p.proto, now, cfg) && xlb_ct_usable(ct, &p))
		goto tracked;

	struct xlb_svc *svc = xlb_frontend(&p.daddr, p.dport, p.proto);
	/* an unestablished flow's packets in XDP are its client's (to a frontend) or a remote
	 * backend's answers (to a SNAT port): only those look in xlb_ct_new, so traffic to
	 * nothing of xlb's costs no second lookup */
	if (!ct && (svc || (cfg && bpf_ntohs(p.dport) >= cfg->snat_port_min &&
			    bpf_ntohs(p.dport) <= cfg->snat_port_max))) {
		ct = xlb_ct_new.lookup(&ck);
		pending = ct != 0;
		if (ct && !xlb_ct_expired(ct, p.proto, now, cfg) && xlb_ct_usable(ct, &p))
			goto tracked;
	}
	if (!svc || p.frag == XLB_FRAG_LATER) { /* (a later fragment starts no flow) */
		xlb_count_reason(svc ? XLB_R_PASS_FRAGMENT : XLB_R_PASS_NO_SERVICE);
		return XDP_PASS;
	}
	struct xlb_hint *h = xlb_hint_get();
	if (h) {
		h->magic = XLB_HINT_MAGIC;
		h->len = len;
		h->stale = ct ? 1 + pending : 0;
		h->p = p;
		h->svc = *svc;
	}
	xlb_tail_xdp_lb.call(ctx, XLB_TAIL_NEW_FLOW);
	if (h)
		h->magic = 0;
	xlb_count_reason(XLB_R_PASS_NO_TAIL);
	return XDP_PASS;
tracked:
	return xlb_tracked(ctx, &p, ct, pending, len, now);
}

/* A new flow: source ranges, a backend (affinity, then the algorithm), SNAT for a remote
 * backend, the rewrite, the flow's two entries, and delivery. Or the reject of a frontend
 * without backends. Tail of xdp_lb. */
int xdp_lb__new_flow(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	/* read once: clang may otherwise keep &ctx->ingress_ifindex, which the verifier refuses */
	__u32 ifindex = ctx->ingress_ifindex;
	struct xlb_hint *h = xlb_hint_get();
	if (!h)
		return XDP_PASS;
	struct xlb_pkt *p = &h->p; /* in place: no room on this stack either for a copy */
	struct xlb_svc *svc = &h->svc;
	__u32 len;
	struct xlb_ct_key ck = {};
	struct xlb_ct *ct = 0;
	int pending = 0;
	if (h->magic == XLB_HINT_MAGIC) {
		h->magic = 0;
		len = h->len;
		xlb_ct_key_of(p, &ck);
		if (h->stale == 1)
			ct = xlb_ct.lookup(&ck);
		else if (h->stale == 2)
			ct = xlb_ct_new.lookup(&ck);
		pending = h->stale == 2;
	} else { /* called by another build's xdp_lb: nothing handed over */
		__builtin_memset(p, 0, sizeof(*p));
		if (xlb_parse(data, data_end, data_end - data, p) != XLB_OK)
			return XDP_PASS;
		len = data_end - data;
		svc = xlb_frontend(&p->daddr, p->dport, p->proto);
		if (!svc)
			return XDP_PASS;
		xlb_ct_key_of(p, &ck);
		ct = xlb_ct_find(&ck, &pending);
	}
	__u64 now = bpf_ktime_get_coarse_ns();
	struct xlb_config *cfg = xlb_config_get();
	struct ethhdr *eth = data;
	__u8 *mac = xlb_device_mac(ctx);
	if ((void *)(eth + 1) > data_end || (mac && !xlb_frame_for(eth, mac))) {
		xlb_count_reason(XLB_R_PASS_OTHER_HOST); /* (checked for new flows only: cheap here) */
		return XDP_PASS;
	}
	if (!xlb_l4_csum_plausible(data, data_end, p)) { /* no flow, no answer for a bad one */
		xlb_report(XLB_R_DROP_BAD_CSUM, p, svc->id, ifindex, XLB_HOOK_XDP);
		return XDP_DROP;
	}
	/* svc and be point into maps the sync may rewrite meanwhile; a copy would be no more
	 * atomic, and each field read is a value the sync did write */

	if ((svc->flags & XLB_SVC_F_SOURCE_RANGES) && !xlb_range_allows(svc->id, &p->saddr)) {
		xlb_count_svc(svc->id, len, 0, 1);
		xlb_report(XLB_R_DROP_SOURCE_RANGE, p, svc->id, ifindex, XLB_HOOK_XDP);
		return XDP_DROP;
	}
	if (svc->count == 0) {
		xlb_count_svc(svc->id, len, 0, 1);
		if (svc->flags & XLB_SVC_F_DROP_EMPTY) {
			xlb_report(XLB_R_DROP_NO_BACKEND, p, svc->id, ifindex, XLB_HOOK_XDP);
			return XDP_DROP;
		}
		if (p->frag) { /* the stack reassembles it and answers as a host with no listener */
			xlb_count_reason(XLB_R_PASS_FRAGMENT);
			return XDP_PASS;
		}
		if (p->proto == IPPROTO_UDP && !xlb_icmp_allowed(now))
			return XDP_DROP;
		xlb_report(XLB_R_REJECT_NO_BACKEND, p, svc->id, ifindex, XLB_HOOK_XDP);
		if (p->proto == IPPROTO_TCP)
			return xlb_reject_tcp(ctx, p);
		return xlb_icmp_answer(ctx, p, XLB_ANSWER_PORT_UNREACHABLE);
	}

	/* TCP starts with a SYN: any other segment of no known flow (a lost entry's, a stray or
	 * forged RST or ACK) is picked up only if it costs no SNAT port, and a RST never is */
	int not_syn = p->proto == IPPROTO_TCP &&
		      (p->tcp_flags & (XLB_TCP_SYN | XLB_TCP_ACK | XLB_TCP_RST)) != XLB_TCP_SYN;
	if (not_syn && (p->tcp_flags & XLB_TCP_RST)) {
		xlb_count_svc(svc->id, len, 0, 1);
		xlb_report(XLB_R_DROP_NOT_SYN, p, svc->id, ifindex, XLB_HOOK_XDP);
		return XDP_DROP;
	}
	struct xlb_affinity *pin = svc->affinity_timeout ? xlb_affinity_find(svc, &p->saddr, now) : 0;
	struct xlb_backend *be = xlb_affinity_backend(pin);
	__u32 id = be ? pin->backend : 0;
	if (!be || (be->flags & XLB_BE_F_TERMINATING)) {
		__u32 seed = xlb_hash_seed(cfg);
		id = xlb_select(svc, xlb_hash_flow(p, seed), xlb_hash_addr(&p->saddr, seed));
		be = id ? xlb_backend_get(id) : 0;
	}
	if (!be) {
		xlb_count_svc(svc->id, len, 0, 1);
		xlb_report(XLB_R_DROP_BACKEND_GONE, p, svc->id, ifindex, XLB_HOOK_XDP);
		return XDP_DROP;
	}
	if (svc->affinity_timeout && !not_syn) /* a pickup continues a flow: it pins nobody */
		xlb_affinity_set(svc, &p->saddr, pin, id, be, now);

	struct xlb_ct *flow = xlb_ct_scratch(); /* (no room on the stack for it) */
	if (!flow)
		return XDP_PASS;
	flow->nat_saddr = p->saddr;
	flow->nat_sport = p->sport;
	flow->nat_daddr = be->addr;
	flow->nat_dport = be->port;
	flow->backend = id;
	flow->svc = svc->id;
	flow->stamp = now;
	flow->state = XLB_CT_NEW;
	int port_needed = 0; /* a source port of flow->nat_saddr's that no flow to be uses */
	int remote = !(be->flags & XLB_BE_F_LOCAL) && !(svc->flags & XLB_SVC_F_PRESERVE_CLIENT);
	if (remote && (svc->flags & XLB_SVC_F_DSR) && (be->flags & XLB_BE_F_DSR)) {
		if (xlb_dsr_fits(p)) {
			/* the client's address is kept, no port is taken: a flow picked up mid-stream
			 * (its LB IP moved here) goes to the backend Maglev gave it before */
			if (!xlb_hops_left(data, data_end, p->family))
				return xlb_time_exceeded(ctx);
			flow->flags = XLB_CT_F_DSR;
			remote = 0;
		} else {
			xlb_count_reason(XLB_R_DSR_NOT_CARRIABLE); /* SNAT, as the backend were not DSR */
		}
	}
	if (remote) {
		if (not_syn) {
			xlb_count_svc(svc->id, len, 0, 1);
			xlb_report(XLB_R_DROP_NOT_SYN, p, svc->id, ifindex, XLB_HOOK_XDP);
			return XDP_DROP;
		}
		if (!cfg)
			return XDP_PASS;
		if (!xlb_hops_left(data, data_end, p->family))
			return xlb_time_exceeded(ctx); /* (no flow for a packet that goes no further) */
		flow->nat_saddr = p->family == 4 ? cfg->node_addr4 : cfg->node_addr6;
		flow->flags = XLB_CT_F_SNAT;
		port_needed = 1;
	} else if (!(flow->flags & XLB_CT_F_DSR) && cfg && xlb_reply_clash(p, be, now, cfg)) {
		/* the backend already answers this client address and port for another frontend
		 * (one client port to two frontends, an endpoint-independent NAT in front): as
		 * netfilter does, this flow's source port is remapped, its address kept */
		port_needed = 1;
		xlb_count_reason(XLB_R_PORT_REMAPPED);
	}
	if (port_needed) { /* (one call site: the probe loop is inlined) */
		flow->nat_sport = cfg ? xlb_snat_port(cfg, p, &flow->nat_saddr, be, now) : 0;
		if (!flow->nat_sport) {
			xlb_count_svc(svc->id, len, 0, 1);
			xlb_report(XLB_R_DROP_SNAT_EXHAUSTED, p, svc->id, ifindex, XLB_HOOK_XDP);
			return XDP_DROP;
		}
	}
	xlb_count_svc(svc->id, len, 1, 0);
	xlb_frag_note(p, now);
	if (xlb_rewrite(data, data_end, p, &flow->nat_saddr, flow->nat_sport, &flow->nat_daddr,
			flow->nat_dport))
		return XDP_DROP;
	__u16 flags = flow->flags;
	if (ct) /* the tuple's earlier flow (over, or superseded): its entries go */
		xlb_ct_forget(&ck, ct, p->proto);
	if (flags & XLB_CT_F_DSR) { /* one entry: the replies never come back this way */
		if (xlb_ct_create_lone(&ck, flow))
			xlb_report(XLB_R_CT_FULL, p, svc->id, ifindex, XLB_HOOK_XDP);
		return xlb_dsr_send(ctx, p, &ck.daddr, ck.dport, now);
	}
	/* after the rewrite: it turns flow into the reverse entry */
	if (xlb_ct_create(&ck, flow))
		xlb_report(XLB_R_CT_FULL, p, svc->id, ifindex, XLB_HOOK_XDP);
	if (flags & XLB_CT_F_SNAT)
		return xlb_fib_forward(ctx, p, now);
	return XDP_PASS;
}

/* A DSR flow's packet to a backend on this node (xdp_lb saw the carrier): the carrier comes
 * off, and the flow is tracked as if this node had balanced it, under the tuple the client
 * sent (to the carried frontend): the backend's replies leave from the frontend (tc_lb).
 * A carrier is believed only for a frontend that sends flows by DSR, of the packet's
 * protocol; anything else is a forgery (it would make a pod answer from any address) and
 * is dropped, counted. Tail of xdp_lb. */
int xdp_lb__dsr(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_pkt p = {};
	__u64 now = bpf_ktime_get_coarse_ns();
	int r = xlb_parse(data, data_end, data_end - data, &p);
	if (r == XLB_R_PASS_FRAGMENT && !xlb_frag_ports(&p, now))
		r = XLB_OK; /* a later fragment: its first came by here, and noted its ports */
	if (r != XLB_OK || !xlb_dsr_carried(data, data_end, &p))
		return XDP_PASS;
	struct xlb_ct_key ck = {};
	ck.saddr = p.saddr;
	ck.sport = p.sport;
	ck.proto = p.proto;
	if (xlb_dsr_pull(ctx, &p, &ck.daddr, &ck.dport))
		return XDP_DROP;
	struct xlb_svc *svc = xlb_frontend(&ck.daddr, ck.dport, p.proto);
	struct xlb_config *cfg = xlb_config_get();
	/* a NodePort of another node's address: the same NodePort of this node's */
	if (!svc && cfg && xlb_node_addrs.lookup(&ck.daddr))
		svc = xlb_frontend(p.family == 4 ? &cfg->node_addr4 : &cfg->node_addr6, ck.dport,
				   p.proto);
	/* (and the packet goes to a backend, not to a frontend of this node's) */
	if (!svc || !(svc->flags & XLB_SVC_F_DSR) || xlb_frontend(&p.daddr, p.dport, p.proto) ||
	    p.family != (ck.daddr.u32[2] == bpf_htonl(0xffff) && !ck.daddr.u64[0] ? 4 : 6)) {
		xlb_report(XLB_R_DROP_DSR_FORGED, &p, XLB_EVENT_NO_SVC, ctx->ingress_ifindex,
			   XLB_HOOK_XDP);
		return XDP_DROP;
	}
	__u32 svc_id = svc->id;
	xlb_frag_note(&p, now); /* a first fragment: its later ones lose the carrier here too */
	int pending;
	struct xlb_ct *ct = xlb_ct_find(&ck, &pending);
	if (ct && !xlb_ct_expired(ct, p.proto, now, cfg) && (ct->flags & XLB_CT_F_DSR_IN) &&
	    xlb_addr_eq(&ct->nat_daddr, &p.daddr) && ct->nat_dport == p.dport) {
		xlb_ct_observe(ct, pending, &p, now);
	} else if (!(p.proto == IPPROTO_TCP && (p.tcp_flags & XLB_TCP_RST))) {
		if (ct)
			xlb_ct_forget(&ck, ct, p.proto);
		struct xlb_ct *flow = xlb_ct_scratch();
		if (!flow)
			return XDP_PASS;
		flow->nat_saddr = p.saddr;
		flow->nat_sport = p.sport;
		flow->nat_daddr = p.daddr;
		flow->nat_dport = p.dport;
		flow->svc = svc_id; /* (no backend id: a packet to the frontend itself, if this
				     * node takes it over, is balanced anew, as Maglev agrees) */
		flow->stamp = now;
		flow->state = XLB_CT_NEW;
		flow->flags = XLB_CT_F_DSR_IN;
		if (xlb_ct_create(&ck, flow))
			xlb_report(XLB_R_CT_FULL, &p, svc_id, ctx->ingress_ifindex, XLB_HOOK_XDP);
	}
	xlb_count_svc(svc_id, data_end - data, 0, 0);
	xlb_count_reason(XLB_R_DSR_DELIVERED);
	return XDP_PASS;
}

/* An ICMP error: translated and delivered if it is about a flow xdp_lb tracks (icmp.h), else
 * left to the stack. Tail of xdp_lb. */
int xdp_lb__icmp_error(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_pkt p = {};
	int r = xlb_parse(data, data_end, data_end - data, &p);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (r != XLB_R_PASS_NOT_L4 || xlb_parse_sane(eth, XLB_OK, &p) != XLB_OK) {
		xlb_count_reason(r == XLB_R_PASS_NOT_L4 ? XLB_R_PASS_MARTIAN : r);
		return XDP_PASS;
	}
	__u64 now = bpf_ktime_get_coarse_ns();
	int done = xlb_icmp_translate(data, data_end, &p, 0, now, xlb_config_get());
	if (done == XLB_ICMP_FORWARD)
		return xlb_fib_forward(ctx, &p, now);
	if (done == XLB_ICMP_NONE)
		xlb_count_reason(XLB_R_PASS_NOT_L4);
	return XDP_PASS;
}

/* A packet xdp_lb would forward (to a remote backend, or a remote backend's reply to its
 * client) with a TTL / hop limit of 1 or 0: answered time exceeded from the address it was
 * sent to, quoting it as it arrived, as the kernel's forwarding (and netfilter's translation
 * of its error) would. Tail of xdp_lb. */
int xdp_lb__time_exceeded(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_pkt p = {};
	int r = xlb_parse(data, data_end, data_end - data, &p);
	if (r != XLB_OK) { /* (a later fragment among them: RFC 1122 3.2.2, no error for it) */
		xlb_count_reason(XLB_R_DROP_TTL);
		return XDP_DROP;
	}
	if (!xlb_icmp_allowed(bpf_ktime_get_coarse_ns()))
		return XDP_DROP;
	int verdict = xlb_icmp_answer(ctx, &p, XLB_ANSWER_TIME_EXCEEDED);
	if (verdict == XDP_TX)
		xlb_count_reason(XLB_R_TIME_EXCEEDED);
	else
		xlb_report(XLB_R_DROP_TTL, &p, XLB_EVENT_NO_SVC, ctx->ingress_ifindex, XLB_HOOK_XDP);
	return verdict;
}
