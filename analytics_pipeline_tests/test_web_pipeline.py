"""The web source end to end: the real assets materialized through Dagster, then ``web_stats``
(and the CLI) checked against a brute force computed here, independently, from the raw
source events (sessionized per site and visitor with the 30-minute gap and the local
midnight); the late-events sensor, retention, re-runs, checks and quarantine."""

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from dagster import build_sensor_context, materialize

from analytics_pipeline.cli import main
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.accounts import accounts
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.resources import Landing, PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline.dev.web_source import write_web_source
from analytics_pipeline.web import sensors as web_sensors
from analytics_pipeline.web.assets import raw_web_events, web_rollups
from analytics_pipeline.web.contract import (
    REASON_MISSING_VISITOR,
    REASON_NAME,
    REASON_URL,
    WEB_SOURCE,
    web_daily_rollups,
    web_hourly_rollups,
    web_visitors,
)
from analytics_pipeline.web.read import web_stats
from analytics_pipeline.web.resources import WebSettings
from analytics_pipeline.web.retention import enforce_web_retention
from analytics_pipeline.web.sensors import late_web_events_sensor
from analytics_pipeline.web.store import WEB_CHECKS

UTC = timezone.utc
NY, KTM = "America/New_York", "Asia/Kathmandu"
ACCOUNTS = [{"id": 1, "name": "Shop", "reporting_timezone": NY},
            {"id": 2, "name": "Blog", "reporting_timezone": KTM}]
SITES = [{"id": 10, "account_id": 1, "domain": "shop.example.com", "active": True},
         {"id": 20, "account_id": 2, "domain": "www.blog.example.np", "active": True}]
SITE_TZ = {10: NY, 20: KTM}
SITE_DOMAIN = {10: "shop.example.com", 20: "blog.example.np"}
# the partitions rolled up: NY's 23-hour 2026-03-08 and its neighbours, Kathmandu's days
FIRST_DAY, LAST_DAY = date(2026, 3, 6), date(2026, 3, 10)
GAP = timedelta(minutes=30)
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
TOTAL_KEYS = {"site_id", "from", "to", "visitors", "new_visitors", "visits", "pageviews",
              "events", "bounce_rate", "visit_duration_seconds"}


def naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None)


def web_event(i, site, visitor, at: datetime, name="pageview", page="/", query="",
              referrer=None, agent=CHROME, country="US") -> dict:
    domain = SITE_DOMAIN[site]
    return {"id": f"e{i}", "site_id": site, "visitor_id": visitor, "name": name,
            "url": f"https://{domain}{page}{query}", "referrer": referrer,
            "user_agent": agent, "country": country, "occurred_at": naive(at),
            "received_at": naive(at) + timedelta(seconds=3)}


def random_events(seed: int = 9, n: int = 2000) -> list[dict]:
    """~60 visitors over both sites, returning across days, in bursts whose gaps straddle
    the session timeout; custom events, UTM urls, external and self referrers."""
    rng = random.Random(seed)
    lo = datetime(2026, 3, 6, 20, tzinfo=UTC)
    span = (datetime(2026, 3, 10, 16, tzinfo=UTC) - lo).total_seconds()
    referrers = [None, None, "https://www.google.com/search?q=x", "https://news.ycombinator.com/",
                 "https://t.co/abc", "SELF", "SELF_WWW"]
    queries = ["", "", "", "?utm_source=news&utm_medium=email&utm_campaign=spring",
               "?utm_source=ads&utm_campaign=b%20c", "?x=1"]
    out: list[dict] = []
    while len(out) < n:
        site = rng.choice([10, 10, 20])
        visitor = f"v{rng.randrange(60)}"
        t = lo + timedelta(seconds=rng.random() * span)
        for _ in range(rng.choice([1, 1, 2, 3, 5, 8])):
            ref = rng.choice(referrers)
            if ref == "SELF":
                ref = f"https://{SITE_DOMAIN[site]}/p/1"
            elif ref == "SELF_WWW":
                ref = f"https://www.{SITE_DOMAIN[site]}/"
            out.append(web_event(
                len(out), site, visitor, t, rng.choice(["pageview"] * 4 + ["signup", "click"]),
                f"/p/{rng.randrange(6)}", rng.choice(queries), ref,
                rng.choice([CHROME, IPHONE]), rng.choice(["US", "NP", None])))
            # gaps around the 30-minute timeout, microseconds included
            t += rng.choice([timedelta(seconds=rng.random() * 600),
                             timedelta(minutes=29, seconds=rng.random() * 120),
                             timedelta(hours=rng.random() * 5)])
    return out[:n]


