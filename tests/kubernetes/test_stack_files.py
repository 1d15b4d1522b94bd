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
import tempfile
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

COMPOSE_SECRETS = {"POSTGRES_PASSWORD": "pg", "AIRFLOW_FERNET_KEY": "fernet",
                   "AIRFLOW_JWT_SECRET": "jwt", "AIRFLOW_API_SECRET_KEY": "api",
                   "AIRFLOW_ADMIN_PASSWORD": "admin-pw"}
# What `docker compose` refuses to start without: the secrets, and the range the clusters'
# NetworkPolicies admit besides Airflow's pods (no default: a wrong one is a readiness timeout).
COMPOSE_ENV = COMPOSE_SECRETS | {"EPHEMERAL_K8S_CLIENT_CIDRS": "172.18.0.0/16"}


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
        if doc["kind"] == "Namespace":  # cluster-scoped: it IS the project namespace
            assert doc["metadata"]["name"] == "ephemeral"
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"].get("namespace") == "ephemeral", name


def test_the_project_namespace_enforces_the_restricted_pod_security_standard() -> None:
    (namespace,) = by_kind("Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    (quota,) = by_kind("ResourceQuota")
    assert {"requests.cpu", "requests.memory", "pods"} <= set(quota["spec"]["hard"])


AIRFLOW_ROLE = "ephemeral-airflow"
REAPER_ROLE = "ephemeral-reaper"


def role_rules(name: str = AIRFLOW_ROLE) -> list[dict[str, Any]]:
    roles = [r for r in by_kind("Role") if r["metadata"]["name"] == name]
    assert len(roles) == 1, name
    return list(roles[0]["rules"])


def granted(name: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role_rules(name):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_the_roles_are_exactly_the_airflow_and_the_reaper_ones() -> None:
    assert sorted(r["metadata"]["name"] for r in by_kind("Role")) == [AIRFLOW_ROLE, REAPER_ROLE]


@pytest.mark.parametrize("role", [AIRFLOW_ROLE, REAPER_ROLE])
def test_rbac_is_namespaced_and_has_no_wildcards(role: str) -> None:
    kinds = {d["kind"] for _, d in manifests()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    for rule in role_rules(role):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate", "deletecollection",
                                         "patch", "update"}
        assert "resourceNames" not in rule
        assert "nonResourceURLs" not in rule
    # Secrets: a Ray token read by the name the backend knows; never listed nor followed.
    assert granted(role).get(("", "secrets"), {"get"}) == {"get"}


@pytest.mark.parametrize(("group", "resource", "verbs"), [
    ("ray.io", "rayclusters", {"create", "get", "list", "watch", "delete"}),
    ("sparkoperator.k8s.io", "sparkconnects", {"create", "get", "list", "watch", "delete"}),
    ("", "pods", {"get", "list", "watch"}),
    ("", "services", {"create", "get", "list", "watch", "delete"}),
    ("apps", "deployments", {"create", "get", "list", "watch", "delete"}),
    ("", "events", {"get", "list"}),
    ("networking.k8s.io", "networkpolicies", {"create", "get", "list", "watch", "delete"}),
    ("", "secrets", {"get"}),
    # Airflow outside the cluster: probes GET, Ray job submission POST through the proxy.
    ("", "services/proxy", {"get", "create"}),
])
def test_rbac_grants_exactly_what_the_backend_needs(group: str, resource: str,
                                                    verbs: set[str]) -> None:
    assert granted(AIRFLOW_ROLE)[(group, resource)] == verbs


def test_nothing_is_granted_on_kinds_the_backend_never_makes() -> None:
    assert {res for _, res in granted(AIRFLOW_ROLE)} == {
        "rayclusters", "sparkconnects", "pods", "services", "deployments", "events",
        "networkpolicies", "secrets", "services/proxy"}


def test_the_reaper_can_delete_but_never_create() -> None:
    reaper_rights = granted(REAPER_ROLE)
    assert not any("create" in verbs for verbs in reaper_rights.values())
    assert reaper_rights[("ray.io", "rayclusters")] == {"get", "list", "watch", "delete"}
    assert reaper_rights[("sparkoperator.k8s.io", "sparkconnects")] == {
        "get", "list", "watch", "delete"}
    assert reaper_rights[("apps", "deployments")] == {"get", "list", "watch", "delete"}
    assert ("", "services/proxy") not in reaper_rights  # it runs in the cluster: Service DNS


@pytest.mark.parametrize("role", [AIRFLOW_ROLE, REAPER_ROLE])
def test_pods_are_only_read(role: str) -> None:
    for rule in role_rules(role):
        if "pods" in rule["resources"] or "events" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_every_role_rule_is_explained_by_a_comment() -> None:
    text = (K8S / "rbac.yaml").read_text()
    rules = text.split("rules:", 1)[1].split("---", 1)[0]
    items = rules.count("  - apiGroups:")
    commented = len(re.findall(r"\n  #[^\n]*\n(?:  #[^\n]*\n)*  - apiGroups:", rules))
    assert items == commented == len(role_rules())


def test_each_rolebinding_binds_its_role_to_its_own_service_account() -> None:
    accounts = {sa["metadata"]["name"] for sa in by_kind("ServiceAccount")}
    assert accounts == {AIRFLOW_ROLE, REAPER_ROLE}
    bindings = {b["metadata"]["name"]: b for b in by_kind("RoleBinding")}
    assert set(bindings) == accounts
    for name, binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                        "namespace": "ephemeral"}]


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
    assert pod["serviceAccountName"] == REAPER_ROLE  # its own: it may never create
    assert pod["restartPolicy"] == "Never"


