/* loadBalancerSourceRanges: which clients may reach a frontend that has them. */
#ifndef XLB_RANGES_H
#define XLB_RANGES_H

/* Whether client falls in one of frontend svc_id's source ranges (xlb_source_ranges). */
static __always_inline int xlb_range_allows(__u32 svc_id, const union xlb_addr *client)
{
	struct xlb_range_key k = {.prefixlen = 32 + 128, .svc = svc_id};
	k.addr = *client;
	return xlb_source_ranges.lookup(&k) != 0;
}

#endif
