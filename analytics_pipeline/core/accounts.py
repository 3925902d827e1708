"""The accounts snapshot, shared by every source: each account's effective reporting
timezone, the ``timezones`` partitions registered from it, its checks, its job and the
automation condition that refreshes it.
"""

from collections import Counter

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSelection,
    AutomationCondition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
)
from pydantic import Field

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.assets import OWNERS, table_metadata
from analytics_pipeline.core.partitions import (
    TIMEZONES_PARTITIONS_NAME,
    is_valid_timezone,
    resolve_account_timezones,
)
from analytics_pipeline.core.resources import PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.core.sources import read_accounts


class AccountsConfig(Config):
    """Run config of the accounts snapshot."""

    confirm_account_loss: bool = Field(
        default=False,
        description="Accept a snapshot that drops more of the previous snapshot's accounts "
        "than ANALYTICS_MAX_ACCOUNT_LOSS_PERCENT allows (e.g. a real mass deletion).",
    )


VALID_TIMEZONES = "every_account_has_valid_timezone"

VALID_SOURCE_ACCOUNTS = "every_source_account_row_is_valid"

accounts_check_specs = [
    AssetCheckSpec(
        VALID_TIMEZONES, asset="accounts",
        description="Every account's reporting timezone is a valid IANA name "
        "(accounts with an invalid one are left out of the rollups until fixed).",
    ),
    AssetCheckSpec(
        VALID_SOURCE_ACCOUNTS, asset="accounts",
        description="Every row of the source's accounts table is a usable account: an "
        "exact, unique integer id, names and timezones in clean UTF-8 without NUL bytes "
        "(other rows are skipped and listed; their events are quarantined as unknown).",
    ),
]


# Refreshed every 30 minutes by declarative automation (the code location's automation
# sensor), so a new account's timezone gets its partitions without manual steps.
ACCOUNTS_REFRESH = AutomationCondition.on_cron("*/30 * * * *")


@asset(
    group_name="accounts",
    automation_condition=ACCOUNTS_REFRESH,
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
    read = read_accounts(source_db.url)
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
    # A key added by hand in the UI is accepted by Dagster whatever it is: one that is not an
    # IANA name could never be cut into local days, so it is removed (and reported).
    bogus = sorted(k for k in existing if not is_valid_timezone(k))
    for key in bogus:
        context.instance.delete_dynamic_partition(TIMEZONES_PARTITIONS_NAME, key)
        context.log.warning(f"removed timezone partition key {key!r}: not an IANA timezone "
                            "name (added by hand?)")
    per_tz = Counter(a.timezone for a in resolved if a.timezone)
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(resolved),
            "accounts": len(resolved),
            "accounts_lost_since_previous_snapshot": len(lost),
            "source_rows_rejected": len(read.rejected),
            "timezones_in_use": len(in_use),
            "timezones_registered": MetadataValue.json(new),
            "accounts_per_timezone": MetadataValue.json(dict(sorted(per_tz.items()))),
            "invalid_timezones": len(invalid),
            "invalid_timezone_keys_removed": MetadataValue.json(bogus),
            "source": source_db.display_url,
        },
        check_results=[
            AssetCheckResult(
                check_name=VALID_TIMEZONES,
                passed=not invalid and not bogus,
                severity=AssetCheckSeverity.ERROR,
                description=(f"{len(invalid)} account(s) with an invalid reporting timezone"
                             + (f"; removed timezone keys {bogus}" if bogus else "")
                             if invalid or bogus else None),
                metadata={
                    "invalid_accounts": table_metadata(
                        [{"id": a.id, "name": a.name,
                          "reporting_timezone": a.reporting_timezone}
                         for a in invalid], limit=100,
                    ) if invalid else MetadataValue.text("none"),
                    "invalid_count": len(invalid),
                    "invalid_timezone_keys_removed": MetadataValue.json(bogus),
                },
            ),
            AssetCheckResult(
                check_name=VALID_SOURCE_ACCOUNTS,
                passed=not read.rejected,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "rejected_rows": table_metadata(read.rejected, limit=100)
                    if read.rejected else MetadataValue.text("none"),
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
                f"({lost / previous:.0%} > ANALYTICS_MAX_ACCOUNT_LOSS_PERCENT {max_fraction:.0%})")
    return None


accounts_job = define_asset_job(
    "refresh_accounts",
    selection=AssetSelection.assets("accounts"),
    description="Snapshot accounts and register the timezones in use.",
)
