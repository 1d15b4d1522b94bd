"""``ClusterSparkSubmitHook``: the Spark provider's ``SparkSubmitHook`` aimed at one ephemeral
cluster (``EphemeralSparkSubmitOperator`` imports it when a task runs)."""

from __future__ import annotations

import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook


class ClusterSparkSubmitHook(SparkSubmitHook):
    """The provider's ``SparkSubmitHook`` aimed at one cluster's master in client mode, with
    ``extra_args`` (the auth properties file) put before the application, and the driver's
    output kept for the result and a failure's tail.

    ``on_start`` is called with the ``spark-submit`` process as soon as it runs."""

    def __init__(self, *, master: str, spark_binary: str, extra_args: Sequence[str] = (),
                 on_start: Callable[[subprocess.Popen[str]], None] | None = None,
                 **kwargs: Any) -> None:
        from ephemeral.jobs.spark_jobs import _APP_ID

        self._master = master
        self._extra_args = list(extra_args)
        self._on_start = on_start
        self._app_id_re = _APP_ID
        self.lines: deque[str] = deque(maxlen=2000)
        self.app_id: str | None = None
        self.output_done = threading.Event()
        super().__init__(spark_binary=spark_binary, deploy_mode="client", **kwargs)

    def _resolve_connection(self) -> dict[str, Any]:
        # No Airflow Spark connection: the master is the cluster's, the binary pyspark's.
        return {"master": self._master, "queue": None, "deploy_mode": "client",
                "spark_binary": self.spark_binary, "namespace": None, "principal": None,
                "keytab": None}

    def _build_spark_submit_command(self, application: str) -> list[str]:
        command: list[str] = super()._build_spark_submit_command(application)
        return [command[0], *self._extra_args, *command[1:]]

    def _process_spark_submit_log(self, itr: Iterator[Any]) -> None:
        # Called right after the hook started spark-submit, in the submitting thread.
        if self._on_start is not None and self._submit_sp is not None:
            self._on_start(self._submit_sp)
        try:
            super()._process_spark_submit_log(self._keep(itr))
        finally:
            self.output_done.set()

    def _keep(self, itr: Iterator[Any]) -> Iterator[Any]:
        for raw in itr:
            line = str(raw).rstrip("\n")
            self.lines.append(line)
            if self.app_id is None and (m := self._app_id_re.search(line)):
                self.app_id = m.group(1)
            yield raw
