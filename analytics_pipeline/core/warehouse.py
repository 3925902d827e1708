"""Warehouse tables and partition-atomic writes (SQLAlchemy Core; SQLite or PostgreSQL).

Each partition write is one transaction that deletes exactly the partition's slice (the
rows of the accounts it landed) and inserts the new rows, so a failure leaves the
previous rows untouched and a re-run never double counts. Source packages add their own
tables to ``metadata``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()


# Key text columns compare bytewise in PostgreSQL: the unique index is then cheaper to
# maintain, and matches the order in which rows are sorted before COPY.
KeyText = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
    sa.Column("reporting_timezone", sa.Text, comment="as set in the source, may be null"),
    sa.Column("timezone", sa.Text, comment="effective timezone; null when invalid"),
    sa.Column("timezone_valid", sa.Boolean, nullable=False),
    sa.Column("snapshot_at", sa.DateTime, nullable=False),
    sa.Index("ix_accounts_timezone", "timezone"),
)


daily_rollups = sa.Table(
    "daily_rollups",
    metadata,
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("date", sa.Date, nullable=False),
    sa.Column("dimension_type", KeyText, nullable=False),
    sa.Column("dimension_id", sa.BigInteger, nullable=False),
    sa.Column("metric", KeyText, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("sum_value", sa.Float(precision=53), nullable=False),
    sa.Column("sum_value_business_hours", sa.Float(precision=53), nullable=False),
    sa.Column("timezone", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint(
        "account_id", "date", "dimension_type", "dimension_id", "metric",
        name="uq_daily_rollups_key",
    ),  # = UNIQUE_KEY
    sa.CheckConstraint("count >= 0", name="ck_daily_rollups_count_nonnegative"),
    # No second index: every read and every partition replace goes through the unique
    # key's (account_id, date) prefix, and each index costs the partition-atomic write
    # (bench/bench_rollup.py, README "Performance").
)


# Indexes earlier versions created and nothing reads any more: dropped by ensure_schema
# from warehouses that have them (create_all only ever creates).
RETIRED_INDEXES = ("ix_daily_rollups_date_timezone",)


quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("partition_date", sa.Date, nullable=False),
    sa.Column("timezone", sa.Text, nullable=False),
    sa.Column("detected_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("source", "event_id", "reason", name="uq_quarantine_event"),
    sa.Index("ix_quarantine_partition", "source", "partition_date", "timezone"),
)


provider_cursors = sa.Table(
    "provider_cursors",
    metadata,
    # Keyed by the pipeline, not by the sensor: a sensor rename or a code-location reload
    # keeps the position.
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("fresh_until", sa.Float(precision=53), nullable=False,
              comment="epoch seconds: events before this were fetched once"),
    sa.Column("settled_until", sa.Float(precision=53), nullable=False,
              comment="epoch seconds: events before this were re-read after settling"),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


# Added beside provider_cursors (whose columns stay as they are: existing warehouses only
# get create_all): what a provider stream's scheduling needs besides its cursor.
provider_streams = sa.Table(
    "provider_streams",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),  # = provider_cursors.name
    sa.Column("first_fetch_from", sa.Float(precision=53),
              comment="epoch seconds: where the stream's first fetch began"),
    sa.Column("reconciled_at", sa.Float(precision=53),
              comment="epoch seconds: when the last reconciliation pass ran"),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


UNIQUE_KEY = ["account_id", "date", "dimension_type", "dimension_id", "metric"]


ROLLUP_COLUMNS = [
    "account_id", "date", "dimension_type", "dimension_id", "metric", "count",
    "sum_value", "sum_value_business_hours", "timezone", "source", "updated_at",
]


def normalize_url(url: str | sa.URL) -> sa.URL:
    """Pin PostgreSQL URLs to psycopg2 (SQLAlchemy 2.1 maps bare ``postgresql`` to psycopg 3)."""
    u = sa.make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg2")
    return u


def redact(url: str | sa.URL) -> str:
    """A URL safe for logs and metadata (password masked)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparseable URL: show nothing of it
        return "<unparseable url>"


def scrub(message: str, url: str | sa.URL) -> str:
    """``message`` with the URL's password (raw and URL-encoded) masked."""
    try:
        password = sa.make_url(url).password
    except Exception:  # noqa: BLE001
        return message
    if password:
        from urllib.parse import quote

        for form in {password, quote(password, safe="")}:
            message = message.replace(form, "***")
    return message