# --- the brute force ------------------------------------------------------------------


@dataclass
class Ev:
    site: int
    visitor: str
    at: datetime  # aware UTC
    id: str
    pageview: bool
    page: str
    referrer: str  # host, "(direct)" when none or the site itself
    visit: int = -1


def _host(ref: str | None, site: int) -> str:
    host = (urlsplit(ref).hostname or "") if ref else ""
    host = host.lower().removeprefix("www.")
    own = SITE_DOMAIN[site]
    if not host or host == own or host.endswith("." + own):
        return "(direct)"
    return host


class Brute:
    """Independent definitions: visits per (site, visitor) cut by a gap over 30 minutes
    or the site's local midnight; a visit counts where it starts."""

    def __init__(self, rows: list[dict]):
        self.events: dict[int, list[Ev]] = defaultdict(list)
        for r in rows:
            at = r["occurred_at"].replace(tzinfo=UTC)
            self.events[r["site_id"]].append(Ev(
                r["site_id"], r["visitor_id"], at, r["id"], r["name"] == "pageview",
                urlsplit(r["url"]).path or "/", _host(r["referrer"], r["site_id"])))
        self.visits: dict[int, list[list[Ev]]] = {}
        self.first_seen: dict[int, dict[str, datetime]] = {}
        for site, evs in self.events.items():
            tz = ZoneInfo(SITE_TZ[site])
            evs.sort(key=lambda e: (e.visitor, e.at, e.id))
            visits: list[list[Ev]] = []
            prev = None
            for e in evs:
                if (prev is None or prev.visitor != e.visitor or e.at - prev.at > GAP
                        or e.at.astimezone(tz).date() != prev.at.astimezone(tz).date()):
                    visits.append([])
                e.visit = len(visits) - 1
                visits[-1].append(e)
                prev = e
            self.visits[site] = visits
            first: dict[str, datetime] = {}
            for e in evs:
                first[e.visitor] = min(first.get(e.visitor, e.at), e.at)
            self.first_seen[site] = first

    def totals(self, site: int, a: datetime, b: datetime) -> dict:
        inside = [e for e in self.events[site] if a <= e.at < b]
        visitors = {e.visitor for e in inside}
        started = [v for v in self.visits[site] if a <= v[0].at < b]
        n = len(started)
        return {
            "visitors": len(visitors),
            "new_visitors": sum(a <= self.first_seen[site][v] < b for v in visitors),
            "visits": n, "pageviews": sum(e.pageview for e in inside), "events": len(inside),
            "bounce_rate": sum(len(v) == 1 for v in started) / n if n else None,
            "visit_duration_seconds": sum((v[-1].at - v[0].at).total_seconds()
                                          for v in started) / n if n else None,
        }

    def breakdown(self, site: int, a: datetime, b: datetime, dim: str) -> dict:
        """{value: (visitors, visits, events)} for ``page`` (an event's own value) or
        ``referrer`` (the value of the visit's first event)."""
        visits = self.visits[site]

        def values(e: Ev) -> set[str]:
            return {e.page} if dim == "page" else {visits[e.visit][0].referrer}

        who, evs, vis = defaultdict(set), defaultdict(int), defaultdict(int)
        for e in self.events[site]:
            if a <= e.at < b:
                for v in values(e):
                    who[v].add(e.visitor)
                    evs[v] += 1
        for v in visits:
            if a <= v[0].at < b:
                for x in set().union(*(values(e) for e in v)):
                    vis[x] += 1
        return {x: (len(who[x]), vis[x], evs[x]) for x in set(who) | set(vis)}


