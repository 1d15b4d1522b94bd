"""Shared fixtures: an isolated EPHEMERAL_HOME per test, and a leak check for real clusters."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from ephemeral.errors import EphemeralError
from ephemeral.lifecycle import STOP_SIGNALS, interrupt_on_stop_signals
from ephemeral.specs import ClusterIdentity, ResolvedSpec, resolve

# Airflow reads its configuration when first imported: point it at a throwaway home before any
# test module imports it. DAG files of the tests live in tests/airflow/dags.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="ephemeral-airflow-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)  # each run left one in /tmp
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER",
                      str(Path(__file__).resolve().parent / "airflow" / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")  # as make airflow runs
os.environ.setdefault("AIRFLOW__CORE__XCOM_BACKEND", "ephemeral.airflow.xcom.MetadataOnlyXCom")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

REQUIRE_K8S = "EPHEMERAL_REQUIRE_K8S"


_HANDLERS: dict[int, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped by SIGTERM (a CI job's timeout, `timeout`, a kill) or a closed terminal
    ends as Ctrl-C does: pytest then tears its fixtures down, so the clusters, live Airflows
    and PostgreSQL servers they started are stopped, not orphaned (the CLI's rule too)."""
    interrupt_on_stop_signals()
    _HANDLERS.update({s: signal.getsignal(s) for s in (signal.SIGINT, *STOP_SIGNALS)})


def as_from_a_terminal() -> None:
    """``preexec_fn`` of a child a test stops with SIGHUP or Ctrl-C: their defaults, as a
    terminal gives them, whatever this run inherited (a run under nohup ignores SIGHUP, one
    started in the background by a script, as a CI runner may, ignores SIGINT; its children
    inherit that, and the CLI keeps an ignored stop signal ignored)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _stop_signals_kept() -> Iterator[None]:
    """Each test ends with the run's own SIGINT, SIGTERM and SIGHUP handlers: in a full run,
    a handler taken over in-process and kept (not yet traced to its test) made Ctrl-C and
    SIGTERM no longer stop the run, and swallowed a later test's Ctrl-C."""
    yield
    for signum, handler in _HANDLERS.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)  # type: ignore[arg-type]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """With EPHEMERAL_REQUIRE_K8S=1 (the kind workflow) a `k8s` test that skips fails instead: a
    CI run without a reachable cluster must not pass by skipping everything."""
    report: pytest.TestReport = yield
    if (report.skipped and item.get_closest_marker("k8s") is not None
            and os.environ.get(REQUIRE_K8S) == "1"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_K8S}=1 and this k8s test skipped: {reason}"
    return report


ENGINE_PROCESS_MARKERS = ("raylet", "gcs_server", "org.apache.spark", "ray::", "dashboard/")


def engine_pids() -> set[int]:
    """Pids of every Ray or Spark process on the machine (zombies excluded)."""
    found = set()
    for p in psutil.process_iter(["pid", "cmdline", "name", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        if any(m in text for m in ENGINE_PROCESS_MARKERS):
            found.add(p.info["pid"])
    return found


@pytest.fixture(autouse=True)
def ephemeral_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh EPHEMERAL_HOME; whatever cluster a test leaves in it is deleted afterwards, even
    when the test failed (pytest later removes old tmp folders, and with them the state that
    finds a cluster's processes)."""
    home = tmp_path / "home"
    monkeypatch.setenv("EPHEMERAL_HOME", str(home))
    monkeypatch.delenv("EPHEMERAL_SPECS_DIR", raising=False)
    monkeypatch.delenv("EPHEMERAL_BACKEND", raising=False)
    monkeypatch.delenv("EPHEMERAL_INSTANCE", raising=False)
    yield home
    if (home / "clusters").is_dir():
        from ephemeral.backends.base import OwnerSelector
        from ephemeral.backends.local import LocalBackend

        backend = LocalBackend(home)
        for handle in backend.list_owned(OwnerSelector.everything()):
            backend.delete(handle, wait=True)


@pytest.fixture
def local_backend(ephemeral_home: Path) -> Iterator[object]:
    """A LocalBackend whose clusters are all deleted afterwards, even when the test failed;
    then checks that no Ray or Spark process started during the test is left."""
    from ephemeral.backends.local import LocalBackend

    before = engine_pids()
    backend = LocalBackend(ephemeral_home)
    try:
        yield backend
    finally:
        from ephemeral.backends.base import OwnerSelector

        names = [h.name for h in backend.list_owned(OwnerSelector.everything())]
        for name in names:
            backend.delete(name, wait=True)
        leaked = engine_pids() - before - other_clusters_pids(ephemeral_home)
        # Give processes killed a moment ago time to be reaped before calling it a leak.
        if leaked:
            psutil.wait_procs([psutil.Process(p) for p in leaked if psutil.pid_exists(p)],
                              timeout=5)
            leaked = engine_pids() - before - other_clusters_pids(ephemeral_home)
        assert not leaked, f"Ray/Spark processes left behind: {sorted(leaked)}"


def other_clusters_pids(home: Path) -> set[int]:
    """Processes of live clusters of other homes (a developer's own clusters, a parallel run):
    the machine-wide slot claims name their state folders."""
    from ephemeral.backends.local import procs
    from ephemeral.backends.local.slots import runtime_dir
    from ephemeral.backends.local.state import load

    pids: set[int] = set()
    for claim in (runtime_dir() / "slots").glob("*"):
        state_dir = Path(claim.read_text().strip())
        if state_dir.is_relative_to(home):
            continue
        try:
            state = load(state_dir)
        except EphemeralError:  # another version's state: not ours to judge
            continue
        if state is not None:
            pids |= {p.pid for p in procs.find(state.nodes, state.uid)}
    return pids | marked_elsewhere(home)


def marked_elsewhere(home: Path) -> set[int]:
    """Engine processes that carry a cluster marker of someone else: another home's state
    folder, or only a uid (the benchmarks' by-hand baselines mark their nodes that way). Every
    process of this backend's clusters carries both markers, so none of ours is excused; an
    unmarked engine process still counts."""
    from ephemeral.backends.local import procs

    pids = set()
    for pid in engine_pids():
        try:
            env = psutil.Process(pid).environ()
        except psutil.Error:
            continue
        folder = env.get(procs.DIR_ENV)
        if folder is not None and not Path(folder).is_relative_to(home):
            pids.add(pid)
        elif folder is None and env.get(procs.UID_ENV):
            pids.add(pid)
    return pids


def small(ref: str, **overrides: int) -> ResolvedSpec:
    """A shipped spec under the ci-cpu profile, right-sized for a 2-core machine."""
    workers = {"replicas": overrides["replicas"]} if "replicas" in overrides else None
    return resolve(ref, "ci-cpu", {"workers": workers} if workers else None)


def manual(spec: ResolvedSpec, name: str) -> ClusterIdentity:
    return ClusterIdentity.manual(spec.spec.name, name)


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def dag_file_module(name: str, module_name: str) -> ModuleType:
    """The DAG file ``dags/<name>.py`` imported under ``module_name`` (parsing a DAG file
    creates nothing)."""
    path = Path(__file__).resolve().parents[1] / "dags" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
