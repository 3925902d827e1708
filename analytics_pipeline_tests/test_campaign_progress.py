"""Campaign dispatch progress, double sends, rollup events and checks from parsed broker
messages and the application database: pure functions, the warehouse write on SQLite and
PostgreSQL, and the application database read on both.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from analytics_pipeline.campaigns.contract import (
    campaign_double_sends,
    campaign_progress,
    src_campaign_contacts,
    src_campaigns,
)
from analytics_pipeline.campaigns.metrics import CAMPAIGN_METRICS, CHANNEL_IDS
from analytics_pipeline.campaigns.progress import (
    CHECK_COUNTS_AGREE,
    CHECK_NO_DOUBLE_SENDS,
    CHECK_NOT_STUCK,
    CHECK_SEVERITY,
    CHECK_WITHIN_AUDIENCE,
    DOUBLE_SENDS_SCHEMA,
    PROGRESS_SCHEMA,
    UNKNOWN_ACCOUNT,
    double_sends,
    local_dates,
    progress_checks,
    rollup_event_batches,
    rollup_events,
    write_progress,
)
from analytics_pipeline.campaigns.progress import campaign_progress as compute_progress
from analytics_pipeline.campaigns.source import (
    CAMPAIGNS_SCHEMA,
    CONTACT_COUNTS_SCHEMA,
    RISKY_CONTACTS_SCHEMA,
    CampaignSource,
    channel_names,
)
from analytics_pipeline.catalog import ALL_METRICS
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.rollups import RollupAccumulator

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
NY = "America/New_York"
_ts = pa.timestamp("us", tz="UTC")

SENDS_SCHEMA = pa.schema([
    ("campaign_id", pa.int64()), ("page", pa.int64()), ("total_pages", pa.int64()),
    ("contact_ids", pa.list_(pa.int64())), ("template_id", pa.string()),
    ("channel_type", pa.string()), ("correlation_id", pa.string()),
    ("message_key", pa.string()), ("received_at", _ts), ("published_at", _ts),
    ("redelivered", pa.bool_()),
])
TRACKED_SCHEMA = pa.schema([
    ("campaign_id", pa.int64()), ("page", pa.int64()), ("sent_count", pa.int64()),
    ("failed_count", pa.int64()), ("completed", pa.bool_()), ("correlation_id", pa.string()),
    ("message_key", pa.string()), ("received_at", _ts), ("published_at", _ts),
])

_keys = iter(range(1, 10**9))


def send(campaign: int, page: int, total: int, contacts, at: datetime, *,
         published: datetime | None = None, key: str | None = None,
         channel: str = "Channel::Email", redelivered: bool = False) -> dict:
    return {"campaign_id": campaign, "page": page, "total_pages": total,
            "contact_ids": list(contacts), "template_id": "tpl", "channel_type": channel,
            "correlation_id": f"c-{campaign}", "message_key": key or f"s{next(_keys)}",
            "received_at": at, "published_at": published, "redelivered": redelivered}


def report(campaign: int, page: int, sent: int, failed: int, at: datetime, *,
           completed: bool = False, published: datetime | None = None,
           key: str | None = None) -> dict:
    return {"campaign_id": campaign, "page": page, "sent_count": sent, "failed_count": failed,
            "completed": completed, "correlation_id": f"c-{campaign}",
            "message_key": key or f"t{next(_keys)}", "received_at": at,
            "published_at": published}


def sends_of(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SENDS_SCHEMA)


def tracked_of(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=TRACKED_SCHEMA)


def campaigns_of(*rows: tuple) -> pa.Table:
    """(campaign_id, account_id, channel) rows."""
    return pa.Table.from_pylist([{"campaign_id": c, "account_id": a, "name": f"campaign {c}",
                                  "channel": ch, "status": "running"} for c, a, ch in rows],
                                schema=CAMPAIGNS_SCHEMA)


def counts_of(*rows: tuple) -> pa.Table:
    """(campaign_id, pending, sent, failed) rows; the audience is their sum."""
    return pa.Table.from_pylist([{"campaign_id": c, "audience": p + s + f,
                                  "contacts_pending": p, "contacts_sent": s,
                                  "contacts_failed": f} for c, p, s, f in rows],
                                schema=CONTACT_COUNTS_SCHEMA)


def risky_of(*rows: tuple) -> pa.Table:
    return pa.Table.from_pylist([{"campaign_id": c, "contact_id": k, "attempts": a}
                                 for c, k, a in rows], schema=RISKY_CONTACTS_SCHEMA)


NO_SENDS, NO_TRACKED = sends_of(), tracked_of()
NO_RISKY = risky_of()


def pages(campaign: int, audience: int, batch: int = 1000, at: datetime = T0,
          first_contact: int = 1) -> list[dict]:
    """The packer's send messages of a campaign of ``audience`` contacts."""
    total = -(-audience // batch)
    ids = list(range(first_contact, first_contact + audience))
    return [send(campaign, p + 1, total, ids[p * batch:(p + 1) * batch], at)
            for p in range(total)]


def progress_of(sends=NO_SENDS, tracked=NO_TRACKED, campaigns=None, counts=None,
                now: datetime = T0 + timedelta(minutes=5), batch: int = 1000,
                doubles: pa.Table | None = None) -> dict[int, dict]:
    campaigns = campaigns if campaigns is not None else campaigns_of((1, 10, "email"))
    counts = counts if counts is not None else counts_of((1, 0, 2490, 10))
    t = compute_progress(campaigns, counts, sends, tracked, batch, now, double_sends=doubles)
    assert t.schema == PROGRESS_SCHEMA
    return {r["campaign_id"]: r for r in t.to_pylist()}


# --- pages, completion -----------------------------------------------------------------

def test_2500_contacts_make_three_pages_and_complete_when_the_reports_add_up():
    sends = sends_of(*pages(1, 2500))
    assert [len(s) for s in sends["contact_ids"].to_pylist()] == [1000, 1000, 500]
    at = T0 + timedelta(minutes=2)
    r1, r2 = report(1, 1, 1000, 0, at), report(1, 2, 995, 5, at)
    p = progress_of(sends)[1]
    assert (p["audience"], p["pages_expected"], p["pages_published"], p["pages_tracked"]) == \
        (2500, 3, 3, 0)
    assert p["progress"] == 0.0 and not p["completed"]
    assert p["send_rate_per_minute"] is None and p["last_reported_at"] is None

    p = progress_of(sends, tracked_of(r1, r2))[1]
    assert p["pages_tracked"] == 2 and p["progress"] == pytest.approx(2 / 3)
    assert not p["completed"]

    r3 = report(1, 3, 495, 5, T0 + timedelta(minutes=4), completed=True)
    p = progress_of(sends, tracked_of(r1, r2, r3))[1]
    assert (p["sent"], p["failed"], p["pages_tracked"], p["progress"]) == (2490, 10, 3, 1.0)
    assert p["completed"] and p["status_disagreement"] == 0
    assert p["first_published_at"] == T0
    assert p["last_reported_at"] == T0 + timedelta(minutes=4)
    assert p["send_rate_per_minute"] == pytest.approx(2490 / 4)
    assert (p["account_id"], p["channel"], p["name"]) == (10, "email", "campaign 1")
    assert all(not v for v in progress_checks(
        compute_progress(campaigns_of((1, 10, "email")), counts_of((1, 0, 2490, 10)),
                         sends, tracked_of(r1, r2, r3), 1000, T0),
        DOUBLE_SENDS_SCHEMA.empty_table()).values())


def test_three_reports_that_do_not_add_up_to_the_audience_are_not_complete():
    sends = sends_of(*pages(1, 2500))
    rs = [report(1, p, 900, 0, T0) for p in (1, 2, 3)]
    p = progress_of(sends, tracked_of(*rs))[1]
    assert p["progress"] == 1.0 and not p["completed"]


@pytest.mark.parametrize(("audience", "expected"), [(3000, 3), (2999, 3), (3001, 4),
                                                    (1000, 1), (1, 1)])
def test_pages_expected_is_the_audience_over_the_batch_size_rounded_up(audience, expected):
    sends = sends_of(*pages(1, audience))
    assert sends.num_rows == expected
    sizes = [len(s) for s in sends["contact_ids"].to_pylist()]
    reports = [report(1, i + 1, n, 0, T0) for i, n in enumerate(sizes)]
    p = progress_of(sends, tracked_of(*reports), counts=counts_of((1, 0, audience, 0)))[1]
    assert p["pages_expected"] == expected
    assert p["completed"] and p["progress"] == 1.0 and p["sent"] == audience


def test_an_exact_multiple_completes_with_its_last_full_page():
    sends = sends_of(*pages(1, 3000))
    reports = [report(1, i, 1000, 0, T0) for i in (1, 2)]
    p = progress_of(sends, tracked_of(*reports), counts=counts_of((1, 0, 3000, 0)))[1]
    assert (p["pages_expected"], p["completed"]) == (3, False)
    reports.append(report(1, 3, 1000, 0, T0))
    p = progress_of(sends, tracked_of(*reports), counts=counts_of((1, 0, 3000, 0)))[1]
    assert (p["pages_expected"], p["completed"]) == (3, True)


def test_an_empty_audience_completes_with_its_page_0():
    campaigns = campaigns_of((2, 10, "whatsapp"))
    counts = counts_of()  # no contacts at all
    p = progress_of(campaigns=campaigns, counts=counts)[2]
    assert (p["audience"], p["pages_expected"], p["completed"], p["progress"]) == \
        (0, 1, False, 0.0)
    page0 = report(2, 0, 0, 0, T0, completed=True)
    p = progress_of(tracked=tracked_of(page0), campaigns=campaigns, counts=counts)[2]
    assert (p["pages_expected"], p["pages_published"], p["pages_tracked"]) == (1, 0, 1)
    assert p["completed"] and p["progress"] == 1.0 and not p["stuck"]
    not_done = report(2, 0, 0, 0, T0, completed=False)
    p = progress_of(tracked=tracked_of(not_done), campaigns=campaigns, counts=counts)[2]
    assert not p["completed"]
    # a page 1 of a campaign without contacts is no progress: it only expects page 0
    p = progress_of(tracked=tracked_of(report(2, 1, 1, 0, T0)), campaigns=campaigns,
                    counts=counts)[2]
    assert (p["pages_tracked"], p["progress"], p["completed"]) == (1, 0.0, False)


def test_a_page_0_report_does_not_complete_a_campaign_with_contacts():
    p = progress_of(tracked=tracked_of(report(1, 0, 0, 0, T0, completed=True)))[1]
    assert not p["completed"] and p["progress"] == 0.0


# --- at-least-once delivery ---------------------------------------------------------------

def test_a_redelivered_pack_counts_each_page_once_and_reports_the_duplicates():
    first = pages(1, 2500)
    again = [send(1, s["page"], 3, s["contact_ids"], T0 + timedelta(minutes=1),
                  redelivered=True) for s in first]  # new message keys
    assert {s["message_key"] for s in first}.isdisjoint(s["message_key"] for s in again)
    sends = sends_of(*first, *again)
    reports = tracked_of(report(1, 1, 1000, 0, T0), report(1, 2, 1000, 0, T0),
                         report(1, 3, 490, 10, T0))
    p = progress_of(sends, reports)[1]
    assert (p["pages_published"], p["duplicate_pages"], p["pages_tracked"]) == (3, 3, 3)
    assert (p["sent"], p["failed"], p["completed"]) == (2490, 10, True)
    assert p["first_published_at"] == T0
    # published twice but each page reported once: sent once, no double send
    assert double_sends(sends, reports, NO_RISKY).num_rows == 0


def test_a_tracked_report_delivered_twice_counts_once_by_its_first_report():
    sends = sends_of(*pages(1, 2500))
    later = T0 + timedelta(minutes=3)
    reports = tracked_of(
        report(1, 1, 1000, 0, T0 + timedelta(minutes=1)),
        report(1, 2, 1000, 0, T0 + timedelta(minutes=1)),
        report(1, 3, 490, 10, T0 + timedelta(minutes=2)),
        report(1, 3, 500, 0, later),  # the same page again, under another message key
    )
    p = progress_of(sends, reports)[1]
    assert (p["pages_tracked"], p["duplicate_reports"]) == (3, 1)
    assert (p["sent"], p["failed"], p["completed"]) == (2490, 10, True)
    assert p["last_reported_at"] == T0 + timedelta(minutes=2)
    events = rollup_events(reports, campaigns_of((1, 10, "email")), {10: "UTC"})
    sent = events.filter(pc.equal(events["name"], "campaign_sent"))
    assert (sent.num_rows, pc.sum(sent["value"]).as_py()) == (3, 2490)  # a row per page
    assert pc.sum(pc.equal(events["name"], "campaign_pages_tracked")).as_py() == 3


def test_the_first_report_is_the_earliest_published_whatever_the_arrival_order():
    reports = tracked_of(
        report(1, 1, 10, 0, T0 + timedelta(minutes=5), published=T0 + timedelta(minutes=4),
               key="b"),
        report(1, 1, 20, 0, T0 + timedelta(minutes=6), published=T0 + timedelta(minutes=1),
               key="a"),
    )
    assert progress_of(tracked=reports)[1]["sent"] == 20
    swapped = reports.take([1, 0])
    assert progress_of(tracked=swapped)[1]["sent"] == 20


# --- stuck -------------------------------------------------------------------------------

def test_a_page_without_its_report_is_stuck_after_the_timeout_and_cleared_by_it():
    sends = sends_of(*pages(1, 2500))
    reports = [report(1, 1, 1000, 0, T0 + timedelta(minutes=1)),
               report(1, 3, 490, 10, T0 + timedelta(minutes=1))]
    before = progress_of(sends, tracked_of(*reports), now=T0 + timedelta(minutes=14))[1]
    assert (before["stuck"], before["stuck_pages"]) == (False, 0)
    after = compute_progress(campaigns_of((1, 10, "email")), counts_of((1, 0, 2490, 10)),
                             sends, tracked_of(*reports), 1000, T0 + timedelta(minutes=16))
    row = after.to_pylist()[0]
    assert (row["stuck"], row["stuck_pages"]) == (True, 1)
    checks = progress_checks(after, DOUBLE_SENDS_SCHEMA.empty_table())
    assert CHECK_SEVERITY[CHECK_NOT_STUCK] == "WARN"
    assert checks[CHECK_NOT_STUCK] == [
        "campaign 1: 1 published page(s) without a report (2 of 3 published pages tracked)"]
    reports.append(report(1, 2, 1000, 0, T0 + timedelta(minutes=20)))
    cleared = progress_of(sends, tracked_of(*reports), now=T0 + timedelta(minutes=21))[1]
    assert (cleared["stuck"], cleared["stuck_pages"], cleared["completed"]) == (False, 0, True)


def test_stuck_after_is_configurable_and_naive_now_means_utc():
    sends = sends_of(*pages(1, 10))
    t = compute_progress(campaigns_of((1, 10, "email")), counts_of((1, 10, 0, 0)), sends,
                         NO_TRACKED, 1000, (T0 + timedelta(minutes=6)).replace(tzinfo=None),
                         stuck_after=timedelta(minutes=5))
    assert t["stuck"].to_pylist() == [True]


# --- double sends ---------------------------------------------------------------------------

def test_a_contact_on_two_different_pages_is_a_double_send():
    sends = sends_of(send(1, 1, 2, [1, 2, 3], T0), send(1, 2, 2, [4, 3, 5], T0),
                     send(2, 1, 1, [3], T0))  # another campaign: not a double send
    ds = double_sends(sends, NO_TRACKED, NO_RISKY)
    assert ds.schema == DOUBLE_SENDS_SCHEMA
    assert ds.to_pylist() == [{"campaign_id": 1, "contact_id": 3, "signal": "two_pages",
                               "detail": "pages 1, 2"}]


def test_a_page_published_twice_and_reported_sent_twice_double_sends_its_contacts():
    sends = sends_of(send(1, 1, 2, [1, 2], T0), send(1, 2, 2, [3], T0),
                     send(1, 1, 2, [1, 2], T0 + timedelta(minutes=1), redelivered=True),
                     send(1, 2, 2, [3], T0 + timedelta(minutes=1), redelivered=True))
    reports = tracked_of(report(1, 1, 2, 0, T0), report(1, 1, 2, 0, T0),  # page 1 twice
                         report(1, 2, 1, 0, T0))  # page 2 reported once: sent once
    ds = double_sends(sends, reports, NO_RISKY)
    assert ds.to_pylist() == [
        {"campaign_id": 1, "contact_id": k, "signal": "page_published_twice",
         "detail": "page 1 published 2 times, reported sent 2 times"} for k in (1, 2)]
    # a page reported twice but published once is one delivery reported twice
    once = sends_of(send(1, 1, 1, [1, 2], T0))
    assert double_sends(once, reports, NO_RISKY).num_rows == 0
    # reported twice, but the second report sent nobody: not sent twice
    zero = tracked_of(report(1, 1, 2, 0, T0), report(1, 1, 0, 2, T0))
    assert double_sends(sends, zero, NO_RISKY).num_rows == 0
    # the two publications list different contacts: every contact on the page is flagged
    differ = sends_of(send(1, 1, 1, [10, 11], T0), send(1, 1, 1, [10, 12], T0))
    assert [(r["contact_id"], r["signal"]) for r in double_sends(
        differ, tracked_of(report(1, 1, 2, 0, T0), report(1, 1, 2, 0, T0)),
        NO_RISKY).to_pylist()] == [(10, "page_published_twice"),
                                   (11, "page_published_twice"),
                                   (12, "page_published_twice")]


def test_contacts_sent_after_several_attempts_are_double_sends():
    ds = double_sends(NO_SENDS, NO_TRACKED, risky_of((1, 7, 3), (1, 7, 2), (2, 8, 2)))
    assert ds.to_pylist() == [
        {"campaign_id": 1, "contact_id": 7, "signal": "attempts_sent", "detail": "attempts 3"},
        {"campaign_id": 2, "contact_id": 8, "signal": "attempts_sent", "detail": "attempts 2"}]


def test_double_sends_are_counted_per_campaign_and_fail_their_check():
    sends = sends_of(send(1, 1, 2, [1, 2, 3], T0), send(1, 2, 2, [3, 4], T0))
    ds = double_sends(sends, NO_TRACKED, risky_of((1, 3, 2), (1, 9, 4)))
    assert [(r["contact_id"], r["signal"]) for r in ds.to_pylist()] == [
        (3, "attempts_sent"), (3, "two_pages"), (9, "attempts_sent")]
    t = compute_progress(campaigns_of((1, 10, "email")), counts_of((1, 4, 0, 0)), sends,
                         NO_TRACKED, 1000, T0, double_sends=ds)
    assert t["double_sends"].to_pylist() == [2]  # distinct contacts
    checks = progress_checks(t, ds)
    assert CHECK_SEVERITY[CHECK_NO_DOUBLE_SENDS] == "ERROR"
    assert checks[CHECK_NO_DOUBLE_SENDS] == [
        "campaign 1: contacts possibly sent twice (attempts_sent 2, two_pages 1)"]


# --- the application's statuses --------------------------------------------------------------

def test_tracked_counts_that_disagree_with_the_contact_statuses_fail_their_check():
    sends = sends_of(*pages(1, 2500))
    reports = tracked_of(report(1, 1, 1000, 0, T0), report(1, 2, 1000, 0, T0),
                         report(1, 3, 490, 10, T0))
    counts = counts_of((1, 0, 2400, 100))
    t = compute_progress(campaigns_of((1, 10, "email")), counts, sends, reports, 1000, T0)
    row = t.to_pylist()[0]
    assert row["completed"] and row["status_disagreement"] == 90 + 90
    checks = progress_checks(t, DOUBLE_SENDS_SCHEMA.empty_table())
    assert checks[CHECK_COUNTS_AGREE] == [
        "campaign 1: tracked 2490 sent / 10 failed, contacts 2400 SENT / 100 FAILED"]
    assert CHECK_SEVERITY[CHECK_COUNTS_AGREE] == "ERROR"
    # a campaign still running is not checked: its statuses are still moving
    partial = compute_progress(campaigns_of((1, 10, "email")), counts, sends,
                               reports.slice(0, 2), 1000, T0)
    assert partial["status_disagreement"].to_pylist() == [400 + 100]
    assert progress_checks(partial, DOUBLE_SENDS_SCHEMA.empty_table())[
        CHECK_COUNTS_AGREE] == []


def test_more_sent_and_failed_than_the_audience_is_flagged():
    sends = sends_of(*pages(1, 2500))
    reports = tracked_of(report(1, 1, 1000, 0, T0), report(1, 2, 1000, 0, T0),
                         report(1, 3, 590, 10, T0))
    t = compute_progress(campaigns_of((1, 10, "email")), counts_of((1, 0, 2490, 10)), sends,
                         reports, 1000, T0)
    assert not t["completed"].to_pylist()[0]
    assert progress_checks(t, DOUBLE_SENDS_SCHEMA.empty_table())[CHECK_WITHIN_AUDIENCE] == [
        "campaign 1: 2590 sent + 10 failed > audience 2500"]


# --- campaigns the application database does not know ---------------------------------------

def test_a_campaign_known_only_from_its_messages_gets_a_row():
    sends = sends_of(send(99, 1, 3, range(1, 1001), T0, channel="Channel::Telegram"),
                     send(99, 2, 3, range(1001, 2001), T0, channel="Channel::Telegram"))
    reports = tracked_of(report(99, 1, 1000, 0, T0), report(99, 2, 1000, 0, T0),
                         report(98, 0, 0, 0, T0, completed=True))
    rows = progress_of(sends, reports)
    p = rows[99]
    assert (p["account_id"], p["name"], p["channel"]) == (UNKNOWN_ACCOUNT, None, "telegram")
    # the audience is what its pages hold so far; the pages are what the packer announced
    assert (p["audience"], p["pages_expected"], p["pages_published"]) == (2000, 3, 2)
    assert (p["completed"], p["status_disagreement"]) == (False, 0)
    assert p["progress"] == pytest.approx(2 / 3)
    empty = rows[98]
    assert (empty["audience"], empty["completed"], empty["channel"]) == (0, True, "other")
    assert set(rows) == {1, 98, 99}


# --- rollup events ------------------------------------------------------------------------------

def test_rollup_events_are_dated_by_the_report_in_the_accounts_timezone():
    campaigns = campaigns_of((1, 10, "email"), (2, 20, "sms"), (3, 10, "telegram"))
    utc = lambda h, m=0: datetime(2026, 3, 2, h, m, tzinfo=timezone.utc)  # noqa: E731
    reports = tracked_of(
        # 23:59 in New York on 03-01; a publisher clock 11 minutes ahead is clamped
        report(1, 1, 3, 1, utc(4, 59), published=utc(5, 10)),
        # received 00:30 on 03-02 in New York, published (by the sender) 23:50 on 03-01
        report(1, 2, 2, 0, utc(5, 30), published=utc(4, 50)),
        # New York 00:00 on 03-02
        report(1, 3, 1, 0, utc(5, 0)),
        report(2, 1, 4, 0, utc(1)),  # account 20 reports in UTC
        report(3, 1, 1, 1, utc(12)),  # another channel class: 'other' in the rollups
        report(4, 1, 9, 9, utc(12)),  # no such campaign in the app: no account, no event
    )
    tz = {10: NY, 20: "UTC"}
    events = rollup_events(reports, campaigns, tz)
    got = events.group_by(["campaign_id", "date", "name", "account_id", "channel_id"]).aggregate(
        [("value", "sum")]).sort_by([("campaign_id", "ascending"), ("date", "ascending"),
                                     ("name", "ascending")]).to_pylist()
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    # contacts for sent/failed (the events' values), pages for pages tracked (the rows)
    pages = events.filter(pc.equal(events["name"], "campaign_pages_tracked")).group_by(
        ["campaign_id", "date"]).aggregate([("name", "count")]).to_pylist()
    assert sorted((r["campaign_id"], r["date"], r["name_count"]) for r in pages) == [
        (1, d1, 2), (1, d2, 1), (2, d2, 1), (3, d2, 1)]
    assert [(r["campaign_id"], r["date"], r["name"], r["value_sum"]) for r in got
            if r["name"] != "campaign_pages_tracked"] == [
        (1, d1, "campaign_failed", 1), (1, d1, "campaign_sent", 5),
        (1, d2, "campaign_failed", 0), (1, d2, "campaign_sent", 1),
        (2, d2, "campaign_failed", 0), (2, d2, "campaign_sent", 4),
        (3, d2, "campaign_failed", 1), (3, d2, "campaign_sent", 1)]
    assert {(r["campaign_id"], r["channel_id"]) for r in got} == {
        (1, CHANNEL_IDS["email"]), (2, CHANNEL_IDS["sms"]), (3, CHANNEL_IDS["other"])}
    assert {(r["campaign_id"], r["account_id"]) for r in got} == {(1, 10), (2, 20), (3, 10)}

    # what core's accumulator makes of one local day
    acc = RollupAccumulator(d1, CAMPAIGN_METRICS)
    acc.add(events.filter(pc.equal(events["date"], pa.scalar(d1, pa.date32()))))
    # sent/failed: count = pages that reported, sum_value = contacts (read as the sum)
    rows = {(r["dimension_type"], r["dimension_id"], r["metric"]): (r["count"],
                                                                    r["sum_value"])
            for r in acc.finish().to_pylist()}
    for dim, ident in (("account", 10), ("campaign", 1), ("channel", 1)):
        assert rows[(dim, ident, "campaign_sent")] == (2, 5.0)
        assert rows[(dim, ident, "campaign_failed")] == (2, 1.0)
        assert rows[(dim, ident, "campaign_pages_tracked")] == (2, 0.0)
    assert len(rows) == 9


def test_rollup_event_batches_are_bounded_and_add_up_to_the_events():
    reports = tracked_of(*[report(1, p, 700, 300, T0) for p in range(1, 6)])
    campaigns = campaigns_of((1, 10, "email"))
    batches = list(rollup_event_batches(reports, campaigns, {10: "UTC"}, max_rows=7))
    assert [b.num_rows for b in batches] == [6, 6, 3]  # three events a page
    whole = rollup_events(reports, campaigns, {10: "UTC"})
    keys = [(c, "ascending") for c in ("campaign_id", "date", "name", "value")]
    assert pa.concat_tables(batches).sort_by(keys).equals(whole.sort_by(keys))
    assert whole.num_rows == 5 * 3
    assert rollup_events(reports, campaigns, {}).num_rows == 0  # no timezone, no partition


def test_local_dates_follow_the_partition_windows_across_dst():
    rng = np.random.default_rng(7)
    start = int(datetime(2026, 3, 6, tzinfo=timezone.utc).timestamp() * 1e6)
    instants = np.sort(rng.integers(start, start + 5 * 86_400_000_000, 500))
    got = local_dates(instants, NY)
    for us, d in zip(instants.tolist(), got.tolist(), strict=True):
        day = LocalDay(date(1970, 1, 1) + timedelta(days=d), NY)
        at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
        assert day.start_utc <= at < day.end_utc


def test_the_campaign_metrics_are_registered_with_their_channel_numbers():
    names = {m.name for m in ALL_METRICS}
    assert {"campaign_sent", "campaign_failed", "campaign_pages_tracked"} <= names
    assert CHANNEL_IDS == {"other": 0, "email": 1, "whatsapp": 2, "sms": 3, "api": 4}
    assert {d.name for d in CAMPAIGN_METRICS[0].dimensions} == {"account", "campaign",
                                                                 "channel"}


def test_channel_classes_map_to_transport_ids():
    got = channel_names(pa.array(["Channel::Email", "Channel::Whatsapp", "Channel::Sms",
                                  "Channel::Api", "Channel::FacebookPage", "Channel::", "email",
                                  None, "Inbox"]))
    assert got.to_pylist() == ["email", "whatsapp", "sms", "api", "facebookpage", "other",
                               "other", "other", "other"]


# --- scale ----------------------------------------------------------------------------------

def test_10000_campaigns_and_a_million_contacts_add_up():
    n, per, batch = 10_000, 100, 25  # 4 pages of 25 contacts per campaign
    pages_per = per // batch
    cid = np.repeat(np.arange(1, n + 1, dtype=np.int64), pages_per)
    page = np.tile(np.arange(1, pages_per + 1, dtype=np.int64), n)
    contacts = np.arange(n * per, dtype=np.int64) + 1
    contacts[1 * per + batch] = contacts[1 * per]  # campaign 2: contact on pages 1 and 2
    offsets = pa.array(np.arange(0, n * per + 1, batch, dtype=np.int32))
    rows = len(cid)
    at = pa.array(np.full(rows, int(T0.timestamp() * 1e6)), pa.int64()).cast(_ts)
    sends = pa.Table.from_arrays([
        pa.array(cid), pa.array(page), pa.array(np.full(rows, pages_per)),
        pa.ListArray.from_arrays(offsets, pa.array(contacts)),
        pa.repeat(pa.scalar("tpl"), rows), pa.repeat(pa.scalar("Channel::Email"), rows),
        pa.repeat(pa.scalar("c"), rows), pa.array([f"s{i}" for i in range(rows)]),
        at, pa.nulls(rows, _ts), pa.repeat(pa.scalar(False), rows)], schema=SENDS_SCHEMA)
    # every page reported 24 sent / 1 failed; every 10th campaign's page 1 reported twice
    again = np.flatnonzero((page == 1) & (cid % 10 == 0))
    t_rows = np.concatenate([np.arange(rows), again])
    m = len(t_rows)
    sent = np.where(np.arange(m) < rows, 24, 25)  # a repeat's counts never count
    failed = np.where(np.arange(m) < rows, 1, 0)
    later = pa.array(np.full(m, int(T0.timestamp() * 1e6)) + np.where(
        np.arange(m) < rows, 60_000_000, 120_000_000), pa.int64()).cast(_ts)
    tracked = pa.Table.from_arrays([
        pa.array(cid[t_rows]), pa.array(page[t_rows]), pa.array(sent), pa.array(failed),
        pa.repeat(pa.scalar(False), m), pa.repeat(pa.scalar("c"), m),
        pa.array([f"t{i}" for i in range(m)]), later, pa.nulls(m, _ts)], schema=TRACKED_SCHEMA)
    ids = np.arange(1, n + 1, dtype=np.int64)
    campaigns = pa.table({"campaign_id": ids, "account_id": ids % 50 + 1,
                          "name": pa.nulls(n, pa.string()),
                          "channel": pa.repeat(pa.scalar("email"), n),
                          "status": pa.nulls(n, pa.string())}).cast(CAMPAIGNS_SCHEMA)
    counts = pa.table({"campaign_id": ids, "audience": np.full(n, per),
                       "contacts_pending": np.zeros(n, np.int64),
                       "contacts_sent": np.full(n, 96), "contacts_failed": np.full(n, 4)})
    ds = double_sends(sends, tracked, NO_RISKY)
    assert ds.select(["campaign_id", "contact_id", "signal"]).to_pylist() == [
        {"campaign_id": 2, "contact_id": int(contacts[per]), "signal": "two_pages"}]
    p = compute_progress(campaigns, counts.cast(CONTACT_COUNTS_SCHEMA), sends, tracked, batch,
                         T0 + timedelta(hours=1), double_sends=ds)
    assert p.num_rows == n
    total = {c: pc.sum(p[c]).as_py() for c in ("sent", "failed", "pages_expected",
                                                "pages_published", "pages_tracked",
                                                "duplicate_reports", "double_sends")}
    assert total == {"sent": 960_000, "failed": 40_000, "pages_expected": 40_000,
                     "pages_published": 40_000, "pages_tracked": 40_000,
                     "duplicate_reports": 1_000, "double_sends": 1}
    assert pc.all(p["completed"]).as_py() and not pc.any(p["stuck"]).as_py()
    assert pc.sum(p["status_disagreement"]).as_py() == 0
    assert pc.all(pc.equal(p["send_rate_per_minute"], 96.0)).as_py()
    events = rollup_events(tracked, campaigns, {a: "UTC" for a in range(1, 51)})
    assert events.num_rows == 3 * 40_000  # three events a page, whatever its contacts
    sent = events.filter(pc.equal(events["name"], "campaign_sent"))
    assert pc.sum(sent["value"]).as_py() == 960_000


# --- the warehouse ----------------------------------------------------------------------------

def _warehouse_rows(engine, table: sa.Table) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(table).order_by(*table.primary_key.columns))]


