"""kube-proxy's rules for the benchmarks: what its iptables and nftables modes write for N
Services of one endpoint each, with the filter chains every node has.

An emulation, not kube-proxy: written by hand from pkg/proxy/iptables/proxier.go and
pkg/proxy/nftables/proxier.go (and the rulesets their unit tests expect), so that a rig can
load them without a cluster. Kept: the chains a packet walks (KUBE-SERVICES in order, one
KUBE-SVC and KUBE-SEP per Service, the mark for masquerade and the POSTROUTING that acts on
it; nftables' service-ips verdict map and its filter chains). Left out: what a one-endpoint
Service does not use (the probability rules of several endpoints, affinity's recent
module, KUBE-EXT and KUBE-NODEPORTS chains, the metrics), so a real node with these Services
walks at least these rules, and a few more.
"""

from __future__ import annotations

# The filter table every kube-proxy node in iptables mode has, as kube-proxy writes it: each
# forwarded packet walks FORWARD (new connections also the firewall and service chains) and
# KUBE-FORWARD, whose conntrack rule accepts an established flow's packets.
NEW = "-m conntrack --ctstate NEW"
KUBE_PROXY_FILTER = "\n".join(
    [
        "*filter",
        *(f":{c} ACCEPT [0:0]" for c in ("INPUT", "FORWARD", "OUTPUT")),
        *(
            f":{c} - [0:0]"
            for c in (
                "KUBE-PROXY-FIREWALL",
                "KUBE-FORWARD",
                "KUBE-SERVICES",
                "KUBE-EXTERNAL-SERVICES",
                "KUBE-NODEPORTS",
                "KUBE-FIREWALL",
            )
        ),
        f'-A INPUT {NEW} -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        f'-A INPUT {NEW} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        "-A INPUT -j KUBE-FIREWALL",
        f'-A FORWARD {NEW} -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f'-A FORWARD {NEW} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'-A FORWARD {NEW} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        f'-A OUTPUT {NEW} -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        f'-A OUTPUT {NEW} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -j KUBE-FIREWALL",
        "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 "
        '-m comment --comment "block incoming localnet connections" '
        "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
        "-m mark --mark 0x4000/0x4000 -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
        "",
    ]
)

# The same for kube-proxy's nftables mode: its filter chains, inside `table ip kube-proxy`
# (the check chains hold rules only for Services without endpoints or with source ranges).
KUBE_PROXY_NFT_FILTER = """  chain firewall-check { }
  chain service-endpoints-check { }
  chain cluster-ips-check { }
  chain nodeport-endpoints-check { }
  chain filter-prerouting {
    type filter hook prerouting priority dstnat - 10; policy accept;
    ct state new jump firewall-check
  }
  chain filter-input {
    type filter hook input priority -110; policy accept;
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }
  chain filter-forward {
    type filter hook forward priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }
  chain filter-output {
    type filter hook output priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump firewall-check
  }
"""


def iptables_rules(
    vips: list[str],
    proto: str,
    port: int,
    backend: str,
    backend_port: int,
    masquerade: bool = True,
    postrouting: bool = True,
) -> str:
    """kube-proxy's iptables mode for one Service per vip, in this order in KUBE-SERVICES
    (put the measured one last: it walks them all), each to backend:backend_port;
    masquerade: externalTrafficPolicy Cluster marks the packet for SNAT (Local does not);
    postrouting: with the nat POSTROUTING chains that act on the mark. With the filter
    table."""
    head = ["*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
    jumps = ['-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
    if postrouting:
        head += [":POSTROUTING ACCEPT [0:0]"]
        jumps += ["-A POSTROUTING -j KUBE-POSTROUTING"]
    if masquerade or postrouting:  # the mark's chain
        head += [":KUBE-MARK-MASQ - [0:0]"]
        jumps += ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    if postrouting:  # and what acts on the mark
        head += [":KUBE-POSTROUTING - [0:0]"]
        jumps += [
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
        ]
    chains, rules = [], []
    for i, vip in enumerate(vips):
        svc, sep = f"KUBE-SVC-{i:012d}", f"KUBE-SEP-{i:012d}"
        chains += [f":{svc} - [0:0]", f":{sep} - [0:0]"]
        rules += [
            f"-A KUBE-SERVICES -d {vip}/32 -p {proto} -m {proto} --dport {port} -j {svc}",
            *([f"-A {svc} -j KUBE-MARK-MASQ"] if masquerade else []),
            f"-A {svc} -j {sep}",
            f"-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {backend}:{backend_port}",
        ]
    return "\n".join(head + chains + jumps + rules + ["COMMIT", KUBE_PROXY_FILTER])


def nft_rules(
    vips: list[str],
    proto: str,
    port: int,
    backend: str,
    backend_port: int,
    masquerade: bool = True,
    postrouting: bool = True,
) -> str:
    """kube-proxy's nftables mode for the same Services: one verdict map keyed by address .
    protocol . port, a chain per Service, its filter chains, and (postrouting) the
    masquerade of marked packets."""
    mark = "meta mark set 0x4000 " if masquerade else ""
    elems = ", ".join(f"{vip} . {proto} . {port} : goto svc-{i}" for i, vip in enumerate(vips))
    chains = "\n".join(
        f"  chain svc-{i} {{ meta l4proto {proto} {mark}dnat to {backend}:{backend_port}; }}"
        for i in range(len(vips))
    )
    post = (
        """  chain nat-postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    meta mark 0x4000 masquerade fully-random
  }
"""
        if postrouting
        else ""
    )
    return f"""table ip kube-proxy {{
  map service-ips {{
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = {{ {elems} }}
  }}
{chains}
{KUBE_PROXY_NFT_FILTER}  chain nat-prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr . meta l4proto . th dport vmap @service-ips
  }}
{post}}}
"""
