"""The run report as terminal tables (``ephemeral report``, ``make demo``)."""

from __future__ import annotations

from typing import Any


def _money(value: float | None, currency: str | None) -> str:
    return "-" if value is None else f"{value:.4f} {currency or ''}".strip()


def _autoscaled(cluster: dict[str, Any]) -> str:
    from ephemeral.report.model import up_to_text

    if not cluster.get("autoscaled"):  # absent in reports of older code
        return ""
    top = up_to_text(cluster)
    return f"{f' (up to {top})' if top else ''}*"  # the note below the table says why


def print_report(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    def cell(value: Any) -> Text:  # as written: "[ci-cpu]" in a cell is no style tag
        return Text(str(value))

    clusters = Table("cluster", "spec", "lifetime", "running jobs", "idle",
                     "idle = starting + between jobs + deleting", "reserved CPU/GiB/GPU-s",
                     "cost (idle)", "deletion", title="clusters")
    clusters.columns[0].no_wrap = True  # names are what people grep for
    for c in report["clusters"]:
        share = c["idle_share"]
        clusters.add_row(
            cell(c["name"]), cell(f"{c['spec']}{' [' + c['profile'] + ']' if c['profile'] else ''}"),
            f"{c['lifetime_s']:.1f}s", f"{c['busy_s']:.1f}s",
            "-" if share is None else f"{share * 100:.0f}%",
            f"{c['starting_s']:.1f}s + {c['between_jobs_s']:.1f}s + {c['deleting_s']:.1f}s",
            f"{c['cpu_seconds']:.0f} / {c['memory_gib_seconds']:.0f} / {c['gpu_seconds']:.0f}"
            + _autoscaled(c),
            cell(f"{_money(c['cost'], c['currency'])} ({_money(c['idle_cost'], c['currency'])})"
                 + (f"; no price for {', '.join(c['unpriced'])}" if c.get("unpriced") else "")),
            cell(c["deletion"]))
    console.print(clusters)
    for c in report["clusters"]:
        if c.get("autoscaled"):
            console.print(f"* {c['name']}: {c['autoscaled']['note']}", markup=False,
                          highlight=False)
    jobs = Table("task", "job", "cluster", "status", "wall", "results", title="jobs")
    jobs.columns[2].no_wrap = True
    jobs.columns[5].overflow = "fold"  # URIs whole, over several lines
    for j in report["jobs"]:
        jobs.add_row(cell(j["task"] or "-"), cell(j["job_id"]), cell(j["cluster"]),
                     cell(j["status"]), f"{j['wall_s']:.1f}s",
                     cell(", ".join(f"{k}={v}" for k, v in j["uris"].items())))
    console.print(jobs)
    t = report["totals"]
    share = t["idle_share"]
    console.print(f"{t['clusters']} cluster(s): {t['lifetime_s']:.1f}s alive, {t['busy_s']:.1f}s "
                  f"running jobs, idle {'-' if share is None else f'{share * 100:.0f}%'}; "
                  f"cost {_money(t['cost'], t['currency'])}", highlight=False, markup=False)
