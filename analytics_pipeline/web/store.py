"""The web source's warehouse writes and reads: visitor numbering (``web_visitors``), the
partition-atomic replace of a partition's hourly and daily rollups, and the checks run on
what was written.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.web.contract import (
    WEB_SOURCE,
    web_daily_rollups,
    web_hourly_rollups,
    web_visitors,
)
from analytics_pipeline.web.rollups import (
    ADDITIVE,
    DAILY_SCHEMA,
    HOURLY_SCHEMA,
    WebRows,
    one_array,
)

# --- checks (names as reported in asset checks and run metadata) -----------------------

WEB_DAILY_EQUALS_HOURLY = "web_daily_totals_equal_hourly"
WEB_VISITORS_BOUNDED = "web_daily_visitors_between_hourly_max_and_sum"
WEB_VISITS_GE_BOUNCES = "web_visits_at_least_bounces"
WEB_NON_NEGATIVE = "web_counts_non_negative"
WEB_CHECKS = (WEB_DAILY_EQUALS_HOURLY, WEB_VISITORS_BOUNDED, WEB_VISITS_GE_BOUNCES,
              WEB_NON_NEGATIVE)

VISITORS_SCHEMA = pa.schema([
    ("site_id", pa.int64()), ("visitor_id", pa.string()),
    ("first_seen", pa.timestamp("us")), ("last_seen", pa.timestamp("us")),
])
VISITOR_NUMS_SCHEMA = pa.schema([
    ("site_id", pa.int64()), ("visitor_id", pa.string()), ("visitor_num", pa.int64()),
    ("first_seen", pa.timestamp("us")),
])

HOURLY_COLUMNS = [c.name for c in web_hourly_rollups.c]
DAILY_COLUMNS = [c.name for c in web_daily_rollups.c]

_WRITE_BATCH = 65_536  # rollup rows per batch written


# --- visitors ----------------------------------------------------------------------------

def _naive_utc(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` cast to ``schema``, timestamps as naive UTC (tz-aware values are moved to
    UTC first; naive values are taken as UTC)."""
    cols = []
    for f in schema:
        col = table[f.name]
        if pa.types.is_timestamp(f.type) and pa.types.is_timestamp(col.type) and col.type.tz:
            col = col.cast(pa.timestamp("us", tz="UTC"))
        cols.append(col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def register_visitors(engine: Engine, visitors: pa.Table) -> pa.Table:
    """Number the given visitors and widen their first/last seen; returns
    ``VISITOR_NUMS_SCHEMA`` (site_id, visitor_id, visitor_num, first_seen after the update)
    with one row per distinct (site_id, visitor_id) given.

    ``visitors`` holds site_id, visitor_id, first_seen and last_seen (a pair may appear
    more than once). Unknown pairs are inserted (numbered by the table's sequence: numbers
    never change once given), known ones get ``first_seen = min`` and ``last_seen = max``,
    in one ``INSERT … SELECT … ON CONFLICT DO UPDATE`` from a temporary table (filled by
    COPY on PostgreSQL), in one transaction. Rows are upserted in key order, so two
    partitions of the same site registering overlapping visitors concurrently wait for
    each other instead of deadlocking, and each visitor gets one number.
    """
    table = _naive_utc(visitors, VISITORS_SCHEMA)
    for name in table.column_names:
        if table[name].null_count:
            raise ValueError(f"register_visitors: {name} must not be null")
    if table.num_rows == 0:
        return VISITOR_NUMS_SCHEMA.empty_table()
    table = table.group_by(["site_id", "visitor_id"], use_threads=False).aggregate(
        [("first_seen", "min"), ("last_seen", "max")]).rename_columns(
        ["site_id", "visitor_id", "first_seen", "last_seen"])
    tmp = f"web_visitors_in_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        pg = conn.dialect.name == "postgresql"
        if pg:
            conn.exec_driver_sql(
                f"CREATE TEMP TABLE {tmp} (site_id bigint NOT NULL, visitor_id text NOT NULL,"
                " first_seen timestamp NOT NULL, last_seen timestamp NOT NULL) ON COMMIT DROP")
            lower, upper = "LEAST", "GREATEST"
        else:
            conn.exec_driver_sql(
                f"CREATE TEMP TABLE {tmp} (site_id INTEGER NOT NULL, visitor_id TEXT NOT NULL,"
                " first_seen DATETIME NOT NULL, last_seen DATETIME NOT NULL)")
            lower, upper = "min", "max"  # SQLite's scalar min/max; same text format
        # COPY on PostgreSQL, batched inserts elsewhere
        wh.insert_arrow(conn, sa.table(tmp, sa.column("site_id"), sa.column("visitor_id"),
                                       sa.column("first_seen", sa.DateTime),
                                       sa.column("last_seen", sa.DateTime)), table)
        match = "v.site_id = t.site_id AND v.visitor_id = t.visitor_id"
        known = ""
        if pg:
            # Known visitors are widened by an UPDATE, never by the upsert: PostgreSQL
            # draws the sequence value of every row an INSERT tries, conflict or not, and
            # the 32-bit visitor numbers must not be spent on returning visitors. Rows are
            # locked in number order first, so concurrent partitions wait, not deadlock.
            conn.exec_driver_sql(
                f"WITH locked AS (SELECT v.visitor_num, t.first_seen, t.last_seen "
                f"FROM {tmp} t JOIN web_visitors v ON {match} "
                f"WHERE t.first_seen < v.first_seen OR t.last_seen > v.last_seen "
                f"ORDER BY v.visitor_num FOR UPDATE OF v) "
                f"UPDATE web_visitors w SET first_seen = LEAST(w.first_seen, l.first_seen), "
                f"last_seen = GREATEST(w.last_seen, l.last_seen) FROM locked l "
                f"WHERE w.visitor_num = l.visitor_num")
            known = f" AND NOT EXISTS (SELECT 1 FROM web_visitors v WHERE {match})"
        # the upsert: new visitors, and (SQLite, or a visitor another partition inserted
        # meanwhile) known ones. WHERE: SQLite's parser needs one before ON CONFLICT.
        conn.exec_driver_sql(
            f"INSERT INTO web_visitors (site_id, visitor_id, first_seen, last_seen) "
            f"SELECT site_id, visitor_id, first_seen, last_seen FROM {tmp} t WHERE true"
            f"{known} ORDER BY site_id, visitor_id "
            f"ON CONFLICT (site_id, visitor_id) DO UPDATE SET "
            f"first_seen = {lower}(web_visitors.first_seen, excluded.first_seen), "
            f"last_seen = {upper}(web_visitors.last_seen, excluded.last_seen) "
            f"WHERE excluded.first_seen < web_visitors.first_seen "
            f"OR excluded.last_seen > web_visitors.last_seen")
        v = web_visitors.c
        t = sa.table(tmp, sa.column("site_id"), sa.column("visitor_id"))
        rows = conn.execute(
            sa.select(v.site_id, v.visitor_id, v.visitor_num, v.first_seen)
            .select_from(t.join(web_visitors, sa.and_(v.site_id == t.c.site_id,
                                                      v.visitor_id == t.c.visitor_id)))
            .order_by(v.site_id, v.visitor_id)
        ).all()
        if not pg:
            conn.exec_driver_sql(f"DROP TABLE temp.{tmp}")
    site, visitor, num, first = zip(*rows, strict=True) if rows else ((), (), (), ())
    out = pa.Table.from_arrays(
        [pa.array(site, pa.int64()), pa.array(visitor, pa.string()),
         pa.array(num, pa.int64()), pa.array(first, pa.timestamp("us"))],
        schema=VISITOR_NUMS_SCHEMA)
    if out.num_rows != table.num_rows:
        raise RuntimeError("register_visitors: some visitors got no number")
    return out


# --- the partition's slice -----------------------------------------------------------

def _check_slice(table: pa.Table, day: date, site_ids: Sequence[int], what: str) -> None:
    if table.num_rows == 0:
        return
    ids = pa.array(sorted({int(s) for s in site_ids}), pa.int64())
    if not pc.all(pc.is_in(table["site_id"], ids)).as_py():
        raise ValueError(f"{what} rows hold sites outside the slice being replaced")
    if not pc.all(pc.equal(table["date"], pa.scalar(day, pa.date32()))).as_py():
        raise ValueError(f"{what} rows hold dates other than {day}")


def _with_write_columns(rows: pa.Table, schema: pa.Schema, columns: list[str], tz: str,
                        updated_at: datetime) -> pa.Table:
    """The rows as the table stores them: plus timezone and updated_at, in the table's
    column order."""
    n = rows.num_rows
    table = rows.select(schema.names).cast(schema)
    table = table.append_column("timezone", pa.repeat(pa.scalar(tz, pa.string()), n))
    table = table.append_column("updated_at", pa.repeat(
        pa.scalar(updated_at, pa.timestamp("us")), n))
    return table.select(columns)


# every byte's two hex digits, as one little-endian uint16 (low byte first in memory)
_HEX2 = np.array([ord(f"{i:02x}"[0]) | ord(f"{i:02x}"[1]) << 8 for i in range(256)],
                 dtype=np.uint16)


def bytea_hex(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Non-null binary values as PostgreSQL's bytea hex text (``\\x`` + lower-case hex),
    without a Python loop: one lookup per byte, then the prefix joined in Arrow."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    arr = arr.cast(pa.large_binary())
    if arr.null_count:
        raise ValueError("bytea_hex: null values")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
    data = arr.buffers()[2]
    data = (np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]
            if data is not None and n else np.zeros(0, np.uint8))
    digits = _HEX2[data]
    hexed = pa.Array.from_buffers(pa.large_string(), n, [
        None, pa.py_buffer(2 * (offsets - offsets[0])), pa.py_buffer(digits)])
    large = pa.large_string()
    return pc.binary_join_element_wise(pa.scalar("\\x", large), hexed, pa.scalar("", large))


# --- PostgreSQL's binary COPY ---------------------------------------------------------------

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since 1970
_PG_EPOCH_DAYS = 10_957


def _fixed_width(typ: pa.DataType) -> tuple[str, int] | None:
    """The binary COPY encoding (NumPy big-endian type, bytes) of a fixed-width column."""
    if pa.types.is_int64(typ) or pa.types.is_timestamp(typ):
        return ">i8", 8
    if pa.types.is_float64(typ):
        return ">f8", 8
    if pa.types.is_date32(typ):
        return ">i4", 4
    return None


def _copy_columns(table: pa.Table) -> list[str]:
    """The columns in binary COPY order: the fixed-width ones first."""
    fixed = [c for c in table.column_names if _fixed_width(table.schema.field(c).type)]
    return fixed + [c for c in table.column_names if c not in fixed]


def _lengths(values: pa.Array) -> pa.Array:
    """Each value's byte length as a 4-byte big-endian binary value."""
    n = np.asarray(pc.binary_length(values).to_numpy(zero_copy_only=False), ">i4")
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(4), len(n), [None, pa.py_buffer(n.tobytes())]).cast(pa.binary())


