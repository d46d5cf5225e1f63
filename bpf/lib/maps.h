/* Every map and every struct the datapath shares with the control plane: the single source of
 * their layouts. The control plane reads them back through bcc's generated Key/Leaf types.
 * Sizes come from the loader (-D), so the C and the config always agree. */
#ifndef XLB_MAPS_H
#define XLB_MAPS_H

#ifndef XLB_PIN_ROOT
#define XLB_PIN_ROOT "/sys/fs/bpf/xlb"
#endif
#ifndef XLB_MAX_SERVICES
#define XLB_MAX_SERVICES 65536
#endif
#ifndef XLB_MAX_BACKENDS
#define XLB_MAX_BACKENDS 65536
#endif
#ifndef XLB_MAX_SLOTS
#define XLB_MAX_SLOTS 262144
#endif
#ifndef XLB_CT_SIZE
#define XLB_CT_SIZE 262144
#endif
#ifndef XLB_CT_NEW_SIZE
#define XLB_CT_NEW_SIZE 65536
#endif
#ifndef XLB_FRAGS_SIZE
#define XLB_FRAGS_SIZE 8192
#endif
#ifndef XLB_AFFINITY_SIZE
#define XLB_AFFINITY_SIZE 65536
#endif
#ifndef XLB_MAX_DEVICES
#define XLB_MAX_DEVICES 64 /* interfaces xlb serves on one node (--devices) */
#endif
#ifndef XLB_MAX_LB_IPS
#define XLB_MAX_LB_IPS 4096
#endif
#ifndef XLB_SOCK_REV_SIZE
#define XLB_SOCK_REV_SIZE 65536
#endif
#ifndef XLB_MAX_NODE_ADDRS
#define XLB_MAX_NODE_ADDRS 16384 /* every Node's addresses, cluster-wide */
#endif
#ifndef XLB_MAX_PEER_DEVS
#define XLB_MAX_PEER_DEVS 4096 /* pod veths on one node (--local-delivery redirect) */
#endif
#ifndef XLB_MAX_SOURCE_RANGES
#define XLB_MAX_SOURCE_RANGES 16384
#endif

/* An address of either family: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), so one key layout
 * serves both and the two can never collide. */
union xlb_addr {
	__u8 u8[16];
	__be32 u32[4];
	__u64 u64[2];
};

/* Frontend scope: which hook looks the frontend up. */
#define XLB_SCOPE_INTERNAL 0 /* socket hooks: traffic that starts on the node or its pods */
#define XLB_SCOPE_EXTERNAL 1 /* XDP on the uplink: traffic from outside */

struct xlb_svc_key {
	union xlb_addr addr;
	__be16 port;
	__u8 proto;
	__u8 scope;
};

/* Backend selection for new flows. */
#define XLB_ALG_RANDOM 0
#define XLB_ALG_MAGLEV 1
#define XLB_ALG_SOURCE_HASH 2

#define XLB_SVC_F_PRESERVE_CLIENT 0x1 /* externalTrafficPolicy Local: never SNAT */
#define XLB_SVC_F_DROP_EMPTY 0x2      /* no usable backend: drop (not reject) */
#define XLB_SVC_F_SOURCE_RANGES 0x4   /* only clients in xlb_source_ranges may connect */
#define XLB_SVC_F_DSR 0x8             /* flows to remote backends by direct server return (dsr.h) */

struct xlb_svc {
	__u32 id;               /* this frontend: counters */
	__u32 group;            /* its backend group: slots, Maglev table and affinity */
	__u32 affinity_timeout; /* seconds; 0: no session affinity */
	__u16 count;            /* slots 1..count hold the candidates for new flows */
	__u8 algorithm;
	__u8 pad1;
	__u16 flags;
	__u16 pad;
};

struct xlb_slot_key {
	__u32 group;
	__u32 slot;
};

