"""Email analytics, vectorized: match provider events to recipients, fold them into
per-recipient state, and derive per-email, per-automation and per-member statistics.

Pure functions over Arrow tables, tested without Dagster. The state of a recipient is a
fold over *all* its events, so it is recomputed from the landed log (de-duplicated by
event id) rather than updated in place: the result does not depend on the order or the
number of times events arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.core.rollups import QUARANTINE_SCHEMA
from analytics_pipeline.email.mailgun import normalize_message_ids

# A provider event matched to its recipient.
EMAIL_EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("event", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("severity", pa.string()),
    ("recipient_id", pa.int64()),
    ("account_id", pa.int64()),
    ("email_id", pa.int64()),
    ("member_id", pa.int64()),
    ("automation_id", pa.int64()),
    ("delivery_status_code", pa.string()),
    ("delivery_status_message", pa.string()),
])

STATE_EVENTS = {  # first occurrence of each event sets the column
    "delivered": "delivered_at",
    "opened": "opened_at",
    "clicked": "clicked_at",
    "unsubscribed": "unsubscribed_at",
    "complained": "complained_at",
}

MIN_RECIPIENTS_FOR_RATE = 5


@dataclass
class Matched:
    events: pa.Table  # EMAIL_EVENT_SCHEMA
    unmatched: pa.Table  # provider events without a recipient (for quarantine)


def match_recipients(events: pa.Table, recipients: pa.Table) -> Matched:
    """Join provider events to recipients on (message id, address, case-insensitive).

    Many recipients share one message id (a batch send); the address tells them apart.
    Message ids compare without surrounding whitespace and angle brackets on both sides
    (the app stores what the send API returned, ``<id>``; events carry ``id``).
    Only the keys and a row number go through the hash join; the event columns are then
    gathered by row number, which keeps the peak memory near one copy of the events.
    """
    if events.num_rows == 0:
        return Matched(EMAIL_EVENT_SCHEMA.empty_table(), events)
    rec = pa.table({
        "recipient_id": recipients["recipient_id"],
        "message_id": normalize_message_ids(recipients["message_id"]),
        "address": pc.utf8_lower(pc.utf8_trim_whitespace(recipients["member_email"]))})
    # Several recipient rows for one (message, address) would multiply events: keep the
    # lowest recipient id (the app writes one row per address and send).
    rec = rec.group_by(["message_id", "address"], use_threads=False).aggregate(
        [("recipient_id", "min")]).rename_columns(["message_id", "address", "recipient_id"])
    mids = events["message_id"]
    if pc.any(pc.starts_with(mids, "<")).as_py():  # landed before ids were normalized
        mids = normalize_message_ids(mids)
    keys = pa.table({"message_id": mids, "address": events["recipient"],
                     "row": pa.array(np.arange(events.num_rows, dtype=np.int64))})
    joined = keys.join(rec, keys=["message_id", "address"], join_type="left outer",
                       use_threads=True).select(["row", "recipient_id"])
    del keys, rec
    joined = joined.sort_by("row")  # events keep their order
    hit = pc.is_valid(joined["recipient_id"])
    rows = joined["row"].filter(hit)
    ids = joined["recipient_id"].filter(hit)
    unmatched = events.take(joined["row"].filter(pc.invert(hit)))
    attrs = recipients.select(["recipient_id", "account_id", "email_id", "member_id",
                               "automation_id"])
    # recipient attributes by id: a join on one integer key, then back in row order
    who = pa.table({"recipient_id": ids, "pos": pa.array(np.arange(len(ids), dtype=np.int64))}) \
        .join(attrs, "recipient_id", join_type="left outer").sort_by("pos")
    cols = {"recipient_id": ids}
    for c in ("account_id", "email_id", "member_id", "automation_id"):
        cols[c] = who[c]
    for c in ("event_id", "event", "timestamp", "severity", "delivery_status_code",
              "delivery_status_message"):
        cols[c] = events[c].take(rows)
    matched = pa.Table.from_arrays([cols[f.name].cast(f.type) for f in EMAIL_EVENT_SCHEMA],
                                   schema=EMAIL_EVENT_SCHEMA)
    return Matched(matched, unmatched)


def quarantine_rows(events: pa.Table, source: str,
                    reason: str = "unmatched_recipient") -> pa.Table:
    """Provider events as quarantine rows (their raw item as the payload)."""
    n = events.num_rows
    return pa.Table.from_arrays(
        [pa.repeat(pa.scalar(source), n), events["event_id"],
         pa.repeat(pa.scalar(reason), n), events["raw"]],
        schema=QUARANTINE_SCHEMA,
    )


STATE_SCHEMA = pa.schema([
    ("recipient_id", pa.int64()),
    ("delivered_at", pa.timestamp("us", tz="UTC")),
    ("opened_at", pa.timestamp("us", tz="UTC")),
    ("clicked_at", pa.timestamp("us", tz="UTC")),
    ("unsubscribed_at", pa.timestamp("us", tz="UTC")),
    ("complained_at", pa.timestamp("us", tz="UTC")),
    ("failed_at", pa.timestamp("us", tz="UTC")),  # first permanent failure only
    ("failure_code", pa.string()),
    ("failure_message", pa.string()),
    ("temporary_failures", pa.int64()),
    ("last_temporary_failure_at", pa.timestamp("us", tz="UTC")),
])


def recipient_states(events: pa.Table) -> pa.Table:
    """One row per recipient with events (STATE_SCHEMA).

    Each ``*_at`` keeps the earliest timestamp whatever the arrival order. A temporary
    failure is counted but never sets ``failed_at``; a permanent one sets it and is
    never downgraded by a later temporary one.
    """
    ids = pc.unique(events["recipient_id"]).drop_null()
    out = pa.table({"recipient_id": ids})
    # One pass over the events for every "first time" column, then one small join each.
    firsts = events.select(["recipient_id", "event", "timestamp"]).group_by(
        ["recipient_id", "event"], use_threads=True).aggregate([("timestamp", "min")])
    for event, column in STATE_EVENTS.items():
        g = firsts.filter(pc.equal(firsts["event"], event)).select(
            ["recipient_id", "timestamp_min"]).rename_columns(["recipient_id", column])
        out = out.join(g, "recipient_id", join_type="left outer")
    failed = pc.equal(events["event"], "failed")
    permanent = pc.and_(failed, pc.equal(pc.fill_null(events["severity"], "permanent"),
                                         "permanent"))
    temporary = pc.and_(failed, pc.equal(pc.fill_null(events["severity"], ""), "temporary"))
    # The first permanent failure, with its status (sorted so "first" is the earliest).
    perm = events.filter(permanent).select(
        ["recipient_id", "timestamp", "delivery_status_code", "delivery_status_message"]
    ).sort_by([("recipient_id", "ascending"), ("timestamp", "ascending")])
    g = perm.group_by("recipient_id", use_threads=False).aggregate(
        [("timestamp", "first"), ("delivery_status_code", "first"),
         ("delivery_status_message", "first")]
    ).rename_columns(["recipient_id", "failed_at", "failure_code", "failure_message"])
    out = out.join(g, "recipient_id", join_type="left outer")
    temp = events.filter(temporary).select(["recipient_id", "timestamp"])
    g = temp.group_by("recipient_id", use_threads=True).aggregate(
        [("timestamp", "count"), ("timestamp", "max")]
    ).rename_columns(["recipient_id", "temporary_failures", "last_temporary_failure_at"])
    out = out.join(g, "recipient_id", join_type="left outer")
    out = out.set_column(out.schema.get_field_index("temporary_failures"),
                         "temporary_failures", pc.fill_null(out["temporary_failures"], 0))
    return pa.Table.from_arrays([out[f.name].cast(f.type) for f in STATE_SCHEMA],
                                schema=STATE_SCHEMA).sort_by("recipient_id")


def _rate(opened: pa.ChunkedArray, tracked: pa.ChunkedArray) -> pa.ChunkedArray:
    """opened / tracked recipients, only where at least MIN_RECIPIENTS_FOR_RATE exist."""
    enough = pc.greater_equal(tracked, MIN_RECIPIENTS_FOR_RATE)
    ratio = pc.divide(pc.cast(opened, pa.float64()),
                      pc.cast(pc.max_element_wise(tracked, 1), pa.float64()))
    return pc.if_else(enough, ratio, pa.scalar(None, pa.float64()))


COUNT_COLUMNS = ["sent_count", "delivered_count", "opened_count", "clicked_count",
                 "failed_count", "unsubscribed_count", "complained_count"]


def recipient_facts(recipients: pa.Table, states: pa.Table) -> pa.Table:
    """Recipients with 0/1 facts from their state (recipients without events: zeros);
    the input of every statistic below, computed once per refresh."""
    r = recipients.join(states, "recipient_id", join_type="left outer")
    facts = {c: r[c] for c in ("recipient_id", "email_id", "automation_id", "member_id",
                               "track_opens")}
    facts["sent_count"] = pa.repeat(pa.scalar(1, pa.int64()), r.num_rows)
    for name, col in [("delivered_count", "delivered_at"), ("opened_count", "opened_at"),
                      ("clicked_count", "clicked_at"), ("failed_count", "failed_at"),
                      ("unsubscribed_count", "unsubscribed_at"),
                      ("complained_count", "complained_at")]:
        facts[name] = pc.cast(pc.is_valid(r[col]), pa.int64())
    tracked = pc.fill_null(r["track_opens"], False)
    facts["tracked"] = pc.cast(tracked, pa.int64())
    facts["tracked_opened"] = pc.cast(pc.and_(tracked, pc.is_valid(r["opened_at"])), pa.int64())
    return pa.table(facts)


def _sum_by(facts: pa.Table, key: str, columns: list[str]) -> pa.Table:
    g = facts.filter(pc.is_valid(facts[key])).group_by(key, use_threads=True).aggregate(
        [(c, "sum") for c in columns])
    return g.rename_columns([key, *columns])  # group-by keys come first


def email_stats(facts: pa.Table) -> pa.Table:
    """Per email: counts over its recipients and the open rate (tracked emails, ≥ 5)."""
    g = _sum_by(facts, "email_id", [*COUNT_COLUMNS, "tracked", "tracked_opened"])
    g = g.append_column("open_rate", _rate(g["tracked_opened"], g["tracked"]))
    return g.select(["email_id", *COUNT_COLUMNS, "open_rate"]).sort_by("email_id")


def automation_stats(facts: pa.Table) -> pa.Table:
    g = _sum_by(facts, "automation_id", [*COUNT_COLUMNS, "tracked", "tracked_opened"])
    g = g.append_column("open_rate", _rate(g["tracked_opened"], g["tracked"]))
    return g.select(["automation_id", *COUNT_COLUMNS, "open_rate"]).sort_by("automation_id")


def member_stats(facts: pa.Table) -> pa.Table:
    """Per member: emails received, emails opened, open rate (tracked, ≥ 5)."""
    g = _sum_by(facts, "member_id", ["sent_count", "opened_count", "tracked",
                                     "tracked_opened"])
    return pa.table({
        "member_id": g["member_id"],
        "email_count": g["sent_count"],
        "email_opened_count": g["opened_count"],
        "email_open_rate": _rate(g["tracked_opened"], g["tracked"]),
    }).sort_by("member_id")
