"""The campaign source in Dagster, on a real RabbitMQ (a queue and an exchange of each
test's own): the broker sensor, consumption runs that land, acknowledge, quarantine and
refresh the progress, a crash between landing and acknowledgement, stuck campaigns, the
progress checks, the rollups of a local day, the late-reports sensor and the CLI."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from dagster import (
    AssetCheckSeverity,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    SkipReason,
    build_sensor_context,
    materialize,
)
from dagster._core.test_utils import create_run_for_test

from analytics_pipeline.campaigns import assets as campaign_assets
from analytics_pipeline.campaigns import broker as broker_mod
from analytics_pipeline.campaigns import sensors as campaign_sensors
from analytics_pipeline.campaigns import steps as campaign_steps
from analytics_pipeline.campaigns.assets import (
    campaign_messages,
    campaign_progress,
    campaign_rollups,
)
from analytics_pipeline.campaigns.broker import connect, pending_messages
from analytics_pipeline.campaigns.contract import (
    CAMPAIGN_SOURCE,
    REASON_NEGATIVE,
    REASON_NOT_JSON,
    REASON_UNKNOWN_KEY,
    src_campaign_contacts,
    src_campaigns,
)
from analytics_pipeline.campaigns.contract import campaign_progress as progress_table
from analytics_pipeline.campaigns.jobs import _campaign_clock
from analytics_pipeline.campaigns.metrics import CHANNEL_IDS
from analytics_pipeline.campaigns.progress import (
    CHECK_COUNTS_AGREE,
    CHECK_NO_DOUBLE_SENDS,
    CHECK_NOT_STUCK,
    CHECK_WITHIN_AUDIENCE,
)
from analytics_pipeline.campaigns.read import JSON_KEYS
from analytics_pipeline.campaigns.resources import CampaignBroker
from analytics_pipeline.campaigns.source import CampaignSource
from analytics_pipeline.campaigns.steps import campaign_log, rollup_days
from analytics_pipeline.cli import main
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.checks import NON_NEGATIVE, RECONCILES
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.resources import PipelineSettings
from analytics_pipeline.dev.campaign_publisher import simulate_senders
from analytics_pipeline_tests import campaign_fixtures
from analytics_pipeline_tests.campaign_fixtures import scratch_broker
from analytics_pipeline_tests.pipeline_fixtures import make_env

UTC = timezone.utc
NY = "America/New_York"  # account 1 of the sample source; account 2 is Asia/Kolkata
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # 04:00 in New York, 14:30 in Kolkata


class Broker(campaign_fixtures.Broker):
    def publisher(self, at: datetime = T0, **kw):
        """The packer and senders, their clock at ``T0`` unless told otherwise."""
        return super().publisher(at=at, **kw)


@pytest.fixture
def broker():
    with scratch_broker(Broker) as b:
        yield b


class Clock:
    """The assets' clock (receipt of the messages, the progress refresh's now)."""

    def __init__(self, now: datetime):
        self.now = now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock(T0 + timedelta(minutes=1))
    monkeypatch.setattr(campaign_assets, "_utcnow", lambda: c.now)
    return c


@pytest.fixture
def sqlite_env(tmp_path, instance):
    """The sample source and a SQLite warehouse with the accounts snapshot (for what does
    not depend on the warehouse's database)."""
    e = make_env(tmp_path, f"sqlite:///{tmp_path / 'warehouse.db'}", instance, events=[])
    assert e.materialize_accounts().success
    return e


def write_campaigns(env, campaigns: list[tuple[int, int, str]],
                    contacts: dict[int, list[tuple[int, str, int]]]) -> None:
    """``campaigns`` (id, account, channel class) and their contacts (id, status, attempts)
    in the application database."""
    engine = sa.create_engine(wh.normalize_url(env.source_url))
    with engine.begin() as conn:
        src_campaigns.metadata.create_all(conn, tables=[src_campaigns, src_campaign_contacts])
        conn.execute(src_campaigns.insert(), [
            {"id": c, "account_id": a, "name": f"campaign {c}", "channel_type": ch,
             "status": "running", "created_at": datetime(2026, 3, 1), "scheduled_at": None}
            for c, a, ch in campaigns])
        rows = [{"campaign_id": c, "contact_id": k, "status": s, "sent_at": None,
                 "attempts": n, "error": None}
                for c, people in contacts.items() for k, s, n in people]
        if rows:
            conn.execute(src_campaign_contacts.insert(), rows)
    engine.dispose()


def audience(first: int, n: int, status: str = "SENT") -> list[tuple[int, str, int]]:
    return [(first + i, status, 1) for i in range(n)]


def consume(env, broker: Broker, **settings):
    """One run of the campaign_consumption job's assets."""
    return materialize([campaign_messages, campaign_progress], instance=env.instance,
                       resources={**env.resources, "campaign_broker": broker.resource(**settings)},
                       raise_on_error=False)


def rollup(env, broker: Broker, key: str):
    return materialize([campaign_rollups], partition_key=key, instance=env.instance,
                       resources={**env.resources, "campaign_broker": broker.resource()},
                       raise_on_error=False)


def metadata(result, asset: str) -> dict:
    [m] = [e.materialization for e in result.get_asset_materialization_events()
           if e.materialization.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in m.metadata.items()}


def checks(result) -> dict:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def progress_rows(env) -> dict[int, dict]:
    engine = env.engine()
    try:
        with engine.connect() as conn:
            return {r.campaign_id: dict(r._mapping)
                    for r in conn.execute(sa.select(progress_table))}
    finally:
        engine.dispose()


def quarantine_rows(env) -> list[dict]:
    engine = env.engine()
    q = wh.quarantine.c
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(q.source, q.event_id, q.reason, q.partition_date, q.timezone)
                .order_by(q.event_id))]
    finally:
        engine.dispose()


