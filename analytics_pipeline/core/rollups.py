"""Pure, vectorized rollups shared by every source: the rollup and quarantine schemas and the
accumulators that turn validated events into ``daily_rollups`` rows (one ``group_by`` per
dimension, memory bounded per batch), plus an independent per-account recomputation for
the reconciliation check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.core.registry import Aggregation, Dimension, Metric

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


def value_counts(values: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """How often each value occurs (a few distinct values: reasons, event names)."""
    if len(values) == 0:
        return {}
    return {str(v["values"]): int(v["counts"]) for v in pc.value_counts(values).to_pylist()}


def landed_quarantine(invalid: pa.Table, source: str, id_column: str) -> pa.Table:
    """``QUARANTINE_SCHEMA`` rows of landed rows with an ``invalid_reason``: the payload is
    the source row as landed in ``raw`` (else the landed row as JSON); a row without an id
    is named by its payload's hash. One row per (event_id, reason)."""
    if invalid.num_rows == 0:
        return QUARANTINE_SCHEMA.empty_table()
    payload = invalid["raw"].combine_chunks()
    ids = invalid[id_column].combine_chunks().cast(pa.string())
    if payload.null_count or ids.null_count or pc.any(pc.equal(ids, "")).as_py():
        # rare (a row landed without raw values or without an id): a loop over these only
        rows = invalid.drop_columns(["raw", "invalid_reason"]).to_pylist()
        texts = [p if p is not None else json.dumps(r, default=str, sort_keys=True)
                 for p, r in zip(payload.to_pylist(), rows, strict=True)]
        payload = pa.array(texts, pa.string())
        ids = pa.array([i if i else "sha1:" + hashlib.sha1(t.encode()).hexdigest()
                        for i, t in zip(ids.to_pylist(), texts, strict=True)], pa.string())
    bad = pa.Table.from_arrays(
        [pa.repeat(pa.scalar(source, pa.string()), invalid.num_rows), ids,
         invalid["invalid_reason"].combine_chunks().cast(pa.string()), payload],
        schema=QUARANTINE_SCHEMA)
    return dedupe_quarantine(bad)


def dedupe_quarantine(bad: pa.Table) -> pa.Table:
    """``QUARANTINE_SCHEMA`` rows, one per (source, event_id, reason): the same bad row
    read twice is stored, and counted, once."""
    if bad.num_rows == 0:
        return bad
    return bad.group_by(["source", "event_id", "reason"], use_threads=False).aggregate(
        [("payload", "first")]).rename_columns(QUARANTINE_SCHEMA.names)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
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


def _keys(dim: Dimension) -> list[str]:
    return ["name", "account_id"] + ([] if dim.column == "account_id" else [dim.column])


def _partial_groups(events: pa.Table, dim: Dimension, distinct: str | None) -> pa.Table:
    """A mergeable partial aggregate of one batch for one dimension.

    Counts and sums: one row per (raw event, account, dimension id) with n, sums, which
    add up across batches. Distinct counts: the unique (raw event, account, dimension id,
    counted value) tuples, which are de-duplicated again when merged. The distinct part
    only runs on the events of metrics that need it: hashing the counted ids (conversations,
    recipients) is the most expensive aggregation here.
    """
    keys = _keys(dim)
    if distinct:
        t = events.select([*keys, distinct]).rename_columns([*keys, "counted"])
        t = t.filter(pc.is_valid(t["counted"]))
    else:
        t = events.select([*keys, "value", "value_in_business_hours"])
    if dim.column != "account_id":
        t = t.filter(pc.is_valid(t[dim.column]))
    if distinct:
        return t.group_by([*keys, "counted"], use_threads=True).aggregate([])
    g = t.group_by(keys, use_threads=True).aggregate(
        [("name", "count", pc.CountOptions(mode="all")), ("value", "sum"),
         ("value_in_business_hours", "sum")]
    )
    # sum() skips nulls, which is "a null value counts as 0" (an all-null sum is null)
    return pa.table({
        **{k: g[k] for k in keys},
        "n": g["name_count"],
        "sum_value": pc.fill_null(g["value_sum"], 0.0),
        "sum_bh": pc.fill_null(g["value_in_business_hours_sum"], 0.0),
    })


