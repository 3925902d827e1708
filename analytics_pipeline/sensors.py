"""Scheduling: roll up each ``date|timezone`` once its local day has closed (+ grace),
and refresh accounts so new timezones get partitions without manual steps."""


import json
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from analytics_pipeline.partitions import (
    TIMEZONES_PARTITIONS_NAME,
    LocalDay,
    daily_timezone_partitions,
    last_closed_day,
)
from analytics_pipeline.resources import PipelineSettings

accounts_job = define_asset_job(
    "refresh_accounts",
    selection=AssetSelection.assets("accounts"),
    description="Snapshot accounts and register the timezones in use.",
)
reporting_job = define_asset_job(
    "support_reporting",
    selection=AssetSelection.assets("raw_reporting_events", "reporting_rollups"),
    partitions_def=daily_timezone_partitions,
    description="Extract and roll up support reporting events for date|timezone partitions.",
)

refresh_accounts_schedule = ScheduleDefinition(
    name="refresh_accounts_every_30_minutes",
    job=accounts_job,
    cron_schedule="*/30 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
)

# A timezone seen for the first time (or a sensor started fresh) catches up this many
# closed days; older history is a backfill, launched deliberately by an operator.
FIRST_LOOKBACK_DAYS = 2
MAX_REQUESTS_PER_TICK = 200


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def due_partitions(
    now: datetime,
    timezones: Iterable[str],
    cursor: dict[str, str],
    grace: timedelta,
    first_date: date,
    lookback_days: int = FIRST_LOOKBACK_DAYS,
    limit: int = MAX_REQUESTS_PER_TICK,
) -> tuple[list[LocalDay], dict[str, str]]:
    """Closed local days not requested yet, oldest first, and the advanced cursor.

    ``cursor`` maps a timezone to the last local date already requested for it.
    """
    due: list[LocalDay] = []
    new_cursor = dict(cursor)
    for tz in sorted(timezones):
        try:
            closed = last_closed_day(now, tz, grace)
        except ValueError:
            continue  # not a valid zone: the accounts check reports it
        if tz in cursor:
            nxt = date.fromisoformat(cursor[tz]) + timedelta(days=1)
        else:
            nxt = max(first_date, closed - timedelta(days=lookback_days - 1))
        while nxt <= closed and len(due) < limit:
            due.append(LocalDay(nxt, tz))
            new_cursor[tz] = nxt.isoformat()
            nxt += timedelta(days=1)
    return due, new_cursor


@sensor(
    job=reporting_job,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests each date|timezone partition once that local day has closed "
    "plus the grace period (ANALYTICS_CLOSE_GRACE_MINUTES).",
)
def closed_days_sensor(context: SensorEvaluationContext, settings: PipelineSettings):
    timezones = context.instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)
    if not timezones:
        return SkipReason("no timezone partitions yet: materialize `accounts` first")
    cursor = json.loads(context.cursor) if context.cursor else {}
    due, new_cursor = due_partitions(
        _utcnow(), timezones, cursor, settings.grace, settings.first_date
    )
    if not due:
        return SkipReason("no local day has closed since the last tick")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=day.key,
                partition_key=day.multi_key(),
                tags={"analytics/timezone": day.tz},
            )
            for day in due
        ],
        cursor=json.dumps(new_cursor, sort_keys=True),
    )
