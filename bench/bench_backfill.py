"""Benchmark: a year of support history backfilled through Dagster as an operator launches
it, next to one large partition measured in the same process.

The year. A PostgreSQL application database holds ``--events`` reporting events over
``--days`` days for ``--accounts`` accounts in 12 timezones, unevenly (the first timezone
has about a third of the accounts and events, the last a few percent), with the reference
support app's indexes (``--indexes``, as bench_rollup.py). The accounts of the three
smallest timezones start later in the year, so their first partitions are empty: empty
partitions run inside the same range runs as full ones, which is how the fixed cost of a
partition is measured.

The launch. A Dagster instance configured by ``deploy/dagster.yaml`` (PostgreSQL storage,
the queued run coordinator with at most one run per timezone, the project's run launcher;
``--concurrency`` runs at once) and the project's code location served by a code server.
The accounts asset runs first (it registers the timezones); then one backfill of both
support assets over every partition is submitted, as the UI submits it, and the backfill
and run-queue daemons' iterations are driven until it completes (Dagster's own code, in
this process; the sensors are not run). Runs are launched by the code server into their
own processes, one run per timezone (``BackfillPolicy.single_run``).

Measured from the instance afterwards: total wall time from submission to the last run's
end, runs, time from launch to the first step (process start, code load), each step, and
each partition from the run log (the assets log one line per partition): the median time
of an empty partition is the fixed cost of a partition inside a range run; events per
second of the year against the rate of one large partition (``--large`` events, one day,
extraction + rollup + write as bench_rollup.py runs it, in a child process). The figures
are checked: every run succeeded, and the warehouse's account totals per metric equal the
source's events.

Usage:
    python bench/bench_backfill.py [--events 20000000 --days 365 --accounts 1200
        --concurrency 2 --large 2000000]
Needs PostgreSQL (ANALYTICS_BENCH_PG_URL, default postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
import yaml
from bench_common import create_db, drop_db

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.partitions import local_midnight_utc
from analytics_pipeline.core.sources import source_metadata
from analytics_pipeline.support.source import src_reporting_events

REPO = Path(__file__).resolve().parents[1]
START = date(2025, 1, 1)
TIMEZONES = ["America/New_York", "Europe/Berlin", "Asia/Kolkata", "America/Los_Angeles",
             "Europe/London", "America/Sao_Paulo", "Asia/Singapore", "Australia/Sydney",
             "America/Chicago", "Asia/Tokyo", "Africa/Lagos", "Pacific/Auckland"]
TZ_WEIGHT = 1.0 / np.arange(1, len(TIMEZONES) + 1)  # Zipf: uneven across timezones
LATE_START = {9: 0.33, 10: 0.5, 11: 0.75}  # timezone → share of the year before it starts
NAMES = np.array(["first_response", "reply_time", "conversation_resolved",
                  "conversation_bot_resolved", "conversation_bot_handoff",
                  "conversation_opened"])
NAME_P = [0.2, 0.35, 0.2, 0.05, 0.1, 0.1]
CHUNK = 2_000_000
RAW_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2}\|\S+): landed (\d+) events")
ROLLUP_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2}\|\S+): (\d+) events → ")


# --- the source ----------------------------------------------------------------------------


def plan_accounts(n: int, days: int, rng) -> dict[str, np.ndarray]:
    """Accounts spread over the timezones by their weight; each with an activity weight and
    the first day it has events."""
    share = TZ_WEIGHT / TZ_WEIGHT.sum()
    per_tz = np.maximum(5, np.round(share * n).astype(int))
    tz = np.repeat(np.arange(len(TIMEZONES)), per_tz)
    first = np.array([int(LATE_START.get(int(t), 0.0) * days) for t in tz])
    return {"id": np.arange(1, len(tz) + 1, dtype=np.int64), "tz": tz, "first_day": first,
            "weight": rng.lognormal(0, 1, len(tz)) * share[tz] / np.bincount(tz)[tz]}


def plan_events(acc: dict, days: int, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Each event's account (by weight) and local day (uniform over the account's active
    days), in the order an application appends them: by day."""
    p = acc["weight"] / acc["weight"].sum()
    a = rng.choice(len(p), n, p=p)
    first = acc["first_day"][a]
    day = first + (rng.random(n) * (days - first)).astype(np.int64)
    order = np.argsort(day, kind="stable")
    return a[order], day[order]


