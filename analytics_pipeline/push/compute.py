"""The push source's computations on Arrow tables, tested without Dagster or a database:
strict conversion of the rows as read, de-duplication by push id, validation (the first
failing rule is the row's ``invalid_reason``), and the events the rollups count.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.core.coerce import (
    decode_utf8,
    false_mask,
    first_failing_rule,
    to_int64,
    to_text,
    to_timestamp_utc,
)
from analytics_pipeline.core.sources import _printable
from analytics_pipeline.push.contract import (
    FUTURE_TOLERANCE_SECONDS,
    LANDED_PUSH_SCHEMA,
    MAX_AUTOMATION_ID_LENGTH,
    REASON_BAD_AUTOMATION,
    REASON_BAD_ID,
    REASON_DELIVERED_AT,
    REASON_DELIVERED_BEFORE_SENT,
    REASON_FUTURE,
    REASON_SENT_AT,
    REASON_UNKNOWN_STATUS,
    REASON_UNKNOWN_USER,
    REASON_UTF8,
    STATUSES,
)

# the columns of ``push_notifications`` as read (``title`` is not needed downstream)
PUSH_COLUMNS = ("id", "account_id", "user_id", "campaign_id", "automation_id", "status",
                "sent_at", "delivered_at")
USER_COLUMNS = ("id", "account_id", "email", "posthog_distinct_id")

USERS_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64()),
    pa.field("account_id", pa.int64()),
    pa.field("email", pa.string()),
    pa.field("posthog_distinct_id", pa.string()),
])

_CONTROL = r"[\x{00}-\x{1F}\x{7F}-\x{9F}]"
_ts = pa.timestamp("us", tz="UTC")


def _chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.Array):
        return col
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _raw_json(t: pa.Table, rows: np.ndarray) -> pa.Array:
    """The source columns of the flagged ``rows`` as JSON, null elsewhere (only those rows
    become Python objects)."""
    idx = np.flatnonzero(rows)
    if not len(idx):
        return pa.nulls(t.num_rows, pa.string())
    picked = t.select(list(PUSH_COLUMNS)).take(pa.array(idx)).to_pylist()
    values = np.full(t.num_rows, None, dtype=object)
    values[idx] = [json.dumps({k: _printable(v) for k, v in r.items()}, default=str,
                              sort_keys=True) for r in picked]
    return pa.array(values, pa.string())


def convert_users(t: pa.Table) -> tuple[pa.Table, int]:
    """Users as read → USERS_SCHEMA; rows whose id or account id is not an exact integer,
    or whose texts are not clean UTF-8 (NUL included), are dropped, as are repeated ids
    (all of their rows: which one is right cannot be told). Returns (users, dropped)."""
    if t.num_rows == 0:
        return USERS_SCHEMA.empty_table(), 0
    user_id, bad_id = to_int64(_chunk(t["id"]))
    account_id, bad_account = to_int64(_chunk(t["account_id"]))
    email, bad_email, nul_email = to_text(_chunk(t["email"]))
    distinct, bad_distinct, nul_distinct = to_text(_chunk(t["posthog_distinct_id"]))
    bad = pc.or_(pc.or_(bad_id, bad_account), pc.or_(pc.or_(bad_email, nul_email),
                                                     pc.or_(bad_distinct, nul_distinct)))
    bad = pc.or_kleene(bad, pc.or_kleene(pc.is_null(user_id), pc.is_null(account_id)))
    counts = pc.value_counts(user_id.drop_null())
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    bad = pc.or_(pc.fill_null(bad, True), pc.is_in(user_id, repeated))
    users = pa.Table.from_arrays([user_id, account_id, email, distinct], schema=USERS_SCHEMA)
    keep = pc.invert(bad)
    return users.filter(keep), int(t.num_rows - pc.sum(keep).as_py() or 0)


def convert_pushes(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """One batch as read (bytes from SQLite, native values from PostgreSQL) → typed
    columns plus ``bad_*`` flags and ``raw`` (the row as JSON where any flag is set)."""
    t = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    n = t.num_rows
    col = {c: _chunk(t[c]) for c in PUSH_COLUMNS}
    bad_utf8 = false_mask(n)
    for c in ("automation_id", "status"):  # texts: invalid UTF-8 or a NUL byte
        col[c], bad, nul = to_text(col[c])
        bad_utf8 = pc.or_(bad_utf8, pc.or_(bad, nul))
    for c in ("id", "account_id", "user_id", "campaign_id", "sent_at", "delivered_at"):
        arr = col[c]
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            col[c], bad = decode_utf8(arr)
            bad_utf8 = pc.or_(bad_utf8, bad)
    out: dict[str, pa.Array] = {}
    bad_id = false_mask(n)
    for c in ("id", "account_id", "user_id", "campaign_id"):
        out[c], bad = to_int64(col[c])
        bad_id = pc.or_(bad_id, bad)
        if c != "campaign_id":  # the campaign is optional
            bad_id = pc.or_(bad_id, pc.is_null(out[c]))
    out["sent_at"], bad_sent = to_timestamp_utc(col["sent_at"])
    out["delivered_at"], bad_delivered = to_timestamp_utc(col["delivered_at"])
    bad_sent = pc.or_(bad_sent, pc.is_null(out["sent_at"]))
    flagged = pc.or_(pc.or_(bad_utf8, bad_id), pc.or_(bad_sent, bad_delivered))
    raw = _raw_json(t, np.asarray(pc.fill_null(flagged, True).to_numpy(zero_copy_only=False),
                                  bool))
    return pa.table({
        "push_id": out["id"], "account_id": out["account_id"], "user_id": out["user_id"],
        "campaign_id": out["campaign_id"], "automation_id": col["automation_id"],
        "status": col["status"], "sent_at": out["sent_at"],
        "delivered_at": out["delivered_at"], "bad_utf8": bad_utf8, "bad_id": bad_id,
        "bad_sent_at": bad_sent, "bad_delivered_at": bad_delivered, "raw": raw,
    })


def first_of_each_id(ids: pa.Array) -> np.ndarray:
    """Mask of the first row of each push id (null ids pass, for validation to reject)."""
    n = len(ids)
    keep = np.ones(n, bool)
    valid = np.asarray(pc.is_valid(ids).to_numpy(zero_copy_only=False), bool)
    rows = np.flatnonzero(valid)
    if len(rows) < 2:
        return keep
    values = np.asarray(pc.fill_null(ids, 0).to_numpy(zero_copy_only=False))[rows]
    _, first = np.unique(values, return_index=True)
    keep[rows] = False
    keep[rows[first]] = True
    return keep


def validate(pushes: pa.Table, users: pa.Table, now: datetime) -> pa.Array:
    """The ``invalid_reason`` of each converted push (null when valid), the first rule it
    breaks in the contract's order. ``users`` (USERS_SCHEMA) are the users of the
    partition's accounts: a push of any other user, or of a user of another account, is
    ``unknown_user``. ``now`` bounds the timestamps (plus a 5-minute tolerance)."""
    n = pushes.num_rows
    at = pc.index_in(_chunk(pushes["user_id"]), value_set=users["user_id"])
    user_account = _chunk(users["account_id"]).take(at)
    sent, delivered = _chunk(pushes["sent_at"]), _chunk(pushes["delivered_at"])
    automation = _chunk(pushes["automation_id"])
    length = pc.utf8_length(automation)
    bad_automation = pc.or_kleene(
        pc.or_kleene(pc.equal(length, 0), pc.greater(length, MAX_AUTOMATION_ID_LENGTH)),
        pc.match_substring_regex(automation, _CONTROL))
    limit = pa.scalar(int((now.timestamp() + FUTURE_TOLERANCE_SECONDS) * 1_000_000),
                      pa.int64()).cast(_ts)
    rules = [
        (REASON_UTF8, _chunk(pushes["bad_utf8"])),
        (REASON_BAD_ID, _chunk(pushes["bad_id"])),
        (REASON_SENT_AT, _chunk(pushes["bad_sent_at"])),
        (REASON_DELIVERED_AT, _chunk(pushes["bad_delivered_at"])),
        (REASON_UNKNOWN_STATUS, pc.invert(pc.fill_null(
            pc.is_in(_chunk(pushes["status"]), value_set=pa.array(STATUSES)), False))),
        (REASON_BAD_AUTOMATION, pc.fill_null(bad_automation, False)),
        (REASON_UNKNOWN_USER, pc.invert(pc.fill_null(
            pc.equal(user_account, _chunk(pushes["account_id"])), False))),
        (REASON_DELIVERED_BEFORE_SENT, pc.fill_null(pc.less(delivered, sent), False)),
        (REASON_FUTURE, pc.or_(pc.fill_null(pc.greater(sent, limit), False),
                               pc.fill_null(pc.greater(delivered, limit), False))),
    ]
    return first_failing_rule(rules, n)


def land_pushes(pushes: pa.Table, users: pa.Table, now: datetime) -> pa.Table:
    """Converted, de-duplicated pushes → LANDED_PUSH_SCHEMA rows: valid rows with their
    anchor (``delivered_at``, else ``sent_at``), invalid rows with their reason and
    ``raw`` (the row as read where a conversion failed, else the converted row as
    JSON)."""
    reason = validate(pushes, users, now)
    invalid = np.asarray(pc.is_valid(reason).to_numpy(zero_copy_only=False), bool)
    raw = _chunk(pushes["raw"])
    if invalid.any():
        converted = pushes.select(["push_id", "account_id", "user_id", "campaign_id",
                                   "automation_id", "status", "sent_at", "delivered_at"])
        converted = converted.rename_columns(list(PUSH_COLUMNS))
        raw = pc.coalesce(raw, _raw_json(converted, invalid & np.asarray(
            pc.is_null(raw).to_numpy(zero_copy_only=False), bool)))
    sent, delivered = _chunk(pushes["sent_at"]), _chunk(pushes["delivered_at"])
    valid = pa.array(~invalid)
    cols = {
        "push_id": _chunk(pushes["push_id"]), "account_id": _chunk(pushes["account_id"]),
        "user_id": _chunk(pushes["user_id"]), "campaign_id": _chunk(pushes["campaign_id"]),
        "automation_id": _chunk(pushes["automation_id"]), "status": _chunk(pushes["status"]),
        "sent_at": sent, "delivered_at": delivered,
        "anchor_at": pc.if_else(valid, pc.coalesce(delivered, sent),
                                pa.nulls(len(sent), _ts)),
        "invalid_reason": reason,
        "raw": pc.if_else(valid, pa.nulls(len(raw), pa.string()), raw),
    }
    return pa.Table.from_arrays([cols[f.name] for f in LANDED_PUSH_SCHEMA],
                                schema=LANDED_PUSH_SCHEMA)


def rollup_events(pushes: pa.Table, automation_nums: pa.Table) -> pa.Table:
    """The events the push metrics count, from valid landed pushes: ``push_sent`` for each,
    plus ``push_delivered`` or ``push_failed`` by status; columns as core's rollups take
    them (name, account_id, campaign_id, automation_num, value, value_in_business_hours).
    ``automation_nums`` maps automation_id → automation_num."""
    num = _chunk(automation_nums["automation_num"]).take(
        pc.index_in(_chunk(pushes["automation_id"]),
                    value_set=automation_nums["automation_id"]))
    base = {"account_id": _chunk(pushes["account_id"]),
            "campaign_id": _chunk(pushes["campaign_id"]), "automation_num": num}
    status = _chunk(pushes["status"])
    parts = [pa.table({"name": pa.repeat(pa.scalar("push_sent"), pushes.num_rows), **base})]
    for s in ("delivered", "failed"):
        mask = pc.equal(status, s)
        parts.append(pa.table({"name": pa.repeat(pa.scalar(f"push_{s}"), pushes.num_rows),
                               **base}).filter(mask))
    events = pa.concat_tables(parts).combine_chunks()
    zeros = pa.repeat(pa.scalar(0.0), events.num_rows)
    return events.append_column("value", zeros).append_column("value_in_business_hours",
                                                              zeros)
