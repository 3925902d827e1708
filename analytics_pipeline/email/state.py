"""Email state that scales: fold only the Mailgun events landed since the last refresh.

The per-recipient state is a fold whose parts are all mergeable: first times are minimums,
the permanent failure is the earliest by (timestamp, event id) and is sticky, the last
temporary failure is a maximum, and the temporary-failure count is a sum, which is the only
part that is not idempotent: every temporary-failure event id folded is kept
(``email_state_temporary_failures``) so that a copy landed or read again counts once. All
other parts give the same result when an (identical) event is folded twice, so no other
event id needs remembering.

What is new is known from a journal of landed log files (``email_log_files``): the fetch step
registers what it appended (``register_log_files``) and each refresh also lists the log for
files nobody registered (a crash between append and register, logs landed before this
change). A refresh reads the unfolded files, folds them into the stored states of the
recipients they touch, adds to the stats of their emails, automations and members the
difference between each changed recipient's new and old facts (and a new recipient's facts),
and marks the files folded, all in one transaction: its cost grows with the recipients
touched, not with the recipients of the keys touched. Open rates need the tracked
recipients and the tracked ones who opened, kept per key in ``email_state_totals``.

Matching happens in the warehouse against a mirror of the recipients
(``email_state_recipients``) that each refresh extends with the recipients added since the
last one (recipients are insert-only in the app: a changed or deleted recipient row is
picked up by the full rebuild). Events that match no recipient wait in
``email_state_unmatched`` and are matched again when new recipients arrive, as the full
recompute would match them.

``rebuild_email_state`` is the repair path and the first run: it recomputes everything from
the whole log, reading it in chunks of files so that memory stays bounded by the number of
recipients, not of events.
"""

from __future__ import annotations

import io
import posixpath
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.core.sources import arrow_batches
from analytics_pipeline.email import tables as et
from analytics_pipeline.email.compute import (
    COUNT_COLUMNS,
    MIN_RECIPIENTS_FOR_RATE,
    STATE_EVENTS,
    STATE_SCHEMA,
    _sum_by,
    automation_stats,
    email_stats,
    member_stats,
    recipient_facts,
)
from analytics_pipeline.email.mailgun import (
    PROVIDER_EVENT_SCHEMA,
    normalize_message_ids,
    sanitize_text,
)
from analytics_pipeline.email.source import (
    RECIPIENT_SCHEMA,
    EmailSource,
    src_email_recipients,
    src_emails,
)

# Recipient ids are read again this far below the highest one mirrored: a row committed
# late with a lower id (concurrent inserts) is still picked up.
RECIPIENT_ID_OVERLAP = 10_000
ID_CHUNK = 10_000  # SQLite binds at most 32,766 parameters
FULL_CHUNK_ROWS = 1_000_000  # events per chunk of the full rebuild
# the full rebuild's fold is kept in this many parts (by recipient id), each merged with its
# share of a chunk: a merge's transient copies are a part's size, not the whole fold's
FOLD_BUCKETS = 8
INSERT_ROWS = 250_000  # rows per COPY of the full rebuild (each is buffered as CSV)

_ts = sa.DateTime(timezone=True)
UTC_US = pa.timestamp("us", tz="UTC")

# --- tables ---------------------------------------------------------------------------------

email_log_files = sa.Table(
    "email_log_files", wh.metadata,
    sa.Column("kind", wh.KeyText, primary_key=True),
    sa.Column("path", wh.KeyText, primary_key=True, comment="relative to the stream's folder"),
    sa.Column("rows", sa.BigInteger, comment="rows read when folded"),
    sa.Column("registered_at", sa.DateTime, nullable=False),
    sa.Column("folded_at", sa.DateTime),
    sa.Index("ix_email_log_files_unfolded", "kind", "folded_at"),
)
email_state_recipients = sa.Table(
    "email_state_recipients", wh.metadata,
    sa.Column("kind", wh.KeyText, primary_key=True),
    sa.Column("recipient_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger),
    sa.Column("email_id", sa.BigInteger),
    sa.Column("automation_id", sa.BigInteger),
    sa.Column("member_id", sa.BigInteger),
    sa.Column("track_opens", sa.Boolean),
    sa.Column("message_id", wh.KeyText, comment="normalized: no brackets"),
    sa.Column("address", wh.KeyText, comment="lower-cased, trimmed"),
    sa.Index("ix_email_state_recipients_match", "kind", "message_id", "address"),
    sa.Index("ix_email_state_recipients_email", "kind", "email_id"),
    sa.Index("ix_email_state_recipients_member", "kind", "member_id"),
    sa.Index("ix_email_state_recipients_automation", "kind", "automation_id"),
)
email_state_failures = sa.Table(  # the event behind failed_at: the tie-break of the fold
    "email_state_failures", wh.metadata,
    sa.Column("kind", wh.KeyText, primary_key=True),
    sa.Column("recipient_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", wh.KeyText, nullable=False),
)
email_state_temporary_failures = sa.Table(  # folded temporary failures, counted once each
    "email_state_temporary_failures", wh.metadata,
    sa.Column("kind", wh.KeyText, primary_key=True),
    sa.Column("event_id", wh.KeyText, primary_key=True),
)
email_state_unmatched = sa.Table(  # events waiting for their recipient row
    "email_state_unmatched", wh.metadata,
    sa.Column("kind", wh.KeyText, primary_key=True),
    sa.Column("event_id", wh.KeyText, primary_key=True),
    sa.Column("event", sa.Text),
    sa.Column("timestamp", _ts),
    sa.Column("severity", sa.Text),
    sa.Column("delivery_status_code", sa.Text),
    sa.Column("delivery_status_message", sa.Text),
    sa.Column("message_id", wh.KeyText),
    sa.Column("address", wh.KeyText),
    sa.Index("ix_email_state_unmatched_match", "kind", "message_id"),
)
email_state_progress = sa.Table(
    "email_state_progress", wh.metadata,
    sa.Column("kind", wh.KeyText, primary_key=True),
    sa.Column("recipient_watermark", sa.BigInteger, nullable=False,
              comment="highest recipient id mirrored"),
    sa.Column("refreshed_at", sa.DateTime, nullable=False),
    sa.Column("rebuilt_at", sa.DateTime, nullable=False),
)
email_state_totals = sa.Table(  # what open rates need, kept beside the published counts
    "email_state_totals", wh.metadata,
    sa.Column("kind", wh.KeyText, primary_key=True),
    sa.Column("dimension", wh.KeyText, primary_key=True,
              comment="email_id | automation_id | member_id"),
    sa.Column("key_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("tracked", sa.BigInteger, nullable=False, comment="recipients of tracked emails"),
    sa.Column("tracked_opened", sa.BigInteger, nullable=False,
              comment="... of which opened"),
)
INTERNAL_TABLES = [email_log_files, email_state_recipients, email_state_failures,
                   email_state_temporary_failures, email_state_unmatched, email_state_progress,
                   email_state_totals]

# --- pure Arrow: keys, matching, the fold ---------------------------------------------------

# What the fold reads of a landed event.
READ_SCHEMA = pa.schema([PROVIDER_EVENT_SCHEMA.field(c) for c in (
    "event_id", "event", "timestamp", "recipient", "message_id", "severity",
    "delivery_status_code", "delivery_status_message", "fetched_at")])

# An event ready to fold: its recipient (null: unmatched) and its match key.
EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("event", pa.string()), ("timestamp", UTC_US),
    ("severity", pa.string()), ("delivery_status_code", pa.string()),
    ("delivery_status_message", pa.string()), ("message_id", pa.string()),
    ("address", pa.string()), ("recipient_id", pa.int64()),
])