def test_the_reapers_pods_are_clients_of_its_own_deployments_clusters() -> None:
    """The NetworkPolicies admit, by default, the client pods of the cluster's instance only."""
    from ephemeral.backends.kubernetes.config import client_labels

    _, job, pod = reaper()
    instance = {e["name"]: e for e in pod["containers"][0]["env"]}["EPHEMERAL_INSTANCE"]["value"]
    labels = job["template"]["metadata"]["labels"]
    assert client_labels(instance).items() <= labels.items()


def test_the_reapers_deletion_budget_ends_before_its_jobs_deadline() -> None:
    """A pass stops waiting for its deletions at --delete-budget; its notices and last
    listing follow, all before the CronJob (and the reaping DAG) kill it."""
    import ast

    from ephemeral.reaper import DEFAULT_DELETE_BUDGET_SECONDS

    _, job, pod = reaper()
    command = pod["containers"][0]["command"]
    budget = float(command[command.index("--delete-budget") + 1])
    assert budget == DEFAULT_DELETE_BUDGET_SECONDS
    assert budget + 120 <= job["activeDeadlineSeconds"]
    dag = (Path(__file__).parents[2] / "dags" / "reap_orphans.py").read_text()
    timeout = re.search(r'"execution_timeout": timedelta\(minutes=(\d+)\)', dag)
    param = re.search(r'"delete_budget_seconds": Param\(\s*(\d+),.*?maximum=(\d+)', dag, re.S)
    assert timeout
    assert param
    default, most = (ast.literal_eval(v) for v in param.groups())
    assert default == DEFAULT_DELETE_BUDGET_SECONDS
    assert default <= most <= int(timeout.group(1)) * 60 - 120


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
    # Addresses refused when they carry credentials (artifacts.job_root, artifact_url): a map.
    public = {"EPHEMERAL_ARTIFACT_ROOT", "EPHEMERAL_ARTIFACT_URL"}
    for var in container["env"]:
        if secret_like.search(var["name"]) and var["name"] not in public:
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


def test_the_reaper_may_be_given_the_deployments_notifier_by_reference() -> None:
    """Leaks it deleted or could not delete are told through $EPHEMERAL_NOTIFIER: from an
    optional ConfigMap, so the CronJob runs without one."""
    from ephemeral.notify import KWARGS_VAR, NOTIFIER_VAR

    _, _, pod = reaper()
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    for var, key in ((NOTIFIER_VAR, "notifier"), (KWARGS_VAR, "notifier_kwargs")):
        assert "value" not in env[var], var
        assert env[var]["valueFrom"] == {"configMapKeyRef": {
            "name": "ephemeral-notifier", "key": key, "optional": True}}, var


def test_the_reaper_records_and_links_in_the_deployments_artifact_store() -> None:
    """The reaper's part of a run report, the readiness records it reads and its notifications'
    report links are in the artifact store Airflow uses: from a ConfigMap, by reference."""
    from ephemeral.report.store import URL_VAR

    _, _, pod = reaper()
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    for var, key in (("EPHEMERAL_ARTIFACT_ROOT", "root"), (URL_VAR, "url")):
        assert env[var]["valueFrom"] == {"configMapKeyRef": {
            "name": "ephemeral-artifacts", "key": key, "optional": True}}, var


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
    # Only what the test gives: neither this shell's variables nor a developer's compose/.env.
    clean = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    with tempfile.TemporaryDirectory() as empty:
        env_file = Path(empty) / ".env"
        env_file.touch()
        return subprocess.run([binary, "--env-file", str(env_file),
                               "-f", str(COMPOSE / "docker-compose.yaml"), *args],
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
    assert env["EPHEMERAL_SPECS_DIR"] == "/opt/airflow/cluster_specs"
    assert "../cluster_specs:/opt/airflow/cluster_specs:ro" in volumes
    assert "../dags:/opt/airflow/dags:ro" in volumes


def resolved_stack(**env: str) -> dict[str, Any]:
    result = docker_compose("config", env=COMPOSE_ENV | env)
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_every_airflow_container_runs_as_airflow_uid_with_group_0() -> None:
    """The Airflow image's convention: any UID, group 0; Postgres keeps its own user."""
    for name, service in compose_doc()["services"].items():
        if name.startswith("airflow-"):
            assert service["user"] == "${AIRFLOW_UID:-50000}:0", name
        else:
            assert "user" not in service, name
    services = resolved_stack(AIRFLOW_UID="1234")["services"]
    assert {services[n]["user"] for n in services if n.startswith("airflow-")} == {"1234:0"}
    assert resolved_stack()["services"]["airflow-scheduler"]["user"] == "50000:0"


def test_env_example_says_how_to_set_airflow_uid() -> None:
    text = (COMPOSE / ".env.example").read_text()
    assert '#   echo "AIRFLOW_UID=$(id -u)" >> compose/.env\n' in text
    # Not set there: the line the command appends is then the only one.
    assert not re.search(r"^AIRFLOW_UID=", text, re.M)
    assert "# AIRFLOW_UID=50000\n" in text


def test_the_kubeconfig_folder_is_mounted_so_a_refreshed_token_is_seen() -> None:
    """up.sh replaces the kubeconfig (new inode): a single-file bind mount would keep the old one."""
    for name, service in compose_doc()["services"].items():
        if not name.startswith("airflow-"):
            continue
        kube = [v for v in service["volumes"] if ":/opt/airflow/kube" in v]
        assert kube == ["${EPHEMERAL_KUBECONFIG_DIR:-./.kube}:/opt/airflow/kube:ro"], name
        assert service["environment"]["EPHEMERAL_KUBECONFIG"] == \
            "/opt/airflow/kube/${EPHEMERAL_KUBECONFIG_NAME:-config.internal}"
    scheduler = resolved_stack()["services"]["airflow-scheduler"]
    assert scheduler["environment"]["EPHEMERAL_KUBECONFIG"] == "/opt/airflow/kube/config.internal"
    mounts = [v for v in scheduler["volumes"]
              if (v["target"] if isinstance(v, dict) else v.split(":")[1]) == "/opt/airflow/kube"]
    assert len(mounts) == 1
    source = mounts[0]["source"] if isinstance(mounts[0], dict) else mounts[0].split(":")[0]
    assert Path(source) == COMPOSE / ".kube"  # the folder up.sh writes config.internal into


def init_check_script() -> str:
    """The readability check at the top of airflow-init's command, as the container runs it."""
    script = str(compose_doc()["services"]["airflow-init"]["command"][2])
    check = script.split("airflow db migrate", 1)[0]
    assert check.strip().startswith('if ! test -r "$${EPHEMERAL_KUBECONFIG}"')
    return check.replace("$$", "$")


@pytest.mark.parametrize("readable", [True, False])
def test_airflow_init_stops_the_stack_when_it_cannot_read_the_kubeconfig(
        tmp_path: Path, readable: bool) -> None:
    kubeconfig = tmp_path / "config.internal"
    if readable:
        kubeconfig.write_text("apiVersion: v1\n")
    result = subprocess.run(["bash", "-ceu", init_check_script()], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "EPHEMERAL_KUBECONFIG": str(kubeconfig)},
                            check=False)
    if readable:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1
        assert f"cannot read {kubeconfig}" in result.stderr
        assert 'echo "AIRFLOW_UID=$(id -u)" >> compose/.env' in result.stderr