def make_engine(url: str | sa.URL) -> Engine:
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            from pathlib import Path

            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(u, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    # UTC sessions: timestamptz values and literals mean the instants they are, whatever
    # the server's or the role's default time zone
    args = {"options": "-c timezone=UTC"} if u.get_backend_name() == "postgresql" else {}
    return sa.create_engine(u, pool_pre_ping=True, connect_args=args)


class WarehouseUnavailable(Exception):
    """The warehouse to read cannot be opened: missing, unreachable, or without its tables.
    The message names the (redacted) URL and how to point at the right warehouse."""


READ_TABLES = ("accounts", "daily_rollups")  # what the read path needs
_POINT_AT = "set ANALYTICS_WAREHOUSE_URL or pass --warehouse-url"


def _sqlite_path(u: sa.URL) -> str | None:
    """The file a SQLite URL names (plain or ``file:`` URI form); None: in memory."""
    from urllib.parse import unquote, urlsplit

    db = u.database or ""
    if str(u.query.get("uri", "")).lower() in ("true", "1") and db.startswith("file:"):
        if str(u.query.get("mode", "")) == "memory":
            return None
        db = unquote(urlsplit(db).path)  # file:/a, file:///a, file:rel?x#y → the path
    return None if db in ("", ":memory:") else db


def _sqlite_read_only(u: sa.URL, shown: str) -> sa.URL:
    """A read-only URL of the existing file ``u`` names; raises if there is no such file
    (SQLite would create one)."""
    from pathlib import Path
    from urllib.parse import quote

    db = _sqlite_path(u)
    if db is None:
        raise WarehouseUnavailable(f"{shown} is an in-memory SQLite database, which holds no "
                                   f"warehouse; {_POINT_AT}")
    path = Path(db).resolve()
    if not path.is_file():
        where = "" if Path(db).is_absolute() else f" (resolved to {path})"
        raise WarehouseUnavailable(
            f"no warehouse at {shown}{where}: the file does not exist; {_POINT_AT}, or "
            "materialize the pipeline first")
    # our own URI of the file: quoted, so '?' or '#' in the path cannot drop mode=ro
    return sa.URL.create("sqlite", database=f"file:{quote(str(path))}",
                         query={"mode": "ro", "uri": "true"})


_read_urls: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def display_url(engine: Engine) -> str:
    """The redacted URL an engine was opened with (``open_warehouse_for_read`` rewrites
    SQLite URLs to read-only URIs)."""
    return _read_urls.get(engine) or redact(engine.url)


def open_warehouse_for_read(url: str | sa.URL) -> Engine:
    """An engine on an existing warehouse, for reading only: never creates a file, a
    directory or a table (SQLite is opened read-only). Raises ``WarehouseUnavailable``
    when the database is missing, unreachable or lacks the tables of the read path."""
    shown = redact(url)
    try:
        u = normalize_url(url)
    except Exception:  # noqa: BLE001 - the URL itself may hold a secret
        raise WarehouseUnavailable(f"invalid warehouse URL {shown}; {_POINT_AT}") from None
    if u.get_backend_name() == "sqlite":
        engine = sa.create_engine(_sqlite_read_only(u, shown), connect_args={"timeout": 60})
    else:
        engine = make_engine(u)
    try:
        inspector = sa.inspect(engine)
        missing = [t for t in READ_TABLES if not inspector.has_table(t)]
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        detail = scrub(str(getattr(exc, "orig", None) or exc), url).strip().splitlines()[0]
        raise WarehouseUnavailable(
            f"cannot open the warehouse at {shown}: {detail}; {_POINT_AT}") from None
    if missing:
        engine.dispose()
        raise WarehouseUnavailable(
            f"{shown} has no warehouse tables (missing: {', '.join(missing)}); {_POINT_AT} "
            "to the pipeline's warehouse, or materialize the pipeline first")
    _read_urls[engine] = shown
    return engine


@functools.lru_cache(maxsize=32)
def _engine_for(url: str) -> Engine:
    return make_engine(url)


_ensured: dict[int, int] = {}  # id(engine) → number of tables created on it


def warehouse_engine(url: str) -> Engine:
    """One engine per warehouse URL and process, with the schema created on first use and
    again when a source package imported since has added its tables to ``metadata``."""
    engine = _engine_for(url)
    if _ensured.get(id(engine)) != len(metadata.tables):
        ensure_schema(engine)
        _ensured[id(engine)] = len(metadata.tables)
    return engine


def ensure_schema(engine: Engine) -> None:
    """Create the warehouse tables if missing and drop retired indexes (idempotent, safe to
    run concurrently-ish)."""
    metadata.create_all(engine, checkfirst=True)
    present = {ix["name"] for ix in sa.inspect(engine).get_indexes("daily_rollups")}
    retired = [name for name in RETIRED_INDEXES if name in present]
    if retired:
        with engine.begin() as conn:
            for name in retired:
                conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))


