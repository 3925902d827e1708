"""Reading application databases, for every source: connections (ADBC for PostgreSQL,
column-wise SQLAlchemy for SQLite), the catalog's view of a table, comparisons that agree
with the strict conversion, the shared accounts contract and its validation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from analytics_pipeline.core.coerce import first_failing_rule, to_int64, to_text
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.warehouse import make_engine, normalize_url, redact, scrub

# The source contract (DESIGN.md): tables as the support-desk app keeps them.
source_metadata = sa.MetaData()


src_accounts = sa.Table(
    "accounts",
    source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
    sa.Column("reporting_timezone", sa.Text),
)


class EventSource(Protocol):
    """What every source offers the raw extraction assets."""

    name: str

    def extract_batches(
        self, day: LocalDay, account_ids: Sequence[int],
        orphans_of: Sequence[int] | None = None, stats: ExtractStats | None = None,
    ) -> Iterator[pa.RecordBatch]: ...


@dataclass
class ExtractStats:
    """What an extraction saw besides the rows it returned (filled while streaming)."""

    rows_read: int = 0
    duplicates_dropped: int = 0  # rows whose id was already read (a table without a key)
    invalid_rows: int = 0  # rows landed with an ``invalid_reason``, for quarantine


def source_engine(url: str | sa.URL) -> sa.Engine:
    """An engine on an existing source database: unlike the warehouse, a source is never
    created on first use, so a mistyped SQLite path is an error naming it."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        if not Path(u.database).is_file():
            raise FileNotFoundError(
                f"the source database {u.database} does not exist "
                "(check ANALYTICS_SOURCE_URL)")
    return make_engine(u)


# How a source column is typed, which decides how it is compared and converted:
# 'int' / 'float' / 'timestamp' (typed PostgreSQL columns, compared natively), 'text'
# (compared as canonical text) and 'loose' (SQLite: whatever was written, cast to text to
# compare and read as bytes so that invalid UTF-8 never breaks the driver).
ColumnKinds = dict[str, str]


def _kind_of(type_: sa.types.TypeEngine) -> str:
    if isinstance(type_, sa.Integer):
        return "int"
    if isinstance(type_, (sa.Float, sa.Numeric)):
        return "float"
    if isinstance(type_, sa.DateTime):
        return "timestamp"
    if isinstance(type_, (sa.String, sa.Text)):
        return "text"
    return "other"


@dataclass(frozen=True)
class SourceTable:
    """What the source's own catalog says of a table."""

    kinds: ColumnKinds  # column name → kind
    unique_id: bool  # ``id`` is a primary key or unique: duplicates cannot occur
    not_null: frozenset[str] = frozenset()  # columns declared NOT NULL
    indexes: tuple[tuple[str, ...], ...] = ()  # the columns of each index, in order

    def has_index_on(self, *columns: str) -> bool:
        """Whether an index starts with ``columns`` (in that order)."""
        return any(ix[:len(columns)] == columns for ix in self.indexes)


def inspect_table(url: str | sa.URL, table: str) -> SourceTable:
    """Column kinds (SQLite: every column is loose) and whether ``id`` is a key."""
    return inspect_tables(url, [table])[table]


def inspect_tables(url: str | sa.URL, tables: Sequence[str]) -> dict[str, SourceTable]:
    """``inspect_table`` of several tables over one connection."""
    u = normalize_url(url)
    engine = source_engine(u)
    found = {}
    table = ", ".join(tables)  # named in the error until one table is being read
    try:
        insp = sa.inspect(engine)
        for table in tables:
            cols = insp.get_columns(table)
            pk = insp.get_pk_constraint(table).get("constrained_columns") or []
            indexes = insp.get_indexes(table)
            keys = [pk, *(c["column_names"] for c in insp.get_unique_constraints(table)),
                    *(i["column_names"] for i in indexes if i.get("unique"))]
            found[table] = (cols, keys, [pk, *(i["column_names"] for i in indexes)])
    except Exception as exc:  # noqa: BLE001 - name the database, never its password
        raise ConnectionError(
            f"cannot read table {table!r} of the source database {redact(u)}: "
            f"{scrub(str(exc), u)}") from None
    finally:
        engine.dispose()
    out: dict[str, SourceTable] = {}
    for table, (cols, keys, indexed) in found.items():
        if not cols:
            raise LookupError(f"the source database {redact(u)} has no table {table!r}")
        if u.get_backend_name() == "sqlite":
            kinds = {c["name"]: "loose" for c in cols}
        else:
            kinds = {c["name"]: _kind_of(c["type"]) for c in cols}
        # An INTEGER PRIMARY KEY in SQLite is the rowid: unique and always an integer.
        out[table] = SourceTable(
            kinds, unique_id=["id"] in keys,
            not_null=frozenset(c["name"] for c in cols if not c.get("nullable", True)),
            indexes=tuple(tuple(c for c in ix if c) for ix in indexed if ix))
    return out