def local_bounds(a: datetime, b: datetime, tz: str, by: str) -> list[tuple[datetime, datetime]]:
    """The buckets of [a, b): local midnights (and, by hour, every whole hour after them)
    inside the range, computed with zoneinfo directly."""
    z = ZoneInfo(tz)
    cuts = set()
    d = a.astimezone(z).date() - timedelta(days=1)
    while d <= b.astimezone(z).date() + timedelta(days=1):
        m0 = datetime(d.year, d.month, d.day, tzinfo=z).astimezone(UTC)
        nd = d + timedelta(days=1)
        m1 = datetime(nd.year, nd.month, nd.day, tzinfo=z).astimezone(UTC)
        cuts.add(m0)
        if by == "hour":
            t = m0
            while t < m1:
                cuts.add(t)
                t += timedelta(hours=1)
        d = nd
    inner = sorted(c for c in cuts if a < c < b)
    edges = [a, *inner, b]
    return list(zip(edges[:-1], edges[1:], strict=True))


def assert_numbers(got: dict, want: dict, where: str) -> None:
    for k, v in want.items():
        if v is None or isinstance(v, float):
            assert got[k] == pytest.approx(v, abs=1e-6), (where, k, got, want)
        else:
            assert got[k] == v, (where, k, got, want)


# --- the pipeline through Dagster ------------------------------------------------------


class Web:
    def __init__(self, tmp_path, warehouse_url: str, instance, events: list[dict]):
        self.source_url = f"sqlite:///{tmp_path / 'app.db'}"
        self.warehouse_url = warehouse_url
        self.landing = str(tmp_path / "landing")
        self.instance = instance
        self.events = list(events)
        write_source(self.source_url, ACCOUNTS, [])
        write_web_source(self.source_url, SITES, self.events)

    @property
    def resources(self) -> dict:
        return {"source_db": SourceDatabase(url=self.source_url),
                "warehouse": Warehouse(url=self.warehouse_url),
                "landing": Landing(uri=self.landing),
                "settings": PipelineSettings(default_timezone="UTC", start_date="2024-01-01"),
                "web": WebSettings()}

    def materialize_all(self):
        r = materialize([accounts], instance=self.instance, resources=self.resources)
        assert r.success
        results = []
        for tz in (NY, KTM):
            r = materialize([raw_web_events, web_rollups], instance=self.instance,
                            resources=self.resources,
                            tags={"dagster/asset_partition_range_start": f"{FIRST_DAY}|{tz}",
                                  "dagster/asset_partition_range_end": f"{LAST_DAY}|{tz}"})
            assert r.success
            results.append(r)
        return results

    def materialize_key(self, key):
        r = materialize([raw_web_events, web_rollups], instance=self.instance,
                        resources=self.resources, partition_key=key)
        assert r.success
        return r

    def add_events(self, events: list[dict]) -> None:
        write_web_source(self.source_url, [], events, fresh=False)
        self.events.extend(events)

    def engine(self):
        return wh.make_engine(self.warehouse_url)

    def stats(self, site, a, b, **kw):
        e = self.engine()
        try:
            return web_stats(e, LandingStore(self.landing), site, a, b, **kw)
        finally:
            e.dispose()

    def valid_events(self) -> list[dict]:
        return [r for r in self.events if r["visitor_id"] and r["name"]
                and r["url"].startswith("https://")]

    def table(self, table: sa.Table) -> list[dict]:
        e = self.engine()
        try:
            cols = [c for c in table.c if c.name not in ("updated_at", "detected_at", "id")]
            with e.connect() as conn:
                rows = conn.execute(sa.select(*cols)).mappings().all()
            return sorted((dict(r) for r in rows), key=lambda r: [str(v) for v in r.values()])
        finally:
            e.dispose()


def random_ranges(rng: random.Random, n: int) -> list[tuple[datetime, datetime]]:
    lo = datetime(2026, 3, 6, 23, tzinfo=UTC)
    out = []
    for i in range(n):
        a = lo + timedelta(seconds=rng.randrange(3 * 86400 + 12 * 3600),
                           microseconds=rng.randrange(10**6) if i % 3 else 0)
        length = rng.choice([timedelta(minutes=rng.randrange(1, 50)),
                             timedelta(seconds=rng.randrange(3600, 6 * 3600)),
                             timedelta(seconds=rng.randrange(20 * 3600, 3 * 86400)),
                             timedelta(seconds=rng.random() * 86400)])
        out.append((a, a + length))
    # aligned ones too: whole local days and hours of both sites, mixed with a partial edge
    ny8 = datetime(2026, 3, 8, tzinfo=ZoneInfo(NY)).astimezone(UTC)
    ny9 = datetime(2026, 3, 9, tzinfo=ZoneInfo(NY)).astimezone(UTC)
    ktm8 = datetime(2026, 3, 8, tzinfo=ZoneInfo(KTM)).astimezone(UTC)
    out += [(ny8, ny9), (ny8 - timedelta(hours=3), ny9 + timedelta(minutes=17, seconds=1)),
            (ktm8, ktm8 + timedelta(days=2)), (ktm8 + timedelta(hours=5), ktm8 + timedelta(
                hours=29, minutes=59, microseconds=1))]
    return out


