"""The run report: what every DAG run's clusters cost and how much of their life ran jobs.

Teardowns record facts (``ClusterFacts``); ``store.record`` writes them under the artifact root
and (re)builds the run's ``report.json`` and ``report.html``; ``load_report`` reads a run's.
"""

from __future__ import annotations

from ephemeral.report.costs import Price, Prices, load_prices
from ephemeral.report.html import render_html
from ephemeral.report.model import ClusterFacts, JobFacts, build_report, summarize
from ephemeral.report.store import load_report, record, report_link, report_uri, report_url

__all__ = ["ClusterFacts", "JobFacts", "Price", "Prices", "build_report", "load_prices",
           "load_report", "record", "render_html", "report_link", "report_uri", "report_url",
           "summarize"]