def test_the_header_says_how_airflow_outside_the_cluster_reaches_the_clusters() -> None:
    text = (COMPOSE / "docker-compose.yaml").read_text()
    header = text.split("x-airflow-common:", 1)[0]
    flat = " ".join(line.lstrip("# ") for line in header.splitlines())
    assert "runs OUTSIDE the cluster" in flat
    assert "service proxy (EPHEMERAL_K8S_ENDPOINT_MODE=proxy" in flat
    assert "Spark Connect (gRPC) and spark-submit to the master cannot go through" in flat
    env = compose_doc()["x-airflow-common"]["environment"]
    assert env["EPHEMERAL_K8S_ENDPOINT_MODE"] == "${EPHEMERAL_K8S_ENDPOINT_MODE:-proxy}"


def test_the_stack_needs_the_range_the_clusters_admit_and_takes_an_empty_one() -> None:
    env = dict(COMPOSE_ENV)
    del env["EPHEMERAL_K8S_CLIENT_CIDRS"]
    refused = docker_compose("config", "-q", env=env)
    assert refused.returncode != 0
    assert "set EPHEMERAL_K8S_CLIENT_CIDRS in compose/.env" in refused.stderr
    assert "compose/kind/up.sh printed" in refused.stderr
    empty = resolved_stack(EPHEMERAL_K8S_CLIENT_CIDRS="")
    assert empty["services"]["airflow-scheduler"]["environment"]["EPHEMERAL_K8S_CLIENT_CIDRS"] \
        in ("", None)
    example = (COMPOSE / ".env.example").read_text()
    assert not re.search(r"^EPHEMERAL_K8S_CLIENT_CIDRS=", example, re.M)  # so `cp` is not enough
    assert 'echo "EPHEMERAL_K8S_CLIENT_CIDRS=$(cat compose/.kube/client-cidrs)" >> compose/.env' \
        in example


def test_the_backend_accepts_the_endpoint_mode_the_stack_sets() -> None:
    """Integration with the kubernetes backend: the mode the stack sets must be one it knows."""
    from ephemeral.backends.kubernetes import KubeConfig

    env = resolved_stack()["services"]["airflow-scheduler"]["environment"]
    config = KubeConfig.from_env({k: str(v) for k, v in env.items()})
    assert config.endpoint_mode == "proxy"
    assert config.kubeconfig_path == "/opt/airflow/kube/config.internal"
    assert config.client_cidrs == ["172.18.0.0/16"]


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
    assert set(COMPOSE_SECRETS) <= set(example)
    assert all(example[k] == "" for k in COMPOSE_SECRETS)
    assert "/.env" in (COMPOSE / ".gitignore").read_text().splitlines()


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (COMPOSE / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines()
            if i.strip()]


def dockerfile_args() -> dict[str, str]:
    """ARG defaults, each expanded with the ARGs before it (as docker does)."""
    args: dict[str, str] = {}
    for instruction in dockerfile_instructions():
        if instruction.startswith("ARG ") and "=" in instruction:
            name, _, value = instruction[4:].partition("=")
            args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
    return args


