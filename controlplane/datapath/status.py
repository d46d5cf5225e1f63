"""What the datapath holds right now, read from the pinned maps (no agent needed)."""

from __future__ import annotations

import ctypes as ct
import dataclasses
import time
from typing import Any

from .. import runstate
from ..model.state import Algorithm
from .config import seed_fingerprint
from .conntrack import Timeouts
from .maglev_tables import table_bytes as maglev_table_bytes
from .maps import (
    ALG_NAME,
    ALG_NUM,
    ANNOUNCE_GRACE_NS,
    BE_F_DSR,
    BE_F_LOCAL,
    BE_F_NOT_SERVING,
    BE_F_TERMINATING,
    CLOCK_COARSE,
    SVC_F_DROP_EMPTY,
    SVC_F_DSR,
    SVC_F_PRESERVE_CLIENT,
    SVC_F_SOURCE_RANGES,
    Maps,
    get_addr,
)

FLAG_NAMES = {
    SVC_F_PRESERVE_CLIENT: "preserve-client",
    SVC_F_DROP_EMPTY: "drop-if-empty",
    SVC_F_SOURCE_RANGES: "source-ranges",
    SVC_F_DSR: "dsr",
}


def new_flow_rates(maps: Maps, ids: list[int], interval: float) -> dict[int, float]:
    """New flows a second per frontend id, over interval seconds from now."""
    first = {i: maps.svc_counts(i)["new_flows"] for i in ids}
    start = time.monotonic()
    time.sleep(interval)
    seconds = time.monotonic() - start
    return {i: (maps.svc_counts(i)["new_flows"] - first[i]) / seconds for i in ids}


def collect(maps: Maps, rate_interval: float = 0) -> dict[str, Any]:
    """Everything the datapath holds; with rate_interval, each frontend's new flows a second
    measured over that many seconds too (a flood or a storm of reconnects shows here first)."""
    services = sorted(maps.read_services().items(), key=lambda kv: (kv[1].group, kv[1].id))
    rates = (
        new_flow_rates(maps, [v.id for _, v in services], rate_interval) if rate_interval else {}
    )
    backends = maps.read_backends()
    slots = maps.read_slots()
    config = maps.config[ct.c_uint32(0)]
    tables = maps.maglev.installed()  # group -> (M, fingerprint)
    frontends = []
    for (address, port, proto, scope), v in services:
        ids = [slots.get(v.group, {}).get(s) for s in range(1, v.count + 1)]
        frontends.append(
            {
                "address": address,
                "port": port,
                "protocol": str(proto),
                "scope": str(scope),
                "id": v.id,
                "group": v.group,
                "algorithm": str(ALG_NAME.get(v.algorithm, "?")),
                # M of the group's table; None: not Maglev, or its table is not built yet
                # (new flows pick their slot by flow hash meanwhile)
                "maglevTable": tables[v.group][0]
                if v.algorithm == ALG_NUM[Algorithm.MAGLEV] and v.group in tables
                else None,
                "affinityTimeout": v.affinity_timeout,
                "flags": [n for bit, n in FLAG_NAMES.items() if v.flags & bit],
                "backends": [
                    f"{backends[i].address}:{backends[i].port}"
                    if i in backends
                    else f"#{i} (missing)"
                    for i in ids
                ],
                **maps.svc_counts(v.id),
                "newFlowsPerSecond": round(rates[v.id], 1) if v.id in rates else None,
            }
        )
    ct_entries = sum(1 for _ in maps.ct.items_lookup_batch())  # 4,096 a syscall
    ct_pending = sum(1 for _ in maps.ct_new.items_lookup_batch())
    return {
        "frontends": frontends,
        "backends": [
            {
                "id": i,
                "address": b.address,
                "port": b.port,
                "local": bool(b.flags & BE_F_LOCAL),
                "terminating": bool(b.flags & BE_F_TERMINATING),  # existing flows only
                "serving": not b.flags & BE_F_NOT_SERVING,
                "dsr": bool(b.flags & BE_F_DSR),  # its node takes DSR's carrier off
            }
            for i, b in sorted(backends.items())
        ],
        "conntrack": {
            "entries": ct_entries,
            "capacity": maps.ct.max_entries,
            "flows": ct_entries // 2,
            "unanswered": ct_pending // 2,  # waiting in their own table (ct_new)
            "unansweredCapacity": maps.ct_new.max_entries,
            # what the programs use (the config's, else maps.h's defaults), in seconds
            "timeouts": dataclasses.asdict(Timeouts.from_slots(list(config.ct_timeout))),
        },
        "maglev": {
            "tables": len(tables),
            "bytes": sum(maglev_table_bytes(m) for m, _ in tables.values()),
            "largestSize": config.ring_size,  # --ring-size
        },
        # the sources of SNAT to backends on other nodes
        "nodeAddresses": [get_addr(config.node_addr4), get_addr(config.node_addr6)],
        "fibCache": bool(config.fib_cache),
        "localDelivery": "redirect" if config.local_redirect else "stack",
        "hashSeed": seed_fingerprint(config.hash_seed),
        "announcing": announcing(maps),
        "attachments": attached(maps.pin_root),
        "agent": runstate.read(maps.pin_root),
        "reasons": maps.reason_counts(),
    }


