"""ray_job_adhoc: run one Ray job on a fresh cluster, from the Airflow trigger form.

Pick a cluster spec, right-size it (workers, GPUs per worker) within what the spec allows, name
the entrypoint (a script in the jobs folder unless the deployment sets
EPHEMERAL_ALLOW_ARBITRARY_ENTRYPOINTS=true or [ephemeral] allow_arbitrary_entrypoints = true), extra pip packages and a timeout. The form refuses
values outside its schema; the first task refuses the rest (ephemeral.adhoc: an unknown script or
a path to one, a Spark application, arguments the script's own parser refuses, an argument
choosing where the job writes, a pip option, URL or ${VAR}, a size
above the spec's, GPUs on the CPU-only profile, a timeout that the cluster's lifetime cannot
hold once the cluster has started) naming the field, before anything is created. The job writes under this run's own folder
(<instance>/ray_job_adhoc/<run id> under the artifact root), which the first task passes to it.
The cluster is deleted when the job ends, whatever the outcome.

Specs and jobs come from the configured folders (EPHEMERAL_SPECS_DIR, EPHEMERAL_JOBS_DIR), not
from paths next to this file, so the DAG can be deployed apart from them. Any package the pip
field allows (EPHEMERAL_PIP_ALLOW narrows it) runs its code on every node of the cluster.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from ephemeral.adhoc import SCHEDULING_MARGIN, ray_spec_refs
from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.jobs.scaling import with_scaling
from ephemeral.lifecycle import SETUP_READY_TIMEOUT
from ephemeral.notify import failure_callbacks
from ephemeral.settings import get_settings

SETTINGS = get_settings()
# Offered in the form: the Ray specs that exist (a directory listing; no spec is parsed here).
RAY_SPECS = ray_spec_refs(SETTINGS.specs_dir)
if not RAY_SPECS:
    # An empty list would make a form that refuses every value; fail the import instead.
    raise RuntimeError(f"ray_job_adhoc: no Ray cluster spec found in {SETTINGS.specs_dir / 'ray'} "
                       "(expected ray/<name>.yaml files there); set EPHEMERAL_SPECS_DIR to the "
                       "folder that holds the cluster specs")
DEFAULT_SPEC = "ray/adhoc-cpu" if "ray/adhoc-cpu" in RAY_SPECS else RAY_SPECS[0]
REQUEST = "ti.xcom_pull(task_ids='validate_request')"
# What comes before the job within the cluster's ttl (ephemeral.adhoc's time budget).
BEFORE_JOB_MINUTES = round((SETUP_READY_TIMEOUT + SCHEDULING_MARGIN) / 60)

with DAG(
    dag_id="ray_job_adhoc",
    description="Ad-hoc Ray job on an ephemeral cluster, from the trigger form",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    render_template_as_native_obj=True,
    default_args={"retries": 0, "on_failure_callback": failure_callbacks()},
    # train_ddp.py entrypoints get --num-workers/--gpus-per-worker/--cpus-per-worker from the
    # cluster made for them, unless they set them.
    user_defined_macros={"with_scaling": with_scaling},
    params={
        "cluster_spec": Param(
            DEFAULT_SPEC, type="string", enum=RAY_SPECS, title="Cluster spec",
            description="A versioned Ray cluster spec of this deployment. Its file sets "
                        "the image, node sizes, the most workers and GPUs allowed and the "
                        "cluster's lifetime.",
            section="Cluster"),
        "profile": Param(
            None, type=["null", "string"], enum=[None, "ci-cpu"], title="Profile",
            values_display={None: "none (the spec as written)",
                            "ci-cpu": "ci-cpu (no GPUs, small nodes: CI and laptops)"},
            description="Where the cluster runs. none: as the spec says; ci-cpu: without GPUs, "
                        "at most 1 CPU and 2 GiB per node and 2 workers per group.",
            section="Cluster"),
        "workers": Param(
            2, type="integer", minimum=1, maximum=64, title="Worker nodes",
            description="Worker nodes per worker group, at most the spec's maxReplicas (or its "
                        "replicas when it sets no maximum); at most 2 with the ci-cpu profile.",
            section="Cluster"),
        "gpus_per_worker": Param(
            None, type=["null", "integer"], minimum=0, maximum=8, title="GPUs per worker",
            description="Empty: as many as the spec gives each worker. At most the spec's; "
                        "0 with the ci-cpu profile.",
            section="Cluster"),
        "entrypoint": Param(
            "python hello_ray.py", type="string", minLength=1, maxLength=2000,
            title="Entrypoint",
            description="A script of the jobs folder (its bare name) and its arguments, "
                        "e.g. python train_ddp.py --steps 500. The job writes under this "
                        "run's own folder, which the form passes to it (--run, or --output "
                        "for evaluate.py): --run, --artifact-root and --output are refused.",
            section="Job"),
        "timeout_minutes": Param(
            60, type="integer", minimum=1, maximum=24 * 60, title="Job timeout (minutes)",
            description="The job is stopped after this long. It must end before the cluster's "
                        "lifetime (the spec's lifetime.ttl) does, counted from the cluster's "
                        f"creation: at most the ttl minus {BEFORE_JOB_MINUTES} minutes (the "
                        "cluster's start and the job's).",
            section="Job"),
        "pip": Param(
            None, type=["null", "array"], items={"type": "string", "minLength": 1},
            maxItems=50, title="Extra pip packages",
            description="Optional, one requirement a line, e.g. pandas>=2 (name, extras, "
                        "version only: no options, URLs or paths). Each package runs its code "
                        "on every node.",
            section="Job"),
    },
    tags=["ephemeral", "ad-hoc"],
) as dag:

    @task
    def validate_request(params: Any = None, dag_run: Any = None) -> dict[str, Any]:
        """Refuse what the form's schema cannot, naming the field; nothing exists yet. The job
        writes under this run's folder (artifacts.run_folder), which is passed to it here."""
        from ephemeral.adhoc import validate_request as check
        from ephemeral.jobs.artifacts import run_folder
        from ephemeral.settings import get_settings

        # A declared setting: $EPHEMERAL_ALLOW_ARBITRARY_ENTRYPOINTS or [ephemeral] in airflow.cfg.
        allow_any = get_settings().allow_arbitrary_entrypoints
        folder = None if dag_run is None else run_folder(dag_run.dag_id, dag_run.run_id)
        return check(dict(params or {}), allow_any_entrypoint=allow_any, run_folder=folder)

    request = validate_request()
    create = CreateClusterOperator(task_id="create_cluster", spec=f"{{{{ {REQUEST}['spec'] }}}}",
                                   profile=f"{{{{ {REQUEST}['profile'] }}}}",
                                   overrides=f"{{{{ {REQUEST}['overrides'] }}}}")
    job = RayJobOperator(task_id="run_job", cluster=create.output,
                         working_dir=f"{{{{ {REQUEST}['working_dir'] }}}}",
                         entrypoint=f"{{{{ with_scaling({REQUEST}['entrypoint'], "
                                    "ti.xcom_pull(task_ids='create_cluster')) }}",
                         runtime_env=f"{{{{ {REQUEST}['runtime_env'] }}}}",
                         job_timeout=f"{{{{ {REQUEST}['timeout_s'] }}}}",
                         execution_timeout=timedelta(hours=25),
                         # The cluster goes the moment the job succeeds; the teardown confirms.
                         delete_cluster_on_success=True)
    delete = DeleteClusterOperator(task_id="delete_cluster", setup_task_id="create_cluster",
                                   cluster=create.output)
    request >> create >> job >> delete.as_teardown(setups=create, on_failure_fail_dagrun=True)

    @task
    def job_result(result: dict[str, Any]) -> dict[str, Any]:
        """The job's result as the run's last word. A teardown with on_failure_fail_dagrun is
        itself a leaf and hides the work before it from the run's state (Airflow 3.3's
        effective leaves): without a leaf after the job, a failed job would end the run
        `success`."""
        return result

    job_result(job.output)
