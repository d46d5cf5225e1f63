"""The import rules of controlplane's layers, read from the source (no import runs): the pure
core imports nothing of the rest, only datapath touches bcc, and no layer imports one above
it. A new import across a line fails here."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "controlplane"

# what each part of controlplane may import (other parts, and the outside libraries that
# decide a layer: bcc, the kubernetes client); lower layers first
ALLOWED: dict[str, set[str]] = {
    "model": set(),  # the pure core: Kubernetes objects in, desired state out
    "maglev": set(),
    "heap": set(),
    "runstate": set(),
    "datapath": {"model", "maglev", "heap", "runstate", "bcc"},  # the only one with bcc
    "serve": {"model"},
    "sources": {"model", "kubernetes"},
    "l2": {"model", "kubernetes"},
    "cleanup": set(),
    "agent": {"model", "datapath", "sources", "l2", "serve", "heap", "runstate"},
    "lab": {"model", "datapath", "sources", "l2", "runstate"},
    "cli": {
        "model",
        "datapath",
        "sources",
        "l2",
        "lab",
        "agent",
        "cleanup",
        "serve",
        "runstate",
        "kubernetes",
        "maglev",
        "heap",
    },  # fmt: skip
}
OUTSIDE = {"bcc", "kubernetes"}


def imports() -> dict[str, set[str]]:
    """part -> the parts and outside libraries its modules import."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        part = rel[0]
        if part == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[list[str]] = []
            if isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module.split(".")]
            elif isinstance(node, ast.ImportFrom):
                base = ["controlplane", *rel[:-1]][: len(rel) - node.level + 1]
                module = base + (node.module.split(".") if node.module else [])
                targets = [module] if node.module else [module + [a.name] for a in node.names]
            for t in targets:
                if t[0] in OUTSIDE:
                    edges[part].add(t[0])
                elif t[0] == "controlplane" and len(t) > 1 and t[1] != part:
                    edges[part].add(t[1])
    return edges


def test_no_layer_imports_what_it_may_not():
    found = imports()
    unknown = set(found) - set(ALLOWED)
    assert not unknown, f"parts of controlplane without a rule here: {unknown}"
    wrong = {(part, t) for part, ts in found.items() for t in ts - ALLOWED[part]}
    assert not wrong, f"imports across a layer line: {sorted(wrong)}"


def test_the_pure_core_imports_nothing_of_the_rest_and_no_bcc_or_kubernetes():
    found = imports()
    for core in ("model", "maglev"):
        assert found.get(core, set()) == set(), (core, found.get(core))
    users_of_bcc = {part for part, ts in found.items() if "bcc" in ts}
    assert users_of_bcc <= {"datapath"}, users_of_bcc


def test_bcc_is_reached_only_through_datapath():
    """Not even through datapath's own import_bcc: a lab or a CLI that wants a program
    loaded asks datapath for that, not for bcc."""
    users = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] != "datapath" and "import_bcc" in path.read_text():
            users.append(str(path.relative_to(PACKAGE)))
    assert not users, users


def test_an_upward_import_would_be_caught(tmp_path, monkeypatch):
    """The check itself can fail: a model module importing datapath is reported."""
    fake = tmp_path / "controlplane"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "bad.py").write_text("from ..datapath import maps\nimport bcc\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert imports()["model"] == {"datapath", "bcc"}


def test_every_package_says_what_it_holds_and_what_it_may_import():
    """A newcomer reads the rules at the top of each package; they name no part that the
    rules here forbid."""
    for init in PACKAGE.glob("*/__init__.py"):
        part = init.parent.name
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if part == "cli":  # the top: it may import everything
            continue
        assert "May import:" in doc, f"{part}/__init__.py: say what it may import"
        said = doc.split("May import:", 1)[1].split(".")[0]
        others = {p for p in ALLOWED if p != part and p in said.replace(",", " ").split()}
        assert others <= ALLOWED[part], (part, others - ALLOWED[part])
