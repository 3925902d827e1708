"""Scheduling shared by every source: which ``date|timezone`` partitions are due.

A local day is due once it has closed in its timezone plus the grace period, and, for a
provider's stream, once the provider's settled watermark has passed it too. Each source
declares its streams (``ClosedDaysStream``); one sensor requests them all, each with its
own progress.
"""

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetKey,
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
    is_valid_timezone,
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
    starts: Mapping[str, date] | None = None,
    materialized: Callable[[], Collection[str]] | None = None,
) -> tuple[list[LocalDay], dict[str, str]]:
    """Closed local days not requested yet, oldest first, and the advanced cursor.

    ``cursor`` maps a timezone to the last local date already requested for it. A timezone
    without progress starts at ``starts[tz]`` if given, else with the last ``lookback_days``
    closed days, and skips the days whose partition keys ``materialized()`` holds (work
    done before the sensor ran, e.g. by the demo or a backfill); the cursor still moves
    past them.
    """
    due: list[LocalDay] = []
    new_cursor = dict(cursor)
    done: Collection[str] | None = None
    for tz in sorted(timezones):
        try:
            closed = last_closed_day(now, tz, grace)
        except ValueError:
            continue  # not a valid zone: the sensor logs it (invalid_timezones)
        fresh = tz not in cursor
        if not fresh:
            nxt = date.fromisoformat(cursor[tz]) + timedelta(days=1)
        elif starts is not None and tz in starts:
            nxt = max(first_date, starts[tz])
        else:
            nxt = max(first_date, closed - timedelta(days=lookback_days - 1))
        while nxt <= closed and len(due) < limit:
            day = LocalDay(nxt, tz)
            if fresh and materialized is not None:
                if done is None:
                    done = materialized()  # read once, and only on a cold start
                if day.key in done:
                    new_cursor[tz] = nxt.isoformat()
                    nxt += timedelta(days=1)
                    continue
            due.append(day)
            new_cursor[tz] = nxt.isoformat()
            nxt += timedelta(days=1)
        if fresh and tz not in new_cursor and starts is not None and tz in starts:
            # nothing due yet: remember where the stream starts
            new_cursor[tz] = (max(first_date, starts[tz]) - timedelta(days=1)).isoformat()
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
    materialized: Callable[[str], Collection[str]] | None = None,
) -> tuple[dict[str, list[LocalDay]], dict[str, dict[str, str]]]:
    """Each stream's due days (its own progress and clock), oldest first, within one shared
    per-tick ``limit``; and the advanced progress of every stream. ``materialized(name)``
    gives the partition keys a stream has already done: a timezone the stream has no
    progress for does not request them again."""
    tzs = sorted(timezones)
    new_progress = {k: dict(v) for k, v in progress.items()}
    due: dict[str, list[LocalDay]] = {}
    remaining = limit
    for stream in streams:
        cursor = progress.get(stream.name, {})
        starts: dict[str, date] | None = None
        if stream.starts_at is not None and stream.name not in progress:
            # a new stream starts where its first fetch did; a timezone added later to a
            # running stream catches up the lookback, like any new timezone
            starts = {}
            for tz in tzs:
                try:
                    starts[tz] = local_date_of(stream.starts_at, tz)
                except ValueError:
                    continue  # not a valid zone: the sensor logs it (invalid_timezones)
        done = partial(materialized, stream.name) if materialized is not None else None
        days, advanced = due_partitions(stream.closed_until, tzs, cursor, grace, first_date,
                                        lookback_days, max(remaining, 0), starts, done)
        due[stream.name] = days
        new_progress[stream.name] = advanced
        remaining -= len(days)
    return due, new_progress


def invalid_timezones(timezones: Iterable[str]) -> list[str]:
    """The ``timezone`` partition keys that are no IANA zone (e.g. typed by hand in the UI);
    the accounts refresh removes them, sensors skip them meanwhile."""
    return sorted(tz for tz in timezones if not is_valid_timezone(tz))


def valid_timezones(context: SensorEvaluationContext) -> list[str]:
    """The instance's ``timezone`` partition keys a sensor can use; each invalid key is
    named in a warning of the tick's log."""
    keys = context.instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)
    bad = invalid_timezones(keys)
    for tz in bad:
        context.log.warning(
            f"skipping timezone partition key {tz!r}: not a valid IANA timezone (added by "
            "hand?); the next accounts refresh removes it")
    return sorted(set(keys) - set(bad))


