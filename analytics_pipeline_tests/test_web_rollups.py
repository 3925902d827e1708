"""Web rollups: visitor numbering, hourly and daily rows of a landed sessionized partition,
the partition-atomic replace, quarantine and the checks, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay, zone
from analytics_pipeline.core.steps import LandingOutOfDate
from analytics_pipeline.web import rollups as web_rollups
from analytics_pipeline.web.contract import (
    DIMENSIONS,
    DIRECT,
    EVENT_DIMENSIONS,
    LANDED_WEB_SCHEMA,
    NONE_VALUE,
    REASON_MISSING_ID,
    REASON_OCCURRED_AT,
    WEB_SOURCE,
    web_daily_rollups,
    web_hourly_rollups,
    web_visitors,
)
from analytics_pipeline.web.rollup_step import rollup_web_partition
from analytics_pipeline.web.rollups import web_rollup_rows
from analytics_pipeline.web.store import (
    WEB_CHECKS,
    WEB_DAILY_EQUALS_HOURLY,
    WEB_NON_NEGATIVE,
    WEB_VISITORS_BOUNDED,
    WEB_VISITS_GE_BOUNCES,
    register_visitors,
    replace_web_slice,
    web_rollup_problems,
    web_slice_rows,
)

NY = "America/New_York"
DAY = LocalDay(date(2026, 2, 11), NY)  # UTC [2026-02-11T05:00Z, 2026-02-12T05:00Z)
SESSION_GAP = timedelta(minutes=30)


# --- landed rows as the extraction writes them ------------------------------------------

def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=timezone.utc)


def local_hour_start(at: datetime, tz: str) -> datetime:
    local = at.astimezone(zone(tz))
    return local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)


def landed(rows: list[dict], tz: str, site_accounts: dict[int, int]) -> pa.Table:
    """LANDED_WEB_SCHEMA rows: each row gives event_id, site_id, visitor_id, name, at
    (ISO, UTC) and any dimension; the account, hour and visit columns are filled in as
    the sessionization does (a gap over 30 minutes starts a new visit)."""
    out = []
    for r in rows:
        at = utc(r["at"]) if r.get("at") else None
        row = {f: None for f in LANDED_WEB_SCHEMA.names}
        row.update({k: v for k, v in r.items() if k != "at"})
        row.update(account_id=site_accounts.get(r.get("site_id")), occurred_at=at,
                   received_at=at, hour_start=local_hour_start(at, tz) if at else None)
        out.append(row)
    valid = sorted((r for r in out if r["invalid_reason"] is None),
                   key=lambda r: (r["site_id"], r["visitor_id"], r["occurred_at"],
                                  r["event_id"]))
    visits: list[list[dict]] = []
    for r in valid:
        last = visits[-1][-1] if visits else None
        if (last is None or (last["site_id"], last["visitor_id"]) != (r["site_id"],
                                                                      r["visitor_id"])
                or r["occurred_at"] - last["occurred_at"] > SESSION_GAP):
            visits.append([])
        visits[-1].append(r)
    for n, visit in enumerate(visits):
        for r in visit:
            r.update(visit_id=n, visit_start=visit[0]["occurred_at"],
                     visit_events=len(visit),
                     visit_duration_seconds=(visit[-1]["occurred_at"]
                                             - visit[0]["occurred_at"]).total_seconds(),
                     entry_page=visit[0]["page"], exit_page=visit[-1]["page"])
    return pa.Table.from_pylist(out, schema=LANDED_WEB_SCHEMA)


def ev(event_id: str, visitor: str, at: str, page: str, name: str = "pageview",
       site: int = 10, **dims) -> dict:
    return {"event_id": event_id, "site_id": site, "visitor_id": visitor, "name": name,
            "at": at, "page": page, **dims}


# Two visitors, three visits, one bounce; visit 1 spans two hours and views /home twice;
# its second event has another referrer, the visit keeps its first event's.
EXAMPLE = [
    ev("a1", "A", "2026-02-11T14:50:00", "/home", referrer="google.com", country="US",
       device="desktop"),
    ev("a2", "A", "2026-02-11T14:55:00", "/pricing", referrer="other.com", country="CA",
       device="mobile"),
    ev("a3", "A", "2026-02-11T15:10:00", "/home", country="US"),
    ev("a4", "A", "2026-02-11T15:12:00", "/pricing", name="signup"),
    ev("a5", "A", "2026-02-11T18:00:00", "/blog", country="US", device="desktop"),
    ev("b1", "B", "2026-02-11T14:20:00", "/home", referrer="news.ycombinator.com",
       utm_source="hn", device="mobile"),
    ev("b2", "B", "2026-02-11T14:30:00", "/blog", device="mobile"),
]
ACCOUNTS = [
    {"id": 1, "name": "Acme", "reporting_timezone": NY, "timezone": NY, "timezone_valid": True},
    {"id": 2, "name": "Other", "reporting_timezone": NY, "timezone": NY,
     "timezone_valid": True},
]
SITES = {10: 1, 11: 1, 12: 2}


@pytest.fixture
def engine(warehouse_url):
    e = wh.make_engine(warehouse_url)
    wh.ensure_schema(e)
    wh.replace_accounts(e, ACCOUNTS)
    yield e
    e.dispose()


@pytest.fixture
def store(landing_root) -> LandingStore:
    return LandingStore(landing_root)


def land(store: LandingStore, rows: list[dict], day: LocalDay = DAY,
         sites: dict[int, int] = SITES, account_ids: list[int] | None = None) -> pa.Table:
    table = landed(rows, day.tz, sites)
    store.write_partition(WEB_SOURCE, day, table, meta={
        "account_ids": account_ids or [1, 2], "site_ids": sorted(sites)})
    return table


def counts(row: dict) -> tuple:
    return (row["events"], row["pageviews"], row["visits"], row["bounces"],
            row["duration_seconds"], row["visitors"], row["new_visitors"])


def by_key(rows: list[dict], hourly: bool) -> dict[tuple, dict]:
    if hourly:
        return {(r["hour_start"].hour, r["dimension"], r["value"]): r for r in rows}
    return {(r["dimension"], r["value"]): r for r in rows}


def nums_of(engine, *visitors: str, site: int = 10) -> set[int]:
    v = web_visitors.c
    with engine.connect() as conn:
        return {int(n) for n in conn.scalars(sa.select(v.visitor_num).where(
            v.site_id == site, v.visitor_id.in_(visitors)))}


# --- the hand-computed example ------------------------------------------------------------

def test_hand_computed_hourly_and_daily_rows(engine, store):
    land(store, EXAMPLE)
    result = rollup_web_partition(store, engine, DAY)
    assert (result.events, result.valid, result.visits, result.visitors) == (7, 7, 3, 2)
    assert result.mismatches == {c: 0 for c in WEB_CHECKS}

    daily = by_key(web_slice_rows(engine, web_daily_rollups, DAY.day), hourly=False)
    # (events, pageviews, visits, bounces, duration, visitors, new visitors)
    assert counts(daily[("site", "")]) == (7, 6, 3, 1, 1920.0, 2, 2)
    assert counts(daily[("page", "/home")]) == (3, 3, 2, 0, 1920.0, 2, 2)  # visit 1 once
    assert counts(daily[("page", "/pricing")]) == (2, 1, 1, 0, 1320.0, 1, 1)
    assert counts(daily[("page", "/blog")]) == (2, 2, 2, 1, 600.0, 2, 2)
    assert counts(daily[("name", "signup")]) == (1, 0, 1, 0, 1320.0, 1, 1)
    assert counts(daily[("referrer", "google.com")]) == (4, 3, 1, 0, 1320.0, 1, 1)
    assert counts(daily[("referrer", DIRECT)]) == (1, 1, 1, 1, 0.0, 1, 1)
    assert counts(daily[("referrer", "news.ycombinator.com")]) == (2, 2, 1, 0, 600.0, 1, 1)
    assert ("referrer", "other.com") not in daily
    assert counts(daily[("country", "US")]) == (5, 4, 2, 1, 1320.0, 1, 1)
    assert counts(daily[("country", NONE_VALUE)]) == (2, 2, 1, 0, 600.0, 1, 1)
    assert counts(daily[("utm_source", NONE_VALUE)]) == (5, 4, 2, 1, 1320.0, 1, 1)
    assert counts(daily[("entry_page", "/home")]) == (6, 5, 2, 0, 1920.0, 2, 2)
    assert counts(daily[("exit_page", "/pricing")]) == (4, 3, 1, 0, 1320.0, 1, 1)
    assert {(d, v) for d, v in daily if d == "device"} == {("device", "desktop"),
                                                           ("device", "mobile")}
    assert {r["dimension"] for r in daily.values()} == set(DIMENSIONS)
    assert {r["timezone"] for r in daily.values()} == {NY}

    hourly = by_key(web_slice_rows(engine, web_hourly_rollups, DAY.day), hourly=True)
    assert counts(hourly[(14, "site", "")]) == (4, 4, 2, 0, 1920.0, 2, 2)
    assert counts(hourly[(15, "site", "")]) == (2, 1, 0, 0, 0.0, 1, 0)  # visit 1 counted at 14
    assert counts(hourly[(18, "site", "")]) == (1, 1, 1, 1, 0.0, 1, 0)
    assert sorted(h for h, d, _ in hourly if d == "site") == [14, 15, 18]
    assert counts(hourly[(14, "page", "/home")]) == (2, 2, 2, 0, 1920.0, 2, 2)
    assert counts(hourly[(15, "page", "/home")]) == (1, 1, 0, 0, 0.0, 1, 0)
    assert counts(hourly[(15, "page", "/pricing")]) == (1, 0, 0, 0, 0.0, 1, 0)
    assert counts(hourly[(14, "name", "signup")]) == (0, 0, 1, 0, 1320.0, 0, 0)  # started at 14
    assert counts(hourly[(15, "name", "signup")]) == (1, 0, 0, 0, 0.0, 1, 0)
    assert all(r["date"] == DAY.day for r in hourly.values())

    # visitor sets: the daily set is the union of the hourly ones, the exact visitors
    a, b = nums_of(engine, "A"), nums_of(engine, "B")
    assert BitMap.deserialize(daily[("site", "")]["visitor_set"]) == BitMap(a | b)
    assert BitMap.deserialize(daily[("page", "/pricing")]["visitor_set"]) == BitMap(a)
    union = BitMap.union(*(BitMap.deserialize(r["visitor_set"])
                           for (_, d, _), r in hourly.items() if d == "site"))
    assert union == BitMap(a | b) and len(union) == 2


def test_new_visitors_follow_first_seen(engine, store):
    """A visitor first seen on an earlier day is no longer new; first_seen moves only back."""
    register_visitors(engine, pa.table({
        "site_id": [10], "visitor_id": ["A"],
        "first_seen": [datetime(2026, 2, 1, 12)], "last_seen": [datetime(2026, 2, 1, 12)]}))
    land(store, EXAMPLE)
    rollup_web_partition(store, engine, DAY)
    daily = by_key(web_slice_rows(engine, web_daily_rollups, DAY.day), hourly=False)
    hourly = by_key(web_slice_rows(engine, web_hourly_rollups, DAY.day), hourly=True)
    assert daily[("site", "")]["new_visitors"] == 1  # B only
    assert hourly[(14, "site", "")]["new_visitors"] == 1
    assert daily[("page", "/pricing")]["new_visitors"] == 0  # A's only page
    v = web_visitors.c
    with engine.connect() as conn:
        seen = dict(conn.execute(sa.select(v.visitor_id, v.first_seen)).all())
        last = dict(conn.execute(sa.select(v.visitor_id, v.last_seen)).all())
    assert seen == {"A": datetime(2026, 2, 1, 12), "B": datetime(2026, 2, 11, 14, 20)}
    assert last["A"] == datetime(2026, 2, 11, 18)


# --- visitor numbering ------------------------------------------------------------------

def visitors_table(ids: list[str], first: datetime, site: int = 10) -> pa.Table:
    return pa.table({
        "site_id": pa.array([site] * len(ids), pa.int64()), "visitor_id": ids,
        "first_seen": pa.array([first] * len(ids), pa.timestamp("us", tz="UTC")),
        "last_seen": pa.array([first + timedelta(hours=1)] * len(ids),
                              pa.timestamp("us", tz="UTC"))})


def test_register_visitors_is_idempotent_and_numbers_are_stable(engine):
    t0 = datetime(2026, 2, 11, 10, tzinfo=timezone.utc)
    first = register_visitors(engine, visitors_table(["x", "y", "x"], t0))
    assert first.num_rows == 2 and len(set(first["visitor_num"].to_pylist())) == 2
    again = register_visitors(engine, visitors_table(["y", "x", "z"], t0 + timedelta(days=1)))
    nums = dict(zip(again["visitor_id"].to_pylist(), again["visitor_num"].to_pylist(),
                    strict=True))
    assert {k: nums[k] for k in ("x", "y")} == dict(zip(
        first["visitor_id"].to_pylist(), first["visitor_num"].to_pylist(), strict=True))
    # returning visitors spend no number (PostgreSQL draws one per INSERT row tried)
    assert nums["z"] == max(nums["x"], nums["y"]) + 1
    # the same id on another site is another visitor
    other = register_visitors(engine, visitors_table(["x"], t0, site=11))
    assert other["visitor_num"][0].as_py() not in nums.values()
    v = web_visitors.c
    with engine.connect() as conn:
        rows = {r.visitor_id: r for r in conn.execute(sa.select(web_visitors).where(
            v.site_id == 10))}
    assert rows["x"].first_seen == datetime(2026, 2, 11, 10)  # min kept
    assert rows["x"].last_seen == datetime(2026, 2, 12, 11)  # max taken
    assert rows["z"].first_seen == datetime(2026, 2, 12, 10)


def test_concurrent_overlapping_registrations_give_one_number_per_visitor(engine):
    """Two partitions of the same site (different dates) register overlapping visitors at
    once: each visitor gets one number, first_seen is the earlier one."""
    ids = [f"v{i:04d}" for i in range(3000)]
    early = datetime(2026, 2, 10, 8, tzinfo=timezone.utc)
    late = datetime(2026, 2, 11, 8, tzinfo=timezone.utc)
    batches = [visitors_table(ids[:2000], late), visitors_table(ids[1000:][::-1], early)]
    barrier = threading.Barrier(2)
    results: list[pa.Table | BaseException] = [None, None]  # type: ignore[list-item]

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = register_visitors(engine, batches[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [r for r in results if isinstance(r, BaseException)], results
    v = web_visitors.c
    with engine.connect() as conn:
        stored = {r.visitor_id: (r.visitor_num, r.first_seen) for r in conn.execute(
            sa.select(v.visitor_id, v.visitor_num, v.first_seen))}
    assert len(stored) == 3000 and len({n for n, _ in stored.values()}) == 3000
    for res in results:
        for vid, num in zip(res["visitor_id"].to_pylist(), res["visitor_num"].to_pylist(),
                            strict=True):
            assert stored[vid][0] == num
    assert stored["v0000"][1] == datetime(2026, 2, 11, 8)
    assert stored["v1500"][1] == datetime(2026, 2, 10, 8)  # both: the minimum
    assert stored["v2999"][1] == datetime(2026, 2, 10, 8)


# --- re-runs, other timezones, quarantine, refusal, atomicity ---------------------------

def test_rerun_gives_identical_rows(engine, store):
    land(store, EXAMPLE)
    rollup_web_partition(store, engine, DAY)
    before = [web_slice_rows(engine, t, DAY.day) for t in (web_hourly_rollups,
                                                           web_daily_rollups)]
    again = rollup_web_partition(store, engine, DAY)
    after = [web_slice_rows(engine, t, DAY.day) for t in (web_hourly_rollups,
                                                          web_daily_rollups)]
    assert after == before and len(before[0]) > 0
    assert again.rows_replaced == len(before[0]) + len(before[1])
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(web_visitors)).scalar() == 2


def test_rows_written_by_another_timezone_are_replaced(engine, store):
    """Site 10's account moved to New York: the rows its old timezone wrote for the date go,
    rows of sites outside the slice stay."""
    kolkata = LocalDay(DAY.day, "Asia/Kolkata")
    old = landed([ev("k1", "K", "2026-02-11T03:00:00", "/old"),
                  ev("k2", "K", "2026-02-11T03:00:00", "/old", site=99)], kolkata.tz,
                 {10: 1, 99: 3})
    nums = register_visitors(engine, pa.table({
        "site_id": [10, 99], "visitor_id": ["K", "K"],
        "first_seen": [datetime(2026, 2, 11, 3)] * 2, "last_seen": [datetime(2026, 2, 11, 3)] * 2}))
    hourly, daily = web_rollup_rows(old, nums, kolkata, nums)
    replace_web_slice(engine, kolkata, [10, 99], hourly, daily, pa.table({
        "source": pa.array([], pa.string()), "event_id": pa.array([], pa.string()),
        "reason": pa.array([], pa.string()), "payload": pa.array([], pa.string())}))
    land(store, EXAMPLE)
    rollup_web_partition(store, engine, DAY)
    daily_rows = web_slice_rows(engine, web_daily_rollups, DAY.day)
    assert {(r["site_id"], r["timezone"]) for r in daily_rows} == {
        (10, NY), (99, "Asia/Kolkata")}
    assert not [r for r in daily_rows if r["site_id"] == 10 and r["value"] == "/old"]
    hourly_rows = web_slice_rows(engine, web_hourly_rollups, DAY.day)
    assert {(r["site_id"], r["timezone"]) for r in hourly_rows} == {
        (10, NY), (99, "Asia/Kolkata")}


def quarantine_rows_of(engine) -> list[tuple]:
    q = wh.quarantine.c
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(q.source, q.event_id, q.reason, q.timezone)
                                   .where(q.source == WEB_SOURCE)).all())


def test_invalid_rows_are_quarantined_once(engine, store):
    raw = json.dumps({"id": "bad1", "occurred_at": "yesterday-ish"})
    bad = [
        {"event_id": "bad1", "site_id": 10, "visitor_id": "A", "name": "pageview",
         "invalid_reason": REASON_OCCURRED_AT, "raw": raw},
        {"event_id": "bad1", "site_id": 10, "visitor_id": "A", "name": "pageview",
         "invalid_reason": REASON_OCCURRED_AT, "raw": raw},  # read twice: stored once
        {"event_id": None, "site_id": 10, "invalid_reason": REASON_MISSING_ID,
         "raw": json.dumps({"visitor_id": "A"})},
    ]
    land(store, EXAMPLE + bad)
    result = rollup_web_partition(store, engine, DAY)
    assert result.quarantined_by_reason == {REASON_OCCURRED_AT: 1, REASON_MISSING_ID: 1}
    assert (result.events, result.valid) == (10, 7)
    rows = quarantine_rows_of(engine)
    assert len(rows) == 2 and ("web_events", "bad1", REASON_OCCURRED_AT, NY) in rows
    assert [r for r in rows if r[2] == REASON_MISSING_ID][0][1].startswith("sha1:")
    rollup_web_partition(store, engine, DAY)
    assert quarantine_rows_of(engine) == rows
    land(store, EXAMPLE)  # re-extracted without the bad rows: the partition's quarantine goes
    rollup_web_partition(store, engine, DAY)
    assert quarantine_rows_of(engine) == []


def test_refuses_a_landing_of_other_accounts(engine, store):
    land(store, EXAMPLE, account_ids=[1])  # account 2 joined New York since
    with pytest.raises(LandingOutOfDate, match="older accounts snapshot"):
        rollup_web_partition(store, engine, DAY)
    assert web_slice_rows(engine, web_daily_rollups, DAY.day) == []


def test_failed_replace_leaves_previous_rows(engine, store):
    land(store, EXAMPLE)
    rollup_web_partition(store, engine, DAY)
    before = web_slice_rows(engine, web_daily_rollups, DAY.day)
    table = landed(EXAMPLE, NY, SITES)
    nums = register_visitors(engine, pa.table({
        "site_id": [10, 10], "visitor_id": ["A", "B"],
        "first_seen": [datetime(2026, 2, 11, 14)] * 2,
        "last_seen": [datetime(2026, 2, 11, 18)] * 2}))
    hourly, daily = web_rollup_rows(table, nums, DAY, nums)
    # a duplicated key fails the insert (COPY on PostgreSQL raises the driver's error)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        replace_web_slice(engine, DAY, [10], hourly, pa.concat_tables([daily, daily]),
                          pa.table({"source": pa.array([], pa.string()),
                                    "event_id": pa.array([], pa.string()),
                                    "reason": pa.array([], pa.string()),
                                    "payload": pa.array([], pa.string())}))
    assert web_slice_rows(engine, web_daily_rollups, DAY.day) == before


def test_rows_of_visits_without_events_hold_an_empty_visitor_set(engine):
    # the visit starts at 14:50 on /a and goes on at 15:05 on /b: /b counts the visit in
    # hour 14, where it has no event, so that row's visitor set is empty (and readable)
    table = landed([ev("e1", "A", "2026-02-11T14:50:00", "/a"),
                    ev("e2", "A", "2026-02-11T15:05:00", "/b")], NY, SITES)
    nums = register_visitors(engine, pa.table({
        "site_id": [10], "visitor_id": ["A"], "first_seen": [datetime(2026, 2, 11, 14, 50)],
        "last_seen": [datetime(2026, 2, 11, 15, 5)]}))
    hourly, _ = web_rollup_rows(table, nums, DAY, nums)
    rows = [r for r in hourly.to_pylist() if r["visitors"] == 0]
    assert [(r["dimension"], r["value"], r["visits"]) for r in rows] == [("page", "/b", 1)]
    assert rows[0]["visitor_set"] == BitMap().serialize()


# --- checks -------------------------------------------------------------------------------

def allow_negative_counts(conn: sa.Connection) -> None:
    """Let a test write what the tables' CHECK constraint forbids (to tamper)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        return
    for table in ("web_hourly_rollups", "web_daily_rollups"):
        names = conn.exec_driver_sql(
            "SELECT conname FROM pg_constraint WHERE conrelid = %(t)s::regclass "
            "AND contype = 'c'", {"t": table}).scalars().all()
        for name in names:
            conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')