@pytest.fixture
def web(tmp_path, warehouse_url, instance) -> Web:
    w = Web(tmp_path, warehouse_url, instance, random_events())
    w.materialize_all()
    return w


def test_random_ranges_equal_brute_force(web):
    brute = Brute(web.valid_events())
    rng = random.Random(4)
    ranges = random_ranges(rng, 44)
    for i, (a, b) in enumerate(ranges):
        for site in (10, 20):
            by = ("hour", "day", None)[i % 3] if i % 2 == 0 else None
            dim = ("page", "referrer")[i % 4 // 2] if i % 5 in (0, 1) else None
            got = web.stats(site, a, b, by=by, breakdown=dim, limit=1000)
            where = f"site {site} [{a.isoformat()}, {b.isoformat()})"
            assert set(got.as_dict()) == TOTAL_KEYS | ({"series"} if by else set()) | (
                {"breakdown"} if dim else set()), where
            assert_numbers(got.totals, brute.totals(site, a, b), where)
            if by:
                buckets = local_bounds(a, b, SITE_TZ[site], by)
                series = got.as_dict()["series"]  # missing rates: None, not NaN
                assert [datetime.fromisoformat(r["start"]) for r in series] == [
                    x for x, _ in buckets], where
                assert len(got.series) == len(series)
                for r, (x, y) in zip(series, buckets, strict=True):
                    assert_numbers(r, brute.totals(site, x, y), f"{where} bucket {x}")
            if dim:
                want = brute.breakdown(site, a, b, dim)
                rows = got.breakdown.to_dict("records")
                assert {r["value"]: (r["visitors"], r["visits"], r["events"])
                        for r in rows} == want, (where, dim)
                assert [r["visitors"] for r in rows] == sorted(
                    (r["visitors"] for r in rows), reverse=True)
    # the ranges did exercise what they were meant to
    whole = brute.totals(10, datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC))
    assert whole["visitors"] > 30 and whole["bounce_rate"] not in (0, 1)
    assert brute.breakdown(20, datetime(2026, 3, 6, tzinfo=UTC),
                           datetime(2026, 3, 11, tzinfo=UTC), "referrer").keys() >= {
        "(direct)", "google.com", "t.co"}


def test_breakdown_limit_keeps_the_top_values(web):
    a, b = datetime(2026, 3, 7, 7, 31, tzinfo=UTC), datetime(2026, 3, 9, 2, 2, tzinfo=UTC)
    full = web.stats(10, a, b, breakdown="page", limit=100).breakdown
    top = web.stats(10, a, b, breakdown="page", limit=3).breakdown
    assert len(full) > 3
    assert top.to_dict("records") == full.head(3).to_dict("records")


# --- session boundaries ----------------------------------------------------------------


def test_session_timeout_and_local_midnight_through_the_pipeline(tmp_path, warehouse_url,
                                                                 instance):
    t = datetime(2026, 3, 7, 15, tzinfo=UTC)  # 10:00 in New York
    midnight = datetime(2026, 3, 8, tzinfo=ZoneInfo(NY)).astimezone(UTC)
    events = [
        web_event(1, 10, "one", t), web_event(2, 10, "one", t + timedelta(minutes=29, seconds=59)),
        web_event(3, 10, "two", t), web_event(4, 10, "two", t + timedelta(minutes=30, seconds=1)),
        web_event(5, 10, "late", midnight - timedelta(minutes=10)),
        web_event(6, 10, "late", midnight + timedelta(minutes=10)),
    ]
    w = Web(tmp_path, warehouse_url, instance, events)
    w.materialize_all()
    day = w.stats(10, t - timedelta(hours=1), t + timedelta(hours=1))
    assert day.totals["visits"] == 3 and day.totals["visitors"] == 2
    assert day.totals["bounce_rate"] == pytest.approx(2 / 3)
    assert day.totals["visit_duration_seconds"] == pytest.approx(1799 / 3)
    # a visit crossing local midnight counts on both days
    around = w.stats(10, midnight - timedelta(hours=1), midnight + timedelta(hours=1), by="day")
    assert around.totals["visits"] == 2 and around.totals["visitors"] == 1
    assert [r["visits"] for r in around.series.to_dict("records")] == [1, 1]
    assert [r["start"] for r in around.series.to_dict("records")] == [
        midnight - timedelta(hours=1), midnight]
    assert around.totals["bounce_rate"] == 1.0
    brute = Brute(events)
    for a, b in [(t, t + timedelta(minutes=30)), (t + timedelta(seconds=1), midnight),
                 (midnight - timedelta(minutes=10), midnight + timedelta(minutes=10))]:
        assert_numbers(w.stats(10, a, b).totals, brute.totals(10, a, b), f"[{a}, {b})")


