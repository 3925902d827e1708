"""The campaign source's sensors: the broker sensor that launches a consumption run while
messages are pending, and the late-reports sensor that re-runs the rollups of closed days
that newly landed reports fall on.

Custom sensors: the broker's queue is no Dagster asset (the sensor asks RabbitMQ how many
messages are ready, consuming nothing), and the late reports' days are known only from
what each consumption landed (its materialization's ``report_dates_by_timezone``).
"""

import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta, timezone

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    sensor,
)

from analytics_pipeline.campaigns.broker import (
    BrokerUnavailable,
    QueueNotFound,
    connect,
    declare,
    pending_messages,
)
from analytics_pipeline.campaigns.jobs import (
    CAMPAIGN_STREAM,
    campaign_consumption_job,
    campaign_rollups_job,
)
from analytics_pipeline.campaigns.resources import (
    BROKER_URL,
    CampaignBroker,
    broker_configured_in_env,
)
from analytics_pipeline.core.partitions import LocalDay, last_closed_day, local_date_of
from analytics_pipeline.core.resources import PipelineSettings
from analytics_pipeline.core.scheduling import request_late_partitions, skip, valid_timezones
from analytics_pipeline.email.sensors import fetch_runs_in_flight

MESSAGES_KEY = AssetKey("campaign_messages")
# A consumption run drains for about a minute; one in flight for longer than this is
# presumed dead (run monitoring fails it) and no longer holds back the next one.
CONSUMPTION_STALE_MINUTES = 30
LATE_CAMPAIGN_REQUESTS_PER_TICK = 100
LATE_CONSUMPTIONS_PER_TICK = 2000  # materializations read in one tick; the rest the next


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def broker_default_status() -> tuple[DefaultSensorStatus, str]:
    """The default status of the sensors that need the broker, decided when the code
    location loads, and the sentence of their description that says so."""
    if broker_configured_in_env():
        return DefaultSensorStatus.RUNNING, (
            f" Running by default: {BROKER_URL} was set when the code location loaded.")
    return DefaultSensorStatus.STOPPED, (
        f" Stopped by default: {BROKER_URL} was not set when the code location loaded; set "
        "it, reload the code location and it runs (or start it here).")


def build_campaign_broker_sensor():
    """A light sensor: it asks the broker how many messages are ready (a passive declare,
    nothing consumed) and launches a consumption run; the run drains, lands, acknowledges
    and refreshes the progress."""
    status, why = broker_default_status()

    @sensor(
        name="campaign_broker_sensor",
        job=campaign_consumption_job,
        minimum_interval_seconds=30,
        default_status=status,
        description="Launches a campaign consumption run when the pipeline's RabbitMQ queue "
        "holds ready messages (counted without consuming them) and no consumption run is in "
        "flight; declares the queue if it does not exist yet." + why,
    )
    def campaign_broker_sensor(context: SensorEvaluationContext,
                               campaign_broker: CampaignBroker):
        if not campaign_broker.configured:
            return skip(context, f"RabbitMQ is not configured: set {BROKER_URL}")
        now = _utcnow()
        blocking, stale = fetch_runs_in_flight(
            context.instance, campaign_consumption_job.name, now,
            timedelta(minutes=CONSUMPTION_STALE_MINUTES))
        if blocking:
            run_id, run_status, age = blocking[0]
            return skip(context, f"run {run_id} is still consuming ({run_status}, for "
                        f"{age.total_seconds() / 60:.0f} minutes)")
        if stale:
            context.log.warning(
                f"consumption run(s) {', '.join(r for r, _, _ in stale)} in flight for longer "
                f"than {CONSUMPTION_STALE_MINUTES} minutes: presumed dead (run monitoring "
                "marks them failed), no longer blocking the queue")
        queue = campaign_broker.queue
        try:
            ready = pending_messages(campaign_broker.url, queue)
        except QueueNotFound:
            # bound now, so the application's messages are kept from here on
            with connect(campaign_broker.url) as connection:
                declare(connection.channel(), queue, campaign_broker.exchange)
            return skip(context, f"queue {queue} did not exist: declared it, bound to "
                        "campaigns.send and campaigns.tracked; nothing pending yet")
        except BrokerUnavailable as exc:  # the message names the URL redacted
            return skip(context, str(exc))
        if not ready:
            return skip(context, f"no message pending in queue {queue}")
        context.log.info(f"{ready} message(s) pending in queue {queue}")
        tags = {"analytics/stream": CAMPAIGN_STREAM, "analytics/pending": str(ready)}
        if stale:
            tags["analytics/stale_consumption_runs"] = ",".join(r for r, _, _ in stale)
        return RunRequest(run_key=f"campaign_consumption:{now.isoformat()}", tags=tags)

    return campaign_broker_sensor