def attached(pin_root: str) -> list[dict[str, Any]]:
    """xlb's links (XDP and tcx per device, the socket hooks on the cgroup) and, for XDP,
    whether the driver runs it (native) or the stack does (generic)."""
    import socket

    from .attach import attachments, xdp_attached

    out = []
    for a in attachments(pin_root):
        entry = {"link": a.pin, "kind": a.kind, "linkId": a.link_id, "programId": a.prog_id}
        if a.kind in ("xdp", "tcx"):
            try:
                entry["device"] = socket.if_indextoname(a.target)
            except OSError:
                entry["device"] = f"#{a.target} (gone)"
            if a.kind == "xdp":
                mode = xdp_attached(entry["device"])[1]
                entry["mode"] = {1: "native", 2: "generic", 3: "offload"}.get(mode, "?")
        else:
            entry["cgroupId"] = a.target
        out.append(entry)
    return out


def announcing(maps: Maps) -> dict[str, Any]:
    """The LoadBalancer IPs this node won, and whether the kernel answers ARP/NDP for them
    (only while the agent's heartbeat is fresh)."""
    beat = maps.heartbeat[ct.c_uint32(0)].value
    age = (time.clock_gettime_ns(CLOCK_COARSE) - beat) / 1e9 if beat else None
    return {
        "addresses": sorted(get_addr(k) for k in maps.lb_ips),
        "answering": age is not None and age * 1e9 < ANNOUNCE_GRACE_NS,
        "heartbeatAge": None if age is None else round(age, 3),
    }


