"""The run report's facts and arithmetic, with no I/O.

A teardown records one ``ClusterFacts`` per cluster it deleted: the cluster (spec, hash, node
groups), four moments (created, ready, teardown started, deleted), the jobs that ran on it
and the price in force. ``summarize`` turns facts into seconds and money; ``build_report``
puts a run's clusters together. Times are epoch seconds.

Idle time is split by cause, and the parts add up to the lifetime exactly:

    lifetime = starting + busy + between jobs + deleting

``starting`` is creation to readiness (engine start-up), ``deleting`` the teardown's deletion,
``busy`` the time at least one job ran (overlapping jobs count once), and ``between jobs`` the
rest: what orchestration adds between them, and for spark-submit jobs the driver's own start on
the Airflow worker before it registers with the master (``JobFacts.submitted`` says when it was
started). A Ray job runs from its submission, as the Jobs API counts it (its driver runs on the
cluster); a Spark application from its registration.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ephemeral.backends.base import NodeGroup
from ephemeral.report.costs import Price, Prices, price_setting

GIB = 1024**3
REPORT_VERSION = 1


class _Model(BaseModel):
    # Parts are read back by newer code: fields a later version adds are ignored. Finite
    # numbers only: NaN or infinity is no moment or duration, and would make report.json no
    # JSON (Infinity) and the page's timeline fail.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class JobFacts(_Model):
    job_id: str
    engine: str
    task: str | None = None
    """The Airflow task (``group.task[map index]``) that ran it, when known."""
    status: str = ""
    start: float | None = None
    end: float | None = None
    seconds: float | None = None
    """Wall time as the job's task measured it (its result's ``seconds``); ``wall`` prefers
    the engine's start and end."""
    uris: dict[str, str] = {}
    """The job's result URIs (artifacts, metrics) from its result line, credentials masked."""
    source: str = "xcom"
    """Where the times come from: ``ray jobs api``, ``spark master`` or ``xcom``."""
    submitted: float | None = None
    """When the job's task handed it over (a spark-submit driver started), where the engine's
    ``start`` is later: the gap is counted as idle, between jobs."""

    @field_validator("uris")
    @classmethod
    def _masked(cls, uris: dict[str, str]) -> dict[str, str]:
        """A job may name its outputs with credentials in them (``s3://KEY:SECRET@bucket``,
        a signed URL's query, a token in a path): the report, its page, the CLI and
        notifications show them masked by the rule the submit boundary refuses with
        (``shown_uri``), whichever writer built the facts."""
        from ephemeral.specs.models import shown_uri

        return {key: shown_uri(uri) for key, uri in uris.items()}

    @property
    def wall(self) -> float:
        if self.start is not None and self.end is not None:
            return max(self.end - self.start, 0.0)
        return float(self.seconds or 0.0)


class Release(_Model):
    """A cluster its last job's task deleted the moment the job succeeded
    (``delete_cluster_on_success``), or the reaper, run-end or a teardown deleted: when, by
    which task, what its engine listed just before, and the job's result. A teardown that
    finds the cluster gone records these moments instead of its own; a retry of the job task
    returns the result."""

    name: str
    created_at: str
    """The handle's: a cleared run's new cluster of the same name has another."""
    task: str
    teardown_started: float
    deleted: float | None = None
    """None until the deletion finished (or when it failed: the teardown deleted it)."""
    jobs: list[JobFacts] | None = None
    """The engine's view before deletion; None when it could not be asked."""
    result: dict[str, Any] | None = None
    """The job's result (``JobResult``), as the task returned it."""


class Ready(_Model):
    """When the setup saw one cluster life ready, kept beside its run's report parts: the
    handles run-end and the reaper list carry no readiness time (only the setup's XCom does),
    and without it their parts counted the whole start as idle between jobs."""

    name: str
    created_at: str
    ready: float | None = None
    deadline: float | None = None
    """Until when the setup waits for it to be ready, written before it is (only when that is
    later than the default ``lifecycle.SETUP_READY_TIMEOUT`` after its creation): the reaper's
    idle rule counts a never-ready cluster as starting until then."""


