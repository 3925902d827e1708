"""The email pipelines' jobs, sensors and schedules: Mailgun polling, late events, the stats
refresh, and the email streams of the closed-days sensor.

Custom sensors, because Dagster has no built-in for what they decide: the polling sensor
follows a provider cursor kept in the warehouse and holds back while a fetch is in flight;
the late-events sensor maps what each fetch landed to the already rolled-up local days.
"""

import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    define_asset_job,
    sensor,
)

from analytics_pipeline.core.partitions import (
    LocalDay,
    daily_timezone_partitions,
    local_date_of,
)
from analytics_pipeline.core.resources import Warehouse
from analytics_pipeline.core.scheduling import (
    ClosedDaysStream,
    StreamClock,
    request_late_partitions,
    skip,
    valid_timezones,
)
from analytics_pipeline.core.warehouse import get_cursor, get_stream_state
from analytics_pipeline.email.metrics import EMAIL_PIPELINES, EmailPipeline
from analytics_pipeline.email.resources import Mailgun


def email_daily_job(pipeline: EmailPipeline):
    return define_asset_job(
        pipeline.names.daily_job,
        selection=AssetSelection.assets(pipeline.names.raw_asset,
                                        pipeline.names.rollups_asset),
        partitions_def=daily_timezone_partitions,
        description=f"Match and roll up {pipeline.name} email events for date|timezone "
        "partitions.",
    )


email_daily_jobs = {p.name: email_daily_job(p) for p in EMAIL_PIPELINES}


def email_stream_name(pipeline: EmailPipeline) -> str:
    return pipeline.names.stream


# A window shorter than this is not worth a run (the sensor ticks every minute).
MIN_WINDOW_SECONDS = 30.0


