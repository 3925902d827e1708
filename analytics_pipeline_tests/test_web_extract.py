"""The web source's extraction: visits, local hours, dimensions, de-duplication, and the
landed partition end to end (SQLite and PostgreSQL sources)."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay, resolve_account_timezones
from analytics_pipeline.core.warehouse import make_engine
from analytics_pipeline.web import compute
from analytics_pipeline.web.contract import LANDED_WEB_SCHEMA, WEB_SOURCE, src_sites
from analytics_pipeline.web.source import WebEventsSource
from analytics_pipeline.web.steps import extract_web_partition

NY = "America/New_York"
DAY = LocalDay(date(2026, 2, 11), NY)  # UTC [2026-02-11T05:00, 2026-02-12T05:00)
SITES = compute.SITES_SCHEMA
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
IPAD = ("Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/16.0 Mobile/15E148 Safari/604.1")
DESKTOP = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
           "Gecko) Chrome/120.0.0.0 Safari/537.36")
BOT = "Googlebot/2.1 (+http://www.google.com/bot.html)"


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=timezone.utc)


def ev(id_: str, at: str, visitor: str = "v1", site: object = 10, **kw) -> dict:
    """A web_events row as the application writes it (naive UTC text)."""
    return {"id": id_, "site_id": site, "visitor_id": visitor, "name": kw.pop("name",
            "pageview"), "url": kw.pop("url", "https://example.com/"),
            "referrer": kw.pop("referrer", None), "user_agent": kw.pop("user_agent", None),
            "country": kw.pop("country", None), "occurred_at": at,
            "received_at": kw.pop("received_at", at), **kw}


def land(rows: list[dict], day: LocalDay = DAY, domain: str = "example.com",
         timeout: float = 1800) -> list[dict]:
    """``rows`` through conversion, de-duplication and landing, as plain dicts."""
    as_text = [{k: None if v is None else str(v) for k, v in r.items()} for r in rows]
    read = compute.convert_batch(pa.Table.from_pylist(
        as_text, schema=pa.schema([(c, pa.string()) for c in compute.SOURCE_COLUMNS])))
    read = read.filter(pa.array(compute.first_of_each_id(read["event_id"])))
    sites = pa.table({"id": [10, 11], "account_id": [1, 1], "domain": [domain, "other.org"],
                      "active": [True, True]}, schema=SITES)
    out = compute.land_web_events(read, sites, day.start_utc, timeout)
    batches = list(compute.landed_slices(out, rows=2))  # several slices, decoded per slice
    assert all(b.schema == LANDED_WEB_SCHEMA for b in batches)
    return pa.Table.from_batches(batches, LANDED_WEB_SCHEMA).to_pylist()


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["event_id"]: r for r in rows}


# --- visits -----------------------------------------------------------------------------


@pytest.mark.parametrize(("gap", "visits"), [("12:29:59", 1), ("12:30:00", 1),
                                             ("12:30:01", 2)])
def test_session_timeout_boundary(gap, visits):
    rows = by_id(land([ev("a", "2026-02-11 12:00:00"), ev("b", f"2026-02-11 {gap}")]))
    assert len({r["visit_id"] for r in rows.values()}) == visits
    if visits == 1:
        assert rows["b"]["visit_events"] == 2
        assert rows["a"]["visit_duration_seconds"] == (utc(f"2026-02-11 {gap}")
                                                      - utc("2026-02-11 12:00:00")).seconds
    else:
        assert (rows["a"]["visit_events"], rows["b"]["visit_events"]) == (1, 1)
        assert rows["b"]["visit_start"] == utc(f"2026-02-11 {gap}")


def test_visits_by_site_and_visitor_with_entry_and_exit_pages():
    rows = by_id(land([
        ev("a3", "2026-02-11 12:20:00", url="https://example.com/c"),
        ev("a1", "2026-02-11 12:00:00", url="https://example.com/a?x=1"),
        ev("a2", "2026-02-11 12:10:00", url="https://example.com/b#top"),
        ev("b1", "2026-02-11 12:05:00", visitor="v2"),
        ev("c1", "2026-02-11 12:05:00", site=11, url="https://other.org/"),
        # same instant: the event id decides the order
        ev("d2", "2026-02-11 13:00:00", visitor="v3", url="https://example.com/second"),
        ev("d1", "2026-02-11 13:00:00", visitor="v3", url="https://example.com/first"),
    ]))
    a = rows["a2"]
    assert (a["visit_events"], a["visit_duration_seconds"]) == (3, 1200.0)
    assert (a["entry_page"], a["exit_page"], a["visit_start"]) == (
        "/a", "/c", utc("2026-02-11 12:00:00"))
    assert rows["b1"]["visit_id"] != a["visit_id"] != rows["c1"]["visit_id"]
    # numbered 0.. in (site, visitor, time) order
    assert [rows[i]["visit_id"] for i in ("a1", "b1", "d1", "c1")] == [0, 1, 2, 3]
    assert (rows["d2"]["entry_page"], rows["d2"]["exit_page"]) == ("/first", "/second")


def test_a_visit_ends_at_local_midnight(tmp_path):
    # 23:50 and 00:10 New York time, 20 minutes apart: one partition each, two visits
    src, engine, store = pipeline(tmp_path, [ev("late", "2026-02-12 04:50:00"),
                                             ev("early", "2026-02-12 05:10:00")])
    for day, expected in ((DAY, "late"), (LocalDay(date(2026, 2, 12), NY), "early")):
        result = extract_web_partition(src, store, engine, day, "UTC")
        assert (result.rows, result.visits) == (1, 1)
        landed = store.read_partition(WEB_SOURCE, day, LANDED_WEB_SCHEMA).to_pylist()
        assert [(r["event_id"], r["visit_events"]) for r in landed] == [(expected, 1)]


# --- local hours ------------------------------------------------------------------------


def test_hours_of_the_23_hour_spring_forward_day():
    day = LocalDay(date(2026, 3, 8), NY)  # 05:00Z → 04:00Z next day
    rows = by_id(land([ev("first", "2026-03-08 05:00:00"),
                       ev("est", "2026-03-08 06:59:59", visitor="v2"),
                       ev("edt", "2026-03-08 07:30:00", visitor="v3"),  # 03:30 EDT
                       ev("last", "2026-03-09 03:59:59", visitor="v4")], day=day))
    assert rows["first"]["hour_start"] == utc("2026-03-08 05:00:00")
    assert rows["est"]["hour_start"] == utc("2026-03-08 06:00:00")
    assert rows["edt"]["hour_start"] == utc("2026-03-08 07:00:00")
    assert rows["last"]["hour_start"] == utc("2026-03-09 03:00:00")
    assert (rows["last"]["hour_start"] - day.start_utc) / timedelta(hours=1) + 1 == 23


def test_hours_of_the_25_hour_fall_back_day():
    day = LocalDay(date(2026, 11, 1), NY)  # 04:00Z → 05:00Z next day
    rows = by_id(land([ev("edt", "2026-11-01 05:30:00"),  # 01:30 EDT
                       ev("est", "2026-11-01 06:30:00", visitor="v2"),  # 01:30 EST
                       ev("last", "2026-11-02 04:59:59", visitor="v3")], day=day))
    assert rows["edt"]["hour_start"] == utc("2026-11-01 05:00:00")
    assert rows["est"]["hour_start"] == utc("2026-11-01 06:00:00")
    assert (rows["last"]["hour_start"] - day.start_utc) / timedelta(hours=1) + 1 == 25


def test_kathmandu_hours_start_at_quarter_past():
    day = LocalDay(date(2026, 2, 11), "Asia/Kathmandu")  # starts 2026-02-10T18:15Z
    rows = by_id(land([ev("a", "2026-02-10 18:15:00"), ev("b", "2026-02-11 06:14:59",
                                                         visitor="v2")], day=day))
    assert rows["a"]["hour_start"] == utc("2026-02-10 18:15:00")
    assert rows["b"]["hour_start"] == utc("2026-02-11 05:15:00")


# --- dimensions -------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["example.com", "www.example.com", "Example.COM"])
def test_self_referral_is_direct_and_foreign_hosts_are_kept(domain):
    refs = {
        "own": "https://example.com/pricing", "www": "http://www.example.com/",
        "sub": "https://blog.example.com/post?a=1", "lookalike": "https://notexample.com/",
        "foreign": "https://www.Google.com/search?q=x", "port": "https://news.ycombinator.com:443/item",
        "none": None, "garbage": "not a url", "other_site": "https://other.org/",
    }
    rows = by_id(land([ev(k, "2026-02-11 12:00:00", visitor=k, referrer=v)
                       for k, v in refs.items()], domain=domain))
    got = {k: rows[k]["referrer"] for k in refs}
    assert got == {"own": None, "www": None, "sub": None, "lookalike": "notexample.com",
                   "foreign": "google.com", "port": "news.ycombinator.com", "none": None,
                   "garbage": None, "other_site": "other.org"}


def test_a_site_does_not_own_another_sites_domain():
    rows = by_id(land([ev("ten", "2026-02-11 12:00:00", referrer="https://other.org/x"),
                       ev("eleven", "2026-02-11 12:00:00", site=11, url="https://other.org/",
                          referrer="https://example.com/")]))
    assert (rows["ten"]["referrer"], rows["eleven"]["referrer"]) == ("other.org",
                                                                      "example.com")


def test_pages_and_utm_parameters():
    urls = {
        "all": "https://example.com/shop/item?utm_source=news%20letter&utm_medium=e+mail"
               "&utm_campaign=spring%2D26%E2%9C%93#reviews",
        "bare": "https://example.com",
        "none": "https://example.com/a/b?ref=1#x",
        "empty": "https://example.com/?utm_source=&xutm_medium=m&utm_campaign=c",
        "fragment": "https://example.com/p#?utm_source=no",
        "first": "http://example.com:8080/?utm_source=a&utm_source=b",
    }
    rows = by_id(land([ev(k, "2026-02-11 12:00:00", visitor=k, url=u)
                       for k, u in urls.items()]))
    got = {k: (r["page"], r["utm_source"], r["utm_medium"], r["utm_campaign"])
           for k, r in rows.items()}
    assert got == {
        "all": ("/shop/item", "news letter", "e mail", "spring-26\u2713"),
        "bare": ("/", None, None, None),
        "none": ("/a/b", None, None, None),
        "empty": ("/", None, None, "c"),
        "fragment": ("/p", None, None, None),
        "first": ("/", "a", None, None),
    }


def test_user_agents_are_parsed_once_per_distinct_agent(monkeypatch):
    calls: list[str] = []
    real = compute.parse

    def counting(agent: str):
        calls.append(agent)
        return real(agent)

    monkeypatch.setattr(compute, "parse", counting)
    agents = [IPHONE, IPAD, DESKTOP, BOT, IPHONE, DESKTOP, IPHONE, None, ""]
    rows = land([ev(f"e{i}", "2026-02-11 12:00:00", visitor=f"v{i}", user_agent=a)
                 for i, a in enumerate(agents)])
    assert sorted(calls) == sorted({IPHONE, IPAD, DESKTOP, BOT})
    got = {r["event_id"]: (r["device"], r["browser"], r["os"]) for r in rows}
    assert got["e0"] == got["e4"] == ("mobile", "Mobile Safari", "iOS")
    assert got["e1"] == ("tablet", "Mobile Safari", "iOS")
    assert got["e2"] == ("desktop", "Chrome", "Windows")
    assert got["e3"][0] == "bot"
    assert got["e7"] == got["e8"] == (None, None, None)


def test_country_is_an_upper_case_code_or_null():
    values = {"a": "us", "b": " de ", "c": "USA", "d": "", "e": None, "f": "1x"}
    rows = by_id(land([ev(k, "2026-02-11 12:00:00", visitor=k, country=v)
                       for k, v in values.items()]))
    assert {k: rows[k]["country"] for k in values} == {"a": "US", "b": "DE", "c": None,
                                                       "d": None, "e": None, "f": None}


# --- de-duplication ---------------------------------------------------------------------


def test_duplicate_ids_keep_the_first_row():
    rows = land([ev("x", "2026-02-11 12:00:00", url="https://example.com/first"),
                 ev("y", "2026-02-11 12:01:00"),
                 ev("x", "2026-02-11 12:02:00", url="https://example.com/second")])
    assert sorted((r["event_id"], r["page"]) for r in rows) == [("x", "/first"), ("y", "/")]


def test_a_hash_collision_never_drops_a_distinct_id(monkeypatch):
    ids = pa.array(["a", "b", "a", None, None, "c", "b"])
    expected = [True, True, False, True, True, True, False]
    assert compute.first_of_each_id(ids).tolist() == expected
    # every id hashing alike: the strings decide
    monkeypatch.setattr(compute, "_hash64", lambda v: np.zeros(len(v), dtype=np.uint64))
    assert compute.first_of_each_id(ids).tolist() == expected


# --- end to end ---------------------------------------------------------------------------


def pipeline(tmp_path, events: list[dict], source_url: str | None = None):
    """A source with accounts 1 (New York, sites 10 and 11 inactive) and 2 (no timezone:
    UTC, site 20), site 40 of an account missing from the snapshot; its warehouse and
    landing."""
    url = source_url or f"sqlite:///{tmp_path / 'source.db'}"
    engine = make_engine(url)
    src_sites.drop(engine, checkfirst=True)
    sa.Table("web_events", src_sites.metadata).drop(engine, checkfirst=True)
    src_sites.metadata.create_all(engine, tables=[src_sites, src_sites.metadata.tables[
        "web_events"]])
    with engine.begin() as c:
        c.execute(src_sites.insert(), [
            {"id": 10, "account_id": 1, "domain": "example.com", "active": True},
            {"id": 11, "account_id": 1, "domain": "old.example.com", "active": False},
            {"id": 20, "account_id": 2, "domain": "utc.example", "active": True},
            {"id": 40, "account_id": 3, "domain": "gone.example", "active": True}])
        if events:
            # as text, as the application writes them
            c.execute(sa.text(f"INSERT INTO web_events ({', '.join(compute.SOURCE_COLUMNS)}) "
                              f"VALUES (:{', :'.join(compute.SOURCE_COLUMNS)})"), events)
    engine.dispose()
    warehouse = wh.make_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    wh.ensure_schema(warehouse)
    accounts = resolve_account_timezones(
        [{"id": 1, "name": "ny", "reporting_timezone": NY},
         {"id": 2, "name": "utc", "reporting_timezone": None}], "UTC")
    wh.replace_accounts(warehouse, [a.__dict__ for a in accounts])
    return WebEventsSource(url), warehouse, LandingStore(str(tmp_path / "landing"))


def test_extract_web_partition_lands_sites_of_the_timezone(tmp_path, source_url):
    events = [
        ev("a", "2026-02-11 12:00:00", url="https://example.com/x?utm_source=s",
           referrer="https://www.google.com/", user_agent=DESKTOP, country="fr"),
        ev("b", "2026-02-11 12:10:00", url="https://example.com/y", user_agent=DESKTOP),
        ev("c", "2026-02-11 12:00:00", visitor="v2", site=11),  # inactive site
        ev("d", "2026-02-11 12:00:00", site=20),  # UTC account
        ev("e", "2026-02-11 12:00:00", site=40),  # account not in the snapshot
        ev("f", "2026-02-11 12:00:00", site=99),  # no such site
        ev("g", "2026-02-12 05:00:00"),  # New York's next day
        ev("h", None, received_at="2026-02-11 06:00:00"),  # dated by its arrival
    ]
    src, engine, store = pipeline(tmp_path, events, source_url)

    ny = extract_web_partition(src, store, engine, DAY, "UTC")
    assert (ny.key, ny.rows, ny.invalid_rows, ny.duplicates_dropped, ny.sites, ny.accounts,
            ny.visits) == (DAY.key, 4, 2, 0, 2, 1, 1)
    assert ny.window == "2026-02-11T05:00:00+00:00 → 2026-02-12T05:00:00+00:00"
    landed = by_id(store.read_partition(WEB_SOURCE, DAY, LANDED_WEB_SCHEMA).to_pylist())
    assert {k: r["invalid_reason"] for k, r in landed.items()} == {
        "a": None, "b": None, "c": "inactive_site", "h": "unparseable_occurred_at"}
    a = landed["a"]
    assert (a["account_id"], a["page"], a["utm_source"], a["referrer"], a["device"],
            a["browser"], a["os"], a["country"], a["hour_start"], a["visit_events"],
            a["exit_page"]) == (1, "/x", "s", "google.com", "desktop", "Chrome", "Windows",
                                "FR", utc("2026-02-11 12:00:00"), 2, "/y")
    assert json.loads(landed["c"]["raw"])["site_id"] == 11
    meta = store.partition_meta(WEB_SOURCE, DAY)
    assert (meta["account_ids"], meta["site_ids"], meta["rows_read"], meta["invalid_rows"],
            meta["duplicates_dropped"]) == ([1], [10, 11], 4, 2, 0)
    assert (meta["window_start_utc"], meta["window_end_utc"]) == (
        "2026-02-11T05:00:00+00:00", "2026-02-12T05:00:00+00:00")

    # the default timezone's partition sweeps the events of no known site
    utc_day = LocalDay(date(2026, 2, 11), "UTC")
    swept = extract_web_partition(src, store, engine, utc_day, "UTC")
    landed = by_id(store.read_partition(WEB_SOURCE, utc_day, LANDED_WEB_SCHEMA).to_pylist())
    assert {k: r["invalid_reason"] for k, r in landed.items()} == {
        "d": None, "e": "unknown_site", "f": "unknown_site"}
    assert (swept.sites, swept.accounts, swept.invalid_rows) == (1, 1, 2)
    # elsewhere they are not read
    assert extract_web_partition(src, store, engine, utc_day, "Europe/Paris").rows == 1


def test_extract_counts_duplicates_of_an_unkeyed_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'loose.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE web_events ({', '.join(compute.SOURCE_COLUMNS)})")
        c.exec_driver_sql("CREATE TABLE sites (id, account_id, domain, active)")
        c.exec_driver_sql("INSERT INTO sites VALUES (10, 1, 'example.com', 1)")
        for e in [ev("x", "2026-02-11 12:00:00"), ev("x", "2026-02-11 13:00:00"),
                  ev("y", "2026-02-11 12:00:00")]:
            c.execute(sa.text("INSERT INTO web_events VALUES (:" + ", :".join(
                compute.SOURCE_COLUMNS) + ")"), e)
    engine.dispose()
    from analytics_pipeline.core.sources import ExtractStats

    stats = ExtractStats()
    t = WebEventsSource(url).extract(DAY, [10], stats=stats)
    assert sorted(t["event_id"].to_pylist()) == ["x", "y"]
    assert (stats.rows_read, stats.duplicates_dropped) == (3, 1)


# --- batch by batch -----------------------------------------------------------------------

# the landing of ``random_source()`` as the whole-partition landing wrote it before the
# landing was built batch by batch (rows as JSON, sorted keys)
RANDOM_LANDING_SHA256 = "dee89cd61026323459f202c789e71d5bd6935b8344a0d1c24dca82a54292627b"
RANDOM_SITES = pa.table({"id": [10, 11, 12], "account_id": [1, 1, 2],
                         "domain": ["example.com", "old.example.com", "www.shop.example"],
                         "active": [True, False, True]}, schema=SITES)


def random_source(n: int = 3000, seed: int = 5) -> pa.Table:
    """Seeded web_events rows as read (text): repeated ids, invalid rows of every kind,
    events tied on (site, visitor, second), agents, referrers and UTM parameters."""
    rng = np.random.default_rng(seed)

    def pick(values: list, p_none: float = 0.0) -> list:
        out = [values[i] for i in rng.integers(0, len(values), n)]
        return [None if r < p_none else v for v, r in zip(out, rng.random(n), strict=True)]

    ids = [f"e{i}" for i in rng.integers(0, int(n * 0.9), n)]
    ids = [None if r < 0.01 else "" if r < 0.015 else i
           for i, r in zip(ids, rng.random(n), strict=True)]
    start = datetime(2026, 2, 11, 4, 0)  # an hour before New York's day, to an hour after
    seconds = rng.integers(0, 26 * 3600, n) // 300 * 300  # coarse: ties
    occurred = [(start + timedelta(seconds=int(s))).isoformat(sep=" ") for s in seconds]
    occurred = [None if r < 0.01 else "2026-02-31 10:00:00" if r < 0.02 else o
                for o, r in zip(occurred, rng.random(n), strict=True)]
    received = [(start + timedelta(seconds=int(s) + int(d))).isoformat(sep=" ")
                for s, d in zip(seconds, rng.choice([0, 5, 90, -600], n,
                                                    p=[0.6, 0.3, 0.08, 0.02]), strict=True)]
    pages = ["/", "/a", "/b/c", "/p?utm_source=news&utm_medium=mail&utm_campaign=x%20y",
             "/q?utm_source=ads&utm_campaign=spring+sale", "/r?gclid=1#frag", "/s?utm_source="]
    urls = [f"https://{h}{p}" for h in ("example.com", "www.shop.example", "EXAMPLE.com")
            for p in pages] + ["ftp://example.com/", "not a url", "https://example.com/\x01"]
    return pa.table({
        "id": ids,
        "site_id": pick(["10", "10", "10", "11", "12", "12", "99", "x"], 0.01),
        "visitor_id": pick([f"v{i}" for i in range(40)] + ["", "v\x01"], 0.01),
        "name": pick(["pageview"] * 6 + ["click", "signup", "", "x" * 300], 0.01),
        "url": pick(urls[:21] * 3 + urls[21:], 0.01),
        "referrer": pick(["https://www.google.com/", "https://example.com/a",
                          "https://blog.shop.example/x", "android-app://com.x/", "junk"],
                         0.4),
        "user_agent": pick([IPHONE, IPAD, DESKTOP, BOT, ""], 0.1),
        "country": pick(["us", "DE", " fr ", "USA", ""], 0.1),
        "occurred_at": occurred, "received_at": received,
    }, schema=pa.schema([(c, pa.string()) for c in compute.SOURCE_COLUMNS]))


def landed_rows(landed, rows: int = 700) -> list[dict]:
    batches = list(compute.landed_slices(landed, rows=rows))
    return pa.Table.from_batches(batches, LANDED_WEB_SCHEMA).to_pylist()


@pytest.mark.parametrize("packed", [True, False], ids=["packed-key", "three-keys"])
def test_landing_batch_by_batch_lands_what_the_whole_partition_lands(monkeypatch, packed):
    if not packed:
        monkeypatch.setattr(compute, "_PACKED_BITS", 0)
    source = random_source()
    read = compute.convert_batch(source)
    read = read.filter(pa.array(compute.first_of_each_id(read["event_id"])))
    whole = landed_rows(compute.land_web_events(read, RANDOM_SITES, DAY.start_utc))
    builder = compute.LandingBuilder(RANDOM_SITES, DAY.start_utc)
    for lo in range(0, source.num_rows, 450):  # batches as read, each converted alone
        builder.add(compute.convert_batch(source.slice(lo, 450)))
    landed = builder.finish()
    assert landed.duplicates == source.num_rows - read.num_rows > 100
    assert landed.invalid_rows > 300 and landed.num_rows - landed.invalid_rows > 500
    assert landed_rows(landed) == whole
    digest = hashlib.sha256(json.dumps(whole, default=str, sort_keys=True).encode())
    assert digest.hexdigest() == RANDOM_LANDING_SHA256
