"""What Kubernetes cannot run of a spec is refused by one rule (``render.checks``): ``render``
raises every problem at once, and ``specs show --backend kubernetes`` (``backends.notes
.refusals``, which ``up`` also runs) names the same ones before anything is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ephemeral.backends.kubernetes.render import render
from ephemeral.backends.notes import backend_notes, refusals
from ephemeral.cli import main
from ephemeral.errors import SpecError
from ephemeral.specs import resolve
from tests.kubernetes.test_render import RAY_MINIMAL, handle_for, spec_file

SPARK = """\
kind: SparkCluster
name: t
version: 1
sparkVersion: "4.3.0"
image: apache/spark:4.3.0-python3
workers: {replicas: 2, cores: 1, memory: 2Gi}
connect: {enabled: true, memory: 1Gi}
"""
STANDALONE, OPERATOR = "standalone", "operator"


def refused(path: str, mode: str = STANDALONE) -> tuple[list[str], list[str]]:
    """The fields ``specs show --backend kubernetes`` refuses, and those render refuses."""
    spec = resolve(path)
    shown = [f for f, _ in refusals(spec, "kubernetes", default_spark_mode=mode)]
    assert refusals(spec, "local", default_spark_mode=mode) == []
    with pytest.raises(SpecError) as err:
        render(spec, handle_for(spec), default_spark_mode=mode)
    return shown, err.value.fields


@pytest.mark.parametrize(("text", "mode", "fields"), [
    (RAY_MINIMAL + "runtimeEnv:\n  env:\n    - {name: T, fromEnv: LOCAL_T}\n", STANDALONE,
     ["runtimeEnv.env[0].fromEnv"]),
    (RAY_MINIMAL.replace("2.60.0", "2.51.1"), STANDALONE, ["rayVersion"]),
    (SPARK.replace("memory: 1Gi", "memory: 512Mi"), STANDALONE, ["connect.memory"]),
    (SPARK.replace("connect: {enabled: true, memory: 1Gi}", "connect: {enabled: false}"),
     OPERATOR, ["connect.enabled"]),
    (SPARK + "master: {cpu: 2}\n", OPERATOR, ["master.cpu"]),
    (SPARK + "conf: {spark.kubernetes.namespace: other}\n", OPERATOR, ["conf"]),
    (SPARK.replace("memory: 2Gi}", "memory: 2Gi, gpus: 1, gpuResource: gpu.intel.com/i915, "
                   "discoveryScript: /opt/gpus.sh}"), OPERATOR, ["workers.gpuResource"]),
    (SPARK.replace("cores: 1", "cores: 2") + "conf: {spark.executor.cores: '1'}\n", OPERATOR,
     ["conf.spark.executor.cores"]),
], ids=["fromEnv", "old-ray", "small-connect", "no-connect", "master", "denied-conf",
        "gpu-resource", "executor-cores"])
def test_specs_show_refuses_what_render_refuses(tmp_path: Path, text: str, mode: str,
                                                fields: list[str]) -> None:
    assert refused(spec_file(tmp_path, text), mode) == (fields, fields)


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    text = RAY_MINIMAL.replace('"2.60.0"', '"2.51.1"') + (
        "runtimeEnv:\n  env:\n    - {name: A, fromEnv: LOCAL_A}\n    - {name: B, value: b}\n"
        "    - {name: C, fromEnv: LOCAL_C}\n")
    fields = ["runtimeEnv.env[0].fromEnv", "runtimeEnv.env[2].fromEnv", "rayVersion",
              "rayVersion"]  # too old, and not the image's 2.60.0
    assert refused(spec_file(tmp_path, text)) == (fields, fields)


def test_the_cli_refuses_before_anything_is_made(tmp_path: Path) -> None:
    path = spec_file(tmp_path, RAY_MINIMAL + "runtimeEnv:\n  env:\n"
                     "    - {name: T, fromEnv: LOCAL_T}\n")
    for args in (["specs", "show", path, "--backend", "kubernetes"], ["render", path]):
        run = CliRunner().invoke(main.app, [*args, "--json"])
        assert run.exit_code == 2, run.output
        assert "runtimeEnv.env[0].fromEnv: T: fromEnv is not supported on Kubernetes" in \
            json.loads(run.stdout)["message"]
    run = CliRunner().invoke(main.app, ["specs", "show", path, "--backend", "local", "--json"])
    assert run.exit_code == 0, run.output


@pytest.mark.parametrize("where", ["conf", "connect.conf"])
def test_operator_mode_refuses_the_conf_the_operator_sets_itself(tmp_path: Path,
                                                                 where: str) -> None:
    """The spark-operator (v2.5.2, sparkconnect/options.go) drops the driver pod's name from
    sparkConf and sets it, the executors' name prefix and pod template after sparkConf on the
    server's spark-submit line, where the last --conf wins: such a key was accepted and never
    applied. Refused naming it, apart from the keys its webhook refuses."""
    keys = {"spark.kubernetes.driver.pod.name": "mine",
            "spark.kubernetes.executor.podNamePrefix": "mine",
            "spark.kubernetes.executor.podTemplateFile": "/tmp/t.yaml",
            "spark.kubernetes.executor.podTemplateContainerName": "main",
            "spark.kubernetes.namespace": "other"}  # the webhook's
    conf = "{" + ", ".join(f"{k}: {v}" for k, v in keys.items()) + "}"
    path = spec_file(tmp_path, SPARK + f"conf: {conf}\n" if where == "conf" else
                     SPARK.replace("memory: 1Gi}", f"memory: 1Gi, conf: {conf}}}"))
    assert refused(path, OPERATOR) == (["conf", "conf"], ["conf", "conf"])
    whys = sorted(why for _, why in refusals(resolve(path), "kubernetes",
                                               default_spark_mode=OPERATOR))
    assert whys == [
        "spark.kubernetes.driver.pod.name, spark.kubernetes.executor.podNamePrefix, "
        "spark.kubernetes.executor.podTemplateContainerName, "
        "spark.kubernetes.executor.podTemplateFile: set by the spark-operator in operator mode "
        "(it sets them after sparkConf, so a value here never applies); remove them or use "
        "standalone mode",
        "spark.kubernetes.namespace: set by the spark-operator in operator mode (its webhook "
        "refuses them); remove them or use standalone mode"]


# --- memory: operator mode has the floors standalone has -----------------------------------


@pytest.mark.parametrize("mode", [STANDALONE, OPERATOR])
@pytest.mark.parametrize(("field", "given", "least"), [
    ("workers.memory", "memory: 2Gi}", {STANDALONE: "900Mi", OPERATOR: "600Mi"}),
    ("connect.memory", "memory: 1Gi}", {STANDALONE: "600Mi", OPERATOR: "600Mi"}),
])
def test_pods_too_small_for_sparks_heap_are_refused_in_both_modes(
        tmp_path: Path, mode: str, field: str, given: str, least: dict[str, str]) -> None:
    """A 512Mi worker gives an executor 384m of heap in operator mode (three quarters), less
    in standalone (its daemon takes a share): under Spark's 450 MiB, it could not start."""
    path = spec_file(tmp_path, SPARK.replace(given, "memory: 512Mi}"))
    assert refused(path, mode) == ([field], [field])
    [(_, why)] = refusals(resolve(path), "kubernetes", default_spark_mode=mode)
    assert why.startswith("512Mi leaves ")
    assert f"under Spark's 450 MiB heap on Kubernetes; give {field.split('.')[0]} at " \
           f"least {least[mode]}" in why.replace("give it", "give connect")
    spec = resolve(spec_file(tmp_path, SPARK.replace(given, f"memory: {least[mode]}}}")))
    assert refusals(spec, "kubernetes", default_spark_mode=mode) == []
    render(spec, handle_for(spec), default_spark_mode=mode)


