"""Helpers shared by the sources' assets: owners, tabular and per-partition metadata, the
refusal of rollups whose landing is out of date, and the materialization result of a rollup
with its checks.

Dagster attaches a ranged run's output metadata to every partition of the range, so the
assets put each partition's own figures on that partition (``add_asset_metadata`` with its
key) and keep the run's totals in one non-numeric entry, ``run_totals``: a partition's page
and its metadata plots show that partition's numbers only.
"""

import time
from collections.abc import Iterable, Mapping

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from analytics_pipeline.core.checks import NON_NEGATIVE, RECONCILES
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.steps import RollupResult, landed_accounts

OWNERS = ["team:data-platform"]


def table_metadata(rows: list[dict], limit: int = 20) -> MetadataValue:
    """Rows as a Dagster table (typed columns; keys with ``|`` such as partition keys stay
    whole, which a markdown table would split). The column types come from the values."""
    rows = rows[:limit]
    if not rows:
        return MetadataValue.table(records=[], schema=TableSchema(columns=[]))

    def kind(values: list) -> str:
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, bool) for v in present):
            return "bool"
        if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            return "int"
        if present and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in present):
            return "float"
        return "string"

    names = list(rows[0])
    kinds = {c: kind([r.get(c) for r in rows]) for c in names}

    def cell(value, k: str):
        if value is None:
            return None
        return value if k != "string" else str(value)

    return MetadataValue.table(
        records=[TableRecord({c: cell(r.get(c), kinds[c]) for c in names}) for r in rows],
        schema=TableSchema(columns=[TableColumn(c, kinds[c]) for c in names]),
    )


def partition_days(context: AssetExecutionContext) -> list[LocalDay]:
    """The run's partitions as local days; a key whose timezone is not an IANA name (added
    by hand in the UI) fails the run before any work, with one line naming it."""
    days, bad = [], []
    for key in context.partition_keys:
        day = LocalDay.from_key(key)
        try:
            days.append(day.validated())
        except ValueError as exc:
            bad.append(str(exc))
    if bad:
        raise Failure(description="; ".join(sorted(set(bad))[:10]))
    return days


def window_metadata(day: LocalDay) -> dict:
    """The partition's exact UTC window (23 or 25 hours on a DST day)."""
    return {
        "utc_window_start": MetadataValue.timestamp(day.start_utc),
        "utc_window_end": MetadataValue.timestamp(day.end_utc),
        "window_hours": day.hours,
    }


PROGRESS_EVERY = 25  # partitions between two progress lines of a range run's log


class RangeLog:
    """The log of a run over a range of partitions (a backfill): the caller's one line per
    partition, a progress line every ``every`` partitions and after the last (partitions
    done, the amount handled, rate, time left at that rate), and a summary line at the
    end. A one-partition run gets its partition line only."""

    def __init__(self, context: AssetExecutionContext, days: list[LocalDay], what: str,
                 unit: str = "events", every: int | None = None):
        self.log, self.what, self.unit = context.log, what, unit
        self.total, self.every = len(days), max(1, every or PROGRESS_EVERY)
        self.done = self.amount = 0
        self.started = time.monotonic()

    def partition(self, line: str, amount: int = 0) -> None:
        self.log.info(line)
        self.done += 1
        self.amount += amount
        if self.total > 1 and (self.done % self.every == 0 or self.done == self.total):
            elapsed = time.monotonic() - self.started
            left = elapsed / self.done * (self.total - self.done)
            rate = self.amount / elapsed if elapsed > 0 else 0.0
            self.log.info(f"{self.what}: {self.done}/{self.total} partitions, "
                          f"{self.amount:,} {self.unit} in {elapsed:.1f}s ({rate:,.0f}/s), "
                          f"~{left:.0f}s left")

    def summary(self, **totals: int) -> None:
        if self.total < 2:
            return
        elapsed = time.monotonic() - self.started
        figures = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in totals.items())
        self.log.info(f"{self.what}: {self.total} partitions in {elapsed:.1f}s "
                      f"({elapsed / self.total * 1000:.0f} ms each): {figures}")


def add_partition_metadata(
    context: AssetExecutionContext, per_partition: Iterable[tuple[LocalDay, Mapping]],
    run_totals: Mapping, shared: Mapping | None = None, asset_key: str | None = None,
) -> None:
    """Each partition's own metadata on its materialization, followed by what the run
    shares (``shared``, e.g. the warehouse) and the run's totals as one JSON entry named as
    such (a number shared by every partition would be plotted once per partition).

    Everything goes through the partition's metadata, none through the output's, so the UI
    lists the partition's own figures first."""
    keys = {LocalDay.from_key(k).key: k for k in context.partition_keys}
    tail = {**(shared or {}), "run_totals": MetadataValue.json(dict(run_totals))}
    for day, metadata in per_partition:
        context.add_asset_metadata({**window_metadata(day), **metadata, **tail},
                                   asset_key=asset_key, partition_key=keys[day.key])