def _merge_groups(partials: list[pa.Table], dim: Dimension, distinct: str | None) -> pa.Table:
    keys = _keys(dim)
    t = pa.concat_tables(partials)
    if distinct:
        t = t.group_by([*keys, "counted"], use_threads=True).aggregate([])
        g = t.group_by(keys, use_threads=True).aggregate([("counted", "count")])
        n = g["counted_count"]
        sums = {}
    elif len(partials) == 1:
        g, n = t, t["n"]
        sums = {"sum_value": t["sum_value"], "sum_bh": t["sum_bh"]}
    else:
        g = t.group_by(keys, use_threads=True).aggregate(
            [("n", "sum"), ("sum_value", "sum"), ("sum_bh", "sum")])
        n = g["n_sum"]
        sums = {"sum_value": g["sum_value_sum"], "sum_bh": g["sum_bh_sum"]}
    return pa.table({"name": g["name"], "account_id": g["account_id"],
                     "dimension_id": g[keys[-1]], "n": n, **sums})


class RollupAccumulator:
    """Rolls up one local day from a stream of validated event batches.

    Memory is bounded by one batch plus the partial aggregates (at most one row per
    account × dimension id × metric), whatever the number of events.
    """

    def __init__(self, day: date, metrics: Sequence[Metric]):
        self.day = day
        self.metrics = list(metrics)
        self.dims: dict[str, Dimension] = {}
        for m in self.metrics:
            for d in m.dimensions:
                self.dims[d.name] = d
        # Metrics are aggregated in families: sums (None) or one per distinct column.
        self.families = sorted({self._family(m) for m in self.metrics}, key=str)
        self._groups: dict[tuple[str, str | None], list[pa.Table]] = {}
        self._names = {
            f: pa.array(sorted({m.raw_event for m in self.metrics if self._family(m) == f}),
                        pa.string())
            for f in self.families
        }
        self._dim_columns = sorted({d.column for d in self.dims.values()})

    @staticmethod
    def _family(m: Metric) -> str | None:
        return m.distinct_of if m.aggregation is Aggregation.COUNT_DISTINCT else None

    def add(self, events: pa.Table) -> None:
        if events.num_rows == 0:
            return
        for family in self.families:
            names = self._names[family]
            extra = [family] if family else ["value", "value_in_business_hours"]
            needed = list(dict.fromkeys(["name", *self._dim_columns, *extra]))
            subset = events.select(needed).filter(pc.is_in(events["name"], names))
            if subset.num_rows == 0:
                continue
            for dim in self.dims.values():
                if any(dim in m.dimensions and self._family(m) == family
                       for m in self.metrics):
                    part = _partial_groups(subset, dim, family)
                    self._groups.setdefault((dim.name, family), []).append(part)

    def finish(self) -> pa.Table:
        pieces: list[pa.Table] = []
        for (dim_name, family), partials in self._groups.items():
            dim = self.dims[dim_name]
            groups = _merge_groups(partials, dim, family)
            for m in self.metrics:
                if dim not in m.dimensions or self._family(m) != family:
                    continue
                g = groups.filter(pc.equal(groups["name"], m.raw_event))
                if g.num_rows:
                    pieces.append(_rollup_piece(g, self.day, dim, m))
        if not pieces:
            return ROLLUP_SCHEMA.empty_table()
        return pa.concat_tables(pieces).combine_chunks()


def compute_rollups(events: pa.Table, day: date, metrics: Sequence[Metric]) -> pa.Table:
    """``daily_rollups`` rows (ROLLUP_SCHEMA) for valid events of one local ``day``."""
    acc = RollupAccumulator(day, metrics)
    acc.add(events)
    return acc.finish()