# --- the broker sensor -------------------------------------------------------------------


def _tick(instance, resource: CampaignBroker):
    ctx = build_sensor_context(instance=instance, resources={"campaign_broker": resource})
    return campaign_sensors.campaign_broker_sensor(ctx)


def test_broker_sensor_launches_a_run_for_pending_messages_without_consuming_them(
        broker, instance):
    idle = _tick(instance, broker.resource())
    assert isinstance(idle, SkipReason) and "no message pending" in idle.skip_message
    with broker.publisher() as pub:
        pub.publish_pack(7, range(1, 2501))  # three pages
    request = _tick(instance, broker.resource())
    assert isinstance(request, RunRequest)
    assert request.tags["analytics/pending"] == "3"
    assert broker.pending() == 3  # seen, not consumed
    assert isinstance(_tick(instance, broker.resource()), RunRequest)  # still pending
    # a consumption in flight holds the next one back
    create_run_for_test(instance, job_name="campaign_consumption",
                        status=DagsterRunStatus.STARTED)
    held = _tick(instance, broker.resource())
    assert isinstance(held, SkipReason) and "still consuming" in held.skip_message
    assert broker.pending() == 3


def test_broker_sensor_skips_with_its_reason(broker, instance):
    off = _tick(instance, CampaignBroker())
    assert isinstance(off, SkipReason) and "ANALYTICS_BROKER_URL" in off.skip_message
    down = _tick(instance, CampaignBroker(url="amqp://guest:s3cret@127.0.0.1:1/%2F"))
    assert isinstance(down, SkipReason) and "not reachable" in down.skip_message
    assert "s3cret" not in down.skip_message
    # the pipeline's queue does not exist yet: declared (bound), so messages are kept
    missing = f"{broker.queue}.new"
    first = _tick(instance, broker.resource(queue=missing))
    assert isinstance(first, SkipReason) and "declared" in first.skip_message
    try:
        with broker.publisher() as pub:
            pub.publish_tracked(7, 1, 1, 0, True)
        assert pending_messages(broker.url, missing) == 1
        assert isinstance(_tick(instance, broker.resource(queue=missing)), RunRequest)
    finally:
        with connect(broker.url) as connection:
            connection.channel().queue_delete(missing)


@pytest.mark.parametrize("configured", [False, True])
def test_broker_sensors_run_by_default_only_when_the_broker_is_configured(
        monkeypatch, configured):
    monkeypatch.delenv("ANALYTICS_BROKER_URL", raising=False)
    if configured:
        monkeypatch.setenv("ANALYTICS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    for s in (campaign_sensors.build_campaign_broker_sensor(),
              campaign_sensors.build_late_campaign_reports_sensor()):
        expected = DefaultSensorStatus.RUNNING if configured else DefaultSensorStatus.STOPPED
        assert s.default_status == expected, s.name
        assert ("Running by default" if configured else "Stopped by default") in s.description


def test_the_closed_days_stream_waits_for_a_configured_broker():
    from types import SimpleNamespace

    now = datetime(2026, 3, 3, 12, tzinfo=UTC)
    assert _campaign_clock(SimpleNamespace(campaign_broker=CampaignBroker()), now) is None
    clock = _campaign_clock(SimpleNamespace(campaign_broker=CampaignBroker(url="amqp://x")),
                            now)
    assert clock.closed_until == now and clock.name == "campaigns"


# --- consumption and progress ----------------------------------------------------------------