def generate(acc: dict, account: np.ndarray, day: np.ndarray, midnights: np.ndarray, rng,
             first_id: int) -> pa.Table:
    """The events of the given (account index, local day) pairs, each at a uniform instant
    of its local day (23 or 25 hours on DST days), the chunk's rows in time order."""
    tz = acc["tz"][account]
    lo = midnights[tz, day]
    created = (lo + rng.random(len(account)) * (midnights[tz, day + 1] - lo)).astype(np.int64)
    order = np.argsort(created, kind="stable")  # whole rows: each keeps its own instant
    account, created = account[order], created[order]
    n = len(account)
    value = rng.lognormal(6, 1, n).round(1)
    ids = acc["id"][account]
    return pa.table({
        "id": np.arange(first_id, first_id + n, dtype=np.int64),
        "name": pa.array(rng.choice(NAMES, n, p=NAME_P)),
        "value": pa.array(value, mask=rng.random(n) < 0.05),
        "value_in_business_hours": pa.array((value * rng.random(n)).round(1)),
        "account_id": ids,
        "user_id": pa.array(ids * 100 + rng.integers(0, 20, n), mask=rng.random(n) < 0.1),
        "inbox_id": ids * 10 + rng.integers(0, 5, n),
        "conversation_id": rng.integers(1, max(2, n // 3), n).astype(np.int64),
        "created_at": pa.array(created, pa.timestamp("us")),
        "updated_at": pa.array(created, pa.timestamp("us")),
    })


def load_source(url: str, acc: dict, days: int, n: int, seed: int, indexes: str) -> None:
    import adbc_driver_postgresql.dbapi as adbc_pg
    from bench_rollup import INDEXES

    engine = wh.make_engine(url)
    source_metadata.create_all(engine)
    with engine.begin() as c:
        for ix in src_reporting_events.indexes:  # built once after the load, as chosen
            c.execute(sa.text(f"DROP INDEX {ix.name}"))
        c.execute(source_metadata.tables["accounts"].insert(), [
            {"id": int(i), "name": f"account {i}", "reporting_timezone": TIMEZONES[t]}
            for i, t in zip(acc["id"], acc["tz"], strict=True)])
    libpq = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    rng = np.random.default_rng(seed)
    account, day = plan_events(acc, days, n, rng)
    midnights = np.array([[local_midnight_utc(START + timedelta(days=d), z).timestamp()
                           for d in range(days + 1)] for z in TIMEZONES]) * 1e6
    with adbc_pg.connect(libpq) as conn, conn.cursor() as cur:
        for off in range(0, n, CHUNK):
            part = slice(off, off + CHUNK)
            cur.adbc_ingest("reporting_events", generate(
                acc, account[part], day[part], midnights, rng, off + 1), mode="append")
            conn.commit()
    with engine.begin() as c:
        for name, cols in INDEXES[indexes]:
            c.execute(sa.text(f"CREATE INDEX {name} ON reporting_events ({cols})"))
    e = sa.create_engine(wh.normalize_url(url), isolation_level="AUTOCOMMIT")
    with e.connect() as c:
        c.execute(sa.text("VACUUM ANALYZE reporting_events"))
    e.dispose()
    engine.dispose()


# --- the large partition (the reference rate) ---------------------------------------------


def large_partition(events: int, accounts: int) -> dict:
    """bench_rollup.py's end to end run of one day of ``events`` in a child process."""
    import bench_rollup as br

    src, whurl = create_db("ap_bbf_large_src"), create_db("ap_bbf_large_wh")
    tmp = tempfile.mkdtemp(prefix="ap_bbf_large_")
    try:
        br.load_source(src, br.generate(events, accounts), accounts)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        proc = ctx.Process(target=br.project_run, args=(src, whurl, tmp, q))
        proc.start()
        a = q.get()
        proc.join()
        seconds = a["extract"] + a["rollup_write"]
        return {"events": events, "seconds": seconds, "rate": events / seconds,
                "mismatches": a["mismatches"]}
    finally:
        drop_db(src)
        drop_db(whurl)
        shutil.rmtree(tmp, ignore_errors=True)


# --- the backfill through Dagster ---------------------------------------------------------


def instance_home(tmp: str, dagster_db: str, concurrency: int) -> str:
    """DAGSTER_HOME with deploy/dagster.yaml, its PostgreSQL storage pointed at
    ``dagster_db`` and ``concurrency`` runs at once."""
    home = os.path.join(tmp, "dagster_home")
    os.makedirs(home)
    config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    config["run_coordinator"]["config"]["max_concurrent_runs"] = concurrency
    with open(os.path.join(home, "dagster.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    u = sa.make_url(dagster_db)
    os.environ.update({"DAGSTER_HOME": home, "DAGSTER_PG_HOST": u.host or "127.0.0.1",
                       "DAGSTER_PG_PORT": str(u.port or 5432), "DAGSTER_PG_DB": u.database,
                       "DAGSTER_PG_USER": u.username or "postgres",
                       "DAGSTER_PG_PASSWORD": u.password or "unused-with-trust-auth"})
    return home


def backfill(src: str, whurl: str, landing: str, days: int, concurrency: int,
             dagster_db: str, tmp: str) -> dict:
    from dagster import AssetKey, DagsterInstance, materialize
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    home = instance_home(tmp, dagster_db, concurrency)
    os.environ.update({"ANALYTICS_SOURCE_URL": src, "ANALYTICS_WAREHOUSE_URL": whurl,
                       "ANALYTICS_LANDING_URI": landing, "ANALYTICS_DEFAULT_TIMEZONE": "UTC",
                       "ANALYTICS_START_DATE": START.isoformat()})
    from analytics_pipeline.core.accounts import accounts
    from analytics_pipeline.core.resources import (
        Landing,
        PipelineSettings,
        SourceDatabase,
        Warehouse,
    )
    from analytics_pipeline.definitions import defs

    log = logging.getLogger("bench_backfill")
    instance = DagsterInstance.from_config(home)
    try:
        assert materialize([accounts], instance=instance, resources={
            "source_db": SourceDatabase(url=src), "warehouse": Warehouse(url=whurl),
            "landing": Landing(uri=landing),
            "settings": PipelineSettings(default_timezone="UTC",
                                         start_date=START.isoformat())}).success
        keys = [f"{START + timedelta(days=d)}|{tz}" for tz in TIMEZONES for d in range(days)]
        target = ModuleTarget(module_name="analytics_pipeline.definitions", attribute=None,
                              working_directory=str(REPO), location_name="analytics_pipeline")
        backfill_id = f"year{uuid.uuid4().hex[:6]}"
        with create_test_daemon_workspace_context(target, instance) as ctx:
            queue_daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
            submitted = time.time()
            instance.add_backfill(PartitionBackfill.from_asset_partitions(
                backfill_id=backfill_id, asset_graph=defs.resolve_asset_graph(),
                partition_names=keys,
                asset_selection=[AssetKey("raw_reporting_events"),
                                 AssetKey("reporting_rollups")],
                backfill_timestamp=submitted, tags={}, dynamic_partitions_store=instance,
                all_partitions=False, title="a year of support history", description=None,
                run_config=None))
            last_note = time.monotonic()
            while True:
                status = instance.get_backfill(backfill_id).status
                if status != BulkActionStatus.REQUESTED:
                    break
                list(execute_backfill_iteration(ctx, log))
                list(queue_daemon.run_iteration(ctx))
                if time.monotonic() - last_note > 60:
                    runs = backfill_runs(instance, backfill_id)
                    done = sum(r.is_finished for r in runs)
                    print(f"  … {time.time() - submitted:.0f}s: {len(runs)} runs, {done} "
                          "finished", flush=True)
                    last_note = time.monotonic()
                time.sleep(1)
            runs = backfill_runs(instance, backfill_id)
            while not all(r.is_finished for r in runs):  # the backfill ends with its runs
                time.sleep(1)
                runs = backfill_runs(instance, backfill_id)
        return measure(instance, runs, submitted, status.value, len(keys))
    finally:
        instance.dispose()


def backfill_runs(instance, backfill_id: str) -> list:
    from dagster import RunsFilter

    return list(instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id})))


def measure(instance, runs: list, submitted: float, status: str, partitions: int) -> dict:
    """Per run: launch → first step → steps → end; per partition: the time between two
    partition lines of a step (the first from the step's start)."""
    from dagster import DagsterEventType

    per_run, partition_times = [], {"raw_reporting_events": [], "reporting_rollups": []}
    events_landed = 0
    for run in runs:
        stats = instance.get_run_stats(run.run_id)
        steps = sorted(instance.get_run_step_stats(run.run_id), key=lambda s: s.start_time)
        launched = stats.launch_time or stats.start_time
        per_run.append({
            "run_id": run.run_id, "status": run.status.value,
            "timezone": run.tags.get("analytics/timezone"),
            "launched": launched, "started": stats.start_time, "ended": stats.end_time,
            "to_first_step": steps[0].start_time - launched if steps else None,
            "steps": {s.step_key: s.end_time - s.start_time for s in steps},
            "after_last_step": stats.end_time - steps[-1].end_time if steps else None,
        })
        starts = {e.step_key: e.timestamp for e in instance.all_logs(
            run.run_id, of_type=DagsterEventType.STEP_START)}
        last: dict[str, float] = {}
        for e in instance.all_logs(run.run_id):
            if e.dagster_event is not None or not e.step_key:
                continue
            pattern = RAW_LINE if e.step_key == "raw_reporting_events" else ROLLUP_LINE
            m = pattern.match(e.user_message or "")
            if not m:
                continue
            before = last.get(e.step_key, starts.get(e.step_key, e.timestamp))
            n = int(m.group(2))
            partition_times[e.step_key].append((n, e.timestamp - before))
            last[e.step_key] = e.timestamp
            if e.step_key == "raw_reporting_events":
                events_landed += n
    return {"status": status, "runs": per_run, "partitions": partitions,
            "partition_times": partition_times, "events_landed": events_landed,
            "submitted": submitted,
            "wall": max(r["ended"] for r in per_run) - submitted if per_run else 0.0}


# --- checks -------------------------------------------------------------------------------


def expected_counts(src: str) -> dict[str, int]:
    """Per metric, the count the account dimension must hold over the year, from the
    source in SQL (distinct handoffs per account, local day and conversation)."""
    from analytics_pipeline.support.metrics import REPORTING_METRICS

    e = sa.create_engine(wh.normalize_url(src))
    with e.connect() as c:
        per_name = dict(c.execute(sa.text(
            "SELECT name, count(*) FROM reporting_events GROUP BY name")).all())
        handoffs = c.execute(sa.text("""
            SELECT count(*) FROM (SELECT DISTINCT e.account_id,
                (e.created_at AT TIME ZONE 'UTC' AT TIME ZONE a.reporting_timezone)::date,
                e.conversation_id
              FROM reporting_events e JOIN accounts a ON a.id = e.account_id
              WHERE e.name = 'conversation_bot_handoff') d""")).scalar_one()
    e.dispose()
    return {m.name: int(handoffs) if m.distinct_of else int(per_name.get(m.raw_event, 0))
            for m in REPORTING_METRICS}


def warehouse_counts(whurl: str) -> dict[str, int]:
    e = sa.create_engine(wh.normalize_url(whurl))
    with e.connect() as c:
        got = dict(c.execute(sa.text(
            "SELECT metric, sum(count) FROM daily_rollups WHERE dimension_type = 'account' "
            "GROUP BY metric")).all())
    e.dispose()
    return {k: int(v) for k, v in got.items()}


# --- main ---------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"median {statistics.median(values) * 1e3:.0f} ms, p90 "
            f"{np.percentile(values, 90) * 1e3:.0f} ms (n = {len(values):,})")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--accounts", type=int, default=1200)
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 2,
                   help="runs at once (the run queue's max_concurrent_runs)")
    p.add_argument("--large", type=int, default=2_000_000,
                   help="events of the single large partition measured for reference")
    p.add_argument("--indexes", choices=["contract", "reference", "none"], default="reference",
                   help="the source's indexes besides its primary key (bench_rollup.py)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    src, whurl = create_db("ap_bbf_src"), create_db("ap_bbf_wh")
    dagster_db = create_db("ap_bbf_dagster")
    tmp = tempfile.mkdtemp(prefix="ap_bbf_")
    try:
        t = time.perf_counter()
        acc = plan_accounts(args.accounts, args.days, np.random.default_rng(args.seed))
        load_source(src, acc, args.days, args.events, args.seed, args.indexes)
        print(f"loaded {args.events:,} events of {len(acc['id']):,} accounts over "
              f"{args.days} days × {len(TIMEZONES)} timezones (indexes: {args.indexes}) in "
              f"{time.perf_counter() - t:.0f}s", flush=True)
        large = large_partition(args.large, 2000)
        print(f"large partition: {large['events']:,} events in {large['seconds']:.2f}s = "
              f"{large['rate']:,.0f} events/s", flush=True)
        b = backfill(src, whurl, os.path.join(tmp, "landing"), args.days, args.concurrency,
                     dagster_db, tmp)
        want, got = expected_counts(src), warehouse_counts(whurl)

        runs = b["runs"]
        wall = b["wall"]
        run_time = sum(r["ended"] - r["launched"] for r in runs)
        step_time = sum(sum(r["steps"].values()) for r in runs)
        pt = b["partition_times"]
        empty = {k: [s for n, s in v if n == 0] for k, v in pt.items()}
        full = {k: [s for n, s in v if n > 0] for k, v in pt.items()}
        per_partition_fixed = sum(statistics.median(v) for v in empty.values() if v)
        fixed = (run_time - step_time) + per_partition_fixed * b["partitions"]
        rate = args.events / wall if wall else 0.0
        first_launch = min(r["launched"] for r in runs) - b["submitted"]

        print()
        print(f"| measure ({args.events:,} events, {args.days} days × {len(TIMEZONES)} "
              f"timezones = {b['partitions']:,} partitions, both assets; {args.concurrency} "
              "runs at once; 2-core machine) | result |")
        print("|---|---|")
        print(f"| backfill: submitted → last run ended | **{wall:.0f} s** (status "
              f"{b['status']}) |")
        ok = sum(r["status"] == "SUCCESS" for r in runs)
        print(f"| runs | {len(runs)} (one per timezone), {ok} succeeded |")
        print(f"| submitted → first run launched (daemon iterations) | {first_launch:.1f} s |")
        print(f"| per run: launch → first step (process start, code location load) | "
              f"{ms([r['to_first_step'] for r in runs])} |")
        print(f"| per run: after the last step (run end) | "
              f"{ms([r['after_last_step'] for r in runs])} |")
        for k in pt:
            print(f"| {k}: empty partition (fixed cost inside a range run) | {ms(empty[k])} |")
            print(f"| {k}: partition with events | {ms(full[k])} |")
        print(f"| time per partition, both assets (run time / partitions) | "
              f"{run_time / b['partitions'] * 1e3:.0f} ms |")
        print(f"| events per second of the year (events / wall) | **{rate:,.0f}** |")
        print(f"| one large partition ({large['events']:,} events, end to end) | "
              f"{large['seconds']:.2f} s = {large['rate']:,.0f} events/s |")
        print(f"| fixed overhead share (outside steps + empty-partition cost × partitions, "
              f"of run time) | {fixed / run_time * 100:.0f} % |")
        print(f"| load average (1 min) at start / end | {load_before:.2f} / "
              f"{os.getloadavg()[0]:.2f} |")
        print()
        print(f"ratio year rate / large partition rate: {rate / large['rate']:.2f}x "
              "(target ≥ 0.7x)")
        print("fixed cost of an empty partition inside a range run: "
              + ", ".join(f"{k} {statistics.median(v) * 1e3:.0f} ms" for k, v in empty.items()
                          if v) + " (target < 50 ms)")
        problems = []
        if b["status"] != "COMPLETED_SUCCESS" or any(r["status"] != "SUCCESS" for r in runs):
            problems.append(f"backfill {b['status']}, runs {[r['status'] for r in runs]}")
        if b["events_landed"] != args.events:
            problems.append(f"landed {b['events_landed']:,} of {args.events:,} events")
        if want != got:
            problems.append(f"account totals {got} != source {want}")
        if large["mismatches"]:
            problems.append(f"large partition reconciliation {large['mismatches']}")
        if problems:
            print("CHECKS FAILED: " + "; ".join(problems))
            return 1
        print("checks: every run succeeded; every event landed once; the warehouse's account "
              "totals per metric equal the source's")
    finally:
        drop_db(src)
        drop_db(whurl)
        drop_db(dagster_db)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
