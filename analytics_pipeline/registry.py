"""The metric registry: raw event names → rollup metrics, for write, read and checks.

Adding a metric is one ``Metric`` entry. The write path (``rollups``) groups events by
the entry's raw event and dimension, the read path (``report``) turns the stored
columns into report values with ``Metric.read``, and the reconciliation check
recomputes the expected totals per entry.
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


@dataclass(frozen=True)
class Dimension:
    name: str  # dimension_type stored in daily_rollups
    column: str  # event column holding the dimension id; null skips the dimension


ACCOUNT = Dimension("account", "account_id")
AGENT = Dimension("agent", "user_id")
INBOX = Dimension("inbox", "inbox_id")
REPORTING_DIMENSIONS: tuple[Dimension, ...] = (ACCOUNT, AGENT, INBOX)
EMAIL = Dimension("email", "email_id")
AUTOMATION = Dimension("automation", "automation_id")


@dataclass(frozen=True)
class Metric:
    name: str
    raw_event: str
    aggregation: Aggregation
    read: ReadAs
    dimensions: tuple[Dimension, ...] = REPORTING_DIMENSIONS
    source: str = "reporting_events"
    description: str = ""
    distinct_of: str = "conversation_id"  # the counted column of COUNT_DISTINCT


REPORTING_METRICS: tuple[Metric, ...] = (
    Metric("first_response", "first_response", Aggregation.COUNT_AND_SUMS, ReadAs.AVERAGE,
           description="Time to first response, seconds"),
    Metric("reply_time", "reply_time", Aggregation.COUNT_AND_SUMS, ReadAs.AVERAGE,
           description="Time to reply, seconds"),
    Metric("resolutions_count", "conversation_resolved", Aggregation.COUNT_ONLY, ReadAs.COUNT,
           description="Conversations resolved"),
    Metric("resolution_time", "conversation_resolved", Aggregation.COUNT_AND_SUMS, ReadAs.AVERAGE,
           description="Time to resolution, seconds"),
    Metric("bot_resolutions_count", "conversation_bot_resolved", Aggregation.COUNT_ONLY,
           ReadAs.COUNT, description="Conversations resolved by a bot"),
    Metric("bot_handoffs_count", "conversation_bot_handoff", Aggregation.COUNT_DISTINCT,
           ReadAs.COUNT, description="Distinct conversations handed off from a bot"),
)


def _email_metrics(pipeline: str) -> tuple[Metric, ...]:
    """Daily email metrics of one pipeline, on the local date of the event.

    Failures are split by severity upstream (raw names ``failed_permanent`` and
    ``failed_temporary``); ``unique_*`` count distinct recipients per day.
    """
    dims = (ACCOUNT, EMAIL) + ((AUTOMATION,) if pipeline == "automation" else ())
    source = f"email:{pipeline}"

    def m(name: str, raw: str, agg: Aggregation = Aggregation.COUNT_ONLY, what: str = ""):
        return Metric(f"{pipeline}_{name}", raw, agg, ReadAs.COUNT, dims, source,
                      f"{pipeline} emails: {what}", distinct_of="recipient_id")

    return (
        m("delivered", "delivered", what="deliveries"),
        m("opens", "opened", what="open events"),
        m("unique_opens", "opened", Aggregation.COUNT_DISTINCT, "recipients who opened"),
        m("clicks", "clicked", what="click events"),
        m("unique_clicks", "clicked", Aggregation.COUNT_DISTINCT, "recipients who clicked"),
        m("failed", "failed_permanent", what="permanent failures"),
        m("temporary_failures", "failed_temporary", what="temporary failures"),
        m("unsubscribed", "unsubscribed", what="unsubscribes"),
        m("complained", "complained", what="spam complaints"),
    )


EMAIL_METRICS: tuple[Metric, ...] = _email_metrics("newsletter") + _email_metrics("automation")

METRICS: dict[str, Metric] = {m.name: m for m in REPORTING_METRICS + EMAIL_METRICS}


def metrics_for_source(source: str) -> tuple[Metric, ...]:
    return tuple(m for m in METRICS.values() if m.source == source)


def raw_events_for_source(source: str) -> frozenset[str]:
    return frozenset(m.raw_event for m in metrics_for_source(source))


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        known = ", ".join(sorted(METRICS))
        raise ValueError(f"unknown metric {name!r}; known metrics: {known}") from None


@dataclass(frozen=True)
class EmailPipeline:
    """One independent email pipeline: its Mailgun tag selection and its streams."""

    name: str  # also the email kind in the app database: 'newsletter' | 'automation'
    default_tags: str  # Mailgun tag filter expression

    @property
    def stream(self) -> str:
        return f"mailgun/{self.name}"

    @property
    def cursor_name(self) -> str:
        return f"mailgun:{self.name}"


EMAIL_PIPELINES: tuple[EmailPipeline, ...] = (
    EmailPipeline("newsletter", "newsletter"),
    EmailPipeline("automation", "automation"),
)
