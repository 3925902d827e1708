"""The metric registry: raw event names → rollup metrics, for write, read and checks.

Each source declares its metrics (``support/metrics.py``, ``email/metrics.py``) and
registers them here when its package is imported; ``analytics_pipeline.catalog`` imports
every source's metrics for the read path. The write path groups events by a metric's raw
event and dimensions, the read path turns the stored columns into report values with
``Metric.read``, the reconciliation check recomputes the expected totals per metric.
Adding a metric is one ``Metric`` entry in its source's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Aggregation(str, Enum):
    COUNT_AND_SUMS = "count_and_sums"  # count, sum(value), sum(value_in_business_hours)
    COUNT_ONLY = "count_only"  # count, sums stored as 0
    COUNT_DISTINCT = "count_distinct"  # count(distinct Metric.distinct_of), sums 0


class ReadAs(str, Enum):
    COUNT = "count"  # report value = sum(count)
    AVERAGE = "average"  # report value = sum(sum_value) / sum(count); None when count is 0
    SUM = "sum"  # report value = sum(sum_value): a quantity each event carries (contacts)


class Unit(str, Enum):
    """What a metric's report value measures."""

    COUNT = "count"  # events (or distinct conversations, recipients)
    SECONDS = "seconds"  # a duration: stored values are seconds


@dataclass(frozen=True)
class Dimension:
    name: str  # dimension_type stored in daily_rollups
    column: str  # event column holding the dimension id; null skips the dimension


ACCOUNT = Dimension("account", "account_id")


@dataclass(frozen=True)
class Metric:
    name: str
    raw_event: str
    aggregation: Aggregation
    read: ReadAs
    dimensions: tuple[Dimension, ...]
    source: str  # the source whose rollup writes it (its rows' ``source`` column)
    description: str = ""
    distinct_of: str | None = None  # the counted column of COUNT_DISTINCT
    unit: Unit = Unit.COUNT


METRICS: dict[str, Metric] = {}


def register(metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
    """Add a source's metrics to the registry (idempotent; a name is owned by one metric)."""
    for m in metrics:
        if METRICS.setdefault(m.name, m) != m:
            raise ValueError(f"metric {m.name!r} is registered twice with different entries")
    return metrics


def raw_events(metrics: tuple[Metric, ...]) -> frozenset[str]:
    """The raw event names that ``metrics`` roll up (others are ignored and counted)."""
    return frozenset(m.raw_event for m in metrics)


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        known = ", ".join(sorted(METRICS))
        raise ValueError(f"unknown metric {name!r}; known metrics: {known}") from None
