"""The ``ephemeral`` command line: validate and show specs, bring clusters up and down, list them.

Human output goes to the terminal (progress on stderr); ``--json`` prints one JSON document on
stdout and nothing else, for scripts and CI.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Column, Table
from typer._click.core import ParameterSource
from typer._click.exceptions import UsageError  # typer's own click, whose errors it raises

from ephemeral.backends import ClusterBackend, ClusterHandle, get_backend
from ephemeral.backends.base import ClusterStatus, OwnerSelector, Phase
from ephemeral.backends.notes import backend_notes, refusals, spark_mode_of
from ephemeral.cli.model import model_app
from ephemeral.cli.output import discard_when_unread
from ephemeral.errors import (
    ClusterFailed,
    ClusterNotFound,
    EphemeralError,
    IdentityConflict,
    ReadinessTimeout,
    SettingError,
    SpecError,
    first_line,
)
from ephemeral.jobs.artifacts import job_root
from ephemeral.jobs.results import JobResult
from ephemeral.lifecycle import DEFAULT_READY_TIMEOUT, provision, teardown
from ephemeral.reaper import DEFAULT_DELETE_BUDGET_SECONDS
from ephemeral.settings import get_settings
from ephemeral.specs import ClusterIdentity, load_file, resolve
from ephemeral.specs.identity import check_cluster_name
from ephemeral.specs.loader import (
    file_identity_problems,
    in_specs_tree,
    read_yaml,
    version_problems,
)
from ephemeral.specs.resolve import CI_CPU, ResolvedSpec, apply_profile

if TYPE_CHECKING:
    from ephemeral.report.costs import Prices


class _ErrorBoundary(typer.core.TyperGroup):
    """Every command's errors end alike, whatever raised them (a backend, a setting, a file):
    an EphemeralError or an OSError as ``_fail`` prints it (one JSON document under --json;
    exit 2 for refused input, else 1), never a traceback. An interrupt (Ctrl-C, SIGTERM,
    SIGHUP) too, exit 130: what its cleanup did (``up``'s cluster deleted, or not) is on it.
    A usage error (an unknown option, a bad value) is Typer's to show, but under --json it is
    one JSON document too."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # typer's own
        args = [*ctx._protected_args, *ctx.args]
        # --json of the command, not an argument of a job after "--"
        as_json = "--json" in (args[:args.index("--")] if "--" in args else args)
        try:
            return super().invoke(ctx)
        except UsageError as e:
            if not as_json:
                raise
            raise _fail(e, as_json, self._command(args)) from e
        except (EphemeralError, OSError, KeyboardInterrupt) as e:
            raise _fail(e, as_json, self._command(args)) from e

    def _command(self, args: list[str]) -> str:
        """``ephemeral <command> [<subcommand>]`` as given in ``args``."""
        words, group = ["ephemeral"], self.commands
        for word in args:
            if (command := group.get(word)) is None:
                break
            words.append(word)
            group = getattr(command, "commands", {})
        return " ".join(words)


app = typer.Typer(help="Ephemeral Ray and Spark clusters from versioned specs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=_ErrorBoundary)
specs_app = typer.Typer(help="Validate and inspect cluster specs.", no_args_is_help=True)
app.add_typer(specs_app, name="specs")
app.add_typer(model_app, name="model")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="Profile, e.g. ci-cpu.")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="local (default, or $EPHEMERAL_BACKEND) or kubernetes (EPHEMERAL_K8S_* "
                      "settings).")]


def _backend(name: str | None) -> ClusterBackend:
    """The backend a command acts on."""
    chosen = _backend_name(name)
    _connection_not_read(chosen)
    return get_backend(chosen)


@functools.cache  # once a command
def _connection_not_read(backend: str) -> None:
    """The DAGs and the run-end cleanup reach Kubernetes through ``kubernetes_conn_id``
    (whatever ``backend`` says); a CLI listing elsewhere would say "no clusters" while the
    deployment's run."""
    from ephemeral.settings import lookup

    if (conn := lookup("kubernetes_conn_id")).value:
        where = "the EPHEMERAL_K8S_* settings" if backend == "kubernetes" else \
            f"the {backend} backend (--backend, EPHEMERAL_BACKEND)"
        err.print(f"warning: {conn.source} ({conn.value}) is an Airflow connection, which "
                  f"the DAGs use and this CLI cannot read: it acts on {where}; give it "
                  "--backend kubernetes and EPHEMERAL_K8S_* settings of the same cluster and "
                  "namespace", highlight=False, markup=False)


def _backend_name(name: str | None) -> str:
    """The name of the backend a command acts on: a real one. The in-memory test double
    (``fake``) is refused, from ``--backend`` or ``$EPHEMERAL_BACKEND``: its state would not
    outlive one command."""
    from ephemeral.backends.fake import REAL_BACKENDS, refuse_across_processes
    from ephemeral.settings import lookup

    chosen = name or get_settings().backend
    where = "'--backend'" if name else lookup("backend").source  # what to correct
    try:
        refuse_across_processes(chosen, "ephemeral")
    except EphemeralError as e:
        raise typer.BadParameter(str(e), param_hint=where) from e
    if chosen not in REAL_BACKENDS:
        raise typer.BadParameter(f"unknown backend {chosen!r}; use one of: "
                                 + ", ".join(REAL_BACKENDS), param_hint=where)
    return chosen


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# The CLI's exit codes besides 0, first match wins; any other failure is 1. Refused input is
# 2: nothing was created or submitted, and the same input fails the same. Refusals are the
# errors that say so (``EphemeralError.refused``: a spec, a setting, a request) and these.
EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], int], ...] = (
    ((KeyboardInterrupt,), 130),  # Ctrl-C, SIGTERM, SIGHUP: as a shell's
    ((UsageError, IdentityConflict), 2),  # an option click refuses; a name another spec holds
)