TAMPER = {
    WEB_DAILY_EQUALS_HOURLY: (web_daily_rollups, {"events": web_daily_rollups.c.events + 1}),
    WEB_VISITORS_BOUNDED: (web_daily_rollups, {"visitors": 5}),
    WEB_VISITS_GE_BOUNCES: (web_hourly_rollups, {"bounces": 3}),
    WEB_NON_NEGATIVE: (web_hourly_rollups, {"pageviews": -1}),
}


@pytest.mark.parametrize("check", WEB_CHECKS)
def test_each_check_fails_on_a_tampered_table(engine, store, check):
    land(store, EXAMPLE)
    rollup_web_partition(store, engine, DAY)
    assert web_rollup_problems(engine, DAY.day, [10, 11, 12]) == {c: [] for c in WEB_CHECKS}
    table, values = TAMPER[check]
    with engine.begin() as conn:
        if check == WEB_NON_NEGATIVE:
            allow_negative_counts(conn)
        where = [table.c.site_id == 10, table.c.dimension == "site"]
        if table is web_hourly_rollups:
            where.append(table.c.hour_start == datetime(2026, 2, 11, 15))
        assert conn.execute(table.update().where(*where).values(**values)).rowcount == 1
    problems = web_rollup_problems(engine, DAY.day, [10, 11, 12])
    assert len(problems[check]) == 1, problems
    assert "site 10" in problems[check][0]
    assert web_rollup_problems(engine, DAY.day, [11, 12]) == {c: [] for c in WEB_CHECKS}


