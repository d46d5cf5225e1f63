"""`xlb cleanup-kube-proxy`: remove what kube-proxy leaves on a node, keep everything else.

kube-proxy's rules outlive it: stale KUBE-* chains would still DNAT Service traffic behind
xlb's back. This does what `kube-proxy --cleanup` does, without needing kube-proxy:
* iptables and ip6tables (nat, filter, mangle): every KUBE-* chain and every rule that jumps
  to one, rewritten with iptables-restore per table so that other rules stay untouched;
* nftables: the tables kube-proxy's nftables mode creates (`ip kube-proxy`, `ip6 kube-proxy`);
* IPVS mode: the `kube-ipvs0` dummy device that holds the Service addresses (the IPVS
  virtual servers go with the ipvs module's state; ipvsadm -C clears them where installed).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

KUBE_PREFIX = "KUBE-"


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=input, capture_output=True, text=True)


def _jumps_to_kube(words: list[str]) -> bool:
    return any(
        w in ("-j", "--jump", "-g", "--goto")
        and i + 1 < len(words)
        and words[i + 1].startswith(KUBE_PREFIX)
        for i, w in enumerate(words)
    )


def filter_iptables_save(dump: str) -> tuple[str, list[str]]:
    """The iptables-save text without KUBE-* chains and the rules that use them, keeping only
    tables that had any; and the names of what went."""
    out: list[str] = []
    removed: list[str] = []
    table: list[str] = []
    touched = False
    for line in dump.splitlines():
        if line.startswith("*"):
            table, touched = [line], False
            continue
        if line == "COMMIT":
            if touched:
                out += table + ["COMMIT"]
            table = []
            continue
        if not table:
            continue  # comments between tables
        words = line.split()
        if line.startswith(":") and words[0][1:].startswith(KUBE_PREFIX):
            removed.append(f"{table[0][1:]}/{words[0][1:]}")
            touched = True
            continue
        if line.startswith("-A") and (words[1].startswith(KUBE_PREFIX) or _jumps_to_kube(words)):
            touched = True
            continue
        table.append(line)
    return ("\n".join(out) + "\n") if out else "", removed


def cleanup_iptables(report: CleanupReport) -> None:
    for save, restore in (
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ):
        if not shutil.which(save):
            continue
        dump = _run(save)
        if dump.returncode != 0:
            report.problems.append(f"{save}: {dump.stderr.strip()}")
            continue
        text, removed = filter_iptables_save(dump.stdout)
        if not text:
            continue
        # --noflush would keep the KUBE chains: each touched table is replaced whole, built
        # from its own dump, so rules of others in it come back exactly as they were
        res = _run(restore, input=text)
        if res.returncode != 0:
            report.problems.append(f"{restore}: {res.stderr.strip()}")
            continue
        report.removed += [f"{save.removesuffix('-save')} {r}" for r in removed]


def cleanup_nftables(report: CleanupReport) -> None:
    if not shutil.which("nft"):
        return
    tables = _run("nft", "list", "tables").stdout.split("\n")
    for line in tables:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2] == "kube-proxy":
            res = _run("nft", "delete", "table", parts[1], parts[2])
            if res.returncode == 0:
                report.removed.append(f"nftables table {parts[1]} kube-proxy")
            else:
                report.problems.append(
                    f"nft delete table {parts[1]} kube-proxy: {res.stderr.strip()}"
                )


def cleanup_ipvs(report: CleanupReport) -> None:
    if (
        _run("ip", "link", "show", "kube-ipvs0").returncode == 0
        and _run("ip", "link", "del", "kube-ipvs0").returncode == 0
    ):
        report.removed.append("link kube-ipvs0")
    if shutil.which("ipvsadm") and _run("ipvsadm", "-Ln").stdout.count("->"):
        _run("ipvsadm", "-C")
        report.removed.append("IPVS virtual servers")


def cleanup_kube_proxy() -> CleanupReport:
    report = CleanupReport()
    cleanup_iptables(report)
    cleanup_nftables(report)
    cleanup_ipvs(report)
    return report