def render(status: dict[str, Any]) -> str:
    out = [
        f"{'PROTO':<5} {'FRONTEND':<32} {'SCOPE':<8} {'ALGO':<12} {'PKTS':>9} "
        f"{'BYTES':>11} {'FLOWS':>7} {'NEW/S':>7} {'DROPS':>6}  BACKENDS"
    ]
    for f in status["frontends"]:
        addr = (
            f"[{f['address']}]:{f['port']}"
            if ":" in f["address"]
            else (f"{f['address']}:{f['port']}")
        )
        algo = f["algorithm"]
        if algo == "maglev":
            algo += f"/{f['maglevTable']}" if f["maglevTable"] else " (due)"
        extra = ",".join(f["flags"]) + (
            f" affinity={f['affinityTimeout']}s" if f["affinityTimeout"] else ""
        )
        backends = ", ".join(f["backends"]) or "(none)"
        per_second = f.get("newFlowsPerSecond")
        rate = "-" if per_second is None else f"{per_second:g}"
        out.append(
            f"{f['protocol']:<5} {addr:<32} {f['scope']:<8} {algo:<12} "
            f"{f['packets']:>9} {f['bytes']:>11} {f['new_flows']:>7} {rate:>7} {f['drops']:>6}  "
            f"{backends}{'  ' + extra if extra.strip() else ''}"
        )
    c = status["conntrack"]
    out += [
        "",
        f"conntrack: {c['flows']} flows ({c['entries']} of {c['capacity']} entries), "
        f"{c['unanswered']} not answered yet (of {c['unansweredCapacity'] // 2})",
        "conntrack timeouts (s): " + ", ".join(f"{k} {v}" for k, v in c["timeouts"].items()),
        "maglev: {tables} tables, {kib:.0f} KiB (largest M {largestSize})".format(
            kib=status["maglev"]["bytes"] / 2**10, **status["maglev"]
        ),
        f"node addresses (SNAT): {', '.join(status['nodeAddresses'])}",
        f"hash seed: {status['hashSeed']}",
        f"local delivery: {status['localDelivery']}",
        "FIB answers: "
        + ("cached 100 ms" if status["fibCache"] else "looked up per packet (policy routing)"),
        announcing_line(status["announcing"]),
        attachments_line(status["attachments"]),
        *agent_lines(status.get("agent")),
        "",
        "packets not balanced, by reason:",
    ]
    out += [f"  {name:<22} {count}" for name, count in status["reasons"].items() if count]
    return "\n".join(out)


def attachments_line(links: list[dict[str, Any]]) -> str:
    pods = sum(1 for a in links if a["link"].startswith("tcx-pod-"))  # one per pod veth
    parts = [
        f"XDP on {a['device']} ({a['mode']})" if a["kind"] == "xdp" else f"tcx on {a['device']}"
        for a in links
        if a["kind"] in ("xdp", "tcx") and not a["link"].startswith("tcx-pod-")
    ]
    if pods:
        parts.append(f"tcx on {pods} pod veth{'s' if pods > 1 else ''}")
    hooks = sum(1 for a in links if a["kind"] == "cgroup")
    if hooks:
        parts.append(f"{hooks} socket hooks on the cgroup")
    return "attached (BPF links): " + (", ".join(parts) or "nothing")


def announcing_line(a: dict[str, Any]) -> str:
    if not a["addresses"]:
        return "announcing (ARP/NDP): nothing"
    if a["answering"]:
        state = "answering"
    elif a["heartbeatAge"] is None:
        state = "silent: no agent heartbeat yet"
    else:
        state = f"silent: the agent's heartbeat is {a['heartbeatAge']:.1f} s old"
    return f"announcing (ARP/NDP): {', '.join(a['addresses'])} ({state})"


def agent_lines(record: dict[str, Any] | None) -> list[str]:
    """The agent's own record: who it is, its externalIPs policy, and what that refused."""
    if record is None:
        return ["agent: no record (no agent has run on this datapath since boot)"]
    state = "running" if record.get("running") else "not running (its record is stale)"
    if record.get("running") and "ready" in record:
        state += ", ready" if record["ready"] else ", not ready yet (first sync, gossip settle)"
    policy = record.get("externalIPs") or "allow"
    meaning = {
        "allow": "any address but a Node's",
        "deny": "none (DenyServiceExternalIPs)",
    }.get(policy, f"only within {policy}")
    refused = record.get("refusedExternalIPs") or []
    out = [
        f"agent: pid {record.get('pid')} for node {record.get('node')} ({state})",
        f"externalIPs (--external-ips {policy}): {meaning}; {len(refused)} refused",
    ]
    out += [f"  {r}" for r in refused]
    announcers = record.get("announcers") or {}
    if announcers:
        out.append(f"LoadBalancer IPs on the LAN, cluster-wide ({len(announcers)}), announced by:")
        by_node: dict[str, list[str]] = {}
        for ip, node in announcers.items():
            by_node.setdefault(node, []).append(ip)
        out += [f"  {node}: {', '.join(ips)}" for node, ips in sorted(by_node.items())]
    return out
