"""The upstream e2e Service scenarios that concern a proxy (kubernetes test/e2e/network/
service.go), each reproduced in a 2-node dual-stack lab with real traffic. Each test names
its scenario; the README's table maps every scenario to its test, or says why it cannot run
here. The lab plays the API server and the controllers (admission, scheduling, the
EndpointSlice controller); xlb's agents on both nodes are the proxies under test.

Every test writes its own manifests into the lab's directory, applies them, and removes them
again at its end, so the tests do not depend on each other's order."""

from __future__ import annotations

import contextlib
import functools
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from controlplane.lab.processes import join_cgroup
from controlplane.lab.scenarios import to_yaml
from controlplane.sources.manifests import load_cluster
from tests.helpers import eventually
from tests.netns.test_lab import running_lab

PROBE = textwrap.dedent("""
    import errno, socket, sys
    host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            reply = s.recv(300).decode()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.connect((host, port))
            s.send(b"q")
            reply = s.recv(300).decode()
        print(next(w for w in reply.split() if w.startswith("pod=")), reply.split("client=")[1].split()[0])
    except OSError as e:
        print(errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout", "-")
""")  # noqa: E501


def pod(name: str, node: str, app: str, ports: list[tuple[int, str, str]] | None = None,
        ready: bool = True, terminating: bool = False) -> dict:  # fmt: skip
    """A Pod pinned to a node; ports: (containerPort, name, protocol)."""
    container: dict = {"name": "server"}
    if ports:
        container["ports"] = [{"containerPort": p, "protocol": proto, **({"name": n} if n else {})}
                              for p, n, proto in ports]  # fmt: skip
    obj: dict = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": name, "labels": {"app": app}},
                 "spec": {"nodeName": node, "containers": [container]}}  # fmt: skip
    if not ready:
        obj["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    if terminating:
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return obj


def service(name: str, app: str | None, ports: list[dict] | None = None, **spec) -> dict:
    labels = spec.pop("labels", None)
    body = {"ipFamilyPolicy": "PreferDualStack", **spec}
    if app:
        body["selector"] = {"app": app}
    if ports is not None:
        body["ports"] = ports
    meta: dict = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


HTTP = [{"name": "http", "port": 80, "targetPort": 80}]
WEB = [(80, "", "TCP")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    # a client pod on each node, listening nowhere
    (d / "clients.yaml").write_text(to_yaml([pod("client-1", "node-1", "client"),
                                             pod("client-2", "node-2", "client")]))  # fmt: skip
    with running_lab(d, nodes=2) as lab:
        lab.manifest_dir = d
        yield lab


@contextlib.contextmanager
def applied(lab, name: str, docs: list[dict]):
    """These objects in the lab for the block, in a file of their own."""
    path: Path = lab.manifest_dir / f"{name}.yaml"
    write(lab, path, docs)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        lab.apply(log=lambda *_: None)


def write(lab, path: Path, docs: list[dict]) -> None:
    path.write_text(to_yaml(docs))
    lab.apply(log=lambda *_: None)


def svc_of(lab, name: str):
    cluster = load_cluster([lab.dir / "agent"], lab.cluster_config(lab.load()))
    return next((s for s in cluster.services if s.name == name), None)


def cluster_ips(lab, name: str) -> list[str]:
    svc = svc_of(lab, name)
    return list(svc.cluster_ips) if svc else []


def probe(lab, source: str, host: str, port: int, proto: str = "tcp") -> tuple[str, str]:
    """(pod=NAME or an errno name or 'timeout', the client address the pod saw or '-')."""
    out = lab.exec(source, [sys.executable, "-c", PROBE, host, str(port), proto],
                   capture_output=True, text=True, timeout=15)  # fmt: skip
    what, client = out.stdout.split() if out.stdout.strip() else ("no-output", out.stderr)
    return what.removeprefix("pod="), client


def seen(lab, source: str, host: str, port: int, proto: str = "tcp", tries: int = 12) -> Counter:
    return Counter(probe(lab, source, host, port, proto)[0] for _ in range(tries))


def settles(check, timeout: float = 15):
    """check() until true (the agents follow a manifest change within a sync or two)."""
    got = eventually(check, timeout, every=0.3)
    assert got, "the lab did not settle"
    return got


def test_should_serve_a_basic_endpoint_from_pods(lab):
    """No pod: refused; one pod; two pods; each deleted in turn (service.go: 'should serve
    a basic endpoint from pods', Conformance)."""
    with applied(lab, "basic", [service("basic", "basic", HTTP)]) as path:
        for ip in cluster_ips(lab, "basic"):
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "ECONNREFUSED")
        steps = [
            ([pod("basic-1", "node-1", "basic", WEB)], {"basic-1"}),
            ([pod("basic-1", "node-1", "basic", WEB), pod("basic-2", "node-2", "basic", WEB)],
             {"basic-1", "basic-2"}),
            ([pod("basic-2", "node-2", "basic", WEB)], {"basic-2"}),
        ]  # fmt: skip
        for pods, expected in steps:
            write(lab, path, [service("basic", "basic", HTTP), *pods])
            for ip in cluster_ips(lab, "basic"):
                settles(lambda ip=ip, e=expected: set(seen(lab, "client-2", ip, 80)) == e)
        write(lab, path, [service("basic", "basic", HTTP)])
        for ip in cluster_ips(lab, "basic"):
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "ECONNREFUSED")


