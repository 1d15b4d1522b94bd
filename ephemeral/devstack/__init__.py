"""The local Airflow stack (``make airflow``): real Airflow services for this checkout, on
SQLite or a throwaway PostgreSQL, for people and for tests."""

from __future__ import annotations

from ephemeral.devstack.api import AirflowApi
from ephemeral.devstack.postgres import Postgres
from ephemeral.devstack.stack import Stack

__all__ = ["AirflowApi", "Postgres", "Stack"]
