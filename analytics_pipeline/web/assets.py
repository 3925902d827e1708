"""The web source's Dagster assets: landed, sessionized web events and their hourly and daily
rollups, with the rollups' checks defined next to them."""

import sqlalchemy as sa
from dagster import (
    AssetCheckResult,
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
    table_metadata,
)
from analytics_pipeline.core.partitions import daily_timezone_partitions
from analytics_pipeline.core.resources import Landing, PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.web.contract import WEB_SOURCE, web_sites
from analytics_pipeline.web.resources import WebSettings
from analytics_pipeline.web.rollup_step import rollup_web_partition
from analytics_pipeline.web.source import WebEventsSource
from analytics_pipeline.web.steps import extract_web_partition
from analytics_pipeline.web.store import (
    WEB_DAILY_EQUALS_HOURLY,
    WEB_NON_NEGATIVE,
    WEB_VISITORS_BOUNDED,
    WEB_VISITS_GE_BOUNCES,
)

GROUP = "web_analytics"


def _site_domains(engine, site_ids: set[int]) -> dict[int, str]:
    if not site_ids:
        return {}
    c = web_sites.c
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(c.site_id, c.domain).where(
            c.site_id.in_(sorted(site_ids)))).all())


def _with_domains(preview: list[dict], domains: dict[int, str]) -> list[dict]:
    """The top pages with their site's domain next to its id (a partition holds every site
    of its timezone's accounts)."""
    return [{"site_id": p["site_id"], "domain": domains.get(p["site_id"], ""),
             **{k: v for k, v in p.items() if k != "site_id"}} for p in preview]


def _span(days: list) -> str:
    """The run's partitions as text: one key, or first … last of each timezone."""
    by_tz: dict[str, list] = {}
    for d in days:
        by_tz.setdefault(d.tz, []).append(d.day)
    return ", ".join(f"{min(ds)}|{tz}" if len(ds) == 1 else
                     f"{min(ds)} … {max(ds)}|{tz} ({len(ds)} days)"
                     for tz, ds in sorted(by_tz.items()))


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "sql"},
    deps=[accounts],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    description="Web events (page views and custom events) of the sites of the partition's "
    "accounts over the exact UTC window of their local day, de-duplicated by id, validated, "
    "sessionized (a gap over ANALYTICS_WEB_SESSION_TIMEOUT_MINUTES or local midnight ends a "
    "visit) and landed as Parquet with their derived dimensions.",
)
def raw_web_events(
    context: AssetExecutionContext,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    landing: Landing,
    settings: PipelineSettings,
    web: WebSettings,
) -> MaterializeResult:
    source = WebEventsSource(source_db.url, fallback_date=settings.first_date)
    store, engine = landing.store(), warehouse.engine()
    default_tz = settings.validated_default_timezone()
    days = partition_days(context)
    log = RangeLog(context, days, "raw_web_events")
    results = []
    for day in days:
        r = extract_web_partition(source, store, engine, day, default_tz,
                                  session_timeout_seconds=web.session_timeout_minutes * 60)
        if r.duplicates_dropped:
            context.log.warning(f"{r.key}: {r.duplicates_dropped} rows repeated an event id "
                                "and were dropped")
        log.partition(f"{r.key}: landed {r.rows} web events of {r.sites} sites, "
                      f"{r.visits} visits ({r.window})", r.rows)
        results.append(r)
    log.summary(events_landed=sum(r.rows for r in results))
    add_partition_metadata(context, [(day, {
        "dagster/row_count": r.rows,
        "sites": r.sites,
        "visits": r.visits,
        "valid_events": r.rows - r.invalid_rows,
        "rows_landed_for_quarantine": r.invalid_rows,
        "duplicate_ids_dropped": r.duplicates_dropped,
        # the default timezone's partitions also land the events of no known site, for the
        # quarantine: such a partition can hold rows with no site of its own
        "sweeps_unknown_sites": day.tz == default_tz,
        "landing_path": MetadataValue.path(r.path),
    }) for day, r in zip(days, results, strict=True)], run_totals={
        "partitions": len(results),
        "rows": sum(r.rows for r in results),
        "visits": sum(r.visits for r in results),
        "rows_landed_for_quarantine": sum(r.invalid_rows for r in results),
    }, shared={"landing": store.base, "source": source_db.display_url})
    return MaterializeResult()


