"""kubernetes_executor_example: Airflow's own tasks in small pods, the heavy work on the cluster.

With Airflow on Kubernetes and the KubernetesExecutor configured beside the default executor
(`AIRFLOW__CORE__EXECUTOR=LocalExecutor,KubernetesExecutor`), the tasks that only submit and
wait (create the RayCluster, submit the Ray job, delete the cluster) each run in a pod of
250m CPU and 256Mi: the training itself runs on the ephemeral Ray cluster, and the Ray job
waits in the triggerer, not in a pod. A summary task stays on the default executor.

Airflow refuses to import a DAG whose task names an executor that is not configured
(UnknownExecutorException), so the per-task executor and pod_override are set only when the
configured executors include KubernetesExecutor; otherwise every task runs on the default
executor and the DAG works unchanged (on the compose stack, under `dags test`, in the tests).
The `kubernetes` package is imported only in that case (the provider needs it anyway): the DAG
processor re-parses this file all the time and must not pay for it elsewhere.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, conf, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.jobs.artifacts import run_folder
from ephemeral.notify import failure_callbacks

JOBS = str(Path(__file__).resolve().parent.parent / "jobs")
K8S_EXECUTOR = "KubernetesExecutor"


def kubernetes_executor_configured(executors: str) -> bool:
    """Whether `[core] executor` (a comma-separated list; entries may be `alias:module.path`)
    includes the KubernetesExecutor, by name, alias or class path."""
    for entry in executors.split(","):
        name = entry.strip().rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        if name == K8S_EXECUTOR:
            return True
    return False


def small_pod() -> dict[str, Any]:
    """executor_config for a submitting task: a pod of 250m CPU and 256Mi (limits 500m, 512Mi),
    labelled as a client of the clusters. The override merges into the worker pod's container
    named `base`."""
    from kubernetes.client import models as k8s

    from ephemeral.backends.kubernetes.config import client_labels
    from ephemeral.specs.identity import current_instance

    resources = k8s.V1ResourceRequirements(requests={"cpu": "250m", "memory": "256Mi"},
                                           limits={"cpu": "500m", "memory": "512Mi"})
    # The labels this deployment's clusters' NetworkPolicies admit (the default of
    # EPHEMERAL_K8S_CLIENT_SELECTOR): a client, of this deployment instance.
    return {"pod_override": k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(labels=client_labels(current_instance())),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", resources=resources)]))}


def on_kubernetes() -> dict[str, Any]:
    """Task kwargs: run in a small pod when the KubernetesExecutor is configured, else nothing."""
    if not kubernetes_executor_configured(conf.get("core", "executor", fallback="")):
        return {}
    return {"executor": K8S_EXECUTOR, "executor_config": small_pod()}


with DAG(
    dag_id="kubernetes_executor_example",
    description="Submitting tasks in small KubernetesExecutor pods, work on a Ray cluster",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Native rendering: the profile stays None (not "None"), the worker count an integer.
    render_template_as_native_obj=True,
    default_args={"retries": 0, "on_failure_callback": failure_callbacks()},
    params={"profile": Param(None, type=["null", "string"], enum=[None, "ci-cpu"],
                             description="None on a GPU cluster, ci-cpu on a CPU-only one."),
            # ray/train-gpu's maxReplicas, which create_ray enforces (16 passed the form).
            "workers": Param(2, type="integer", minimum=1, maximum=4,
                             description="Worker nodes: at most 4 (the spec's maxReplicas), "
                                         "2 with the ci-cpu profile.")},
    tags=["ephemeral", "kubernetes", "example"],
    user_defined_macros={"run_folder": run_folder},
) as dag:
    pod = on_kubernetes()
    create = CreateClusterOperator(
        task_id="create_ray", spec="ray/train-gpu", profile="{{ params.profile }}",
        overrides={"workers": {"replicas": "{{ params.workers }}"}}, backend="kubernetes",
        execution_timeout=timedelta(minutes=30), **pod)
    train = RayJobOperator(
        task_id="train", cluster=create.output, working_dir=JOBS,
        # argv: the params' values are quoted words, never shell text.
        entrypoint=["python", "train_ddp.py", "--run", "{{ run_folder(dag.dag_id, run_id) }}",
                    "--num-workers", "{{ params.workers }}",
                    "--gpus-per-worker", "{{ 0 if params.profile == 'ci-cpu' else 1 }}"],
        execution_timeout=timedelta(hours=6), **pod)
    delete = DeleteClusterOperator(
        task_id="delete_ray", setup_task_id="create_ray", cluster=create.output,
        backend="kubernetes", execution_timeout=timedelta(minutes=15), **pod)

    @task
    def summary(result: dict[str, Any]) -> dict[str, Any]:
        """Runs on the default executor: it only reads the job's small XCom result."""
        return {"job_id": result["job_id"], "status": result["status"],
                "seconds": result["seconds"]}

    create >> train >> [summary(train.output),
                        delete.as_teardown(setups=create, on_failure_fail_dagrun=True)]
