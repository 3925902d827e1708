"""The push source's reads of the application database (``users``,
``push_notifications``): rows read as stored (SQLite as bytes, PostgreSQL natively),
converted strictly in Arrow (``compute``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import pyarrow as pa
import sqlalchemy as sa

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

    def pushed_users(self, account_id: int, start: datetime, end: datetime) -> list[int]:
        """Users of ``account_id`` with a push sent or delivered in ``[start, end)`` (naive
        UTC): excluded from the comparison groups around that time."""
        url = normalize_url(self.url)
        kinds = inspect_table(url, "push_notifications").kinds
        p = src_push_notifications.c
        dialect = url.get_backend_name()
        lo, hi = _window_literal(start), _window_literal(end)
        conditions = []
        for col in (p.sent_at, p.delivered_at):
            at, dated = _instant(col, kinds[col.name], dialect)
            conditions.append(sa.and_(dated, at >= lo, at < hi))
        query = (sa.select(p.user_id).distinct()
                 .where(_ids_match(p.account_id, kinds["account_id"], [account_id]),
                        sa.or_(*conditions)))
        out: list[int] = []
        with arrow_batches(url, query) as reader:
            for b in reader:
                col = b.column(0)
                if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                    col = col.cast(pa.string())
                for v in col.to_pylist():  # distinct user ids: small
                    try:
                        out.append(int(v))
                    except (TypeError, ValueError):
                        continue
        return sorted(set(out))
