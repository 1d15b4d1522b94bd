"""The Airflow Assets of the continuous-training loop, defined in one place.

An Asset names a logical dataset; the concrete artifact URI of each version travels in the
event's ``extra`` (``features_uri``, ``validation_uri``, ``model_uri``), so the Asset's own URI
stays the same whatever the artifact root of the deployment. The ``x-ephemeral`` scheme tells
Airflow to skip URI validation (the ``x-`` prefix is Airflow's convention for custom schemes).

Which DAG may emit and which may be scheduled on each (``tests/airflow/test_assets.py`` checks
that no DAG is scheduled on an Asset it emits, nor on one emitted downstream of itself):

- ``RAW_EVENTS``: raw data the feature ETL reads. Lineage only.
- ``FEATURES``: a training dataset published by the ``feature_etl`` DAG. ``train_distributed``
  is scheduled on it.
- ``RUN_FEATURES``: the features a ``train_distributed`` run builds for itself (timetable or
  manual runs). Lineage only: scheduling on it would make the DAG trigger itself.
- ``DRIFT``: emitted by ``drift_check`` when a batch drifted past its threshold; the event
  carries the batch's features, so the retraining run trains on them. ``train_distributed`` is
  scheduled on it.
- ``MODEL_CANDIDATE``: a trial's checkpoint. Lineage only.
- ``MODEL``: a registered model, with the features it was trained on in the event: what
  ``drift_check`` compares new batches against.

Parsing this module imports nothing heavy: the DAG processor imports it with every DAG file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import Asset

RAW_EVENTS = Asset(name="raw_events", uri="x-ephemeral://data/raw-events", group="data")
FEATURES = Asset(name="training_features", uri="x-ephemeral://features/training",
                 group="features")
RUN_FEATURES = Asset(name="train_distributed_run_features",
                     uri="x-ephemeral://features/train_distributed-runs", group="features")
DRIFT = Asset(name="feature_drift", uri="x-ephemeral://monitoring/feature-drift",
              group="monitoring")
MODEL_CANDIDATE = Asset(name="model_candidate",
                        uri="x-ephemeral://models/train_distributed/candidates", group="model")
MODEL = Asset(name="registered_model", uri="x-ephemeral://models/train_distributed/registered",
              group="model")

# The Assets whose events start a training run, and what each event must carry for it.
TRAINING_TRIGGERS = (FEATURES, DRIFT)
EVENT_KEYS = ("features_uri", "validation_uri")


class AssetEventError(ValueError):
    """An Asset event lacks what its consumer needs, or carries what it must not (its consumer
    fails without a retry: the same event fails the same)."""


def artifact_uri_problem(uri: Any) -> str | None:
    """Why ``uri``, read from an Asset event (anyone with the REST API can post one) or a
    form, is refused as data to train or check on, or None: it must be a URI with the artifact
    root's scheme and location, below the root (no ``..``), with no credentials
    (``credentials_problem``), naming an artifact that exists. Checked where it is read,
    before any cluster exists."""
    from urllib.parse import unquote, urlsplit

    from ephemeral.jobs import artifacts
    from ephemeral.specs.pip_credentials import credentials_problem, masked_uri

    if not isinstance(uri, str) or not uri:
        return f"{uri!r} is not a URI"
    if (problem := credentials_problem(uri, "publish artifacts under the artifact root, whose "
                                            "store's credentials come from the environment")):
        return problem
    root = artifacts.root().rstrip("/")
    given, base = urlsplit(uri), urlsplit(root)
    # Judged as the readers decode it (pyarrow reads file:///r/%2e%2e/x as /r/../x).
    path = unquote(given.path)
    segments = path.split("/")
    if (given.scheme, given.netloc) != (base.scheme, base.netloc) or given.query \
            or given.fragment or ".." in segments or "." in segments or "\\" in path \
            or not path.startswith(unquote(base.path).rstrip("/") + "/"):
        return (f"{masked_uri(uri)!r} is not under the artifact root {masked_uri(root)!r}: "
                "training data must be an artifact of this deployment's store (the feature "
                "ETL's or a batch's output), with the root's scheme and no '..'")
    try:
        found = artifacts.exists(uri)
    except Exception as exc:  # noqa: BLE001 - a bad URI's error is the refusal's reason
        return f"{masked_uri(uri)!r} cannot be read ({type(exc).__name__}: {exc})"
    if not found:
        return f"{masked_uri(uri)!r} does not exist: the event names no artifact"
    return None


def features_extra(result: Mapping[str, Any], **more: Any) -> dict[str, Any]:
    """The ``extra`` of a features event, from the feature ETL job's result."""
    body = result.get("result", result)
    extra = {"features_uri": body["artifact_uri"], "validation_uri": body["validation_uri"],
             "rows": body.get("rows"), "validation_rows": body.get("validation_rows")}
    return extra | more


