"""The push source's daily_rollups metrics and dimensions.

Every valid push counts once in ``push_sent`` (a push row is a send attempt at
``sent_at``), and once more in ``push_delivered`` or ``push_failed`` by its status, on the
local date of its ``sent_at``.
"""

from __future__ import annotations

from analytics_pipeline.core.registry import (
    ACCOUNT,
    Aggregation,
    Dimension,
    Metric,
    ReadAs,
    register,
)
from analytics_pipeline.push.contract import PUSH_SOURCE

CAMPAIGN = Dimension("campaign", "campaign_id")
# automation ids are text in the application: the rollups key them by their number in
# ``push_automations`` (given the first time an automation is seen)
AUTOMATION = Dimension("automation", "automation_num")

PUSH_DIMENSIONS = (ACCOUNT, CAMPAIGN, AUTOMATION)


def _metric(name: str, what: str) -> Metric:
    return Metric(name, name, Aggregation.COUNT_ONLY, ReadAs.COUNT, PUSH_DIMENSIONS,
                  PUSH_SOURCE, what)


PUSH_METRICS: tuple[Metric, ...] = register((
    _metric("push_sent", "Push notifications sent (every push, whatever its status)"),
    _metric("push_delivered", "Push notifications delivered"),
    _metric("push_failed", "Push notifications that failed"),
))