#define XLB_BE_F_LOCAL 0x1       /* runs on this node: deliver, never SNAT */
#define XLB_BE_F_TERMINATING 0x2 /* existing flows only (terminating, or not ready) */
#define XLB_BE_F_NOT_SERVING 0x4 /* its UDP flows move on (kube-proxy clears their conntrack) */
#define XLB_BE_F_DSR 0x8         /* its node runs xlb, which takes DSR's carrier off (dsr.h) */

struct xlb_backend {
	union xlb_addr addr;
	__be16 port;
	__u8 flags;
	__u8 pad;
};

/* Connection tracking for outside traffic. Forward entries are keyed by the client's tuple as
 * it arrived; reverse entries by the backend's reply tuple, to restore the frontend. */
struct xlb_ct_key {
	union xlb_addr saddr;
	union xlb_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

#define XLB_CT_F_REVERSE 0x1 /* a reply entry: restores the frontend as the source */
#define XLB_CT_F_SNAT 0x2    /* the forward flow was SNATed to the node address */
#define XLB_CT_F_CLOSING 0x4 /* TCP: a FIN each way, or a RST: over once the close timeout passes */
/* Direct server return, on the balancing node: a forward entry alone (the replies go to the
 * client from the backend's node), whose packets leave with the carrier (dsr.h). */
#define XLB_CT_F_DSR 0x8
/* On the backend's node: the pair a carrier made, as if this node had balanced the flow; its
 * backend's SYN-ACK has its MSS lowered by the carrier's size (tc_lb). */
#define XLB_CT_F_DSR_IN 0x10

/* A flow's state (xlb_ct.state). Established is 0, so that entries an older xlb wrote (it had
 * no state) carry over as the live flows they are. */
#define XLB_CT_EST 0 /* TCP: the handshake completed (or a picked-up flow's backend spoke);
		      * UDP: a reply came */
#define XLB_CT_NEW 1 /* not yet: a SYN (answered or not), a mid-stream pickup, a first datagram */

/* What a TCP flow has seen (xlb_ct.seen), the same in both of its entries. */
#define XLB_CT_S_FIN_FWD 0x1   /* the client's FIN */
#define XLB_CT_S_FIN_REV 0x2   /* the backend's FIN */
#define XLB_CT_S_RST 0x4       /* a RST: closing, unless both sides go on talking (forged) */
#define XLB_CT_S_AFTER_FWD 0x8 /* the client spoke (not a RST) after the RST */
#define XLB_CT_S_AFTER_REV 0x10 /* the backend spoke after the RST */
#define XLB_CT_S_SYNACK 0x20    /* the backend's SYN-ACK: established by the client's ACK */

/* How long a flow lives without a packet, by state: indexes of xlb_config.ct_timeout (seconds;
 * 0 there means the default here: kube-proxy's flags and the kernel's conntrack defaults). */
#define XLB_CT_T_TCP_NEW 0        /* SYN sent, no answer: a flood's entries go quickly */
#define XLB_CT_T_TCP_EST 1        /* --conntrack-tcp-timeout-established */
#define XLB_CT_T_TCP_CLOSE_WAIT 2 /* one side's FIN (half-closed): --conntrack-tcp-timeout-close-wait */
#define XLB_CT_T_TCP_CLOSE 3      /* both FINs or a RST: then its tuple (SNAT port) is free */
#define XLB_CT_T_UDP 4            /* no reply yet: --conntrack-udp-timeout */
#define XLB_CT_T_UDP_STREAM 5     /* replied: --conntrack-udp-timeout-stream */
#define XLB_CT_TIMEOUTS 6
#define XLB_CT_DEFAULT_TCP_NEW 10
#define XLB_CT_DEFAULT_TCP_EST 86400
#define XLB_CT_DEFAULT_TCP_CLOSE_WAIT 3600
#define XLB_CT_DEFAULT_TCP_CLOSE 10
#define XLB_CT_DEFAULT_UDP 30
#define XLB_CT_DEFAULT_UDP_STREAM 120
/* When every SNAT candidate is live, a new flow may take the port of a flow nobody answered
 * for this long (a SYN flood's, most likely): a real client has retransmitted by then. */
#define XLB_CT_RECLAIM_AGE (1ULL * XLB_NS_PER_SEC)
/* A live entry's stamp is moved on at most this often (a write per packet would cost). */
#define XLB_CT_REFRESH (1ULL * XLB_NS_PER_SEC)

/* The tuple a hit rewrites the packet to, in either direction. */
struct xlb_ct {
	union xlb_addr nat_saddr;
	union xlb_addr nat_daddr;
	__be16 nat_sport;
	__be16 nat_dport;
	__u16 flags;
	__u8 state; /* XLB_CT_EST, XLB_CT_NEW */
	__u8 seen;  /* XLB_CT_S_*: TCP FINs and RSTs */
	__u32 backend; /* forward: the backend id, checked on every hit */
	__u32 svc;     /* the frontend id, for counters */
	__u64 stamp;   /* coarse ns: the flow's last packet (to within XLB_CT_REFRESH) */
};

struct xlb_affinity_key {
	__u32 group;
	__u32 pad;
	union xlb_addr client;
};

/* A pin names its backend by id and by what the id stood for when it was set: an id is
 * reused once its endpoint is gone (another Service's new pod may get it), and a pin must
 * never follow it there. */
struct xlb_affinity {
	__u32 backend;
	__be16 port;    /* the backend's port and address when pinned */
	__u16 pad;
	__u64 last_used; /* ns, bpf_ktime_get_coarse_ns */
	union xlb_addr addr;
};

/* A fragmented datagram's later fragments carry no ports: they follow its first fragment,
 * whose ports are kept by the datagram's addresses, IP id and protocol as it arrived (as
 * Cilium does; netfilter reassembles instead). */
struct xlb_frag_key {
	union xlb_addr saddr;
	union xlb_addr daddr;
	__be32 id;
	__u8 proto;
	__u8 pad[3];
};

struct xlb_frag {
	__be16 sport;
	__be16 dport;
	__u32 pad;
	__u64 stamp; /* coarse ns of the first fragment */
};

/* How long a datagram's fragments may trail its first: the kernel's ipfrag_time. */
#define XLB_FRAG_TIMEOUT (30ULL * XLB_NS_PER_SEC)

/* loadBalancerSourceRanges: LPM over (frontend id, client address). prefixlen counts the 32
 * bits of the id plus the address bits (IPv4 ranges have 96 mapped bits in front). */
struct xlb_range_key {
	__u32 prefixlen;
	__u32 svc;
	union xlb_addr addr;
};

/* The cluster's service address space, for what the socket hooks find no frontend for
 * (kube-proxy's cluster-ips-check): LPM over the addresses of every ServiceCIDR, and each
 * allocated ClusterIP as a full-length prefix, which wins over its range. prefixlen counts
 * mapped bits (IPv4 has 96 in front). Bytes, not union xlb_addr: its 8-byte alignment would
 * put 4 bytes of padding after prefixlen, inside the bits the trie matches. */
struct xlb_net_key {
	__u32 prefixlen;
	__u8 addr[16];
};

#define XLB_NET_CLUSTER_IP 1   /* a live ClusterIP: its ports not served are refused */
#define XLB_NET_SERVICE_CIDR 2 /* a service range: an address no Service holds goes nowhere */

/* Socket-level translation: which frontend a socket's peer stands for, so recvmsg and
 * getpeername show the Service address instead of the backend chosen at connect time. */
struct xlb_sock_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	union xlb_addr addr;
	__be16 port;
	__u16 pad[3];
};

