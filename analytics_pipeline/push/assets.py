"""The push source's Dagster assets: landed pushes, their daily_rollups metrics, the PostHog
activity around each delivered push, and the impact statistics, with their checks."""

from datetime import timedelta

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from analytics_pipeline.core.accounts import accounts
from analytics_pipeline.core.assets import (
    OWNERS,
    RangeLog,
    add_partition_metadata,
    by_reason,
    partition_days,
    require_current_landings,
    rollup_check_specs,
    rollup_result,
    table_metadata,
)
from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.resources import Landing, PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.push.activity import EventFilter
from analytics_pipeline.push.automations import load_automations
from analytics_pipeline.push.contract import PUSH_SOURCE
from analytics_pipeline.push.resources import PostHog, PushSettings
from analytics_pipeline.push.source import PushSource
from analytics_pipeline.push.steps import (
    compute_push_impact,
    extract_push_partition,
    fetch_push_activity,
    rollup_push_partition,
)

GROUP = "push_impact"
PUSH_USERS_MAPPED = "users_mapped_to_posthog"


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "sql"},
    deps=[accounts],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    description="Push notifications of the partition's accounts sent in the exact UTC window "
    "of their local day, de-duplicated by id, validated against the accounts' users "
    "(unknown users, unknown statuses, delivered before sent, timestamps in the future go "
    "to quarantine) and landed as Parquet with each push's anchor (delivered_at, else "
    "sent_at).",
)
def raw_push_notifications(
    context: AssetExecutionContext,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    landing: Landing,
    settings: PipelineSettings,
) -> MaterializeResult:
    source = PushSource(source_db.url, fallback_date=settings.first_date)
    store, engine = landing.store(), warehouse.engine()
    default_tz = settings.validated_default_timezone()
    days = partition_days(context)
    log = RangeLog(context, days, "raw_push_notifications", unit="pushes")
    results = []
    for day in days:
        r = extract_push_partition(source, store, engine, day, default_tz)
        log.partition(f"{r.key}: landed {r.rows} pushes of {r.accounts} accounts "
                      f"({r.window})", r.rows)
        if r.duplicates_dropped:
            context.log.warning(f"{r.key}: {r.duplicates_dropped} rows repeated a push id "
                                "and were dropped")
        if r.users_skipped:
            context.log.warning(f"{r.key}: {r.users_skipped} user rows of the accounts are "
                                "no usable user (bad or repeated id, bad text) and were "
                                "skipped; their pushes are quarantined as unknown_user")
        results.append(r)
    log.summary(pushes_landed=sum(r.rows for r in results))
    add_partition_metadata(context, [(day, {
        "dagster/row_count": r.rows,
        "accounts": r.accounts,
        "valid_pushes": r.rows - r.invalid_rows,
        "rows_landed_for_quarantine": r.invalid_rows,
        "invalid_by_reason": by_reason(r.invalid_by_reason),
        "duplicate_ids_dropped": r.duplicates_dropped,
        "user_rows_skipped": r.users_skipped,
        "landing_path": MetadataValue.path(r.path),
    }) for day, r in zip(days, results, strict=True)], run_totals={
        "partitions": len(results),
        "rows": sum(r.rows for r in results),
        "rows_landed_for_quarantine": sum(r.invalid_rows for r in results),
    }, shared={"landing": store.base, "source": source_db.display_url})
    return MaterializeResult()




@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "pyarrow"},
    deps=[raw_push_notifications],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=rollup_check_specs("push_rollups", "the landed pushes"),
    description="daily_rollups rows of push_sent, push_delivered and push_failed (dimensions "
    "account, campaign, automation) for the partition's accounts; invalid pushes go to "
    "quarantine. Each partition replaces its slice in one transaction.",
)
def push_rollups(
    context: AssetExecutionContext, warehouse: Warehouse, landing: Landing,
    push_settings: PushSettings,
) -> MaterializeResult:
    store, engine = landing.store(), warehouse.engine()
    days = partition_days(context)
    require_current_landings(store, engine, days, PUSH_SOURCE)
    definitions = load_automations(push_settings.automations_dir)
    for problem in definitions.problems:
        context.log.warning(f"automation definitions: {problem}")
    log = RangeLog(context, days, "push_rollups", unit="pushes")
    results = []
    for day in days:
        r = rollup_push_partition(store, engine, day, definitions)
        if r.quarantined_by_reason:
            context.log.warning(f"{r.key}: quarantined {r.quarantined_by_reason}")
        log.partition(f"{r.key}: {r.rolled_up} pushes → {r.rows_written} rollup rows "
                      f"(replaced {r.rows_replaced})", r.events)
        results.append(r)
    log.summary(pushes_rolled_up=sum(r.rolled_up for r in results),
                rows_written=sum(r.rows_written for r in results))
    return rollup_result(context, days, results, {
        "warehouse": warehouse.display_url,
        "automation_definitions": len(definitions.by_id),
        "automation_definition_problems": MetadataValue.json(definitions.problems)})


