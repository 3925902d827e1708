"""The campaign-dispatch source's Dagster assets: the broker's messages landed by each
consumption run, the campaigns' progress refreshed after it (with its checks), and the
daily_rollups metrics of each local day's tracked reports."""

from datetime import datetime, timedelta, timezone

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from analytics_pipeline.campaigns.progress import (
    CHECK_COUNTS_AGREE,
    CHECK_NO_DOUBLE_SENDS,
    CHECK_NOT_STUCK,
    CHECK_SEVERITY,
    CHECK_WITHIN_AUDIENCE,
)
from analytics_pipeline.campaigns.resources import CampaignBroker
from analytics_pipeline.campaigns.source import CampaignSource
from analytics_pipeline.campaigns.steps import (
    OFFENDERS_LISTED,
    campaign_log,
    check_offenders,
    consume_messages,
    refresh_progress,
    rollup_campaign_partition,
)
from analytics_pipeline.core.accounts import accounts
from analytics_pipeline.core.assets import (
    OWNERS,
    RangeLog,
    by_reason,
    partition_days,
    rollup_check_specs,
    rollup_result,
    table_metadata,
)
from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.resources import Landing, SourceDatabase, Warehouse

GROUP = "campaigns"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@asset(
    name="campaign_messages",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "rabbitmq"},
    description="The application's campaign messages (campaigns.send, campaigns.tracked) "
    "taken from the pipeline's own durable RabbitMQ queue: each run drains at most "
    "ANALYTICS_CAMPAIGN_MAX_MESSAGES deliveries with manual acknowledgements, lands each "
    "batch durably (fsynced Parquet, one folder per UTC date of receipt) and only then "
    "acknowledges it, so a crash loses nothing (the broker delivers again; a message "
    "landed twice counts once). Malformed messages are quarantined (source "
    "campaign_messages) and acknowledged, never requeued.",
)
def campaign_messages(
    context: AssetExecutionContext,
    campaign_broker: CampaignBroker,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    landing: Landing,
) -> MaterializeResult:
    r = consume_messages(
        campaign_broker.require_url(), campaign_broker.queue, campaign_log(landing.uri),
        warehouse.engine(), CampaignSource(source_db.url), campaign_broker.max_messages,
        context.run_id, lambda: _utcnow(), exchange=campaign_broker.exchange)
    d = r.drain
    context.log.info(f"{d.received} deliveries landed and acknowledged in {d.batches} "
                     f"batch(es) from {campaign_broker.queue} ({d.stopped_by}; "
                     f"{d.redelivered} redelivered)")
    if r.quarantined_by_reason:
        context.log.warning(f"malformed messages quarantined (and acknowledged): "
                            f"{r.quarantined_by_reason}")
    for problem, n in r.source_problems.items():
        context.log.warning(f"application database: {n} campaign row(s): {problem}")
    for warning in r.warnings:
        context.log.warning(warning)
    reports = {}
    # read by late_campaign_reports_sensor: the local dates, per timezone of their accounts,
    # of the reports this run landed (else the span of their instants, in every timezone)
    if r.report_dates is not None:
        reports["report_dates_by_timezone"] = MetadataValue.json(r.report_dates)
    if r.report_span is not None:
        reports["report_time_min"] = MetadataValue.timestamp(r.report_span[0])
        reports["report_time_max"] = MetadataValue.timestamp(r.report_span[1])
    return MaterializeResult(metadata={
        "dagster/row_count": d.landed,
        **d.metadata(),
        "sends": r.sends,
        "tracked": r.tracked,
        "quarantined": sum(r.quarantined_by_reason.values()),
        "quarantined_by_reason": by_reason(r.quarantined_by_reason),
        "landed_dates": MetadataValue.json([x.isoformat() for x in d.dates]),
        **reports,
        "warnings": MetadataValue.json(r.warnings),
        "queue": campaign_broker.queue,
        "broker": campaign_broker.display_url,
    })


progress_check_specs = [
    AssetCheckSpec(
        CHECK_NOT_STUCK, asset="campaign_progress", blocking=False,
        description="No published page of a refreshed campaign has waited longer than "
        "ANALYTICS_CAMPAIGN_STUCK_MINUTES (15) for its tracked report; fails with severity "
        "WARN, listing the stuck campaigns."),
    AssetCheckSpec(
        CHECK_NO_DOUBLE_SENDS, asset="campaign_progress", blocking=False,
        description="No contact may have received a campaign twice (on two pages, on a page "
        "published and reported sent twice, or marked SENT after several attempts); fails "
        "with severity ERROR, listing the contacts."),
    AssetCheckSpec(
        CHECK_COUNTS_AGREE, asset="campaign_progress", blocking=False,
        description="A completed campaign's tracked sent and failed counts equal its "
        "contacts' SENT and FAILED statuses; fails with severity ERROR, listing the "
        "campaigns."),
    AssetCheckSpec(
        CHECK_WITHIN_AUDIENCE, asset="campaign_progress", blocking=False,
        description="Sent + failed never exceeds a campaign's audience; fails with severity "
        "ERROR, listing the campaigns."),
]


class ProgressRefreshConfig(Config):
    """How much a progress refresh recomputes."""

    full: bool = Field(
        default=False,
        description="recompute every campaign with a message in the window (after the "
        "application corrected contact statuses, say), not only those with new messages")