def test_a_consumption_run_lands_acks_quarantines_and_refreshes_the_progress(
        env, broker, clock):
    write_campaigns(env, [(7, 1, "Channel::Email")], {7: audience(1, 2490) + audience(
        5000, 10, "FAILED")})
    contacts = list(range(1, 2491)) + list(range(5000, 5010))
    expected = {}
    with broker.publisher() as pub:
        pack = pub.publish_pack(7, contacts)
        simulate_senders(pub, [pack], failed=range(5000, 5010))
        for kind in ("not_json", "negative_count", "unknown_routing_key"):
            message, reason = pub.publish_malformed(kind, queue=broker.queue)
            expected[message.key] = reason
    assert broker.pending() == 3 + 3 + 3

    result = consume(env, broker)
    assert result.success
    assert broker.pending() == 0  # every delivery acknowledged, malformed ones too
    meta = metadata(result, "campaign_messages")
    assert (meta["received"], meta["landed"], meta["redelivered"]) == (9, 9, 0)
    assert (meta["sends"], meta["tracked"], meta["quarantined"]) == (3, 3, 3)
    assert meta["report_dates_by_timezone"] == {NY: ["2026-03-02"]}
    assert meta["broker"] == broker_mod.redact(broker.url) != broker.url
    assert campaign_log(env.landing).days() == [clock.now.date()]

    # malformed bodies, quarantined under their UTC date of receipt
    assert quarantine_rows(env) == [
        {"source": CAMPAIGN_SOURCE, "event_id": key, "reason": expected[key],
         "partition_date": date(2026, 3, 2), "timezone": "UTC"} for key in sorted(expected)]
    assert set(expected.values()) == {REASON_NOT_JSON, REASON_NEGATIVE, REASON_UNKNOWN_KEY}

    row = progress_rows(env)[7]
    assert (row["account_id"], row["channel"], row["audience"], row["pages_expected"],
            row["pages_published"], row["pages_tracked"], row["sent"], row["failed"],
            row["completed"], row["progress"], row["stuck"], row["double_sends"]) == \
        (1, "email", 2500, 3, 3, 3, 2490, 10, True, 1.0, False, 0)
    assert (row["contacts_sent"], row["contacts_failed"], row["status_disagreement"]) == \
        (2490, 10, 0)
    assert row["first_published_at"] == T0.replace(tzinfo=None)
    progress_meta = metadata(result, "campaign_progress")
    assert progress_meta["campaigns_refreshed"] == 1
    assert progress_meta["campaigns_completed"] == 1
    assert progress_meta["quarantined_in_window"] == 3
    evaluations = checks(result)
    assert set(evaluations) == {CHECK_NOT_STUCK, CHECK_NO_DOUBLE_SENDS, CHECK_COUNTS_AGREE,
                                CHECK_WITHIN_AUDIENCE}
    assert all(c.passed for c in evaluations.values())

    # nothing new: the next run lands nothing, changes nothing, quarantines nothing again
    again = consume(env, broker)
    assert again.success and metadata(again, "campaign_messages")["received"] == 0
    assert progress_rows(env)[7]["sent"] == 2490
    assert len(quarantine_rows(env)) == 3


def test_a_crash_between_landing_and_ack_loses_nothing_and_counts_once(
        env, broker, clock, monkeypatch):
    write_campaigns(env, [(7, 1, "Channel::Sms")], {7: audience(1, 1500)})
    with broker.publisher() as pub:
        pack = pub.publish_pack(7, range(1, 1501))
        simulate_senders(pub, [pack])
        pub.publish_malformed("not_json")
    real = broker_mod._acknowledge
    calls = []

    def crash_once(channel, tag):
        calls.append(tag)
        if len(calls) == 1:  # landed and fsynced; the run dies before the acknowledgement
            raise ConnectionResetError("connection lost before the acknowledgement")
        real(channel, tag)

    monkeypatch.setattr(broker_mod, "_acknowledge", crash_once)
    failed = consume(env, broker)
    assert not failed.success
    assert len(campaign_log(env.landing).files(clock.now.date())) == 1  # landed ...
    assert broker.wait_pending(5) == 5  # ... and still with the broker
    assert progress_rows(env) == {}  # the progress waits for a consumption that succeeded

    clock.now += timedelta(minutes=1)
    result = consume(env, broker)
    assert result.success and broker.pending() == 0
    meta = metadata(result, "campaign_messages")
    assert (meta["received"], meta["redelivered"], meta["quarantined"]) == (5, 5, 1)
    progress_meta = metadata(result, "campaign_progress")
    assert progress_meta["deliveries_read"] == 10  # every message landed twice ...
    row = progress_rows(env)[7]
    assert (row["pages_published"], row["pages_tracked"], row["duplicate_pages"],
            row["duplicate_reports"], row["sent"], row["failed"], row["completed"]) == \
        (2, 2, 0, 0, 1500, 0, True)  # ... and counted once
    assert len(quarantine_rows(env)) == 1

    key = f"2026-03-02|{NY}"
    rolled = rollup(env, broker, key)
    assert rolled.success
    sent = env.rows(account_id=1, dimension_type="account", metric="campaign_sent")
    assert [(r["count"], r["sum_value"]) for r in sent] == [(2, 1500.0)]