def test_write_progress_replaces_the_refreshed_campaigns_only(warehouse_url):
    engine = wh.make_engine(warehouse_url)
    wh.ensure_schema(engine)
    campaigns = campaigns_of((1, 10, "email"), (2, 10, "sms"))
    counts = counts_of((1, 0, 2490, 10))
    sends = sends_of(*pages(1, 2500), send(1, 2, 3, [1], T0))
    reports = tracked_of(report(1, 1, 1000, 0, T0 + timedelta(minutes=1)))
    ds = double_sends(sends, reports, risky_of((1, 5, 2)))
    progress = compute_progress(campaigns, counts, sends, reports, 1000,
                                T0 + timedelta(hours=1), double_sends=ds)
    out = write_progress(engine, progress, ds)
    assert (out.campaigns, out.double_sends, out.progress_replaced) == (2, 2, 0)
    rows = _warehouse_rows(engine, campaign_progress)
    assert [r["campaign_id"] for r in rows] == [1, 2]
    one = rows[0]
    assert (one["audience"], one["pages_expected"], one["pages_published"],
            one["pages_tracked"], one["duplicate_pages"], one["sent"], one["stuck"],
            one["stuck_pages"], one["double_sends"], one["completed"]) == \
        (2500, 3, 3, 1, 1, 1000, True, 2, 2, False)
    assert one["first_published_at"] == T0.replace(tzinfo=None)
    assert one["last_reported_at"] == (T0 + timedelta(minutes=1)).replace(tzinfo=None)
    assert one["send_rate_per_minute"] == pytest.approx(1000.0)
    assert one["channel"] == "email" and one["name"] == "campaign 1"
    assert rows[1]["send_rate_per_minute"] is None and rows[1]["first_published_at"] is None
    assert [(r["contact_id"], r["signal"]) for r in _warehouse_rows(
        engine, campaign_double_sends)] == [(1, "two_pages"), (5, "attempts_sent")]

    # campaign 1 refreshed alone: its rows replaced, campaign 2's untouched
    reports = tracked_of(*[report(1, p, n, 0, T0 + timedelta(minutes=2))
                           for p, n in ((1, 1000), (2, 1000), (3, 500))])
    sends = sends_of(*pages(1, 2500))
    ds = double_sends(sends, reports, NO_RISKY)
    progress = compute_progress(campaigns.slice(0, 1), counts_of((1, 0, 2500, 0)), sends,
                                reports, 1000, T0 + timedelta(hours=1))
    out = write_progress(engine, progress, ds)
    assert (out.progress_replaced, out.double_sends_replaced) == (1, 2)
    rows = _warehouse_rows(engine, campaign_progress)
    assert [(r["campaign_id"], r["completed"], r["double_sends"]) for r in rows] == [
        (1, True, 0), (2, False, 0)]
    assert _warehouse_rows(engine, campaign_double_sends) == []

    with pytest.raises(ValueError, match="outside the refreshed"):
        write_progress(engine, progress, double_sends(NO_SENDS, NO_TRACKED,
                                                      risky_of((2, 1, 2))))
    engine.dispose()


