"""The Vagrant lab cannot boot here (no box can be fetched, no Kubernetes binaries): what can
be checked without a VM is. The Vagrantfile validates (without a provider: none is installed
here, and `vagrant validate` would otherwise fail on "No usable default provider"), a broken
one does not, the scripts pass shellcheck, and the join logic (the CA and token made on the
host before any machine boots, the workers' CA pin, the join arguments) runs for real here.
Nothing is written into the checkout: Vagrant's state goes to a temporary directory."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import EXAMPLES, REPO

VAGRANT_DIR = REPO / "deploy" / "vagrant"
SCRIPTS = sorted(
    [
        *VAGRANT_DIR.glob("*.sh"),
        *(REPO / "scripts").glob("*.sh"),
        REPO / ".ci" / "run",
    ]
)


def _vagrant_validate(project: Path, home: Path) -> subprocess.CompletedProcess:
    if not shutil.which("vagrant"):
        pytest.fail("vagrant is not installed: `make setup` installs it")
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=project,
        capture_output=True,
        text=True,
        env={
            "HOME": str(home),
            "PATH": "/usr/bin:/bin",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_DOTFILE_PATH": str(home / "dotfile"),
        },
        timeout=180,
    )


def test_vagrantfile_validates(tmp_path):
    out = _vagrant_validate(REPO, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Vagrantfile validated successfully" in out.stdout
    # the bootstrap secrets went to the dotfile directory given, not into the checkout
    assert (tmp_path / "dotfile" / "xlb-bootstrap" / "token").exists()
    assert not (REPO / ".vagrant").exists()


def test_a_broken_vagrantfile_does_not_validate(tmp_path):
    """The check above can fail: the same Vagrantfile with a misspelt setting."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "deploy", project / "deploy")
    text = (REPO / "Vagrantfile").read_text()
    assert "node.vm.hostname = name" in text
    (project / "Vagrantfile").write_text(text.replace("node.vm.hostname", "node.vm.hostnme"))
    out = _vagrant_validate(project, tmp_path)
    assert out.returncode != 0
    assert "hostnme" in out.stdout + out.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_shellcheck(script):
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is not installed: `make setup` installs it")
    out = subprocess.run(
        ["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stdout


def _bash(script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs script with deploy/vagrant/lib.sh sourced."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f". {VAGRANT_DIR / 'lib.sh'}\n{script}", "_", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _openssl_pin(cert: Path) -> str:
    """kubeadm's CA pin computed by another route than lib.sh's: the DER of the
    certificate's SubjectPublicKeyInfo hashed in Python."""
    import hashlib

    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
        capture_output=True,
        check=True,
    ).stdout
    spki = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"],
        input=der,
        capture_output=True,
        check=True,
    ).stdout
    return "sha256:" + hashlib.sha256(spki).hexdigest()


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory) -> dict[str, str]:
    """deploy/vagrant/bootstrap.rb run as the Vagrantfile runs it, twice: once makes, then keeps."""
    out_dir = tmp_path_factory.mktemp("boot") / "xlb-bootstrap"
    runs = [
        subprocess.run(
            ["ruby", str(VAGRANT_DIR / "bootstrap.rb"), str(out_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1], "a second run must keep the token and the CA"
    said = dict(line.split(" ", 1) for line in runs[0].splitlines())
    return {"dir": str(out_dir), "token": said["token"], "hash": said["ca-cert-hash"]}


def test_bootstrap_makes_a_kubeadm_token_and_ca(bootstrap):
    out = Path(bootstrap["dir"])
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", bootstrap["token"])
    text = subprocess.run(
        ["openssl", "x509", "-in", str(out / "ca.crt"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CA:TRUE" in text and "Certificate Sign" in text and "CN = kubernetes" in text
    # the key is the certificate's, and private
    mod = [
        subprocess.run(
            ["openssl", kind, "-in", str(out / name), "-noout", "-modulus"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for kind, name in (("x509", "ca.crt"), ("rsa", "ca.key"))
    ]
    assert mod[0] == mod[1]
    assert (out / "ca.key").stat().st_mode & 0o077 == 0
    assert out.stat().st_mode & 0o077 == 0


def test_the_workers_pin_is_the_control_planes_ca(bootstrap):
    """What the Vagrantfile hands the workers (Ruby's hash), what lib.sh would compute from
    the certificate, and an independent computation agree."""
    cert = Path(bootstrap["dir"]) / "ca.crt"
    shell = _bash('ca_cert_hash "$1"', str(cert))
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip() == bootstrap["hash"] == _openssl_pin(cert)


def test_join_arguments(bootstrap):
    ok = _bash('join_args "$@"', "192.168.56.10", bootstrap["token"], bootstrap["hash"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == [
        "192.168.56.10:6443",
        "--token",
        bootstrap["token"],
        "--discovery-token-ca-cert-hash",
        bootstrap["hash"],
    ]
    for token, pin in (
        ("ABCDEF.0123456789abcdef", bootstrap["hash"]),  # upper case: not a token
        (bootstrap["token"], "sha256:xyz"),
        ("", ""),
    ):
        bad = _bash('join_args "$@"', "192.168.56.10", token, pin)
        assert bad.returncode != 0 and bad.stderr.strip()


def test_the_control_plane_installs_the_hosts_ca(bootstrap, tmp_path):
    """install_ca puts the host's CA where kubeadm init takes an existing one, the key
    private, and removes the uploaded key."""
    upload = tmp_path / "upload"
    shutil.copytree(bootstrap["dir"], upload)
    pki = tmp_path / "etc" / "kubernetes" / "pki"
    done = _bash('install_ca "$1" "$2"', str(upload), str(pki))
    assert done.returncode == 0, done.stderr
    assert (pki / "ca.crt").read_bytes() == (Path(bootstrap["dir"]) / "ca.crt").read_bytes()
    assert (pki / "ca.key").stat().st_mode & 0o777 == 0o600
    assert not (upload / "ca.key").exists()
    assert _bash('install_ca "$1" "$2"', str(tmp_path / "none"), str(pki)).returncode != 0


def test_the_lab_manifest_gets_the_api_server_and_pools():
    shipped = (REPO / "deploy" / "xlb.yaml").read_text()
    lib = VAGRANT_DIR / "lib.sh"
    out = subprocess.run(
        ["bash", "-c", f". {lib}; xlb_manifest 192.168.56.10 lab=192.168.56.240/28"],
        input=shipped,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'XLB_API_HOST: "192.168.56.10"' in out
    assert 'XLB_POOLS: "lab=192.168.56.240/28"' in out
    assert out.count("image: localhost/xlb:0.1.0") == shipped.count("image: xlb:0.1.0") > 0
    assert out.count("imagePullPolicy: Never") == shipped.count("image: xlb:0.1.0")


def test_smoke_asks_for_what_the_examples_define():
    smoke = (VAGRANT_DIR / "smoke.sh").read_text()
    defined = "\n".join(p.read_text() for p in (EXAMPLES / "services").glob("*.yaml"))
    names = set(re.findall(r"(?:svc|deployment/)\s*(nginx-[a-z-]+)", smoke))
    assert names
    for name in names:
        assert f"name: {name}\n" in defined, name
