/* Tail calls: a program's rarer paths run as programs of their own, each with a fresh
 * 512-byte stack (bcc links no BPF-to-BPF calls, and xdp_lb inlined whole did not fit).
 *
 * The prog array is pinned, because the kernel empties a prog array once no process holds
 * it, and the programs outlive the agent. A restarted agent fills it with its own programs
 * before it attaches its entry program, so an older entry program may call a newer tail for
 * a moment: what the entry program hands over (a hint, in a per-CPU map private to one
 * build) is then not there, and the tail works everything out from the packet itself. */
#ifndef XLB_TAIL_H
#define XLB_TAIL_H

/* Indexes of xlb_tail_<entry>; the target of XLB_TAIL_<NAME> is the function
 * <entry>__<name> (the loader fills the array by that rule). */
#define XLB_TAIL_NEW_FLOW 0   /* xdp_lb: a packet to a frontend that no live flow took */
#define XLB_TAIL_ICMP_ERROR 1 /* xdp_lb: an ICMP error, maybe about a tracked flow */
#define XLB_TAIL_TIME_EXCEEDED 2 /* xdp_lb: a packet it would forward, with no hop left */
#define XLB_TAIL_DSR 3        /* xdp_lb: a DSR flow's packet to a backend here, frontend carried */
#define XLB_TAILS 4

/* What the entry program found, for its tail: the tail takes it only if magic says it was
 * written for this very packet (the tail clears it), else it parses and looks up itself. */
#define XLB_HINT_MAGIC 0x786c6231 /* "xlb1" */
struct xlb_hint {
	__u32 magic;
	__u32 len;      /* the frame's length */
	__u8 stale;     /* 1: xlb_ct, 2: xlb_ct_new held an entry under the tuple (over, or not usable) */
	__u8 pad[3];
	struct xlb_pkt p;
	struct xlb_svc svc; /* the frontend, as looked up */
};
BPF_PERCPU_ARRAY(xlb_hints, struct xlb_hint, 1);

static __always_inline struct xlb_hint *xlb_hint_get(void)
{
	__u32 zero = 0;
	return xlb_hints.lookup(&zero);
}

#endif