def test_a_stuck_campaign_is_flagged_after_the_timeout_and_cleared_by_its_report(
        sqlite_env, broker, clock):
    env = sqlite_env
    write_campaigns(env, [(7, 1, "Channel::Email")], {7: audience(1, 1500)})
    with broker.publisher() as pub:
        pack = pub.publish_pack(7, range(1, 1501))  # pages 1 and 2, at T0
        simulate_senders(pub, [pack], lose=[(7, 2)])  # page 2's report is late
    clock.now = T0 + timedelta(minutes=14)
    result = consume(env, broker)
    assert result.success and checks(result)[CHECK_NOT_STUCK].passed
    assert progress_rows(env)[7]["stuck"] is False

    clock.now = T0 + timedelta(minutes=16)  # past the 15 minutes
    result = consume(env, broker)
    stuck = checks(result)[CHECK_NOT_STUCK]
    assert not stuck.passed and stuck.severity == AssetCheckSeverity.WARN
    [offender] = stuck.metadata["first_offenders"].value.records
    assert (offender.data["campaign_id"], offender.data["stuck_pages"]) == (7, 1)
    assert stuck.metadata["failing"].value == 1
    row = progress_rows(env)[7]
    assert (row["stuck"], row["stuck_pages"], row["completed"], row["progress"]) == \
        (True, 1, False, 0.5)
    assert metadata(result, "campaign_progress")["campaigns_stuck"] == 1

    with broker.publisher(at=T0 + timedelta(minutes=17)) as pub:
        pub.publish_tracked(7, 2, 500, 0, True, correlation_id=pack.correlation_id)
    clock.now = T0 + timedelta(minutes=18)
    result = consume(env, broker)
    assert checks(result)[CHECK_NOT_STUCK].passed
    row = progress_rows(env)[7]
    assert (row["stuck"], row["completed"], row["sent"]) == (False, True, 1500)
    assert row["send_rate_per_minute"] == pytest.approx(1500 / 17)


def test_the_progress_checks_fail_with_their_severities_and_name_the_offenders(
        sqlite_env, broker, clock):
    env = sqlite_env
    write_campaigns(env, [(c, 1, "Channel::Email") for c in (20, 21, 22, 23)], {
        20: audience(1, 10),  # clean
        21: audience(1, 9) + [(77, "SENT", 3)],  # contact 77 sent after three attempts
        22: audience(1, 10),  # the statuses say 10 sent; the report 8 sent, 2 failed
        23: audience(1, 10),  # the report claims 12 sent of 10 contacts
    })
    with broker.publisher() as pub:
        packs = [pub.publish_pack(c, range(1, 11)) for c in (20, 22, 23)]
        packs.append(pub.publish_pack(21, [*range(1, 10), 77]))
        simulate_senders(pub, [p for p in packs if p.campaign_id in (20, 21)])
        pub.publish_tracked(22, 1, 8, 2, True)
        pub.publish_tracked(23, 1, 12, 0, True)
    result = consume(env, broker)
    assert result.success  # the checks report; they do not fail the run
    evaluations = checks(result)

    doubles = evaluations[CHECK_NO_DOUBLE_SENDS]
    assert not doubles.passed and doubles.severity == AssetCheckSeverity.ERROR
    assert [(r.data["campaign_id"], r.data["contact_id"], r.data["signal"])
            for r in doubles.metadata["first_offenders"].value.records] == [
        (21, 77, "attempts_sent")]
    agree = evaluations[CHECK_COUNTS_AGREE]
    assert not agree.passed and agree.severity == AssetCheckSeverity.ERROR
    assert [r.data["campaign_id"] for r in agree.metadata["first_offenders"].value.records] \
        == [22]
    within = evaluations[CHECK_WITHIN_AUDIENCE]
    assert not within.passed and within.severity == AssetCheckSeverity.ERROR
    [over] = within.metadata["first_offenders"].value.records
    assert (over.data["campaign_id"], over.data["sent"], over.data["audience"]) == (23, 12, 10)
    assert "campaign 23: 12 sent + 0 failed > audience 10" in within.metadata["problems"].value
    assert evaluations[CHECK_NOT_STUCK].passed
    rows = progress_rows(env)
    assert rows[20]["completed"] and rows[20]["status_disagreement"] == 0
    assert rows[21]["double_sends"] == 1