web_check_specs = [
    AssetCheckSpec(WEB_DAILY_EQUALS_HOURLY, asset="web_rollups",
                   description="Per site, day, dimension and value, the daily events, page "
                   "views, visits, bounces and duration equal the sum of the day's hourly rows."),
    AssetCheckSpec(WEB_VISITORS_BOUNDED, asset="web_rollups",
                   description="Per site, day, dimension and value: max(hourly visitors) ≤ "
                   "daily visitors ≤ sum(hourly visitors)."),
    AssetCheckSpec(WEB_VISITS_GE_BOUNCES, asset="web_rollups",
                   description="No row has more bounces than visits."),
    AssetCheckSpec(WEB_NON_NEGATIVE, asset="web_rollups",
                   description="No count or duration of the partition is negative."),
]


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "pyarrow"},
    deps=[raw_web_events],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=web_check_specs,
    description="web_hourly_rollups and web_daily_rollups of the partition's sites (per local "
    "hour and day, per dimension value: events, page views, visits, bounces, duration, "
    "visitors as a Roaring bitmap, new visitors); invalid events go to quarantine. Each "
    "partition replaces its slice in one transaction.",
)
def web_rollups(
    context: AssetExecutionContext, warehouse: Warehouse, landing: Landing
) -> MaterializeResult:
    store, engine = landing.store(), warehouse.engine()
    days = partition_days(context)
    require_current_landings(store, engine, days, WEB_SOURCE)
    domains: dict[int, str] = {}
    log = RangeLog(context, days, "web_rollups")
    results = []
    for day in days:
        r = rollup_web_partition(store, engine, day)
        domains.update(_site_domains(engine, {p["site_id"] for p in r.preview} - set(domains)))
        if r.quarantined_by_reason:
            context.log.warning(f"{r.key}: quarantined {r.quarantined_by_reason}")
        log.partition(f"{r.key}: {r.valid} events, {r.visits} visits, {r.visitors} "
                      f"visitors → {r.hourly_rows} hourly and {r.daily_rows} daily rows",
                      r.valid)
        results.append(r)
    log.summary(events=sum(r.valid for r in results),
                rows_written=sum(r.hourly_rows + r.daily_rows for r in results))
    add_partition_metadata(context, [(day, {
        "dagster/row_count": r.hourly_rows + r.daily_rows,
        "hourly_rows": r.hourly_rows,
        "daily_rows": r.daily_rows,
        "rows_replaced": r.rows_replaced,
        "events": r.valid,
        "visits": r.visits,
        "visitors": r.visitors,
        "sites": r.sites,
        "events_quarantined": sum(r.quarantined_by_reason.values()),
        "quarantined_by_reason": by_reason(r.quarantined_by_reason),
        "top_pages": table_metadata(_with_domains(r.preview, domains)),
    }) for day, r in zip(days, results, strict=True)], shared={
        "warehouse": warehouse.display_url}, run_totals={
        "partitions": len(results),
        "events": sum(r.valid for r in results),
        "visits": sum(r.visits for r in results),
        "hourly_rows": sum(r.hourly_rows for r in results),
        "daily_rows": sum(r.daily_rows for r in results),
        "events_quarantined": sum(sum(r.quarantined_by_reason.values()) for r in results),
    })
    checks = []
    for check in (WEB_DAILY_EQUALS_HOURLY, WEB_VISITORS_BOUNDED, WEB_VISITS_GE_BOUNCES,
                  WEB_NON_NEGATIVE):
        failing = {r.key: r.problems.get(check, []) for r in results
                   if r.mismatches.get(check)}
        checks.append(AssetCheckResult(
            check_name=check, passed=not failing,
            metadata={"problems": MetadataValue.json(failing),
                      "partitions_checked": len(results),
                      # the check covers the run's partitions (the UI shows no partition)
                      "partitions": _span(days)}))
    return MaterializeResult(check_results=checks)
