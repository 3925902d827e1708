"""Pure, vectorized transforms: validate landed events, then roll them up.

Everything here works on Arrow tables and is tested without Dagster. No Python loop
runs per event: validation is a handful of compute kernels and the rollup is one
``group_by`` per dimension.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.registry import Aggregation, Dimension, Metric

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
        # The source text of a timestamp that could not be parsed, kept for quarantine.
        ("created_at_raw", pa.string()),
    ]
)

ROLLUP_SCHEMA = pa.schema(
    [
        ("account_id", pa.int64()),
        ("date", pa.date32()),
        ("dimension_type", pa.string()),
        ("dimension_id", pa.int64()),
        ("metric", pa.string()),
        ("count", pa.int64()),
        ("sum_value", pa.float64()),
        ("sum_value_business_hours", pa.float64()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("event_id", pa.string()),
        ("reason", pa.string()),
        ("payload", pa.string()),
    ]
)

REASON_TIMESTAMP = "unparseable_created_at"
REASON_ACCOUNT = "unknown_account"
REASON_VALUE = "invalid_value"
REASON_NAME = "missing_name"


@dataclass
class Validated:
    """Events split into the ones to roll up, the quarantined ones and the ignored ones."""

    valid: pa.Table
    quarantine: pa.Table
    ignored_by_name: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        if self.quarantine.num_rows == 0:
            return {}
        counts = pc.value_counts(self.quarantine["reason"])
        return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}


def conform(table: pa.Table, schema: pa.Schema = RAW_REPORTING_SCHEMA) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema`` (missing columns become null)."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table[f.name]
            if pa.types.is_timestamp(f.type) and pa.types.is_timestamp(col.type):
                if col.type.tz is None:  # naive source timestamps mean UTC
                    col = pc.assume_timezone(col, "UTC")
            elif pa.types.is_timestamp(f.type) and pa.types.is_string(col.type):
                col = pc.assume_timezone(col.cast(pa.timestamp(f.type.unit)), "UTC")
            columns.append(col.cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _invalid_number(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a duration is negative, NaN or infinite (null is valid: it counts as 0)."""
    bad = pc.or_(pc.less(col, 0.0), pc.invert(pc.is_finite(col)))
    return pc.fill_null(bad, False)


def _payload_json(rows: pa.Table) -> pa.Array:
    # Only quarantined rows get here: a small set by construction, so row dicts are fine.
    return pa.array(
        [json.dumps(r, default=str, sort_keys=True) for r in rows.to_pylist()], pa.string()
    )


def validate(
    events: pa.Table,
    known_accounts: Iterable[int],
    registered_events: Iterable[str],
    source: str = "reporting_events",
) -> Validated:
    """Split ``events`` (RAW_REPORTING_SCHEMA) into valid, quarantined and ignored rows.

    The first failing rule gives the reason: timestamp, account, name, value.
    """
    events = conform(events)
    n = events.num_rows
    reason = pa.nulls(n, pa.string())

    def mark(mask: pa.ChunkedArray | pa.Array, why: str) -> None:
        nonlocal reason
        reason = pc.if_else(pc.and_(pc.is_null(reason), mask), pa.scalar(why), reason)

    accounts = pa.array(sorted(set(known_accounts)), pa.int64())
    mark(pc.is_null(events["created_at"]), REASON_TIMESTAMP)
    mark(pc.invert(pc.fill_null(pc.is_in(events["account_id"], accounts), False)), REASON_ACCOUNT)
    mark(pc.is_null(events["name"]), REASON_NAME)
    mark(
        pc.or_(
            _invalid_number(events["value"]),
            _invalid_number(events["value_in_business_hours"]),
        ),
        REASON_VALUE,
    )
    bad = pc.is_valid(reason)
    bad_rows = events.filter(bad)
    quarantine = pa.Table.from_arrays(
        [
            pa.repeat(pa.scalar(source, pa.string()), bad_rows.num_rows),
            pc.cast(bad_rows["id"], pa.string()),
            pc.drop_null(reason).cast(pa.string()),
            _payload_json(bad_rows),
        ],
        schema=QUARANTINE_SCHEMA,
    )
    good = events.filter(pc.invert(bad))
    registered = pa.array(sorted(set(registered_events)), pa.string())
    wanted = pc.is_in(good["name"], registered)
    ignored = good.filter(pc.invert(wanted))
    ignored_by_name = (
        {str(v["values"]): int(v["counts"]) for v in pc.value_counts(ignored["name"]).to_pylist()}
        if ignored.num_rows
        else {}
    )
    return Validated(good.filter(wanted), quarantine, ignored_by_name)


