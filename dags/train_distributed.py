"""train_distributed: the reference pipeline.

ETL:    Spark cluster setup -> feature ETL (with its data-quality gate) -> Spark teardown
TRAIN:  Ray cluster setup -> hyperparameter trials (mapped over params/train_distributed/*.json,
        each a DDP job over every worker of the one cluster, in the GPU trial pool)
        -> evaluate the best trial (accuracy, F1) -> serve_latency (Ray Serve on the same
        cluster, a bounded load: P50/P95/P99, throughput) -> Ray teardown -> pick_best logs
        every trial to the tracking store (bookkeeping: the cluster does not wait for it)
DEPLOY: gate on every threshold of gates/train_distributed.yaml -> register the model and move
        the registry's champion alias to it, or notify and keep the champion

Clusters live only as long as their work: each is created by a setup task and destroyed by a
teardown task, whatever happens in between; the task of a cluster's last job deletes it the
moment that job succeeds (delete_cluster_on_success), and the teardown confirms it is gone. XCom carries cluster handles, job ids, URIs and a
few metrics; datasets, checkpoints and models live under the artifact root.

When it runs (ephemeral.assets, docs/continuous-training.md): @daily, OR a `training_features`
event (the feature_etl DAG published new features), OR a `feature_drift` event (drift_check
found a batch that drifted past its threshold).
- A timetable or manual run (`make demo`) builds its own features, as before: choose_features
  sends it through the ETL group. Its ETL's outlet is `train_distributed_run_features`, an Asset
  nothing is scheduled on: were it `training_features`, every run would trigger the next one.
- A run triggered by those events trains on the features of the newest event it consumed
  (their URIs are in the event's extra): choose_features skips the ETL group, so its Spark setup
  is skipped, no Spark cluster is made, and the teardown, whose only setup skipped, skips too.
  Several events queued while a run was busy start one run (max_active_runs=1), not one each.
- No task of this DAG emits an Asset it is scheduled on, nor one that feeds drift_check or
  feature_etl: the loop has no way to start itself (tests/airflow/test_assets.py checks it).
- The registration's outlet `registered_model` carries the features the model was trained on:
  drift_check compares new batches with those.

Nothing heavy is imported at parse time: the DAG processor re-parses this file all the time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, TaskGroup, task

from ephemeral import assets
from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator
from ephemeral.gate import Thresholds, load_gate
from ephemeral.jobs.artifacts import run_folder
from ephemeral.jobs.scaling import FLAGS, ddp_args, ddp_value
from ephemeral.notify import failure_callbacks
from ephemeral.trials import best_trial, gpu_pool, load_trials, trial_argv

JOBS = str(Path(__file__).resolve().parent.parent / "jobs")
# This deployment's, DAG's and run's folder (artifacts.run_folder): unique per run, the same
# for its retries.
RUN = "{{ run_folder(dag.dag_id, run_id) }}"
# Built by this run's ETL, or those of the Asset event that triggered it.
FEATURES = "{{ training_features(ti)['artifact_uri'] }}"
VALIDATION = "{{ training_features(ti)['validation_uri'] }}"
# Workers, GPUs and CPUs per worker from the cluster the trials run on: NCCL on GPUs, gloo on
# ci-cpu, with no edit here. Entrypoints are argv lists: each element one quoted word, so a URI
# from an Asset event or XCom never reaches the cluster's shell as a command.
SCALING = [word for flag in FLAGS for word in (
    flag, f"{{{{ ddp_value(ti.xcom_pull(task_ids='train.create_ray'), '{flag}') }}}}")]
TRIALS = load_trials("train_distributed")  # one versioned JSON file per trial
TRIAL_METRICS = ("loss", "first_loss", "accuracy", "throughput_samples_per_s", "world_size")
GATE_METRICS = ("accuracy", "f1", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "error_rate")
NOTIFY = failure_callbacks()  # $EPHEMERAL_NOTIFIER, with the run report's link
MODEL = "train_distributed"  # the registered model's name
log = logging.getLogger(__name__)  # the task's log (RuntimeTaskInstance has no .log)
# The versioned gate file (thresholds and the latency job's load): a bad file fails the import.
GATE = load_gate("train_distributed")
# The best trial's model, straight from the trials' results: the evaluation starts the moment
# the trials end; pick_best (its tracking-store writes) runs once the cluster is gone.
MODEL_URI = "{{ best_trial_of(ti)['model_uri'] }}"


def best_trial_of(ti: Any) -> dict[str, Any]:
    # Map indexes named: iterating the lazy sequence of every index logs an error at its end.
    return best_trial(ti.xcom_pull(task_ids="train.trial", map_indexes=range(len(TRIALS))))


def gate_overrides(params: Any) -> dict[str, Any]:
    """The thresholds this run's params set (an ad-hoc run's override of the gate file; each
    threshold is a declared param, and with_overrides lets one only tighten the file's)."""
    return {k: (params or {}).get(k) for k in Thresholds.model_fields}


