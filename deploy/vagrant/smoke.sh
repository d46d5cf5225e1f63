#!/usr/bin/env bash
# After `vagrant up`, on cp: the examples reachable through xlb by ClusterIP, NodePort and,
# once it has an address, LoadBalancer.
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf

kubectl -n kube-system rollout status daemonset/xlb --timeout=300s
kubectl apply -f /vagrant/examples/services/
kubectl rollout status deployment/nginx-deploy --timeout=300s

fail=0
check() {  # what, command...
  local what="$1"; shift
  if "$@" >/dev/null 2>&1; then echo "ok    $what"; else echo "FAIL  $what"; fail=1; fi
}

cip=$(kubectl get svc nginx-clusterip-svc -o jsonpath='{.spec.clusterIP}')
check "ClusterIP ${cip}:8000 from a pod" \
  kubectl run smoke-curl --rm -i --restart=Never --image=docker.io/curlimages/curl -- \
  curl -sf -m 5 "http://${cip}:8000/"
check "ClusterIP ${cip}:8000 from the node" curl -sf -m 5 "http://${cip}:8000/"

port=$(kubectl get svc nginx-nodeport-svc -o jsonpath='{.spec.ports[0].nodePort}')
for ip in 192.168.56.11 192.168.56.12; do
  check "NodePort ${ip}:${port}" curl -sf -m 5 "http://${ip}:${port}/"
done

lb=$(kubectl get svc nginx-loadbalancer-svc -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
if [ -n "$lb" ]; then
  check "LoadBalancer ${lb}:8000" curl -sf -m 5 "http://${lb}:8000/"
else
  echo "skip  LoadBalancer: no address yet (xlb's L2 address pools assign one)"
fi

for ip in 192.168.56.10 192.168.56.11 192.168.56.12; do
  check "healthz on ${ip}" curl -sf -m 5 "http://${ip}:10256/healthz"
done
exit "$fail"
