"""Kubernetes-style quantities (memory, CPU) and durations, parsed strictly.

Specs are written for Kubernetes first, so memory uses its quantity syntax (``512Mi``, ``4Gi``,
``2G``) and the local backend converts the same strings to bytes.
"""

from __future__ import annotations

import re
from decimal import ROUND_FLOOR, Decimal, localcontext
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
MEMORY_MAX, _MEMORY_MAX_BYTES = "64Ti", 64 * 2**40
"""A node's largest memory (the biggest machines clouds rent have 24 TiB), as ``cpu``, ``gpus``
and ``replicas`` have theirs: beyond it a value is a typo, not a size."""
MEMORY_HELP = (f"a Kubernetes quantity greater than zero and at most {MEMORY_MAX}, such as 512Mi, "
               "4Gi or 2G (no spaces)")

_DURATION_RE = re.compile(r"^(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?$")
DURATION_HELP = "a duration greater than zero such as 90s, 30m, 6h or 1h30m"
_DURATION_MAX_LEN = 32  # "9999d23h59m59s" is 14 characters; more digits are no lifetime


def shown(value: str, limit: int = 40) -> str:
    """A refused value as a message shows it: a thousand-digit one is cut, not echoed whole."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def _bytes_of(num: str, unit: str | None) -> Decimal:
    """The exact product, rounded down to whole bytes as the engines count them. Decimal, not
    float: a float overflows on a long number (OverflowError, no message) and rounds a short
    one; not int: Python refuses to read an integer of more than 4300 digits."""
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = 80, ROUND_FLOOR  # far more than the digits below MEMORY_MAX
        return (Decimal(num) * _MEMORY_UNITS[unit]).to_integral_value()


def memory_bytes(value: str) -> int:
    """Bytes in a memory quantity; raises ValueError (with what is allowed) when malformed,
    zero or larger than ``MEMORY_MAX``."""
    m = _MEMORY_RE.fullmatch(value.strip()) if value == value.strip() else None
    if not m:
        raise ValueError(f"{shown(value)} is not {MEMORY_HELP}")
    n = _bytes_of(m.group("num"), m.group("unit"))
    if n <= 0:
        raise ValueError(f"{shown(value)} must be greater than zero ({MEMORY_HELP})")
    if n > _MEMORY_MAX_BYTES:
        raise ValueError(f"{shown(value)} is more than {MEMORY_MAX}, the most memory a node may "
                         f"have; ask for at most {MEMORY_MAX}")
    return int(n)


def _check_memory(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{shown(str(value))} is not {MEMORY_HELP}")
    if isinstance(value, int) and value > _MEMORY_MAX_BYTES:  # str() refuses 4300 digits
        raise ValueError(f"a number of {value.bit_length()} bits is more than {MEMORY_MAX} (in "
                         f"bytes), the most memory a node may have; ask for at most {MEMORY_MAX}")
    text = str(value)
    memory_bytes(text)
    return text


def duration_seconds(value: str) -> int:
    if len(value) > _DURATION_MAX_LEN:  # before int(): it refuses 4300 digits in its own words
        raise ValueError(f"{shown(value)} is longer than a duration is ({DURATION_HELP})")
    m = _DURATION_RE.fullmatch(value)
    if not value or not m:
        raise ValueError(f"{shown(value)} is not {DURATION_HELP}")
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
        raise ValueError(f"{shown(str(value))} is not {DURATION_HELP}")
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