push_activity_check_specs = [
    AssetCheckSpec(
        PUSH_USERS_MAPPED, asset="push_activity", blocking=False,
        description="Per account, the share of users with a delivered push that were mapped "
        "to a PostHog person (by posthog_distinct_id, else by email) is at least "
        "ANALYTICS_PUSH_MIN_MAPPING_RATE (95%); fails with severity ERROR below it, listing "
        "the unmapped users."),
]


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "posthog"},
    deps=[raw_push_notifications],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=push_activity_check_specs,
    description="Each delivered push's user activity in PostHog before [t − W, t) and after "
    "[t, t + W) the push (events and active hours, every window W), and the same windows of "
    "each campaign's comparison users; users mapped to persons (stored and reused), "
    "aggregated inside PostHog (one row per person and push, ≤ 2,000 pairs a query), "
    "landed as Parquet so the statistics never ask PostHog again.",
)
def push_activity(
    context: AssetExecutionContext,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    landing: Landing,
    settings: PipelineSettings,
    posthog: PostHog,
    push_settings: PushSettings,
) -> MaterializeResult:
    source = PushSource(source_db.url, fallback_date=settings.first_date)
    store, engine = landing.store(), warehouse.engine()
    days = partition_days(context)
    require_current_landings(store, engine, days, PUSH_SOURCE)
    client = posthog.client()
    windows = push_settings.windows()
    results = []
    for day in days:
        r = fetch_push_activity(
            source, store, engine, client, day, windows,
            event_filter=EventFilter.parse(push_settings.events),
            comparison=push_settings.comparison(),
            refresh_after=timedelta(days=push_settings.mapping_refresh_days),
            batch=push_settings.batch_users, activity_batch=push_settings.activity_batch)
        context.log.info(f"{r.key}: {r.pushes_analysed} pushes and {r.comparison_users} "
                         f"comparison users analysed; PostHog so far: {r.queries} queries, "
                         f"{r.rows_received} rows")
        results.append(r)
    stats = client.stats.as_dict()
    add_partition_metadata(context, [(day, {
        "dagster/row_count": r.rows,
        "pushes_analysed": r.pushes_analysed,
        "comparison_users": r.comparison_users,
        "mapping_methods": by_reason(r.methods, "method", "users"),
        "landing_path": MetadataValue.path(r.path),
    }) for day, r in zip(days, results, strict=True)], run_totals={
        "partitions": len(results),
        "posthog_queries": stats["queries"],
        "posthog_rows": stats["rows"],
        "posthog_retries": stats["retries"],
        "posthog_wait_seconds": round(stats["wait_seconds"], 1),
    }, shared={"posthog": posthog.host,
               "analysis_windows_hours": MetadataValue.json(windows)})
    return MaterializeResult(check_results=[mapping_check(results,
                                                          push_settings.min_mapping_rate)])


def mapping_check(results: list, threshold: float) -> AssetCheckResult:
    """The mapping rate of every account of the run's partitions against ``threshold``."""
    per_account: dict[int, dict] = {}
    for r in results:
        for account, m in r.mapping.items():
            acc = per_account.setdefault(account, {"users": 0, "mapped": 0, "unmapped": []})
            acc["users"] += m["users"]
            acc["mapped"] += m["mapped"]
            acc["unmapped"] += [(r.key, u) for u in m["unmapped_user_ids"]]
    rows, unmapped, failing = [], [], []
    for account, acc in sorted(per_account.items()):
        rate = acc["mapped"] / acc["users"] if acc["users"] else 1.0
        rows.append({"account_id": account, "users": acc["users"], "mapped": acc["mapped"],
                     "mapping_rate": round(rate, 4)})
        if rate < threshold:
            failing.append(account)
        unmapped += [{"account_id": account, "partition": key, "user_id": u}
                     for key, u in acc["unmapped"]]
    return AssetCheckResult(
        check_name=PUSH_USERS_MAPPED, passed=not failing, severity=AssetCheckSeverity.ERROR,
        metadata={"threshold": threshold, "accounts_below": MetadataValue.json(failing),
                  "mapping_rate_by_account": table_metadata(rows, limit=50),
                  "unmapped_users": table_metadata(unmapped, limit=100),
                  "unmapped_total": len(unmapped)})


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "scipy"},
    deps=[push_activity, push_rollups],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    description="push_impact_daily: per campaign and automation of the partition's send date, "
    "window and activity measure, users analysed, mapping rate, mean activity before and "
    "after, paired difference and relative lift with 95% intervals, paired t-test and "
    "Wilcoxon p-values, share inactive in both windows, significance at "
    "ANALYTICS_PUSH_ALPHA, and the difference in differences against the comparison users. "
    "Computed from the landed answers only (never from PostHog).",
)
def push_impact(
    context: AssetExecutionContext, warehouse: Warehouse, landing: Landing,
    push_settings: PushSettings,
) -> MaterializeResult:
    store, engine = landing.store(), warehouse.engine()
    days = partition_days(context)
    results = []
    for day in days:
        r = compute_push_impact(store, engine, day, push_settings.windows(),
                                push_settings.alpha)
        context.log.info(f"{r.key}: {r.groups} campaigns and automations, {r.significant} "
                         "significant (events)")
        results.append(r)
    add_partition_metadata(context, [(day, {
        "dagster/row_count": r.rows_written,
        "groups": r.groups,
        "significant": r.significant,
        "rows_replaced": r.rows_replaced,
        # one row per group and window for the events measure (active hours: the table)
        "preview_events_measure": table_metadata(r.preview),
    }) for day, r in zip(days, results, strict=True)], run_totals={
        "partitions": len(results),
        "rows_written": sum(r.rows_written for r in results),
    }, shared={"warehouse": warehouse.display_url, "alpha": push_settings.alpha})
    return MaterializeResult()