def exit_code(error: BaseException) -> int:
    if getattr(error, "refused", False):
        return 2
    return next((code for kinds, code in EXIT_CODES if isinstance(error, kinds)), 1)


def _fail(error: EphemeralError | OSError | KeyboardInterrupt | UsageError, as_json: bool,
          command: str | None = None) -> typer.Exit:
    """Print ``error`` (as JSON with ``as_json``); the exit to raise (``exit_code``). A
    refused request is headed by ``command`` (``ephemeral up: refused``), whichever part of
    it refused the request."""
    from ephemeral.adhoc import RequestError

    message = str(error)
    if isinstance(error, OSError):  # one line: what failed on which file
        message = " ".join(str(p) for p in (error.strerror or error, error.filename) if p)
    if isinstance(error, KeyboardInterrupt):  # its text, if any, is the signal that stopped it
        message = f"interrupted{f' ({error})' if str(error) else ''}"
    if isinstance(error, UsageError):
        message = error.format_message()
    if isinstance(error, RequestError) and command:
        message = str(RequestError(error.problems, command))
    # What happened after the failure (its cluster deleted, or that deletion failing too) is
    # the part an operator acts on.
    message = "\n".join([message, *getattr(error, "__notes__", ())])
    if as_json:
        _emit({"error": type(error).__name__, "message": message,
               "retryable": getattr(error, "retryable", False),
               **getattr(error, "facts", {})})  # a failed job's status and exit code
    else:
        err.print(f"[bold red]error:[/] {type(error).__name__}", highlight=False)
        err.print(message, markup=False, highlight=False)
    return typer.Exit(exit_code(error))


def _seconds(param: typer.CallbackParam, value: float | None) -> float | None:
    """Every timeout option: finite and above 0, as a job's timeout
    (``adhoc.job_timeout_seconds``), refused naming the option before anything is made: nan or
    inf waited forever, 0 or less created a cluster only to delete it."""
    from ephemeral.adhoc import job_timeout_seconds

    if value is None:
        return None
    fix = "leave it out for no limit" if param.default is None else (
        f"leave it out for the default, {param.default:g}")
    return job_timeout_seconds(value, param.opts[0], fix=fix)


def _grace(param: typer.CallbackParam, value: float) -> float:
    """``--grace``, ``reap --delete-budget``: finite and 0 or more seconds (0 grace: an ended
    run's clusters go at the next pass); nan or inf turned the run-end rule off, or let a
    reaper wait past its job's deadline."""
    import math

    from ephemeral.adhoc import RequestError

    if not math.isfinite(value) or value < 0:
        raise RequestError([(param.opts[0], f"{value!r} is not a finite number of seconds, 0 or "
                             f"more: leave it out for the default, {param.default:g}")])
    return value


def _dns(param: typer.CallbackParam, value: str | None) -> str | None:
    """``--namespace`` (a DNS label) and ``--cluster-domain`` (a DNS subdomain) of ``render``:
    both go into every Service name of the manifests."""
    from ephemeral.adhoc import RequestError
    from ephemeral.specs.models import dns_label, dns_subdomain

    if value is None:  # the deployment's own
        return None
    try:
        return dns_subdomain(value) if param.name == "cluster_domain" else dns_label(value, 63)
    except ValueError as e:
        raise RequestError([(param.opts[0], str(e))]) from None


def _overrides(replicas: int | None, cpu: float | None, memory: str | None,
               gpus: int | None) -> dict[str, Any] | None:
    workers = {k: v for k, v in
               {"replicas": replicas, "cpu": cpu, "memory": memory, "gpus": gpus}.items()
               if v is not None}
    return {"workers": workers} if workers else None


def spec_notes(spec: ResolvedSpec, backend: str, default_spark_mode: str = "standalone"
               ) -> list[str]:
    """What ``backend`` does differently with ``spec`` (``backends.notes``, no silent no-op);
    raises SpecError, as its create would, for what it cannot honour."""
    if problems := refusals(spec, backend, default_spark_mode=default_spark_mode):
        raise SpecError(spec.source, problems)
    return backend_notes(spec, backend, default_spark_mode=default_spark_mode)