def report_days(metadata: Mapping, timezones: Iterable[str]) -> list[LocalDay]:
    """The local days (of the given timezones) that a consumption's landed reports fall
    on, from its materialization's ``report_dates_by_timezone``; when the run could not
    work them out, every local day of every timezone that the span of its reports'
    instants (``report_time_min``/``_max``) touches."""
    usable = sorted(set(timezones))
    entry = metadata.get("report_dates_by_timezone")
    if entry is not None:
        days = [LocalDay(date.fromisoformat(d), tz) for tz, dates in (entry.value or {}).items()
                if tz in usable for d in dates]
        return sorted(days, key=lambda x: (x.day, x.tz))
    lo, hi = metadata.get("report_time_min"), metadata.get("report_time_max")
    if lo is None or hi is None:
        return []  # no report landed
    first = datetime.fromtimestamp(float(lo.value), timezone.utc)
    last = datetime.fromtimestamp(float(hi.value), timezone.utc)
    days = []
    for tz in usable:
        d, end = local_date_of(first, tz), local_date_of(last, tz)
        while d <= end:
            days.append(LocalDay(d, tz))
            d += timedelta(days=1)
    return sorted(days, key=lambda x: (x.day, x.tz))


def _late_cursor(raw: str | None) -> tuple[int | None, dict[str, int]]:
    """(last consumption storage id seen, {partition key: storage id of the newest
    consumption that touched it} still to request)."""
    if not raw:
        return None, {}
    state = json.loads(raw)
    return state.get("after"), {k: int(v) for k, v in state.get("pending", {}).items()}


def build_late_campaign_reports_sensor():
    """When a consumption lands reports of a closed local day, re-run that day's rollups."""
    status, why = broker_default_status()

    @sensor(
        name="late_campaign_reports_sensor",
        job=campaign_rollups_job,
        minimum_interval_seconds=60,
        default_status=status,
        description="Re-materializes the campaign rollups of closed local days (date|timezone, "
        "closed plus ANALYTICS_CLOSE_GRACE_MINUTES) that the tracked reports landed by each "
        "consumption run since the last tick fall on (a backlog consumed late), at most "
        f"{LATE_CAMPAIGN_REQUESTS_PER_TICK} per tick (the rest follow); a first start begins "
        "after the newest consumption." + why,
    )
    def late_campaign_reports_sensor(context: SensorEvaluationContext,
                                     settings: PipelineSettings):
        after, pending = _late_cursor(context.cursor)
        if after is None:
            newest = context.instance.fetch_materializations(MESSAGES_KEY, limit=1).records
            after = newest[0].storage_id if newest else 0
        timezones = valid_timezones(context)
        now = _utcnow()
        closed: dict[str, date] = {}
        read = 0
        while read < LATE_CONSUMPTIONS_PER_TICK:
            page = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=MESSAGES_KEY, after_storage_id=after),
                limit=min(200, LATE_CONSUMPTIONS_PER_TICK - read), ascending=True)
            for record in page.records:
                mat = record.event_log_entry.asset_materialization
                for day in report_days(mat.metadata if mat else {}, timezones):
                    if day.tz not in closed:
                        closed[day.tz] = last_closed_day(now, day.tz, settings.grace)
                    # a day not closed yet is requested by the closed-days sensor when it
                    # closes; one before the first partition has none
                    if settings.first_date <= day.day <= closed[day.tz]:
                        pending[day.key] = record.storage_id  # the newest consumption wins
                after = record.storage_id
            read += len(page.records)
            if not page.has_more:
                break
        return request_late_partitions(
            context, pending, LATE_CAMPAIGN_REQUESTS_PER_TICK,
            run_key=lambda key, storage_id: f"late-campaigns:{storage_id}:{key}",
            cursor_state={"after": after},
            idle_reason="no closed day received a campaign report since the last tick",
            timezones=timezones)

    return late_campaign_reports_sensor


campaign_broker_sensor = build_campaign_broker_sensor()
late_campaign_reports_sensor = build_late_campaign_reports_sensor()
