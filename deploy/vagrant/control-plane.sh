#!/usr/bin/env bash
# The control plane: kubeadm without the kube-proxy addon, xlb first (everything else reaches
# the API through the kubernetes Service, which xlb implements), then the CNI.
set -euo pipefail
NODE_IP="$1"

kubeadm init --skip-phases=addon/kube-proxy --apiserver-advertise-address="${NODE_IP}" \
  --pod-network-cidr=10.244.0.0/16 --service-cidr=10.96.0.0/12
mkdir -p /root/.kube /home/vagrant/.kube
cp /etc/kubernetes/admin.conf /root/.kube/config
cp /etc/kubernetes/admin.conf /home/vagrant/.kube/config
chown -R vagrant: /home/vagrant/.kube
export KUBECONFIG=/etc/kubernetes/admin.conf

sed -e "s|image: xlb:0.1.0|image: localhost/xlb:0.1.0\n        imagePullPolicy: Never|" \
    -e "s|XLB_API_HOST: \".*\"|XLB_API_HOST: \"${NODE_IP}\"|" \
    -e "s|XLB_CLEANUP_KUBE_PROXY: \"true\"|XLB_CLEANUP_KUBE_PROXY: \"false\"|" \
    /vagrant/deploy/xlb.yaml | kubectl apply -f -
kubectl apply -f https://github.com/flannel-io/flannel/releases/latest/download/kube-flannel.yml

kubeadm token create --print-join-command >/vagrant/.join.sh
chmod +x /vagrant/.join.sh
