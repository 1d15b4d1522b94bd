"""The deployment files, checked offline: Kubernetes manifests against the Kubernetes schemas
(strict), least-privilege RBAC, the reaper CronJob against what `ephemeral reap` reads, the
compose stack with docker-compose and the Compose Specification schema, the kind config, the
CI workflow, the shell scripts (bash -n, shellcheck, a run against stub tools), and the DAGs
that go with them. Nothing here needs a container engine or a cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
K8S = COMPOSE / "k8s"
KIND = COMPOSE / "kind"
WORKFLOW = ROOT / ".github" / "workflows" / "kind-smoke.yml"
SCRIPTS = [KIND / "up.sh", KIND / "down.sh"]
K8S_VERSIONS = ["1.35.0", "1.37.0"]  # kind's node image, and the newest kubernetes-validate knows
SHA = re.compile(r"^[0-9a-f]{40}$")

COMPOSE_ENV = {"POSTGRES_PASSWORD": "pg", "AIRFLOW_FERNET_KEY": "fernet",
               "AIRFLOW_JWT_SECRET": "jwt", "AIRFLOW_API_SECRET_KEY": "api",
               "AIRFLOW_ADMIN_PASSWORD": "admin-pw"}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}:{d['kind']}", d) for p in sorted(K8S.glob("*.yaml")) for d in docs(p)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d["kind"] == kind]


# -- Kubernetes manifests ------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[n for n, _ in manifests()])
def test_every_manifest_validates_strictly(name: str, doc: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_is_strict_enough_to_catch_a_typo() -> None:
    import kubernetes_validate

    cron = json.loads(json.dumps(by_kind("CronJob")[0]))
    cron["spec"]["concurencyPolicy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cron, K8S_VERSIONS[0], strict=True)


def test_every_namespaced_object_is_in_the_project_namespace() -> None:
    for name, doc in manifests():
        assert doc["metadata"].get("namespace") == "ephemeral", name


def role_rules() -> list[dict[str, Any]]:
    roles = by_kind("Role")
    assert len(roles) == 1
    return list(roles[0]["rules"])


def test_rbac_is_namespaced_and_has_no_wildcards() -> None:
    kinds = {d["kind"] for _, d in manifests()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    for rule in role_rules():
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate", "deletecollection"}
        assert "secrets" not in rule["resources"]
        assert "resourceNames" not in rule
        assert "nonResourceURLs" not in rule


@pytest.mark.parametrize(("group", "resource", "verbs"), [
    ("ray.io", "rayclusters", {"create", "get", "list", "watch", "delete"}),
    ("", "pods", {"get", "list", "watch"}),
    ("", "services", {"create", "get", "list", "watch", "delete"}),
    ("apps", "deployments", {"create", "get", "list", "watch", "delete"}),
    ("", "events", {"get", "list"}),
])
def test_rbac_grants_exactly_what_the_backend_needs(group: str, resource: str,
                                                    verbs: set[str]) -> None:
    granted = {v for r in role_rules() if group in r["apiGroups"] and resource in r["resources"]
               for v in r["verbs"]}
    assert granted == verbs


def test_nothing_is_granted_on_kinds_the_backend_never_makes() -> None:
    granted = {res for rule in role_rules() for res in rule["resources"]}
    assert granted == {"rayclusters", "pods", "services", "deployments", "events"}


def test_pods_are_only_read() -> None:
    for rule in role_rules():
        if "pods" in rule["resources"] or "events" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_every_role_rule_is_explained_by_a_comment() -> None:
    text = (K8S / "rbac.yaml").read_text()
    rules = text.split("rules:", 1)[1].split("---", 1)[0]
    items = rules.count("  - apiGroups:")
    commented = len(re.findall(r"\n  #[^\n]*\n(?:  #[^\n]*\n)*  - apiGroups:", rules))
    assert items == commented == len(role_rules())


def test_the_rolebinding_binds_the_role_to_the_service_account() -> None:
    (sa,) = by_kind("ServiceAccount")
    (role,) = by_kind("Role")
    (binding,) = by_kind("RoleBinding")
    assert sa["metadata"]["name"] == "ephemeral-airflow"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ephemeral-airflow",
                                    "namespace": sa["metadata"]["namespace"]}]


# -- The reaper CronJob --------------------------------------------------------------------------

def reaper() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    (cron,) = by_kind("CronJob")
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    return cron, job, pod


def test_the_reaper_runs_every_five_minutes_one_at_a_time_within_a_deadline() -> None:
    cron, job, pod = reaper()
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert 0 < job["activeDeadlineSeconds"] <= 900
    assert pod["serviceAccountName"] == "ephemeral-airflow"
    assert pod["restartPolicy"] == "Never"


def test_the_reaper_runs_the_cli_with_the_kubernetes_backend_in_cluster() -> None:
    _, _, pod = reaper()
    (container,) = pod["containers"]
    assert container["command"][:2] == ["ephemeral", "reap"]
    env = {e["name"]: e for e in container["env"]}
    assert env["EPHEMERAL_BACKEND"]["value"] == "kubernetes"
    assert env["EPHEMERAL_K8S_IN_CLUSTER"]["value"] == "true"
    requests = container["resources"]["requests"]
    assert requests["cpu"].endswith("m")
    assert int(requests["cpu"][:-1]) <= 100
    assert requests["memory"].endswith("Mi")
    assert int(requests["memory"][:-2]) <= 256
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_reaper_takes_every_credential_from_a_secret_by_reference() -> None:
    _, _, pod = reaper()
    (container,) = pod["containers"]
    assert "envFrom" not in container
    secret_like = re.compile(r"PASSWORD|TOKEN|USER|SECRET|KEY|URL")
    for var in container["env"]:
        if secret_like.search(var["name"]):
            assert "value" not in var, var["name"]
            assert set(var["valueFrom"]) == {"secretKeyRef"}, var["name"]


def test_the_reaper_sets_the_variables_and_flags_the_cli_reads() -> None:
    """`ephemeral reap` reads EPHEMERAL_AIRFLOW_URL (an option's envvar) and AirflowApiLookup's
    credentials from AIRFLOW_API_TOKEN or EPHEMERAL_AIRFLOW_USER/_PASSWORD."""
    import inspect

    import typer.main

    from ephemeral.cli import main as cli

    _, _, pod = reaper()
    (container,) = pod["containers"]
    names = {e["name"] for e in container["env"]}
    command = typer.main.get_command(cli.app)
    reap = command.commands["reap"]  # type: ignore[attr-defined]
    envvars = {p.envvar for p in reap.params if p.envvar}
    assert envvars <= names
    source = inspect.getsource(cli.reap_cmd)
    for var in ("AIRFLOW_API_TOKEN", "EPHEMERAL_AIRFLOW_USER", "EPHEMERAL_AIRFLOW_PASSWORD"):
        assert var in source
        assert var in names
    flags = {opt for p in reap.params for opt in p.opts}
    assert {o for o in container["command"][2:] if o.startswith("--")} <= flags


def test_the_reaper_can_write_its_memory_with_a_read_only_root() -> None:
    _, _, pod = reaper()
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert any(env["EPHEMERAL_HOME"].startswith(m) for m in mounts)


# -- The compose stack ---------------------------------------------------------------------------

def compose_doc() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())


def docker_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (`make setup` installs Debian's package)")
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    return subprocess.run([binary, "-f", str(COMPOSE / "docker-compose.yaml"), *args],
                          capture_output=True, text=True, env=clean | env, cwd=COMPOSE,
                          check=False)


def test_docker_compose_accepts_the_stack() -> None:
    result = docker_compose("config", "-q", env=COMPOSE_ENV)
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_start_without_the_secrets() -> None:
    missing = dict(COMPOSE_ENV)
    del missing["AIRFLOW_JWT_SECRET"]
    result = docker_compose("config", "-q", env=missing)
    assert result.returncode != 0
    assert "set AIRFLOW_JWT_SECRET in compose/.env" in result.stderr


def test_the_stack_validates_against_the_compose_specification() -> None:
    import jsonschema

    schema = json.loads((COMPOSE / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose_doc())


def test_the_stack_runs_the_airflow_3_components_on_postgres() -> None:
    services = compose_doc()["services"]
    commands = {name: s.get("command") for name, s in services.items()}
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert component in commands.values(), component
    assert "airflow db migrate" in "\n".join(services["airflow-init"]["command"])
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    for name, service in services.items():
        if name.startswith("airflow-") and name != "airflow-init":
            assert service["depends_on"]["airflow-init"]["condition"] == \
                "service_completed_successfully"
            assert "healthcheck" in service, name


def test_the_stack_configures_airflow_and_ephemeral_for_kubernetes() -> None:
    import importlib

    env = compose_doc()["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
        "http://airflow-apiserver:8080/execution/"
    assert env["EPHEMERAL_BACKEND"] == "kubernetes"
    module, _, cls = env["AIRFLOW__CORE__XCOM_BACKEND"].rpartition(".")
    assert hasattr(importlib.import_module(module), cls)
    volumes = compose_doc()["services"]["airflow-scheduler"]["volumes"]
    kube = [v for v in volumes if v.endswith(":/opt/airflow/kube/config:ro")]
    assert len(kube) == 1
    assert env["EPHEMERAL_KUBECONFIG"] == "/opt/airflow/kube/config"
    assert env["EPHEMERAL_SPECS_DIR"] == "/opt/airflow/cluster_specs"
    assert "../cluster_specs:/opt/airflow/cluster_specs:ro" in volumes
    assert "../dags:/opt/airflow/dags:ro" in volumes


def test_no_secret_is_written_in_the_stack() -> None:
    secret = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN")
    for name, service in compose_doc()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key) and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key)
        assert "SQL_ALCHEMY_CONN" not in (service.get("environment") or {}) or \
            ":${POSTGRES_PASSWORD:?" in service["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    example = dict(line.split("=", 1) for line in (COMPOSE / ".env.example").read_text()
                   .splitlines() if line and not line.startswith("#"))
    assert set(COMPOSE_ENV) <= set(example)
    assert all(example[k] == "" for k in COMPOSE_ENV)
    assert "/.env" in (COMPOSE / ".gitignore").read_text().splitlines()


def test_the_image_is_airflow_3_3_2_with_only_the_k8s_extra() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert "ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11\nFROM ${AIRFLOW_IMAGE}" in text
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert len(installs) == 1
    assert '"/opt/ephemeral/src[k8s]"' in installs[0]
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in installs[0]
    for unwanted in ("local", "train", "apache-spark", "ray", "torch", "pyspark"):
        assert unwanted not in installs[0]


# -- kind ----------------------------------------------------------------------------------------

# Fields of kind's v1alpha4 Cluster and Node (pkg/apis/config/v1alpha4/types.go at v0.31.0).
KIND_CLUSTER_FIELDS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates",
                       "runtimeConfig", "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902",
                       "containerdConfigPatches", "containerdConfigPatchesJSON6902"}
KIND_NODE_FIELDS = {"role", "image", "labels", "extraMounts", "extraPortMappings",
                    "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902"}
KIND_NETWORKING_FIELDS = {"ipFamily", "apiServerPort", "apiServerAddress", "podSubnet",
                          "serviceSubnet", "disableDefaultCNI", "kubeProxyMode", "dnsSearch"}
KIND_DEFAULT_IMAGE = ("kindest/node:v1.35.0@sha256:"
                      "452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f")


def test_the_kind_cluster_is_cpu_only_with_one_control_plane_and_one_worker() -> None:
    config = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert set(config) <= KIND_CLUSTER_FIELDS
    assert set(config["networking"]) <= KIND_NETWORKING_FIELDS
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker"]
    for node in config["nodes"]:
        assert set(node) <= KIND_NODE_FIELDS
        assert node["image"] == KIND_DEFAULT_IMAGE  # kind v0.31.0's own, pinned by digest
        assert "extraMounts" not in node  # no /dev/nvidia*, no driver: CPU only
    assert "nvidia" not in (KIND / "kind-config.yaml").read_text().lower()


def test_the_tool_versions_agree_across_script_workflow_and_config() -> None:
    up = (KIND / "up.sh").read_text()
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert 'KIND_VERSION="v0.31.0"' in up
    assert workflow["env"]["KIND_VERSION"] == "v0.31.0"
    assert workflow["env"]["KUBECTL_VERSION"] == "v1.35.0"  # the node's Kubernetes
    assert 'KUBERAY_CHART_VERSION="1.7.0"' in up
    assert 'KUBERAY_HELM_REPO="https://ray-project.github.io/kuberay-helm/"' in up
    assert "kuberay/kuberay-operator" in up
    assert "--wait" in up


def test_the_operator_watches_only_the_project_namespace() -> None:
    values = yaml.safe_load((KIND / "kuberay-values.yaml").read_text())
    assert values == {"singleNamespaceInstall": True, "watchNamespace": ["ephemeral"]}


# -- The workflow --------------------------------------------------------------------------------

def smoke_steps() -> list[dict[str, Any]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return list(workflow["jobs"]["smoke"]["steps"])


def step(word: str) -> dict[str, Any]:
    found = [s for s in smoke_steps() if word in s.get("run", "")]
    assert len(found) == 1, word
    return found[0]


def test_the_workflow_is_well_formed() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"workflow_dispatch", "pull_request"} <= set(triggers)
    assert workflow["permissions"] == {"contents": "read"}
    job = workflow["jobs"]["smoke"]
    assert job["runs-on"].startswith("ubuntu-")
    assert 0 < job["timeout-minutes"] <= 90
    assert job["env"]["EPHEMERAL_BACKEND"] == "kubernetes"
    for s in smoke_steps():
        assert ("uses" in s) != ("run" in s), s
        assert "name" in s


def test_every_action_is_pinned_to_a_commit() -> None:
    uses = [s["uses"] for s in smoke_steps() if "uses" in s]
    assert uses
    for ref in uses:
        _action, _, version = ref.partition("@")
        assert SHA.match(version), ref
    python = next(s for s in smoke_steps() if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.11"
    kind = next(s for s in smoke_steps() if s.get("uses", "").startswith("helm/kind-action"))
    assert kind["with"]["install_only"] is True


def test_the_workflow_runs_the_smoke_test_in_order() -> None:
    runs = [s.get("run", "") for s in smoke_steps()]
    order = [i for i, r in enumerate(runs) for word in (
        "compose/kind/up.sh", "pip install -e '.[airflow,k8s,dev]'",
        "airflow dags test kubernetes_smoke", "pytest -m k8s", "get rayclusters")
        if word in r]
    assert order == sorted(order)
    assert len(order) == 5
    assert '"profile": "ci-cpu"' in step("airflow dags test kubernetes_smoke")["run"]


def test_the_workflow_fails_when_a_raycluster_is_left() -> None:
    check = step("get rayclusters")["run"]
    assert '-n "$EPHEMERAL_K8S_NAMESPACE" -o name' in check
    assert re.search(r'if \[ -n "\$left" \]; then.*?exit 1', check, re.S)
    assert "if" not in step("get rayclusters")  # runs whenever the steps before succeeded


def test_the_workflow_dumps_diagnostics_on_failure_and_always_tears_down() -> None:
    diagnostics = step("get events")
    assert diagnostics["if"] == "failure()"
    assert "describe pods" in diagnostics["run"]
    assert "kuberay-operator" in diagnostics["run"]
    teardown = smoke_steps()[-1]
    assert teardown["if"] == "always()"
    assert teardown["run"].strip() == "compose/kind/down.sh"


# -- Shell scripts -------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_are_strict(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert script.stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


STUB = r"""#!/usr/bin/env bash
# Stands in for docker/kind/kubectl/helm: logs its arguments, prints canned answers.
name="$(basename "$0")"
echo "$name $*" >>"$STUB_LOG"
case "$name $*" in
  "kind version") echo "kind ${STUB_KIND_VERSION:-v0.31.0} go1.25.5 linux/amd64" ;;
  "kind get clusters") [ -f "$STUB_STATE/cluster" ] && echo ephemeral ;;
  "kind create cluster"*) touch "$STUB_STATE/cluster" ;;
  "kind get kubeconfig"*) printf 'clusters:\n- cluster:\n    server: https://ephemeral-control-plane:6443\n' ;;
  "helm version"*) echo v3.21.4 ;;
  *"create token"*) echo stub-token ;;
  *"certificate-authority-data"*) printf 'Q0EK' ;;
  *"jsonpath={.clusters[0].cluster.server}"*) echo https://127.0.0.1:40000 ;;
  *"version --client -o yaml") echo "  gitVersion: v1.35.0" ;;
  *"auth can-i create namespaces") exit 1 ;;
  *"-o yaml") echo "kind: Namespace" ;;
  "kubectl config --kubeconfig "*) echo "$*" >>"$3" ;;
  *" -f -"*) cat >/dev/null ;;