# --- the application database -------------------------------------------------------------------

def _write_source(url: str, campaigns: list[dict], contacts: list[dict]) -> None:
    engine = sa.create_engine(wh.normalize_url(url))
    with engine.begin() as conn:
        for t in (src_campaign_contacts, src_campaigns):
            t.drop(conn, checkfirst=True)
        src_campaigns.metadata.create_all(conn, tables=[src_campaigns, src_campaign_contacts])
        if campaigns:
            conn.execute(src_campaigns.insert(), campaigns)
        if contacts:
            conn.execute(src_campaign_contacts.insert(), contacts)
    engine.dispose()


def _campaign(i: int, account: int, channel: str | None, name: str | None = None) -> dict:
    return {"id": i, "account_id": account, "name": name or f"c{i}", "channel_type": channel,
            "status": "running", "created_at": datetime(2026, 3, 1), "scheduled_at": None}


def _contacts(campaign: int, first: int, n: int, status: str, attempts: int = 1) -> list[dict]:
    return [{"campaign_id": campaign, "contact_id": first + i, "status": status,
             "sent_at": None, "attempts": attempts, "error": None} for i in range(n)]


def test_reading_the_application_database(source_url):
    _write_source(source_url, [
        _campaign(1, 10, "Channel::Email"), _campaign(2, 10, "Channel::Whatsapp"),
        _campaign(3, 11, "Channel::Telegram"), _campaign(4, 11, None)],
        _contacts(1, 1, 2490, "SENT") + _contacts(1, 3000, 5, "FAILED", attempts=3)
        + _contacts(1, 4000, 5, "PENDING", attempts=0) + _contacts(1, 5000, 2, "SENT", 2)
        + _contacts(3, 1, 3, "PENDING") + _contacts(5, 1, 1, "SENT", 4))
    src = CampaignSource(source_url)
    read = src.campaigns()
    assert read.problems == {}
    assert [(r["campaign_id"], r["account_id"], r["channel"]) for r in read.table.to_pylist()] \
        == [(1, 10, "email"), (2, 10, "whatsapp"), (3, 11, "telegram"), (4, 11, "other")]
    counts = src.contact_counts()
    assert counts.problems == {}
    assert counts.table.to_pylist() == [
        {"campaign_id": 1, "audience": 2502, "contacts_pending": 5, "contacts_sent": 2492,
         "contacts_failed": 5},
        {"campaign_id": 3, "audience": 3, "contacts_pending": 3, "contacts_sent": 0,
         "contacts_failed": 0},
        {"campaign_id": 5, "audience": 1, "contacts_pending": 0, "contacts_sent": 1,
         "contacts_failed": 0}]
    risky = src.risky_contacts()
    assert risky.table.to_pylist() == [
        {"campaign_id": 1, "contact_id": 5000, "attempts": 2},
        {"campaign_id": 1, "contact_id": 5001, "attempts": 2},
        {"campaign_id": 5, "contact_id": 1, "attempts": 4}]
    # only the campaigns asked for
    assert src.campaigns([2, 3]).table["campaign_id"].to_pylist() == [2, 3]
    assert src.contact_counts([3, 9]).table["campaign_id"].to_pylist() == [3]
    assert src.risky_contacts([1]).table["contact_id"].to_pylist() == [5000, 5001]
    assert src.contact_counts([]).table.num_rows == 0