def test_daily_row_without_hourly_rows_is_reported(engine, store):
    land(store, EXAMPLE)
    rollup_web_partition(store, engine, DAY)
    with engine.begin() as conn:
        conn.execute(web_hourly_rollups.delete().where(
            web_hourly_rollups.c.dimension == "page", web_hourly_rollups.c.value == "/blog"))
    problems = web_rollup_problems(engine, DAY.day, [10])
    assert problems[WEB_DAILY_EQUALS_HOURLY] == [
        "site 10 2026-02-11 page='/blog': no hourly rows"]


# --- random: against brute force ---------------------------------------------------------

def test_random_events_match_brute_force(engine, store):
    rng = random.Random(7)
    tz = "Asia/Kathmandu"  # hours start at :15 UTC
    day = LocalDay(date(2026, 2, 11), tz)
    wh.replace_accounts(engine, [
        {"id": a, "name": str(a), "reporting_timezone": tz, "timezone": tz,
         "timezone_valid": True} for a in (1, 2)])
    sites = {1: 1, 2: 1, 3: 2}
    span = int((day.end_utc - day.start_utc).total_seconds())
    pick = rng.choice
    rows = []
    for i in range(2000):
        at = day.start_utc + timedelta(seconds=rng.randrange(span))
        rows.append(ev(f"e{i}", f"v{rng.randrange(50)}", at.replace(tzinfo=None).isoformat(),
                       pick(["/", "/a", "/b", "/c"]), name=pick(["pageview", "pageview", "click"]),
                       site=pick([1, 2, 3]), referrer=pick([None, "x.com", "y.org"]),
                       utm_source=pick([None, "news"]), device=pick(["desktop", "mobile"]),
                       country=pick([None, "NP", "IN", ""])))
    table = landed(rows, tz, sites)
    store.write_partition(WEB_SOURCE, day, table, meta={"account_ids": [1, 2],
                                                        "site_ids": [1, 2, 3]})
    result = rollup_web_partition(store, engine, day)
    assert result.mismatches == {c: 0 for c in WEB_CHECKS}

    # brute force: each event's value per dimension, visits with their first event
    events = sorted(table.to_pylist(), key=lambda r: (r["visit_id"], r["occurred_at"],
                                                      r["event_id"]))
    first = {}
    for r in events:
        first.setdefault(r["visit_id"], r)

    def value(r: dict, dim: str) -> str:
        if dim == "site":
            return ""
        src = r if dim in EVENT_DIMENSIONS or dim in ("entry_page", "exit_page") else first[
            r["visit_id"]]
        v = src[dim]
        return v if v else (DIRECT if dim == "referrer" else NONE_VALUE)

    expect = defaultdict(lambda: {"events": 0, "visits": set(), "visitors": set()})
    expect_hour = defaultdict(set)
    for r in events:
        for dim in DIMENSIONS:
            key = (r["site_id"], dim, value(r, dim))
            expect[key]["events"] += 1
            expect[key]["visitors"].add(r["visitor_id"])
            expect[key]["visits"].add(r["visit_id"])
            hour = r["hour_start"].replace(tzinfo=None)
            expect_hour[(r["site_id"], hour, dim, value(r, dim))].add(r["visitor_id"])
    daily = web_slice_rows(engine, web_daily_rollups, day.day)
    assert {(r["site_id"], r["dimension"], r["value"]) for r in daily} == set(expect)
    for r in daily:
        e = expect[(r["site_id"], r["dimension"], r["value"])]
        assert (r["events"], r["visits"], r["visitors"]) == (
            e["events"], len(e["visits"]), len(e["visitors"])), r
        assert len(BitMap.deserialize(r["visitor_set"])) == r["visitors"]
        assert r["new_visitors"] == r["visitors"]  # a fresh warehouse: all new
    hourly = web_slice_rows(engine, web_hourly_rollups, day.day)
    assert {h.minute for h in (r["hour_start"] for r in hourly)} == {15}
    for r in hourly:
        assert r["visitors"] == len(expect_hour.get(
            (r["site_id"], r["hour_start"], r["dimension"], r["value"]), set())), r
        assert len(BitMap.deserialize(r["visitor_set"])) == r["visitors"]  # empty ones too
    sums = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for r in hourly:
        s = sums[(r["site_id"], r["dimension"], r["value"])]
        for i, c in enumerate(("events", "pageviews", "visits", "bounces",
                               "duration_seconds")):
            s[i] += r[c]
    for r in daily:
        s = sums[(r["site_id"], r["dimension"], r["value"])]
        assert s[:4] == [r["events"], r["pageviews"], r["visits"], r["bounces"]]
        assert s[4] == pytest.approx(r["duration_seconds"])
    site_visits = {r["site_id"]: r["visits"] for r in daily if r["dimension"] == "site"}
    assert sum(site_visits.values()) == len(first) == result.visits


