"""Assets: accounts snapshot, raw reporting events (landing) and daily rollups."""


import time
from collections import Counter
from datetime import datetime, timezone

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)
from pydantic import Field

from analytics_pipeline import warehouse as wh
from analytics_pipeline.checks import (
    NON_NEGATIVE,
    RECONCILES,
    VALID_SOURCE_ACCOUNTS,
    VALID_TIMEZONES,
    accounts_check_specs,
    rollup_check_specs,
)
from analytics_pipeline.landing import ProviderEventLog
from analytics_pipeline.partitions import (
    TIMEZONES_PARTITIONS_NAME,
    LocalDay,
    daily_timezone_partitions,
    resolve_account_timezones,
)
from analytics_pipeline.registry import EMAIL_PIPELINES, EmailPipeline
from analytics_pipeline.resources import (
    Landing,
    Mailgun,
    PipelineSettings,
    SourceDatabase,
    Warehouse,
)
from analytics_pipeline.steps import (
    RollupResult,
    email_landing_source,
    extract_email_partition,
    extract_partition,
    fetch_provider_events,
    landed_accounts,
    refresh_email_stats,
    rollup_email_partition,
    rollup_partition,
)

OWNERS = ["team:data-platform"]
GROUP = "support_desk"


class AccountScope(Config):
    """Restrict a run to some accounts of the selected partitions (operator re-runs)."""

    account_ids: list[int] | None = Field(
        default=None,
        description="Only these accounts (others of the partition keep their rows); "
        "leave empty for the whole partition.",
    )


def _md_table(rows: list[dict], limit: int = 20) -> MetadataValue:
    if not rows:
        return MetadataValue.md("_no rows_")
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows[:limit]]
    return MetadataValue.md("\n".join(lines))


class AccountsConfig(Config):
    """Run config of the accounts snapshot."""

    confirm_account_loss: bool = Field(
        default=False,
        description="Accept a snapshot that drops more of the previous snapshot's accounts "
        "than ANALYTICS_MAX_ACCOUNT_LOSS allows (e.g. a real mass deletion).",
    )


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql", "python"},
    check_specs=accounts_check_specs,
    description="Snapshot of the application's accounts with their effective reporting "
    "timezone; registers every timezone in use as a key of the `timezones` partitions. "
    "Refuses a snapshot that suddenly loses most accounts (an emptied or truncated source) "
    "unless the run config confirms it.",
)
def accounts(
    context: AssetExecutionContext,
    config: AccountsConfig,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    settings: PipelineSettings,
) -> MaterializeResult:
    default_tz = settings.validated_default_timezone()
    read = source_db.reporting_events(settings.first_date).read_accounts()
    resolved = resolve_account_timezones(read.accounts, default_tz)
    engine = warehouse.engine()
    previous = set(wh.known_account_ids(engine))
    lost = previous - {a.id for a in resolved}
    loss = account_loss_problem(len(previous), len(lost), settings.max_account_loss)
    if loss and not config.confirm_account_loss:
        raise Failure(
            description=f"refusing the accounts snapshot: {loss} (sample of lost ids: "
            f"{sorted(lost)[:20]}). If the source is right, re-run `accounts` with run "
            "config `confirm_account_loss: true`; otherwise fix ANALYTICS_SOURCE_URL. "
            "The previous snapshot is kept.",
            metadata={"previous_accounts": len(previous), "accounts_read": len(resolved),
                      "accounts_lost": len(lost)},
        )
    wh.replace_accounts(engine, [a.__dict__ for a in resolved])
    invalid = [a for a in resolved if not a.timezone_valid]
    for a in invalid:
        context.log.warning(
            f"account {a.id} has invalid reporting timezone {a.reporting_timezone!r}: "
            "left out of the rollups until it is fixed"
        )
    for r in read.rejected:
        context.log.warning(f"source account row skipped ({r['reason']}): id={r['id']!r}")
    in_use = sorted({a.timezone for a in resolved if a.timezone} | {default_tz})
    existing = set(context.instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME))
    new = [tz for tz in in_use if tz not in existing]
    if new:
        context.instance.add_dynamic_partitions(TIMEZONES_PARTITIONS_NAME, new)
        context.log.info(f"registered new timezone partitions: {', '.join(new)}")
    per_tz = Counter(a.timezone for a in resolved if a.timezone)
    return MaterializeResult(
        metadata={
            "accounts": len(resolved),
            "accounts_lost_since_previous_snapshot": len(lost),
            "source_rows_rejected": len(read.rejected),
            "timezones_in_use": len(in_use),
            "timezones_registered": MetadataValue.json(new),
            "accounts_per_timezone": MetadataValue.json(dict(sorted(per_tz.items()))),
            "invalid_timezones": len(invalid),
            "source": source_db.display_url,
        },
        check_results=[
            AssetCheckResult(
                check_name=VALID_TIMEZONES,
                passed=not invalid,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "invalid_accounts": MetadataValue.json(
                        [{"id": a.id, "name": a.name,
                          "reporting_timezone": a.reporting_timezone}
                         for a in invalid[:100]]
                    ),
                    "invalid_count": len(invalid),
                },
            ),
            AssetCheckResult(
                check_name=VALID_SOURCE_ACCOUNTS,
                passed=not read.rejected,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "rejected_rows": MetadataValue.json(read.rejected[:100]),
                    "rejected_count": len(read.rejected),
                },
            ),
        ],
    )


