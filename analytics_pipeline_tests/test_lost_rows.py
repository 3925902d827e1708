"""Re-runs never lose rows: the slice a rollup replaces follows its landing, an emptied
accounts source is refused, bad account rows are skipped, sources are read as the
instants they hold, and a missing source is an error."""

from __future__ import annotations

import math
from datetime import date

import pytest
import sqlalchemy as sa
from dagster import materialize

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.checks import totals_mismatches
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.sources import check_accounts, read_accounts
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline.support.assets import reporting_rollups
from analytics_pipeline.support.source import ReportingEventsSource
from analytics_pipeline_tests.helpers import event
from analytics_pipeline_tests.pipeline_fixtures import ACCOUNTS, make_env, sample_events

NY_KEY = "2026-02-11|America/New_York"
IN_KEY = "2026-02-11|Asia/Kolkata"


def test_rollup_only_rerun_after_a_timezone_move_keeps_the_day(env, instance):
    assert env.materialize_partition(NY_KEY).success
    assert env.materialize_partition(IN_KEY).success
    before = env.rows(account_id=1, date=date(2026, 2, 11))
    assert len(before) == 11
    moved = [dict(a) for a in ACCOUNTS]
    moved[0]["reporting_timezone"] = "Asia/Kolkata"
    write_source(env.source_url, moved, sample_events(), fresh=True)
    assert env.materialize_accounts().success

    # only the rollups, on a landing made before the move: refused, nothing written
    result = materialize([reporting_rollups], partition_key=IN_KEY, instance=instance,
                         resources=env.resources, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    message = failure.step_failure_data.user_failure_data.description
    assert IN_KEY in message and "re-materialize" in message and "[1]" in message
    assert env.rows(account_id=1, date=date(2026, 2, 11)) == before

    # re-extracting and rolling up moves the account's day to Kolkata's cut
    assert env.materialize_partition(IN_KEY).success
    after = env.rows(account_id=1, date=date(2026, 2, 11))
    assert after and {r["timezone"] for r in after} == {"Asia/Kolkata"}
    result = env.materialize_partition(IN_KEY)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["rollups_reconcile_with_landing"]


def test_reconciliation_catches_rows_removed_by_another_writer(env, monkeypatch):
    """A write that loses an account's rows (here: a slice that drops them after the
    insert) fails the per-account reconciliation instead of passing."""
    real_insert = wh._insert_rollups

    def insert_then_lose_account_1(conn, rows, tz, source):
        real_insert(conn, rows, tz, source)
        conn.execute(wh.daily_rollups.delete().where(wh.daily_rollups.c.account_id == 1))

    monkeypatch.setattr(wh, "_insert_rollups", insert_then_lose_account_1)
    result = env.materialize_partition(NY_KEY)
    [check] = [c for c in result.get_asset_check_evaluations()
               if c.check_name == "rollups_reconcile_with_landing"]
    assert not check.passed
    assert "1/first_response" in check.metadata["mismatches"].value[NY_KEY]


def test_an_emptied_accounts_source_is_refused_unless_confirmed(env):
    assert env.materialize_partition(NY_KEY).success
    assert env.materialize_partition("2026-02-11|UTC").success
    rows_before = env.rows()
    write_source(env.source_url, [], sample_events(), fresh=True)  # accounts table emptied

    result = env.materialize_accounts(raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "confirm_account_loss" in failure.step_failure_data.user_failure_data.description
    engine = env.engine()
    assert len(wh.known_account_ids(engine)) == 4  # the previous snapshot is kept
    assert env.materialize_partition(NY_KEY).success
    assert env.materialize_partition("2026-02-11|UTC").success
    assert env.rows() == rows_before
    with engine.connect() as c:
        reasons = [r.reason for r in c.execute(sa.select(wh.quarantine.c.reason))]
    assert reasons.count("unknown_account") == 1  # the one orphan of the sample, no more

    confirmed = {"ops": {"accounts": {"config": {"confirm_account_loss": True}}}}
    assert env.materialize_accounts(run_config=confirmed).success
    assert wh.known_account_ids(engine) == []


def test_a_truncated_source_below_the_threshold_is_accepted(env):
    write_source(env.source_url, ACCOUNTS[:3], sample_events(), fresh=True)  # 1 of 4 lost
    assert env.materialize_accounts().success
    assert sorted(wh.known_account_ids(env.engine())) == [1, 2, 3]


def test_duplicate_event_ids_count_once_and_are_reported(tmp_path, warehouse_url, instance):
    events = sample_events()
    env = make_env(tmp_path, warehouse_url, instance, events)
    engine = sa.create_engine(env.source_url)
    with engine.begin() as c:  # the app's table without a primary key
        c.exec_driver_sql("CREATE TABLE re2 AS SELECT * FROM reporting_events")
        c.exec_driver_sql("INSERT INTO re2 SELECT * FROM reporting_events "
                          "WHERE name = 'first_response'")
        c.exec_driver_sql("DROP TABLE reporting_events")
        c.exec_driver_sql("ALTER TABLE re2 RENAME TO reporting_events")
    engine.dispose()
    assert env.materialize_accounts().success
    result = env.materialize_partition(NY_KEY)
    raw = [m for m in result.get_asset_materialization_events()
           if m.asset_key.path == ["raw_reporting_events"]][0].materialization.metadata
    assert raw["duplicate_ids_dropped"].value == 2  # NY's two first responses of the day
    rows = {(r["metric"], r["dimension_type"]): r["count"] for r in env.rows(account_id=1)}
    assert rows[("first_response", "account")] == 2


@pytest.mark.parametrize(("dialect", "loose"), [
    ("sqlite", True), ("sqlite", False),
    ("postgresql", False),  # PostgreSQL text cannot hold NUL bytes or invalid UTF-8
])
def test_bad_account_rows_are_reported_and_skipped(dialect, loose, tmp_path, request):
    source_url = (f"sqlite:///{tmp_path / 'source.db'}" if dialect == "sqlite"
                  else request.getfixturevalue("pg_database"))
    engine = sa.create_engine(source_url)
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE IF EXISTS accounts")
        types = ("", "", "") if loose else (" bigint", " text", " text")
        c.exec_driver_sql(f"CREATE TABLE accounts (id{types[0]}, name{types[1]}, "
                          f"reporting_timezone{types[2]})")
        rows = [(1, "ok", "UTC"), (None, "no id", "UTC"), (2, "dup a", "UTC"),
                (2, "dup b", "Asia/Kolkata"), (3, "fine", "America/New_York")]
        if loose:
            rows += [("x7", "text id", "UTC"), (4, "nul\x00name", "UTC")]
        for r in rows:
            c.execute(sa.text("INSERT INTO accounts VALUES (:i, :n, :t)"),
                      {"i": r[0], "n": r[1], "t": r[2]})
        if loose:
            c.exec_driver_sql("INSERT INTO accounts VALUES (5, 'bad tz', "
                              "CAST(X'417369612FFF' AS TEXT))")
    engine.dispose()
    read = read_accounts(source_url)
    assert [a["id"] for a in read.accounts] == [1, 3]
    reasons = sorted(r["reason"] for r in read.rejected)
    expected = ["duplicate account id", "duplicate account id", "null account id"]
    if loose:
        expected += ["NUL byte in name", "account id is not an integer",
                     "reporting_timezone is not valid UTF-8"]
    assert reasons == sorted(expected)
    assert all("\x00" not in str(r) for r in read.rejected)


def test_check_accounts_is_vectorized_over_arrow():
    import pyarrow as pa

    t = pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"],
                  "reporting_timezone": ["UTC", None]})
    read = check_accounts(t)
    assert read.rejected == [] and [a["id"] for a in read.accounts] == [1, 2]