# --- late events -----------------------------------------------------------------------


def evaluate(w: Web, cursor, now: datetime, monkeypatch):
    monkeypatch.setattr(web_sensors, "_utcnow", lambda: now)
    ctx = build_sensor_context(instance=w.instance, cursor=cursor, resources={
        "source_db": SourceDatabase(url=w.source_url),
        "warehouse": Warehouse(url=w.warehouse_url), "web": WebSettings()})
    return late_web_events_sensor(ctx)


def test_late_event_is_requested_and_changes_the_range_by_exactly_itself(
        web, monkeypatch):
    now = datetime.now(UTC)
    first = evaluate(web, None, now, monkeypatch)
    assert not first.run_requests and first.cursor  # the first tick starts from the present
    # an existing visitor, earlier than any of its events: a late event also makes them new
    # earlier; in Kathmandu's partition of 2026-03-08 (an hour starting at :15 UTC)
    brute_before = Brute(web.valid_events())
    visitor = max(brute_before.first_seen[20], key=brute_before.first_seen[20].get)
    at = datetime(2026, 3, 8, 6, 40, 12, 345678, tzinfo=UTC)  # 12:25:12 in Kathmandu
    assert brute_before.first_seen[20][visitor] > at
    late = web_event(99_999, 20, visitor, at, page="/late")
    late["received_at"] = naive(now) + timedelta(seconds=5)
    web.add_events([late])
    tick = evaluate(web, first.cursor, now + timedelta(minutes=3), monkeypatch)
    [request] = tick.run_requests
    assert request.partition_key == "2026-03-08|Asia/Kathmandu"
    assert request.tags["analytics/timezone"] == KTM
    assert request.run_key and "2026-03-08|Asia/Kathmandu" in request.run_key
    nothing = evaluate(web, tick.cursor, now + timedelta(minutes=6), monkeypatch)
    assert not nothing.run_requests

    a, b = datetime(2026, 3, 7, 23, 7, tzinfo=UTC), datetime(2026, 3, 9, 1, 3, 30, tzinfo=UTC)
    before = web.stats(20, a, b, by="hour").totals
    web.materialize_key(request.partition_key)
    after = web.stats(20, a, b, by="hour")
    brute = Brute(web.valid_events())
    assert_numbers(after.totals, brute.totals(20, a, b), "after the late event")
    assert after.totals["events"] == before["events"] + 1
    assert after.totals["pageviews"] == before["pageviews"] + 1
    assert after.totals["visitors"] >= before["visitors"]
    for r in after.as_dict()["series"]:
        assert all(v is None or v >= 0 for k, v in r.items() if k != "start")
    e = web.engine()
    try:
        with e.connect() as conn:
            for table in (web_hourly_rollups, web_daily_rollups):
                c = table.c
                assert conn.execute(sa.select(sa.func.count()).where(sa.or_(
                    c.events < 0, c.visits < 0, c.visitors < 0, c.new_visitors < 0,
                    c.bounces < 0, c.duration_seconds < 0, c.pageviews < 0))).scalar() == 0
    finally:
        e.dispose()