def skip(context: SensorEvaluationContext, reason: str) -> SkipReason:
    """A skip whose reason is also in the tick's log (the UI shows a skip's reason only as
    a tooltip; "View logs" of the tick shows this line)."""
    context.log.info(f"skipped: {reason}")
    return SkipReason(reason)


def skip_with_cursor(context: SensorEvaluationContext, reason: str,
                     cursor: str) -> SensorResult:
    """``skip`` that also moves the cursor."""
    context.log.info(f"skipped: {reason}")
    return SensorResult(skip_reason=reason, cursor=cursor)


def request_late_partitions(
    context: SensorEvaluationContext, pending: dict[str, Any], limit: int,
    run_key: Callable[[str, Any], str], cursor_state: dict, idle_reason: str,
    timezones: Iterable[str],
) -> SensorResult:
    """The tail of a late-events sensor: ``pending`` maps a partition key to the stamp of
    the newest arrival that touched it; the oldest stamps (then keys) are requested, at
    most ``limit``, and the rest carried in the cursor (``cursor_state`` plus ``pending``)
    to the next ticks. A key whose timezone is not one of ``timezones`` (the valid
    partition keys now: one carried from an earlier tick may have gone) is dropped with a
    warning, never requested."""
    usable = set(timezones)
    pending = dict(pending)
    for key in sorted(k for k in pending if k.partition("|")[2] not in usable):
        context.log.warning(f"dropping late partition {key}: its timezone is no longer a "
                            "valid timezone partition key")
        del pending[key]
    order = sorted(pending.items(), key=lambda kv: (kv[1], kv[0]))
    now, rest = order[:limit], dict(order[limit:])
    cursor = json.dumps({**cursor_state, "pending": rest}, sort_keys=True)
    if not now:
        return skip_with_cursor(context, idle_reason, cursor)
    if rest:
        context.log.info(f"{len(rest)} late-event partitions left for the next ticks")
    requests = []
    for key, stamp in now:
        day = LocalDay.from_key(key)
        requests.append(RunRequest(
            run_key=run_key(key, stamp), partition_key=day.multi_key(),
            tags={"analytics/timezone": day.tz, "analytics/reason": "late-events"}))
    return SensorResult(run_requests=requests, cursor=cursor)


@dataclass(frozen=True)
class ClosedDaysStream:
    """A stream of ``date|timezone`` partitions that the closed-days sensor requests.

    ``clock`` gives the stream's clock from the sensor's resources and now, or None while
    the stream cannot run yet (a provider not configured or never fetched).
    ``assets``: the job's assets; a day whose partition all of them have materialized is
    done, so a timezone the sensor has no progress for yet (first start, new stream) does
    not request it again.
    """

    name: str
    job: UnresolvedAssetJobDefinition
    run_key: Callable[[LocalDay], str]
    clock: Callable[[Any, datetime], StreamClock | None]
    resource_keys: frozenset[str] = frozenset()
    assets: tuple[str, ...] = ()


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
        timezones = valid_timezones(context)
        if not timezones:
            return skip(context, "no timezone partitions yet: materialize the accounts "
                        "asset first (job refresh_accounts)")
        now = _utcnow()
        clocks = [c for s in streams if (c := s.clock(context.resources, now)) is not None]
        previous = read_progress(context.cursor)
        by_name = {s.name: s for s in streams}

        def materialized(name: str) -> set[str]:
            """Partition keys every asset of the stream's job has materialized."""
            keys: set[str] | None = None
            for asset in by_name[name].assets:
                done = {str(k) for k in
                        context.instance.get_materialized_partitions(AssetKey(asset))}
                keys = done if keys is None else keys & done
            return keys or set()

        due, progress = due_stream_partitions(
            clocks, timezones, previous, settings.grace, settings.first_date,
            materialized=materialized)
        cursor = json.dumps({"streams": progress}, sort_keys=True)
        requests = [
            RunRequest(run_key=by_name[name].run_key(day), job_name=jobs[name].name,
                       partition_key=day.multi_key(), tags={"analytics/timezone": day.tz})
            for name, days in due.items() for day in days
        ]
        if not requests:
            reason = "no local day has closed (or settled) since the last tick"
            if progress == previous:
                return skip(context, reason)
            # e.g. a new stream's start, or a first start whose days were all done already
            return skip_with_cursor(context, reason, cursor)
        return SensorResult(run_requests=requests, cursor=cursor)

    return _sensor
