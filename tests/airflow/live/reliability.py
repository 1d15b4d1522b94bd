"""The fault matrix's numbers: each live scenario records a row; the rows are merged into a JSON
file and rendered as the table of docs/reliability.md, so the document follows the last runs.

``python -m tests.airflow.live.reliability`` renders the table again from the JSON file.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"


def results_file() -> Path:
    return Path(os.environ.get("EPHEMERAL_RELIABILITY_RESULTS")
                or ROOT / ".home" / "reliability" / "fault-matrix.json")


@dataclass
class Results:
    rows: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def case(self, key: str, engine: str, title: str, bound: float) -> Iterator[dict[str, Any]]:
        """A scenario's row: the test fills ``outcome``, ``seconds`` (fault to nothing left)
        and ``detail``; a test that fails records its error instead, then fails."""
        row: dict[str, Any] = {"key": key, "engine": engine, "title": title, "bound": bound,
                               "outcome": "", "seconds": None, "detail": "", "passed": False}
        started = time.monotonic()
        try:
            yield row
            row["passed"] = True
        except BaseException as err:
            row["outcome"] = "FAILED: " + (str(err).splitlines() or [type(err).__name__])[0][:160]
            raise
        finally:
            row["test_seconds"] = round(time.monotonic() - started, 1)
            row["when"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            row["host"] = f"{platform.node()} ({os.cpu_count()} cores)"
            self.rows.append(row)


def _order(key: str) -> tuple[int, str]:
    digits = "".join(c for c in key if c.isdigit())
    return (int(digits or 0), key)


def save(rows: list[dict[str, Any]]) -> None:
    path = results_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else []
    merged = {(r["key"], r["engine"]): r for r in [*old, *rows]}
    path.write_text(json.dumps(sorted(merged.values(),
                                      key=lambda r: (_order(r["key"]), r["engine"])), indent=1))
    render(path)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| # | scenario | engine | outcome | fault → nothing left (s) | bound (s) | measured |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (_order(r["key"]), r["engine"])):
        seconds = "-" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        outcome = r["outcome"] + (f" ({r['detail']})" if r.get("detail") else "")
        lines.append(f"| {r['key']} | {r['title']} | {r['engine']} | "
                     f"{outcome.replace('|', '/')} | {seconds} | {r['bound']:.0f} | "
                     f"{r['when'][:16].replace('T', ' ')} |")
    return "\n".join(lines)


def render(path: Path | None = None) -> None:
    rows = json.loads((path or results_file()).read_text())
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}")


if __name__ == "__main__":
    render()