def utc_now_naive() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def upsert_insert(conn: Connection, table: sa.Table):
    """The dialect's INSERT that supports ``on_conflict_do_update/nothing``."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upsert is not implemented for dialect {name!r}")


def replace_accounts(engine: Engine, rows: Sequence[dict]) -> None:
    """Replace the accounts snapshot in one transaction."""
    now = utc_now_naive()
    with engine.begin() as conn:
        conn.execute(accounts.delete())
        if rows:
            conn.execute(accounts.insert(), [{**r, "snapshot_at": now} for r in rows])


def account_ids_in_timezone(engine: Engine, tz: str) -> list[int]:
    with engine.connect() as conn:
        return conn.execute(  # BIGINT: int already; all() fetches at once (no row loop)
            sa.select(accounts.c.id).where(accounts.c.timezone == tz).order_by(accounts.c.id)
        ).scalars().all()


def known_account_ids(engine: Engine) -> list[int]:
    """Ids of every account in the snapshot, valid timezone or not."""
    with engine.connect() as conn:
        return conn.execute(sa.select(accounts.c.id)).scalars().all()


def accounts_snapshot(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(accounts).order_by(accounts.c.id))]


# Account ids go to IN lists in chunks: SQLite binds at most 32,766 parameters.
ID_CHUNK = 10_000


def id_chunks(conn: Connection, ids: Sequence[int]) -> list[list[int]]:
    """``ids`` (sorted, unique) split into the groups to query one at a time: PostgreSQL
    takes them all at once (``id_in`` binds them as one array), others ``ID_CHUNK`` at a
    time (SQLite's limit on bound parameters)."""
    unique = sorted({int(i) for i in ids})
    if not unique:
        return []
    if conn.dialect.name == "postgresql":
        return [unique]
    return [unique[i:i + ID_CHUNK] for i in range(0, len(unique), ID_CHUNK)]


def id_in(conn: Connection, col: sa.ColumnElement, chunk: Sequence[int]) -> sa.ColumnElement:
    """``col`` is one of ``chunk`` (from ``id_chunks``). PostgreSQL gets one ``= ANY(array)``
    bound as a single parameter (an IN list of thousands of literals costs SQLAlchemy more
    to render than the query costs to run: 30 ms of every partition of 2,000 accounts);
    others an IN list."""
    if conn.dialect.name == "postgresql":
        return col == sa.any_(sa.bindparam(None, list(chunk), type_=postgresql.ARRAY(
            sa.BigInteger)))
    return col.in_(list(chunk))


def ids_filters(conn: Connection, col: sa.ColumnElement, ids: Sequence[int]) -> list:
    """Conditions that together select the rows whose ``col`` is one of ``ids``, one query
    each (``id_chunks``, ``id_in``)."""
    return [id_in(conn, col, chunk) for chunk in id_chunks(conn, ids)]


def _rollup_slice(day: date, source: str, which: sa.ColumnElement):
    """WHERE clause of a partition's slice of daily_rollups: the date's rows of the
    accounts the partition landed (``which``, from ``ids_filters``), whatever timezone
    wrote them (an account that moved timezone is rebuilt cleanly), and nothing of any
    other account."""
    r = daily_rollups.c
    return sa.and_(r.date == day, r.source == source, which)


def _insert_rollups(conn: Connection, rows: pa.Table, tz: str, source: str) -> None:
    if rows.num_rows == 0:
        return
    n = rows.num_rows
    now = utc_now_naive()
    table = rows.append_column("timezone", pa.repeat(pa.scalar(tz, pa.string()), n))
    table = table.append_column("source", pa.repeat(pa.scalar(source, pa.string()), n))
    table = table.append_column(
        "updated_at", pa.repeat(pa.scalar(now, pa.timestamp("us")), n)
    ).select(ROLLUP_COLUMNS)
    # In unique-key order, the index is filled left to right (about twice as fast).
    insert_arrow(conn, daily_rollups, table.sort_by([(c, "ascending") for c in UNIQUE_KEY]))


def insert_arrow(conn: Connection, target: sa.Table, table: pa.Table) -> None:
    """Insert an Arrow table's rows (columns by name) inside the caller's transaction."""
    if table.num_rows == 0:
        return
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2":
        # COPY in the same transaction: an order of magnitude faster than INSERT batches.
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
        buf.seek(0)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cols = ", ".join(f'"{c}"' for c in table.column_names)
            cursor.copy_expert(
                f'COPY "{target.name}" ({cols}) FROM STDIN WITH (FORMAT csv)', buf,
                size=1 << 20,
            )
        finally:
            cursor.close()
        return
    for off in range(0, table.num_rows, 50_000):
        conn.execute(target.insert(), table.slice(off, 50_000).to_pylist())


def _upsert_quarantine(conn: Connection, day: date, tz: str, rows: pa.Table) -> None:
    """Insert quarantined events; an event seen again moves to this partition."""
    if rows.num_rows == 0:
        return
    now = utc_now_naive()
    records = [
        {**r, "partition_date": day, "timezone": tz, "detected_at": now}
        for r in rows.select(["source", "event_id", "reason", "payload"]).to_pylist()
    ]
    stmt = upsert_insert(conn, quarantine)
    stmt = stmt.on_conflict_do_update(
        index_elements=["source", "event_id", "reason"],
        set_={
            "payload": stmt.excluded.payload,
            "partition_date": stmt.excluded.partition_date,
            "timezone": stmt.excluded.timezone,
            "detected_at": stmt.excluded.detected_at,
        },
    )
    conn.execute(stmt, records)


def _lock_partition(conn: Connection, source: str, day: date, tz: str) -> None:
    """Serialize writers of one partition (a sensor run and a backfill of the same key):
    the second waits for the first to commit, then replaces its rows, instead of failing
    on the unique key. SQLite already serializes write transactions."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(f"{source}|{day.isoformat()}|{tz}".encode(), digest_size=8)
    key = int.from_bytes(digest.digest(), "big", signed=True)
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def replace_partition(
    engine: Engine,
    day: date,
    tz: str,
    source: str,
    rollups: pa.Table,
    quarantined: pa.Table,
    account_ids: Sequence[int],
    partial: bool = False,
) -> int:
    """Atomically replace one partition's rollups and quarantine rows; returns rows deleted.

    ``account_ids`` are the accounts whose rows the partition rebuilds: those it landed
    (or, ``partial``, the accounts an operator re-runs). Rows of any other account are
    never touched. A ``partial`` replace only adds quarantine rows, never removes them.
    """
    stray = rollups.num_rows and pc.any(pc.invert(pc.is_in(
        rollups["account_id"], pa.array(sorted({int(a) for a in account_ids}), pa.int64())
    ))).as_py()
    if stray:
        raise ValueError(f"rollups of {source} {day} {tz} hold accounts outside the slice "
                         "being replaced")
    with engine.begin() as conn:
        _lock_partition(conn, source, day, tz)
        deleted = 0
        for which in ids_filters(conn, daily_rollups.c.account_id, account_ids):
            deleted += conn.execute(
                daily_rollups.delete().where(_rollup_slice(day, source, which))
            ).rowcount or 0
        _insert_rollups(conn, rollups, tz, source)
        if not partial:
            conn.execute(
                quarantine.delete().where(
                    quarantine.c.source == source,
                    quarantine.c.partition_date == day,
                    quarantine.c.timezone == tz,
                )
            )
        _upsert_quarantine(conn, day, tz, quarantined)
    return int(deleted)


def account_totals(engine: Engine, day: date, source: str, account_ids: Sequence[int]
                   ) -> dict[tuple[int, str], tuple[int, float, float]]:
    """(account, metric) → (count, sum, sum in business hours) of ``day``'s account-dimension
    rows of ``account_ids``, whatever timezone wrote them: what the reconciliation compares
    with the landed events. Read through the unique key's ``(account_id, date,
    dimension_type)`` prefix, so it costs the account rows only (2M events: 30 ms, where
    reading the whole slice back took 170-260 ms)."""
    r = daily_rollups.c
    totals: dict[tuple[int, str], tuple[int, float, float]] = {}
    with engine.connect() as conn:
        for which in ids_filters(conn, r.account_id, account_ids):
            q = sa.select(r.account_id, r.metric, r.count, r.sum_value,
                          r.sum_value_business_hours).where(
                r.date == day, r.dimension_type == "account", r.source == source, which)
            for a, m, c, s_, b in conn.execute(q):
                totals[(int(a), m)] = (int(c), float(s_), float(b))
    return totals


def rollup_rows(engine: Engine, where: sa.ColumnElement | None = None) -> list[dict]:
    """All rollup rows (ordered, without updated_at); for previews, tests and the demo."""
    cols = [c for c in daily_rollups.c if c.name != "updated_at"]
    q = sa.select(*cols).order_by(
        daily_rollups.c.account_id, daily_rollups.c.date, daily_rollups.c.dimension_type,
        daily_rollups.c.dimension_id, daily_rollups.c.metric,
    )
    if where is not None:
        q = q.where(where)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(q)]


def get_cursor(engine: Engine, name: str) -> tuple[float, float] | None:
    """(fresh_until, settled_until) of a provider stream, or None before its first fetch."""
    c = provider_cursors.c
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(c.fresh_until, c.settled_until).where(c.name == name)
        ).first()
    return (float(row[0]), float(row[1])) if row else None


def advance_cursor(engine: Engine, name: str, fresh_until: float, settled_until: float) -> None:
    """Move a stream's cursor forward (never back), in one transaction."""
    c = provider_cursors.c
    with engine.begin() as conn:
        q = sa.select(c.fresh_until, c.settled_until).where(c.name == name)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).first()
        now = utc_now_naive()
        if row is None:
            conn.execute(provider_cursors.insert().values(
                name=name, fresh_until=fresh_until, settled_until=settled_until,
                updated_at=now))
        else:
            conn.execute(provider_cursors.update().where(c.name == name).values(
                fresh_until=max(float(row[0]), fresh_until),
                settled_until=max(float(row[1]), settled_until), updated_at=now))


