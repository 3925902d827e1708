
"""The support desk's metrics (DESIGN.md registry table) and dimensions."""

from __future__ import annotations

from analytics_pipeline.core.registry import (
    ACCOUNT,
    Aggregation,
    Dimension,
    Metric,
    ReadAs,
    Unit,
    register,
)

AGENT = Dimension("agent", "user_id")


INBOX = Dimension("inbox", "inbox_id")


REPORTING_DIMENSIONS: tuple[Dimension, ...] = (ACCOUNT, AGENT, INBOX)


REPORTING_SOURCE = "reporting_events"


def _metric(name: str, raw: str, agg: Aggregation, read: ReadAs, description: str) -> Metric:
    # the averaged values of this source are durations in seconds
    return Metric(name, raw, agg, read, REPORTING_DIMENSIONS, REPORTING_SOURCE, description,
                  distinct_of="conversation_id" if agg is Aggregation.COUNT_DISTINCT else None,
                  unit=Unit.SECONDS if read is ReadAs.AVERAGE else Unit.COUNT)


REPORTING_METRICS: tuple[Metric, ...] = register((
    _metric("first_response", "first_response", Aggregation.COUNT_AND_SUMS, ReadAs.AVERAGE,
           "Time to first response, seconds"),
    _metric("reply_time", "reply_time", Aggregation.COUNT_AND_SUMS, ReadAs.AVERAGE,
           "Time to reply, seconds"),
    _metric("resolutions_count", "conversation_resolved", Aggregation.COUNT_ONLY, ReadAs.COUNT,
           "Conversations resolved"),
    _metric("resolution_time", "conversation_resolved", Aggregation.COUNT_AND_SUMS, ReadAs.AVERAGE,
           "Time to resolution, seconds"),
    _metric("bot_resolutions_count", "conversation_bot_resolved", Aggregation.COUNT_ONLY,
           ReadAs.COUNT, "Conversations resolved by a bot"),
    _metric("bot_handoffs_count", "conversation_bot_handoff", Aggregation.COUNT_DISTINCT,
           ReadAs.COUNT, "Distinct conversations handed off from a bot"),
))
