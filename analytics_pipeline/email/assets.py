
"""The email pipelines' Dagster assets: landed Mailgun events, the daily matched events and
rollups per ``date|timezone``, recipient states and statistics. Built per pipeline by
factories; every name they produce is listed in ``names.py``.
"""

import time
from datetime import datetime, timezone

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    AutomationCondition,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)
from pydantic import Field

from analytics_pipeline.core.accounts import accounts
from analytics_pipeline.core.assets import (
    OWNERS,
    add_partition_metadata,
    partition_days,
    require_current_landings,
    rollup_check_specs,
    rollup_result,
)
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.resources import Landing, PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.email.metrics import EMAIL_PIPELINES, EmailPipeline
from analytics_pipeline.email.resources import Mailgun
from analytics_pipeline.email.source import EmailSource
from analytics_pipeline.email.state import refresh_email_state
from analytics_pipeline.email.steps import (
    email_landing_source,
    extract_email_partition,
    fetch_provider_events,
    rollup_email_partition,
)

# Recipient states and stats are refreshed every 15 minutes by declarative automation, once
# the pipeline's Mailgun fetch has landed something since the tick (nothing to fold else).
STATS_REFRESH = AutomationCondition.on_cron("*/15 * * * *")


class MailgunFetchConfig(Config):
    until: float | None = Field(
        default=None,
        description="End of the fresh pass (epoch seconds); the sensor sets it, a manual "
        "run defaults to now minus the configured lag.",
    )


# 3,000 buckets = a month of events in every quarter hour; beyond, the span is used.
MAX_BUCKETS_IN_METADATA = 3000


def mailgun_events_asset(pipeline: EmailPipeline):
    """The landed Mailgun events of one pipeline, appended by each polling run."""

    @asset(
        name=pipeline.names.fetched_asset,
        group_name=pipeline.names.group,
        owners=OWNERS,
        kinds={"parquet", "api"},
        description=f"Mailgun events of {pipeline.name} emails (tags "
        f"`{pipeline.default_tags}` by default), fetched by a fresh and a settling pass and "
        "landed as Parquet, de-duplicated by event id on read. Landing keeps them past "
        "Mailgun's retention.",
    )
    def _asset(
        context: AssetExecutionContext,
        config: MailgunFetchConfig,
        mailgun: Mailgun,
        warehouse: Warehouse,
        landing: Landing,
    ) -> MaterializeResult:
        now = time.time()
        until = config.until if config.until is not None else now - mailgun.lag_seconds
        r = fetch_provider_events(
            mailgun.client(), ProviderEventLog(landing.uri, pipeline.stream),
            warehouse.engine(), pipeline, mailgun.tags_for(pipeline.name), until, now,
            settle_seconds=mailgun.settle_minutes * 60,
            initial_lookback_seconds=mailgun.initial_lookback_hours * 3600,
            reconcile_every_seconds=mailgun.reconcile_every_minutes * 60,
            retention_seconds=mailgun.retention_hours * 3600,
        )
        if r.malformed:
            context.log.warning(f"{r.malformed} malformed Mailgun items quarantined")
        for label, stats in r.passes.items():
            if label != "fresh" and stats.stored:
                context.log.warning(
                    f"the {label} pass stored {stats.stored} events the earlier passes had "
                    f"missed (up to {stats.max_lateness_seconds / 60:.0f} minutes late)")

        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, timezone.utc).isoformat()

        buckets = r.buckets
        per_pass = {}
        for label, stats in r.passes.items():
            # flat numbers, so that the UI plots them run after run
            per_pass[f"{label}_items_read"] = stats.items_read
            per_pass[f"{label}_events_stored"] = stats.stored
            per_pass[f"{label}_max_lateness_seconds"] = round(
                float(stats.max_lateness_seconds or 0.0), 1)
        return MaterializeResult(metadata={
            "events_fetched": r.fetched,
            **per_pass,
            "reconciliation": "ran" if r.reconciled else "not due",
            "last_reconciliation": MetadataValue.timestamp(r.reconciled_at)
            if r.reconciled_at else MetadataValue.text("never"),
            "files_landed": r.landed_files,
            "log_dates_compacted": len(r.compacted),
            "log_files_compacted": sum(c.files_replaced for c in r.compacted),
            "malformed_quarantined": r.malformed,
            "windows": MetadataValue.json([[w, iso(b), iso(e)] for w, b, e in r.windows]),
            "fresh_until": MetadataValue.timestamp(r.fresh_until),
            # read by the late-events sensor: the 15-minute UTC buckets of the events this
            # run stored (epoch // 900; left out when too many) and their span (epoch seconds)
            **({"event_buckets_15m": MetadataValue.json(buckets)}
               if len(buckets) <= MAX_BUCKETS_IN_METADATA else {}),
            **({"event_time_min": MetadataValue.timestamp(r.event_time_min),
                "event_time_max": MetadataValue.timestamp(r.event_time_max)}
               if r.event_time_min is not None else {}),
            "settled_until": MetadataValue.timestamp(r.settled_until),
            "domain": mailgun.domain,
        })

    return _asset


