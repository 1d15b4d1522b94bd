"""Importing the library, its CLI and the local backend must not import a heavy engine:
DAG files that use them are re-parsed all the time."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["ray", "pyspark", "torch", "kubernetes", "airflow"]


def test_no_engine_is_imported_at_import_time() -> None:
    code = (
        "import json, sys\n"
        "import ephemeral, ephemeral.cli.main, ephemeral.lifecycle\n"
        "import ephemeral.backends.local, ephemeral.backends.fake, ephemeral.specs\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
