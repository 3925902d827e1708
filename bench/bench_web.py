"""Benchmark of the web-analytics source: one local day of N web events in a fresh
PostgreSQL source database, measured four ways in one run.

(a) this project: ``extract_web_partition`` (PostgreSQL → conversion, validation, UA
    parsing, sessionization → Parquet landing) then ``rollup_web_partition`` (visitor
    numbers, hourly and daily rollups of 13 dimensions with Roaring visitor sets, COPY
    into a PostgreSQL warehouse, checks), in a child process whose peak RSS is reported;
(b) the approach it replaces: each event applied on ingest as upserts of its visitor row,
    its session row and its rollup rows (site and page, hour and day, with a distinct
    visitor table) in PostgreSQL, a few statements per event, one transaction per event
    (and per batch of ``--upsert-batch`` events), timed on a sample of the same events;
(c) DuckDB over the same raw events exported to Parquet: page extraction, sessionization
    with window functions, hourly and daily rollups by site, page and entry page;
(d) a 30-day range read with mid-hour edges: ``web_stats(..., breakdown="page")`` of the
    largest site over 30 days of rollups, against DuckDB scanning one day of raw events
    for the same numbers (visitors, visits, pageviews; breakdown by page).

The 29 other days of (d) are made cheaply: the day's daily rows are copied with shifted
dates (the same visitor sets every day), the first day of the range also gets the day's
hourly rows and landed partition shifted by 29 days (a read with mid-hour edges touches
hourly rows and landed events only on its two edge days).

Usage:
    python bench/bench_web.py --events 1000000 [--days-for-read 30] [--sample-upserts 20000]
Needs PostgreSQL (ANALYTICS_BENCH_PG_URL, default postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from bench_common import (
    child,
    create_db,
    drop_db,
    peak_rss_mb,
    prefixed_strings,
    reset_peak_rss,
    rss_mb,
)

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.sources import source_metadata
from analytics_pipeline.web import contract as wc

TZ = "America/New_York"
DAY = LocalDay(date(2026, 2, 11), TZ)  # no DST change within the 30 days before it
NAMES = ["pageview", "click", "signup", "download", "outbound"]
NAME_P = [0.9, 0.05, 0.02, 0.02, 0.01]
COUNTRIES = ["US", "GB", "DE", "FR", "CA", "IN", "BR", "JP", "AU", "NL", "ES", "IT", "SE",
             "PL", "MX", "KR", "CH", "BE", "AT", "DK", "NO", "FI", "IE", "PT", "NZ", "SG",
             "ZA", "AR", "CL", "CO", "us", "", "XX1"]
CHUNK = 1_000_000
SESSION_US = 30 * 60 * 1_000_000


# --- the generated day --------------------------------------------------------------------


def user_agents() -> list[str]:
    """A few thousand distinct, realistic user agents (browser × version × OS × device)."""
    out = []
    for v in range(100, 131):
        for b in range(0, 40, 3):
            build = f"{v}.0.{6000 + b * 17}.{b * 7 % 200}"
            out.append(f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                       f"(KHTML, like Gecko) Chrome/{build} Safari/537.36")
            out.append(f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
                       f"(KHTML, like Gecko) Chrome/{build} Safari/537.36")
            for model in ("SM-G991B", "Pixel 7", "SM-A515F", "SM-T870"):
                mobile = "" if model.startswith("SM-T") else "Mobile "
                out.append(f"Mozilla/5.0 (Linux; Android {10 + b % 5}; {model}) "
                           f"AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{build} "
                           f"{mobile}Safari/537.36")
        out.append(f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   f"Chrome/{v}.0.0.0 Safari/537.36")
        out.append(f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, "
                   f"like Gecko) Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.{v * 3}.{v % 9}")
    for v in range(90, 131):
        for os_ in ("Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10.15",
                    "X11; Ubuntu; Linux x86_64", "X11; Linux x86_64"):
            out.append(f"Mozilla/5.0 ({os_}; rv:{v}.0) Gecko/20100101 Firefox/{v}.0")
    for i in range(12, 18):
        for j in range(0, 8):
            for dev, mob in (("iPhone; CPU iPhone OS", "Mobile/15E148 "),
                             ("iPad; CPU OS", "Mobile/15E148 ")):
                out.append(f"Mozilla/5.0 ({dev} {i}_{j} like Mac OS X) AppleWebKit/605.1.15 "
                           f"(KHTML, like Gecko) Version/{i}.{j} {mob}Safari/604.1")
            out.append(f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15"
                       f" (KHTML, like Gecko) Version/{i}.{j} Safari/605.1.15")
    out += ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "curl/8.4.0", ""]
    return out


class Day:
    """The day's events as integer plans (one array per attribute, in visit order), turned
    into string tables chunk by chunk (the whole day never sits in memory as strings)."""

    def __init__(self, n: int, visitors: int, pages: int, sites: int, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.n, self.sites = n, sites
        site_w = 1.0 / np.arange(1, sites + 1)
        site_w /= site_w.sum()
        visitor_site = rng.choice(sites, visitors, p=site_w)
        visitor_w = rng.lognormal(0, 1.2, visitors)
        visitor_w /= visitor_w.sum()
        per_site = np.maximum(20, np.round(site_w * pages)).astype(np.int64)
        page_base = np.concatenate([[0], np.cumsum(per_site)[:-1]])
        mean_len = 5
        lengths = rng.geometric(1 / mean_len, int(n / mean_len * 1.3) + 10)
        cum = np.cumsum(lengths)
        n_visits = int(np.searchsorted(cum, n)) + 1
        lengths = lengths[:n_visits].copy()
        lengths[-1] -= int(cum[n_visits - 1] - n)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        visit = np.repeat(np.arange(n_visits), lengths)
        pos = np.arange(n) - starts[visit]
        visitor_of_visit = rng.choice(visitors, n_visits, p=visitor_w)
        span = int((DAY.end_utc - DAY.start_utc).total_seconds() * 1e6)
        gaps = rng.exponential(45e6, n)
        gaps[rng.random(n) < 0.01] += 35 * 60e6  # some visits are cut by the timeout
        gaps[pos == 0] = 0
        within = np.cumsum(gaps)
        within -= within[starts][visit]
        t = rng.integers(0, span, n_visits)[visit] + within.astype(np.int64)
        self.t = np.minimum(t, span - 1)
        self.visitor = visitor_of_visit[visit]
        self.site = visitor_site[self.visitor]
        local = np.floor(per_site[self.site] * rng.random(n) ** 2.5).astype(np.int64)
        self.page = page_base[self.site] + local
        self.n_pages = int(per_site.sum())
        self.name = rng.choice(len(NAMES), n, p=NAME_P)
        self.entry = pos == 0
        r = rng.random(n)
        self.query = np.where(self.entry & (r < 0.25), 1, 0)  # utm
        self.query[self.entry & (r >= 0.25) & (r < 0.3)] = 2  # click id
        self.query[~self.entry & (r < 0.03)] = 3  # ?ref=nav
        self.utm = rng.integers(0, 300, n)
        self.click = rng.integers(0, 10**9, n)
        self.ref = np.where(rng.random(n) < 0.45, -1, rng.integers(0, 300, n))
        uas = user_agents()
        ua_w = 1.0 / np.arange(1, len(uas) + 1) ** 0.8
        self.visitor_ua = rng.choice(len(uas), visitors, p=ua_w / ua_w.sum())
        c_w = np.linspace(3, 0.2, len(COUNTRIES))
        self.visitor_country = rng.choice(len(COUNTRIES), visitors, p=c_w / c_w.sum())
        self.uas = pa.array(uas)
        self.order = np.argsort(self.t, kind="stable")  # arrival (insertion) order
        self.domains = prefixed_strings("site", np.arange(sites), ".example.com")
        self.paths = pc.binary_join_element_wise(
            prefixed_strings("/section", np.arange(self.n_pages) % 23),
            prefixed_strings("/page-", np.arange(self.n_pages)), "")
        sources = ["google", "facebook", "newsletter", "twitter", "linkedin", "bing"]
        mediums = ["cpc", "social", "email", "organic", "display"]
        self.utms = pa.array([
            f"?utm_source={sources[i % 6]}&utm_medium={mediums[i % 5]}"
            f"&utm_campaign=spring+sale+{i % 10}%20{i}" for i in range(300)])
        self.refs = pa.array(
            [f"https://www.google.{tld}/" for tld in ("com", "de", "fr", "co.uk")]
            + [f"https://news.ycombinator.com/item?id={i}" for i in range(100)]
            + [f"https://t.co/{i * 7919:x}" for i in range(100)]
            + [f"https://www.reddit.com/r/sub{i}/comments/x" for i in range(90)]
            + ["android-app://com.google.android.gm/", "https://duckduckgo.com/",
               "https://www.bing.com/search?q=x", "https://l.facebook.com/",
               "https://site0.example.com/", "https://www.linkedin.com/"])

    def table(self, idx: np.ndarray) -> pa.Table:
        """The source rows of events ``idx`` (web_events' columns)."""
        site, page = self.site[idx], self.page[idx]
        q = self.query[idx]
        query = pc.if_else(pa.array(q == 1), self.utms.take(pa.array(self.utm[idx])), "")
        query = pc.if_else(pa.array(q == 2), prefixed_strings("?gclid=", self.click[idx]), query)
        query = pc.if_else(pa.array(q == 3), "?ref=nav", query)
        domain = self.domains.take(pa.array(site))
        url = pc.binary_join_element_wise("https://", domain, self.paths.take(pa.array(page)),
                                          query, "")
        entry = self.entry[idx]
        prev_page = self.paths.take(pa.array(self.page[np.maximum(idx - 1, 0)]))
        own = pc.binary_join_element_wise("https://", domain, prev_page, "")
        ext = self.refs.take(pa.array(np.maximum(self.ref[idx], 0)))
        ext = pc.if_else(pa.array(self.ref[idx] < 0), pa.nulls(len(idx), pa.string()), ext)
        referrer = pc.if_else(pa.array(entry), ext, own)
        start = np.datetime64(DAY.start_utc.replace(tzinfo=None), "us")
        occurred = start + self.t[idx].astype("timedelta64[us]")
        visitor = self.visitor[idx]
        return pa.table({
            "id": prefixed_strings("ev-", idx.astype(np.int64)),
            "site_id": pa.array(site.astype(np.int64) + 1),
            "visitor_id": prefixed_strings("vis-", visitor.astype(np.int64) * 7 + 1000003),
            "name": pa.array(NAMES).take(pa.array(self.name[idx])),
            "url": url,
            "referrer": referrer,
            "user_agent": self.uas.take(pa.array(self.visitor_ua[visitor])),
            "country": pa.array(COUNTRIES).take(pa.array(self.visitor_country[visitor])),
            "occurred_at": pa.array(occurred, pa.timestamp("us")),
            "received_at": pa.array(occurred + (idx % 5000).astype("timedelta64[ms]"),
                                    pa.timestamp("us")),
        })


def load_source(url: str, day: Day, raw_parquet: str) -> None:
    """Sites and web_events (in arrival order) into the source; the raw events also to
    Parquet (for DuckDB)."""
    import adbc_driver_postgresql.dbapi as adbc_pg

    engine = wh.make_engine(url)
    source_metadata.create_all(engine, tables=[wc.src_sites, wc.src_web_events])
    with engine.begin() as c:
        c.execute(wc.src_sites.insert(), [
            {"id": i + 1, "account_id": i + 1, "domain": f"site{i}.example.com",
             "active": True} for i in range(day.sites)])
    engine.dispose()
    libpq = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    writer = None
    with adbc_pg.connect(libpq) as conn, conn.cursor() as cur:
        for lo in range(0, day.n, CHUNK):
            t = day.table(day.order[lo:lo + CHUNK])
            cur.adbc_ingest("web_events", t, mode="append")
            if writer is None:
                writer = pq.ParquetWriter(raw_parquet, t.schema)
            writer.write_table(t)
        conn.commit()
    writer.close()
    e = sa.create_engine(wh.normalize_url(url), isolation_level="AUTOCOMMIT")
    with e.connect() as c:
        c.execute(sa.text("VACUUM ANALYZE web_events"))
    e.dispose()


# --- (a) the project ----------------------------------------------------------------------


def project_run(src_url: str, wh_url: str, landing: str, sites: int, profile: bool,
                out: mp.Queue) -> None:
    """(a) in a child process: extraction + sessionization + landing, then the rollups and
    their write; timings and peak RSS."""
    from analytics_pipeline.web.rollup_step import rollup_web_partition
    from analytics_pipeline.web.source import WebEventsSource
    from analytics_pipeline.web.steps import extract_web_partition

    engine = wh.make_engine(wh_url)
    wh.ensure_schema(engine)
    wh.replace_accounts(engine, [
        {"id": i + 1, "name": f"a{i}", "reporting_timezone": TZ, "timezone": TZ,
         "timezone_valid": True} for i in range(sites)])
    store = LandingStore(landing)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    x = extract_web_partition(WebEventsSource(src_url, date(2024, 1, 1)), store, engine, DAY,
                              TZ)
    t1 = time.perf_counter()
    peak_extract = peak_rss_mb()
    rss_before_rollup = rss_mb()
    reset_peak_rss()  # the rollup's own peak, measured from here
    r = rollup_web_partition(store, engine, DAY)
    peak_rollup = peak_rss_mb()
    t2 = time.perf_counter()
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    out.put({"extract": t1 - t0, "rollup_write": t2 - t1, "rows": x.rows, "visits": x.visits,
             "invalid": x.invalid_rows, "hourly": r.hourly_rows, "daily": r.daily_rows,
             "mismatches": {k: v for k, v in r.mismatches.items() if v},
             "site_visits": r.visits, "peak_extract_mb": peak_extract,
             "rss_before_rollup_mb": rss_before_rollup, "peak_rollup_mb": peak_rollup,
             "peak_mb": max(peak_extract, peak_rollup)})


def storage(wh_url: str) -> dict:
    e = sa.create_engine(wh.normalize_url(wh_url))
    out = {}
    with e.connect() as c:
        for t in ("web_hourly_rollups", "web_daily_rollups"):
            out[f"{t}_set_bytes"] = int(c.execute(sa.text(
                f"SELECT coalesce(sum(octet_length(visitor_set)), 0) FROM {t}")).scalar_one())
        for t in ("web_hourly_rollups", "web_daily_rollups", "web_visitors"):
            out[f"{t}_total"] = int(c.execute(sa.text(
                f"SELECT pg_total_relation_size('{t}')")).scalar_one())
    e.dispose()
    return out


# --- (b) row-by-row upserts -----------------------------------------------------------------

REF_DDL = """
DROP TABLE IF EXISTS ref_visitors, ref_sessions, ref_rollups, ref_rollup_visitors;
CREATE TABLE ref_visitors (visitor_num bigserial PRIMARY KEY, site_id bigint NOT NULL,
  visitor_id text NOT NULL, first_seen timestamp NOT NULL, last_seen timestamp NOT NULL,
  UNIQUE (site_id, visitor_id));
CREATE TABLE ref_sessions (id bigserial PRIMARY KEY, site_id bigint NOT NULL,
  visitor_num bigint NOT NULL, started_at timestamp NOT NULL, last_at timestamp NOT NULL,
  events int NOT NULL, entry_page text NOT NULL, exit_page text NOT NULL);
CREATE INDEX ON ref_sessions (visitor_num, started_at DESC);
CREATE TABLE ref_rollups (site_id bigint, period text, bucket timestamp, dimension text,
  value text, events bigint NOT NULL, pageviews bigint NOT NULL, visits bigint NOT NULL,
  bounces bigint NOT NULL, duration_seconds double precision NOT NULL,
  visitors bigint NOT NULL, PRIMARY KEY (site_id, period, bucket, dimension, value));
CREATE TABLE ref_rollup_visitors (site_id bigint, period text, bucket timestamp,
  dimension text, value text, visitor_num bigint,
  PRIMARY KEY (site_id, period, bucket, dimension, value, visitor_num));
"""


def upserts(url: str, events: list[tuple], batch: int) -> float:
    """(b) each event applied as the ingest endpoint of a web app would: upsert its visitor,
    extend or open its session, count its visitor once per rollup row, upsert its four
    rollup rows (site and page × hour and day) and, when the session grows, move the
    session's bounce and duration in the rows of the hour and day it started. One
    transaction per ``batch`` events. Returns the seconds taken."""
    import psycopg2

    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(REF_DDL)
    conn.commit()
    t0 = time.perf_counter()
    cur = conn.cursor()
    for i, (site, visitor, name, page, at) in enumerate(events):
        hour = at.replace(minute=0, second=0, microsecond=0)
        day0 = datetime.combine((at - timedelta(hours=5)).date(), datetime.min.time())
        cur.execute(
            "INSERT INTO ref_visitors (site_id, visitor_id, first_seen, last_seen) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (site_id, visitor_id) DO UPDATE SET "
            "first_seen = least(ref_visitors.first_seen, excluded.first_seen), "
            "last_seen = greatest(ref_visitors.last_seen, excluded.last_seen) "
            "RETURNING visitor_num", (site, visitor, at, at))
        num = cur.fetchone()[0]
        cur.execute("SELECT id, started_at, last_at, events FROM ref_sessions "
                    "WHERE visitor_num = %s ORDER BY started_at DESC LIMIT 1 FOR UPDATE", (num,))
        sess = cur.fetchone()
        new_visit = sess is None or (at - sess[2]).total_seconds() * 1e6 > SESSION_US
        if new_visit:
            cur.execute("INSERT INTO ref_sessions (site_id, visitor_num, started_at, last_at, "
                        "events, entry_page, exit_page) VALUES (%s, %s, %s, %s, 1, %s, %s)",
                        (site, num, at, at, page, page))
        else:
            cur.execute("UPDATE ref_sessions SET last_at = %s, events = events + 1, "
                        "exit_page = %s WHERE id = %s", (at, page, sess[0]))
            s_hour = sess[1].replace(minute=0, second=0, microsecond=0)
            s_day = datetime.combine((sess[1] - timedelta(hours=5)).date(),
                                     datetime.min.time())
            cur.execute(
                "UPDATE ref_rollups SET duration_seconds = duration_seconds + %s, "
                "bounces = bounces - %s WHERE site_id = %s AND dimension = 'site' AND "
                "value = '' AND ((period = 'hour' AND bucket = %s) OR "
                "(period = 'day' AND bucket = %s))",
                ((at - sess[2]).total_seconds(), 1 if sess[3] == 1 else 0, site, s_hour,
                 s_day))
        keys = [("hour", hour, "site", ""), ("hour", hour, "page", page),
                ("day", day0, "site", ""), ("day", day0, "page", page)]
        cur.execute(
            "INSERT INTO ref_rollup_visitors VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * 4)
            + " ON CONFLICT DO NOTHING RETURNING period, dimension",
            [x for k in keys for x in (site, *k, num)])
        fresh = {tuple(r) for r in cur.fetchall()}
        pv = 1 if name == "pageview" else 0
        rows = [(site, *k, 1, pv, int(new_visit), int(new_visit), 0.0,
                 int((k[0], k[2]) in fresh)) for k in keys]
        cur.execute(
            "INSERT INTO ref_rollups VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * 4)
            + " ON CONFLICT (site_id, period, bucket, dimension, value) DO UPDATE SET "
            "events = ref_rollups.events + 1, pageviews = ref_rollups.pageviews + "
            "excluded.pageviews, visits = ref_rollups.visits + excluded.visits, "
            "bounces = ref_rollups.bounces + excluded.bounces, "
            "visitors = ref_rollups.visitors + excluded.visitors",
            [x for r in rows for x in r])
        if (i + 1) % batch == 0:
            conn.commit()
    conn.commit()
    elapsed = time.perf_counter() - t0
    cur.close()
    conn.close()
    return elapsed


def upsert_sample(day: Day, size: int) -> list[tuple]:
    """The events of a random set of visitors, in arrival order, the first ``size``."""
    rng = np.random.default_rng(7)
    chosen = rng.random(int(day.visitor.max()) + 1) < min(1.0, 1.5 * size / day.n)
    idx = day.order[chosen[day.visitor[day.order]]][:size]
    t = day.table(idx)
    return list(zip(t["site_id"].to_pylist(), t["visitor_id"].to_pylist(),
                    t["name"].to_pylist(),
                    pc.struct_field(pc.extract_regex(t["url"], r"^[^:]+://[^/?#]*(?P<p>[^?#]*)"),
                                    "p").to_pylist(),
                    t["occurred_at"].to_pylist(), strict=True))


# --- (c) DuckDB --------------------------------------------------------------------------

_DUCK_EVENTS = r"""
CREATE OR REPLACE TEMP TABLE ev AS
SELECT site_id, visitor_id, name, occurred_at,
       regexp_extract(url, '^[^:]+://[^/?#]*([^?#]*)', 1) AS page
FROM read_parquet('{raw}') {where};
CREATE OR REPLACE TEMP TABLE sv AS
SELECT *, sum(new_visit) OVER (PARTITION BY site_id, visitor_id ORDER BY occurred_at
                               ROWS UNBOUNDED PRECEDING) AS visit_no
FROM (SELECT *, CASE WHEN occurred_at - lag(occurred_at) OVER w <= INTERVAL 30 MINUTE
                     THEN 0 ELSE 1 END AS new_visit
      FROM ev WINDOW w AS (PARTITION BY site_id, visitor_id ORDER BY occurred_at));
CREATE OR REPLACE TEMP TABLE visits AS
SELECT site_id, visitor_id, visit_no, min(occurred_at) AS started,
       date_trunc('hour', min(occurred_at)) AS hour, count(*) AS n,
       epoch(max(occurred_at)) - epoch(min(occurred_at)) AS duration,
       arg_min(page, occurred_at) AS entry_page
FROM sv GROUP BY ALL;
"""


def duckdb_rollups(raw: str) -> tuple[float, int]:
    """(c3) sessionization and hourly + daily rollups of three dimensions (site, page,
    entry page) in DuckDB: the baseline of the first measurements, kept for comparison."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    t0 = time.perf_counter()
    con.execute(_DUCK_EVENTS.format(raw=raw, where=""))
    rows = 0
    for bucket in ("date_trunc('hour', occurred_at)",  # hours, then local days
                   "CAST(occurred_at - INTERVAL 5 HOUR AS DATE)"):
        vbucket = bucket.replace("occurred_at", "started")
        for col in ("''", "page", None):  # site, page, entry page
            if col is None:  # a visit dimension: every event counts for its visit's value
                ev = (f"""
                    SELECT e.site_id, {bucket.replace('occurred_at', 'e.occurred_at')} AS b,
                           v.entry_page AS value, count(*) AS events,
                           count(*) FILTER (WHERE e.name = 'pageview') AS pageviews,
                           count(DISTINCT e.visitor_id) AS visitors
                    FROM sv e JOIN visits v USING (site_id, visitor_id, visit_no)
                    GROUP BY ALL""")
                vi = (f"""
                    SELECT site_id, {vbucket} AS b, entry_page AS value, count(*) AS visits,
                           count(*) FILTER (WHERE n = 1) AS bounces, sum(duration) AS dur
                    FROM visits GROUP BY ALL""")
            else:
                ev = (f"""
                    SELECT site_id, {bucket} AS b, {col} AS value, count(*) AS events,
                           count(*) FILTER (WHERE name = 'pageview') AS pageviews,
                           count(DISTINCT visitor_id) AS visitors
                    FROM sv GROUP BY ALL""")
                vi = (f"""
                    SELECT x.site_id, {vbucket.replace('started', 'v.started')} AS b,
                           x.value, count(*) AS visits,
                           count(*) FILTER (WHERE v.n = 1) AS bounces,
                           sum(v.duration) AS dur
                    FROM (SELECT DISTINCT site_id, visitor_id, visit_no, {col} AS value
                          FROM sv) x JOIN visits v USING (site_id, visitor_id, visit_no)
                    GROUP BY ALL""")
            res = con.sql(f"WITH e AS ({ev}), v AS ({vi}) "
                          "SELECT * FROM e FULL JOIN v USING (site_id, b, value)")
            rows += res.to_arrow_table().num_rows
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed, rows


# (c): the project's thirteen dimensions, derived in SQL as the project derives them
# (page; referrer host, lower-cased, without www., self-referrals direct; UTM parameters
# percent-decoded; country codes), user agents through a lookup table parsed beforehand
# by the project's own classifier and given to DuckDB untimed.
_DUCK_FULL = r"""
CREATE OR REPLACE TEMP TABLE ev AS
WITH e AS (
  SELECT site_id, visitor_id, name, occurred_at, url, user_agent,
         regexp_replace(lower(regexp_extract(
             referrer, '^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#@]*@)?([^/?#:]+)', 1)),
             '^www\.', '') AS host,
         upper(trim(country)) AS cc
  FROM read_parquet('{raw}'))
SELECT e.site_id, e.visitor_id, e.name, e.occurred_at,
       coalesce(nullif(regexp_extract(url, '^[^:]+://[^/?#]*([^?#]*)', 1), ''), '/') AS page,
       CASE WHEN host = '' OR host IS NULL OR host = s.domain
                 OR ends_with(host, '.' || s.domain) THEN '(direct)' ELSE host END AS referrer,
       {utm},
       coalesce(ua.device, '(none)') AS device, coalesce(ua.browser, '(none)') AS browser,
       coalesce(ua.os, '(none)') AS os,
       CASE WHEN regexp_full_match(cc, '[A-Z]{{2}}') THEN cc ELSE '(none)' END AS country
FROM e JOIN sites s USING (site_id) LEFT JOIN ua USING (user_agent);
CREATE OR REPLACE TEMP TABLE sv AS
SELECT *, sum(new_visit) OVER (PARTITION BY site_id, visitor_id ORDER BY occurred_at
                               ROWS UNBOUNDED PRECEDING) AS visit_no
FROM (SELECT *, CASE WHEN occurred_at - lag(occurred_at) OVER w <= INTERVAL 30 MINUTE
                     THEN 0 ELSE 1 END AS new_visit
      FROM ev WINDOW w AS (PARTITION BY site_id, visitor_id ORDER BY occurred_at));
CREATE OR REPLACE TEMP TABLE visits AS
SELECT site_id, visitor_id, visit_no, min(occurred_at) AS started, count(*) AS n,
       epoch(max(occurred_at)) - epoch(min(occurred_at)) AS duration,
       arg_min(page, occurred_at) AS entry_page, arg_max(page, occurred_at) AS exit_page,
       {visit_values}
FROM sv GROUP BY ALL;
CREATE OR REPLACE TEMP TABLE sve AS
SELECT sv.site_id, sv.visitor_id, sv.visit_no, sv.occurred_at, sv.name, sv.page,
       {visit_columns}
FROM sv JOIN visits v USING (site_id, visitor_id, visit_no);
"""
_DUCK_VISIT_DIMS = ("entry_page", "exit_page", "referrer", "utm_source", "utm_medium",
                    "utm_campaign", "device", "browser", "os", "country")


def duckdb_full_rollups(raw: str, domains: list[str]) -> tuple[float, int]:
    """(c) DuckDB computing the same numbers as (a) (hourly and daily events, pageviews,
    visits, bounces, duration and distinct visitors of the 13 dimensions) from the raw
    Parquet, with window functions, all threads; results materialized as Arrow."""
    import duckdb

    from analytics_pipeline.web.compute import classify_user_agent

    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    agents = con.sql(f"SELECT DISTINCT user_agent FROM read_parquet('{raw}') "
                     "WHERE user_agent <> ''").fetchall()
    parsed = [(a, *classify_user_agent(a)) for (a,) in agents]
    ua = pa.table(dict(zip(("user_agent", "device", "browser", "os"),
                           map(list, zip(*parsed, strict=True)), strict=True)))
    sites = pa.table({"site_id": pa.array(range(1, len(domains) + 1), pa.int64()),
                      "domain": domains})
    con.register("ua_arrow", ua)
    con.register("sites_arrow", sites)
    con.execute("CREATE TEMP TABLE ua AS SELECT * FROM ua_arrow; "
                "CREATE TEMP TABLE sites AS SELECT * FROM sites_arrow")
    utm = ",\n       ".join(
        f"coalesce(nullif(url_decode(replace(regexp_extract(url, "
        f"'^[^?#]*\\?(?:[^#]*?&)?utm_{p}=([^&#]*)', 1), '+', ' ')), ''), '(none)') "
        f"AS utm_{p}" for p in ("source", "medium", "campaign"))
    first = [d for d in _DUCK_VISIT_DIMS if d not in ("entry_page", "exit_page")]
    sql = _DUCK_FULL.format(
        raw=raw, utm=utm,
        visit_values=", ".join(f"arg_min({d}, occurred_at) AS {d}" for d in first),
        visit_columns=", ".join(f"v.{d}" for d in _DUCK_VISIT_DIMS))
    t0 = time.perf_counter()
    con.execute(sql)
    rows = 0
    for bucket in ("date_trunc('hour', occurred_at)",  # hours, then local days
                   "CAST(occurred_at - INTERVAL 5 HOUR AS DATE)"):
        vbucket = bucket.replace("occurred_at", "started")
        for dim in ("site", "name", "page", *_DUCK_VISIT_DIMS):
            col = "''" if dim == "site" else dim
            ev = (f"SELECT site_id, {bucket} AS b, {col} AS value, count(*) AS events, "
                  "count(*) FILTER (WHERE name = 'pageview') AS pageviews, "
                  "count(DISTINCT visitor_id) AS visitors FROM sve GROUP BY ALL")
            if dim in ("name", "page"):  # a visit counts once per value among its events
                vi = (f"SELECT x.site_id, {vbucket.replace('started', 'v.started')} AS b, "
                      "x.value, count(*) AS visits, count(*) FILTER (WHERE v.n = 1) AS "
                      "bounces, sum(v.duration) AS dur FROM (SELECT DISTINCT site_id, "
                      f"visitor_id, visit_no, {col} AS value FROM sv) x JOIN visits v "
                      "USING (site_id, visitor_id, visit_no) GROUP BY ALL")
            else:
                vi = (f"SELECT site_id, {vbucket} AS b, {col} AS value, count(*) AS visits, "
                      "count(*) FILTER (WHERE n = 1) AS bounces, sum(duration) AS dur "
                      "FROM visits GROUP BY ALL")
            res = con.sql(f"WITH e AS ({ev}), v AS ({vi}) "
                          "SELECT * FROM e FULL JOIN v USING (site_id, b, value)")
            rows += res.to_arrow_table().num_rows
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed, rows


# --- (d) 30-day read ----------------------------------------------------------------------


def make_days(wh_url: str, landing: str, days: int) -> float:
    """Days ``DAY - 1 … DAY - (days - 1)``: daily rows copied from DAY with shifted dates;
    the first day also gets DAY's hourly rows and landed partition shifted in time."""
    t0 = time.perf_counter()
    cols = [c.name for c in wc.web_daily_rollups.c]
    e = sa.create_engine(wh.normalize_url(wh_url))
    first = days - 1
    with e.begin() as c:
        sel = ", ".join("date - k" if x == "date" else x for x in cols)
        c.execute(sa.text(
            f"INSERT INTO web_daily_rollups ({', '.join(cols)}) SELECT {sel} "
            f"FROM web_daily_rollups, generate_series(1, {first}) AS k WHERE date = :d"),
            {"d": DAY.day})
        hcols = [x.name for x in wc.web_hourly_rollups.c]
        hsel = ", ".join({"date": f"date - {first}",
                          "hour_start": f"hour_start - interval '{first} days'"}.get(x, x)
                         for x in hcols)
        c.execute(sa.text(
            f"INSERT INTO web_hourly_rollups ({', '.join(hcols)}) SELECT {hsel} "
            "FROM web_hourly_rollups WHERE date = :d"), {"d": DAY.day})
    e.dispose()
    store = LandingStore(landing)
    edge = LocalDay(DAY.day - timedelta(days=first), TZ)
    shift = pa.scalar(timedelta(days=first), pa.duration("us"))
    meta = store.partition_meta(wc.WEB_SOURCE, DAY)

    def shifted():
        for t in store.iter_partition(wc.WEB_SOURCE, DAY, wc.LANDED_WEB_SCHEMA, 262_144):
            for col in ("occurred_at", "received_at", "hour_start", "visit_start"):
                t = t.set_column(t.schema.get_field_index(col), col,
                                 pc.subtract(t[col], shift))
            yield from t.to_batches()

    store.write_partition(wc.WEB_SOURCE, edge, shifted(), meta, wc.LANDED_WEB_SCHEMA)
    return time.perf_counter() - t0


def read_range(wh_url: str, landing: str, days: int, site_id: int, out: mp.Queue) -> None:
    """(d) in a child process: ``web_stats`` over ``days`` days with mid-hour edges."""
    from zoneinfo import ZoneInfo

    from analytics_pipeline.web.read import web_stats

    tz = ZoneInfo(TZ)
    start = datetime.combine(DAY.day - timedelta(days=days - 1), datetime.min.time()) \
        .replace(hour=10, minute=30, tzinfo=tz)
    end = datetime.combine(DAY.day, datetime.min.time()).replace(hour=15, minute=30,
                                                                tzinfo=tz)
    engine = wh.make_engine(wh_url)
    store = LandingStore(landing)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        s = web_stats(engine, store, site_id, start, end, breakdown="page", limit=10)
        times.append(time.perf_counter() - t0)
    if os.environ.get("BENCH_WEB_PROFILE_READ"):  # where the read's time goes
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(web_stats, engine, store, site_id, start, end, breakdown="page",
                     limit=10)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    out.put({"times": times, "visitors": s.totals["visitors"], "visits": s.totals["visits"],
             "pageviews": s.totals["pageviews"], "top": s.breakdown.iloc[0]["value"],
             "peak_mb": peak_rss_mb()})


def duckdb_one_day(raw: str, site_id: int) -> tuple[float, dict]:
    """DuckDB scanning one day of raw events for the same numbers: visitors, visits,
    pageviews of the site, and visitors/visits/pageviews per page."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    t0 = time.perf_counter()
    con.execute(_DUCK_EVENTS.format(raw=raw, where=f"WHERE site_id = {site_id}"))
    tot = con.sql("SELECT count(DISTINCT visitor_id), count(*) FILTER "
                  "(WHERE name = 'pageview'), (SELECT count(*) FROM visits) FROM sv").fetchall()[0]
    by_page = con.sql("""
        SELECT page, count(DISTINCT visitor_id) AS visitors,
               count(DISTINCT (visitor_id, visit_no)) AS visits,
               count(*) FILTER (WHERE name = 'pageview') AS pageviews, count(*) AS events
        FROM sv GROUP BY page ORDER BY visitors DESC, page LIMIT 10""").to_arrow_table()
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed, {"visitors": tot[0], "pageviews": tot[1], "visits": tot[2],
                     "top": by_page["page"][0].as_py()}


# --- main ---------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--visitors", type=int, default=200_000)
    p.add_argument("--pages", type=int, default=5_000)
    p.add_argument("--sites", type=int, default=20)
    p.add_argument("--days-for-read", type=int, default=30)
    p.add_argument("--sample-upserts", type=int, default=20_000)
    p.add_argument("--upsert-batch", type=int, default=20,
                   help="events per transaction of the batched variant of (b)")
    p.add_argument("--profile", action="store_true", help="cProfile (a) to stderr")
    p.add_argument("--only-a", action="store_true", help="(a) alone (for profiling)")
    args = p.parse_args()
    n = args.events
    src = create_db("ap_bweb_src")
    whurl = create_db("ap_bweb_wh")
    tmp = tempfile.mkdtemp(prefix="ap_bweb_")
    raw = os.path.join(tmp, "raw_web_events.parquet")
    landing = os.path.join(tmp, "landing")
    try:
        t = time.perf_counter()
        day = Day(n, args.visitors, args.pages, args.sites)
        load_source(src, day, raw)
        sample = upsert_sample(day, args.sample_upserts)
        print(f"generated and loaded {n:,} events ({args.visitors:,} visitors, "
              f"{day.n_pages:,} pages, {args.sites} sites) in {time.perf_counter() - t:.1f}s",
              flush=True)
        del day

        a = child(project_run, src, whurl, landing, args.sites, args.profile)
        a_total = a["extract"] + a["rollup_write"]
        print(f"(a) done in {a_total:.2f}s: {a}", flush=True)
        if a["mismatches"]:
            print(f"CHECKS FAILED: {a['mismatches']}")
            return 1
        if args.only_a:
            return 0
        st = storage(whurl)
        b1 = upserts(src, sample, 1)
        b20 = upserts(src, sample, args.upsert_batch)
        c, c_rows = duckdb_full_rollups(raw, [f"site{i}.example.com"
                                              for i in range(args.sites)])
        c3, c3_rows = duckdb_rollups(raw)
        copy_s = make_days(whurl, landing, args.days_for_read)
        site_id = 1  # the largest site (Zipf weights)
        d = child(read_range, whurl, landing, args.days_for_read, site_id)
        dd, dd_nums = duckdb_one_day(raw, site_id)

        m = n / 1e6
        ra, rb1, rb20 = n / a_total, len(sample) / b1, len(sample) / b20
        print()
        print(f"| measure ({n:,} events, 2-core shared machine) | result |")
        print("|---|---|")
        print(f"| (a) extract + sessionize + land | {a['extract']:.2f} s "
              f"({n / a['extract'] / 1e6:.2f} M events/s) |")
        print(f"| (a) rollup + write + checks | {a['rollup_write']:.2f} s "
              f"({a['hourly']:,} hourly + {a['daily']:,} daily rows) |")
        print(f"| (a) end to end | {a_total:.2f} s = {ra / 1e3:,.0f} k events/s "
              f"({a['visits']:,} visits) |")
        print(f"| (a) peak RSS | {a['peak_mb']:,.0f} MB (extraction {a['peak_extract_mb']:,.0f}"
              f" MB, rollup {a['peak_rollup_mb']:,.0f} MB; target < 2,048 MB) |")
        print(f"| (b) upserts, 1 event per transaction | {len(sample):,} events in {b1:.2f} s"
              f" = {rb1:,.0f} events/s |")
        print(f"| (b) upserts, {args.upsert_batch} events per transaction | {b20:.2f} s = "
              f"{rb20:,.0f} events/s |")
        print(f"| (c) DuckDB sessionize + rollups, the same 13 dimensions, hour and day | "
              f"{c:.2f} s ({c_rows:,} rows; (a) wrote {a['hourly'] + a['daily']:,}) |")
        print(f"| (c3) DuckDB, 3 dimensions (site, page, entry page) | "
              f"{c3:.2f} s ({c3_rows:,} rows) |")
        print(f"| (d) web_stats {args.days_for_read} days, mid-hour edges, breakdown=page | "
              f"{d['times'][0]:.2f} s, then {d['times'][1]:.2f} s (peak RSS "
              f"{d['peak_mb']:,.0f} MB) |")
        print(f"| (d) DuckDB one raw day, same site, same numbers | {dd:.2f} s |")
        print(f"| (d) days made by copying | {copy_s:.1f} s |")
        hs, ds = st["web_hourly_rollups_set_bytes"], st["web_daily_rollups_set_bytes"]
        total = sum(v for k, v in st.items() if k.endswith("_total"))
        print(f"| visitor_set bytes per M events | hourly {hs / m / 1e6:.2f} MB, daily "
              f"{ds / m / 1e6:.2f} MB |")
        print(f"| warehouse bytes of web tables per M events | {total / m / 1e6:.1f} MB "
              f"(hourly {st['web_hourly_rollups_total'] / m / 1e6:.1f}, daily "
              f"{st['web_daily_rollups_total'] / m / 1e6:.1f}, visitors "
              f"{st['web_visitors_total'] / m / 1e6:.1f}) |")
        print()
        print(f"ratio (a) vs (b) per event:   {ra / rb1:,.0f}x (1 per tx), {ra / rb20:,.0f}x "
              f"({args.upsert_batch} per tx)  (target >= 100x)")
        print(f"ratio (a) / (c):              {a_total / c:.2f}x DuckDB's time  (target <= 2x)")
        print(f"ratio (a) / (c3):             {a_total / c3:.2f}x (DuckDB doing 3 of the 13 "
              "dimensions)")
        print(f"ratio read / DuckDB one day:  {d['times'][1] / dd:.2f}x  (target < 1)")
        print(f"read numbers: visitors {d['visitors']:,} visits {d['visits']:,} pageviews "
              f"{d['pageviews']:,} top page {d['top']}; DuckDB one day: {dd_nums}")
    finally:
        drop_db(src)
        drop_db(whurl)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
