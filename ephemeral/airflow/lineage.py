"""OpenLineage for the job operators: what a Ray or Spark job read and wrote, as datasets.

The OpenLineage provider's listener calls ``get_openlineage_facets_on_complete`` on a finished
task. Inputs are the URIs in the job's rendered arguments (``--data-uri``, ``--model-uri``,
``--input``, ...); outputs are the URIs the job reported in its result line (``artifact_uri``,
``model_uri``, ``metrics_uri``, ``validation_uri``, ...) that it was not given as inputs, and
those given to an output flag (``--output``). One rule names a dataset after its URI
(``dataset_of``), per OpenLineage's naming: ``file`` paths, ``s3://bucket`` and ``gs://bucket``
keys. Without the provider (the ``openlineage`` extra) nothing calls this.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

# OpenLineage namespace scheme per URI scheme (Spark's s3a:// is S3).
SCHEMES = {"file": "file", "s3": "s3", "s3a": "s3", "gs": "gs"}
_OUTPUT_FLAG = re.compile(r"^--?(output|out|o)([-_][a-z-_]*)?$")


def dataset_of(uri: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of an artifact URI, or None when it is none: ``file:///a/b`` ->
    ``("file", "/a/b")``; ``s3://bucket/a/b`` -> ``("s3://bucket", "a/b")``; ``gs://...``
    likewise, without any ``user:password@``. A trailing ``/`` is dropped: a folder and its
    URI with a slash are one dataset."""
    if "://" not in uri:
        return None
    parts = urlsplit(uri)
    scheme = SCHEMES.get(parts.scheme)
    if scheme is None:
        return None
    path = parts.path.rstrip("/")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not path:
            return None
        return "file", path
    host = parts.netloc.rpartition("@")[2]  # user-info is a credential, never a dataset's name
    if not host or not path.strip("/"):
        return None
    return f"{scheme}://{host}", path.lstrip("/")


def uris_in_arguments(args: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(inputs, outputs)``: URIs among the arguments, as ``--flag URI``, ``--flag=URI`` or
    bare. Values of an output flag (``--output``, ``--out``, ``-o``, ``--output-uri``) are
    outputs, every other URI an input."""
    inputs: list[str] = []
    outputs: list[str] = []
    flag = ""
    for arg in args:
        name, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        if arg.startswith("-") and not eq:
            flag = arg
            continue
        if eq:
            flag = name
        if dataset_of(value) is not None:
            (outputs if _OUTPUT_FLAG.match(flag) else inputs).append(value)
        flag = ""
    return inputs, outputs


def uris_in_result(result: Mapping[str, Any]) -> list[str]:
    """URIs a job reported: values of result keys ending in ``uri`` (or lists of them under
    keys ending in ``uris``)."""
    found: list[str] = []
    for key, value in result.items():
        values = value if key.endswith("uris") and isinstance(value, list) else [value]
        if key.endswith(("uri", "uris")):
            found += [v for v in values if isinstance(v, str) and dataset_of(v) is not None]
    return found


def job_datasets(args: Iterable[str], result: Mapping[str, Any] | None
                 ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(inputs, outputs)`` as OpenLineage ``(namespace, name)`` pairs, each once."""
    given, written = uris_in_arguments(args)
    reported = uris_in_result(result or {})
    inputs = _unique(given)
    # A reported URI the job was given as an input (evaluate.py echoes its model_uri) was read.
    return inputs, _unique([*written, *(u for u in reported if dataset_of(u) not in inputs)])


def _unique(uris: Iterable[str]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for uri in uris:
        ds = dataset_of(uri)
        if ds is not None and ds not in seen:
            seen.append(ds)
    return seen


class JobLineageMixin:
    """Adds OpenLineage datasets to a job operator: its arguments are ``entrypoint`` (a Ray
    job's command line) or ``application_args`` (a Spark application's), its result what its
    ``execute`` or ``execute_complete`` returned (a ``JobResult`` as a dict).

    The result is kept on the operator rather than pulled from XCom: the listener extracts in
    a forked child of the task runner by default, where talking to the supervisor is unsafe."""

    _lineage_result: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("execute", "execute_complete"):
            if callable(method := vars(cls).get(name)):
                setattr(cls, name, _keeping_result(method))

    def lineage_arguments(self) -> list[str]:
        args: list[str] = []
        entrypoint = getattr(self, "entrypoint", None)
        if isinstance(entrypoint, str):
            try:
                args += shlex.split(entrypoint)
            except ValueError:  # unbalanced quotes: Ray would fail the job anyway
                args += entrypoint.split()
        elif isinstance(entrypoint, list | tuple):  # an argv entrypoint (a resumed deferral's)
            args += [str(a) for a in entrypoint]
        args += [str(a) for a in getattr(self, "application_args", None) or ()]
        return args

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        done = self._lineage_result
        result = done.get("result") if isinstance(done, Mapping) else None
        inputs, outputs = job_datasets(self.lineage_arguments(),
                                       result if isinstance(result, Mapping) else None)
        return OperatorLineage(inputs=[Dataset(namespace=n, name=p) for n, p in inputs],
                               outputs=[Dataset(namespace=n, name=p) for n, p in outputs])


def _keeping_result(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: JobLineageMixin, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        self._lineage_result = result
        return result

    return wrapper