def _dimension_groups(events: pa.Table, dim: Dimension) -> pa.Table:
    """One row per (raw event, account, dimension id) with count, sums and distinct convs."""
    cols = ["name", "account_id", "value", "value_in_business_hours", "conversation_id"]
    if dim.column != "account_id":
        t = events.select([*cols, dim.column])
        t = t.filter(pc.is_valid(t[dim.column]))
        keys = ["name", "account_id", dim.column]
    else:
        t = events.select(cols)
        keys = ["name", "account_id"]
    t = t.set_column(t.schema.get_field_index("value"), "value", pc.fill_null(t["value"], 0.0))
    t = t.set_column(
        t.schema.get_field_index("value_in_business_hours"),
        "value_in_business_hours",
        pc.fill_null(t["value_in_business_hours"], 0.0),
    )
    g = t.group_by(keys, use_threads=True).aggregate(
        [
            ("value", "count", pc.CountOptions(mode="all")),
            ("value", "sum"),
            ("value_in_business_hours", "sum"),
            ("conversation_id", "count_distinct"),
        ]
    )
    dim_id = g[dim.column] if dim.column != "account_id" else g["account_id"]
    return pa.table(
        {
            "name": g["name"],
            "account_id": g["account_id"],
            "dimension_id": dim_id,
            "n": g["value_count"],
            "sum_value": g["value_sum"],
            "sum_bh": g["value_in_business_hours_sum"],
            "distinct_conversations": g["conversation_id_count_distinct"],
        }
    )


def compute_rollups(events: pa.Table, day: date, metrics: Sequence[Metric]) -> pa.Table:
    """``daily_rollups`` rows (ROLLUP_SCHEMA) for valid events of one local ``day``."""
    pieces: list[pa.Table] = []
    dims: dict[str, Dimension] = {}
    for m in metrics:
        for d in m.dimensions:
            dims[d.name] = d
    for dim in dims.values():
        dim_metrics = [m for m in metrics if dim in m.dimensions]
        names = pa.array(sorted({m.raw_event for m in dim_metrics}), pa.string())
        subset = events.filter(pc.is_in(events["name"], names))
        if subset.num_rows == 0:
            continue
        groups = _dimension_groups(subset, dim)
        for m in dim_metrics:
            g = groups.filter(pc.equal(groups["name"], m.raw_event))
            if g.num_rows == 0:
                continue
            zeros = pa.repeat(pa.scalar(0.0, pa.float64()), g.num_rows)
            if m.aggregation is Aggregation.COUNT_AND_SUMS:
                count, s, sbh = g["n"], g["sum_value"], g["sum_bh"]
            elif m.aggregation is Aggregation.COUNT_ONLY:
                count, s, sbh = g["n"], zeros, zeros
            else:  # DISTINCT_CONVERSATIONS; a handoff without a conversation counts nothing
                keep = pc.greater(g["distinct_conversations"], 0)
                g = g.filter(keep)
                zeros = zeros[: g.num_rows]
                count, s, sbh = g["distinct_conversations"], zeros, zeros
            k = g.num_rows
            pieces.append(
                pa.Table.from_arrays(
                    [
                        g["account_id"],
                        pa.repeat(pa.scalar(day, pa.date32()), k),
                        pa.repeat(pa.scalar(dim.name, pa.string()), k),
                        g["dimension_id"],
                        pa.repeat(pa.scalar(m.name, pa.string()), k),
                        pc.cast(count, pa.int64()),
                        pc.cast(s, pa.float64()),
                        pc.cast(sbh, pa.float64()),
                    ],
                    schema=ROLLUP_SCHEMA,
                )
            )
    if not pieces:
        return ROLLUP_SCHEMA.empty_table()
    return pa.concat_tables(pieces).combine_chunks()


def expected_account_totals(events: pa.Table, metrics: Sequence[Metric]) -> dict[str, tuple]:
    """Independent recomputation of per-metric totals on the account dimension.

    Used by the reconciliation check: it sums the valid events directly (no group_by),
    so a bug in ``compute_rollups`` or in the warehouse write shows up as a mismatch.
    Returns metric → (count, sum_value, sum_value_business_hours).
    """
    out: dict[str, tuple] = {}
    for m in metrics:
        rows = events.filter(pc.equal(events["name"], m.raw_event))
        if m.aggregation is Aggregation.DISTINCT_CONVERSATIONS:
            pairs = rows.filter(pc.is_valid(rows["conversation_id"])).select(
                ["account_id", "conversation_id"]
            )
            n = pairs.group_by(["account_id", "conversation_id"]).aggregate([]).num_rows
            out[m.name] = (n, 0.0, 0.0)
        elif m.aggregation is Aggregation.COUNT_ONLY:
            out[m.name] = (rows.num_rows, 0.0, 0.0)
        else:
            s = pc.sum(pc.fill_null(rows["value"], 0.0)).as_py() or 0.0
            sbh = pc.sum(pc.fill_null(rows["value_in_business_hours"], 0.0)).as_py() or 0.0
            out[m.name] = (rows.num_rows, float(s), float(sbh))
    return out
