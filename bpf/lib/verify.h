/* Checking a new flow's first packet's TCP/UDP checksum (RFC 9293 3.1, RFC 768, RFC 8200
 * 8.1) before xdp_lb makes a flow of it, answers it or sends it on: the kernel's stacks drop
 * a bad one, netfilter marks it INVALID, kube-proxy drops INVALID. */
#ifndef XLB_VERIFY_H
#define XLB_VERIFY_H

#define XLB_CSUM_CHUNK 512 /* bpf_csum_diff's most at once */

/* Whether p's L4 checksum is right, or in the form a local sender leaves for the kernel to
 * finish (CHECKSUM_PARTIAL: the pseudo-header's sum alone, which a veth hands XDP as it is),
 * or cannot be checked here (a fragment: the checksum is the whole datagram's; IPv4 UDP
 * without one; a segment longer than 2048 bytes or past the frame's linear part). */
static __always_inline int xlb_l4_csum_plausible(void *data, void *data_end,
						 const struct xlb_pkt *p)
{
	if (p->frag)
		return 1;
	__u32 off = p->l4_off & XLB_L4_OFF_MASK;
	__u32 len = p->l4_len & 0xffff;
	__u16 *field = data + off + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							    : offsetof(struct udphdr, check));
	if ((void *)(field + 1) > data_end)
		return 1;
	if (p->proto == IPPROTO_UDP && p->family == 4 && *field == 0)
		return 1;
	__u32 pseudo = xlb_pseudo_sum(p, &p->saddr, &p->daddr, p->proto, len);
	if (*field == xlb_csum_fold(pseudo))
		return 1; /* the sender's kernel still owes the rest */
	__u64 sum = pseudo;
	__u32 pos = 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < 3; i++) {
		if (len - pos < XLB_CSUM_CHUNK)
			break;
		void *at = data + off + pos;
		if (at + XLB_CSUM_CHUNK > data_end)
			return 1;
		sum += (__u32)bpf_csum_diff(0, 0, at, XLB_CSUM_CHUNK, 0);
		pos += XLB_CSUM_CHUNK;
	}
#pragma clang loop unroll(disable)
	for (int i = 0; i < XLB_CSUM_CHUNK / 4; i++) {
		if (len - pos < 4)
			break;
		__u32 *word = data + off + (pos & 0x7ff);
		if ((void *)(word + 1) > data_end)
			return 1;
		sum += *word;
		pos += 4;
	}
	if (len - pos >= 4)
		return 1; /* longer than the loops go */
	__u8 *tail = data + off + (pos & 0x7ff);
	if (len - pos >= 2) {
		if ((void *)(tail + 2) > data_end)
			return 1;
		sum += *(__u16 *)tail; /* (memory order, as bpf_csum_diff sums) */
		tail += 2;
		pos += 2;
	}
	if (len - pos == 1) {
		if ((void *)(tail + 1) > data_end)
			return 1;
		sum += *tail; /* the odd byte, padded with a zero after it */
	}
	return xlb_csum_fold64(sum) == 0xffff;
}

#endif
