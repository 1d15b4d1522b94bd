"""ray_job_adhoc: run one Ray job on a fresh cluster, from the Airflow trigger form.

Pick a cluster spec, right-size it (workers, GPUs per worker), name the entrypoint (a script in
jobs/ unless the deployment sets EPHEMERAL_ALLOW_ARBITRARY_ENTRYPOINTS=true), extra pip
packages and a timeout. The form refuses values outside the schema; the first task refuses the
rest (an unknown script, a spec the size cannot apply to) naming the field, before anything is
created. The cluster is deleted when the job ends, whatever the outcome.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
# Offered in the form: the Ray specs that exist (a directory listing; no spec is parsed here).
RAY_SPECS = sorted(f"ray/{p.stem}" for p in (ROOT / "cluster_specs" / "ray").glob("*.yaml")
                   if "@" not in p.stem)
REQUEST = "ti.xcom_pull(task_ids='validate_request')"

with DAG(
    dag_id="ray_job_adhoc",
    description="Ad-hoc Ray job on an ephemeral cluster, from the trigger form",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    render_template_as_native_obj=True,
    default_args={"retries": 0},
    params={
        "cluster_spec": Param("ray/adhoc-cpu", enum=RAY_SPECS, title="Cluster spec",
                              section="Cluster"),
        "profile": Param(None, type=["null", "string"], enum=[None, "ci-cpu"], title="Profile",
                         description="ci-cpu runs the spec without GPUs, small (CI, laptops).",
                         section="Cluster"),
        "workers": Param(2, type="integer", minimum=1, maximum=64, title="Worker nodes",
                         section="Cluster"),
        "gpus_per_worker": Param(0, type="integer", minimum=0, maximum=8,
                                 title="GPUs per worker", section="Cluster"),
        "entrypoint": Param("python hello_ray.py", type="string", minLength=1, maxLength=2000,
                            title="Entrypoint",
                            description="A script in jobs/ and its arguments, e.g. "
                                        "`python train_ddp.py --run adhoc-1`.",
                            section="Job"),
        "pip": Param([], type="array", items={"type": "string", "minLength": 1},
                     title="Extra pip packages", section="Job"),
        "timeout_minutes": Param(60, type="integer", minimum=1, maximum=24 * 60,
                                 title="Job timeout (minutes)", section="Job"),
    },
    tags=["ephemeral", "ad-hoc"],
) as dag:

    @task
    def validate_request(params: Any = None) -> dict[str, Any]:
        """Refuse what the form's schema cannot, naming the field; nothing exists yet."""
        from ephemeral.errors import SpecError
        from ephemeral.specs import resolve

        p = dict(params or {})
        argv = shlex.split(p["entrypoint"])
        allow_any = os.environ.get("EPHEMERAL_ALLOW_ARBITRARY_ENTRYPOINTS", "").lower() == "true"
        if not allow_any:
            if len(argv) < 2 or argv[0] != "python":
                raise ValueError("entrypoint: must be `python <script in jobs/> [args]`; this "
                                 "deployment does not allow arbitrary commands")
            script = (JOBS / argv[1]).resolve()
            if script.parent != JOBS.resolve() or not script.is_file():
                known = ", ".join(sorted(x.name for x in JOBS.glob("*.py")
                                         if not x.name.startswith("_")))
                raise ValueError(f"entrypoint: {argv[1]!r} is not a script in jobs/; "
                                 f"choose one of: {known}")
        overrides = {"workers": {"replicas": p["workers"], "gpus": p["gpus_per_worker"]}}
        try:
            spec = resolve(p["cluster_spec"], p["profile"], overrides)
        except SpecError as err:
            raise ValueError(f"cluster_spec/profile/workers/gpus_per_worker: {err}") from err
        return {"spec": spec.ref, "profile": p["profile"], "overrides": overrides,
                "entrypoint": shlex.join(argv), "runtime_env": {"pip": p["pip"]} if p["pip"]
                else {}, "timeout_s": 60 * p["timeout_minutes"], "spec_hash": spec.hash}

    request = validate_request()
    create = CreateClusterOperator(task_id="create_cluster", spec=f"{{{{ {REQUEST}['spec'] }}}}",
                                   profile=f"{{{{ {REQUEST}['profile'] }}}}",
                                   overrides=f"{{{{ {REQUEST}['overrides'] }}}}")
    job = RayJobOperator(task_id="run_job", cluster=create.output, working_dir=str(JOBS),
                         entrypoint=f"{{{{ {REQUEST}['entrypoint'] }}}}",
                         runtime_env=f"{{{{ {REQUEST}['runtime_env'] }}}}",
                         job_timeout=f"{{{{ {REQUEST}['timeout_s'] }}}}",
                         execution_timeout=timedelta(hours=25))
    delete = DeleteClusterOperator(task_id="delete_cluster", setup_task_id="create_cluster",
                                   cluster=create.output)
    request >> create >> job >> delete.as_teardown(setups=create)