@pytest.mark.parametrize("where", ["conf", "connect.conf"])
def test_an_operator_executor_larger_than_its_pod_is_refused(tmp_path: Path,
                                                             where: str) -> None:
    """Operator mode gives an executor three quarters of workers.memory as heap and the rest as
    overhead, so its pod's limit is workers.memory: 2g of heap on a 2Gi worker would make a
    2.5Gi pod, as standalone would start no executor at all."""
    conf = "{spark.executor.memory: 2g}"
    text = SPARK + f"conf: {conf}\n" if where == "conf" else \
        SPARK.replace("memory: 1Gi}", f"memory: 1Gi, conf: {conf}}}")
    path = spec_file(tmp_path, text)
    field = f"{where}.spark.executor.memory"
    assert refused(path, OPERATOR) == ([field], [field])
    [(_, why)] = refusals(resolve(path), "kubernetes", default_spark_mode=OPERATOR)
    assert "2g is more than operator mode's executor heap" in why
    assert "(1536m of workers.memory 2Gi)" in why
    assert "would be larger than workers.memory" in why
    assert "ask for at most 1536m" in why
    assert refused(path, STANDALONE)[1] == [field]  # a worker offers executors 1024m there
    spec = resolve(spec_file(tmp_path, text.replace("2g", "1536m")))
    conn = render(spec, handle_for(spec), default_spark_mode=OPERATOR).primary
    assert conn["spec"]["sparkConf"]["spark.executor.memory"] == "1536m"


