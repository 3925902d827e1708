"""Strict, vectorized conversion of loosely typed source columns to the landed types.

Application databases are not always as typed as their contract: a SQLite column holds
whatever was written to it, a PostgreSQL source may keep ids as text or durations as
``numeric``. Each function here takes an Arrow array of whatever type the driver
returned and gives back the typed values plus a mask of the rows that cannot be
converted *exactly*. Nothing is coerced silently: ``'12abc'`` is not 12, ``125.7`` is
not account 125, ``'NaN'`` is not 0, ``'2026-02-31'`` is not March 3rd; such rows are
flagged so that the caller quarantines them with a reason.

Everything runs as Arrow kernels over whole batches. The only per-row work is a
bisection over the rare batches that hold a value Arrow refuses to cast (invalid UTF-8,
an impossible date), which costs O(bad rows × log batch) casts, not a Python loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Canonical decimal integers only: no sign on zero, no leading zeros, no '.0', no spaces.
# Anything else is not exactly an integer id as the application wrote it.
_INT_TEXT = r"^-?(0|[1-9][0-9]{0,18})$"
_INT64_MAX_TEXT = "9223372036854775807"
# A finite or overflowing decimal number; 'NaN', 'Infinity', '', 'true', '12abc' are not.
_FLOAT_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
# Naive timestamps only (the contract: naive values mean UTC). A zone suffix in a text
# column is outside the contract and is not guessed at.
_TS_TEXT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?$"

_2_63 = float(2**63)


def _storage(arr: pa.Array) -> pa.Array:
    """The plain Arrow values behind an extension type (ADBC returns PostgreSQL
    ``numeric`` as an opaque extension over its text)."""
    return arr.storage if isinstance(arr.type, pa.BaseExtensionType) else arr


def false_mask(n: int) -> pa.Array:
    return pa.array(np.zeros(n, dtype=bool))


def _failing_rows(arr: pa.Array, convert: Callable[[pa.Array], pa.Array]) -> np.ndarray:
    """Row positions where ``convert`` raises, found by bisection (one call if none)."""
    bad: list[int] = []

    def visit(lo: int, hi: int) -> None:
        try:
            convert(arr.slice(lo, hi - lo))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            if hi - lo == 1:
                bad.append(lo)
                return
            mid = (lo + hi) // 2
            visit(lo, mid)
            visit(mid, hi)

    if len(arr):
        visit(0, len(arr))
    return np.array(bad, dtype=np.int64)


def _mask_at(n: int, positions: np.ndarray) -> pa.Array:
    m = np.zeros(n, dtype=bool)
    m[positions] = True
    return pa.array(m)


def _safe_cast(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """Cast what casts; null out and flag the rows that do not."""
    try:
        return pc.cast(arr, target), false_mask(len(arr))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    bad = _mask_at(len(arr), _failing_rows(arr, lambda a: pc.cast(a, target)))
    cleaned = pc.if_else(bad, pa.nulls(len(arr), arr.type), arr)
    return pc.cast(cleaned, target), bad


def decode_utf8(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Binary → string; rows that are not valid UTF-8 become null and are flagged."""
    arr = _storage(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return arr.cast(pa.string()), false_mask(len(arr))
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        return _safe_cast(arr, pa.string())
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string()), false_mask(len(arr))
    # numbers, timestamps...: their text form is always valid UTF-8
    return pc.cast(arr, pa.string()), false_mask(len(arr))


def _flag(values: pa.Array, bad: pa.Array) -> pa.Array:
    """``bad`` where the input had a value, False on nulls (null is handled by the rules)."""
    return pc.and_(pc.fill_null(bad, True), pc.is_valid(values))


