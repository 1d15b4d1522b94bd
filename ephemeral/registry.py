"""The model registry: MLflow's tracking store and model registry, with a ``champion`` alias that
the gate moves on promotion and that ``rollback`` moves back.

The store is ``$MLFLOW_TRACKING_URI`` (a real MLflow server) when set, else an embedded SQLite
store under ``$EPHEMERAL_HOME/mlflow`` (no server). A serving system reads
``models:/NAME@champion``; serving itself is not ours.

"Previous" is the alias history, a stack kept as a tag of the registered model
(``ephemeral.champion_history``, JSON list of versions, oldest first): ``promote`` pushes the
champion it replaces, ``rollback`` pops. Rolling back twice therefore goes two promotions back, and
once the stack is empty ``rollback`` refuses, naming the model. A version rolled back from is not
pushed (a rollback is not a promotion), so rollbacks never ping-pong.

On a SQLite store (the embedded one) every write holds a file lock, so the trials of one run, the gate and a
rollback never interleave; against a server, run one promotion or rollback at a time (the DAGs
have ``max_active_runs=1``): one that finds, after writing, that another interleaved
(``_claim``/``_confirm``) fails naming the state instead of reporting success.

mlflow is imported lazily: the DAG processor and the CLI must not pay for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from ephemeral.errors import EphemeralError
from ephemeral.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
HISTORY_TAG = "ephemeral.champion_history"
ARTIFACT_TAG = "ephemeral.artifact_uri"
HISTORY_KEEP = 100  # promotions remembered; a tag value holds at most 5000 characters
WRITER_TAG = "ephemeral.writer"  # the token of the promotion or rollback writing (_claim)
SECRET_ENV = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")


class RegistryError(EphemeralError):
    """The model registry refused or could not do something; the message names the model."""

    def __init__(self, message: str, *, retryable: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.refused = refused  # bad input (a name MLflow or a search filter cannot take)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the embedded store under ``$EPHEMERAL_HOME``."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{_embedded_dir() / 'mlflow.db'}"


def display_uri(uri: str) -> str:
    """``uri`` with its user-info (a password, or a token as the user name) and a signed URL's
    secret parameters (Azure's ``sig``, S3's ``X-Amz-Signature``, ...) replaced by ``***``: the
    form that may be logged or shown (the project's one rule, ``masked_uri``)."""
    from ephemeral.specs.pip_credentials import masked_uri

    return masked_uri(uri)


def _split(uri: str) -> SplitResult | None:
    try:
        return urlsplit(uri)
    except ValueError:  # not a URI (a bracket that is no IPv6 address): no password in it
        return None


def log_trial(*, experiment: str, run_name: str, params: Mapping[str, Any],
              metrics: Mapping[str, float], artifact_uri: str,
              tags: Mapping[str, str] | None = None) -> str:
    """Log one trial as a finished MLflow run and return its id.

    Idempotent per (experiment, run_name): when a finished run of that name exists (a task
    retry), its id is returned and nothing is logged; an unfinished one (a try that died half
    way) is deleted and logged afresh. Only a run of the same trial is reused or deleted: one
    of that name with another artifact or other params (another deployment sharing the store,
    whose scheduled run ids are the same) is refused, naming both; put the deployment's
    instance in ``run_name``."""
    from mlflow.entities import Metric, Param, RunStatus

    _no_password(artifact_uri, "artifact_uri")
    _plain(run_name, "run_name")
    client = _client()
    with _writing(), _mlflow_errors(f"experiment {experiment!r}, run {run_name!r}"):
        experiment_id = _experiment_id(client, experiment)
        for run in client.search_runs([experiment_id], f"attributes.run_name = '{run_name}'",
                                      order_by=["attributes.start_time DESC"]):
            finished = run.info.status == RunStatus.to_string(RunStatus.FINISHED)
            _same_trial(run, run_name, artifact_uri, params if finished else None)
            if run.info.status == RunStatus.to_string(RunStatus.FINISHED):
                log.info("trial %s of %s was logged before as run %s", run_name, experiment,
                         run.info.run_id)
                return str(run.info.run_id)
            client.delete_run(run.info.run_id)  # a dead try's partial run
        run_tags = {**_scrub(tags or {}), ARTIFACT_TAG: artifact_uri}
        run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
        run_id = str(run.info.run_id)
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in _scrub(params).items()])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    log.info("logged trial %s of %s as run %s (%s)", run_name, experiment, run_id,
             display_uri(tracking_uri()))
    return run_id


