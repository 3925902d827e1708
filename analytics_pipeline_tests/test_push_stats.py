"""Push impact statistics: known effects are found, null effects mostly are not, every
number matches scipy called on the group alone, and the degenerate groups get the nulls
the module documents.

Simulated users have a personal activity rate drawn from a gamma distribution (mean 1,
most rates small), so most users are inactive in a window, before and after are
correlated through the rate, and changes tie heavily - like real push audiences.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from analytics_pipeline.push.stats import (
    OUTPUT_COLUMNS,
    ComparisonPool,
    impact_stats,
    impact_stats_from_arrays,
    sample_comparison_users,
    splitmix64,
)

# A warning (division by zero, precision loss in scipy, ...) is a bug here, not noise.
pytestmark = pytest.mark.filterwarnings("error")

RATE_SHAPE, RATE_SCALE = 0.5, 2.0  # gamma rates: mean 1, variance 2
MEAN_RATE = RATE_SHAPE * RATE_SCALE
FLOAT_COLUMNS = [c for c in OUTPUT_COLUMNS if c not in ("users", "comparison_users",
                                                        "significant")]


def _users(rng: np.random.Generator, n: int, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` users' (before, after) counts; the after-window rate multiplied by ``factor``."""
    rate = rng.gamma(RATE_SHAPE, RATE_SCALE, n)
    return rng.poisson(rate).astype(float), rng.poisson(rate * factor).astype(float)


def _group(rng: np.random.Generator, key: object, pushed: int, comparison: int = 0, *,
           effect: float = 1.0, trend: float = 1.0) -> dict[str, np.ndarray]:
    """One group's rows: pushed users get ``effect * trend``, comparison users ``trend``."""
    b_t, a_t = _users(rng, pushed, effect * trend)
    b_c, a_c = _users(rng, comparison, trend)
    return _rows(key, np.r_[b_t, b_c], np.r_[a_t, a_c],
                 np.r_[np.ones(pushed, bool), np.zeros(comparison, bool)])


def _rows(key: object, before, after, treated) -> dict[str, np.ndarray]:
    before = np.asarray(before, dtype=float)
    return {"group_key": np.full(len(before), key, dtype=object),
            "before": before, "after": np.asarray(after, dtype=float),
            "treated": np.asarray(treated, dtype=bool)}


def _table(groups: list[dict[str, np.ndarray]]) -> pa.Table:
    return pa.table({
        "group_key": pa.array(np.concatenate([g["group_key"] for g in groups]).tolist()),
        "before": np.concatenate([g["before"] for g in groups]),
        "after": np.concatenate([g["after"] for g in groups]),
        "treated": np.concatenate([g["treated"] for g in groups]),
    })


def _by_key(out: pa.Table) -> dict[object, dict[str, object]]:
    return {row["group_key"]: row for row in out.to_pylist()}


def _assert_no_nan(out: pa.Table) -> None:
    for name in FLOAT_COLUMNS:
        values = out.column(name).drop_null().to_numpy()
        assert np.isfinite(values).all(), name


def _column(out: pa.Table, name: str) -> np.ndarray:
    return out.column(name).to_numpy(zero_copy_only=False)


# Known effects ---------------------------------------------------------------------------

def test_injected_effect_is_significant_and_covered():
    rng = np.random.default_rng(20240501)
    row = _by_key(impact_stats(_table([_group(rng, "c1", 4000, effect=1.3)])))["c1"]

    assert row["significant"] is True
    assert row["p_value_t"] < 1e-6 and row["p_value_wilcoxon"] < 1e-6
    assert row["ci_low"] <= 0.3 * MEAN_RATE <= row["ci_high"]
    assert row["ci_low"] > 0
    assert row["lift_ci_low"] <= 0.3 <= row["lift_ci_high"]
    assert row["lift_ci_low"] > 0
    assert row["comparison_users"] == 0 and row["did"] is None