FOLD_SCHEMA = pa.schema([*STATE_SCHEMA, ("failure_event_id", pa.string())])
_FIRSTS = list(STATE_EVENTS.values())

MIRROR_SCHEMA = pa.schema([
    ("recipient_id", pa.int64()), ("account_id", pa.int64()), ("email_id", pa.int64()),
    ("automation_id", pa.int64()), ("member_id", pa.int64()), ("track_opens", pa.bool_()),
    ("message_id", pa.string()), ("address", pa.string()),
])
# A recipient matched by a refresh: its mirror row and its stored fold (nulls: none yet).
WHO_SCHEMA = pa.schema([*MIRROR_SCHEMA, *[f for f in FOLD_SCHEMA if f.name != "recipient_id"]])


def event_keys(landed: pa.Table) -> pa.Table:
    """Landed events (READ_SCHEMA) → EVENT_SCHEMA with the match key, recipient unknown.

    Message ids are always normalized (brackets, whitespace), the address compares as
    landed (lower-cased on landing), as ``email.match_recipients`` does.
    """
    landed = sanitize_text(landed)
    n = landed.num_rows
    return pa.table({
        "event_id": landed["event_id"], "event": landed["event"],
        "timestamp": landed["timestamp"].cast(UTC_US), "severity": landed["severity"],
        "delivery_status_code": landed["delivery_status_code"],
        "delivery_status_message": landed["delivery_status_message"],
        "message_id": normalize_message_ids(landed["message_id"]),
        "address": landed["recipient"], "recipient_id": pa.nulls(n, pa.int64()),
    }, schema=EVENT_SCHEMA)


def recipient_mirror(recipients: pa.Table) -> pa.Table:
    """Recipients (RECIPIENT_SCHEMA) → MIRROR_SCHEMA: attributes and the match key."""
    return pa.table({
        "recipient_id": recipients["recipient_id"], "account_id": recipients["account_id"],
        "email_id": recipients["email_id"], "automation_id": recipients["automation_id"],
        "member_id": recipients["member_id"], "track_opens": recipients["track_opens"],
        "message_id": normalize_message_ids(recipients["message_id"]),
        "address": pc.utf8_lower(pc.utf8_trim_whitespace(recipients["member_email"])),
    }, schema=MIRROR_SCHEMA)


def match_keys(mirror: pa.Table) -> pa.Table:
    """(message_id, address) → the lowest recipient id having it (as match_recipients)."""
    return mirror.select(["message_id", "address", "recipient_id"]).group_by(
        ["message_id", "address"], use_threads=False).aggregate(
        [("recipient_id", "min")]).rename_columns(["message_id", "address", "recipient_id"])


def match(events: pa.Table, keys: pa.Table) -> pa.Table:
    """``events`` (EVENT_SCHEMA) with ``recipient_id`` set from ``keys`` (match_keys)."""
    if events.num_rows == 0:
        return events
    probe = pa.table({"message_id": events["message_id"], "address": events["address"],
                      "row": pa.array(np.arange(events.num_rows, dtype=np.int64))})
    hit = probe.join(keys, ["message_id", "address"], join_type="inner").select(
        ["row", "recipient_id"])
    rid = np.full(events.num_rows, -1, dtype=np.int64)
    rid[hit["row"].to_numpy()] = hit["recipient_id"].to_numpy()
    col = pa.array(rid, mask=rid < 0)
    return events.set_column(events.schema.get_field_index("recipient_id"), "recipient_id", col)


def _masks(events: pa.Table) -> tuple[pa.Array, pa.Array]:
    failed = pc.equal(events["event"], "failed")
    permanent = pc.and_(failed, pc.equal(pc.fill_null(events["severity"], "permanent"),
                                         "permanent"))
    temporary = pc.and_(failed, pc.equal(pc.fill_null(events["severity"], ""), "temporary"))
    return pc.fill_null(permanent, False), pc.fill_null(temporary, False)


def temporary_failures(events: pa.Table) -> pa.Array:
    """Mask of the temporary failures: the events whose id must be counted once."""
    return _masks(events)[1]


def _earliest_failure(rows: pa.Table) -> pa.Table:
    """Per recipient, the failure row with the smallest (failed_at, failure_event_id)."""
    rows = rows.filter(pc.is_valid(rows["failed_at"])).sort_by(
        [("recipient_id", "ascending"), ("failed_at", "ascending"),
         ("failure_event_id", "ascending")])
    cols = ["failed_at", "failure_code", "failure_message", "failure_event_id"]
    g = rows.select(["recipient_id", *cols]).group_by("recipient_id", use_threads=False) \
        .aggregate([(c, "first") for c in cols])
    return g.rename_columns(["recipient_id", *cols])


def _finish(g: pa.Table, failures: pa.Table) -> pa.Table:
    out = g.join(failures, "recipient_id", join_type="left outer")
    return pa.Table.from_arrays([out[f.name].cast(f.type) for f in FOLD_SCHEMA],
                                schema=FOLD_SCHEMA).sort_by("recipient_id")


