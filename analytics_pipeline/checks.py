"""Asset check specs and the comparisons behind them."""

from __future__ import annotations

import math

from dagster import AssetCheckSpec

RECONCILES = "rollups_reconcile_with_landing"
NON_NEGATIVE = "rollup_counts_non_negative"
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


def totals_mismatches(
    expected: dict,
    actual: dict,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-6,
) -> dict[str, dict]:
    """Keys (account/metric) whose totals differ; counts must match exactly, float sums
    within tolerance, and a non-finite sum never matches (``inf == inf`` is no proof)."""
    out: dict[str, dict] = {}
    for key in sorted(set(expected) | set(actual), key=str):
        e = expected.get(key, (0, 0.0, 0.0))
        a = actual.get(key, (0, 0.0, 0.0))
        same = e[0] == a[0] and all(
            math.isfinite(x) and math.isfinite(y)
            and math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)
            for x, y in zip(e[1:], a[1:], strict=True)
        )
        if not same:
            name = "/".join(str(k) for k in key) if isinstance(key, tuple) else str(key)
            out[name] = {"expected": list(e), "actual": list(a)}
    return out
