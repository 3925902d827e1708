"""The late-events sensor of the web source: events received after their partition was
rolled up re-materialize it, so the numbers converge without a manual backfill."""

import json
from datetime import datetime, timedelta, timezone

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.resources import SourceDatabase, Warehouse
from analytics_pipeline.web.jobs import web_job
from analytics_pipeline.web.late import late_partitions, received_dates, site_timezones
from analytics_pipeline.web.resources import WebSettings

LATE_WEB_REQUESTS_PER_TICK = 100


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@sensor(
    name="late_web_events_sensor",
    job=web_job,
    minimum_interval_seconds=120,
    default_status=DefaultSensorStatus.RUNNING,
    description="Re-materializes the already rolled-up date|timezone partitions that web "
    "events received since the last tick belong to (by occurred_at), at most "
    f"{LATE_WEB_REQUESTS_PER_TICK} per tick (the rest follow). Starts from the present.",
)
def late_web_events_sensor(context: SensorEvaluationContext, source_db: SourceDatabase,
                           warehouse: Warehouse, web: WebSettings):
    until = (_utcnow() - timedelta(seconds=web.late_lag_seconds)).replace(tzinfo=None)
    state = json.loads(context.cursor) if context.cursor else None
    if state is None:
        reason = "first tick: late events are looked for from now on"
        context.log.info(f"skipped: {reason}")
        return SensorResult(skip_reason=reason,
                            cursor=json.dumps({"after": until.isoformat(), "pending": {}}))
    after = datetime.fromisoformat(state["after"])
    pending: dict[str, str] = dict(state.get("pending", {}))
    if until > after:
        days = late_partitions(received_dates(source_db.url, after, until),
                               site_timezones(warehouse.engine()))
        done = context.instance.get_materialized_partitions(AssetKey("web_rollups"))
        for day in days:
            if day.key in done:
                pending[day.key] = until.isoformat()  # the newest arrival names the run
        after = max(after, until)
    order = sorted(pending.items(), key=lambda kv: (kv[1], kv[0]))
    now, rest = order[:LATE_WEB_REQUESTS_PER_TICK], dict(order[LATE_WEB_REQUESTS_PER_TICK:])
    cursor = json.dumps({"after": after.isoformat(), "pending": rest}, sort_keys=True)
    if not now:
        reason = "no rolled-up day received late events since the last tick"
        context.log.info(f"skipped: {reason}")
        return SensorResult(skip_reason=reason, cursor=cursor)
    if rest:
        context.log.info(f"{len(rest)} late web partitions left for the next ticks")
    requests = []
    for key, stamp in now:
        day = LocalDay.from_key(key)
        requests.append(RunRequest(
            run_key=f"late-web:{key}:{stamp}", partition_key=day.multi_key(),
            tags={"analytics/timezone": day.tz, "analytics/reason": "late-events"}))
    return SensorResult(run_requests=requests, cursor=cursor)