def fold_events(events: pa.Table) -> pa.Table:
    """One FOLD_SCHEMA row per recipient with matched events (unmatched are ignored).

    The same rules as ``email.recipient_states``, with a total order for the permanent
    failure: the earliest timestamp wins, ties go to the smallest event id (the full
    recompute of ``email.py`` broke ties by read order, which an incremental fold cannot
    reproduce). Folding an event twice changes nothing but the temporary-failure count:
    callers pass each temporary failure once.
    """
    events = events.filter(pc.is_valid(events["recipient_id"]))
    if events.num_rows == 0:
        return FOLD_SCHEMA.empty_table()
    permanent, temporary = _masks(events)
    null_ts = pa.scalar(None, UTC_US)
    cols = {"recipient_id": events["recipient_id"]}
    for event, column in STATE_EVENTS.items():
        cols[column] = pc.if_else(pc.equal(events["event"], event), events["timestamp"],
                                  null_ts)
    cols["temp"] = pc.if_else(temporary, events["timestamp"], null_ts)
    g = pa.table(cols).group_by("recipient_id", use_threads=True).aggregate(
        [*[(c, "min") for c in _FIRSTS], ("temp", "count"), ("temp", "max")]
    ).rename_columns(["recipient_id", *_FIRSTS, "temporary_failures",
                      "last_temporary_failure_at"])
    perm = events.filter(permanent)
    failures = _earliest_failure(pa.table({
        "recipient_id": perm["recipient_id"], "failed_at": perm["timestamp"],
        "failure_code": perm["delivery_status_code"],
        "failure_message": perm["delivery_status_message"],
        "failure_event_id": perm["event_id"]}))
    return _finish(g, failures)


def merge_folds(tables: Sequence[pa.Table]) -> pa.Table:
    """The fold of the union of the events behind ``tables`` (each counted once)."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return FOLD_SCHEMA.empty_table()
    if len(tables) == 1:
        return tables[0]
    both = pa.concat_tables([t.cast(FOLD_SCHEMA) for t in tables])
    g = both.select(["recipient_id", *_FIRSTS, "temporary_failures",
                     "last_temporary_failure_at"]).group_by(
        "recipient_id", use_threads=True).aggregate(
        [*[(c, "min") for c in _FIRSTS], ("temporary_failures", "sum"),
         ("last_temporary_failure_at", "max")]
    ).rename_columns(["recipient_id", *_FIRSTS, "temporary_failures",
                      "last_temporary_failure_at"])
    return _finish(g, _earliest_failure(both))


def states_of(fold: pa.Table) -> pa.Table:
    """The published state (STATE_SCHEMA) of a fold."""
    return fold.select(STATE_SCHEMA.names).cast(STATE_SCHEMA)


def changed_states(merged: pa.Table, old: pa.Table) -> pa.Table:
    """The rows of ``merged`` (FOLD_SCHEMA) that differ from ``old``'s row of their
    recipient (nulls equal) or that ``old`` has none of."""
    if merged.num_rows == 0 or old.num_rows == 0:
        return merged
    cols = [c for c in FOLD_SCHEMA.names if c != "recipient_id"]
    both = merged.join(old.rename_columns([c if c == "recipient_id" else f"old_{c}"
                                           for c in old.column_names]),
                       "recipient_id", join_type="left outer")
    changed = pc.is_null(both["old_temporary_failures"])  # no old row (never null else)
    for c in cols:
        a, b = both[c], both[f"old_{c}"]
        ne = pc.not_equal(a, b)
        changed = pc.or_(changed, pc.if_else(pc.is_null(ne), pc.xor(pc.is_valid(a),
                                                                    pc.is_valid(b)), ne))
    return both.filter(changed).select(FOLD_SCHEMA.names).sort_by("recipient_id")


# --- the log and its journal ----------------------------------------------------------------


def list_log_files(log: ProviderEventLog, days: Iterable[date] | None = None,
                   prefix: str = "") -> list[str]:
    """Landed files (paths relative to the stream folder), sorted; ``.tmp-*`` excluded."""
    out = []
    for day in (log.days() if days is None else days):
        folder = log.date_dir(day)
        if log.fs.get_file_info(folder).type == pafs.FileType.NotFound:
            continue
        for info in log.fs.get_file_info(pafs.FileSelector(folder)):
            name = info.base_name
            if name.endswith(".parquet") and not name.startswith(".") and \
                    name.startswith(prefix):
                out.append(posixpath.relpath(info.path, log.base))
    return sorted(out)


def read_log_file(log: ProviderEventLog, path: str) -> pa.Table:
    return pq.read_table(posixpath.join(log.base, path), filesystem=log.fs,
                         schema=READ_SCHEMA, columns=READ_SCHEMA.names)


def register_log_files(engine: Engine, kind: str, log: ProviderEventLog, fetch_id: str,
                       days: Iterable[date] | None = None) -> int:
    """Journal the files one fetch appended (named ``{fetch_id}-*.parquet`` by
    ``ProviderEventLog.append``) under ``days`` (all days if None); returns how many were
    new. Idempotent; call it after ``append``, before advancing the cursor."""
    paths = list_log_files(log, days, prefix=f"{fetch_id}-")
    with engine.begin() as conn:
        return _register(conn, kind, paths)


def _register(conn: Connection, kind: str, paths: Sequence[str]) -> int:
    if not paths:
        return 0
    now = wh.utc_now_naive()
    new = 0
    for i in range(0, len(paths), ID_CHUNK):
        stmt = wh.upsert_insert(conn, email_log_files).values(
            [{"kind": kind, "path": p, "registered_at": now} for p in paths[i:i + ID_CHUNK]]
        ).on_conflict_do_nothing(index_elements=["kind", "path"])
        new += max(conn.execute(stmt).rowcount, 0)
    return new


# --- SQL helpers ----------------------------------------------------------------------------


def _lock(conn: Connection, kind: str) -> dict | None:
    """Serialize refreshes of one kind (PostgreSQL: a transaction advisory lock; SQLite: the
    first write takes the database's write lock); returns the kind's progress row."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(f"email_state:{kind}".encode())
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
    else:
        conn.execute(email_state_progress.update().where(
            email_state_progress.c.kind == kind).values(kind=kind))
    row = conn.execute(sa.select(email_state_progress).where(
        email_state_progress.c.kind == kind)).first()
    return dict(row._mapping) if row else None


_SA_TYPES = {pa.int64(): sa.BigInteger, pa.string(): sa.Text, pa.bool_(): sa.Boolean,
             UTC_US: _ts, pa.float64(): sa.Float(precision=53), pa.timestamp("us"): sa.DateTime}


def _stage(conn: Connection, table: pa.Table, analyze: bool = True) -> sa.Table:
    """``table`` in a new temporary table of the transaction (COPY on PostgreSQL);
    ``analyze``: with statistics, for the plans of joins with it."""
    name = f"tmp_email_state_{uuid.uuid4().hex[:10]}"
    cols = [sa.Column(f.name, _SA_TYPES[f.type]) for f in table.schema]
    tmp = sa.Table(name, sa.MetaData(), *cols, prefixes=["TEMPORARY"])
    tmp.create(conn)
    wh.insert_arrow(conn, tmp, table)
    if analyze and conn.dialect.name == "postgresql":
        conn.execute(sa.text(f'ANALYZE "{name}"'))
    return tmp


def _upsert_arrow(conn: Connection, target: sa.Table, table: pa.Table,
                  keys: Sequence[str]) -> None:
    """Insert or update ``table``'s rows (columns by name) by ``keys``, set-based."""
    if table.num_rows == 0:
        return
    tmp = _stage(conn, table, analyze=False)  # only scanned
    names = table.column_names
    stmt = wh.upsert_insert(conn, target).from_select(
        names, sa.select(*[tmp.c[n] for n in names]).where(sa.true()))  # sqlite: see docs
    update = {n: stmt.excluded[n] for n in names if n not in keys}
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_=update) if update \
        else stmt.on_conflict_do_nothing(index_elements=list(keys))
    conn.execute(stmt)
    tmp.drop(conn)


