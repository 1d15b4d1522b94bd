"""Only the cluster's own credentials open a local cluster, and nothing of the creating
environment but the allow-list reaches its processes, jobs and their logs.

Each test starts a real cluster with secrets planted in the creating environment
(``EPHEMERAL_KUBECONFIG_CONTENT``, an unprefixed password), runs a job that prints its whole
environment, and checks that unauthenticated calls are refused while ephemeral's own are not.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from ephemeral.backends.local import LocalBackend
from ephemeral.backends.local import secrets as cluster_secrets
from ephemeral.backends.local.spark_nodes import connect_accepts_session
from ephemeral.backends.local.state import load
from ephemeral.errors import JobFailed
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.jobs.spark_jobs import connect_session, spark_auth_for, spark_submit
from ephemeral.lifecycle import provision
from ephemeral.specs import resolve
from tests.conftest import manual, small

pytestmark = pytest.mark.local
SCRIPTS = Path(__file__).parent / "scripts"
# What a driver without the cluster's secret hears from the master (spark.authenticate).
SASL_REFUSED = "maybe your client does not have SASL enabled"
KUBECONFIG = "apiVersion: v1\nusers: [{name: u, user: {token: kube-sentinel-8c1f}}]"
PASSWORD = "db-sentinel-5e9a"
ENV_DUMP = "import json, os; print('ENV=' + json.dumps(dict(os.environ)))"


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets in the environment that creates clusters and submits jobs (an Airflow worker)."""
    monkeypatch.setenv("EPHEMERAL_KUBECONFIG_CONTENT", KUBECONFIG)
    monkeypatch.setenv("SHOP_DB_PASSWORD", PASSWORD)
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", PASSWORD + "-fernet")
    monkeypatch.setenv("SOURCE_OF_DECLARED", "declared-by-reference")


@pytest.fixture
def env_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A one-worker Ray spec whose runtimeEnv declares a literal and a reference."""
    root = tmp_path / "specs"
    (root / "ray").mkdir(parents=True)
    text = (Path(__file__).resolve().parents[2] / "cluster_specs/ray/adhoc-cpu.yaml").read_text()
    text = text.replace("name: adhoc-cpu", "name: env-probe").replace("replicas: 2",
                                                                       "replicas: 1")
    text += ("runtimeEnv:\n  env:\n    - name: DECLARED_LITERAL\n      value: literal\n"
             "    - name: DECLARED_REF\n      fromEnv: SOURCE_OF_DECLARED\n")
    (root / "ray" / "env-probe.yaml").write_text(text)
    monkeypatch.setenv("EPHEMERAL_SPECS_DIR", str(root))
    return "ray/env-probe"


def assert_clean(env: dict[str, str]) -> None:
    """None of the planted secrets, nor any Airflow setting, is in a job's environment."""
    text = json.dumps(env)
    assert "EPHEMERAL_KUBECONFIG_CONTENT" not in env
    assert "SHOP_DB_PASSWORD" not in env
    assert not [k for k in env if "AIRFLOW" in k]
    assert "kube-sentinel" not in text
    assert PASSWORD not in text


def private(file: Path) -> bool:
    return stat.S_IMODE(file.stat().st_mode) == 0o600


def files_containing(root: Path, needle: str) -> list[Path]:
    found = []
    for file in root.rglob("*"):
        try:
            if file.is_file() and not file.is_symlink() and file.stat().st_size < 20 * 2**20 \
                    and needle.encode() in file.read_bytes():
                found.append(file)
        except OSError:
            continue
    return found


def cmdlines_containing(backend: LocalBackend, name: str, needle: str) -> list[str]:
    """Command lines of the cluster's processes (what `ps` shows anyone) holding ``needle``."""
    out = []
    for pid in backend.pids(name):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if needle in cmd:
            out.append(cmd)
    return out


