#!/usr/bin/env bash
# A worker joins with the command the control plane left in the synced folder.
set -euo pipefail
for _ in $(seq 60); do
  [ -x /vagrant/.join.sh ] && break
  sleep 5
done
bash /vagrant/.join.sh