def test_the_image_is_airflow_3_3_2_with_only_the_k8s_extra() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert "ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11\nFROM ${AIRFLOW_IMAGE}" in text
    (install,) = [i for i in dockerfile_instructions() if "pip install" in i]
    # Airflow itself, pinned, and the project with its k8s extra: no `local`/`train` extra, no
    # Spark provider, no engine. The checkout is installed by its distribution name, which pip
    # checks against the built package (the PyPI name "ephemeral" is another project).
    assert set(re.findall(r'"([^"]+)"', install)) == {
        "${AIRFLOW_CONSTRAINTS_URL}", "apache-airflow==${AIRFLOW_VERSION}",
        "airflow-provider-ephemeral[k8s] @ file:///opt/ephemeral/src"}
    assert install.startswith('RUN pip install --no-cache-dir --constraint "')


def test_the_image_installs_with_airflows_constraints_for_3_3_2_and_python_3_11() -> None:
    """Airflow's reproducible install (installing-from-pypi.rst): --constraint with the file of
    the Airflow version and the image's Python. The file is not downloaded here."""
    args = dockerfile_args()
    assert args["AIRFLOW_VERSION"] == "3.3.2"
    assert args["AIRFLOW_IMAGE"].endswith(f"{args['AIRFLOW_VERSION']}-python{args['PYTHON_VERSION']}")
    assert args["AIRFLOW_CONSTRAINTS_URL"] == (
        "https://raw.githubusercontent.com/apache/airflow/constraints-3.3.2/constraints-3.11.txt")
    (install,) = [i for i in dockerfile_instructions() if "pip install" in i]
    assert '--constraint "${AIRFLOW_CONSTRAINTS_URL}"' in install


def test_the_image_runs_as_any_uid_with_group_0() -> None:
    """Every folder ephemeral or Airflow writes is group 0 and group-writable, as the Airflow
    image expects of a container started as ${AIRFLOW_UID}:0."""
    instructions = dockerfile_instructions()
    for copy in (i for i in instructions if i.startswith("COPY ")):
        assert "--chown=airflow:0" in copy, copy
    (made,) = [i for i in instructions if i.startswith("RUN mkdir")]
    writable = {"/opt/airflow/auth", "/opt/airflow/kube", "/opt/airflow/ephemeral-home"}
    chmod = made.split("chmod -R g+rwX", 1)[1].split()
    assert set(chmod) == writable
    assert writable <= set(made.split("&&")[0].split())
    env = compose_doc()["x-airflow-common"]["environment"]
    assert env["EPHEMERAL_HOME"] in writable
    named = {v.split(":")[1] for v in compose_doc()["x-airflow-common"]["volumes"]
             if not v.startswith((".", "$"))}
    assert named - writable == {"/opt/airflow/logs"}  # the Airflow image's own, group-writable


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
    words = ("docker build -f compose/Dockerfile", "docker compose -f compose/docker-compose.yaml",
             "compose/kind/up.sh", "pip install -e '.[airflow,k8s,dev]'",
             "airflow dags test kubernetes_smoke", "pytest -m k8s", "get rayclusters")
    order = [i for word in words for i, r in enumerate(runs) if word in r]
    assert order == sorted(order)
    assert len(order) == len(words)
    assert '"profile": "ci-cpu"' in step("airflow dags test kubernetes_smoke")["run"]


def test_the_workflow_builds_the_compose_image_and_checks_the_compose_file() -> None:
    build = step("docker build -f compose/Dockerfile")
    lines = [line.strip() for line in build["run"].splitlines()]
    assert "docker build -f compose/Dockerfile -t ephemeral-airflow:ci ." in lines
    # The image works as compose runs it: another UID, group 0, writing ephemeral's folders.
    assert "docker run --rm --user 54321:0 ephemeral-airflow:ci bash -c \\" in lines
    assert "touch /opt/airflow/ephemeral-home/w /opt/airflow/auth/w" in build["run"]
    # The disk goes back before the multi-GB Ray image arrives.
    assert build["run"].index("docker run") < build["run"].index("docker image rm")
    assert "docker builder prune --all --force" in build["run"]
    check = step("docker compose -f compose/docker-compose.yaml")
    assert check["run"].strip() == "docker compose -f compose/docker-compose.yaml config --quiet"
    assert set(check["env"]) == set(COMPOSE_ENV)  # every secret given, so only real faults fail


def test_the_k8s_tests_cannot_pass_vacuously_in_the_workflow() -> None:
    """EPHEMERAL_REQUIRE_K8S=1 turns a skipped k8s test into a failure; pytest's exit code 5 (no
    test selected) fails the step like any other non-zero code: nothing masks it."""
    tests = step("pytest -m k8s")
    assert tests["env"] == {"EPHEMERAL_REQUIRE_K8S": "1"}
    assert tests["run"].strip() == "pytest -m k8s -p no:cacheprovider -q"
    for s in smoke_steps():
        if s.get("if") in ("failure()", "always()"):
            continue  # diagnostics and teardown may not fail the run on their own
        assert "|| true" not in s.get("run", ""), s["name"]
        assert "continue-on-error" not in s, s["name"]


