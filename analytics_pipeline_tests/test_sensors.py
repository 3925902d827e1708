"""Scheduling: closed-day sensor per timezone and the accounts refresh schedule."""

import json
import logging
from datetime import date, datetime, timedelta, timezone

import pytest
from dagster import (
    DefaultSensorStatus,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)

from analytics_pipeline.campaigns.resources import CampaignBroker
from analytics_pipeline.core import scheduling
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.resources import PipelineSettings, Warehouse
from analytics_pipeline.core.scheduling import (
    StreamClock,
    build_closed_days_sensor,
    due_partitions,
    due_stream_partitions,
    read_progress,
)
from analytics_pipeline.definitions import closed_days_sensor, defs
from analytics_pipeline.email import sensors
from analytics_pipeline.email.resources import Mailgun
from analytics_pipeline.email.sensors import email_streams
from analytics_pipeline.push.resources import PostHog, PushSettings
from analytics_pipeline.support.jobs import support_stream

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


@pytest.fixture
def warehouse(tmp_path):
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    engine = wh.make_engine(url)
    wh.ensure_schema(engine)
    yield url, engine
    engine.dispose()


def evaluate(instance, cursor=None, mailgun=None, warehouse_url="sqlite://"):
    return _closed_days_tick(instance, cursor, mailgun, warehouse_url)[0]


def test_sensor_requests_run_keys_and_registers_new_timezones(instance, monkeypatch):
    assert isinstance(evaluate(instance), SkipReason)
    instance.add_dynamic_partitions("timezones", ["America/New_York"])
    cursor = json.dumps({"America/New_York": "2026-02-10"})
    # New York's 2026-02-11 closed at 05:00Z; the grace runs until 05:30Z
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 12, 5, 29, tzinfo=UTC))
    assert isinstance(evaluate(instance, cursor), SkipReason)
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 12, 5, 31, tzinfo=UTC))
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
    assert json.loads(result.cursor)["streams"]["reporting"]["America/New_York"] == "2026-02-11"
    # a day later, one more request per timezone, each with a fresh run key
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 13, 5, 31, tzinfo=UTC))
    result = evaluate(instance, result.cursor)
    assert sorted(r.run_key for r in result.run_requests) == [
        "2026-02-12|America/New_York", "2026-02-12|Asia/Kolkata"]


