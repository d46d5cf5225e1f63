"""`xlb cleanup-kube-proxy`: remove what kube-proxy leaves on a node, and nothing else.

kube-proxy's rules outlive it: stale KUBE-* chains would still DNAT Service traffic behind
xlb's back. This removes what `kube-proxy --cleanup` removes (pkg/proxy/iptables/cleanup.go,
pkg/proxy/ipvs/cleanup.go, the nftables table), without needing kube-proxy, and is narrower
where kube-proxy's is broad:
* iptables and ip6tables (nat, filter, mangle): kube-proxy's own chains, by name, in every
  mode it has (iptables, ipvs), and every rule elsewhere that jumps to one of them. Chains
  kubelet makes (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, KUBE-MARK-DROP)
  and anything not named here stay, as do all rules of others. Each touched table is
  rewritten whole from its own dump (iptables-restore), so nothing else in it changes.
* nftables: the tables kube-proxy's nftables mode creates (`ip kube-proxy`, `ip6 kube-proxy`).
* IPVS: only kube-proxy's virtual servers (kube-proxy flushes them all: another IPVS user's
  would go too), the `kube-ipvs0` device, and kube-proxy's ipsets once nothing uses them.
Safe to repeat: a second run finds nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

# kube-proxy's chains by table (iptables mode, then ipvs mode), and the prefixes of its
# per-Service and per-endpoint chains.
KUBE_PROXY_CHAINS = {
    "nat": {
        "KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
        "KUBE-PROXY-CANARY", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER",
    },
    "filter": {
        "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "KUBE-NODE-PORT",
        "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER",
    },
    "mangle": {"KUBE-PROXY-CANARY"},
}  # fmt: skip
SERVICE_CHAIN_PREFIXES = (
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
    "KUBE-XLB-",
)
NFTABLES = (("ip", "kube-proxy"), ("ip6", "kube-proxy"))
IPVS_DEVICE = "kube-ipvs0"
# the ipsets of kube-proxy's ipvs mode
KUBE_PROXY_IPSETS = (
    "KUBE-LOOP-BACK", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP", "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
)  # fmt: skip
NODE_PORT_IPSETS = {
    "KUBE-NODE-PORT-TCP": "tcp", "KUBE-NODE-PORT-LOCAL-TCP": "tcp",
    "KUBE-NODE-PORT-UDP": "udp", "KUBE-NODE-PORT-LOCAL-UDP": "udp",
    "KUBE-NODE-PORT-SCTP-HASH": "sctp", "KUBE-NODE-PORT-LOCAL-SCTP-HASH": "sctp",
}  # fmt: skip


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=input, capture_output=True, text=True)


def is_kube_proxy_chain(table: str, chain: str) -> bool:
    return chain in KUBE_PROXY_CHAINS.get(table, ()) or (
        table == "nat" and chain.startswith(SERVICE_CHAIN_PREFIXES)
    )


def _targets(words: list[str]) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "--jump", "-g", "--goto")]


def filter_iptables_save(dump: str) -> tuple[str, list[str]]:
    """The iptables-save text without kube-proxy's chains and the rules in or jumping to
    them, keeping only the tables that had any; and the names of the chains that went."""
    out: list[str] = []
    removed: list[str] = []
    table: list[str] = []
    name = ""
    touched = False
    for line in dump.splitlines():
        if line.startswith("*"):
            table, name, touched = [line], line[1:].strip(), False
            continue
        if line.strip() == "COMMIT":
            if touched:
                out += table + ["COMMIT"]
            table = []
            continue
        if not table:
            continue  # comments between tables
        words = line.split()
        if line.startswith(":") and is_kube_proxy_chain(name, words[0][1:]):
            removed.append(f"{name}/{words[0][1:]}")
            touched = True
            continue
        if (
            line.startswith("-A")
            and len(words) > 1
            and (
                is_kube_proxy_chain(name, words[1])
                or any(is_kube_proxy_chain(name, t) for t in _targets(words))
            )
        ):
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
        # --noflush would keep the chains: each touched table is replaced whole, built from
        # its own dump, so rules of others in it come back exactly as they were
        res = _run(restore, input=text)
        if res.returncode != 0:
            report.problems.append(f"{restore}: {res.stderr.strip()}")
            continue
        report.removed += [f"{save.removesuffix('-save')} {r}" for r in removed]


def cleanup_nftables(report: CleanupReport) -> None:
    if not shutil.which("nft"):
        return
    listed = _run("nft", "list", "tables")
    present = {tuple(line.split()[1:3]) for line in listed.stdout.splitlines() if line.split()}
    for family, table in NFTABLES:
        if (family, table) not in present:
            continue
        res = _run("nft", "delete", "table", family, table)
        if res.returncode == 0:
            report.removed.append(f"nftables table {family} {table}")
        else:
            report.problems.append(f"nft delete table {family} {table}: {res.stderr.strip()}")


def kube_proxy_virtual_servers(
    ipvsadm_save: str, device_addresses: Iterable[str], node_ports: dict[str, set[int]]
) -> list[list[str]]:
    """The `ipvsadm -D` arguments for kube-proxy's virtual servers in `ipvsadm -Sn` output:
    those on an address kube-proxy bound to kube-ipvs0 (ClusterIPs, externalIPs, LB IPs) and
    those on a NodePort kube-proxy's ipsets list (by protocol). Others' stay."""
    flags = {"-t": "tcp", "-u": "udp", "--sctp-service": "sctp"}
    addresses = set(device_addresses)
    out = []
    for line in ipvsadm_save.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "-A" or words[1] not in flags:
            continue  # real servers (-a) go with their virtual server; fwmark services stay
        host, _, port = words[2].rpartition(":")
        host = host.strip("[]")
        if host in addresses or int(port) in node_ports.get(flags[words[1]], set()):
            out.append(["-D", words[1], words[2]])
    return out


def _ipset_ports(name: str) -> set[int]:
    """The ports in one of kube-proxy's NodePort ipsets (entries like `30080`)."""
    listed = _run("ipset", "list", name)
    if listed.returncode != 0 or "Members:" not in listed.stdout:
        return set()
    members = listed.stdout.split("Members:", 1)[1].split()
    return {int(m.rsplit(":", 1)[-1]) for m in members if m.rsplit(":", 1)[-1].isdigit()}


