"""The push source's per-partition work, as plain functions tested without Dagster: land a
partition's pushes, roll them up into ``daily_rollups``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.rollups import (
    RollupAccumulator,
    TotalsAccumulator,
    landed_quarantine,
    value_counts,
)
from analytics_pipeline.core.sources import ExtractStats
from analytics_pipeline.core.steps import (
    LandingOutOfDate,
    RollupResult,
    _write_and_check,
    landed_accounts,
)
from analytics_pipeline.push.activity import DEFAULT_BATCH, EventFilter, fetch_activity
from analytics_pipeline.push.activity import MAX_BATCH as ACTIVITY_MAX_BATCH
from analytics_pipeline.push.automations import AutomationDefinitions, register_automations
from analytics_pipeline.push.compute import first_of_each_id, land_pushes, rollup_events
from analytics_pipeline.push.contract import (
    ACTIVITY_SCHEMA,
    ACTIVITY_SOURCE,
    LANDED_PUSH_SCHEMA,
    PUSH_SOURCE,
    push_automations,
    push_impact_daily,
)
from analytics_pipeline.push.impact import impact_table, pushed_groups
from analytics_pipeline.push.mapping import MAX_BATCH as MAPPING_MAX_BATCH
from analytics_pipeline.push.mapping import map_users
from analytics_pipeline.push.metrics import PUSH_METRICS
from analytics_pipeline.push.posthog import PostHogClient
from analytics_pipeline.push.source import PushSource
from analytics_pipeline.push.stats import ComparisonPool


@dataclass
class PushExtractResult:
    key: str
    rows: int
    invalid_rows: int
    duplicates_dropped: int
    accounts: int
    users_skipped: int  # user rows of the accounts that are no usable user
    window: str
    path: str = ""
    invalid_by_reason: dict[str, int] = field(default_factory=dict)


def extract_push_partition(source: PushSource, store: LandingStore, engine: Engine,
                           day: LocalDay, default_tz: str,
                           now: datetime | None = None) -> PushExtractResult:
    """Land one partition's pushes (LANDED_PUSH_SCHEMA), validated against the users of
    the partition's accounts; the default timezone's partitions also sweep the pushes of
    no known account, quarantined as ``unknown_user``. The manifest records the accounts
    it holds."""
    now = now or datetime.now(timezone.utc)
    accounts = wh.account_ids_in_timezone(engine, day.tz)
    orphans_of = wh.known_account_ids(engine) if day.tz == default_tz else None
    users, users_skipped = source.users(accounts)
    stats = ExtractStats()
    batches = list(source.extract_batches(day, accounts, orphans_of, stats))
    pushes = (pa.concat_tables(batches).combine_chunks() if batches
              else None)
    if pushes is None:
        landed = LANDED_PUSH_SCHEMA.empty_table()
    else:
        keep = first_of_each_id(pushes["push_id"].combine_chunks())
        stats.duplicates_dropped = int(len(keep) - np.count_nonzero(keep))
        if stats.duplicates_dropped:
            pushes = pushes.filter(pa.array(keep))
        landed = land_pushes(pushes, users, now)
    reasons = value_counts(landed["invalid_reason"].drop_null())
    stats.invalid_rows = sum(reasons.values())
    meta = {
        "accounts": len(accounts), "account_ids": accounts,
        "window_start_utc": day.start_utc.isoformat(), "window_end_utc": day.end_utc.isoformat(),
        "orphans_swept": orphans_of is not None, "rows_read": stats.rows_read,
        "invalid_rows": stats.invalid_rows, "duplicates_dropped": stats.duplicates_dropped,
        "users_skipped": users_skipped, "extracted_at": now.isoformat(),
    }
    path = store.write_partition(PUSH_SOURCE, day, landed, meta, LANDED_PUSH_SCHEMA)
    return PushExtractResult(
        key=day.key, rows=landed.num_rows, invalid_rows=stats.invalid_rows,
        duplicates_dropped=stats.duplicates_dropped, accounts=len(accounts),
        users_skipped=users_skipped,
        window=f"{day.start_utc.isoformat()} → {day.end_utc.isoformat()}", path=path,
        invalid_by_reason=reasons)


def rollup_push_partition(store: LandingStore, engine: Engine, day: LocalDay,
                          definitions: AutomationDefinitions | None = None) -> RollupResult:
    """Roll one landed partition of pushes up into ``daily_rollups`` (push_sent,
    push_delivered, push_failed by account, campaign and automation), quarantine its
    invalid pushes, and check what was written against totals recomputed from the
    landing."""
    scope, problem = landed_accounts(store, engine, day, PUSH_SOURCE)
    if problem:
        raise LandingOutOfDate(problem)
    landed = store.read_partition(PUSH_SOURCE, day, LANDED_PUSH_SCHEMA)
    invalid_mask = pc.is_valid(landed["invalid_reason"])
    valid, invalid = landed.filter(pc.invert(invalid_mask)), landed.filter(invalid_mask)
    in_scope = pc.is_in(valid["account_id"], pa.array(scope, pa.int64()))
    result = RollupResult(key=day.key, accounts=len(scope), events=landed.num_rows)
    result.other_timezone = int(valid.num_rows - (pc.sum(in_scope).as_py() or 0))
    valid = valid.filter(in_scope)
    automations = register_automations(
        engine, pc.unique(valid["automation_id"].drop_null()).to_pylist(),
        definitions or AutomationDefinitions())
    events = rollup_events(valid, automations)
    rollup, totals = RollupAccumulator(day.day, PUSH_METRICS), TotalsAccumulator(PUSH_METRICS)
    rollup.add(events)
    totals.add(events)
    result.rolled_up = valid.num_rows
    bad = landed_quarantine(invalid, PUSH_SOURCE, "push_id")
    result.quarantined_by_reason = value_counts(bad["reason"])
    return _write_and_check(result, engine, day, PUSH_SOURCE, rollup.finish(),
                            totals.finish(), bad, scope)


@dataclass
class PushImpactResult:
    key: str
    groups: int = 0  # campaign and automation groups of the partition
    rows_written: int = 0
    rows_replaced: int = 0
    significant: int = 0  # group × window rows of the events measure found significant
    preview: list[dict] = field(default_factory=list)


def group_labels(engine: Engine, impact: pa.Table) -> pa.Array:
    """A label per impact row: ``campaign <id>``, or the automation's name (its id when no
    definition file names it)."""
    automation_ids = sorted({r for r, t in zip(impact["group_id"].to_pylist(),
                                               impact["group_type"].to_pylist(), strict=True)
                             if t == "automation"})
    names: dict[str, str] = {}
    c = push_automations.c
    with engine.connect() as conn:
        for lo in range(0, len(automation_ids), wh.ID_CHUNK):
            chunk = automation_ids[lo:lo + wh.ID_CHUNK]
            names.update({a: n for a, n in conn.execute(
                sa.select(c.automation_id, c.name).where(c.automation_id.in_(chunk))) if n})
    return pa.array([f"campaign {g}" if t == "campaign" else names.get(g, g)
                     for g, t in zip(impact["group_id"].to_pylist(),
                                     impact["group_type"].to_pylist(), strict=True)],
                    pa.string())


def compute_push_impact(store: LandingStore, engine: Engine, day: LocalDay,
                        windows_hours: list[int], alpha: float) -> PushImpactResult:
    """The statistics of one partition's campaigns and automations from its landed pushes
    and PostHog answers (never from PostHog itself), replacing the partition's rows of
    ``push_impact_daily`` in one transaction."""
    scope, problem = landed_accounts(store, engine, day, PUSH_SOURCE)
    if problem:
        raise LandingOutOfDate(problem)
    if not store.has_partition(ACTIVITY_SOURCE, day):
        raise LandingOutOfDate(f"{day.key}: no PostHog activity landed; materialize "
                               "push_activity first")
    pushes = store.read_partition(PUSH_SOURCE, day, LANDED_PUSH_SCHEMA)
    activity = store.read_partition(ACTIVITY_SOURCE, day, ACTIVITY_SCHEMA)
    pushes = pushes.filter(pc.is_in(pushes["account_id"], pa.array(scope, pa.int64())))
    impact = impact_table(pushes, activity, windows_hours, alpha=alpha)
    impact = impact.append_column("label", group_labels(engine, impact))
    now = wh.utc_now_naive()
    n = impact.num_rows
    rows = impact.append_column("date", pa.repeat(pa.scalar(day.day, pa.date32()), n)) \
        .append_column("timezone", pa.repeat(pa.scalar(day.tz), n)) \
        .append_column("updated_at", pa.repeat(pa.scalar(now, pa.timestamp("us")), n))
    t = push_impact_daily
    result = PushImpactResult(key=day.key, rows_written=n)
    with engine.begin() as conn:
        wh._lock_partition(conn, ACTIVITY_SOURCE, day.day, day.tz)
        for lo in range(0, len(scope), wh.ID_CHUNK):
            result.rows_replaced += conn.execute(t.delete().where(
                t.c.date == day.day, t.c.account_id.in_(scope[lo:lo + wh.ID_CHUNK]))
            ).rowcount or 0
        wh.insert_arrow(conn, t, rows.select([c.name for c in t.columns]))
    events = impact.filter(pc.equal(impact["metric"], "events"))
    result.groups = len({(r["account_id"], r["group_type"], r["group_id"])
                         for r in events.select(["account_id", "group_type", "group_id"])
                         .to_pylist()})
    result.significant = int(pc.sum(pc.fill_null(events["significant"], False)).as_py() or 0)
    result.preview = [{k: float(f"{v:.4g}") if isinstance(v, float) else v
                       for k, v in row.items()}  # four significant digits, for reading
                      for row in events.sort_by([("users", "descending")]).slice(0, 10)
                      .select(["account_id", "label", "window_hours", "users",
                               "mapped_rate", "mean_before", "mean_after", "lift",
                               "p_value_t", "significant", "did"]).to_pylist()]
    return result


@dataclass
class PushActivityResult:
    key: str
    pushes_analysed: int = 0  # delivered pushes of mapped users
    comparison_users: int = 0
    rows: int = 0  # answer rows landed (cohort members × windows)
    queries: int = 0  # PostHog queries issued (mapping and activity)
    rows_received: int = 0
    # per account: users with a delivered push, those mapped, and the unmapped ids
    mapping: dict[int, dict] = field(default_factory=dict)
    methods: dict[str, int] = field(default_factory=dict)
    path: str = ""


@dataclass(frozen=True)
class ComparisonSizing:
    """How many comparison users a campaign gets: ``ratio`` per delivered push, at least
    ``minimum`` (a small campaign's difference in differences is otherwise as noisy as its
    comparison is small) and never more than ``maximum`` (which wins over ``minimum``: 0
    turns comparisons off); fewer when the account has fewer users without a push around
    the campaign.

    Why not always ``maximum``: the interval of the difference in differences narrows with
    ``1/n_pushed + 1/n_comparison``, so comparison users beyond the pushed users' number
    buy little (ten times as many narrow it by 26 % when both groups vary alike), while
    each costs PostHog queries, which are rate-limited (~120 an hour)."""

    ratio: float = 1.0
    minimum: int = 100
    maximum: int = 1000

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio) and self.ratio >= 0) or self.minimum < 0 \
                or self.maximum < 0:
            raise ValueError(f"comparison sizing: need a finite ratio >= 0 and minimum, "
                             f"maximum >= 0, got {self}")

    def size(self, pushes: int) -> int:
        return min(self.maximum, max(self.minimum, math.ceil(self.ratio * pushes)))


def _median_anchor(anchors: pa.Array) -> int:
    """The median instant (epoch µs) of a group's pushes (lower median: an instant seen)."""
    us = np.sort(pc.cast(anchors, pa.int64()).to_numpy())
    return int(us[(len(us) - 1) // 2])


def fetch_push_activity(source: PushSource, store: LandingStore, engine: Engine,
                        client: PostHogClient, day: LocalDay, windows_hours: list[int], *,
                        event_filter: EventFilter | None = None,
                        comparison: ComparisonSizing | None = None,
                        refresh_after: timedelta = timedelta(days=7), batch: int = 1000,
                        activity_batch: int = DEFAULT_BATCH,
                        now: datetime | None = None) -> PushActivityResult:
    """Map the partition's pushed users (and each campaign's comparison users) to PostHog
    persons, ask PostHog for their activity before and after each push, and land the
    answers (ACTIVITY_SCHEMA): re-running the statistics never asks PostHog again.

    A campaign's comparison users are users of its account with no push sent or delivered
    in ``[t − W, t + W)`` (``t`` the campaign's median anchor, ``W`` the longest window),
    drawn deterministically (seeded by the campaign and the partition), as many as
    ``comparison`` sizes for the campaign's delivered pushes, given the same windows around
    ``t``. ``batch`` is the mapping's people per query (≤ 1,000), ``activity_batch`` the
    activity's (person, anchor) pairs per query (≤ 2,500). Automations have no comparison
    group: their pushes are triggered by the users' own behaviour, so users not triggered
    are no comparison."""
    now = now or datetime.now(timezone.utc)
    # settings out of range fail here, before any PostHog query is spent
    if not 1 <= batch <= MAPPING_MAX_BATCH:
        raise ValueError(f"ANALYTICS_PUSH_BATCH_USERS must be within 1..{MAPPING_MAX_BATCH}, "
                         f"not {batch}")
    if not 1 <= activity_batch <= ACTIVITY_MAX_BATCH:
        raise ValueError(f"ANALYTICS_PUSH_ACTIVITY_BATCH must be within "
                         f"1..{ACTIVITY_MAX_BATCH}, not {activity_batch}")
    scope, problem = landed_accounts(store, engine, day, PUSH_SOURCE)
    if problem:
        raise LandingOutOfDate(problem)
    landed = store.read_partition(PUSH_SOURCE, day, LANDED_PUSH_SCHEMA)
    landed = landed.filter(pc.is_in(landed["account_id"], pa.array(scope, pa.int64())))
    groups = pushed_groups(landed)  # (account, group, user, push, anchor) of delivered pushes
    result = PushActivityResult(key=day.key)
    users, _ = source.users(sorted(set(groups["account_id"].to_pylist())))
    longest = timedelta(hours=max(windows_hours))
    comparison_parts = []
    campaigns = groups.filter(pc.equal(groups["group_type"], "campaign"))
    by_campaign = campaigns.group_by(["account_id", "group_id"], use_threads=False) \
        .aggregate([("anchor_at", "list")])
    sizing = comparison or ComparisonSizing()
    medians = [(int(r["account_id"]), r["group_id"], _median_anchor(
        pa.array(r["anchor_at_list"], pa.timestamp("us", tz="UTC"))),
        sizing.size(len(r["anchor_at_list"])))
        for r in by_campaign.to_pylist()]  # one per campaign of the day
    instants = None
    if medians:  # every push instant near the day's campaigns, read once
        lo = min(m[2] for m in medians) - int(longest / timedelta(microseconds=1))
        hi = max(m[2] for m in medians) + int(longest / timedelta(microseconds=1))
        epoch = datetime(1970, 1, 1)
        instants = source.push_instants(sorted({m[0] for m in medians}),
                                        epoch + timedelta(microseconds=lo),
                                        epoch + timedelta(microseconds=hi + 1))
        at_us = pc.cast(instants["at"], pa.int64()).to_numpy()
        inst_account = instants["account_id"].to_numpy()
        inst_user = instants["user_id"].to_numpy()
        user_ids, user_accounts = (users["user_id"].to_numpy(),
                                   users["account_id"].to_numpy())
    width = int(longest / timedelta(microseconds=1))
    pools: dict[int, ComparisonPool] = {}
    for account, group_id, t_us, size in medians:
        if account not in pools:
            mine = inst_account == account
            pools[account] = ComparisonPool(user_ids[user_accounts == account],
                                            inst_user[mine], at_us[mine])
        sample = pools[account].draw(t_us, width, size, f"campaign:{group_id}:{day.key}")
        n = len(sample)
        comparison_parts.append(pa.table({
            "account_id": pa.repeat(pa.scalar(account, pa.int64()), n),
            "group_type": pa.repeat(pa.scalar("campaign"), n),
            "group_id": pa.repeat(pa.scalar(group_id), n),
            "user_id": pa.array(sample, pa.int64()),
            "push_id": pa.nulls(n, pa.int64()),
            "anchor_at": pa.repeat(pa.scalar(t_us, pa.int64()).cast(
                pa.timestamp("us", tz="UTC")), n)}))
    comparison = (pa.concat_tables(comparison_parts) if comparison_parts else
                  groups.select(["account_id", "group_type", "group_id", "user_id", "push_id",
                                 "anchor_at"]).slice(0, 0))
    members = pa.concat_tables([
        groups.select(["account_id", "group_type", "group_id", "user_id", "push_id",
                       "anchor_at"]).append_column(
            "treated", pa.repeat(pa.scalar(True), groups.num_rows)),
        comparison.append_column("treated", pa.repeat(pa.scalar(False), comparison.num_rows)),
    ]).combine_chunks()
    wanted = pc.unique(members["user_id"])
    to_map = users.filter(pc.is_in(users["user_id"], wanted))
    mapping = map_users(engine, client, to_map, now, refresh_after=refresh_after, batch=batch)
    joined = members.join(mapping, "user_id", join_type="left outer", use_threads=False)
    mapped = joined.filter(pc.is_valid(joined["person_id"]))
    result.methods = value_counts(mapping["method"])
    # the mapping rate of each account, over its users with a delivered push
    treated_users = joined.filter(joined["treated"]).group_by(
        ["account_id", "user_id"], use_threads=False).aggregate([("person_id", "max")])
    for account in sorted(set(treated_users["account_id"].to_pylist())):
        mine = treated_users.filter(pc.equal(treated_users["account_id"], account))
        unmapped = mine.filter(pc.is_null(mine["person_id_max"]))["user_id"].to_pylist()
        result.mapping[int(account)] = {"users": mine.num_rows,
                                        "mapped": mine.num_rows - len(unmapped),
                                        "unmapped_user_ids": sorted(unmapped)}
    cohort = mapped.select(["account_id", "group_type", "group_id", "treated", "push_id",
                            "user_id", "person_id", "anchor_at"])
    answers = fetch_activity(client, cohort, windows_hours, event_filter,
                             batch=activity_batch)
    answers = pa.Table.from_arrays([answers[f.name].cast(f.type) for f in ACTIVITY_SCHEMA],
                                   schema=ACTIVITY_SCHEMA)
    result.pushes_analysed = int(pc.sum(cohort["treated"]).as_py() or 0)
    result.comparison_users = cohort.num_rows - result.pushes_analysed
    result.rows = answers.num_rows
    result.queries, result.rows_received = client.stats.queries, client.stats.rows
    meta = {"account_ids": scope, "windows_hours": list(windows_hours),
            "events": list((event_filter or EventFilter()).events or ["all but $-events"]),
            "queries": result.queries, "rows_received": result.rows_received,
            "mapping": {str(a): {k: v for k, v in m.items() if k != "unmapped_user_ids"}
                        for a, m in result.mapping.items()},
            "fetched_at": now.isoformat()}
    result.path = store.write_partition(ACTIVITY_SOURCE, day, answers, meta, ACTIVITY_SCHEMA)
    return result
