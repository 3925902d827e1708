"""Benchmark: the Mailgun event path and recipient state, same process, ratios.

(1) Items parsed and landed per second, through HTTP from the local simulator's pages
    (``fetch_provider_events`` end to end, cursor included).
(2) Recipient state + email/automation/member stats for N events over M recipients
    (default 5M / 1M), this project's vectorized recomputation, in a child process whose
    peak RSS is reported, against (3) the reference blogging platform's approach: each
    event applied one by one as a guarded ``UPDATE … SET opened_at = … WHERE
    recipient_id = … AND opened_at IS NULL`` in PostgreSQL. Row by row is timed on a
    sample (--reference-events) and its rate compared: running 5M single-row updates
    would take the better part of an hour on this machine.

Usage: python bench/bench_email.py [--events 5000000 --recipients 1000000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from bench_common import peak_rss_mb, prefixed_strings

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.dev.mailgun_simulator import MailgunSimulator, sample_item
from analytics_pipeline.email.compute import (
    automation_stats,
    email_stats,
    match_recipients,
    member_stats,
    recipient_facts,
    recipient_states,
)
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA, MailgunClient
from analytics_pipeline.email.metrics import EMAIL_PIPELINES
from analytics_pipeline.email.source import RECIPIENT_SCHEMA
from analytics_pipeline.email.steps import fetch_provider_events

PG = os.environ.get("ANALYTICS_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
T0 = 1_772_000_000.0
EVENTS = np.array(["delivered", "opened", "clicked", "failed", "unsubscribed", "complained"])
EVENT_P = [0.45, 0.35, 0.12, 0.05, 0.02, 0.01]






def generate(n_events: int, n_recipients: int, seed: int = 5) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    rid = np.arange(1, n_recipients + 1, dtype=np.int64)
    email = rid // 500 + 1  # 500 recipients per email (batch sends share a message id)
    recipients = pa.table({
        "recipient_id": rid, "account_id": email % 200 + 1, "email_id": email,
        "member_id": rng.integers(1, n_recipients // 3 + 2, n_recipients),
        "member_email": prefixed_strings("member", rid, "@example.com"),
        "message_id": prefixed_strings("<batch", email, "@mg>"),
        "automation_id": pa.array(np.where(email % 4 == 0, email % 50 + 1, 0),
                                  mask=email % 4 != 0),
        "track_opens": pa.array(email % 10 != 0),
    }).cast(RECIPIENT_SCHEMA)
    who = rng.integers(1, n_recipients + 1, n_events)
    kind = rng.choice(EVENTS, n_events, p=EVENT_P)
    ts = (T0 + rng.uniform(0, 7 * 86400, n_events)) * 1e6
    events = pa.table({
        "event_id": prefixed_strings("ev", np.arange(n_events)),
        "event": pa.array(kind),
        "timestamp": pa.array(ts.astype(np.int64)).cast(pa.timestamp("us", tz="UTC")),
        "recipient": prefixed_strings("MEMBER", who, "@Example.com"),
        "message_id": prefixed_strings("<batch", who // 500 + 1, "@mg>"),
        "severity": pa.array(np.where(rng.random(n_events) < 0.5, "permanent", "temporary"),
                             mask=kind != "failed"),
        "tags": pa.nulls(n_events, pa.list_(pa.string())),
        "delivery_status_code": pa.nulls(n_events, pa.string()),
        "delivery_status_message": pa.nulls(n_events, pa.string()),
        "raw": pa.nulls(n_events, pa.string()),
        "fetched_at": pa.nulls(n_events, pa.timestamp("us", tz="UTC")),
    })
    events = events.set_column(3, "recipient", pc.utf8_lower(events["recipient"]))
    return events, recipients


def project_states(n_events: int, n_recipients: int, out: mp.Queue) -> None:
    events, recipients = generate(n_events, n_recipients)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    m = match_recipients(events, recipients)
    states = recipient_states(m.events)
    facts = recipient_facts(recipients, states)
    stats = (email_stats(facts), automation_stats(facts), member_stats(facts))
    elapsed = time.perf_counter() - t0
    out.put({"seconds": elapsed, "states": states.num_rows, "emails": stats[0].num_rows,
             "matched": m.events.num_rows, "peak_mb": peak_rss_mb(), "data_mb": base})


def reference_row_by_row(n: int) -> float:
    """Guarded single-row UPDATEs, one statement per event, autocommit (seconds)."""
    name = f"ap_bench_email_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG).set(database=name)
    try:
        events, _ = generate(n, max(1000, n // 5))
        rids = [int(r[6:].split("@")[0]) for r in events["recipient"].to_pylist()]
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(sa.text("""CREATE TABLE recipient_state (recipient_id bigint primary key,
                delivered_at timestamptz, opened_at timestamptz, clicked_at timestamptz,
                failed_at timestamptz, unsubscribed_at timestamptz, complained_at timestamptz)"""))
            c.execute(sa.text("INSERT INTO recipient_state (recipient_id) "
                              "SELECT generate_series(1, :n)"), {"n": max(rids) + 1})
            cols = {"delivered": "delivered_at", "opened": "opened_at", "clicked": "clicked_at",
                    "failed": "failed_at", "unsubscribed": "unsubscribed_at",
                    "complained": "complained_at"}
            cur = c.connection.dbapi_connection.cursor()
            t0 = time.perf_counter()
            for ev, ts, rid in zip(events["event"].to_pylist(),
                                   events["timestamp"].to_pylist(), rids, strict=True):
                col = cols[ev]
                cur.execute(f"UPDATE recipient_state SET {col} = %s "
                            f"WHERE recipient_id = %s AND {col} IS NULL", (ts, rid))
            elapsed = time.perf_counter() - t0
        engine.dispose()
        return elapsed
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fetch_path(n_items: int) -> tuple[float, int]:
    """Items parsed and landed per second through HTTP from the simulator."""
    tmp = tempfile.mkdtemp(prefix="ap_bench_mg_")
    pipeline = EMAIL_PIPELINES[0]
    with MailgunSimulator(clock=lambda: T0 + 10 * 86400) as sim:
        for i in range(n_items):
            sim.add(sample_item(f"e{i}", "opened", T0 + i * 0.05, f"m{i % 9999}@example.com",
                                f"<b{i // 500}@mg>", ["newsletter"]))
        engine = wh.make_engine(f"sqlite:///{tmp}/wh.db")
        wh.ensure_schema(engine)
        client = MailgunClient(sim.domain, sim.api_key, sim.base_url)
        log = ProviderEventLog(tmp, pipeline.stream)
        now = T0 + 10 * 86400
        t0 = time.perf_counter()
        r = fetch_provider_events(client, log, engine, pipeline, "newsletter",
                                  until=T0 + n_items * 0.05 + 1, now=now, settle_seconds=0,
                                  initial_lookback_seconds=(now - T0) + 1)
        elapsed = time.perf_counter() - t0
        landed = log.read(log.days(), PROVIDER_EVENT_SCHEMA).num_rows
        assert landed == n_items, (landed, n_items)
        return elapsed, r.fetched


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=5_000_000)
    p.add_argument("--recipients", type=int, default=1_000_000)
    p.add_argument("--reference-events", type=int, default=20_000)
    p.add_argument("--items", type=int, default=60_000, help="items for the HTTP fetch path")
    args = p.parse_args()

    secs, n = fetch_path(args.items)
    print(f"(1) fetch + parse + land via HTTP: {n:,} items landed in {secs:.2f}s = "
          f"{n / secs:,.0f} items/s landed, {2 * n / secs:,.0f} items/s read (the fresh and "
          "the settling pass each read every item; it is stored once)")

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=project_states, args=(args.events, args.recipients, q))
    proc.start()
    a = q.get()
    proc.join()
    ours = args.events / a["seconds"]
    print(f"(2) states + stats, {args.events:,} events over {args.recipients:,} recipients: "
          f"{a['seconds']:.2f}s = {ours:,.0f} events/s ({a['states']:,} states, "
          f"{a['emails']:,} emails); peak RSS {a['peak_mb']:,.0f} MB "
          f"(of which the generated input {a['data_mb']:,.0f} MB)")
    ref = reference_row_by_row(args.reference_events)
    theirs = args.reference_events / ref
    print(f"(3) row-by-row guarded UPDATEs in PostgreSQL: {args.reference_events:,} events in "
          f"{ref:.2f}s = {theirs:,.0f} events/s (5M would take ~{args.events / theirs / 60:.0f} "
          "min)")
    print(f"ratio: {ours / theirs:,.0f}x faster (target >= 50x); peak memory "
          f"{a['peak_mb']:,.0f} MB (target < 2048 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