@dataclass(frozen=True)
class StreamState:
    first_fetch_from: float | None  # epoch seconds
    reconciled_at: float | None  # epoch seconds


def get_stream_state(engine: Engine, name: str) -> StreamState | None:
    """What is known of a provider stream besides its cursor, or None."""
    c = provider_streams.c
    with engine.connect() as conn:
        row = conn.execute(sa.select(c.first_fetch_from, c.reconciled_at)
                           .where(c.name == name)).first()
    if row is None:
        return None
    return StreamState(*(None if v is None else float(v) for v in row))


def record_stream_state(engine: Engine, name: str, first_fetch_from: float | None = None,
                        reconciled_at: float | None = None) -> None:
    """Record a stream's first fetch (kept once set) and its last reconciliation (moves
    only forward), in one transaction."""
    c = provider_streams.c
    with engine.begin() as conn:
        q = sa.select(c.first_fetch_from, c.reconciled_at).where(c.name == name)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).first()
        now = utc_now_naive()
        if row is None:
            stmt = upsert_insert(conn, provider_streams).values(
                name=name, first_fetch_from=first_fetch_from, reconciled_at=reconciled_at,
                updated_at=now).on_conflict_do_nothing(index_elements=["name"])
            if conn.execute(stmt).rowcount:
                return
            row = conn.execute(q).first()  # a concurrent writer inserted it first
        first = row[0] if row[0] is not None else first_fetch_from
        last = row[1] if reconciled_at is None else (
            reconciled_at if row[1] is None else max(float(row[1]), reconciled_at))
        conn.execute(provider_streams.update().where(c.name == name).values(
            first_fetch_from=first, reconciled_at=last, updated_at=now))


def add_quarantine(engine: Engine, day: date, tz: str, rows: pa.Table) -> None:
    """Record quarantined items that belong to no partition (e.g. malformed provider items)."""
    if rows.num_rows == 0:
        return
    with engine.begin() as conn:
        _upsert_quarantine(conn, day, tz, rows)


def replace_quarantine(engine: Engine, day: date, tz: str, source: str, rows: pa.Table) -> None:
    """Replace one partition's quarantine rows of one source."""
    with engine.begin() as conn:
        _lock_partition(conn, source, day, tz)
        conn.execute(quarantine.delete().where(
            quarantine.c.source == source, quarantine.c.partition_date == day,
            quarantine.c.timezone == tz))
        _upsert_quarantine(conn, day, tz, rows)
