"""The DaemonSet's least privilege, proven on this kernel. As in the DaemonSet, `xlb
prepare-node` (the privileged init container) compiles and attaches; then the real agent runs
on a node in network namespaces with exactly the agent container's capabilities, read from
deploy/xlb.yaml (as its bounding set, so nothing it starts can gain others), and
no_new_privs, as `allowPrivilegeEscalation: false` gives it. It must program and serve; and
compiling in the agent itself would need more (bcc reopens pinned maps by id, which takes
CAP_SYS_ADMIN), which is why the DaemonSet loads in the init container. (CAP_BPF is listed
for kernels before 6.5, where every bpf(2) command needs it while
kernel.unprivileged_bpf_disabled is set; this kernel checks it only when creating maps and
loading programs, so its absence cannot be shown to fail here.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from tests.netns.nodes import (
    CLIENT_IP,
    NODE_IP,
    POD_IP,
    AgentProcess,
    Lan,
    node_topology,
    web_cluster,
)

pytestmark = pytest.mark.kernel  # network namespaces, capabilities: root

MANIFEST = web_cluster()


def daemonset() -> dict:
    docs = yaml.safe_load_all((REPO / "deploy" / "xlb.yaml").read_text())
    return next(d for d in docs if d and d.get("kind") == "DaemonSet")


def agent_container() -> dict:
    containers = daemonset()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "xlb")


def test_the_agent_container_asks_for_little():
    ctx = agent_container()["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx.get("privileged", False) is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in ctx["capabilities"]["add"]
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "--preloaded" in agent_container()["command"]
    mounts = {m["name"]: m for m in agent_container()["volumeMounts"]}
    assert set(mounts) == {"bpffs", "gossip-key"}  # no cgroup, no kernel headers
    # the gossip key is a mounted file, not an environment variable
    env = {e["name"] for e in agent_container().get("env", [])}
    assert "XLB_GOSSIP_KEY" not in env
    assert any("--gossip-key-file" in a for a in agent_container()["command"])
    config = next(
        d
        for d in yaml.safe_load_all((REPO / "deploy" / "xlb.yaml").read_text())
        if d and d.get("kind") == "ConfigMap"
    )
    assert config["data"]["XLB_API_HOST"] == ""  # no site's address as a default
    assert config["data"]["XLB_CLEANUP_KUBE_PROXY"] == "false"  # off unless asked


def _bounding(caps: list[str]) -> str:
    return "-all," + ",".join(f"+{c.lower()}" for c in caps)


def _prepare(node) -> None:
    """The init container's command line from the DaemonSet, run on the node as root (it is
    privileged); pin root and cgroup are this run's."""
    init = daemonset()["spec"]["template"]["spec"]["initContainers"][0]
    env = {
        "XLB_PIN_ROOT": node.pin_root,
        "XLB_UPLINK": "auto",
        "XLB_DEVICES": "auto",
        "NODE_IP": NODE_IP,
    }
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in init["command"][1:]]
    out = node.xlb(*args, "--cgroup", node.cgroup)
    assert out.returncode == 0, out.stderr
    assert "programs attached to up0" in out.stdout, out.stdout


def _run_agent(node, tmp: Path, caps: list[str], preloaded: bool = True) -> AgentProcess:
    manifest = tmp / "cluster.yaml"
    manifest.write_text(MANIFEST)
    args = ["-f", str(manifest), "--node", "node-1", "--uplink", "up0", "--cgroup", node.cgroup,
            "--pin-root", node.pin_root]  # fmt: skip
    if preloaded:
        _prepare(node)
        args.append("--preloaded")
    # setpriv inside the node's namespace: entering it (setns) needs CAP_SYS_ADMIN itself
    wrap = ["setpriv", "--no-new-privs", "--bounding-set", _bounding(caps), "--inh-caps", "-all"]
    return AgentProcess(node, args, wrap=wrap)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privileges")
    with node_topology(tmp, [Lan(NODE_IP, CLIENT_IP)], {"web-1": POD_IP}) as topo:
        yield topo


def test_the_agent_runs_with_the_daemonsets_capabilities_only(node, tmp_path):
    caps = agent_container()["securityContext"]["capabilities"]["add"]
    with _run_agent(node, tmp_path, caps) as agent:
        try:
            agent.wait_ready()
            status = Path(f"/proc/{agent.pid()}/status").read_text()
            eff = int(re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M).group(1), 16)
            assert not eff & (1 << 21), "CAP_SYS_ADMIN in the agent's effective set"
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
            out = node.curl(node.client, f"http://{NODE_IP}:30080/")
            assert out.returncode == 0 and out.stdout.startswith("web-1 "), out.stderr
            out = node.curl(node.node, "http://10.96.0.50/", cgroup=True)
            assert out.returncode == 0 and out.stdout.startswith("web-1 "), out.stderr
        except AssertionError:
            print(agent.text()[-4000:])
            raise
    node.down()


def test_compiling_in_the_agent_would_need_more(node, tmp_path):
    """Why the init container loads: the agent's own loader, with the same capabilities and
    pins already there, is refused."""
    _prepare(node)  # the pins exist, as after any earlier start
    caps = agent_container()["securityContext"]["capabilities"]["add"]
    with _run_agent(node, tmp_path, caps, preloaded=False) as agent:
        assert agent.proc.wait(120) != 0
        assert "Operation not permitted" in agent.text(), agent.text()[-3000:]
    node.down()
