"""The lab's wiring, with iproute2: a LAN bridge, nodes, a client, pods, and a host for
hand-written endpoints, each in its own network namespace.

Every veth has TX checksum offload off: frames then carry full checksums as on a wire, which
is what XDP programs are written for (an skb's partial-checksum state is invisible to XDP).
The LAN side of each node's uplink runs bpf/xdp_pass.c, because a veth delivers the frames
its peer sends with XDP_TX only while an XDP program is attached on its own side.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import os
import subprocess
from collections.abc import Iterator

LAN4, LAN6 = ipaddress.ip_network("192.168.198.0/24"), ipaddress.ip_network("fd00:198::/64")
CLIENT4, CLIENT6 = "192.168.198.100", "fd00:198::100"
EXT4, EXT6 = "192.168.198.250", "fd00:198::250"  # the host behind hand-written Endpoints


class LabError(RuntimeError):
    """A lab step failed; the message names the command and what it said."""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise LabError(f"xlb lab: `{' '.join(args)}` failed: {out.stderr.strip()}")
    return out


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("ip", "-n", ns, *args, check=check)


def short(*parts: str) -> str:
    """A root-namespace interface name (≤ 15 characters) that no other lab object uses."""
    return "xl" + hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Runs the body of the with-statement in network namespace name (this thread only);
    sockets and netlink handles made inside stay in it."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        yield
    finally:
        _libc.setns(own, _CLONE_NEWNET)
        os.close(own)
        os.close(target)


def add_netns(name: str) -> None:
    run("ip", "netns", "add", name)
    ip(name, "link", "set", "lo", "up")


def sysctl(ns: str, *settings: str) -> None:
    run("ip", "netns", "exec", ns, "sysctl", "-qw", *settings)


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, tag: str) -> None:
    """A veth pair between two namespaces, created in the root namespace under unique
    temporary names and renamed once moved."""
    a, b = short(tag, "a"), short(tag, "b")
    run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    run("ip", "link", "set", a, "netns", ns_a, "name", name_a)
    run("ip", "link", "set", b, "netns", ns_b, "name", name_b)
    for ns, dev in ((ns_a, name_a), (ns_b, name_b)):
        run("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off")
        ip(ns, "link", "set", dev, "up")


def lan(ns: str) -> None:
    add_netns(ns)
    ip(ns, "link", "add", "br0", "type", "bridge")
    ip(ns, "link", "set", "br0", "up")


def attach_to_lan(lan_ns: str, host_ns: str, tag: str, addrs: list[str], xdp_pass_fn=None) -> None:
    """host_ns gets eth0 on the LAN with addrs; the LAN side joins the bridge and, for
    nodes, runs xdp_pass so that frames the node's XDP sends back out (XDP_TX) arrive."""
    port = f"p{hashlib.sha256(tag.encode()).hexdigest()[:10]}"
    # a namespace deleted just before (a re-created host) takes its veth pair down only
    # when the kernel gets round to it: the LAN end may still be there under this name
    run("ip", "-n", lan_ns, "link", "del", port, check=False)
    veth(host_ns, "eth0", lan_ns, port, tag)
    ip(lan_ns, "link", "set", port, "master", "br0")
    if xdp_pass_fn is not None:
        from ..datapath.attach import attach_xdp_pass

        with inside(lan_ns):
            attach_xdp_pass(xdp_pass_fn, port)
    for a in addrs:
        plen = 24 if ":" not in a else 64
        ip(host_ns, "addr", "add", f"{a}/{plen}", "dev", "eth0", *(("nodad",) if ":" in a else ()))


def pod_link(
    node_ns: str, pod_ns: str, host_veth: str, ips: list[str], gateways: list[str]
) -> None:
    """A pod on its node: eth0 with /32 (/128) addresses and a link-scoped gateway on the
    node side, so that pod to pod always goes through the node, as with most CNIs."""
    veth(pod_ns, "eth0", node_ns, host_veth, f"{pod_ns}/{host_veth}")
    for gw in gateways:
        v6 = ":" in gw
        ip(
            node_ns,
            "addr",
            "add",
            f"{gw}/{128 if v6 else 32}",
            "dev",
            host_veth,
            *(("nodad",) if v6 else ()),
        )
        ip(pod_ns, *(("-6",) if v6 else ()), "route", "add", gw, "dev", "eth0", "scope", "link")
        ip(pod_ns, *(("-6",) if v6 else ()), "route", "add", "default", "via", gw)
    for a in ips:
        v6 = ":" in a
        ip(
            pod_ns,
            "addr",
            "add",
            f"{a}/{128 if v6 else 32}",
            "dev",
            "eth0",
            *(("nodad",) if v6 else ()),
        )
        ip(node_ns, *(("-6",) if v6 else ()), "route", "replace", a, "dev", host_veth)


def route(ns: str, dest: str, via: str) -> None:
    ip(ns, *(("-6",) if ":" in dest else ()), "route", "replace", dest, "via", via)


def netns_list(prefix: str) -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in out if line.startswith(prefix)]


def pids_in(ns: str) -> list[int]:
    out = run("ip", "netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def listening(ns: str, ports: list[tuple[str, int]]) -> bool:
    """Whether every (proto, port) has a listener in ns."""
    tcp = run("ip", "netns", "exec", ns, "ss", "-Hltn", check=False).stdout
    udp = run("ip", "netns", "exec", ns, "ss", "-Hlun", check=False).stdout
    for proto, port in ports:
        table = tcp if proto == "tcp" else udp
        if not any(
            line.split()[3].endswith(f":{port}")
            for line in table.splitlines()
            if len(line.split()) > 3
        ):
            return False
    return True
