"""The Ray cluster of train_distributed waits for no bookkeeping: the evaluation follows the
trials directly, with the best trial taken from their results by the rule pick_best uses."""

from __future__ import annotations

from typing import Any

from ephemeral.trials import best_trial


def _results(*losses: float) -> list[dict[str, Any]]:
    return [{"job_id": f"j{i}", "result": {"loss": loss, "artifact_uri": f"file:///m{i}.pt"}}
            for i, loss in enumerate(losses)]


def test_the_best_trial_is_the_lowest_loss() -> None:
    assert best_trial(_results(0.4, 0.1, 0.3)) == {"job_id": "j1", "model_uri": "file:///m1.pt",
                                                   "loss": 0.1}


def test_no_bookkeeping_task_sits_between_the_clusters_jobs(dagbag: Any) -> None:
    dag = dagbag.get_dag("train_distributed")
    evaluate = dag.get_task("train.evaluate")
    assert evaluate.upstream_task_ids == {"train.create_ray", "train.trial"}
    # pick_best (tracking-store writes) runs once the cluster is gone, not before its jobs.
    assert dag.get_task("train.pick_best").downstream_task_ids == {"deploy.register_model"}
    assert "train.ray_released" in dag.get_task("train.pick_best").upstream_task_ids
    on_cluster = {"train.trial", "train.evaluate", "train.serve_latency", "train.delete_ray"}
    for task_id in on_cluster:
        upstream = dag.get_task(task_id).get_flat_relative_ids(upstream=True)
        assert not upstream & {"train.pick_best", "deploy.gate"}
    released = dag.get_task("train.ray_released")
    assert "train.ray_released" in dag.get_task("deploy.gate").upstream_task_ids
    # Done, not succeeded: a failed deletion does not unmake a model that passed its gate.
    assert released.upstream_task_ids == {"train.delete_ray"}
    assert released.trigger_rule == "all_done"


def test_the_evaluation_renders_the_best_trials_model(dagbag: Any) -> None:
    dag = dagbag.get_dag("train_distributed")
    macro = dag.user_defined_macros["best_trial_of"]

    class TI:
        def xcom_pull(self, task_ids: str, map_indexes: Any) -> list[dict[str, Any]]:
            assert task_ids == "train.trial"
            return _results(0.5, 0.2)[: len(list(map_indexes))]

    assert macro(TI())["model_uri"] == "file:///m1.pt"
