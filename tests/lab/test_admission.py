"""The lab's API server for Services (controlplane/lab/admission.py): what a directory of
manifests cannot remember. Each case is one the stateless manifest source got wrong (the
issue's list): a newcomer taking an older Service's nodePort or ClusterIP, an invalid edit
dropping the Service, an edit losing its allocations. The agents' own manifest source then
reads what admission wrote, as it does in the lab."""

from __future__ import annotations

import copy

from controlplane.lab.admission import admit
from controlplane.sources.manifests import Document, build_cluster
from controlplane.sources.simulated import ClusterConfig

CFG = ClusterConfig()


def np_svc(name: str, node_port: int | None = None, cluster_ip: str | None = None, **spec):
    port = {"name": "http", "port": 80, "targetPort": 8080}
    if node_port:
        port["nodePort"] = node_port
    body = {"type": "NodePort", "selector": {"app": name}, "ports": [port], **spec}
    if cluster_ip:
        body["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": body}  # fmt: skip


def node_port(obj) -> int:
    return obj["spec"]["ports"][0]["nodePort"]


def agents_view(held):
    """What the agents' manifest source makes of the admitted objects."""
    cluster = build_cluster([Document(o, "lab") for o in held.values()], CFG)
    return {s.name: s for s in cluster.services}, [str(d) for d in cluster.diagnostics]


def test_a_new_service_is_stamped_and_its_allocations_written_in_and_kept():
    held, lines = admit([np_svc("a")], {}, CFG, "2026-12-06T10:00:00Z")
    a = held["default/a"]
    assert lines == [] and a["metadata"]["creationTimestamp"] == "2026-12-06T10:00:00Z"
    assert 30000 <= node_port(a) <= 32767 and a["spec"]["clusterIP"].startswith("10.")
    again, _ = admit([np_svc("a")], held, CFG, "2026-12-06T10:05:00Z")
    assert again == held  # the same manifest applied again changes nothing


def test_a_newcomer_asking_for_an_older_services_node_port_is_refused_and_the_older_keeps_it():
    held, _ = admit([np_svc("old")], {}, CFG, "2026-12-06T10:00:00Z")
    taken = node_port(held["default/old"])
    # the newcomer's name sorts first: the stateless source served it first and moved "old"
    held2, lines = admit([np_svc("old"), np_svc("a-new", node_port=taken)], held, CFG,
                         "2026-12-06T10:00:00Z")  # fmt: skip
    assert node_port(held2["default/old"]) == taken
    assert len(lines) == 1 and "already allocated to Service default/old" in lines[0]
    services, diags = agents_view(held2)
    assert node_port_of(services["old"]) == taken and "a-new" not in services
    assert any("a-new" in d and "already allocated" in d for d in diags)


def node_port_of(svc) -> int:
    return svc.ports[0].node_port


def test_a_newcomer_asking_for_an_older_services_cluster_ip_is_refused():
    held, _ = admit([np_svc("old")], {}, CFG, "2026-12-06T10:00:00Z")
    ip = held["default/old"]["spec"]["clusterIP"]
    held2, lines = admit([np_svc("old"), np_svc("a-new", cluster_ip=ip)], held, CFG,
                         "2026-12-06T10:01:00Z")  # fmt: skip
    assert held2["default/old"]["spec"]["clusterIP"] == ip
    assert any("already allocated to Service default/old" in line for line in lines)
    services, _ = agents_view(held2)
    assert services["old"].cluster_ips == (ip,) and "a-new" not in services


def test_an_edit_that_leaves_allocations_out_keeps_them():
    held, _ = admit([np_svc("a")], {}, CFG, "2026-12-06T10:00:00Z")
    edited = np_svc("a", selector={"app": "other"})  # no clusterIP, no nodePort: as written
    held2, lines = admit([edited], held, CFG, "2026-12-06T11:00:00Z")
    assert lines == []
    assert held2["default/a"]["spec"]["selector"] == {"app": "other"}
    for field in ("clusterIP", "clusterIPs"):
        assert held2["default/a"]["spec"][field] == held["default/a"]["spec"][field]
    assert node_port(held2["default/a"]) == node_port(held["default/a"])
    assert held2["default/a"]["metadata"] == held["default/a"]["metadata"]  # stamps kept


def test_an_invalid_edit_is_refused_and_the_last_valid_version_stays():
    held, _ = admit([np_svc("a")], {}, CFG, "2026-12-06T10:00:00Z")
    bad = np_svc("a")
    bad["spec"]["ports"][0]["port"] = 70000
    held2, lines = admit([bad], held, CFG, "2026-12-06T11:00:00Z")
    assert held2 == held
    assert len(lines) == 1 and "refused: the last valid version stays" in lines[0]
    services, _ = agents_view(held2)
    assert "a" in services  # before: the Service vanished from every node


def test_an_edit_asking_for_a_port_another_service_holds_is_refused_whole():
    held, _ = admit([np_svc("a"), np_svc("b")], {}, CFG, "2026-12-06T10:00:00Z")
    grab = np_svc("b", node_port=node_port(held["default/a"]))
    held2, lines = admit([np_svc("a"), grab], held, CFG, "2026-12-06T11:00:00Z")
    assert held2 == held and any("refused" in line for line in lines)


def test_a_service_no_manifest_names_is_deleted_and_a_new_one_is_younger():
    held, _ = admit([np_svc("a"), np_svc("b")], {}, CFG, "2026-12-06T10:00:00Z")
    held2, _ = admit([np_svc("a"), np_svc("c")], held, CFG, "2026-12-06T10:00:00Z")
    assert set(held2) == {"default/a", "default/c"}
    # admitted in the same second as "a": still stamped after it (stamps are whole seconds)
    assert held2["default/c"]["metadata"]["creationTimestamp"] > "2026-12-06T10:00:00Z"


def test_an_invalid_new_service_passes_to_the_agents_which_report_it():
    bad = np_svc("bad")
    bad["spec"]["ports"][0]["port"] = 0
    held, lines = admit([bad, np_svc("good")], {}, CFG, "2026-12-06T10:00:00Z")
    assert lines == [] and "default/bad" in held
    services, diags = agents_view(held)
    assert "good" in services and any("bad" in d for d in diags)


def test_admission_does_not_touch_its_inputs():
    manifests = [np_svc("a")]
    before = copy.deepcopy(manifests)
    held, _ = admit(manifests, {}, CFG, "2026-12-06T10:00:00Z")
    frozen = copy.deepcopy(held)
    admit([np_svc("a", selector={"app": "x"})], held, CFG, "2026-12-06T11:00:00Z")
    assert manifests == before and held == frozen