_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"


_DATE_REGEX = "^[0-9]{4}-[0-9]{2}-[0-9]{2}"


def _ids_match(col: sa.ColumnElement, kind: str, ids: Sequence[int]) -> sa.ColumnElement:
    """``col`` is one of ``ids``, compared the way the conversion reads the column: typed
    columns numerically (``124.0`` is 124, ``125.7`` is no id), text as the canonical
    decimal text (``'124x'`` and ``'007'`` are no id), so an id the conversion would
    reject is never picked up by an account's partition (it is an orphan instead)."""
    if not ids:
        return sa.false()
    if kind in ("int", "float"):
        return col.in_([int(i) for i in ids])
    texts = [str(int(i)) for i in ids]
    return (col if kind == "text" else sa.cast(col, sa.Text)).in_(texts)


def _instant(col: sa.ColumnElement, kind: str, dialect: str, not_null: bool = False):
    """(comparable expression, is-dated condition) of a timestamp column.

    Text timestamps compare as text once ``T`` is read as a space: for the naive ISO
    spelling of the contract that is chronological, and any other text that starts with
    a date still falls in exactly one window, where the conversion quarantines it. A typed
    column declared NOT NULL is always dated: the window is then a plain range on it,
    which an index on it bounds (PostgreSQL 15 does not drop ``IS NOT NULL`` on a NOT NULL
    column by itself, and the fallback branch of ``in_window`` would keep the range from
    bounding the index scan).
    """
    if kind == "timestamp":
        return col, sa.true() if not_null else col.is_not(None)
    text = sa.func.replace(sa.cast(col, sa.Text), "T", " ")
    if dialect == "sqlite":
        dated = sa.cast(col, sa.Text).op("GLOB")(_DATE_GLOB)
    else:
        dated = sa.cast(col, sa.Text).op("~")(_DATE_REGEX)
    return text, sa.and_(col.is_not(None), dated)


def _window_literal(instant: datetime) -> sa.ColumnElement:
    # Whole seconds, no fraction: '2026-02-11 05:00:00' sorts before every text spelling
    # of that second ('... 05:00:00', '... 05:00:00.000', '... 05:00:00.5').
    return sa.literal_column(f"'{instant.strftime('%Y-%m-%d %H:%M:%S')}'")


def in_window(
    dated_at: tuple[sa.ColumnElement, sa.ColumnElement],
    fallback_at: tuple[sa.ColumnElement, sa.ColumnElement] | None,
    fallback_date: date, day: LocalDay,
) -> sa.ColumnElement:
    """Rows of ``day``'s UTC window by their instant (``_instant`` pair); a row whose instant
    is unusable is dated by ``fallback_at`` when that is usable, else by ``fallback_date``,
    so every row lands in exactly one partition (to be quarantined there if need be)."""
    at, dated = dated_at
    lo, hi = _window_literal(day.start_utc), _window_literal(day.end_utc)
    if isinstance(dated, sa.sql.elements.True_):  # always dated: no fallback to look at
        return sa.and_(at >= lo, at < hi)
    fb = _window_literal(datetime.combine(fallback_date, datetime.min.time()))
    undated_at = fb if fallback_at is None else sa.case((fallback_at[1], fallback_at[0]),
                                                        else_=fb)
    return sa.or_(
        sa.and_(dated, at >= lo, at < hi),
        sa.and_(sa.not_(dated), undated_at >= lo, undated_at < hi),
    )


def owned_by(col: sa.ColumnElement, kind: str, ids: Sequence[int],
             orphans_of: Sequence[int] | None) -> sa.ColumnElement:
    """Rows whose owner id is one of ``ids``; with ``orphans_of`` (every known owner, for
    the default timezone's partitions) also the rows of no known owner (null, unknown or
    not an exact id), to be quarantined once, never lost."""
    which = _ids_match(col, kind, ids)
    if orphans_of is None:
        return which
    return sa.or_(which, col.is_(None), sa.not_(_ids_match(col, kind, orphans_of)))


def columns_as_stored(table: sa.Table, names: Sequence[str], dialect: str) -> list:
    """The columns to read: on SQLite as bytes, not text, so a value that is not UTF-8
    reaches the conversion, which quarantines it, instead of failing the driver for the
    whole partition; elsewhere as typed."""
    if dialect == "sqlite":
        return [sa.cast(table.c[c], sa.LargeBinary).label(c) for c in names]
    return [table.c[c] for c in names]


@dataclass
class AccountsRead:
    accounts: list[dict]  # id, name, reporting_timezone
    rejected: list[dict]  # raw id, name, timezone and the reason


