"""Manifests of the lab's recurring scenarios, written once for the tests and `xlb bench`:
a Deployment behind several LoadBalancer Services, an address pool, a Node's labels."""

from __future__ import annotations

import json


def web_behind_load_balancers(
    services: int, replicas: int, family_policy: str | None = None, app: str = "web"
) -> str:
    """A Deployment of `replicas` pods (port 80) and `services` LoadBalancer Services in
    front of it, named lb-0.., each http 8000 -> 80 (family_policy: ipFamilyPolicy, if any)."""
    docs = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": app},
            "spec": {
                "selector": {"matchLabels": {"app": app}},
                "replicas": replicas,
                "template": {
                    "metadata": {"labels": {"app": app}},
                    "spec": {"containers": [{"name": app, "ports": [{"containerPort": 80}]}]},
                },
            },
        }
    ]
    for i in range(services):
        spec: dict = {"type": "LoadBalancer"}
        if family_policy:
            spec["ipFamilyPolicy"] = family_policy
        spec["selector"] = {"app": app}
        spec["ports"] = [{"name": "http", "port": 8000, "targetPort": 80}]
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"lb-{i}"},
                     "spec": spec})  # fmt: skip
    return to_yaml(docs)


def address_pool(addresses: list[str], placement: str | None = None, name: str = "lan") -> str:
    """A MetalLB IPAddressPool (placement: its xlb.io/l2-placement annotation, if any)."""
    meta: dict = {"name": name, "namespace": "metallb-system"}
    if placement:
        meta["annotations"] = {"xlb.io/l2-placement": placement}
    return to_yaml([{"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                     "metadata": meta, "spec": {"addresses": addresses}}])  # fmt: skip


def node(
    name: str, labels: dict[str, str] | None = None, conditions: dict[str, str] | None = None
) -> str:
    """A Node as `kubectl label` / a node's kubelet would leave it: labels, and conditions
    (type -> status). The lab merges it into its own node of that name."""
    obj: dict = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    if labels:
        obj["metadata"]["labels"] = dict(labels)
    if conditions:
        obj["status"] = {
            "conditions": [{"type": t, "status": s} for t, s in sorted(conditions.items())]
        }
    return to_yaml([obj])


def to_yaml(docs: list[dict]) -> str:
    """Documents as a multi-document manifest (JSON is YAML: no quoting surprises)."""
    return "\n---\n".join(json.dumps(d, indent=2) for d in docs) + "\n"


def joined(*manifests: str) -> str:
    """Several manifests as one file."""
    return "\n---\n".join(m.strip() for m in manifests if m.strip()) + "\n"
