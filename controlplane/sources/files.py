"""Manifest files as a source, beside the Kubernetes API: looked at every poll (by the files'
identity, not their content), reloaded whole on any change, and the Services that changed
found by value and handed over as the Kubernetes source hands its changes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

from ..model.snapshot import Cluster, ValueTracker
from .manifests import load_cluster, manifest_files
from .simulated import ClusterConfig


class ManifestWatch:
    """Notices any change to the manifest files (added, removed, rewritten) by their identity:
    path, size, modification time and inode, without reading them."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = list(paths)
        self.last = ""

    def digest(self) -> str:
        files, _ = manifest_files(self.paths)
        h = hashlib.sha256()
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
        return h.hexdigest()

    def changed(self) -> bool:
        now = self.digest()
        if now == self.last:
            return False
        self.last = now
        return True


class ManifestSource:
    """Manifest files as a source: looked at every poll, reloaded whole on any change. Files
    have no events per object, so the Services that changed are found by value against the
    last snapshot (ValueTracker) and handed over as the Kubernetes source hands its."""

    def __init__(self, paths: list[str], cluster_cfg: ClusterConfig | None = None) -> None:
        self.paths, self.cluster_cfg = paths, cluster_cfg or ClusterConfig()
        self.watch = ManifestWatch(paths)
        self.ready = True
        self.tracker = ValueTracker()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def changed(self) -> bool:
        return self.watch.changed()

    def snapshot(self) -> Cluster:
        cluster = load_cluster(self.paths, self.cluster_cfg)
        cluster.changes = self.tracker.changes(cluster.services, cluster.slices)
        return cluster

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def health(self) -> dict:
        return {}