def copy_binary_rows(table: pa.Table) -> bytes:
    """``table``'s rows as PostgreSQL binary COPY tuples (no header), its columns in
    ``_copy_columns`` order: int64, timestamp (naive UTC), date32 and float64 columns as
    fixed-width big-endian values, strings and binaries as they are. No nulls."""
    n = table.num_rows
    if not n:
        return b""
    names = _copy_columns(table)
    fixed = [c for c in names if _fixed_width(table.schema.field(c).type)]
    var = names[len(fixed):]
    fields = [("n", ">i2")]
    for i, c in enumerate(fixed):
        fields += [(f"l{i}", ">i4"), (f"v{i}", _fixed_width(table.schema.field(c).type)[0])]
    if var:
        fields.append(("lv", ">i4"))
    rec = np.empty(n, np.dtype(fields))
    rec["n"] = len(names)
    for i, c in enumerate(fixed):
        col = one_array(table[c])
        if col.null_count:
            raise ValueError(f"copy_binary_rows: null {c}")
        typ = col.type
        if pa.types.is_timestamp(typ):
            values = col.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy() - _PG_EPOCH_US
        elif pa.types.is_date32(typ):
            values = col.cast(pa.int32()).to_numpy() - _PG_EPOCH_DAYS
        else:
            values = col.to_numpy()
        rec[f"l{i}"] = _fixed_width(typ)[1]
        rec[f"v{i}"] = values
    pieces: list[pa.Array] = []
    for j, c in enumerate(var):
        col = one_array(table[c])
        if col.null_count:
            raise ValueError(f"copy_binary_rows: null {c}")
        col = col.cast(pa.binary())
        length = _lengths(col)
        if j == 0:
            rec["lv"] = np.frombuffer(length.buffers()[2], ">i4")[:n]
        else:
            pieces.append(length)
        pieces.append(col)
    head = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(rec.dtype.itemsize), n, [None, pa.py_buffer(rec.tobytes())]).cast(
        pa.binary())
    if not pieces:
        return head.buffers()[2].to_pybytes()
    rows = pc.binary_join_element_wise(head, *pieces, pa.scalar(b"", pa.binary()))
    offsets = np.frombuffer(rows.buffers()[1], np.int32)[rows.offset:rows.offset + n + 1]
    return rows.buffers()[2][int(offsets[0]):int(offsets[-1])].to_pybytes()