def test_the_workflow_installs_the_pinned_spark_operator_before_the_k8s_tests() -> None:
    """Spark's operator mode needs it: the chart of the vendored SparkConnect CRD (2.5.2),
    watching the project namespace."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["env"]["SPARK_OPERATOR_CHART_VERSION"] == "2.5.2"
    readme = (ROOT / "tests" / "kubernetes" / "schemas" / "README.md").read_text()
    assert "spark-operator v2.5.2" in readme
    install = step("helm upgrade --install spark-operator")["run"]
    assert '--version "$SPARK_OPERATOR_CHART_VERSION"' in install
    assert "spark.jobNamespaces={$EPHEMERAL_K8S_NAMESPACE}" in install
    assert "--wait" in install
    runs = [s.get("run", "") for s in smoke_steps()]
    at = [i for i, r in enumerate(runs) if "spark-operator/spark-operator" in r]
    assert at
    assert at[0] < next(i for i, r in enumerate(runs) if "pytest -m k8s" in r)


def test_the_workflow_fails_when_a_raycluster_is_left() -> None:
    check = step("get rayclusters")["run"]
    assert "get rayclusters,sparkconnects" in check
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


# -- CI that cannot pass vacuously ---------------------------------------------------------------

REQUIRE_PROBE = """
import pytest

@pytest.mark.k8s
def test_k8s_skips():
    pytest.skip("no cluster here")

@pytest.mark.k8s
def test_k8s_passes():
    pass

def test_other_skips():
    pytest.skip("not a k8s test")
"""


def run_pytest(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess from the repository root, with the project's configuration and the
    hooks of tests/conftest.py (loaded as a plugin for a test file outside tests/)."""
    clean = {k: v for k, v in os.environ.items() if k != "EPHEMERAL_REQUIRE_K8S"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), *args],
                          capture_output=True, text=True, cwd=ROOT, env=clean | env, check=False,
                          timeout=300)


@pytest.mark.parametrize("required", [False, True])
def test_a_k8s_test_that_skips_fails_when_a_cluster_is_required(tmp_path: Path,
                                                                required: bool) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(REQUIRE_PROBE)
    env = {"EPHEMERAL_REQUIRE_K8S": "1"} if required else {}
    result = run_pytest("-p", "tests.conftest", "-rA", str(probe), env=env)
    if required:
        assert result.returncode == 1, result.stdout
        assert "1 failed, 1 passed, 1 skipped" in result.stdout
        assert "FAILED ::test_k8s_skips - EPHEMERAL_REQUIRE_K8S=1" in result.stdout
        assert "EPHEMERAL_REQUIRE_K8S=1 and this k8s test skipped: " in result.stdout
        assert "no cluster here" in result.stdout
    else:
        assert result.returncode == 0, result.stdout
        assert "1 passed, 2 skipped" in result.stdout


def test_the_real_cluster_test_fails_without_a_cluster_when_one_is_required(
        tmp_path: Path) -> None:
    """The shipped k8s test, with a kubeconfig that does not exist: skip, or fail when required."""
    env = {"EPHEMERAL_KUBECONFIG": str(tmp_path / "missing-kubeconfig"),
           "EPHEMERAL_K8S_NAMESPACE": "ephemeral"}
    target = "tests/kubernetes/test_real_cluster.py"
    skipped = run_pytest(target, env=env)
    assert skipped.returncode == 0, skipped.stdout
    assert "2 skipped" in skipped.stdout  # Ray on KubeRay, Spark on the spark-operator
    failed = run_pytest(target, env=env | {"EPHEMERAL_REQUIRE_K8S": "1"})
    assert failed.returncode == 1, failed.stdout
    assert "EPHEMERAL_REQUIRE_K8S=1 and this k8s test skipped: " in failed.stdout


def test_a_run_that_selects_no_test_fails(tmp_path: Path) -> None:
    """pytest exits 5 when the selection is empty (e.g. `-m k8s` after a marker was dropped)."""
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_not_k8s():\n    pass\n")
    result = run_pytest("-m", "k8s", str(probe), env={"EPHEMERAL_REQUIRE_K8S": "1"})
    assert result.returncode == 5, result.stdout
    assert "1 deselected" in result.stdout


