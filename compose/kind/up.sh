#!/usr/bin/env bash
# Bring up the kind cluster for ephemeral's Kubernetes smoke test, or bring it up to date:
#
#   1. checks the pinned tools (kind v0.31.0, helm 3.12+ or 4, kubectl, docker);
#   2. creates the CPU-only kind cluster of compose/kind/kind-config.yaml (kept when it exists)
#      and removes the control-plane taint, so that both nodes take pods (see kind-config.yaml);
#   3. applies compose/k8s/namespace.yaml (the project namespace under the restricted Pod
#      Security Standard, with its ResourceQuota) and installs the KubeRay operator 1.7.0 with
#      helm, in its own namespace, watching only the project namespace;
#   4. applies compose/k8s/rbac.yaml and writes two kubeconfigs of the ephemeral-airflow
#      ServiceAccount (so Airflow runs with the Role's rights, not as cluster admin):
#        compose/.kube/config           for processes on this host (CI's `airflow dags test`),
#                                       mode 0600
#        compose/.kube/config.internal  for containers on the `kind` docker network (compose/),
#                                       mode 0640 and group 0 where possible: the compose stack
#                                       runs as ${AIRFLOW_UID:-50000}:0 and mounts the folder
#      Each is replaced in one step (written aside, then renamed), so a reader never sees half.
#      Also compose/.kube/client-cidrs: the `kind` network's IPv4 range, for
#      EPHEMERAL_K8S_CLIENT_CIDRS (through the service proxy the API server reaches the clusters'
#      pods from its node's address there, and kindnet enforces their NetworkPolicies).
#   5. optionally pre-loads the Ray CPU image onto the nodes, routes the pod and service ranges
#      from the host, and installs the reaper CronJob.
#
# Every step is idempotent: run it again to refresh the token or finish an interrupted run.
#
# Usage: compose/kind/up.sh [--preload-ray-image] [--route-pods] [--reaper IMAGE]
#   --preload-ray-image  put $EPHEMERAL_RAY_IMAGE (rayproject/ray:2.60.0-py311-cpu, several GB)
#                        on the nodes Ray pods can run on (no NoSchedule taint) first, so a
#                        cluster's readiness wait does not race the pull. The host's copy is
#                        removed afterwards when this script pulled it (CI runners have ~14 GB
#                        of disk); with Docker's containerd image store, where `kind load` fails
#                        on multi-platform images, the nodes pull it themselves, not the host.
#   --route-pods         (Linux, needs sudo) route the pod and service ranges to the nodes and
#                        resolve *.cluster.local through the cluster's DNS (systemd-resolved), so
#                        that a process on this host reaches Ray's dashboard by its Service name
#   --reaper IMAGE       load the project image IMAGE (docker build -f compose/Dockerfile .) into
#                        kind and install compose/k8s/reaper-cronjob.yaml; the Secret it reads is
#                        made from $EPHEMERAL_AIRFLOW_URL and $EPHEMERAL_AIRFLOW_USER/_PASSWORD
# Environment: KIND_CLUSTER_NAME (ephemeral), EPHEMERAL_K8S_NAMESPACE (ephemeral),
#   EPHEMERAL_RAY_IMAGE, EPHEMERAL_SKIP_VERSION_CHECK=1 to accept other tool versions.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMPOSE="$(dirname "$HERE")"
CLUSTER="${KIND_CLUSTER_NAME:-ephemeral}"
NS="${EPHEMERAL_K8S_NAMESPACE:-ephemeral}"
OPERATOR_NS="kuberay-system"
RAY_IMAGE="${EPHEMERAL_RAY_IMAGE:-rayproject/ray:2.60.0-py311-cpu}"
KUBE_DIR="$COMPOSE/.kube"

KIND_VERSION="v0.31.0"            # its default node image is pinned in kind-config.yaml
KUBERAY_CHART_VERSION="1.7.0"
KUBERAY_HELM_REPO="https://ray-project.github.io/kuberay-helm/"

# The help is the comment block at the top of this file, without its `#`s.
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; }

PRELOAD=0
ROUTE=0
REAPER_IMAGE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preload-ray-image) PRELOAD=1 ;;
    --route-pods) ROUTE=1 ;;
    --reaper) REAPER_IMAGE="${2:?--reaper needs the project image, e.g. ephemeral-airflow:dev}"
              shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "up.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'up.sh: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed: $2"; }

