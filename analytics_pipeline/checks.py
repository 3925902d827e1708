"""Asset check specs and the comparisons behind them."""

from __future__ import annotations

import math

from dagster import AssetCheckSpec

RECONCILES = "rollups_reconcile_with_landing"
NON_NEGATIVE = "rollup_counts_non_negative"
VALID_TIMEZONES = "every_account_has_valid_timezone"

accounts_check_specs = [
    AssetCheckSpec(
        VALID_TIMEZONES, asset="accounts",
        description="Every account's reporting timezone is a valid IANA name "
        "(accounts with an invalid one are left out of the rollups until fixed).",
    )
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
    expected: dict[str, tuple[int, float, float]],
    actual: dict[str, tuple[int, float, float]],
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-6,
) -> dict[str, dict]:
    """Metrics whose totals differ; counts must match exactly, float sums within tolerance."""
    out: dict[str, dict] = {}
    for metric in sorted(set(expected) | set(actual)):
        e = expected.get(metric, (0, 0.0, 0.0))
        a = actual.get(metric, (0, 0.0, 0.0))
        same = e[0] == a[0] and all(
            math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)
            for x, y in zip(e[1:], a[1:], strict=True)
        )
        if not same:
            out[metric] = {"expected": list(e), "actual": list(a)}
    return out
