"""Benchmark: one local day of N support events in PostgreSQL, three ways, same process.

(a) this project: extraction (ADBC → Parquet landing) + rollup (pyarrow) + warehouse
    write (COPY in one transaction), run in a child process so its peak RSS is its own;
(b) the reference approach: the same rollup as INSERT … SELECT … GROUP BY inside
    PostgreSQL, one statement per metric × dimension with the timezone conversion in SQL
    (how the reference Rails app backfills);
(c) DuckDB over the same landed Parquet, as a near-limit reference for the rollup step;
(f) the floor, measured in the same run: the extraction's own query alone from PostgreSQL
    into Arrow (ADBC, no conversion, no landing) + DuckDB's rollup of those rows (the same
    three group-bys, all threads) + a bare COPY of the resulting rows into an empty table.

With ``--days N`` the source holds N days of the same volume (the measured day in the
middle) and ``--indexes`` decides its indexes: ``contract`` (the contract's
``(account_id, created_at)``), ``reference`` (the reference support app's
``(account_id, name, created_at)`` and ``(account_id, name, inbox_id, created_at)``), or
``none`` (the primary key only). The extraction's query plan is printed, and next to it
the plan of the same day read by account and window alone (what happens without naming the
event names). With ``--per-account`` the reference app's own backfill runs too:

(r) for each account and its local day, one ``GROUP BY`` per metric × dimension within
    the account's window, the rows built, then delete + insert in a transaction (the
    support app's rake task); time extrapolated by accounts past ``--reference-budget``.

Prints events/s, ratios and peak memory. Usage:
    python bench/bench_rollup.py --events 2000000 [--accounts 2000]
        [--days 30 --indexes reference --per-account]
Needs PostgreSQL (ANALYTICS_BENCH_PG_URL, default postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from bench_common import create_db, drop_db, peak_rss_mb

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.registry import Aggregation
from analytics_pipeline.core.sources import read_accounts, source_metadata
from analytics_pipeline.support.metrics import REPORTING_METRICS
from analytics_pipeline.support.source import ReportingEventsSource, src_reporting_events
from analytics_pipeline.support.steps import extract_partition, rollup_partition

TZ = "America/New_York"
DAY = LocalDay(date(2026, 2, 11), TZ)
NAMES = np.array(["first_response", "reply_time", "conversation_resolved",
                  "conversation_bot_resolved", "conversation_bot_handoff",
                  "conversation_opened"])
NAME_P = [0.2, 0.35, 0.2, 0.05, 0.1, 0.1]


def generate(n: int, accounts: int, seed: int = 1, day: LocalDay = DAY,
             first_id: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    acc = rng.integers(1, accounts + 1, n)
    start = np.datetime64(day.start_utc.replace(tzinfo=None), "us")
    span = int((day.end_utc - day.start_utc).total_seconds() * 1e6)
    created = start + rng.integers(0, span, n).astype("timedelta64[us]")
    value = rng.lognormal(6, 1, n).round(1)
    user = acc * 100 + rng.integers(0, 20, n)
    user_null = rng.random(n) < 0.1
    return pa.table({
        "id": np.arange(first_id, first_id + n, dtype=np.int64),
        "name": pa.array(rng.choice(NAMES, n, p=NAME_P)),
        "value": pa.array(value, mask=rng.random(n) < 0.05),
        "value_in_business_hours": pa.array((value * rng.random(n)).round(1)),
        "account_id": acc.astype(np.int64),
        "user_id": pa.array(user.astype(np.int64), mask=user_null),
        "inbox_id": (acc * 10 + rng.integers(0, 5, n)).astype(np.int64),
        "conversation_id": rng.integers(1, max(2, n // 3), n).astype(np.int64),
        "created_at": pa.array(created, pa.timestamp("us")),
        "updated_at": pa.array(created, pa.timestamp("us")),
    })


INDEXES = {
    "contract": [("index_reporting_events_on_account_id_and_created_at",
                  "account_id, created_at")],
    "reference": [("index_reporting_events_on_account_id_and_name_and_created_at",
                   "account_id, name, created_at"),
                  ("reporting_events__account_id__name__inbox_id__created_at",
                   "account_id, name, inbox_id, created_at")],
    "none": [],
}


def load_source(url: str, events: pa.Table | int, accounts: int, days: int = 1,
                indexes: str = "contract") -> None:
    """The source: ``events`` (a table of the measured day, or a count per day generated
    for ``days`` days around it, the measured day in the middle), loaded with ADBC, then
    ``indexes`` built and the table analyzed."""
    import adbc_driver_postgresql.dbapi as adbc_pg

    engine = wh.make_engine(url)
    source_metadata.create_all(engine)
    with engine.begin() as c:
        for ix in src_reporting_events.indexes:  # built after the load, as chosen
            c.execute(sa.text(f"DROP INDEX {ix.name}"))
        c.execute(source_metadata.tables["accounts"].insert(),
                  [{"id": i, "name": f"a{i}", "reporting_timezone": TZ}
                   for i in range(1, accounts + 1)])
    libpq = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with adbc_pg.connect(libpq) as conn, conn.cursor() as cur:
        if isinstance(events, pa.Table):
            cur.adbc_ingest("reporting_events", events, mode="append")
            conn.commit()
        else:
            for i in range(days):  # the measured day is day days // 2, seed 1 as alone
                offset = i - days // 2
                day = LocalDay(DAY.day + timedelta(days=offset), TZ)
                cur.adbc_ingest("reporting_events", generate(
                    events, accounts, seed=1 if offset == 0 else 1000 + i, day=day,
                    first_id=i * events + 1), mode="append")
                conn.commit()
    with engine.begin() as c:
        for name, cols in INDEXES[indexes]:
            c.execute(sa.text(f"CREATE INDEX {name} ON reporting_events ({cols})"))
    engine.dispose()
    e = sa.create_engine(wh.normalize_url(url), isolation_level="AUTOCOMMIT")
    with e.connect() as c:
        c.execute(sa.text("VACUUM ANALYZE reporting_events"))
    e.dispose()


def extraction_plans(src_url: str, accounts: int) -> dict[str, str]:
    """EXPLAIN ANALYZE of the day's extraction as the project runs it (its query, its
    session settings) and of the same day read by account and window alone."""
    from analytics_pipeline.core.sources import _compile, inspect_table

    url = wh.normalize_url(src_url)
    table = inspect_table(url, "reporting_events")
    source = ReportingEventsSource(src_url, date(2024, 1, 1))
    ids = list(range(1, accounts + 1))
    project = source._query(table, "postgresql", DAY, ids, None)
    plain_table = replace(table, indexes=())  # reads_by_name off: account + window
    plain = source._query(plain_table, "postgresql", DAY, ids, None)
    out = {}
    e = sa.create_engine(wh.normalize_url(src_url))
    for label, query, settings in (
            ("project", project, source._settings(table, "postgresql")),
            ("by account and window", plain, ())):
        with e.connect() as c:
            for setting in ("jit = off", *settings):
                c.execute(sa.text(f"SET {setting}"))
            lines = [r[0] for r in c.execute(sa.text(
                "EXPLAIN (ANALYZE, BUFFERS) " + _compile(url, query)))]
        out[label] = "\n".join(_short(line) for line in _fold_init_plans(lines))
    e.dispose()
    return out


def _fold_init_plans(lines: list[str]) -> list[str]:
    """The plan with each InitPlan (the loose index scans that list the accounts' event
    names) folded into one line saying so."""
    out, skip_deeper = [], None
    for line in lines:
        depth = len(line) - len(line.lstrip())
        if skip_deeper is not None and depth > skip_deeper:
            continue
        skip_deeper = None
        if line.lstrip().startswith("InitPlan"):
            out.append(f"{line}: the accounts' event names, by a loose index scan (folded)")
            skip_deeper = depth
            continue
        out.append(line)
    return out


def _short(line: str) -> str:
    """A plan line with its long literals (account arrays, loose scans) abbreviated."""
    line = re.sub(r"ARRAY\[[0-9,]{40,}\]|'\{[0-9,]{40,}\}'", "{…}", line)
    return line if len(line) < 220 else line[:217] + "…"


def project_run(src_url: str, wh_url: str, landing: str, out: mp.Queue) -> None:
    """(a) in a child process: extraction, rollup and write; reports timings and peak RSS."""
    engine = wh.make_engine(wh_url)
    wh.ensure_schema(engine)
    wh.replace_accounts(engine, [
        {"id": a["id"], "name": a["name"], "reporting_timezone": TZ, "timezone": TZ,
         "timezone_valid": True}
        for a in read_accounts(src_url).accounts])
    store = LandingStore(landing)
    t0 = time.perf_counter()
    extract_partition(ReportingEventsSource(src_url, date(2024, 1, 1)), store, engine, DAY, "UTC")
    t1 = time.perf_counter()
    peak_extract = peak_rss_mb()
    r = rollup_partition(store, engine, DAY)
    t2 = time.perf_counter()
    out.put({"extract": t1 - t0, "rollup_write": t2 - t1, "rows": r.rows_written,
             "mismatches": r.mismatches, "peak_extract_mb": peak_extract,
             "peak_mb": peak_rss_mb()})


def rollup_only(landing: str) -> tuple[float, int]:
    """The rollup step from landing without the write: read, validate, compute."""
    from analytics_pipeline.core.registry import raw_events
    from analytics_pipeline.core.rollups import RollupAccumulator
    from analytics_pipeline.support.validation import RAW_REPORTING_SCHEMA, validate

    t0 = time.perf_counter()
    acc = RollupAccumulator(DAY.day, REPORTING_METRICS)
    known = range(1, 1_000_000)
    for events in LandingStore(landing).iter_partition("reporting_events", DAY,
                                                       RAW_REPORTING_SCHEMA):
        acc.add(validate(events, known, raw_events(REPORTING_METRICS)).valid)
    rows = acc.finish()
    return time.perf_counter() - t0, rows.num_rows


def sql_aggregate(m) -> str:
    """The count and sums of a metric in SQL, as the reference app computes them."""
    if m.aggregation is Aggregation.COUNT_DISTINCT:
        return "count(DISTINCT conversation_id), 0, 0"
    if m.aggregation is Aggregation.COUNT_ONLY:
        return "count(*), 0, 0"
    return "count(*), sum(coalesce(value, 0)), sum(coalesce(value_in_business_hours, 0))"


def sql_group_by(src_url: str) -> tuple[float, int]:
    """(b) INSERT … SELECT … GROUP BY in PostgreSQL, metric × dimension, tz in SQL."""
    dims = {"account": "account_id", "agent": "user_id", "inbox": "inbox_id"}
    e = wh.make_engine(src_url)
    with e.begin() as c:
        c.execute(sa.text("""CREATE TABLE IF NOT EXISTS ref_rollups (account_id bigint,
            date date, dimension_type text, dimension_id bigint, metric text, count bigint,
            sum_value double precision, sum_value_business_hours double precision,
            UNIQUE (account_id, date, dimension_type, dimension_id, metric))"""))
    start, end = DAY.start_utc.replace(tzinfo=None), DAY.end_utc.replace(tzinfo=None)
    t0 = time.perf_counter()
    with e.begin() as c:
        for m in REPORTING_METRICS:
            for dname, col in dims.items():
                agg = sql_aggregate(m)
                c.execute(sa.text(f"""
                    INSERT INTO ref_rollups
                    SELECT account_id,
                           (created_at AT TIME ZONE 'UTC' AT TIME ZONE :tz)::date,
                           '{dname}', {col}, '{m.name}', {agg}
                    FROM reporting_events
                    WHERE name = :raw AND {col} IS NOT NULL
                      AND created_at >= :start AND created_at < :end
                    GROUP BY 1, 2, 4
                    ON CONFLICT (account_id, date, dimension_type, dimension_id, metric)
                    DO UPDATE SET count = EXCLUDED.count, sum_value = EXCLUDED.sum_value,
                      sum_value_business_hours = EXCLUDED.sum_value_business_hours
                """), {"tz": TZ, "raw": m.raw_event, "start": start, "end": end})
        n = c.execute(sa.text("SELECT count(*) FROM ref_rollups")).scalar_one()
    elapsed = time.perf_counter() - t0
    e.dispose()
    return elapsed, int(n)


def per_account(src_url: str, accounts: int, budget: float) -> dict:
    """(r) the reference app's backfill: per account and local day, one GROUP BY per metric
    × dimension within the account's window, the rows built, delete + insert in one
    transaction per account. Extrapolated by accounts when over ``budget`` seconds."""
    import psycopg2
    import psycopg2.extras

    dims = {"account": "account_id", "agent": "user_id", "inbox": "inbox_id"}
    dsn = sa.make_url(src_url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    cur.execute("""CREATE TABLE IF NOT EXISTS ref_rollups_per_account (account_id bigint,
        date date, dimension_type text, dimension_id bigint, metric text, count bigint,
        sum_value double precision, sum_value_business_hours double precision,
        UNIQUE (account_id, date, dimension_type, dimension_id, metric))""")
    conn.commit()
    start, end = DAY.start_utc.replace(tzinfo=None), DAY.end_utc.replace(tzinfo=None)
    t0 = time.perf_counter()
    done = rows = queries = 0
    for account in range(1, accounts + 1):
        built = []
        for m in REPORTING_METRICS:
            for dname, col in dims.items():
                agg = sql_aggregate(m)
                cur.execute(f"SELECT {col}, {agg} FROM reporting_events WHERE account_id = %s "
                            f"AND name = %s AND created_at >= %s AND created_at < %s AND "
                            f"{col} IS NOT NULL GROUP BY {col}",
                            (account, m.raw_event, start, end))
                queries += 1
                built += [(account, DAY.day, dname, dim_id, m.name, n, sv, sb)
                          for dim_id, n, sv, sb in cur.fetchall()]
        cur.execute("DELETE FROM ref_rollups_per_account WHERE account_id = %s AND date = %s",
                    (account, DAY.day))
        psycopg2.extras.execute_values(
            cur, "INSERT INTO ref_rollups_per_account VALUES %s", built, page_size=1000)
        conn.commit()
        done += 1
        rows += len(built)
        if time.perf_counter() - t0 > budget:
            break
    elapsed = time.perf_counter() - t0
    conn.close()
    return {"seconds": elapsed, "accounts": done, "rows": rows, "queries": queries,
            "estimate": elapsed * accounts / max(done, 1)}


def duckdb_rollup(landing: str) -> tuple[float, int]:
    """(c) DuckDB over the landed Parquet: the same three group-bys."""
    import duckdb

    files = LandingStore(landing).partition_files("reporting_events", DAY)
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    t0 = time.perf_counter()
    total = 0
    for col in ("account_id", "user_id", "inbox_id"):
        res = con.sql(f"""
            SELECT name, account_id, {col}, count(*), sum(coalesce(value, 0)),
                   sum(coalesce(value_in_business_hours, 0)), count(DISTINCT conversation_id)
            FROM read_parquet({files!r})
            WHERE {col} IS NOT NULL
            GROUP BY ALL""").to_arrow_table()
        total += res.num_rows
    return time.perf_counter() - t0, total


def floor_run(src_url: str, wh_url: str, accounts: int) -> dict:
    """(f): extraction alone, DuckDB's rollup of the rows, a bare COPY of the result."""
    import adbc_driver_postgresql.dbapi as adbc_pg
    import duckdb

    from analytics_pipeline.core.sources import arrow_batches, inspect_table

    source = ReportingEventsSource(src_url, date(2024, 1, 1))
    url = wh.normalize_url(src_url)
    table = inspect_table(url, "reporting_events")  # not timed: once per run in a backfill
    query = source._query(table, "postgresql", DAY, list(range(1, accounts + 1)), None)
    t0 = time.perf_counter()
    with arrow_batches(url, query, source._settings(table, "postgresql")) as reader:
        events = pa.Table.from_batches(list(reader))
    t1 = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    con.register("ev", events)
    parts = []
    for col in ("account_id", "user_id", "inbox_id"):
        parts.append(con.sql(f"""
            SELECT name, account_id, '{col}' AS dimension, {col} AS dimension_id, count(*) AS n,
                   sum(coalesce(value, 0)) AS s, sum(coalesce(value_in_business_hours, 0)) AS b,
                   count(DISTINCT conversation_id) AS d
            FROM ev WHERE {col} IS NOT NULL GROUP BY ALL""").to_arrow_table())
    rollup = pa.concat_tables(parts)
    t2 = time.perf_counter()
    libpq = sa.make_url(wh_url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    with adbc_pg.connect(libpq) as conn, conn.cursor() as cur:  # connect: not timed
        cur.execute("DROP TABLE IF EXISTS floor_rollups")
        conn.commit()
        t_copy = time.perf_counter()
        cur.adbc_ingest("floor_rollups", rollup, mode="create")
        conn.commit()
        copy_s = time.perf_counter() - t_copy
    return {"extract": t1 - t0, "rollup": t2 - t1, "copy": copy_s,
            "total": (t1 - t0) + (t2 - t1) + copy_s, "events": events.num_rows,
            "rows": rollup.num_rows}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--days", type=int, default=1,
                   help="days in the source, --events each (the measured day in the middle)")
    p.add_argument("--indexes", choices=sorted(INDEXES), default="contract",
                   help="the source's indexes besides its primary key")
    p.add_argument("--per-account", action="store_true",
                   help="also run (r), the reference app's per-account backfill")
    p.add_argument("--reference-budget", type=float, default=300.0,
                   help="seconds of (r) before it is extrapolated from the accounts done")
    args = p.parse_args()
    n = args.events
    src = create_db("ap_bench_src")
    whurl = create_db("ap_bench_wh")
    tmp = tempfile.mkdtemp(prefix="ap_bench_")
    try:
        t = time.perf_counter()
        load_source(src, n, args.accounts, args.days, args.indexes)
        print(f"generated and loaded {n:,} events a day × {args.days} day(s) for "
              f"{args.accounts} accounts, indexes: {args.indexes}, "
              f"in {time.perf_counter() - t:.1f}s")
        for label, plan in extraction_plans(src, args.accounts).items():
            print(f"--- plan of the day's extraction, {label}:\n{plan}")

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        proc = ctx.Process(target=project_run, args=(src, whurl, tmp, q))
        proc.start()
        a = q.get()
        proc.join()
        if a["mismatches"]:
            print(f"RECONCILIATION FAILED: {a['mismatches']}")
            return 1
        a_total = a["extract"] + a["rollup_write"]
        f = floor_run(src, whurl, args.accounts)
        r_only, _ = rollup_only(tmp)
        b, b_rows = sql_group_by(src)
        c, _ = duckdb_rollup(tmp)
        r = per_account(src, args.accounts, args.reference_budget) if args.per_account \
            else None

        def rate(secs: float) -> str:
            return f"{n / secs / 1e6:6.2f} M events/s"

        print(f"(a) project end to end      {a_total:7.2f}s  {rate(a_total)}  "
              f"(extract {a['extract']:.2f}s, rollup+write {a['rollup_write']:.2f}s, "
              f"{a['rows']:,} rows)")
        print(f"    rollup step from landing {r_only:7.2f}s  {rate(r_only)}")
        print(f"(b) PostgreSQL GROUP BY      {b:7.2f}s  {rate(b)}  ({b_rows:,} rows)")
        print(f"(c) DuckDB over Parquet      {c:7.2f}s  {rate(c)}")
        print(f"(f) floor                    {f['total']:7.2f}s  {rate(f['total'])}  "
              f"(extract into Arrow {f['extract']:.2f}s, DuckDB rollup {f['rollup']:.2f}s, "
              f"COPY of {f['rows']:,} rows {f['copy']:.2f}s)")
        if r is not None:
            r_total = r["estimate"]
            how = ("every account" if r["accounts"] == args.accounts else
                   f"extrapolated from {r['accounts']:,} of {args.accounts:,} accounts "
                   f"in {r['seconds']:.0f}s")
            print(f"(r) per account (reference)  {r_total:7.2f}s  {rate(r_total)}  ({how}; "
                  f"{r['queries']:,} queries, {r['rows']:,} rows)")
            print(f"ratio (r) vs (b):             {r_total / b:5.2f}x (b)'s time")
            print(f"ratio (r) vs (a):             {r_total / a_total:5.2f}x (a)'s time")
        print(f"ratio end to end vs floor:    {a_total / f['total']:5.2f}x the floor's time  "
              "(target ≤ 1.3x)")
        print(f"ratio end to end vs (b):      {b / a_total:5.2f}x faster  (target ≥ 4x)")
        print(f"ratio rollup step vs (c):     {r_only / c:5.2f}x DuckDB's time  (target ≤ 2x)")
        print(f"peak memory of (a):           {a['peak_mb']:,.0f} MB  (target < 2048 MB; "
              f"{a['peak_extract_mb']:,.0f} MB after extraction)")
        if a["rows"] != b_rows:
            print(f"row counts differ: project {a['rows']:,} vs SQL {b_rows:,}")
    finally:
        drop_db(src)
        drop_db(whurl)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
