"""Kubernetes-style quantities (memory, CPU) and durations, parsed strictly.

Specs are written for Kubernetes first, so memory uses its quantity syntax (``512Mi``, ``4Gi``,
``2G``) and the local backend converts the same strings to bytes.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_MEMORY_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
MEMORY_HELP = "a Kubernetes quantity greater than zero, such as 512Mi, 4Gi or 2G (no spaces)"

_DURATION_RE = re.compile(r"^(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?$")
DURATION_HELP = "a duration greater than zero such as 90s, 30m, 6h or 1h30m"


def memory_bytes(value: str) -> int:
    """Bytes in a memory quantity; raises ValueError (with what is allowed) when malformed."""
    m = _MEMORY_RE.fullmatch(value.strip()) if value == value.strip() else None
    if not m:
        raise ValueError(f"{value!r} is not {MEMORY_HELP}")
    n = int(float(m.group("num")) * _MEMORY_UNITS[m.group("unit")])
    if n <= 0:
        raise ValueError(f"{value!r} must be greater than zero ({MEMORY_HELP})")
    return n


def _check_memory(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{value!r} is not {MEMORY_HELP}")
    text = str(value)
    memory_bytes(text)
    return text


def duration_seconds(value: str) -> int:
    m = _DURATION_RE.fullmatch(value)
    if not value or not m:
        raise ValueError(f"{value!r} is not {DURATION_HELP}")
    parts = {k: int(v) for k, v in m.groupdict().items() if v}
    total = (
        parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
        + parts.get("s", 0)
    )
    if total <= 0:
        raise ValueError(f"{value!r} must be greater than zero ({DURATION_HELP})")
    return total


def _check_duration(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not {DURATION_HELP}")
    duration_seconds(value)
    return value


def format_memory(n_bytes: int) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n_bytes % size == 0:
            return f"{n_bytes // size}{unit}"
    return str(n_bytes)


Memory = Annotated[str, BeforeValidator(_check_memory)]


def at_least(minimum: str, why: str) -> AfterValidator:
    """A memory field's floor: below it the engine fails at start (Spark refuses a heap under
    450 MiB; a Ray node's raylet and object store need a few hundred MiB), after the cluster
    was created, not here."""
    def check(value: str) -> str:
        if memory_bytes(value) < memory_bytes(minimum):
            raise ValueError(f"{value} is below {minimum}, the least {why}; give it at least "
                             f"{minimum}")
        return value
    return AfterValidator(check)


RayMemory = Annotated[Memory, at_least("512Mi", "a Ray node runs with")]
SparkDaemonMemory = Annotated[Memory, at_least("256Mi", "a Spark master runs with")]
SparkJvmMemory = Annotated[Memory, at_least("512Mi", "that leaves Spark's executors and "
                                                       "driver the 450 MiB heap they need")]
Duration = Annotated[str, BeforeValidator(_check_duration)]
