"""The Vagrant lab cannot boot here (no /dev/kvm): its Vagrantfile must validate and its
scripts pass shellcheck, and the smoke test must ask for what the examples define."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.helpers import EXAMPLES, REPO

SCRIPTS = sorted(
    [
        *(REPO / "deploy" / "vagrant").glob("*.sh"),
        *(REPO / "scripts").glob("*.sh"),
        REPO / ".ci" / "run",
    ]
)


def test_vagrantfile_validates(tmp_path):
    if not shutil.which("vagrant"):
        pytest.fail("vagrant is not installed: `make setup` installs it")
    out = subprocess.run(
        ["vagrant", "validate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "VAGRANT_CHECKPOINT_DISABLE": "1"},
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Vagrantfile validated successfully" in out.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_shellcheck(script):
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is not installed: `make setup` installs it")
    out = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_smoke_asks_for_what_the_examples_define():
    smoke = (REPO / "deploy" / "vagrant" / "smoke.sh").read_text()
    defined = "\n".join(p.read_text() for p in (EXAMPLES / "services").glob("*.yaml"))
    for name in set(re.findall(r"(?:svc|deployment/)\s*(nginx-[a-z-]+)", smoke)):
        assert f"name: {name}\n" in defined, name