struct xlb_sock_rev {
	union xlb_addr addr;
	__be16 port;
	__u8 proto;  /* IPPROTO_*: a connected UDP socket to a backend that went is reset */
	__u8 pad;
	__u32 svc;
	__u64 netns; /* the socket's network namespace (bpf_get_netns_cookie): where to reset it */
};

/* Per-frontend counters (per CPU). */
struct xlb_svc_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 drops;
};

/* Why a packet was not balanced. Each reason has a per-CPU counter; the control plane names
 * them from this list, so keep the numbers stable. */
#define XLB_R_PASS_NOT_IP 0        /* not IPv4/IPv6 (ARP, LLDP, ...) */
#define XLB_R_PASS_VLAN 1          /* 802.1Q/ad tagged: not on an untagged uplink's services */
#define XLB_R_PASS_TRUNCATED 2     /* frame ends inside a header */
#define XLB_R_PASS_BAD_IP 3        /* bad version, IHL or length */
#define XLB_R_PASS_FRAGMENT 4      /* no L4 ports to match */
#define XLB_R_PASS_IPV6_EXT 5      /* IPv6 extension headers */
#define XLB_R_PASS_NOT_L4 6        /* neither TCP nor UDP */
#define XLB_R_PASS_NO_SERVICE 7    /* not addressed to a frontend */
#define XLB_R_DROP_NO_BACKEND 8    /* Local policy, no local backend */
#define XLB_R_REJECT_NO_BACKEND 9  /* no backend anywhere: RST / ICMP unreachable */
#define XLB_R_DROP_SOURCE_RANGE 10 /* client outside loadBalancerSourceRanges */
#define XLB_R_DROP_BACKEND_GONE 11 /* slot or Maglev table named a backend that is not there */
#define XLB_R_DROP_FIB 12          /* no route / neighbour towards a remote backend */
#define XLB_R_DROP_SNAT_EXHAUSTED 13
#define XLB_R_DROP_HEADROOM 14     /* could not make room to build a reply */
#define XLB_R_NEIGHBOUR_REPLY 15   /* ARP request / neighbour solicitation for an owned IP: answered */
#define XLB_R_PASS_NO_NEIGH 16     /* rewritten, next hop unresolved: the stack forwards and resolves */
#define XLB_R_DROP_NOT_SYN 17      /* TCP of no known flow, not a SYN, that would need a SNAT port */
#define XLB_R_CT_FULL 18           /* the conntrack table refused a flow's entry (sent on untracked) */
#define XLB_R_PASS_MARTIAN 19      /* group MAC, or a martian / IPv4-mapped address: never balanced */
#define XLB_R_PASS_OTHER_HOST 20   /* a unicast frame to another MAC (a promiscuous port) */
#define XLB_R_DROP_TTL 21          /* forwarded with TTL / hop limit 1 or 0: no further */
#define XLB_R_SNAT_RECLAIMED 22    /* a new flow took the SNAT port of one unanswered for a second */
#define XLB_R_PASS_NO_TAIL 23      /* a frontend's new flow, but xdp_lb's tail program is not loaded */
#define XLB_R_ICMP_TRANSLATED 24    /* an ICMP error about a tracked flow, rewritten to its sender's view */
#define XLB_R_DROP_ICMP_RATE 25    /* an ICMP error xdp_lb would send, over XLB_ICMP_RATE a second */
#define XLB_R_TIME_EXCEEDED 26     /* a packet to forward with no hop left: answered time exceeded */
#define XLB_R_PORT_REMAPPED 27     /* a new flow's source port remapped: its reply tuple was another live flow's */
#define XLB_R_DROP_BAD_CSUM 28     /* a new flow's first packet with a wrong TCP/UDP checksum */
#define XLB_R_REJECT_CLUSTER_PORT 29 /* a ClusterIP on a port (or protocol) it does not serve */
#define XLB_R_DROP_UNALLOCATED 30  /* an address of a service CIDR that no Service holds */
#define XLB_R_DSR_CARRIED 31        /* a DSR flow's packet: the frontend carried to the backend's node */
#define XLB_R_DSR_DELIVERED 32      /* the carrier taken off at the backend's node, the pod's replies answer from the frontend */
#define XLB_R_DROP_DSR_FORGED 33    /* a carrier naming no DSR frontend of this packet's protocol: not trusted */
#define XLB_R_DROP_DSR_TOO_BIG 34   /* a DSR flow's packet too big for the next hop with the carrier added */
#define XLB_R_DSR_NOT_CARRIABLE 35  /* a DSR flow's first packet with IPv4 options or IPv6 extension headers: SNAT */
#define XLB_R_LOCAL_REDIRECTED 36   /* --local-delivery redirect: into a local pod's namespace, past the host's stack */
#define XLB_R_LOCAL_REPLY_REDIRECTED 37 /* --local-delivery redirect: a local pod's reply straight to the uplink, past the host's stack */
#define XLB_R_MAX 38

