"""Scheduling: closed-day sensor per timezone and the accounts refresh schedule."""

import json
from datetime import date, datetime, timedelta, timezone

import pytest
from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)

from analytics_pipeline import sensors
from analytics_pipeline.definitions import defs
from analytics_pipeline.resources import Mailgun, PipelineSettings
from analytics_pipeline.sensors import closed_days_sensor, due_partitions

GRACE = timedelta(minutes=30)
UTC = timezone.utc


def keys(days):
    return [d.key for d in days]


def test_day_close_respects_grace_per_timezone():
    tzs = ["America/New_York", "Asia/Kolkata"]
    cursor = {"America/New_York": "2026-02-10", "Asia/Kolkata": "2026-02-10"}
    # Kolkata's 02-11 closes at 18:30Z on the 11th, New York's at 05:00Z on the 12th.
    due, _ = due_partitions(datetime(2026, 2, 11, 18, 59, tzinfo=UTC), tzs, cursor, GRACE,
                            date(2024, 1, 1))
    assert due == []
    due, cur = due_partitions(datetime(2026, 2, 11, 19, 0, tzinfo=UTC), tzs, cursor, GRACE,
                              date(2024, 1, 1))
    assert keys(due) == ["2026-02-11|Asia/Kolkata"]
    due, cur = due_partitions(datetime(2026, 2, 12, 5, 29, tzinfo=UTC), tzs, cur, GRACE,
                              date(2024, 1, 1))
    assert due == []
    due, cur = due_partitions(datetime(2026, 2, 12, 5, 30, tzinfo=UTC), tzs, cur, GRACE,
                              date(2024, 1, 1))
    assert keys(due) == ["2026-02-11|America/New_York"]
    assert cur == {"America/New_York": "2026-02-11", "Asia/Kolkata": "2026-02-11"}


def test_new_timezone_catches_up_lookback_and_limit_bounds_a_tick():
    now = datetime(2026, 2, 12, 6, tzinfo=UTC)
    due, cur = due_partitions(now, ["America/New_York"], {}, GRACE, date(2024, 1, 1),
                              lookback_days=2)
    assert keys(due) == ["2026-02-10|America/New_York", "2026-02-11|America/New_York"]
    # a sensor stopped for 10 days catches up, bounded per tick, in order
    due, cur = due_partitions(now, ["UTC"], {"UTC": "2026-02-01"}, GRACE, date(2024, 1, 1),
                              limit=4)
    assert keys(due) == [f"2026-02-0{d}|UTC" for d in range(2, 6)]
    assert cur["UTC"] == "2026-02-05"
    # never before the first partition date
    due, _ = due_partitions(now, ["UTC"], {}, GRACE, date(2026, 2, 11), lookback_days=5)
    assert keys(due) == ["2026-02-11|UTC"]


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


def evaluate(instance, cursor=None, mailgun=None):
    ctx = build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"settings": PipelineSettings(default_timezone="UTC",
                                                start_date="2024-01-01"),
                   "mailgun": mailgun or Mailgun()},
    )
    return closed_days_sensor(ctx)


def test_sensor_requests_run_keys_and_registers_new_timezones(instance, monkeypatch):
    assert isinstance(evaluate(instance), SkipReason)
    instance.add_dynamic_partitions("timezones", ["America/New_York"])
    cursor = json.dumps({"America/New_York": "2026-02-10"})
    # New York's 2026-02-11 closed at 05:00Z; the grace runs until 05:30Z
    monkeypatch.setattr(sensors, "_utcnow", lambda: datetime(2026, 2, 12, 5, 29, tzinfo=UTC))
    assert isinstance(evaluate(instance, cursor), SkipReason)
    monkeypatch.setattr(sensors, "_utcnow", lambda: datetime(2026, 2, 12, 5, 31, tzinfo=UTC))
    assert [r.run_key for r in evaluate(instance, cursor).run_requests] == [
        "2026-02-11|America/New_York"]
    # a fresh sensor catches up the last two closed days
    result = evaluate(instance)
    assert isinstance(result, SensorResult)
    reqs = result.run_requests
    assert [r.run_key for r in reqs] == ["2026-02-10|America/New_York",
                                         "2026-02-11|America/New_York"]
    assert [str(r.partition_key) for r in reqs] == [r.run_key for r in reqs]
    assert reqs[0].tags["analytics/timezone"] == "America/New_York"
    cursor = result.cursor
    # the same tick again: nothing new
    assert isinstance(evaluate(instance, cursor), SkipReason)
    # the accounts asset registers Kolkata: the next tick picks it up, New York untouched
    instance.add_dynamic_partitions("timezones", ["Asia/Kolkata"])
    result = evaluate(instance, cursor)
    assert [r.run_key for r in result.run_requests] == ["2026-02-10|Asia/Kolkata",
                                                        "2026-02-11|Asia/Kolkata"]
    assert json.loads(result.cursor)["America/New_York"] == "2026-02-11"
    # a day later, one more request per timezone, each with a fresh run key
    monkeypatch.setattr(sensors, "_utcnow", lambda: datetime(2026, 2, 13, 5, 31, tzinfo=UTC))
    result = evaluate(instance, result.cursor)
    assert sorted(r.run_key for r in result.run_requests) == [
        "2026-02-12|America/New_York", "2026-02-12|Asia/Kolkata"]


def test_scheduling_is_on_by_default():
    sensor = defs.resolve_sensor_def("closed_days_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    schedule = defs.resolve_schedule_def("refresh_accounts_every_30_minutes")
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "refresh_accounts"


def test_email_days_are_requested_once_mailgun_is_configured(instance, monkeypatch):
    instance.add_dynamic_partitions("timezones", ["Asia/Kolkata"])
    monkeypatch.setattr(sensors, "_utcnow", lambda: datetime(2026, 2, 11, 19, 0, tzinfo=UTC))
    cursor = json.dumps({"Asia/Kolkata": "2026-02-10"})
    result = evaluate(instance, cursor, Mailgun(domain="mg.example.com", api_key="k"))
    assert sorted((r.job_name, r.run_key) for r in result.run_requests) == [
        ("automation_email_daily", "automation_email_daily:2026-02-11|Asia/Kolkata"),
        ("newsletter_email_daily", "newsletter_email_daily:2026-02-11|Asia/Kolkata"),
        ("support_reporting", "2026-02-11|Asia/Kolkata"),
    ]


def test_affected_partitions_are_only_already_materialized_days():
    from analytics_pipeline.sensors import affected_partitions

    # 2026-02-12T03:00Z .. 06:00Z: New York's 11th (until 05:00Z) and 12th; Kolkata's 12th
    lo = datetime(2026, 2, 12, 3, tzinfo=UTC).timestamp()
    hi = datetime(2026, 2, 12, 6, tzinfo=UTC).timestamp()
    done = {"2026-02-11|America/New_York", "2026-02-12|Asia/Kolkata",
            "2026-02-10|America/New_York"}
    days = affected_partitions(lo, hi, ["America/New_York", "Asia/Kolkata"], done)
    assert [d.key for d in days] == ["2026-02-11|America/New_York", "2026-02-12|Asia/Kolkata"]
