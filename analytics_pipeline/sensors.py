"""Scheduling: roll up each ``date|timezone`` once its local day has closed (+ grace),
and refresh accounts so new timezones get partitions without manual steps."""


import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
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
    local_date_of,
)
from analytics_pipeline.registry import EMAIL_PIPELINES, EmailPipeline
from analytics_pipeline.resources import Mailgun, PipelineSettings, Warehouse
from analytics_pipeline.warehouse import get_cursor, get_stream_state

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


REPORTING_STREAM = "reporting"


def email_stream_name(pipeline: EmailPipeline) -> str:
    return f"email:{pipeline.name}"


@dataclass(frozen=True)
class StreamClock:
    """How far a stream of partitions may be rolled up.

    ``closed_until``: a day is due once its end plus the grace is at or before this instant
    (now for reporting; for an email stream the earlier of now and its settled watermark,
    so a day is rolled up only once Mailgun's late indexing of it has settled).
    ``starts_at``: where a stream seen for the first time starts (its first fetch's
    window), instead of the last ``lookback_days`` closed days.
    """

    name: str
    closed_until: datetime
    starts_at: datetime | None = None


def read_progress(raw: str | None) -> dict[str, dict[str, str]]:
    """The closed-days sensor's cursor: ``{stream: {timezone: last date requested}}``.
    The former cursor, one flat ``{timezone: date}`` shared by every stream, is read as
    the reporting stream's progress."""
    if not raw:
        return {}
    state = json.loads(raw)
    if isinstance(state.get("streams"), dict):
        return {k: dict(v) for k, v in state["streams"].items()}
    return {REPORTING_STREAM: dict(state)}


def due_stream_partitions(
    streams: Sequence[StreamClock],
    timezones: Iterable[str],
    progress: dict[str, dict[str, str]],
    grace: timedelta,
    first_date: date,
    lookback_days: int = FIRST_LOOKBACK_DAYS,
    limit: int = MAX_REQUESTS_PER_TICK,
) -> tuple[dict[str, list[LocalDay]], dict[str, dict[str, str]]]:
    """Each stream's due days (its own progress and clock), oldest first, within one shared
    per-tick ``limit``; and the advanced progress of every stream."""
    tzs = sorted(timezones)
    new_progress = {k: dict(v) for k, v in progress.items()}
    due: dict[str, list[LocalDay]] = {}
    remaining = limit
    for stream in streams:
        cursor = progress.get(stream.name)
        if cursor is None:
            cursor = {}
            if stream.starts_at is not None:
                for tz in tzs:
                    try:
                        start = max(first_date, local_date_of(stream.starts_at, tz))
                    except ValueError:
                        continue  # not a valid zone: the accounts check reports it
                    cursor[tz] = (start - timedelta(days=1)).isoformat()
        days, advanced = due_partitions(stream.closed_until, tzs, cursor, grace, first_date,
                                        lookback_days, max(remaining, 0))
        due[stream.name] = days
        new_progress[stream.name] = advanced
        remaining -= len(days)
    return due, new_progress


@sensor(
    jobs=[reporting_job, *email_daily_jobs.values()],
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests each date|timezone partition once that local day has closed "
    "plus the grace period (ANALYTICS_CLOSE_GRACE_MINUTES); email days only once their "
    "Mailgun stream's settled watermark has passed it too. Each stream keeps its own progress.",
)
def closed_days_sensor(
    context: SensorEvaluationContext, settings: PipelineSettings, mailgun: Mailgun,
    warehouse: Warehouse,
):
    timezones = context.instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)
    if not timezones:
        return SkipReason("no timezone partitions yet: materialize `accounts` first")
    now = _utcnow()
    streams = [StreamClock(REPORTING_STREAM, now)]
    jobs = {REPORTING_STREAM: reporting_job}
    if mailgun.configured:  # email days only once events can be fetched
        engine = warehouse.engine()
        for pipeline in EMAIL_PIPELINES:
            cursor = get_cursor(engine, pipeline.cursor_name)
            if cursor is None:
                continue  # not fetched yet: its days start with its first fetch
            state = get_stream_state(engine, pipeline.cursor_name)
            first = state.first_fetch_from if state else None
            name = email_stream_name(pipeline)
            streams.append(StreamClock(
                name, min(now, datetime.fromtimestamp(cursor[1], timezone.utc)),
                datetime.fromtimestamp(first, timezone.utc) if first is not None else None))
            jobs[name] = email_daily_jobs[pipeline.name]
    previous = read_progress(context.cursor)
    due, progress = due_stream_partitions(
        streams, timezones, previous, settings.grace, settings.first_date)
    cursor = json.dumps({"streams": progress}, sort_keys=True)
    requests = []
    for stream, days in due.items():
        job = jobs[stream]
        for day in days:
            # reporting keeps its bare key, email jobs theirs: the keys the former sensor
            # used, so a day it requested already is not requested twice
            key = day.key if stream == REPORTING_STREAM else f"{job.name}:{day.key}"
            requests.append(RunRequest(run_key=key, job_name=job.name,
                                       partition_key=day.multi_key(),
                                       tags={"analytics/timezone": day.tz}))
    if not requests:
        skip = "no local day has closed (or settled) since the last tick"
        if progress == previous:
            return SkipReason(skip)
        return SensorResult(skip_reason=skip, cursor=cursor)  # e.g. a new stream's start
    return SensorResult(run_requests=requests, cursor=cursor)


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


def _local_days(lo: datetime, hi: datetime, timezones: Iterable[str]) -> list[LocalDay]:
    """Every local day, per timezone, that the instants [lo, hi] touch."""
    out = []
    for tz in sorted(timezones):
        try:
            first, last = local_date_of(lo, tz), local_date_of(hi, tz)
        except ValueError:
            continue
        d = first
        while d <= last:
            out.append(LocalDay(d, tz))
            d += timedelta(days=1)
    return out