def test_a_partition_without_events_empties_its_slice(engine, store):
    land(store, EXAMPLE)
    rollup_web_partition(store, engine, DAY)
    land(store, [])
    result = rollup_web_partition(store, engine, DAY)
    assert (result.events, result.hourly_rows, result.daily_rows, result.visits) == (0, 0, 0, 0)
    assert result.rows_replaced > 0 and result.preview == []
    assert web_slice_rows(engine, web_daily_rollups, DAY.day) == []
    assert web_slice_rows(engine, web_hourly_rollups, DAY.day) == []


# --- the rows written do not change with the implementation -----------------------------

def _seeded_partition(seed: int, tz: str, sites: dict[int, int]) -> list[dict]:
    """Random events with many ties (whole seconds in a few hours: visits that start with
    two events at the same instant and different referrers), missing and empty values,
    a few invalid rows."""
    rng = random.Random(seed)
    day = LocalDay(date(2026, 2, 11), tz)
    pick = rng.choice
    rows = []
    for i in range(3000):
        at = day.start_utc + timedelta(hours=rng.randrange(3, 9),
                                       minutes=rng.randrange(0, 60, 6))
        row = ev(f"e{rng.randrange(10**6):06d}-{i}", f"v{rng.randrange(120)}",
                 at.replace(tzinfo=None).isoformat(), pick(["/", "/a", "/b", "/c", "", None]),
                 name=pick(["pageview", "pageview", "click", "signup"]),
                 site=pick(sorted(sites)), referrer=pick([None, "x.com", "y.org", ""]),
                 utm_source=pick([None, "news", "mail"]), utm_medium=pick([None, "cpc"]),
                 utm_campaign=pick([None, "spring", ""]),
                 device=pick(["desktop", "mobile", None]), browser=pick(["Chrome", "Safari"]),
                 os=pick(["Linux", "iOS", None]), country=pick([None, "NP", "IN", ""]))
        if i % 500 == 7:
            row["invalid_reason"] = REASON_OCCURRED_AT
            row["raw"] = json.dumps({"id": row["event_id"]})
        rows.append(row)
    return rows


