"""The Airflow 3 layer: setup/teardown operators for ephemeral clusters, job operators,
triggers, extra links and a metadata-only XCom backend. Only this package imports airflow."""
