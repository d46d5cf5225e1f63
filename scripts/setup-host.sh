#!/usr/bin/env bash
# Prepares a Debian 12 host (as root) for building and testing xlb. Idempotent: every step checks
# first and says what it changed. Run by `make setup`; safe to run by hand.
set -euo pipefail

# Debian packages xlb uses: bcc for the datapath, kernel headers for bcc's compiler, the tools the
# tests and the lab drive (iproute2, nftables/iptables for comparisons, nginx/wrk/hey/curl as real
# peers; hey offers a fixed rate, which wrk cannot; gcc builds the bench's af-packet generator).
PACKAGES=(python3-bpfcc python3-venv linux-headers-amd64 bpftool iproute2 iptables nftables ethtool
          iputils-ping tcpdump arping nginx-light wrk hey curl vagrant shellcheck gcc libc6-dev)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-host: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Only where the running kernel ships no headers
# of its own, point that at Debian's newest installed linux-headers (networking programs only need
# the UAPI and generic headers, which are stable across these versions).
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/include" ]; then
  hdr=$(printf '%s\n' /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
  common=${hdr%-amd64}-common
  if [ ! -d "$hdr" ] || [ ! -d "$common" ]; then
    echo "setup-host: no kernel headers for $(uname -r) and no Debian linux-headers-*-amd64 to use" >&2
    exit 1
  fi
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
  echo "setup-host: kernel $(uname -r) has no headers; linked $kdir/build -> $hdr and $kdir/source -> $common"
fi

# bpffs is where xlb pins its maps; not every host mounts it at boot.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
  echo "setup-host: mounted bpffs at /sys/fs/bpf"
fi