def check_accounts(table: pa.Table) -> AccountsRead:
    """Accounts whose id is a unique exact integer and whose texts are clean UTF-8 without
    NUL; every other row is rejected with its reason (an account table is small: the
    reasons are built per rejected row)."""
    n = table.num_rows
    ids, bad_id = to_int64(table["id"].combine_chunks())
    name, name_utf8, name_nul = to_text(table["name"].combine_chunks())
    tz, tz_utf8, tz_nul = to_text(table["reporting_timezone"].combine_chunks())
    counts = pc.value_counts(ids.drop_null())
    dup_ids = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    rules = [
        ("null account id", pc.is_null(table["id"].combine_chunks())),
        ("account id is not an integer", bad_id),
        ("duplicate account id", pc.fill_null(pc.is_in(ids, dup_ids), False)),
        ("name is not valid UTF-8", name_utf8),
        ("NUL byte in name", name_nul),
        ("reporting_timezone is not valid UTF-8", tz_utf8),
        ("NUL byte in reporting_timezone", tz_nul),
    ]
    reason = first_failing_rule(rules, n)
    ok = pc.is_null(reason)
    good = pa.table({"id": ids, "name": name, "reporting_timezone": tz}).filter(ok)
    bad = table.filter(pc.invert(ok))
    rejected = [{**{k: _printable(v) for k, v in r.items()}, "reason": why}
                for r, why in zip(bad.to_pylist(), reason.filter(pc.invert(ok)).to_pylist(),
                                  strict=True)]
    accounts = sorted(good.to_pylist(), key=lambda r: r["id"])
    return AccountsRead(accounts, rejected)


def _printable(value: object) -> object:
    """A raw source value for reports and quarantine payloads: bytes become text with
    invalid UTF-8 escaped, NUL bytes visible."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    return value


class SeenIds:
    """Event ids already read in one extraction, as sorted NumPy runs merged like a
    binary counter (a run merges with the previous one once it is as large): membership
    is a binary search in O(log n) runs per batch, and each id is merged O(log n) times.
    Never a Python set of every id."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def first_time(self, ids: pa.Array | pa.ChunkedArray) -> pa.Array | None:
        """Mask of rows whose id was not seen before (in earlier batches or earlier in
        this one); None when every row is new. Null ids (invalid rows) always pass."""
        valid = np.asarray(pc.is_valid(ids).to_numpy(zero_copy_only=False), dtype=bool)
        values = np.asarray(pc.fill_null(ids, 0).to_numpy(zero_copy_only=False),
                            dtype=np.int64)
        order = np.argsort(values, kind="stable")
        sorted_vals = values[order]
        fresh = np.ones(len(values), dtype=bool)
        if len(values) > 1:
            repeat = np.zeros(len(values), dtype=bool)
            repeat[1:] = sorted_vals[1:] == sorted_vals[:-1]
            fresh[order[repeat]] = False
        seen = np.zeros(len(values), dtype=bool)
        for run in self._runs:  # sorted queries: a cache-friendly merge-like search
            pos = np.minimum(np.searchsorted(run, sorted_vals), len(run) - 1)
            seen |= run[pos] == sorted_vals
        fresh[order[seen]] = False
        fresh |= ~valid
        new = np.sort(values[fresh & valid], kind="stable")
        if len(new):
            self._runs.append(new)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            b, a = self._runs.pop(), self._runs.pop()
            self._runs.append(np.sort(np.concatenate([a, b]), kind="stable"))
        return None if fresh.all() else pa.array(fresh)


def _compile(url: sa.URL, query: sa.Select) -> str:
    # Only integers and timestamps we format ourselves are inlined, never user text.
    dialect = url.get_dialect()()
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def int_array_sql(ids: Sequence[int]) -> str:
    """A PostgreSQL ``bigint[]`` literal of ``ids`` (integers only, formatted here)."""
    return f"ARRAY[{','.join(str(int(i)) for i in sorted(set(ids)))}]::bigint[]"


def text_array_sql(values: Sequence[str]) -> str:
    """A PostgreSQL ``text[]`` literal of ``values`` in which every character is a Unicode
    escape (``U&'\\+00XXXX'``): text read from a source goes back into a query as hex
    digits only, with no quoting to get wrong, and stays a constant the planner can use as
    an index condition (a decoding function call would not be folded). PostgreSQL refuses
    the syntax unless ``standard_conforming_strings`` is on (its default), so it fails
    rather than being misread."""
    items = ",".join("U&'" + "".join(f"\\+{ord(ch):06X}" for ch in v) + "'"
                     for v in sorted(set(values)))
    return f"ARRAY[{items}]::text[]"


