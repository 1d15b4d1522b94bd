"""Offline validation of manifests, as close to what the API server refuses as a schema gets.

``validate_manifest(obj)`` returns a list of problems (empty when valid):

- a RayCluster is checked against the vendored KubeRay CRD (``schemas/kuberay``, v1
  ``openAPIV3Schema``), and a SparkConnect against the spark-operator's (``schemas/
  spark-operator``, v1alpha1; its schemaless pod templates as core PodTemplateSpecs); unknown
  fields are refused by walking the schema, as the API server does with
  ``fieldValidation=Strict`` (the CRD's own schema leaves objects open);
- core objects (Deployment, StatefulSet, Service, ConfigMap, Secret, ...) are checked with the
  strict schemas bundled in ``kubernetes-validate`` for ``KUBERNETES_VERSION``;
- on every object: metadata (as an ObjectMeta), name syntax, label keys and values.

Not covered: server-side defaulting, CEL rules (``x-kubernetes-validations``), admission.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

KUBERNETES_VERSION = "1.33"
SCHEMAS = Path(__file__).parent / "schemas"
CRDS = {("ray.io/v1", "RayCluster"): SCHEMAS / "kuberay" / "ray.io_rayclusters.yaml",
        ("sparkoperator.k8s.io/v1alpha1", "SparkConnect"):
            SCHEMAS / "spark-operator" / "sparkoperator.k8s.io_sparkconnects.yaml"}

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Objects whose name becomes a DNS label (a Service's host name); others are subdomains.
_LABEL_NAMED_KINDS = {"Service", "RayCluster", "SparkConnect"}
_NAME_MAX = {"RayCluster": 53, "SparkConnect": 56}  # 56: "-server" makes a Service name


def validate_manifest(obj: dict[str, Any]) -> list[str]:
    """Problems the API server would refuse ``obj`` for (an empty list when there are none)."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind are required strings"]
    problems = _metadata_problems(obj)
    crd = CRDS.get((api_version, kind))
    if crd is not None:
        schema = crd_schema(crd, api_version.split("/")[-1])
        validator = jsonschema.Draft7Validator(schema)
        problems += [f"{_path(e.absolute_path)}: {e.message}"
                     for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path))]
        problems += unknown_fields(obj, schema)
        problems += _embedded_templates(obj)
    else:
        problems += _core_problems(obj)
    problems += _label_problems(obj)
    return problems


def _embedded_templates(obj: dict[str, Any]) -> list[str]:
    """A SparkConnect's pod templates are schemaless in its CRD; the operator and Spark make
    pods of them, which the API server then validates as core pods: check them as such."""
    if obj.get("kind") != "SparkConnect":
        return []
    problems = []
    for part in ("server", "executor"):
        template = ((obj.get("spec") or {}).get(part) or {}).get("template")
        if template is not None:
            wrapper = {"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": "t"}, "template": template}
            problems += [f"spec.{part}.template: {p}" for p in _core_problems(wrapper)]
    return problems


def warm_up() -> None:
    """Load every schema now (the KubeRay CRD takes seconds to parse), not in a request."""
    for (api_version, _), path in CRDS.items():
        crd_schema(path, api_version.split("/")[-1])


def _core_problems(obj: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"no schema for {obj['apiVersion']} {obj['kind']}: {e}"]
    except kubernetes_validate.ValidationError as e:
        return [f"{_path(e.absolute_path)}: {e.message}"]
    return []


def _metadata_problems(obj: dict[str, Any]) -> list[str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: required"]
    # A ConfigMap is nothing but an ObjectMeta here: its strict schema checks the metadata.
    problems = _core_problems({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    name, kind = meta.get("name"), obj["kind"]
    if not isinstance(name, str):
        return [*problems, "metadata.name: required"]
    limit = _NAME_MAX.get(kind, 63 if kind in _LABEL_NAMED_KINDS else 253)
    pattern = _DNS1035_LABEL if kind in _LABEL_NAMED_KINDS else _DNS1123_SUBDOMAIN
    if len(name) > limit or not pattern.match(name):
        problems.append(f"metadata.name: {name!r} is not a valid {kind} name "
                        f"({pattern.pattern}, at most {limit} characters)")
    return problems


def _label_problems(obj: Any, path: str = "") -> list[str]:
    """Label keys and values wherever labels or label selectors appear."""
    problems: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            if key in ("labels", "matchLabels") and isinstance(value, dict):
                problems += [f"{here}: {p}" for p in _bad_labels(value)]
            elif key == "selector" and isinstance(value, dict) and "matchLabels" not in value:
                problems += [f"{here}: {p}" for p in _bad_labels(value)]  # a Service's selector
            else:
                problems += _label_problems(value, here)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            problems += _label_problems(item, f"{path}[{i}]")
    return problems


def _bad_labels(labels: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
            problems.append(f"label key {key!r}: prefix is not a DNS subdomain")
        if len(name) > 63 or not _LABEL_NAME.match(name):
            problems.append(f"label key {key!r}: name part is not a valid label name")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"label {key!r}: {value!r} is not a valid label value")
    return problems


@cache
def crd_schema(path: Path, version: str) -> dict[str, Any]:
    """A CRD version's openAPIV3Schema as JSON Schema (Kubernetes extensions translated)."""
    crd = yaml.safe_load(path.read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema: dict[str, Any] = _translate(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            return schema
    raise KeyError(f"{path.name} has no version {version}")


def _translate(node: Any) -> Any:
    if isinstance(node, dict):
        for value in node.values():
            _translate(value)
        if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.pop("nullable", False) and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
    elif isinstance(node, list):
        for item in node:
            _translate(item)
    return node


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of ``obj`` that ``schema`` does not declare (strict field validation)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems: list[str] = []
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            if props is not None and key in props:
                problems += unknown_fields(value, props[key], here)
            elif isinstance(extra, dict):
                problems += unknown_fields(value, extra, here)
            elif props is not None and extra is not True:
                problems.append(f"{here}: unknown field")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            problems += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return problems


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"
