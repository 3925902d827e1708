"""Scheduling: roll up each ``date|timezone`` once its local day has closed (+ grace),
and refresh accounts so new timezones get partitions without manual steps."""


import json
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    EventLogEntry,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_sensor,
    define_asset_job,
    sensor,
)

from analytics_pipeline.partitions import (
    TIMEZONES_PARTITIONS_NAME,
    LocalDay,
    daily_timezone_partitions,
    last_closed_day,
    local_date_of,
)
from analytics_pipeline.registry import EMAIL_PIPELINES, EmailPipeline
from analytics_pipeline.resources import Mailgun, PipelineSettings, Warehouse
from analytics_pipeline.warehouse import get_cursor

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


def email_daily_job(pipeline: EmailPipeline):
    return define_asset_job(
        f"{pipeline.name}_email_daily",
        selection=AssetSelection.assets(f"raw_{pipeline.name}_email_events",
                                        f"{pipeline.name}_email_rollups"),
        partitions_def=daily_timezone_partitions,
        description=f"Match and roll up {pipeline.name} email events for date|timezone "
        "partitions.",
    )


email_daily_jobs = {p.name: email_daily_job(p) for p in EMAIL_PIPELINES}


@sensor(
    jobs=[reporting_job, *email_daily_jobs.values()],
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests each date|timezone partition once that local day has closed "
    "plus the grace period (ANALYTICS_CLOSE_GRACE_MINUTES).",
)
def closed_days_sensor(
    context: SensorEvaluationContext, settings: PipelineSettings, mailgun: Mailgun
):
    timezones = context.instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)
    if not timezones:
        return SkipReason("no timezone partitions yet: materialize `accounts` first")
    cursor = json.loads(context.cursor) if context.cursor else {}
    due, new_cursor = due_partitions(
        _utcnow(), timezones, cursor, settings.grace, settings.first_date
    )
    if not due:
        return SkipReason("no local day has closed since the last tick")
    requests = []
    for day in due:
        requests.append(RunRequest(run_key=day.key, job_name=reporting_job.name,
                                   partition_key=day.multi_key(),
                                   tags={"analytics/timezone": day.tz}))
        if mailgun.configured:  # email days only once events can be fetched
            for job in email_daily_jobs.values():
                requests.append(RunRequest(run_key=f"{job.name}:{day.key}", job_name=job.name,
                                           partition_key=day.multi_key(),
                                           tags={"analytics/timezone": day.tz}))
    return SensorResult(run_requests=requests, cursor=json.dumps(new_cursor, sort_keys=True))


# --- email: Mailgun polling -----------------------------------------------------------------

# A window shorter than this is not worth a run (the sensor ticks every minute).
MIN_WINDOW_SECONDS = 30.0


def mailgun_fetch_job(pipeline: EmailPipeline):
    return define_asset_job(
        f"mailgun_{pipeline.name}_fetch",
        selection=AssetSelection.assets(f"mailgun_{pipeline.name}_events"),
        description=f"Fetch and land the Mailgun events of {pipeline.name} emails.",
        tags={"analytics/stream": pipeline.stream},
    )


# A fetch run in any of these states is in flight: a queued one too, or each tick would
# queue another fetch behind it under the queued run coordinator.
FETCH_IN_FLIGHT_STATUSES = (
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)


def fetch_runs_in_flight(
    instance, job_name: str, now: datetime, stale_after: timedelta
) -> tuple[list[tuple[str, str, timedelta]], list[tuple[str, str, timedelta]]]:
    """(blocking, stale) fetch runs of ``job_name`` as (run id, status, age), newest first.

    A run killed with kill -9 stays STARTED forever; one in flight for longer than
    ``stale_after`` (since it started, or was created) no longer blocks. A QUEUED run always
    blocks: it waits for a slot, and another fetch would only wait behind it.
    """
    blocking, stale = [], []
    records = instance.get_run_records(
        filters=RunsFilter(job_name=job_name, statuses=list(FETCH_IN_FLIGHT_STATUSES)),
        limit=20)
    for rec in records:
        since = (datetime.fromtimestamp(rec.start_time, timezone.utc) if rec.start_time
                 else rec.create_timestamp)
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        status = rec.dagster_run.status
        entry = (rec.dagster_run.run_id, status.value, now - since)
        if status != DagsterRunStatus.QUEUED and now - since > stale_after:
            stale.append(entry)
        else:
            blocking.append(entry)
    return blocking, stale


