"""A materialization with the Dagster instance stored in PostgreSQL via the repo's
dagster.yaml (dagster-postgres, psycopg2 scheme), warehouse in PostgreSQL too."""

import shutil
from pathlib import Path

from dagster import DagsterInstance
from sqlalchemy import make_url

from analytics_pipeline_tests.pipeline_fixtures import make_env

REPO = Path(__file__).resolve().parents[1]


def test_materialize_with_postgres_instance_storage(pg_database, tmp_path, monkeypatch):
    u = make_url(pg_database)
    monkeypatch.setenv("DAGSTER_PG_HOST", u.host)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(u.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", u.database)
    monkeypatch.setenv("DAGSTER_PG_USER", u.username)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-needed-with-trust-auth")
    # The repo's dagster.yaml, in a home of its own: the instance writes compute logs
    # under its home directory, which must not be the checkout.
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        env = make_env(tmp_path, pg_database, instance)
        assert env.materialize_accounts().success
        assert "America/New_York" in instance.get_dynamic_partitions("timezones")
        assert env.materialize_partition("2026-02-11|America/New_York").success
        status = instance.get_latest_materialization_event(
            __import__("dagster").AssetKey("reporting_rollups"))
        assert status is not None
        assert status.dagster_event.partition == "2026-02-11|America/New_York"
        assert env.rows(account_id=1)
        # the password from the environment is not in any stored event
        records = instance.get_records_for_run(
            instance.get_runs()[0].run_id).records
        assert not any("not-needed-with-trust-auth" in str(r.event_log_entry)
                       for r in records)
    finally:
        instance.dispose()