def test_should_serve_multiport_endpoints_from_pods(lab):
    """Two Service ports to named targetPorts, each named port on its own pod and number
    ('should serve multiport endpoints from pods', Conformance)."""
    ports = [{"name": "portname1", "port": 80, "targetPort": "svc1"},
             {"name": "portname2", "port": 81, "targetPort": "svc2"}]  # fmt: skip
    docs = [service("multi", "multi", ports),
            pod("multi-1", "node-1", "multi", [(100, "svc1", "TCP")]),
            pod("multi-2", "node-2", "multi", [(101, "svc2", "TCP")])]  # fmt: skip
    with applied(lab, "multi", docs):
        for ip in cluster_ips(lab, "multi"):
            settles(lambda ip=ip: set(seen(lab, "client-1", ip, 80, tries=6)) == {"multi-1"})
            settles(lambda ip=ip: set(seen(lab, "client-1", ip, 81, tries=6)) == {"multi-2"})


def test_should_serve_endpoints_on_same_port_and_different_protocols(lab):
    """TCP and UDP on one port number ('should serve endpoints on same port and different
    protocols', Conformance)."""
    ports = [{"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"},
             {"name": "dns-udp", "port": 53, "targetPort": 53, "protocol": "UDP"}]  # fmt: skip
    docs = [service("proto", "proto", ports),
            pod("proto-1", "node-2", "proto", [(53, "", "TCP"), (53, "", "UDP")])]  # fmt: skip
    with applied(lab, "proto", docs):
        for ip in cluster_ips(lab, "proto"):
            for proto in ("tcp", "udp"):
                settles(lambda ip=ip, p=proto: probe(lab, "client-1", ip, 53, p)[0] == "proto-1")


def test_should_allow_pods_to_hairpin_back_to_themselves_thru_services(lab):
    """A pod reaches itself through its own Service ('should allow pods to hairpin back to
    themselves thru services')."""
    docs = [service("hairpin", "hairpin", HTTP), pod("hairpin-1", "node-1", "hairpin", WEB)]
    with applied(lab, "hairpin", docs):
        for ip in cluster_ips(lab, "hairpin"):
            settles(lambda ip=ip: probe(lab, "hairpin-1", ip, 80)[0] == "hairpin-1")


def test_should_preserve_source_pod_ip_for_traffic_thru_service_cluster_ip(lab):
    """The backend sees the client pod's own address, from its node and from the other
    ('should preserve source pod IP for traffic thru service cluster IP')."""
    docs = [service("sourceip", "sourceip", HTTP), pod("sourceip-1", "node-1", "sourceip", WEB)]
    pods = {p.name: p for p in lab.load().pods}
    with applied(lab, "sourceip", docs):
        for ip in cluster_ips(lab, "sourceip"):
            for client in ("client-1", "client-2"):
                # the pod's answer once the agents serve the new Service (before, its address
                # is an unallocated one of the service range: EHOSTUNREACH)
                got = settles(lambda ip=ip, c=client: (r := probe(lab, c, ip, 80))[0]
                              == "sourceip-1" and r)  # fmt: skip
                address = got[1].rsplit(":", 1)[0].strip("[]")
                assert address in pods[client].ips, (client, got)


