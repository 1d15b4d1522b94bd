"""Every deployment setting of ``ephemeral``: the one declaration behind three views.

Each option ``x`` is read as ``$EPHEMERAL_<X>``, else Airflow's ``[ephemeral] x``, else its
default (``ephemeral.settings.setting``). The provider info's ``config`` key (what
``airflow config list`` shows) and docs/configuration.md are both generated from ``OPTIONS``;
``python -m ephemeral.config_section`` rewrites the doc.

Defaults are strings as Airflow's config declares them; ``None`` means "unset", which each
reader turns into the behaviour the description names (often a value derived at run time).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

SECTION = "ephemeral"
VERSION_ADDED = "0.1.0"

OptionType = Literal["string", "integer", "float", "boolean"]


@dataclass(frozen=True)
class Option:
    key: str
    description: str
    type: OptionType = "string"
    default: str | None = None
    example: str | None = None
    sensitive: bool = False
    group: str = "General"

    @property
    def env_var(self) -> str:
        return "EPHEMERAL_" + self.key.upper()

    @property
    def airflow_env_var(self) -> str:
        return f"AIRFLOW__{SECTION.upper()}__{self.key.upper()}"


_G, _J, _F, _R, _K, _A = ("General", "Jobs and artifacts", "Trigger form (ad-hoc runs)",
                          "Run reports, costs and notifications", "Kubernetes backend",
                          "Reaper (outside Airflow)")

OPTIONS: tuple[Option, ...] = (
    # General
    Option("backend", "Default backend: ``local`` (real processes on this host) or "
           "``kubernetes``.", default="local", example="kubernetes"),
    Option("home", "Where the local backend keeps one state folder per cluster. Unset: "
           "``~/.ephemeral``. An absolute path (``~`` is expanded), as for every folder below: "
           "each process of the deployment must find the same one.", example="/var/lib/ephemeral"),
    Option("instance", "The deployment that owns clusters: part of every cluster's name digest "
           "and owner labels, so two Airflows sharing a namespace or a machine never adopt, "
           "delete or reap each other's clusters. 1-40 lower-case letters, digits and '-'. "
           "Unset: derived from the Airflow home; the Kubernetes backend refuses to create or reap "
           "clusters without it, since every Airflow container has the same home.",
           example="prod-eu"),
    Option("jvm_archives", "Where the class-data-sharing archives of the Spark JVMs this host "
           "starts (local masters and workers, spark-submit drivers) are kept; ``python -m "
           "ephemeral.backends.local`` builds them (``make setup`` does). ``off`` turns "
           "them off. Unset: ``~/.cache/ephemeral/jvm``.", example="/var/cache/ephemeral/jvm"),
    Option("specs_dir", "Root of the versioned cluster specs. Unset: ``cluster_specs/`` of a "
           "checkout, else of the working directory.", example="/opt/airflow/cluster_specs"),
    Option("runtime_dir", "Short folder of the local backend's slot claims and each "
           "cluster's temporary folders (Ray's, and the ``TMPDIR`` of its nodes and jobs: a "
           "tmpfs must have room for what jobs write there; Ray's socket paths must stay under "
           "108 bytes). Used as it is "
           "when this OS user owns it; a shared one gets an ``ephemeral-<uid>`` folder (0700) "
           "inside. Unset: ``$TMPDIR/ephemeral-<uid>`` (0700; refused when another user made "
           "it).",
           example="/run/ephemeral"),
    Option("kubernetes_conn_id", "Airflow connection (``kubernetes`` type) of the deployment's "
           "Kubernetes backend: tasks that name no connection (and no backend but "
           "``kubernetes``) make their clusters there, and the run-end listener and reaper "
           "look there. Unset: the local backend, or the ``kubernetes`` backend's own settings "
           "below. The ``ephemeral`` "
           "CLI cannot read a connection: it warns, and uses those settings.",
           example="kubernetes_default"),
    Option("run_end_linger", "Seconds the run-end process keeps deleting clusters that appear "
           "after a run ended other than by succeeding on its own (failed, timed out, marked: a "
           "setup being killed may still make one); at most 3600.", type="float",
           default="30", example="5"),
    # Jobs and artifacts
    Option("artifact_root", "Where jobs write datasets, checkpoints, models and metrics: a "
           "``file://`` URI or an absolute path, ``s3://`` or ``gs://`` (through pyarrow "
           "filesystems); no whitespace in a URI. Unset: ``<home>/artifacts``.",
           example="s3://ml-artifacts/ephemeral", group=_J),
    Option("artifact_url", "An http(s) address that serves the artifact root (a bucket's "
           "website, a proxy): run reports link there instead of the artifact URI. Any other "
           "scheme, or a sign-in in it, is refused: the setup warns, naming it, and the "
           "teardowns and notifications carry no link, logging why (a link setting never "
           "stops a cluster's work or its deletion).",
           example="https://artifacts.example.com/ephemeral", group=_J),
    Option("job_env_allow", "Comma-separated names (``PREFIX_*`` allowed) that processes of "
           "local clusters and spark-submit drivers may inherit beyond the built-in allow-list. "
           "Names starting with ``AIRFLOW`` or ``EPHEMERAL_`` are never inherited. A bare "
           "``*`` is refused: it would pass every variable, secrets included.",
           example="AWS_REGION,AWS_PROFILE", group=_J),
    Option("xcom_max_bytes", "Largest XCom value ``MetadataOnlyXCom`` accepts (1 or more); "
           "larger values belong in the artifact store.", type="integer", default="4096", example="8192",
           group=_J),
    Option("params_dir", "Folder of the trial parameter files. Unset: ``params/`` of a "
           "checkout, else of the working directory.", example="/opt/airflow/params",
           group=_J),
    Option("gates_dir", "Folder of the promotion gate files. Unset: ``gates/`` of a "
           "checkout, else of the working directory.", example="/opt/airflow/gates", group=_J),
    Option("gpu_pool", "Airflow pool the training trials run in.",
           default="ephemeral_gpu_trials", example="gpu_trials", group=_J),
    # Trigger form
    Option("jobs_dir", "Job scripts the trigger form may run. Unset: ``jobs/`` of a checkout, "
           "else of the working directory.", example="/opt/airflow/jobs", group=_F),
    Option("allow_arbitrary_entrypoints", "Lets the trigger form run any entrypoint, not only "
           "``python <script in jobs_dir> [args]``: anyone who may trigger ``ray_job_adhoc`` "
           "then runs any command on the cluster. The command is not run through a shell "
           "as typed: shell operators (``&&``, ``|``, ``>``) are refused; for several commands, "
           "``bash -c '...'``.", type="boolean", default="false",
           example="true", group=_F),
    Option("pip_allow", "Packages the trigger form may install: ``name,name`` or the absolute "
           "path of a file with one name a line. Unset: any plain requirement. Every allowed "
           "package runs its code on every node of the cluster.", example="pandas,scikit-learn",
           group=_F),
    Option("adhoc_max_workers", "Raises the trigger form's cap on workers above a spec's "
           "maxReplicas (only raises: a spec's own maxReplicas is always allowed; lower it "
           "in the spec).", type="integer", example="8", group=_F),
    Option("adhoc_max_gpus", "Raises the trigger form's cap on GPUs per worker above a spec's "
           "(only raises: the spec's own GPUs are always allowed).", type="integer",
           example="4", group=_F),
    # Reports, costs, notifications
    Option("cost_file", "YAML file (an absolute path) of prices per spec (``currency``, "
           "``default`` and ``specs`` with ``cpuHour``, ``gpuHour``, ``memoryGibHour``). Takes "
           "precedence over the ``cost_*_hour`` options. A unit a cluster reserves with no "
           "price makes its cost unknown (set 0 for a free unit).", example="/opt/airflow/prices.yaml", group=_R),
    Option("cost_cpu_hour", "Price of one reserved CPU core per hour, for every spec.",
           type="float", example="0.04", group=_R),
    Option("cost_gpu_hour", "Price of one reserved GPU per hour, for every spec.",
           type="float", example="2.5", group=_R),
    Option("cost_memory_gib_hour", "Price of one reserved GiB of memory per hour, for every "
           "spec.", type="float", example="0.005", group=_R),
    Option("cost_currency", "Currency of the ``cost_*_hour`` prices: a code of 3 to 8 "
           "letters (USD, EUR), taken in capitals.", default="USD",
           example="EUR", group=_R),
    Option("notifier", "Notifier for failed runs, by dotted path: a ``BaseNotifier`` subclass "
           "or a function of the context. One that cannot be imported is logged and each "
           "notification logged instead; DAGs still import and the reaper still deletes.",
           example="airflow.providers.slack.notifications.slack.SlackNotifier", group=_R),
    Option("notifier_kwargs", "JSON object of the notifier class's keyword arguments "
           "(connection ids and message templates, never secrets).",
           example='{"slack_conn_id": "slack", "channel": "#ml"}', group=_R),
    # Kubernetes backend
    Option("kubeconfig", "Path of the kubeconfig file (mutually exclusive with "
           "``kubeconfig_content`` and ``k8s_in_cluster``).", example="/opt/airflow/kubeconfig",
           group=_K),
    Option("kubeconfig_content", "The kubeconfig itself. Prefer a ``kubernetes`` connection; "
           "as an Airflow option, use ``kubeconfig_content_secret`` or ``_cmd``.",
           sensitive=True, example="apiVersion: v1 ...", group=_K),
    Option("k8s_context", "Kubeconfig context to use. Unset: the current one.",
           example="prod", group=_K),
    Option("k8s_namespace", "Namespace the clusters are created in.", default="default",
           example="ml", group=_K),
    Option("k8s_cluster_domain", "Cluster DNS domain of Service names.",
           default="cluster.local", example="cluster.local", group=_K),
    Option("k8s_in_cluster", "Use the pod's service account. Unset: true in a pod given no "
           "kubeconfig.", type="boolean", example="true", group=_K),
    Option("k8s_verify_ssl", "Verify the API server's certificate (default true).",
           type="boolean", example="true", group=_K),
    Option("k8s_http_check", "Readiness also checks the engines' HTTP endpoints (default "
           "true).", type="boolean", example="false", group=_K),
    Option("k8s_endpoint_mode", "How clients reach the clusters: ``auto`` (default: Service "
           "DNS in a pod, the API server proxy elsewhere), ``dns``, ``proxy`` or ``ingress``.",
           example="dns", group=_K),
    Option("k8s_ingress_url_template", "URL of a cluster's port in ``ingress`` mode, with "
           "``{cluster}``, ``{namespace}``, ``{service}`` and ``{port}``; https (requests carry "
           "the cluster's Ray token), plain http only to this host. Refused with another "
           "endpoint mode (it would not be used).",
           example="https://{cluster}-{port}.ray.example.com", group=_K),
    Option("k8s_proxy_link_base", "Base URL of the API server proxy for people (the dashboard "
           "links), e.g. ``kubectl proxy``'s. Refused with endpoint mode ``dns`` or ``ingress`` "
           "(it would not be used).", example="http://localhost:8001", group=_K),
    Option("k8s_client_selector", "Pod labels (``key=value,...``) of the clients the clusters' "
           "NetworkPolicy admits, used as given. Unset: ``ephemeral.dev/client=true`` and "
           "``ephemeral.dev/client-instance=<the deployment instance>``, so deployments "
           "sharing a namespace do not admit each other's pods; scope one you give to your "
           "deployment the same way (the Helm chart's ``release`` label).",
           example="release=airflow-prod,tier=airflow", group=_K),
    Option("k8s_client_cidrs", "Comma-separated CIDRs the clusters' NetworkPolicy admits.",
           example="10.0.0.0/8", group=_K),
    Option("k8s_spark_mode", "How Spark clusters run on Kubernetes unless their spec says: "
           "``standalone`` (master and worker Deployments, default) or ``operator`` (the "
           "spark-operator's SparkConnect).", example="operator", group=_K),
    Option("k8s_spark_service_account", "In Spark's ``operator`` mode, the ServiceAccount of "
           "the Connect server (the driver, which creates its executor pods). Standalone "
           "clusters' pods run as the namespace's default.", default="spark-operator-spark",
           example="spark", group=_K),
    # Reaper
    Option("airflow_url", "Airflow's REST API, which ``ephemeral reap`` asks whether a "
           "cluster's run has ended. Unset: only expiry (``lifetime.ttl``) and the idle rule "
           "(``lifetime.idleTimeout``) delete clusters. Credentials go to this URL only (never "
           "after a redirect) and never in it (a user:password@ or a token parameter is "
           "refused); plain http off this host is warned of (an in-cluster Service is fine). "
           "A pass that cannot ask it keeps the clusters and exits 1, and so does one whose "
           "Airflow says (``GET /ephemeral/deployment``, this package's plugin) it is another "
           "deployment instance: another Airflow's runs with the same ids would have deleted "
           "running clusters.", example="http://airflow:8080",
           group=_A),
    Option("airflow_user", "User the reaper logs in to Airflow's API as.", example="reaper",
           group=_A),
    Option("airflow_password", "Password of ``airflow_user``: the reaper logs in with it, and "
           "again when the token it got expires. ``$AIRFLOW_API_TOKEN`` instead needs no "
           "password but expires after Airflow's ``[api_auth] jwt_expiration_time`` (24 h by "
           "default): a scheduled reaper given one alone stops applying the run-end rule "
           "then (its passes exit 1). Keep it in a Secret; ``airflow_password_secret`` (or "
           "``_cmd``) is resolved only inside Airflow (the ``reap_orphans`` DAG), and the CLI "
           "refuses it, naming this variable.",
           sensitive=True, example="(secret)", group=_A),
)

BY_KEY = {o.key: o for o in OPTIONS}

# EPHEMERAL_* names the package uses that are not deployment settings: markers the local backend
# and the job runner put in the environments of the processes they start, and the dev stack's own
# switch (it configures the Airflow that would hold the section).
NOT_SETTINGS = {
    "EPHEMERAL_CLUSTER_UID": "marks a local cluster's processes",
    "EPHEMERAL_CLUSTER_DIR": "marks a local cluster's processes with its state folder",
    "EPHEMERAL_CLUSTER_NAME": "tells a node its cluster's name",
    "EPHEMERAL_RESULT_FILE": "tells a spark-submit driver where to write its result",
    "EPHEMERAL_RAY_START_AFTER": "tells a local Ray worker's ray start what to wait for",
    "EPHEMERAL_AIRFLOW_DB": "the dev stack's database choice (make airflow)",
}


def provider_config() -> dict[str, Any]:
    """The provider info's ``config`` key, in Airflow's provider.yaml format."""
    options: dict[str, Any] = {}
    for o in OPTIONS:
        entry: dict[str, Any] = {
            "description": f"{o.description}\nEnvironment variable ``{o.env_var}`` takes "
                           "precedence.\n",
            "version_added": VERSION_ADDED, "type": o.type, "example": o.example,
            "default": o.default}
        if o.sensitive:
            entry["sensitive"] = True
        options[o.key] = entry
    return {SECTION: {
        "description": "Ephemeral Ray and Spark clusters. Every option can also be set as "
                       "``EPHEMERAL_<OPTION>`` in the environment, which takes precedence.\n",
        "options": options}}


def markdown() -> str:
    """docs/configuration.md."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from ephemeral/config_section.py by "
        "`python -m ephemeral.config_section`; do not edit by hand. -->",
        "",
        "Every setting is read in this order, the first one set wins:",
        "",
        "1. the environment variable `EPHEMERAL_<OPTION>` (e.g. `EPHEMERAL_ARTIFACT_ROOT`);",
        f"2. Airflow's configuration, section `[{SECTION}]` (e.g. `artifact_root`), from "
        "`airflow.cfg` or `AIRFLOW__EPHEMERAL__<OPTION>`; inside Airflow processes also the "
        "`_cmd` and `_secret` variants of sensitive options (elsewhere, such as the CLI, "
        "one set is refused naming the variable to use);",
        "3. the default below.",
        "",
        "The `ephemeral` CLI reads `airflow.cfg` (at `$AIRFLOW_CONFIG`, else "
        "`$AIRFLOW_HOME/airflow.cfg`) and `AIRFLOW__EPHEMERAL__*` without importing Airflow. "
        "`airflow config list --section ephemeral` shows the section with its defaults.",
        "",
        "```ini",
        f"[{SECTION}]",
        "backend = kubernetes",
        "instance = prod-eu",
        "artifact_root = s3://ml-artifacts/ephemeral",
        "```",
        "",
    ]
    group = ""
    for o in OPTIONS:
        if o.group != group:
            group = o.group
            lines += [f"## {group}", ""]
        lines += [f"### `{o.key}`", "",
                  o.description.replace("``", "`"), "",
                  f"- Environment: `{o.env_var}`",
                  f"- Type: {o.type}" + (" (sensitive)" if o.sensitive else ""),
                  f"- Default: {'`' + o.default + '`' if o.default is not None else 'unset'}",
                  f"- Example: `{o.example}`" if o.example is not None else "- Example: none",
                  ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - the doc's generator
    from pathlib import Path

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    out.write_text(markdown())
    print(f"wrote {out}")