def affected_partitions(
    time_min: float, time_max: float, timezones: Iterable[str], materialized: set[str]
) -> list[LocalDay]:
    """Partitions whose local day overlaps [time_min, time_max] and that were already
    materialized (the closed-days sensor takes care of the others)."""
    lo = datetime.fromtimestamp(time_min, timezone.utc)
    hi = datetime.fromtimestamp(time_max, timezone.utc)
    return [d for d in _local_days(lo, hi, timezones) if d.key in materialized]


def days_of_buckets(buckets: Iterable[int], timezones: Iterable[str]) -> list[LocalDay]:
    """The local days (per timezone) of 15-minute UTC buckets (epoch seconds // 900).

    Local midnights fall on quarter hours (every offset in use is a multiple of 15 minutes),
    so a run of consecutive buckets touches exactly the dates that its buckets lie in.
    """
    runs: list[list[int]] = []
    for b in sorted(set(buckets)):
        if runs and b == runs[-1][1] + 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    tzs = sorted(timezones)
    days: set[LocalDay] = set()
    for lo, hi in runs:
        days.update(_local_days(datetime.fromtimestamp(lo * 900, timezone.utc),
                                datetime.fromtimestamp((hi + 1) * 900 - 1, timezone.utc), tzs))
    return sorted(days, key=lambda d: (d.tz, d.day))


def days_of_fetch(metadata: Mapping, timezones: Iterable[str]) -> list[LocalDay]:
    """The local days a fetch stored events for, from its materialization's metadata:
    its 15-minute buckets, or (older fetches, or too many buckets) its [min, max] span."""
    buckets = metadata.get("event_buckets_15m")
    if buckets is not None and buckets.value is not None:
        return days_of_buckets((int(b) for b in buckets.value), timezones)
    lo, hi = metadata.get("event_time_min"), metadata.get("event_time_max")
    if lo is None or hi is None or not lo.value:
        return []  # the fetch stored no events
    return _local_days(datetime.fromtimestamp(float(lo.value), timezone.utc),
                       datetime.fromtimestamp(float(hi.value), timezone.utc), timezones)


LATE_REQUESTS_PER_TICK = 100
LATE_FETCHES_PER_TICK = 2000  # materializations read in one tick; the rest the next one


def _late_cursor(raw: str | None) -> tuple[int | None, dict[str, int]]:
    """(last fetch storage id seen, {partition key: storage id of the newest fetch that
    touched it} still to request). The former asset sensor kept a bare storage id."""
    if not raw:
        return None, {}
    try:
        return int(raw), {}
    except ValueError:
        state = json.loads(raw)
        return state.get("after"), {k: int(v) for k, v in state.get("pending", {}).items()}


def late_email_events_sensor(pipeline: EmailPipeline):
    """When fetches land events for days already rolled up, re-materialize those days."""
    job = email_daily_jobs[pipeline.name]
    fetch_key = AssetKey(f"mailgun_{pipeline.name}_events")
    raw_key = AssetKey(f"raw_{pipeline.name}_email_events")

    @sensor(
        name=f"late_{pipeline.name}_email_events_sensor",
        job=job,
        default_status=DefaultSensorStatus.RUNNING,
        description="Re-materializes the date|timezone partitions of already rolled-up days "
        f"that Mailgun fetches of {pipeline.name} events added events to: every fetch since "
        f"the last tick, at most {LATE_REQUESTS_PER_TICK} requests per tick (the rest follow).",
    )
    def _sensor(context: SensorEvaluationContext):
        after, pending = _late_cursor(context.cursor)
        if after is None:
            # A fresh sensor starts with the newest fetch (older ones are the backfill's).
            newest = context.instance.fetch_materializations(fetch_key, limit=1).records
            after = newest[0].storage_id - 1 if newest else 0
        timezones = context.instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)
        done: set[str] | None = None
        fetches = 0
        while fetches < LATE_FETCHES_PER_TICK:
            page = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=fetch_key, after_storage_id=after),
                limit=min(200, LATE_FETCHES_PER_TICK - fetches), ascending=True)
            for record in page.records:
                mat = record.event_log_entry.asset_materialization
                days = days_of_fetch(mat.metadata if mat else {}, timezones)
                if days and done is None:
                    done = set(context.instance.get_materialized_partitions(raw_key))
                for day in days:
                    if day.key in done:
                        pending[day.key] = record.storage_id  # the newest fetch wins
                after = record.storage_id
            fetches += len(page.records)
            if not page.has_more:
                break
        # Oldest fetch first; the run key names the newest fetch that touched the day, so a
        # later fetch that brings more events of the same day gets its own run.
        order = sorted(pending.items(), key=lambda kv: (kv[1], kv[0]))
        now, rest = order[:LATE_REQUESTS_PER_TICK], dict(order[LATE_REQUESTS_PER_TICK:])
        cursor = json.dumps({"after": after, "pending": rest}, sort_keys=True)
        if not now:
            return SensorResult(skip_reason="no rolled-up day was touched by a new fetch",
                                cursor=cursor)
        if rest:
            context.log.info(f"{len(rest)} late-event partitions left for the next ticks")
        requests = []
        for key, storage_id in now:
            day = LocalDay.from_key(key)
            requests.append(RunRequest(
                run_key=f"late:{storage_id}:{key}", partition_key=day.multi_key(),
                tags={"analytics/timezone": day.tz, "analytics/reason": "late-events"}))
        return SensorResult(run_requests=requests, cursor=cursor)

    return _sensor


late_email_sensors = {p.name: late_email_events_sensor(p) for p in EMAIL_PIPELINES}