def test_late_event_in_new_york_requests_only_its_local_day(web, monkeypatch):
    now = datetime.now(UTC)
    first = evaluate(web, None, now, monkeypatch)
    # 2026-03-09 02:00 UTC is 2026-03-08 22:00 in New York: one partition, not the UTC date's
    late = web_event(99_998, 10, "v1", datetime(2026, 3, 9, 2, tzinfo=UTC))
    late["received_at"] = naive(now) + timedelta(seconds=1)
    web.add_events([late])
    tick = evaluate(web, first.cursor, now + timedelta(minutes=3), monkeypatch)
    assert [r.partition_key for r in tick.run_requests] == ["2026-03-08|America/New_York"]


# --- retention -------------------------------------------------------------------------


def test_retention_falls_back_to_whole_days_and_says_so(web):
    e = web.engine()
    try:
        with e.connect() as conn:
            daily = conn.execute(sa.select(sa.func.count()).select_from(
                web_daily_rollups)).scalar()
        today = date(2026, 6, 30)
        r = enforce_web_retention(e, LandingStore(web.landing), today, 90, 90)
        assert r.hourly_rows_deleted > 0 and r.landed_dates_dropped
        with e.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(
                web_hourly_rollups)).scalar() == 0
            assert conn.execute(sa.select(sa.func.count()).select_from(
                web_daily_rollups)).scalar() == daily
    finally:
        e.dispose()
    a, b = datetime(2026, 3, 8, 14, 20, 5, tzinfo=UTC), datetime(2026, 3, 8, 16, 40, tzinfo=UTC)
    got = web.stats(10, a, b)
    day = (datetime(2026, 3, 8, tzinfo=ZoneInfo(NY)).astimezone(UTC),
           datetime(2026, 3, 9, tzinfo=ZoneInfo(NY)).astimezone(UTC))
    assert_numbers(got.totals, Brute(web.valid_events()).totals(10, *day), "whole day")
    assert got.notes and all("2026-03-08" in n and "whole day" in n for n in got.notes)
    assert got.as_dict()["notes"] == got.notes


# --- re-runs, checks, quarantine --------------------------------------------------------


def test_rerun_is_idempotent_checks_pass_and_bad_events_are_quarantined_once(
        tmp_path, warehouse_url, instance):
    t = datetime(2026, 3, 8, 16, tzinfo=UTC)
    events = random_events(seed=3, n=300)
    bad = [web_event(90_001, 10, None, t), web_event(90_002, 10, "v1", t, name=""),
           {**web_event(90_003, 20, "v2", t), "url": "not a url"}]
    w = Web(tmp_path, warehouse_url, instance, events + bad)
    results = w.materialize_all()
    for r in results:
        checks = {c.check_name: c.passed for c in r.get_asset_check_evaluations()}
        assert checks == dict.fromkeys(WEB_CHECKS, True)
    tables = {t.name: w.table(t) for t in (web_hourly_rollups, web_daily_rollups,
                                            web_visitors, wh.quarantine)}
    assert tables["web_hourly_rollups"] and tables["web_daily_rollups"]
    quarantined = [(q["event_id"], q["reason"]) for q in tables["quarantine"]
                   if q["source"] == WEB_SOURCE]
    assert sorted(quarantined) == [("e90001", REASON_MISSING_VISITOR), ("e90002", REASON_NAME),
                                   ("e90003", REASON_URL)]
    w.materialize_all()
    w.materialize_key(f"2026-03-08|{NY}")
    for table in (web_hourly_rollups, web_daily_rollups, web_visitors, wh.quarantine):
        assert w.table(table) == tables[table.name], table.name
    a, b = datetime(2026, 3, 7, 1, tzinfo=UTC), datetime(2026, 3, 10, 1, tzinfo=UTC)
    assert_numbers(w.stats(10, a, b).totals, Brute(w.valid_events()).totals(10, a, b), "rerun")


# --- the CLI ---------------------------------------------------------------------------


