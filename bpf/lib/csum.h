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

/* The checksum field after n bytes (multiple of 4) at from became to: HC' = ~(~HC + ~m + m'). */
static __always_inline __u16 xlb_csum_update(__u16 check, void *from, void *to, __u32 n)
{
	__u32 sum = bpf_csum_diff(from, n, to, n, (__u32)(__u16)~check);
	return ~xlb_csum_fold(sum);
}

/* Adds a difference to a running partial sum (seed of the next bpf_csum_diff). */
static __always_inline __u32 xlb_csum_add(__u32 sum, void *from, void *to, __u32 n)
{
	return bpf_csum_diff(from, n, to, n, sum);
}

/* A UDP checksum that computes to zero is sent as all ones (RFC 768); zero means "none". */
static __always_inline __u16 xlb_udp_csum_mangle(__u16 check)
{
	return check ? check : 0xffff;
}

#endif