def _set_status(env, campaign_id: int, contact_id: int, status: str) -> None:
    engine = sa.create_engine(wh.normalize_url(env.source_url))
    c = src_campaign_contacts.c
    with engine.begin() as conn:
        conn.execute(src_campaign_contacts.update().where(
            c.campaign_id == campaign_id, c.contact_id == contact_id).values(status=status))
    engine.dispose()


def test_a_refresh_recomputes_new_and_open_campaigns_and_checks_them_all(
        sqlite_env, broker, clock, monkeypatch):
    """Each message is parsed once; a refresh recomputes the campaigns with new messages,
    evaluates again only whether open ones without new messages are stuck, leaves
    completed ones alone (their rows, their double sends, still checked), and ``full``
    recomputes every campaign of the window."""
    env = sqlite_env
    parses = []
    real_parse = campaign_steps.parse_messages
    monkeypatch.setattr(campaign_steps, "parse_messages",
                        lambda m, at: parses.append(m.num_rows) or real_parse(m, at))
    write_campaigns(env, [(30, 1, "Channel::Email"), (31, 1, "Channel::Sms"),
                          (32, 1, "Channel::Email")],
                    {30: audience(1, 10), 31: audience(1, 1500),
                     32: audience(1, 9) + [(77, "SENT", 3)]})
    with broker.publisher() as pub:
        done = pub.publish_pack(30, range(1, 11))
        open_ = pub.publish_pack(31, range(1, 1501))
        doubled = pub.publish_pack(32, [*range(1, 10), 77])
        simulate_senders(pub, [done, doubled])
        simulate_senders(pub, [open_], lose=[(31, 2)])
    result = consume(env, broker)
    assert result.success and parses == [7]  # 4 sends + 3 reports (one lost), parsed once
    meta = metadata(result, "campaign_progress")
    assert (meta["campaigns_refreshed"], meta["dagster/row_count"]) == (3, 3)
    rows = progress_rows(env)
    assert [rows[c]["completed"] for c in (30, 31, 32)] == [True, False, True]
    first_update = rows[30]["updated_at"]

    # the application changes a completed campaign's contact: no message, not recomputed;
    # the open campaign's pages become stuck; the checks still see campaign 32's double send
    _set_status(env, 30, 1, "FAILED")
    _set_status(env, 31, 1, "FAILED")
    assert not rows[31]["stuck"]
    clock.now += timedelta(minutes=20)
    result = consume(env, broker)
    assert result.success and parses == [7]  # nothing landed, nothing parsed again
    meta = metadata(result, "campaign_progress")
    assert (meta["campaigns_refreshed"], meta["campaigns_stuck_rechecked"],
            meta["dagster/row_count"], meta["parsed_files_new"]) == (0, 1, 3, 0)
    rows = progress_rows(env)
    assert rows[30]["updated_at"] == first_update and rows[30]["contacts_failed"] == 0
    assert rows[31]["updated_at"] > first_update
    assert (rows[31]["stuck"], rows[31]["stuck_pages"], rows[31]["contacts_failed"],
            rows[31]["pages_tracked"]) == (True, 1, 0, 1)  # statuses read with a message
    assert not checks(result)[CHECK_NOT_STUCK].passed
    doubles = checks(result)[CHECK_NO_DOUBLE_SENDS]
    assert not doubles.passed and doubles.metadata["campaigns_checked"].value == 3
    assert [(r.data["campaign_id"], r.data["contact_id"])
            for r in doubles.metadata["first_offenders"].value.records] == [(32, 77)]
    assert checks(result)[CHECK_COUNTS_AGREE].passed  # 30's stored row predates the change

    # a message of campaign 30 (its report delivered again under a new id): recomputed
    with broker.publisher() as pub:
        pub.publish_tracked(30, 1, 10, 0, True, correlation_id=done.correlation_id)
    clock.now += timedelta(minutes=1)
    result = consume(env, broker)
    assert result.success and parses == [7, 1]
    meta = metadata(result, "campaign_progress")
    assert (meta["campaigns_refreshed"], meta["campaigns_stuck_rechecked"]) == (1, 1)
    rows = progress_rows(env)
    assert (rows[30]["contacts_failed"], rows[30]["duplicate_reports"],
            rows[30]["status_disagreement"]) == (1, 1, 2)
    assert not checks(result)[CHECK_COUNTS_AGREE].passed

    # full: every campaign of the window
    clock.now += timedelta(minutes=1)
    full = materialize([campaign_messages, campaign_progress], instance=env.instance,
                       resources={**env.resources, "campaign_broker": broker.resource()},
                       run_config={"ops": {"campaign_progress": {"config": {"full": True}}}})
    meta = metadata(full, "campaign_progress")
    assert (meta["campaigns_refreshed"], meta["full_refresh"]) == (3, True)
    assert parses == [7, 1]
    assert progress_rows(env)[31]["contacts_failed"] == 1  # read again