def test_scheduling_is_on_by_default():
    sensor = defs.resolve_sensor_def("closed_days_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    automation = defs.resolve_sensor_def("periodic_refreshes_sensor")
    assert automation.default_status == DefaultSensorStatus.RUNNING


def test_email_days_are_requested_once_mailgun_is_configured(instance, monkeypatch, warehouse):
    url, engine = warehouse
    instance.add_dynamic_partitions("timezones", ["Asia/Kolkata"])
    now = datetime(2026, 2, 11, 19, 30, tzinfo=UTC)
    monkeypatch.setattr(scheduling, "_utcnow", lambda: now)
    for kind in ("newsletter", "automation"):  # both streams settled up to now - 30 min
        wh.advance_cursor(engine, f"mailgun:{kind}", now.timestamp() - 60,
                          now.timestamp() - 1800)
    cursor = json.dumps({"streams": {s: {"Asia/Kolkata": "2026-02-10"} for s in (
        "reporting", "email:newsletter", "email:automation")}})
    result = evaluate(instance, cursor, Mailgun(domain="mg.example.com", api_key="k"), url)
    assert sorted((r.job_name, r.run_key) for r in result.run_requests) == [
        ("automation_email_daily", "automation_email_daily:2026-02-11|Asia/Kolkata"),
        ("newsletter_email_daily", "newsletter_email_daily:2026-02-11|Asia/Kolkata"),
        ("support_reporting", "2026-02-11|Asia/Kolkata"),
    ]


def test_days_of_a_fetch_without_buckets_are_those_its_span_touches():
    from dagster import MetadataValue

    from analytics_pipeline.email.sensors import days_of_fetch

    # 2026-02-12T03:00Z .. 06:00Z: New York's 11th (until 05:00Z) and 12th; Kolkata's 12th
    meta = {"event_time_min": MetadataValue.float(datetime(2026, 2, 12, 3, tzinfo=UTC)
                                                  .timestamp()),
            "event_time_max": MetadataValue.float(datetime(2026, 2, 12, 6, tzinfo=UTC)
                                                  .timestamp())}
    days = days_of_fetch(meta, ["America/New_York", "Asia/Kolkata"])
    assert [d.key for d in days] == ["2026-02-11|America/New_York",
                                     "2026-02-12|America/New_York", "2026-02-12|Asia/Kolkata"]


# --- late email events: every fetch since the cursor, precise days, bounded ticks ----------


def _fetch_done(instance, buckets=None, lo=None, hi=None):
    """A fetch's materialization as the Mailgun asset records it."""
    from dagster import AssetMaterialization

    meta = {"event_time_min": lo or 0.0, "event_time_max": hi or 0.0}
    if buckets is not None:
        meta["event_buckets_15m"] = sorted(buckets)
        meta["event_time_min"] = float(min(buckets) * 900)
        meta["event_time_max"] = float(max(buckets) * 900 + 899)
    instance.report_runless_asset_event(
        AssetMaterialization("mailgun_newsletter_events", metadata=meta))


def _rolled_up(instance, *keys):
    from dagster import AssetMaterialization

    for k in keys:
        instance.report_runless_asset_event(
            AssetMaterialization("raw_newsletter_email_events", partition=k))


def _late_tick(instance, cursor):
    ctx = build_sensor_context(instance=instance, cursor=cursor)
    result = sensors.late_email_sensors["newsletter"](ctx)
    return result, result.cursor


def _bucket(*a) -> int:
    return int(datetime(*a, tzinfo=UTC).timestamp()) // 900


def test_days_of_buckets_are_exact_per_timezone():
    from analytics_pipeline.email.sensors import days_of_buckets

    # 23:45Z on the 24th and 10:00Z on the 26th: the 25th lies between, but has no event
    b = [_bucket(2026, 2, 24, 23, 45), _bucket(2026, 2, 26, 10)]
    assert [d.key for d in days_of_buckets(b, ["UTC", "Asia/Kathmandu",
                                               "America/New_York"])] == [
        "2026-02-24|America/New_York", "2026-02-26|America/New_York",
        # Kathmandu is UTC+05:45: 23:45Z is already 05:30 on the 25th
        "2026-02-25|Asia/Kathmandu", "2026-02-26|Asia/Kathmandu",
        "2026-02-24|UTC", "2026-02-26|UTC"]
    # Kathmandu's midnight is 18:15Z: the buckets before and after it fall on two dates
    b = [_bucket(2026, 2, 24, 18), _bucket(2026, 2, 24, 18, 15)]
    assert [d.key for d in days_of_buckets(b, ["Asia/Kathmandu"])] == [
        "2026-02-24|Asia/Kathmandu", "2026-02-25|Asia/Kathmandu"]


def test_late_events_sensor_requests_only_days_with_new_events(instance):
    instance.add_dynamic_partitions("timezones", ["UTC"])
    _rolled_up(instance, "2026-02-24|UTC", "2026-02-25|UTC", "2026-02-26|UTC")
    _, cursor = _late_tick(instance, None)  # first start, before any fetch
    _fetch_done(instance, buckets=[_bucket(2026, 2, 24, 23, 45), _bucket(2026, 2, 26, 10)])
    result, _ = _late_tick(instance, cursor)
    assert sorted(str(r.partition_key) for r in result.run_requests) == [
        "2026-02-24|UTC", "2026-02-26|UTC"]  # not the 25th in between
    # a fetch recorded before buckets existed: its [min, max] span
    _fetch_done(instance, lo=datetime(2026, 2, 24, 23, tzinfo=UTC).timestamp(),
                hi=datetime(2026, 2, 25, 1, tzinfo=UTC).timestamp())
    result, _ = _late_tick(instance, result.cursor)
    assert sorted(str(r.partition_key) for r in result.run_requests) == [
        "2026-02-24|UTC", "2026-02-25|UTC"]


def test_late_events_sensor_caps_a_tick_and_carries_the_rest(instance):
    """One tick once produced 679 requests: at most 100 per tick, the rest carried in the
    cursor; a later fetch touching a day already requested gets a new run key."""
    instance.add_dynamic_partitions("timezones", ["UTC"])
    days = [date(2025, 10, 1) + timedelta(days=i) for i in range(130)]
    _rolled_up(instance, *[f"{d.isoformat()}|UTC" for d in days])
    [first] = instance.fetch_materializations(
        sensors.AssetKey("raw_newsletter_email_events"), limit=1).records
    cursor = str(first.storage_id)  # former format: the last storage id seen
    _fetch_done(instance, buckets=[_bucket(d.year, d.month, d.day, 12) for d in days[:70]])
    _fetch_done(instance, buckets=[_bucket(d.year, d.month, d.day, 12) for d in days[60:]])
    r1, cursor = _late_tick(instance, cursor)
    assert len(r1.run_requests) == 100
    r2, cursor = _late_tick(instance, cursor)
    assert len(r2.run_requests) == 30
    keys = [str(r.partition_key) for r in r1.run_requests + r2.run_requests]
    assert sorted(keys) == sorted(f"{d.isoformat()}|UTC" for d in days)  # each day once
    r3, cursor = _late_tick(instance, cursor)
    assert not r3.run_requests
    # another fetch brings more events of a day requested already: requested again
    _fetch_done(instance, buckets=[_bucket(2025, 10, 1, 12)])
    r4, cursor = _late_tick(instance, cursor)
    [again] = r4.run_requests
    assert str(again.partition_key) == "2025-10-01|UTC"
    earlier = next(r for r in r1.run_requests if str(r.partition_key) == "2025-10-01|UTC")
    assert again.run_key != earlier.run_key
    assert again.tags["analytics/reason"] == "late-events"


# --- closed days: one progress per stream, email days once settled ----------------------


def test_email_stream_waits_for_its_settled_watermark():
    """Kolkata's 02-11 ends at 18:30Z: reporting rolls it up at 19:00Z (grace), an email
    stream only once its settled watermark has passed 19:00Z too."""
    now = datetime(2026, 2, 11, 19, 5, tzinfo=UTC)
    progress = {"reporting": {"Asia/Kolkata": "2026-02-10"},
                "email:newsletter": {"Asia/Kolkata": "2026-02-10"}}
    streams = [StreamClock("reporting", now),
               StreamClock("email:newsletter", datetime(2026, 2, 11, 18, 35, tzinfo=UTC))]
    due, new = due_stream_partitions(streams, ["Asia/Kolkata"], progress, GRACE,
                                     date(2024, 1, 1))
    assert keys(due["reporting"]) == ["2026-02-11|Asia/Kolkata"]
    assert due["email:newsletter"] == []
    assert new["email:newsletter"] == {"Asia/Kolkata": "2026-02-10"}
    streams[1] = StreamClock("email:newsletter", datetime(2026, 2, 11, 19, 0, tzinfo=UTC))
    due, new = due_stream_partitions(streams, ["Asia/Kolkata"], new, GRACE, date(2024, 1, 1))
    assert due["reporting"] == [] and keys(due["email:newsletter"]) == [
        "2026-02-11|Asia/Kolkata"]
    # a watermark ahead of the clock does not make a day close early
    early = [StreamClock("email:automation", datetime(2026, 2, 11, 18, 0, tzinfo=UTC),
                         starts_at=datetime(2026, 2, 11, tzinfo=UTC))]
    due, _ = due_stream_partitions(early, ["Asia/Kolkata"], {}, GRACE, date(2024, 1, 1))
    assert due["email:automation"] == []


def test_new_stream_starts_with_the_days_its_first_fetch_covers():
    """Reporting is up to date when Mailgun gets configured: the email stream still gets the
    days of its first fetch's lookback, and a stream without that knowledge the lookback."""
    now = datetime(2026, 2, 12, 6, tzinfo=UTC)
    progress = {"reporting": {"UTC": "2026-02-11"}}
    streams = [StreamClock("reporting", now),
               StreamClock("email:newsletter", now - timedelta(minutes=30),
                           starts_at=datetime(2026, 2, 8, 23, tzinfo=UTC)),
               StreamClock("email:automation", now - timedelta(minutes=30))]
    due, new = due_stream_partitions(streams, ["UTC"], progress, GRACE, date(2024, 1, 1))
    assert due["reporting"] == []
    assert keys(due["email:newsletter"]) == [f"2026-02-{d:02d}|UTC" for d in range(8, 12)]
    assert keys(due["email:automation"]) == ["2026-02-10|UTC", "2026-02-11|UTC"]
    assert new["email:newsletter"] == {"UTC": "2026-02-11"}
    # the per-tick limit is shared; the rest follows on the next tick, in order
    due, new2 = due_stream_partitions(streams, ["UTC"], progress, GRACE, date(2024, 1, 1),
                                      limit=3)
    assert keys(due["email:newsletter"]) == [f"2026-02-{d:02d}|UTC" for d in range(8, 11)]
    due, _ = due_stream_partitions(streams, ["UTC"], new2, GRACE, date(2024, 1, 1), limit=3)
    assert keys(due["email:newsletter"]) == ["2026-02-11|UTC"]


def test_old_cursor_is_the_reporting_progress():
    assert read_progress(None) == {}
    assert read_progress(json.dumps({"UTC": "2026-02-11"})) == {"reporting": {"UTC": "2026-02-11"}}
    new = {"reporting": {"UTC": "2026-02-11"}, "email:newsletter": {"UTC": "2026-02-10"}}
    assert read_progress(json.dumps({"streams": new})) == new


def test_sensor_requests_email_days_per_stream_once_settled(instance, monkeypatch, warehouse):
    """Through Dagster: the reporting stream is up to date (old-format cursor), newsletter was
    configured two days ago, automation has never fetched."""
    url, engine = warehouse
    instance.add_dynamic_partitions("timezones", ["America/New_York"])
    mailgun = Mailgun(domain="mg.example.com", api_key="k")
    # New York's 02-11 ends at 05:00Z on the 12th
    now = datetime(2026, 2, 12, 5, 45, tzinfo=UTC)
    monkeypatch.setattr(scheduling, "_utcnow", lambda: now)
    first = datetime(2026, 2, 9, 20, tzinfo=UTC)  # the 9th in New York
    wh.record_stream_state(engine, "mailgun:newsletter", first_fetch_from=first.timestamp())
    settled = datetime(2026, 2, 12, 5, 15, tzinfo=UTC)  # 15 minutes short of 05:30Z
    wh.advance_cursor(engine, "mailgun:newsletter", now.timestamp() - 60, settled.timestamp())
    old = json.dumps({"America/New_York": "2026-02-11"})
    result = evaluate(instance, old, mailgun, url)
    assert sorted(r.run_key for r in result.run_requests) == [
        "newsletter_email_daily:2026-02-09|America/New_York",
        "newsletter_email_daily:2026-02-10|America/New_York"]
    progress = json.loads(result.cursor)["streams"]
    assert progress["reporting"] == {"America/New_York": "2026-02-11"}
    assert "email:automation" not in progress  # nothing fetched yet: no progress either
    wh.advance_cursor(engine, "mailgun:newsletter", now.timestamp(),
                      datetime(2026, 2, 12, 5, 31, tzinfo=UTC).timestamp())
    result = evaluate(instance, result.cursor, mailgun, url)
    assert [r.run_key for r in result.run_requests] == [
        "newsletter_email_daily:2026-02-11|America/New_York"]
    assert result.run_requests[0].job_name == "newsletter_email_daily"


# --- cold starts, invalid timezone keys, skip reasons in the tick's log ------------------


class TickLog(logging.Handler):
    """The lines a sensor writes to its tick's log (what the UI's "View logs" shows)."""

    def __init__(self, ctx):
        super().__init__()
        self.lines: list[tuple[str, str]] = []
        ctx.log.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


def _materialized(instance, assets, *keys):
    from dagster import AssetMaterialization

    for asset in assets:
        for k in keys:
            instance.report_runless_asset_event(AssetMaterialization(asset, partition=k))


# These tests are about the reporting and email streams; the code location's sensor also
# carries the web stream (test_web_stream_joins_the_closed_days_sensor).
reporting_and_email_sensor = build_closed_days_sensor([support_stream, *email_streams])


def _closed_days_tick(instance, cursor=None, mailgun=None, warehouse_url="sqlite://",
                      sensor=None, posthog=None):
    ctx = build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"settings": PipelineSettings(default_timezone="UTC",
                                                start_date="2024-01-01"),
                   "mailgun": mailgun or Mailgun(),
                   "warehouse": Warehouse(url=warehouse_url),
                   "posthog": posthog or PostHog(), "push_settings": PushSettings(),
                   "campaign_broker": CampaignBroker()},
    )
    log = TickLog(ctx)
    return (sensor or reporting_and_email_sensor)(ctx), log.lines


