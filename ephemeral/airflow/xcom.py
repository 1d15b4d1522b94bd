"""An XCom backend that keeps XCom for metadata: cluster handles, job ids, URIs, a few metrics.

Anything larger than ``EPHEMERAL_XCOM_MAX_BYTES`` (default 4096) is refused with an error that
points to the artifact store. Configure it with
``AIRFLOW__CORE__XCOM_BACKEND=ephemeral.airflow.xcom.MetadataOnlyXCom``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseXCom

from ephemeral.settings import XCOM_MAX_BYTES as DEFAULT_MAX_BYTES
from ephemeral.settings import xcom_max_bytes as max_bytes

__all__ = ["DEFAULT_MAX_BYTES", "MetadataOnlyXCom", "XComTooLarge", "max_bytes"]


class XComTooLarge(ValueError):
    pass


class MetadataOnlyXCom(BaseXCom):
    @staticmethod
    def serialize_value(
        value: Any,
        *,
        key: str | None = None,
        task_id: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        map_index: int | None = None,
    ) -> Any:
        serialized = BaseXCom.serialize_value(value, key=key, task_id=task_id, dag_id=dag_id,
                                              run_id=run_id, map_index=map_index)
        size = len(str(serialized).encode())
        limit = max_bytes()
        if size > limit:
            raise XComTooLarge(
                f"XCom {dag_id}.{task_id}[{key}] is {size} bytes, over the {limit}-byte limit of "
                "ephemeral's metadata-only XCom. Write the data to the artifact store "
                "(ephemeral.jobs.artifacts, under $EPHEMERAL_ARTIFACT_ROOT) and push its URI.")
        return serialized
