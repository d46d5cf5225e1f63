"""deploy/: the manifests load into the kubernetes client's models without losing a field,
the commands they run are valid xlb command lines, and RBAC grants what the source uses."""

from __future__ import annotations

import re

import pytest
import yaml
from kubernetes import client

from controlplane.cli import build_parser
from controlplane.cli.options import parse_pools
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
DOCS = list(yaml.safe_load_all((DEPLOY / "xlb.yaml").read_text()))
MODELS = {
    "ServiceAccount": client.V1ServiceAccount,
    "ClusterRole": client.V1ClusterRole,
    "ClusterRoleBinding": client.V1ClusterRoleBinding,
    "Role": client.V1Role,
    "RoleBinding": client.V1RoleBinding,
    "ConfigMap": client.V1ConfigMap,
    "DaemonSet": client.V1DaemonSet,
}


def strip_none(x):
    if isinstance(x, dict):
        return {k: strip_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [strip_none(v) for v in x]
    return x


@pytest.mark.parametrize("doc", DOCS, ids=[d["kind"] for d in DOCS])
def test_each_object_loads_into_the_client_models_losing_nothing(doc):
    model = MODELS[doc["kind"]].from_dict(doc)
    again = strip_none(client.ApiClient().sanitize_for_serialization(model))
    assert again == doc  # a misspelled field would be dropped by the model, and differ here


def by_kind(kind):
    return next(d for d in DOCS if d["kind"] == kind)


def expand(args, env):
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def test_the_daemonset_runs_valid_xlb_command_lines():
    env = dict(by_kind("ConfigMap")["data"], NODE_NAME="node-1", NODE_IP="192.168.1.11")
    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    agent = spec["containers"][0]["command"]
    args = build_parser().parse_args(expand(agent[1:], env))
    assert args.pool == [""]  # no pool unless configured (and "" means none)
    assert (
        parse_pools(args.pool) == [] and parse_pools(["a=10.0.0.0/30;b=10.0.1.0/30"])[1].name == "b"
    )
    assert (args.command, args.source, args.uplink, args.endpoints_api) == (
        "agent",
        "kubernetes",
        "auto",
        "endpointslices",
    )
    init = build_parser().parse_args(expand(spec["initContainers"][0]["command"][1:], env))
    assert init.command == "prepare-node" and init.pin_root == env["XLB_PIN_ROOT"]
    assert spec["hostNetwork"] and spec["priorityClassName"] == "system-node-critical"
    assert spec["containers"][0]["securityContext"]["privileged"] is False


def test_the_gossip_key_is_a_file_from_an_optional_secret(tmp_path):
    """No Secret: the pod still starts (an empty optional volume: no key, no L2); with it,
    the agent reads the key from the mounted file."""
    from controlplane.cli.options import read_gossip_key

    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "gossip-key")
    assert volume["secret"]["optional"] is True and volume["secret"]["secretName"] == "xlb-gossip"
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "gossip-key")
    flag = next(a for a in spec["containers"][0]["command"] if a.startswith("--gossip-key-file="))
    assert flag.split("=", 1)[1].startswith(mount["mountPath"] + "/")
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    assert read_gossip_key(str(key)) == b"s3cret"
    assert read_gossip_key(str(tmp_path / "absent")) == b""


def test_rbac_grants_what_the_kubernetes_source_uses_and_no_more():
    rules = by_kind("ClusterRole")["rules"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for group, resource in (
        ("", "services"),
        ("", "endpoints"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "servicecidrs"),
    ):
        assert {(group, resource, "list"), (group, resource, "watch")} <= granted
    assert ("", "events", "create") in granted
    for resource in ("ipaddresspools", "l2advertisements"):
        assert {("metallb.io", resource, "list"), ("metallb.io", resource, "watch")} <= granted
    # the one write beyond Events: LoadBalancer IPs in Service status
    writes = {(g, r, v) for g, r, v in granted if v not in ("get", "list", "watch")}
    assert writes == {
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("", "services/status", "patch"),
    }


def test_the_lease_role_covers_the_allocators_lease_only():
    from controlplane.l2.lease import LeaseElector

    role = by_kind("Role")
    binding = by_kind("RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "kube-system"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    defaults = LeaseElector.__init__.__defaults__
    assert "kube-system" in defaults and "xlb-lb-allocator" in defaults
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["xlb-lb-allocator"],
            "verbs": ["get", "update"],
        }
    ]
    # create cannot be limited by name (the object does not exist yet)
    assert [r["verbs"] for r in role["rules"] if not r.get("resourceNames")] == [["create"]]


def test_the_containerfile_copies_what_exists():
    text = (DEPLOY / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src
