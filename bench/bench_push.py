"""Benchmark of the push-impact source: one local day of N pushes (C campaigns) to the users
of one account, their activity in a local PostHog simulator holding E events, measured
three ways in one run.

(a) this project: ``extract_push_partition`` (app database → landed pushes), then
    ``fetch_push_activity`` (users mapped to PostHog persons, comparison users drawn per
    campaign, activity before/after every push asked from PostHog over loopback HTTP, the
    answers landed), then ``compute_push_impact`` (statistics per campaign, written to the
    warehouse), in a child process whose peak RSS is reported (the simulator runs in this
    process: the child's RSS is the pipeline's alone). Twice: windows ``24`` and windows
    ``24,72`` (one query per 2,000 (person, push) pairs per *window set*, whatever the
    windows), each in a
    fresh warehouse and landing (the users are mapped again: same work, comparable times);
(b) the naive approach: one query per cohort row (a pushed user's push, a comparison
    user's draw) returning that user's raw events in ``[t − W, t + W)`` (W the longest
    window), the same event filter. Not run in full: a sample of ``--naive-sample`` rows is
    timed through the same HTTP client and extrapolated; its queries are counted exactly
    (one per row) and its rows exactly, with one SQL aggregate over the simulator's events;
(c) the statistics alone: ``impact_table`` over the landed pushes and answers, and the
    whole ``compute_push_impact`` step (read, statistics, labels, warehouse write), against
    the fetch's wall time.

The simulator's rate limit is lifted for the run; the real query API allows about 120
queries an hour, and the output says how long the measured queries would take at that
rate. Loading tens of millions of events into the simulator takes seconds and gigabytes in
this (parent) process: that is the simulator standing in for PostHog, not the pipeline.

Usage:
    python bench/bench_push.py [--pushes 100000] [--campaigns 1000] [--events 20000000]
        [--users 120000] [--comparison 1,100,1000] [--windows '24;24,72'] [--profile]
    python bench/bench_push.py --pushes 10000 --events 2000000   # a quick check
Campaigns default to one per 100 pushes and users to the pushes + 20% (never pushed: the
comparison pool), so a smaller run keeps the shape of the full one. Events are loaded in
time order, as they arrive (PostHog's tables are ordered by day first).
SQLite app database and warehouse in a temp dir by default; ``--pg`` puts both on
PostgreSQL (ANALYTICS_BENCH_PG_URL, default postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bench_common import child, create_db, drop_db, peak_rss_mb, reset_peak_rss, rss_mb

from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.dev.posthog_simulator import PostHogSimulator
from analytics_pipeline.dev.push_data import HOUR_US, Campaign, PushWorld
from analytics_pipeline.push.contract import ACTIVITY_SCHEMA, ACTIVITY_SOURCE

TZ = "America/New_York"
DAY = LocalDay(date(2026, 2, 11), TZ)
ACCOUNT = 1
REAL_RATE_PER_HOUR = 120  # PostHog's query API: about 120 queries an hour per team
DAYS_AROUND = 3  # events from 3 days before the first push to 3 days after the last
NAIVE_QUERY = """SELECT event, timestamp
FROM events
WHERE person_id = {person}
  AND timestamp >= toDateTime({since}) AND timestamp < toDateTime({until})
  AND NOT startsWith(event, '$')
