/* xdp_pass: for the far end of a veth whose near end runs xdp_lb. A veth delivers the frames
 * its peer sends with XDP_TX only to an end that runs an XDP program (seen here: GRO alone
 * did not do it for a bridge port). The lab puts this on the LAN side of every node. */
#include <uapi/linux/bpf.h>

int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
