"""lifetime.idleTimeout and runtimeEnv.pip on a real local Ray cluster.

One cluster of a spec with ``idleTimeout: 12s`` and ``runtimeEnv.pip: [six==<installed>]``
(one cluster, not two: this machine is shared, and fewer Ray nodes start more reliably):

- unused for 12 s after its last node started, the reaper would delete it (a dry run says so);
- it runs a job through ``ephemeral submit``: the spec's pip is in the job's environment;
- it runs a long job and is kept, although long past 12 s since readiness;
- the job ends: the idle clock starts again from its end, and the reaper deletes it 12 s later.

The reaper asks the cluster's Jobs and state APIs with its token (``backend.access``), as the
CLI, the DAG and the CronJob do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from ephemeral.activity import cluster_activity
from ephemeral.backends.local import LocalBackend
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.jobs.results import JobStatus
from ephemeral.jobs.runtime_env import job_runtime_env
from ephemeral.lifecycle import provision
from ephemeral.reaper import reap
from ephemeral.specs import ClusterIdentity, resolve

pytestmark = pytest.mark.local
# Short (every second of it is waited out twice per test), yet well above the few seconds a
# reap call takes on a loaded machine right after a job or session ends.
IDLE = 12
SIX = f"six=={version('six')}"
EPHEMERAL = shutil.which("ephemeral", path=str(Path(sys.executable).parent)) or "ephemeral"

SPEC = f"""\
kind: RayCluster
name: idle-test
version: 1
rayVersion: "2.60.0"
image: rayproject/ray:2.60.0-py311-cpu
head: {{cpu: 1, memory: 1Gi}}
workerGroups:
  - {{name: cpu, replicas: 1, cpu: 1, memory: 1Gi}}
runtimeEnv:
  pip: ["{SIX}"]
lifetime: {{ttl: 1h, idleTimeout: {IDLE}s}}
"""

# Prints where it runs and the version of six it imports, as the job's JSON result line.
PIP_JOB = ("import json, sys, six; print(json.dumps({'prefix': sys.prefix, "
           "'six': six.__version__}))")


def test_idle_is_reaped_busy_is_kept_and_the_specs_pip_reaches_jobs(
        local_backend: LocalBackend, tmp_path: Path) -> None:
    path = tmp_path / "idle-test.yaml"
    path.write_text(SPEC)
    memory = tmp_path / "reaper-seen.json"
    handle = provision(local_backend, resolve(str(path)),
                       ClusterIdentity.manual("idle-test", "idle-one"), timeout=300).handle
    assert handle.idle_timeout_s == IDLE
    assert handle.job_pip == [SIX]

    # Unused: idle since its last node started (Ray's state API), so due once that is 20 s ago.
    activity = cluster_activity(local_backend, handle)
    assert activity.busy is False, activity
    assert activity.nodes_up is not None
    time.sleep(max(0.0, IDLE + 1 - (time.time() - activity.nodes_up.timestamp())))
    [d] = reap(local_backend, lookup=None, memory_file=memory, dry_run=True)
    assert d.delete, d
    assert not d.deleted
    assert d.reason.startswith("idle for ")
    assert f", idleTimeout {IDLE}s (no Ray job pending or running since " in d.reason

    # A job submitted with the CLI gets the spec's pip: it runs in Ray's pip environment.
    proc = subprocess.run([EPHEMERAL, "submit", handle.name, "--json", "--", "python", "-c",
                           PIP_JOB], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"]["six"] == version("six")
    assert "runtime_resources" in result["result"]["prefix"], result["result"]
    jobs = ray_jobs_for(handle, local_backend)
    info = jobs.client.get_job_info(result["job_id"])
    assert info.runtime_env["pip"]["packages"] == [SIX]

    # A long job: busy, so kept, though readiness is long past the idle timeout.
    jid = jobs.submit("python -c 'import time; time.sleep(300)'",
                      runtime_env=job_runtime_env(handle, None))
    deadline = time.monotonic() + 120
    while jobs.status(jid) is not JobStatus.RUNNING:
        assert time.monotonic() < deadline, f"job {jid} never ran: {jobs.status(jid)}"
        time.sleep(0.5)
    [d] = reap(local_backend, lookup=None, memory_file=memory)
    assert not d.delete, d
    assert "busy: 1 Ray job(s) pending or running" in d.reason
    assert jid in cluster_activity(local_backend, handle).details

    # The job ends: the idle clock starts again from its end, and runs out IDLE s later.
    jobs.stop(jid)
    [d] = reap(local_backend, lookup=None, memory_file=memory)
    assert not d.delete, d
    assert f"of idleTimeout {IDLE}s" in d.reason
    time.sleep(IDLE + 1)
    [d] = reap(local_backend, lookup=None, memory_file=memory)
    assert d.deleted, d
    assert d.reason.startswith(f"idle for {IDLE + 1}s, idleTimeout {IDLE}s") or \
        d.reason.startswith(f"idle for {IDLE + 2}s, idleTimeout {IDLE}s"), d
    assert local_backend.list_owned() == []


SPARK_SPEC = f"""\
kind: SparkCluster
name: idle-spark
version: 1
sparkVersion: "4.3.0"
image: apache/spark:4.3.0-python3
master: {{cpu: 1, memory: 512Mi}}
workers: {{replicas: 1, cores: 1, memory: 1Gi}}
connect: {{enabled: true, memory: 1Gi}}
lifetime: {{ttl: 1h, idleTimeout: {IDLE}s}}
"""


def test_an_open_connect_session_keeps_a_spark_cluster_until_it_closes(
        local_backend: LocalBackend, tmp_path: Path) -> None:
    """Spark 4's Connect REST API: a session open (even between queries) is busy; the readiness
    probe's own session is not; the clock starts again when the session is released."""
    from ephemeral.jobs.spark_jobs import connect_session, spark_auth_for

    path = tmp_path / "idle-spark.yaml"
    path.write_text(SPARK_SPEC)
    memory = tmp_path / "reaper-seen.json"
    handle = provision(local_backend, resolve(str(path)),
                       ClusterIdentity.manual("idle-spark", "spark-idle"), timeout=300).handle
    first = cluster_activity(local_backend, handle)
    assert first.busy is False, first  # the probe's session does not count
    assert first.nodes_up is not None  # the Connect server's registration with the master

    session = connect_session(handle.endpoints.spark_connect or "",
                              token=spark_auth_for(handle, local_backend).connect_token)
    try:
        assert session.range(1000).count() == 1000
        time.sleep(max(0.0, IDLE + 1 - (time.time() - first.nodes_up.timestamp())))
        [d] = reap(local_backend, lookup=None, memory_file=memory)
        assert not d.delete, d
        assert "Connect session" in d.reason
    finally:
        session.stop()
    [d] = reap(local_backend, lookup=None, memory_file=memory)
    assert not d.delete, d
    assert f"of idleTimeout {IDLE}s" in d.reason
    time.sleep(IDLE + 1)
    [d] = reap(local_backend, lookup=None, memory_file=memory)
    assert d.deleted, d
    assert "no Spark application, Connect session or operation running since" in d.reason
    assert local_backend.list_owned() == []
