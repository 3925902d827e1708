"""The push source's jobs and their streams of closed days.

Two streams: a day's push counts (``push_delivery``) are due once the day has closed, like
the support desk's; its impact (``push_impact_analysis``) only once the longest after-window of its
last push has closed too, plus a grace (``ANALYTICS_PUSH_GRACE_HOURS``): that job lands
the pushes again (statuses and deliveries settle after the day) before asking PostHog.
"""

from datetime import timedelta

from dagster import AssetSelection, define_asset_job

from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.scheduling import ClosedDaysStream, StreamClock

PUSH_DELIVERY_ASSETS = ("raw_push_notifications", "push_rollups")
PUSH_IMPACT_ASSETS = ("raw_push_notifications", "push_rollups", "push_activity",
                      "push_impact")
PUSH_DELIVERY_STREAM = "push_delivery"
PUSH_IMPACT_STREAM = "push_impact"

push_delivery_job = define_asset_job(
    "push_delivery",
    selection=AssetSelection.assets(*PUSH_DELIVERY_ASSETS),
    partitions_def=daily_timezone_partitions,
    description="Extract the pushes of date|timezone partitions and roll up push_sent, "
    "push_delivered and push_failed.",
)

push_impact_job = define_asset_job(
    "push_impact_analysis",
    selection=AssetSelection.assets(*PUSH_IMPACT_ASSETS),
    partitions_def=daily_timezone_partitions,
    description="Re-extract the pushes of date|timezone partitions whose after-windows have "
    "closed, map their users to PostHog persons, land the activity before and after each "
    "push, and compute the impact statistics per campaign and automation.",
)

push_delivery_stream = ClosedDaysStream(
    name=PUSH_DELIVERY_STREAM, job=push_delivery_job,
    run_key=lambda day: f"push_delivery:{day.key}",
    clock=lambda resources, now: StreamClock(PUSH_DELIVERY_STREAM, now),
    assets=PUSH_DELIVERY_ASSETS,
)


def _impact_clock(resources, now) -> StreamClock | None:  # noqa: ANN001 - Dagster resources
    """Days close for the impact once now is past their end + the longest window (+ the
    grace of the push settings; the closed-days grace comes on top). None while PostHog is
    not configured: nothing can be fetched."""
    if not resources.posthog.configured:
        return None
    settings = resources.push_settings
    delay = timedelta(hours=max(settings.windows()) + settings.grace_hours)
    return StreamClock(PUSH_IMPACT_STREAM, now - delay)


push_impact_stream = ClosedDaysStream(
    name=PUSH_IMPACT_STREAM, job=push_impact_job,
    run_key=lambda day: f"push_impact_analysis:{day.key}", clock=_impact_clock,
    resource_keys=frozenset({"posthog", "push_settings"}), assets=PUSH_IMPACT_ASSETS,
)