def _to_arrow(rows: Sequence, schema: pa.Schema) -> pa.Table:
    """Result rows → Arrow; naive timestamps (SQLite) mean UTC."""
    if not rows:
        return schema.empty_table()
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in
                                 zip(columns, schema, strict=True)], schema=schema)


def _select_arrow(conn: Connection, query: sa.Select, schema: pa.Schema) -> pa.Table:
    """``query``'s rows as ``schema`` (columns in order); PostgreSQL: COPY out as CSV."""
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2":
        return _copy_out(conn, query, schema)
    return _to_arrow(conn.execute(query).all(), schema)


_CSV_OUT = (pacsv.ParseOptions(newlines_in_values=True),
            dict(strings_can_be_null=True, quoted_strings_can_be_null=False,
                 null_values=[""], true_values=["t"], false_values=["f"]))


def _copy_out(conn: Connection, query: sa.Select, schema: pa.Schema) -> pa.Table:
    # PostgreSQL's CSV writes a NULL unquoted and empty, an empty string quoted, and
    # timestamptz with its UTC offset (which the reader applies)
    compiled = query.compile(dialect=conn.dialect,
                             compile_kwargs={"render_postcompile": True})
    buf = io.BytesIO()
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        sql = cursor.mogrify(compiled.string, compiled.params).decode()
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", buf)
    finally:
        cursor.close()
    if buf.tell() == 0:
        return schema.empty_table()
    buf.seek(0)
    parse, convert = _CSV_OUT
    table = pacsv.read_csv(buf, read_options=pacsv.ReadOptions(column_names=schema.names),
                           parse_options=parse,
                           convert_options=pacsv.ConvertOptions(column_types=schema, **convert))
    return table.cast(schema)


def _chunks(values: pa.Array | pa.ChunkedArray) -> Iterator[list]:
    values = pc.unique(values).drop_null().to_pylist()
    for i in range(0, len(values), ID_CHUNK):
        yield values[i:i + ID_CHUNK]


def _with_kind(table: pa.Table, kind: str, now: datetime | None = None) -> pa.Table:
    n = table.num_rows
    table = table.append_column("kind", pa.repeat(pa.scalar(kind), n))
    if now is not None:
        table = table.append_column("updated_at", pa.repeat(pa.scalar(now, pa.timestamp("us")),
                                                            n))
    return table


# --- stats of touched keys: count deltas applied in the warehouse -------------------------

STATS_TABLES = {"email_id": et.email_stats, "automation_id": et.automation_email_stats,
                "member_id": et.member_email_stats}
# a recipient's 0/1 facts that depend on its state, as email.recipient_facts derives them
STATE_FACTS = {"delivered_count": "delivered_at", "opened_count": "opened_at",
               "clicked_count": "clicked_at", "failed_count": "failed_at",
               "unsubscribed_count": "unsubscribed_at", "complained_count": "complained_at"}
DELTA_COLUMNS = [*COUNT_COLUMNS, "tracked", "tracked_opened"]
DELTA_SCHEMA = pa.schema([("dimension", pa.string()), ("key_id", pa.int64()),
                          *[(c, pa.int64()) for c in DELTA_COLUMNS]])
# what a recipient's contribution is keyed by (MIRROR_SCHEMA's attributes)
ATTRS = ["recipient_id", "email_id", "automation_id", "member_id", "track_opens"]


def _dimensions(kind: str) -> list[str]:
    return [k for k in STATS_TABLES if k != "automation_id" or kind == "automation"]


def recipient_contributions(attrs: pa.Table, states: pa.Table | None, sign: int = 1,
                            sent: bool = False) -> pa.Table:
    """Per recipient of ``attrs`` (ATTRS columns), its part of the sums behind the stats,
    times ``sign``: the facts that depend on ``states`` (STATE_SCHEMA columns; a recipient
    without a state row has none), and with ``sent`` the ones that do not (sent, tracked).

    The stats of a key are the sums of its recipients' contributions, so a refresh adds,
    for each recipient whose state changed, its new contribution minus its old one, and
    for each new recipient its whole contribution.
    """
    if states is not None:
        attrs = attrs.join(states.select(["recipient_id", *STATE_FACTS.values()]),
                           "recipient_id", join_type="left outer")
    n = attrs.num_rows
    zero = pa.array(np.zeros(n, dtype=np.int64))
    tracked = pc.fill_null(attrs["track_opens"], False)

    def flag(mask) -> pa.Array:
        return pc.multiply(pc.cast(mask, pa.int64()), sign)

    cols = {k: attrs[k] for k in STATS_TABLES}
    cols["sent_count"] = pa.array(np.full(n, sign, dtype=np.int64)) if sent else zero
    for name, col in STATE_FACTS.items():
        cols[name] = flag(pc.is_valid(attrs[col])) if states is not None else zero
    cols["tracked"] = flag(tracked) if sent else zero
    cols["tracked_opened"] = flag(pc.and_(tracked, pc.is_valid(attrs["opened_at"]))) \
        if states is not None else zero
    return pa.table({c: cols[c] for c in [*STATS_TABLES, *DELTA_COLUMNS]})


