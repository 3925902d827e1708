"""The web source's jobs, its stream of closed days and its retention schedule."""

from datetime import datetime, timezone

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    OpExecutionContext,
    ScheduleDefinition,
    define_asset_job,
    job,
    op,
)

from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.resources import Landing, Warehouse
from analytics_pipeline.core.scheduling import ClosedDaysStream, StreamClock
from analytics_pipeline.web.resources import WebSettings
from analytics_pipeline.web.retention import enforce_web_retention

WEB_ASSETS = ("raw_web_events", "web_rollups")
WEB_STREAM = "web"

web_job = define_asset_job(
    "web_analytics",
    selection=AssetSelection.assets(*WEB_ASSETS),
    partitions_def=daily_timezone_partitions,
    description="Extract, sessionize and roll up the web events of date|timezone partitions.",
)

# A site's day is due once closed plus the grace, like the support desk's.
web_stream = ClosedDaysStream(
    name=WEB_STREAM, job=web_job, run_key=lambda day: f"web_analytics:{day.key}",
    clock=lambda resources, now: StreamClock(WEB_STREAM, now), assets=WEB_ASSETS,
)


@op(description="Delete landed web events and hourly web rollups past their retention.")
def enforce_web_retention_op(context: OpExecutionContext, warehouse: Warehouse,
                             landing: Landing, web: WebSettings) -> None:
    r = enforce_web_retention(warehouse.engine(), landing.store(),
                              datetime.now(timezone.utc).date(), web.raw_retention_days,
                              web.hourly_retention_days)
    context.log.info(
        f"web retention: {len(r.landed_dates_dropped)} landed dates before {r.raw_before} "
        f"dropped, {r.hourly_rows_deleted} hourly rows before {r.hourly_before} deleted")


@job(name="web_retention",
     description="Web retention: landed events and hourly rollups older than "
     "ANALYTICS_WEB_RAW_RETENTION_DAYS / ANALYTICS_WEB_HOURLY_RETENTION_DAYS (90) go; daily "
     "rollups stay.")
def web_retention_job() -> None:
    enforce_web_retention_op()


web_retention_schedule = ScheduleDefinition(
    name="web_retention_schedule", job=web_retention_job, cron_schedule="17 3 * * *",
    execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
    description="Enforces the web source's retention every day at 03:17 UTC.",
)
