"""Scheduling shared by every source: which ``date|timezone`` partitions are due.

A local day is due once it has closed in its timezone plus the grace period, and, for a
provider's stream, once the provider's settled watermark has passed it too. Each source
declares its streams (``ClosedDaysStream``); one sensor requests them all, each with its
own progress.
"""

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from analytics_pipeline.core.partitions import (
    TIMEZONES_PARTITIONS_NAME,
    LocalDay,
    last_closed_day,
    local_date_of,
)
from analytics_pipeline.core.resources import PipelineSettings

if TYPE_CHECKING:  # what define_asset_job returns
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
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


REPORTING_STREAM = "reporting"


@dataclass(frozen=True)
class StreamClock:
    """How far a stream of partitions may be rolled up.

    ``closed_until``: a day is due once its end plus the grace is at or before this instant
    (now for a stream of the application database; for a provider's stream the earlier of
    now and its settled watermark, so a day is rolled up only once the provider's late
    indexing of it has settled).
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


@dataclass(frozen=True)
class ClosedDaysStream:
    """A stream of ``date|timezone`` partitions that the closed-days sensor requests.

    ``clock`` gives the stream's clock from the sensor's resources and now, or None while
    the stream cannot run yet (a provider not configured or never fetched).
    """

    name: str
    job: UnresolvedAssetJobDefinition
    run_key: Callable[[LocalDay], str]
    clock: Callable[[Any, datetime], StreamClock | None]
    resource_keys: frozenset[str] = frozenset()


def build_closed_days_sensor(streams: Sequence[ClosedDaysStream]) -> SensorDefinition:
    """The one sensor that requests every stream's closed days, one progress per stream
    in its cursor. Custom because Dagster's schedules tick in one timezone and know nothing
    of a provider's settled watermark: a day closes per timezone, plus the grace."""
    jobs = {s.name: s.job for s in streams}

    @sensor(
        name="closed_days_sensor",
        jobs=list(jobs.values()),
        minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.RUNNING,
        required_resource_keys={"settings", *(k for s in streams for k in s.resource_keys)},
        description="Requests each date|timezone partition once that local day has closed "
        "plus the grace period (ANALYTICS_CLOSE_GRACE_MINUTES); a provider's days only once "
        "its stream's settled watermark has passed it too. Each stream keeps its own "
        "progress.",
    )
    def _sensor(context: SensorEvaluationContext, **_resources):
        # resources are read from the context (which streams need which is known only
        # here); direct invocation also passes them as keyword arguments
        settings: PipelineSettings = context.resources.settings
        timezones = context.instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)
        if not timezones:
            return SkipReason("no timezone partitions yet: materialize `accounts` first")
        now = _utcnow()
        clocks = [c for s in streams if (c := s.clock(context.resources, now)) is not None]
        previous = read_progress(context.cursor)
        due, progress = due_stream_partitions(
            clocks, timezones, previous, settings.grace, settings.first_date)
        cursor = json.dumps({"streams": progress}, sort_keys=True)
        by_name = {s.name: s for s in streams}
        requests = [
            RunRequest(run_key=by_name[name].run_key(day), job_name=jobs[name].name,
                       partition_key=day.multi_key(), tags={"analytics/timezone": day.tz})
            for name, days in due.items() for day in days
        ]
        if not requests:
            skip = "no local day has closed (or settled) since the last tick"
            if progress == previous:
                return SkipReason(skip)
            return SensorResult(skip_reason=skip, cursor=cursor)  # e.g. a new stream's start
        return SensorResult(run_requests=requests, cursor=cursor)

    return _sensor