# the sums a dimension's stats row is made of: a key whose deltas are all zero keeps its row
STATS_INPUTS = {"email_id": DELTA_COLUMNS, "automation_id": DELTA_COLUMNS,
                "member_id": ["sent_count", "opened_count", "tracked", "tracked_opened"]}


def stat_deltas(contributions: Sequence[pa.Table], kind: str) -> pa.Table:
    """Summed contributions per dimension and key (DELTA_SCHEMA), for the keys whose stats
    row changes (a delta of its sums is not zero)."""
    parts = [t for t in contributions if t.num_rows]
    if not parts:
        return DELTA_SCHEMA.empty_table()
    facts = pa.concat_tables(parts)
    out = []
    for key in _dimensions(kind):
        g = _sum_by(facts, key, DELTA_COLUMNS)
        changes = pa.array(np.zeros(g.num_rows, dtype=bool))
        for c in STATS_INPUTS[key]:
            changes = pc.or_(changes, pc.not_equal(g[c], 0))
        g = g.filter(changes)
        out.append(pa.table({"dimension": pa.repeat(pa.scalar(key), g.num_rows),
                             "key_id": g[key], **{c: g[c] for c in DELTA_COLUMNS}},
                            schema=DELTA_SCHEMA))
    return pa.concat_tables(out)


def stat_totals(facts: pa.Table, kind: str) -> pa.Table:
    """email_state_totals rows (no kind) of ``email.recipient_facts``."""
    out = []
    for key in _dimensions(kind):
        g = _sum_by(facts, key, ["tracked", "tracked_opened"])
        out.append(pa.table({"dimension": pa.repeat(pa.scalar(key), g.num_rows),
                             "key_id": g[key], "tracked": g["tracked"],
                             "tracked_opened": g["tracked_opened"]}))
    return pa.concat_tables(out)


def _apply_stat_deltas(conn: Connection, kind: str, deltas: pa.Table,
                       now: datetime) -> dict[str, int]:
    """Add ``deltas`` (DELTA_SCHEMA) to the totals and the stats rows of their keys (a
    missing row counts as zeros) and set their open rates from the new totals, with the
    arithmetic of ``email._rate`` (IEEE division of the same integers: the same floats;
    ``tracked`` is at least 5 where it divides). Returns the stats rows written per
    dimension."""
    written = {k: 0 for k in STATS_TABLES}
    if deltas.num_rows == 0:
        return written
    tmp = _stage(conn, deltas)
    d, t = tmp.c, email_state_totals.c
    stmt = wh.upsert_insert(conn, email_state_totals).from_select(
        ["kind", "dimension", "key_id", "tracked", "tracked_opened"],
        sa.select(sa.literal(kind, wh.KeyText), d.dimension, d.key_id, d.tracked,
                  d.tracked_opened).where(  # a new key (sent) has a row, if of zeros
            sa.or_(d.tracked != 0, d.tracked_opened != 0, d.sent_count != 0)))
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["kind", "dimension", "key_id"],
        set_={"tracked": t.tracked + stmt.excluded.tracked,
              "tracked_opened": t.tracked_opened + stmt.excluded.tracked_opened}))
    f64 = sa.Float(precision=53)
    rate = sa.case((t.tracked >= MIN_RECIPIENTS_FOR_RATE,
                    sa.cast(t.tracked_opened, f64) / sa.cast(t.tracked, f64)),
                   else_=sa.null())
    for key, target in STATS_TABLES.items():
        if key not in _dimensions(kind):
            continue
        if key == "member_id":
            counts = {"email_count": d.sent_count, "email_opened_count": d.opened_count}
            rate_column = "email_open_rate"
        else:
            counts = {c: d[c] for c in COUNT_COLUMNS}
            rate_column = "open_rate"
        names = ["kind", key, *counts, rate_column, "updated_at"]
        stmt = wh.upsert_insert(conn, target).from_select(names, sa.select(
            sa.literal(kind, wh.KeyText), d.key_id, *counts.values(), rate,
            sa.literal(now, sa.DateTime)).select_from(tmp.join(email_state_totals, sa.and_(
                t.kind == kind, t.dimension == d.dimension, t.key_id == d.key_id)))
            .where(d.dimension == key))
        set_ = {c: target.c[c] + stmt.excluded[c] for c in counts}
        set_[rate_column] = stmt.excluded[rate_column]
        set_["updated_at"] = stmt.excluded.updated_at
        written[key] = conn.execute(stmt.on_conflict_do_update(
            index_elements=["kind", key], set_=set_)).rowcount
    tmp.drop(conn)
    return written


def _has_totals(conn: Connection, kind: str) -> bool:
    """False for a state built before email_state_totals existed (a non-empty mirror,
    no totals): the rates cannot be updated by deltas until a rebuild."""
    t, m = email_state_totals.c, email_state_recipients.c
    if conn.execute(sa.select(t.key_id).where(t.kind == kind).limit(1)).first():
        return True
    return conn.execute(sa.select(m.recipient_id).where(m.kind == kind).limit(1)).first() \
        is None


# --- the incremental refresh ----------------------------------------------------------------


@dataclass
class EmailStateResult:
    mode: str  # "incremental" | "full"
    files: int = 0  # log files folded
    events: int = 0  # events read (copies included)
    matched: int = 0
    unmatched: int = 0  # events waiting for their recipient after this refresh's matching
    new_recipients: int = 0
    recipients_touched: int = 0  # recipients with events folded
    states_changed: int = 0  # ... whose state changed (the states written)
    emails: int = 0  # stats rows written
    automations: int = 0
    members: int = 0
    seconds: float = 0.0