REPORTING = ("raw_reporting_events", "reporting_rollups")


def test_first_start_does_not_request_days_already_materialized(instance, monkeypatch):
    """After the demo (or a backfill), a first start requests only what is not done:
    a day is done when every asset of the stream's job has materialized it."""
    instance.add_dynamic_partitions("timezones", ["America/New_York", "Asia/Kolkata"])
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 12, 6, tzinfo=UTC))
    _materialized(instance, REPORTING, "2026-02-10|America/New_York",
                  "2026-02-11|America/New_York", "2026-02-10|Asia/Kolkata")
    _materialized(instance, REPORTING[:1], "2026-02-11|Asia/Kolkata")  # its rollup failed
    result, _ = _closed_days_tick(instance)
    assert [r.run_key for r in result.run_requests] == ["2026-02-11|Asia/Kolkata"]
    progress = json.loads(result.cursor)["streams"]["reporting"]
    assert progress == {"America/New_York": "2026-02-11", "Asia/Kolkata": "2026-02-11"}
    # with progress, a closed day is requested even if materialized (e.g. early, before
    # it closed): the rule is for days done before the sensor knew the timezone
    _materialized(instance, REPORTING, "2026-02-12|America/New_York")
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 13, 6, tzinfo=UTC))
    result, _ = _closed_days_tick(instance, result.cursor)
    assert sorted(r.run_key for r in result.run_requests) == [
        "2026-02-12|America/New_York", "2026-02-12|Asia/Kolkata"]


