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
from ephemeral.specs.models import EFFECTIVE, ClusterSpec, RaySpec, SparkSpec
from ephemeral.yaml_files import load_yaml

_NAME = r"[a-z0-9][a-z0-9-]*"
_REF_RE = re.compile(rf"^(?P<path>{_NAME}/{_NAME})(?:@(?P<version>[^@]*))?$")
_MAX_VERSION_DIGITS = 9
# The kind each folder of the specs folder holds: ray/train-gpu is a RayCluster.
_KIND_OF_DIR = {"ray": "RayCluster", "spark": "SparkCluster"}
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
        elif e["type"] == "string_type" and isinstance(e.get("input"), bool | int | float):
            # YAML reads yes, on, 1 and 1.0 unquoted as a boolean or a number.
            msg += f": YAML read it as {e['input']!r}; quote the value, e.g. \"true\" or \"1\""
        elif e["type"] == "float_parsing" and isinstance(e.get("input"), str) \
                and re.fullmatch(r"[0-9]+m", e["input"]):
            msg += f": CPU is in cores here; write {int(e['input'][:-1]) / 1000:g} for {e['input']}"
        out.append((format_loc(loc), msg))
    return out


def parse_spec(data: Any, source: str, *, effective: bool = False) -> RaySpec | SparkSpec:
    """Validate a mapping as a cluster spec; raise SpecError naming ``source`` and field paths.
    ``effective``: a spec file after a profile or overrides (``EFFECTIVE``)."""
    if not isinstance(data, dict):
        raise SpecError(source, [("", "a spec is a YAML mapping with kind, name, version, ...")])
    try:
        return _ADAPTER.validate_python(data, context={EFFECTIVE: True} if effective else None)
    except ValidationError as err:
        # Not chained: the ValidationError holds the refused input, which may be a secret.
        raise SpecError(source, problems_of(err)) from None


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecNotFound(str(path), [("", f"cannot read the file: {err.strerror}")]) from err
    try:
        return load_yaml(text)
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


def is_spec_ref(ref: str) -> bool:
    """``<dir>/<name>`` or ``<dir>/<name>@<N>``: a reference into the specs folder, never a path."""
    m = _REF_RE.fullmatch(ref)
    pin = m.group("version") if m else None
    return m is not None and (pin is None or (pin.isdigit()
                                              and len(pin) <= _MAX_VERSION_DIGITS))


def in_specs_tree(path: Path, root: Path) -> bool:
    """Whether ``path`` is where a reference finds a spec: ``<specs dir>/<dir>/<file>``."""
    return path.resolve().parent.parent == root.resolve()


def file_identity_problems(path: Path, data: Any) -> list[tuple[str, str]]:
    """What a spec file in the specs folder says of itself that its place contradicts. A
    reference finds ``<dir>/<name>.yaml`` (or ``<name>@<N>.yaml``) by its file name, and the
    canonical reference, the report's prices and the form's choices all follow the file's
    ``name``, ``version`` and ``kind``: a copy renamed without editing it would be another spec
    under this one's name."""
    stem, _, pin = path.stem.partition("@")
    if not re.fullmatch(_NAME, stem) or (pin and not pin.isdigit()):
        return [("", f"the file name {path.name!r} is not <name>.yaml or <name>@<N>.yaml "
                     "with a lowercase name of letters, digits and '-'; rename it")]
    if not isinstance(data, dict):
        return []
    problems = []
    if data.get("name") != stem:
        problems.append(("name", f"{data.get('name')!r} differs from the file name {stem!r}; "
                                 "a spec's file is named after it: rename one of them"))
    if pin and data.get("version") != int(pin):
        problems.append(("version", f"{data.get('version')!r} differs from the file name's "
                                    f"@{pin}; an archived version keeps its number"))
    kind = _KIND_OF_DIR.get(path.parent.name)
    if kind and data.get("kind") != kind:
        problems.append(("kind", f"{data.get('kind')!r} in the {path.parent.name}/ folder, "
                                 f"which holds {kind} specs; move the file or fix its kind"))
    return problems


def _version_files(directory: Path, name: str) -> dict[int, list[Path]]:
    """The files of spec ``name`` in ``directory`` by the version each claims, archived files
    first."""
    found: dict[int, list[Path]] = {}
    for path in [*sorted(directory.glob(f"{name}@*.yaml")), directory / f"{name}.yaml"]:
        if not path.is_file():
            continue
        data = read_yaml(path)
        if problems := file_identity_problems(path, data):
            raise SpecError(str(path), problems)
        version = data.get("version") if isinstance(data, dict) else None
        if isinstance(version, int) and not isinstance(version, bool):
            found.setdefault(version, []).append(path)
    return found


def _versions(directory: Path, name: str) -> dict[int, Path]:
    # The current file wins if an archive claims its version (``version_problems`` refuses
    # that in ``specs validate``; a running deployment keeps resolving).
    return {v: paths[-1] for v, paths in _version_files(directory, name).items()}


def version_problems(path: Path) -> None:
    """Raise SpecError when another file of ``path``'s spec (in the specs folder) claims its
    version (an archived copy made without bumping the current file's): ``@N`` would name one
    of them by an order nobody sees. What ``specs validate`` checks each file for."""
    for version, paths in _version_files(path.parent, path.stem.partition("@")[0]).items():
        if path in paths and len(paths) > 1:
            others = ", ".join(p.name for p in paths if p != path)
            raise SpecError(str(path), [("version", f"{version} is also the version of "
                                         f"{others}; give the current file the next version")])


def resolve_ref(ref: str, specs_dir: Path | None = None) -> tuple[Path, str]:
    """The file a reference points to, and the canonical reference (``dir/name@version``)."""
    root = specs_dir or get_settings().specs_dir
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.is_file():
            raise SpecNotFound(ref, [("", "no such spec file")])
        data = read_yaml(path)
        if isinstance(data, dict) and path.resolve().is_relative_to(root.resolve()):
            if in_specs_tree(path, root) and (problems := file_identity_problems(path, data)):
                raise SpecError(str(path), problems)
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
        if not pin.isdigit() or len(pin) > _MAX_VERSION_DIGITS:
            raise SpecNotFound(ref, [("version", f"{pin[:20]!r} is not an integer version")])
        version = int(pin)
        if version not in versions:
            have = ", ".join(f"{rel}@{v}" for v in sorted(versions))
            raise SpecNotFound(ref, [("version", f"{rel} has no version {version}; "
                                      f"versions that exist: {have}")])
    return versions[version], f"{rel}@{version}"