class _CopyStream:
    """A file-like object of COPY data made chunk by chunk (psycopg2's ``copy_expert``
    reads it); an error while making a chunk is kept to be raised after the COPY."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.error = chunks, None

    def read(self, size: int = -1) -> bytes:
        try:
            for chunk in self.chunks:
                if chunk:
                    return chunk
        except BaseException as e:  # noqa: BLE001 - re-raised by _copy_binary
            self.error = e
            raise
        return b""

    readline = read


def _copy_binary(conn: Connection, target: str, tables: Iterable[pa.Table]) -> int:
    """COPY the rows of ``tables`` (same columns, no nulls) into ``target`` in PostgreSQL's
    binary format, one table at a time, in the caller's transaction; returns the rows."""
    it = iter(tables)
    first = next(it, None)
    if first is None:
        return 0
    cols = _copy_columns(first)
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        yield _COPY_HEADER
        for t in itertools.chain([first], it):
            count += t.num_rows
            yield copy_binary_rows(t.select(cols))
        yield _COPY_TRAILER

    stream = _CopyStream(chunks())
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        names = ", ".join(f'"{c}"' for c in cols)
        cursor.copy_expert(f"COPY {target} ({names}) FROM STDIN WITH (FORMAT binary)",
                           stream, size=1 << 20)
    except Exception:
        if stream.error is not None:
            raise stream.error from None
        raise
    finally:
        cursor.close()
    return count


