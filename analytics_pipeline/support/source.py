"""The support desk's source contract (``reporting_events`` as a Rails support-desk app keeps
it) and its extraction: rows read as stored, converted strictly in Arrow, landed with the
reason of any row that does not fit the contract.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from analytics_pipeline.core.coerce import (
    decode_utf8,
    false_mask,
    first_failing_rule,
    to_float64,
    to_int64,
    to_text,
    to_timestamp_utc,
)
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.sources import (
    ExtractStats,
    SeenIds,
    SourceTable,
    _instant,
    _printable,
    arrow_batches,
    arrow_session,
    columns_as_stored,
    distinct_keys_sql,
    distinct_per_key_sql,
    in_window,
    inspect_table,
    int_array_sql,
    owned_by,
    source_metadata,
    text_array_sql,
)
from analytics_pipeline.core.warehouse import normalize_url
from analytics_pipeline.support.metrics import REPORTING_METRICS
from analytics_pipeline.support.validation import (
    RAW_REPORTING_SCHEMA,
    REASON_TIMESTAMP,
    REASON_VALUE,
)

src_reporting_events = sa.Table(
    "reporting_events",
    source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("value", sa.Float(precision=53)),
    sa.Column("value_in_business_hours", sa.Float(precision=53)),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("inbox_id", sa.BigInteger),
    sa.Column("conversation_id", sa.BigInteger),
    sa.Column("event_start_time", sa.DateTime),
    sa.Column("event_end_time", sa.DateTime),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime),
    sa.Index("index_reporting_events_on_account_id_and_created_at", "account_id", "created_at"),
)


_ID_COLUMNS = ("id", "account_id", "user_id", "inbox_id", "conversation_id")


_VALUE_COLUMNS = ("value", "value_in_business_hours")


_READ_COLUMNS = ("id", "name", *_VALUE_COLUMNS, "account_id", "user_id", "inbox_id",
                 "conversation_id", "created_at")


@dataclass
class ReportingEventsSource:
    """``reporting_events`` of the application database (DESIGN.md source contract).

    Rows are read as the database holds them and converted strictly in Arrow
    (``coerce``): a row that does not fit the contract is landed with its
    ``invalid_reason`` and its raw values, to be quarantined by the rollup, never coerced
    or dropped. ``fallback_date`` dates events whose ``created_at`` and ``updated_at`` are
    both unusable, so every such event lands in exactly one partition.
    """

    url: str
    fallback_date: date
    name: str = "reporting_events"
    _table: SourceTable | None = field(default=None, init=False, repr=False)
    _run: Callable[[sa.Select], Iterator[pa.RecordBatch]] | None = field(
        default=None, init=False, repr=False)
    _names: dict[tuple[int, ...], list[str]] = field(default_factory=dict, init=False,
                                                     repr=False)

    @contextmanager
    def session(self) -> Iterator[ReportingEventsSource]:
        """Extractions inside share one inspection of the table and one connection: a
        range run (a backfill) pays for them once, not once per partition (inspection
        and an ADBC connection are ~110 ms, more than an empty day's query). Re-entrant."""
        if self._run is not None:
            yield self
            return
        url = normalize_url(self.url)
        self._table = inspect_table(url, "reporting_events")
        with arrow_session(url, self._settings(self._table, url.get_backend_name())) as run:
            self._run = run
            try:
                yield self
            finally:
                self._run, self._table = None, None
                self._names.clear()

    def _query(
        self, table: SourceTable, dialect: str, day: LocalDay, account_ids: Sequence[int],
        orphans_of: Sequence[int] | None,
    ) -> sa.Select:
        e = src_reporting_events.c
        kinds = table.kinds
        missing = [c for c in _READ_COLUMNS if c not in kinds]
        if missing:
            raise LookupError(f"source table reporting_events lacks columns {missing}")
        created = _instant(e.created_at, kinds["created_at"], dialect,
                           not_null="created_at" in table.not_null)
        updated = (_instant(e.updated_at, kinds["updated_at"], dialect)
                   if "updated_at" in kinds else None)
        when = in_window(created, updated, self.fallback_date, day)
        cols = columns_as_stored(src_reporting_events, _READ_COLUMNS, dialect)
        if self.reads_by_name(table, dialect):
            names = (self._session_names(account_ids)
                     if self._run is not None and orphans_of is None else None)
            return sa.select(*cols).where(
                *self._by_name(table, account_ids, orphans_of, names), when)
        who = owned_by(e.account_id, kinds["account_id"], account_ids, orphans_of)
        return sa.select(*cols).where(who, when)

    @classmethod
    def _settings(cls, table: SourceTable, dialect: str) -> tuple[str, ...]:
        # Named by name, a day is a few hundred thousand index range scans' worth of rows
        # out of the whole history; the planner, not knowing how many names the array
        # holds, prefers a sequential scan of the table (measured: 4× slower on 30 days,
        # and growing with the history).
        return ("enable_seqscan = off",) if cls.reads_by_name(table, dialect) else ()

    @staticmethod
    def reads_by_name(table: SourceTable, dialect: str) -> bool:
        """Whether a day is read through an index on (account_id, name, created_at), the
        reference app's, by naming every event name of the accounts.

        An index that starts with (account_id, created_at) bounds the day's scan by itself.
        Without one, PostgreSQL (before 18: no skip scan) can use the reference index for
        the accounts only: it reads every entry of the accounts' whole history and keeps
        the day's (or scans the table), growing with the history. Naming the names (all of
        them, registered or not, so that ignored events are still counted) makes each
        (account, name) pair a range scan of the day."""
        return (dialect == "postgresql" and "created_at" in table.not_null
                and table.kinds.get("account_id") == "int"
                and table.kinds.get("name") == "text"
                and table.kinds.get("created_at") == "timestamp"
                and not table.has_index_on("account_id", "created_at")
                and table.has_index_on("account_id", "name", "created_at"))

    def _session_names(self, account_ids: Sequence[int]) -> str:
        """The event names of ``account_ids`` for a range run: listed once per session (a
        loose index scan is one probe per account and name: ~30 ms a partition for 400
        accounts), joined with the registered names, so that a registered event is read
        even if its name first appears in the table while the run goes on (an unregistered
        name born during the run is missed by the "ignored" counts of that run only)."""
        key = tuple(sorted({int(a) for a in account_ids}))
        if key not in self._names:
            listed = distinct_per_key_sql("reporting_events", "account_id", "name",
                                          int_array_sql(key))
            query = sa.select(sa.func.unnest(sa.literal_column(listed)).label("name"))
            found = {n for batch in self._run(query) for n in batch.column(0).to_pylist()}
            self._names[key] = sorted(found | {m.raw_event for m in REPORTING_METRICS})
        return text_array_sql(self._names[key])

    @staticmethod
    def _by_name(table: SourceTable, account_ids: Sequence[int],
                 orphans_of: Sequence[int] | None, names: str | None = None
                 ) -> list[sa.ColumnElement]:
        """The accounts and every event name they have, as arrays the server builds by
        loose index scans (names per account, unless ``names`` lists them already; with
        ``orphans_of``, the ids of no known account too)."""
        e = src_reporting_events.c
        ids = int_array_sql(account_ids)
        if orphans_of is not None:
            ids = (f"({ids} || ARRAY(SELECT k FROM unnest("
                   f"{distinct_keys_sql('reporting_events', 'account_id')}) AS u(k) WHERE "
                   f"k <> ALL({int_array_sql(orphans_of)})))")
        if names is None:
            names = distinct_per_key_sql("reporting_events", "account_id", "name", ids)
        who = e.account_id == sa.any_(sa.literal_column(ids))
        if orphans_of is not None and "account_id" not in table.not_null:
            who = sa.or_(who, e.account_id.is_(None))
        named = e.name == sa.any_(sa.literal_column(names))
        if "name" not in table.not_null:
            named = sa.or_(named, e.name.is_(None))
        return [who, named]

    def extract(
        self, day: LocalDay, account_ids: Sequence[int],
        orphans_of: Sequence[int] | None = None, stats: ExtractStats | None = None,
    ) -> pa.Table:
        """Events of ``account_ids`` over the UTC window of ``day`` (RAW_REPORTING_SCHEMA).

        ``orphans_of`` (every known account) also returns the events of no known account,
        for the default timezone's partitions to quarantine.
        """
        batches = list(self.extract_batches(day, account_ids, orphans_of, stats))
        return pa.Table.from_batches(batches, schema=RAW_REPORTING_SCHEMA)

    def extract_batches(
        self, day: LocalDay, account_ids: Sequence[int],
        orphans_of: Sequence[int] | None = None, stats: ExtractStats | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The same rows as ``extract``, streamed in record batches (bounded memory);
        ``stats`` is filled as the batches go by (complete once the stream is consumed)."""
        stats = stats if stats is not None else ExtractStats()
        url = normalize_url(self.url)
        dialect = url.get_backend_name()
        table = self._table or inspect_table(url, "reporting_events")
        query = self._query(table, dialect, day, account_ids, orphans_of)
        # a keyed table cannot repeat an id: skip the check (no cost on proper tables)
        seen = None if table.unique_id else SeenIds()
        with self._batches(url, query, self._settings(table, dialect)) as reader:
            for batch in reader:
                if not batch.num_rows:
                    continue
                stats.rows_read += batch.num_rows
                out = land_reporting_batch(batch)
                fresh = seen.first_time(out.column("id")) if seen else None
                if fresh is not None:
                    stats.duplicates_dropped += out.num_rows - pc.sum(fresh).as_py()
                    out = out.filter(fresh)
                stats.invalid_rows += out.num_rows - out.column("invalid_reason").null_count
                if out.num_rows:
                    yield from out.combine_chunks().to_batches()

    @contextmanager
    def _batches(self, url: sa.URL, query: sa.Select, settings: Sequence[str]
                 ) -> Iterator[Iterator[pa.RecordBatch]]:
        if self._run is None:
            with arrow_batches(url, query, settings) as reader:
                yield reader
        else:  # inside a session: its connection (the stream is read to its end)
            yield self._run(query)


def land_reporting_batch(batch: pa.RecordBatch) -> pa.Table:
    """One batch as read from the source → RAW_REPORTING_SCHEMA, strictly converted.

    A row that cannot be converted exactly keeps the columns that could be, gets the first
    failing rule as its ``invalid_reason`` and its raw values as JSON in ``raw``.
    """
    t = pa.Table.from_batches([batch]).combine_chunks()
    n = t.num_rows
    col = {c: t[c].chunk(0) if t[c].num_chunks else pa.nulls(0) for c in t.column_names}
    utf8_bad = false_mask(n)
    for c, arr in col.items():  # bytes (SQLite, bytea): decoded once, whatever the column
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            col[c], bad = decode_utf8(arr)
            utf8_bad = pc.or_(utf8_bad, bad)
    out: dict[str, pa.Array] = {}
    rules: list[tuple[str, pa.Array]] = []
    out["name"], _, name_nul = to_text(col["name"])
    for c in _ID_COLUMNS:
        out[c], bad = to_int64(col[c])
        if c == "id":
            bad = pc.or_(bad, pc.is_null(out[c]))  # an event without an id is no event
        rules.append((f"invalid_{c}", bad))
    for c in _VALUE_COLUMNS:
        out[c], bad = to_float64(col[c])
        rules.append((REASON_VALUE, bad))
    out["created_at"], bad_ts = to_timestamp_utc(col["created_at"])
    rules.insert(1, (REASON_TIMESTAMP, pc.or_(bad_ts, pc.is_null(col["created_at"]))))
    rules = [("invalid_utf8", utf8_bad), ("nul_byte", name_nul), *rules]
    reason = first_failing_rule(rules, n)
    any_bad = pc.is_valid(reason)
    out["invalid_reason"] = reason
    raw = pa.nulls(n, pa.string())
    if pc.any(any_bad).as_py():
        idx = np.flatnonzero(np.asarray(any_bad.to_numpy(zero_copy_only=False)))
        bad_rows = t.take(pa.array(idx)).to_pylist()
        payloads = [json.dumps({k: _printable(v) for k, v in r.items()}, default=str,
                               sort_keys=True) for r in bad_rows]
        values = np.full(n, None, dtype=object)
        values[idx] = payloads
        raw = pa.array(values, pa.string())
    out["raw"] = raw
    return pa.Table.from_arrays([out[f.name] if f.name in out else pa.nulls(n, f.type)
                                 for f in RAW_REPORTING_SCHEMA], schema=RAW_REPORTING_SCHEMA)