esac
exit 0
"""


def stubbed_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "kind", "kubectl", "helm"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "state").mkdir()
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
            "STUB_LOG": str(tmp_path / "calls.log"), "STUB_STATE": str(tmp_path / "state")}


def run_script(script: Path, env: dict[str, str], *args: str,
               compose_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run a copy of the script inside a copy of compose/, so nothing lands in the checkout."""
    copy = compose_dir / "kind" / script.name
    return subprocess.run(["bash", str(copy), *args], capture_output=True, text=True, env=env,
                          check=False, timeout=60)


@pytest.fixture
def compose_copy(tmp_path: Path) -> Path:
    target = tmp_path / "compose"
    shutil.copytree(COMPOSE, target, ignore=shutil.ignore_patterns(".kube", ".env"))
    return target


def test_up_sh_brings_the_cluster_up_and_is_idempotent(tmp_path: Path,
                                                       compose_copy: Path) -> None:
    env = stubbed_env(tmp_path)
    first = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert first.returncode == 0, first.stdout + first.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "kind create cluster --name ephemeral --config" in calls
    assert "kind-config.yaml --wait 300s" in calls
    helm = next(line for line in calls.splitlines() if line.startswith("helm upgrade --install"))
    for part in ("kuberay-operator kuberay/kuberay-operator", "--version 1.7.0",
                 "--namespace kuberay-system", "--create-namespace", "kuberay-values.yaml",
                 "--set watchNamespace[0]=ephemeral", "--wait"):
        assert part in helm
    assert calls.index("create namespace ephemeral") < calls.index("helm upgrade --install")
    assert "create token ephemeral-airflow --duration=24h" in calls
    assert "crictl" not in calls
    assert "kind load" not in calls
    kubeconfigs = compose_copy / ".kube"
    assert "https://127.0.0.1:40000" in (kubeconfigs / "config").read_text()
    assert "https://ephemeral-control-plane:6443" in \
        (kubeconfigs / "config.internal").read_text()
    assert "--token stub-token" in (kubeconfigs / "config").read_text()
    assert stat.S_IMODE((kubeconfigs / "config").stat().st_mode) == 0o600

    (tmp_path / "calls.log").unlink()
    second = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kind create cluster" not in (tmp_path / "calls.log").read_text()
    assert "exists; kept" in second.stdout