def test_first_start_with_every_day_done_requests_nothing_and_keeps_progress(
        instance, monkeypatch):
    instance.add_dynamic_partitions("timezones", ["UTC"])
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 12, 6, tzinfo=UTC))
    _materialized(instance, REPORTING, "2026-02-10|UTC", "2026-02-11|UTC")
    result, log = _closed_days_tick(instance)
    assert isinstance(result, SensorResult) and not result.run_requests
    assert result.skip_reason is not None
    assert json.loads(result.cursor)["streams"]["reporting"] == {"UTC": "2026-02-11"}
    assert ("INFO", f"skipped: {result.skip_reason.skip_message}") in log


def test_new_email_stream_skips_the_days_already_rolled_up(instance, monkeypatch, warehouse):
    """The demo fetched and rolled up the newsletter days: a first start requests only the
    automation days, whose partitions were never materialized."""
    url, engine = warehouse
    instance.add_dynamic_partitions("timezones", ["UTC"])
    now = datetime(2026, 2, 12, 6, tzinfo=UTC)
    monkeypatch.setattr(scheduling, "_utcnow", lambda: now)
    for kind in ("newsletter", "automation"):
        wh.record_stream_state(engine, f"mailgun:{kind}",
                               first_fetch_from=datetime(2026, 2, 10, 3, tzinfo=UTC).timestamp())
        wh.advance_cursor(engine, f"mailgun:{kind}", now.timestamp() - 60,
                          now.timestamp() - 1800)
    _materialized(instance, ("raw_newsletter_email_events", "newsletter_email_rollups"),
                  "2026-02-10|UTC", "2026-02-11|UTC")
    _materialized(instance, REPORTING, "2026-02-10|UTC", "2026-02-11|UTC")
    result, _ = _closed_days_tick(instance, None, Mailgun(domain="mg.example.com", api_key="k"),
                                  url)
    assert sorted(r.run_key for r in result.run_requests) == [
        "automation_email_daily:2026-02-10|UTC", "automation_email_daily:2026-02-11|UTC"]
    assert json.loads(result.cursor)["streams"]["email:newsletter"] == {"UTC": "2026-02-11"}


