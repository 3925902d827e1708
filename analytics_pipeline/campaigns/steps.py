"""The campaign source's work as plain functions tested without Dagster: consume the
pipeline's queue (drain, land, quarantine), refresh the campaigns' progress, roll a local
day's tracked reports up into ``daily_rollups``.

Every count is derived from the landed messages, never from what a run happened to
receive: a message landed twice (a crash between landing and acknowledgement, a
redelivery) is classified once, so re-running anything never double counts.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.campaigns.broker import (
    PARSED_SCHEMA,
    DrainResult,
    _fetch_id,
    classify,
    drain_and_land,
    merge_parsed,
    parse_messages,
)
from analytics_pipeline.campaigns.contract import (
    CAMPAIGN_SOURCE,
    EXCHANGE,
    LANDED_MESSAGE_SCHEMA,
    TRACKED_KEY,
)
from analytics_pipeline.campaigns.metrics import CAMPAIGN_METRICS, PAGES_TRACKED
from analytics_pipeline.campaigns.progress import (
    CHECK_COUNTS_AGREE,
    CHECK_NO_DOUBLE_SENDS,
    CHECK_NOT_STUCK,
    CHECK_WITHIN_AUDIENCE,
    ConcurrentRefresh,
    ProgressWrite,
    campaign_progress,
    double_sends,
    message_instants,
    open_campaigns,
    progress_checks,
    refreshed_files,
    rollup_events,
    stored_progress,
    write_progress,
)
from analytics_pipeline.campaigns.source import (
    CAMPAIGNS_SCHEMA,
    CONTACT_COUNTS_SCHEMA,
    CampaignSource,
)
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.rollups import (
    QUARANTINE_SCHEMA,
    RollupAccumulator,
    TotalsAccumulator,
    value_counts,
)
from analytics_pipeline.core.steps import RollupResult, _write_and_check

# the landing stream of the broker's messages (under the landing root)
LANDING_STREAM = f"rabbitmq/{CAMPAIGN_SOURCE}"
# the same messages parsed (``broker.PARSED_SCHEMA``), one file per landed file, dated by
# the parse
PARSED_STREAM = f"rabbitmq/{CAMPAIGN_SOURCE}_parsed"
# malformed messages belong to no account's day: quarantined under the UTC date of receipt
QUARANTINE_TIMEZONE = "UTC"
OFFENDERS_LISTED = 20  # campaigns (contacts) a failed check lists in its metadata
_TS = pa.timestamp("us", tz="UTC")
REFRESH_ATTEMPTS = 3  # a refresh computed again when another one wrote meanwhile


def campaign_log(landing_root: str) -> ProviderEventLog:
    """The landed broker messages (``LANDED_MESSAGE_SCHEMA``), one folder per UTC date of
    receipt."""
    return ProviderEventLog(landing_root, LANDING_STREAM)


def parsed_log(log: ProviderEventLog) -> ProviderEventLog:
    """The parsed messages beside ``log``'s landed ones: each landed file (a drain's
    batch) parsed once, by the consumption that landed it (or by the next progress refresh
    if that one died first), into one file under the UTC date of the parse."""
    return ProviderEventLog(log.root, PARSED_STREAM, log.gc_grace_seconds)


def landed_stem(parsed_name: str) -> str:
    """The landed file a parsed file was parsed from (its name without ``.parquet``):
    parsed files are named ``<landed stem>-parsed-<uuid>.parquet``."""
    return parsed_name.rsplit("-", 2)[0]


def land_parsed(log: ProviderEventLog, parsed: pa.Table, landed_name: str) -> int:
    """Land the parse of one landed file as one file (fsynced: a refresh trusts it is
    whole, and takes the landed file as parsed)."""
    stem = landed_name.removesuffix(".parquet")
    return parsed_log(log).append(parsed, f"{stem}-parsed", time_column="parsed_at",
                                  durable=True)


def parse_landed_file(log: ProviderEventLog, day: date, name: str,
                      now: datetime) -> pa.Table:
    """Parse one landed file (``parse_messages``) and land the parse; returns it."""
    messages = pq.read_table(posixpath.join(log.date_dir(day), name), filesystem=log.fs,
                             schema=LANDED_MESSAGE_SCHEMA)
    parsed = parse_messages(messages, now)
    land_parsed(log, parsed, name)
    return parsed


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _dates(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _read_files(log: ProviderEventLog, days: Iterable[date],
                keep: Callable[[str], bool] | None = None,
                filters: pc.Expression | None = None) -> pa.Table:
    """Every landed delivery of ``days`` in the files ``keep`` accepts (by name), the rows
    ``filters`` selects (Parquet filters: the other rows' bodies are never materialized)."""
    tables = []
    for day in days:
        folder = log.date_dir(day)
        for name in log.files(day):
            if keep is None or keep(name):
                tables.append(pq.read_table(posixpath.join(folder, name), filesystem=log.fs,
                                            schema=LANDED_MESSAGE_SCHEMA, filters=filters))
    if not tables:
        return LANDED_MESSAGE_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def read_landed_reports(log: ProviderEventLog, days: Iterable[date]) -> pa.Table:
    """The ``campaigns.tracked`` deliveries landed under ``days`` (the pages' sends, whose
    bodies hold the contact ids, are skipped while reading)."""
    return _read_files(log, days, filters=pc.field("routing_key") == TRACKED_KEY)


# --- quarantine ----------------------------------------------------------------------------


def quarantine_messages(engine: Engine, quarantined: pa.Table, landed: pa.Table) -> int:
    """Record malformed messages (``QUARANTINE_SCHEMA`` from ``classify``) in the warehouse's
    quarantine, each under the UTC date of its first receipt (timezone ``UTC``), once: a
    message already quarantined (landed again after a redelivery, or classified again by
    a later refresh) keeps its first row. Returns the rows new to the quarantine."""
    if quarantined.num_rows == 0:
        return 0
    keys = quarantined["event_id"]
    mine = landed.filter(pc.is_in(landed["message_key"], value_set=keys.combine_chunks()))
    first = mine.group_by("message_key", use_threads=False).aggregate(
        [("received_at", "min")])
    received = dict(zip(first["message_key"].to_pylist(),
                        first["received_at_min"].to_pylist(), strict=True))
    now = wh.utc_now_naive()
    records = []
    for r in quarantined.to_pylist():
        at = received.get(r["event_id"])
        day = at.astimezone(timezone.utc).date() if at is not None else now.date()
        # PostgreSQL text holds no NUL: a body with one is kept readable, escaped
        records.append({**r, "payload": (r["payload"] or "").replace("\x00", "\\x00"),
                        "partition_date": day, "timezone": QUARANTINE_TIMEZONE,
                        "detected_at": now})
    added = 0
    with engine.begin() as conn:
        for lo in range(0, len(records), 5000):
            stmt = wh.upsert_insert(conn, wh.quarantine).on_conflict_do_nothing(
                index_elements=["source", "event_id", "reason"]).returning(wh.quarantine.c.id)
            added += len(conn.execute(stmt, records[lo:lo + 5000]).all())
    return added


# --- consumption ---------------------------------------------------------------------------


def account_timezones(engine: Engine, account_ids: Sequence[int]) -> dict[int, str]:
    """Account id → its valid timezone in the warehouse's accounts snapshot (accounts
    without one are left out: their days are not rolled up)."""
    a = wh.accounts.c
    out: dict[int, str] = {}
    ids = sorted({int(i) for i in account_ids})
    with engine.connect() as conn:
        for lo in range(0, len(ids), wh.ID_CHUNK):
            rows = conn.execute(sa.select(a.id, a.timezone).where(
                a.id.in_(ids[lo:lo + wh.ID_CHUNK]), a.timezone_valid.is_(True),
                a.timezone.is_not(None)))
            out.update({int(i): tz for i, tz in rows})
    return out


def _campaign_ids(*tables: pa.Table) -> list[int]:
    ids: set[int] = set()
    for t in tables:
        if t.num_rows:
            ids.update(pc.unique(t["campaign_id"]).to_pylist())
    return sorted(ids)


def report_dates_by_timezone(tracked: pa.Table, campaigns: pa.Table,
                             tz_of_account: dict[int, str]) -> dict[str, list[str]]:
    """Timezone → the local dates (ISO, ascending) the reports of ``tracked`` fall on, by
    the rollups' own dating (``progress.rollup_events``): the partitions they touch."""
    events = rollup_events(tracked, campaigns, tz_of_account)
    events = events.filter(pc.equal(events["name"], PAGES_TRACKED))
    if events.num_rows == 0:
        return {}
    pairs = events.group_by(["account_id", "date"], use_threads=False).aggregate([])
    out: dict[str, set[str]] = {}
    for account, day in zip(pairs["account_id"].to_pylist(), pairs["date"].to_pylist(),
                            strict=True):
        out.setdefault(tz_of_account[int(account)], set()).add(day.isoformat())
    return {tz: sorted(days) for tz, days in sorted(out.items())}


@dataclass
class ConsumeResult:
    drain: DrainResult
    sends: int = 0  # distinct valid messages of each kind among those landed
    tracked: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    quarantine_rows_added: int = 0  # new to the quarantine (others were there already)
    # timezone → local dates (ISO) of the landed reports, for the late-reports sensor;
    # None when they could not be worked out (then ``report_span`` stands in for them)
    report_dates: dict[str, list[str]] | None = field(default_factory=dict)
    report_span: tuple[datetime, datetime] | None = None  # earliest, latest report instant
    source_problems: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _span(tracked: pa.Table) -> tuple[datetime, datetime] | None:
    if tracked.num_rows == 0:
        return None
    us = message_instants(tracked)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (epoch + timedelta(microseconds=int(us.min())),
            epoch + timedelta(microseconds=int(us.max())))


def consume_messages(
    url: str, queue: str, log: ProviderEventLog, engine: Engine, source: CampaignSource,
    max_messages: int, run_id: str, now: Callable[[], datetime] = _utcnow, *,
    exchange: str = EXCHANGE, **drain_options,
) -> ConsumeResult:
    """Drain at most ``max_messages`` deliveries from ``queue`` into ``log`` (landed durably,
    then acknowledged: ``broker.drain_and_land``), then classify what this drain landed:
    malformed messages go to the quarantine (source ``campaign_messages``, already
    acknowledged, never requeued), and the local dates of its reports are worked out per
    timezone of their accounts, for the late-reports sensor.

    Once acknowledged, the messages exist only in the landing: a failure of the warehouse or
    the application database after that fails nothing, it is reported in ``warnings``
    (the progress refresh quarantines what was not; ``report_span`` stands in for the
    report dates), so that the run still records what it landed."""
    drained = drain_and_land(url, queue, log, max_messages, run_id, now, exchange=exchange,
                             **drain_options)
    result = ConsumeResult(drain=drained)
    if not drained.received:
        return result
    # each landed file (a batch) parsed and landed parsed on its own: memory holds one
    # batch's contact ids at a time; the run's figures need the rest only
    prefix = f"{_fetch_id(run_id)}-"
    parts = []
    at = now()
    for day in drained.dates:
        for name in log.files(day):
            if not name.startswith(prefix):
                continue
            try:
                parsed = parse_landed_file(log, day, name, at)
            except OSError as exc:  # reported, not raised: the next refresh parses it
                result.warnings.append(f"{name}: the parsed messages could not be landed "
                                       f"now (the next progress refresh parses them "
                                       f"again): {_one_line(exc)}")
                parsed = parse_messages(pq.read_table(
                    posixpath.join(log.date_dir(day), name), filesystem=log.fs,
                    schema=LANDED_MESSAGE_SCHEMA), at)
            parts.append(parsed.drop_columns(["contact_ids"]))
    parsed = pa.concat_tables(parts) if parts else PARSED_SCHEMA.empty_table().drop_columns(
        ["contact_ids"])
    sends, tracked, quarantined = merge_parsed(parsed)
    result.sends, result.tracked = sends.num_rows, tracked.num_rows
    result.quarantined_by_reason = value_counts(quarantined["reason"])
    result.report_span = _span(tracked)
    try:
        result.quarantine_rows_added = quarantine_messages(engine, quarantined, parsed)
    except Exception as exc:  # noqa: BLE001 - landed and acknowledged: reported, not raised
        result.warnings.append(f"the malformed messages could not be quarantined now (the "
                               f"next progress refresh does it): {_one_line(exc)}")
    if tracked.num_rows:
        try:
            read = source.campaigns(_campaign_ids(tracked))
            result.source_problems = read.problems
            zones = account_timezones(engine,
                                      pc.unique(read.table["account_id"]).to_pylist())
            result.report_dates = report_dates_by_timezone(tracked, read.table, zones)
        except Exception as exc:  # noqa: BLE001 - as above
            result.report_dates = None
            result.warnings.append(
                "the local dates of the landed reports could not be worked out (the late-"
                "reports sensor takes every day their span touches in every timezone): "
                f"{_one_line(exc)}")
    return result


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


# --- progress ------------------------------------------------------------------------------


@dataclass
class ProgressResult:
    days: list[date]  # UTC dates of landed messages read
    deliveries: int = 0  # landed deliveries the window's messages came in
    sends: int = 0  # distinct valid messages
    tracked: int = 0
    quarantined: int = 0
    quarantine_rows_added: int = 0
    files_parsed_late: int = 0  # landed files their consumption did not parse
    files_new: int = 0  # parsed files no refresh had taken in yet
    campaigns: int = 0  # campaigns recomputed (and written)
    campaigns_rechecked: int = 0  # open campaigns without new messages: stuck evaluated
    campaigns_in_window: int = 0  # campaigns with a message in the window (checked)
    written: ProgressWrite | None = None
    progress: pa.Table | None = None  # stored rows of every campaign of the window
    double_sends: pa.Table | None = None  # likewise
    checks: dict[str, list[str]] = field(default_factory=dict)
    source_problems: dict[str, int] = field(default_factory=dict)


def progress_days(now: datetime, days: int) -> list[date]:
    """The last ``days`` UTC dates, today (of ``now``) included."""
    if days < 1:
        raise ValueError(f"ANALYTICS_CAMPAIGN_PROGRESS_DAYS must be at least 1, not {days}")
    today = now.astimezone(timezone.utc).date() if now.tzinfo else now.date()
    return _dates(today - timedelta(days=days - 1), today)


def parse_late_files(log: ProviderEventLog, days: Sequence[date], now: datetime) -> int:
    """Parse and land the files landed under ``days`` that were never parsed (their
    consumption died between landing and parsing them); returns how many."""
    plog = parsed_log(log)
    parsed = {landed_stem(name) for day in days for name in plog.files(day)}
    late = 0
    for day in days:
        for name in log.files(day):
            if name.removesuffix(".parquet") not in parsed:
                parse_landed_file(log, day, name, now)
                late += 1
    return late


def read_parsed(log: ProviderEventLog, days: Sequence[date],
                columns: Sequence[str] | None = None) -> tuple[pa.Table, list[str]]:
    """Every parsed message file under ``days``: PARSED_SCHEMA (``columns`` of it) plus
    ``_file``, the file's position in the returned paths (``date=…/<name>``), and
    ``_row``, the row's in its file."""
    plog = parsed_log(log)
    schema = PARSED_SCHEMA if columns is None else pa.schema(
        [PARSED_SCHEMA.field(c) for c in columns])
    parts, paths = [], []
    stems: set[str] = set()
    for day in days:
        folder = plog.date_dir(day)
        for name in plog.files(day):
            # a landed file parsed twice (a refresh's late parse beside its consumption's
            # own) is read once
            if landed_stem(name) in stems:
                continue
            stems.add(landed_stem(name))
            t = pq.read_table(posixpath.join(folder, name), filesystem=plog.fs,
                              schema=PARSED_SCHEMA, columns=schema.names)
            parts.append(t.append_column("_file", pa.repeat(
                pa.scalar(len(paths), pa.int32()), t.num_rows)).append_column(
                "_row", pa.array(np.arange(t.num_rows, dtype=np.int64))))
            paths.append(f"{posixpath.basename(folder)}/{name}")
    if not parts:
        return schema.empty_table().append_column(
            "_file", pa.array([], pa.int32())).append_column(
            "_row", pa.array([], pa.int64())), paths
    return pa.concat_tables(parts), paths


def with_contact_ids(log: ProviderEventLog, paths: Sequence[str], sends: pa.Table) -> pa.Table:
    """``sends`` (with ``_file`` and ``_row`` from ``read_parsed``) with their
    ``contact_ids`` read from their parsed files, one file's column at a time."""
    plog = parsed_log(log)
    files = sends["_file"].to_numpy()
    rows = sends["_row"].to_numpy()
    pieces, where = [], []
    for f in np.unique(files):
        mine = np.flatnonzero(files == f)
        column = pq.read_table(posixpath.join(plog.base, paths[int(f)]), filesystem=plog.fs,
                               schema=PARSED_SCHEMA, columns=["contact_ids"])["contact_ids"]
        pieces.append(column.take(pa.array(rows[mine])))
        where.append(mine)
    ids_type = PARSED_SCHEMA.field("contact_ids").type
    if not pieces:
        contact_ids = pa.array([], ids_type)
    else:
        order = np.argsort(np.concatenate(where), kind="stable")
        contact_ids = pa.chunked_array(
            [c for p in pieces for c in p.chunks], ids_type).take(pa.array(order))
    i = sends.schema.get_field_index("contact_ids")
    return sends.set_column(i, sends.schema.field(i), contact_ids)


def _ids_in(table: pa.Table, ids: np.ndarray) -> pa.Table:
    return table.filter(pc.is_in(table["campaign_id"], pa.array(ids, pa.int64())))


def refresh_progress(
    log: ProviderEventLog, source: CampaignSource, engine: Engine, now: datetime,
    days: int, batch_size: int, stuck_after: timedelta, full: bool = False,
) -> ProgressResult:
    """Recompute the progress and double sends of the campaigns with messages landed (on
    the last ``days`` UTC dates) since the last refresh, from all their messages of the
    window and the application database, and replace their rows of ``campaign_progress``
    and ``campaign_double_sends``; ``full``: every campaign with a message in the window.
    Open campaigns without a new message only have ``stuck`` and ``stuck_pages`` evaluated
    again at ``now`` (nothing else they were computed from changed, except perhaps their
    contacts' statuses, which are read again with their next message or a ``full``
    refresh); completed campaigns without a new message, and campaigns without a message in
    the window, keep their rows. The checks look at the stored rows of every campaign of
    the window. Files landed but not parsed (a consumption that died in between) are parsed
    now; malformed messages of the window not quarantined yet are quarantined. Another
    refresh that took in parsed files after this one listed them makes this one compute
    again (``ConcurrentRefresh``; a manual ``full`` refresh beside a sensor's run)."""
    for attempt in range(REFRESH_ATTEMPTS):
        try:
            return _refresh_once(log, source, engine, now, days, batch_size, stuck_after,
                                 full)
        except ConcurrentRefresh:
            if attempt == REFRESH_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _refresh_once(
    log: ProviderEventLog, source: CampaignSource, engine: Engine, now: datetime,
    days: int, batch_size: int, stuck_after: timedelta, full: bool,
) -> ProgressResult:
    window = progress_days(now, days)
    result = ProgressResult(days=window)
    result.files_parsed_late = parse_late_files(log, window, now)
    # the contact ids (most of the bytes) are read later, for the campaigns recomputed
    parsed, paths = read_parsed(log, window, [c for c in PARSED_SCHEMA.names
                                              if c != "contact_ids"])
    start = pa.scalar(datetime.combine(window[0], datetime.min.time(), timezone.utc), _TS)
    parsed = parsed.filter(pc.greater_equal(parsed["received_at"], start))
    result.deliveries = int(pc.sum(parsed["delivery_count"]).as_py() or 0)
    sends, tracked, quarantined = merge_parsed(parsed, keep=("_file", "_row"))
    result.sends, result.tracked = sends.num_rows, tracked.num_rows
    result.quarantined = quarantined.num_rows
    result.quarantine_rows_added = quarantine_messages(
        engine, quarantined, parsed.select(["message_key", "received_at"]))
    in_window = np.asarray(_campaign_ids(sends, tracked), np.int64)
    seen = refreshed_files(engine)
    new = [i for i, path in enumerate(paths) if path not in seen]
    result.files_new = len(new)
    waiting = np.zeros(0, np.int64)
    if full:
        touched = in_window
    else:
        fresh = parsed.filter(pc.and_(pc.is_in(parsed["_file"], pa.array(new, pa.int32())),
                                      pc.is_valid(parsed["campaign_id"])))
        touched = np.intersect1d(in_window, pc.unique(fresh["campaign_id"]).to_numpy())
        waiting = np.setdiff1d(np.intersect1d(in_window, open_campaigns(engine)), touched)
    del parsed
    # open campaigns without a new message: nothing they were computed from has changed
    # but the clock, so only whether their pages are stuck is evaluated again
    stuck = None
    if len(waiting):
        w_sends = _ids_in(sends, waiting).drop_columns(["_file", "_row"])
        w_tracked = _ids_in(tracked, waiting).drop_columns(["_file", "_row"])
        stuck = campaign_progress(CAMPAIGNS_SCHEMA.empty_table(),
                                  CONTACT_COUNTS_SCHEMA.empty_table(), w_sends, w_tracked,
                                  batch_size, now, stuck_after).select(
            ["campaign_id", "stuck", "stuck_pages"])
    result.campaigns_rechecked = len(waiting)
    sends = with_contact_ids(log, paths, _ids_in(sends, touched)).drop_columns(
        ["_file", "_row"])
    tracked = _ids_in(tracked, touched).drop_columns(["_file", "_row"])
    ids = touched.tolist()
    campaigns, counts, risky = source.progress_reads(ids)
    for read in (campaigns, counts, risky):
        for reason, n in read.problems.items():
            result.source_problems[reason] = result.source_problems.get(reason, 0) + n
    doubles = double_sends(sends, tracked, risky.table)
    progress = campaign_progress(campaigns.table, counts.table, sends, tracked, batch_size,
                                 now, stuck_after, double_sends=doubles)
    result.written = write_progress(
        engine, progress, doubles, files=[(paths[i], date.fromisoformat(
            paths[i].split("/", 1)[0].removeprefix("date="))) for i in new],
        forget_before=window[0], stuck=stuck, seen_files=seen)
    result.campaigns = progress.num_rows
    result.progress, result.double_sends = stored_progress(engine, in_window)
    result.campaigns_in_window = result.progress.num_rows
    result.checks = progress_checks(result.progress, result.double_sends)
    return result


def _rows(table: pa.Table, mask, columns: list[str], limit: int) -> list[dict]:
    picked = table.filter(mask).select(columns).slice(0, limit).to_pylist()
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()}
            for r in picked]


