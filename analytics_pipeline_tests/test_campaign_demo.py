"""The demo's campaigns (`make demo`): published on a real RabbitMQ (a queue and an exchange
of the test's own), consumed and rolled up by the campaign assets, they make the intended
progress (complete, empty and complete, stuck, duplicate pages and a double send), and
publishing them again (a demo re-run that kept its landing) counts nothing twice."""

from __future__ import annotations

import os
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from dagster import materialize

from analytics_pipeline.campaigns import assets as campaign_assets
from analytics_pipeline.campaigns.assets import (
    campaign_messages,
    campaign_progress,
    campaign_rollups,
)
from analytics_pipeline.campaigns.broker import connect
from analytics_pipeline.campaigns.contract import campaign_double_sends
from analytics_pipeline.campaigns.contract import campaign_progress as progress_table
from analytics_pipeline.campaigns.progress import (
    CHECK_COUNTS_AGREE,
    CHECK_NO_DOUBLE_SENDS,
    CHECK_NOT_STUCK,
    CHECK_WITHIN_AUDIENCE,
    SIGNAL_ATTEMPTS_SENT,
)
from analytics_pipeline.campaigns.resources import CampaignBroker
from analytics_pipeline.core.partitions import local_date_of
from analytics_pipeline.dev.campaign_demo import (
    CAMPAIGN_ACCOUNTS,
    broker_unavailable_reason,
    campaign_dashboard,
    campaign_rows,
    plan_dispatches,
    prepare_campaign_demo,
    publish_dispatches,
    write_campaign_source,
)
from analytics_pipeline_tests.helpers import require_rabbitmq
from analytics_pipeline_tests.pipeline_fixtures import make_env

UTC = timezone.utc
DAY = date(2026, 3, 2)  # closed in New York (account 1) and Kolkata (account 2) by NOW
NOW = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)  # 07:00 in New York, 17:30 in Kolkata
BATCH = 1000

# campaign → (audience, pages expected, published, tracked, sent, failed, completed,
#             progress, stuck pages, duplicate pages, double sends)
EXPECTED = {
    7101: (2500, 3, 3, 3, 2453, 47, True, 1.0, 0, 0, 0),  # complete
    7102: (0, 1, 0, 1, 0, 0, True, 1.0, 0, 0, 0),  # empty audience: page 0 completed
    7201: (1800, 2, 2, 1, 975, 25, False, 0.5, 1, 0, 0),  # stuck on page 2
    7202: (1200, 2, 2, 2, 1181, 19, True, 1.0, 0, 2, 1),  # redelivered pack, a double send
}


def test_the_plan_dates_the_sends_on_the_demo_day_and_its_statuses_match_the_reports():
    plan = plan_dispatches(DAY, NOW, BATCH)
    campaigns, contacts = campaign_rows(plan)
    assert [c["id"] for c in campaigns] == list(EXPECTED)
    for d in plan:
        mine = [r for r in contacts if r["campaign_id"] == d.campaign.id]
        reported = [p for p, at in enumerate(d.reported_at, start=1) if at is not None]
        sent = sum(d.page_counts(p)[0] for p in reported)
        failed = sum(d.page_counts(p)[1] for p in reported)
        assert (sum(r["status"] == "SENT" for r in mine),
                sum(r["status"] == "FAILED" for r in mine)) == (sent, failed)
        if d.campaign.id == 7201:  # ~1 hour before now; its last page never reported
            assert d.packed_at == NOW - timedelta(minutes=62) and d.reported_at[-1] is None
            continue
        tz = CAMPAIGN_ACCOUNTS[d.campaign.account_id]
        times = [d.packed_at, *d.reported_at] + ([d.redelivered_at] if d.redelivered_at
                                                  else [])
        assert {local_date_of(t, tz) for t in times} == {DAY}
    assert [(r["contact_id"], r["attempts"]) for r in contacts
            if r["status"] == "SENT" and r["attempts"] > 1] == [(201001, 2)]