/* A device xlb serves (--devices), by ifindex: what its ARP and neighbour answers carry. */
struct xlb_device {
	__u8 mac[6];
	__u16 flags; /* none yet */
};

/* Node-wide settings, written by the agent. */
struct xlb_config {
	union xlb_addr node_addr4; /* source for SNAT of IPv4 flows to remote backends */
	union xlb_addr node_addr6;
	__u32 uplink_ifindex;
	__u16 snat_port_min;
	__u16 snat_port_max;
	__u32 ring_size; /* the largest Maglev M a group's table may have (maglev.py) */
	__u8 uplink_mac[6]; /* ARP and neighbour answers on a device not in xlb_devices */
	__u8 fib_cache; /* 1: routing depends on the destination alone (no policy rules), so FIB
			 * answers may be cached (forward.h); 0 until the agent has looked */
	__u8 local_redirect; /* 1: --local-delivery redirect (tc_lb_in) */
	__u32 ct_timeout[XLB_CT_TIMEOUTS]; /* seconds, by XLB_CT_T_*; 0: the default */
	__u32 hash_seed; /* the cluster's: the same on every node, secret outside it; 0: maglev.h's */
	/* the node's own network namespace (bpf_get_netns_cookie; 0: not known): its processes
	 * are judged by source ranges as node_addr4/6, the address kube-proxy's check sees (the
	 * route to the frontend picks it), not by the one the route to the backend picks */
	__u64 node_netns;
};