# --- the version the image holds ------------------------------------------------------------


@pytest.mark.parametrize(("engine", "image", "field", "mode"), [
    ("ray", "rayproject/ray:2.59.0-py311-gpu", "rayVersion", STANDALONE),
    ("ray", "registry.example:5000/ml/ray:v2.59.0", "rayVersion", STANDALONE),
    ("spark", "apache/spark:3.5.0-python3", "sparkVersion", STANDALONE),
    ("spark", "apache/spark:3.5.0-python3", "sparkVersion", OPERATOR),
])
def test_a_version_the_images_tag_contradicts_is_refused(
        tmp_path: Path, engine: str, image: str, field: str, mode: str) -> None:
    text = RAY_MINIMAL if engine == "ray" else SPARK
    mine = "rayproject/ray:2.60.0-py311-cpu" if engine == "ray" else "apache/spark:4.3.0-python3"
    path = spec_file(tmp_path, text.replace(mine, image))
    assert refused(path, mode) == ([field], [field])
    [(_, why)] = refusals(resolve(path), "kubernetes", default_spark_mode=mode)
    version = "2.60.0" if engine == "ray" else "4.3.0"
    tagged = "2.59.0" if engine == "ray" else "3.5.0"
    assert why.startswith(f"{version}, but the image {image} is tagged {tagged}: on Kubernetes "
                          "the image decides")
    assert f"make {field} the image's version" in why


@pytest.mark.parametrize(("text", "image"), [
    (RAY_MINIMAL, "rayproject/ray:2.60-py311"),  # the newest 2.60.x: 2.60.0 agrees
    (RAY_MINIMAL, "rayproject/ray:2.60.0.a1b2c3-py311"),
    (SPARK, "apache/spark:v4.3.0"),
])
def test_a_tag_that_agrees_is_accepted_without_a_note(tmp_path: Path, text: str,
                                                      image: str) -> None:
    mine = "rayproject/ray:2.60.0-py311-cpu" if "Ray" in text else "apache/spark:4.3.0-python3"
    spec = resolve(spec_file(tmp_path, text.replace(mine, image)))
    assert refusals(spec, "kubernetes") == []
    assert backend_notes(spec, "kubernetes") == []
    render(spec, handle_for(spec))