def _device_addresses(name: str) -> list[str]:
    shown = _run("ip", "-o", "addr", "show", "dev", name)
    return [w.split("/")[0] for line in shown.stdout.splitlines() for w in line.split()[3:4]]


def cleanup_ipvs(report: CleanupReport) -> None:
    has_device = _run("ip", "link", "show", IPVS_DEVICE).returncode == 0
    ipset = shutil.which("ipset")
    if shutil.which("ipvsadm"):
        ports: dict[str, set[int]] = {}
        if ipset:
            for name, proto in NODE_PORT_IPSETS.items():
                ports.setdefault(proto, set()).update(_ipset_ports(name))
        saved = _run("ipvsadm", "-Sn")
        addresses = _device_addresses(IPVS_DEVICE) if has_device else []
        for args in kube_proxy_virtual_servers(saved.stdout, addresses, ports):
            res = _run("ipvsadm", *args)
            if res.returncode == 0:
                report.removed.append(f"IPVS virtual server {args[1]} {args[2]}")
            else:
                report.problems.append(f"ipvsadm {' '.join(args)}: {res.stderr.strip()}")
    if has_device:
        res = _run("ip", "link", "del", IPVS_DEVICE)
        if res.returncode == 0:
            report.removed.append(f"link {IPVS_DEVICE}")
        else:
            report.problems.append(f"ip link del {IPVS_DEVICE}: {res.stderr.strip()}")
    if ipset:  # after iptables: a set still used by a rule cannot be destroyed
        for name in KUBE_PROXY_IPSETS:
            if _run("ipset", "list", "-n", name).returncode == 0:
                res = _run("ipset", "destroy", name)
                if res.returncode == 0:
                    report.removed.append(f"ipset {name}")
                else:
                    report.problems.append(f"ipset destroy {name}: {res.stderr.strip()}")


def cleanup_kube_proxy() -> CleanupReport:
    report = CleanupReport()
    cleanup_iptables(report)
    cleanup_nftables(report)
    cleanup_ipvs(report)
    return report
