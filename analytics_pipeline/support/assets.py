"""The support desk's Dagster assets: raw reporting events (landing) and their rollups,
with the rollups' checks defined next to them.
"""

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from analytics_pipeline.core.accounts import accounts
from analytics_pipeline.core.assets import (
    OWNERS,
    RangeLog,
    add_partition_metadata,
    partition_days,
    require_current_landings,
    rollup_check_specs,
    rollup_result,
)
from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.resources import Landing, PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.support.source import ReportingEventsSource
from analytics_pipeline.support.steps import extract_partition, rollup_partition

GROUP = "support_desk"


class AccountScope(Config):
    """Restrict a run to some accounts of the selected partitions (operator re-runs)."""

    account_ids: list[int] | None = Field(
        default=None,
        description="Only these accounts (others of the partition keep their rows); "
        "leave empty for the whole partition.",
    )


class RollupScope(AccountScope):
    """``AccountScope``, and whether to roll the landing up again."""

    recompute: bool = Field(
        default=False,
        description="Roll the landed events up again instead of writing the rollup the "
        "extraction prepared (which is only used when computed from the same landing, "
        "accounts, metrics and code).",
    )


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "sql"},
    deps=[accounts],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    description="Support reporting events of the partition's accounts over the exact UTC "
    "window of their local day, landed as Parquet (one directory per partition; each write "
    "is a new version made current atomically) with the account ids it holds, and the "
    "partition's rollup, prepared from the same batches while they are landed.",
)
def raw_reporting_events(
    context: AssetExecutionContext,
    config: AccountScope,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    landing: Landing,
    settings: PipelineSettings,
) -> MaterializeResult:
    source = ReportingEventsSource(source_db.url, fallback_date=settings.first_date)
    store, engine = landing.store(), warehouse.engine()
    default_tz = settings.validated_default_timezone()
    days = partition_days(context)
    log = RangeLog(context, days, "raw_reporting_events")
    results = []
    with source.session():  # one connection and one inspection for the whole range
        for day in days:
            r = extract_partition(source, store, engine, day, default_tz, config.account_ids)
            if r.duplicates_dropped:
                context.log.warning(f"{r.key}: {r.duplicates_dropped} rows repeated an "
                                    "event id already read and were dropped")
            accounts = "1 account" if r.accounts == 1 else f"{r.accounts} accounts"
            log.partition(f"{r.key}: landed {r.rows} events of {accounts} ({r.window})",
                          r.rows)
            results.append(r)
    log.summary(events_landed=sum(r.rows for r in results),
                rows_for_quarantine=sum(r.invalid_rows for r in results))
    add_partition_metadata(context, [(day, {
        "dagster/row_count": r.rows,
        "accounts": r.accounts,
        "duplicate_ids_dropped": r.duplicates_dropped,
        "rows_landed_for_quarantine": r.invalid_rows,
        "landing_path": MetadataValue.path(r.path),
    }) for day, r in zip(days, results, strict=True)], run_totals={
        "partitions": len(results),
        "rows": sum(r.rows for r in results),
        "duplicate_ids_dropped": sum(r.duplicates_dropped for r in results),
        "rows_landed_for_quarantine": sum(r.invalid_rows for r in results),
    }, shared={"landing": store.base, "source": source_db.display_url})
    return MaterializeResult()


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "pyarrow"},
    deps=[raw_reporting_events],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=rollup_check_specs(
        "reporting_rollups", "the landed events (count, sums, distinct conversations; "
        "accumulated apart from the rollup, as they were landed or read back)"),
    description="daily_rollups rows of the support reporting metrics (dimensions account, "
    "agent, inbox) for the partition's accounts; each partition replaces its slice in one "
    "transaction. Writes the rollup its extraction prepared when it was computed from the "
    "same landing, accounts, metrics and code; otherwise rolls the landing up again.",
)
def reporting_rollups(
    context: AssetExecutionContext,
    config: RollupScope,
    warehouse: Warehouse,
    landing: Landing,
) -> MaterializeResult:
    store, engine = landing.store(), warehouse.engine()
    days = partition_days(context)
    require_current_landings(store, engine, days, "reporting_events", config.account_ids)
    log = RangeLog(context, days, "reporting_rollups")
    results = []
    for day in days:
        r = rollup_partition(store, engine, day, only_accounts=config.account_ids,
                             recompute=config.recompute)
        if r.quarantined_by_reason:
            context.log.warning(f"{r.key}: quarantined {r.quarantined_by_reason}")
        how = "prepared by the extraction" if r.prepared else "from the landing"
        log.partition(f"{r.key}: {r.rolled_up} events → {r.rows_written} rollup rows "
                      f"(replaced {r.rows_replaced}; {how})", r.events)
        results.append(r)
    log.summary(events_rolled_up=sum(r.rolled_up for r in results),
                rows_written=sum(r.rows_written for r in results))
    return rollup_result(context, days, results, {"warehouse": warehouse.display_url})
