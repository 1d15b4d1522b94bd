"""train_distributed: the reference pipeline.

ETL:    Spark cluster setup -> feature ETL (with its data-quality gate) -> Spark teardown
TRAIN:  Ray cluster setup -> hyperparameter trials (mapped over params/train_distributed/*.json,
        each a DDP job over every worker of the one cluster, in the GPU trial pool)
        -> pick the best -> evaluate -> Ray teardown
DEPLOY: gate on the evaluation -> register the model under the registry, or alert

Clusters live only as long as their work: each is created by a setup task and destroyed by a
teardown task, whatever happens in between. XCom carries cluster handles, job ids, URIs and a
few metrics; datasets, checkpoints and models live under the artifact root.

Nothing heavy is imported at parse time: the DAG processor re-parses this file all the time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator
from ephemeral.jobs.scaling import ddp_args
from ephemeral.notify import failure_callbacks
from ephemeral.trials import gpu_pool, load_trials, trial_flags

JOBS = str(Path(__file__).resolve().parent.parent / "jobs")
# run_after, not ts_nodash: a run triggered through the REST API without a logical date has none.
RUN = "{{ dag.dag_id }}/{{ dag_run.run_after | ts_nodash }}"
FEATURES = "{{ ti.xcom_pull(task_ids='etl.build_features')['result']['artifact_uri'] }}"
VALIDATION = "{{ ti.xcom_pull(task_ids='etl.build_features')['result']['validation_uri'] }}"
# Workers, GPUs and CPUs per worker from the cluster the trials run on: NCCL on GPUs, gloo on
# ci-cpu, with no edit here.
SCALING = "{{ ddp_args(ti.xcom_pull(task_ids='train.create_ray')) }}"
TRIALS = load_trials("train_distributed")  # one versioned JSON file per trial
NOTIFY = failure_callbacks()  # $EPHEMERAL_NOTIFIER, with the run report's link


def alert_gate_failed(context: Any) -> None:
    """Failure callback of the gate's alert task: record the alert next to the run's artifacts
    (a real deployment would page or post to a channel here)."""
    from ephemeral.jobs import artifacts

    ti = context["ti"]
    when = context["dag_run"].run_after.strftime("%Y%m%dT%H%M%S")
    uri = artifacts.run_uri(f"alerts/{context['dag'].dag_id}", f"{when}.json")
    artifacts.write_json(uri, {"dag_id": context["dag"].dag_id, "run_id": context["run_id"],
                               "task_id": ti.task_id, "reason": str(context.get("exception"))})
    ti.log.error("model gate failed; alert written to %s", uri)


with DAG(
    dag_id="train_distributed",
    description="Spark ETL, Ray DDP trials, evaluation and a gated model registration",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10),
                  "execution_timeout": timedelta(hours=2), "on_failure_callback": NOTIFY},
    user_defined_macros={"ddp_args": ddp_args},
    params={
        "profile": Param("ci-cpu", type=["null", "string"], enum=[None, "ci-cpu"],
                         description="Spec profile: ci-cpu for CPU-only machines, none on GPUs."),
        "rows": Param(5000, type="integer", minimum=1000, maximum=10_000_000),
        "steps": Param(300, type="integer", minimum=10, maximum=100_000),
        "min_accuracy": Param(0.8, type="number", minimum=0, maximum=1),
    },
    tags=["ephemeral", "reference"],
) as dag:
    with TaskGroup("etl"):
        # The ETL runs through spark-submit only: no Spark Connect server to start and pay for.
        create_spark = CreateClusterOperator(task_id="create_spark", spec="spark/etl@1",
                                             profile="{{ params.profile }}",
                                             overrides={"connect": False})
        build_features = EphemeralSparkSubmitOperator(
            task_id="build_features", cluster=create_spark.output,
            application=f"{JOBS}/etl_features.py",
            application_args=["--run", RUN, "--rows", "{{ params.rows }}"])
        delete_spark = DeleteClusterOperator(task_id="delete_spark",
                                             setup_task_id="etl.create_spark",
                                             cluster=create_spark.output)
        create_spark >> build_features >> delete_spark.as_teardown(
            setups=create_spark, on_failure_fail_dagrun=True)

    with TaskGroup("train"):
        create_ray = CreateClusterOperator(task_id="create_ray", spec="ray/train-gpu@1",
                                           profile="{{ params.profile }}")
        trials = RayJobOperator.partial(
            task_id="trial", cluster=create_ray.output, working_dir=JOBS, pool=gpu_pool(),
        ).expand(entrypoint=[
            f"python train_ddp.py --run {RUN}/trial-{name} --steps {{{{ params.steps }}}}"
            f" --checkpoint-every 100 {trial_flags(options)} --data-uri {FEATURES} {SCALING}"
            for name, options in TRIALS])

        @task
        def pick_best(results: list[dict[str, Any]]) -> dict[str, Any]:
            best = min(results, key=lambda r: r["result"]["loss"])
            return {"job_id": best["job_id"], "model_uri": best["result"]["artifact_uri"],
                    "loss": best["result"]["loss"], "trials": len(results)}

        best = pick_best(trials.output)
        evaluate = RayJobOperator(
            task_id="evaluate", cluster=create_ray.output, working_dir=JOBS,
            entrypoint="python evaluate.py --model-uri "
                       "{{ ti.xcom_pull(task_ids='train.pick_best')['model_uri'] }}"
                       f" --data-uri {VALIDATION}")
        delete_ray = DeleteClusterOperator(task_id="delete_ray", setup_task_id="train.create_ray",
                                           cluster=create_ray.output)
        best >> evaluate
        create_ray >> trials
        evaluate >> delete_ray.as_teardown(setups=create_ray, on_failure_fail_dagrun=True)
    build_features >> create_ray  # train on the features this run built

    with TaskGroup("deploy"):
        @task.branch
        def gate(evaluation: dict[str, Any], params: Any = None) -> str:
            accuracy = evaluation["result"]["accuracy"]
            threshold = (params or {}).get("min_accuracy", 0.8)
            return "deploy.register_model" if accuracy >= threshold else "deploy.gate_failed"

        @task
        def register_model(best: dict[str, Any], evaluation: dict[str, Any],
                           dag_run: Any = None) -> dict[str, Any]:
            from ephemeral.jobs import artifacts

            model_dir = best["model_uri"].rsplit("/", 1)[0]
            target = artifacts.run_uri("registry/train_distributed",
                                       dag_run.run_after.strftime("%Y%m%dT%H%M%S"))
            artifacts.copy(model_dir, f"{target}/model")
            record = {"model_uri": f"{target}/model/model.pt", "source": best["model_uri"],
                      "accuracy": evaluation["result"]["accuracy"], "loss": best["loss"]}
            artifacts.write_json(f"{target}/registration.json", record)
            artifacts.write_json(artifacts.run_uri("registry/train_distributed", "latest.json"),
                                 record)
            return record

        @task(on_failure_callback=[alert_gate_failed, *NOTIFY], retries=0)
        def gate_failed(evaluation: dict[str, Any]) -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"accuracy {evaluation['result']['accuracy']} is below "
                                       "the gate; the model was not registered")

        gate_task = gate(evaluate.output)
        gate_task >> [register_model(best, evaluate.output), gate_failed(evaluate.output)]
