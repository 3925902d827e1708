"""Read path: a metric for one account (or one agent/inbox of it) over a date range.

Open the warehouse with ``core.warehouse.open_warehouse_for_read`` (never creates one),
check the account with ``reportable_account``, then read with ``metric_series``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.catalog import ALL_METRICS, get_metric
from analytics_pipeline.core.registry import ReadAs
from analytics_pipeline.core.warehouse import accounts, daily_rollups, display_url, redact

PERIODS = ("day", "week", "month")
# every dimension some registered metric has (account first)
DIMENSIONS = ("account", *sorted({d.name for m in ALL_METRICS for d in m.dimensions}
                                 - {"account"}))


@dataclass(frozen=True)
class Point:
    period_start: date  # first day covered: the period's start, or --from if later
    value: float | int | None  # None: an average over no events
    count: int
    period_end: date  # last day covered (inclusive): the period's end, or --to if earlier
    partial: bool = False  # the period was clipped at --from or --to


class AccountNotReportable(ValueError):
    """The account cannot be reported on: not in the snapshot, or its days are not rolled up."""


def reportable_account(engine: Engine, account_id: int, warehouse: str | None = None) -> dict:
    """The account's snapshot row; raises ``AccountNotReportable`` when the account is not in
    the accounts snapshot or has an invalid timezone (its days are never rolled up), where a
    series would only show zeros. ``warehouse`` is the URL to name (redacted)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
    shown = redact(warehouse) if warehouse is not None else display_url(engine)
    if row is None:
        raise AccountNotReportable(
            f"account {account_id} is not in the warehouse's accounts snapshot ({shown}); "
            "materialize accounts first or check the id")
    a = dict(row._mapping)
    if not a["timezone_valid"] or a["timezone"] is None:
        raise AccountNotReportable(
            f"account {account_id} has an invalid reporting timezone "
            f"{a['reporting_timezone']!r} in the accounts snapshot ({shown}): its days are not "
            "rolled up; fix the timezone in the application, then materialize accounts")
    return a


def period_end(start: date, by: str) -> date:
    """The last day of the period that begins on ``start``."""
    if by == "week":
        return start + timedelta(days=6)
    if by == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    return start


def period_start(d: date, by: str) -> date:
    if by == "day":
        return d
    if by == "week":  # ISO weeks start on Monday
        return d - timedelta(days=d.weekday())
    if by == "month":
        return d.replace(day=1)
    raise ValueError(f"--by must be one of {', '.join(PERIODS)}, got {by!r}")


def _periods(start: date, end: date, by: str) -> Iterator[date]:
    seen = None
    d = start
    while d <= end:
        p = period_start(d, by)
        if p != seen:
            yield p
            seen = p
        d += timedelta(days=1)


def metric_series(
    engine: Engine,
    account_id: int,
    metric: str,
    start: date,
    end: date,
    by: str = "day",
    dimension: str = "account",
    dimension_id: int | None = None,
    business_hours: bool = False,
) -> list[Point]:
    """The zero-filled series of ``metric`` for days ``start``..``end`` (inclusive).

    Count metrics report the number of events; duration metrics (``unit`` seconds in the
    registry) report sum(value)/count per period (None where the period has no events), so
    weekly and monthly averages weigh every event equally rather than averaging daily
    averages. A week or month cut by ``start`` or ``end`` covers only the days in range:
    its point starts at ``start`` / ends at ``end`` and is marked ``partial``.
    """
    m = get_metric(metric)
    if end < start:
        raise ValueError(f"--to ({end}) is before --from ({start})")
    if dimension not in DIMENSIONS:
        raise ValueError(f"--dimension must be one of {', '.join(DIMENSIONS)}")
    dims = [d.name for d in m.dimensions]
    if dimension not in dims:
        raise ValueError(f"metric {m.name} has no {dimension} dimension; "
                         f"its dimensions: {', '.join(dims)}")
    if dimension != "account" and dimension_id is None:
        raise ValueError(f"--dimension {dimension} needs --id")
    if dimension == "account":
        dimension_id = account_id
    r = daily_rollups.c
    q = (
        sa.select(
            r.date,
            sa.func.sum(r.count),
            sa.func.sum(r.sum_value_business_hours if business_hours else r.sum_value),
        )
        .where(
            r.account_id == account_id,
            r.metric == m.name,
            r.dimension_type == dimension,
            r.dimension_id == dimension_id,
            r.date >= start,
            r.date <= end,
        )
        .group_by(r.date)
    )
    counts: dict[date, int] = {}
    sums: dict[date, float] = {}
    with engine.connect() as conn:
        for d, c, s in conn.execute(q):
            p = period_start(d if isinstance(d, date) else date.fromisoformat(str(d)), by)
            counts[p] = counts.get(p, 0) + int(c or 0)
            sums[p] = sums.get(p, 0.0) + float(s or 0.0)
    out = []
    for p in _periods(start, end, by):
        c = counts.get(p, 0)
        first, last = max(p, start), min(period_end(p, by), end)
        partial = (first, last) != (p, period_end(p, by))
        if m.read is ReadAs.COUNT:
            value = c
        elif m.read is ReadAs.SUM:
            total = sums.get(p, 0.0)
            value = int(total) if float(total).is_integer() else total
        else:
            value = sums.get(p, 0.0) / c if c else None
        out.append(Point(first, value, c, last, partial))
    return out