def test_up_sh_preloads_the_ray_image_and_applies_rbac_for_another_namespace(
        tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path) | {"EPHEMERAL_K8S_NAMESPACE": "ml"}
    result = run_script(KIND / "up.sh", env, "--preload-ray-image", compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "kind load docker-image rayproject/ray:2.60.0-py311-cpu --name ephemeral" in calls
    assert "--set watchNamespace[0]=ml" in calls


def test_up_sh_refuses_an_unpinned_kind(tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path) | {"STUB_KIND_VERSION": "v0.29.0"}
    result = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert result.returncode == 1
    assert "kind is v0.29.0" in result.stderr
    assert "v0.31.0" in result.stderr


def test_up_sh_names_a_missing_tool(tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path)
    (tmp_path / "bin" / "helm").unlink()
    result = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert result.returncode == 1
    assert "helm is not installed" in result.stderr


def test_down_sh_is_safe_when_nothing_is_there(tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path)
    (compose_copy / ".kube").mkdir()
    result = run_script(KIND / "down.sh", env, compose_dir=compose_copy)
    assert result.returncode == 0, result.stderr
    assert "no kind cluster named ephemeral" in result.stdout
    assert not (compose_copy / ".kube").exists()
    (tmp_path / "state" / "cluster").touch()
    result = run_script(KIND / "down.sh", env, compose_dir=compose_copy)
    assert "kind delete cluster --name ephemeral" in (tmp_path / "calls.log").read_text()


# -- The DAGs that go with the stack -------------------------------------------------------------

@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = dict(os.environ) | {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env.pop("AIRFLOW__CORE__EXECUTOR", None)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True, env=env)
    return env


PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "tasks": {},
       "heavy": [m for m in ("ray", "pyspark", "torch", "kubernetes") if m in sys.modules]}
