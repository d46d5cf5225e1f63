/* Kernel headers every entry program needs. Only UAPI and generic networking headers: bcc
 * builds against whatever kernel headers the host has, and these are stable across versions. */
#ifndef XLB_HEADERS_H
#define XLB_HEADERS_H
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>
#include <uapi/linux/pkt_cls.h>

#define XLB_NS_PER_SEC 1000000000ULL

/* Every helper is static __always_inline: bcc gives each non-static function its own section
 * and does not link calls between sections, so BPF-to-BPF calls are not available. Large
 * temporaries are kept few and short-lived to stay within the 512-byte stack. */
/* (for bpf_fib_lookup's family) */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#endif
