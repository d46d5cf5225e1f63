#!/usr/bin/env bash
# Every node: containerd, kubeadm/kubelet/kubectl, kernel headers for bcc, and the xlb image
# built from /vagrant into containerd's k8s.io namespace (no registry needed).
set -euo pipefail
NODE_IP="$1"
K8S_MINOR="${K8S_MINOR:-v1.31}"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq containerd podman curl gpg apt-transport-https \
  "linux-headers-$(uname -r)" >/dev/null

modprobe br_netfilter || true
cat >/etc/sysctl.d/90-k8s.conf <<SYSCTL
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
SYSCTL
sysctl --system >/dev/null
swapoff -a

mkdir -p /etc/containerd
containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' \
  >/etc/containerd/config.toml
systemctl restart containerd

keyring=/etc/apt/keyrings/kubernetes.gpg
mkdir -p /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/${K8S_MINOR}/deb/Release.key" \
  | gpg --dearmor --yes -o "$keyring"
echo "deb [signed-by=${keyring}] https://pkgs.k8s.io/core:/stable:/${K8S_MINOR}/deb/ /" \
  >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" >/etc/default/kubelet
systemctl enable --now kubelet

podman build -q -f /vagrant/deploy/Containerfile -t localhost/xlb:0.1.0 /vagrant
podman save localhost/xlb:0.1.0 | ctr -n k8s.io images import -