ORDER BY timestamp"""


# --- the generated day --------------------------------------------------------------------


def make_world(pushes: int, campaigns: int, users: int, events: int, effect_share: float,
               extra_rate: float, seed: int = 11) -> PushWorld:
    """One account of ``users`` users; ``campaigns`` campaigns sharing ``pushes`` pushes to
    distinct users (one push each), sent over the first 22 hours of the local day, every
    ``1 / effect_share``-th with ``extra_rate`` extra events an hour after the push; a
    background rate chosen so the simulator holds about ``events`` events."""
    if users < pushes:
        raise SystemExit(f"--users ({users:,}) must be at least --pushes ({pushes:,})")
    sizes = np.full(campaigns, pushes // campaigns)
    sizes[:pushes % campaigns] += 1
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    every = max(1, round(1 / effect_share)) if effect_share > 0 else 0
    span = timedelta(hours=22)
    start = DAY.start_utc
    cs = [Campaign(1000 + i, ACCOUNT, int(sizes[i]), start + span * i / campaigns,
                   extra_rate=extra_rate if every and i % every == 0 else 0.0,
                   spread_minutes=60, offset=int(offsets[i]))
          for i in range(campaigns)]
    # events: base_rate × known users × hours (+ the effects, small)
    hours = int((cs[-1].sent_at - start).total_seconds() // 3600) + 2 * DAYS_AROUND * 24 + 2
    known = users * (1 - 0.02)
    extra = sum(c.users * c.extra_rate * 24 for c in cs)
    base_rate = max(0.001, (events - extra) / (known * hours))
    return PushWorld({ACCOUNT: users}, cs, base_rate=base_rate, days_around=DAYS_AROUND,
                     seed=seed)


# --- (a) the project ----------------------------------------------------------------------


class Phases:
    """Wall time, calls and peak RSS of the functions a step calls, by wrapping them in the
    child (the project's code is not changed): the fetch's time split into comparison draw,
    mapping, activity queries and the rest. Peaks are folded into ``stage_peak`` before each
    reset, so the stage's own peak stays exact."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.peak: dict[str, float] = {}
        self.stage_peak = 0.0

    def wrap(self, name: str, fn):  # noqa: ANN001, ANN201
        def inner(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.stage_peak = max(self.stage_peak, peak_rss_mb())
            reset_peak_rss()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
                self.calls[name] = self.calls.get(name, 0) + 1
                p = peak_rss_mb()
                self.peak[name] = max(self.peak.get(name, 0.0), p)
                self.stage_peak = max(self.stage_peak, p)
                reset_peak_rss()
        return inner

    def end_stage(self) -> float:
        """The peak RSS since the stage started; starts the next stage."""
        peak = max(self.stage_peak, peak_rss_mb())
        self.stage_peak = 0.0
        reset_peak_rss()
        return peak



def project_run(src_url: str, wh_url: str, landing: str, posthog: tuple, windows: list[int],
                comparison: str, profile: bool, out: mp.Queue) -> None:
    """(a) in a child process: extract, fetch (PostHog over HTTP), statistics; timings,
    counters and peak RSS of each step."""
    from analytics_pipeline.core import warehouse as wh
    from analytics_pipeline.core.partitions import resolve_account_timezones
    from analytics_pipeline.push import steps
    from analytics_pipeline.push.contract import LANDED_PUSH_SCHEMA, PUSH_SOURCE
    from analytics_pipeline.push.impact import impact_table
    from analytics_pipeline.push.posthog import PostHogClient
    from analytics_pipeline.push.source import PushSource

    engine = wh.make_engine(wh_url)
    wh.ensure_schema(engine)
    accounts = resolve_account_timezones(
        [{"id": ACCOUNT, "name": "bench", "reporting_timezone": TZ}], "UTC")
    wh.replace_accounts(engine, [a.__dict__ for a in accounts])
    store = LandingStore(landing)
    source = PushSource(src_url, fallback_date=date(2024, 1, 1))
    now = DAY.end_utc + timedelta(hours=max(windows) + 3)
    host, project_id, key = posthog
    client = PostHogClient(host, project_id, key, timeout_seconds=600.0)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    ph = Phases()
    PushSource.push_instants = ph.wrap("push_instants", PushSource.push_instants)
    steps.map_users = ph.wrap("map_users", steps.map_users)
    steps.fetch_activity = ph.wrap("fetch_activity", steps.fetch_activity)
    store.write_partition = ph.wrap("write_partition", store.write_partition)
    ratio, minimum, maximum = comparison.split(",")
    rss0 = rss_mb()
    t0 = time.perf_counter()
    x = steps.extract_push_partition(source, store, engine, DAY, "UTC", now=now)
    t1 = time.perf_counter()
    peak_extract = ph.end_stage()
    ph.seconds.clear(), ph.calls.clear(), ph.peak.clear()  # the fetch's own phases
    if prof is not None:
        prof.enable()
    f = steps.fetch_push_activity(source, store, engine, client, DAY, windows,
                                  comparison=steps.ComparisonSizing(
                                      float(ratio), int(minimum), int(maximum)), now=now)
    if prof is not None:
        prof.disable()
    t2 = time.perf_counter()
    peak_fetch = ph.end_stage()
    fetch_phases = {k: (ph.seconds[k], ph.calls[k], ph.peak[k]) for k in ph.seconds}
    r = steps.compute_push_impact(store, engine, DAY, windows, alpha=0.05)
    t3 = time.perf_counter()
    peak_stats = ph.end_stage()
    # (c) the statistics alone, over the landed pushes and answers
    pushes = store.read_partition(PUSH_SOURCE, DAY, LANDED_PUSH_SCHEMA)
    activity = store.read_partition(ACTIVITY_SOURCE, DAY, ACTIVITY_SCHEMA)
    t4 = time.perf_counter()
    impact = impact_table(pushes, activity, windows, alpha=0.05)
    t5 = time.perf_counter()
    if prof is not None:
        import pstats

        print(f"--- profile of fetch_push_activity, windows {windows} ---", file=sys.stderr)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(20)
    first = impact.filter(pc.and_(pc.and_(pc.equal(impact["metric"], "events"),
                                          pc.equal(impact["window_hours"], windows[0])),
                                  pc.equal(impact["group_type"], "campaign")))
    significant = first.filter(pc.fill_null(first["significant"], False))
    out.put({
        "extract": t1 - t0, "fetch": t2 - t1, "compute": t3 - t2, "impact_table": t5 - t4,
        "pushes_landed": x.rows, "pushes_analysed": f.pushes_analysed,
        "comparison_rows": f.comparison_users, "answer_rows": f.rows,
        "client_queries": client.stats.queries, "client_rows": client.stats.rows,
        "client_seconds": client.stats.seconds, "retries": client.stats.retries,
        "mapping": {a: {k: v for k, v in m.items() if k != "unmapped_user_ids"}
                    for a, m in f.mapping.items()},
        "methods": f.methods, "groups": r.groups, "impact_rows": r.rows_written,
        "campaign_rows": first.num_rows,
        "significant_ids": [int(g) for g in significant["group_id"].to_pylist()],
        "phases": fetch_phases, "arrow_pool_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
        "rss_start_mb": rss0, "peak_extract_mb": peak_extract, "peak_fetch_mb": peak_fetch,
        "peak_stats_mb": peak_stats,
        "peak_mb": max(peak_extract, peak_fetch, peak_stats)})


def stats_run(wh_url: str, landing: str, windows: list[int], out: mp.Queue) -> None:
    """(c) in a fresh child process, as its own Dagster step would run: the statistics of
    the landed answers again (``compute_push_impact``), time and peak RSS."""
    from analytics_pipeline.core import warehouse as wh
    from analytics_pipeline.push.steps import compute_push_impact

    engine = wh.make_engine(wh_url)
    store = LandingStore(landing)
    rss0 = rss_mb()
    reset_peak_rss()
    t = time.perf_counter()
    r = compute_push_impact(store, engine, DAY, windows, alpha=0.05)
    out.put({"seconds": time.perf_counter() - t, "rows": r.rows_written,
             "peak_mb": peak_rss_mb(), "rss_start_mb": rss0,
             "arrow_pool_peak_mb": pa.default_memory_pool().max_memory() / 2**20})


# --- (b) one query per cohort row -----------------------------------------------------------


def naive_run(posthog: tuple, persons: list[str], anchors_us: list[int], wmax: int,
              out: mp.Queue) -> None:
    """(b) in a child process: one query per (person, anchor), raw events of the person in
    ``[t − W, t + W)``, through the project's HTTP client."""
    from analytics_pipeline.push.posthog import PostHogClient

    host, project_id, key = posthog
    client = PostHogClient(host, project_id, key, timeout_seconds=600.0)

    def iso(us: int) -> str:
        return str(np.datetime64(int(us), "us")) + "Z"

    t0 = time.perf_counter()
    rows = 0
    for person, anchor in zip(persons, anchors_us, strict=True):
        answer = client.query_all(NAIVE_QUERY, {
            "person": person, "since": iso(anchor - wmax * HOUR_US),
            "until": iso(anchor + wmax * HOUR_US)})
        rows += answer.num_rows
    out.put({"seconds": time.perf_counter() - t0, "queries": client.stats.queries,
             "rows": rows})


def naive_rows(sim: PostHogSimulator, cohort: pa.Table, wmax: int) -> dict[bool, int]:
    """Rows the naive approach would receive, by ``treated``: every counted event of each
    cohort row's person in ``[t − W, t + W)``, one SQL aggregate on the simulator's DuckDB."""
    cur = sim._cursor()  # the simulator's database, for counting: no query is logged
    try:
        cur.register("_bench_cohort", cohort.select(["person_id", "anchor_at", "treated"]))
        got = cur.execute(f"""
            SELECT c.treated, count(*)
            FROM _bench_cohort c JOIN events e ON e.person_id = c.person_id
            WHERE e.timestamp >= c.anchor_at - INTERVAL {int(wmax)} HOUR
              AND e.timestamp < c.anchor_at + INTERVAL {int(wmax)} HOUR
              AND NOT starts_with(e.event, '$')
            GROUP BY c.treated""").fetchall()
        cur.unregister("_bench_cohort")
    finally:
        cur.close()
    counts = {bool(t): int(n) for t, n in got}
    return {True: counts.get(True, 0), False: counts.get(False, 0)}


# --- main ---------------------------------------------------------------------------------


def query_log(sim: PostHogSimulator, since: int) -> dict:
    """Queries the simulator ran from index ``since``: activity (``countIf``) and mapping."""
    recs = sim.queries[since:]
    act = [r for r in recs if "countIf" in r.query]
    other = [r for r in recs if "countIf" not in r.query]
    return {"activity": len(act), "activity_rows": sum(r.rows for r in act),
            "mapping": len(other), "mapping_rows": sum(r.rows for r in other),
            "server_seconds": sum(r.elapsed for r in recs),
            "activity_server_seconds": sum(r.elapsed for r in act),
            "errors": sum(r.status != 200 for r in recs)}


def fmt_h(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min" \
        if seconds >= 60 else f"{seconds:,.1f} s"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pushes", type=int, default=100_000)
    p.add_argument("--campaigns", type=int, default=None,
                   help="campaigns sharing the pushes (default: one per 100 pushes)")
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--users", type=int, default=None,
                   help="users of the account (default: pushes + 20%%, never pushed: the "
                        "comparison pool)")
    p.add_argument("--comparison", default="1,100,1000",
                   help="comparison sizing: ratio per pushed user, minimum, maximum per "
                        "campaign (the project's defaults: 1,100,1000)")
    p.add_argument("--effect-share", type=float, default=0.1,
                   help="share of campaigns with an effect")
    p.add_argument("--extra-rate", type=float, default=0.25,
                   help="extra events an hour in the 24 h after a push of such a campaign")
    p.add_argument("--naive-sample", type=int, default=500)
    p.add_argument("--windows", default="24;24,72",
                   help="window sets, ';'-separated, each run as (a) in turn")
    p.add_argument("--pg", action="store_true", help="app database and warehouse on PostgreSQL")
    p.add_argument("--profile", action="store_true",
                   help="cProfile fetch_push_activity to stderr")
    args = p.parse_args()
    users = args.users or args.pushes + args.pushes // 5
    args.campaigns = args.campaigns or max(1, args.pushes // 100)
    window_sets = [[int(w) for w in s.split(",")] for s in args.windows.split(";") if s]
    tmp = tempfile.mkdtemp(prefix="ap_bpush_")
    dbs: list[str] = []
    try:
        t = time.perf_counter()
        world = make_world(args.pushes, args.campaigns, users, args.events, args.effect_share,
                           args.extra_rate)
        if args.pg:
            src = create_db("ap_bpush_src")
            dbs.append(src)
        else:
            src = f"sqlite:///{os.path.join(tmp, 'app.db')}"
        world.write_source(src)
        effect_ids = {c.campaign_id for c in world.campaigns if c.extra_rate > 0}
        gen_s = time.perf_counter() - t
        print(f"generated {args.pushes:,} pushes ({args.campaigns:,} campaigns, "
              f"{len(effect_ids):,} with an effect) to {users:,} users into the app database "
              f"in {gen_s:.1f}s", flush=True)

        with PostHogSimulator(rate_limit_per_hour=10**9) as sim:
            t = time.perf_counter()
            # in time order, as events arrive (PostHog's tables are ordered by day first)
            ev = world.events().sort_by("timestamp")
            gen_ev = time.perf_counter() - t
            sim.add_persons(world.persons())
            loaded = sim.add_events(ev)
            del ev
            load_s = time.perf_counter() - t
            print(f"simulator: {loaded:,} events ({world.base_rate:.3f}/user/hour) generated "
                  f"in {gen_ev:.1f}s, loaded in {load_s - gen_ev:.1f}s; this process "
                  f"(simulator) RSS {rss_mb():,.0f} MB, peak {peak_rss_mb():,.0f} MB", flush=True)
            posthog = (sim.base_url, sim.project_id, sim.api_key)

            runs = []
            for windows in window_sets:
                if args.pg:
                    whurl = create_db("ap_bpush_wh")
                    dbs.append(whurl)
                else:
                    whurl = f"sqlite:///{os.path.join(tmp, f'wh_{len(runs)}.db')}"
                landing = os.path.join(tmp, f"landing_{len(runs)}")
                before = len(sim.queries)
                a = child(project_run, src, whurl, landing, posthog, windows,
                          args.comparison, args.profile)
                a["log"] = query_log(sim, before)
                a["stats_fresh"] = child(stats_run, whurl, landing, windows)
                a["windows"] = windows
                # the cohort asked about: one row per cohort row (first window's rows)
                act = LandingStore(landing).read_partition(ACTIVITY_SOURCE, DAY,
                                                           ACTIVITY_SCHEMA)
                cohort = act.filter(pc.equal(act["window_hours"], windows[0]))
                pairs = cohort.group_by(["person_id", "anchor_at"], use_threads=False) \
                    .aggregate([])
                a["cohort"] = cohort.select(["person_id", "anchor_at", "treated"])
                a["pairs"] = pairs.num_rows
                a["persons"] = len(pc.unique(cohort["person_id"]))
                t = time.perf_counter()
                a["naive_rows"] = naive_rows(sim, a["cohort"], max(windows))
                a["naive_count_s"] = time.perf_counter() - t
                print(f"(a) windows {windows}: extract {a['extract']:.1f}s, fetch "
                      f"{a['fetch']:.1f}s, statistics {a['compute']:.1f}s, peak RSS "
                      f"{a['peak_mb']:,.0f} MB; {a['log']}", flush=True)
                runs.append(a)

            # (b) a sample of the first run's cohort rows, one query each
            cohort = runs[0]["cohort"]
            rng = np.random.default_rng(5)
            idx = np.sort(rng.choice(cohort.num_rows, min(args.naive_sample, cohort.num_rows),
                                     replace=False))
            sample = cohort.take(pa.array(idx))
            wmax0 = max(runs[0]["windows"])
            b = child(naive_run, posthog, sample["person_id"].to_pylist(),
                      pc.cast(sample["anchor_at"], pa.int64()).to_pylist(), wmax0)
            per_query = b["seconds"] / max(1, b["queries"])
            sample_rate = b["rows"] / max(1, len(idx))
            print(f"(b) {b['queries']:,} naive queries in {b['seconds']:.1f}s "
                  f"({per_query * 1000:.0f} ms each), {b['rows']:,} rows", flush=True)

        print()
        head = " | ".join(f"windows {','.join(map(str, a['windows']))} h" for a in runs)
        print(f"| measure ({args.pushes:,} pushes, {args.campaigns:,} campaigns, "
              f"{loaded:,} PostHog events, 2-core shared machine) | {head} |")
        print("|---|" + "---|" * len(runs))

        def row(label: str, cell) -> None:  # noqa: ANN001
            print(f"| {label} | " + " | ".join(cell(a) for a in runs) + " |")

        row("(a) extract (app DB → landed pushes)", lambda a: f"{a['extract']:.2f} s")
        row("(a) cohort: pushes analysed + comparison rows (distinct person × anchor)",
            lambda a: f"{a['pushes_analysed']:,} + {a['comparison_rows']:,} "
                      f"({a['pairs']:,} pairs, {a['persons']:,} persons)")
        row("(a) PostHog queries: mapping + activity (rows returned)",
            lambda a: f"{a['log']['mapping']:,} ({a['log']['mapping_rows']:,}) + "
                      f"{a['log']['activity']:,} ({a['log']['activity_rows']:,})")
        row("(a) activity queries per 1,000 cohort pairs, per window set",
            lambda a: f"{a['log']['activity'] / (a['pairs'] / 1000):.3f}")
        row("(a) activity queries per 1,000 pushed users, per window set (target ≤ 1)",
            lambda a: f"{a['log']['activity'] / (a['pushes_analysed'] / 1000):.2f}")
        row("(a) fetch wall time (mapping, comparison draw, queries, landing)",
            lambda a: f"{a['fetch']:.1f} s")
        def split(a: dict) -> str:
            ph = a["phases"]
            named = [("push_instants", "comparison exclusions"), ("map_users", "mapping"),
                     ("fetch_activity", "activity"), ("write_partition", "landing")]
            parts = [f"{label} {ph[k][0]:.1f} s" + (f" ({ph[k][1]:,} calls)" if ph[k][1] > 1
                                                     else "")
                     for k, label in named if k in ph]
            rest = a["fetch"] - sum(ph[k][0] for k, _ in named if k in ph)
            return ", ".join(parts) + f", rest {rest:.1f} s"

        row("(a) fetch split: push_instants (comparison exclusions), map_users, "
            "fetch_activity, landing, rest", split)
        row("(a) … of which waiting for PostHog (simulator executing)",
            lambda a: f"{a['client_seconds']:.1f} s ({a['log']['server_seconds']:.1f} s)")
        row(f"(a) the same queries at {REAL_RATE_PER_HOUR}/hour (the real service's limit)",
            lambda a: fmt_h(a["client_queries"] / REAL_RATE_PER_HOUR * 3600))
        row("(a) statistics: compute_push_impact (read, stats, write)",
            lambda a: f"{a['compute']:.2f} s ({a['impact_rows']:,} rows, {a['groups']:,} groups)")
        row("(c) statistics alone: impact_table", lambda a: f"{a['impact_table']:.2f} s")
        row("(c) compute_push_impact in a fresh process (its own Dagster step): time, peak "
            "RSS (RSS after imports)",
            lambda a: f"{a['stats_fresh']['seconds']:.2f} s, {a['stats_fresh']['peak_mb']:,.0f}"
                      f" MB ({a['stats_fresh']['rss_start_mb']:,.0f} MB)")
        row("(a) peak RSS: extract / fetch / statistics (target < 1,024 MB)",
            lambda a: f"{a['peak_extract_mb']:,.0f} / {a['peak_fetch_mb']:,.0f} / "
                      f"{a['peak_stats_mb']:,.0f} MB")
        row("(a) peak RSS within the fetch: push_instants / map_users / fetch_activity / "
            "landing; Arrow pool peak",
            lambda a: " / ".join(f"{a['phases'][k][2]:,.0f}" for k in (
                "push_instants", "map_users", "fetch_activity", "write_partition")
                if k in a["phases"]) + f" MB; {a['arrow_pool_peak_mb']:,.0f} MB")
        row("(a) campaigns significant (events, first window): with effect / without",
            lambda a: f"{len(effect_ids & set(a['significant_ids'])):,}/{len(effect_ids):,}"
                      f" / {len(set(a['significant_ids']) - effect_ids):,}/"
                      f"{a['campaign_rows'] - len(effect_ids):,}")
        row("(b) naive: queries = cohort rows (pushed users alone)",
            lambda a: f"{a['pushes_analysed'] + a['comparison_rows']:,} "
                      f"({a['pushes_analysed']:,})")
        row("(b) naive: rows = raw events in [t − W, t + W) (pushed users alone)",
            lambda a: f"{sum(a['naive_rows'].values()):,} ({a['naive_rows'][True]:,})")
        row(f"(b) naive: time, {len(idx):,} queries timed × cohort rows (pushed alone)",
            lambda a: f"{fmt_h(per_query * (a['pushes_analysed'] + a['comparison_rows']))}"
                      f" ({fmt_h(per_query * a['pushes_analysed'])})")
        row(f"(b) naive at {REAL_RATE_PER_HOUR}/hour",
            lambda a: fmt_h((a["pushes_analysed"] + a["comparison_rows"])
                            / REAL_RATE_PER_HOUR * 3600))
        print()
        print("The simulator's rate limit was lifted for the run; the real PostHog query API "
              f"allows about {REAL_RATE_PER_HOUR} queries an hour.")
        print(f"Naive sample: {len(idx):,} rows of the first run's cohort, {per_query * 1000:.0f}"
              f" ms a query, {sample_rate:,.1f} rows a query (exact count: "
              f"{sum(runs[0]['naive_rows'].values()) / cohort.num_rows:,.1f}); exact rows "
              f"counted in {runs[0]['naive_count_s']:.1f}s by one DuckDB aggregate.")
        print(f"Simulator (this process, not the pipeline): {loaded:,} events loaded in "
              f"{load_s - gen_ev:.1f}s, peak RSS {peak_rss_mb():,.0f} MB.")
        print()
        for a in runs:
            w = ",".join(map(str, a["windows"]))
            n_rows = a["pushes_analysed"] + a["comparison_rows"]
            rows_naive = sum(a["naive_rows"].values())
            rows_proj = a["log"]["mapping_rows"] + a["log"]["activity_rows"]
            total_q = a["log"]["mapping"] + a["log"]["activity"]
            print(f"[{w}] queries naive / project:   {n_rows / total_q:,.0f}x fewer "
                  f"({n_rows:,} vs {total_q:,}; pushed users alone: "
                  f"{a['pushes_analysed'] / total_q:,.0f}x)")
            print(f"[{w}] rows naive / project:      {rows_naive / rows_proj:,.1f}x fewer "
                  f"({rows_naive:,} vs {rows_proj:,})")
            print(f"[{w}] activity queries per 1,000 cohort pairs: "
                  f"{a['log']['activity'] / (a['pairs'] / 1000):.3f}  (target ≤ 1 per window "
                  f"set; {len(a['windows'])} window(s) here)")
            print(f"[{w}] peak RSS (a):              {a['peak_mb']:,.0f} MB (fetch "
                  f"{a['peak_fetch_mb']:,.0f} MB, statistics after it in the same process "
                  f"{a['peak_stats_mb']:,.0f} MB, in a fresh one "
                  f"{a['stats_fresh']['peak_mb']:,.0f} MB)  (target < 1,024 MB)")
            print(f"[{w}] statistics / fetch:        {a['compute'] / a['fetch']:.1%} "
                  f"(impact_table alone {a['impact_table'] / a['fetch']:.1%})  (target < 10%)")
            print(f"[{w}] fetch vs naive (est.):     {per_query * n_rows / a['fetch']:,.0f}x "
                  "faster")
        bad = [a for a in runs if a["log"]["errors"] or a["retries"]]
        if bad:
            print(f"PostHog errors or retries: {[(a['log']['errors'], a['retries']) for a in bad]}")
            return 1
    finally:
        for url in dbs:
            drop_db(url)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
