"""model_rollback: move a registered model's ``champion`` alias back to the previous champion
(ephemeral.registry.rollback), from the trigger form. A serving system that reads
``models:/NAME@champion`` picks the rolled-back version up from there.

Manual only, one run at a time, no retries: a rollback is not idempotent (each one goes a
promotion further back), so a retried task would roll back twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

with DAG(
    dag_id="model_rollback",
    description="Move a model's champion alias back to the previous champion",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0, "execution_timeout": timedelta(minutes=5)},
    params={"model": Param("train_distributed", type="string", minLength=1,
                           pattern=r"^[^'\\]+$",
                           description="The registered model whose champion goes back one "
                                       "promotion (ephemeral model show NAME lists them).")},
    tags=["ephemeral", "registry"],
) as dag:

    @task
    def rollback(model: Any) -> dict[str, str]:
        import logging

        from ephemeral.registry import display_uri, rollback, tracking_uri

        from_version, to_version = rollback(str(model))
        logging.getLogger(__name__).info(
            "rolled back %s: champion %s -> %s (%s)", model, from_version, to_version,
            display_uri(tracking_uri()))
        return {"model": str(model), "from": from_version, "to": to_version}

    rollback("{{ params.model }}")