def test_late_events_sensor_first_start_begins_after_the_newest_fetch(instance):
    """A first start does not replay the fetch the days were rolled up from (the demo's);
    the next fetch is read."""
    instance.add_dynamic_partitions("timezones", ["UTC"])
    _fetch_done(instance, buckets=[_bucket(2026, 2, 24, 12)])
    _rolled_up(instance, "2026-02-24|UTC", "2026-02-25|UTC")
    result, cursor = _late_tick(instance, None)
    assert not result.run_requests
    _fetch_done(instance, buckets=[_bucket(2026, 2, 25, 12)])
    result, _ = _late_tick(instance, cursor)
    assert [str(r.partition_key) for r in result.run_requests] == ["2026-02-25|UTC"]


def test_invalid_timezone_keys_are_skipped_with_a_warning(instance, monkeypatch):
    """A timezone key typed by hand in the UI: both sensors skip it, name it in a warning,
    and go on with the valid ones."""
    instance.add_dynamic_partitions("timezones", ["Europe/Pariss", "UTC"])
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 12, 6, tzinfo=UTC))
    result, log = _closed_days_tick(instance, json.dumps({"UTC": "2026-02-10"}))
    assert [r.run_key for r in result.run_requests] == ["2026-02-11|UTC"]
    [(level, line)] = [entry for entry in log if "Europe/Pariss" in entry[1]]
    assert level == "WARNING" and "next accounts refresh removes it" in line

    _, cursor = _late_tick(instance, None)
    _rolled_up(instance, "2026-02-11|UTC")
    _fetch_done(instance, buckets=[_bucket(2026, 2, 11, 12)])
    ctx = build_sensor_context(instance=instance, cursor=cursor)
    late_log = TickLog(ctx)
    result = sensors.late_email_sensors["newsletter"](ctx)
    assert [str(r.partition_key) for r in result.run_requests] == ["2026-02-11|UTC"]
    assert any(lv == "WARNING" and "'Europe/Pariss'" in m for lv, m in late_log.lines)

    # only invalid keys: a skip, with its reason and the warning in the tick's log
    with instance_for_test() as other:
        other.add_dynamic_partitions("timezones", ["Europe/Pariss"])
        result, log = _closed_days_tick(other)
        assert isinstance(result, SkipReason)
        assert "accounts" in result.skip_message and "`" not in result.skip_message
        assert [lv for lv, _ in log] == ["WARNING", "INFO"]