def test_interval_coverage_over_many_groups():
    """Over 400 seeded groups the 95% intervals cover the true values about 95% of the time.

    Fails both ways: a too-narrow interval (a variance too small, e.g. a z instead of a
    t quantile on small groups) and a too-wide one (the lift ignoring the positive
    before/after covariance) land outside 0.91..0.99.
    """
    rng = np.random.default_rng(7)
    groups = [_group(rng, f"g{i:03d}", 300, 300, effect=1.3, trend=1.2) for i in range(400)]
    out = impact_stats(_table(groups))
    true_diff = (1.3 * 1.2 - 1) * MEAN_RATE
    true_did = 1.2 * (1.3 - 1) * MEAN_RATE

    def coverage(low: str, high: str, value: float) -> float:
        return float(np.mean((_column(out, low) <= value) & (value <= _column(out, high))))

    assert 0.91 <= coverage("ci_low", "ci_high", true_diff) <= 0.99
    assert 0.91 <= coverage("lift_ci_low", "lift_ci_high", 1.3 * 1.2 - 1) <= 0.99
    assert 0.91 <= coverage("did_ci_low", "did_ci_high", true_did) <= 0.99


def test_no_effect_is_rarely_significant():
    """100 seeded groups without any effect: about alpha of them come out significant, and
    p-values spread over (0, 1) as they must under no effect (a test that never rejects
    would pass the first check alone)."""
    rng = np.random.default_rng(11)
    out = impact_stats(_table([_group(rng, f"g{i:03d}", 500, 500) for i in range(100)]))

    significant = _column(out, "significant")
    assert significant.sum() <= 10
    for name in ("p_value_t", "p_value_wilcoxon", "p_value_did"):
        p = _column(out, name)
        assert (p < 0.05).sum() <= 10, name
        assert 0.35 <= (p < 0.5).mean() <= 0.65, name
    assert np.array_equal(significant, _column(out, "p_value_t") < 0.05)


def test_trend_for_everyone_is_a_naive_lift_but_no_did():
    rng = np.random.default_rng(3)
    out = _by_key(impact_stats(_table([
        _group(rng, "trend", 3000, 3000, trend=1.2),
        _group(rng, "trend+push", 3000, 3000, effect=1.3, trend=1.2),
    ])))

    trend = out["trend"]
    assert trend["significant"] is True
    assert trend["lift_ci_low"] > 0 and trend["lift_ci_low"] <= 0.2 <= trend["lift_ci_high"]
    assert trend["did_ci_low"] <= 0 <= trend["did_ci_high"]
    assert trend["p_value_did"] > 0.05

    both = out["trend+push"]
    assert both["p_value_did"] < 0.05
    assert both["did_ci_low"] <= 1.2 * 0.3 * MEAN_RATE <= both["did_ci_high"]


# Zeros, ties and degenerate groups -------------------------------------------------------

def test_many_zeros_and_constant_changes():
    out = impact_stats(_table([
        # 7 of 10 users inactive in both windows; one active in both without change.
        _rows("mostly_zero", [0] * 7 + [0, 3, 2], [0] * 7 + [2, 0, 2], [True] * 10),
        # Nobody active anywhere, pushed or not.
        _rows("all_zero", [0] * 8, [0] * 8, [True] * 5 + [False] * 3),
        # Every pushed user exactly one event more; comparison users unchanged.
        _rows("all_plus_one", [0, 1, 2, 0, 5, 1, 1], [1, 2, 3, 1, 6, 1, 1],
              [True] * 5 + [False] * 2),
    ]))
    _assert_no_nan(out)
    rows = _by_key(out)

    mostly = rows["mostly_zero"]
    assert mostly["zero_both_share"] == pytest.approx(0.7)
    assert mostly["p_value_wilcoxon"] == pytest.approx(
        stats.wilcoxon([2.0, -3.0]).pvalue, rel=1e-12)

    nothing = rows["all_zero"]
    assert nothing["zero_both_share"] == 1.0
    assert nothing["mean_diff"] == 0.0
    assert nothing["p_value_t"] == 1.0 and nothing["p_value_wilcoxon"] == 1.0
    assert nothing["significant"] is False
    assert nothing["ci_low"] is None and nothing["ci_high"] is None
    assert nothing["lift"] is None and nothing["lift_ci_low"] is None
    assert nothing["did"] == 0.0 and nothing["p_value_did"] == 1.0
    assert nothing["did_ci_low"] is None and nothing["did_ci_high"] is None

    plus_one = rows["all_plus_one"]
    assert plus_one["mean_diff"] == 1.0
    assert plus_one["p_value_t"] is None and plus_one["significant"] is None
    assert plus_one["ci_low"] is None and plus_one["ci_high"] is None
    assert plus_one["p_value_wilcoxon"] == pytest.approx(
        stats.wilcoxon(np.ones(5)).pvalue, rel=1e-12)
    assert plus_one["lift"] == pytest.approx(13 / 8 - 1)
    assert plus_one["lift_ci_low"] is not None  # after is not proportional to before
    assert plus_one["did"] == 1.0
    assert plus_one["p_value_did"] is None and plus_one["did_ci_low"] is None