def _rollup_piece(g: pa.Table, day: date, dim: Dimension, m: Metric) -> pa.Table:
    k = g.num_rows
    zeros = pa.repeat(pa.scalar(0.0, pa.float64()), k)
    with_sums = m.aggregation is Aggregation.COUNT_AND_SUMS
    return pa.Table.from_arrays(
        [
            g["account_id"],
            pa.repeat(pa.scalar(day, pa.date32()), k),
            pa.repeat(pa.scalar(dim.name, pa.string()), k),
            g["dimension_id"],
            pa.repeat(pa.scalar(m.name, pa.string()), k),
            pc.cast(g["n"], pa.int64()),
            g["sum_value"] if with_sums else zeros,
            g["sum_bh"] if with_sums else zeros,
        ],
        schema=ROLLUP_SCHEMA,
    )


class TotalsAccumulator:
    """Independent recomputation of per-account, per-metric totals of the valid events.

    Used by the reconciliation check: it aggregates the events by account and raw event
    directly (no dimension handling, no merge of partials), so a bug in the rollup or in
    the warehouse write, or rows of an account removed by another writer, show up as a
    mismatch of that account.
    """

    def __init__(self, metrics: Sequence[Metric]):
        self.metrics = list(metrics)
        self._sums: list[pa.Table] = []
        self._pairs: dict[str, list[pa.Table]] = {}

    def add(self, events: pa.Table) -> None:
        if events.num_rows == 0:
            return
        t = events.select(["account_id", "name", "value", "value_in_business_hours"])
        self._sums.append(t.group_by(["account_id", "name"], use_threads=False).aggregate(
            [("name", "count", pc.CountOptions(mode="all")), ("value", "sum"),
             ("value_in_business_hours", "sum")]))
        for m in self.metrics:
            if m.aggregation is not Aggregation.COUNT_DISTINCT:
                continue
            rows = events.filter(pc.equal(events["name"], m.raw_event))
            pairs = rows.select(["account_id", m.distinct_of]).rename_columns(
                ["account_id", "counted"])
            pairs = pairs.filter(pc.is_valid(pairs["counted"]))
            if pairs.num_rows:
                self._pairs.setdefault(m.name, []).append(
                    pairs.group_by(["account_id", "counted"]).aggregate([]))

    def finish(self) -> dict[tuple[int, str], tuple[int, float, float]]:
        out: dict[tuple[int, str], tuple[int, float, float]] = {}
        if self._sums:
            g = pa.concat_tables(self._sums).group_by(["account_id", "name"]).aggregate(
                [("name_count", "sum"), ("value_sum", "sum"),
                 ("value_in_business_hours_sum", "sum")])
            by_raw: dict[str, list[dict]] = {}
            for r in g.to_pylist():  # one row per account × raw event: small
                by_raw.setdefault(r["name"], []).append(r)
            for m in self.metrics:
                if m.aggregation is Aggregation.COUNT_DISTINCT:
                    continue
                sums = m.aggregation is Aggregation.COUNT_AND_SUMS
                for r in by_raw.get(m.raw_event, []):
                    out[(int(r["account_id"]), m.name)] = (
                        int(r["name_count_sum"]),
                        float(r["value_sum_sum"] or 0.0) if sums else 0.0,
                        float(r["value_in_business_hours_sum_sum"] or 0.0) if sums else 0.0,
                    )
        for name, parts in self._pairs.items():
            n = pa.concat_tables(parts).group_by(["account_id", "counted"]).aggregate([]) \
                .group_by("account_id").aggregate([("counted", "count")])
            for a, c in zip(n["account_id"].to_pylist(), n["counted_count"].to_pylist(),
                            strict=True):
                out[(int(a), name)] = (int(c), 0.0, 0.0)
        return out


def expected_account_totals(
    events: pa.Table, metrics: Sequence[Metric]
) -> dict[tuple[int, str], tuple[int, float, float]]:
    """(account, metric) → (count, sum_value, sum_value_business_hours) of valid events."""
    acc = TotalsAccumulator(metrics)
    acc.add(events)
    return acc.finish()