def test_cli_web_stats_json_and_errors(web, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANALYTICS_LANDING_URI", web.landing)
    # the data is of March 2026, over 90 days ago: as long as the retention job has not
    # deleted its hours, the read is still exact (expiry is decided by what is stored)
    url = web.warehouse_url
    base = ["web-stats", "--warehouse-url", url, "--site", "10"]
    a, b = "2026-03-07T10:30:00-05:00", "2026-03-09T06:10:30Z"
    assert main([*base, "--from", a, "--to", b, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == TOTAL_KEYS
    start, end = datetime.fromisoformat(a), datetime.fromisoformat(b.replace("Z", "+00:00"))
    assert_numbers(out, Brute(web.valid_events()).totals(10, start, end), "cli")
    assert 0 <= out["bounce_rate"] <= 1 and isinstance(out["visitors"], int)
    assert datetime.fromisoformat(out["from"]) == start
    assert main([*base, "--from", a, "--to", b, "--json", "--by", "hour", "--breakdown",
                 "page", "--limit", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == TOTAL_KEYS | {"series", "breakdown"}
    assert len(out["breakdown"]) == 2
    for r in out["series"]:
        assert isinstance(r["visitors"], int) and isinstance(r["start"], str)
        assert r["bounce_rate"] is None or 0 <= r["bounce_rate"] <= 1
    assert sum(r["events"] for r in out["series"]) == out["events"]
    # text output
    assert main([*base, "--from", a, "--to", b, "--by", "day", "--breakdown", "referrer"]) == 0
    assert "visitors" in capsys.readouterr().out

    for args, what in [
        (["web-stats", "--warehouse-url", url, "--site", "777", "--from", a, "--to", b],
         "site 777"),
        ([*base, "--from", b, "--to", a], "empty range"),
        ([*base, "--from", a, "--to", a], "empty range"),
        ([*base, "--from", a, "--to", b, "--breakdown", "page", "--limit", "-1"], "--limit"),
        ([*base, "--from", a, "--to", b, "--breakdown", "colour"], "unknown breakdown"),
    ]:
        assert main(args) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and what in err, err

    missing = tmp_path / "nowhere" / "wh.db"
    assert main(["web-stats", "--warehouse-url", f"sqlite:///{missing}", "--site", "10",
                 "--from", a, "--to", b]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and f"sqlite:///{missing}" in err
    assert not (tmp_path / "nowhere").exists()


# --- the read's queries ------------------------------------------------------------------


def test_web_stats_queries_do_not_grow_with_buckets_or_values(web):
    e = web.engine()
    statements: list[str] = []
    sa.event.listen(e, "before_cursor_execute",
                    lambda *args: statements.append(args[2]))
    try:
        def count(a, b):
            statements.clear()
            web_stats(e, LandingStore(web.landing), 10, a, b, by="hour", breakdown="page")
            return len(statements)

        a = datetime(2026, 3, 7, 7, 31, tzinfo=UTC)
        short = count(a, a + timedelta(days=2, minutes=7))  # edges in two landed days
        # 30 days by hour (720 buckets) with every page: edges in days without landings
        month = count(a - timedelta(days=15), a + timedelta(days=15, minutes=7))
    finally:
        e.dispose()
    # the site; which days still have daily and hourly rows (retention); daily and hourly
    # rows for the series; for the breakdown, daily and hourly sums and sets; first seen;
    # the visitors of each edge day's landed events (read once for both)
    assert short == 12 and month <= short, [s[:90] for s in statements]


def test_late_partitions_are_the_local_days_of_the_received_events(source_url):
    from analytics_pipeline.core.partitions import LocalDay
    from analytics_pipeline.web.late import late_partitions, received_dates

    write_source(source_url, ACCOUNTS, [])
    got = datetime(2026, 11, 30, 12)  # received
    rows = [web_event(1, 10, "a", datetime(2026, 3, 9, 2, tzinfo=UTC)),  # NY 03-08 22:00
            web_event(2, 20, "b", datetime(2026, 3, 8, 18, 14, 59, tzinfo=UTC)),  # KTM 03-08
            web_event(3, 20, "b", datetime(2026, 3, 8, 18, 15, tzinfo=UTC)),  # KTM 03-09
            web_event(4, 10, "c", datetime(2026, 3, 10, 12, tzinfo=UTC))]  # received earlier
    for r in rows[:3]:
        r["received_at"] = got
    write_web_source(source_url, SITES, rows)
    received = received_dates(source_url, got - timedelta(minutes=1), got)
    assert sorted((s, d) for s, d, _, _ in received) == [(10, date(2026, 3, 9)),
                                                         (20, date(2026, 3, 8))]
    assert late_partitions(received, SITE_TZ) == [
        LocalDay(date(2026, 3, 8), NY), LocalDay(date(2026, 3, 8), KTM),
        LocalDay(date(2026, 3, 9), KTM)]
