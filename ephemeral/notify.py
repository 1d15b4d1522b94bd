"""Failure notifications through the deployment's own notifier, with the run report's link.

``$EPHEMERAL_NOTIFIER`` names it by dotted path (``package.module.Name`` or
``package.module:Name``): an Airflow ``BaseNotifier`` subclass (e.g. the Slack provider's
``SlackNotifier``), made afresh for each notification with the keyword arguments in
``$EPHEMERAL_NOTIFIER_KWARGS`` (JSON: connection ids and message templates, never secrets), or
a plain callable taking the context. Unset: no notification (the failure is in the logs and
the UI as always).

Every notification's context carries ``ephemeral_event`` (``task_failed``, ``cluster_reaped``
or ``cluster_reap_failed``),
``ephemeral_report_url`` (the run's report) and ``ephemeral_message`` (one line for people), so a
notifier's templates can say ``{{ ephemeral_message }}``:

- ``failure_callbacks()`` is the reference DAGs' ``on_failure_callback`` (in ``default_args``):
  a failed gate, a failed teardown or any other failed task notifies.
- ``notify_reaped(handle, reason, error=None)`` is for the reaper: a leaked cluster it deleted
  notifies, with the report of the run that made it; one it could not delete, with the error.

This module imports no Airflow: the reaper runs outside it (CLI, CronJob).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ephemeral.backends.base import ClusterHandle
from ephemeral.settings import setting

log = logging.getLogger(__name__)

NOTIFIER_VAR = "EPHEMERAL_NOTIFIER"
KWARGS_VAR = "EPHEMERAL_NOTIFIER_KWARGS"


class NotifierError(ValueError):
    """The notifier setting is unusable: names the setting and the fix."""


def _load(path: str) -> Any:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise NotifierError(f"{NOTIFIER_VAR}={path!r}: expected a dotted path such as "
                            "'airflow.providers.slack.notifications.slack.SlackNotifier'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise NotifierError(f"{NOTIFIER_VAR}={path!r}: cannot import it: {err}") from err


def configured_notifier(env: Mapping[str, str] | None = None
                        ) -> Callable[[dict[str, Any]], None] | None:
    """A function that sends one notification with the configured notifier, or None when
    ``$EPHEMERAL_NOTIFIER`` is unset. Bad settings fail here, when a DAG is parsed."""
    path = setting("notifier", env)
    if not path:
        return None
    target = _load(path)
    try:
        kwargs = json.loads(setting("notifier_kwargs", env) or "{}")
    except ValueError as err:
        raise NotifierError(f"{KWARGS_VAR}: not JSON: {err}") from err
    if not isinstance(kwargs, dict):
        raise NotifierError(f"{KWARGS_VAR}: expected a JSON object of keyword arguments")
    if isinstance(target, type):
        if not callable(getattr(target, "notify", None)):
            raise NotifierError(f"{NOTIFIER_VAR}={path!r} is a class without notify(): name a "
                                "BaseNotifier subclass or a function")

        def send(context: dict[str, Any]) -> None:
            target(**kwargs)(context)  # afresh: a notifier renders its templates in place

        return send
    if not callable(target):
        raise NotifierError(f"{NOTIFIER_VAR}={path!r} is neither a notifier class nor callable")
    if kwargs:
        raise NotifierError(f"{KWARGS_VAR} is set but {path!r} is a function, not a class")
    return target  # type: ignore[no-any-return]


def _send(send: Callable[[dict[str, Any]], None], context: dict[str, Any]) -> None:
    try:
        send(context)
    except Exception:  # a failing notifier must not turn into another failure
        log.exception("the notifier %s failed", setting("notifier"))


def failure_callbacks() -> list[Callable[[Any], None]]:
    """``on_failure_callback`` for a DAG's default_args: [] when no notifier is configured."""
    send = configured_notifier()
    if send is None:
        return []

    def on_failure(context: Any) -> None:
        from ephemeral.report import report_url

        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        ti = context["ti"]
        url = report_url(dag_id, run_id)
        context["ephemeral_event"] = "task_failed"
        context["ephemeral_report_url"] = url
        context["ephemeral_message"] = (
            f"{dag_id} {run_id}: task {ti.task_id} failed ({context.get('exception')}); "
            f"run report: {url}")
        _send(send, context)

    return [on_failure]


def notify_reaped(handle: ClusterHandle, reason: str, error: Exception | None = None) -> None:
    """Tell the deployment that the reaper deleted ``handle``'s cluster, and why, with the
    report of the run that made it; with ``error``, that it could not delete it, so the leak
    still runs (and costs): the error's type and first line only. Does nothing when no
    notifier is configured; never raises."""
    try:
        send = configured_notifier()
    except NotifierError:
        log.exception("no notification for the reaped cluster %s", handle.name)
        return
    if send is None:
        return
    from ephemeral.report import report_url

    # From the annotations: a label may hold a long or unusual run id only hashed.
    dag_id, run_id = handle.run or (None, None)
    url = report_url(dag_id, run_id) if dag_id and run_id else None
    of = f"{handle.name} ({handle.spec_ref}) of {dag_id or '?'} {run_id or '?'}"
    where = f"; run report: {url}" if url else ""
    details: dict[str, Any] = {"cluster": handle.name, "reason": reason, "dag_id": dag_id,
                               "run_id": run_id}
    if error is None:
        _send(send, {"ephemeral_event": "cluster_reaped", "ephemeral_report_url": url,
                     "ephemeral_message": f"reaped leaked cluster {of}: {reason}{where}",
                     **details})
        return
    why = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"[:300]
    _send(send, {"ephemeral_event": "cluster_reap_failed", "ephemeral_report_url": url,
                 "ephemeral_message": f"could not delete leaked cluster {of}: {why}; it still "
                                      f"runs. Found: {reason}{where}",
                 "error": why, **details})
