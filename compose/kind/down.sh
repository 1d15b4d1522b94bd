#!/usr/bin/env bash
# Delete the smoke test's kind cluster, the routes up.sh --route-pods added and the
# ServiceAccount kubeconfigs it wrote. Safe to run when any of them is already gone.
#
# Usage: compose/kind/down.sh     Environment: KIND_CLUSTER_NAME (ephemeral)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBE_DIR="$(dirname "$HERE")/.kube"
CLUSTER="${KIND_CLUSTER_NAME:-ephemeral}"

if [[ -f "$KUBE_DIR/routes" ]]; then
  sudo_=""
  [[ $(id -u) == 0 ]] || sudo_="sudo"
  while read -r cidr; do
    [[ -n "$cidr" ]] || continue
    if $sudo_ ip route del "$cidr" 2>/dev/null; then echo "route $cidr removed"; fi
  done <"$KUBE_DIR/routes"
fi

if ! command -v kind >/dev/null 2>&1; then
  echo "kind is not installed: no cluster to delete"
elif kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
  kind delete cluster --name "$CLUSTER"
else
  echo "no kind cluster named $CLUSTER"
fi

rm -rf "$KUBE_DIR"
echo "down: cluster $CLUSTER and $KUBE_DIR removed"