def _insert(conn: Connection, target: sa.Table, tables: Iterable[pa.Table]) -> None:
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2":
        _copy_binary(conn, f'"{target.name}"', tables)
        return
    for table in tables:
        for off in range(0, table.num_rows, 20_000):
            conn.execute(target.insert(), table.slice(off, 20_000).to_pylist())


def _batches(rows: pa.Table | WebRows, sort: list[tuple[str, str]]) -> Iterator[pa.Table]:
    """The rows in key order, a batch at a time."""
    if isinstance(rows, pa.Table):
        rows = rows.sort_by(sort) if rows.num_rows else rows
        for off in range(0, rows.num_rows, _WRITE_BATCH):
            yield rows.slice(off, _WRITE_BATCH)
    else:
        yield from rows.tables(_WRITE_BATCH)


def _written(batches: Iterable[pa.Table], day: LocalDay, site_ids: Sequence[int],
             what: str, schema: pa.Schema, columns: list[str],
             updated_at: datetime) -> Iterator[pa.Table]:
    for batch in batches:
        _check_slice(batch, day.day, site_ids, what)
        yield _with_write_columns(batch, schema, columns, day.tz, updated_at)


def replace_web_slice(
    engine: Engine,
    day: LocalDay,
    site_ids: Sequence[int],
    hourly: pa.Table | WebRows,
    daily: pa.Table | WebRows,
    quarantined: pa.Table,
) -> int:
    """Replace one partition's slice of ``web_hourly_rollups`` and ``web_daily_rollups``
    (the rows of ``site_ids`` on ``day.day``, whatever timezone wrote them) and its
    quarantine rows (source ``WEB_SOURCE``), in one transaction serialized per partition;
    returns the rollup rows deleted. A failure leaves the previous rows.

    The rows (tables, or a rollup's ``WebRows``) are written in key order a batch at a
    time: on PostgreSQL one binary COPY per table, streamed (the bitmaps as they are, no
    text), so the rows are never all held as COPY data.

    The quarantine is replaced inside the same transaction (with core's own statements,
    as ``replace_partition`` does), so the rollups and the quarantine of a partition always
    come from the same run. ``quarantined`` holds source, event_id, reason and payload,
    one row per (event_id, reason).
    """
    if isinstance(hourly, pa.Table):
        _check_slice(hourly, day.day, site_ids, "hourly")
    if isinstance(daily, pa.Table):
        _check_slice(daily, day.day, site_ids, "daily")
    deleted = 0
    updated_at = wh.utc_now_naive()
    with engine.begin() as conn:
        wh._lock_partition(conn, WEB_SOURCE, day.day, day.tz)
        for chunk in wh.id_chunks(conn, site_ids):
            for target in (web_hourly_rollups, web_daily_rollups):
                deleted += conn.execute(target.delete().where(
                    _where(conn, target, day.day, chunk))).rowcount or 0
        sort = [("site_id", "ascending"), ("dimension", "ascending"), ("value", "ascending")]
        _insert(conn, web_hourly_rollups, _written(
            _batches(hourly, [sort[0], ("hour_start", "ascending"), *sort[1:]]), day,
            site_ids, "hourly", HOURLY_SCHEMA, HOURLY_COLUMNS, updated_at))
        _insert(conn, web_daily_rollups, _written(
            _batches(daily, sort), day, site_ids, "daily", DAILY_SCHEMA, DAILY_COLUMNS,
            updated_at))
        q = wh.quarantine.c
        conn.execute(wh.quarantine.delete().where(
            q.source == WEB_SOURCE, q.partition_date == day.day, q.timezone == day.tz))
        wh._upsert_quarantine(conn, day.day, day.tz, quarantined)
    return int(deleted)


