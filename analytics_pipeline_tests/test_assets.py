"""Dagster-level tests: materialize the real assets against a temporary instance."""

from datetime import UTC, date, datetime

from dagster import DagsterInstance, TimestampMetadataValue, instance_for_test

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline_tests.helpers import event
from analytics_pipeline_tests.pipeline_fixtures import ACCOUNTS, make_env, sample_events

NY_KEY = "2026-02-11|America/New_York"


def table_rows(value) -> list[dict]:
    return [r.data for r in value.value.records]


def partition_metadata(result, asset: str) -> dict:
    return {m.partition: m.materialization.metadata
            for m in result.get_asset_materialization_events() if m.asset_key.path == [asset]}


def by_key(rows):
    return {(r["account_id"], r["date"].isoformat() if hasattr(r["date"], "isoformat")
             else r["date"], r["dimension_type"], r["dimension_id"], r["metric"]):
            (r["count"], r["sum_value"], r["sum_value_business_hours"]) for r in rows}


def test_accounts_registers_timezones_and_reports_invalid(env, instance):
    assert set(instance.get_dynamic_partitions("timezones")) == {
        "America/New_York", "Asia/Kolkata", "UTC"}
    result = env.materialize_accounts()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    check = checks["every_account_has_valid_timezone"]
    assert not check.passed and checks["every_source_account_row_is_valid"].passed
    assert check.metadata["invalid_count"].value == 1
    # listed with their names, as a table
    assert table_rows(check.metadata["invalid_accounts"]) == [
        {"id": 4, "name": "Typo", "reporting_timezone": "America/New_Yrok"}]
    mat = result.get_asset_materialization_events()[0].materialization
    assert mat.metadata["accounts"].value == 4
    e = env.engine()
    snap = {a["id"]: a["timezone"] for a in wh.accounts_snapshot(e)}
    assert snap == {1: "America/New_York", 2: "Asia/Kolkata", 3: "UTC", 4: None}


def test_a_timezone_key_added_by_hand_fails_clearly_and_is_removed(env, instance):
    instance.add_dynamic_partitions("timezones", ["Europe/Pariss"])
    result = env.materialize_partition("2026-02-11|Europe/Pariss", raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "'Europe/Pariss' is not an IANA timezone name" in message
    assert "Traceback" not in message and len(message.splitlines()) <= 2
    assert not env.rows()  # nothing was written

    result = env.materialize_accounts()
    assert "Europe/Pariss" not in instance.get_dynamic_partitions("timezones")
    check = {c.check_name: c for c in result.get_asset_check_evaluations()}[
        "every_account_has_valid_timezone"]
    assert not check.passed
    assert check.metadata["invalid_timezone_keys_removed"].value == ["Europe/Pariss"]


def test_partition_end_to_end(env):
    result = env.materialize_partition(NY_KEY)
    assert result.success
    rows = by_key(env.rows())
    d = "2026-02-11"
    assert rows[(1, d, "account", 1, "first_response")] == (2, 180.0, 150.0)
    assert rows[(1, d, "agent", 11, "first_response")] == (1, 60.0, 30.0)
    assert rows[(1, d, "inbox", 21, "resolution_time")] == (1, 3600.0, 1800.0)
    assert rows[(1, d, "account", 1, "resolutions_count")] == (1, 0.0, 0.0)
    assert rows[(1, d, "account", 1, "bot_handoffs_count")] == (1, 0.0, 0.0)
    assert not any(k[1] != d for k in rows)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"rollups_reconcile_with_landing": True, "rollup_counts_non_negative": True}
    meta = [m for m in result.get_asset_materialization_events()
            if m.asset_key.path == ["reporting_rollups"]][0].materialization.metadata
    assert meta["events_quarantined"].value == 1
    assert table_rows(meta["quarantined_by_reason"]) == [{"reason": "invalid_value",
                                                           "events": 1}]
    assert meta["events_ignored"].value == 1
    assert table_rows(meta["ignored_by_name"]) == [{"event_name": "conversation_opened",
                                                     "events": 1}]
    assert meta["accounts"].value == 1
    assert meta["dagster/row_count"].value == len(rows)
    raw = [m for m in result.get_asset_materialization_events()
           if m.asset_key.path == ["raw_reporting_events"]][0].materialization.metadata
    assert raw["dagster/row_count"].value == 7
    # timestamps are timestamps, not epoch floats
    assert isinstance(raw["utc_window_start"], TimestampMetadataValue)
    assert raw["utc_window_start"].value == datetime(2026, 2, 11, 5, tzinfo=UTC).timestamp()
    assert raw["run_totals"].value["rows"] == 7