class ClusterFacts(_Model):
    """What a teardown saw of one cluster: the unit the run report is assembled from."""

    dag_id: str
    run_id: str
    name: str
    engine: str
    backend: str
    spec_ref: str
    spec_hash: str
    profile: str | None = None
    groups: list[NodeGroup] = []
    setup_task: str | None = None
    teardown_task: str | None = None
    created: float
    created_at: str = ""
    """The handle's creation stamp: with the name, which cluster life this is (a retried
    setup makes a new cluster of the same name; each life is its own part)."""
    ready: float | None = None
    teardown_started: float
    deleted: float | None = None
    deletion: str = "complete"
    """``complete``, or what was left and why."""
    released_by: str | None = None
    """The job task that deleted the cluster when its job succeeded, before the teardown."""
    jobs: list[JobFacts] = []
    price: Price | None = None
    currency: str | None = None
    recorded_at: float = 0.0


def busy_seconds(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` clipped to [lo, hi]."""
    total, cursor = 0.0, lo
    for start, end in sorted(intervals):
        start, end = max(start, cursor), min(end, hi)
        if end > start:
            total += end - start
            cursor = end
    return total


def reserved(groups: list[NodeGroup], seconds: float, *, at_most: bool = False
             ) -> dict[str, float]:
    """CPU-, memory (GiB)- and GPU-seconds the cluster's nodes held for ``seconds``: at each
    group's ``replicas``, or with ``at_most`` at an autoscaled group's ``maxReplicas`` (what
    it may have grown to: the handle records no node count over time)."""
    def nodes(g: NodeGroup) -> int:
        return g.max_replicas if at_most and g.max_replicas is not None else g.replicas

    return {
        "cpu_seconds": sum(nodes(g) * g.cpu for g in groups) * seconds,
        "memory_gib_seconds": sum(nodes(g) * g.memory_bytes for g in groups) / GIB * seconds,
        "gpu_seconds": float(sum(nodes(g) * g.gpus for g in groups)) * seconds,
    }


def up_to_text(cluster: dict[str, Any]) -> str | None:
    """A summarized cluster's top of its reserved range as ``CPU-s / GiB-s / GPU-s`` (the page
    and the CLI show it), None when it has none or it is unknown."""
    top = (cluster.get("autoscaled") or {}).get("up_to")  # absent in reports of older code
    if top is None:
        return None
    return (f"{top['cpu_seconds']:.0f} / {top['memory_gib_seconds']:.0f} / "
            f"{top['gpu_seconds']:.0f}")


def autoscaling(groups: list[NodeGroup], lifetime: float, price: Price | None
                ) -> dict[str, Any]:
    """What an autoscaled cluster's reserved seconds leave out: counted at ``replicas``, its
    autoscaled groups may have had up to ``maxReplicas`` nodes. The range's top (and its
    cost), or None where a group's ceiling is unknown (a handle of older code)."""
    scaled = [g for g in groups if g.autoscaled]
    if not scaled:
        return {"autoscaled": None}
    known = all(g.max_replicas is not None for g in scaled)
    top = reserved(groups, lifetime, at_most=True) if known else None
    return {
        "autoscaled": {
            "groups": [g.name for g in scaled],
            "note": "reserved seconds of autoscaled group(s) " + ", ".join(
                f"{g.name} (counted at replicas {g.replicas}, may be up to maxReplicas "
                f"{g.max_replicas if g.max_replicas is not None else 'unknown'})"
                for g in scaled),
            "up_to": None if top is None else {k: round(v, 1) for k, v in top.items()},
            "cost_up_to": None if top is None or (c := cost(top, price)) is None
            else round(c, 4)}}


# Each reserved unit-second by the price field that prices it.
PRICED_BY = {"cpu_seconds": "cpu_hour", "gpu_seconds": "gpu_hour",
             "memory_gib_seconds": "memory_gib_hour"}
# Prices a reserved unit must have once any is set: most price lists bundle memory into the
# CPU's (or the node's) price, so an unset memory price is 0, never "unknown"; an unset GPU or
# CPU price would count the most expensive units as free.
NEEDED = ("cpu_hour", "gpu_hour")


def unpriced(res: dict[str, float], price: Price | None) -> list[str]:
    """The price fields missing for units the cluster reserved, when some price is set: a
    partial price (only a CPU price) must not count its GPUs as free."""
    if price is None or all(v is None for v in price.model_dump().values()):
        return []
    return [field for unit, field in PRICED_BY.items()
            if field in NEEDED and res[unit] > 0 and getattr(price, field) is None]


def cost(res: dict[str, float], price: Price | None) -> float | None:
    """Money for reserved unit-seconds; None when no price is set at all, or when a unit
    reserved has none (``unpriced`` names it)."""
    if price is None or all(v is None for v in price.model_dump().values()) \
            or unpriced(res, price):
        return None
    return sum((getattr(price, field) or 0.0) * res[unit]
               for unit, field in PRICED_BY.items()) / 3600


def summarize(f: ClusterFacts) -> dict[str, Any]:
    """One cluster of the report: its facts plus lifetime, idle split, reserved and cost."""
    end = f.deleted if f.deleted is not None else max(f.recorded_at, f.teardown_started)
    end = max(end, f.created)
    lifetime = max(end - f.created, 0.0)
    timed = [(j.start, j.end) for j in f.jobs if j.start is not None and j.end is not None]
    untimed = [j for j in f.jobs if j.start is None or j.end is None]
    # Never seen ready (a setup that timed out waiting for its nodes): it was starting until
    # its first job began, else until its teardown, not idle between jobs. A job known only
    # by its duration says nothing of when: then from its creation, as before.
    seen_ready = f.ready if f.ready is not None else f.created if untimed else min(
        [start for start, _ in timed] + [f.teardown_started])
    ready = min(max(seen_ready, f.created), end)
    stop = min(max(f.teardown_started, ready), end)
    starting, deleting = ready - f.created, end - stop
    busy = busy_seconds(timed, ready, stop)
    # Jobs with a duration and no times (the engine did not say when) fill the gaps.
    busy += sum(j.wall for j in untimed)
    busy = min(busy, stop - ready)
    between = max(lifetime - starting - busy - deleting, 0.0)
    res = reserved(f.groups, lifetime)
    money = cost(res, f.price)
    idle_share = (lifetime - busy) / lifetime if lifetime > 0 else None
    return {
        "name": f.name, "engine": f.engine, "backend": f.backend, "spec": f.spec_ref,
        "spec_hash": f.spec_hash, "profile": f.profile, "setup_task": f.setup_task,
        "teardown_task": f.teardown_task, "deletion": f.deletion, "released_by": f.released_by,
        "groups": [g.model_dump() for g in f.groups],
        "created": f.created, "ready": f.ready, "teardown_started": f.teardown_started,
        "deleted": f.deleted,
        # The moments the split was made with (a never-ready cluster's inferred readiness, an
        # undeleted one's end): what the timeline draws, so page and numbers agree.
        "counted": {"ready": ready, "stop": stop, "end": end},
        "lifetime_s": round(lifetime, 3), "busy_s": round(busy, 3),
        "starting_s": round(starting, 3), "between_jobs_s": round(between, 3),
        "deleting_s": round(deleting, 3), "idle_s": round(lifetime - busy, 3),
        "idle_share": None if idle_share is None else round(idle_share, 4),
        **{k: round(v, 1) for k, v in res.items()},
        **autoscaling(f.groups, lifetime, f.price),
        "cost": None if money is None else round(money, 4),
        "unpriced": [price_setting(field) for field in unpriced(res, f.price)],
        "idle_cost": None if money is None or idle_share is None
        else round(money * idle_share, 4),
        "currency": f.currency if money is not None else None,
        "jobs": [{**j.model_dump(), "wall_s": round(j.wall, 3)} for j in f.jobs],
    }


def merge_life(old: ClusterFacts, new: ClusterFacts) -> ClusterFacts:
    """Two writers' facts of one cluster life (a teardown, then the reaper or run-end after
    it failed; a teardown's retry): what either saw is kept. Jobs are joined by id (a job's
    times from whichever had them, its task and URIs from either); the deletion started at
    the earliest and ended at the latest; the newest says how it ended."""
    jobs: dict[str, JobFacts] = {j.job_id: j for j in old.jobs}
    for j in new.jobs:
        seen = jobs.get(j.job_id)
        if seen is None:
            jobs[j.job_id] = j
            continue
        timed, other = (j, seen) if j.start is not None else (seen, j)
        jobs[j.job_id] = timed.model_copy(update={
            "task": timed.task or other.task, "uris": other.uris | timed.uris,
            "seconds": timed.seconds if timed.seconds is not None else other.seconds,
            "submitted": timed.submitted if timed.submitted is not None else other.submitted})
    ends = [d for d in (old.deleted, new.deleted) if d is not None]
    readies = [r for r in (old.ready, new.ready) if r is not None]
    return new.model_copy(update={
        "jobs": list(jobs.values()),
        "ready": min(readies) if readies else None,
        "teardown_started": min(old.teardown_started, new.teardown_started),
        "deleted": max(ends) if ends else None,
        "setup_task": new.setup_task or old.setup_task,
        "teardown_task": new.teardown_task or old.teardown_task,
        "released_by": new.released_by or old.released_by,
        "price": new.price or old.price, "currency": new.currency or old.currency})


def _one_per_life(parts: list[ClusterFacts]) -> list[ClusterFacts]:
    """One part per cluster life (name, creation second): parts written before lives had
    their own file (no ``created_at``) may sit beside a newer part of the same life; the
    newest record of a life wins."""
    newest: dict[tuple[str, int], ClusterFacts] = {}
    for p in parts:
        key = (p.name, int(p.created))
        if key not in newest or (bool(p.created_at), p.recorded_at) > (
                bool(newest[key].created_at), newest[key].recorded_at):
            newest[key] = p
    return list(newest.values())


def price_unpriced(parts: list[ClusterFacts], prices: Prices | None
                   ) -> tuple[list[ClusterFacts], list[str]]:
    """``parts`` with those recorded without any price (no cost setting where their teardown
    ran, or before there was one) priced by ``prices``, and the names so priced. A price
    recorded is never replaced: it was the one in force."""
    if prices is None:
        return parts, []
    out, priced = [], []
    for p in parts:
        if p.price is None:
            p = p.model_copy(update={"price": prices.for_spec(p.spec_ref),
                                     "currency": prices.currency})
            priced.append(p.name)
        out.append(p)
    return out, priced


def build_report(dag_id: str, run_id: str, parts: list[ClusterFacts],
                 *, generated_at: float | None = None,
                 prices: Prices | None = None) -> dict[str, Any]:
    """The run's report from every cluster's facts (order: by creation); ``prices`` prices
    the parts recorded without one (``priced_now`` names them)."""
    # Priced after one part per life is chosen: an older record of a life is no cluster.
    chosen, priced_now = price_unpriced(_one_per_life(parts), prices)
    clusters = [summarize(p) for p in sorted(chosen, key=lambda p: (p.created, p.name))]
    jobs = [{**j, "cluster": c["name"]} for c in clusters for j in c["jobs"]]
    lifetime = sum(c["lifetime_s"] for c in clusters)
    busy = sum(c["busy_s"] for c in clusters)
    costs = [c["cost"] for c in clusters if c["cost"] is not None]
    idle_costs = [c["idle_cost"] for c in clusters if c["idle_cost"] is not None]
    currencies = {c["currency"] for c in clusters if c["currency"]}
    scaled = [c for c in clusters if c["autoscaled"]]
    units = ("cpu_seconds", "memory_gib_seconds", "gpu_seconds")
    up_to = None if not scaled or any(c["autoscaled"]["up_to"] is None for c in scaled) else {
        k: round(sum((c["autoscaled"]["up_to"] if c["autoscaled"] else c)[k] for c in clusters),
                 1) for k in units}
    return {
        "version": REPORT_VERSION,
        "dag_id": dag_id, "run_id": run_id,
        "generated_at": round(generated_at if generated_at is not None else time.time(), 3),
        "clusters": clusters, "jobs": jobs,
        "totals": {
            "clusters": len(clusters), "lifetime_s": round(lifetime, 3),
            "busy_s": round(busy, 3),
            "idle_share": round(1 - busy / lifetime, 4) if lifetime > 0 else None,
            "cpu_seconds": round(sum(c["cpu_seconds"] for c in clusters), 1),
            "memory_gib_seconds": round(sum(c["memory_gib_seconds"] for c in clusters), 1),
            "gpu_seconds": round(sum(c["gpu_seconds"] for c in clusters), 1),
            # Autoscaled clusters' reserved seconds are counted at replicas: at most this.
            "autoscaled_clusters": len(scaled), "reserved_up_to": up_to,
            # Money in two currencies (the setting changed between teardowns) has no sum.
            "cost": round(sum(costs), 4) if costs and len(currencies) == 1 else None,
            "idle_cost": round(sum(idle_costs), 4) if idle_costs and len(currencies) == 1
            else None,
            "currency": currencies.pop() if len(currencies) == 1 else None,
        },
        **({"priced_now": sorted(set(priced_now))} if priced_now else {}),
    }