def test_a_refresh_overtaken_by_another_computes_again(sqlite_env, broker, clock,
                                                       monkeypatch):
    """A (manual, full) refresh lists the parsed files; meanwhile a consumption lands the
    last report of campaign 40 and its refresh records it. The first refresh must not
    then write campaign 40 from what it read before: it computes again."""
    env = sqlite_env
    write_campaigns(env, [(40, 1, "Channel::Email")], {40: audience(1, 1500)})
    with broker.publisher() as pub:
        pack = pub.publish_pack(40, range(1, 1501))
        simulate_senders(pub, [pack], lose=[(40, 2)])
    assert consume(env, broker).success
    assert progress_rows(env)[40]["completed"] is False
    with broker.publisher() as pub:
        pub.publish_tracked(40, 2, 500, 0, True, correlation_id=pack.correlation_id)
    log, engine = campaign_log(env.landing), env.engine()
    source = CampaignSource(env.source_url)
    real_write = campaign_steps.write_progress
    writes = []

    def overtaken(*args, **kwargs):
        writes.append(len(writes))
        if len(writes) == 1:  # the other run lands, parses and refreshes first
            campaign_steps.consume_messages(
                broker.url, broker.queue, log, engine, source, 100, "other-run",
                lambda: clock.now, exchange=broker.exchange)
            campaign_steps.refresh_progress(log, source, engine, clock.now, 30, 1000,
                                            timedelta(minutes=15))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(campaign_steps, "write_progress", overtaken)
    try:
        r = campaign_steps.refresh_progress(log, source, engine, clock.now, 30, 1000,
                                            timedelta(minutes=15), full=True)
    finally:
        engine.dispose()
    assert len(writes) == 3  # this refresh, the other one, this one again
    assert r.campaigns == 1
    row = progress_rows(env)[40]
    assert (row["completed"], row["pages_tracked"], row["sent"]) == (True, 2, 1500)


def test_a_file_landed_but_not_parsed_is_parsed_by_the_next_refresh(
        sqlite_env, broker, clock, monkeypatch):
    env = sqlite_env
    write_campaigns(env, [(7, 1, "Channel::Email")], {7: audience(1, 1500)})
    with broker.publisher() as pub:
        pack = pub.publish_pack(7, range(1, 1501))
        simulate_senders(pub, [pack])
    real_land = campaign_steps.land_parsed
    calls = []

    def fail_first(log, parsed, name):
        calls.append(name)
        if len(calls) == 1:
            raise OSError("disk full")
        return real_land(log, parsed, name)

    monkeypatch.setattr(campaign_steps, "land_parsed", fail_first)
    result = consume(env, broker)
    assert result.success and broker.pending() == 0
    assert any("parsed messages could not be landed" in w
               for w in metadata(result, "campaign_messages")["warnings"])
    meta = metadata(result, "campaign_progress")
    assert (meta["files_parsed_late"], meta["campaigns_refreshed"]) == (1, 1)
    assert len(calls) == 2 and calls[0] == calls[1]  # the same landed file, parsed again
    row = progress_rows(env)[7]
    assert (row["pages_tracked"], row["sent"], row["completed"]) == (2, 1500, True)
    clock.now += timedelta(minutes=1)
    again = consume(env, broker)
    assert metadata(again, "campaign_progress")["files_parsed_late"] == 0
    assert len(calls) == 2


# --- rollups and late reports ------------------------------------------------------------------