def test_materializing_twice_gives_identical_rows(env):
    assert env.materialize_partition(NY_KEY).success
    first = env.rows()
    assert env.materialize_partition(NY_KEY).success
    assert env.rows() == first


def test_late_arriving_events_are_picked_up_by_rematerializing(env):
    env.materialize_partition(NY_KEY)
    write_source(env.source_url, [], [
        event("first_response", "2026-02-11T20:00:00", 1, 30.0, user_id=11)], fresh=False)
    env.materialize_partition(NY_KEY)
    rows = by_key(env.rows())
    assert rows[(1, "2026-02-11", "account", 1, "first_response")][0] == 3


def test_unknown_accounts_are_quarantined_by_the_default_timezone(env):
    result = env.materialize_partition("2026-02-11|UTC")
    assert result.success
    e = env.engine()
    with e.connect() as c:
        q = [dict(r._mapping) for r in c.execute(wh.quarantine.select())]
    assert [(r["reason"], r["timezone"]) for r in q] == [("unknown_account", "UTC")]
    assert '"account_id": 77' in q[0]["payload"]
    # the account without a timezone is rolled up on UTC days
    assert by_key(env.rows())[(3, "2026-02-11", "account", 3, "reply_time")] == (1, 40.0, 0.0)


def test_account_moving_timezone_is_rebuilt_cleanly(env, tmp_path):
    assert env.materialize_partition(NY_KEY).success
    moved = [dict(a) for a in ACCOUNTS]
    moved[0]["reporting_timezone"] = "Asia/Kolkata"
    write_source(env.source_url, moved, sample_events(), fresh=True)
    assert env.materialize_accounts().success
    assert env.materialize_partition("2026-02-11|Asia/Kolkata").success
    rows = env.rows(account_id=1)
    assert {r["timezone"] for r in rows} == {"Asia/Kolkata"}
    # Kolkata's 2026-02-11 is 2026-02-10T18:30Z..2026-02-11T18:30Z: of the first responses
    # it holds 04:59:59Z and 05:00Z of the 11th; those of the 12th are out.
    acc = by_key(rows)
    assert acc[(1, "2026-02-11", "account", 1, "first_response")][0] == 2
    # The stale New York partition re-run does not bring the account back.
    assert env.materialize_partition(NY_KEY).success
    assert {r["timezone"] for r in env.rows(account_id=1)} == {"Asia/Kolkata"}


def test_failed_write_keeps_previous_rows(env, monkeypatch):
    assert env.materialize_partition(NY_KEY).success
    before = env.rows()
    write_source(env.source_url, [], [
        event("first_response", "2026-02-11T20:00:00", 1, 30.0)], fresh=False)

    def boom(*a, **k):
        raise RuntimeError("connection lost mid-write")

    monkeypatch.setattr(wh, "_insert_rollups", boom)
    result = env.materialize_partition(NY_KEY, raise_on_error=False)
    assert not result.success
    assert env.rows() == before


def test_account_scope_replaces_only_selected_accounts(tmp_path, warehouse_url, instance):
    accounts = [{"id": i, "name": str(i), "reporting_timezone": "UTC"} for i in (1, 2)]
    events = [event("reply_time", "2026-02-11T10:00:00", 1, 1.0),
              event("reply_time", "2026-02-11T10:00:00", 2, 2.0)]
    env = make_env(tmp_path, warehouse_url, instance, events)
    write_source(env.source_url, accounts, events)
    env.materialize_accounts()
    assert env.materialize_partition("2026-02-11|UTC").success
    write_source(env.source_url, [], [event("reply_time", "2026-02-11T11:00:00", 2, 5.0),
                                      event("reply_time", "2026-02-11T11:00:00", 1, 5.0)],
                 fresh=False)
    scope = {"config": {"account_ids": [2]}}
    cfg = {"ops": {"raw_reporting_events": scope, "reporting_rollups": scope}}
    assert env.materialize_partition("2026-02-11|UTC", run_config=cfg).success
    rows = by_key(env.rows(dimension_type="account"))
    assert rows[(1, "2026-02-11", "account", 1, "reply_time")] == (1, 1.0, 0.0)
    assert rows[(2, "2026-02-11", "account", 2, "reply_time")] == (2, 7.0, 0.0)