def recipients_after(emails: EmailSource, kind: str, after_id: int) -> pa.Table:
    """The kind's recipients with an id above ``after_id`` (RECIPIENT_SCHEMA)."""
    r, e = src_email_recipients.c, src_emails.c
    query = (
        sa.select(r.id.label("recipient_id"), r.account_id, r.email_id, r.member_id,
                  r.member_email, r.provider_message_id.label("message_id"),
                  e.automation_id, sa.cast(e.track_opens, sa.Boolean).label("track_opens"))
        .select_from(src_email_recipients.join(src_emails, e.id == r.email_id))
        .where(e.kind == sa.literal_column(f"'{_kind(kind)}'"),
               r.id > sa.literal(int(after_id), sa.BigInteger))
    )
    with arrow_batches(emails.url, query) as reader:
        batches = [pa.Table.from_batches([b]) for b in reader if b.num_rows]
    if not batches:
        return RECIPIENT_SCHEMA.empty_table()
    t = pa.concat_tables(batches, promote_options="permissive")
    return pa.Table.from_arrays([t[f.name].cast(f.type) for f in RECIPIENT_SCHEMA],
                                schema=RECIPIENT_SCHEMA)


def _kind(kind: str) -> str:
    if kind not in ("newsletter", "automation"):
        raise ValueError(f"unknown email kind {kind!r}")
    return kind


def refresh_email_state(log: ProviderEventLog, emails: EmailSource, engine: Engine, kind: str,
                        discover: bool = True) -> EmailStateResult:
    """Fold the log files landed since the last refresh into the kind's recipient states
    and update the stats of the emails, automations and members they touch.

    One transaction: a failure leaves the previous state, and a re-run folds the same files
    again from it. The first refresh of a kind (nothing folded yet, or a state built before
    the totals behind the rates were kept) is a full rebuild.
    ``discover`` also lists the log for files nobody registered.
    """
    started = time.perf_counter()
    kind = _kind(kind)
    with engine.begin() as conn:
        progress = _lock(conn, kind)
        if progress is None or not _has_totals(conn, kind):
            result = _rebuild(conn, log, emails, kind)
            result.seconds = time.perf_counter() - started
            return result
        result = _refresh(conn, log, emails, kind, progress, discover)
    result.seconds = time.perf_counter() - started
    return result


def _refresh(conn: Connection, log: ProviderEventLog, emails: EmailSource, kind: str,
             progress: dict, discover: bool) -> EmailStateResult:
    result = EmailStateResult("incremental")
    now = wh.utc_now_naive()
    f = email_log_files.c
    if discover:
        known = set(conn.execute(sa.select(f.path).where(f.kind == kind)).scalars())
        _register(conn, kind, [p for p in list_log_files(log) if p not in known])
    paths = sorted(conn.execute(sa.select(f.path).where(
        f.kind == kind, f.folded_at.is_(None))).scalars())
    landed = [read_log_file(log, p) for p in paths]
    result.files = len(paths)
    result.events = sum(t.num_rows for t in landed)
    events = [event_keys(t) for t in landed if t.num_rows]

    # 1. recipients added since the last refresh, and the waiting events they may match
    watermark = int(progress["recipient_watermark"])
    m = email_state_recipients.c
    fresh = recipient_mirror(recipients_after(emails, kind, watermark - RECIPIENT_ID_OVERLAP))
    if fresh.num_rows:
        seen = conn.execute(sa.select(m.recipient_id).where(
            m.kind == kind, m.recipient_id > watermark - RECIPIENT_ID_OVERLAP)).scalars()
        fresh = fresh.filter(pc.invert(pc.is_in(fresh["recipient_id"],
                                                pa.array(list(seen), pa.int64()))))
    result.new_recipients = fresh.num_rows
    waiting_ids = pa.array([], pa.string())
    if fresh.num_rows:
        wh.insert_arrow(conn, email_state_recipients, _with_kind(fresh, kind))
        watermark = max(watermark, pc.max(fresh["recipient_id"]).as_py())
        u = email_state_unmatched.c
        cols = [c.name for c in EVENT_SCHEMA if c.name != "recipient_id"]
        for chunk in _chunks(fresh["message_id"]):
            waiting = _select_arrow(conn, sa.select(*[u[c] for c in cols]).where(
                u.kind == kind, u.message_id.in_(chunk)),
                pa.schema([EVENT_SCHEMA.field(c) for c in cols]))
            if waiting.num_rows:
                waiting_ids = pa.concat_arrays([waiting_ids,
                                                waiting["event_id"].combine_chunks()])
                events.append(waiting.append_column("recipient_id",
                                                    pa.nulls(waiting.num_rows, pa.int64())))

    # 2. match in the warehouse: only the new events' keys travel, and come back with the
    #    recipients having them, their attributes and their stored state (one scan each)
    batch = pa.concat_tables(events) if events else EVENT_SCHEMA.empty_table()
    who = WHO_SCHEMA.empty_table()
    if batch.num_rows:
        # each distinct key once: events of one recipient share it
        probe = batch.select(["message_id", "address"]).group_by(
            ["message_id", "address"], use_threads=False).aggregate([])
        tmp = _stage(conn, probe)
        s, fl = et.email_recipient_states.c, email_state_failures.c
        who = _select_arrow(conn, sa.select(
            *[m[c] for c in MIRROR_SCHEMA.names],
            *[s[c] for c in STATE_SCHEMA.names if c != "recipient_id"],
            fl.event_id.label("failure_event_id"))
            .select_from(tmp.join(email_state_recipients, sa.and_(
                m.kind == kind, m.message_id == tmp.c.message_id,
                m.address == tmp.c.address))
                .outerjoin(et.email_recipient_states, sa.and_(
                    s.kind == kind, s.recipient_id == m.recipient_id))
                .outerjoin(email_state_failures, sa.and_(
                    fl.kind == kind, fl.recipient_id == m.recipient_id))), WHO_SCHEMA)
        tmp.drop(conn)
        keys = match_keys(who)  # a key shared by several recipients: the lowest id
        # one recipient, one key: ``who`` is now one row per recipient matched
        who = who.filter(pc.is_in(who["recipient_id"], keys["recipient_id"]))
        batch = match(batch, keys)
    matched = batch.filter(pc.is_valid(batch["recipient_id"]))
    unmatched = batch.filter(pc.is_null(batch["recipient_id"]))
    result.matched = matched.num_rows

    # 3. temporary failures count once: drop those folded before (or twice in this batch)
    temporary = temporary_failures(matched)
    temp = matched.filter(temporary)
    if temp.num_rows:
        t = email_state_temporary_failures.c
        folded = []
        for chunk in _chunks(temp["event_id"]):
            folded += conn.execute(sa.select(t.event_id).where(
                t.kind == kind, t.event_id.in_(chunk))).scalars().all()
        temp = temp.filter(pc.invert(pc.is_in(temp["event_id"], pa.array(folded, pa.string()))))
        temp = _dedupe(temp)
        matched = pa.concat_tables([matched.filter(pc.invert(temporary)), temp])
        wh.insert_arrow(conn, email_state_temporary_failures,
                        pa.table({"kind": pa.repeat(pa.scalar(kind), temp.num_rows),
                                  "event_id": temp["event_id"]}))

    # 4. fold into the stored states of the recipients touched; a state that changes is
    #    written, and its part of the stats changes by its new facts minus its old ones
    #    (a new recipient's: all of it)
    delta = fold_events(matched)
    result.recipients_touched = delta.num_rows
    contributions = [recipient_contributions(fresh.select(ATTRS), None, sent=True)]
    if delta.num_rows:
        stored = who.filter(pc.is_valid(who["temporary_failures"]))  # has a state row
        old = stored.filter(pc.is_in(stored["recipient_id"], delta["recipient_id"])) \
            .select(FOLD_SCHEMA.names).cast(FOLD_SCHEMA)
        merged = changed_states(merge_folds([old, delta]), old)
        old = old.filter(pc.is_in(old["recipient_id"], merged["recipient_id"]))
        touched = who.filter(pc.is_in(who["recipient_id"], merged["recipient_id"]))
        contributions += [recipient_contributions(touched.select(ATTRS), merged),
                          recipient_contributions(touched.select(ATTRS), old, sign=-1)]
        info = touched.select(["recipient_id", "account_id", "email_id", "member_id"])
        rows = states_of(merged).join(info, "recipient_id", join_type="left outer")
        _upsert_arrow(conn, et.email_recipient_states, _with_kind(rows, kind, now),
                      ["kind", "recipient_id"])
        failed = merged.filter(pc.is_valid(merged["failure_event_id"]))
        _upsert_arrow(conn, email_state_failures, _with_kind(pa.table({
            "recipient_id": failed["recipient_id"], "event_id": failed["failure_event_id"]}),
            kind), ["kind", "recipient_id"])
        result.states_changed = merged.num_rows

    # 5. waiting events: the matched ones leave, the unmatched new ones wait
    u = email_state_unmatched.c
    rematched = matched["event_id"].filter(pc.is_in(matched["event_id"], waiting_ids))
    for chunk in _chunks(rematched):
        conn.execute(email_state_unmatched.delete().where(u.kind == kind,
                                                          u.event_id.in_(chunk)))
    unmatched = _dedupe(unmatched)
    _upsert_arrow(conn, email_state_unmatched,
                  _with_kind(unmatched.drop_columns(["recipient_id"]), kind),
                  ["kind", "event_id"])
    result.unmatched = unmatched.num_rows

    # 6. stats of the keys of the states changed and recipients added: sums += deltas
    written = _apply_stat_deltas(conn, kind, stat_deltas(contributions, kind), now)
    result.emails, result.members = written["email_id"], written["member_id"]
    result.automations = written["automation_id"]

    # 7. the files are folded, with the state they built
    for i in range(0, len(paths), ID_CHUNK):
        chunk = paths[i:i + ID_CHUNK]
        rows = {p: t.num_rows for p, t in zip(chunk, landed[i:i + ID_CHUNK], strict=True)}
        stmt = email_log_files.update().where(
            f.kind == kind, f.path == sa.bindparam("p")).values(
            folded_at=now, rows=sa.bindparam("n"))
        conn.execute(stmt, [{"p": p, "n": n} for p, n in rows.items()])
    conn.execute(email_state_progress.update().where(email_state_progress.c.kind == kind)
                 .values(recipient_watermark=watermark, refreshed_at=now))
    return result


