#!/usr/bin/env bash
# After `vagrant up`, on the host (outside every node): the examples reachable through xlb by
# ClusterIP (from a pod and from a node), NodePort on each node's private-network address,
# and the LoadBalancer IP; then the LoadBalancer IP's announcing node is stopped and the
# address must answer again through another node. Run from the checkout: deploy/vagrant/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
NODES=(cp w1 w2)
declare -A ADDRESS=([cp]=192.168.56.10 [w1]=192.168.56.11 [w2]=192.168.56.12)

on_cp() { vagrant ssh cp -c "sudo KUBECONFIG=/etc/kubernetes/admin.conf $*" -- -q 2>/dev/null; }

fail=0
check() {  # what, command...
  local what="$1"; shift
  if "$@" >/dev/null 2>&1; then echo "ok    $what"; else echo "FAIL  $what"; fail=1; fi
}
# retry SECONDS command...: until it succeeds, at most SECONDS (called through check)
# shellcheck disable=SC2317
retry() {
  local until=$((SECONDS + $1)); shift
  until "$@"; do [ "$SECONDS" -lt "$until" ] || return 1; sleep 1; done
}

on_cp kubectl -n kube-system rollout status daemonset/xlb --timeout=300s
on_cp kubectl apply -f /vagrant/examples/services/
on_cp kubectl rollout status deployment/nginx-deploy --timeout=300s

cip=$(on_cp kubectl get svc nginx-clusterip-svc -o "jsonpath='{.spec.clusterIP}'")
check "ClusterIP ${cip}:8000 from a pod" \
  on_cp kubectl run smoke-curl --rm -i --restart=Never --image=docker.io/curlimages/curl -- \
  curl -sf -m 5 "http://${cip}:8000/"
check "ClusterIP ${cip}:8000 from the node cp" on_cp curl -sf -m 5 "http://${cip}:8000/"

# From the host: this traffic arrives on each node's private-network interface, where xlb's
# XDP program must be attached.
port=$(on_cp kubectl get svc nginx-nodeport-svc -o "jsonpath='{.spec.ports[0].nodePort}'")
for node in "${NODES[@]}"; do
  check "NodePort ${ADDRESS[$node]}:${port} from the host" \
    curl -sf -m 5 "http://${ADDRESS[$node]}:${port}/"
done

lb=""
for _ in $(seq 60); do
  lb=$(on_cp kubectl get svc nginx-loadbalancer-svc \
    -o "jsonpath='{.status.loadBalancer.ingress[0].ip}'")
  [ -n "$lb" ] && break
  sleep 1
done
if [ -z "$lb" ]; then
  echo "FAIL  LoadBalancer: no address allocated (XLB_POOLS, the allocator's Lease)"
  fail=1
else
  check "LoadBalancer ${lb}:8000 from the host" retry 30 curl -sf -m 5 "http://${lb}:8000/"
  # which node answers ARP for it: the one whose xlb status lists it
  owner=""
  for node in w1 w2; do
    pod=$(on_cp kubectl -n kube-system get pods -l k8s-app=xlb \
      --field-selector "spec.nodeName=${node}" -o "jsonpath='{.items[0].metadata.name}'")
    if on_cp kubectl -n kube-system exec "$pod" -- xlb status | grep -q "announcing.*${lb}"; then
      owner=$node
    fi
  done
  if [ -z "$owner" ]; then
    echo "FAIL  LoadBalancer ${lb}: no worker says it announces it"
    fail=1
  else
    echo "info  ${lb} is announced by ${owner}; stopping ${owner}"
    vagrant halt "$owner" >/dev/null
    start=$SECONDS
    check "LoadBalancer ${lb}:8000 from the host after ${owner} stopped" \
      retry 60 curl -sf -m 2 "http://${lb}:8000/"
    echo "info  answered again $((SECONDS - start)) s after the halt returned"
    vagrant up "$owner" --no-provision >/dev/null
  fi
fi

for node in "${NODES[@]}"; do
  check "healthz on ${ADDRESS[$node]} from the host" \
    retry 60 curl -sf -m 5 "http://${ADDRESS[$node]}:10256/healthz"
done
exit "$fail"
