"""Read path: a metric for one account (or one agent/inbox of it) over a date range."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.catalog import get_metric
from analytics_pipeline.core.registry import ReadAs
from analytics_pipeline.core.warehouse import daily_rollups

PERIODS = ("day", "week", "month")
DIMENSIONS = ("account", "agent", "inbox", "email", "automation")


@dataclass(frozen=True)
class Point:
    period_start: date
    value: float | int | None  # None: an average over no events
    count: int


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

    Count metrics report the number of events; duration metrics report
    sum(value)/count per period (None where the period has no events), so weekly and
    monthly averages weigh every event equally rather than averaging daily averages.
    """
    m = get_metric(metric)
    if end < start:
        raise ValueError(f"--to ({end}) is before --from ({start})")
    if dimension not in DIMENSIONS:
        raise ValueError(f"--dimension must be one of {', '.join(DIMENSIONS)}")
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
        if m.read is ReadAs.COUNT:
            out.append(Point(p, c, c))
        else:
            out.append(Point(p, sums.get(p, 0.0) / c if c else None, c))
    return out