def check_offenders(progress: pa.Table, doubles: pa.Table,
                    limit: int = OFFENDERS_LISTED) -> dict[str, list[dict]]:
    """Per progress check, the first offending campaigns (double sends: contacts) as rows,
    in campaign order, for the check's metadata."""
    p = progress
    out = {
        CHECK_NOT_STUCK: _rows(p, pc.equal(p["stuck"], True), [
            "campaign_id", "account_id", "stuck_pages", "pages_published", "pages_tracked",
            "first_published_at", "last_reported_at"], limit),
        CHECK_COUNTS_AGREE: _rows(
            p, pc.and_(p["completed"], pc.greater(p["status_disagreement"], 0)), [
                "campaign_id", "account_id", "sent", "failed", "contacts_sent",
                "contacts_failed", "status_disagreement"], limit),
        CHECK_WITHIN_AUDIENCE: _rows(
            p, pc.greater(pc.add(p["sent"], p["failed"]), p["audience"]), [
                "campaign_id", "account_id", "sent", "failed", "audience"], limit),
    }
    out[CHECK_NO_DOUBLE_SENDS] = doubles.slice(0, limit).select(
        ["campaign_id", "contact_id", "signal", "detail"]).to_pylist()
    return out


# --- rollups -------------------------------------------------------------------------------


