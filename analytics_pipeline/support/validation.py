"""Validation of landed support events: the rules that send a row to quarantine with its
reason, and the columns the rollups read of the valid ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.core.coerce import first_failing_rule
from analytics_pipeline.core.rollups import QUARANTINE_SCHEMA, conform, value_counts

# Landed schema of support-desk reporting events (timestamps are UTC instants).
RAW_REPORTING_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("value", pa.float64()),
        ("value_in_business_hours", pa.float64()),
        ("account_id", pa.int64()),
        ("user_id", pa.int64()),
        ("inbox_id", pa.int64()),
        ("conversation_id", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        # Set when the row did not fit the contract as read (``coerce``): the first rule
        # it broke, and its raw values as JSON for the quarantine. Null for good rows.
        ("invalid_reason", pa.string()),
        ("raw", pa.string()),
    ]
)


# What the rollups read of a validated event.
VALID_COLUMNS = ["id", "name", "value", "value_in_business_hours", "account_id", "user_id",
                 "inbox_id", "conversation_id"]


REASON_TIMESTAMP = "unparseable_created_at"


REASON_ACCOUNT = "unknown_account"


REASON_VALUE = "invalid_value"


REASON_NAME = "missing_name"


# A duration above this (about 31,700 years in seconds) is not a measurement: refusing it
# also keeps every sum of a day finite (a billion events × 1e12 is far from overflow).
MAX_VALUE = 1e12


@dataclass
class Validated:
    """Events split into the ones to roll up, the quarantined ones and the ignored ones."""

    valid: pa.Table
    quarantine: pa.Table
    ignored_by_name: dict[str, int] = field(default_factory=dict)
    out_of_scope: int = 0  # valid events of known accounts outside ``scope``

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        return value_counts(self.quarantine["reason"])


def _invalid_number(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a duration is negative, NaN, infinite or beyond MAX_VALUE (null is
    valid: it counts as 0)."""
    bad = pc.or_(pc.or_(pc.less(col, 0.0), pc.invert(pc.is_finite(col))),
                 pc.greater(col, MAX_VALUE))
    return pc.fill_null(bad, False)


def _quarantine_ids_and_payloads(rows: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Event ids and payloads of quarantined rows: the raw values as read when the row did
    not fit the contract, else the landed row. Only quarantined rows get here (a small
    set by construction), so row dicts are fine."""
    ids, payloads = [], []
    for r in rows.to_pylist():
        raw = r.pop("raw", None)
        r.pop("invalid_reason", None)
        payload = raw if raw is not None else json.dumps(r, default=str, sort_keys=True)
        ident = r.get("id")
        if ident is None and raw is not None:
            ident = json.loads(raw).get("id")
        if ident is None or ident == "":
            ident = "sha1:" + hashlib.sha1(payload.encode()).hexdigest()
        ids.append(str(ident))
        payloads.append(payload)
    return pa.array(ids, pa.string()), pa.array(payloads, pa.string())


def validate(
    events: pa.Table,
    known_accounts: Iterable[int],
    registered_events: Iterable[str],
    source: str = "reporting_events",
    scope: Iterable[int] | None = None,
) -> Validated:
    """Split ``events`` (RAW_REPORTING_SCHEMA) into valid, quarantined and ignored rows.

    The first failing rule gives the reason: timestamp, account, name, value. Rules run
    as boolean kernels over all rows; reason strings are only built for the bad rows.
    ``scope`` (accounts) keeps only their events among the valid ones, counting the rest.
    The valid table carries the columns the rollups need (no timestamps: the partition
    already fixed the day), filtered once.
    """
    events = conform(events, RAW_REPORTING_SCHEMA)
    accounts = pa.array(sorted(set(known_accounts)), pa.int64())
    rules = [
        (None, pc.is_valid(events["invalid_reason"])),  # its own reason, set on landing
        (REASON_TIMESTAMP, pc.is_null(events["created_at"])),
        (REASON_ACCOUNT,
         pc.invert(pc.fill_null(pc.is_in(events["account_id"], accounts), False))),
        (REASON_NAME, pc.is_null(events["name"])),
        (REASON_VALUE, pc.or_(_invalid_number(events["value"]),
                              _invalid_number(events["value_in_business_hours"]))),
    ]
    bad = rules[0][1]
    for _, mask in rules[1:]:
        bad = pc.or_(bad, mask)
    n_bad = pc.sum(bad).as_py() or 0
    if n_bad:
        bad_rows = events.filter(bad)
        reason = first_failing_rule(
            [(bad_rows["invalid_reason"] if why is None else why, mask.filter(bad))
             for why, mask in rules], n_bad)
        ids, payloads = _quarantine_ids_and_payloads(bad_rows)
        quarantine = pa.Table.from_arrays(
            [
                pa.repeat(pa.scalar(source, pa.string()), n_bad),
                ids,
                reason.cast(pa.string()),
                payloads,
            ],
            schema=QUARANTINE_SCHEMA,
        )
    else:
        quarantine = QUARANTINE_SCHEMA.empty_table()
    registered = pa.array(sorted(set(registered_events)), pa.string())
    wanted = pc.fill_null(pc.is_in(events["name"], registered), False)
    keep = pc.and_(pc.invert(bad), wanted)
    ignored_by_name = value_counts(
        events["name"].filter(pc.and_(pc.invert(bad), pc.invert(wanted))))
    out_of_scope = 0
    if scope is not None:
        scope_ids = pa.array(sorted(set(scope)), pa.int64())
        in_scope = pc.fill_null(pc.is_in(events["account_id"], scope_ids), False)
        out_of_scope = pc.sum(pc.and_(keep, pc.invert(in_scope))).as_py() or 0
        keep = pc.and_(keep, in_scope)
    columns = events.select(VALID_COLUMNS)
    n_keep = pc.sum(keep).as_py() or 0
    valid = columns if n_keep == events.num_rows else columns.filter(keep)
    return Validated(valid, quarantine, ignored_by_name, out_of_scope)
