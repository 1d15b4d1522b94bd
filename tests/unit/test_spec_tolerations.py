"""Tolerations and node selectors the Kubernetes API server refuses (its ValidateTolerations and
label rules) fail at spec validation, naming the field and the fix, before anything is
created."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral.errors import SpecError
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.models import RaySpec


def ray(toleration: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "RayCluster", "name": "tol", "version": 1, "rayVersion": "2.60.0",
            "image": "rayproject/ray:2.60.0-py311-gpu",
            "workerGroups": [{"name": "gpu", "replicas": 1, "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                toleration]}]}


@pytest.mark.parametrize(("toleration", "field", "says"), [
    ({"key": "k", "operator": "Exists", "value": "v"}, "value",
     "value must be empty when operator is Exists"),
    ({"operator": "Equal"}, "operator", "operator must be Exists when key is empty"),
    ({"value": "v", "effect": "NoSchedule"}, "operator",  # Equal by default, as on Kubernetes
     "operator must be Exists when key is empty"),
    ({"key": "k", "operator": "Exists", "tolerationSeconds": 30}, "tolerationSeconds",
     "set effect: NoExecute"),
    ({"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30},
     "tolerationSeconds", "applies only to effect: NoExecute"),
    ({"key": "nospecialchars^=@", "operator": "Exists"}, "key", "is not a taint key"),
    ({"key": "Bad_Prefix.com/gpu", "operator": "Exists"}, "key", "is not a taint key"),
    ({"key": "k", "value": "has space"}, "value", "is not a taint value"),
    ({"key": "k", "value": "v" * 64}, "value", "is not a taint value"),
])
def test_tolerations_kubernetes_refuses_are_refused(toleration: dict[str, Any], field: str,
                                                    says: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(ray(toleration), "tol.yaml")
    [(path, message)] = err.value.problems
    assert path == f"workerGroups[0].tolerations[1].{field}"
    assert says in message


@pytest.mark.parametrize("toleration", [
    {"operator": "Exists"},  # tolerates everything
    {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0},
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
     "tolerationSeconds": 300},
    {"key": "dedicated", "value": "ml-team_1.a", "effect": "NoSchedule"},
    {"key": "dedicated", "operator": "Equal", "value": ""},
    {"key": "example.com/pool", "operator": "Exists", "value": ""},
])
def test_tolerations_kubernetes_accepts_still_validate(toleration: dict[str, Any]) -> None:
    spec = parse_spec(ray(toleration), "tol.yaml")
    assert isinstance(spec, RaySpec)
    assert len(spec.worker_groups[0].tolerations) == 2


def with_selector(selector: dict[str, str]) -> dict[str, Any]:
    spec = ray({"operator": "Exists"})
    spec["workerGroups"][0]["nodeSelector"] = selector
    return spec


@pytest.mark.parametrize(("selector", "says"), [
    ({"gpu type": "a100"}, "is not a node label key"),
    ({"Bad_Prefix.com/gpu": "a100"}, "is not a node label key"),
    ({"/gpu": "a100"}, "is not a node label key"),
    ({"pool": "a100,zone!=x"}, "is not a node label value"),  # selector syntax in a value
    ({"pool": "a100\n"}, "is not a node label value"),
    ({"pool": "v" * 64}, "is not a node label value"),
])
def test_node_selector_kubernetes_refuses_is_refused(selector: dict[str, str], says: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_selector(selector), "sel.yaml")
    [(path, message)] = err.value.problems
    assert path == "workerGroups[0].nodeSelector"
    assert says in message
    assert "63 letters" in message


def test_node_selector_labels_kubernetes_accepts_validate() -> None:
    selector = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "pool": "",
                "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    spec = parse_spec(with_selector(selector), "sel.yaml")
    assert isinstance(spec, RaySpec)
    assert spec.worker_groups[0].node_selector == selector
