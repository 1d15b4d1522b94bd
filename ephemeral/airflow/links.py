"""Extra links on the tasks of a cluster: the Ray dashboard, the Spark master UI, and on the
teardowns the run's report (its HTML page in the artifact store).

The operators push each URL under the link's XCom key when they start, which is where the
Airflow UI reads a link from; ``get_link`` reads the same XCom for older code paths.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


class _EndpointLink(BaseOperatorLink):
    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return str(value) if value else ""


class RayDashboardLink(_EndpointLink):
    name = "Ray dashboard"


class SparkMasterLink(_EndpointLink):
    name = "Spark master UI"


class RunReportLink(_EndpointLink):
    name = "Run report"