def test_range_backfill_is_one_run_and_matches_day_by_day(tmp_path, warehouse_url):
    days = ["2026-03-06", "2026-03-07", "2026-03-08", "2026-03-09", "2026-03-10"]
    with instance_for_test() as ranged_instance, instance_for_test() as daily_instance:
        (tmp_path / "ranged").mkdir()
        ranged = make_env(tmp_path / "ranged", warehouse_url, ranged_instance)
        ranged.materialize_accounts()
        result = ranged.materialize_range(f"{days[0]}|America/New_York",
                                          f"{days[-1]}|America/New_York")
        assert result.success
        assert len(ranged_instance.get_runs()) == 2  # accounts + one range run
        mats = [m.partition for m in result.get_asset_materialization_events()
                if m.asset_key.path == ["reporting_rollups"]]
        assert sorted(mats) == [f"{d}|America/New_York" for d in days]
        ranged_rows = by_key(ranged.rows())
        # Each partition of the range carries its own figures, the run's are named so.
        rollups = partition_metadata(result, "reporting_rollups")
        raw = partition_metadata(result, "raw_reporting_events")
        for d in days:
            key = f"{d}|America/New_York"
            mine = [r for r in ranged.rows() if r["date"] in (d, date.fromisoformat(d))]
            assert rollups[key]["dagster/row_count"].value == len(mine)
            assert rollups[key]["accounts"].value == 1
            assert rollups[key]["window_hours"].value == LocalDay.from_key(key).hours
            assert raw[key]["utc_window_start"].value == LocalDay.from_key(key).start_utc \
                .timestamp()
            assert {p["metric"] for p in table_rows(rollups[key]["preview"])} <= \
                {r["metric"] for r in mine}
            assert rollups[key]["run_totals"].value["partitions"] == len(days)
        per_day = [rollups[f"{d}|America/New_York"]["events_rolled_up"].value for d in days]
        # 03:30Z of the next day is still the day in New York; the 23-hour 03-08 holds 4
        assert per_day == [ranged_rows[(1, d, "account", 1, "reply_time")][0] for d in days]
        assert per_day == [5, 5, 4, 5, 4]
        assert sum(per_day) == rollups[f"{days[0]}|America/New_York"]["run_totals"] \
            .value["events_rolled_up"]

        (tmp_path / "daily").mkdir()
        daily_wh = f"sqlite:///{tmp_path / 'daily' / 'wh.db'}"
        daily = make_env(tmp_path / "daily", daily_wh, daily_instance)
        daily.materialize_accounts()
        for d in days:
            assert daily.materialize_partition(f"{d}|America/New_York").success
        assert ranged_rows == by_key(daily.rows())
    # Events at 03:30, 04:30, 05:30, 12:30 and 23:30Z every day. The 23-hour DST day
    # 2026-03-08 (05:00Z..04:00Z) holds 4 of them, its neighbours 5 each: each date of the
    # range is cut at its own local midnight.
    assert LocalDay(date(2026, 3, 8), "America/New_York").hours == 23
    counts = {d: ranged_rows[(1, d, "account", 1, "reply_time")][0] for d in days[1:4]}
    assert counts == {"2026-03-07": 5, "2026-03-08": 4, "2026-03-09": 5}
    # 2026-03-09 starts at 04:00Z, so its first event is 04:30Z: 4*10+... sums check it.
    assert ranged_rows[(1, "2026-03-09", "account", 1, "reply_time")][1] == sum(
        [94.0, 95.0, 102.0, 113.0, 103.0])


def test_instance_type_is_temporary(instance):
    assert isinstance(instance, DagsterInstance)


def test_a_range_run_logs_a_line_per_partition_progress_and_a_summary(tmp_path, monkeypatch):
    """A backfill's log stays readable: the partition lines, a progress line every N
    partitions (and after the last) and one summary line per asset."""
    from analytics_pipeline.core import assets as core_assets

    monkeypatch.setattr(core_assets, "PROGRESS_EVERY", 2)
    days = ["2026-03-06", "2026-03-07", "2026-03-08", "2026-03-09", "2026-03-10"]
    with instance_for_test() as instance:
        env = make_env(tmp_path, f"sqlite:///{tmp_path / 'wh.db'}", instance)
        env.materialize_accounts()
        result = env.materialize_range(f"{days[0]}|America/New_York",
                                       f"{days[-1]}|America/New_York")
        assert result.success
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
    for asset in ("raw_reporting_events", "reporting_rollups"):
        progress = [m for m in messages if m.startswith(f"{asset}: ") and "/5 partitions" in m]
        assert [m.split(" partitions")[0].split(": ")[1] for m in progress] == \
            ["2/5", "4/5", "5/5"]
        assert "~0s left" in progress[-1]
        [summary] = [m for m in messages if m.startswith(f"{asset}: 5 partitions in ")]
        assert " ms each): " in summary
    rolled = [m for m in messages if "rollup rows (replaced" in m]
    assert [m.split(":")[0] for m in rolled] == [f"{d}|America/New_York" for d in days]
    assert "events rolled up 23" in next(m for m in messages
                                          if m.startswith("reporting_rollups: 5 partitions in"))