def web_slice_rows(engine: Engine, table: sa.Table, day: date,
                   site_ids: Sequence[int] | None = None) -> list[dict]:
    """The stored rows of ``day`` (of ``site_ids``, or all), ordered, without
    updated_at; for tests, previews and the demo."""
    cols = [c for c in table.c if c.name != "updated_at"]
    q = sa.select(*cols).where(table.c.date == day).order_by(*table.primary_key.columns)
    if site_ids is not None:
        q = q.where(table.c.site_id.in_(sorted({int(s) for s in site_ids})))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


# --- checks ------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _where(conn: sa.Connection, table: sa.Table, day: date, chunk: list[int]
           ) -> sa.ColumnElement:
    return sa.and_(table.c.date == day, wh.id_in(conn, table.c.site_id, chunk))


def _may_mismatch(d: sa.Table, hsum: sa.Subquery) -> sa.ColumnElement:
    """The daily rows the checks below may find wrong (a superset: only these are read
    back): no hourly rows, a sum that differs, visitors outside the hourly bounds."""
    differs = [d.c[c] != hsum.c[c] for c in ADDITIVE if c != "duration_seconds"]
    dur, h_dur = d.c.duration_seconds, hsum.c.duration_seconds
    # the check's tolerance is 1e-6 * max(1, |h|) >= 0.5e-6 * (1 + |h|)
    differs.append(sa.func.abs(dur - h_dur) > 0.5e-6 * (1 + sa.func.abs(h_dur)))
    return sa.or_(hsum.c.site_id.is_(None), *differs,
                  d.c.visitors < sa.func.coalesce(hsum.c.max_visitors, 0),
                  d.c.visitors > sa.func.coalesce(hsum.c.sum_visitors, 0))