BPF_TABLE_PINNED("hash", struct xlb_svc_key, struct xlb_svc, xlb_services, XLB_MAX_SERVICES,
		 XLB_PIN_ROOT "/services");
BPF_TABLE_PINNED("hash", struct xlb_slot_key, __u32, xlb_slots, XLB_MAX_SLOTS,
		 XLB_PIN_ROOT "/slots");
/* An array indexed by backend id (0 is never used): the JIT inlines the lookup, so checking
 * a tracked flow's backend on every packet costs almost nothing. port 0: no backend. */
BPF_TABLE_PINNED("array", __u32, struct xlb_backend, xlb_backends, XLB_MAX_BACKENDS,
		 XLB_PIN_ROOT "/backends");
/* Maglev: one table per backend group, by group id, each an array of its own size (the agent
 * creates it with BPF_F_INNER_MAP and sizes it from the group's backend count, maglev.py's
 * table_size). Row 0 holds M and the fingerprint of what the table was built from; rows 1..
 * hold the M backend ids, XLB_MAGLEV_LANES a row (an array entry takes at least 8 bytes: one
 * id a row would waste half). A new table is filled whole and then swapped in with one update
 * of the outer map, so a packet sees the old table or the new one, never a mix. The template
 * only tells the verifier the inner maps' kind (BPF_F_INNER_MAP: of any size). */
#define XLB_MAGLEV_LANES 4
struct xlb_maglev_row {
	__u32 id[XLB_MAGLEV_LANES];
};
BPF_F_TABLE("array", __u32, struct xlb_maglev_row, xlb_maglev_inner, 1, BPF_F_INNER_MAP);
BPF_TABLE_PINNED("hash_of_maps$xlb_maglev_inner", __u32, int, xlb_maglev, XLB_MAX_SERVICES,
		 XLB_PIN_ROOT "/maglev");
/* One LRU list, not per-CPU ones (BPF_F_NO_COMMON_LRU): XDP on one port runs mostly on one
 * CPU, so per-CPU lists would give it only max_entries / CPUs before evicting live flows;
 * measured, they did not make inserts faster either. */
