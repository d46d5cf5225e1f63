"""deploy/: the manifests load into the kubernetes client's models without losing a field,
the commands they run are valid xlb command lines, and RBAC grants what the source uses."""

from __future__ import annotations

import re

import pytest
import yaml
from kubernetes import client

from controlplane.cli import build_parser
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
DOCS = list(yaml.safe_load_all((DEPLOY / "xlb.yaml").read_text()))
MODELS = {
    "ServiceAccount": client.V1ServiceAccount,
    "ClusterRole": client.V1ClusterRole,
    "ClusterRoleBinding": client.V1ClusterRoleBinding,
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
    env = dict(by_kind("ConfigMap")["data"], NODE_NAME="node-1")
    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    agent = spec["containers"][0]["command"]
    args = build_parser().parse_args(expand(agent[1:], env))
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


def test_the_gossip_key_comes_from_an_optional_secret_and_reaches_the_agent(monkeypatch):
    """No Secret: the pod still starts (no L2); with it, the agent reads the key from env."""
    from controlplane.cli import _gossip_key

    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    ref = env["XLB_GOSSIP_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["name"] == "xlb-gossip"
    monkeypatch.setenv("XLB_GOSSIP_KEY", "s3cret")
    assert _gossip_key(None) == b"s3cret"
    monkeypatch.delenv("XLB_GOSSIP_KEY")
    assert _gossip_key(None) == b""


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
    ):
        assert {(group, resource, "list"), (group, resource, "watch")} <= granted
    assert ("", "events", "create") in granted
    assert not any(v in ("update", "delete", "*") for _, _, v in granted)


def test_the_containerfile_copies_what_exists():
    text = (DEPLOY / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src
