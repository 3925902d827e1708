"""App users → PostHog persons, remembered in ``push_user_mapping`` and re-checked after a while.

A user is looked up by its ``posthog_distinct_id`` first (``person_distinct_ids``: a merged
person has several distinct ids and one person id), then, when that finds nothing, by its
email (``persons.properties.email``, compared lower-cased). When several persons carry the
same email the smallest person id, compared as text, is taken: a deterministic choice, so
every run maps the user to the same person until PostHog merges them. Users found neither
way are stored as ``unmapped`` and looked up again once their row is ``refresh_after`` old,
like the mapped ones (a person can be merged into another, a user can appear in PostHog
later).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.push.contract import push_user_mapping
from analytics_pipeline.push.posthog import PostHogClient

METHOD_DISTINCT_ID = "distinct_id"
METHOD_EMAIL = "email"
METHOD_UNMAPPED = "unmapped"

USERS_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64()),
    pa.field("account_id", pa.int64()),
    pa.field("email", pa.string()),
    pa.field("posthog_distinct_id", pa.string()),
])

# One row per distinct given user, by user_id.
MAPPING_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64()),
    pa.field("person_id", pa.string()),  # null when unmapped
    pa.field("method", pa.string()),  # distinct_id | email | unmapped
])

MAX_BATCH = 1000  # values per IN list sent to PostHog
_DB_CHUNK = 10_000  # ids per IN list in the warehouse (SQLite binds at most 32,766)

DISTINCT_ID_QUERY = """
SELECT distinct_id, toString(person_id) AS person_id
FROM person_distinct_ids
WHERE distinct_id IN {distinct_ids}
ORDER BY distinct_id"""

# several persons with one email: the smallest id as text (see the module docstring)
EMAIL_QUERY = """
SELECT lower(properties.email) AS email, min(toString(id)) AS person_id
FROM persons
WHERE lower(properties.email) IN {emails}
GROUP BY lower(properties.email)
ORDER BY email"""

_FOUND_SCHEMA = {
    "distinct_id": pa.schema([("distinct_id", pa.string()), ("person_id", pa.string())]),
    "email": pa.schema([("email", pa.string()), ("person_id", pa.string())]),
}


def _naive_utc(now: datetime) -> datetime:
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc).replace(tzinfo=None)
    return now


def _blank_to_null(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    blank = pc.equal(pc.utf8_trim_whitespace(values), "")
    return pc.if_else(blank, pa.scalar(None, pa.string()), values)


def normalize_emails(emails: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Emails as compared with PostHog's: trimmed, ASCII lower-cased (ClickHouse ``lower``
    is ASCII-only), blanks as null."""
    return _blank_to_null(pc.utf8_trim_whitespace(pc.ascii_lower(emails)))


def _prepare(users: pa.Table) -> pa.Table:
    missing = [c for c in USERS_SCHEMA.names if c not in users.column_names]
    if missing:
        raise ValueError(f"map_users: users need column(s) {missing}")
    users = users.select(USERS_SCHEMA.names).cast(USERS_SCHEMA)
    for name in ("user_id", "account_id"):
        if users[name].null_count:
            raise ValueError(f"map_users: {name} must not be null")
    # one row per user (its first), in user_id order
    ids = users["user_id"].to_numpy()
    _, first = np.unique(ids, return_index=True)
    users = users.take(pa.array(first))
    return users.set_column(2, "email", normalize_emails(users["email"])).set_column(
        3, "posthog_distinct_id", _blank_to_null(users["posthog_distinct_id"]))


def _stored(engine: Engine, user_ids: np.ndarray, fresh_after: datetime) -> pa.Table:
    """The stored mappings of these users written after ``fresh_after``."""
    m = push_user_mapping.c
    rows: list = []
    with engine.connect() as conn:
        for i in range(0, len(user_ids), _DB_CHUNK):
            chunk = user_ids[i:i + _DB_CHUNK].tolist()
            rows += conn.execute(sa.select(m.user_id, m.person_id, m.method).where(
                m.user_id.in_(chunk), m.mapped_at > fresh_after)).all()
    columns = list(zip(*rows, strict=True)) if rows else [(), (), ()]
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, MAPPING_SCHEMA, strict=True)],
        schema=MAPPING_SCHEMA)


