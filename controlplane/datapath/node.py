"""One node's datapath: the three programs compiled against the same pinned maps (in a child
process: datapath/loader.py), attached to the uplink and a cgroup, and a Syncer to program
the maps."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..heap import collector_paused
from ..model.state import DesiredState
from . import attach, conntrack, loader, migrate, sockets
from .config import DatapathConfig
from .devices import pod_veths
from .maps import CLOCK_COARSE, Maps
from .programs import DatapathError
from .sync import Syncer, SyncResult

log = logging.getLogger("xlb.datapath")

# What forwarding to backends needs from the kernel: bpf_fib_lookup refuses to route when
# forwarding is off, and local backends are reached through the stack's forwarding path.
SYSCTLS = {
    "/proc/sys/net/ipv4/ip_forward": "1",
    "/proc/sys/net/ipv6/conf/all/forwarding": "1",
}


def ensure_sysctls(snat_ports: tuple[int, int] | None = None) -> list[str]:
    """Sets what SYSCTLS lists and reserves the SNAT port range from the node's ephemeral
    ports; returns a line per change, for the user to see."""
    changed = []
    for path, value in SYSCTLS.items():
        p = Path(path)
        name = path.removeprefix("/proc/sys/").replace("/", ".")
        if p.exists() and p.read_text().strip() != value:
            try:
                p.write_text(value)
            except OSError as exc:  # an unprivileged container: the init container sets it
                changed.append(f"cannot set {name}={value} ({exc.strerror}); forwarding to "
                               "backends needs it: run `xlb prepare-node` privileged")  # fmt: skip
                continue
            changed.append(f"set {name}={value}")
    reserved = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
    if snat_ports and reserved.exists():
        current = reserved.read_text().strip()
        want = f"{snat_ports[0]}-{snat_ports[1]}"
        if want not in current.split(","):
            value = f"{current},{want}" if current else want
            try:
                reserved.write_text(value)
            except OSError as exc:
                changed.append(f"cannot reserve the SNAT ports {want} ({exc.strerror})")
                return changed
            changed.append(
                f"set net.ipv4.ip_local_reserved_ports={value} (SNAT ports to "
                "backends on other nodes)"
            )
    return changed


@dataclass
class NodeDatapath:
    cfg: DatapathConfig
    maps: Maps
    syncer: Syncer
    uplink_mac: str = ""
    policy_rules: int = -1  # of the last sync (-1: not looked yet)
    pods_hooked: set[int] | None = None  # pod veths this process hooked (None: none yet)
    pods_warned: set[int] = field(default_factory=set)  # ... or said it could not

    @classmethod
    def load(
        cls,
        cfg: DatapathConfig,
        uplink: str,
        cgroup: str,
        native: bool = True,
        preloaded: bool = False,
        devices: list[str] | None = None,
    ) -> NodeDatapath:
        """Compiles the programs and attaches them over any earlier ones (the first creates
        the pinned maps, the rest open them), then opens the maps for the sync. preloaded:
        `xlb prepare-node` did the compiling and attaching (the DaemonSet's privileged init
        container), so only the pins are opened; reopening pinned maps by compiling needs
        CAP_SYS_ADMIN (bcc reopens them by id), opening them by path does not."""
        if preloaded and not os.path.exists(os.path.join(cfg.pin_root, "layout")):
            raise DatapathError(
                f"xlb: nothing is loaded under {cfg.pin_root}: run `xlb prepare-node "
                "--uplink ...` first (the DaemonSet's init container does), or drop --preloaded"
            )
        devices = devices or [uplink]
        if not preloaded:
            loader.load(cfg, devices, cgroup, native)
        maps = Maps.open(cfg.pin_root)
        with collector_paused():  # reads back every entry: 365,000 objects at 10,000 Services
            syncer = Syncer(maps, cfg)
        syncer.sync_devices(device_macs(devices))
        return cls(cfg, maps, syncer, interface_mac(uplink))

    def apply(self, state: DesiredState, node_addr4: str, node_addr6: str) -> SyncResult:
        try:
            rules = policy_rules()
        except Exception as exc:  # netlink refused: assume rules, the safe side
            log.warning("cannot list the routing rules (%s); FIB answers not cached", exc)
            rules = 1
        if rules != self.policy_rules:
            log.info(
                "FIB answers %s (%d policy routing rules)",
                "not cached: routes may depend on more than the destination" if rules else "cached",
                rules,
            )
            self.policy_rules = rules
        self._hook_pods()  # (a new pod's veth: with its sync)
        return self.syncer.sync(state, node_addr4, node_addr6, self.uplink_mac, not rules)

    def _hook_pods(self) -> None:
        """With --local-delivery redirect: the pod veths tc_lb_in may hand packets to, and
        tc_lb_pod on each (the first sync puts this xlb's program into the links an earlier
        one left). Otherwise xlb's links on pod veths go (the programs would pass anyway)."""
        root = self.cfg.pin_root
        pinned = attach.pod_hooks(root)
        if self.syncer.cfg.local_delivery != "redirect":
            if pinned:
                attach.hook_pods(root, set(), pinned)
            return
        # (the devices xlb serves are not pods' veths, even when they are veths: a lab's)
        veths = pod_veths() - {int(k.value) for k in self.syncer.maps.devices}
        self.syncer.sync_peer_devs(veths)
        done = self.pods_hooked or set()
        failed = attach.hook_pods(root, veths - done, pinned - veths)
        for index, why in failed.items():
            if index not in self.pods_warned:
                hint = " (the agent needs CAP_NET_ADMIN for it)" if "not permitted" in why else ""
                log.warning("pod veth %d: replies take the stack (cannot attach tc_lb_pod: %s)%s",
                            index, why, hint)  # fmt: skip
        self.pods_warned = set(failed)
        # (a veth gone and its ifindex given to a new one between two syncs keeps a dead
        # link: that pod's replies take the stack; the kernel hands ifindexes out in turn)
        self.pods_hooked = veths - set(failed)

    def announce(self, owned: set[str]) -> tuple[set[str], set[str]]:
        return self.syncer.sync_lb_ips(owned)

    def heartbeat(self) -> None:
        self.syncer.heartbeat()

    def silence(self) -> None:
        self.syncer.silence()

    def collect_conntrack(self) -> conntrack.Collected:
        """One pass of the conntrack collector (flows that are over, deleted)."""
        maps, timeouts = self.syncer.maps, self.syncer.cfg.ct_timeouts
        out = conntrack.Collected()
        for table in (maps.ct, maps.ct_new):
            done = conntrack.collect(table, timeouts, lambda: time.clock_gettime_ns(CLOCK_COARSE))
            out.scanned += done.scanned
            out.deleted += done.deleted
            out.seconds += done.seconds
        return out

    def reconcile_udp(self, gone: set[tuple[int, str, int]]) -> sockets.Reconciled:
        """Resets the connected UDP sockets pointed at these backends (sockets.py)."""
        return sockets.reconcile(self.syncer.maps, gone)

    def held_lb_ips(self) -> set[str]:
        return self.syncer.held_lb_ips()


