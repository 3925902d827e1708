"""Names of the rollup checks and the comparison behind the reconciliation check."""

from __future__ import annotations

import math

RECONCILES = "rollups_reconcile_with_landing"


NON_NEGATIVE = "rollup_counts_non_negative"


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