def register(name: str, *, model_uri: str, run_id: str | None = None,
             metrics: Mapping[str, float] = MappingProxyType({}),
             tags: Mapping[str, str] | None = None) -> str:
    """Register ``model_uri`` (the artifact URI the version points to) as a new version of
    ``name`` and return the version. The same URI from the same run registered again (a task
    retry) returns the version it got the first time. ``metrics`` become ``metric.KEY`` tags of
    the version (model versions have no metrics of their own)."""
    _no_password(model_uri, "model_uri")
    _plain(name, "name")
    version_tags = {**_scrub(tags or {}), **{f"metric.{k}": repr(float(v))
                                             for k, v in metrics.items()}}
    client = _client()
    with _writing(), _mlflow_errors(f"model {name!r}"):
        _ensure_model(client, name)
        for mv in _versions(client, name):
            if mv.source == model_uri and (mv.run_id or None) == run_id:
                log.info("%s is version %s of %s already", model_uri, mv.version, name)
                return str(mv.version)
        mv = client.create_model_version(name, model_uri, run_id=run_id, tags=version_tags)
    log.info("registered %s as version %s of %s", model_uri, mv.version, name)
    return str(mv.version)


def promote(name: str, version: str) -> str | None:
    """Move the ``champion`` alias of ``name`` to ``version``; return the champion before (None
    when there was none; ``version`` itself when it already was, and then nothing changes)."""
    version = str(version)
    client = _client()
    with _writing(), _mlflow_errors(f"model {name!r}"):
        token = _claim(client, name)
        model = _model(client, name)
        client.get_model_version(name, version)  # refuses an unknown version by name
        previous = _champion_of(model)
        if previous == version:
            return str(previous)
        history = _history(model) + ([] if previous is None else [str(previous)])
        if previous is not None:
            _set_history(client, name, history)
        client.set_registered_model_alias(name, CHAMPION, version)
        _confirm(client, name, token, version, history[-HISTORY_KEEP:],
                 f"promoting version {version} (champion was {previous})")
        client.set_model_version_tag(name, version, "ephemeral.promoted_at", _now())
    log.info("%s: champion %s -> %s", name, previous, version)
    return None if previous is None else str(previous)


def rollback(name: str) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion of ``name``: (from_version, to_version).

    Versions deleted since they were champion are skipped. RegistryError, naming the model,
    when there is no champion or nothing to go back to."""
    client = _existing_store_client(name)
    with _writing(), _mlflow_errors(f"model {name!r}"):
        token = _claim(client, name)
        model = _model(client, name)
        current = _champion_of(model)
        if current is None:
            raise RegistryError(f"model {name!r} has no {CHAMPION} to roll back from")
        history = _history(model)
        while history:
            target = history.pop()
            if target != current and _version_exists(client, name, target):
                break
        else:
            raise RegistryError(
                f"model {name!r} has no previous {CHAMPION} to roll back to: version "
                f"{current} is the first one promoted (or every earlier one was rolled back "
                "or deleted)")
        client.set_registered_model_alias(name, CHAMPION, target)
        _set_history(client, name, history)
        _confirm(client, name, token, target, history[-HISTORY_KEEP:],
                 f"rolling back from version {current} to {target}")
        client.set_model_version_tag(name, str(current), "ephemeral.rolled_back_at", _now())
    log.info("%s: rolled back champion %s -> %s", name, current, target)
    return str(current), target


def champion(name: str) -> str | None:
    """The version the ``champion`` alias of ``name`` points to, None when none (or no model)."""
    client = _client()
    with _mlflow_errors(f"model {name!r}"):
        model = _find_model(client, name)
    return None if model is None else _champion_of(model)


def champion_tags(name: str) -> dict[str, str]:
    """The tags of the version ``champion`` points to now ({} when none): what it was trained
    on follows a promotion and a rollback alike."""
    client = _client()
    with _mlflow_errors(f"model {name!r}"):
        model = _find_model(client, name)
        version = None if model is None else _champion_of(model)
        if version is None:
            return {}
        return dict(client.get_model_version(name, version).tags)


def describe(name: str) -> dict[str, Any]:
    """What ``ephemeral model show`` prints: the versions (newest first), the champion, the
    version a rollback would go to, and the alias history."""
    client = _existing_store_client(name)
    with _mlflow_errors(f"model {name!r}"):
        model = _model(client, name)
        versions = _versions(client, name)
    current = _champion_of(model)
    history = _history(model)
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    alive = {str(v.version) for v in versions}
    previous = next((v for v in reversed(history) if v != current and v in alive), None)
    return {
        "name": name,
        "tracking_uri": display_uri(tracking_uri()),
        "champion": current,
        "previous": previous,
        "history": history,
        "serving_uri": f"models:/{name}@{CHAMPION}",
        "versions": [{
            "version": str(v.version),
            "source": v.source,
            "run_id": v.run_id or None,
            "created": _iso(v.creation_timestamp),
            "aliases": sorted(aliases.get(str(v.version), [])),
            "tags": dict(v.tags),
        } for v in versions],
    }


# --- the store --------------------------------------------------------------------------------

def _embedded_dir() -> Path:
    return get_settings().home / "mlflow"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store (the embedded one, or one named by
    MLFLOW_TRACKING_URI), None for a server."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    """One writer at a time on a SQLite store (its writes and the history tag's
    read-modify-write), through a lock file beside the database; a server serializes its own
    writes, and promotions and rollbacks run one at a time there."""
    db = _sqlite_file(tracking_uri())
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _existing_store_client(name: str) -> MlflowClient:
    """The client for reading or moving model ``name``, its name checked first. Not a store
    made for it: without the SQLite store's file there is no model (``ephemeral model show``
    on a new machine leaves nothing behind)."""
    _plain(name, "name")
    db = _sqlite_file(_registry_uri())
    if db is not None and not db.exists():
        raise RegistryError(_no_model(name))
    return _client()


def _registry_uri() -> str:
    """Where the models are: ``$MLFLOW_REGISTRY_URI``, else the tracking store."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def _client() -> MlflowClient:
    return _client_for(tracking_uri(), _registry_uri())