BPF_TABLE_PINNED("lru_hash", struct xlb_ct_key, struct xlb_ct, xlb_ct, XLB_CT_SIZE,
		 XLB_PIN_ROOT "/ct");
/* Flows nobody has answered yet (state NEW) wait in a table of their own until the backend
 * answers, and only then move to xlb_ct: a flood of SYNs or first datagrams evicts its own
 * kind, never an established flow. */
BPF_TABLE_PINNED("lru_hash", struct xlb_ct_key, struct xlb_ct, xlb_ct_new, XLB_CT_NEW_SIZE,
		 XLB_PIN_ROOT "/ct_new");
BPF_TABLE_PINNED("lru_hash", struct xlb_frag_key, struct xlb_frag, xlb_frags, XLB_FRAGS_SIZE,
		 XLB_PIN_ROOT "/frags");
BPF_TABLE_PINNED("lru_hash", struct xlb_affinity_key, struct xlb_affinity, xlb_affinity,
		 XLB_AFFINITY_SIZE, XLB_PIN_ROOT "/affinity");
BPF_TABLE_PINNED("lru_hash", struct xlb_sock_key, struct xlb_sock_rev, xlb_sock_rev,
		 XLB_SOCK_REV_SIZE, XLB_PIN_ROOT "/sock_rev");
BPF_TABLE_PINNED("lpm_trie", struct xlb_range_key, __u8, xlb_source_ranges,
		 XLB_MAX_SOURCE_RANGES, XLB_PIN_ROOT "/source_ranges", BPF_F_NO_PREALLOC);
/* Sized by the frontends: every ClusterIP is one, and the ranges are few. */
BPF_TABLE_PINNED("lpm_trie", struct xlb_net_key, __u8, xlb_service_nets, XLB_MAX_SERVICES,
		 XLB_PIN_ROOT "/service_nets", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("percpu_array", __u32, struct xlb_svc_stats, xlb_stats, XLB_MAX_SERVICES,
		 XLB_PIN_ROOT "/stats");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, xlb_reasons, XLB_R_MAX, XLB_PIN_ROOT "/reasons");
BPF_TABLE_PINNED("array", __u32, struct xlb_config, xlb_config, 1, XLB_PIN_ROOT "/config");
/* The LoadBalancer IPs this node announces (the election's choice): xdp_lb answers ARP and
 * neighbour solicitations for them. */
BPF_TABLE_PINNED("hash", union xlb_addr, __u8, xlb_lb_ips, XLB_MAX_LB_IPS, XLB_PIN_ROOT "/lb_ips");
/* Every Node's addresses (the agent writes them): a DSR carrier naming one of them with a
 * NodePort is believed, as the NodePort is every node's (dsr.h, xdp_lb__dsr). */
BPF_TABLE_PINNED("hash", union xlb_addr, __u8, xlb_node_addrs, XLB_MAX_NODE_ADDRS,
		 XLB_PIN_ROOT "/node_addrs");
/* The host ends of the node's pod veths, by ifindex (the agent writes them, with
 * --local-delivery redirect): tc_lb_in hands a packet to a pod through bpf_redirect_peer,
 * which drops it on a device of another kind. */
BPF_TABLE_PINNED("hash", __u32, __u8, xlb_peer_devs, XLB_MAX_PEER_DEVS, XLB_PIN_ROOT "/peer_devs");
/* The devices the programs are attached to, by ifindex (the agent writes them). */
BPF_TABLE_PINNED("hash", __u32, struct xlb_device, xlb_devices, XLB_MAX_DEVICES,
		 XLB_PIN_ROOT "/devices");
/* The agent's heartbeat (coarse monotonic ns). The programs outlive the agent, which is how
 * traffic survives its restarts; but a node whose agent is gone must stop answering for
 * LoadBalancer IPs, or it would fight the node that took them over. */
#define XLB_ANNOUNCE_GRACE (1ULL * XLB_NS_PER_SEC)
BPF_TABLE_PINNED("array", __u32, __u64, xlb_heartbeat, 1, XLB_PIN_ROOT "/heartbeat");

#endif