def test_small_groups_and_missing_comparison_give_nulls():
    rng = np.random.default_rng(5)
    out = impact_stats(_table([
        _rows("single", [2, 0, 1, 4], [5, 1, 1, 2], [True, False, False, False]),
        _group(rng, "no_comparison", 50),
        _rows("one_comparison", [0, 1, 3, 2], [1, 1, 0, 2], [True, True, True, False]),
        _rows("comparison_only", [1, 2], [2, 2], [False, False]),
    ]))
    _assert_no_nan(out)
    rows = _by_key(out)

    single = rows["single"]
    assert (single["users"], single["comparison_users"]) == (1, 3)
    assert (single["mean_before"], single["mean_after"], single["mean_diff"]) == (2, 5, 3)
    assert single["lift"] == pytest.approx(1.5)
    assert single["zero_both_share"] == 0.0
    for name in ("ci_low", "ci_high", "lift_ci_low", "lift_ci_high", "p_value_t",
                 "p_value_wilcoxon", "significant", "did_ci_low", "did_ci_high",
                 "p_value_did"):
        assert single[name] is None, name
    assert single["did"] == pytest.approx(3 - (1 + 0 - 2) / 3)

    alone = rows["no_comparison"]
    assert alone["comparison_users"] == 0 and alone["users"] == 50
    assert alone["p_value_t"] is not None and alone["ci_low"] is not None
    for name in ("did", "did_ci_low", "did_ci_high", "p_value_did"):
        assert alone[name] is None, name

    one = rows["one_comparison"]
    assert one["did"] == pytest.approx((1 + 0 - 3) / 3 - 0)
    assert one["did_ci_low"] is None and one["p_value_did"] is None

    only = rows["comparison_only"]
    assert (only["users"], only["comparison_users"]) == (0, 2)
    assert all(only[name] is None for name in OUTPUT_COLUMNS[2:])


# Agreement with scipy --------------------------------------------------------------------

