"""What a running agent tells `xlb status` that the maps cannot: its policies and what they
refused. One small JSON file per datapath (keyed by the pin root), in the run directory: the
pins live on bpffs, which holds maps and programs only.

The agent rewrites the file (atomically) when its content changes and removes it on a clean
stop; a file left by a killed agent names a pid that is gone, and `xlb status` says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "XLB_RUN_DIR"  # tests point it at their own directory
DEFAULT_RUN_DIR = "/run/xlb/agent"


def record_path(pin_root: str) -> Path:
    """The record of the agent serving the datapath pinned at pin_root."""
    name = pin_root.strip("/").replace("/", "_") or "root"
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR)) / f"{name}.json"


def write(pin_root: str, record: dict[str, Any]) -> None:
    path = record_path(pin_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(path)  # a reader never sees half a record


def remove(pin_root: str) -> None:
    record_path(pin_root).unlink(missing_ok=True)


def read(pin_root: str) -> dict[str, Any] | None:
    """The record and whether its agent still runs ("running"), or None if there is none."""
    try:
        record = json.loads(record_path(pin_root).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    record["running"] = _alive(record.get("pid"))
    return record


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