def mailgun_sensor(pipeline: EmailPipeline, job):
    """A light sensor: it decides the window end and launches a run; the run fetches,
    lands and advances the durable cursor kept in the warehouse."""

    @sensor(
        name=f"mailgun_{pipeline.name}_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Polls Mailgun for {pipeline.name} email events (fresh pass up to now "
        "minus the lag, settling pass over events older than MAILGUN_SETTLE_MINUTES).",
    )
    def _sensor(context: SensorEvaluationContext, mailgun: Mailgun, warehouse: Warehouse):
        if not mailgun.configured:
            return SkipReason("Mailgun is not configured: set MAILGUN_DOMAIN and MAILGUN_API_KEY")
        now_dt = _utcnow()
        blocking, stale = fetch_runs_in_flight(
            context.instance, job.name, now_dt, timedelta(minutes=mailgun.fetch_stale_minutes))
        if blocking:
            run_id, status, age = blocking[0]
            return SkipReason(f"run {run_id} is still fetching ({status}, for "
                              f"{age.total_seconds() / 60:.0f} minutes)")
        if stale:
            context.log.warning(
                f"fetch run(s) {', '.join(r for r, _, _ in stale)} in flight for longer than "
                f"MAILGUN_FETCH_STALE_MINUTES ({mailgun.fetch_stale_minutes}): presumed dead "
                "(run monitoring marks them failed), no longer blocking this stream")
        now = now_dt.timestamp()
        until = float(int(now - mailgun.lag_seconds))
        cursor = get_cursor(warehouse.engine(), pipeline.cursor_name)
        if cursor is not None:
            fresh_gap = until - cursor[0]
            settle_gap = (now - mailgun.settle_minutes * 60) - cursor[1]
            if fresh_gap < MIN_WINDOW_SECONDS and settle_gap < MIN_WINDOW_SECONDS:
                return SkipReason("nothing new to fetch yet")
        tags = {"analytics/stream": pipeline.stream}
        if stale:
            tags["analytics/stale_fetch_runs"] = ",".join(r for r, _, _ in stale)
        return RunRequest(
            run_key=f"{pipeline.cursor_name}:{int(until)}",
            run_config={"ops": {f"mailgun_{pipeline.name}_events": {"config": {"until": until}}}},
            tags=tags,
        )

    return _sensor


mailgun_jobs = {p.name: mailgun_fetch_job(p) for p in EMAIL_PIPELINES}
mailgun_sensors = {p.name: mailgun_sensor(p, mailgun_jobs[p.name]) for p in EMAIL_PIPELINES}



# --- email: statistics refresh and late events ---------------------------------------------


def email_stats_job(pipeline: EmailPipeline):
    return define_asset_job(
        f"{pipeline.name}_email_stats_refresh",
        selection=AssetSelection.assets(f"{pipeline.name}_recipient_states",
                                        f"{pipeline.name}_email_stats"),
        description=f"Recompute {pipeline.name} recipient states and statistics.",
    )


email_stats_jobs = {p.name: email_stats_job(p) for p in EMAIL_PIPELINES}
email_stats_schedules = {
    p.name: ScheduleDefinition(
        name=f"{p.name}_email_stats_every_15_minutes",
        job=email_stats_jobs[p.name],
        cron_schedule="*/15 * * * *",
        default_status=DefaultScheduleStatus.RUNNING,
    )
    for p in EMAIL_PIPELINES
}


def affected_partitions(
    time_min: float, time_max: float, timezones: Iterable[str], materialized: set[str]
) -> list[LocalDay]:
    """Partitions whose local day overlaps [time_min, time_max] and that were already
    materialized (the closed-days sensor takes care of the others)."""
    out = []
    lo = datetime.fromtimestamp(time_min, timezone.utc)
    hi = datetime.fromtimestamp(time_max, timezone.utc)
    for tz in sorted(timezones):
        try:
            first, last = local_date_of(lo, tz), local_date_of(hi, tz)
        except ValueError:
            continue
        d = first
        while d <= last:
            day = LocalDay(d, tz)
            if day.key in materialized:
                out.append(day)
            d += timedelta(days=1)
    return out


def late_email_events_sensor(pipeline: EmailPipeline):
    """When a fetch lands events for days already rolled up, re-materialize those days."""
    job = email_daily_jobs[pipeline.name]
    raw_key = AssetKey(f"raw_{pipeline.name}_email_events")

    @asset_sensor(
        name=f"late_{pipeline.name}_email_events_sensor",
        asset_key=AssetKey(f"mailgun_{pipeline.name}_events"),
        job=job,
        default_status=DefaultSensorStatus.RUNNING,
        description="Re-materializes the date|timezone partitions of already rolled-up days "
        f"that a Mailgun fetch of {pipeline.name} events added events to.",
    )
    def _sensor(context: SensorEvaluationContext, asset_event: EventLogEntry):
        mat = asset_event.asset_materialization
        meta = mat.metadata if mat else {}
        lo = meta.get("event_time_min")
        hi = meta.get("event_time_max")
        if lo is None or hi is None or not lo.value:
            return SkipReason("the fetch landed no events")
        timezones = context.instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)
        done = set(context.instance.get_materialized_partitions(raw_key))
        days = affected_partitions(float(lo.value), float(hi.value), timezones, done)
        if not days:
            return SkipReason("no rolled-up day was touched")
        return [
            RunRequest(run_key=f"{asset_event.run_id}:{d.key}", partition_key=d.multi_key(),
                       tags={"analytics/timezone": d.tz, "analytics/reason": "late-events"})
            for d in days
        ]

    return _sensor


late_email_sensors = {p.name: late_email_events_sensor(p) for p in EMAIL_PIPELINES}