def post(url: str, body: dict[str, str], headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_ray_refuses_calls_without_the_token_and_jobs_get_only_the_allow_list(
    local_backend: LocalBackend, planted: None, env_spec: str
) -> None:
    spec = resolve(env_spec, "ci-cpu")
    handle = provision(local_backend, spec, manual(spec, "auth-ray"), timeout=240).handle
    cdir = local_backend.home / "clusters" / handle.name
    token_file = cluster_secrets.path(cdir, cluster_secrets.RAY_TOKEN)
    token = token_file.read_text()
    assert len(token) == 64
    assert private(token_file)
    dashboard = handle.endpoints.dashboard or ""

    # Unauthenticated: the SDK without headers, and raw HTTP, are refused; so is a wrong token.
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(Exception, match=r"(?i)authenticat|401|unauthorized"):
        JobSubmissionClient(dashboard).submit_job(entrypoint="echo pwned")
    assert post(f"{dashboard}/api/jobs/", {"entrypoint": "echo pwned"}) == 401
    assert post(f"{dashboard}/api/jobs/", {"entrypoint": "echo pwned"},
                {"Authorization": "Bearer " + "0" * 64}) == 403
    jobs = ray_jobs_for(handle, local_backend)
    assert jobs.client.list_jobs() == []  # nothing of the refused ones ran

    # Authenticated: the job runs and prints its whole environment.
    jid = jobs.submit(f'python -c "{ENV_DUMP}"')
    result = jobs.follow(jid, timeout=180)
    logs = jobs.logs(jid)
    env = json.loads(next(line for line in logs.splitlines() if line.startswith("ENV="))[4:])
    assert result.status.value == "SUCCEEDED"
    assert_clean(env)
    assert env["DECLARED_LITERAL"] == "literal"  # what the spec declares does reach jobs
    assert env["DECLARED_REF"] == "declared-by-reference"
    assert env["RAY_AUTH_MODE"] == "token"
    assert "RAY_AUTH_TOKEN" not in env  # only the path of the 0600 file
    assert env["EPHEMERAL_ARTIFACT_ROOT"]

    # The token is in no handle, state, log, argv or environment listing of the cluster.
    state = load(cdir)
    assert state is not None
    assert token not in handle.model_dump_json()
    assert token not in (cdir / "state.json").read_text()
    assert token not in logs
    assert [f.name for f in files_containing(cdir, token)] == [cluster_secrets.RAY_TOKEN]
    assert files_containing(Path(state.temp_root or "/nonexistent"), token) == []
    assert cmdlines_containing(local_backend, handle.name, token) == []
    for pid in local_backend.pids(handle.name):
        try:
            assert token not in json.dumps(psutil.Process(pid).environ())
        except psutil.Error:
            continue
    assert repr(local_backend.access(handle)).endswith("headers=***)")


def test_spark_refuses_drivers_and_sessions_without_the_secret(
    local_backend: LocalBackend, planted: None
) -> None:
    spec = small("spark/etl")
    handle = provision(local_backend, spec, manual(spec, "auth-spark"), timeout=300).handle
    cdir = local_backend.home / "clusters" / handle.name
    auth = spark_auth_for(handle, local_backend)
    assert auth.secret
    assert auth.connect_token
    assert "***" in repr(auth)
    assert auth.secret not in repr(auth)
    for name in (cluster_secrets.SPARK_SECRET, cluster_secrets.CONNECT_TOKEN,
                 cluster_secrets.SPARK_PROPERTIES, "connect.properties"):
        assert private(cdir / name)
    ep = handle.endpoints
    assert ep.spark_master
    assert ep.spark_connect

    # spark-submit with the secret: driver and executor environments hold none of the planted
    # secrets.
    out = spark_submit(ep.spark_master, str(SCRIPTS / "spark_env.py"), cluster=handle.name,
                       auth=auth, timeout=300).result
    assert_clean(out["driver"])
    assert_clean(out["executor"])

    # A driver without the secret fails: the master never registers it.
    def apps() -> list[str]:
        master = json.loads(urllib.request.urlopen(f"{ep.spark_ui}/json/", timeout=5).read())
        return sorted(a["id"] for a in master.get("activeapps", []) + master.get("completedapps",
                                                                                  []))

    before = apps()
    assert len(before) == 2  # the Connect server and the authenticated application
    # The master's SASL handshake refuses the driver's first registration; the driver would
    # retry twice, 20 s apart, before giving up: it is stopped once the refusal is logged.
    driver_log: list[str] = []
    session: list[int] = []

    def watch(line: str) -> None:
        driver_log.append(line)
        if SASL_REFUSED in line and session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session[0], signal.SIGKILL)

    with pytest.raises(JobFailed):
        spark_submit(ep.spark_master, str(SCRIPTS / "spark_env.py"), cluster=handle.name,
                     timeout=300, sink=watch, on_start=session.append)
    assert any("Failed to connect to master" in line for line in driver_log)
    assert any(SASL_REFUSED in line for line in driver_log)
    assert apps() == before

    # The master's REST submission server, which ignores spark.authenticate, is not running.
    master_ip = ep.spark_master.removeprefix("spark://").rsplit(":", 1)[0]
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex((master_ip, 6066)) != 0

    # Spark Connect: no session without the token, a working one with it.
    target = ep.spark_connect.removeprefix("sc://")
    assert not connect_accepts_session(target)
    assert not connect_accepts_session(target, token="0" * 64)
    spark = connect_session(ep.spark_connect, token=auth.connect_token)
    try:
        assert spark.range(10).selectExpr("sum(id) AS s").collect()[0]["s"] == 45
    finally:
        spark.stop()

    # Neither credential is in the handle, the state, a log or an argv.
    for secret in (auth.secret, auth.connect_token):
        assert secret not in handle.model_dump_json()
        assert secret not in (cdir / "state.json").read_text()
        assert cmdlines_containing(local_backend, handle.name, secret) == []
        leaked = [f for f in files_containing(cdir, secret) if f.parent == cdir / "spark"
                  or "logs" in f.parts]
        assert leaked == []