def by_reason(counts: Mapping[str, int], label: str = "reason",
              counted: str = "events") -> MetadataValue:
    """Counts per reason (or per event name, per method…) as a two-column table, largest
    first; ``counted`` names what is counted."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return MetadataValue.table(
        records=[TableRecord({label: k, counted: int(v)}) for k, v in rows],
        schema=TableSchema(columns=[TableColumn(label, "string"),
                                    TableColumn(counted, "int")]),
    )


def rollup_preview(rows: list[dict]) -> MetadataValue:
    """A partition's first rollup rows with count and sums in the first columns (date,
    timezone and source are the partition's own), so they stay in view in a narrow pane."""
    return table_metadata([{
        "metric": r["metric"],
        "count": r["count"],
        "sum_value": round(r["sum_value"], 3),
        "sum_value_business_hours": round(r["sum_value_business_hours"], 3),
        "dimension": f"{r['dimension_type']} {r['dimension_id']}",
        "account_id": r["account_id"],
    } for r in rows])


def require_current_landings(
    store, engine, days: list[LocalDay], source: str, only_accounts: list[int] | None = None
) -> None:
    """Fail before writing anything when a partition's landing no longer matches the
    accounts of its timezone, naming every partition to re-extract."""
    problems = [p for d in days
                if (p := landed_accounts(store, engine, d, source, only_accounts)[1])]
    if problems:
        raise Failure(
            description=f"{len(problems)} partition(s) must be re-extracted before their "
            "rollups can run; nothing was written:\n" + "\n".join(problems[:50]),
            metadata={"partitions_to_re_extract": MetadataValue.json(
                [p.split(":", 1)[0] for p in problems])},
        )


def rollup_check_specs(asset: str, recomputed_from: str) -> list[AssetCheckSpec]:
    """The two checks every ``daily_rollups`` asset declares and ``rollup_result``
    evaluates: the written totals against ``recomputed_from``, and no negative row."""
    return [
        AssetCheckSpec(
            RECONCILES, asset=asset,
            description="Per account and metric, the account-dimension totals written to "
            f"daily_rollups equal the totals recomputed directly from {recomputed_from}."),
        AssetCheckSpec(
            NON_NEGATIVE, asset=asset,
            description="No rollup row the partition wrote has a negative count or sum."),
    ]


def rollup_result(
    context: AssetExecutionContext, days: list[LocalDay], results: list[RollupResult],
    run_metadata: Mapping,
) -> MaterializeResult:
    """The materialization of a rollup asset over its partitions, each with its own
    figures, and its two checks (mismatches named by partition)."""
    add_partition_metadata(context, [(day, {
        "dagster/row_count": r.rows_written,
        "rows_replaced": r.rows_replaced,
        "events_read": r.events,
        "events_rolled_up": r.rolled_up,
        "events_ignored": sum(r.ignored_by_name.values()),
        "ignored_by_name": by_reason(r.ignored_by_name, "event_name"),
        "events_quarantined": sum(r.quarantined_by_reason.values()),
        "quarantined_by_reason": by_reason(r.quarantined_by_reason),
        "events_in_other_timezone": r.other_timezone,
        "accounts": r.accounts,
        "preview": rollup_preview(r.preview),
    }) for day, r in zip(days, results, strict=True)], shared=run_metadata, run_totals={
        "partitions": len(results),
        "events_read": sum(r.events for r in results),
        "events_rolled_up": sum(r.rolled_up for r in results),
        "rows_written": sum(r.rows_written for r in results),
        "rows_replaced": sum(r.rows_replaced for r in results),
        "events_quarantined": sum(sum(r.quarantined_by_reason.values()) for r in results),
        "events_ignored": sum(sum(r.ignored_by_name.values()) for r in results),
    })
    mismatches = {r.key: r.mismatches for r in results if r.mismatches}
    negatives = {r.key: r.negative_rows for r in results if r.negative_rows}
    return MaterializeResult(
        check_results=[
            AssetCheckResult(
                check_name=RECONCILES, passed=not mismatches,
                metadata={"mismatches": MetadataValue.json(mismatches),
                          "partitions_checked": len(results)},
            ),
            AssetCheckResult(
                check_name=NON_NEGATIVE, passed=not negatives,
                metadata={"negative_rows": MetadataValue.json(negatives)},
            ),
        ],
    )
