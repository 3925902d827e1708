"""The support desk's job and its stream of closed days."""

from dagster import (
    AssetSelection,
    define_asset_job,
)

from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.scheduling import REPORTING_STREAM, ClosedDaysStream, StreamClock

REPORTING_ASSETS = ("raw_reporting_events", "reporting_rollups")

reporting_job = define_asset_job(
    "support_reporting",
    selection=AssetSelection.assets(*REPORTING_ASSETS),
    partitions_def=daily_timezone_partitions,
    description="Extract and roll up support reporting events for date|timezone partitions.",
)

# Support days are due once closed plus the grace; run key = the partition key.
support_stream = ClosedDaysStream(
    name=REPORTING_STREAM, job=reporting_job, run_key=lambda day: day.key,
    clock=lambda resources, now: StreamClock(REPORTING_STREAM, now),
    assets=REPORTING_ASSETS,
)