def test_a_loosely_typed_sqlite_source_is_read_strictly(tmp_path):
    url = f"sqlite:///{tmp_path / 'source.db'}"
    _write_source(url, [], [])
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO campaigns (id, account_id, name, channel_type, status, created_at) "
            "VALUES (1, 10, 'a', 'Channel::Sms', 'x', '2026-03-01'), "
            "('2', '10', X'ff', 'Channel::Email', 'x', '2026-03-01'), "
            "('3x', 10, 'bad id', NULL, 'x', '2026-03-01'), "
            "(4, 10.5, 'bad account', NULL, 'x', '2026-03-01')"))
        conn.execute(sa.text(
            "INSERT INTO campaign_contacts (campaign_id, contact_id, status, attempts) VALUES "
            "(1, 1, 'SENT', 1), ('1', 2, 'SENT', '3'), (1, 3, 'BOUNCED', 1), "
            "('1x', 4, 'SENT', 2), (1, 5, 'SENT', '2x'), (1, 6, 'FAILED', 5), "
            "(1, 7, 'SENT', 2.5)"))
    engine.dispose()
    src = CampaignSource(url)
    read = src.campaigns()
    assert [(r["campaign_id"], r["account_id"], r["name"], r["channel"])
            for r in read.table.to_pylist()] == [(1, 10, "a", "sms"), (2, 10, None, "email")]
    assert read.problems == {"name is not valid text (dropped)": 1,
                             "campaign id is not an integer": 1,
                             "account id is not an integer": 1}
    counts = src.contact_counts()
    assert counts.table.to_pylist() == [
        {"campaign_id": 1, "audience": 6, "contacts_pending": 0, "contacts_sent": 4,
         "contacts_failed": 1}]
    assert counts.problems == {"contact's campaign id is not an integer": 1,
                               "contact status unknown": 1}
    risky = src.risky_contacts()
    assert risky.table.to_pylist() == [{"campaign_id": 1, "contact_id": 2, "attempts": 3}]
    assert risky.problems == {"contact's campaign or contact id is not an integer": 1,
                              "contact's attempts is not an integer": 2}


