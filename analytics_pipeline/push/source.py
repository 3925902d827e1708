"""The push source's reads of the application database (``users``,
``push_notifications``): rows read as stored (SQLite as bytes, PostgreSQL natively),
converted strictly in Arrow (``compute``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from analytics_pipeline.core.coerce import decode_utf8, to_int64, to_timestamp_utc
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.settings import start_date
from analytics_pipeline.core.sources import (
    ExtractStats,
    _ids_match,
    _instant,
    _window_literal,
    arrow_batches,
    columns_as_stored,
    in_window,
    inspect_table,
    owned_by,
)
from analytics_pipeline.core.warehouse import ID_CHUNK, normalize_url
from analytics_pipeline.push.compute import (
    PUSH_COLUMNS,
    USER_COLUMNS,
    USERS_SCHEMA,
    convert_pushes,
    convert_users,
)
from analytics_pipeline.push.contract import PUSH_SOURCE, src_push_notifications, src_users


@dataclass
class PushSource:
    """``users`` and ``push_notifications`` of the application database.

    ``fallback_date`` dates the pushes whose ``sent_at`` is unusable, so that every push
    lands in exactly one partition (where it is quarantined).
    """

    url: str
    fallback_date: date = field(default_factory=start_date)
    name: str = PUSH_SOURCE

    def users(self, account_ids: Sequence[int]) -> tuple[pa.Table, int]:
        """The usable users of ``account_ids`` (USERS_SCHEMA) and the number of rows that
        are no usable user (see ``compute.convert_users``)."""
        url = normalize_url(self.url)
        if not account_ids:
            return USERS_SCHEMA.empty_table(), 0
        kinds = inspect_table(url, "users").kinds
        cols = columns_as_stored(src_users, USER_COLUMNS, url.get_backend_name())
        tables = []
        ids = sorted({int(a) for a in account_ids})
        for lo in range(0, len(ids), ID_CHUNK):
            query = sa.select(*cols).where(_ids_match(src_users.c.account_id,
                                                      kinds["account_id"], ids[lo:lo + ID_CHUNK]))
            with arrow_batches(url, query) as reader:
                tables.extend(pa.Table.from_batches([b]) for b in reader if b.num_rows)
        if not tables:
            return USERS_SCHEMA.empty_table(), 0
        t = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
        return convert_users(t)

    def extract_batches(self, day: LocalDay, account_ids: Sequence[int],
                        orphans_of: Sequence[int] | None = None,
                        stats: ExtractStats | None = None) -> Iterator[pa.Table]:
        """The pushes of ``account_ids`` whose ``sent_at`` lies in ``day``'s UTC window,
        converted (``compute.convert_pushes``), batch by batch; ``orphans_of`` (every known
        account) also returns the pushes of no known account."""
        stats = stats if stats is not None else ExtractStats()
        url = normalize_url(self.url)
        kinds = inspect_table(url, "push_notifications").kinds
        missing = [c for c in PUSH_COLUMNS if c not in kinds]
        if missing:
            raise LookupError(f"source table push_notifications lacks columns {missing}")
        p = src_push_notifications.c
        dialect = url.get_backend_name()
        when = in_window(_instant(p.sent_at, kinds["sent_at"], dialect), None,
                         self.fallback_date, day)
        which = owned_by(p.account_id, kinds["account_id"], account_ids, orphans_of)
        cols = columns_as_stored(src_push_notifications, PUSH_COLUMNS, dialect)
        with arrow_batches(url, sa.select(*cols).where(which, when)) as reader:
            for batch in reader:
                if batch.num_rows:
                    stats.rows_read += batch.num_rows
                    yield convert_pushes(batch)

    def push_instants(self, account_ids: Sequence[int], start: datetime,
                      end: datetime) -> pa.Table:
        """(account_id, user_id, at) of every push of ``account_ids`` sent or delivered in
        ``[start, end)`` (naive UTC): one row per instant in the range (a push sent and
        delivered in it gives two), read once for all of a day's comparison groups. Rows
        whose ids or instants do not convert exactly are left out."""
        url = normalize_url(self.url)
        kinds = inspect_table(url, "push_notifications").kinds
        p = src_push_notifications.c
        dialect = url.get_backend_name()
        lo, hi = _window_literal(start), _window_literal(end)
        conditions = []
        for col in (p.sent_at, p.delivered_at):
            at, dated = _instant(col, kinds[col.name], dialect)
            conditions.append(sa.and_(dated, at >= lo, at < hi))
        cols = columns_as_stored(src_push_notifications,
                                 ("account_id", "user_id", "sent_at", "delivered_at"), dialect)
        query = sa.select(*cols).where(
            _ids_match(p.account_id, kinds["account_id"], sorted(set(account_ids))),
            sa.or_(*conditions))
        parts = []
        with arrow_batches(url, query) as reader:
            for b in reader:
                if not b.num_rows:
                    continue
                t = pa.Table.from_batches([b])
                account, bad_a = to_int64(_one(t["account_id"]))
                user, bad_u = to_int64(_one(t["user_id"]))
                for c in ("sent_at", "delivered_at"):
                    at, bad_t = to_timestamp_utc(_decoded(_one(t[c])))
                    ok = pc.invert(pc.or_(pc.or_(bad_a, bad_u), bad_t))
                    parts.append(pa.table({"account_id": account, "user_id": user,
                                           "at": at}).filter(ok))
        if not parts:
            return pa.table({"account_id": pa.array([], pa.int64()),
                             "user_id": pa.array([], pa.int64()),
                             "at": pa.array([], pa.timestamp("us", tz="UTC"))})
        t = pa.concat_tables(parts).combine_chunks()
        lo_us = pa.scalar(_us(start), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        hi_us = pa.scalar(_us(end), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        keep = pc.and_(pc.and_(pc.is_valid(t["at"]), pc.is_valid(t["user_id"])),
                       pc.and_(pc.greater_equal(t["at"], lo_us), pc.less(t["at"], hi_us)))
        return t.filter(pc.fill_null(keep, False))


def _one(col: pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _decoded(arr: pa.Array) -> pa.Array:
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        return decode_utf8(arr)[0]
    return arr


def _us(t: datetime) -> int:
    """Microseconds since the epoch of a naive-UTC (or aware) instant."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int((t - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1))
