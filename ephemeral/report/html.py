"""The run report as one self-contained HTML page: a timeline (each cluster a bar from creation
to deletion, its jobs drawn on it) as inline SVG, and the figures as tables. No script, no
stylesheet or font from elsewhere: it opens from an artifact store or a mail attachment as is."""

from __future__ import annotations

import math
from html import escape
from typing import Any

WIDTH, LABEL, PAD = 980, 230, 12
LANE, BAR = 14, 22
COLOURS = {"starting": "#c9ced6", "alive": "#e4eefa", "deleting": "#f2b8b5",
           "ray": "#2e86de", "spark": "#e67e22", "job": "#7f8c8d"}

STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2733}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.meta{color:#5b6775}table{border-collapse:collapse;margin:4px 0 12px}
th,td{border-bottom:1px solid #e1e5ea;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f4f6f8;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;
height:12px;margin-right:4px;vertical-align:-1px}svg text{font:12px system-ui,sans-serif}
.bad{color:#b03a2e;font-weight:600}code{font-size:12px}
"""


def _fmt_s(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.0f}%"


def _upto(totals: dict[str, Any]) -> str:
    if not totals.get("autoscaled_clusters"):
        return ""
    top = totals.get("reserved_up_to")
    return (" (autoscaled, counted at replicas: " + ("up to an unknown maximum)" if top is None
            else f"up to {top['gpu_seconds']:.0f} GPU-s)"))


def _autoscaled(cluster: dict[str, Any]) -> str:
    from ephemeral.report.model import up_to_text

    scaled = cluster.get("autoscaled")  # absent in reports of older code
    if not scaled:
        return ""
    top = up_to_text(cluster)
    return f"<br><small>{f'up to {top}; ' if top else ''}{escape(scaled['note'])}</small>"


def _unpriced(cluster: dict[str, Any]) -> str:
    missing = cluster.get("unpriced") or []  # absent in reports of older code
    return f"<br>no price for {escape(', '.join(missing))}" if missing else ""


def _money(value: float | None, currency: str | None) -> str:
    return "" if value is None else escape(f"{value:.4f} {currency or ''}".strip())


def _lanes(jobs: list[dict[str, Any]]) -> list[int]:
    """A lane per job so that jobs running at once on a cluster do not hide each other."""
    ends: list[float] = []
    lanes = []
    for job in jobs:
        start = job["start"]
        lane = next((i for i, end in enumerate(ends) if end <= start), len(ends))
        if lane == len(ends):
            ends.append(job["end"])
        else:
            ends[lane] = job["end"]
        lanes.append(lane)
    return lanes


def _tick_step(span: float) -> float:
    raw = span / 8
    magnitude = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return float(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))


def _counted(c: dict[str, Any]) -> dict[str, float]:
    """The moments the cluster's split was counted with (a report from before they were kept:
    its raw ones)."""
    return c.get("counted") or {"ready": c["ready"] or c["created"],
                                "stop": c["teardown_started"],
                                "end": c["deleted"] or c["teardown_started"]}


def timeline_svg(report: dict[str, Any]) -> str:
    clusters = report["clusters"]
    if not clusters:
        return "<p>No cluster was recorded for this run.</p>"
    t0 = float(min(c["created"] for c in clusters))
    t1 = float(max(_counted(c)["end"] for c in clusters))
    span = t1 - t0 if math.isfinite(t1 - t0) and t1 - t0 > 1.0 else 1.0  # an old NaN report
    scale = (WIDTH - LABEL - PAD) / span

    def x(t: float) -> float:
        return round(LABEL + (t - t0) * scale, 1)

    rows, y = [], 28
    for c in clusters:
        timed = sorted((j for j in c["jobs"] if j["start"] is not None and j["end"] is not None),
                       key=lambda j: j["start"])
        lanes = _lanes(timed)
        height = BAR + LANE * max(max(lanes, default=0) + 1, 1)
        ready, stop, end = (_counted(c)[k] for k in ("ready", "stop", "end"))
        title = (f"{c['name']} ({c['spec']}): lifetime {c['lifetime_s']:.1f}s, busy "
                 f"{c['busy_s']:.1f}s, idle {_pct(c['idle_share'])}")
        parts = [f'<g class="row"><text x="4" y="{y + 15}">{escape(c["name"])}</text>',
                 f'<text x="4" y="{y + 30}" fill="#5b6775">{escape(str(c["spec"]))}</text>',
                 f'<rect class="cluster" x="{x(c["created"])}" y="{y}" '
                 f'width="{max(x(end) - x(c["created"]), 1):.1f}" height="{height}" '
                 f'fill="{COLOURS["alive"]}" stroke="#9fb3c8"><title>{escape(title)}</title>'
                 "</rect>"]
        for cls, a, b in (("starting", c["created"], ready), ("deleting", stop, end)):
            if b > a:
                parts.append(f'<rect class="{cls}" x="{x(a)}" y="{y}" width="{x(b) - x(a):.1f}" '
                             f'height="{height}" fill="{COLOURS[cls]}"><title>{cls} '
                             f'{b - a:.1f}s</title></rect>')
        for job, lane in zip(timed, lanes, strict=True):
            colour = COLOURS.get(job["engine"], COLOURS["job"])
            label = job["task"] or job["job_id"]
            # Drawn as counted: busy only from readiness to the teardown.
            a, b = min(max(job["start"], ready), stop), min(max(job["end"], ready), stop)
            parts.append(
                f'<rect class="job" x="{x(a)}" y="{y + 4 + lane * LANE}" '
                f'width="{max(x(b) - x(a), 1):.1f}" height="{LANE - 3}" '
                f'fill="{colour}" rx="2"><title>{escape(str(label))}: {job["wall_s"]:.1f}s '
                f'({escape(job["status"])})</title></rect>')
        parts.append("</g>")
        rows.append("".join(parts))
        y += height + 18
    step = _tick_step(span)
    ticks = "".join(
        f'<line x1="{x(t0 + k * step)}" y1="20" x2="{x(t0 + k * step)}" y2="{y - 10}" '
        f'stroke="#eef1f4"/><text x="{x(t0 + k * step)}" y="14" text-anchor="middle" '
        f'fill="#5b6775">{k * step:g}s</text>'
        for k in range(int(span // step) + 1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y}" '
            f'viewBox="0 0 {WIDTH} {y}" role="img" aria-label="cluster timeline">'
            f"{ticks}{''.join(rows)}</svg>")


def _cluster_rows(report: dict[str, Any]) -> str:
    out = []
    for c in report["clusters"]:
        deletion = escape(c["deletion"])
        if c["deletion"] != "complete":
            deletion = f'<span class="bad">{deletion}</span>'
        out.append(
            f"<tr><td>{escape(c['name'])}<br><small>{escape(c['backend'])}</small></td>"
            f"<td>{escape(str(c['spec']))}{' [' + escape(c['profile']) + ']' if c['profile'] else ''}"
            f"<br><code>{escape(c['spec_hash'])}</code></td>"
            f"<td class=n>{_fmt_s(c['lifetime_s'])}</td><td class=n>{_fmt_s(c['busy_s'])}</td>"
            f"<td class=n>{_fmt_s(c['starting_s'])} + {_fmt_s(c['between_jobs_s'])} + "
            f"{_fmt_s(c['deleting_s'])}</td><td class=n>{_pct(c['idle_share'])}</td>"
            f"<td class=n>{c['cpu_seconds']:.0f} / {c['memory_gib_seconds']:.0f} / "
            f"{c['gpu_seconds']:.0f}{_autoscaled(c)}</td>"
            f"<td class=n>{_money(c['cost'], c['currency'])}<br><small>idle "
            f"{_money(c['idle_cost'], c['currency'])}{_unpriced(c)}</small></td>"
            f"<td>{deletion}</td></tr>")
    return "".join(out)


def _job_rows(report: dict[str, Any]) -> str:
    out = []
    for j in report["jobs"]:
        uris = "<br>".join(f"{escape(k)}: <code>{escape(v)}</code>" for k, v in j["uris"].items())
        out.append(f"<tr><td>{escape(str(j['task'] or ''))}</td><td><code>{escape(j['job_id'])}"
                   f"</code></td><td>{escape(j['cluster'])}</td><td>{escape(j['status'])}</td>"
                   f"<td class=n>{_fmt_s(j['wall_s'])}</td><td class=n>"
                   f"{_fmt_s(j['seconds'])}</td><td>{uris}</td></tr>")
    return "".join(out)


def _priced_now(report: dict[str, Any]) -> str:
    """Clusters recorded without a price and priced when the page was made (``ephemeral
    report``): said, since their cost is not the setting their teardown had."""
    names = report.get("priced_now") or []
    return (f"<p class=meta>Priced by the cost setting of whoever made this page, recorded "
            f"without a price: {escape(', '.join(names))}</p>") if names else ""


def render_html(report: dict[str, Any]) -> str:
    t = report["totals"]
    legend = "".join(f'<span><i style="background:{COLOURS[k]}"></i>{label}</span>'
                     for k, label in (("starting", "starting"), ("alive", "ready, no job"),
                                      ("ray", "Ray job"), ("spark", "Spark application"),
                                      ("deleting", "deleting")))
    money = _money(t["cost"], t["currency"])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Run report: {escape(report['dag_id'])} {escape(report['run_id'])}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{escape(report['dag_id'])} <small>{escape(report['run_id'])}</small></h1>"
        f"<p class=meta>{t['clusters']} cluster(s), {t['lifetime_s']:.1f} s of cluster life, "
        f"{t['busy_s']:.1f} s running jobs, idle {_pct(t['idle_share'])}; reserved "
        f"{t['cpu_seconds']:.0f} CPU-s, {t['memory_gib_seconds']:.0f} GiB-s, "
        f"{t['gpu_seconds']:.0f} GPU-s{_upto(t)}{'; cost ' + money if money else ''}</p>"
        f"{_priced_now(report)}"
        f"<h2>Timeline</h2><p class=legend>{legend}</p>{timeline_svg(report)}"
        "<h2>Clusters</h2><table><tr><th>cluster</th><th>spec and hash</th><th>lifetime</th>"
        "<th>running jobs</th><th>idle = starting + between jobs + deleting</th><th>idle</th>"
        "<th>reserved CPU-s / GiB-s / GPU-s</th><th>cost</th><th>deletion</th></tr>"
        f"{_cluster_rows(report)}</table>"
        "<h2>Jobs</h2><table><tr><th>task</th><th>job</th><th>cluster</th><th>status</th>"
        "<th>running (engine)</th><th>as the task saw it</th><th>results</th></tr>"
        f"{_job_rows(report)}</table>"
        "</body></html>\n")