def test_the_ci_entry_point_passes_every_pytest_failure_on() -> None:
    """.ci/run runs `make test`, whose recipe runs pytest: no `|| true`, no ignored error (`-`),
    so exit code 5 and every other failure fails CI."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nset -euo pipefail\n" in ci
    assert ci.strip().splitlines()[-1] == "make test"
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert recipe == ["\t$(VENV)/bin/pytest -p no:cacheprovider"]
    assert "|| true" not in ci + makefile


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
# Stands in for docker/kind/kubectl/helm/resolvectl: logs its arguments, prints canned answers,
# keeps what a real tool would change (cluster, taints, images, network) in $STUB_STATE.
name="$(basename "$0")"
echo "$name $*" >>"$STUB_LOG"
nodes() {  # the nodes' names with their taint keys ($1=key) or effects ($1=effect)
  for spec in ${STUB_NODES:-ephemeral-control-plane=node-role.kubernetes.io/control-plane:NoSchedule ephemeral-worker=}; do
    node="${spec%%=*}" taint="${spec#*=}"
    [ -f "$STUB_STATE/untainted-$node" ] && taint=""
    if [ "$1" = key ]; then echo "$node ${taint%%:*}"; else echo "$node ${taint#*:}"; fi
  done
}
case "$name $*" in
  "kind version") echo "kind ${STUB_KIND_VERSION:-v0.31.0} go1.25.5 linux/amd64" ;;
  "kind get clusters")
    [ -f "$STUB_STATE/cluster" ] && echo ephemeral
    [ -f "$STUB_STATE/other-cluster" ] && echo other ;;
  "kind create cluster"*) touch "$STUB_STATE/cluster" ;;
  "kind delete cluster"*) rm -f "$STUB_STATE/cluster" ;;
  "kind get kubeconfig"*) printf 'clusters:\n- cluster:\n    server: https://ephemeral-control-plane:6443\n' ;;
  "kind load docker-image"*) [ -z "${STUB_KIND_LOAD_FAILS:-}" ] || exit 1 ;;
  "docker info -f {{json .DriverStatus}}")
    if [ "${STUB_DOCKER_STORE:-}" = containerd ]; then
      echo '[["driver-type","io.containerd.snapshotter.v1"]]'
    else
      echo '[["Backing Filesystem","extfs"],["Supports d_type","true"]]'
    fi ;;
  "docker image inspect"*) [ -f "$STUB_STATE/image" ] || exit 1 ;;
  "docker pull"*) touch "$STUB_STATE/image" ;;
  "docker image rm"*) rm -f "$STUB_STATE/image" ;;
  "docker network inspect kind") [ -f "$STUB_STATE/network" ] || exit 1 ;;
  "docker network inspect kind -f "*) printf '172.18.0.0/16\nfc00:f853:ccd:e793::/64\n' ;;
  "docker network rm kind") [ -z "${STUB_NETWORK_BUSY:-}" ] || exit 1; rm -f "$STUB_STATE/network" ;;
  "helm version"*) echo v3.21.4 ;;
  *"get nodes -o jsonpath="*"{.spec.taints[*].key}"*) nodes key ;;
  *"get nodes -o jsonpath="*"{.spec.taints[*].effect}"*) nodes effect ;;
  *" taint nodes "*) touch "$STUB_STATE/untainted-$5" ;;
  *"create token"*) echo stub-token ;;
  *"certificate-authority-data"*) printf 'Q0EK' ;;
  *"jsonpath={.clusters[0].cluster.server}"*) echo https://127.0.0.1:40000 ;;
  *"version --client -o yaml") echo "  gitVersion: v1.35.0" ;;
  *"auth can-i create namespaces") exit 1 ;;
  *"-o yaml") echo "kind: Namespace" ;;
  "kubectl config --kubeconfig "*) echo "$*" >>"$3" ;;
  *" apply -f -"*) { cat; echo "---"; } >>"$STUB_STATE/applied.yaml" ;;
  *" -f -"*) cat >/dev/null ;;
esac
exit 0
"""
TOOLS = ("docker", "kind", "kubectl", "helm", "resolvectl")
RAY_IMAGE = "rayproject/ray:2.60.0-py311-cpu"


def stubbed_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "state").mkdir()
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
            "STUB_LOG": str(tmp_path / "calls.log"), "STUB_STATE": str(tmp_path / "state")}


def calls(tmp_path: Path) -> str:
    log = tmp_path / "calls.log"
    return log.read_text() if log.exists() else ""


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
    log = calls(tmp_path)
    assert "kind create cluster --name ephemeral --config" in log
    assert "kind-config.yaml --wait 300s" in log
    helm = next(line for line in log.splitlines() if line.startswith("helm upgrade --install"))
    for part in ("kuberay-operator kuberay/kuberay-operator", "--version 1.7.0",
                 "--namespace kuberay-system", "--create-namespace", "kuberay-values.yaml",
                 "--set watchNamespace[0]=ephemeral", "--wait"):
        assert part in helm
    # The namespace (restricted Pod Security, quota) exists before the chart makes its Role there.
    assert log.index("apply -f -") < log.index("helm upgrade --install")
    assert "create token ephemeral-airflow --duration=24h" in log
    assert "crictl" not in log
    assert "kind load" not in log
    kubeconfigs = compose_copy / ".kube"
    assert "https://127.0.0.1:40000" in (kubeconfigs / "config").read_text()
    assert "https://ephemeral-control-plane:6443" in \
        (kubeconfigs / "config.internal").read_text()
    config = yaml.safe_load((kubeconfigs / "config").read_text())
    assert config["users"] == [{"name": "ephemeral-airflow", "user": {"token": "stub-token"}}]
    assert config["contexts"][0]["context"]["namespace"] == "ephemeral"
    assert "stub-token" not in log  # on no command line: every user's `ps` shows those

    (tmp_path / "calls.log").unlink()
    second = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kind create cluster" not in calls(tmp_path)
    assert "exists; kept" in second.stdout


def test_up_sh_writes_the_kubeconfigs_for_this_host_and_for_the_compose_stack(
        tmp_path: Path, compose_copy: Path) -> None:
    """config: the host user's alone. config.internal: group-readable, for containers running as
    ${AIRFLOW_UID}:0; replaced by one rename, so the mounted folder never shows half a file."""
    env = stubbed_env(tmp_path)
    kube = compose_copy / ".kube"
    inodes = []
    for _ in range(2):
        result = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
        assert result.returncode == 0, result.stdout + result.stderr
        assert stat.S_IMODE((kube / "config").stat().st_mode) == 0o600
        assert stat.S_IMODE((kube / "config.internal").stat().st_mode) == 0o640
        assert stat.S_IMODE(kube.stat().st_mode) == 0o750
        assert sorted(p.name for p in kube.iterdir()) == [
            "client-cidrs", "config", "config.internal"]
        inodes.append((kube / "config.internal").stat().st_ino)
        if os.getgid() == 0:  # as root (CI, this machine) the files are group 0 already
            assert (kube / "config.internal").stat().st_gid == 0
            assert "note:" not in result.stdout
    assert inodes[0] != inodes[1]  # a new file each run: only a folder mount sees it


