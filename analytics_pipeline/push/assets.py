"""The push source's Dagster assets: landed pushes, their daily_rollups metrics, the PostHog
activity around each delivered push, and the impact statistics, with their checks."""

from dagster import (
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
    add_partition_metadata,
    by_reason,
    partition_days,
    require_current_landings,
    rollup_result,
)
from analytics_pipeline.core.checks import NON_NEGATIVE, RECONCILES
from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.resources import Landing, PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.push.automations import load_automations
from analytics_pipeline.push.contract import PUSH_SOURCE
from analytics_pipeline.push.resources import PushSettings
from analytics_pipeline.push.source import PushSource
from analytics_pipeline.push.steps import extract_push_partition, rollup_push_partition

GROUP = "push_impact"


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
    results = []
    for day in days:
        r = extract_push_partition(source, store, engine, day, default_tz)
        context.log.info(f"{r.key}: landed {r.rows} pushes of {r.accounts} accounts "
                         f"({r.window})")
        if r.duplicates_dropped:
            context.log.warning(f"{r.key}: {r.duplicates_dropped} rows repeated a push id "
                                "and were dropped")
        if r.users_skipped:
            context.log.warning(f"{r.key}: {r.users_skipped} user rows of the accounts are "
                                "no usable user (bad or repeated id, bad text) and were "
                                "skipped; their pushes are quarantined as unknown_user")
        results.append(r)
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


push_rollup_check_specs = [
    AssetCheckSpec(
        RECONCILES, asset="push_rollups",
        description="Per account and metric, the totals written to daily_rollups equal the "
        "totals recomputed from the landed pushes."),
    AssetCheckSpec(NON_NEGATIVE, asset="push_rollups",
                   description="No rollup row of the partition has a negative count."),
]


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "pyarrow"},
    deps=[raw_push_notifications],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=push_rollup_check_specs,
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
    results = []
    for day in days:
        r = rollup_push_partition(store, engine, day, definitions)
        if r.quarantined_by_reason:
            context.log.warning(f"{r.key}: quarantined {r.quarantined_by_reason}")
        context.log.info(f"{r.key}: {r.rolled_up} pushes → {r.rows_written} rollup rows "
                         f"(replaced {r.rows_replaced})")
        results.append(r)
    return rollup_result(context, days, results, {
        "warehouse": warehouse.display_url,
        "automation_definitions": len(definitions.by_id),
        "automation_definition_problems": MetadataValue.json(definitions.problems)})
