"""Per-partition work shared by every source: which accounts a rollup rebuilds (those its
landing recorded), and the write-then-reconcile tail of every rollup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.checks import totals_mismatches
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay


class LandingOutOfDate(RuntimeError):
    """The accounts a partition landed are not the accounts its timezone has now."""


def landed_accounts(
    store: LandingStore, engine: Engine, day: LocalDay, source: str,
    only_accounts: Sequence[int] | None = None,
) -> tuple[list[int] | None, str | None]:
    """The accounts whose rows a rollup of ``day`` rebuilds, or why it must not run.

    The slice follows what was landed, never a later snapshot: rolling up a landing
    that lacks an account which moved in would delete that account's day, and one that
    still holds an account which moved away would overwrite the day its new timezone
    cut. When the two disagree the partition must be re-extracted first.
    """
    meta = store.partition_meta(source, day)
    landed = meta.get("account_ids")
    current = set(wh.account_ids_in_timezone(engine, day.tz))
    if landed is None:
        return None, (f"{day.key}: landed before landings recorded their accounts; "
                      "re-materialize its raw events asset first")
    landed_set = {int(a) for a in landed}
    if only_accounts is not None:
        scope = current & {int(a) for a in only_accounts}
        missing = sorted(scope - landed_set)
        if missing:
            return None, (f"{day.key}: accounts {missing} are not in this partition's "
                          "landing; re-materialize its raw events asset for them first")
        return sorted(scope), None
    if landed_set != current:
        gone, new = sorted(landed_set - current), sorted(current - landed_set)
        return None, (
            f"{day.key}: the landing holds the accounts of an older accounts snapshot "
            f"(since then left this timezone: {gone[:20]}, joined it: {new[:20]}); "
            "re-materialize its raw events asset, then the rollups")
    return sorted(landed_set), None


@dataclass
class RollupResult:
    key: str
    events: int = 0
    rolled_up: int = 0
    rows_written: int = 0
    rows_replaced: int = 0
    accounts: int = 0
    ignored_by_name: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    other_timezone: int = 0
    mismatches: dict[str, dict] = field(default_factory=dict)
    negative_rows: int = 0
    preview: list[dict] = field(default_factory=list)
    prepared: bool = False  # rolled up by the extraction, not from the landing read back


def negative_rows(rows: pa.Table) -> int:
    """Rollup rows with a negative count or sum (the table itself only forbids negative
    counts)."""
    if rows.num_rows == 0:
        return 0
    negative = pc.or_(pc.less(rows["count"], 0), pc.or_(
        pc.less(rows["sum_value"], 0.0), pc.less(rows["sum_value_business_hours"], 0.0)))
    return int(pc.sum(pc.fill_null(negative, False)).as_py() or 0)


def _write_and_check(
    result: RollupResult,
    engine: Engine,
    day: LocalDay,
    source: str,
    rows: pa.Table,
    expected: dict[tuple[int, str], tuple[int, float, float]],
    quarantined: pa.Table,
    account_ids: Sequence[int],
    partial: bool = False,
) -> RollupResult:
    """Replace the partition's slice with the rollup's ``rows``, then check what was
    written, account by account, against the independently accumulated totals
    (``TotalsAccumulator.finish``), and count the rows written with a negative count or
    sum."""
    sums = pc.min_max(pc.is_finite(pa.concat_arrays(
        [rows["sum_value"].combine_chunks(),
         rows["sum_value_business_hours"].combine_chunks()])))
    if rows.num_rows and not sums["min"].as_py():
        raise ValueError(f"{day.key}: a rollup sum overflowed; nothing was written")
    result.rows_replaced = wh.replace_partition(engine, day.day, day.tz, source, rows,
                                                quarantined, account_ids, partial=partial)
    result.rows_written = rows.num_rows
    result.mismatches = totals_mismatches(
        expected, wh.account_totals(engine, day.day, source, account_ids))
    result.negative_rows = negative_rows(rows)
    result.preview = rows.slice(0, 10).to_pylist()
    return result