def test_without_a_reachable_broker_the_campaign_part_is_skipped_with_its_reason(
        tmp_path, monkeypatch):
    url = "amqp://guest:secret@127.0.0.1:1/%2F"
    reason = broker_unavailable_reason(url, timeout=1)
    assert reason.startswith("RabbitMQ not reachable at amqp://guest:***@127.0.0.1:1/%2F")
    monkeypatch.setenv("ANALYTICS_BROKER_URL", url)
    monkeypatch.delenv("ANALYTICS_BROKER_QUEUE", raising=False)
    source = f"sqlite:///{tmp_path / 'app.db'}"
    demo, line = prepare_campaign_demo(source, True, True, DAY, NOW)
    assert demo is None
    assert line.startswith("campaigns: skipped, RabbitMQ not reachable at amqp://guest:***@")
    assert line.endswith("check ANALYTICS_BROKER_URL") and "\n" not in line
    assert "ANALYTICS_BROKER_QUEUE" not in os.environ  # nothing pointed at the demo's queue
    assert not (tmp_path / "app.db").exists()  # nor written
    demo, line = prepare_campaign_demo(source, False, True, DAY, NOW)
    assert demo is None and "not the demo's" in line


@pytest.fixture
def demo_broker():
    """The test's own exchange and queue (the demo's publication declares them), deleted
    afterwards."""
    url = require_rabbitmq()
    token = uuid.uuid4().hex[:12]
    exchange, queue = f"test.demo.campaigns.{token}", f"test.demo.analytics_pipeline.{token}"
    yield CampaignBroker(url=url, exchange=exchange, queue=queue, batch_size=BATCH)
    with connect(url) as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)


def _progress(env) -> dict[int, tuple]:
    engine = env.engine()
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(progress_table)).mappings().all()
            doubles = conn.execute(sa.select(campaign_double_sends)).mappings().all()
    finally:
        engine.dispose()
    got = {r["campaign_id"]: (
        r["audience"], r["pages_expected"], r["pages_published"], r["pages_tracked"],
        r["sent"], r["failed"], r["completed"], r["progress"], r["stuck_pages"],
        r["duplicate_pages"], r["double_sends"]) for r in rows}
    return got, [(d["campaign_id"], d["contact_id"], d["signal"]) for d in doubles]


def test_the_demo_campaigns_make_the_intended_progress_and_a_rerun_counts_once(
        tmp_path, instance, demo_broker, monkeypatch):
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'warehouse.db'}", instance, events=[])
    assert env.materialize_accounts().success
    plan = plan_dispatches(DAY, NOW, BATCH)
    write_campaign_source(env.source_url, plan)
    monkeypatch.setattr(campaign_assets, "_utcnow", lambda: NOW + timedelta(minutes=2))
    resources = {**env.resources, "campaign_broker": demo_broker}

    def consume():
        r = materialize([campaign_messages, campaign_progress], instance=instance,
                        resources=resources)
        assert r.success
        return r

    assert publish_dispatches(demo_broker.url, plan, BATCH, demo_broker.exchange,
                              demo_broker.queue) == 16
    result = consume()
    progress, doubles = _progress(env)
    assert progress == EXPECTED
    assert doubles == [(7202, 201001, SIGNAL_ATTEMPTS_SENT)]
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {CHECK_NOT_STUCK: False, CHECK_NO_DOUBLE_SENDS: False,
                      CHECK_COUNTS_AGREE: True, CHECK_WITHIN_AUDIENCE: True}

    for tz in sorted(set(CAMPAIGN_ACCOUNTS.values())):
        assert materialize([campaign_rollups], partition_key=f"{DAY}|{tz}", instance=instance,
                           resources=resources).success
    engine = env.engine()
    try:
        lines = campaign_dashboard(engine, DAY)
    finally:
        engine.dispose()
    assert lines[-2:] == [
        f"  rolled up on {DAY} (America/New_York), account 1: 4 pages tracked, 2453 sent, "
        "47 failed",
        f"  rolled up on {DAY} (Asia/Kolkata), account 2: 2 pages tracked, 1181 sent, "
        "19 failed"]  # the stuck campaign's report is of 03-03 in Kolkata
    assert "yes (1)" in next(line for line in lines if line.lstrip().startswith("7201"))

    # the demo run again, the landing kept: the same messages, counted once
    publish_dispatches(demo_broker.url, plan_dispatches(DAY, NOW, BATCH), BATCH,
                       demo_broker.exchange, demo_broker.queue)
    consume()
    assert _progress(env) == (progress, doubles)
