"""The support desk's per-partition work, as plain functions tested without Dagster:
extract a partition into landing, roll the landed events up into ``daily_rollups``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.registry import raw_events
from analytics_pipeline.core.rollups import (
    QUARANTINE_SCHEMA,
    RollupAccumulator,
    TotalsAccumulator,
    value_counts,
)
from analytics_pipeline.core.sources import EventSource, ExtractStats
from analytics_pipeline.core.steps import (
    LandingOutOfDate,
    RollupResult,
    _write_and_check,
    landed_accounts,
)
from analytics_pipeline.support.metrics import REPORTING_METRICS
from analytics_pipeline.support.validation import RAW_REPORTING_SCHEMA, validate


@dataclass
class ExtractResult:
    key: str
    rows: int
    accounts: int
    window: str
    path: str
    duplicates_dropped: int = 0
    invalid_rows: int = 0


def extract_partition(
    source: EventSource,
    store: LandingStore,
    engine: Engine,
    day: LocalDay,
    default_tz: str,
    only_accounts: Sequence[int] | None = None,
) -> ExtractResult:
    """Land the source's events of one partition (or of some of its accounts).

    The landing records the accounts it holds (``account_ids``): the rollup rebuilds
    exactly those accounts' rows, whatever the accounts snapshot says later.
    """
    in_tz = wh.account_ids_in_timezone(engine, day.tz)
    stats = ExtractStats()
    meta: dict = {
        "window_start_utc": day.start_utc.isoformat(),
        "window_end_utc": day.end_utc.isoformat(),
    }
    if only_accounts is None:
        targets = in_tz
        # Events of no known account are swept by the default timezone's partitions, so
        # that they are quarantined once instead of vanishing.
        orphans_of = wh.known_account_ids(engine) if day.tz == default_tz else None
        meta.update(accounts=len(targets), account_ids=targets,
                    orphans_swept=orphans_of is not None)

        def batches():
            yield from source.extract_batches(day, targets, orphans_of, stats)
            # the manifest is written after the data: complete the counts before it
            meta.update(rows_read=stats.rows_read, invalid_rows=stats.invalid_rows,
                        duplicates_dropped=stats.duplicates_dropped)

        path = store.write_partition(source.name, day, batches(), meta, RAW_REPORTING_SCHEMA)
    else:
        targets = sorted(set(in_tz) & {int(a) for a in only_accounts})
        prior = (store.partition_meta(source.name, day)
                 if store.has_partition(source.name, day) else {})
        landed = sorted(set(prior.get("account_ids") or []) | set(targets))
        table = source.extract(day, targets, stats=stats)
        meta.update({k: v for k, v in prior.items() if k not in ("rows", "version")})
        meta.update(accounts=len(landed), account_ids=landed,
                    duplicates_dropped=stats.duplicates_dropped)
        path = store.replace_accounts(
            source.name, day, table, targets, RAW_REPORTING_SCHEMA, meta
        )
    rows = store.partition_rows(source.name, day)
    return ExtractResult(
        key=day.key, rows=rows, accounts=len(targets),
        window=f"{day.start_utc.isoformat()} → {day.end_utc.isoformat()}", path=path,
        duplicates_dropped=stats.duplicates_dropped, invalid_rows=stats.invalid_rows,
    )


def rollup_partition(
    store: LandingStore,
    engine: Engine,
    day: LocalDay,
    source: str = "reporting_events",
    only_accounts: Sequence[int] | None = None,
    batch_rows: int = 1_000_000,
) -> RollupResult:
    """Validate the landed events of one partition, roll them up, replace the slice.

    The landed Parquet is read in batches and pre-aggregated per batch, so memory does
    not grow with the number of events.
    """
    scope, problem = landed_accounts(store, engine, day, source, only_accounts)
    if problem:
        raise LandingOutOfDate(problem)
    known = wh.known_account_ids(engine)
    scope_ids = pa.array(scope, pa.int64())
    metrics = tuple(m for m in REPORTING_METRICS if m.source == source)
    registered = raw_events(metrics)
    rollup, totals = RollupAccumulator(day.day, metrics), TotalsAccumulator(metrics)
    result = RollupResult(key=day.key, accounts=len(scope))
    ignored: Counter = Counter()
    quarantined: list[pa.Table] = []
    for events in store.iter_partition(source, day, RAW_REPORTING_SCHEMA, batch_rows):
        if only_accounts is not None:
            events = events.filter(pc.fill_null(pc.is_in(events["account_id"], scope_ids),
                                                False))
        checked = validate(events, known, registered, source, scope=scope)
        rollup.add(checked.valid)
        totals.add(checked.valid)
        quarantined.append(checked.quarantine)
        ignored.update(checked.ignored_by_name)
        result.events += events.num_rows
        result.rolled_up += checked.valid.num_rows
        result.other_timezone += checked.out_of_scope
    bad = pa.concat_tables(quarantined) if quarantined else QUARANTINE_SCHEMA.empty_table()
    if bad.num_rows:  # the same bad row read twice is stored once: count it once
        bad = bad.group_by(["source", "event_id", "reason"], use_threads=False).aggregate(
            [("payload", "first")]).rename_columns(["source", "event_id", "reason",
                                                    "payload"])
    result.ignored_by_name = dict(ignored)
    result.quarantined_by_reason = value_counts(bad["reason"])
    return _write_and_check(result, engine, day, source, rollup, totals, bad, scope,
                            partial=only_accounts is not None)