mailgun_event_assets = {p.name: mailgun_events_asset(p) for p in EMAIL_PIPELINES}


def email_assets(pipeline: EmailPipeline) -> list:
    """The daily extraction, the rollups and the statistics of one email pipeline."""
    p = pipeline.name
    n = pipeline.names
    fetched, raw_name, rollups_name, group = (n.fetched_asset, n.raw_asset, n.rollups_asset,
                                              n.group)

    @asset(
        name=raw_name, group_name=group, owners=OWNERS, kinds={"parquet"},
        deps=[fetched, accounts], partitions_def=daily_timezone_partitions,
        backfill_policy=BackfillPolicy.single_run(),
        description=f"Mailgun events of {p} emails over the partition's local day, matched "
        "to their recipient (message id + address) and account; unmatched events are "
        "quarantined by the default timezone's partitions.",
    )
    def raw_email_events(
        context: AssetExecutionContext, source_db: SourceDatabase, warehouse: Warehouse,
        landing: Landing, settings: PipelineSettings,
    ) -> MaterializeResult:
        log = ProviderEventLog(landing.uri, pipeline.stream)
        store, engine = landing.store(), warehouse.engine()
        default_tz = settings.validated_default_timezone()
        days = partition_days(context)
        results = [
            extract_email_partition(log, EmailSource(source_db.url), store, engine, pipeline,
                                    day, default_tz)
            for day in days
        ]
        add_partition_metadata(context, [(day, {
            "dagster/row_count": r.matched,
            "events_in_window": r.events,
            "events_in_other_timezone": r.other_timezone,
            "events_quarantined": r.quarantined,
        }) for day, r in zip(days, results, strict=True)], run_totals={
            "partitions": len(results),
            "events_in_window": sum(r.events for r in results),
            "events_landed": sum(r.matched for r in results),
            "events_quarantined": sum(r.quarantined for r in results),
        })
        return MaterializeResult()

    specs = rollup_check_specs(rollups_name, "the landed events")

    @asset(
        name=rollups_name, group_name=group, owners=OWNERS, kinds={"sql", "pyarrow"},
        deps=[raw_name], partitions_def=daily_timezone_partitions,
        backfill_policy=BackfillPolicy.single_run(), check_specs=specs,
        description=f"daily_rollups rows of {p} email metrics (dimensions account, email"
        + (", automation" if p == "automation" else "") + ") on the event's local date.",
    )
    def email_rollups(
        context: AssetExecutionContext, warehouse: Warehouse, landing: Landing
    ) -> MaterializeResult:
        store, engine = landing.store(), warehouse.engine()
        days = partition_days(context)
        require_current_landings(store, engine, days, email_landing_source(pipeline))
        results = [rollup_email_partition(store, engine, pipeline, d) for d in days]
        return rollup_result(context, days, results, {"warehouse": warehouse.display_url})

    states_key, stats_key = n.states_asset, n.stats_asset

    @multi_asset(
        name=n.statistics_op,
        group_name=group,
        specs=[
            AssetSpec(states_key, deps=[fetched], owners=OWNERS, kinds={"sql", "pyarrow"},
                      automation_condition=STATS_REFRESH,
                      description=f"Per recipient of {p} emails: first delivered, opened, "
                      "clicked, unsubscribed, complained; permanent failure (never "
                      "downgraded by a temporary one) and temporary failures."),
            AssetSpec(stats_key, deps=[states_key], owners=OWNERS, kinds={"sql"},
                      automation_condition=STATS_REFRESH,
                      description=f"Per {p} email"
                      + (" and per automation" if p == "automation" else "")
                      + ": sent, delivered, opened, clicked, failed, unsubscribed, "
                      "complained, open rate (tracked emails, at least 5 recipients); per "
                      "member: emails, opened, open rate."),
        ],
    )
    def statistics(source_db: SourceDatabase, warehouse: Warehouse, landing: Landing):
        # Incremental: folds only the log files landed since the last refresh (the fetch
        # journals them), and rewrites only the stats of what they touched. The first
        # refresh of a pipeline is a full rebuild; `rebuild_email_state` is the repair path.
        r = refresh_email_state(ProviderEventLog(landing.uri, pipeline.stream),
                                EmailSource(source_db.url), warehouse.engine(), pipeline.name,
                                discover=False)
        yield MaterializeResult(asset_key=states_key, metadata={
            "refresh": r.mode, "log_files_folded": r.files, "events_read": r.events,
            "events_matched": r.matched, "events_waiting_for_recipient": r.unmatched,
            "new_recipients": r.new_recipients, "recipients_touched": r.recipients_touched,
            "seconds": round(r.seconds, 3)})
        yield MaterializeResult(asset_key=stats_key, metadata={
            "email_rows_written": r.emails, "automation_rows_written": r.automations,
            "member_rows_written": r.members})

    return [raw_email_events, email_rollups, statistics]


email_pipeline_assets = {p.name: email_assets(p) for p in EMAIL_PIPELINES}
