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

Every message is built by one rule (``event_message``): an error appears as its type and first
line, capped and masked by the rule the submit boundary refuses secrets with
(``ephemeral.specs.models.masked_secrets``): a failed job's error carries its log's tail.

A notifier never stops what notifies: one that cannot be loaded (not installed, a typo, a module
that fails at import) is logged, and each notification it would have sent logs ``notifier
unusable: ...`` instead, so a DAG still imports and its teardowns still run; a notification that
fails is logged; one that has not finished after ``SEND_TIMEOUT_S`` is left behind (a daemon
thread). Check the setting with ``configured_notifier()``, which raises on a bad one
(``python -c 'from ephemeral.notify import configured_notifier; configured_notifier()'``).

This module imports no Airflow: the reaper runs outside it (CLI, CronJob).
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ephemeral.backends.base import ClusterHandle
from ephemeral.settings import lookup, setting, unused_setting

log = logging.getLogger(__name__)

NOTIFIER_VAR = "EPHEMERAL_NOTIFIER"
KWARGS_VAR = "EPHEMERAL_NOTIFIER_KWARGS"
SEND_TIMEOUT_S = 30.0
"""How long one notification may take before it is left behind, so a hung notifier holds
neither the reaper nor a failure callback."""
ERROR_CHARS = 300


class NotifierError(ValueError):
    """The notifier setting is unusable: names the setting and the fix."""


def _load(path: str, where: str) -> Any:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise NotifierError(f"{where}={path!r}: expected a dotted path such as "
                            "'airflow.providers.slack.notifications.slack.SlackNotifier'")
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as err:  # any module may fail at import (a missing env var)
        raise NotifierError(f"{where}={path!r}: cannot import it: "
                            f"{error_summary(err)}") from err


def configured_notifier(env: Mapping[str, str] | None = None
                        ) -> Callable[[dict[str, Any]], None] | None:
    """A function that sends one notification with the configured notifier, or None when
    ``$EPHEMERAL_NOTIFIER`` is unset. A bad setting raises ``NotifierError`` naming it: the
    deployment's check of the setting (the DAGs and the reaper use ``_notifier``, which
    logs it instead)."""
    path, where = lookup("notifier", env)  # named as it was set: a variable, or airflow.cfg
    if not path:
        if unused := unused_setting("notifier_kwargs", "no notifier is set", env):
            log.warning("%s; nothing is notified", unused)
        return None
    target = _load(path, where)
    text, kwargs_where = lookup("notifier_kwargs", env)
    try:
        kwargs = json.loads(text or "{}")
    except ValueError as err:
        raise NotifierError(f"{kwargs_where}: not JSON: {err}") from err
    if not isinstance(kwargs, dict):
        raise NotifierError(f"{kwargs_where}: expected a JSON object of keyword arguments")
    if isinstance(target, type):
        if not callable(getattr(target, "notify", None)):
            raise NotifierError(f"{where}={path!r} is a class without notify(): name a "
                                "BaseNotifier subclass or a function")

        def send(context: dict[str, Any]) -> None:
            target(**kwargs)(context)  # afresh: a notifier renders its templates in place

        return send
    if not callable(target):
        raise NotifierError(f"{where}={path!r} is neither a notifier class nor callable")
    if kwargs:
        raise NotifierError(f"{kwargs_where} is set but {path!r} is a function, not a class")
    return target  # type: ignore[no-any-return]


def error_summary(error: object) -> str:
    """An error as notifications and their logs show it: its type and first line, capped at
    ``ERROR_CHARS``, credentials masked. A job's error carries its log's tail, which may
    print a secret: never its whole text."""
    from ephemeral.specs.models import masked_secrets

    first = (str(error).splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}" if isinstance(error, BaseException) else first
    text = masked_secrets(text)
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 3] + "..."


def event_message(what: str, *, error: object = None, url: str | None = None) -> str:
    """The one message of every notification: what happened, the error (``error_summary``),
    the run report's link; masked as a whole (a run id or a reason may hold a URL)."""
    from ephemeral.specs.models import masked_secrets

    because = f" ({error_summary(error)})" if error is not None else ""
    where = f"; run report: {url}" if url else ""
    return masked_secrets(f"{what}{because}{where}")