@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_one_group_matches_scipy(confidence):
    rng = np.random.default_rng(99)
    b, a = _users(rng, 200, 1.25)
    cb, ca = _users(rng, 150, 1.1)
    row = _by_key(impact_stats(
        _table([_rows("g", np.r_[b, cb], np.r_[a, ca], np.r_[[True] * 200, [False] * 150])]),
        confidence=confidence))["g"]

    paired = stats.ttest_rel(a, b)
    ci = paired.confidence_interval(confidence)
    assert row["p_value_t"] == pytest.approx(paired.pvalue, rel=1e-9)
    assert row["ci_low"] == pytest.approx(ci.low, rel=1e-9)
    assert row["ci_high"] == pytest.approx(ci.high, rel=1e-9)
    # Over 50 users scipy's default already takes the tie-corrected normal approximation.
    assert row["p_value_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-9)

    welch = stats.ttest_ind(a - b, ca - cb, equal_var=False)
    did_ci = welch.confidence_interval(confidence)
    assert row["did"] == pytest.approx(np.mean(a - b) - np.mean(ca - cb), rel=1e-12)
    assert row["p_value_did"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert row["did_ci_low"] == pytest.approx(did_ci.low, rel=1e-9)
    assert row["did_ci_high"] == pytest.approx(did_ci.high, rel=1e-9)

    # Delta method for mean(a) / mean(b), written out from the covariance matrix.
    cov = np.cov(np.vstack([a, b]))
    ratio = a.mean() / b.mean()
    grad = np.array([1 / b.mean(), -ratio / b.mean()])
    se = math.sqrt(grad @ cov @ grad / len(a))
    q = stats.t.ppf(0.5 + confidence / 2, len(a) - 1)
    assert row["lift"] == pytest.approx(ratio - 1, rel=1e-12)
    assert row["lift_ci_low"] == pytest.approx(ratio - 1 - q * se, rel=1e-9)
    assert row["lift_ci_high"] == pytest.approx(ratio - 1 + q * se, rel=1e-9)


def test_small_groups_get_scipys_exact_wilcoxon():
    """Changes of active hours without ties: scipy's exact distribution. Few changed users
    with ties: scipy's exact permutation test, also with many unchanged users around."""
    rng = np.random.default_rng(8)
    b = rng.exponential(2.0, 12)
    untied = np.r_[b, b + rng.normal(0.8, 1.0, 12)]
    tied_13 = [1, 2, 3, 1, 4, 2, -1, 3, 1, 5, 2, 1, -2]
    tied_10 = [0] * 40 + [1, -1, 2, 1, 1, 3, -2, 1, 2, 1]
    out = _by_key(impact_stats(_table([
        _rows("untied", untied[:12], untied[12:], [True] * 12),
        _rows("tied_13", np.zeros(13), tied_13, [True] * 13),
        _rows("tied_10", np.ones(50), np.ones(50) + tied_10, [True] * 50),
    ])))
    changes = untied[12:] - untied[:12]
    assert out["untied"]["p_value_wilcoxon"] == pytest.approx(
        stats.wilcoxon(changes, method="exact").pvalue, rel=1e-9)
    for key, diff in (("tied_13", tied_13), ("tied_10", tied_10)):
        moved = np.array([v for v in diff if v != 0], dtype=float)
        expected = stats.wilcoxon(moved).pvalue  # scipy's own permutation test
        assert expected != pytest.approx(stats.wilcoxon(moved, method="asymptotic").pvalue)
        assert out[key]["p_value_wilcoxon"] == pytest.approx(expected, rel=1e-9), key


def _reference(before: np.ndarray, after: np.ndarray, treated: np.ndarray,
               confidence: float, alpha: float) -> dict[str, object]:
    """One group's statistics with scipy and numpy, group by group: the module's rules."""
    b, a = before[treated], after[treated]
    d, dc = a - b, (after - before)[~treated]
    n, m = len(d), len(dc)
    row: dict[str, object] = {name: None for name in OUTPUT_COLUMNS}
    row.update(users=n, comparison_users=m)
    if n >= 1:
        row.update(mean_before=b.mean(), mean_after=a.mean(), mean_diff=d.mean(),
                   zero_both_share=np.mean((b == 0) & (a == 0)))
        if b.mean() != 0:
            row["lift"] = a.mean() / b.mean() - 1
        if m >= 1:
            row["did"] = d.mean() - dc.mean()
    if n < 2:
        return row
    q = stats.t.ppf(0.5 + confidence / 2, n - 1)
    if np.all(d == d[0]):
        row["p_value_t"] = 1.0 if d[0] == 0 else None
    else:
        paired = stats.ttest_rel(a, b)
        ci = paired.confidence_interval(confidence)
        row.update(p_value_t=paired.pvalue, ci_low=ci.low, ci_high=ci.high)
    if row["p_value_t"] is not None:
        row["significant"] = row["p_value_t"] < alpha
    moved = d[d != 0]
    row["p_value_wilcoxon"] = stats.wilcoxon(moved).pvalue if len(moved) else 1.0
    if row["lift"] is not None:
        cov = np.cov(np.vstack([a, b]))
        ratio = a.mean() / b.mean()
        lin_var = cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]
        if lin_var > 1e-12 * (cov[0, 0] + ratio**2 * cov[1, 1]):
            half = q * math.sqrt(lin_var / n) / abs(b.mean())
            row.update(lift_ci_low=ratio - 1 - half, lift_ci_high=ratio - 1 + half)
    if m >= 2:
        if np.all(d == d[0]) and np.all(dc == dc[0]):
            row["p_value_did"] = 1.0 if d[0] == dc[0] else None
        else:
            welch = stats.ttest_ind(d, dc, equal_var=False)
            ci = welch.confidence_interval(confidence)
            row.update(p_value_did=welch.pvalue, did_ci_low=ci.low, did_ci_high=ci.high)
    return row


def _mixed_groups(rng: np.random.Generator, count: int) -> list[dict[str, np.ndarray]]:
    """Groups of every shape the statistics treat differently.

    Small groups with tied changes are kept to at most 7 users: scipy's own Wilcoxon,
    which the reference calls, takes up to a second per group above that.
    """
    groups = []
    for i in range(count):
        key = f"g{i:04d}"
        kind = i % 10
        if kind == 0:  # nobody active
            k = int(rng.integers(1, 6))
            groups.append(_rows(key, np.zeros(2 * k), np.zeros(2 * k), [True, False] * k))
        elif kind == 1:  # every pushed user changes by the same amount
            k = int(rng.integers(2, 8))
            base = rng.poisson(1.0, k).astype(float)
            groups.append(_rows(key, base, base + 2, [True] * (k - 1) + [False]))
        elif kind == 2:  # active hours: continuous, no ties (exact up to 50 users)
            k = int(rng.integers(1, 80))
            b = rng.exponential(1.0, k)
            groups.append(_rows(key, b, b + rng.normal(0.2, 1, k), rng.random(k) < 0.7))
        elif kind == 3:  # a single pushed user
            groups.append(_group(rng, key, 1, int(rng.integers(0, 3))))
        elif kind == 4:  # a handful of users, tied changes (permutation test)
            b = rng.poisson(2.0, int(rng.integers(2, 8))).astype(float)
            groups.append(_rows(key, b, b + rng.integers(-1, 3, len(b)), np.ones(len(b), bool)))
        else:  # counts, mostly zeros and ties
            groups.append(_group(rng, key, int(rng.integers(30, 400)),
                                 int(rng.integers(0, 60)), effect=rng.choice([1.0, 1.4])))
    return groups


def test_vectorized_equals_a_loop_over_groups():
    rng = np.random.default_rng(2024)
    groups = _mixed_groups(rng, 1000)
    out = impact_stats(_table(groups), confidence=0.9, alpha=0.1)
    _assert_no_nan(out)
    rows = _by_key(out)
    assert list(rows) == sorted(g["group_key"][0] for g in groups)

    for group in groups:
        key = group["group_key"][0]
        expected = _reference(group["before"], group["after"], group["treated"], 0.9, 0.1)
        got = rows[key]
        for name in OUTPUT_COLUMNS:
            want = expected[name]
            if want is None or isinstance(want, (bool, np.bool_, int)):
                assert got[name] == want, (key, name)
            else:
                assert got[name] == pytest.approx(float(want), rel=1e-9, abs=1e-12), (key, name)


# Inputs ----------------------------------------------------------------------------------

def test_integer_keys_from_arrays_and_custom_column_names():
    out = impact_stats_from_arrays(
        np.array([7, 3, 7, 3, 3]), [0, 1, 2, 0, 1], [1, 1, 2, 3, 1],
        np.array([True, True, True, True, False]), key_name="campaign_id")
    assert out.column_names == ["campaign_id", *OUTPUT_COLUMNS]
    assert out.column("campaign_id").to_pylist() == [3, 7]
    assert out.column("users").to_pylist() == [2, 2]

    renamed = pa.table({"automation_id": ["a", "a"], "pre": [0.0, 1.0], "post": [1.0, 1.0],
                        "pushed": [True, True]})
    out = impact_stats(renamed, group_column="automation_id", before_column="pre",
                       after_column="post", treated_column="pushed")
    assert out.column("mean_diff").to_pylist() == [0.5]


def test_bad_inputs_raise():
    good = {"group_key": ["a", "a"], "before": [0.0, 1.0], "after": [1.0, 2.0],
            "treated": [True, True]}
    with pytest.raises(ValueError, match="nulls"):
        impact_stats(pa.table({**good, "before": [None, 1.0]}))
    with pytest.raises(ValueError, match="NaN"):
        impact_stats(pa.table({**good, "after": [math.nan, 1.0]}))
    with pytest.raises(ValueError, match="nulls"):
        impact_stats(pa.table({**good, "group_key": ["a", None]}))
    with pytest.raises(ValueError, match="boolean"):
        impact_stats(pa.table({**good, "treated": [1, 1]}))
    with pytest.raises(ValueError, match="missing"):
        impact_stats(pa.table({k: v for k, v in good.items() if k != "treated"}))
    with pytest.raises(ValueError, match="confidence"):
        impact_stats(pa.table(good), confidence=95)
    empty = impact_stats(pa.table(good).slice(0, 0))
    assert empty.num_rows == 0 and empty.column_names == ["group_key", *OUTPUT_COLUMNS]


# Comparison sampler ----------------------------------------------------------------------

def test_splitmix64_matches_the_reference_generator():
    """Outputs 1 and 2 of Vigna's splitmix64.c seeded with 0 (state advances by gamma)."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    out = splitmix64(np.array([0, gamma], dtype=np.uint64))
    assert [hex(int(v)) for v in out] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4"]


def test_comparison_sample_is_deterministic_and_excludes_pushed_users():
    rng = np.random.default_rng(0)
    candidates = np.arange(1, 10_001, dtype=np.int64)
    excluded = rng.choice(candidates, 3000, replace=False)
    sample = sample_comparison_users(candidates, excluded, 1000, "campaign-42")

    assert len(sample) == 1000 and sample.dtype == np.int64
    assert np.all(np.diff(sample) > 0)
    assert not np.isin(sample, excluded).any()
    assert np.isin(sample, candidates).all()
    # Same draw whatever the order or duplication of candidates and excluded users.
    shuffled = np.r_[rng.permutation(candidates), candidates[:500]]
    assert np.array_equal(
        sample_comparison_users(shuffled, list(excluded[::-1]), 1000, "campaign-42"), sample)
    # Pinned: changing the hash would silently redraw every campaign's comparison group.
    assert sample_comparison_users(range(1, 101), [], 5, "campaign-42").tolist() == \
        PINNED_SAMPLE


PINNED_SAMPLE = [30, 35, 50, 79, 89]


def test_comparison_sample_differs_by_seed_and_looks_random():
    candidates = np.arange(100_000, dtype=np.int64)
    one = sample_comparison_users(candidates, [], 1000, "campaign-1")
    two = sample_comparison_users(candidates, [], 1000, "campaign-2")
    assert not np.array_equal(one, two)
    assert 0 <= len(np.intersect1d(one, two)) <= 40  # 10 expected from independent draws
    # Spread over the id range rather than clustered (ids are not the order).
    assert abs(one.mean() - 50_000) < 4 * 28_868 / math.sqrt(1000)
    counts = np.histogram(one, bins=10, range=(0, 100_000))[0]
    assert counts.min() >= 60 and counts.max() <= 140


def test_comparison_sample_edges_and_stability():
    assert sample_comparison_users([5, 3, 3, 9], [9], 10, "s").tolist() == [3, 5]
    assert sample_comparison_users([5, 3, 9], [], 0, "s").tolist() == []
    with pytest.raises(ValueError):
        sample_comparison_users([1, 2], [], -1, "s")
    with pytest.raises(ValueError):
        sample_comparison_users(np.array([1.5, 2.0]), [], 1, "s")
    # A few more candidates change the sample by at most that many users.
    base = np.arange(5000)
    before = sample_comparison_users(base, [], 200, "c")
    after = sample_comparison_users(np.r_[base, np.arange(10_000, 10_010)], [], 200, "c")
    assert len(np.setdiff1d(before, after)) <= 10


@pytest.mark.parametrize("seed", range(6))
def test_comparison_pool_draws_what_the_reference_definition_draws(seed):
    """Many draws from one account's pool (users, their pushes' instants) equal
    ``sample_comparison_users`` with the users pushed in ``[t − w, t + w)`` excluded:
    boundaries exact (a push at ``t − w`` excludes, at ``t + w`` does not), pushes of
    users not of the account ignored, several pushes per user."""
    rng = np.random.default_rng(seed)
    users = rng.choice(10**6, 3_000, replace=False).astype(np.int64)
    pushed = np.concatenate([rng.choice(users, 4_000), rng.integers(10**6, 2 * 10**6, 50)])
    at = rng.integers(0, 3 * 86_400_000_000, len(pushed)) + 1_770_000_000_000_000
    pool = ComparisonPool(np.concatenate([users, users[:10]]), pushed, at)
    w = 24 * 3_600_000_000
    anchors = list(rng.choice(at, 10)) + [int(at.min()) - w, int(at.max()) + w,
                                          int(at[0]) + w, int(at[1]) - w + 1]
    for i, t in enumerate(anchors):
        size = [0, 1, 50, 500, 10**6][i % 5]
        near = (at >= t - w) & (at < t + w)
        want = sample_comparison_users(users, pushed[near], size, f"c{i}")
        got = pool.draw(int(t), w, size, f"c{i}")
        assert got.dtype == np.int64 and got.tolist() == want.tolist(), (i, t)
    # a user pushed once, at x: outside a window ending at x, inside one starting there
    x = int(at.max()) + 7 * w
    lone = int(users.max()) + 1
    edge = ComparisonPool(np.append(users, lone), np.append(pushed, lone), np.append(at, x))
    assert lone in edge.draw(x - w, w, 10**6, "s").tolist()
    assert lone not in edge.draw(x + w, w, 10**6, "s").tolist()
    assert lone not in edge.draw(x + w - 1, w, 10**6, "s").tolist()
    assert lone in edge.draw(x + w + 1, w, 10**6, "s").tolist()
    with pytest.raises(ValueError):
        pool.draw(int(at[0]), w, -1, "s")
    empty = ComparisonPool(users, np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert empty.draw(0, w, 5, "s").tolist() == sample_comparison_users(users, [], 5,
                                                                       "s").tolist()