# --- the full rebuild (repair path) ---------------------------------------------------------


def rebuild_email_state(log: ProviderEventLog, emails: EmailSource, engine: Engine, kind: str,
                        chunk_rows: int = FULL_CHUNK_ROWS) -> EmailStateResult:
    """Recompute the kind's states, stats and bookkeeping from the whole log, in one
    transaction. Reads the log in chunks of about ``chunk_rows`` events, so memory grows
    with the number of recipients, not of events."""
    started = time.perf_counter()
    kind = _kind(kind)
    with engine.begin() as conn:
        _lock(conn, kind)
        result = _rebuild(conn, log, emails, kind, chunk_rows)
    result.seconds = time.perf_counter() - started
    return result


def _log_chunks(log: ProviderEventLog, paths: Sequence[str], chunk_rows: int,
                rows: dict[str, int]) -> Iterator[pa.Table]:
    parts: list[pa.Table] = []
    n = 0
    for p in paths:
        t = read_log_file(log, p)
        rows[p] = t.num_rows
        parts.append(event_keys(t))
        n += t.num_rows
        if n >= chunk_rows:
            yield pa.concat_tables(parts)
            parts, n = [], 0
    if parts:
        yield pa.concat_tables(parts)


def _fold_into(buckets: list[pa.Table], events: pa.Table) -> None:
    """Fold ``events`` (matched, each temporary failure once) into ``buckets``: the part of
    recipient ``r`` is ``buckets[r % len(buckets)]``."""
    fold = fold_events(events)
    if fold.num_rows == 0:
        return
    part = fold["recipient_id"].to_numpy() % len(buckets)
    for b in range(len(buckets)):
        buckets[b] = merge_folds([buckets[b], fold.filter(pa.array(part == b))])


def _dedupe(table: pa.Table, column: str = "event_id") -> pa.Table:
    """One row per ``column`` value (copies of one event are identical)."""
    if table.num_rows == 0:
        return table
    first = pa.table({"k": table[column], "i": pa.array(
        np.arange(table.num_rows, dtype=np.int64))}).group_by("k", use_threads=False) \
        .aggregate([("i", "min")])["i_min"]
    return table.take(first)


