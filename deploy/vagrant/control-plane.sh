#!/usr/bin/env bash
# The control plane: kubeadm without the kube-proxy addon, on the CA and bootstrap token the
# host made before any machine booted (so the workers can join by themselves), xlb first
# (everything else reaches the API through the kubernetes Service, which xlb implements),
# then the CNI.
#   control-plane.sh NODE_IP TOKEN POOLS
set -euo pipefail
NODE_IP="$1" TOKEN="$2" POOLS="$3"
# shellcheck source=deploy/vagrant/lib.sh
. "$(dirname "$0")/lib.sh" 2>/dev/null || . /vagrant/deploy/vagrant/lib.sh

valid_token "$TOKEN"
install_ca /tmp/xlb-pki /etc/kubernetes/pki
# the token never expires: a worker may be (re)created long after the control plane; this
# is a lab on a host-only network, not a production cluster
kubeadm init --skip-phases=addon/kube-proxy --apiserver-advertise-address="${NODE_IP}" \
  --pod-network-cidr=10.244.0.0/16 --service-cidr=10.96.0.0/12 \
  --token "${TOKEN}" --token-ttl 0
mkdir -p /root/.kube /home/vagrant/.kube
cp /etc/kubernetes/admin.conf /root/.kube/config
cp /etc/kubernetes/admin.conf /home/vagrant/.kube/config
chown -R vagrant: /home/vagrant/.kube
export KUBECONFIG=/etc/kubernetes/admin.conf

# the agents' gossip key, mounted by the DaemonSet as a file
kubectl -n kube-system get secret xlb-gossip >/dev/null 2>&1 ||
  kubectl -n kube-system create secret generic xlb-gossip \
    --from-literal=key="$(head -c 32 /dev/urandom | base64)"
xlb_manifest "${NODE_IP}" "${POOLS}" </vagrant/deploy/xlb.yaml | kubectl apply -f -
kubectl apply -f https://github.com/flannel-io/flannel/releases/latest/download/kube-flannel.yml
