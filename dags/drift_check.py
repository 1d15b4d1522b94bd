"""drift_check: does the newest data batch still look like what the current model was trained
on? If not, emit the `feature_drift` Asset event that starts train_distributed on that batch.

    measure (PSI per feature, report artifact) -> drifted? -> signal_retraining (outlet DRIFT)

- The reference, "the features the current model was trained on", is the champion version's
  ``features_uri`` tag in the registry (so a rollback moves it back too), else the newest
  `registered_model` event's (ephemeral.assets.MODEL, emitted by train_distributed's
  registration). With no model registered yet there is nothing to compare against: the run says
  so and ends, its tasks skipped.
- The batch is the ``batch_uri`` param, else the newest batch under ``<artifact root>/batches/``
  in the feature ETL's layout (``<id>/features/train`` and ``validation``: ``etl_features.py
  --run batches/<id> [--drift 1.0]`` writes one).
- Thresholds: gates/drift_check.yaml (versioned, validated; the report records its version).
  Any feature whose PSI is above ``psi_threshold`` is drift.
- The report (every feature's PSI, bins and counts, the decision) is a JSON artifact under
  ``<artifact root>/<instance>/drift_check/<run>/report.json`` (``<run>``: the run id as a path
  segment, ``artifacts.run_slug``), written whatever the decision.
- One retraining per drifted batch: a batch already signalled (a previous `feature_drift` event
  names it) or already the model's training data is reported but not signalled again, so an
  hourly check does not queue a GPU run an hour while the retraining runs.
- PSI runs in this task, not on a cluster: see ephemeral.drift for the size (in_task_max_bytes)
  above which it would belong on an ephemeral Spark cluster.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, Param, task

from ephemeral.assets import DRIFT, MODEL
from ephemeral.notify import failure_callbacks

MODEL_NAME = "train_distributed"  # the registered model whose champion the batches are checked for

with DAG(
    dag_id="drift_check",
    description="PSI of the newest batch against the current model's training features",
    schedule=CronTriggerTimetable("30 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30),
                  "execution_timeout": timedelta(minutes=30),
                  "on_failure_callback": failure_callbacks()},
    params={
        "batch_uri": Param(None, type=["null", "string"],
                           description="Batch to check (its train/ split or the folder holding "
                                       "train/ and validation/); none: the newest under "
                                       "<artifact root>/batches/."),
        "config": Param(None, type=["null", "string"],
                        description="Drift configuration file; none: gates/drift_check.yaml."),
    },
    tags=["ephemeral", "monitoring"],
) as dag:

    @task(inlets=[MODEL, DRIFT])
    def measure(params: Any = None, inlet_events: Any = None,
                dag_run: Any = None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from ephemeral import drift as drift_check
        from ephemeral.assets import artifact_uri_problem
        from ephemeral.drift import DriftConfigError, DriftInputError, compare, load_config
        from ephemeral.jobs import artifacts
        from ephemeral.registry import champion_tags
        from ephemeral.specs.pip_credentials import masked_uri

        try:  # a bad file fails here, naming the field; no retry would fix it
            config = load_config(params.get("config"))
        except DriftConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        models = list(inlet_events[MODEL])
        if not models:
            raise AirflowSkipException("no model has been registered yet (no registered_model "
                                       "event): there is nothing to compare a batch against")
        model = models[-1]
        # The champion's own features, so a rollback moves the reference back with it; the
        # newest registration's when the champion does not say (registered before this tag).
        reference = (champion_tags(MODEL_NAME).get("features_uri")
                     or (model.extra or {}).get("features_uri"))
        if not reference:
            raise AirflowSkipException(f"the newest registered_model event ({model.timestamp}) "
                                       "does not say which features it was trained on")
        # A form's batch_uri becomes a DRIFT event's features_uri: the events' rule (under the
        # artifact root, no credentials, exists), before it is read, logged or pushed.
        if (given := params.get("batch_uri")) is not None and (
                problem := artifact_uri_problem(given)) is not None:
            raise AirflowFailException(f"param batch_uri: {problem}")
        try:
            batch = drift_check.batch_splits(given)
            if batch is None:
                raise AirflowSkipException(f"no batch under {artifacts.run_uri('batches')}: "
                                           "nothing new to check")
            report = compare(reference, batch["train"], config)
        except DriftInputError as exc:
            raise AirflowFailException(str(exc)) from None
        report["decision"] = drift_check.decide(report, reference, batch,
                                                list(inlet_events[DRIFT]))
        report["model_event"] = {"timestamp": model.timestamp.isoformat(),
                                 "source": f"{model.source_dag_id}/{model.source_run_id}"}
        uri = artifacts.deployment_uri("drift_check", artifacts.run_slug(dag_run.run_id),
                                       "report.json")
        artifacts.write_json(uri, report)
        print(drift_check.summary_line(report) + f"; report {uri}")
        return {"report_uri": uri, "signal": report["decision"]["signal"],
                "why": report["decision"]["why"], "max_psi": report["max_psi"],
                "max_feature": report["max_feature"], "threshold": report["threshold"],
                "features_uri": batch["train"], "validation_uri": batch["validation"],
                "reference_uri": masked_uri(reference)}

    @task.short_circuit
    def drifted(summary: dict[str, Any]) -> bool:
        print(f"{'signal' if summary['signal'] else 'no signal'}: {summary['why']}")
        return bool(summary["signal"])

    @task(outlets=[DRIFT])
    def signal_retraining(summary: dict[str, Any], outlet_events: Any = None) -> dict[str, Any]:
        """Only reached on drift: its success is the DRIFT event train_distributed waits on."""
        extra = {k: summary[k] for k in ("features_uri", "validation_uri", "report_uri",
                                         "max_psi", "max_feature", "threshold",
                                         "reference_uri")}
        outlet_events[DRIFT].extra = extra
        return extra

    summary = measure()
    drifted(summary) >> signal_retraining(summary)