def _rebuild(conn: Connection, log: ProviderEventLog, emails: EmailSource, kind: str,
             chunk_rows: int = FULL_CHUNK_ROWS) -> EmailStateResult:
    result = EmailStateResult("full")
    now = wh.utc_now_naive()
    recipients = emails.recipients(kind)
    mirror = recipient_mirror(recipients)
    keys = match_keys(mirror)
    paths = list_log_files(log)
    rows: dict[str, int] = {}
    buckets = [FOLD_SCHEMA.empty_table()] * FOLD_BUCKETS
    temps: list[pa.Table] = []
    unmatched: list[pa.Table] = []
    for chunk in _log_chunks(log, paths, chunk_rows, rows):
        result.events += chunk.num_rows
        chunk = match(chunk, keys)
        hit = pc.is_valid(chunk["recipient_id"])
        unmatched.append(chunk.filter(pc.invert(hit)).drop_columns(["recipient_id"]))
        chunk = chunk.filter(hit)
        result.matched += chunk.num_rows
        temporary = temporary_failures(chunk)
        temps.append(chunk.filter(temporary).select(
            ["event_id", "event", "timestamp", "severity", "recipient_id"]))
        _fold_into(buckets, chunk.filter(pc.invert(temporary)))
        del chunk
    temp = _dedupe(pa.concat_tables(temps)) if temps else None
    if temp is not None and temp.num_rows:
        n = temp.num_rows
        _fold_into(buckets, pa.table({
            "event_id": temp["event_id"], "event": temp["event"],
            "timestamp": temp["timestamp"], "severity": temp["severity"],
            "delivery_status_code": pa.nulls(n, pa.string()),
            "delivery_status_message": pa.nulls(n, pa.string()),
            "message_id": pa.nulls(n, pa.string()), "address": pa.nulls(n, pa.string()),
            "recipient_id": temp["recipient_id"]}, schema=EVENT_SCHEMA))
    fold = pa.concat_tables(buckets)
    del buckets
    waiting = _dedupe(pa.concat_tables(unmatched)) if unmatched else None
    del temps, unmatched
    result.files = len(paths)
    result.unmatched = waiting.num_rows if waiting is not None else 0
    result.recipients_touched = fold.num_rows

    states = states_of(fold)
    facts = recipient_facts(recipients, states)
    info = recipients.select(["recipient_id", "account_id", "email_id", "member_id"])
    tables = {et.email_recipient_states: states.join(info, "recipient_id",
                                                     join_type="left outer"),
              et.email_stats: email_stats(facts), et.member_email_stats: member_stats(facts)}
    if kind == "automation":
        tables[et.automation_email_stats] = automation_stats(facts)
    tables[email_state_totals] = stat_totals(facts, kind)
    del facts
    result.emails = tables[et.email_stats].num_rows
    result.members = tables[et.member_email_stats].num_rows
    result.automations = tables.get(et.automation_email_stats, pa.table({})).num_rows
    failed = fold.filter(pc.is_valid(fold["failure_event_id"]))
    tables[email_state_failures] = pa.table({"recipient_id": failed["recipient_id"],
                                             "event_id": failed["failure_event_id"]})
    tables[email_state_recipients] = mirror
    tables[email_state_temporary_failures] = pa.table(
        {"event_id": temp["event_id"] if temp is not None else pa.array([], pa.string())})
    # always replaced: an empty log leaves no event waiting
    tables[email_state_unmatched] = waiting if waiting is not None else \
        EVENT_SCHEMA.empty_table().drop_columns(["recipient_id"])
    for target, table in tables.items():
        conn.execute(target.delete().where(target.c.kind == kind))
        stamped = "updated_at" in target.c
        for offset in range(0, table.num_rows, INSERT_ROWS):
            wh.insert_arrow(conn, target, _with_kind(table.slice(offset, INSERT_ROWS), kind,
                                                     now if stamped else None))
    if conn.dialect.name == "postgresql":
        # statistics of the rewritten tables, for the plans of the refreshes that follow
        # (autovacuum may be off or late; ANALYZE samples, it takes well under a second)
        conn.execute(sa.text("ANALYZE " + ", ".join(f'"{t.name}"' for t in tables)))

    # every file read is folded; files registered meanwhile stay for the next refresh
    f = email_log_files.c
    _register(conn, kind, paths)
    for i in range(0, len(paths), ID_CHUNK):
        conn.execute(email_log_files.update().where(
            f.kind == kind, f.path == sa.bindparam("p")).values(
            folded_at=now, rows=sa.bindparam("n")),
            [{"p": p, "n": rows[p]} for p in paths[i:i + ID_CHUNK]])
    watermark = pc.max(mirror["recipient_id"]).as_py() if mirror.num_rows else 0
    values = {"recipient_watermark": watermark, "refreshed_at": now, "rebuilt_at": now}
    stmt = wh.upsert_insert(conn, email_state_progress).values(kind=kind, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["kind"], set_=values))
    return result



# --- compaction of the log: the journal follows the files (appended for issue 7) ----------


def record_compaction(conn: Connection, kind: str, replaced_paths: Sequence[str],
                      new_path: str, rows: int) -> bool:
    """Journal that ``new_path`` (relative to the stream's folder) replaces
    ``replaced_paths``; returns whether it is recorded as folded.

    Call it in the transaction that publishes the compacted file, before the replaced
    files are deleted: it takes the kind's refresh lock, so a refresh sees the journal and
    the files either both before or both after. The compacted file is folded if and only
    if every file it replaces was (a file never registered counts as not folded);
    otherwise the next refresh folds all of it again, which is idempotent (first times,
    the sticky permanent failure; temporary failures are counted once by event id).
    """
    kind = _kind(kind)
    _lock(conn, kind)
    f = email_log_files.c
    replaced = sorted(set(replaced_paths))
    folded = 0
    for i in range(0, len(replaced), ID_CHUNK):
        chunk = replaced[i:i + ID_CHUNK]
        folded += conn.execute(sa.select(sa.func.count()).select_from(email_log_files).where(
            f.kind == kind, f.path.in_(chunk), f.folded_at.is_not(None))).scalar_one()
        conn.execute(email_log_files.delete().where(f.kind == kind, f.path.in_(chunk)))
    all_folded = bool(replaced) and folded == len(replaced)
    now = wh.utc_now_naive()
    values = {"registered_at": now, "folded_at": now if all_folded else None,
              "rows": rows if all_folded else None}
    stmt = wh.upsert_insert(conn, email_log_files).values(kind=kind, path=new_path, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["kind", "path"], set_=values))
    return all_folded


def journaled(conn: Connection, kind: str, path: str) -> bool:
    """Whether ``path`` has a row in the kind's journal of log files."""
    f = email_log_files.c
    return conn.execute(sa.select(f.path).where(f.kind == _kind(kind), f.path == path)) \
        .first() is not None


def lock_email_state(conn: Connection, kind: str) -> None:
    """Take the kind's refresh lock for the rest of ``conn``'s transaction."""
    _lock(conn, _kind(kind))