def test_rollups_of_a_day_match_its_tracked_reports_and_a_rerun_is_idempotent(
        env, broker, clock):
    write_campaigns(env, [(7, 1, "Channel::Email"), (8, 2, "Channel::Whatsapp"),
                          (9, 3, "Channel::Sms")],
                    {7: audience(1, 2497) + audience(5000, 3, "FAILED"),
                     8: audience(1, 9) + audience(10, 1, "FAILED"), 9: audience(1, 3)})
    with broker.publisher() as pub:  # 04:00 in New York on 03-02
        pack = pub.publish_pack(7, range(1, 2501))
        simulate_senders(pub, [pack], failed=[1, 2, 1001], twice=[(7, 2)],
                         new_message_ids=True)  # page 2 reported twice: counted once
        pub.publish_malformed("not_json")
    # 00:30 on 03-03 in Kolkata (account 2); the day's landing also holds New York's
    with broker.publisher(at=datetime(2026, 3, 2, 19, 0, tzinfo=UTC)) as pub:
        pub.publish_pack(8, range(1, 11))
        pub.publish_tracked(8, 1, 9, 1, True)
    clock.now = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)
    assert consume(env, broker).success

    key = f"2026-03-02|{NY}"
    first = rollup(env, broker, key)
    assert first.success
    ny = env.rows(account_id=1)
    assert {(r["dimension_type"], r["dimension_id"], r["metric"]):
            (r["count"], r["sum_value"]) for r in ny} == {
        (dim, ident, metric): value
        for dim, ident in (("account", 1), ("campaign", 7), ("channel", CHANNEL_IDS["email"]))
        for metric, value in (("campaign_sent", (3, 2497.0)), ("campaign_failed", (3, 3.0)),
                              ("campaign_pages_tracked", (3, 0.0)))}
    assert {(r["date"], r["timezone"], r["source"]) for r in ny} == {
        (date(2026, 3, 2), NY, CAMPAIGN_SOURCE)}
    assert env.rows(account_id=2) == []  # Kolkata's day is its own partition
    evaluations = checks(first)
    assert evaluations[RECONCILES].passed and evaluations[NON_NEGATIVE].passed
    meta = metadata(first, "campaign_rollups")
    assert (meta["events_rolled_up"], meta["dagster/row_count"]) == (3, 9)
    assert meta["events_in_other_timezone"] == 1  # campaign 8's report

    again = rollup(env, broker, key)
    assert again.success and env.rows(account_id=1) == ny
    assert metadata(again, "campaign_rollups")["rows_replaced"] == 9

    kolkata = rollup(env, broker, "2026-03-03|Asia/Kolkata")
    assert kolkata.success
    assert [(r["dimension_type"], r["metric"], r["count"], r["sum_value"])
            for r in env.rows(account_id=2, dimension_type="account")] == [
        ("account", "campaign_failed", 1, 1.0), ("account", "campaign_pages_tracked", 1, 0.0),
        ("account", "campaign_sent", 1, 9.0)]
    # a rollup of a UTC day (account 3) leaves the consumption's quarantine rows alone
    assert rollup(env, broker, "2026-03-02|UTC").success
    assert [r["reason"] for r in quarantine_rows(env)] == [REASON_NOT_JSON]


def test_the_days_a_rollup_reads():
    counted, earlier = rollup_days(LocalDay(date(2026, 3, 10), "Pacific/Kiritimati"), 3)
    assert counted == [date(2026, 3, 9) + timedelta(days=i) for i in range(5)]
    assert earlier == [date(2026, 3, 6), date(2026, 3, 7), date(2026, 3, 8)]
    assert rollup_days(LocalDay(date(2026, 3, 10), "UTC"), 0) == ([date(2026, 3, 9),
                                                                   date(2026, 3, 10)], [])


def _late_tick(instance, cursor, now: datetime, monkeypatch):
    monkeypatch.setattr(campaign_sensors, "_utcnow", lambda: now)
    ctx = build_sensor_context(instance=instance, cursor=cursor, resources={
        "settings": PipelineSettings(default_timezone="UTC", start_date="2024-01-01")})
    result = campaign_sensors.late_campaign_reports_sensor(ctx)
    return result, result.cursor


def test_a_late_report_requests_the_rollups_of_its_closed_day(
        sqlite_env, broker, clock, monkeypatch):
    env = sqlite_env
    write_campaigns(env, [(7, 1, "Channel::Email"), (8, 1, "Channel::Email")],
                    {7: audience(1, 20), 8: audience(1, 20)})
    now = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # 07:00 on 03-04 in New York
    with broker.publisher(at=datetime(2026, 2, 27, 15, tzinfo=UTC)) as pub:
        pub.publish_pack(7, range(1, 21))
    clock.now = datetime(2026, 2, 27, 15, 1, tzinfo=UTC)
    assert consume(env, broker).success
    _, cursor = _late_tick(env.instance, None, now, monkeypatch)  # first start: from now on

    # a backlog consumed late: a report made on 03-01 in New York (21:00), one of today
    with broker.publisher(at=datetime(2026, 3, 2, 2, 0, tzinfo=UTC)) as pub:
        pub.publish_tracked(7, 1, 20, 0, True)
    with broker.publisher(at=datetime(2026, 3, 4, 11, 0, tzinfo=UTC)) as pub:
        pub.publish_pack(8, range(1, 21))
        pub.publish_tracked(8, 1, 20, 0, True)
    clock.now = now
    result = consume(env, broker)
    assert result.success
    assert metadata(result, "campaign_messages")["report_dates_by_timezone"] == {
        NY: ["2026-03-01", "2026-03-04"]}

    requested, cursor = _late_tick(env.instance, cursor, now, monkeypatch)
    [request] = requested.run_requests  # 03-04 has not closed: the closed-days sensor's
    assert request.partition_key.keys_by_dimension == {"date": "2026-03-01",
                                                       "timezone": NY}
    assert request.tags["analytics/reason"] == "late-events"
    assert request.run_key.startswith("late-campaigns:")
    idle, cursor = _late_tick(env.instance, cursor, now, monkeypatch)
    assert isinstance(idle, SkipReason) or not idle.run_requests

    # the requested run counts the report on its day, though landed three days later
    assert rollup(env, broker, f"2026-03-01|{NY}").success
    assert [(r["count"], r["sum_value"]) for r in env.rows(
        account_id=1, dimension_type="account", metric="campaign_sent")] == [(1, 20.0)]
    # once 03-04 has closed, a report of it landed later requests it too (here a
    # duplicate report, which the rollup counts once)
    with broker.publisher(at=datetime(2026, 3, 4, 11, 5, tzinfo=UTC)) as pub:
        pub.publish_tracked(8, 1, 20, 0, True)
    clock.now = later = datetime(2026, 3, 5, 6, 0, tzinfo=UTC)
    assert consume(env, broker).success
    requested, _ = _late_tick(env.instance, cursor, later, monkeypatch)
    assert [r.partition_key.keys_by_dimension["date"] for r in requested.run_requests] == [
        "2026-03-04"]