def to_int64(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Exact integers of any source type; fractional, out-of-range or non-numeric → flagged."""
    arr = _storage(arr)
    n = len(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(n, pa.int64()), false_mask(n)
    if pa.types.is_integer(t):
        if pa.types.is_uint64(t):
            bad = pc.fill_null(pc.greater(arr, pa.scalar(2**63 - 1, pa.uint64())), False)
            return pc.cast(pc.if_else(bad, pa.nulls(n, t), arr), pa.int64()), bad
        return pc.cast(arr, pa.int64()), false_mask(n)
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        f = pc.cast(arr, pa.float64())
        ok = pc.and_(pc.is_finite(f), pc.equal(pc.floor(f), f))
        ok = pc.and_(ok, pc.and_(pc.less(f, _2_63), pc.greater_equal(f, -_2_63)))
        bad = _flag(arr, pc.invert(ok))
        return pc.cast(pc.if_else(bad, pa.nulls(n, pa.float64()), f), pa.int64()), bad
    if pa.types.is_boolean(t) or pa.types.is_temporal(t):
        return pa.nulls(n, pa.int64()), pc.is_valid(arr)
    text, bad_utf8 = decode_utf8(arr)
    ok = pc.match_substring_regex(text, _INT_TEXT)
    digits = pc.utf8_length(pc.utf8_ltrim(text, "-"))
    at_limit = pc.equal(digits, 19)
    # 19 digits may exceed int64: equal-length digit strings compare like the numbers
    over = pc.and_(at_limit, pc.greater(pc.utf8_ltrim(text, "-"), _INT64_MAX_TEXT))
    ok = pc.and_(ok, pc.invert(pc.fill_null(over, False)))
    bad = pc.or_(bad_utf8, _flag(text, pc.invert(ok)))
    return pc.cast(pc.if_else(bad, pa.nulls(n, pa.string()), text), pa.int64()), bad


def to_float64(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Numbers of any source type; text that is not exactly a decimal number → flagged.

    Non-finite values that *are* numbers (a PostgreSQL ``'NaN'::float8``, an overflowing
    ``1e999``) come back as NaN/inf, for the value rules to reject with their reason.
    """
    arr = _storage(arr)
    n = len(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(n, pa.float64()), false_mask(n)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pc.cast(arr, pa.float64()), false_mask(n)
    if pa.types.is_boolean(t) or pa.types.is_temporal(t):
        return pa.nulls(n, pa.float64()), pc.is_valid(arr)
    text, bad_utf8 = decode_utf8(arr)
    ok = pc.match_substring_regex(text, _FLOAT_TEXT)
    bad = pc.or_(bad_utf8, _flag(text, pc.invert(ok)))
    return pc.cast(pc.if_else(bad, pa.nulls(n, pa.string()), text), pa.float64()), bad


def to_text(arr: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Text as UTF-8 strings: (values, invalid UTF-8 mask, NUL-byte mask)."""
    text, bad_utf8 = decode_utf8(arr)
    nul = pc.fill_null(pc.match_substring(text, "\x00"), False)
    return text, bad_utf8, nul


def to_timestamp_utc(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """UTC instants: naive timestamps mean UTC, aware ones are converted; text must be a
    naive ISO timestamp of a real calendar instant (no zone suffix, no Feb 31st)."""
    arr = _storage(arr)
    n = len(arr)
    t = arr.type
    target = pa.timestamp("us", tz="UTC")
    if pa.types.is_null(t):
        return pa.nulls(n, target), false_mask(n)
    if pa.types.is_timestamp(t):
        if t.tz is None:
            arr = pc.assume_timezone(arr, "UTC")
        return pc.cast(arr, target), false_mask(n)
    if pa.types.is_date(t):
        return pc.assume_timezone(pc.cast(arr, pa.timestamp("us")), "UTC"), false_mask(n)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        return pa.nulls(n, target), pc.is_valid(arr)
    text, bad_utf8 = decode_utf8(arr)
    shaped = pc.fill_null(pc.match_substring_regex(text, _TS_TEXT), False)
    candidates = pc.if_else(shaped, text, pa.nulls(n, pa.string()))
    parsed, impossible = _safe_cast(candidates, pa.timestamp("us"))
    bad = pc.or_(bad_utf8, pc.or_(_flag(text, pc.invert(shaped)), impossible))
    return pc.assume_timezone(parsed, "UTC"), bad


def first_failing_rule(rules: list[tuple[str | pa.Array | pa.ChunkedArray, pa.Array]],
                       n: int) -> pa.Array:
    """Per row, the reason of the first rule whose mask is true (null where none is):
    ``rules`` are (reason, mask) in priority order; a reason is a string or, for reasons
    already carried by the rows, an array of them."""
    reason = pa.nulls(n, pa.string())
    for why, mask in rules:
        value = pa.scalar(why) if isinstance(why, str) else why
        reason = pc.if_else(pc.and_(pc.is_null(reason), pc.fill_null(mask, False)), value,
                            reason)
    return reason