@asset(
    name="campaign_progress",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "pyarrow"},
    deps=[campaign_messages],
    check_specs=progress_check_specs,
    description="campaign_progress and campaign_double_sends, refreshed after each "
    "consumption: per campaign, its audience, pages expected/published/tracked, duplicate "
    "pages and reports, sent/failed (each page by its first report), contacts by status "
    "and their disagreement with the reports, completed, progress, first publication, last "
    "report, send rate, stuck pages; and the contacts possibly sent twice. Each message is "
    "parsed once, by the consumption that landed it; a refresh recomputes the campaigns "
    "with messages landed since the last one, each from all its messages landed on the "
    "last ANALYTICS_CAMPAIGN_PROGRESS_DAYS (30) UTC dates and the application database "
    "(config full: every campaign of the window), and evaluates again whether the pages of "
    "open campaigns without new messages are stuck; the others keep their rows. The checks "
    "look at every campaign of the window.",
)
def campaign_progress(
    context: AssetExecutionContext,
    config: ProgressRefreshConfig,
    campaign_broker: CampaignBroker,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    landing: Landing,
) -> MaterializeResult:
    now = _utcnow()
    r = refresh_progress(
        campaign_log(landing.uri), CampaignSource(source_db.url), warehouse.engine(), now,
        campaign_broker.progress_days, campaign_broker.batch_size,
        timedelta(minutes=campaign_broker.stuck_minutes), full=config.full)
    for problem, n in r.source_problems.items():
        context.log.warning(f"application database: {n} row(s): {problem}")
    if r.files_parsed_late:
        context.log.warning(f"{r.files_parsed_late} landed file(s) without a parse are "
                            "parsed now (a consumption that died after landing them, or "
                            "files landed before messages were parsed at consumption)")
    if r.quarantine_rows_added:
        context.log.warning(f"{r.quarantine_rows_added} malformed message(s) landed without "
                            "being quarantined (a consumption that died after landing) are "
                            "quarantined now")
    p = r.progress
    context.log.info(f"{r.campaigns} of {r.campaigns_in_window} campaign(s) recomputed "
                     f"({r.files_new} new parsed file(s)), {r.campaigns_rechecked} open one(s) "
                     f"checked for stuck pages; the window's messages came in "
                     f"{r.deliveries} deliveries landed {r.days[0]}..{r.days[-1]}")
    stuck = int(sum(p["stuck"].to_pylist()))
    completed = int(sum(p["completed"].to_pylist()))
    offenders = check_offenders(p, r.double_sends)
    checks = []
    for name, problems in r.checks.items():
        severity = AssetCheckSeverity[CHECK_SEVERITY[name]]
        checks.append(AssetCheckResult(
            check_name=name, passed=not problems, severity=severity,
            metadata={"failing": len(problems),
                      "problems": MetadataValue.json(problems[:OFFENDERS_LISTED]),
                      "first_offenders": table_metadata(offenders[name],
                                                        limit=OFFENDERS_LISTED),
                      "campaigns_checked": r.campaigns_in_window}))
    preview = p.sort_by([("stuck", "descending"), ("last_reported_at", "descending")]) \
        .select(["campaign_id", "account_id", "channel", "audience", "pages_expected",
                 "pages_published", "pages_tracked", "sent", "failed", "progress",
                 "completed", "stuck", "double_sends"]).slice(0, 20).to_pylist()
    return MaterializeResult(metadata={
        "dagster/row_count": r.campaigns_in_window,
        "campaigns_refreshed": r.campaigns,
        "campaigns_stuck_rechecked": r.campaigns_rechecked,
        "full_refresh": config.full,
        "parsed_files_new": r.files_new,
        "files_parsed_late": r.files_parsed_late,
        "campaigns_completed": completed,
        "campaigns_stuck": stuck,
        "double_send_rows": r.double_sends.num_rows,
        "deliveries_read": r.deliveries,
        "sends": r.sends,
        "tracked": r.tracked,
        "quarantined_in_window": r.quarantined,
        "window_utc_dates": f"{r.days[0]}..{r.days[-1]}",
        "stuck_after_minutes": campaign_broker.stuck_minutes,
        "preview": table_metadata([{**row, "progress": round(row["progress"], 4)}
                                   for row in preview]),
        "warehouse": warehouse.display_url,
    }, check_results=checks)




@asset(
    name="campaign_rollups",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "pyarrow"},
    deps=[campaign_messages, accounts],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=rollup_check_specs("campaign_rollups", "the same tracked reports"),
    description="daily_rollups rows of campaign_sent, campaign_failed (contacts, read as "
    "sums) and campaign_pages_tracked (dimensions account, campaign, channel) for the "
    "accounts of the partition's timezone: each tracked page once, by its first report, "
    "on the local date the sender reported it. Counts the reports landed from the UTC date "
    "before the day up to ANALYTICS_CAMPAIGN_LATE_DAYS (3) after it; "
    "late_campaign_reports_sensor re-runs a closed day that later reports fall on. Each "
    "partition replaces its slice in one transaction.",
)
def campaign_rollups(
    context: AssetExecutionContext,
    campaign_broker: CampaignBroker,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    landing: Landing,
) -> MaterializeResult:
    log, engine = campaign_log(landing.uri), warehouse.engine()
    source = CampaignSource(source_db.url)
    days = partition_days(context)
    progress = RangeLog(context, days, "campaign_rollups", unit="tracked pages")
    results = []
    for day in days:
        r = rollup_campaign_partition(log, source, engine, day, campaign_broker.late_days)
        for why, n in r.ignored_by_name.items():
            context.log.warning(f"{r.key}: {n} {why} (not rolled up)")
        progress.partition(f"{r.key}: {r.rolled_up} tracked pages → {r.rows_written} "
                           f"rollup rows (replaced {r.rows_replaced})", r.rolled_up)
        results.append(r)
    progress.summary(tracked_pages=sum(r.rolled_up for r in results),
                     rows_written=sum(r.rows_written for r in results))
    return rollup_result(context, days, results, {
        "warehouse": warehouse.display_url, "late_days": campaign_broker.late_days})