def test_a_failure_after_the_acknowledgement_still_records_what_was_landed(
        sqlite_env, broker, clock, monkeypatch):
    """The messages are acknowledged, so they exist only in the landing: the application
    database failing after that does not lose the run's record of them; the late-reports
    sensor falls back on the span of the reports' instants."""
    from analytics_pipeline.campaigns.source import CampaignSource

    env = sqlite_env
    write_campaigns(env, [(7, 1, "Channel::Email")], {7: audience(1, 5)})
    with broker.publisher(at=datetime(2026, 3, 1, 12, tzinfo=UTC)) as pub:
        pack = pub.publish_pack(7, range(1, 6))
        simulate_senders(pub, [pack])

    def down(self, ids=None):
        raise ConnectionRefusedError("application database unreachable")

    monkeypatch.setattr(CampaignSource, "campaigns", down)
    clock.now = datetime(2026, 3, 3, 12, tzinfo=UTC)
    result = consume(env, broker)
    assert not result.success  # the progress refresh needs the application database
    assert broker.pending() == 0
    meta = metadata(result, "campaign_messages")
    assert meta["received"] == 2 and "report_dates_by_timezone" not in meta
    assert "could not be worked out" in meta["warnings"][0]
    days = campaign_sensors.report_days(
        {k: v for k, v in result.get_asset_materialization_events()[0]
         .materialization.metadata.items()}, ["UTC", NY])
    assert [d.key for d in days] == [f"2026-03-01|{NY}", "2026-03-01|UTC"]


# --- the read path -----------------------------------------------------------------------------


def test_the_cli_prints_an_accounts_campaigns_and_json_has_the_keys(
        sqlite_env, broker, clock, capsys):
    env = sqlite_env
    write_campaigns(env, [(7, 1, "Channel::Whatsapp"), (8, 1, "Channel::Email"),
                          (9, 2, "Channel::Email")],
                    {7: audience(1, 1500), 8: audience(1, 5), 9: audience(1, 5)})
    with broker.publisher() as pub:
        pack = pub.publish_pack(7, range(1, 1501))
        simulate_senders(pub, [pack])
        pub.publish_pack(8, range(1, 6))
        pub.publish_pack(9, range(1, 6))
    assert consume(env, broker).success
    url = env.warehouse_url

    assert main(["campaigns", "--account", "1", "--warehouse-url", url]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["7", "whatsapp", "1500", "2/2/2", "1500", "0", "100.0%", "yes", "no", "0", "0"] \
        == lines[-2][:11]
    assert lines[-1][:9] == ["8", "email", "5", "0/1/1", "0", "0", "0.0%", "no", "no"]

    assert main(["campaigns", "--account", "1", "--json", "--warehouse-url", url]) == 0
    objects = json.loads(capsys.readouterr().out)
    assert [list(o) for o in objects] == [list(JSON_KEYS)] * 2
    assert objects[0] == {"campaign_id": 7, "channel": "whatsapp", "audience": 1500,
                          "pages_expected": 2, "pages_published": 2, "pages_tracked": 2,
                          "sent": 1500, "failed": 0, "completed": True, "progress": 1.0,
                          "stuck": False, "duplicate_pages": 0, "double_sends": 0}
    assert main(["campaigns", "--account", "1", "--campaign", "8", "--json",
                 "--warehouse-url", url]) == 0
    assert [o["campaign_id"] for o in json.loads(capsys.readouterr().out)] == [8]

    for argv, says in ((["--account", "1", "--campaign", "9"], "campaign 9 of account 1"),
                       (["--account", "99"], "account 99 is not in")):
        assert main(["campaigns", *argv, "--warehouse-url", url]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]