@functools.lru_cache(maxsize=8)
def _client_for(uri: str, registry: str) -> MlflowClient:
    from mlflow import MlflowClient

    if _sqlite_file(uri) is None:
        return MlflowClient(tracking_uri=uri, registry_uri=registry)
    # Making the client creates or migrates the database: two processes (the mapped trials of a
    # first run) must not both do it.
    with _writing(), _mlflow_errors("the SQLite store"):
        client = MlflowClient(tracking_uri=uri, registry_uri=registry)
        client.search_registered_models(max_results=1)  # the registry's store too
    return client


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """MLflow's and the network's errors as RegistryError naming ``what`` and the store. A
    message that held a secret (a URL with the server's password) is masked, and then the
    original is not chained: task logs print chained tracebacks."""
    from mlflow.exceptions import MlflowException

    where = display_uri(tracking_uri())
    try:
        yield
    except RegistryError:
        raise
    except MlflowException as e:
        code = getattr(e, "error_code", "")
        message = _mask(str(e.message))
        error = RegistryError(f"{what}: {message} (MLflow {code} at {where})",
                              retryable=code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR",
                                                 "REQUEST_LIMIT_EXCEEDED"),
                              refused=code == "INVALID_PARAMETER_VALUE")
        raise error from (e if message == str(e.message) else None)
    except OSError as e:  # a server that cannot be reached, a full disk
        message = _mask(str(e))
        error = RegistryError(f"{what}: {message} (at {where})", retryable=True)
        raise error from (e if message == str(e) else None)


def _already_exists(e: Exception) -> bool:
    return getattr(e, "error_code", "") == "RESOURCE_ALREADY_EXISTS"


