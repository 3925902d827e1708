"""Did users become more active after a push? Before/after statistics per campaign or automation.

For every delivered push we know one user's activity (events, or active hours) in the window
*before* the push, ``[t - W, t)``, and in the window *after* it, ``[t, t + W)``. Each row of
the input is one such pair, tagged with the group it belongs to (a campaign, an automation, a
campaign on one send date, ... - the caller chooses; any date range is just a different
selection of rows) and with ``treated``: True for a pushed user, False for a *comparison*
user of the same account who got no push around that time, measured over the same windows
placed around the campaign's median send time. :func:`impact_stats` returns one row per group.

How to read the result
----------------------
``mean_diff`` is the average change per pushed user (after minus before), with its
interval ``ci_low``..``ci_high`` (95% unless asked otherwise): if the interval is entirely
above zero, users were more active after the push. ``lift`` says the same in relative terms
(+0.12 = 12% more activity than before), with its own interval. ``significant`` is the
yes/no answer. Intervals use Student's t with users - 1 degrees of freedom: exactly for
``mean_diff``; for ``lift``, whose delta-method interval is a large-sample approximation,
t just widens small groups' intervals a little. The ``did`` interval uses Welch's degrees
of freedom, as pushed and comparison users may vary differently.

A push is not the only reason activity changes: a weekday effect, a season, a product launch
move everybody. ``did`` (difference in differences) subtracts the change seen in the
comparison group from the change of pushed users over the same kind of window, so a trend
that lifts everyone cancels out. When ``lift`` is significant but ``did``'s interval contains
zero, the push most likely rode a general trend rather than causing it.

``significant`` follows the paired t-test (``p_value_t < alpha``), not the Wilcoxon test. The
question growth teams ask is about the *average*: "how many more events per pushed user?",
which times the audience gives the extra activity a campaign produced. The t-test is the
test of exactly that average, and it agrees with the interval around ``mean_diff`` (when
``confidence == 1 - alpha``, significant means the interval excludes zero). Activity counts
are skewed, but over the hundreds of users a campaign usually reaches their average is close
to normally distributed, which is all the t-test needs. The Wilcoxon p-value answers a
neighbouring question - among users whose activity changed, did more (and bigger) changes
go up than down? - and is there as a cross-check, less swayed by a handful of very active
users. If the two disagree, those few users are driving the average: look before
announcing a win, above all in groups of a few dozen users. Groups are tested one by one:
out of 100 campaigns with no effect at all, about ``alpha * 100`` come out significant by
chance.

Users who did nothing (zeros and ties)
--------------------------------------
Most pushed users are inactive in both windows, so their change is exactly 0; many others
change by the same small amount (+1, -1). The two tests treat them as follows.

* t-test and intervals: every user counts, zeros included. They are real observations of
  "no change" and pull the average towards zero, as they should.
* Wilcoxon signed-rank: users whose activity did not change are set aside (scipy's
  ``zero_method="wilcox"``, also what R does). A user with no change says nothing about
  the *direction* of change, which is what this test is about; how many such users there
  were is reported instead in ``zero_both_share`` (the share inactive in both windows).
  We do not use "pratt": with, say, 900 unchanged and 100 changed users, Pratt ranks the
  changed users above all 900 zeros, and the test degenerates into counting ups against
  downs, ignoring how large the changes were. "zsplit" counts half of each zero as an up
  and half as a down, which mostly dilutes a real effect.
* Ties among the changes (several users at +1) get their average rank. The p-value is
  the one ``scipy.stats.wilcoxon`` gives by default (``method="auto"``) for the changed
  users' changes: exact when at most 50 users changed and no two changes have the same
  size; when at most 13 changed with ties, exact too, from all 2^13 (or fewer) ways of
  flipping the signs of the changes (a permutation test - the textbook exact answer
  with ties); otherwise the normal approximation with the variance corrected for ties
  (no continuity correction), which is accurate with that many changed users. scipy
  would run that permutation test one group at a time, in up to a second per group; we
  hand the same test to ``scipy.stats.permutation_test`` for many groups at once.

When a number is missing (null, never NaN)
------------------------------------------
* No pushed user in the group: every statistic is null.
* One pushed user: the means, ``mean_diff``, ``lift`` and ``zero_both_share`` are shown;
  intervals, p-values and ``significant`` need at least two users (a spread) and are null.
* Every pushed user changed by exactly the same amount: the data give no idea of the
  noise, so ``ci_low``/``ci_high`` are null. If that common change is 0 (typically: nobody
  was active in either window) nothing moved, and the p-values are 1 and ``significant`` is
  False: whatever the noise level, zero change is no evidence of an effect. If it is not 0
  (say every user +1), the t-test p-value would depend entirely on the unknown noise - it
  could be anything from 0 to 1 - so ``p_value_t`` and ``significant`` are null rather than
  a certainty the data cannot support. The Wilcoxon test needs no noise estimate and still
  gives a p-value there.
* ``lift`` is null when nobody was active before (``mean_before == 0``: "x% more than
  nothing" is undefined); its interval is also null with one user, or when after is
  exactly proportional to before for every user (no spread again). The lift interval comes
  from the delta method, which is reliable only when ``mean_before`` is clearly above zero;
  with little activity before the push, prefer ``mean_diff``.
* ``did`` needs at least one pushed and one comparison user; its interval and p-value need
  two of each, and follow the same zero-spread rule as the paired t-test.

Each row is one user's before/after pair and rows are assumed independent: give a user at
most one row per group (for instance, their first push of the campaign), otherwise a user
pushed five times counts as five users and the intervals come out too narrow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.core.arrays import sorted_unique

# Statistics columns, after the group key column, in output order.
OUTPUT_COLUMNS: tuple[str, ...] = (
    "users", "comparison_users",
    "mean_before", "mean_after", "mean_diff", "ci_low", "ci_high",
    "lift", "lift_ci_low", "lift_ci_high",
    "p_value_t", "p_value_wilcoxon", "zero_both_share", "significant",
    "did", "did_ci_low", "did_ci_high", "p_value_did",
)

# Largest number of changed users for which Wilcoxon's exact distribution is used (when
# their changes have no ties); scipy's own threshold for method="auto".
WILCOXON_EXACT_MAX = 50
# Largest number of changed users with ties for which the exact permutation test runs (2^13
# sign patterns); scipy's threshold for method="auto", where it stays deterministic.
WILCOXON_PERMUTATION_MAX = 13
# Values per batch of permuted data handed to the statistic (memory ~ 8 bytes each).
_PERMUTATION_BATCH_VALUES = 2_000_000

# The delta-method variance of the lift is a difference of terms; below this fraction of
# their size it is rounding noise left from an exactly zero spread.
_LIFT_VARIANCE_RTOL = 1e-12


def impact_stats(
    table: pa.Table,
    *,
    group_column: str = "group_key",
    before_column: str = "before",
    after_column: str = "after",
    treated_column: str = "treated",
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> pa.Table:
    """Before/after statistics of each group of ``table`` (see the module docstring).

    ``table`` has one row per (group, user, push window): the group key (any orderable
    Arrow type, no nulls), ``before`` and ``after`` activity (numbers, no nulls or NaN: no
    activity is 0) and ``treated`` (bool: pushed user, or comparison user). Returns one row
    per group, sorted by key: the key column under its input name, then
    :data:`OUTPUT_COLUMNS`. ``confidence`` sets every interval; ``alpha`` the threshold of
    ``significant``.
    """
    columns = (group_column, before_column, after_column, treated_column)
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise ValueError(f"impact_stats: missing column(s) {missing}")
    for name in columns[1:]:
        if table.column(name).null_count:
            raise ValueError(f"impact_stats: {name!r} has nulls (no activity is 0)")
    return impact_stats_from_arrays(
        table.column(group_column),
        table.column(before_column).to_numpy(),
        table.column(after_column).to_numpy(),
        table.column(treated_column).to_numpy(),
        key_name=group_column, confidence=confidence, alpha=alpha)


def impact_stats_from_arrays(
    group_keys: pa.Array | pa.ChunkedArray | np.ndarray | Sequence,
    before: np.ndarray,
    after: np.ndarray,
    treated: np.ndarray,
    *,
    key_name: str = "group_key",
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> pa.Table:
    """:func:`impact_stats` on parallel arrays: one element per (group, user, window).

    Every statistic is computed for all groups at once from per-group sums (``bincount``
    over group codes), so the cost grows with the number of rows, not groups; only the
    Wilcoxon test goes through scipy in batches of groups of similar size.
    """
    from scipy import stats  # imported where used: ~1 s that only impact runs pay
    if not 0 < confidence < 1 or not 0 < alpha < 1:
        raise ValueError("impact_stats: confidence and alpha must lie strictly between 0 and 1")
    keys = _as_key_array(group_keys)
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    treated = np.asarray(treated)
    if not (len(keys) == before.shape[0] == after.shape[0] == treated.shape[0]):
        raise ValueError("impact_stats: group_keys, before, after and treated differ in length")
    if treated.dtype != np.bool_:
        raise ValueError(f"impact_stats: treated must be boolean, got {treated.dtype}")
    if not (np.isfinite(before).all() and np.isfinite(after).all()):
        raise ValueError("impact_stats: before/after contain NaN or infinite values")

    codes, unique_keys = _encode_groups(keys)
    g = len(unique_keys)
    pushed = _moments(codes[treated], before[treated], after[treated], g)
    control = _moments(codes[~treated], before[~treated], after[~treated], g)
    q_level = 0.5 + confidence / 2

    has_users = pushed.n >= 1
    two = pushed.n >= 2

    # Paired t-test on after - before, and its interval.
    zero_change = two & pushed.constant & (pushed.constant_value == 0)
    spread = two & ~pushed.constant
    se = np.sqrt(pushed.var_diff / np.maximum(pushed.n, 1))
    p_t = np.full(g, np.nan)
    ci_low, ci_high = np.full(g, np.nan), np.full(g, np.nan)
    idx = np.flatnonzero(spread)
    df = pushed.n[idx] - 1
    p_t[idx] = 2 * stats.t.sf(np.abs(pushed.mean_diff[idx] / se[idx]), df)
    half = stats.t.ppf(q_level, df) * se[idx]
    ci_low[idx] = pushed.mean_diff[idx] - half
    ci_high[idx] = pushed.mean_diff[idx] + half
    p_t[zero_change] = 1.0
    p_t_defined = spread | zero_change

    # Lift: a ratio of two correlated means; delta method with their sample covariance.
    has_base = has_users & (pushed.mean_before != 0)
    ratio = np.divide(pushed.mean_after, pushed.mean_before,
                      out=np.zeros(g), where=has_base)
    lift = ratio - 1
    # Var(mean_after - ratio * mean_before) * n: the linearized ratio's sample variance.
    idx = np.flatnonzero(has_base & two)
    r, var_a, var_b = ratio[idx], pushed.var_after[idx], pushed.var_before[idx]
    lin_var = var_a - 2 * r * pushed.cov[idx] + r**2 * var_b
    keep = lin_var > _LIFT_VARIANCE_RTOL * (var_a + r**2 * var_b)
    idx, lin_var = idx[keep], lin_var[keep]
    lift_spread = np.zeros(g, dtype=bool)
    lift_spread[idx] = True
    lift_low, lift_high = np.full(g, np.nan), np.full(g, np.nan)
    lift_se = np.sqrt(lin_var / pushed.n[idx]) / np.abs(pushed.mean_before[idx])
    half = stats.t.ppf(q_level, pushed.n[idx] - 1) * lift_se
    lift_low[idx] = lift[idx] - half
    lift_high[idx] = lift[idx] + half

    # Difference in differences, Welch interval (unequal variances, Welch-Satterthwaite df).
    has_did = has_users & (control.n >= 1)
    did = pushed.mean_diff - control.mean_diff
    both_two = two & (control.n >= 2)
    var_t = pushed.var_diff / np.maximum(pushed.n, 1)
    var_c = control.var_diff / np.maximum(control.n, 1)
    did_se2 = var_t + var_c
    did_spread = both_two & ~(pushed.constant & control.constant)
    did_zero = (both_two & pushed.constant & control.constant
                & (pushed.constant_value == control.constant_value))
    p_did = np.full(g, np.nan)
    did_low, did_high = np.full(g, np.nan), np.full(g, np.nan)
    idx = np.flatnonzero(did_spread)
    vt, vc = var_t[idx], var_c[idx]
    welch_df = (vt + vc) ** 2 / (vt**2 / (pushed.n[idx] - 1) + vc**2 / (control.n[idx] - 1))
    did_se = np.sqrt(did_se2[idx])
    p_did[idx] = 2 * stats.t.sf(np.abs(did[idx] / did_se), welch_df)
    half = stats.t.ppf(q_level, welch_df) * did_se
    did_low[idx] = did[idx] - half
    did_high[idx] = did[idx] + half
    p_did[did_zero] = 1.0

    p_w = _wilcoxon_p(codes[treated], after[treated] - before[treated], pushed.n)

    return pa.table({
        key_name: unique_keys,
        "users": pa.array(pushed.n, pa.int64()),
        "comparison_users": pa.array(control.n, pa.int64()),
        "mean_before": _nullable(pushed.mean_before, has_users),
        "mean_after": _nullable(pushed.mean_after, has_users),
        "mean_diff": _nullable(pushed.mean_diff, has_users),
        "ci_low": _nullable(ci_low, spread),
        "ci_high": _nullable(ci_high, spread),
        "lift": _nullable(lift, has_base),
        "lift_ci_low": _nullable(lift_low, lift_spread),
        "lift_ci_high": _nullable(lift_high, lift_spread),
        "p_value_t": _nullable(p_t, p_t_defined),
        "p_value_wilcoxon": _nullable(p_w, two),
        "zero_both_share": _nullable(pushed.zero_both / np.maximum(pushed.n, 1), has_users),
        "significant": pa.array(np.where(p_t_defined, p_t, 1.0) < alpha, pa.bool_(),
                                mask=~p_t_defined),
        "did": _nullable(did, has_did),
        "did_ci_low": _nullable(did_low, did_spread),
        "did_ci_high": _nullable(did_high, did_spread),
        "p_value_did": _nullable(p_did, did_spread | did_zero),
    })


@dataclass(frozen=True)
class _Moments:
    """Per-group sample moments of one side (pushed or comparison users).

    Means are 0 and (co)variances NaN or infinite where the group has too few users; the
    caller masks them. ``constant`` flags groups whose changes (after - before) are all
    identical, decided exactly (min == max) rather than from a variance that rounding can
    leave slightly above zero; ``var_diff`` is exactly 0 there.
    """

    n: np.ndarray
    mean_before: np.ndarray
    mean_after: np.ndarray
    mean_diff: np.ndarray
    var_before: np.ndarray
    var_after: np.ndarray
    cov: np.ndarray
    var_diff: np.ndarray
    constant: np.ndarray
    constant_value: np.ndarray  # the common change where ``constant``
    zero_both: np.ndarray  # users inactive in both windows


def _moments(codes: np.ndarray, before: np.ndarray, after: np.ndarray, g: int) -> _Moments:
    """Means, variances and covariance of each group, two-pass for accuracy."""
    diff = after - before
    n = np.bincount(codes, minlength=g)
    count = np.maximum(n, 1).astype(np.float64)
    dof = n - 1.0
    mean_b = np.bincount(codes, before, g) / count
    mean_a = np.bincount(codes, after, g) / count
    mean_d = np.bincount(codes, diff, g) / count
    dev_b = before - mean_b[codes]
    dev_a = after - mean_a[codes]
    dev_d = diff - mean_d[codes]
    with np.errstate(divide="ignore", invalid="ignore"):
        var_b = np.bincount(codes, dev_b * dev_b, g) / dof
        var_a = np.bincount(codes, dev_a * dev_a, g) / dof
        cov = np.bincount(codes, dev_a * dev_b, g) / dof
        var_d = np.bincount(codes, dev_d * dev_d, g) / dof
    low = np.full(g, np.inf)
    high = np.full(g, -np.inf)
    np.minimum.at(low, codes, diff)
    np.maximum.at(high, codes, diff)
    constant = low == high  # False for empty groups (inf != -inf)
    var_d[constant] = 0.0
    zero_both = np.bincount(codes, (before == 0) & (after == 0), g)
    return _Moments(n, mean_b, mean_a, mean_d, var_b, var_a, cov, var_d,
                    constant, np.where(constant, low, 0.0), zero_both)


def _wilcoxon_p(codes: np.ndarray, diff: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided Wilcoxon signed-rank p-value of each group with at least two users.

    Only changed users enter (``zero_method="wilcox"``); a group where nobody changed
    gets 1. Every other group gets ``scipy.stats.wilcoxon(changes)`` with scipy's default
    ``method="auto"`` choice (see the module docstring), computed for many groups per
    scipy call:

    * ``"exact"`` and ``"asymptotic"``: scipy tests every row of a 2-D array, so groups
      are laid out as rows of a zero-padded block; padding zeros are discarded by
      ``zero_method="wilcox"`` exactly like a group's own zeros, which leaves each row's
      result unchanged. Blocks gather groups of the same bit length of their number of
      changed users, so padding at most doubles a block.
    * small samples with ties: the exact sign-flip permutation test. Its statistic, the
      sum of signed ranks, is ``2 * W+ - sum(ranks)`` with ranks fixed under sign flips,
      so its p-values equal those of scipy's permutation test on ``W+``. Blocks gather
      groups of exactly the same size: padding would multiply the 2^m sign patterns.
    """
    from scipy import stats  # imported where used: ~1 s that only impact runs pay
    g = len(n)
    p = np.full(g, np.nan)
    moved = diff != 0
    codes, diff = codes[moved], diff[moved]
    movers = np.bincount(codes, minlength=g)
    p[(n >= 2) & (movers == 0)] = 1.0

    size = np.abs(diff)
    order = np.lexsort((size, codes))
    codes, diff, size = codes[order], diff[order], size[order]
    position = np.arange(len(codes)) - (np.cumsum(movers) - movers)[codes]
    tied = np.zeros(g, dtype=bool)
    same = (codes[1:] == codes[:-1]) & (size[1:] == size[:-1])
    tied[codes[1:][same]] = True

    testable = (n >= 2) & (movers >= 1)
    exact = testable & ~tied & (movers <= WILCOXON_EXACT_MAX)
    permutation = testable & tied & (movers <= WILCOXON_PERMUTATION_MAX)
    asymptotic = testable & ~exact & ~permutation
    bit_length = np.frexp(movers.astype(np.float64))[1]
    row_of = np.full(g, -1)
    for method, chosen, bucket in (("exact", exact, bit_length),
                                   ("asymptotic", asymptotic, bit_length),
                                   ("permutation", permutation, movers)):
        groups = np.flatnonzero(chosen)
        for b in np.unique(bucket[groups]):
            rows = groups[bucket[groups] == b]
            row_of[rows] = np.arange(len(rows))
            sel = np.flatnonzero(row_of[codes] >= 0)
            block = np.zeros((len(rows), movers[rows].max()))
            block[row_of[codes[sel]], position[sel]] = diff[sel]
            row_of[rows] = -1
            if method == "permutation":
                p[rows] = _signed_rank_permutation_p(block)
            else:
                p[rows] = stats.wilcoxon(block, zero_method="wilcox", method=method,
                                         axis=1).pvalue
    return p


