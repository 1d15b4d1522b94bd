"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from ephemeral import __version__
from ephemeral.config_section import provider_config


def get_provider_info() -> dict[str, Any]:
    from ephemeral.airflow.backends import CONNECTION_TYPE

    return {
        "package-name": "airflow-provider-ephemeral",
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
                       "python-modules": ["ephemeral.airflow.operators",
                                          "ephemeral.airflow.spark_submit"]}],
        "triggers": [{"integration-name": "ephemeral",
                      "python-modules": ["ephemeral.airflow.triggers"]}],
        "hooks": [{"integration-name": "ephemeral",
                   "python-modules": ["ephemeral.airflow.hooks"]}],
        "connection-types": [CONNECTION_TYPE],
        "task-decorators": [{"name": "spark_connect",
                             "class-name": "ephemeral.airflow.decorators.spark_connect_task"}],
        # [ephemeral]: every EPHEMERAL_* setting, as `airflow config list` shows it.
        "config": provider_config(),
        "integrations": [{"integration-name": "ephemeral",
                          "external-doc-url": "https://pypi.org/project/airflow-provider-ephemeral/",
                          "tags": ["software"]}],
    }