def test_a_postgresql_source_with_text_columns_is_read_strictly(pg_database):
    engine = sa.create_engine(wh.normalize_url(pg_database))
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE campaigns (id text, account_id text, name text, channel_type text, "
            "status text, created_at text, scheduled_at text)"))
        conn.execute(sa.text(
            "CREATE TABLE campaign_contacts (campaign_id text, contact_id text, status text, "
            "sent_at text, attempts text, error text)"))
        conn.execute(sa.text(
            "INSERT INTO campaigns (id, account_id, name, channel_type) VALUES "
            "('1', '10', 'a', 'Channel::Api'), ('01', '10', 'b', NULL), ('2', '1e3', 'c', NULL)"))
        conn.execute(sa.text(
            "INSERT INTO campaign_contacts (campaign_id, contact_id, status, attempts) VALUES "
            "('1', '1', 'SENT', '1'), ('1', '2', 'SENT', '12'), ('1', '3', 'SENT', '02'), "
            "('1', '4', 'FAILED', '3'), ('1.0', '5', 'SENT', '2'), ('1', '6', 'PENDING', '0')"))
    engine.dispose()
    src = CampaignSource(pg_database)
    read = src.campaigns()
    assert read.table.select(["campaign_id", "channel"]).to_pylist() == [
        {"campaign_id": 1, "channel": "api"}]
    assert read.problems == {"campaign id is not an integer": 1,
                             "account id is not an integer": 1}
    counts = src.contact_counts([1])
    assert counts.table.to_pylist() == [
        {"campaign_id": 1, "audience": 5, "contacts_pending": 1, "contacts_sent": 3,
         "contacts_failed": 1}]
    assert src.risky_contacts().table.to_pylist() == [
        {"campaign_id": 1, "contact_id": 2, "attempts": 12}]
    assert src.risky_contacts().problems == {
        "contact's campaign or contact id is not an integer": 1}


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_distinct_tuples_packed_or_lexsorted_agree(seed, wide):
    """``_distinct`` packs the tuples into one int64 when their ranges allow (``wide``:
    they do not, and it lexsorts): the same distinct tuples in the same order."""
    from analytics_pipeline.campaigns.progress import _distinct

    rng = np.random.default_rng(seed)
    n = 5_000
    cols = (rng.integers(-5, 60, n),
            rng.choice(rng.integers(-2**62, 2**62, 40), n) if wide
            else rng.integers(10**9, 10**9 + 900, n),
            rng.integers(0, 4, n))
    order = np.lexsort(cols[::-1])
    s = [c[order] for c in cols]
    new = np.ones(n, bool)
    new[1:] = (s[0][1:] != s[0][:-1]) | (s[1][1:] != s[1][:-1]) | (s[2][1:] != s[2][:-1])
    got = _distinct(*cols)
    assert [g.tolist() for g in got] == [c[new].tolist() for c in s]
    assert len(got[0]) < n  # duplicates were there to drop


@pytest.mark.parametrize("wide", [False, True])
def test_repeated_pairs_packed_or_lexsorted(wide):
    from analytics_pipeline.campaigns.progress import _repeated

    rng = np.random.default_rng(9)
    n = 4_000
    a = rng.integers(0, 30, n)
    b = rng.choice(rng.integers(-2**62, 2**62, 3_000), n) if wide else \
        rng.integers(0, 3_000, n)
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))
    counts: dict = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    want = [counts[pair] > 1 for pair in pairs]
    got = _repeated(a, b)
    assert got.tolist() == want and 0 < sum(want) < n
    assert _repeated(a[:1], b[:1]).tolist() == [False]