def _lookup(client: PostHogClient, kind: str, keys: pa.Array, batch: int) -> pa.Table:
    """(key, person_id) for the keys PostHog knows, one query per ``batch`` keys."""
    hogql, name = (DISTINCT_ID_QUERY, "distinct_ids") if kind == "distinct_id" \
        else (EMAIL_QUERY, "emails")
    keys = pc.unique(keys.drop_null()) if len(keys) else keys
    found = [_FOUND_SCHEMA[kind].empty_table()]
    for i in range(0, len(keys), batch):
        found.append(client.query_all(hogql, {name: keys.slice(i, batch).to_pylist()},
                                      schema=_FOUND_SCHEMA[kind]))
    return pa.concat_tables(found)


def _person_of(keys: pa.Array, found: pa.Table, key: str) -> pa.Array:
    """The person found for each key (null where none), aligned with ``keys``."""
    at = pc.index_in(keys, value_set=found[key].combine_chunks())
    return pc.take(found["person_id"].combine_chunks(), at)


def _upsert(engine: Engine, rows: pa.Table) -> None:
    """Insert or replace the mappings of ``rows`` (user_id order: concurrent writers of
    overlapping users wait for each other rather than deadlock)."""
    tmp = f"push_user_mapping_in_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        pg = conn.dialect.name == "postgresql"
        staging = sa.Table(
            tmp, sa.MetaData(),
            sa.Column("user_id", sa.BigInteger, nullable=False),
            sa.Column("account_id", sa.BigInteger, nullable=False),
            sa.Column("person_id", sa.Text),
            sa.Column("method", sa.Text, nullable=False),
            sa.Column("mapped_at", sa.DateTime, nullable=False),
            prefixes=["TEMPORARY"], **({"postgresql_on_commit": "DROP"} if pg else {}))
        staging.create(conn)
        wh.insert_arrow(conn, staging, rows)
        columns = [c.name for c in push_user_mapping.columns]
        # WHERE: SQLite's parser needs one between INSERT … SELECT and ON CONFLICT
        stmt = wh.upsert_insert(conn, push_user_mapping).from_select(
            columns, sa.select(*(staging.c[c] for c in columns)).where(sa.true())
            .order_by(staging.c.user_id))
        stmt = stmt.on_conflict_do_update(
            index_elements=[push_user_mapping.c.user_id],
            set_={c: stmt.excluded[c] for c in columns if c != "user_id"})
        conn.execute(stmt)
        if not pg:
            staging.drop(conn)


def map_users(engine: Engine, client: PostHogClient, users: pa.Table, now: datetime,
              refresh_after: timedelta = timedelta(days=7), batch: int = MAX_BATCH) -> pa.Table:
    """Each given user's PostHog person: ``MAPPING_SCHEMA`` (user_id, person_id, method), one
    row per distinct user_id, in user_id order.

    ``users`` holds user_id, account_id, email and posthog_distinct_id (the app's users
    table). Mappings stored less than ``refresh_after`` before ``now`` are reused as they
    are, mapped or not, without a query; the others are looked up (by distinct id, then by
    email, ``batch`` ≤ 1000 values per query) and upserted with ``mapped_at = now``.
    """
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be within 1..{MAX_BATCH}, got {batch}")
    table = _prepare(users)
    if table.num_rows == 0:
        return MAPPING_SCHEMA.empty_table()
    now = _naive_utc(now)
    ids = table["user_id"].to_numpy()
    stored = _stored(engine, ids, now - refresh_after)
    todo = table.filter(pc.invert(pc.is_in(table["user_id"], value_set=stored["user_id"])))
    if todo.num_rows == 0:
        return stored.sort_by("user_id")

    by_id = _lookup(client, "distinct_id", todo["posthog_distinct_id"].combine_chunks(), batch)
    person = _person_of(todo["posthog_distinct_id"].combine_chunks(), by_id, "distinct_id")
    # email only for the users the distinct id did not find
    emails = pc.if_else(pc.is_null(person), todo["email"].combine_chunks(),
                        pa.scalar(None, pa.string()))
    by_email = _lookup(client, "email", emails, batch)
    person_by_email = _person_of(emails, by_email, "email")
    method = pc.if_else(pc.is_valid(person), METHOD_DISTINCT_ID,
                        pc.if_else(pc.is_valid(person_by_email), METHOD_EMAIL, METHOD_UNMAPPED))
    person = pc.coalesce(person, person_by_email)

    n = todo.num_rows
    new = pa.table({
        "user_id": todo["user_id"], "account_id": todo["account_id"],
        "person_id": person, "method": method,
        "mapped_at": pa.repeat(pa.scalar(now, pa.timestamp("us")), n)})
    _upsert(engine, new)
    return pa.concat_tables([stored, new.select(MAPPING_SCHEMA.names).cast(MAPPING_SCHEMA)]
                            ).sort_by("user_id")
