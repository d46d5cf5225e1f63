/* Internet checksums: incremental updates (RFC 1624) and full sums for built replies. */
#ifndef XLB_CSUM_H
#define XLB_CSUM_H

/* Folds a 32-bit partial sum to 16 bits with end-around carry (twice covers every carry). */
static __always_inline __u16 xlb_csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)csum;
}

/* Adds the change of one 32-bit word from old to new to a running sum (RFC 1624, eqn. 3):
 * a 32-bit word is two 16-bit words modulo 0xffff, so no helper call is needed. */
static __always_inline __u64 xlb_csum_add32(__u64 sum, __u32 old, __u32 new)
{
	return sum + (__u32)~old + new;
}

/* Folds a 64-bit running sum to 16 bits with end-around carries. */
static __always_inline __u16 xlb_csum_fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* A UDP checksum that computes to zero is sent as all ones (RFC 768); zero means "none". */
static __always_inline __u16 xlb_udp_csum_mangle(__u16 check)
{
	return check ? check : 0xffff;
}

#endif
