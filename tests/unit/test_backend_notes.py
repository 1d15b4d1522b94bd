"""What a backend does with a spec other than its fields say, from one place
(``ephemeral.backends.notes``), shown by ``specs show``, ``up`` and ``render``; and what it
cannot honour at all, refused by the same rule the renderer applies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ephemeral.backends.notes import backend_notes, refusals
from ephemeral.cli import main
from ephemeral.specs import resolve

ROOT = Path(__file__).resolve().parents[2]

SPARK = """\
kind: SparkCluster
name: notes
version: 1
sparkVersion: "4.3.0"
image: apache/spark:4.3.0-python3
master: {cpu: 2, memory: 2Gi, nodeSelector: {pool: masters}}
workers: {replicas: 2, cores: 1, memory: 2Gi}
connect: {enabled: true, cpu: 3, memory: 2Gi}
"""


def _spec(tmp_path: Path, text: str = SPARK) -> str:
    path = tmp_path / "notes.yaml"
    path.write_text(text)
    return str(path)


def test_local_says_what_it_does_not_honour_of_a_spark_spec(tmp_path: Path) -> None:
    notes = backend_notes(resolve(_spec(tmp_path)), "local")
    cpu = [n for n in notes if n.startswith("master.cpu, connect.cpu:")]
    assert cpu
    assert "does not limit the CPUs" in cpu[0]
    placed = [n for n in notes if n.startswith("master.nodeSelector:")]
    assert placed
    assert "placement applies on Kubernetes" in placed[0]
    # defaults: nothing to say but that the image is not what runs here
    assert [n.split(":")[0] for n in backend_notes(resolve("spark/etl"), "local")] == [
        "image apache/spark"]


def test_local_says_it_runs_an_operator_mode_spec_standalone(tmp_path: Path) -> None:
    text = SPARK.replace("master: {cpu: 2, memory: 2Gi, nodeSelector: {pool: masters}}\n", "") \
        + "kubernetesMode: operator\n"
    [note, *_] = [n for n in backend_notes(resolve(_spec(tmp_path, text)), "local")
                  if n.startswith("kubernetesMode")]
    assert "runs Spark standalone" in note


def test_ray_autoscaling_and_placement_on_local() -> None:
    notes = backend_notes(resolve("ray/train-gpu"), "local")
    assert any("does not autoscale" in n for n in notes)
    assert any(n.startswith("workerGroups[gpu].nodeSelector") for n in notes)
    assert backend_notes(resolve("ray/train-gpu"), "kubernetes") == []


@pytest.mark.parametrize(("head", "noted"), [
    ("{cpu: 4}", True), ("{cpu: 1}", False), ("{cpu: 4, runTasks: true}", False)])
def test_local_says_a_ray_head_that_runs_no_tasks_gets_no_cpus(tmp_path: Path, head: str,
                                                               noted: bool) -> None:
    """Locally a head that runs no tasks starts with --num-cpus=0 and an unlimited process:
    its cpu says something only on Kubernetes (the pod's CPUs), and a changed one is noted."""
    text = ('kind: RayCluster\nname: tiny\nversion: 1\nrayVersion: "2.60.0"\n'
            f"image: rayproject/ray:2.60.0-py311-cpu\nhead: {head}\n"
            "workerGroups: [{name: cpu, replicas: 1}]\n")
    spec = resolve(_spec(tmp_path, text))
    cpu = [n for n in backend_notes(spec, "local") if n.startswith("head.cpu:")]
    assert bool(cpu) == noted
    if noted:
        assert "starts the Ray head with no CPUs for tasks (runTasks is false)" in cpu[0]
        assert "set runTasks: true" in cpu[0]
    assert backend_notes(spec, "kubernetes") == []


def test_local_says_a_secret_reference_comes_from_its_own_environment(tmp_path: Path) -> None:
    """Locally a secretKeyRef's Secret and key play no part: the variable of that name in the
    backend's own environment is what the nodes get."""
    text = ('kind: RayCluster\nname: tiny\nversion: 1\nrayVersion: "2.60.0"\n'
            "image: rayproject/ray:2.60.0-py311-cpu\n"
            "workerGroups: [{name: cpu, replicas: 1}]\n"
            "runtimeEnv:\n  env:\n    - {name: MODE, value: fast}\n"
            "    - {name: HF_TOKEN, secretKeyRef: {name: hf, key: token}}\n")
    spec = resolve(_spec(tmp_path, text))
    [note] = [n for n in backend_notes(spec, "local") if n.startswith("runtimeEnv")]
    assert note.startswith("runtimeEnv.env[HF_TOKEN].secretKeyRef: the local backend takes "
                           "$HF_TOKEN from its own environment, not Secret hf/token")
    assert backend_notes(spec, "kubernetes") == []


def test_kubernetes_notes_operator_mode_and_refuses_a_master(tmp_path: Path) -> None:
    spec = resolve(_spec(tmp_path))
    # standalone, an image tagged with the spec's version: every field holds
    assert backend_notes(spec, "kubernetes") == []
    assert refusals(spec, "kubernetes") == []
    assert refusals(spec, "local", default_spark_mode="operator") == []
    assert [f for f, _ in refusals(spec, "kubernetes", default_spark_mode="operator")] == [
        "master.cpu", "master.memory", "master.nodeSelector"]
    [note] = backend_notes(resolve("spark/etl"), "kubernetes", default_spark_mode="operator")
    assert note.startswith("operator mode (the deployment's EPHEMERAL_K8S_SPARK_MODE)")
    assert "at most workers.replicas (2)" in note
    assert "no master" in note


def test_the_cli_shows_them_and_refuses_in_one_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _spec(tmp_path)
    run = CliRunner().invoke(main.app, ["specs", "show", path, "--json", "--backend", "local"])
    assert run.exit_code == 0, run.output
    assert any(n.startswith("master.cpu, connect.cpu:") for n in json.loads(run.stdout)["notes"])
    # render: Kubernetes standalone (no mode chosen, by the spec or the deployment) honours
    # them all.
    run = CliRunner().invoke(main.app, ["render", path, "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["notes"] == []
    # A deployment in operator mode: show refuses it as its create would.
    monkeypatch.setenv("EPHEMERAL_K8S_SPARK_MODE", "operator")
    run = CliRunner().invoke(main.app, ["specs", "show", path, "--json", "--backend",
                                        "kubernetes"])
    assert run.exit_code == 2, run.output
    assert "master.nodeSelector: operator mode" in json.loads(run.stdout)["message"]
    run = CliRunner().invoke(main.app, ["specs", "show", "spark/etl", "--json", "--backend",
                                        "kubernetes"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["notes"][0].startswith("operator mode")


def test_local_says_how_it_stands_in_for_gpu_fields(tmp_path: Path) -> None:
    """The local backend gives nodes this host's GPUs by CUDA_VISIBLE_DEVICES and lists a Spark
    worker's GPUs in a resources file: an AMD resource or a discovery script means nothing
    there, and says so."""
    notes = backend_notes(resolve("spark/etl-gpu"), "local")
    assert any(n.startswith("workers.discoveryScript:") for n in notes), notes
    path = tmp_path / "amd.yaml"
    path.write_text((ROOT / "cluster_specs/ray/train-gpu.yaml").read_text().replace(
        "gpuResource: nvidia.com/gpu", "gpuResource: amd.com/gpu"))
    notes = backend_notes(resolve(str(path)), "local")
    assert any("gpuResource amd.com/gpu" in n for n in notes), notes
    assert backend_notes(resolve(str(path)), "kubernetes") == []


def test_kubernetes_says_a_dollar_reference_is_not_expanded(tmp_path: Path) -> None:
    """Values reach the process as written on every backend (Kubernetes' $(VAR) is escaped): a
    value written for Kubernetes to expand is said, before it is found not to be."""
    text = ('kind: RayCluster\nname: tiny\nversion: 1\nrayVersion: "2.60.0"\n'
            "image: rayproject/ray:2.60.0-py311-cpu\n"
            "workerGroups: [{name: cpu, replicas: 1}]\n"
            "runtimeEnv:\n  env:\n    - {name: JAVA_OPTS, value: '-Dmode=$(MODE)'}\n"
            "    - {name: PRICE, value: '$5'}\n")
    spec = resolve(_spec(tmp_path, text))
    [note] = backend_notes(spec, "kubernetes")
    assert note.startswith("runtimeEnv.env[JAVA_OPTS]: a $(VAR) in a value reaches the process as "
                           "written")
    spark = resolve(_spec(tmp_path, SPARK + "conf: {spark.app.note: '$(HOME)'}\n"))
    assert any(n.startswith("conf.spark.app.note: a $(VAR)")
               for n in backend_notes(spark, "kubernetes"))


OFF = SPARK.replace("connect: {enabled: true, cpu: 3, memory: 2Gi}",
                    "connect: {enabled: false, cpu: 3, memory: 2Gi, conf: {spark.a: b}, "
                    "nodeSelector: {pool: c}, tolerations: [{key: k, operator: Exists}]}")


def test_a_spec_file_that_turns_connect_off_sets_nothing_of_it(tmp_path: Path) -> None:
    """No backend builds a Connect server that is off: a file that still sizes, configures or
    places one is refused, every field by name with the fix, before anything is made."""
    from ephemeral.errors import SpecError

    with pytest.raises(SpecError) as err:
        resolve(_spec(tmp_path, OFF))
    assert err.value.fields == ["connect.cpu", "connect.memory", "connect.conf",
                                "connect.nodeSelector", "connect.tolerations"]
    assert "remove connect.memory, or set connect.enabled: true" in str(err.value)
    # Off with nothing else, or with the defaults written out, says nothing nobody uses.
    for connect in ("{enabled: false}", "{enabled: false, cpu: 1, memory: 1024Mi, conf: {}}"):
        text = SPARK.replace("connect: {enabled: true, cpu: 3, memory: 2Gi}",
                             f"connect: {connect}")
        assert not [n for n in backend_notes(resolve(_spec(tmp_path, text)), "local")
                    if "connect" in n.lower()]


@pytest.mark.parametrize("how", ["override", "profile", "ci-cpu and override"])
def test_a_profile_or_override_turning_connect_off_is_noted_not_refused(
        tmp_path: Path, how: str) -> None:
    """Turning a customised Connect server off at run time is the caller's choice (the ETL
    DAGs' {"connect": False}): the effective spec keeps its fields (on again, it is the same
    spec) and says they do nothing; no note speaks of a server that does not run."""
    path = _spec(tmp_path, SPARK.replace(
        "connect: {enabled: true, cpu: 3, memory: 2Gi}",
        "connect: {enabled: true, cpu: 3, memory: 2Gi, nodeSelector: {pool: c}}")
        + "profiles: {lite: {connect: {enabled: false}}}\n")
    profile, overrides = {"override": (None, {"connect": False}),
                          "profile": ("lite", None),
                          "ci-cpu and override": ("ci-cpu", {"connect": False})}[how]
    spec = resolve(path, profile, overrides)
    for backend in ("local", "kubernetes"):
        notes = backend_notes(spec, backend)
        [off] = [n for n in notes if "connect.enabled is false" in n]
        assert off.startswith("connect.cpu, connect.memory, connect.nodeSelector: ") \
            or how == "ci-cpu and override", off  # ci-cpu caps the server's cpu to its default
        assert "no Connect server runs and these do nothing" in off
        assert not [n for n in notes if "Connect server" in n and n != off], notes
    local = backend_notes(spec, "local")
    assert not [n for n in local if "connect.nodeSelector" in n and "placement" in n], local
    assert [n for n in local if n.startswith("master.nodeSelector: ")], local


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_driver_settings_without_a_connect_server_are_noted(tmp_path: Path,
                                                            backend: str) -> None:
    """The spec's spark.driver.* settings are the Connect server's alone (spark-submit's
    defaults leave them out): without a server they reach no process, and say where they go."""
    conf = "conf: {spark.driver.maxResultSize: 2g, spark.driver.extraJavaOptions: -Dx=1, spark.sql.x: y}\n"
    on = SPARK + conf
    for text, overrides in ((on.replace("connect: {enabled: true, cpu: 3, memory: 2Gi}\n", ""),
                             None), (on, {"connect": False})):
        [note] = [n for n in backend_notes(resolve(_spec(tmp_path, text), None, overrides),
                                           backend) if "spark.driver" in n]
        assert note.startswith("conf.spark.driver.extraJavaOptions, conf.spark.driver.maxResultSize: the "
                               "spec's spark.driver.* settings go to its Connect server alone"), \
            note
        assert "no Connect server runs (connect is absent or off), so they reach no process" \
            in note
        assert "EphemeralSparkSubmitOperator's conf or driver_memory" in note
        assert "connect.enabled: true" in note
    assert not [n for n in backend_notes(resolve(_spec(tmp_path, on)), backend)
                if "spark.driver" in n]


def test_kubernetes_settings_where_spark_runs_standalone_are_noted(tmp_path: Path) -> None:
    """spark.kubernetes.* settings are read by Spark's Kubernetes scheduler alone, which only
    operator mode runs: locally and in Kubernetes' standalone mode they do nothing."""
    text = SPARK.replace("connect: {enabled: true, cpu: 3, memory: 2Gi}",
                         "connect: {enabled: true, cpu: 3, memory: 2Gi, "
                         "conf: {spark.kubernetes.driver.label.team: a}}") \
        + "conf: {spark.kubernetes.executor.label.team: a, spark.sql.x: y}\n"
    spec = resolve(_spec(tmp_path, text))
    for backend, runner in (("local", "the local backend"),
                            ("kubernetes", "Kubernetes' standalone mode")):
        [note] = [n for n in backend_notes(spec, backend) if "spark.kubernetes" in n]
        assert note.startswith("conf.spark.kubernetes.executor.label.team, "
                               "connect.conf.spark.kubernetes.driver.label.team: only Spark's "
                               f"Kubernetes scheduler reads spark.kubernetes.* settings, and "
                               f"{runner} runs Spark standalone, where they do nothing"), note
    operator = resolve(_spec(tmp_path, text.replace(
        "master: {cpu: 2, memory: 2Gi, nodeSelector: {pool: masters}}\n", "")))
    assert not [n for n in backend_notes(operator, "kubernetes", default_spark_mode="operator")
                if "spark.kubernetes" in n]


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_gpu_fields_of_a_node_without_gpus_are_noted(tmp_path: Path, backend: str) -> None:
    """Every backend reads gpuResource and discoveryScript only for a node's GPUs; a profile or
    an override may take a GPU spec's GPUs, so a node left without them notes its GPU fields."""
    spark = resolve("spark/etl-gpu", None, {"workers": {"gpus": 0}})
    [note] = [n for n in backend_notes(spark, backend) if "gpus is 0" in n]
    assert note.startswith("workers.discoveryScript: workers.gpus is 0, so the node asks for no "
                           "GPU and these do nothing: they apply only when workers has gpus"), \
        note
    path = tmp_path / "amd.yaml"
    path.write_text((ROOT / "cluster_specs/ray/train-gpu.yaml").read_text().replace(
        "gpuResource: nvidia.com/gpu", "gpuResource: amd.com/gpu").replace(
        "head:\n", "head:\n  gpuResource: amd.com/gpu\n"))
    ray = resolve(str(path), None, {"workers": {"gpus": 0}})
    assert [n.split(":")[0] for n in backend_notes(ray, backend) if "gpus is 0" in n] == [
        "head.gpuResource", "workerGroups[gpu].gpuResource"]
    # With their GPUs, or with ci-cpu's (which drops the discovery script), nothing to say.
    for spec in (resolve("spark/etl-gpu"), resolve("spark/etl-gpu", "ci-cpu"),
                 resolve("ray/train-gpu", "ci-cpu")):
        assert not [n for n in backend_notes(spec, backend) if "gpus is 0" in n]


@pytest.mark.parametrize("backend", ["local", "fake"])
def test_the_image_is_noted_where_the_installed_engine_runs(backend: str) -> None:
    """image has no default (every spec names one), and the local backend runs this host's
    installed Ray or Spark whatever it says: always noted there, never on Kubernetes."""
    for ref, engine in (("ray/adhoc-cpu", "Ray 2.60.0 (it must be the spec's rayVersion)"),
                        ("spark/etl", "Spark 4.3.0 (it must be the spec's sparkVersion)")):
        spec = resolve(ref)
        [note] = [n for n in backend_notes(spec, backend) if n.startswith("image ")]
        assert note == (f"image {spec.spec.image}: the {backend} backend runs this host's "
                        f"installed {engine}, not the image (on Kubernetes, every node runs "
                        "the image)")
        assert not [n for n in backend_notes(spec, "kubernetes") if n.startswith("image ")]


@pytest.mark.parametrize(("head", "noted"), [
    ("{gpus: 1}", True), ("{gpus: 1, runTasks: true}", False), ("{cpu: 4}", False)])
@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_gpus_on_a_head_that_runs_no_tasks_are_noted(tmp_path: Path, head: str, noted: bool,
                                                     backend: str) -> None:
    """Both backends offer a head's GPUs with no CPUs when it runs no tasks: a training worker
    (CPUs and a GPU) never lands there, only work asking for no CPU; said, with the fixes."""
    text = ('kind: RayCluster\nname: tiny\nversion: 1\nrayVersion: "2.60.0"\n'
            f"image: rayproject/ray:2.60.0-py311-gpu\nhead: {head}\n"
            "workerGroups: [{name: gpu, replicas: 1, gpus: 1}]\n")
    notes = [n for n in backend_notes(resolve(_spec(tmp_path, text)), backend)
             if n.startswith("head.gpus")]
    assert bool(notes) == noted
    if noted:
        assert notes[0].startswith("head.gpus 1: the head offers tasks no CPUs (runTasks is "
                                   "false), so only work that asks for no CPU uses these GPUs")
        assert "set runTasks: true to offer the head's CPUs too, or gpus: 0" in notes[0]
