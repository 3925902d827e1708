"""A materialization with the Dagster instance stored in PostgreSQL via the repo's
deploy/dagster.yaml (dagster-postgres, psycopg2 scheme), warehouse in PostgreSQL too."""

from dagster import AssetKey

from analytics_pipeline_tests.pipeline_fixtures import make_env, repo_instance


def test_materialize_with_postgres_instance_storage(pg_database, tmp_path, monkeypatch):
    with repo_instance(pg_database, tmp_path / "dagster_home", monkeypatch) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        env = make_env(tmp_path, pg_database, instance)
        assert env.materialize_accounts().success
        assert "America/New_York" in instance.get_dynamic_partitions("timezones")
        assert env.materialize_partition("2026-02-11|America/New_York").success
        status = instance.get_latest_materialization_event(
            AssetKey("reporting_rollups"))
        assert status is not None
        assert status.dagster_event.partition == "2026-02-11|America/New_York"
        assert env.rows(account_id=1)
        # the password from the environment is not in any stored event
        records = instance.get_records_for_run(
            instance.get_runs()[0].run_id).records
        assert not any("not-needed-with-trust-auth" in str(r.event_log_entry)
                       for r in records)
