"""The Airflow plugin that registers the run-end listener (``ephemeral.airflow.listener``) and,
in the api-server, ``GET /ephemeral/deployment`` (``ephemeral.airflow.deployment``).

Airflow 3.3 loads plugins named by the ``airflow.plugins`` entry point in every component; the
scheduler and the api-server are the ones that call DAG-run listeners. (Plugins listed in provider
metadata load only with ``[core] lazy_discover_providers = False``, so the entry point is used.)
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ephemeral.airflow import deployment, listener


class EphemeralPlugin(AirflowPlugin):
    name = "ephemeral"
    listeners = [listener]
    fastapi_apps = [{"app": deployment.app, "url_prefix": deployment.URL_PREFIX,
                     "name": "ephemeral deployment"}]
