"""Email end to end through Dagster: fetch from the simulator, daily partitions, rollups,
statistics, and a late-indexed event reaching the rollups through the late-events sensor."""

from datetime import date, datetime, timezone

import pyarrow as pa
import pytest
import sqlalchemy as sa
from dagster import AssetKey, build_sensor_context, instance_for_test, materialize

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.accounts import accounts
from analytics_pipeline.core.landing import LandingStore, ProviderEventLog
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.resources import Landing, PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline.dev.mailgun_simulator import MailgunSimulator, sample_item
from analytics_pipeline.email import assets as assets_mod
from analytics_pipeline.email import tables as et
from analytics_pipeline.email.assets import email_pipeline_assets, mailgun_event_assets
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA, MailgunClient
from analytics_pipeline.email.metrics import EMAIL_PIPELINES
from analytics_pipeline.email.resources import Mailgun
from analytics_pipeline.email.sensors import late_email_sensors
from analytics_pipeline.email.source import EmailSource, src_email_recipients, src_emails
from analytics_pipeline.email.state import refresh_email_state
from analytics_pipeline.email.steps import (
    extract_email_partition,
    fetch_provider_events,
    rollup_email_partition,
)
from analytics_pipeline.report import metric_series

NEWSLETTER = EMAIL_PIPELINES[0]


def utc(*a) -> float:
    return datetime(*a, tzinfo=timezone.utc).timestamp()


class FakeTime:
    def __init__(self, t):
        self.t = t

    def time(self):
        return self.t


def write_email_source(url):
    write_source(url, [{"id": 1, "name": "Acme", "reporting_timezone": None},
                       {"id": 2, "name": "NY", "reporting_timezone": "America/New_York"}], [])
    engine = wh.make_engine(url)
    emails = [
        {"id": 100, "account_id": 1, "kind": "newsletter", "automation_id": None,
         "subject": "Feb news", "track_opens": True},
        {"id": 101, "account_id": 2, "kind": "newsletter", "automation_id": None,
         "subject": "NY news", "track_opens": True},
        {"id": 200, "account_id": 1, "kind": "automation", "automation_id": 7,
         "subject": "Welcome", "track_opens": True},
    ]
    recipients = (
        [{"id": i, "account_id": 1, "email_id": 100, "member_id": 500 + i,
          "member_email": f"Member{i}@Example.com", "provider_message_id": "<b100@mg>"}
         for i in range(1, 6)]
        + [{"id": 10 + i, "account_id": 2, "email_id": 101, "member_id": 600 + i,
            "member_email": f"ny{i}@example.com", "provider_message_id": "<b101@mg>"}
           for i in range(1, 4)]
        + [{"id": 20 + i, "account_id": 1, "email_id": 200, "member_id": 500 + i,
            "member_email": f"member{i}@example.com", "provider_message_id": f"<a{i}@mg>"}
           for i in range(1, 3)]
    )
    with engine.begin() as c:
        c.execute(src_emails.insert(), emails)
        c.execute(src_email_recipients.insert(), recipients)
    engine.dispose()


@pytest.fixture
def world(tmp_path, warehouse_url, monkeypatch):
    src = f"sqlite:///{tmp_path / 'app.db'}"
    write_email_source(src)
    clock = FakeTime(utc(2026, 2, 25, 0, 2))
    monkeypatch.setattr(assets_mod, "time", clock)
    with MailgunSimulator(clock=lambda: clock.t) as sim, instance_for_test() as instance:
        day = utc(2026, 2, 24)
        for i in range(1, 6):
            sim.add(sample_item(f"d{i}", "delivered", day + 3600 * 10 + i,
                                f"member{i}@example.com", "<b100@mg>", ["newsletter"]))
        sim.add(sample_item("o1", "opened", day + 3600 * 12, "MEMBER1@example.com",
                            "<b100@mg>", ["newsletter"]))
        sim.add(sample_item("o1b", "opened", day + 3600 * 13, "member1@example.com",
                            "<b100@mg>", ["newsletter"]))
        sim.add(sample_item("o2", "opened", day + 3600 * 14, "member2@example.com",
                            "<b100@mg>", ["newsletter"]))
        sim.add(sample_item("f3", "failed", day + 3600 * 15, "member3@example.com",
                            "<b100@mg>", ["newsletter"], severity="permanent"))
        # New York's 2026-02-24 ends at 2026-02-25T05:00Z
        sim.add(sample_item("ny1", "opened", day + 3600 * 20, "ny1@example.com",
                            "<b101@mg>", ["newsletter"]))
        sim.add(sample_item("stranger", "opened", day + 3600 * 16, "who@example.com",
                            "<b100@mg>", ["newsletter"]))
        sim.add(sample_item("auto1", "opened", day + 3600 * 9, "member1@example.com",
                            "<a1@mg>", ["automation"]))
        # opened at 23:55Z on the 24th, but indexed by Mailgun only at 00:05Z
        sim.add(sample_item("late", "opened", utc(2026, 2, 24, 23, 55), "member4@example.com",
                            "<b100@mg>", ["newsletter"]), indexed_at=utc(2026, 2, 25, 0, 5))
        resources = {
            "source_db": SourceDatabase(url=src),
            "warehouse": Warehouse(url=warehouse_url),
            "landing": Landing(uri=str(tmp_path / "landing")),
            "settings": PipelineSettings(default_timezone="UTC", start_date="2024-01-01"),
            "mailgun": Mailgun(api_base=sim.base_url, domain=sim.domain, api_key=sim.api_key),
        }
        yield clock, sim, instance, resources


