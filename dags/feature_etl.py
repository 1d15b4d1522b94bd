"""feature_etl: build a training dataset and publish it as the `training_features` Asset.

    Spark cluster setup -> feature ETL (data-quality gate) -> Spark teardown
                                  \\-> published (the URIs, in the log and XCom)

The ETL task's outlet is ephemeral.assets.FEATURES; its event carries this run's
``features_uri`` and ``validation_uri`` in ``extra``, and train_distributed is scheduled on that
Asset: new features start training, on exactly those features, without a second ETL.

No timetable: train_distributed already builds its own features on its @daily timetable, so a
scheduled feature_etl would pay for a second training a day on the same raw source. This DAG
runs when a new raw dataset lands (``input``: a Parquet or CSV URI), triggered by the system
that lands it, the REST API or the UI. ``drift`` shifts generated data (demos and tests of the
drift loop); it is refused together with ``input``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
)
from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator
from ephemeral.assets import FEATURES, RAW_EVENTS, publish_features
from ephemeral.jobs.artifacts import run_folder
from ephemeral.notify import failure_callbacks

JOBS = str(Path(__file__).resolve().parent.parent / "jobs")
RUN = "{{ run_folder(dag.dag_id, run_id) }}"  # this deployment's, DAG's and run's folder

with DAG(
    dag_id="feature_etl",
    description="Spark feature ETL that publishes the training_features Asset",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10),
                  "execution_timeout": timedelta(hours=1),
                  "on_failure_callback": failure_callbacks()},
    params={
        "profile": Param("ci-cpu", type=["null", "string"], enum=[None, "ci-cpu"],
                         description="Spec profile: ci-cpu for CPU-only machines, none on GPUs."),
        "input": Param(None, type=["null", "string"],
                       description="Raw dataset URI (Parquet or CSV); none: generated rows."),
        "rows": Param(None, type=["null", "integer"], minimum=1000, maximum=10_000_000,
                      description="Rows generated when there is no input (none: 5000)."),
        "drift": Param(0.0, type="number", minimum=0, maximum=10,
                       description="Shift 30% of the generated rows by this many units."),
    },
    tags=["ephemeral", "reference", "data"],
    user_defined_macros={"run_folder": run_folder},
) as dag:
    create_spark = CreateClusterOperator(task_id="create_spark", spec="spark/etl@1",
                                         profile="{{ params.profile }}",
                                         overrides={"connect": False})
    build_features = EphemeralSparkSubmitOperator(
        task_id="build_features", cluster=create_spark.output,
        application=f"{JOBS}/etl_features.py",
        application_args=["--run", RUN, "--rows", "{{ params.rows or 5000 }}",
                          "--drift", "{{ params.drift }}",
                          "--input={{ params.input or '' }}"],
        inlets=[RAW_EVENTS], outlets=[FEATURES], post_execute=publish_features(FEATURES),
        delete_cluster_on_success=True)  # its only job: the cluster goes when it succeeds
    delete_spark = DeleteClusterOperator(task_id="delete_spark", setup_task_id="create_spark",
                                         cluster=create_spark.output)
    create_spark >> build_features >> delete_spark.as_teardown(setups=create_spark,
                                                                on_failure_fail_dagrun=True)

    @task(retries=0)
    def check_params(params: Any = None) -> None:
        """What the ETL task would refuse or ignore in the form, before any cluster is made:
        settings of generated rows beside an input, credentials in the input's URI."""
        from airflow.sdk.exceptions import AirflowFailException

        from ephemeral.specs.pip_credentials import credentials_problem

        given = params or {}
        if not (source := given.get("input")):
            return
        if float(given.get("drift") or 0):
            raise AirflowFailException("drift: shifts generated rows only; leave it 0 when "
                                       "input names a raw dataset")
        if given.get("rows") is not None:
            raise AirflowFailException("rows: the number of rows generated when there is no "
                                       "input; leave it empty when input names a raw dataset "
                                       "(its rows are the dataset's)")
        if problem := credentials_problem(str(source), "give the URI alone: the store's "
                                                       "credentials come from the workers' "
                                                       "environment"):
            raise AirflowFailException(f"input: {problem}")

    check_params() >> create_spark

    @task
    def published(result: dict[str, Any]) -> dict[str, Any]:
        """A leaf after the job, so a failed ETL fails the run (a teardown alone would hide
        it), and the URIs where a person looks for them."""
        body = result["result"]
        print(f"training_features: {body['artifact_uri']} ({body['rows']} rows), "
              f"validation {body['validation_uri']}")
        return {"features_uri": body["artifact_uri"], "validation_uri": body["validation_uri"]}

    published(build_features.output)
