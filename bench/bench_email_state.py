"""Benchmark: incremental email state refresh vs the full recompute, same run, ratios.

A synthetic landed Mailgun log (N events over M recipients, written directly with pyarrow
as ``ProviderEventLog.append`` lays it out: one folder per UTC date, many files per day), an
app database with the recipients and a warehouse, both in PostgreSQL. Then, each in a child
process whose peak RSS is reported:

(1) the full recompute of the whole history (``rebuild_email_state``), which also leaves
    the history folded;
(2) 100k new events land (most for the latest emails in today's folder, a fifth of them
    late events for random older recipients, landing in old date folders, plus copies of
    some of them: a re-fetch), are registered as the fetch step would, and one incremental
    refresh (``refresh_email_state``, log discovery included) folds them.

``--verify`` then rebuilds again and checks that the incremental tables equal the full
recompute's, row for row (in SQL: EXCEPT both ways).

Usage: python bench/bench_email_state.py [--events 50000000 --recipients 1000000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import posixpath
import shutil
import sys
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from bench_common import peak_rss_mb, prefixed_strings

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.core.sources import source_metadata
from analytics_pipeline.email import state as es
from analytics_pipeline.email import tables as et
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA
from analytics_pipeline.email.source import EmailSource, src_email_recipients, src_emails

PG = os.environ.get("ANALYTICS_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
KIND = "automation"
T0 = 1_772_000_000  # 2026-02-25
DAY = 86_400
EVENTS = np.array(["accepted", "delivered", "opened", "clicked", "failed", "unsubscribed",
                   "complained"])
EVENT_P = [0.25, 0.35, 0.25, 0.09, 0.04, 0.015, 0.005]
PER_EMAIL = 500  # recipients per email: a batch send shares one message id






def events_for(rng: np.random.Generator, who: np.ndarray, ts_us: np.ndarray, first_id: int,
               fetched_us: int) -> pa.Table:
    n = len(who)
    kind = rng.choice(EVENTS, n, p=EVENT_P)
    failed = kind == "failed"
    return pa.table({
        "event_id": prefixed_strings("ev", np.arange(first_id, first_id + n)),
        "event": pa.array(kind),
        "timestamp": pa.array(ts_us).cast(pa.timestamp("us", tz="UTC")),
        "recipient": prefixed_strings("member", who, "@example.com"),
        "message_id": prefixed_strings("batch", who // PER_EMAIL + 1, "@mg"),
        "severity": pa.array(np.where(rng.random(n) < 0.5, "permanent", "temporary"),
                             mask=~failed),
        "tags": pa.nulls(n, pa.list_(pa.string())),
        "delivery_status_code": pa.array(np.where(failed, "550", ""), mask=~failed),
        "delivery_status_message": pa.array(np.where(failed, "mailbox unavailable", ""),
                                            mask=~failed),
        "raw": pa.nulls(n, pa.string()),
        "fetched_at": pa.array(np.full(n, fetched_us)).cast(pa.timestamp("us", tz="UTC")),
    }, schema=PROVIDER_EVENT_SCHEMA)


def generate_history(log: ProviderEventLog, n_events: int, n_recipients: int, days: int,
                     files_per_day: int, seed: int = 7) -> None:
    """``n_events`` over ``days`` UTC dates; recipients are sent in id order over the days
    (recent recipients get recent events, and some old ones keep opening)."""
    rng = np.random.default_rng(seed)
    per_file = n_events // (days * files_per_day)
    next_id = 0
    for d in range(days):
        folder = log.date_dir(time_to_date(T0 + d * DAY))
        log.fs.create_dir(folder, recursive=True)
        sent = max(1, int(n_recipients * (d + 1) / days))  # recipients sent by day d
        for f in range(files_per_day):
            n = per_file if (d, f) != (days - 1, files_per_day - 1) else \
                n_events - next_id
            who = rng.integers(1, sent + 1, n)
            ts = (T0 + d * DAY) * 1_000_000 + rng.integers(0, DAY * 1_000_000, n)
            table = events_for(rng, who, ts, next_id, (T0 + d * DAY + DAY) * 1_000_000)
            next_id += n
            pq.write_table(table, posixpath.join(folder, f"{d}{f:03d}-hist.parquet"),
                           filesystem=log.fs, compression="zstd")


def time_to_date(t: float):
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).date()


def land_new(log: ProviderEventLog, n: int, n_recipients: int, days: int, first_id: int,
             seed: int = 11, fetch_id: str = "newfetch") -> int:
    """``n`` new events (+1% copies) appended as a fetch would; returns the files count."""
    rng = np.random.default_rng(seed)
    late = n // 5
    recent = rng.integers(max(1, n_recipients - 20 * PER_EMAIL), n_recipients + 1, n - late)
    old = rng.integers(1, n_recipients + 1, late)
    last_day = (T0 + (days - 1) * DAY) * 1_000_000
    ts = np.concatenate([last_day + rng.integers(0, DAY * 1_000_000, n - late),
                         T0 * 1_000_000 + rng.integers(0, days * DAY * 1_000_000, late)])
    table = events_for(rng, np.concatenate([recent, old]), ts, first_id,
                       (T0 + days * DAY + 60) * 1_000_000)
    table = pa.concat_tables([table, table.take(rng.integers(0, n, n // 100))])
    return log.append(table, fetch_id)


def setup_source(url: str, n_recipients: int) -> None:
    engine = wh.make_engine(url)
    source_metadata.create_all(engine)
    n_emails = n_recipients // PER_EMAIL + 1
    e = np.arange(1, n_emails + 1)
    rid = np.arange(1, n_recipients + 1)
    rng = np.random.default_rng(3)
    with engine.begin() as c:
        wh.insert_arrow(c, src_emails, pa.table({
            "id": e, "account_id": e % 200 + 1, "kind": pa.repeat(pa.scalar(KIND), len(e)),
            "automation_id": e % 50 + 1, "subject": pa.repeat(pa.scalar("s"), len(e)),
            "track_opens": pa.array(e % 10 != 0)}))
        email = rid // PER_EMAIL + 1
        wh.insert_arrow(c, src_email_recipients, pa.table({
            "id": rid, "account_id": email % 200 + 1, "email_id": email,
            "member_id": rng.integers(1, n_recipients // 3 + 2, n_recipients),
            "member_email": prefixed_strings("Member", rid, "@Example.com"),
            "provider_message_id": prefixed_strings("<batch", email, "@mg>"),
            "sent_at": pa.nulls(n_recipients, pa.timestamp("us"))}))
    engine.dispose()


def child(mode: str, landing: str, src: str, wh_url: str, out: mp.Queue) -> None:
    log = ProviderEventLog(landing, f"mailgun/{KIND}")
    engine = wh.make_engine(wh_url)
    wh.ensure_schema(engine)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if mode == "full":
        r = es.rebuild_email_state(log, EmailSource(src), engine, KIND)
    else:
        r = es.refresh_email_state(log, EmailSource(src), engine, KIND)
    out.put({"seconds": time.perf_counter() - t0, "peak_mb": peak_rss_mb(), "base_mb": base,
             "result": r})
    engine.dispose()


def run_child(mode: str, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(mode, *args, q))
    p.start()
    out = q.get()
    p.join()
    return out


COMPARED = [et.email_recipient_states, et.email_stats, et.automation_email_stats,
            et.member_email_stats, es.email_state_totals, es.email_state_failures,
            es.email_state_temporary_failures, es.email_state_recipients,
            es.email_state_unmatched]


def verify(landing: str, src: str, wh_url: str) -> str:
    engine = wh.make_engine(wh_url)
    cols = {t.name: ", ".join(f'"{c.name}"' for c in t.c if c.name != "updated_at")
            for t in COMPARED}
    with engine.begin() as c:
        for t in COMPARED:
            c.execute(sa.text(f'CREATE TABLE "inc_{t.name}" AS SELECT {cols[t.name]} '
                              f'FROM "{t.name}"'))
    full = run_child("full", landing, src, wh_url)
    diffs = {}
    with engine.connect() as c:
        for t in COMPARED:
            a = f'SELECT {cols[t.name]} FROM "{t.name}"'
            b = f'SELECT {cols[t.name]} FROM "inc_{t.name}"'
            n = c.execute(sa.text(f"SELECT (SELECT count(*) FROM ({a} EXCEPT ALL {b}) x) + "
                                  f"(SELECT count(*) FROM ({b} EXCEPT ALL {a}) y)")).scalar()
            rows = c.execute(sa.text(f'SELECT count(*) FROM "{t.name}"')).scalar()
            diffs[t.name] = (rows, n)
    engine.dispose()
    bad = {k: v for k, v in diffs.items() if v[1]}
    summary = ", ".join(f"{k} {v[0]:,}" for k, v in diffs.items())
    return (f"verify: incremental == full recompute over {summary} rows (full again "
            f"{full['seconds']:.1f}s)" if not bad else f"verify: MISMATCH {bad}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=50_000_000)
    p.add_argument("--recipients", type=int, default=1_000_000)
    p.add_argument("--new", type=int, default=100_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--files-per-day", type=int, default=8)
    p.add_argument("--verify", action="store_true")
    args = p.parse_args()

    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    names = [f"ap_bench_state_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with admin.connect() as c:
        for name in names:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    src, wh_url = (sa.make_url(PG).set(database=n).render_as_string(hide_password=False)
                   for n in names)
    landing = tempfile.mkdtemp(prefix="ap_bench_state_")
    try:
        t0 = time.perf_counter()
        setup_source(src, args.recipients)
        log = ProviderEventLog(landing, f"mailgun/{KIND}")
        generate_history(log, args.events, args.recipients, args.days, args.files_per_day)
        files = len(es.list_log_files(log))
        print(f"generated {args.events:,} events in {files:,} files over {args.days} days, "
              f"{args.recipients:,} recipients, in {time.perf_counter() - t0:.0f}s")

        full = run_child("full", landing, src, wh_url)
        r = full["result"]
        print(f"(1) full recompute: {full['seconds']:.1f}s, peak RSS {full['peak_mb']:,.0f} MB "
              f"({r.events:,} events, {r.recipients_touched:,} states, {r.emails:,} emails, "
              f"{r.members:,} members)")

        engine = wh.make_engine(wh_url)
        appended = land_new(log, args.new, args.recipients, args.days, args.events)
        es.register_log_files(engine, KIND, log, "newfetch")
        engine.dispose()
        inc = run_child("incremental", landing, src, wh_url)
        r = inc["result"]
        print(f"(2) incremental refresh after {args.new:,} new events (+1% copies, "
              f"{appended} files, a fifth late in old date folders): {inc['seconds']:.2f}s, "
              f"peak RSS {inc['peak_mb']:,.0f} MB ({r.events:,} events read, "
              f"{r.recipients_touched:,} states, {r.emails:,} emails, "
              f"{r.automations:,} automations, {r.members:,} members updated)")
        ratio = full["seconds"] / inc["seconds"]
        print(f"ratio: incremental {ratio:,.0f}x faster than the full recompute "
              f"(target >= 50x); peak RSS incremental {inc['peak_mb']:,.0f} MB "
              f"(target < 1024), full {full['peak_mb']:,.0f} MB (target < 2048)")
        # Steady state: the refresh before this one was incremental too (the first one above
        # also pays for being the first reader of everything the rebuild had just written).
        engine = wh.make_engine(wh_url)
        land_new(log, args.new, args.recipients, args.days, args.events + 2 * args.new,
                 seed=12, fetch_id="nextfetch")
        es.register_log_files(engine, KIND, log, "nextfetch")
        engine.dispose()
        steady = run_child("incremental", landing, src, wh_url)
        print(f"(3) next incremental refresh after {args.new:,} more new events: "
              f"{steady['seconds']:.2f}s, peak RSS {steady['peak_mb']:,.0f} MB; ratio "
              f"{full['seconds'] / steady['seconds']:,.0f}x")
        if args.verify:
            print(verify(landing, src, wh_url))
    finally:
        shutil.rmtree(landing, ignore_errors=True)
        with admin.connect() as c:
            for name in names:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
