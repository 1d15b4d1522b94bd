"""Load cluster specs from YAML, resolve references such as ``ray/train-gpu@3``, hash them.

A reference is ``<dir>/<name>`` (the file ``<specs dir>/<dir>/<name>.yaml``), optionally pinned to
a version with ``@N``; a pin that is not the file's version is an error naming the versions that
exist (older versions can be kept beside it as ``<name>@<N>.yaml``). A path to a ``.yaml`` file is
accepted as well.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from ephemeral.errors import SpecError, SpecNotFound
from ephemeral.settings import get_settings
from ephemeral.specs.models import ClusterSpec, RaySpec, SparkSpec

_REF_RE = re.compile(r"^(?P<path>[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9-]*)(?:@(?P<version>[^@]*))?$")
_ADAPTER: TypeAdapter[RaySpec | SparkSpec] = TypeAdapter(ClusterSpec)


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_of(err: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) pairs from a pydantic error, in the spec's own camelCase names."""
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("RayCluster", "SparkCluster"))
        # Drop pydantic's "function-after[...]" wrapper names from paths.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif e["type"] == "union_tag_invalid" or e["type"] == "union_tag_not_found":
            # pydantic reports the discriminator at the mapping itself; name the field instead.
            loc = (*loc, "kind")
            msg = "kind must be RayCluster or SparkCluster"
        elif e["type"] == "missing":
            msg = "required field is missing"
        out.append((format_loc(loc), msg))
    return out


def parse_spec(data: Any, source: str) -> RaySpec | SparkSpec:
    """Validate a mapping as a cluster spec; raise SpecError naming ``source`` and field paths."""
    if not isinstance(data, dict):
        raise SpecError(source, [("", "a spec is a YAML mapping with kind, name, version, ...")])
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        # Not chained: the ValidationError holds the refused input, which may be a secret.
        raise SpecError(source, problems_of(err)) from None


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecNotFound(str(path), [("", f"cannot read the file: {err.strerror}")]) from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(str(path), [("", f"malformed YAML at {where}: {problem}")]) from err


def load_file(path: Path) -> RaySpec | SparkSpec:
    return parse_spec(read_yaml(path), str(path))


def spec_hash(spec: RaySpec | SparkSpec) -> str:
    """Content hash of a spec: stable across key order, formatting and comments in the YAML."""
    data = spec.model_dump(mode="json", by_alias=True, exclude={"profiles", "description"})
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _versions(directory: Path, name: str) -> dict[int, Path]:
    found: dict[int, Path] = {}
    # Archived files first, so that the current file wins if one claims the same version.
    for path in [*sorted(directory.glob(f"{name}@*.yaml")), directory / f"{name}.yaml"]:
        if not path.is_file():
            continue
        data = read_yaml(path)
        version = data.get("version") if isinstance(data, dict) else None
        if isinstance(version, int):
            found[version] = path
    return found


def resolve_ref(ref: str, specs_dir: Path | None = None) -> tuple[Path, str]:
    """The file a reference points to, and the canonical reference (``dir/name@version``)."""
    root = specs_dir or get_settings().specs_dir
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.is_file():
            raise SpecNotFound(ref, [("", "no such spec file")])
        data = read_yaml(path)
        if isinstance(data, dict) and path.resolve().is_relative_to(root.resolve()):
            kind_dir = path.resolve().parent.relative_to(root.resolve())
            return path, f"{kind_dir}/{data.get('name')}@{data.get('version')}"
        return path, str(path)
    m = _REF_RE.fullmatch(ref)
    if not m:
        raise SpecNotFound(ref, [("", "a spec reference looks like ray/train-gpu@3, ray/train-gpu "
                                  "or a path to a .yaml file")])
    rel, pin = m.group("path"), m.group("version")
    directory, name = (root / rel).parent, rel.split("/")[1]
    versions = _versions(directory, name)
    if not versions:
        known = sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.yaml") if "@" not in p.stem)
        raise SpecNotFound(ref, [("", f"no spec {rel!r} under {root}; known specs: "
                                  + (", ".join(known) or "none"))])
    if pin is None:
        version = max(versions)
    else:
        if not pin.isdigit():
            raise SpecNotFound(ref, [("version", f"{pin!r} is not an integer version")])
        version = int(pin)
        if version not in versions:
            have = ", ".join(f"{rel}@{v}" for v in sorted(versions))
            raise SpecNotFound(ref, [("version", f"{rel} has no version {version}; "
                                      f"versions that exist: {have}")])
    return versions[version], f"{rel}@{version}"