CTX="kind-$CLUSTER"
k() { kubectl --context "$CTX" "$@"; }
# The manifests name the namespace `ephemeral` (the Namespace object itself by `  name:`);
# another namespace is substituted on the way.
manifest() { sed -e "s/namespace: ephemeral\$/namespace: $NS/" -e "s/^  name: ephemeral\$/  name: $NS/" "$1"; }

say "checking tools"
need docker "https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (version $KIND_VERSION)"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need helm "https://helm.sh/docs/intro/install/"
docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer"
kind_version="$(kind version | awk '{print $2}')"
helm_version="$(helm version --template '{{.Version}}')"
if [[ "$kind_version" != "$KIND_VERSION" ]]; then
  msg="kind is $kind_version; this cluster's node image is pinned for kind $KIND_VERSION"
  [[ "${EPHEMERAL_SKIP_VERSION_CHECK:-}" == 1 ]] || die "$msg (EPHEMERAL_SKIP_VERSION_CHECK=1 to go on)"
  echo "warning: $msg"
fi
if ! [[ "$helm_version" =~ ^v(3\.(1[2-9]|[2-9][0-9])|4)\. ]]; then
  die "helm is $helm_version; 3.12 or newer (or 4.x) is needed"
fi
echo "kind $kind_version, helm $helm_version, kubectl $(kubectl version --client -o yaml | awk '/gitVersion/ {print $2; exit}')"

say "kind cluster $CLUSTER"
if kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
  echo "exists; kept"
else
  kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" --wait 300s
fi
kind export kubeconfig --name "$CLUSTER" >/dev/null   # context $CTX in ~/.kube/config
k wait --for=condition=Ready nodes --all --timeout=300s
# kind keeps the control-plane taint when the cluster has a worker: every pod would then land on
# the one worker, where the head and the worker of ci-cpu (1 CPU each, Guaranteed), the operator
# and kindnet need 2.2 CPUs, more than a 2-vCPU runner has. Untainted, the scheduler places the
# Ray pods on whichever node has the CPU free.
for node in $(k get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.taints[*].key}{"\n"}{end}' \
                | awk '/node-role.kubernetes.io\/control-plane/ {print $1}'); do
  k taint nodes "$node" node-role.kubernetes.io/control-plane:NoSchedule-
done

say "namespace $NS (compose/k8s/namespace.yaml: restricted Pod Security, ResourceQuota)"
manifest "$COMPOSE/k8s/namespace.yaml" | k apply -f -

