/* The rig's generator where the kernel refuses BPF_F_TEST_XDP_LIVE_FRAMES: the same UDP frames
 * as bench/bpf/gen.c, from user space, on a packet socket that bypasses the qdisc, in batches
 * of sendmmsg. Slower than the live frames (one core's system calls), and said so in the
 * results. Usage: afpacket IFNAME SECONDS FLOWS SPORT_OFF HEXFRAME; prints the frames sent.
 * flows == 0: a new flow every frame (source port and the source address's last byte move
 * together, 16 million flows before one repeats), else that many flows, round robin. The
 * frame is IPv4 at offset 14 with a 20-byte header. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define MAX_LEN 256

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void ip_checksum(uint8_t *ip)
{
	uint32_t sum = 0;
	ip[10] = ip[11] = 0;
	for (int i = 0; i < 20; i += 2)
		sum += (ip[i] << 8) | ip[i + 1];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip[10] = (~sum >> 8) & 0xff;
	ip[11] = ~sum & 0xff;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s IFNAME SECONDS FLOWS SPORT_OFF HEXFRAME\n", argv[0]);
		return 2;
	}
	double seconds = atof(argv[2]);
	uint32_t flows = strtoul(argv[3], NULL, 0), sport_off = strtoul(argv[4], NULL, 0);
	size_t len = strlen(argv[5]) / 2;
	if (len < 14 + 20 + 8 || len > MAX_LEN || sport_off + 2 > len) {
		fprintf(stderr, "afpacket: a frame of 42-%d bytes, the source port inside it\n", MAX_LEN);
		return 2;
	}
	static uint8_t frames[BATCH][MAX_LEN];
	for (size_t i = 0; i < len; i++)
		sscanf(argv[5] + 2 * i, "%2hhx", &frames[0][i]);
	for (int b = 1; b < BATCH; b++)
		memcpy(frames[b], frames[0], len);

	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("afpacket: socket");
		return 1;
	}
	int one = 1;
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
	struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1]),
				 .sll_halen = ETH_ALEN};
	if (!to.sll_ifindex) {
		perror("afpacket: interface");
		return 1;
	}
	memcpy(to.sll_addr, frames[0], ETH_ALEN);
	struct iovec iov[BATCH];
	struct mmsghdr msgs[BATCH];
	memset(msgs, 0, sizeof(msgs));
	for (int b = 0; b < BATCH; b++) {
		iov[b] = (struct iovec){frames[b], len};
		msgs[b].msg_hdr = (struct msghdr){.msg_name = &to, .msg_namelen = sizeof(to),
						  .msg_iov = &iov[b], .msg_iovlen = 1};
	}
	uint64_t sent = 0, n = 0, loops = 0;
	double end = now() + seconds;
	while (++loops % 16 || now() < end) {
		for (int b = 0; b < BATCH; b++) {
			n++;
			uint16_t port = flows ? 1024 + n % flows : 1024 + n % 64000;
			frames[b][sport_off] = port >> 8;
			frames[b][sport_off + 1] = port & 0xff;
			if (!flows) {
				frames[b][14 + 15] = 2 + (n / 64000) % 250;
				ip_checksum(frames[b] + 14);
			}
		}
		int done = sendmmsg(fd, msgs, BATCH, 0);
		if (done > 0)
			sent += done;
	}
	printf("%llu\n", (unsigned long long)sent);
	return 0;
}