def _signed_rank_permutation_p(block: np.ndarray) -> np.ndarray:
    """Exact two-sided signed-rank p-value of each row (no zeros), over all sign flips.

    The p-value depends only on the set of signed ranks, and small groups of counts
    share few such sets (ranks are halves, compared exactly): each distinct set is
    tested once.
    """
    from scipy import stats  # imported where used: ~1 s that only impact runs pay
    signed = np.sort(np.sign(block) * stats.rankdata(np.abs(block), axis=1), axis=1)
    distinct, inverse = np.unique(signed, axis=0, return_inverse=True)
    p = stats.permutation_test(
        (distinct,), _sum_last_axis, permutation_type="samples", vectorized=True,
        n_resamples=np.inf, axis=1, batch=max(1, _PERMUTATION_BATCH_VALUES // distinct.size),
    ).pvalue
    return np.atleast_1d(p)[inverse.ravel()]


def _sum_last_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(x, axis=axis)


def _nullable(values: np.ndarray, defined: np.ndarray) -> pa.Array:
    """float64 Arrow array, null where ``defined`` is False (never NaN)."""
    return pa.array(np.where(defined, values, 0.0), pa.float64(), mask=~defined)


def _as_key_array(keys: pa.Array | pa.ChunkedArray | np.ndarray | Sequence) -> pa.Array:
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    elif not isinstance(keys, pa.Array):
        keys = pa.array(keys)
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    if keys.null_count:
        raise ValueError("impact_stats: group keys contain nulls")
    return keys


def _encode_groups(keys: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dense group codes 0..G-1 in sorted key order, and the sorted distinct keys."""
    encoded = pc.dictionary_encode(keys)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)].astype(np.intp)
    return codes, encoded.dictionary.take(pa.array(order))


# Comparison group sampling ---------------------------------------------------------------

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 output function (Steele, Lea & Flood 2014) on each uint64 of ``x``.

    A bijection of uint64 with strong avalanche: distinct inputs get distinct, evenly
    spread outputs. ``splitmix64(0)`` is the first output of a SplitMix64 generator
    seeded with 0, ``0xE220A8397B1DCDAF``.
    """
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN_GAMMA  # uint64 arithmetic wraps around
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def sample_comparison_users(
    candidates: np.ndarray | Iterable[int],
    excluded: np.ndarray | Iterable[int],
    size: int,
    seed: str,
) -> np.ndarray:
    """A deterministic random sample of ``size`` comparison users, sorted by id (int64).

    ``candidates`` are an account's user ids; ``excluded`` those pushed in
    ``[t - W, t + W)``, who cannot serve as unpushed comparison. Each remaining user gets
    the score ``splitmix64(user_id XOR blake2b(seed))`` and the ``size`` lowest scores
    win (all remaining users when fewer). Re-running with the same seed - use the campaign
    id - draws the same users whatever the order or duplication of ``candidates``, and a
    user's score does not depend on who else is a candidate, so a candidate list that
    grows by a few users changes the sample by at most that many. Another seed draws an
    independent sample.
    """
    if size < 0:
        raise ValueError("sample_comparison_users: size must be >= 0")
    ids = sorted_unique(_int_ids(candidates))
    ids = ids[~np.isin(ids, _int_ids(excluded))]
    return _lowest_scores(ids, size, seed)


def _lowest_scores(ids: np.ndarray, size: int, seed: str) -> np.ndarray:
    """The ``size`` ids (unique, int64) of lowest score under ``seed``, sorted."""
    if size >= len(ids):
        return ids
    if size == 0:
        return ids[:0]
    key = np.uint64(int.from_bytes(
        hashlib.blake2b(seed.encode("utf-8"), digest_size=8).digest(), "little"))
    score = splitmix64(ids.view(np.uint64) ^ key)
    return np.sort(ids[np.argpartition(score, size - 1)[:size]])


class ComparisonPool:
    """One account's users and their push instants, for many draws: ``draw`` gives what
    ``sample_comparison_users(users, users pushed in [t − w, t + w), size, seed)`` gives,
    in time linear in the account's users (two binary searches per user), not in their
    pushes: a day of a thousand campaigns draws a thousand times."""

    def __init__(self, user_ids: np.ndarray, push_users: np.ndarray,
                 push_instants: np.ndarray):
        self.ids = sorted_unique(_int_ids(user_ids))
        users = _int_ids(push_users)
        at = np.asarray(push_instants, np.int64).ravel()
        known = np.isin(users, self.ids)  # a pushed user not of the account excludes nobody
        users, at = users[known], at[known]
        self.base = int(at.min()) if len(at) else 0
        span = int(at.max()) - self.base + 1 if len(at) else 1
        # (user's position, instant − base) as one sortable int64, when it fits
        self.span = span
        if len(self.ids) and span > np.iinfo(np.int64).max // (len(self.ids) + 1):
            raise ValueError("ComparisonPool: push instants span too wide to pack")
        self.keys = np.sort(np.searchsorted(self.ids, users).astype(np.int64) * span
                            + (at - self.base))

    def draw(self, t: int, width: int, size: int, seed: str) -> np.ndarray:
        """Users without a push in ``[t − width, t + width)`` (µs), ``size`` of them."""
        if size < 0:
            raise ValueError("sample_comparison_users: size must be >= 0")
        lo = np.clip(t - width - self.base, 0, self.span)
        hi = np.clip(t + width - self.base, 0, self.span)
        row = np.arange(len(self.ids), dtype=np.int64) * self.span
        pushed = np.searchsorted(self.keys, row + hi) > np.searchsorted(self.keys, row + lo)
        return _lowest_scores(self.ids[~pushed], size, seed)


def _int_ids(ids: np.ndarray | Iterable[int]) -> np.ndarray:
    if not isinstance(ids, np.ndarray):
        ids = np.fromiter(ids, dtype=np.int64)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"sample_comparison_users: user ids must be integers, got {ids.dtype}")
    return ids.astype(np.int64, copy=False).ravel()
