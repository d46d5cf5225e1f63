import subprocess
import sys

from controlplane.datapath import import_bcc
from tests.helpers import REPO


def test_bcc_imports_in_the_project_venv():
    assert hasattr(import_bcc(), "BPF")


def test_missing_bcc_is_one_clear_line():
    # -S: no site-packages at all, so bcc (a system package) is certainly missing
    code = "from controlplane.datapath import import_bcc; import_bcc()"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "install Debian's python3-bpfcc" in last and "--system-site-packages" in last
