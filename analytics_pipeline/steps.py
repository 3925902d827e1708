"""The per-partition work the assets run, as plain functions tested without Dagster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from analytics_pipeline import warehouse as wh
from analytics_pipeline.checks import totals_mismatches
from analytics_pipeline.landing import LandingStore
from analytics_pipeline.partitions import LocalDay
from analytics_pipeline.registry import metrics_for_source, raw_events_for_source
from analytics_pipeline.rollups import (
    QUARANTINE_SCHEMA,
    RAW_REPORTING_SCHEMA,
    RollupAccumulator,
    TotalsAccumulator,
    Validated,
    validate,
)
from analytics_pipeline.sources import EventSource


@dataclass
class ExtractResult:
    key: str
    rows: int
    accounts: int
    window: str
    path: str


def extract_partition(
    source: EventSource,
    store: LandingStore,
    engine: Engine,
    day: LocalDay,
    default_tz: str,
    only_accounts: Sequence[int] | None = None,
) -> ExtractResult:
    """Land the source's events of one partition (or of some of its accounts)."""
    in_tz = wh.account_ids_in_timezone(engine, day.tz)
    if only_accounts is not None:
        targets = sorted(set(in_tz) & {int(a) for a in only_accounts})
    else:
        targets = in_tz
    # Events of accounts missing from the source are swept by the default timezone's
    # partitions, so that they are quarantined once instead of vanishing.
    orphans = only_accounts is None and day.tz == default_tz
    meta = {
        "window_start_utc": day.start_utc.isoformat(),
        "window_end_utc": day.end_utc.isoformat(),
        "accounts": len(targets),
    }
    if only_accounts is None:
        batches = source.extract_batches(day, targets, include_orphans=orphans)
        path = store.write_partition(source.name, day, batches, meta, RAW_REPORTING_SCHEMA)
    else:
        table = source.extract(day, targets)
        path = store.replace_accounts(
            source.name, day, table, targets, RAW_REPORTING_SCHEMA, meta
        )
    rows = store.partition_rows(source.name, day)
    return ExtractResult(
        key=day.key, rows=rows, accounts=len(targets),
        window=f"{day.start_utc.isoformat()} → {day.end_utc.isoformat()}", path=path,
    )


@dataclass
class RollupResult:
    key: str
    events: int = 0
    rolled_up: int = 0
    rows_written: int = 0
    rows_replaced: int = 0
    accounts: int = 0
    ignored_by_name: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    other_timezone: int = 0
    mismatches: dict[str, dict] = field(default_factory=dict)
    negative_rows: int = 0
    preview: list[dict] = field(default_factory=list)


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
    known = [int(a["id"]) for a in wh.accounts_snapshot(engine)]
    in_tz = set(wh.account_ids_in_timezone(engine, day.tz))
    scope = in_tz if only_accounts is None else in_tz & {int(a) for a in only_accounts}
    scope_ids = pa.array(sorted(scope), pa.int64())
    metrics = metrics_for_source(source)
    registered = raw_events_for_source(source)
    rollup, totals = RollupAccumulator(day.day, metrics), TotalsAccumulator(metrics)
    result = RollupResult(key=day.key, accounts=len(scope))
    ignored: Counter = Counter()
    quarantined: list[pa.Table] = []
    for events in store.iter_partition(source, day, RAW_REPORTING_SCHEMA, batch_rows):
        if only_accounts is not None:
            events = events.filter(pc.fill_null(pc.is_in(events["account_id"], scope_ids),
                                                False))
        # Known accounts that moved to another timezone since landing are cut by that
        # timezone's partitions now: left out here and counted, not quarantined.
        checked = validate(events, known, registered, source, scope=scope)
        rollup.add(checked.valid)
        totals.add(checked.valid)
        quarantined.append(checked.quarantine)
        ignored.update(checked.ignored_by_name)
        result.events += events.num_rows
        result.rolled_up += checked.valid.num_rows
        result.other_timezone += checked.out_of_scope
    rows = rollup.finish()
    bad = pa.concat_tables(quarantined) if quarantined else QUARANTINE_SCHEMA.empty_table()
    result.rows_replaced = wh.replace_partition(
        engine, day.day, day.tz, source, rows, bad,
        account_ids=None if only_accounts is None else sorted(scope),
    )
    actual = wh.account_totals(
        engine, day.day, day.tz, source, None if only_accounts is None else sorted(scope)
    )
    result.rows_written = rows.num_rows
    result.ignored_by_name = dict(ignored)
    result.quarantined_by_reason = Validated(rows, bad).quarantined_by_reason
    result.mismatches = totals_mismatches(totals.finish(), actual)
    result.negative_rows = wh.negative_rows(engine, day.day, day.tz)
    result.preview = rows.slice(0, 10).to_pylist()
    return result
