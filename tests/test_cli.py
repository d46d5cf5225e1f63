"""The `xlb` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import EXAMPLES, REPO


def xlb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args], cwd=REPO, capture_output=True, text=True
    )


def test_help_lists_every_command_with_one_line():
    out = xlb("--help")
    assert out.returncode == 0
    assert "model" in out.stdout and "print what would be programmed" in out.stdout


def test_model_prints_frontends_backends_and_diagnostics():
    out = xlb("model", "-f", str(EXAMPLES / "services"), "-f", str(EXAMPLES / "quirks"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Service default/nginx-clusterip-svc-with-ip" in text
    assert "TCP  10.68.100.100:8000" in text
    assert "1.2.3.4:8000" in text and "LoadBalancer" in text
    assert "affinity=ClientIP/2s" in text and "policy=Local" in text
    assert "error: Service default/hdls-nodeport: spec.ports[0].nodePort: 8000 is outside" in text
    assert "(no backend: reject)" in text


def test_model_json_and_strict_exit_code():
    out = xlb("model", "-f", str(EXAMPLES / "services"), "--json", "--node", "node-2")
    doc = json.loads(out.stdout)
    assert doc["node"] == "node-2"
    fe = [f for f in doc["frontends"] if f["address"] == "10.97.97.97"][0]
    assert fe["service"] == "default/redis-svc" and fe["backends"][0]["port"] == 6379
    assert xlb("model", "-f", str(EXAMPLES / "quirks"), "--strict").returncode == 1
    assert xlb("model", "-f", str(EXAMPLES / "services"), "--strict").returncode == 0


def test_model_unknown_node_is_one_clear_line():
    out = xlb("model", "-f", str(EXAMPLES / "services"), "--node", "nope")
    assert out.returncode == 2
    assert out.stderr.strip() == "xlb model: no node 'nope'; nodes: node-1, node-2"


def test_every_agent_flag_reaches_the_agent_config(tmp_path):
    from controlplane.cli import build_parser
    from controlplane.cli.options import agent_config

    key = tmp_path / "key"
    key.write_text("s3cret\n")
    args = build_parser().parse_args(
        [
            "agent",
            "-f",
            "x",
            "--uplink",
            "eth9",
            "--cgroup",
            "/cg",
            "--pin-root",
            "/p",
            "--node-ip",
            "192.168.198.201",
            "--node-ip",
            "fd00:198::c9",
            "--poll-interval",
            "0.5",
            "--min-sync-interval",
            "2",
            "--generic-xdp",
            "--bind-address",
            "192.168.198.201",
            "--healthz-port",
            "11256",
            "--metrics-port",
            "-1",
            "--health-timeout",
            "30",
            "--gossip-key-file",
            str(key),
            "--gossip-port",
            "7000",
            "--peer",
            "node-2=192.168.198.202",
            "--peer",
            "node-3=192.168.198.203:7001",
            "--peer",
            "node-4=[fd00:198::cc]:7002",
            "--no-lb-allocator",
            "--lb-class",
            "xlb.dev/l2",
            "--unallocated-cluster-ips",
            "allow",
        ]
    )
    cfg = agent_config(args, "node-1")
    assert (cfg.node, cfg.uplink, cfg.cgroup, cfg.pin_root) == ("node-1", "eth9", "/cg", "/p")
    assert cfg.node_ips == ["192.168.198.201", "fd00:198::c9"]
    assert (cfg.poll_interval, cfg.min_interval, cfg.native_xdp) == (0.5, 2.0, False)
    assert (cfg.bind_address, cfg.healthz_port, cfg.metrics_port, cfg.health_timeout) == (
        "192.168.198.201",
        11256,
        -1,
        30.0,
    )
    assert (cfg.gossip_key, cfg.gossip_port) == (b"s3cret", 7000)
    assert cfg.peers == {
        "node-2": ("192.168.198.202", 7000),
        "node-3": ("192.168.198.203", 7001),
        "node-4": ("fd00:198::cc", 7002),
    }
    assert (cfg.lb_allocator, cfg.lb_class) == (False, "xlb.dev/l2")
    assert cfg.unallocated_cluster_ips == "allow"


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--peer", "node-2", "NAME=ADDRESS"),
        ("--peer", "node-2=somehost", "NAME=ADDRESS"),
        ("--peer", "=192.168.1.2", "name is missing"),
        ("--pool", "lan", "NAME=RANGE"),
        ("--pool", "lan=10.0.0.9-10.0.0.1", "must go up"),
    ],
)
def test_bad_peer_and_pool_flags_say_what_to_write(flag, value, says):
    from controlplane.cli.options import parse_peers, parse_pools

    with pytest.raises(SystemExit, match=says):
        parse_peers([value], 7947) if flag == "--peer" else parse_pools([value])


def test_model_into_a_pipe_that_closes_early_ends_quietly(tmp_path):
    """`xlb model | head -1`: the reader leaves after one line; xlb stops without a
    BrokenPipeError traceback (it printed one before). 2000 Services print ~250 KB, several
    times what a pipe holds (64 KiB) plus what head reads before it leaves, so xlb is still
    writing when head leaves. (400 printed 50 KB: it could all fit in the pipe, and a clean-clone
    CI run saw xlb finish first and exit 0.)"""
    services = "".join(
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n"
        f"spec: {{ports: [{{port: 80}}], selector: {{app: s{i}}}}}\n"
        for i in range(2000)
    )
    (tmp_path / "many.yaml").write_text(services)
    pipeline = f"{sys.executable} -m controlplane.cli model -f {tmp_path} | head -1"
    out = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, cwd=REPO
    )
    assert out.stdout.count("\n") == 1
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode == 141  # the pipe stopped it, as `yes | head` reports
