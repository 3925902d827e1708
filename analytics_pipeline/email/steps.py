"""The email pipelines' work as plain functions tested without Dagster: fetch and land
Mailgun events (fresh, settling and reconciliation passes), match a day's events to
recipients, roll them up, recompute recipient states and statistics.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import (
    IdLookup,
    LandingStore,
    ProviderEventLog,
    utc_dates_between,
)
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.rollups import QUARANTINE_SCHEMA, RollupAccumulator, TotalsAccumulator
from analytics_pipeline.core.steps import (
    LandingOutOfDate,
    RollupResult,
    _write_and_check,
    landed_accounts,
)
from analytics_pipeline.email.compaction import (
    COMPACT_MIN_FILES,
    CompactionResult,
    compact_log,
    settled_days,
)
from analytics_pipeline.email.compute import (
    EMAIL_EVENT_SCHEMA,
    Matched,
    match_recipients,
    quarantine_rows,
)
from analytics_pipeline.email.mailgun import (
    PROVIDER_EVENT_SCHEMA,
    MailgunClient,
    parse_items,
    sanitize_text,
)
from analytics_pipeline.email.metrics import EMAIL_METRICS, EmailPipeline
from analytics_pipeline.email.source import EmailSource
from analytics_pipeline.email.state import register_log_files


@dataclass
class PassStats:
    """What one pass (fresh, settling, reconciliation) of a fetch read and stored."""

    items_read: int = 0  # items Mailgun returned for the pass's window
    stored: int = 0  # events landed: those the earlier passes had missed
    max_lateness_seconds: float | None = None  # of the stored ones: fetched_at - timestamp

    def note(self, stored: pa.Table, fetched_at: float) -> None:
        if stored.num_rows == 0:
            return
        oldest = pc.min(stored["timestamp"]).as_py().timestamp()
        lateness = fetched_at - oldest
        self.max_lateness_seconds = max(self.max_lateness_seconds or 0.0, lateness)


PASSES = ("fresh", "settling", "reconciliation")


# Every UTC offset in use is a multiple of 15 minutes, so a 15-minute UTC bucket lies in
# exactly one local date of any timezone: the buckets of a fetch's new events name the
# partitions it touched precisely, where a [min, max] span can cover weeks.
BUCKET_SECONDS = 900


@dataclass
class FetchResult:
    windows: list[tuple[str, float, float]]
    fetched: int = 0
    landed_files: int = 0
    malformed: int = 0
    fresh_until: float = 0.0
    settled_until: float = 0.0
    event_time_min: float | None = None  # span of the landed events' timestamps
    event_time_max: float | None = None
    passes: dict[str, PassStats] = field(
        default_factory=lambda: {p: PassStats() for p in PASSES})
    reconciled: bool = False  # this run was due for, and ran, the reconciliation pass
    reconciled_at: float | None = None  # when the last reconciliation ran (epoch seconds)
    compacted: list[CompactionResult] = field(default_factory=list)  # date folders
    _buckets: list[pa.Array] = field(default_factory=list, repr=False)

    def note_times(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        micros = pc.cast(pc.cast(table["timestamp"], pa.timestamp("us")), pa.int64())
        self._buckets.append(pc.unique(pc.divide(micros, BUCKET_SECONDS * 1_000_000)))
        lo, hi = pc.min_max(table["timestamp"]).values()
        lo, hi = lo.as_py().timestamp(), hi.as_py().timestamp()
        self.event_time_min = lo if self.event_time_min is None else min(self.event_time_min, lo)
        self.event_time_max = hi if self.event_time_max is None else max(self.event_time_max, hi)

    @property
    def buckets(self) -> list[int]:
        """The distinct 15-minute UTC buckets (epoch seconds // 900) of the stored events."""
        if not self._buckets:
            return []
        return sorted(pc.unique(pa.chunked_array(self._buckets, pa.int64())).to_pylist())


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
    reconcile_every_seconds: float | None = 6 * 3600,
    retention_seconds: float = 72 * 3600,
    compact_min_files: int | None = COMPACT_MIN_FILES,
) -> FetchResult:
    """Fetch a stream's new windows from Mailgun, land them, then advance its cursor.

    Up to three windows: the fresh pass ``[fresh_until, until)`` for low latency; the
    settling pass ``[settled_until, now - settle)`` that reads every period once more
    after Mailgun's late indexing has mostly settled; and, every ``reconcile_every_seconds``
    (None: never), the reconciliation pass over the rest of Mailgun's retention,
    ``[now - retention, settled_until)``, for events indexed later than the settling window.
    The settling and reconciliation passes store only events not landed yet, so what they
    store is what the earlier passes missed. The cursor (and the time of the last
    reconciliation) move only after the events are landed, so a crash anywhere means a
    re-fetch, never a loss; a re-fetched event is stored again and counted once (the
    landed log is de-duplicated by event id).

    Last, the date folders that ended before the settled watermark, within the retention
    (where the reconciliation pass appends), are compacted once they hold
    ``compact_min_files`` files (None: never); see ``email/compaction.py``. Here rather
    than on a schedule: fetches of a stream run one at a time, so its only appender is
    never writing during its compaction, and a day is compacted as soon as it settles.
    """
    name = pipeline.cursor_name
    cursor = wh.get_cursor(engine, name)
    first_fetch_from = None
    if cursor is None:
        first_fetch_from = until - initial_lookback_seconds
        cursor = (first_fetch_from, first_fetch_from)
    fresh_from, settled_from = cursor
    settle_to = min(until, now - settle_seconds)
    windows = []
    if until > fresh_from:
        windows.append(("fresh", fresh_from, until))
    if settle_to > settled_from:
        windows.append(("settling", settled_from, settle_to))
    state = wh.get_stream_state(engine, name)
    last_reconciled = state.reconciled_at if state else None
    reconcile = reconcile_every_seconds is not None and (
        last_reconciled is None or now - last_reconciled >= reconcile_every_seconds)
    if reconcile:
        # up to where this run's settling pass starts: together they cover the retention
        begin, end = now - retention_seconds, min(settled_from, settle_to)
        if end > begin:
            windows.append(("reconciliation", begin, end))
    result = FetchResult(windows=windows, reconciled=reconcile,
                         reconciled_at=now if reconcile else last_reconciled)
    fetch_id = f"{int(now)}-{uuid.uuid4().hex[:6]}"
    malformed: list[tuple[str, str, str]] = []
    appended_days: set[date] = set()
    for label, begin, end in windows:
        stats = result.passes[label]
        buffered: list[pa.Table] = []
        rows = 0
        seen: IdLookup | None = None
        if label != "fresh":
            # Most of these windows was landed already: store only what is new.
            span = utc_dates_between(datetime.fromtimestamp(begin, timezone.utc),
                                     datetime.fromtimestamp(end, timezone.utc))
            # built once per window: pc.is_in would rebuild a hash set of it every page
            seen = IdLookup(log.read(span, PROVIDER_EVENT_SCHEMA, columns=[])["event_id"])
        for items in client.pages(begin, end, tags=tags or None):
            stats.items_read += len(items)
            parsed = parse_items(items, now, begin, end)
            if seen is not None and parsed.events.num_rows:
                parsed.events = parsed.events.filter(
                    pc.invert(seen.contains(parsed.events["event_id"])))
            result.note_times(parsed.events)
            stats.note(parsed.events, now)
            malformed.extend(parsed.malformed)
            buffered.append(parsed.events)
            rows += parsed.events.num_rows
            if rows >= flush_rows:
                appended_days.update(_utc_days(buffered))
                result.landed_files += log.append(pa.concat_tables(buffered), fetch_id)
                result.fetched += rows
                stats.stored += rows
                buffered, rows = [], 0
        if buffered:
            appended_days.update(_utc_days(buffered))
            result.landed_files += log.append(pa.concat_tables(buffered), fetch_id)
            result.fetched += rows
            stats.stored += rows
    if malformed:
        # One row per quarantine key: an item read by two passes is stored, and counted, once.
        unique: dict[tuple[str, str], str] = {}
        for ident, why, raw in malformed:
            key = (ident or "sha1:" + hashlib.sha1(raw.encode()).hexdigest(),
                   f"malformed_item: {why}")
            unique.setdefault(key, raw)
        source = f"mailgun:{pipeline.name}"
        bad = pa.table({
            "source": [source] * len(unique),
            "event_id": [i for i, _ in unique],
            "reason": [why for _, why in unique],
            "payload": list(unique.values()),
        })
        fetched_day = datetime.fromtimestamp(now, timezone.utc).date()
        wh.add_quarantine(engine, fetched_day, "UTC", bad)
        result.malformed = bad.num_rows
    result.fresh_until = max(fresh_from, until)
    result.settled_until = max(settled_from, settle_to)
    if reconcile or first_fetch_from is not None:
        wh.record_stream_state(engine, name, first_fetch_from=first_fetch_from,
                               reconciled_at=now if reconcile else None)
    # journal the appended files for the incremental state refresh, before the cursor
    # moves: a crash in between re-fetches (and registers) the same events again
    register_log_files(engine, pipeline.name, log, fetch_id, days=sorted(appended_days))
    wh.advance_cursor(engine, name, result.fresh_until, result.settled_until)
    if compact_min_files is not None:
        days = settled_days(log, result.settled_until,
                            days_back=int(retention_seconds // 86_400) + 2)
        result.compacted = compact_log(log, engine, pipeline.name, days, compact_min_files)
    return result


def email_landing_source(pipeline: EmailPipeline) -> str:
    return f"email_events_{pipeline.name}"


@dataclass
class EmailExtractResult:
    key: str
    events: int = 0
    matched: int = 0
    other_timezone: int = 0
    quarantined: int = 0


def matched_landing_sources(pipeline: EmailPipeline) -> tuple[str, str]:
    """Landing sources of the per-UTC-date cache: matched events, unmatched events."""
    return f"email_matched_{pipeline.name}", f"email_unmatched_{pipeline.name}"


def _log_fingerprint(log: ProviderEventLog, day: date) -> str:
    # visible log files are immutable: their names identify the date folder's content
    return hashlib.sha1("\n".join(log.files(day)).encode()).hexdigest()


def matched_utc_date(log: ProviderEventLog, emails: EmailSource, store: LandingStore,
                     pipeline: EmailPipeline, day: date) -> tuple[pa.Table, pa.Table]:
    """The events of one UTC date matched to recipients (EMAIL_EVENT_SCHEMA) and those
    that matched none (PROVIDER_EVENT_SCHEMA), matched once and shared by every timezone
    partition whose local day overlaps the date.

    Kept as two landed partitions ``date=<day>|UTC`` whose manifest meta holds a
    fingerprint of the date folder's files, listed before reading: files landing (or a
    compaction) change it, and the date is read and matched again.
    """
    matched_src, unmatched_src = matched_landing_sources(pipeline)
    key = LocalDay(day, "UTC")
    fingerprint = _log_fingerprint(log, day)
    try:
        if all(store.partition_meta(src, key).get("log_files") == fingerprint
               for src in (matched_src, unmatched_src)):
            return (store.read_partition(matched_src, key, EMAIL_EVENT_SCHEMA),
                    store.read_partition(unmatched_src, key, PROVIDER_EVENT_SCHEMA))
    except FileNotFoundError:  # not cached yet
        pass
    # sanitized on read too: logs landed before NUL was replaced on landing
    events = sanitize_text(log.read([day], PROVIDER_EVENT_SCHEMA))
    m = _match(events, emails, pipeline)
    meta = {"log_files": fingerprint, "events": events.num_rows}
    store.write_partition(unmatched_src, key, m.unmatched.cast(PROVIDER_EVENT_SCHEMA), meta)
    store.write_partition(matched_src, key, m.events, meta)
    return m.events, m.unmatched


def _match(events: pa.Table, emails: EmailSource, pipeline: EmailPipeline) -> Matched:
    if events.num_rows == 0:
        return Matched(EMAIL_EVENT_SCHEMA.empty_table(), events)
    recipients = emails.recipients(
        pipeline.name, message_ids=pc.unique(events["message_id"]).drop_null().to_pylist())
    return match_recipients(events, recipients)


def _in_window(table: pa.Table, day: LocalDay) -> pa.Table:
    lo = pa.scalar(day.start_utc, pa.timestamp("us", tz="UTC"))
    hi = pa.scalar(day.end_utc, pa.timestamp("us", tz="UTC"))
    return table.filter(pc.and_(pc.greater_equal(table["timestamp"], lo),
                                pc.less(table["timestamp"], hi)))


def extract_email_partition(
    log: ProviderEventLog,
    emails: EmailSource,
    store: LandingStore,
    engine: Engine,
    pipeline: EmailPipeline,
    day: LocalDay,
    default_tz: str,
    cache: bool = True,
) -> EmailExtractResult:
    """Land one partition's email events, each matched to its recipient and account.

    Events of the local day (any account) are matched to recipients, and those of the
    partition's accounts are landed. Events that match no recipient, or a recipient of an
    unknown account, are quarantined by the default timezone's partitions only, so each is
    quarantined once. With ``cache``, the UTC dates of the window are matched once
    (``matched_utc_date``) for every timezone; only their unmatched events are matched
    again, against the recipients of now (recipients are insert-only: a new one can only
    match an event that matched none). Without, the window is read and matched here.
    """
    dates = utc_dates_between(day.start_utc, day.end_utc)
    if cache:
        parts = [matched_utc_date(log, emails, store, pipeline, d) for d in dates]
        matched = _in_window(pa.concat_tables([p[0] for p in parts]), day)
        unmatched = _in_window(pa.concat_tables([p[1] for p in parts]), day)
        again = _match(unmatched, emails, pipeline)
        m = Matched(pa.concat_tables([matched, again.events]), again.unmatched)
        n_events = matched.num_rows + unmatched.num_rows
    else:
        # sanitized on read too: logs landed before NUL was replaced on landing
        events = _in_window(sanitize_text(log.read(dates, PROVIDER_EVENT_SCHEMA)), day)
        m = _match(events, emails, pipeline)
        n_events = events.num_rows
    accounts_here = wh.account_ids_in_timezone(engine, day.tz)
    in_tz = pa.array(accounts_here, pa.int64())
    known = pa.array(wh.known_account_ids(engine), pa.int64())
    mine = m.events.filter(pc.is_in(m.events["account_id"], in_tz))
    result = EmailExtractResult(key=day.key, events=n_events, matched=mine.num_rows,
                                other_timezone=m.events.num_rows - mine.num_rows)
    store.write_partition(email_landing_source(pipeline), day, mine,
                          {"window_start_utc": day.start_utc.isoformat(),
                           "accounts": len(accounts_here), "account_ids": accounts_here})
    source = f"mailgun:{pipeline.name}:match"
    if day.tz == default_tz:
        unknown = m.events.filter(pc.invert(pc.is_in(m.events["account_id"], known)))
        if unknown.num_rows:  # their raw items, from the log (rare: not worth caching)
            events = _in_window(sanitize_text(log.read(dates, PROVIDER_EVENT_SCHEMA)), day)
            unknown = events.filter(pc.is_in(events["event_id"], unknown["event_id"]))
        else:
            unknown = PROVIDER_EVENT_SCHEMA.empty_table()
        bad = pa.concat_tables([quarantine_rows(m.unmatched, source),
                                quarantine_rows(unknown, source, "unknown_account")])
    else:
        bad = QUARANTINE_SCHEMA.empty_table()
    wh.replace_quarantine(engine, day.day, day.tz, source, bad)
    result.quarantined = bad.num_rows
    return result


def email_rollup_input(events: pa.Table) -> pa.Table:
    """Landed email events → the columns the registry's email metrics roll up."""
    permanent = pc.equal(pc.fill_null(events["severity"], "permanent"), "permanent")
    failed = pc.equal(events["event"], "failed")
    name = pc.if_else(failed, pc.if_else(permanent, pa.scalar("failed_permanent"),
                                         pa.scalar("failed_temporary")), events["event"])
    n = events.num_rows
    return pa.table({
        "name": name, "account_id": events["account_id"], "email_id": events["email_id"],
        "automation_id": events["automation_id"], "recipient_id": events["recipient_id"],
        "value": pa.nulls(n, pa.float64()), "value_in_business_hours": pa.nulls(n, pa.float64()),
    })


def rollup_email_partition(
    store: LandingStore, engine: Engine, pipeline: EmailPipeline, day: LocalDay
) -> RollupResult:
    """Roll one partition's landed email events up into daily_rollups (one transaction)."""
    source = f"email:{pipeline.name}"
    landing_source = email_landing_source(pipeline)
    accounts, problem = landed_accounts(store, engine, day, landing_source)
    if problem:
        raise LandingOutOfDate(problem)
    metrics = tuple(m for m in EMAIL_METRICS if m.source == source)
    rollup, totals = RollupAccumulator(day.day, metrics), TotalsAccumulator(metrics)
    result = RollupResult(key=day.key, accounts=len(accounts))
    scope = pa.array(accounts, pa.int64())
    for events in store.iter_partition(landing_source, day, EMAIL_EVENT_SCHEMA):
        here = pc.is_in(events["account_id"], scope)
        rows = email_rollup_input(events.filter(here))
        rollup.add(rows)
        totals.add(rows)
        result.events += events.num_rows
        result.rolled_up += rows.num_rows
        result.other_timezone += events.num_rows - rows.num_rows
    return _write_and_check(result, engine, day, source, rollup.finish(), totals.finish(),
                            QUARANTINE_SCHEMA.empty_table(), accounts)


def _utc_days(tables: list[pa.Table]) -> set[date]:
    """The UTC dates (log folders) that appending ``tables`` writes to."""
    days: set[date] = set()
    for t in tables:
        if t.num_rows:
            d = pc.unique(pc.cast(pc.cast(t["timestamp"], pa.timestamp("us")), pa.date32()))
            days.update(d.to_pylist())
    return days
