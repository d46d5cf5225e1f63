"""Datagrams larger than the MTU through a NodePort, end to end in a dual-stack 2-node lab:
the client's 3000-byte datagram leaves it in fragments (the LAN's MTU is 1500), xdp_lb
balances every fragment where the first went (a pod on the node itself, or one on the other
node), and the pod's 3000-byte answer, fragmented by the pod's own stack, comes back whole to
the client's socket from the address it sent to: IPv4 and IPv6. Before xdp_lb tracked
fragments, every such datagram was refused (the node's stack reassembled it and found no
listener) or lost."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tests.netns.test_lab import POD_RE, run, running_lab

MANIFEST = textwrap.dedent("""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: dns}
    spec:
      selector: {matchLabels: {app: dns}}
      replicas: 4
      template:
        metadata: {labels: {app: dns}}
        spec: {containers: [{name: dns, ports: [{containerPort: 53, protocol: UDP}]}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: dns}
    spec:
      type: NodePort
      ipFamilyPolicy: PreferDualStack
      selector: {app: dns}
      ports: [{name: dns, port: 53, protocol: UDP, targetPort: 53, nodePort: 31553}]
""")

# Sends SIZE-byte datagrams from fresh sockets (fresh source ports: fresh backends) until
# every node's pod has answered or TRIES ran out; each answer must carry the datagram back
# whole after the pod's line, and come from the address asked.
CLIENT = textwrap.dedent("""
    import json, os, socket, sys
    host, port, size, tries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    answers, errors = [], []
    for i in range(tries):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, port))
        data = os.urandom(size)
        try:
            s.send(data)
            got, peer = s.recvfrom(65535)
        except OSError as e:
            errors.append(str(e))
            continue
        line, _, echo = got.partition(b"\\n")
        answers.append({"line": line.decode(), "whole": echo == data, "from": peer[0],
                        "bytes": len(got)})
        if len({a["line"].split()[1] for a in answers}) >= 2 and i >= 7:
            break
    print(json.dumps({"answers": answers, "errors": errors}))
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("frag")
    (d / "dns.yaml").write_text(MANIFEST)
    with running_lab(d, nodes=2) as lab:
        yield lab


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_3000_byte_datagrams_both_ways_to_a_local_and_a_remote_pod(lab, family):
    node1 = next(n for n in lab.load().nodes if n.name == "node-1")
    (address,) = [a for a in node1.addresses if (":" in a) == (family == "IPv6")]
    out = run(lab, "client", sys.executable, "-c", CLIENT, address, "31553", "3000", "40",
              timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    answers = result["answers"]
    print(f"{family}: {len(answers)} answers, {len(result['errors'])} lost or refused")
    assert not result["errors"], result["errors"][:3]
    assert all(a["whole"] and a["from"] == address for a in answers), answers[:3]
    nodes = {POD_RE.search(a["line"]).group(2) for a in answers}
    assert nodes == {"node-1", "node-2"}, nodes  # a local pod and a remote one answered
    assert all(a["bytes"] > 3000 for a in answers)
