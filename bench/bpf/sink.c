/* The rig's sink: counts and drops everything that arrives (at XDP; and at tc ingress, what
 * bpf_redirect_peer hands its veth past XDP). */
#include <uapi/linux/bpf.h>

BPF_PERCPU_ARRAY(sink_count, __u64, 1);

int sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *c = sink_count.lookup(&zero);
	if (c)
		*c += 1;
	return XDP_DROP;
}

int sink_tc(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *c = sink_count.lookup(&zero);
	if (c)
		*c += 1;
	return 2; /* TC_ACT_SHOT */
}