def test_mailgun_sensor_skip_is_in_the_tick_log(instance):
    ctx = build_sensor_context(instance=instance,
                               resources={"mailgun": Mailgun(),
                                          "warehouse": Warehouse(url="sqlite://")})
    log = TickLog(ctx)
    result = sensors.mailgun_sensors["newsletter"](ctx)
    assert isinstance(result, SkipReason)
    assert log.lines == [("INFO", f"skipped: {result.skip_message}")]


@pytest.mark.parametrize("configured", [False, True])
def test_mailgun_sensors_run_by_default_only_when_mailgun_is_configured(monkeypatch,
                                                                       configured):
    monkeypatch.delenv("MAILGUN_DOMAIN", raising=False)
    monkeypatch.delenv("MAILGUN_API_KEY", raising=False)
    if configured:
        monkeypatch.setenv("MAILGUN_DOMAIN", "mg.example.com")
        monkeypatch.setenv("MAILGUN_API_KEY", "k")
    else:
        monkeypatch.setenv("MAILGUN_DOMAIN", "mg.example.com")  # the key alone is missing
    [pipeline] = [p for p in sensors.EMAIL_PIPELINES if p.name == "newsletter"]
    built = [sensors.mailgun_sensor(pipeline, sensors.mailgun_jobs["newsletter"]),
             sensors.late_email_events_sensor(pipeline)]
    for s in built:
        expected = DefaultSensorStatus.RUNNING if configured else DefaultSensorStatus.STOPPED
        assert s.default_status == expected, s.name
        assert ("Running by default" if configured else "Stopped by default") in s.description


