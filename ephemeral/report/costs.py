"""Prices that turn a run report's reserved seconds into money.

``$EPHEMERAL_COST_FILE`` names a small YAML file::

    currency: USD
    default: {cpuHour: 0.04, gpuHour: 2.50, memoryGibHour: 0.005}
    specs:                       # by spec name, or pinned to a version; fields not given
      ray/train-gpu: {gpuHour: 3.10}   # fall back to the default's
      spark/etl@1: {cpuHour: 0.03}

Each is also Airflow's ``[ephemeral] cost_file`` and so on (ephemeral.settings).
Without a file, ``$EPHEMERAL_COST_CPU_HOUR``, ``$EPHEMERAL_COST_GPU_HOUR``,
``$EPHEMERAL_COST_MEMORY_GIB_HOUR`` (and ``$EPHEMERAL_COST_CURRENCY``, default USD) give a default
for every spec. With neither, reports carry seconds and no money. A unit a cluster reserves
with no price makes that cluster's cost unknown (``unpriced`` in its report), never free.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from ephemeral.errors import EphemeralError, SettingError, field_problems
from ephemeral.settings import file_path, lookup, setting, unused_setting

log = logging.getLogger(__name__)
ENV_PRICES = {"cpu_hour": "EPHEMERAL_COST_CPU_HOUR", "gpu_hour": "EPHEMERAL_COST_GPU_HOUR",
              "memory_gib_hour": "EPHEMERAL_COST_MEMORY_GIB_HOUR"}


def price_setting(field: str) -> str:
    """Where a unit's price is set: ``gpuHour (EPHEMERAL_COST_GPU_HOUR)``."""
    return f"{to_camel(field)} ({ENV_PRICES[field]})"


def _missing(price: Price) -> list[str]:
    """The unit prices ``price`` leaves unset while it sets others (memory's may be: 0)."""
    from ephemeral.report.model import NEEDED

    given = price.model_dump()
    missing = [price_setting(k) for k, v in given.items() if v is None and k in NEEDED]
    return missing if any(v is not None for v in given.values()) else []


def _warn_partial(missing: list[str], where: str) -> None:
    """Some unit prices set and others not: a cluster that reserves an unpriced unit gets no
    cost (the report names the price missing); said here, where it is configured."""
    if missing:
        log.warning("%s: no price for %s; a cluster that reserves those units gets no cost "
                    "in its run report (set 0 for a unit that is free)", where,
                    ", ".join(missing))


class CostConfigError(EphemeralError, ValueError):
    """The price setting is unreadable: names the setting, the field and the fix."""


class _Model(BaseModel):
    # A price is a finite number: infinity was taken and wrote Infinity into report.json.
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              frozen=True, hide_input_in_errors=True, allow_inf_nan=False)


class Price(_Model):
    """Per hour of one reserved unit: a CPU core, a GPU, a GiB of memory."""

    cpu_hour: float | None = Field(default=None, ge=0)
    gpu_hour: float | None = Field(default=None, ge=0)
    memory_gib_hour: float | None = Field(default=None, ge=0)

    def over(self, base: Price) -> Price:
        """This price, with the fields it leaves unset taken from ``base``."""
        return Price(**{k: v if v is not None else getattr(base, k)
                        for k, v in self.model_dump().items()})


CURRENCY = r"^[A-Z]{3,8}$"
"""An ISO 4217 code (USD, EUR) or a unit of the house (CREDITS), in letters, taken in capitals:
the report prints it as plain text beside every amount."""


def _capitals(v: object) -> object:
    return v.upper() if isinstance(v, str) else v


class Prices(_Model):
    currency: Annotated[str, BeforeValidator(_capitals), Field(pattern=CURRENCY)] = "USD"
    default: Price = Price()
    specs: dict[str, Price] = {}

    def for_spec(self, spec_ref: str) -> Price:
        """The price of ``ray/train-gpu@1``: its pinned entry, else its name's, over the
        default."""
        name = spec_ref.split("@", 1)[0]
        own = self.specs.get(spec_ref) or self.specs.get(name) or Price()
        return own.over(self.default)


def load_prices(env: Mapping[str, str] | None = None) -> Prices | None:
    """The deployment's prices, or None when none are configured. A bad file or value fails
    naming the setting and the field."""
    try:
        path = file_path("cost_file", env)
    except SettingError as err:  # what callers that go on without prices catch
        raise CostConfigError(str(err)) from None
    if path is not None:
        source = lookup("cost_file", env).source
        for key in ("cost_currency", *(f"cost_{field}" for field in ENV_PRICES)):
            if unused := unused_setting(key, f"{source} is set, and the cost file's own prices "
                                        "and currency (USD when it gives none) are used", env):
                log.warning(unused)
        return _from_file(path, source)
    given = {field: value for field in ENV_PRICES if (value := setting(f"cost_{field}", env))}
    if not given:
        if unused := unused_setting("cost_currency", "no price is set", env):
            log.warning("%s; run reports carry no money", unused)
        return None
    try:
        default = Price(**{k: float(v) for k, v in given.items()})
    except (ValueError, ValidationError) as err:
        names = ", ".join(lookup(f"cost_{k}", env).source for k in given)
        raise CostConfigError(f"{names}: each must be a finite number of 0 or more (a price per "
                              "hour), "
                              f"got {given}") from err
    _warn_partial(_missing(default), "the EPHEMERAL_COST_* settings")
    currency = (setting("cost_currency", env) or "USD").upper()
    if re.fullmatch(CURRENCY, currency) is None:
        where = lookup("cost_currency", env).source
        raise CostConfigError(f"{where}={currency!r}: expected a currency "
                              "code of 3 to 8 letters, such as USD or EUR")
    return Prices(currency=currency, default=default)


def _from_file(path: Path, source: str) -> Prices:
    import yaml

    from ephemeral.yaml_files import load_yaml

    where = f"{source}={path}"
    try:
        data = load_yaml(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CostConfigError(f"{where}: cannot read it: {err}") from err
    try:
        prices = Prices.model_validate(data)
    except ValidationError as err:
        raise CostConfigError(f"{where}: {field_problems(err)} (expected currency, a code of 3 to "
                              "8 letters such as USD, default and specs with cpuHour, gpuHour, "
                              "memoryGibHour)") from err
    if unknown := _unknown_specs(prices):
        # A typo would price the spec meant at the default without a word; a retired spec's
        # entry must not take every other price with it: named in the log, left out.
        log.warning("%s: %s (a key of specs is a spec of the specs folder: ray/train-gpu or "
                    "ray/train-gpu@1); those prices are left out", where, "; ".join(unknown.values()))
        prices = prices.model_copy(update={"specs": {k: v for k, v in prices.specs.items()
                                                     if k not in unknown}})
    _warn_partial(base := _missing(prices.default), f"{where}: default")
    for key in prices.specs:  # a spec's own gaps, beyond the default's
        if (missing := _missing(prices.for_spec(key))) != base:
            _warn_partial(missing, f"{where}: specs.{key}")
    return prices


def _unknown_specs(prices: Prices) -> dict[str, str]:
    """Each key of ``specs`` that names no spec, with why."""
    from ephemeral.errors import SpecNotFound
    from ephemeral.specs.loader import resolve_ref

    problems = {}
    for key in prices.specs:
        name, _, version = key.partition("@")
        if version and not version.isdigit():
            problems[key] = f"specs.{key}: {version!r} is not an integer version"
            continue
        try:  # the name must exist; a version may be priced before it is written
            resolve_ref(name)
        except SpecNotFound as err:
            problems[key] = f"specs.{key}: " + "; ".join(msg for _, msg in err.problems)
    return problems
