"""What `xlb lab up` refuses before it builds anything (no root needed: nothing is made)."""

from __future__ import annotations

import uuid

import pytest

from controlplane.lab.lab import Lab, LabError
from controlplane.lab.processes import alive


@pytest.mark.parametrize(
    ("nodes", "without_xlb", "message"),
    [
        (0, [], "at least 1"),
        (2, ["node-3"], "--without-xlb"),  # no such node
        (2, ["node-1", "node-2"], "--without-xlb"),  # a lab with no xlb at all
        (1, ["node-1"], "--without-xlb"),
    ],
)
def test_up_refuses(nodes, without_xlb, message):
    lab = Lab(f"t{uuid.uuid4().hex[:8]}")
    with pytest.raises(LabError, match=message):
        lab.up([], nodes=nodes, without_xlb=without_xlb, log=lambda *_: None)
    assert not lab.dir.exists()


def test_no_agent_is_never_alive():
    """A node without xlb has agent pid 0, which waitpid and kill would read as the whole
    process group."""
    assert not alive(0) and not alive(-1)