def test_type_changes_external_name_cluster_ip_node_port_and_back(lab):
    """ExternalName -> ClusterIP -> NodePort -> ExternalName ('should be able to change the
    type from ExternalName to ClusterIP', '... from ExternalName to NodePort', '... from
    ClusterIP to ExternalName', '... from NodePort to ExternalName', Conformance)."""
    node1 = next(n for n in lab.load().nodes if n.name == "node-1")
    name_only = service("typed", None, type="ExternalName", externalName="example.com")
    name_only["spec"].pop("ipFamilyPolicy")
    backend = pod("typed-1", "node-2", "typed", WEB)
    with applied(lab, "typed", [name_only, backend]) as path:
        assert cluster_ips(lab, "typed") == []
        write(lab, path, [service("typed", "typed", HTTP), backend])
        ips = cluster_ips(lab, "typed")
        assert ips
        for ip in ips:
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "typed-1")
        write(lab, path, [service("typed", "typed", HTTP, type="NodePort"), backend])
        assert cluster_ips(lab, "typed") == ips  # kept across the change, as the server does
        node_port = svc_of(lab, "typed").ports[0].node_port
        for address in node1.addresses:
            settles(lambda a=address: probe(lab, "client", a, node_port)[0] == "typed-1")
        write(lab, path, [name_only, backend])
        for address in node1.addresses:
            settles(lambda a=address: probe(lab, "client", a, node_port)[0] != "typed-1")
        for ip in ips:  # its ClusterIP is released: an unallocated service address now
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "EHOSTUNREACH")


@pytest.mark.parametrize("kind", ["ClusterIP", "NodePort"])
def test_should_be_able_to_switch_session_affinity(lab, kind):
    """None spreads, ClientIP pins, None spreads again ('should be able to switch session
    affinity for service with type clusterIP' / '... for NodePort service', Conformance)."""
    backends = [pod("aff-1", "node-1", "aff", WEB), pod("aff-2", "node-2", "aff", WEB)]
    node1 = next(n for n in lab.load().nodes if n.name == "node-1")

    def docs(affinity: str) -> list[dict]:
        return [service("aff", "aff", HTTP, type=kind, sessionAffinity=affinity), *backends]

    def targets() -> list[tuple[str, str, int]]:
        if kind == "ClusterIP":
            return [("client-1", ip, 80) for ip in cluster_ips(lab, "aff")]
        port = svc_of(lab, "aff").ports[0].node_port
        return [("client", a, port) for a in node1.addresses]

    with applied(lab, "aff", docs("None")) as path:
        for affinity, spread in (("None", 2), ("ClientIP", 1), ("None", 2)):
            write(lab, path, docs(affinity))
            for source, host, port in targets():
                settles(lambda s=source, h=host, p=port, n=spread: len(seen(lab, s, h, p)) == n)


def test_should_prevent_node_port_collisions_and_release_node_ports_on_delete(lab):
    """A second Service asking for a nodePort the first holds is refused while the first
    serves on; once the first is deleted its port is free, and the second gets it ('should
    prevent NodePort collisions', 'should release NodePorts on delete')."""
    node1 = next(n for n in lab.load().nodes if n.name == "node-1")
    port = [{"name": "http", "port": 80, "targetPort": 80, "nodePort": 30555}]
    first = [service("np-first", "np-first", port, type="NodePort"),
             pod("np-first-1", "node-1", "np-first", WEB)]  # fmt: skip
    second = [service("np-second", "np-second", port, type="NodePort"),
              pod("np-second-1", "node-2", "np-second", WEB)]  # fmt: skip
    with applied(lab, "np-first", first) as first_path, applied(lab, "np-second", second):
        for address in node1.addresses:
            settles(lambda a=address: probe(lab, "client", a, 30555)[0] == "np-first-1")
        held = lab.load().services
        assert held["default/np-first"]["spec"]["ports"][0]["nodePort"] == 30555
        first_path.unlink()
        lab.apply(log=lambda *_: None)
        for address in node1.addresses:
            settles(lambda a=address: probe(lab, "client", a, 30555)[0] == "np-second-1")


def test_should_create_endpoints_for_unready_pods(lab):
    """publishNotReadyAddresses: an unready pod serves through the Service that tolerates it,
    and not through one that does not ('should create endpoints for unready pods')."""
    docs = [service("tolerant", "unready", HTTP, publishNotReadyAddresses=True),
            service("strict", "unready", HTTP),
            pod("unready-1", "node-2", "unready", WEB, ready=False)]  # fmt: skip
    with applied(lab, "unready", docs):
        for ip in cluster_ips(lab, "tolerant"):
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "unready-1")
        for ip in cluster_ips(lab, "strict"):
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "ECONNREFUSED")


