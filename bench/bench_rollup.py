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

Prints events/s, ratios and peak memory. Usage:
    python bench/bench_rollup.py --events 2000000 [--accounts 2000]
Needs PostgreSQL (ANALYTICS_BENCH_PG_URL, default postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from datetime import date

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
from analytics_pipeline.support.source import ReportingEventsSource
from analytics_pipeline.support.steps import extract_partition, rollup_partition

TZ = "America/New_York"
DAY = LocalDay(date(2026, 2, 11), TZ)
NAMES = np.array(["first_response", "reply_time", "conversation_resolved",
                  "conversation_bot_resolved", "conversation_bot_handoff",
                  "conversation_opened"])
NAME_P = [0.2, 0.35, 0.2, 0.05, 0.1, 0.1]


def generate(n: int, accounts: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    acc = rng.integers(1, accounts + 1, n)
    start = np.datetime64(DAY.start_utc.replace(tzinfo=None), "us")
    span = int((DAY.end_utc - DAY.start_utc).total_seconds() * 1e6)
    created = start + rng.integers(0, span, n).astype("timedelta64[us]")
    value = rng.lognormal(6, 1, n).round(1)
    user = acc * 100 + rng.integers(0, 20, n)
    user_null = rng.random(n) < 0.1
    return pa.table({
        "id": np.arange(1, n + 1, dtype=np.int64),
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


def load_source(url: str, events: pa.Table, accounts: int) -> None:
    import adbc_driver_postgresql.dbapi as adbc_pg

    engine = wh.make_engine(url)
    source_metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(source_metadata.tables["accounts"].insert(),
                  [{"id": i, "name": f"a{i}", "reporting_timezone": TZ}
                   for i in range(1, accounts + 1)])
    engine.dispose()
    libpq = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with adbc_pg.connect(libpq) as conn, conn.cursor() as cur:
        cur.adbc_ingest("reporting_events", events, mode="append")
        conn.commit()
    e = sa.create_engine(wh.normalize_url(url), isolation_level="AUTOCOMMIT")
    with e.connect() as c:
        c.execute(sa.text("VACUUM ANALYZE reporting_events"))
    e.dispose()




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
                if m.aggregation is Aggregation.COUNT_DISTINCT:
                    agg = "count(DISTINCT conversation_id), 0, 0"
                elif m.aggregation is Aggregation.COUNT_ONLY:
                    agg = "count(*), 0, 0"
                else:
                    agg = ("count(*), sum(coalesce(value, 0)), "
                           "sum(coalesce(value_in_business_hours, 0))")
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
    kinds = inspect_table(url, "reporting_events").kinds
    query = source._query(kinds, url.get_backend_name(), DAY, list(range(1, accounts + 1)),
                          None)
    t0 = time.perf_counter()
    with arrow_batches(url, query) as reader:
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
    args = p.parse_args()
    n = args.events
    src = create_db("ap_bench_src")
    whurl = create_db("ap_bench_wh")
    tmp = tempfile.mkdtemp(prefix="ap_bench_")
    try:
        t = time.perf_counter()
        events = generate(n, args.accounts)
        load_source(src, events, args.accounts)
        del events
        print(f"generated and loaded {n:,} events for {args.accounts} accounts "
              f"in {time.perf_counter() - t:.1f}s")

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
