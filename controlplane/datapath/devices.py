"""Which of the node's interfaces xlb serves (--devices, like Cilium's): names, shell globs,
or auto, and the node's addresses on them (NodePorts answer there)."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass

AUTO = "auto"


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    up: bool
    loopback: bool
    mac: str
    addresses: tuple[str, ...]  # global unicast addresses (no link-local)
    default_route: bool


def interfaces() -> list[Interface]:
    """This network namespace's interfaces, as netlink tells them."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        addrs: dict[int, list[str]] = {}
        for a in ipr.get_addr():
            ip = ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
            if not ip.is_link_local:
                addrs.setdefault(a["index"], []).append(str(ip))
        defaults = {
            r.get_attr("RTA_OIF") for family in (2, 10) for r in ipr.get_default_routes(family)
        }
        out = []
        for link in ipr.get_links():
            flags = link["flags"]
            out.append(
                Interface(
                    name=link.get_attr("IFLA_IFNAME"),
                    index=link["index"],
                    up=bool(flags & 1),  # IFF_UP
                    loopback=bool(flags & 8),  # IFF_LOOPBACK
                    mac=link.get_attr("IFLA_ADDRESS") or "",
                    addresses=tuple(addrs.get(link["index"], ())),
                    default_route=link["index"] in defaults,
                )
            )
    return out


def choose(spec: list[str], node_ips: list[str], found: list[Interface]) -> list[str]:
    """The interfaces --devices names, in the order given: exact names, globs (eth*), and
    auto (every up, non-loopback interface holding one of node_ips or a default route).
    Raises ValueError naming what matched nothing."""
    chosen: list[str] = []
    for entry in (e.strip() for x in spec for e in x.split(",")):
        if not entry:
            continue
        if entry == AUTO:
            names = [
                i.name
                for i in found
                if i.up and not i.loopback and (i.default_route or set(i.addresses) & set(node_ips))
            ]
        else:
            names = [i.name for i in found if fnmatch.fnmatchcase(i.name, entry)]
        if not names:
            have = ", ".join(i.name for i in found if not i.loopback) or "none"
            what = (
                "no up interface holds a node address or the default route"
                if entry == AUTO
                else "no such interface"
            )
            raise ValueError(f"--devices {entry}: {what} (interfaces here: {have})")
        chosen += [n for n in names if n not in chosen]
    return chosen


def local_addresses(found: list[Interface]) -> dict[str, str]:
    """Every global address of this node -> the interface holding it."""
    return {a: i.name for i in found if not i.loopback for a in i.addresses}


def unserved(
    frontends: list[tuple[str, str, int, str]], served: list[str], where: dict[str, str]
) -> list[tuple[str, str, int, str, str]]:
    """The frontends (service, address, port, protocol) on a local address of an interface
    xlb does not serve: traffic that arrives there is not balanced. With the interface."""
    return [
        (service, address, port, proto, where[address])
        for service, address, port, proto in frontends
        if address in where and where[address] not in served
    ]


def pod_veths() -> set[int]:
    """The ifindexes of the veths whose other end is in another network namespace (a pod's,
    as CNIs plug them): where --local-delivery redirect may hand packets with
    bpf_redirect_peer, which drops them on a device of any other kind."""
    from pyroute2 import IPRoute

    out = set()
    with IPRoute() as ipr:
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if kind == "veth" and link.get_attr("IFLA_LINK_NETNSID") is not None:
                out.add(link["index"])
    return out
