#!/usr/bin/env bash
# Undo compose/kind/up.sh: the routes and the cluster.local resolver settings --route-pods added,
# the kind cluster, kind's `kind` docker network (when no other kind cluster uses it) and the
# ServiceAccount kubeconfigs. Safe to run when any of them is already gone.
#
# Usage: compose/kind/down.sh     Environment: KIND_CLUSTER_NAME (ephemeral)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBE_DIR="$(dirname "$HERE")/.kube"
CLUSTER="${KIND_CLUSTER_NAME:-ephemeral}"
NETWORK="kind"   # kind's default; KIND_EXPERIMENTAL_DOCKER_NETWORK is not supported by up.sh

sudo_=""
[[ $(id -u) == 0 ]] || sudo_="sudo"

if [[ -f "$KUBE_DIR/routes" ]]; then
  while read -r cidr; do
    [[ -n "$cidr" ]] || continue
    if $sudo_ ip route del "$cidr" 2>/dev/null; then echo "route $cidr removed"; fi
  done <"$KUBE_DIR/routes"
fi

# The DNS server and ~cluster.local domain up.sh set on the kind bridge: revert them before the
# bridge goes (a bridge that is already gone took its settings with it).
if [[ -f "$KUBE_DIR/resolver" ]]; then
  link="$(cat "$KUBE_DIR/resolver")"
  if ! command -v resolvectl >/dev/null 2>&1; then
    echo "no resolvectl: nothing to revert on link $link"
  elif [[ -n "$link" ]] && $sudo_ resolvectl revert "$link" 2>/dev/null; then
    echo "resolver settings of link $link reverted"
  else
    echo "link $link is gone: no resolver settings left"
  fi
fi

if ! command -v kind >/dev/null 2>&1; then
  echo "kind is not installed: no cluster to delete"
elif kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
  kind delete cluster --name "$CLUSTER"
else
  echo "no kind cluster named $CLUSTER"
fi

# kind creates the `kind` network on first use and never removes it. Another kind cluster may
# still be on it; a container still attached (the compose stack) makes `docker network rm` refuse.
if ! command -v docker >/dev/null 2>&1 || ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
  echo "no docker network $NETWORK"
elif command -v kind >/dev/null 2>&1 && [[ -n "$(kind get clusters 2>/dev/null)" ]]; then
  echo "docker network $NETWORK kept: other kind clusters use it ($(kind get clusters 2>/dev/null | paste -sd' ' -))"
elif docker network rm "$NETWORK" >/dev/null; then
  echo "docker network $NETWORK removed"
else
  echo "warning: docker network $NETWORK kept: containers are still attached (the compose stack? docker compose -f compose/docker-compose.yaml down)" >&2
fi

rm -rf "$KUBE_DIR"
echo "down: cluster $CLUSTER and $KUBE_DIR removed"
