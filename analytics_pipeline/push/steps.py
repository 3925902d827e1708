"""The push source's per-partition work, as plain functions tested without Dagster: land a
partition's pushes, roll them up into ``daily_rollups``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
from analytics_pipeline.push.automations import AutomationDefinitions, register_automations
from analytics_pipeline.push.compute import first_of_each_id, land_pushes, rollup_events
from analytics_pipeline.push.contract import LANDED_PUSH_SCHEMA, PUSH_SOURCE
from analytics_pipeline.push.metrics import PUSH_METRICS
from analytics_pipeline.push.source import PushSource


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
    return _write_and_check(result, engine, day, PUSH_SOURCE, rollup, totals, bad, scope)