def _experiment_id(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    db = _sqlite_file(tracking_uri())  # else SQLite's default artifact root: ./mlruns of the cwd
    location = None if db is None else (db.parent / "artifacts").as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as e:  # created by a concurrent writer against a server
        if not _already_exists(e) or (found := client.get_experiment_by_name(name)) is None:
            raise
        return str(found.experiment_id)


def _find_model(client: MlflowClient, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _model(client: MlflowClient, name: str) -> Any:
    model = _find_model(client, name)
    if model is None:
        raise RegistryError(_no_model(name))
    return model


def _no_model(name: str) -> str:
    return (f"no registered model {name!r} at {display_uri(tracking_uri())} "
            "(MLFLOW_TRACKING_URI picks the store)")


def _ensure_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    if _find_model(client, name) is not None:
        return
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if not _already_exists(e):
            raise


def _versions(client: MlflowClient, name: str) -> list[Any]:
    _plain(name, "name")
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def _version_exists(client: MlflowClient, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException as err:
        # Only "no such version" means deleted: an unreachable server must not make a rollback
        # drop a valid earlier champion from the history.
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _champion_of(model: Any) -> str | None:
    version = model.aliases.get(CHAMPION)  # an int from some stores, a str from others
    return None if version is None else str(version)


def _history(model: Any) -> list[str]:
    raw = model.tags.get(HISTORY_TAG)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"model {model.name!r}: tag {HISTORY_TAG} is not a JSON list of "
                            f"versions ({raw[:80]!r}); fix or delete the tag") from e
    return [str(v) for v in value]


def _same_trial(run: Any, run_name: str, artifact_uri: str,
                params: Mapping[str, Any] | None) -> None:
    """Refuse to reuse (or delete) a tracking run of ``run_name`` that logged another trial:
    another artifact, or (``params`` given: a finished run) other params. A try that died
    before its params were logged is judged by its artifact tag, set when it was created."""
    theirs = run.data.tags.get(ARTIFACT_TAG)
    ours = {k: str(v) for k, v in _scrub(params or {}).items()}
    differ = [] if params is None else [k for k in sorted(set(ours) | set(run.data.params))
                                        if ours.get(k) != run.data.params.get(k)]
    if theirs == artifact_uri and not differ:
        return
    what = (f"artifact {display_uri(theirs or '(none)')}, not {display_uri(artifact_uri)}"
            if theirs != artifact_uri else f"other params ({', '.join(differ)})")
    raise RegistryError(f"run {run_name!r} ({run.info.run_id}) in the tracking store logged "
                        f"another trial ({what}): another deployment sharing the store, whose "
                        "scheduled run ids are the same, or another DAG run of that id; put "
                        "the deployment's instance in the run name (train_distributed does)")


def _claim(client: MlflowClient, name: str) -> str:
    """Mark ``name`` as being changed by this call (a fresh token in a tag of the model) before
    reading its alias and history. A server has no compare-and-set: ``_confirm`` finds out
    whether another promotion or rollback wrote in between."""
    import uuid

    token = uuid.uuid4().hex
    _model(client, name)  # refuses an unknown model by name
    client.set_registered_model_tag(name, WRITER_TAG, token)
    return token


def _confirm(client: MlflowClient, name: str, token: str, champion: str,
             history: list[str], doing: str) -> None:
    """After writing: the alias, the history and the writer's token must still be what this
    call wrote, else another promotion or rollback interleaved (on a server, where no lock
    serialises them) and one of them was lost: fail naming the state, which the user checks
    (``ephemeral model show``) and repairs (promote or roll back again)."""
    model = _model(client, name)
    now = (model.tags.get(WRITER_TAG), _champion_of(model), _history(model))
    if now != (token, champion, history):
        raise RegistryError(
            f"model {name!r}: another promotion or rollback changed it while {doing} (champion "
            f"now {now[1]}, history {now[2]}): one of the two changes may be lost; check with "
            "`ephemeral model show` and promote or roll back again, one at a time")


def _set_history(client: MlflowClient, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))


# --- secrets ----------------------------------------------------------------------------------

def _plain(value: str, field: str) -> None:
    """Names go into MLflow's search filters between single quotes."""
    if not value or "'" in value or "\\" in value:
        raise RegistryError(f"{field} {value!r} must be non-empty, without quotes or "
                            "backslashes", refused=True)


def _no_password(uri: str, field: str) -> None:
    """Refuse a URI with credentials (``credentials_problem``: user-info, a token as the user
    name, a signed URL's secret parameter): the registry stores it for everyone to read."""
    from ephemeral.specs.pip_credentials import credentials_problem

    problem = credentials_problem(uri, "give the credentials through the environment its "
                                       "filesystem reads instead (the URI is stored in the "
                                       "registry for everyone to read)")
    if problem is not None:
        raise RegistryError(f"{field}: {problem}")


def _secrets() -> list[str]:
    """What must never be stored or shown: MLflow's secret variables and the stores' passwords."""
    found = [v for k in SECRET_ENV if (v := os.environ.get(k))]
    for uri in (tracking_uri(), os.environ.get("MLFLOW_REGISTRY_URI") or ""):
        parts = _split(uri)
        if parts is not None and parts.password:
            found.append(parts.password)
    return found


def _mask(text: str) -> str:
    """``text`` with the secrets taken out, and any URL's user-info (a token as the user name,
    ``https://TOKEN@mlflow.example.com``, quoted in MLflow's errors) masked by the one rule."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return display_uri(text)


def _scrub(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values with URI passwords and secrets (_secrets) masked."""
    return {k: _mask(display_uri(v)) if isinstance(v, str) else v for k, v in values.items()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(millis / 1000))