if [[ $PRELOAD == 1 ]]; then
  # Only where Ray pods can be scheduled: nodes without a NoSchedule or NoExecute taint.
  ray_nodes="$(k get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.taints[*].effect}{"\n"}{end}' \
                 | awk '!/NoSchedule|NoExecute/ {print $1}' | paste -sd, -)"
  [[ -n "$ray_nodes" ]] || die "no node of $CLUSTER takes pods (every one has a NoSchedule taint)"
  say "pre-loading $RAY_IMAGE onto $ray_nodes"
  loaded=0
  # `kind load docker-image` copies the host's image; with Docker's containerd image store it
  # fails on multi-platform images (kubernetes-sigs/kind#3795), so there the host pull is skipped.
  driver_status="$(docker info -f '{{json .DriverStatus}}' 2>/dev/null || true)"
  if [[ "$driver_status" == *io.containerd.snapshotter* ]]; then
    echo "docker uses the containerd image store: the nodes pull the image themselves"
  else
    had_image=0
    docker image inspect "$RAY_IMAGE" >/dev/null 2>&1 && had_image=1
    if [[ $had_image == 1 ]] || docker pull "$RAY_IMAGE"; then
      if kind load docker-image "$RAY_IMAGE" --name "$CLUSTER" --nodes "$ray_nodes"; then
        loaded=1
      fi
      # The nodes hold their own copies now: a copy this script pulled only takes disk.
      if [[ $had_image == 0 ]]; then
        docker image rm "$RAY_IMAGE" >/dev/null || echo "warning: the host keeps its copy of $RAY_IMAGE"
      fi
    fi
  fi
  if [[ $loaded == 0 ]]; then
    echo "pulling $RAY_IMAGE inside the nodes"
    for node in ${ray_nodes//,/ }; do
      docker exec "$node" crictl pull "$RAY_IMAGE"
    done
  fi
fi

say "KubeRay operator $KUBERAY_CHART_VERSION (namespace $OPERATOR_NS, watching $NS)"
helm repo add kuberay "$KUBERAY_HELM_REPO" --force-update >/dev/null
helm repo update kuberay >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator \
  --version "$KUBERAY_CHART_VERSION" --kube-context "$CTX" \
  --namespace "$OPERATOR_NS" --create-namespace \
  -f "$HERE/kuberay-values.yaml" --set "watchNamespace[0]=$NS" \
  --wait --timeout 5m
k -n "$OPERATOR_NS" rollout status deployment/kuberay-operator --timeout=180s
k wait --for=condition=Established crd/rayclusters.ray.io --timeout=60s

say "RBAC for the ephemeral-airflow ServiceAccount"
manifest "$COMPOSE/k8s/rbac.yaml" | k apply -f -

say "kubeconfigs of the ServiceAccount in $KUBE_DIR"
mkdir -p "$KUBE_DIR"
# Group 0 may enter (not list names it cannot guess); see write_kubeconfig for the files.
chmod 750 "$KUBE_DIR"
token="$(k -n "$NS" create token ephemeral-airflow --duration=24h)"
ca="$(mktemp)"
trap 'rm -f "$ca"' EXIT
k config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
  | base64 -d >"$ca"
ca_data="$(base64 -w0 <"$ca")"
host_server="$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
# The address of the API server from the `kind` docker network (what `kind get kubeconfig
# --internal` prints): https://<cluster>-control-plane:6443.
internal_server="$(kind get kubeconfig --name "$CLUSTER" --internal \
  | awk '/server:/ {print $2; exit}')"
group0_note=""
write_kubeconfig() {  # file server mode
  local file="$1" server="$2" mode="$3" tmp="$1.new"
  rm -f "$tmp"
  # Written by the shell's own printf: the token on a command line (kubectl config
  # set-credentials --token) is in every user's `ps` while it runs.
  (umask 077
   printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: %s\n  cluster:\n    server: %s\n    certificate-authority-data: %s\nusers:\n- name: ephemeral-airflow\n  user:\n    token: %s\ncontexts:\n- name: ephemeral\n  context:\n    cluster: %s\n    user: ephemeral-airflow\n    namespace: %s\ncurrent-context: ephemeral\n' \
     "$CTX" "$server" "$ca_data" "$token" "$CTX" "$NS" >"$tmp")
  chmod "$mode" "$tmp"
  if [[ "$mode" == 0640 && "$(id -g)" != 0 ]] && ! chgrp 0 "$tmp" 2>/dev/null; then
    group0_note="$file belongs to your group, not group 0: run the compose stack as you (echo \"AIRFLOW_UID=\$(id -u)\" >> compose/.env)"
  fi
  mv -f "$tmp" "$file"   # one rename: the mounted folder shows the new file, never half of it
}
write_kubeconfig "$KUBE_DIR/config" "$host_server" 0600
write_kubeconfig "$KUBE_DIR/config.internal" "$internal_server" 0640
if [[ "$(id -g)" != 0 ]]; then chgrp 0 "$KUBE_DIR" 2>/dev/null || true; fi
# The ServiceAccount may do what ephemeral needs, and not more.
kubectl --kubeconfig "$KUBE_DIR/config" auth can-i create rayclusters.ray.io -n "$NS" >/dev/null \
  || die "the ServiceAccount cannot create RayClusters in $NS: check compose/k8s/rbac.yaml"
if kubectl --kubeconfig "$KUBE_DIR/config" auth can-i create namespaces >/dev/null 2>&1; then
  die "the ServiceAccount can create namespaces: its rights are wider than rbac.yaml grants"
fi
echo "$KUBE_DIR/config -> $host_server; $KUBE_DIR/config.internal -> $internal_server"
# In endpoint mode proxy the API server connects to the clusters' pods from its node's address on
# the `kind` network: each cluster's NetworkPolicy must admit that range, or readiness times out.
client_cidrs="$(docker network inspect kind -f '{{range .IPAM.Config}}{{println .Subnet}}{{end}}' \
                  | awk 'NF && !/:/' | paste -sd, -)"
[[ -n "$client_cidrs" ]] || die "the docker network kind has no IPv4 subnet"
echo "$client_cidrs" >"$KUBE_DIR/client-cidrs"
[[ -z "$group0_note" ]] || echo "note: $group0_note"

if [[ $ROUTE == 1 ]]; then
  say "routing the pod and service ranges from this host to the nodes"
  [[ "$(uname -s)" == Linux ]] || die "--route-pods works only on a Linux host"
  sudo_=""
  [[ $(id -u) == 0 ]] || sudo_="sudo"
  : >"$KUBE_DIR/routes"
  while read -r cidr ip; do
    [[ -n "$cidr" && -n "$ip" ]] || continue
    $sudo_ ip route replace "$cidr" via "$ip"
    echo "$cidr" >>"$KUBE_DIR/routes"
    echo "$cidr via $ip"
  done < <(k get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{" "}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
  # ClusterIPs: kube-proxy on the control plane translates them.
  cp_ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
    "$CLUSTER-control-plane")"
  service_cidr="$(awk '/serviceSubnet:/ {print $2; exit}' "$HERE/kind-config.yaml")"
  $sudo_ ip route replace "$service_cidr" via "$cp_ip"
  echo "$service_cidr" >>"$KUBE_DIR/routes"
  echo "$service_cidr via $cp_ip"
  # The backend names endpoints by Service DNS (<cluster>-head-svc.<ns>.svc.cluster.local):
  # with systemd-resolved, send cluster.local queries over the kind bridge to the cluster DNS.
  if command -v resolvectl >/dev/null 2>&1; then
    dns_ip="$(k -n kube-system get service kube-dns -o jsonpath='{.spec.clusterIP}')"
    bridge="$(ip route get "$cp_ip" | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')"
    $sudo_ resolvectl dns "$bridge" "$dns_ip"
    $sudo_ resolvectl domain "$bridge" "~cluster.local"
    echo "$bridge" >"$KUBE_DIR/resolver"   # down.sh reverts this link's DNS settings
    echo "cluster.local names resolved by $dns_ip (link $bridge)"
  else
    echo "warning: no resolvectl; *.svc.cluster.local names will not resolve on this host"
  fi
fi

if [[ -n "$REAPER_IMAGE" ]]; then
  say "reaper CronJob with $REAPER_IMAGE"
  : "${EPHEMERAL_AIRFLOW_URL:?set EPHEMERAL_AIRFLOW_URL to the Airflow API server as seen from pods}"
  secret_dir="$(mktemp -d)"
  trap 'rm -rf "$ca" "$secret_dir"' EXIT
  (umask 077
   printf '%s' "$EPHEMERAL_AIRFLOW_URL" >"$secret_dir/url"
   [[ -z "${EPHEMERAL_AIRFLOW_USER:-}" ]] || printf '%s' "$EPHEMERAL_AIRFLOW_USER" >"$secret_dir/username"
   [[ -z "${EPHEMERAL_AIRFLOW_PASSWORD:-}" ]] || printf '%s' "$EPHEMERAL_AIRFLOW_PASSWORD" >"$secret_dir/password")
  k -n "$NS" create secret generic ephemeral-airflow-api --from-file="$secret_dir" \
    --dry-run=client -o yaml | k apply -f -
  kind load docker-image "$REAPER_IMAGE" --name "$CLUSTER"
  manifest "$COMPOSE/k8s/reaper-cronjob.yaml" \
    | sed -e "s#image: ephemeral-airflow:dev#image: $REAPER_IMAGE#" \
          -e "s#value: production\$#value: ${EPHEMERAL_INSTANCE:-compose}#" | k apply -f -
fi

say "ready"
cat <<EOF
cluster $CLUSTER (context $CTX), namespace $NS, KubeRay $KUBERAY_CHART_VERSION.
Airflow on this host:   EPHEMERAL_BACKEND=kubernetes EPHEMERAL_KUBECONFIG=$KUBE_DIR/config
                        EPHEMERAL_K8S_CLIENT_CIDRS=$client_cidrs
                        EPHEMERAL_INSTANCE=${EPHEMERAL_INSTANCE:-compose}  (required; the reaper's)
The compose stack:      echo "EPHEMERAL_K8S_CLIENT_CIDRS=$client_cidrs" >> compose/.env
                        docker compose -f compose/docker-compose.yaml up -d  (see docs/kubernetes.md)
Tear down:              compose/kind/down.sh
EOF
