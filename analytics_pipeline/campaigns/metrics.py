"""The campaign source's daily_rollups metrics and dimensions.

Each tracked page counts once, by its first report (``progress.first_reports``), on the
local date of that report in its account's timezone: once in ``campaign_pages_tracked``,
and once in ``campaign_sent`` / ``campaign_failed`` carrying its ``sentCount`` /
``failedCount`` as the value: those two are read as the sum of the values (contacts), their
``count`` is the pages that reported.

Channels are keyed by ``CHANNEL_IDS``: a fixed, append-only numbering of the transport
ids (``other`` is 0). A new channel gets the next free number; a number is never reused
or renumbered, so stored rollups keep their meaning. A channel class outside the
numbering (``Channel::Xyz`` → ``xyz``, kept as such in ``campaign_progress``) is rolled up
as ``other`` until it is given a number here.
"""

from __future__ import annotations

from analytics_pipeline.campaigns.contract import CAMPAIGN_SOURCE, CHANNELS
from analytics_pipeline.core.registry import (
    ACCOUNT,
    Aggregation,
    Dimension,
    Metric,
    ReadAs,
    register,
)

CAMPAIGN = Dimension("campaign", "campaign_id")
CHANNEL = Dimension("channel", "channel_id")

CAMPAIGN_DIMENSIONS = (ACCOUNT, CAMPAIGN, CHANNEL)

OTHER_CHANNEL_ID = 0
CHANNEL_IDS: dict[str, int] = {"other": OTHER_CHANNEL_ID, "email": 1, "whatsapp": 2, "sms": 3,
                               "api": 4}
if set(CHANNELS.values()) - set(CHANNEL_IDS):  # every known channel has its number
    raise RuntimeError("a channel of contract.CHANNELS has no number in CHANNEL_IDS")

PAGES_TRACKED = "campaign_pages_tracked"
SENT = "campaign_sent"
FAILED = "campaign_failed"


def _metric(name: str, what: str, contacts: bool) -> Metric:
    return Metric(name, name,
                  Aggregation.COUNT_AND_SUMS if contacts else Aggregation.COUNT_ONLY,
                  ReadAs.SUM if contacts else ReadAs.COUNT, CAMPAIGN_DIMENSIONS,
                  CAMPAIGN_SOURCE, what)


CAMPAIGN_METRICS: tuple[Metric, ...] = register((
    _metric(SENT, "Campaign contacts reported sent (each page's first tracked report)", True),
    _metric(FAILED, "Campaign contacts reported failed (each page's first tracked report)",
            True),
    _metric(PAGES_TRACKED, "Campaign pages reported by the senders (each page once)", False),
))
