#!/usr/bin/env bash
# Shared by the provisioning scripts; sourced, and by tests/deploy/test_vagrant.py here (the
# parts that need no VM). Each function says what it needs; none exits the caller.

# install_ca SRC_DIR PKI_DIR: the CA made on the host (bootstrap.rb) where kubeadm init
# looks for an existing one, so the workers' CA pin is known before the cluster exists.
install_ca() {
  local src="$1" pki="$2"
  if [ ! -s "$src/ca.crt" ] || [ ! -s "$src/ca.key" ]; then
    echo "no CA in $src" >&2
    return 1
  fi
  install -d -m 0755 "$pki"
  install -m 0644 "$src/ca.crt" "$pki/ca.crt"
  install -m 0600 "$src/ca.key" "$pki/ca.key"
  rm -f "$src/ca.key"
}

# ca_cert_hash CERT: kubeadm's --discovery-token-ca-cert-hash of a CA certificate (sha256
# of its DER SubjectPublicKeyInfo), the command kubeadm's documentation gives.
ca_cert_hash() {
  local der
  der=$(openssl x509 -pubkey -noout -in "$1" | openssl pkey -pubin -outform der | sha256sum)
  echo "sha256:${der%% *}"
}

# valid_token TOKEN: kubeadm's bootstrap token format.
valid_token() {
  [[ "$1" =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]]
}

# join_args API_ADDRESS TOKEN CA_HASH: the arguments of `kubeadm join` for a worker.
join_args() {
  local api="$1" token="$2" hash="$3"
  valid_token "$token" || { echo "not a bootstrap token: $token" >&2; return 1; }
  [[ "$hash" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "not a CA pin: $hash" >&2; return 1; }
  echo "${api}:6443 --token ${token} --discovery-token-ca-cert-hash ${hash}"
}

# wait_for_api ADDRESS [TRIES]: until the API server answers /readyz (every 5 s).
wait_for_api() {
  local api="$1" tries="${2:-120}"
  for _ in $(seq "$tries"); do
    curl -ksf -m 5 "https://${api}:6443/readyz" >/dev/null && return 0
    sleep 5
  done
  echo "the API server at ${api}:6443 did not answer" >&2
  return 1
}

# interface_of ADDRESS: the interface that holds ADDRESS (the node's InternalIP).
interface_of() {
  ip -o addr show | awk -v a="$1" '{split($4, p, "/"); if (p[1] == a) {print $2; exit}}'
}

# xlb_manifest API_ADDRESS POOLS < deploy/xlb.yaml: the shipped DaemonSet for this lab: the
# locally built image, the API server's address, the pools.
xlb_manifest() {
  sed -e "s|image: xlb:0.1.0|image: localhost/xlb:0.1.0\n        imagePullPolicy: Never|" \
      -e "s|XLB_API_HOST: \".*\"|XLB_API_HOST: \"$1\"|" \
      -e "s|XLB_POOLS: \".*\"|XLB_POOLS: \"$2\"|"
}