def test_terminating_and_unready_endpoints_with_and_without_publish_not_ready_addresses(lab):
    """A pod shutting down and failing its probe: reachable through the Service with
    publishNotReadyAddresses, refused through the one without ('should be able to connect to
    terminating and unready endpoints if PublishNotReadyAddresses is true', 'should not be
    able to connect to ... if PublishNotReadyAddresses is false')."""
    going = pod("pnr-1", "node-1", "pnr", WEB, ready=False, terminating=True)
    docs = [service("pnr-true", "pnr", HTTP, publishNotReadyAddresses=True),
            service("pnr-false", "pnr", HTTP), going]  # fmt: skip
    with applied(lab, "pnr", docs):
        for ip in cluster_ips(lab, "pnr-true"):
            settles(lambda ip=ip: probe(lab, "client-2", ip, 80)[0] == "pnr-1")
        for ip in cluster_ips(lab, "pnr-false"):
            settles(lambda ip=ip: probe(lab, "client-2", ip, 80)[0] == "ECONNREFUSED")


@pytest.mark.parametrize(
    "label", ["service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless"]
)
def test_should_implement_the_proxy_name_and_headless_labels(lab, label):
    """A Service labelled for another proxy (or headless) is not served; the label removed,
    it is ('should implement service.kubernetes.io/service-proxy-name', '... headless')."""
    backend = pod("labelled-1", "node-1", "labelled", WEB)
    plain = service("labelled", "labelled", HTTP)
    marked = service("labelled", "labelled", HTTP, labels={label: "other"})
    with applied(lab, "labelled", [marked, backend]) as path:
        ips = cluster_ips(lab, "labelled")
        for ip in ips:  # not ours: its address is no ClusterIP of ours, so it goes nowhere
            settles(lambda ip=ip: probe(lab, "client-2", ip, 80)[0] == "EHOSTUNREACH")
        write(lab, path, [plain, backend])
        for ip in ips:
            settles(lambda ip=ip: probe(lab, "client-2", ip, 80)[0] == "labelled-1")
        write(lab, path, [marked, backend])
        for ip in ips:
            settles(lambda ip=ip: probe(lab, "client-2", ip, 80)[0] == "EHOSTUNREACH")


def test_should_be_updated_after_adding_or_deleting_ports(lab):
    """A port added live serves; a port removed is refused, as a port its live ClusterIP
    does not serve ('should be updated after adding or deleting ports')."""
    backend = pod("ports-1", "node-2", "ports", WEB)
    both = HTTP + [{"name": "alt", "port": 8081, "targetPort": 80}]
    with applied(lab, "ports", [service("ports", "ports", HTTP), backend]) as path:
        ips = cluster_ips(lab, "ports")
        for ip in ips:
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "ports-1")
            assert probe(lab, "client-1", ip, 8081)[0] == "ECONNREFUSED"
        write(lab, path, [service("ports", "ports", both), backend])
        for ip in ips:
            settles(lambda ip=ip: probe(lab, "client-1", ip, 8081)[0] == "ports-1")
        write(lab, path, [service("ports", "ports", both[1:]), backend])
        for ip in ips:
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "ECONNREFUSED")
            assert probe(lab, "client-1", ip, 8081)[0] == "ports-1"


@pytest.mark.parametrize("policy", ["Cluster", "Local"])
def test_should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints(lab, policy):
    """Only terminating (still serving) endpoints left: they take new connections; a ready
    one back: it alone does ('should fallback to terminating endpoints when there are no
    ready endpoints with internalTrafficPolicy=Cluster' / '=Local')."""
    going = pod("term-1", "node-1", "term", WEB, terminating=True)
    fresh = pod("term-2", "node-1", "term", WEB)
    svc = service("term", "term", HTTP, internalTrafficPolicy=policy)
    with applied(lab, "term", [svc, going]) as path:
        for ip in cluster_ips(lab, "term"):
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "term-1")
        write(lab, path, [svc, going, fresh])
        for ip in cluster_ips(lab, "term"):
            settles(lambda ip=ip: set(seen(lab, "client-1", ip, 80)) == {"term-2"})


