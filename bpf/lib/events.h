/* Drop and reject events for `xlb monitor` (like `cilium monitor --type drop`): the flow's
 * tuple, its frontend and the reason, streamed through a ring buffer pinned beside the maps.
 * Nobody reading costs only the write; a flood costs at most XLB_EVENT_RATE events a second
 * per CPU, and what is held back is still counted by reason (xlb_reasons). */
#ifndef XLB_EVENTS_H
#define XLB_EVENTS_H

#include "ratelimit.h"

#ifndef XLB_EVENTS_SIZE
#define XLB_EVENTS_SIZE (256 * 1024) /* bytes: a power of two, of pages */
#endif
#define XLB_EVENT_RATE 1000
#define XLB_EVENT_NO_SVC 0xffffffff /* an event of no frontend */

/* Where an event happened (xlb_event.hook). */
#define XLB_HOOK_XDP 0
#define XLB_HOOK_TC 1

struct xlb_event {
	__u64 stamp; /* bpf_ktime_get_ns: monotonic */
	union xlb_addr saddr;
	union xlb_addr daddr;
	__be16 sport;
	__be16 dport;
	__u32 svc;     /* the frontend's id, or XLB_EVENT_NO_SVC */
	__u32 ifindex; /* the device the packet came in on */
	__u8 reason;   /* XLB_R_* */
	__u8 proto;
	__u8 family;
	__u8 hook;     /* XLB_HOOK_* */
};

/* bcc's BPF_RINGBUF_OUTPUT, pinned (bcc has no pinned form of it): `xlb monitor` opens the
 * pin, and every program of every build writes to the one ring. */
struct xlb_events_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	void *(*ringbuf_reserve)(__u64);
	void (*ringbuf_discard)(void *, __u64);
	void (*ringbuf_submit)(void *, __u64);
	__u32 max_entries;
};
__attribute__((section("maps/ringbuf:" XLB_PIN_ROOT "/events")))
struct xlb_events_table_t xlb_events = {.max_entries = XLB_EVENTS_SIZE};

BPF_PERCPU_ARRAY(xlb_event_bucket, struct xlb_bucket, 1);

/* Counts a packet under reason r (a drop or a reject) and tells the monitor about it:
 * p's tuple as it arrived, svc its frontend's id (or XLB_EVENT_NO_SVC). */
static __always_inline void xlb_report(__u32 r, const struct xlb_pkt *p, __u32 svc,
				       __u32 ifindex, __u8 hook)
{
	xlb_count_reason(r);
	__u32 zero = 0;
	__u64 now = bpf_ktime_get_ns();
	struct xlb_bucket *b = xlb_event_bucket.lookup(&zero);
	if (!b || !xlb_bucket_take(b, now, XLB_EVENT_RATE))
		return;
	struct xlb_event *e = xlb_events.ringbuf_reserve(sizeof(struct xlb_event));
	if (!e)
		return; /* the ring is full: nobody reads it, or not fast enough */
	e->stamp = now;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->svc = svc;
	e->ifindex = ifindex;
	e->reason = r;
	e->proto = p->proto;
	e->family = p->family;
	e->hook = hook;
	xlb_events.ringbuf_submit(e, 0);
}

#endif