def _digest(rows: list[dict]) -> str:
    import hashlib

    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: (r["site_id"], str(r.get("hour_start")),
                                         r["dimension"], r["value"])):
        h.update(repr(sorted((k, bytes(v) if isinstance(v, memoryview | bytes) else v)
                             for k, v in r.items())).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("packed", [True, False], ids=["packed-sort", "lexsort"])
def test_rows_written_are_those_of_the_reference_implementation(engine, store, packed,
                                                                 monkeypatch):
    # digests of the rows the per-event-table implementation wrote (before the
    # column-at-a-time rollup): any change to the rows written changes them; group keys
    # too wide for the packed sort take the lexsort path, which must write the same rows
    if not packed:
        monkeypatch.setattr(web_rollups, "PACKED_KEY_LIMIT", 0)
    tz = "Asia/Kathmandu"
    day = LocalDay(date(2026, 2, 11), tz)
    wh.replace_accounts(engine, [
        {"id": a, "name": str(a), "reporting_timezone": tz, "timezone": tz,
         "timezone_valid": True} for a in (1, 2)])
    sites = {1: 1, 2: 1, 3: 2}
    table = landed(_seeded_partition(11, tz, sites), tz, sites)
    # landed in another order than visit order: the rollup must not depend on it
    shuffled = table.take(pa.array(random.Random(3).sample(range(table.num_rows),
                                                           table.num_rows)))
    starts = defaultdict(list)  # events at the first instant of their visit
    for r in table.to_pylist():
        if r["invalid_reason"] is None and r["occurred_at"] == r["visit_start"]:
            starts[r["visit_id"]].append(r["referrer"])
    assert sum(len(set(refs)) > 1 for refs in starts.values()) > 20
    store.write_partition(WEB_SOURCE, day, shuffled, meta={"account_ids": [1, 2],
                                                           "site_ids": [1, 2, 3]})
    result = rollup_web_partition(store, engine, day)
    hourly = web_slice_rows(engine, web_hourly_rollups, day.day)
    daily = web_slice_rows(engine, web_daily_rollups, day.day)
    got = (len(hourly), len(daily), _digest(hourly), _digest(daily), result.visits,
           result.visitors, result.hourly_rows, result.daily_rows,
           result.quarantined_by_reason, _digest([{**p, "dimension": "", "value": ""}
                                                  for p in result.preview]))
    assert got == REFERENCE_DIGEST
    assert result.mismatches == {c: 0 for c in WEB_CHECKS}


REFERENCE_DIGEST = (720, 120, "b654d729de026913", "6a22dcf7648b1e60", 1460, 360, 720, 120,
                    {"unparseable_occurred_at": 6}, "ceaeddbd6af4d235")
