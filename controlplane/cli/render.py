"""What `xlb model` and `xlb lab status` print, for people (text) and for programs (JSON)."""

from __future__ import annotations

from ..model.state import DesiredState, Frontend


def _backend_text(fe: Frontend) -> list[str]:
    lines = []
    for b in fe.backends:
        flags = [x for x, on in (("local", b.local), ("terminating", b.terminating)) if on]
        lines.append(
            f"  -> {b.name:<24} {b.node_name or '-':<10} {b.target or '-':<34} "
            f"{','.join(flags)}".rstrip()
        )
    for b in fe.draining:
        why = "terminating" if b.terminating else "not ready"
        lines.append(
            f"  -> {b.name:<24} {b.node_name or '-':<10} {b.target or '-':<34} "
            f"draining, {why} (existing flows only)"
        )
    if not fe.backends:
        lines.append(f"  (no backend: {fe.no_backend})")
    return lines


def _same_backends(a: Frontend, b: Frontend) -> bool:
    return (a.backends, a.draining, a.no_backend) == (b.backends, b.draining, b.no_backend)


def render_model(state: DesiredState, node_name: str) -> str:
    """ipvsadm -Ln style: one block per frontend, grouped by Service, then the diagnostics.
    An address served alike to outside and inside traffic is shown once, scope "both"."""
    out = [f"Frontends programmed on node {node_name or '(none)'}: {len(state.frontends)}"]
    current = None
    frontends = list(state.frontends)
    for i, fe in enumerate(frontends):
        if fe is None:
            continue
        if fe.service != current:
            current = fe.service
            out += ["", f"Service {fe.service}"]
        scope, algo = str(fe.scope), str(fe.algorithm)
        twin = frontends[i + 1] if i + 1 < len(frontends) else None
        if (
            twin is not None
            and twin.address == fe.address
            and twin.port == fe.port
            and twin.protocol == fe.protocol
            and twin.scope != fe.scope
            and _same_backends(fe, twin)
        ):
            frontends[i + 1] = None
            scope = "both"
            algo = algo if twin.algorithm == fe.algorithm else f"{algo}/{twin.algorithm}"
        extra = []
        if fe.affinity_timeout:
            extra.append(f"affinity=ClientIP/{fe.affinity_timeout}s")
        if fe.preserve_client_ip:
            extra.append("policy=Local")
        if fe.source_ranges:
            extra.append("sources=" + ",".join(fe.source_ranges))
        out.append(
            f"{fe.protocol:<4} {fe.endpoint:<30} {fe.kind:<12} {scope:<8} "
            f"{algo:<14} port={fe.port_name or '-'} {' '.join(extra)}".rstrip()
        )
        out += _backend_text(fe)
    if state.health_checks:
        out += ["", "Health check node ports"]
        for hc in state.health_checks:
            out.append(f"  :{hc.port:<6} {hc.service:<40} localEndpoints={hc.local_endpoints}")
    if state.diagnostics:
        out += ["", "Diagnostics"]
        out += [f"  {d}" for d in state.diagnostics]
    return "\n".join(out)


def model_json(state: DesiredState, node_name: str) -> dict:
    def backend(b):
        return {
            "address": b.address,
            "port": b.port,
            "node": b.node_name,
            "local": b.local,
            "terminating": b.terminating,
            "ready": b.ready,
            "serving": b.serving,
            "target": b.target,
        }

    return {
        "node": node_name,
        "frontends": [
            {
                "service": f.service,
                "portName": f.port_name,
                "kind": str(f.kind),
                "scope": str(f.scope),
                "address": f.address,
                "port": f.port,
                "protocol": str(f.protocol),
                "algorithm": str(f.algorithm),
                "affinityTimeout": f.affinity_timeout,
                "noBackend": str(f.no_backend),
                "preserveClientIP": f.preserve_client_ip,
                "sourceRanges": list(f.source_ranges),
                "backends": [backend(b) for b in f.backends],
                "draining": [backend(b) for b in f.draining],
            }
            for f in state.frontends
        ],
        "healthChecks": [
            {"service": h.service, "port": h.port, "localEndpoints": h.local_endpoints}
            for h in state.health_checks
        ],
        "diagnostics": [d.as_dict() for d in state.diagnostics],
    }


def lab_status(lab) -> int:
    from ..datapath.maps import Maps
    from ..datapath.status import collect, render
    from ..lab.processes import alive

    state = lab.load()
    print(f"lab {state.name}: manifests {', '.join(state.manifests)}")
    print(f"\n{'NODE':<10} {'ADDRESSES':<34} AGENT")
    for n in state.nodes:
        if not n.agent_pid:
            agent = "none (a node without xlb)"
        else:
            agent = f"running (pid {n.agent_pid})" if alive(n.agent_pid) else "NOT RUNNING"
        print(f"{n.name:<10} {' '.join(n.addresses):<34} {agent}")
    print(f"\n{'POD':<44} {'NODE':<10} IPS")
    for p in state.pods:
        print(f"{p.namespace + '/' + p.name:<44} {p.node:<10} {' '.join(p.ips)}")
    if state.ext_ips:
        print(f"{'(host for hand-written endpoints)':<44} {'-':<10} {' '.join(state.ext_ips)}")
    for n in state.nodes:
        print(f"\n== programmed on {n.name} ==")
        print(render(collect(Maps.open(n.pin_root))))
    return 0
