"""The support desk's Dagster assets: raw reporting events (landing) and their rollups,
with the rollups' checks defined next to them.
"""

from collections import Counter

from dagster import (
    AssetCheckSpec,
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
    require_current_landings,
    rollup_result,
    table_metadata,
)
from analytics_pipeline.core.checks import NON_NEGATIVE, RECONCILES
from analytics_pipeline.core.partitions import LocalDay, daily_timezone_partitions
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


rollup_check_specs = [
    AssetCheckSpec(
        RECONCILES, asset="reporting_rollups",
        description="Per metric, the account-dimension totals written to daily_rollups equal "
        "the totals recomputed directly from the landed events (count, sums, distinct "
        "conversations).",
    ),
    AssetCheckSpec(
        NON_NEGATIVE, asset="reporting_rollups",
        description="No rollup row of the partition has a negative count or sum.",
    ),
]


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "sql"},
    deps=[accounts],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    description="Support reporting events of the partition's accounts over the exact UTC "
    "window of their local day, landed as Parquet (one directory per partition; each write "
    "is a new version made current atomically) with the account ids it holds.",
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
    results = []
    for key in context.partition_keys:
        r = extract_partition(source, store, engine, LocalDay.from_key(key), default_tz,
                              config.account_ids)
        context.log.info(f"{r.key}: landed {r.rows} events of {r.accounts} accounts ({r.window})")
        if r.duplicates_dropped:
            context.log.warning(f"{r.key}: {r.duplicates_dropped} rows repeated an event id "
                                "already read and were dropped")
        results.append(r)
    return MaterializeResult(
        metadata={
            "partitions": len(results),
            "rows": sum(r.rows for r in results),
            "duplicate_ids_dropped": sum(r.duplicates_dropped for r in results),
            "rows_landed_for_quarantine": sum(r.invalid_rows for r in results),
            "accounts_processed": sum(r.accounts for r in results),
            "per_partition": table_metadata(
                [{"partition": r.key, "rows": r.rows, "accounts": r.accounts,
                  "utc_window": r.window} for r in results], limit=100,
            ),
            "landing": store.base,
            "source": source_db.display_url,
        }
    )


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "pyarrow"},
    deps=[raw_reporting_events],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=rollup_check_specs,
    description="daily_rollups rows of the support reporting metrics (dimensions account, "
    "agent, inbox) for the partition's accounts; each partition replaces its slice in one "
    "transaction.",
)
def reporting_rollups(
    context: AssetExecutionContext,
    config: AccountScope,
    warehouse: Warehouse,
    landing: Landing,
) -> MaterializeResult:
    store, engine = landing.store(), warehouse.engine()
    days = [LocalDay.from_key(k) for k in context.partition_keys]
    require_current_landings(store, engine, days, "reporting_events", config.account_ids)
    results = []
    for day in days:
        r = rollup_partition(store, engine, day, only_accounts=config.account_ids)
        if r.quarantined_by_reason:
            context.log.warning(f"{r.key}: quarantined {r.quarantined_by_reason}")
        context.log.info(
            f"{r.key}: {r.rolled_up} events → {r.rows_written} rollup rows "
            f"(replaced {r.rows_replaced})"
        )
        results.append(r)
    ignored: Counter = Counter()
    quarantined: Counter = Counter()
    for r in results:
        ignored.update(r.ignored_by_name)
        quarantined.update(r.quarantined_by_reason)
    return rollup_result(results, {
        "events_read": sum(r.events for r in results),
        "events_ignored": sum(ignored.values()),
        "ignored_by_name": MetadataValue.json(dict(ignored)),
        "events_quarantined": sum(quarantined.values()),
        "quarantined_by_reason": MetadataValue.json(dict(quarantined)),
        "events_of_accounts_in_other_timezone": sum(r.other_timezone for r in results),
        "accounts_processed": sum(r.accounts for r in results),
        "warehouse": warehouse.display_url,
    })