@pytest.mark.parametrize(("text", "image", "note"), [
    (RAY_MINIMAL, "rayproject/ray:nightly-py311",
     "its tag names no Ray version, and on Kubernetes the image decides which Ray runs, "
     "whatever rayVersion (2.60.0) says"),
    (RAY_MINIMAL, "rayproject/ray", "its tag names no Ray version"),
    (SPARK, "registry.example/spark@sha256:" + "a" * 64,
     "its tag names no Spark version, and on Kubernetes the image decides which Spark runs, "
     "whatever sparkVersion (4.3.0) says"),
    (SPARK, "registry.example/team/spark:latest", "its tag names no Spark version"),
    (SPARK, "registry.example/team/spark:2024.06-python3", "its tag names no Spark version"),
    # A custom image's tag is its own version, not Ray's.
    (RAY_MINIMAL, "ghcr.io/acme/ray-train:1.4.2", "its tag names no Ray version"),
])
@pytest.mark.parametrize("mode", [STANDALONE, OPERATOR])
def test_a_tag_without_a_version_is_noted(tmp_path: Path, text: str, image: str, note: str,
                                          mode: str) -> None:
    mine = "rayproject/ray:2.60.0-py311-cpu" if "Ray" in text else "apache/spark:4.3.0-python3"
    spec = resolve(spec_file(tmp_path, text.replace(mine, image)))
    assert refusals(spec, "kubernetes", default_spark_mode=mode) == []
    notes = backend_notes(spec, "kubernetes", default_spark_mode=mode)
    assert notes[0].startswith(f"image {image}: {note}")
    assert not any("its tag names no" in n for n in backend_notes(spec, "local"))
    render(spec, handle_for(spec), default_spark_mode=mode)


@pytest.mark.parametrize(("where", "value"), [
    ("conf", "-XX:+UseG1GC -Dlog4j.debug=true"),
    ("conf", "a$b"),
    ("connect.conf", "$(HOME)/x"),
    ("connect.conf", "it's"),
])
def test_operator_mode_refuses_a_conf_value_bash_would_rewrite(tmp_path: Path, where: str,
                                                                value: str) -> None:
    """The operator joins sparkConf unquoted into the server's `bash -c` line: such a value
    never reached Spark as written, and one with a space stopped the server starting. Refused
    naming the key in operator mode; standalone mode passes it as written."""
    key = "spark.driver.extraJavaOptions"
    block = f"conf: {{{key}: {json.dumps(value)}}}\n"
    text = SPARK + block if where == "conf" else SPARK.replace(
        "memory: 1Gi}", f"memory: 1Gi, conf: {{{key}: {json.dumps(value)}}}}}")
    path = spec_file(tmp_path, text)
    assert refused(path, OPERATOR) == ([f"{where}.{key}"], [f"{where}.{key}"])
    [(_, why)] = refusals(resolve(path), "kubernetes", default_spark_mode=OPERATOR)
    assert "through bash with sparkConf unquoted" in why
    assert "use kubernetesMode: standalone" in why
    spec = resolve(path)
    assert refusals(spec, "kubernetes") == []
    render(spec, handle_for(spec))


def test_operator_mode_takes_what_bash_leaves_alone(tmp_path: Path) -> None:
    """Spark's own {{APP_ID}} placeholder and a glob matching no file reach Spark as written
    through the operator's bash line: not refused."""
    text = SPARK + ('conf: {spark.executor.extraJavaOptions: "-Dlog.name={{APP_ID}}", '
                    'spark.sql.sources.glob: "/data/*.parquet"}\n')
    spec = resolve(spec_file(tmp_path, text))
    assert refusals(spec, "kubernetes", default_spark_mode=OPERATOR) == []
    conf = render(spec, handle_for(spec), default_spark_mode=OPERATOR).primary["spec"]["sparkConf"]
    assert conf["spark.executor.extraJavaOptions"] == "-Dlog.name={{APP_ID}}"