def alert_gate_failed(context: Any) -> None:
    """Failure callback of the gate's alert task: record the alert next to the run's artifacts
    and notify through $EPHEMERAL_NOTIFIER with the run report's link (the log when none is
    configured). The message is the notifications' own (``event_message``: the error's first
    line, masked)."""
    from ephemeral.jobs import artifacts
    from ephemeral.notify import GATE_FAILED, event_message, failure_callbacks
    from ephemeral.report import report_link

    ti, dag_id, run_id = context["ti"], context["dag"].dag_id, context["run_id"]
    uri = artifacts.deployment_uri("alerts", dag_id, f"{artifacts.run_slug(run_id)}.json")
    url = report_link(dag_id, run_id)
    artifacts.write_json(uri, {"dag_id": dag_id, "run_id": run_id, "task_id": ti.task_id,
                               "reason": str(context.get("exception")), "report_url": url})
    callbacks = failure_callbacks(GATE_FAILED)
    if not callbacks:
        log.error("%s (no notifier configured); alert written to %s", event_message(
            f"{dag_id} {run_id}: {GATE_FAILED.what}", error=context.get("exception"), url=url),
            uri)
        return
    for notify in callbacks:
        notify(context)


with DAG(
    dag_id="train_distributed",
    description="Spark ETL, Ray DDP trials, evaluation and a gated model registration",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@daily", timezone="UTC"),
                                 assets=assets.FEATURES | assets.DRIFT),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10),
                  "execution_timeout": timedelta(hours=2), "on_failure_callback": NOTIFY},
    user_defined_macros={"ddp_args": ddp_args, "ddp_value": ddp_value,
                         "training_features": assets.training_features,
                         "best_trial_of": best_trial_of, "run_folder": run_folder},
    params={
        "profile": Param("ci-cpu", type=["null", "string"], enum=[None, "ci-cpu"],
                         description="Spec profile: ci-cpu for CPU-only machines, none on GPUs."),
        "rows": Param(5000, type="integer", minimum=1000, maximum=10_000_000),
        "steps": Param(300, type="integer", minimum=10, maximum=100_000),
        # The gate's thresholds are in gates/train_distributed.yaml; these override them for
        # one run (empty: the file's).
        "min_accuracy": Param(None, type=["null", "number"], minimum=0, maximum=1),
        "min_f1": Param(None, type=["null", "number"], minimum=0, maximum=1),
        "max_p50_ms": Param(None, type=["null", "number"], exclusiveMinimum=0),
        "max_p95_ms": Param(None, type=["null", "number"], exclusiveMinimum=0),
        "max_p99_ms": Param(None, type=["null", "number"], exclusiveMinimum=0),
        "min_throughput_rps": Param(None, type=["null", "number"], minimum=0),
        "max_error_rate": Param(None, type=["null", "number"], minimum=0, maximum=1),
    },
    tags=["ephemeral", "reference"],
) as dag:
    @task.branch
    def choose_features(triggering_asset_events: Any = None, ti: Any = None) -> list[str]:
        """The ETL for a timetable or manual run; for an Asset-triggered run, the newest
        event's features (pushed for training_features) and no ETL, no Spark cluster."""
        from airflow.sdk.exceptions import AirflowFailException

        try:  # a bad event fails the same on a retry
            event = assets.newest_training_event(triggering_asset_events)
        except assets.AssetEventError as err:
            raise AirflowFailException(str(err)) from None
        if event is None:
            return ["etl.create_spark", "train.create_ray"]
        log.info("training on the features of the %s event of %s: %s", event["asset"],
                 event["event_source"], event["artifact_uri"])
        ti.xcom_push(key="features", value=event)
        return ["train.create_ray"]

    features_choice = choose_features()

    with TaskGroup("etl"):
        # The ETL runs through spark-submit only: no Spark Connect server to start and pay for.
        create_spark = CreateClusterOperator(task_id="create_spark", spec="spark/etl@1",
                                             profile="{{ params.profile }}",
                                             overrides={"connect": False})
        build_features = EphemeralSparkSubmitOperator(
            task_id="build_features", cluster=create_spark.output,
            application=f"{JOBS}/etl_features.py",
            application_args=["--run", RUN, "--rows", "{{ params.rows }}"],
            inlets=[assets.RAW_EVENTS], outlets=[assets.RUN_FEATURES],
            post_execute=assets.publish_features(assets.RUN_FEATURES),
            delete_cluster_on_success=True)  # its only job: the cluster goes when it succeeds
        delete_spark = DeleteClusterOperator(task_id="delete_spark",
                                             setup_task_id="etl.create_spark",
                                             cluster=create_spark.output)
        create_spark >> build_features >> delete_spark.as_teardown(
            setups=create_spark, on_failure_fail_dagrun=True)

    with TaskGroup("train"):
        # After this run's ETL, or at once when choose_features skipped it.
        create_ray = CreateClusterOperator(task_id="create_ray", spec="ray/train-gpu@1",
                                           profile="{{ params.profile }}",
                                           trigger_rule="none_failed_min_one_success")
        trials = RayJobOperator.partial(
            task_id="trial", cluster=create_ray.output, working_dir=JOBS, pool=gpu_pool(),
            inlets=[assets.RUN_FEATURES, assets.FEATURES, assets.DRIFT],
            outlets=[assets.MODEL_CANDIDATE], post_execute=assets.publish_candidate,
        ).expand(entrypoint=[
            ["python", "train_ddp.py", "--run", f"{RUN}/trial-{name}",
             "--steps", "{{ params.steps }}", "--checkpoint-every", "100", *trial_argv(options),
             "--data-uri", FEATURES, *SCALING]
            for name, options in TRIALS])

        @task
        def check_gate(params: Any = None) -> None:
            """This run's threshold overrides, validated before any cluster is made."""
            from ephemeral.gate import with_overrides

            with_overrides(load_gate("train_distributed"), gate_overrides(params))

        @task
        def pick_best(results: list[dict[str, Any]], params: Any = None,
                      dag_run: Any = None, ti: Any = None) -> dict[str, Any]:
            from ephemeral import registry
            from ephemeral.settings import get_settings

            # What the trials trained on: this run's ETL of `rows` generated rows, or an
            # Asset event's features (then no ETL ran, and `rows` made nothing).
            event = ti.xcom_pull(task_ids="choose_features", key="features")
            data = {"features_uri": event["artifact_uri"]} if event else {"rows": params["rows"]}

            # Scheduled run ids are the same in every deployment sharing the tracking store:
            # the instance makes the trial's run name this deployment's.
            instance = get_settings().instance
            # Every trial in the tracking store: its options, metrics and model URI (the
            # mapped results come in map-index order, TRIALS' order). By index: iterating the
            # lazy sequence asks for one past its end, which Airflow logs as an error.
            results = [results[i] for i in range(len(results))]
            tracked = {}
            for (name, options), r in zip(TRIALS, results, strict=True):
                out = r["result"]
                tracked[r["job_id"]] = registry.log_trial(
                    experiment=MODEL, run_name=f"{instance}/{dag_run.run_id}/trial-{name}",
                    params={"steps": params["steps"], **data, **options},
                    metrics={k: v for k, v in out.items() if k in TRIAL_METRICS
                             and isinstance(v, int | float)},
                    artifact_uri=out["artifact_uri"],
                    tags={"dag_id": MODEL, "dag_run_id": dag_run.run_id, "trial": name,
                          "job_id": r["job_id"], "instance": instance})
            best = best_trial(results)
            return {**best, "trials": len(results), "tracking_run_id": tracked[best["job_id"]]}

        best = pick_best(trials.output)
        evaluate = RayJobOperator(
            task_id="evaluate", cluster=create_ray.output, working_dir=JOBS,
            entrypoint=["python", "evaluate.py", "--model-uri", MODEL_URI,
                        "--data-uri", VALIDATION])
        # Latency where the model would run: served by Ray Serve on this cluster, under the
        # gate file's bounded load; the job shuts Serve down before the teardown.
        serve_latency = RayJobOperator(
            task_id="serve_latency", cluster=create_ray.output, working_dir=JOBS,
            entrypoint=["python", "serve_latency.py", "--model-uri", MODEL_URI,
                        "--data-uri", VALIDATION, "--requests", str(GATE.load.requests),
                        "--concurrency", str(GATE.load.concurrency),
                        "--warmup", str(GATE.load.warmup)],
            delete_cluster_on_success=True)  # the cluster's last job
        delete_ray = DeleteClusterOperator(task_id="delete_ray", setup_task_id="train.create_ray",
                                           cluster=create_ray.output)
        trials >> evaluate >> serve_latency
        create_ray >> trials
        # A run's bad threshold overrides fail before any cluster, Spark's included.
        check_gate() >> features_choice
        serve_latency >> delete_ray.as_teardown(setups=create_ray, on_failure_fail_dagrun=True)
        # Bookkeeping and deploying after the cluster is gone: even dag.test, which runs one
        # task at a time in no set order, never keeps the cluster waiting on them. They wait
        # for the teardown to be done, not to succeed: a failed deletion fails the run (and
        # the reaper gets the cluster) but does not unmake a model that passed its gate.
        released = EmptyOperator(task_id="ray_released", trigger_rule="all_done")
        delete_ray >> released >> best
    build_features >> create_ray  # train on the features this run built
    # Spark goes before Ray starts: a runner that takes one task at a time (dag.test) would
    # otherwise keep the idle Spark cluster through Ray's whole start when it picks create_ray
    # first; with a scheduler, Ray starts a teardown (~1 s) later.
    delete_spark >> create_ray
    features_choice >> [create_spark, create_ray]

    with TaskGroup("deploy"):
        @task.branch
        def gate(evaluation: dict[str, Any], latency: dict[str, Any], params: Any = None,
                 ti: Any = None) -> str:
            """Every threshold against its number (each logged); the decision goes to XCom."""
            from ephemeral.gate import evaluate_gate, with_overrides

            chosen = with_overrides(load_gate("train_distributed"), gate_overrides(params))
            # Logs each number against its threshold.
            decision = evaluate_gate(chosen, {**evaluation["result"], **latency["result"]})
            ti.xcom_push(key="decision", value=decision.model_dump(mode="json"))
            return "deploy.register_model" if decision.passed else "deploy.gate_failed"

        @task(outlets=[assets.MODEL], post_execute=assets.publish_model)
        def register_model(best: dict[str, Any], evaluation: dict[str, Any],
                           latency: dict[str, Any], dag_run: Any = None,
                           ti: Any = None) -> dict[str, Any]:
            from ephemeral import registry
            from ephemeral.gate import GateDecision
            from ephemeral.jobs import artifacts

            # The effective thresholds, the run's overrides and every check, on the version,
            # in registration.json and in the model event: an override is never silent.
            gate_record = GateDecision.model_validate(
                ti.xcom_pull(task_ids="deploy.gate", key="decision")).record()
            features = assets.training_features(ti)
            # The registered version's source: a copy of the model under registry/, which
            # outlives the run's own artifacts; this deployment's and this run's, so no other
            # run (of this Airflow or another sharing the root) overwrites a registered model.
            model_dir = best["model_uri"].rsplit("/", 1)[0]
            target = artifacts.deployment_uri("registry", MODEL, artifacts.run_slug(dag_run.run_id))
            artifacts.copy(model_dir, f"{target}/model")
            measured = {**evaluation["result"], **latency["result"]}
            metrics = {k: float(measured[k]) for k in GATE_METRICS if measured.get(k) is not None}
            model_uri = f"{target}/model/model.pt"
            version = registry.register(
                MODEL, model_uri=model_uri, run_id=best.get("tracking_run_id"),
                metrics={**metrics, "loss": float(best["loss"])},
                tags={"dag_id": MODEL, "dag_run_id": dag_run.run_id, "source": best["model_uri"],
                      **gate_record,
                      # What drift_check compares new batches with, whichever version is champion.
                      "features_uri": features["artifact_uri"],
                      "validation_uri": features["validation_uri"]})
            previous = registry.promote(MODEL, version)
            log.info("registered %s version %s and made it the champion (was %s)", MODEL,
                     version, previous)
            record = {"model_uri": model_uri, "source": best["model_uri"], "name": MODEL,
                      "version": version, "previous_champion": previous,
                      "loss": best["loss"], **metrics, **gate_record}
            artifacts.write_json(f"{target}/registration.json", record)
            artifacts.write_json(artifacts.deployment_uri("registry", MODEL, "latest.json"), record)
            return record

        @task(on_failure_callback=[alert_gate_failed], retries=0)
        def gate_failed(ti: Any = None) -> None:
            from airflow.sdk.exceptions import AirflowFailException

            from ephemeral import registry
            from ephemeral.gate import GateDecision

            decision = GateDecision.model_validate(
                ti.xcom_pull(task_ids="deploy.gate", key="decision"))
            raise AirflowFailException(f"{decision.summary()}; the model was not registered, "
                                       f"the champion stays ({registry.champion(MODEL)})")

        gate_task = gate(evaluate.output, serve_latency.output)
        gate_task >> [register_model(best, evaluate.output, serve_latency.output), gate_failed()]
        released >> gate_task  # deploying needs no cluster: it waits for none either