def rollup_days(day: LocalDay, late_days: int) -> tuple[list[date], list[date]]:
    """(UTC dates whose landed reports a rollup of ``day`` counts, the dates read before
    them). A report dated ``day`` (its instant in the day's local window, which begins at
    the earliest on the UTC date before) was received at or after its instant: landed from
    the date before ``day`` on, and counted when landed up to ``late_days`` after ``day``.
    The ``late_days`` dates before are read only to know each page's first report, so that
    a page reported again on ``day`` whose first report came earlier is not counted twice."""
    if late_days < 0:
        raise ValueError(f"ANALYTICS_CAMPAIGN_LATE_DAYS must not be negative, not {late_days}")
    first = day.day - timedelta(days=1)
    counted = _dates(first, day.day + timedelta(days=late_days))
    earlier = _dates(first - timedelta(days=late_days), first - timedelta(days=1))
    return counted, earlier


UNKNOWN_CAMPAIGN = "report of a campaign the application does not know"


def rollup_campaign_partition(log: ProviderEventLog, source: CampaignSource, engine: Engine,
                              day: LocalDay, late_days: int) -> RollupResult:
    """Roll one local day's tracked reports up into ``daily_rollups`` (campaign_sent,
    campaign_failed, campaign_pages_tracked by account, campaign and channel) for the
    accounts of the day's timezone in the warehouse's accounts snapshot, replacing the
    partition's slice, and check what was written against totals recomputed from the same
    events. Each page counts once, by its first report, on that report's local date."""
    scope = wh.account_ids_in_timezone(engine, day.tz)
    counted, earlier = rollup_days(day, late_days)
    _, tracked, _ = classify(read_landed_reports(log, earlier + counted))
    campaigns = source.campaigns(_campaign_ids(tracked)).table if tracked.num_rows else \
        CAMPAIGNS_SCHEMA.empty_table()
    result = RollupResult(key=day.key, accounts=len(scope), events=tracked.num_rows)
    events = rollup_events(tracked, campaigns, {a: day.tz for a in scope})
    mine = events.filter(pc.equal(events["date"], pa.scalar(day.day, pa.date32())))
    rollup, totals = RollupAccumulator(day.day, CAMPAIGN_METRICS), \
        TotalsAccumulator(CAMPAIGN_METRICS)
    rollup.add(mine)
    totals.add(mine)
    result.rolled_up = int(pc.sum(pc.equal(mine["name"], PAGES_TRACKED)).as_py() or 0)
    # what no partition of this timezone counts: other accounts' reports, unknown campaigns
    known = pc.is_in(tracked["campaign_id"], value_set=campaigns["campaign_id"].combine_chunks())
    unknown = int(tracked.num_rows - (pc.sum(known).as_py() or 0))
    if unknown:
        result.ignored_by_name = {UNKNOWN_CAMPAIGN: unknown}
    ours = pc.is_in(campaigns["account_id"], value_set=pa.array(scope, pa.int64()))
    elsewhere = campaigns.filter(pc.invert(ours))["campaign_id"].combine_chunks()
    result.other_timezone = int(pc.sum(pc.is_in(tracked["campaign_id"],
                                                value_set=elsewhere)).as_py() or 0)
    # partial: the consumption's quarantine rows of the same source are never this
    # rollup's to delete (it quarantines nothing itself)
    return _write_and_check(result, engine, day, CAMPAIGN_SOURCE, rollup.finish(),
                            totals.finish(), QUARANTINE_SCHEMA.empty_table(), scope,
                            partial=True)
