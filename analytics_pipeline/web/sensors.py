"""The late-events sensor of the web source: events received after their partition was
rolled up re-materialize it, so the numbers converge without a manual backfill."""

import json
from datetime import datetime, timedelta, timezone

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    SensorEvaluationContext,
    sensor,
)

from analytics_pipeline.core.resources import SourceDatabase, Warehouse
from analytics_pipeline.core.scheduling import (
    request_late_partitions,
    skip_with_cursor,
    valid_timezones,
)
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
        return skip_with_cursor(context, "first tick: late events are looked for from now on",
                                json.dumps({"after": until.isoformat(), "pending": {}}))
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
    return request_late_partitions(
        context, pending, LATE_WEB_REQUESTS_PER_TICK,
        run_key=lambda key, stamp: f"late-web:{key}:{stamp}",
        cursor_state={"after": after.isoformat()},
        idle_reason="no rolled-up day received late events since the last tick",
        timezones=valid_timezones(context))
