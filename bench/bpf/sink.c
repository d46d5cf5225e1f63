/* The rig's sink: counts and drops everything that arrives. */
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