@pytest.mark.parametrize("source", ["pod", "node"])
def test_should_respect_internal_traffic_policy_local(lab, source):
    """From each node, only that node's endpoint ('should respect internalTrafficPolicy=Local
    Pod to Pod' / 'Pod (hostNetwork: true) to Pod')."""
    docs = [service("itp", "itp", HTTP, internalTrafficPolicy="Local"),
            pod("itp-1", "node-1", "itp", WEB), pod("itp-2", "node-2", "itp", WEB)]  # fmt: skip
    with applied(lab, "itp", docs):
        for node, own in (("node-1", "itp-1"), ("node-2", "itp-2")):
            origin = f"client-{node[-1]}" if source == "pod" else node
            for ip in cluster_ips(lab, "itp"):
                settles(lambda o=origin, ip=ip, own=own: set(seen(lab, o, ip, 80)) == {own})


def test_should_work_after_the_service_has_been_recreated(lab):
    """Deleted, then created again under the same name ('should work after the service has
    been recreated')."""
    docs = [service("again", "again", HTTP), pod("again-1", "node-2", "again", WEB)]
    with applied(lab, "again", docs) as path:
        for ip in cluster_ips(lab, "again"):
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "again-1")
        write(lab, path, docs[1:])
        assert svc_of(lab, "again") is None
        write(lab, path, docs)
        for ip in cluster_ips(lab, "again"):
            settles(lambda ip=ip: probe(lab, "client-1", ip, 80)[0] == "again-1")


HELD_UDP = textwrap.dedent("""
    import errno, socket, sys
    host = sys.argv[1]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((host, 53))
    s.send(b"q")
    print(s.recv(300).decode().split()[0], flush=True)
    sys.stdin.readline()  # its pod is deleted meanwhile
    try:
        s.send(b"q")
        print(s.recv(300).decode().split()[0])
    except OSError as e:
        print(errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
""")


def test_a_connected_udp_client_of_a_deleted_pod_is_reset(lab):
    """kube-proxy clears the conntrack of a removed UDP endpoint so a client's next datagram
    finds a live one ('should be able to preserve UDP traffic when server pod cycles for a
    ClusterIP service', conntrack.go). Through the socket hooks the connected socket holds
    the pod's address: the agent resets it, and the application hears so at once instead of
    sending into a dead address until its timeout."""
    import subprocess

    docs = [service("udpgone", "udpgone", [{"name": "dns", "port": 53, "protocol": "UDP"}]),
            pod("udpgone-1", "node-1", "udpgone", [(53, "", "UDP")]),
            pod("udpgone-2", "node-2", "udpgone", [(53, "", "UDP")])]  # fmt: skip
    with applied(lab, "udpgone", docs) as path:
        for ip in cluster_ips(lab, "udpgone"):
            settles(lambda ip=ip: probe(lab, "client-1", ip, 53, "udp")[0].startswith("udpgone"))
            ns, cgroup = lab.target("client-1")
            held = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", HELD_UDP, ip],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                preexec_fn=functools.partial(join_cgroup, cgroup),
            )  # fmt: skip
            try:
                first = held.stdout.readline().strip().removeprefix("pod=")
                keep = next(d for d in docs[1:] if d["metadata"]["name"] != first)
                write(lab, path, [docs[0], keep])  # the pod it talks to is deleted
                out, _ = held.communicate("go\n", timeout=20)
            finally:
                held.kill()
            print(f"{ip}: first {first}, then {out.strip()}")
            assert out.strip() in ("ECONNABORTED", "EDESTADDRREQ"), out
            settles(lambda ip=ip, k=keep: probe(lab, "client-1", ip, 53, "udp")[0]
                    == k["metadata"]["name"])  # fmt: skip
            write(lab, path, docs)  # both pods again, for the other family


def test_the_e2e_table_in_the_readme_names_only_tests_that_exist():
    """Every test the README's e2e table points at is in the tree (a renamed test fails
    this), and every scenario above is in the table."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("### The upstream e2e Service scenarios", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in table.splitlines():
        for cell in line.split("`")[1::2]:
            if "::" in cell:
                names.add(cell)
    assert names, "no test named in the table"
    root = Path(__file__).resolve().parents[2]
    for name in sorted(names):
        path, test = name.split("::", 1)
        text = (root / path).read_text()
        assert f"def {test.split('[')[0]}(" in text, name
    here = {n.split("::", 1)[1] for n in names if n.startswith("tests/netns/test_lab_e2e")}
    mine = {n for n in globals() if n.startswith("test_should") or n.startswith("test_type")}
    assert mine <= here, mine - here