def distinct_keys_sql(table: str, key: str) -> str:
    """An SQL array of the distinct non-null ``key`` values of ``table``, found by a loose
    index scan (one index probe per distinct value, whatever the table's size) over an
    index that starts with ``key``: PostgreSQL before 18 has no skip scan of its own."""
    return (f'ARRAY(WITH RECURSIVE d(v) AS ((SELECT "{key}" FROM "{table}" WHERE "{key}" IS '
            f'NOT NULL ORDER BY "{key}" LIMIT 1) UNION ALL SELECT (SELECT "{key}" FROM '
            f'"{table}" WHERE "{key}" > d.v ORDER BY "{key}" LIMIT 1) FROM d WHERE d.v IS NOT '
            'NULL) SELECT v FROM d WHERE v IS NOT NULL)')


def distinct_per_key_sql(table: str, key: str, column: str, keys_sql: str) -> str:
    """An SQL array of the distinct non-null ``column`` values of the rows whose ``key`` is
    in ``keys_sql`` (an SQL array), by a loose index scan over an index that starts with
    (``key``, ``column``): one probe per distinct (key, value) pair."""
    return (f'ARRAY(SELECT DISTINCT n.v FROM unnest({keys_sql}) AS k(id) CROSS JOIN LATERAL '
            f'(WITH RECURSIVE d(v) AS ((SELECT "{column}" FROM "{table}" WHERE "{key}" = k.id '
            f'AND "{column}" IS NOT NULL ORDER BY "{column}" LIMIT 1) UNION ALL SELECT '
            f'(SELECT "{column}" FROM "{table}" WHERE "{key}" = k.id AND "{column}" > d.v '
            f'ORDER BY "{column}" LIMIT 1) FROM d WHERE d.v IS NOT NULL) SELECT v FROM d WHERE '
            'v IS NOT NULL) n)')


@contextmanager
def arrow_session(url: str | sa.URL, settings: Sequence[str] = ()
                  ) -> Iterator[Callable[[sa.Select], Iterator[pa.RecordBatch]]]:
    """One connection for several reads: yields ``run(query)``, which streams a query's rows
    as Arrow record batches (natively where possible); consume them before the next
    ``run``. A connection costs tens of milliseconds (ADBC's more than psycopg's): a step
    reading several small results opens one. On PostgreSQL ``settings`` (``"name =
    value"``, ours, never user input) apply to the session; JIT compilation is off (tens
    of milliseconds of compiling per query on a large table, for scans it does not
    speed up)."""
    url = normalize_url(url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        import adbc_driver_postgresql.dbapi as adbc_pg

        libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            conn = adbc_pg.connect(libpq)
        except Exception as exc:
            raise ConnectionError(
                f"cannot connect to the source database {redact(url)}: "
                f"{scrub(str(exc), url)}"
            ) from None
        with conn, conn.cursor() as cur:
            # timestamptz values and the window's literals are read as UTC, whatever
            # the server's or the role's default time zone
            cur.execute("SET TIME ZONE 'UTC'")
            for setting in ("jit = off", *settings):
                cur.execute(f"SET {setting}")

            def run(query: sa.Select) -> Iterator[pa.RecordBatch]:
                cur.execute(_compile(url, query))
                return iter(cur.fetch_record_batch())

            yield run
    else:
        # SQLite (and any other dialect): typed per value, not per column, so ADBC's
        # per-batch type inference could fail mid-stream; fetch column-wise instead.
        engine = source_engine(url)
        try:
            yield lambda query: _sqlalchemy_batches(engine, query)
        finally:
            engine.dispose()


@contextmanager
def arrow_batches(url: str | sa.URL, query: sa.Select, settings: Sequence[str] = ()
                  ) -> Iterator[Iterator[pa.RecordBatch]]:
    """Stream ``query``'s rows as Arrow record batches, natively where possible."""
    with arrow_session(url, settings) as run:
        yield run(query)


def _sqlalchemy_batches(
    engine: sa.Engine, query: sa.Select, batch: int = 100_000
) -> Iterator[pa.RecordBatch]:
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(query)
        names = list(result.keys())
        while rows := result.fetchmany(batch):
            columns = zip(*rows, strict=True)
            yield pa.RecordBatch.from_pydict(
                {n: pa.array(c) for n, c in zip(names, columns, strict=True)}
            )


def read_accounts(url: str | sa.URL) -> AccountsRead:
    """The source's accounts; rows that cannot be an account are reported, not read."""
    url = normalize_url(url)
    a = src_accounts.c
    if url.get_backend_name() == "sqlite":
        cols = [sa.cast(c, sa.LargeBinary).label(c.name) for c in (a.id, a.name,
                                                                    a.reporting_timezone)]
    else:
        cols = [a.id, a.name, a.reporting_timezone]
    with arrow_batches(url, sa.select(*cols)) as reader:
        batches = [pa.Table.from_batches([b]) for b in reader if b.num_rows]
    if not batches:
        return AccountsRead([], [])
    return check_accounts(pa.concat_tables(batches, promote_options="permissive"))