def web_rollup_problems(engine: Engine, day: date,
                        site_ids: Sequence[int]) -> dict[str, list[str]]:
    """What is wrong with the stored slice of ``site_ids`` on ``day``, per check (every
    check is a key; an empty list passes):

    - ``WEB_DAILY_EQUALS_HOURLY``: per site, dimension and value, the daily events,
      pageviews, visits, bounces and duration equal the sum of the day's hourly rows (a
      value present on one side only is a mismatch);
    - ``WEB_VISITORS_BOUNDED``: max(hourly visitors) ≤ daily visitors ≤ sum(hourly);
    - ``WEB_VISITS_GE_BOUNCES``: visits ≥ bounces in every hourly and daily row;
    - ``WEB_NON_NEGATIVE``: no negative count or duration in any row.

    Every check runs in the database; only the rows that may be wrong are read back.
    """
    problems: dict[str, list[str]] = {c: [] for c in WEB_CHECKS}
    h, d = web_hourly_rollups, web_daily_rollups
    key = ("site_id", "dimension", "value")
    with engine.connect() as conn:
        for chunk in wh.id_chunks(conn, site_ids):
            hsum = (
                sa.select(h.c.site_id, h.c.dimension, h.c.value,
                          *(sa.func.sum(h.c[c]).label(c) for c in ADDITIVE),
                          sa.func.max(h.c.visitors).label("max_visitors"),
                          sa.func.sum(h.c.visitors).label("sum_visitors"))
                .where(_where(conn, h, day, chunk)).group_by(*(h.c[k] for k in key))
            ).subquery("h")
            joined = sa.and_(*(hsum.c[k] == d.c[k] for k in key))
            q = sa.select(d.c.site_id, d.c.dimension, d.c.value, d.c.visitors,
                          *(d.c[c] for c in ADDITIVE),
                          *(hsum.c[c].label(f"h_{c}") for c in ADDITIVE),
                          hsum.c.max_visitors, hsum.c.sum_visitors, hsum.c.site_id.label("h")
                          ).select_from(d.outerjoin(hsum, joined)).where(
                _where(conn, d, day, chunk), _may_mismatch(d, hsum))
            for r in conn.execute(q).mappings():
                where = f"site {r['site_id']} {day} {r['dimension']}={r['value']!r}"
                if r["h"] is None:
                    problems[WEB_DAILY_EQUALS_HOURLY].append(f"{where}: no hourly rows")
                else:
                    for c in ADDITIVE:
                        dv, hv = r[c], r[f"h_{c}"]
                        tol = 1e-6 * max(1.0, abs(float(hv))) if c == "duration_seconds" else 0
                        if abs(float(dv) - float(hv)) > tol:
                            problems[WEB_DAILY_EQUALS_HOURLY].append(
                                f"{where}: {c} daily {_fmt(dv)} ≠ sum of hourly {_fmt(hv)}")
                lo, hi = int(r["max_visitors"] or 0), int(r["sum_visitors"] or 0)
                if not lo <= int(r["visitors"]) <= hi:
                    problems[WEB_VISITORS_BOUNDED].append(
                        f"{where}: daily visitors {r['visitors']} not within hourly max {lo} "
                        f"and sum {hi}")
            orphan = (sa.select(hsum.c.site_id, hsum.c.dimension, hsum.c.value)
                      .select_from(hsum.outerjoin(d, sa.and_(joined, d.c.date == day)))
                      .where(d.c.site_id.is_(None)))
            for r in conn.execute(orphan).mappings():
                problems[WEB_DAILY_EQUALS_HOURLY].append(
                    f"site {r['site_id']} {day} {r['dimension']}={r['value']!r}: hourly rows "
                    "without a daily row")
            for table, label in ((h, "hourly"), (d, "daily")):
                at = [table.c.hour_start] if table is h else []
                rows = conn.execute(sa.select(
                    table.c.site_id, *at, table.c.dimension, table.c.value, table.c.visits,
                    table.c.bounces).where(_where(conn, table, day, chunk),
                                           table.c.visits < table.c.bounces)).mappings()
                for r in rows:
                    when = f" {r['hour_start']}" if table is h else ""
                    problems[WEB_VISITS_GE_BOUNCES].append(
                        f"{label} site {r['site_id']} {day}{when} "
                        f"{r['dimension']}={r['value']!r}: visits {r['visits']} < bounces "
                        f"{r['bounces']}")
                counts = ("events", "pageviews", "visits", "bounces", "duration_seconds",
                          "visitors", "new_visitors")
                rows = conn.execute(sa.select(
                    table.c.site_id, *at, table.c.dimension, table.c.value,
                    *(table.c[c] for c in counts)).where(
                    _where(conn, table, day, chunk),
                    sa.or_(*(table.c[c] < 0 for c in counts)))).mappings()
                for r in rows:
                    when = f" {r['hour_start']}" if table is h else ""
                    negative = ", ".join(f"{c} {_fmt(r[c])}" for c in counts if r[c] < 0)
                    problems[WEB_NON_NEGATIVE].append(
                        f"{label} site {r['site_id']} {day}{when} "
                        f"{r['dimension']}={r['value']!r}: {negative}")
    return problems
