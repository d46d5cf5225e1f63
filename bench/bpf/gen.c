/* The rig's generator: run with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES, it sends one
 * UDP frame per run with XDP_TX. Live-frame pages are recycled after the stack rewrote them,
 * so every run writes the whole frame from the template; the source port moves on each run
 * (flows == 0: a new flow every packet, source port and the source address's last byte
 * moving together, 16 million flows before one repeats; else that many flows, round robin).
 * The frame is IPv4 at offset 14 with a 20-byte header. */
#include <uapi/linux/bpf.h>

#define GEN_LEN 64

struct gen_tmpl {
	__u8 frame[GEN_LEN];
	__u32 flows;
	__u32 sport_off; /* where the UDP source port sits in the frame */
};

BPF_ARRAY(gen_tmpl, struct gen_tmpl, 1);
BPF_PERCPU_ARRAY(gen_seq, __u32, 1);

int gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_tmpl *t = gen_tmpl.lookup(&zero);
	__u32 *seq = gen_seq.lookup(&zero);
	if (!t || !seq || data + GEN_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, t->frame, GEN_LEN);
	__u32 n = ++*seq;
	__u16 port = t->flows ? 1024 + n % t->flows : 1024 + n % 64000;
	__u32 off = t->sport_off & 0x3f;
	if (data + off + 2 > data_end || data + 14 + 20 > data_end)
		return XDP_ABORTED;
	*(__be16 *)(data + off) = bpf_htons(port);
	if (!t->flows) {
		__u8 *ip = data + 14;
		ip[15] = 2 + (n / 64000) % 250; /* source address, last byte */
		ip[10] = ip[11] = 0;
		__u32 sum = 0;
#pragma unroll
		for (int i = 0; i < 10; i++)
			sum += ((__u16 *)ip)[i];
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		*(__u16 *)(ip + 10) = ~sum;
	}
	return XDP_TX;
}