@specs_app.command("validate")
def specs_validate(
    paths: Annotated[list[Path] | None, typer.Argument(help="Spec files (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate spec files and every profile they define (plus the built-in ci-cpu)."""
    specs_dir = get_settings().specs_dir.resolve()
    files = paths or sorted(specs_dir.glob("*/*.yaml"))
    if not files:  # a wrong folder printed nothing and exited 1
        raise _fail(SettingError("EPHEMERAL_SPECS_DIR", [(
            "", f"no spec files (<kind folder>/<name>.yaml) under {specs_dir}: point it at "
                "the folder that holds ray/ and spark/, or name the files to validate")]),
            as_json)
    results: list[dict[str, Any]] = []
    for path in files:
        problems: list[str] = []
        try:
            # A draft elsewhere is not found by a reference: its file name does not matter.
            if in_specs_tree(path, specs_dir) and (
                    identity := file_identity_problems(path, read_yaml(path))):
                raise SpecError(str(path), identity)
            spec = load_file(path)
            if in_specs_tree(path, specs_dir):
                version_problems(path)  # another file of the spec claiming its version
            for profile in sorted({CI_CPU, *spec.profiles}):
                try:
                    apply_profile(spec, profile, source=str(path))
                except SpecError as e:
                    problems.append(f"profile {profile}: {e}")
        except SpecError as e:
            problems.append(str(e))
        results.append({"file": str(path), "ok": not problems, "problems": problems})
    if as_json:
        _emit(results)
    else:
        for r in results:
            mark = "[green]ok[/]" if r["ok"] else "[red]invalid[/]"
            out.print(f"{mark}  {r['file']}", highlight=False)
            for p in r["problems"]:
                out.print(p, markup=False, highlight=False)
    if not results or not all(r["ok"] for r in results):
        raise typer.Exit(2 if results else 1)


@specs_app.command("schema")
def specs_schema(
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write it to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of spec files, for editors (docs/spec-schema.md)."""
    from ephemeral.specs.schema import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote {output}", highlight=False, markup=False)


@specs_app.command("show")
def specs_show(
    ref: Annotated[str, typer.Argument(help="e.g. ray/train-gpu@1 or a path")],
    profile: ProfileOpt = None,
    replicas: Annotated[int | None, typer.Option(help="Override worker replicas.")] = None,
    gpus: Annotated[int | None, typer.Option(help="Override GPUs per worker.")] = None,
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the effective spec after the profile and overrides, with its content hash, and
    notes on what the backend does differently with it."""
    chosen = _backend_name(backend)  # an unknown one is refused, not shown notes for nothing
    r = resolve(ref, profile, _overrides(replicas, None, None, gpus))
    mode = spark_mode_of(_backend(chosen)) if chosen == "kubernetes" else "standalone"
    notes = spec_notes(r, chosen, mode)
    body = r.spec.model_dump(mode="json", by_alias=True, exclude={"profiles"})
    doc = {"ref": r.ref, "profile": r.profile, "hash": r.hash, "source": r.source, "spec": body,
           "notes": notes}
    if as_json:
        _emit(doc)
    else:
        for note in notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        out.print(f"# {r.label()}  hash {r.hash}  ({r.source})", highlight=False, markup=False)
        out.print(yaml.safe_dump(body, sort_keys=False), markup=False, highlight=False)


# `render` shows what a cluster of an Airflow task would be made of; a fixed owner and creation
# time make the output depend on the spec alone, so that it diffs cleanly in a review.
RENDER_CREATED = "1970-01-01T00:00:00Z"


def render_identity(spec_name: str, name: str | None = None) -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec_name, dag_id="render", run_id="manual",
                           task_id="create_cluster", explicit_name=name, instance="render")


@app.command("render")
def render_cmd(
    ref: Annotated[str, typer.Argument(help="Spec reference, e.g. ray/train-gpu@1, or a path")],
    profile: ProfileOpt = None,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", "-n", help="Target namespace (default: the deployment's, "
                                  "EPHEMERAL_K8S_NAMESPACE, else default).",
        callback=_dns)] = None,
    name: Annotated[str | None, typer.Option(help="Cluster name (default: from the spec and "
                                                  "the placeholder owner).")] = None,
    replicas: Annotated[int | None, typer.Option(help="Worker replicas (right-sizing).")] = None,
    cpu: Annotated[float | None, typer.Option(help="CPUs per worker.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory per worker, e.g. 4Gi.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per worker.")] = None,
    cluster_domain: Annotated[str | None, typer.Option(
        help="Cluster DNS domain of the endpoints (default: the deployment's, else "
             "cluster.local).", callback=_dns)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the Kubernetes manifests of a spec as YAML, one document per object.

    For review and diffs in pull requests: nothing is sent to a cluster.

    The owner is a fixed placeholder (instance render, dag_id render, run_id manual, task_id
    create_cluster, created 1970-01-01T00:00:00Z), so names, labels and expiry are stable.
    Everything else is the deployment's EPHEMERAL_K8S_* settings, as `up` reads them (the
    Spark mode, where a spec has no kubernetesMode; the clients its NetworkPolicy admits; the
    Spark service account), so that what is printed and refused is what `up` would make here.
    """
    from datetime import datetime

    from ephemeral.backends.base import Endpoints, make_handle
    from ephemeral.backends.kubernetes import KubernetesBackend
    if name is not None:  # before anything: a ValueError later is no bad name
        check_cluster_name(name, "--name")
    spec = resolve(ref, profile, _overrides(replicas, cpu, memory, gpus))
    be = _backend("kubernetes")
    assert isinstance(be, KubernetesBackend)
    mode = spark_mode_of(be)
    namespace = namespace or be.config.namespace
    handle = make_handle(spec, render_identity(spec.spec.name, name), backend="kubernetes",
                         endpoints=Endpoints(), namespace=namespace,
                         created=datetime.fromisoformat(RENDER_CREATED), default_spark_mode=mode)
    notes = spec_notes(spec, "kubernetes", mode)
    rendered = be.manifests(spec, handle, cluster_domain=cluster_domain)
    if as_json:
        _emit({"ref": spec.ref, "profile": spec.profile, "hash": spec.hash,
               "endpoints": rendered.endpoints.model_dump(exclude_none=True),
               "objects": rendered.objects, "notes": notes})
        return
    for note in notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    sys.stdout.write(f"# {spec.label()}  hash {spec.hash}  namespace {namespace}\n")
    # No line folding: one value per line diffs best.
    sys.stdout.write(yaml.safe_dump_all(rendered.objects, sort_keys=False, width=2**16))


def _handle_lines(h: ClusterHandle) -> list[str]:
    eps = {k: v for k, v in h.endpoints.model_dump().items() if v}
    return [f"{h.name}  ({h.engine}, {h.spec_ref}{' [' + h.profile + ']' if h.profile else ''}, "
            f"backend {h.backend}, expires {h.expires_at})",
            *[f"  {k:13} {v}" for k, v in eps.items()]]


@app.command("up")
def up(
    ref: Annotated[str, typer.Argument(help="Spec reference, e.g. ray/adhoc-cpu@1")],
    profile: ProfileOpt = None,
    name: Annotated[str | None, typer.Option(help="Cluster name (default: from the spec).")] = None,
    replicas: Annotated[int | None, typer.Option(help="Worker replicas (right-sizing).")] = None,
    cpu: Annotated[float | None, typer.Option(help="CPUs per worker.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory per worker, e.g. 4Gi.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per worker.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.",
                                           callback=_seconds)] = (
        DEFAULT_READY_TIMEOUT),
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a cluster and wait until it is usable; print its handle with endpoints."""
    from ephemeral.adhoc import RequestError

    if name is not None:  # before anything: a ValueError of a probe is no bad name
        check_cluster_name(name, "--name")
    spec = resolve(ref, profile, _overrides(replicas, cpu, memory, gpus))
    job_root()  # its jobs would carry it: refused before anything is made
    if timeout > (ttl := spec.spec.lifetime.ttl_seconds):  # past it the reaper deletes it
        raise RequestError([("--timeout", f"{timeout:g} s is longer than {spec.ref}'s "
                             f"lifetime.ttl ({ttl} s), after which the cluster is deleted; "
                             "give at most that")], "ephemeral up")
    identity = ClusterIdentity.manual(spec.spec.name, name)
    be = _backend(backend)
    notes = spec_notes(spec, be.name, spark_mode_of(be))
    for note in [] if as_json else notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    with err.status(f"creating {identity.name} from {spec.ref}") as status:
        def progress(st: ClusterStatus) -> None:
            status.update(f"{identity.name}: {st.phase.value} "
                          f"({st.nodes_ready}/{st.nodes_expected} nodes) {st.message}")
        result = provision(be, spec, identity, timeout=timeout, on_progress=progress)
    if as_json:
        _emit({"handle": result.handle.model_dump(mode="json"), "adopted": result.adopted,
               "seconds_to_ready": round(result.seconds_to_ready, 2), "notes": notes})
        return
    if result.adopted:
        err.print(f"{result.handle.name} already existed (created {result.handle.created_at}): "
                  "this is that cluster", markup=False, highlight=False)
    err.print(f"[green]ready[/] in {result.seconds_to_ready:.1f}s: {result.status.message}")
    for line in _handle_lines(result.handle):
        out.print(line, highlight=False, markup=False)


AllInstancesOpt = Annotated[bool, typer.Option(
    "--all-instances", help="Every deployment's clusters, not only this instance's "
                            "($EPHEMERAL_INSTANCE, else derived from $AIRFLOW_HOME).")]


@app.command("ls")
def ls(backend: BackendOpt = None, all_instances: AllInstancesOpt = False,
       as_json: JsonOpt = False) -> None:
    """List this deployment's clusters (every deployment's with --all-instances), with state."""
    be = _backend(backend)
    rows: list[dict[str, Any]] = []
    for h in be.list_owned(OwnerSelector(all_instances=all_instances)):
        try:
            st = be.wait_ready(h, timeout=0)
            phase, msg = st.phase.value, st.message
        except EphemeralError as e:
            phase, msg = Phase.FAILED.value, first_line(e)
        rows.append({"handle": h.model_dump(mode="json"), "phase": phase, "message": msg})
    if as_json:
        _emit(rows)
        return
    if not rows:
        err.print("no clusters" if all_instances else _no_clusters_here(be))
        return
    # A name or endpoint is to be copied whole (to `down`, a browser): folded in a narrow
    # terminal, never cut with "…"; piped (CI logs, grep) the table gets its full width.
    table = Table(Column("name", overflow="fold"), "engine", "spec", "phase", "created",
                  "expires", Column("endpoint", overflow="fold"),
                  *(["instance"] if all_instances else []))
    for r in rows:
        h = ClusterHandle.model_validate(r["handle"])
        ep = h.endpoints.dashboard or h.endpoints.spark_master or ""
        table.add_row(h.name, h.engine, h.spec_ref, str(r["phase"]), h.created_at, h.expires_at,
                      ep, *([h.instance or "-"] if all_instances else []))
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10**4).print(table)


def _where(be: ClusterBackend) -> str:
    """Where a lookup of this deployment's clusters looked: an operator who finds nothing
    under a name must see whether it asked the right place."""
    from ephemeral.specs.identity import current_instance

    home, config = getattr(be, "home", None), getattr(be, "config", None)
    place = (f"home {home}" if home is not None else
             f"namespace {config.namespace}" if config is not None else "")
    return f"{be.name} backend, {place + ', ' if place else ''}instance {current_instance()}"


def _other_instances(be: ClusterBackend) -> list[str]:
    """The instances with clusters where this one looks (its home or namespace)."""
    return sorted({h.instance or "-" for h in be.list_owned(OwnerSelector(all_instances=True))})


def _no_clusters_here(be: ClusterBackend, others: list[str] | None = None) -> str:
    """An empty listing that hides other deployments' clusters says so: a shell without the
    stack's $AIRFLOW_HOME (or $EPHEMERAL_INSTANCE) is another instance, and "no clusters" there
    reads as "nothing is running"."""
    from ephemeral.specs.identity import current_instance

    others = _other_instances(be) if others is None else others
    if not others:
        return "no clusters"
    return (f"no clusters of instance {current_instance()}; {', '.join(others)} "
            f"{'has' if len(others) == 1 else 'have'} some here (--all-instances lists them; "
            "set $EPHEMERAL_INSTANCE or the deployment's $AIRFLOW_HOME to act as it)")


def _reaped_nothing(be: ClusterBackend) -> None:
    """A pass that found no cluster of its instance says whose clusters it passed over (on
    stderr). It fails when its instance is one no deployment has: derived, not set, from an
    Airflow home where no Airflow ran (a cron job without $AIRFLOW_HOME), it would reap
    nothing on every pass while they expire. Two Airflow homes sharing one ephemeral home are
    each a deployment: their reapers pass over each other's clusters, and succeed."""
    from ephemeral.settings import airflow_configured, airflow_home

    others = _other_instances(be)
    err.print(_no_clusters_here(be, others), highlight=False, markup=False)
    if others and not get_settings().instance_explicit and not airflow_configured():
        err.print(f"error: this reaper's instance is derived from the Airflow home "
                  f"{airflow_home()}, where no Airflow ran (no airflow.cfg): it owns no "
                  "cluster and would reap none; run it with the deployment's $AIRFLOW_HOME or "
                  "$EPHEMERAL_INSTANCE", highlight=False, markup=False)
        raise typer.Exit(1)


@app.command("down")
def down(
    names: Annotated[list[str] | None, typer.Argument(help="Cluster names.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every cluster of this "
                                                     "deployment instance.")] = False,
    all_instances: AllInstancesOpt = False,
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete clusters and wait until none of their processes or pods is left.

    Only this deployment instance's clusters, unless --all-instances is given."""
    from ephemeral.adhoc import RequestError

    # every name, before anything is looked up or deleted: names become paths, selectors
    if all_ and names:  # --all would delete every cluster, not only the names given
        raise RequestError([("--all", f"given with NAME ({', '.join(names)}): --all "
                             "deletes every cluster of this instance; give the names, or "
                             "--all alone")], "ephemeral down")
    names = [check_cluster_name(n, "NAME") for n in names or []]
    be = _backend(backend)
    # By handle: with --all-instances two deployments may each have a cluster of one name,
    # and a look-up by name would find (and delete) only one of them.
    targets: list[tuple[str, list[ClusterHandle]]]
    if all_:
        targets = [(h.name, [h])
                   for h in be.list_owned(OwnerSelector(all_instances=all_instances))]
    elif names:
        targets = [(n, be.list_owned(OwnerSelector.of_target(n, all_instances=all_instances)))
                   for n in names]
    else:
        raise RequestError([("NAME", "name one or more clusters, or use --all")],
                           "ephemeral down")
    done: list[dict[str, Any]] = []
    unknown: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for name, handles in targets:
        known = bool(handles)
        other = None if known else be.get(name, all_instances=True)
        if other is not None:  # another deployment's: never touched from here by accident
            failures.append({"name": name, "error": f"belongs to deployment instance "
                             f"{other.instance!r}, not this one; pass --all-instances to "
                             "delete it anyway"})
            if not as_json:
                err.print(f"[red]{name}: {failures[-1]['error']}[/]", highlight=False)
            continue
        # No record, yet processes of it may run (its state lost): the deletion ends them.
        running = [] if known else be.unrecorded(name)
        try:
            with err.status(f"deleting {name}"):
                # By the handles looked up above: a delete by bare name is this deployment's
                # only, so --all-instances reaches another deployment's cluster only this way.
                seconds = sum(teardown(be, h) for h in handles) if handles else \
                    teardown(be, name)
            # A name with no record is no deletion: a script must not count it as one.
            (done if known else unknown).append(
                {"name": name, "existed": known, "seconds": round(seconds, 2)}
                | ({} if known else {"looked_in": _where(be), "ended": running}))
            if not as_json:
                word = ("deleted" if known else
                        f"no record of it in the {_where(be)}; ended what of it still ran: "
                        f"{', '.join(running)}," if running else
                        f"not found in the {_where(be)} (nothing to delete)")
                err.print(f"{name}: {word} in {seconds:.1f}s", highlight=False, markup=False)
        except EphemeralError as e:
            failures.append({"name": name, "error": str(e)})
            if not as_json:
                err.print(f"[red]{name}: {e}[/]", highlight=False)
    if as_json:
        _emit({"deleted": done, "not_found": unknown, "failed": failures})
    if failures:
        raise typer.Exit(1)


def _cluster(name: str, backend: str | None, engine: str, as_json: bool,
             timeout: float | None = None) -> ClusterHandle:
    """The cluster a job goes to; a job ``timeout`` past its expiry is refused up front (the
    reaper would delete the cluster under the running job)."""
    from ephemeral.adhoc import check_timeout_within_ttl, job_timeout_seconds

    check_cluster_name(name, "CLUSTER")
    job_timeout_seconds(timeout, "--timeout")  # finite, above 0: refused before anything
    handle = _backend(backend).get(name)
    if handle is None:
        raise _fail(ClusterNotFound(f"no cluster {name!r}; see `ephemeral ls`"), as_json)
    if handle.engine != engine:
        raise _fail(ClusterNotFound(f"cluster {name!r} is a {handle.engine} cluster, not {engine}"),
                    as_json)
    check_timeout_within_ttl(handle, timeout, field="--timeout")
    _wait_usable(_backend(backend), handle, as_json)
    return handle


def _wait_usable(backend: ClusterBackend, handle: ClusterHandle, as_json: bool) -> None:
    """A job goes only to a ready cluster: one still starting (its `up` running in another
    terminal) is waited for, as `up` would; one being deleted, gone or failed is refused
    naming its state, before anything is submitted (not a connection error per read)."""
    try:
        status = backend.wait_ready(handle, timeout=0)
    except ClusterFailed as e:
        raise _fail(ClusterFailed(f"cluster {handle.name!r} failed; nothing was submitted: {e}"),
                    as_json) from e
    if status.ready:
        return
    if status.phase is not Phase.STARTING:
        raise _fail(ClusterNotFound(
            f"cluster {handle.name!r} is {status.phase.value} ({status.message}); nothing was "
            "submitted: create it again with `ephemeral up`, see `ephemeral ls`"), as_json)
    err.print(f"cluster {handle.name} is starting ({status.nodes_ready}/"
              f"{status.nodes_expected} nodes ready); waiting up to "
              f"{DEFAULT_READY_TIMEOUT:g}s for it", markup=False, highlight=False)
    try:
        backend.wait_ready(handle, timeout=DEFAULT_READY_TIMEOUT)
    except (ClusterFailed, ReadinessTimeout) as e:
        raise _fail(e, as_json) from e


def _key_values(pairs: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not key or not sep:
            from ephemeral.adhoc import RequestError

            raise RequestError([(option, f"{pair!r} is not KEY=VALUE")], "ephemeral")
        out[key] = value
    return out


def _log_sink(as_json: bool) -> Callable[[str], None]:
    """Job logs go to stdout, or to stderr when stdout is reserved for --json; a closed stdout
    discards them (``output.discard_when_unread``), the job followed on to its end."""
    stream = sys.stderr if as_json else sys.stdout

    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return write


# How long an interrupted `submit` waits for Ray to stop its job: bounded, so a second Ctrl-C
# is not the only way out when the cluster does not answer.
INTERRUPT_STOP_WAIT = 15.0
# How long it looks again for a job whose submission an interrupt cut short (Ray may still be
# creating it when the first stop finds none).
INTERRUPT_SETTLE = 3.0


def _stop_on_interrupt(what: str, stop: Callable[[], str | None]) -> None:
    """A job's command was interrupted (Ctrl-C, SIGTERM, SIGHUP): stop ``what`` (best effort,
    ``stop`` bounded) and say whether it was stopped (``stop`` may say what it did instead).
    A job left running would go on holding the cluster, and the limit of --timeout, which the
    command enforces, would be gone."""
    try:
        said = stop()
    except Exception as e:  # noqa: BLE001 - said, not raised: the interrupt stays the error
        err.print(f"interrupted: {what} was NOT stopped ({type(e).__name__}: {e}); it may "
                  "still be running", markup=False, highlight=False)
    else:
        err.print(f"interrupted: {what} {said or 'was stopped'}", markup=False,
                  highlight=False)


def _finish_job(run: Callable[[], JobResult], as_json: bool) -> None:
    """Run the job command's ``run`` and show its result. A failed job's logs were streamed to
    the terminal: its tail is not shown again under them (--json keeps it in the message)."""
    from ephemeral.errors import JobFailed

    try:
        result = run()
    except JobFailed as e:
        if as_json or not e.streamed or not e.log_tail:
            raise
        raise JobFailed(e.job_id, e.status, exit_code=e.exit_code, streamed=True) from e
    if as_json:
        _emit(result.model_dump(mode="json"))
    else:
        err.print(f"[green]{result.status.value}[/] {result.job_id} in {result.seconds:.1f}s",
                  highlight=False)


@app.command("submit")
def submit(
    cluster: Annotated[str, typer.Argument(help="Ray cluster name (see `ephemeral ls`).")],
    entrypoint: Annotated[list[str], typer.Argument(help="After --: the command to run.")],
    working_dir: Annotated[str | None, typer.Option(help="Uploaded as the job's cwd.")] = None,
    pip: Annotated[list[str] | None, typer.Option(help="Extra pip package (repeat).")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the job (repeat).")] = None,
    job_id: Annotated[str | None, typer.Option(
        help="Submission id (letters, digits, '-', '_'); attaches to the job of that id when it "
             "runs the same command, --env names and --pip.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop the job after this many s.",
                                                  callback=_seconds)] = None,
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a command as a Ray job on CLUSTER, streaming its logs; exit with its status."""
    from ephemeral.adhoc import RequestError
    from ephemeral.jobs.ray_jobs import job_id_problem, new_submission_id, ray_jobs_for
    from ephemeral.jobs.runtime_env import check_job_env, entrypoint_problem, job_runtime_env

    if (problem := entrypoint_problem(shlex.join(entrypoint), one_line=True)) is not None:
        # The command is stored in Ray's job info and shown with it: no credentials in it.
        raise _fail(RequestError([("entrypoint", problem)], "ephemeral submit"), as_json)
    if job_id is not None and (problem := job_id_problem(job_id)) is not None:
        raise _fail(RequestError([("--job-id", problem)], "ephemeral submit"), as_json)
    env_vars = _key_values(env, "--env")
    # no reserved names, names or literals of secrets, before anything is looked up
    check_job_env(env_vars, "ephemeral submit", field="--env")
    handle = _cluster(cluster, backend, "ray", as_json, timeout)
    jobs = ray_jobs_for(handle, _backend(backend))  # with the cluster's token
    # the cluster's default pip packages, then the job's own (which win)
    runtime_env = job_runtime_env(handle, {"env_vars": env_vars,
                                           "pip": list(pip) if pip else None})
    sink = _log_sink(as_json)
    command = shlex.join(entrypoint)
    # Chosen before it is sent: an interrupt while it is sent knows which job to stop.
    jid = job_id or new_submission_id()

    def stop() -> str | None:
        # a submission cut short may land in a moment: a job not found is looked for again
        ended = jobs.stop(jid, wait=INTERRUPT_STOP_WAIT, settle=INTERRUPT_SETTLE)
        return None if ended is not None else "was never created: nothing to stop"

    def run() -> JobResult:
        # One rule for a timeout and an interrupt: this command stops the job only if it
        # submitted it. A job it attached to (a DAG task's, a colleague's) is left running.
        submitted = attached = False
        try:
            attached = job_id is not None and jobs.attachable(
                job_id, command, runtime_env=runtime_env, working_dir=working_dir,
                field="--job-id")
            if attached:
                err.print(f"attaching to existing job {jid}", highlight=False)
            else:
                submitted = True
                jobs.submit_request(command, job_id=jid, working_dir=working_dir,
                                    runtime_env=runtime_env)
            err.print(f"job {jid} on {handle.name}", highlight=False)
            return jobs.follow(jid, sink=sink, timeout=timeout, owned=submitted)
        except KeyboardInterrupt:
            if submitted:
                _stop_on_interrupt(f"Ray job {jid} on {handle.name}", stop)
            elif attached:
                err.print(f"interrupted: Ray job {jid} was attached to, not submitted here: "
                          "left running", markup=False, highlight=False)
            raise

    _finish_job(run, as_json)


@app.command("spark-submit")
def spark_submit_cmd(
    cluster: Annotated[str, typer.Argument(help="Spark cluster name (see `ephemeral ls`).")],
    application: Annotated[Path, typer.Argument(help="The application's .py file.")],
    args: Annotated[list[str] | None, typer.Argument(help="After --: application arguments.")] = (
        None),
    conf: Annotated[list[str] | None, typer.Option(help="Spark conf KEY=VALUE (repeat).")] = None,
    name: Annotated[str | None, typer.Option(
        help="The application's name (spark-submit's --name); default: its file's name.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop it after this many s.",
                                                  callback=_seconds)] = None,
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a Spark application on CLUSTER's master, streaming the driver's output."""
    from ephemeral.jobs import artifacts
    from ephemeral.jobs.spark_jobs import (
        check_executors_fit,
        check_submit_input,
        spark_auth_for,
        spark_submit,
    )

    own_conf = _key_values(conf, "--conf")
    # no secret on spark-submit's command line, before anything is looked up
    check_submit_input("ephemeral spark-submit", own_conf, conf_field="--conf",
                       args=args or [], args_field="args", name_field="--name")
    handle = _cluster(cluster, backend, "spark", as_json, timeout)
    if not handle.endpoints.spark_master:
        raise _fail(ClusterNotFound(f"cluster {cluster!r} has no Spark master (a spark-operator "
                                    "SparkConnect): use Spark Connect, or a standalone cluster "
                                    "(kubernetesMode: standalone) for spark-submit"), as_json)
    # executors no worker can hold would wait until --timeout: refused before the driver starts
    check_executors_fit("ephemeral spark-submit", handle, own_conf, conf_field="--conf")
    auth = spark_auth_for(handle, _backend(backend))  # the driver's spark.authenticate secret

    def run() -> JobResult:
        try:
            return spark_submit(
                handle.endpoints.spark_master or "", str(application), args or [],
                conf=handle.spark_conf | own_conf, name=name, cluster=handle.name,
                timeout=timeout,
                env={"EPHEMERAL_ARTIFACT_ROOT": artifacts.job_root()},
                sink=_log_sink(as_json), auth=auth)
        except KeyboardInterrupt:  # spark_submit has killed its driver on the way out
            _stop_on_interrupt(f"the Spark driver of {application.name} on {handle.name}",
                               lambda: None)
            raise

    _finish_job(run, as_json)


@app.command("reap")
def reap_cmd(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go, delete nothing.")
                       ] = False,
    grace: Annotated[float, typer.Option(help="Seconds after a run ended before its clusters "
                                              "count as orphans (with --airflow-url).",
                                         callback=_grace)] = 600.0,
    delete_budget: Annotated[float, typer.Option(
        help="Seconds from the pass's start until it stops waiting for its deletions (all "
             "issued first): one not done by then fails the pass. Keep it below the deadline "
             "of the job running the reaper.", callback=_grace)
    ] = DEFAULT_DELETE_BUDGET_SECONDS,
    airflow_url: Annotated[str | None, typer.Option(
        envvar="EPHEMERAL_AIRFLOW_URL",
        help="Airflow API server to ask for run states (token from AIRFLOW_API_TOKEN, or "
             "EPHEMERAL_AIRFLOW_USER/EPHEMERAL_AIRFLOW_PASSWORD). Without it: only expiry "
             "(lifetime.ttl) and the idle rule (lifetime.idleTimeout) delete clusters.")
    ] = None,
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete orphaned clusters: expired ones, those whose DAG run has ended, and those idle
    for longer than their spec's lifetime.idleTimeout (no Ray job, Spark application or
    Connect session)."""
    import os

    from ephemeral.reaper import AirflowApiLookup, memory_file, reap
    from ephemeral.settings import refuse_unread_variant, setting, unused_setting

    lookup = None
    if airflow_url := airflow_url or setting("airflow_url"):
        if user := setting("airflow_user"):
            refuse_unread_variant("airflow_password")  # not logging in without it
        lookup = AirflowApiLookup(airflow_url, token=os.environ.get("AIRFLOW_API_TOKEN"),
                                  username=user, password=setting("airflow_password"))
    elif unused := unused_setting("airflow_user", "no Airflow URL is set (--airflow-url, "
                                  "EPHEMERAL_AIRFLOW_URL), so no run's end is known"):
        err.print(f"warning: {unused}", highlight=False, markup=False)
    if lookup is None and ctx.get_parameter_source("grace") != ParameterSource.DEFAULT:
        # Not refused: a reaper that stops on this would not delete expired clusters either.
        err.print("warning: --grace has no effect without --airflow-url (or "
                  "EPHEMERAL_AIRFLOW_URL): no run's end is known, so only expiry and "
                  "idleTimeout delete clusters", highlight=False, markup=False)
    chosen = _backend(backend)
    try:
        root = get_settings().artifact_root
    except SettingError as e:  # the pass deletes without it: only its report parts are lost
        root = ""
        said = "; ".join(f"{where}: {why}" for where, why in e.problems)
        err.print(f"warning: {said}: reaped clusters' report parts are not recorded",
                  highlight=False, markup=False)
    if chosen.name == "kubernetes" and root.startswith("file://"):
        # A pod's own disk: what the pass records for the run reports (and links to) is lost
        # with it, and the setups' readiness records are not there to read.
        err.print(f"warning: EPHEMERAL_ARTIFACT_ROOT is {root}, a path of this pod: unless a "
                  "volume shared with Airflow is mounted there, set it to the deployment's "
                  "artifact store, or reaped clusters' report parts and notification links "
                  "stay here", highlight=False, markup=False)
    decisions = reap(chosen, lookup=lookup, grace=grace, dry_run=dry_run,
                     memory_file=memory_file(), dags=lookup.dag if lookup else None,
                     tasks=lookup.tasks_under_way if lookup else None,
                     delete_budget=delete_budget)
    if as_json:
        _emit([d.__dict__ for d in decisions])
    else:
        for d in decisions:
            verb = ("would delete" if dry_run else "deleted" if d.deleted else "FAILED to delete"
                    ) if d.delete else "deleting" if d.deleting else "keep"
            out.print(f"{verb:16} {d.cluster}: {d.reason} {d.error}".rstrip(), highlight=False,
                      markup=False)
    if not decisions:
        _reaped_nothing(chosen)
    if any(d.error for d in decisions):
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    dag_id: Annotated[str, typer.Argument(help="The DAG, e.g. train_distributed")],
    run_id: Annotated[str, typer.Argument(help="The run, e.g. scheduled__2026-01-01T00:00:00+00:00")],
    html: Annotated[Path | None, typer.Option(help="Also write the HTML page here.")] = None,
    instance: Annotated[str | None, typer.Option(
        help="The deployment instance whose run it is (default: this deployment's, or the "
             "only one that recorded the run).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a run's report: each cluster's lifetime, idle split, reserved resources and cost,
    and each job's wall time and results, as the run's teardowns recorded them."""
    from ephemeral.report import render_html, report_uri
    from ephemeral.report.costs import CostConfigError, load_prices
    from ephemeral.report.text import print_report
    from ephemeral.settings import INSTANCE_PATTERN

    if instance is not None and not INSTANCE_PATTERN.fullmatch(instance):
        from ephemeral.adhoc import RequestError

        raise _fail(RequestError([("--instance", f"{instance!r} is not a deployment instance "
                                   "id: 1-40 lower-case letters, digits and '-' (the folders "
                                   "of the artifact root)")], "ephemeral report"), as_json)
    try:
        # Parts recorded with no price (no setting where the teardown ran) are priced by this
        # shell's; a recorded price is the one in force then, and kept.
        prices = load_prices()
    except CostConfigError as e:  # the report stands without: its recorded prices are kept
        prices = None
        print(f"(no pricing by this shell's cost setting: {e})", file=sys.stderr)
    with _reading_artifacts(as_json):
        report, page, others, instance = _find_report(dag_id, run_id, instance, prices)
    if report is None:
        hint = (f"recorded under deployment instances {', '.join(others)}: pass --instance"
                if others else "written by the run's teardowns; is EPHEMERAL_ARTIFACT_ROOT "
                "the DAGs' one?")
        raise _fail(EphemeralError(f"no run report of {dag_id} {run_id} under "
                                   f"{report_uri(dag_id, run_id, '', instance)} ({hint})"),
                    as_json)
    if report.get("priced_now"):
        print(f"(priced by this shell's cost setting: {', '.join(report['priced_now'])}, "
              "recorded without a price)", file=sys.stderr)
    if html is not None:
        try:
            html.write_text(render_html(report))
        except OSError as err:
            raise _fail(EphemeralError(f"--html {html}: cannot write it ({err.strerror}); give "
                                       "a file in a folder that exists"), as_json) from None
    if as_json:
        _emit(report)
        return
    # Piped output gets 80 columns, which cuts the tables' cells.
    wide = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    wide.print(f"{dag_id} {run_id}", highlight=False, markup=False)
    print_report(wide, report)
    wide.print(f"page: {html or page}", highlight=False, markup=False)


@contextlib.contextmanager
def _reading_artifacts(as_json: bool) -> Iterator[None]:
    """Reads of the artifact store that fail (a root pyarrow cannot open, a store that does not
    answer) end naming EPHEMERAL_ARTIFACT_ROOT, with no traceback; a root with credentials in
    it is refused first (``job_root``), so none is ever shown."""
    from pyarrow import ArrowException

    root = job_root()
    try:
        yield
    except (OSError, ArrowException) as e:
        raise _fail(EphemeralError(
            f"cannot read the artifact store EPHEMERAL_ARTIFACT_ROOT={root}: {first_line(e)}; "
            "set it to the store the DAGs write to"), as_json) from None


def _find_report(dag_id: str, run_id: str, instance: str | None, prices: Prices | None
                 ) -> tuple[dict[str, Any] | None, str, list[str], str | None]:
    """(the run's report or None, its page, the other instances that recorded the run, the
    instance whose report it is)."""
    from ephemeral.report import load_report, report_uri
    from ephemeral.report.store import instances_with, legacy_report_dir, load_legacy_report

    report = load_report(dag_id, run_id, instance, prices=prices)
    others = [] if report is not None else [
        i for i in instances_with(dag_id, run_id) if i != instance]
    if report is None and instance is None and len(others) == 1 \
            and not get_settings().instance_explicit:
        # A shell whose environment derives another instance than the Airflow's (no
        # AIRFLOW_HOME): the one deployment that ran it is the one meant. A shell that names
        # its instance means it.
        instance = others[0]
        report = load_report(dag_id, run_id, instance, prices=prices)
        print(f"(the run of deployment instance {instance}, not this shell's "
              f"{get_settings().instance})", file=sys.stderr)
    page = report_uri(dag_id, run_id, instance=instance)
    if report is None and not (others and instance is None):
        # Written before the instance layout (an upgrade): <root>/reports/<dag>/<run>/.
        report = load_legacy_report(dag_id, run_id, prices=prices)
        if report is not None:
            old = legacy_report_dir(dag_id, run_id)
            page = f"{old}/report.html"
            print(f"(read from the pre-instance layout {old}: written before deployment "
                  "instances)", file=sys.stderr)
    return report, page, others, instance


def main() -> None:
    # SIGTERM/SIGHUP end a command as Ctrl-C does, so `up` deletes the cluster it was waiting
    # for, `submit` and `spark-submit` stop their job, instead of dying with it left running.
    from ephemeral.lifecycle import interrupt_on_stop_signals

    interrupt_on_stop_signals()
    # A name, path or job log the terminal's encoding cannot show (PYTHONIOENCODING=ascii, a C
    # locale in a CI runner) is escaped rather than ending the command in a traceback, maybe
    # after it made a cluster.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    # A closed stdout (`| head -1`) discards what follows; the exit code stays the command's.
    discard_when_unread()
    app()


if __name__ == "__main__":
    main()
