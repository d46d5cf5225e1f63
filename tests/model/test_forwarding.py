"""Which frontends send flows to remote backends by direct server return, and to which
backends (those whose node runs xlb): --forwarding-mode, the Service's annotation."""

from __future__ import annotations

import pytest

from controlplane.model import TranslateConfig, translate
from controlplane.model.state import Forwarding, FrontendKind
from tests.helpers import NODE1, ep, service, slice_

PORTS = [
    {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
    {"name": "dns", "port": 53, "targetPort": 5353, "nodePort": 30053, "protocol": "UDP"},
]
SLICE_PORTS = [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]


def frontends(cfg: TranslateConfig, annotations=None, **spec):
    spec.setdefault("type", "LoadBalancer")
    svc = service("web", ports=PORTS, externalIPs=["203.0.113.7"],
                  status={"loadBalancer": {"ingress": [{"ip": "192.168.198.240"}]}},
                  annotations=annotations or {}, **spec)  # fmt: skip
    sl = slice_("web", [ep("10.244.1.5", "node-1"), ep("10.244.2.5", "node-2"),
                        ep("10.244.3.5", "node-3")], ports=SLICE_PORTS)  # fmt: skip
    state = translate([svc], [sl], NODE1, cfg)
    return state


def dsr_of(state) -> dict[tuple[str, str, str], set[bool]]:
    out: dict[tuple[str, str, str], set[bool]] = {}
    for fe in state.frontends:
        out.setdefault((str(fe.kind), str(fe.scope), str(fe.protocol)), set()).add(fe.dsr)
    return out


@pytest.mark.parametrize(
    "mode,tcp,udp",
    [(Forwarding.SNAT, False, False), (Forwarding.DSR, True, True),
     (Forwarding.HYBRID, True, False)],
)  # fmt: skip
def test_the_node_default_applies_to_external_frontends_only(mode, tcp, udp):
    got = dsr_of(frontends(TranslateConfig(forwarding=mode)))
    # per protocol: the ClusterIP; NodePort, LB IP and externalIP from outside and inside
    assert len(got) == 2 * 7
    for (kind, scope, proto), dsr in got.items():
        if kind == FrontendKind.CLUSTER_IP or scope == "internal":
            assert dsr == {False}, "reached at connect time: nothing to return"
        else:
            assert dsr == {tcp if proto == "TCP" else udp}, (kind, proto)


def test_the_annotation_overrides_the_node_default_and_a_bad_one_is_said():
    state = frontends(TranslateConfig(), {"xlb.io/forwarding-mode": "dsr"})
    assert any(fe.dsr for fe in state.frontends)
    state = frontends(TranslateConfig(forwarding=Forwarding.DSR),
                      {"xlb.io/forwarding-mode": "snat"})  # fmt: skip
    assert not any(fe.dsr for fe in state.frontends)
    state = frontends(TranslateConfig(forwarding=Forwarding.HYBRID),
                      {"xlb.io/forwarding-mode": "direct"})  # fmt: skip
    assert {fe.dsr for fe in state.frontends if str(fe.protocol) == "TCP"} == {True, False}
    assert any("forwarding-mode" in str(d) and "'direct'" in str(d) for d in state.diagnostics)


def test_local_traffic_policy_needs_no_dsr():
    state = frontends(TranslateConfig(forwarding=Forwarding.DSR), externalTrafficPolicy="Local")
    assert not any(fe.dsr for fe in state.frontends)


def test_only_backends_on_nodes_that_run_xlb_take_dsr():
    cfg = TranslateConfig(forwarding=Forwarding.DSR, xlb_nodes=frozenset({"node-1", "node-2"}))
    fe = next(f for f in frontends(cfg).frontends if f.kind is FrontendKind.NODE_PORT)
    assert {b.address: b.dsr for b in fe.backends} == {
        "10.244.1.5": True, "10.244.2.5": True, "10.244.3.5": False,
    }  # fmt: skip