def run(assets, instance, resources, **kw):
    result = materialize(assets, instance=instance, resources=resources, **kw)
    assert result.success
    return result


def opens(resources, account, metric="newsletter_opens", day=date(2026, 2, 24)):
    engine = wh.make_engine(resources["warehouse"].url)
    try:
        [p] = metric_series(engine, account, metric, day, day)
        return p.value
    finally:
        engine.dispose()


def test_email_pipeline_end_to_end(world):
    clock, sim, instance, res = world
    newsletter_raw, newsletter_rollups, newsletter_stats = email_pipeline_assets["newsletter"]
    run([accounts], instance, res)
    run([mailgun_event_assets["newsletter"]], instance, res)
    run([mailgun_event_assets["automation"]], instance, res)

    clock.t = utc(2026, 2, 25, 5, 40)  # both local days closed
    for key in ("2026-02-24|UTC", "2026-02-24|America/New_York"):
        run([newsletter_raw, newsletter_rollups], instance, res, partition_key=key)
    assert opens(res, 1) == 3  # o1, o1b, o2 (late not fetched yet)
    assert opens(res, 1, "newsletter_unique_opens") == 2
    assert opens(res, 1, "newsletter_failed") == 1
    assert opens(res, 2) == 1

    engine = wh.make_engine(res["warehouse"].url)
    with engine.connect() as c:
        q = c.execute(sa.select(wh.quarantine.c.event_id, wh.quarantine.c.reason)).all()
    assert ("stranger", "unmatched_recipient") in q

    run([newsletter_stats], instance, res)
    with engine.connect() as c:
        stats = {r.email_id: r for r in c.execute(sa.select(et.email_stats)
                                                  .where(et.email_stats.c.kind == "newsletter"))}
        state = {r.recipient_id: r for r in c.execute(sa.select(et.email_recipient_states))}
    assert (stats[100].sent_count, stats[100].delivered_count, stats[100].opened_count,
            stats[100].failed_count) == (5, 5, 2, 1)
    assert stats[100].open_rate == pytest.approx(2 / 5)
    assert stats[101].open_rate is None  # 3 recipients only
    assert state[1].opened_at is not None and state[3].failed_at is not None

    # The late-events sensor starts: after the newest fetch, whose days were just rolled up.
    from analytics_pipeline.definitions import defs

    ctx = build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
    first_tick = late_email_sensors["newsletter"](ctx)
    assert not first_tick.run_requests
    # The settling pass, 30 minutes later, finds the late-indexed open ...
    clock.t = utc(2026, 2, 25, 5, 45)
    fetch = run([mailgun_event_assets["newsletter"]], instance, res)
    ev = fetch.get_asset_materialization_events()[0]
    assert ev.materialization.metadata["events_fetched"].value >= 1
    # ... and the late-events sensor re-materializes the rolled-up day it belongs to.
    ctx = build_sensor_context(instance=instance, cursor=first_tick.cursor,
                               repository_def=defs.get_repository_def())
    reqs = late_email_sensors["newsletter"](ctx).run_requests
    # the landed span (23:55Z on the 24th) touches the 24th of both timezones, both
    # already rolled up; the 25th was never materialized and is left to the day-close sensor
    assert sorted(str(r.partition_key) for r in reqs) == [
        "2026-02-24|America/New_York", "2026-02-24|UTC"]
    for r in reqs:
        run([newsletter_raw, newsletter_rollups], instance, res,
            partition_key=str(r.partition_key))
    assert opens(res, 1) == 4
    assert opens(res, 1, "newsletter_unique_opens") == 3
    # the automation pipeline is separate: its own metrics, its own cursor
    assert wh.get_cursor(engine, "mailgun:automation")[0] < wh.get_cursor(
        engine, "mailgun:newsletter")[0]
    engine.dispose()


