"""make test's two pytest-xdist workers (tests/conftest.py): every module with a test that starts
real engines runs whole in one worker, in order. pytest-xdist's grouping can stop working
silently across pytest releases (it did on pytest 9.2, pytest-xdist#1386); the tests that
start engines would then run side by side, each finding the other's processes as its leaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = '''
import os
from pathlib import Path
import pytest

def record(name):
    with open(Path(os.environ["PROBE_OUT"]) / "ran", "a") as f:
        f.write(f"{name} {os.environ['PYTEST_XDIST_WORKER']}\\n")

@pytest.mark.local
def test_engine(): record(__name__ + ".engine")

def test_same_module(): record(__name__ + ".same_module")
'''
PLAIN = '''
import os
from pathlib import Path

def test_plain_{i}():
    with open(Path(os.environ["PROBE_OUT"]) / "ran", "a") as f:
        f.write(f"plain {{os.environ['PYTEST_XDIST_WORKER']}}\\n")
'''


def test_engine_modules_run_whole_in_one_worker_in_order(tmp_path: Path) -> None:
    for name in ("test_a_engines", "test_b_engines"):
        (tmp_path / f"{name}.py").write_text(MODULE)
    for i in range(6):
        (tmp_path / f"test_plain_{i}.py").write_text(PLAIN.format(i=i))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PROBE_OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                           "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = [line.split() for line in (tmp_path / "ran").read_text().splitlines()]
    engines = [(name, worker) for name, worker in ran if name != "plain"]
    assert [name for name, _ in engines] == [
        "test_a_engines.engine", "test_a_engines.same_module",
        "test_b_engines.engine", "test_b_engines.same_module"]
    assert len({worker for _, worker in engines}) == 1, ran
    assert len(ran) == 10, ran
