"""The change sets the sources hand the translator (model.snapshot.Changes), against the
contract in Translator's docstring: each snapshot names exactly the Services whose object or
slices changed since the snapshot before, and a Translator fed them gives what translate()
gives. The Kubernetes source is driven through the real client and the API stand-in; the
manifest source through files."""

from __future__ import annotations

import time

from controlplane.model import Translator, translate
from controlplane.model.snapshot import Changes
from controlplane.sources.files import ManifestSource
from tests.k8s.test_source import NODE, api, eps, running_source, svc  # noqa: F401 (fixture)


class Consumer:
    """What the agent does with a source: take each snapshot, translate it with the Changes
    it carries; check each translation against translate() and keep what was named."""

    def __init__(self, source) -> None:
        self.source, self.translator = source, Translator()
        self.named: set[str] = set()
        self.followed = 0

    def take(self):
        cluster = self.source.snapshot()
        node = cluster.nodes[0] if cluster.nodes else None
        changes: Changes = cluster.changes
        self.followed += changes.follows(*self.translator.taken)
        got = self.translator(cluster.services, cluster.slices, node, None, changes)
        assert got == translate(cluster.services, cluster.slices, node)
        self.named |= changes.services or set()
        return cluster

    def until(self, pred, timeout: float = 5.0) -> set[str]:
        """Snapshots until pred(cluster) holds; the Services they named, together."""
        self.named = set()
        end = time.monotonic() + timeout
        while not pred(self.take()):
            assert time.monotonic() < end, "timed out"
            time.sleep(0.02)
        return self.named


def names(cluster) -> set[str]:
    return {s.name for s in cluster.services}


def backends(cluster, name) -> list[str]:
    return sorted(
        e.addresses[0] for sl in cluster.slices if sl.service_name == name for e in sl.endpoints
    )


def test_the_kubernetes_source_names_what_changed_and_nothing_else(api):  # noqa: F811
    with running_source(api) as source:
        while not source.ready:
            time.sleep(0.02)
        use = Consumer(source)
        api.apply(svc("a", "10.96.0.20"))
        api.apply(svc("b", "10.96.0.21"))
        api.apply(eps("a", ["10.244.1.5"]))
        use.until(lambda c: names(c) == {"a", "b"} and backends(c, "a") == ["10.244.1.5"])
        # a slice changes: its Service alone
        api.apply(eps("a", ["10.244.1.5", "10.244.2.5"]))
        assert use.until(lambda c: len(backends(c, "a")) == 2) == {"default/a"}
        # a Node changes: no Service (the translator compares the node itself)
        api.apply({**NODE, "metadata": {"name": "node-1", "labels": {"zone": "z"}}})
        assert use.until(lambda c: c.nodes[0].labels == {"zone": "z"}) == set()
        # a Service goes, with its slice
        api.delete("Service", "b")
        assert use.until(lambda c: names(c) == {"a"}) == {"default/b"}
        api.delete("EndpointSlice", "a-abc")
        assert use.until(lambda c: backends(c, "a") == []) == {"default/a"}
        # a list after the history was compacted: only what differs from the store
        api.down = True
        api.cut_watches()
        api.apply(svc("c", "10.96.0.22"))
        api.delete("Service", "a")
        api.compact()
        api.down = False
        assert use.until(lambda c: names(c) == {"c"}) == {"default/a", "default/c"}
        assert use.followed >= 5  # the translator patched, it did not start over each time


def test_the_manifest_source_names_what_changed_by_value(tmp_path):
    def write(*docs: str) -> None:
        (tmp_path / "m.yaml").write_text("\n---\n".join(docs))
        time.sleep(0.01)  # a new mtime for the watch

    web = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n"
        "  ports: [{port: 80}]\n  selector: {app: web}"
    )
    db = web.replace("web", "db").replace("10.96.0.10", "10.96.0.11")
    pod = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, labels: {app: web}}\nspec:\n"
        "  containers: [{name: c, ports: [{containerPort: 80}]}]"
    )
    write(web, db)
    use = Consumer(ManifestSource([str(tmp_path)]))
    first = use.take()
    assert first.changes.services is None  # the first snapshot: everything
    write(db, web)  # the same objects in another order: nothing changed
    assert use.take().changes.services == frozenset()
    write(db, web, pod)  # a pod for web: its slice
    assert use.take().changes.services == {"default/web"}
    write(db.replace("port: 80", "port: 81"), web, pod)
    assert use.take().changes.services == {"default/db"}
    write(web, pod)
    assert use.take().changes.services == {"default/db"}
    assert use.followed == 4