def test_timezone_added_to_a_running_email_stream_catches_up_the_lookback_only():
    """The stream's first-fetch start applies to a new stream, not to a timezone registered
    months later (it would request its whole history)."""
    now = datetime(2026, 6, 12, 6, tzinfo=UTC)
    progress = {"email:newsletter": {"UTC": "2026-06-11"}}
    streams = [StreamClock("email:newsletter", now - timedelta(minutes=30),
                           starts_at=datetime(2026, 2, 8, 23, tzinfo=UTC))]
    due, _ = due_stream_partitions(streams, ["UTC", "Asia/Kolkata"], progress, GRACE,
                                   date(2024, 1, 1))
    assert keys(due["email:newsletter"]) == ["2026-06-10|Asia/Kolkata",
                                             "2026-06-11|Asia/Kolkata"]


def test_web_and_push_streams_join_the_closed_days_sensor(instance, monkeypatch):
    """The code location's sensor requests the web and push days with the support days,
    each stream with its own progress and run keys; the push impact only once PostHog is
    configured, and only for days whose longest after-window (plus grace) has closed."""
    instance.add_dynamic_partitions("timezones", ["America/New_York"])
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 12, 5, 31, tzinfo=UTC))
    result, _ = _closed_days_tick(instance, sensor=closed_days_sensor)
    by_job = {}
    for r in result.run_requests:
        by_job.setdefault(r.job_name, []).append(r.run_key)
    assert by_job == {
        "support_reporting": ["2026-02-10|America/New_York", "2026-02-11|America/New_York"],
        "web_analytics": ["web_analytics:2026-02-10|America/New_York",
                          "web_analytics:2026-02-11|America/New_York"],
        "push_delivery": ["push_delivery:2026-02-10|America/New_York",
                          "push_delivery:2026-02-11|America/New_York"],
    }
    assert set(read_progress(result.cursor)) == {"reporting", "web", "push_delivery"}
    # PostHog configured: at 05:31 UTC on 02-13 the day 02-11 (New York) closed 24 h + 2 h
    # of grace + the closed-days grace ago, 02-12 not yet
    monkeypatch.setattr(scheduling, "_utcnow", lambda: datetime(2026, 2, 13, 8, 31, tzinfo=UTC))
    result, _ = _closed_days_tick(instance, sensor=closed_days_sensor, cursor=result.cursor,
                                  posthog=PostHog(host="http://x", project_id="1",
                                                  personal_api_key="k"))
    impact = sorted(r.run_key for r in result.run_requests
                    if r.job_name == "push_impact_analysis")
    assert impact[-1] == "push_impact_analysis:2026-02-11|America/New_York"


def test_late_partitions_of_a_timezone_no_longer_a_key_are_dropped_not_requested(caplog):
    """Every late-events sensor's tail: a pending day whose timezone key has gone (carried
    in the cursor from an earlier tick) is dropped with a warning; the others are
    requested oldest first, beyond the limit carried on."""
    class Context:  # the tail only logs through the context (a logger caplog sees)
        log = logging.getLogger("late_partitions_test")

    context = Context()
    pending = {"2026-03-01|America/New_York": 2, "2026-03-01|Europe/Gone": 1,
               "2026-03-02|Asia/Kolkata": 3, "2026-03-03|Asia/Kolkata": 4}
    with caplog.at_level(logging.WARNING):
        result = scheduling.request_late_partitions(
            context, pending, 2, run_key=lambda key, stamp: f"late:{stamp}:{key}",
            cursor_state={"after": 9}, idle_reason="idle",
            timezones=["America/New_York", "Asia/Kolkata"])
    assert [r.run_key for r in result.run_requests] == [
        "late:2:2026-03-01|America/New_York", "late:3:2026-03-02|Asia/Kolkata"]
    assert json.loads(result.cursor) == {"after": 9,
                                         "pending": {"2026-03-03|Asia/Kolkata": 4}}
    assert "dropping late partition 2026-03-01|Europe/Gone" in caplog.text
    assert "2026-03-01|Europe/Gone" in pending  # the caller's dict is left alone
