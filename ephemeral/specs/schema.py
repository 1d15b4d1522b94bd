"""The cluster spec as a JSON Schema, for editors: completion, hover docs and checks while a
spec is written (``ephemeral specs schema``; docs/spec-schema.md shows how to wire it).

It is generated from the same pydantic models the loader validates with, so it cannot drift
from them. The loader stays the authority: rules across fields (a worker group's min/max
against its replicas, profiles) are checked there, not in the schema."""

from __future__ import annotations

from typing import Any

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (``kind: RayCluster`` or ``kind: SparkCluster``), with
    the camelCase field names the files use."""
    from pydantic import TypeAdapter

    from ephemeral.specs.models import ClusterSpec

    schema = TypeAdapter(ClusterSpec).json_schema(by_alias=True, mode="validation")
    return {"$schema": SCHEMA_DIALECT, "title": "ephemeral cluster spec",
            "description": "A versioned Ray or Spark cluster spec (cluster_specs/<dir>/<name>"
                           ".yaml), as `ephemeral specs validate` checks it.",
            **schema}
