"""The per-partition work the assets run, as plain functions tested without Dagster."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from analytics_pipeline import warehouse as wh
from analytics_pipeline.checks import totals_mismatches
from analytics_pipeline.landing import LandingStore, ProviderEventLog
from analytics_pipeline.mailgun import MailgunClient, parse_items
from analytics_pipeline.partitions import LocalDay
from analytics_pipeline.registry import (
    EmailPipeline,
    metrics_for_source,
    raw_events_for_source,
)
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


@dataclass
class FetchResult:
    windows: list[tuple[str, float, float]]
    fetched: int = 0
    landed_files: int = 0
    malformed: int = 0
    fresh_until: float = 0.0
    settled_until: float = 0.0


def fetch_provider_events(
    client: MailgunClient,
    log: ProviderEventLog,
    engine: Engine,
    pipeline: EmailPipeline,
    tags: str,
    until: float,
    now: float,
    settle_seconds: float,
    initial_lookback_seconds: float,
    flush_rows: int = 200_000,
) -> FetchResult:
    """Fetch a stream's new windows from Mailgun, land them, then advance its cursor.

    Two windows: the fresh pass ``[fresh_until, until)`` for low latency, and the settling
    pass ``[settled_until, now - settle)`` that reads every period once more after
    Mailgun's late indexing has settled. The cursor moves only after the events are
    landed, so a crash anywhere means a re-fetch, never a loss; a re-fetched event is
    stored again and counted once (the landed log is de-duplicated by event id).
    """
    cursor = wh.get_cursor(engine, pipeline.cursor_name)
    if cursor is None:
        start = until - initial_lookback_seconds
        cursor = (start, start)
    fresh_from, settled_from = cursor
    settle_to = min(until, now - settle_seconds)
    windows = []
    if until > fresh_from:
        windows.append(("fresh", fresh_from, until))
    if settle_to > settled_from:
        windows.append(("settling", settled_from, settle_to))
    result = FetchResult(windows=windows)
    fetch_id = f"{int(now)}-{uuid.uuid4().hex[:6]}"
    malformed: list[tuple[str, str, str]] = []
    for _label, begin, end in windows:
        buffered: list[pa.Table] = []
        rows = 0
        for items in client.pages(begin, end, tags=tags or None):
            parsed = parse_items(items, now, begin, end)
            malformed.extend(parsed.malformed)
            buffered.append(parsed.events)
            rows += parsed.events.num_rows
            if rows >= flush_rows:
                result.landed_files += log.append(pa.concat_tables(buffered), fetch_id)
                result.fetched += rows
                buffered, rows = [], 0
        if buffered:
            result.landed_files += log.append(pa.concat_tables(buffered), fetch_id)
            result.fetched += rows
    if malformed:
        source = f"mailgun:{pipeline.name}"
        bad = pa.table({
            "source": [source] * len(malformed),
            "event_id": [i or "sha1:" + hashlib.sha1(raw.encode()).hexdigest()
                         for i, _, raw in malformed],
            "reason": [f"malformed_item: {why}" for _, why, _ in malformed],
            "payload": [raw for _, _, raw in malformed],
        })
        fetched_day = datetime.fromtimestamp(now, timezone.utc).date()
        wh.add_quarantine(engine, fetched_day, "UTC", bad)
        result.malformed = len(malformed)
    result.fresh_until = max(fresh_from, until)
    result.settled_until = max(settled_from, settle_to)
    wh.advance_cursor(engine, pipeline.cursor_name, result.fresh_until, result.settled_until)
    return result