def account_loss_problem(previous: int, lost: int, max_fraction: float) -> str | None:
    """Why a snapshot losing ``lost`` of ``previous`` accounts must not replace the old
    one, or None. An emptied or truncated source would otherwise make every partition
    drop its accounts' days and quarantine their events as unknown."""
    if previous == 0 or lost == 0:
        return None
    if lost / previous > max_fraction:
        return (f"it would drop {lost} of the {previous} accounts of the previous snapshot "
                f"({lost / previous:.0%} > ANALYTICS_MAX_ACCOUNT_LOSS {max_fraction:.0%})")
    return None


@asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"parquet", "sql"},
    deps=[accounts],
    partitions_def=daily_timezone_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    description="Support reporting events of the partition's accounts over the exact UTC "
    "window of their local day, landed as Parquet (one directory per partition, swapped "
    "in atomically).",
)
def raw_reporting_events(
    context: AssetExecutionContext,
    config: AccountScope,
    source_db: SourceDatabase,
    warehouse: Warehouse,
    landing: Landing,
    settings: PipelineSettings,
) -> MaterializeResult:
    source = source_db.reporting_events(settings.first_date)
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
            "per_partition": _md_table(
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


def require_current_landings(
    store, engine, days: list[LocalDay], source: str, only_accounts: list[int] | None = None
) -> None:
    """Fail before writing anything when a partition's landing no longer matches the
    accounts of its timezone, naming every partition to re-extract."""
    problems = [p for d in days
                if (p := landed_accounts(store, engine, d, source, only_accounts)[1])]
    if problems:
        raise Failure(
            description=f"{len(problems)} partition(s) must be re-extracted before their "
            "rollups can run; nothing was written:\n" + "\n".join(problems[:50]),
            metadata={"partitions_to_re_extract": MetadataValue.json(
                [p.split(":", 1)[0] for p in problems])},
        )


def rollup_result(results: list[RollupResult], metadata: dict) -> MaterializeResult:
    """The materialization of a rollup asset over its partitions, with its two checks."""
    mismatches = {r.key: r.mismatches for r in results if r.mismatches}
    negatives = {r.key: r.negative_rows for r in results if r.negative_rows}
    preview = next((r.preview for r in results if r.preview), [])
    return MaterializeResult(
        metadata={
            "partitions": len(results),
            "events_rolled_up": sum(r.rolled_up for r in results),
            "rows_written": sum(r.rows_written for r in results),
            "rows_replaced": sum(r.rows_replaced for r in results),
            **metadata,
            "preview": _md_table(preview),
        },
        check_results=[
            AssetCheckResult(
                check_name=RECONCILES, passed=not mismatches,
                metadata={"mismatches": MetadataValue.json(mismatches),
                          "partitions_checked": len(results)},
            ),
            AssetCheckResult(
                check_name=NON_NEGATIVE, passed=not negatives,
                metadata={"negative_rows": MetadataValue.json(negatives)},
            ),
        ],
    )


# --- email: Mailgun events landed by the polling runs -----------------------------------------


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
        name=f"mailgun_{pipeline.name}_events",
        group_name=f"email_{pipeline.name}",
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
            per_pass[f"{label}_max_lateness_seconds"] = float(stats.max_lateness_seconds or 0.0)
        return MaterializeResult(metadata={
            "events_fetched": r.fetched,
            **per_pass,
            "reconciliation": "ran" if r.reconciled else "not due",
            "last_reconciliation": iso(r.reconciled_at) if r.reconciled_at else "never",
            "files_landed": r.landed_files,
            "malformed_quarantined": r.malformed,
            "windows": MetadataValue.json([[w, iso(b), iso(e)] for w, b, e in r.windows]),
            "fresh_until": iso(r.fresh_until),
            # read by the late-events sensor: the 15-minute UTC buckets of the events this
            # run stored (epoch // 900; left out when too many) and their span (epoch seconds)
            **({"event_buckets_15m": MetadataValue.json(buckets)}
               if len(buckets) <= MAX_BUCKETS_IN_METADATA else {}),
            "event_time_min": r.event_time_min if r.event_time_min is not None else 0.0,
            "event_time_max": r.event_time_max if r.event_time_max is not None else 0.0,
            "settled_until": iso(r.settled_until),
            "domain": mailgun.domain,
        })

    return _asset


mailgun_event_assets = {p.name: mailgun_events_asset(p) for p in EMAIL_PIPELINES}


# --- email: daily partitions and statistics -------------------------------------------------


def email_assets(pipeline: EmailPipeline) -> list:
    """The daily extraction, the rollups and the statistics of one email pipeline."""
    p = pipeline.name
    fetched = f"mailgun_{p}_events"
    raw_name, rollups_name = f"raw_{p}_email_events", f"{p}_email_rollups"
    group = f"email_{p}"

    @asset(
        name=raw_name, group_name=group, owners=OWNERS, kinds={"parquet"},
        deps=[fetched, "accounts"], partitions_def=daily_timezone_partitions,
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
        results = [
            extract_email_partition(log, source_db.emails(), store, engine, pipeline,
                                    LocalDay.from_key(k), default_tz)
            for k in context.partition_keys
        ]
        return MaterializeResult(metadata={
            "partitions": len(results),
            "events_in_window": sum(r.events for r in results),
            "events_landed": sum(r.matched for r in results),
            "events_quarantined": sum(r.quarantined for r in results),
            "per_partition": _md_table([r.__dict__ for r in results], limit=100),
        })

    specs = [AssetCheckSpec(RECONCILES, asset=rollups_name,
                            description="Account-dimension totals equal the landed events'."),
             AssetCheckSpec(NON_NEGATIVE, asset=rollups_name,
                            description="No negative count in the partition.")]

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
        days = [LocalDay.from_key(k) for k in context.partition_keys]
        require_current_landings(store, engine, days, email_landing_source(pipeline))
        results = [rollup_email_partition(store, engine, pipeline, d) for d in days]
        return rollup_result(results, {"warehouse": warehouse.display_url})

    states_key, stats_key = f"{p}_recipient_states", f"{p}_email_stats"

    @multi_asset(
        name=f"{p}_email_statistics",
        group_name=group,
        specs=[
            AssetSpec(states_key, deps=[fetched], owners=OWNERS, kinds={"sql", "pyarrow"},
                      description=f"Per recipient of {p} emails: first delivered, opened, "
                      "clicked, unsubscribed, complained; permanent failure (never "
                      "downgraded by a temporary one) and temporary failures."),
            AssetSpec(stats_key, deps=[states_key], owners=OWNERS, kinds={"sql"},
                      description=f"Per {p} email"
                      + (" and per automation" if p == "automation" else "")
                      + ": sent, delivered, opened, clicked, failed, unsubscribed, "
                      "complained, open rate (tracked emails, at least 5 recipients); per "
                      "member: emails, opened, open rate."),
        ],
    )
    def statistics(source_db: SourceDatabase, warehouse: Warehouse, landing: Landing):
        r = refresh_email_stats(ProviderEventLog(landing.uri, pipeline.stream),
                                source_db.emails(), warehouse.engine(), pipeline)
        yield MaterializeResult(asset_key=states_key, metadata={
            "events": r.events, "recipients_with_events": r.recipients_with_events,
            "unmatched_events": r.unmatched})
        yield MaterializeResult(asset_key=stats_key, metadata={
            "emails": r.emails, "automations": r.automations, "members": r.members,
            "recipients": r.recipients})

    return [raw_email_events, email_rollups, statistics]


email_pipeline_assets = {p.name: email_assets(p) for p in EMAIL_PIPELINES}