# The kernel's own routing rules (ip rule): (priority, table) of local, main and default.
_DEFAULT_RULES = {(0, 255), (32766, 254), (32767, 253)}
_PLAIN_RULE_ATTRS = {"FRA_TABLE", "FRA_PRIORITY", "FRA_PROTOCOL", "FRA_SUPPRESS_PREFIXLEN"}


def policy_rules() -> int:
    """How many routing rules this network namespace has beyond the kernel's own, IPv4 and
    IPv6. With any, a route may depend on the source, ports, marks or interfaces, and the
    datapath stops caching FIB answers by destination (forward.h)."""
    from pyroute2 import IPRoute

    extra = 0
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for rule in ipr.get_rules(family=family):
                key = (rule.get_attr("FRA_PRIORITY") or 0, rule.get_attr("FRA_TABLE"))
                plain = {name for name, _ in rule["attrs"]} <= _PLAIN_RULE_ATTRS
                if key not in _DEFAULT_RULES or not plain or rule["src_len"] or rule["dst_len"]:
                    extra += 1
    return extra


def device_macs(devices: list[str]) -> dict[int, str]:
    """ifindex -> MAC of each device (those not here are left out)."""
    from .devices import interfaces

    by_name = {i.name: i for i in interfaces()}
    return {by_name[d].index: by_name[d].mac for d in devices if d in by_name and by_name[d].mac}


def interface_mac(ifname: str) -> str:
    """The MAC of ifname in this process's network namespace (netlink; /sys/class/net shows
    the namespace sysfs was mounted in, which `nsenter --net` does not change)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        return ipr.get_links(idx[0])[0].get_attr("IFLA_ADDRESS") if idx else ""


def warm_neighbours(addresses: Iterable[str]) -> int:
    """Has the kernel resolve the next hop towards each address, by sending one empty UDP
    datagram to its discard port. bpf_fib_lookup only finds neighbours that are resolved
    already, and an XDP program cannot resolve one: without this, the first flows to a
    backend on another node would be dropped (drop_fib) until something else talked to it."""
    sent = 0
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
            s.setblocking(False)
            s.sendto(b"", (address, 9))
            sent += 1
    return sent


def remote_addresses(state: DesiredState, node_addresses: Iterable[str]) -> set[str]:
    """Where XDP may forward to: backends on other nodes, and the other nodes themselves."""
    out = {b.address for fe in state.frontends for b in fe.backends + fe.draining if not b.local}
    return out | set(node_addresses)


def unload(devices: Iterable[str], cgroup: str | None, pin_root: str) -> None:
    """Detaches everything xlb attached and removes its pins; safe to repeat."""
    attach.detach_links(pin_root)
    attach.detach_legacy(list(devices), cgroup)
    shutil.rmtree(pin_root, ignore_errors=True)
    migrate.remove_scratch(pin_root)
