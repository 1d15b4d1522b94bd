"""``ephemeral model``: the registry's champion of a model, and the way back to the previous one.

The store is ``$MLFLOW_TRACKING_URI``, else the embedded one under ``$EPHEMERAL_HOME/mlflow``
(ephemeral.registry); mlflow is imported only when a command runs.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

model_app = typer.Typer(help="Registered models: show versions and champion, roll back.",
                        no_args_is_help=True)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

NameArg = Annotated[str, typer.Argument(help="Registered model name, e.g. train_distributed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@model_app.command("show")
def show(name: NameArg, as_json: JsonOpt = False) -> None:
    """The versions of NAME (newest first), its champion and the version a rollback goes to."""
    from ephemeral.registry import describe

    doc = describe(name)  # its errors end as every command's (exit 2 for a refused name)
    if as_json:
        _emit(doc)
        return
    out.print(f"{name}  champion {doc['champion'] or '-'}  previous {doc['previous'] or '-'}  "
              f"({doc['tracking_uri']})", highlight=False, markup=False)
    out.print(f"serving reads {doc['serving_uri']}", highlight=False, markup=False)
    table = Table("version", "aliases", "created", "source", "run")
    for v in doc["versions"]:
        table.add_row(v["version"], ",".join(v["aliases"]) or "", v["created"] or "",
                      v["source"], v["run_id"] or "")
    out.print(table)


@model_app.command("rollback")
def rollback(name: NameArg, as_json: JsonOpt = False) -> None:
    """Move NAME's champion alias back to the previous champion.

    Each rollback goes one promotion further back; when there is none, it fails and changes
    nothing."""
    from ephemeral.registry import rollback as roll_back

    from_version, to_version = roll_back(name)
    if as_json:
        _emit({"name": name, "from": from_version, "to": to_version})
    else:
        err.print(f"{name}: champion {from_version} -> {to_version}", highlight=False,
                  markup=False)
