#!/usr/bin/env bash
# A worker joins with what the host gave every machine before any booted: the API server's
# address, the bootstrap token and the CA's public-key hash (no file from the control plane).
#   worker.sh API_ADDRESS TOKEN CA_HASH
set -euo pipefail
# shellcheck source=deploy/vagrant/lib.sh
. "$(dirname "$0")/lib.sh" 2>/dev/null || . /vagrant/deploy/vagrant/lib.sh

args=$(join_args "$1" "$2" "$3")
[ -f /etc/kubernetes/kubelet.conf ] && { echo "already joined"; exit 0; }
wait_for_api "$1"
# shellcheck disable=SC2086  # join_args prints separate arguments
kubeadm join $args
