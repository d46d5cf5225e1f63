"""The README's tables of measurements are what bench/results holds (bench/readme.py makes
them): a result committed without its table, or a table edited by hand, fails here."""

from __future__ import annotations

import json
import shutil

from bench import readme


def test_the_readme_tables_are_made_from_the_committed_results():
    text = readme.README.read_text()
    assert set(readme.blocks(text)) == set(readme.TABLES), "every table has its block"
    assert readme.render(text) == text, "run `xlb bench readme` and commit the README"


def test_a_changed_result_changes_its_table(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(readme.RESULTS, results)
    ci = json.loads((results / "ci.json").read_text())
    ci["controlplane"]["full_sync_s"] = 2.5
    ci["time"] = "2031-01-01 00:00"
    (results / "ci.json").write_text(json.dumps(ci))
    monkeypatch.setattr(readme, "RESULTS", results)
    text = readme.render(readme.README.read_text())
    assert "| full sync of 10,000 × 10 ≤ 2 s | 2.50 s | missed by 1.25× |" in text
    assert "2031-01-01 00:00" in text
