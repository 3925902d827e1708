"""The campaign source's jobs and its stream of closed days.

A consumption run lands what the queue holds and refreshes the progress in one job
(``campaign_broker_sensor`` launches it); a local day's rollups are due once the day has
closed (``campaign_rollups_stream``), and again whenever reports of it land later
(``late_campaign_reports_sensor``).
"""

from dagster import AssetSelection, define_asset_job

from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.scheduling import ClosedDaysStream, StreamClock

CONSUMPTION_ASSETS = ("campaign_messages", "campaign_progress")
ROLLUP_ASSETS = ("campaign_rollups",)
CAMPAIGN_STREAM = "campaigns"

campaign_consumption_job = define_asset_job(
    "campaign_consumption",
    selection=AssetSelection.assets(*CONSUMPTION_ASSETS),
    description="Drain the pipeline's RabbitMQ queue of campaign messages (bounded, landed "
    "durably before each acknowledgement, malformed ones quarantined), then refresh the "
    "campaigns' progress and double sends and run their checks.",
    tags={"analytics/stream": CAMPAIGN_STREAM},
)

campaign_rollups_job = define_asset_job(
    "campaign_rollups_daily",
    selection=AssetSelection.assets(*ROLLUP_ASSETS),
    partitions_def=daily_timezone_partitions,
    description="Roll up the tracked campaign reports of date|timezone partitions into "
    "campaign_sent, campaign_failed and campaign_pages_tracked.",
)


def _campaign_clock(resources, now) -> StreamClock | None:  # noqa: ANN001 - Dagster resources
    """Days close at their end plus the grace; none while the broker is not configured
    (nothing is consumed, there is nothing to roll up)."""
    if not resources.campaign_broker.configured:
        return None
    return StreamClock(CAMPAIGN_STREAM, now)


campaign_rollups_stream = ClosedDaysStream(
    name=CAMPAIGN_STREAM, job=campaign_rollups_job,
    run_key=lambda day: f"campaign_rollups_daily:{day.key}", clock=_campaign_clock,
    resource_keys=frozenset({"campaign_broker"}), assets=ROLLUP_ASSETS,
)