def test_late_events_sensor_sees_every_fetch_since_its_cursor(world):
    """Two fetches between two ticks: the first lands a late event of an already rolled-up
    day, the second only events of a day not rolled up yet. The day of the first fetch is
    re-materialized (the sensor used to look at the newest fetch only)."""
    from analytics_pipeline.definitions import defs

    clock, sim, instance, res = world
    newsletter_raw, newsletter_rollups, _ = email_pipeline_assets["newsletter"]
    run([accounts], instance, res)
    run([mailgun_event_assets["newsletter"]], instance, res)
    clock.t = utc(2026, 2, 25, 5, 40)
    for key in ("2026-02-24|UTC", "2026-02-24|America/New_York"):
        run([newsletter_raw, newsletter_rollups], instance, res, partition_key=key)
    # the last tick saw the first fetch (a cursor as the former asset sensor kept it)
    [first] = instance.fetch_materializations(
        AssetKey("mailgun_newsletter_events"), limit=10).records
    cursor = str(first.storage_id)
    clock.t = utc(2026, 2, 25, 5, 45)  # the settling pass finds the late open of the 24th
    run([mailgun_event_assets["newsletter"]], instance, res)
    sim.add(sample_item("o-25", "opened", utc(2026, 2, 25, 5, 50), "member5@example.com",
                        "<b100@mg>", ["newsletter"]))
    clock.t = utc(2026, 2, 25, 6, 0)  # lands an open of the 25th only
    run([mailgun_event_assets["newsletter"]], instance, res)
    ctx = build_sensor_context(instance=instance, cursor=cursor,
                               repository_def=defs.get_repository_def())
    result = late_email_sensors["newsletter"](ctx)
    reqs = result.run_requests
    assert sorted(str(r.partition_key) for r in reqs) == [
        "2026-02-24|America/New_York", "2026-02-24|UTC"]


def one_recipient_world(tmp_path, source_url: str, warehouse_url: str, message_id: str):
    """An app database with one newsletter recipient (account 1, UTC) and a warehouse."""
    write_source(source_url, [{"id": 1, "name": "Acme", "reporting_timezone": None}], [])
    src = wh.make_engine(source_url)
    with src.begin() as c:
        c.execute(src_emails.insert(), [{"id": 100, "account_id": 1, "kind": "newsletter",
                                         "automation_id": None, "subject": "s",
                                         "track_opens": True}])
        c.execute(src_email_recipients.insert(), [
            {"id": 1, "account_id": 1, "email_id": 100, "member_id": 5,
             "member_email": "ann@example.com", "provider_message_id": message_id}])
    src.dispose()
    engine = wh.make_engine(warehouse_url)
    wh.ensure_schema(engine)
    wh.replace_accounts(engine, [{"id": 1, "name": "Acme", "reporting_timezone": None,
                                  "timezone": "UTC", "timezone_valid": True}])
    return engine, str(tmp_path / "landing")


def fetch_from(sim, log, engine, now):
    client = MailgunClient(sim.domain, sim.api_key, sim.base_url, backoff_factor=0.01)
    return fetch_provider_events(client, log, engine, NEWSLETTER, "newsletter", now - 60, now,
                                 settle_seconds=1800, initial_lookback_seconds=86400)


def test_bracketed_message_ids_of_the_app_match_bare_provider_ids(tmp_path, source_url):
    """The app stores ``<id>`` (send API), Mailgun's events carry ``id``: the day's recipients
    are found by the SQL filter (SQLite and PostgreSQL app databases) and matched, nothing is
    quarantined as unmatched."""
    engine, root = one_recipient_world(tmp_path, source_url,
                                       f"sqlite:///{tmp_path / 'warehouse.db'}",
                                       "<20260224100000.1@mg.example.com>")
    now = utc(2026, 2, 25, 2)
    log = ProviderEventLog(root, NEWSLETTER.stream)
    with MailgunSimulator(clock=lambda: now) as sim:
        sim.add(sample_item("d1", "delivered", utc(2026, 2, 24, 10), "ann@example.com",
                            "20260224100000.1@mg.example.com", ["newsletter"]))
        fetch_from(sim, log, engine, now)
    day = LocalDay(date(2026, 2, 24), "UTC")
    store = LandingStore(root)
    r = extract_email_partition(log, EmailSource(source_url), store, engine, NEWSLETTER, day,
                                "UTC")
    assert (r.events, r.matched, r.quarantined) == (1, 1, 0)
    rollup_email_partition(store, engine, NEWSLETTER, day)
    [p] = metric_series(engine, 1, "newsletter_delivered", day.day, day.day)
    assert p.value == 1
    engine.dispose()