def publish_features(asset: Asset) -> Any:
    """A ``post_execute`` hook for the ETL task: the event of ``asset`` carries the URIs the job
    wrote (set before Airflow records the task's outlet events)."""
    def hook(context: Any, result: Any) -> None:
        ti = context["ti"]
        context["outlet_events"][asset].extra = features_extra(
            result, source=f"{ti.dag_id}/{ti.run_id}")
    return hook


def newest_training_event(triggering_asset_events: Any) -> dict[str, Any] | None:
    """The features a run triggered by Asset events trains on: those of the newest event of
    FEATURES or DRIFT (a run consumes every event queued since the previous one: training once
    on the newest is what a GPU budget wants). None for a run not triggered by those Assets.
    Its URIs are checked here (``artifact_uri_problem``), before any cluster exists."""
    events: list[Any] = []
    for asset in TRAINING_TRIGGERS:
        try:
            events += [(e, asset) for e in (triggering_asset_events or {})[asset]]
        except KeyError:
            continue
    if not events:
        return None
    event, asset = max(events, key=lambda pair: pair[0].timestamp)
    extra = dict(event.extra or {})
    missing = [k for k in EVENT_KEYS if not extra.get(k)]
    if missing:
        raise AssetEventError(
            f"the {asset.name} event of {event.source_dag_id}/{event.source_run_id} has no "
            f"{', '.join(missing)} in its extra: the emitting task must set them "
            "(ephemeral.assets.features_extra)")
    for key in EVENT_KEYS:
        if (problem := artifact_uri_problem(extra[key])) is not None:
            raise AssetEventError(f"the {asset.name} event of {event.source_dag_id}/"
                                  f"{event.source_run_id} ({event.timestamp.isoformat()}) is "
                                  f"refused: its extra's {key}: {problem}")
    return {"artifact_uri": extra["features_uri"], "validation_uri": extra["validation_uri"],
            "asset": asset.name, "event_source": f"{event.source_dag_id}/{event.source_run_id}",
            "event_timestamp": event.timestamp.isoformat()}


def training_features(ti: Any) -> dict[str, Any]:
    """The features this train_distributed run trains on: those its own ETL built, else those
    of the Asset event that triggered it (pushed by ``choose_features``)."""
    built = ti.xcom_pull(task_ids="etl.build_features")
    if built:
        result = built.get("result") or {}
        missing = [k for k in ("artifact_uri", "validation_uri") if not result.get(k)]
        if missing:
            raise AssetEventError(f"etl.build_features succeeded but its result line has no "
                                  f"{' or '.join(missing)} (it had {sorted(result)}): the ETL "
                                  "job must emit both URIs")
        return {"artifact_uri": result["artifact_uri"],
                "validation_uri": result["validation_uri"], "asset": RUN_FEATURES.name}
    chosen = ti.xcom_pull(task_ids="choose_features", key="features")
    if not chosen:
        raise AssetEventError("this run has neither built features (etl.build_features) nor "
                              "been triggered by a features or drift event")
    return dict(chosen)


def publish_model(context: Any, result: Any) -> None:
    """``post_execute`` hook of the registration: the MODEL event carries the registration
    record and the features the model was trained on (what drift_check compares against)."""
    features = training_features(context["ti"])
    context["outlet_events"][MODEL].extra = {
        **{k: v for k, v in dict(result or {}).items() if isinstance(v, str | int | float)},
        "features_uri": features["artifact_uri"], "validation_uri": features["validation_uri"]}


def publish_candidate(context: Any, result: Any) -> None:
    """``post_execute`` hook of a trial: its checkpoint's URI in the MODEL_CANDIDATE event."""
    body = (result or {}).get("result") or {}
    context["outlet_events"][MODEL_CANDIDATE].extra = {
        "model_uri": body.get("artifact_uri"), "job_id": (result or {}).get("job_id")}


def scheduled_on(dag: Any) -> set[str]:
    """Names of the Assets a DAG's schedule depends on (empty for a time-only schedule)."""
    condition = getattr(dag.timetable, "asset_condition", None)
    return {a.name for a in _leaves(condition)} if condition is not None else set()


def _leaves(condition: Any) -> Iterable[Asset]:
    if isinstance(condition, Asset):
        yield condition
    for child in getattr(condition, "objects", ()) or ():
        yield from _leaves(child)


def emitted_by(dag: Any) -> set[str]:
    """Names of the Assets any task of a DAG declares as an outlet."""
    return {o.name for t in dag.tasks for o in (t.outlets or []) if isinstance(o, Asset)}