def _bounded(call: Callable[[], None], what: str) -> None:
    """Run ``call`` in a daemon thread, logging what it raises; leave it behind after
    ``SEND_TIMEOUT_S``, logged: nothing a notifier does may hold or fail its caller."""
    timeout = SEND_TIMEOUT_S  # read at each call: a test or a deployment may lower it

    def run() -> None:
        try:
            call()
        except Exception:  # a failing notifier must not turn into another failure
            log.exception("the notifier %s failed (%s)", setting("notifier"), what)

    thread = threading.Thread(target=run, name=f"notify {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.error("the notifier %s has not finished after %.0fs (%s); left behind",
                  setting("notifier"), timeout, what)


def _notifier() -> Callable[[dict[str, Any]], None] | None:
    """``configured_notifier()``, or a stand-in that logs why, at each notification, when the
    setting is unusable: a notification setting never stops a DAG's import or the reaper."""
    try:
        return configured_notifier()
    except Exception as err:  # noqa: BLE001 - NotifierError, or any other a setting raises
        problem = str(err) if isinstance(err, NotifierError) else error_summary(err)
        log.error("notifier unusable: %s; notifications are logged instead", problem)

        def unusable(context: dict[str, Any]) -> None:
            log.error("notifier unusable: %s; not sent: %s", problem,
                      context.get("ephemeral_message"))

        return unusable


@dataclass(frozen=True)
class TaskEvent:
    """A failed task's notification: its ``ephemeral_event`` and what the message says
    happened (``{task}`` is the task's id)."""

    event: str
    what: str


TASK_FAILED = TaskEvent("task_failed", "task {task} failed")
GATE_FAILED = TaskEvent("gate_failed", "model gate failed")


def _task_text(ti: Any) -> str:
    """A task's id, with its map index when mapped: which of a mapped teardown's copies."""
    index = getattr(ti, "map_index", -1)
    return ti.task_id if not isinstance(index, int) or index < 0 else f"{ti.task_id}[{index}]"


def failure_callbacks(event: TaskEvent = TASK_FAILED) -> list[Callable[[Any], None]]:
    """``on_failure_callback`` for a DAG's default_args: [] when no notifier is configured."""
    send = _notifier()
    if send is None:
        return []

    def on_failure(context: Any) -> None:
        from ephemeral.report import report_link

        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        ti = context["ti"]
        url = report_link(dag_id, run_id)
        context["ephemeral_event"] = event.event
        context["ephemeral_report_url"] = url
        context["ephemeral_message"] = event_message(
            f"{dag_id} {run_id}: {event.what.format(task=_task_text(ti))}",
            error=context.get("exception"), url=url)
        _bounded(lambda: send(context), f"{dag_id} {run_id} {ti.task_id}")

    return [on_failure]


def notify_reaped(handle: ClusterHandle, reason: str, error: Exception | None = None) -> None:
    """Tell the deployment that the reaper deleted ``handle``'s cluster, and why, with the
    report of the run that made it; with ``error``, that it could not delete it, so the leak
    still runs (and costs): the error's type and first line only. Does nothing when no
    notifier is configured; never raises, and returns after ``SEND_TIMEOUT_S`` at most."""
    try:
        _bounded(lambda: _notify_reaped(handle, reason, error), f"cluster {handle.name}")
    except Exception:  # the reaper's pass goes on (e.g. no thread to start)
        log.exception("no notification for the reaped cluster %s", handle.name)


def _notify_reaped(handle: ClusterHandle, reason: str, error: Exception | None) -> None:
    send = _notifier()
    if send is None:
        return
    from ephemeral.report import report_link

    # From the annotations: a label may hold a long or unusual run id only hashed.
    dag_id, run_id = handle.run or (None, None)
    url = report_link(dag_id, run_id) if dag_id and run_id else None
    of = f"{handle.name} ({handle.spec_ref}) of {dag_id or '?'} {run_id or '?'}"
    details: dict[str, Any] = {"cluster": handle.name, "reason": reason, "dag_id": dag_id,
                               "run_id": run_id}
    if error is None:
        send({"ephemeral_event": "cluster_reaped", "ephemeral_report_url": url,
              "ephemeral_message": event_message(f"reaped leaked cluster {of}: {reason}",
                                                 url=url),
              **details})
        return
    send({"ephemeral_event": "cluster_reap_failed", "ephemeral_report_url": url,
          "ephemeral_message": event_message(
              f"could not delete leaked cluster {of}: {error_summary(error)}; it still runs. "
              f"Found: {reason}", url=url),
          "error": error_summary(error), **details})