def mailgun_fetch_job(pipeline: EmailPipeline):
    return define_asset_job(
        pipeline.names.fetch_job,
        selection=AssetSelection.assets(pipeline.names.fetched_asset),
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


def mailgun_configured_in_env() -> bool:
    """Whether the code location's environment configures Mailgun, as the resource reads
    it (``mailgun_resource``: EnvVar of each variable set, empty defaults otherwise)."""
    return bool(os.environ.get("MAILGUN_DOMAIN") and os.environ.get("MAILGUN_API_KEY"))


def mailgun_default_status() -> tuple[DefaultSensorStatus, str]:
    """The default status of the sensors that need Mailgun, decided when the code location
    loads, and the sentence of their description that says so."""
    if mailgun_configured_in_env():
        return DefaultSensorStatus.RUNNING, (
            " Running by default: MAILGUN_DOMAIN and MAILGUN_API_KEY were set when the code "
            "location loaded.")
    return DefaultSensorStatus.STOPPED, (
        " Stopped by default: MAILGUN_DOMAIN and MAILGUN_API_KEY were not set when the code "
        "location loaded; set both, reload the code location and it runs (or start it "
        "here).")


def mailgun_sensor(pipeline: EmailPipeline, job):
    """A light sensor: it decides the window end and launches a run; the run fetches,
    lands and advances the durable cursor kept in the warehouse."""
    status, why = mailgun_default_status()

    @sensor(
        name=pipeline.names.fetch_sensor,
        job=job,
        minimum_interval_seconds=60,
        default_status=status,
        description=f"Polls Mailgun for {pipeline.name} email events (fresh pass up to now "
        "minus the lag, settling pass over events older than MAILGUN_SETTLE_MINUTES)." + why,
    )
    def _sensor(context: SensorEvaluationContext, mailgun: Mailgun, warehouse: Warehouse):
        if not mailgun.configured:
            return skip(context, "Mailgun is not configured: set MAILGUN_DOMAIN and "
                        "MAILGUN_API_KEY")
        now_dt = _utcnow()
        blocking, stale = fetch_runs_in_flight(
            context.instance, job.name, now_dt, timedelta(minutes=mailgun.fetch_stale_minutes))
        if blocking:
            run_id, status, age = blocking[0]
            return skip(context, f"run {run_id} is still fetching ({status}, for "
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
                return skip(context, "nothing new to fetch yet")
        tags = {"analytics/stream": pipeline.stream}
        if stale:
            tags["analytics/stale_fetch_runs"] = ",".join(r for r, _, _ in stale)
        return RunRequest(
            run_key=f"{pipeline.cursor_name}:{int(until)}",
            run_config={"ops": {pipeline.names.fetched_asset: {"config": {"until": until}}}},
            tags=tags,
        )

    return _sensor


mailgun_jobs = {p.name: mailgun_fetch_job(p) for p in EMAIL_PIPELINES}


mailgun_sensors = {p.name: mailgun_sensor(p, mailgun_jobs[p.name]) for p in EMAIL_PIPELINES}


def email_stats_job(pipeline: EmailPipeline):
    return define_asset_job(
        pipeline.names.stats_job,
        selection=AssetSelection.assets(pipeline.names.states_asset,
                                        pipeline.names.stats_asset),
        description=f"Recompute {pipeline.name} recipient states and statistics.",
    )


email_stats_jobs = {p.name: email_stats_job(p) for p in EMAIL_PIPELINES}


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
    fetch_key = AssetKey(pipeline.names.fetched_asset)
    raw_key = AssetKey(pipeline.names.raw_asset)
    status, why = mailgun_default_status()

    @sensor(
        name=pipeline.names.late_sensor,
        job=job,
        default_status=status,
        description="Re-materializes the date|timezone partitions of already rolled-up days "
        f"that Mailgun fetches of {pipeline.name} events added events to: every fetch since "
        f"the last tick (a first start begins after the newest fetch), at most "
        f"{LATE_REQUESTS_PER_TICK} requests per tick (the rest follow)." + why,
    )
    def _sensor(context: SensorEvaluationContext):
        after, pending = _late_cursor(context.cursor)
        if after is None:
            # A first start begins from the present: after the newest fetch, whose days
            # were rolled up after it (by the closed-days sensor, the demo or a backfill).
            newest = context.instance.fetch_materializations(fetch_key, limit=1).records
            after = newest[0].storage_id if newest else 0
        timezones = valid_timezones(context)
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
        return request_late_partitions(
            context, pending, LATE_REQUESTS_PER_TICK,
            run_key=lambda key, storage_id: f"late:{storage_id}:{key}",
            cursor_state={"after": after},
            idle_reason="no rolled-up day was touched by a new fetch", timezones=timezones)

    return _sensor


late_email_sensors = {p.name: late_email_events_sensor(p) for p in EMAIL_PIPELINES}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _email_clock(pipeline: EmailPipeline):
    """An email stream's clock: its days are due once Mailgun's settled watermark has
    passed them; none before Mailgun is configured and fetched once."""

    def clock(resources, now: datetime) -> StreamClock | None:
        if not resources.mailgun.configured:
            return None
        engine = resources.warehouse.engine()
        cursor = get_cursor(engine, pipeline.cursor_name)
        if cursor is None:
            return None  # not fetched yet: its days start with its first fetch
        state = get_stream_state(engine, pipeline.cursor_name)
        first = state.first_fetch_from if state else None
        return StreamClock(
            email_stream_name(pipeline),
            min(now, datetime.fromtimestamp(cursor[1], timezone.utc)),
            datetime.fromtimestamp(first, timezone.utc) if first is not None else None)

    return clock


def _email_stream(pipeline: EmailPipeline) -> ClosedDaysStream:
    job = email_daily_jobs[pipeline.name]
    return ClosedDaysStream(
        name=email_stream_name(pipeline), job=job,
        # the keys the former shared sensor used, so a day requested already is not again
        run_key=lambda day: f"{job.name}:{day.key}",
        clock=_email_clock(pipeline), resource_keys=frozenset({"mailgun", "warehouse"}),
        assets=(pipeline.names.raw_asset, pipeline.names.rollups_asset),
    )


email_streams = [_email_stream(p) for p in EMAIL_PIPELINES]
