"""A spec's ``runtimeEnv.env`` cannot set the names ephemeral, Airflow and the cluster's auth
own, nor copy Airflow's or ephemeral's settings into a cluster (``fromEnv``); the local backend
sets the markers teardown relies on after the spec's variables, whatever a spec says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ephemeral.backends.local import procs
from ephemeral.backends.local.backend import LocalBackend
from ephemeral.errors import SpecError
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.models import EnvVar, RaySpec, RuntimeEnv


def ray(env: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "RayCluster", "name": "envs", "version": 1, "rayVersion": "2.60.0",
            "image": "rayproject/ray:2.60.0-py311-cpu",
            "workerGroups": [{"name": "w", "replicas": 1}],
            "runtimeEnv": {"env": [{"name": "NCCL_DEBUG", "value": "WARN"}, *env]}}


def refusal(env: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(SpecError) as err:
        parse_spec(ray([env]), "envs.yaml")
    [(field, message)] = err.value.problems
    return field, message


@pytest.mark.parametrize("name", [
    "EPHEMERAL_CLUSTER_UID",  # teardown kills by it: a spec's own made `down` miss 12 processes
    "EPHEMERAL_CLUSTER_DIR", "EPHEMERAL_CLUSTER_NAME", "EPHEMERAL_ARTIFACT_ROOT",
    "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_HOME", "_AIRFLOW_DB_MIGRATE",
    "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_K8S_TOKEN_AUTH",
])
@pytest.mark.parametrize("source", [{"value": "x"}, {"fromEnv": "MY_VALUE"},
                                    {"secretKeyRef": {"name": "s", "key": "k"}}])
def test_reserved_names_are_refused_naming_the_field(name: str, source: dict[str, Any]) -> None:
    field, message = refusal({"name": name, **source})
    assert field == "runtimeEnv.env[1].name"
    assert "reserved" in message
    assert "pick another name" in message


@pytest.mark.parametrize("source", [
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",  # put the DB password into the cluster's environment
    "AIRFLOW_CONN_S3", "EPHEMERAL_KUBECONFIG_CONTENT", "EPHEMERAL_REAPER_PASSWORD",
    "RAY_AUTH_TOKEN",
])
def test_from_env_cannot_copy_airflow_or_ephemeral_settings(source: str) -> None:
    field, message = refusal({"name": "DB_URL", "fromEnv": source})
    assert field == "runtimeEnv.env[1].fromEnv"
    assert source in message
    assert "never reach a cluster" in message


def test_ordinary_names_and_sources_still_validate() -> None:
    spec = parse_spec(ray([{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "t"}},
                           {"name": "DB_URL", "fromEnv": "SHOP_DB_URL"},
                           {"name": "RAY_DEDUP_LOGS", "value": "0"}]), "envs.yaml")
    assert isinstance(spec, RaySpec)
    assert [e.name for e in spec.runtime_env.env] == ["NCCL_DEBUG", "HF_TOKEN", "DB_URL",
                                                      "RAY_DEDUP_LOGS"]


def test_local_env_sets_the_cluster_markers_after_the_spec_variables(tmp_path: Path) -> None:
    """Even a spec that got past validation (constructed in code) cannot move the markers.
    The cluster's TMPDIR is a default a spec's own may replace (its files are then its own)."""
    spec = parse_spec(ray([]), "envs.yaml").model_copy(update={
        "runtime_env": RuntimeEnv.model_construct(env=[
            EnvVar.model_construct(name=procs.UID_ENV, value="my-own-id"),
            EnvVar.model_construct(name="EPHEMERAL_CLUSTER_NAME", value="someone-else"),
            EnvVar.model_construct(name="DECLARED", value="kept")])})
    env = LocalBackend._env(spec, "uid-of-the-cluster", name="eph-envs-0123456789",
                            tmp=tmp_path)
    assert env[procs.UID_ENV] == "uid-of-the-cluster"
    assert env["EPHEMERAL_CLUSTER_NAME"] == "eph-envs-0123456789"
    assert env["DECLARED"] == "kept"
    assert env["TMPDIR"] == str(tmp_path)
    scratch = spec.model_copy(update={"runtime_env": RuntimeEnv.model_construct(env=[
        EnvVar.model_construct(name="TMPDIR", value="/scratch")])})
    assert LocalBackend._env(scratch, "u", name="n", tmp=tmp_path)["TMPDIR"] == "/scratch"


@pytest.mark.parametrize(("ref", "field", "said"), [
    ({"name": "hf", "key": "a/b"}, "key", "is not a Secret's key"),
    ({"name": "hf", "key": "has space"}, "key", "is not a Secret's key"),
    ({"name": "hf", "key": ""}, "key", "is not a Secret's key"),
    ({"name": "Hf", "key": "t"}, "name", "is not a DNS-1123 subdomain"),
])
def test_a_secret_key_ref_kubernetes_would_refuse_is_refused_here(
        ref: dict[str, str], field: str, said: str) -> None:
    """A key with '/' or a space was rendered and the RayCluster made (its CRD has no pattern);
    its pods then never started. A Secret named with dots (my.secret) is a Secret's name."""
    where, message = refusal({"name": "HF_TOKEN", "secretKeyRef": ref})
    assert where == f"runtimeEnv.env[1].secretKeyRef.{field}"
    assert said in message


def test_a_secret_named_with_dots_is_taken() -> None:
    spec = parse_spec(ray([{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf.tokens",
                                                                 "key": "hf_token.v2"}}]),
                      "envs.yaml")
    assert isinstance(spec, RaySpec)