def _no_nul(value) -> bool:
    return "\x00" not in str(value) and "\\u0000" not in str(value)


def test_nul_in_provider_text_is_sanitized_on_landing(tmp_path, warehouse_url):
    """A NUL in a Mailgun text field (here the failure message, a tag, an unknown field)
    is replaced on landing, in the typed columns and in the raw JSON: the statistics
    refresh writes to PostgreSQL (COPY), and so does the quarantine of unmatched events."""
    engine, root = one_recipient_world(tmp_path, f"sqlite:///{tmp_path / 'app.db'}",
                                       warehouse_url, "<m1@mg>")
    now = utc(2026, 2, 25, 2)
    log = ProviderEventLog(root, NEWSLETTER.stream)
    with MailgunSimulator(clock=lambda: now) as sim:
        item = sample_item("f1", "failed", utc(2026, 2, 24, 10), "ann@example.com", "m1@mg",
                           ["newsletter", "a\x00b"], note="bad\x00byte")
        item["delivery-status"]["message"] = "mailbox\x00 unavailable"
        sim.add(item)
        sim.add(sample_item("u1", "opened", utc(2026, 2, 24, 11), "who\x00@example.com",
                            "m1@mg", ["newsletter"]))
        fetch_from(sim, log, engine, now)
    landed = log.read(log.days(), PROVIDER_EVENT_SCHEMA)
    assert landed.num_rows == 2
    assert all(_no_nul(v) for c in landed.columns for v in c.to_pylist())
    r = refresh_email_state(log, EmailSource(f"sqlite:///{tmp_path / 'app.db'}"), engine,
                            NEWSLETTER.name)
    assert r.matched == 1 and r.unmatched == 1
    with engine.connect() as c:
        [msg] = c.execute(sa.select(et.email_recipient_states.c.failure_message)).scalars()
    assert msg == "mailbox\ufffd unavailable"
    day = LocalDay(date(2026, 2, 24), "UTC")
    x = extract_email_partition(log, EmailSource(f"sqlite:///{tmp_path / 'app.db'}"),
                                LandingStore(root), engine, NEWSLETTER, day, "UTC")
    assert x.quarantined == 1
    engine.dispose()


def test_stats_refresh_survives_nul_in_a_log_landed_before_the_fix(tmp_path, warehouse_url):
    """Each refresh re-reads the whole log: a NUL landed by an older version must not fail
    every later refresh, so text is sanitized on read as well."""
    engine, root = one_recipient_world(tmp_path, f"sqlite:///{tmp_path / 'app.db'}",
                                       warehouse_url, "<m1@mg>")
    log = ProviderEventLog(root, NEWSLETTER.stream)
    row = {"event_id": "f1", "event": "failed",
           "timestamp": datetime(2026, 2, 24, 10, tzinfo=timezone.utc),
           "recipient": "ann@example.com", "message_id": "m1@mg", "severity": "permanent",
           "tags": ["newsletter"], "delivery_status_code": "550",
           "delivery_status_message": "mailbox\x00 unavailable", "raw": "{}",
           "fetched_at": datetime(2026, 2, 24, 11, tzinfo=timezone.utc)}
    unmatched = {**row, "event_id": "u\x00", "recipient": "who@example.com",
                 "raw": '{"id":"u\x00"}'}
    log.append(pa.Table.from_pylist([row, unmatched], schema=PROVIDER_EVENT_SCHEMA), "old")
    source = EmailSource(f"sqlite:///{tmp_path / 'app.db'}")
    refresh_email_state(log, source, engine, NEWSLETTER.name)
    with engine.connect() as c:
        [msg] = c.execute(sa.select(et.email_recipient_states.c.failure_message)).scalars()
    assert msg == "mailbox\ufffd unavailable"
    day = LocalDay(date(2026, 2, 24), "UTC")
    x = extract_email_partition(log, source, LandingStore(root), engine, NEWSLETTER, day, "UTC")
    assert x.quarantined == 1
    engine.dispose()