for dag_id, dag in bag.dags.items():
    out["tasks"][dag_id] = {t.task_id: {
        "executor": t.executor, "setup": t.is_setup, "teardown": t.is_teardown,
        "pod": type((t.executor_config or {}).get("pod_override")).__name__,
        "backend": getattr(t, "backend", None)} for t in dag.tasks}
    out.setdefault("dags", {})[dag_id] = {"timeout": str(dag.dagrun_timeout),
                                          "schedule": type(dag.timetable).__name__}
print(json.dumps(out))
"""


def parse(env: dict[str, str], dag_file: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", PARSE, str(ROOT / "dags" / dag_file)],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_smoke_dag_creates_runs_and_always_deletes(airflow_home: dict[str, str]) -> None:
    out = parse(airflow_home, "kubernetes_smoke.py")
    assert out["errors"] == {}
    assert out["heavy"] == []
    tasks = out["tasks"]["kubernetes_smoke"]
    assert tasks["create_ray"]["setup"]
    assert tasks["delete_ray"]["teardown"]
    assert tasks["create_ray"]["backend"] == tasks["delete_ray"]["backend"] == "kubernetes"
    assert set(tasks) == {"create_ray", "hello_ray", "check_nodes", "delete_ray"}
    assert out["dags"]["kubernetes_smoke"]["timeout"] == "None"
    assert out["dags"]["kubernetes_smoke"]["schedule"] == "NullTimetable"  # schedule=None


def test_the_smoke_dag_asks_for_adhoc_cpu_ci_cpu_and_one_worker(airflow_home: dict[str, str]
                                                                ) -> None:
    from ephemeral.specs import resolve

    text = (ROOT / "dags" / "kubernetes_smoke.py").read_text()
    assert 'spec="ray/adhoc-cpu"' in text
    assert '"ci-cpu"' in text
    spec = resolve("ray/adhoc-cpu", "ci-cpu", {"workers": {"replicas": 1}})
    assert [g.replicas for g in spec.spec.worker_groups] == [1]


def test_the_executor_example_uses_the_default_executor_unless_k8s_is_configured(
        airflow_home: dict[str, str]) -> None:
    out = parse(airflow_home, "kubernetes_executor_example.py")
    assert out["errors"] == {}
    assert out["heavy"] == []
    tasks = out["tasks"]["kubernetes_executor_example"]
    assert {t["executor"] for t in tasks.values()} == {None}


def test_the_executor_example_puts_submitting_tasks_in_small_pods_with_the_k8s_executor(
        airflow_home: dict[str, str]) -> None:
    env = airflow_home | {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor,KubernetesExecutor"}
    out = parse(env, "kubernetes_executor_example.py")
    assert out["errors"] == {}
    tasks = out["tasks"]["kubernetes_executor_example"]
    for task_id in ("create_ray", "train", "delete_ray"):
        assert tasks[task_id]["executor"] == "KubernetesExecutor"
        assert tasks[task_id]["pod"] == "V1Pod"
    assert tasks["summary"]["executor"] is None


@pytest.mark.parametrize(("configured", "expected"), [
    ("LocalExecutor", False),
    ("LocalExecutor,KubernetesExecutor", True),
    ("LocalExecutor, KubernetesExecutor", True),
    ("k8s:airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor",
     True),
    ("CeleryExecutor,LocalKubernetesExecutor", False),
    ("", False),
])
def test_kubernetes_executor_detection(configured: str, expected: bool) -> None:
    from dags.kubernetes_executor_example import kubernetes_executor_configured

    assert kubernetes_executor_configured(configured) is expected


def test_the_small_pod_asks_for_a_quarter_cpu_and_256mi() -> None:
    from dags.kubernetes_executor_example import small_pod

    pod = small_pod()["pod_override"]
    (container,) = pod.spec.containers
    assert container.name == "base"
    assert container.resources.requests == {"cpu": "250m", "memory": "256Mi"}
