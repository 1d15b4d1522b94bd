"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from ephemeral import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "ephemeral",
        "name": "ephemeral",
        "description": "Ephemeral Ray and Spark clusters for training, created and always "
                       "destroyed by Airflow setup and teardown tasks.",
        "versions": [__version__],
        "extra-links": [
            "ephemeral.airflow.links.RayDashboardLink",
            "ephemeral.airflow.links.SparkMasterLink",
            "ephemeral.airflow.links.RunReportLink",
        ],
        "operators": [{"integration-name": "ephemeral",
                       "python-modules": ["ephemeral.airflow.operators"]}],
        "triggers": [{"integration-name": "ephemeral",
                      "python-modules": ["ephemeral.airflow.triggers"]}],
        "integrations": [{"integration-name": "ephemeral",
                          "external-doc-url": "https://pypi.org/project/ephemeral/",
                          "tags": ["software"]}],
    }