def test_up_sh_installs_the_reaper_with_its_own_rights_in_another_namespace(
        tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path) | {"EPHEMERAL_K8S_NAMESPACE": "ml",
                                   "EPHEMERAL_AIRFLOW_URL": "http://airflow:8080"}
    result = run_script(KIND / "up.sh", env, "--reaper", "ephemeral-airflow:ci",
                        compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kind load docker-image ephemeral-airflow:ci --name ephemeral" in calls(tmp_path)
    reaper_docs = {d["kind"]: d for d in applied(tmp_path)
                   if d["metadata"]["name"] == REAPER_ROLE}
    assert set(reaper_docs) == {"ServiceAccount", "Role", "RoleBinding", "CronJob"}
    assert all(d["metadata"]["namespace"] == "ml" for d in reaper_docs.values())
    pod = reaper_docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "ephemeral-airflow:ci"
    assert reaper_docs["RoleBinding"]["subjects"][0]["namespace"] == "ml"


def test_up_sh_gives_the_kind_network_range_the_clusters_must_admit(
        tmp_path: Path, compose_copy: Path) -> None:
    """Through the service proxy the API server reaches the pods from its node on the `kind`
    network (IPv4); the compose stack and CI's Airflow set EPHEMERAL_K8S_CLIENT_CIDRS to it."""
    env = stubbed_env(tmp_path)
    result = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (compose_copy / ".kube" / "client-cidrs").read_text() == "172.18.0.0/16\n"
    assert 'echo "EPHEMERAL_K8S_CLIENT_CIDRS=172.18.0.0/16" >> compose/.env' in result.stdout
    export = step("compose/kind/up.sh")["run"]
    assert 'echo "EPHEMERAL_K8S_CLIENT_CIDRS=$(cat compose/.kube/client-cidrs)" >> "$GITHUB_ENV"' \
        in export


def test_up_sh_says_how_the_compose_stack_can_read_the_kubeconfig(
        tmp_path: Path, compose_copy: Path) -> None:
    """A user outside group 0 cannot give the file to group 0: up.sh says to set AIRFLOW_UID."""
    env = stubbed_env(tmp_path)
    bin_dir = tmp_path / "bin"
    (bin_dir / "id").write_text('#!/bin/sh\ncase "$1" in -u|-g) echo 1000 ;; esac\n')
    (bin_dir / "chgrp").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("id", "chgrp"):
        (bin_dir / tool).chmod(0o755)
    result = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note: " in result.stdout
    assert 'config.internal belongs to your group, not group 0' in result.stdout
    assert 'echo "AIRFLOW_UID=$(id -u)" >> compose/.env' in result.stdout


def test_up_sh_removes_the_control_plane_taint_once(tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path)
    result = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    taints = [line for line in calls(tmp_path).splitlines() if " taint " in line]
    assert taints == ["kubectl --context kind-ephemeral taint nodes ephemeral-control-plane "
                      "node-role.kubernetes.io/control-plane:NoSchedule-"]
    log = calls(tmp_path)
    assert log.index("wait --for=condition=Ready nodes") < log.index(" taint ")
    (tmp_path / "calls.log").unlink()
    again = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert again.returncode == 0, again.stdout + again.stderr
    assert " taint " not in calls(tmp_path)  # already gone: nothing to remove, no error


def test_the_comments_no_longer_promise_head_and_worker_on_different_nodes() -> None:
    for path in (KIND / "kind-config.yaml", KIND / "up.sh", ROOT / "dags" / "kubernetes_smoke.py"):
        text = " ".join(path.read_text().split())
        assert "can land on different nodes" not in text, path
    config = " ".join((KIND / "kind-config.yaml").read_text().split())
    assert "nothing pins them to different nodes" in config


def test_up_sh_preloads_the_ray_image_onto_the_nodes_that_take_pods_and_frees_the_host(
        tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path) | {"EPHEMERAL_K8S_NAMESPACE": "ml", "STUB_NODES": (
        "ephemeral-control-plane=node-role.kubernetes.io/control-plane:NoSchedule "
        "ephemeral-worker= ephemeral-gpu=nvidia.com/gpu:NoSchedule")}
    result = run_script(KIND / "up.sh", env, "--preload-ray-image", compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls(tmp_path)
    # The control plane is untainted first, so it takes Ray pods; the tainted GPU node does not.
    assert (f"kind load docker-image {RAY_IMAGE} --name ephemeral "
            "--nodes ephemeral-control-plane,ephemeral-worker\n") in log
    assert log.index(" taint ") < log.index("kind load")
    assert f"docker pull {RAY_IMAGE}" in log
    # Pulled by up.sh, so removed from the host once the nodes have it.
    assert log.index("kind load") < log.index(f"docker image rm {RAY_IMAGE}")
    assert not (tmp_path / "state" / "image").exists()
    assert "crictl" not in log
    assert "--set watchNamespace[0]=ml" in log


def applied(tmp_path: Path) -> list[dict[str, Any]]:
    text = (tmp_path / "state" / "applied.yaml").read_text()
    # Manifests of the checkout; the stub's canned `-o yaml` answers (no metadata) are left out.
    return [d for d in yaml.safe_load_all(text) if d and "metadata" in d]


def test_up_sh_applies_the_namespace_and_rbac_manifests_for_another_namespace(
        tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path) | {"EPHEMERAL_K8S_NAMESPACE": "ml"}
    result = run_script(KIND / "up.sh", env, compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    objects = applied(tmp_path)
    assert [d["kind"] for d in objects] == [
        "Namespace", "ResourceQuota", "ServiceAccount", "Role", "RoleBinding"]
    namespace = objects[0]
    assert namespace["metadata"]["name"] == "ml"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in objects[1:]:
        assert doc["metadata"]["namespace"] == "ml", doc["kind"]
    (binding,) = [d for d in objects if d["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["namespace"] == "ml"
    assert "ephemeral" not in {d["metadata"]["name"] for d in objects}


def test_up_sh_keeps_a_ray_image_the_host_already_had(tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path)
    (tmp_path / "state" / "image").touch()
    result = run_script(KIND / "up.sh", env, "--preload-ray-image", compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls(tmp_path)
    assert "kind load docker-image" in log
    assert "docker pull" not in log
    assert "docker image rm" not in log


def test_up_sh_pulls_inside_the_nodes_when_kind_load_fails(tmp_path: Path,
                                                           compose_copy: Path) -> None:
    env = stubbed_env(tmp_path) | {"STUB_KIND_LOAD_FAILS": "1"}
    result = run_script(KIND / "up.sh", env, "--preload-ray-image", compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls(tmp_path)
    pulls = [line for line in log.splitlines() if "crictl pull" in line]
    assert pulls == [f"docker exec {node} crictl pull {RAY_IMAGE}"
                     for node in ("ephemeral-control-plane", "ephemeral-worker")]
    # The host's copy goes before the nodes pull theirs: never both on the runner's disk.
    assert log.index(f"docker image rm {RAY_IMAGE}") < log.index("crictl pull")


def test_up_sh_skips_the_host_pull_with_the_containerd_image_store(
        tmp_path: Path, compose_copy: Path) -> None:
    """`kind load` fails there on multi-platform images (kind#3795): straight to the nodes."""
    env = stubbed_env(tmp_path) | {"STUB_DOCKER_STORE": "containerd"}
    result = run_script(KIND / "up.sh", env, "--preload-ray-image", compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls(tmp_path)
    assert "docker pull" not in log
    assert "docker image inspect" not in log
    assert "kind load" not in log
    assert log.count("crictl pull") == 2


def test_up_sh_refuses_to_preload_when_no_node_takes_pods(tmp_path: Path,
                                                          compose_copy: Path) -> None:
    env = stubbed_env(tmp_path) | {"STUB_NODES": "ephemeral-worker=dedicated:NoSchedule"}
    result = run_script(KIND / "up.sh", env, "--preload-ray-image", compose_dir=compose_copy)
    assert result.returncode == 1
    assert "no node of ephemeral takes pods" in result.stderr


def test_up_sh_help_prints_the_usage_and_nothing_else(tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path)
    result = run_script(KIND / "up.sh", env, "--help", compose_dir=compose_copy)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == ("Bring up the kind cluster for ephemeral's Kubernetes smoke test, "
                        "or bring it up to date:")
    assert "Usage: compose/kind/up.sh [--preload-ray-image] [--route-pods] [--reaper IMAGE]" \
        in lines
    assert lines[-1].startswith("  EPHEMERAL_RAY_IMAGE, EPHEMERAL_SKIP_VERSION_CHECK=1")
    for code in ("set -euo", "HERE=", "#!", "$(", "esac"):
        assert not any(line.startswith(code) for line in lines), code
    assert not any(line.startswith("#") for line in lines)
    assert calls(tmp_path) == ""  # nothing was run


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
    assert "no docker network kind" in result.stdout
    assert "resolvectl" not in calls(tmp_path)
    assert not (compose_copy / ".kube").exists()
    (tmp_path / "state" / "cluster").touch()
    result = run_script(KIND / "down.sh", env, compose_dir=compose_copy)
    assert "kind delete cluster --name ephemeral" in calls(tmp_path)


def test_down_sh_undoes_the_resolver_settings_and_the_kind_network(
        tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path)
    state = tmp_path / "state"
    (state / "cluster").touch()
    (state / "network").touch()
    (compose_copy / ".kube").mkdir()
    (compose_copy / ".kube" / "resolver").write_text("br-0123456789ab\n")
    result = run_script(KIND / "down.sh", env, compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    log = calls(tmp_path)
    revert = "resolvectl revert br-0123456789ab"
    assert revert in log if os.getuid() == 0 else f"sudo {revert}" in log
    # Reverted while the bridge still exists; the network goes after the cluster.
    assert log.index("resolvectl revert") < log.index("kind delete cluster")
    assert log.index("kind delete cluster") < log.index("docker network rm kind")
    assert not (state / "network").exists()
    assert "docker network kind removed" in result.stdout


def test_down_sh_keeps_the_kind_network_while_something_uses_it(
        tmp_path: Path, compose_copy: Path) -> None:
    env = stubbed_env(tmp_path)
    state = tmp_path / "state"
    (state / "network").touch()
    (state / "other-cluster").touch()
    result = run_script(KIND / "down.sh", env, compose_dir=compose_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "docker network rm" not in calls(tmp_path)
    assert "other kind clusters use it (other)" in result.stdout
    (state / "other-cluster").unlink()
    busy = run_script(KIND / "down.sh", env | {"STUB_NETWORK_BUSY": "1"},
                      compose_dir=compose_copy)
    assert busy.returncode == 0, busy.stdout + busy.stderr
    assert (state / "network").exists()
    assert "containers are still attached" in busy.stderr


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