def test_timestamptz_source_in_a_non_utc_session_is_read_as_the_instant(pg_database):
    engine = sa.create_engine(pg_database)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE accounts (id bigint primary key, name text, "
                          "reporting_timezone text)")
        c.exec_driver_sql("CREATE TABLE reporting_events (id bigint primary key, name text, "
                          "value float8, value_in_business_hours float8, account_id bigint, "
                          "user_id bigint, inbox_id bigint, conversation_id bigint, "
                          "event_start_time timestamptz, event_end_time timestamptz, "
                          "created_at timestamptz, updated_at timestamptz)")
        c.exec_driver_sql("INSERT INTO accounts VALUES (1, 'ny', 'America/New_York')")
        # 01:00Z on the 12th is 20:00 on the 11th in New York
        c.exec_driver_sql("INSERT INTO reporting_events (id, name, value, account_id, "
                          "created_at) VALUES (1, 'first_response', 5, 1, "
                          "'2026-02-12 01:00:00+00'), (2, 'first_response', 5, 1, "
                          "'2026-02-11 04:00:00+00')")
        db = sa.make_url(pg_database).database
        c.exec_driver_sql(f"ALTER DATABASE \"{db}\" SET timezone TO 'Asia/Kolkata'")
    engine.dispose()
    src = ReportingEventsSource(pg_database, fallback_date=date(2024, 1, 1))
    t = src.extract(LocalDay(date(2026, 2, 11), "America/New_York"), [1])
    assert t["id"].to_pylist() == [1]
    assert str(t["created_at"][0].as_py()) == "2026-02-12 01:00:00+00:00"
    assert t["invalid_reason"].to_pylist() == [None]


def test_a_missing_sqlite_source_is_an_error_naming_it(tmp_path):
    path = tmp_path / "no" / "such" / "app.db"
    src = ReportingEventsSource(f"sqlite:///{path}", fallback_date=date(2024, 1, 1))
    with pytest.raises(FileNotFoundError, match=str(path)):
        src.extract(LocalDay(date(2026, 2, 11), "UTC"), [1])
    with pytest.raises(FileNotFoundError, match=str(path)):
        read_accounts(src.url)
    assert not (tmp_path / "no").exists()


def test_reconciliation_never_passes_on_infinities():
    inf = math.inf
    assert totals_mismatches({(1, "m"): (2, inf, 0.0)}, {(1, "m"): (2, inf, 0.0)})
    assert not totals_mismatches({(1, "m"): (2, 1.5, 0.0)}, {(1, "m"): (2, 1.5, 0.0)})
    assert totals_mismatches({(1, "m"): (2, 1.5, 0.0)}, {})


def test_an_account_subset_outside_the_landing_is_refused(env, instance):
    assert env.materialize_partition("2026-02-11|UTC").success
    accounts = [*ACCOUNTS, {"id": 5, "name": "new", "reporting_timezone": "UTC"}]
    write_source(env.source_url, accounts, sample_events() + [
        event("reply_time", "2026-02-11T09:00:00", 5, 7.0)], fresh=True)
    assert env.materialize_accounts().success
    scope = {"config": {"account_ids": [5]}}
    only_rollups = materialize([reporting_rollups], partition_key="2026-02-11|UTC",
                               instance=instance, resources=env.resources,
                               run_config={"ops": {"reporting_rollups": scope}},
                               raise_on_error=False)
    assert not only_rollups.success
    # extracting the account first adds it to the landing; then it rolls up
    both = {"ops": {"raw_reporting_events": scope, "reporting_rollups": scope}}
    assert env.materialize_partition("2026-02-11|UTC", run_config=both).success
    assert [r["count"] for r in env.rows(account_id=5, dimension_type="account")] == [1]
    assert env.rows(account_id=3, dimension_type="account")  # account 3 untouched
