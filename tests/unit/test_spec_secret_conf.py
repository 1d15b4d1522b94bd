"""One rule for secrets in a spec: Spark conf keys that name a secret (Spark's redaction regex
and the storage keys it misses) and values that are one (a PEM block, a URL with credentials),
in ``conf``, ``connect.conf`` and a literal ``runtimeEnv.env`` value."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml

from ephemeral.errors import SpecError
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.models import secret_key

ETL = Path(__file__).resolve().parents[2] / "cluster_specs/spark/etl.yaml"
PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC-not-a-real-key\n"
       "-----END PRIVATE KEY-----\n")


def spark(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ETL.read_text())
    return data | changes


def refused(data: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as err:
        parse_spec(data, "etl.yaml")
    # Nor in the traceback (a DAG import error, a task log): the error it was raised from.
    assert "not-a-real-key" not in "".join(traceback.format_exception(err.value))
    return err.value


@pytest.mark.parametrize("key", [
    # Missed before: GCS service-account keys and Huawei OBS's secret key.
    "spark.hadoop.fs.gs.auth.service.account.private.key",
    "spark.hadoop.google.cloud.auth.service.account.private.key",
    "spark.hadoop.fs.obs.sk",
    "spark.hadoop.fs.adl.oauth2.credential",
    # Caught before, still caught (Spark's redaction regex and the storage keys it misses).
    "spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key",
    "spark.hadoop.fs.s3a.session.token", "spark.ssl.keyPassword",
    "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net",
    "spark.hadoop.fs.s3a.server-side-encryption.key", "spark.hadoop.fs.s3.awsAccessKeyId",
    "spark.hadoop.fs.azure.account.oauth2.client.secret",
])
def test_secret_keys_are_refused(key: str) -> None:
    err = refused(spark(conf={key: "not-a-real-key"}))
    assert err.fields == ["conf"]
    assert f"{key}: a secret has no place in a spec" in str(err)


@pytest.mark.parametrize("key", [
    "spark.sql.shuffle.partitions", "spark.hadoop.fs.s3a.aws.credentials.provider",
    "spark.kubernetes.driver.secrets.spark-secret",
    "spark.hadoop.fs.s3a.delegation.token.binding",
    "spark.kubernetes.authenticate.oauthTokenFile",
    "spark.hadoop.google.cloud.auth.service.account.json.keyfile",
    "spark.hadoop.hadoop.security.credential.provider.path",
    "spark.io.encryption.keygen.algorithm", "spark.ssl.keyStore",
    # Spark's TLS key is a PEM file's path (SSLOptions), not the key itself.
    "spark.ssl.rpc.privateKey", "spark.ssl.ui.privateKey",
])
def test_where_a_secret_is_and_ordinary_keys_are_no_secrets(key: str) -> None:
    assert not secret_key(key)
    assert parse_spec(spark(conf={key: "x"}), "etl.yaml")


@pytest.mark.parametrize("pem", [PEM, PEM.replace("PRIVATE", "RSA PRIVATE"),
                                 "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1r..."])
def test_a_pem_block_is_refused_whatever_its_key(pem: str) -> None:
    err = refused(spark(connect={"enabled": True, "conf": {"spark.custom.blob": pem + "x"}}))
    assert err.fields == ["connect.conf"]
    assert "spark.custom.blob: a secret has no place in a spec" in str(err)


def ray_env(env: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "RayCluster", "name": "envs", "version": 1, "rayVersion": "2.60.0",
            "image": "rayproject/ray:2.60.0-py311-cpu",
            "workerGroups": [{"name": "w", "replicas": 1}], "runtimeEnv": {"env": [env]}}


@pytest.mark.parametrize(("value", "why"), [
    (PEM, "PEM block"),
    ("postgresql://shop:not-a-real-key@db:5432/shop", "credentials in its URL"),
])
def test_a_literal_env_value_that_is_a_secret_is_refused(value: str, why: str) -> None:
    err = refused(ray_env({"name": "SHOP_KEY", "value": value}))
    [(field, message)] = err.problems
    assert field == "runtimeEnv.env[0].value"
    assert why in message
    assert "secretKeyRef" in message


def test_ordinary_literal_env_values_still_validate() -> None:
    assert parse_spec(ray_env({"name": "TOKENIZERS_PARALLELISM", "value": "false"}), "r.yaml")
    assert parse_spec(ray_env({"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}),
                      "r.yaml")


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "HF_TOKEN",
                                  "MLFLOW_TRACKING_PASSWORD", "azureClientSecret"])
def test_a_literal_value_for_a_secret_name_is_refused(name: str) -> None:
    # The value looks like nothing; the name says what it is, as a conf key's does.
    err = refused(ray_env({"name": name, "value": "aq8Yx2b"}))
    [(field, message)] = err.problems
    assert field == "runtimeEnv.env[0].value"
    assert f"{name} names a secret" in message
    assert "secretKeyRef" in message
    assert "fromEnv" in message


@pytest.mark.parametrize("env", [
    {"name": "HF_TOKEN", "fromEnv": "HF_TOKEN"},
    {"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}},
    {"name": "HF_TOKEN_PATH", "value": "/var/run/secrets/hf/token"},  # where it is: no secret
    {"name": "HF_TOKEN", "value": ""},  # empty: unsets it, holds nothing
    # About a secret, not one: where it is, how it is fetched, a switch, a policy.
    {"name": "SECRETS_DIR", "value": "/run/secrets"},
    {"name": "TOKEN_URL", "value": "https://auth.example.com/token"},
    {"name": "SECRET_NAME", "value": "db-creds"},
    {"name": "PASSWORD_MIN", "value": "8"},
    {"name": "HF_HUB_DISABLE_IMPLICIT_TOKEN", "value": "1"},
    {"name": "AWS_ACCESS_KEY_ID", "value": "AKIAEXAMPLE"},  # an identifier; its secret is not
])
def test_secret_names_by_reference_or_place_still_validate(env: dict[str, Any]) -> None:
    assert parse_spec(ray_env(env), "r.yaml")
