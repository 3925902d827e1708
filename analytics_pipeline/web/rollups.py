"""Hourly and daily web rollups of one partition's landed, sessionized events (pure
computation, no I/O).

Every number follows the contract (``web.contract``): per (site, local hour or date,
dimension, value), ``events`` and ``pageviews`` count the events with that value;
``visits``, ``bounces`` and ``duration_seconds`` count the visits that *start* in the
hour/day with that value (a visit counts once for each distinct value among its events
for the event dimensions ``name`` and ``page``; for the visit dimensions its value is its
first event's); ``visitors`` is the number of distinct visitors with an event in the
hour/day with that value, whose numbers are kept as a serialized Roaring bitmap
(``visitor_set``); ``new_visitors`` are those of them whose ``first_seen`` lies in the
hour/day.

Everything is vectorized with NumPy over the events: each dimension's (group, visitor)
pairs are sorted once and only the groups are looped over, to build one bitmap each.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyroaring import BitMap

from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.web.contract import (
    DIMENSIONS,
    DIRECT,
    EVENT_DIMENSIONS,
    NONE_VALUE,
    VISIT_DIMENSIONS,
)

PAGEVIEW = "pageview"
SITE_DIMENSION = "site"
SITE_VALUE = ""  # the one value of the "site" (overview) dimension
MAX_VISITOR_NUM = 2**32 - 1  # Roaring bitmaps hold 32-bit numbers

_COUNTS = [
    ("events", pa.int64()), ("pageviews", pa.int64()), ("visits", pa.int64()),
    ("bounces", pa.int64()), ("duration_seconds", pa.float64()), ("visitors", pa.int64()),
    ("new_visitors", pa.int64()), ("visitor_set", pa.binary()),
]
# Columns of web_hourly_rollups / web_daily_rollups except timezone and updated_at, which
# the write adds.
HOURLY_SCHEMA = pa.schema([
    ("site_id", pa.int64()), ("hour_start", pa.timestamp("us")), ("date", pa.date32()),
    ("dimension", pa.string()), ("value", pa.string()), *_COUNTS,
])
DAILY_SCHEMA = pa.schema([
    ("site_id", pa.int64()), ("date", pa.date32()), ("dimension", pa.string()),
    ("value", pa.string()), *_COUNTS,
])
ADDITIVE = ("events", "pageviews", "visits", "bounces", "duration_seconds")

EMPTY_SET = BitMap().serialize()


def dimension_values(column: pa.ChunkedArray | pa.Array, dimension: str) -> pa.Array:
    """A landed column as the stored values of ``dimension``: a missing (null or empty)
    value is ``NONE_VALUE``, a missing referrer ``DIRECT``."""
    missing = DIRECT if dimension == "referrer" else NONE_VALUE
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    col = col.cast(pa.string())
    return pc.if_else(pc.fill_null(pc.equal(col, ""), True), missing, col)


# --- the events, one column at a time ------------------------------------------------------

class EventColumns:
    """The valid landed rows of a partition, read one column at a time, in input order:
    strings as dictionary arrays (one dictionary for the column), so that no string column
    is ever held decoded per event. ``TableColumns`` serves a table in memory;
    ``rollup_step`` serves the landed files."""

    num_rows: int

    def column(self, name: str) -> pa.Array:
        raise NotImplementedError

    def rows_of(self, name: str, rows: np.ndarray) -> pa.Array:
        """Column ``name`` at ``rows`` (input positions, ascending)."""
        return self.column(name).take(pa.array(rows, pa.int64()))


def one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one array (a dictionary column with one dictionary)."""
    if isinstance(column, pa.Array):
        return column
    if pa.types.is_dictionary(column.type):
        column = column.unify_dictionaries()
    if column.num_chunks == 1:
        return column.chunk(0)
    return column.combine_chunks()


class TableColumns(EventColumns):
    def __init__(self, table: pa.Table):
        self.table, self.num_rows = table, table.num_rows

    def column(self, name: str) -> pa.Array:
        return one_array(self.table[name])


def _us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A timestamp column as int64 microseconds since the epoch (UTC)."""
    col = one_array(column)
    return col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(
        zero_copy_only=False)


def _naive_utc_us(moment: datetime) -> int:
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(
        tzinfo=timezone.utc)
    return int(round(moment.timestamp() * 1_000_000))


def _no_nulls(column: pa.Array, name: str) -> pa.Array:
    if column.null_count:
        raise ValueError(f"valid landed web events have no null {name}")
    return column


def _int64(column: pa.Array) -> np.ndarray:
    return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64)


def _codes(column: pa.Array, dimension: str | None = None) -> tuple[np.ndarray, pa.Array]:
    """Per row, a code into the returned dictionary of distinct values: the stored values
    of ``dimension`` (``dimension_values``: a missing value is ``NONE_VALUE``/``DIRECT``),
    or with ``dimension=None`` the values themselves (no null allowed)."""
    if not pa.types.is_dictionary(column.type):
        column = column.cast(pa.string()).dictionary_encode()
    indices = column.indices
    if dimension is None:
        values, remap = column.dictionary.cast(pa.string()), None
    else:
        enc = dimension_values(column.dictionary, dimension).dictionary_encode()
        values = enc.dictionary
        remap = np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)
    missing = -1
    if indices.null_count:
        if dimension is None:
            raise ValueError("null values in a column without nulls")
        missing_value = DIRECT if dimension == "referrer" else NONE_VALUE
        missing = pc.index(values, missing_value).as_py()
        if missing < 0:
            values = pa.concat_arrays([values, pa.array([missing_value], values.type)])
            missing = len(values) - 1
        indices = pc.fill_null(indices, -1)
    idx = np.asarray(indices.to_numpy(zero_copy_only=False))
    if remap is None:
        codes = idx.astype(np.int64)
    else:
        codes = remap[np.maximum(idx, 0)] if len(remap) else np.zeros(len(idx), np.int64)
    if missing >= 0:
        codes[idx < 0] = missing
    return codes, values


def _starts(*keys: np.ndarray) -> np.ndarray:
    """Indices where a run of equal keys starts in arrays sorted by ``keys``."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def _ends(starts: np.ndarray, n: int) -> np.ndarray:
    """Where each run that begins at ``starts`` ends (exclusive), in ``n`` sorted rows."""
    return np.append(starts[1:], n) if len(starts) else starts


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values (a sort: faster than ``np.unique``'s hashing here)."""
    ordered = np.sort(values)
    return ordered[_starts(ordered)]


def _run_index(n: int, starts: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """For each of ``n`` sorted rows, the index of its run (runs begin at ``starts``)."""
    flags = np.zeros(n, np.int8)
    flags[starts] = 1
    out = np.cumsum(flags, dtype=dtype)
    out -= 1
    return out


class _Events:
    """A partition's valid events in (site, visit, time) order, held narrow: per event a
    site code, an hour code, its visit, its visitor's (site, visitor) pair, pageview; per
    visit its first event, events and duration; per pair the visitor id and the first and
    last instant and hour (the numbers and first_seen come from ``number``)."""

    def __init__(self, cols: EventColumns, day: LocalDay):
        self.cols, self.day = cols, day
        n = self.n = cols.num_rows
        idx = np.int32 if n < 2**31 else np.int64
        self.idx = idx
        site = _int64(_no_nulls(cols.column("site_id"), "site_id"))
        visit_id = _int64(_no_nulls(cols.column("visit_id"), "visit_id"))
        occurred = _us(_no_nulls(cols.column("occurred_at"), "occurred_at"))
        # the order (site, visit, time); the landing writes it so, then no permutation
        if n > 1 and not _sorted_by(site, visit_id, occurred):
            order = np.lexsort((occurred, visit_id, site)).astype(idx)
            site, visit_id, occurred = site[order], visit_id[order], occurred[order]
        else:
            order = None
        self.order = order
        site_starts = _starts(site)
        self.sites = site[site_starts]
        self.site = _run_index(n, site_starts, idx)
        del site
        first = _starts(self.site, visit_id)
        del visit_id
        self.visit = _run_index(n, first, idx)
        ends = _ends(first, n)
        self.visit_events = (ends - first).astype(np.int64)
        self.visit_duration = ((occurred[ends - 1] - occurred[first]) / 1e6 if n
                               else np.zeros(0))
        self.visit_first = self._first_by_id(first, ends, occurred)
        hour = self._input_order(_us(_no_nulls(cols.column("hour_start"), "hour_start")))
        self.hours = np.sort(np.unique(hour))
        self.hour = np.searchsorted(self.hours, hour).astype(idx)
        del hour
        name_codes, names = _codes(cols.column("name"), "name")
        self.pageview = self._input_order(
            pc.equal(names, PAGEVIEW).to_numpy(zero_copy_only=False)[name_codes]
            if len(names) else np.zeros(n, bool))
        del name_codes
        self._pairs(occurred)

    def _input_order(self, values: np.ndarray) -> np.ndarray:
        return values if self.order is None else values[self.order]

    def _first_by_id(self, first: np.ndarray, ends: np.ndarray,
                     occurred: np.ndarray) -> np.ndarray:
        """Each visit's first event: of the events at its first instant, the one of the
        smallest event id (as Arrow sorts strings; then the input order)."""
        nxt = np.minimum(first + 1, self.n - 1)
        tied = (nxt < ends) & (occurred[nxt] == occurred[first]) if self.n else first > 0
        if not tied.any():
            return first
        start_time = occurred[first]
        tied_event = tied[self.visit] & (occurred == start_time[self.visit])
        rows = np.flatnonzero(tied_event)
        inputs = rows if self.order is None else self.order[rows]
        by_input = np.argsort(inputs, kind="stable")
        ids = self.cols.rows_of("event_id", inputs[by_input]).take(
            pa.array(np.argsort(by_input, kind="stable")))
        picked = pc.sort_indices(pa.table({"v": self.visit[rows], "e": ids, "r": rows}),
                                 [("v", "ascending"), ("e", "ascending"),
                                  ("r", "ascending")]).to_numpy()
        ordered = rows[picked]
        v = self.visit[ordered]
        heads = ordered[_starts(v)]
        out = first.copy()
        out[self.visit[heads]] = heads
        return out

    def _pairs(self, occurred: np.ndarray) -> None:
        """The (site, visitor) pairs: per event its pair, per pair the site, visitor id,
        first and last instant and first hour."""
        codes, visitors = _codes(_no_nulls(self.cols.column("visitor_id"), "visitor_id"))
        codes = self._input_order(codes)
        width = max(len(visitors), 1)
        space = len(self.sites) * width
        key = self.site.astype(np.int64)
        key *= width
        key += codes
        del codes
        if space <= self.n + (1 << 22):  # dense: a lookup over the key space
            present = np.zeros(space, bool)
            present[key] = True
            pair_keys = np.flatnonzero(present)
            del present
            lookup = np.zeros(space, self.idx)
            lookup[pair_keys] = np.arange(len(pair_keys), dtype=self.idx)
            self.pair = lookup[key]
            del lookup
        else:
            pair_keys, pair = np.unique(key, return_inverse=True)
            self.pair = pair.astype(self.idx)
        del key
        p = len(pair_keys)
        self.pair_site = self.sites[pair_keys // width]
        self.pair_visitor = visitors.take(pa.array(pair_keys % width))
        self.pair_first = np.full(p, np.iinfo(np.int64).max, np.int64)
        self.pair_last = np.full(p, np.iinfo(np.int64).min, np.int64)
        np.minimum.at(self.pair_first, self.pair, occurred)
        np.maximum.at(self.pair_last, self.pair, occurred)
        self.pair_first_hour = np.full(p, np.iinfo(self.idx).max, self.idx)
        np.minimum.at(self.pair_first_hour, self.pair, self.hour)

    def seen(self) -> pa.Table:
        """(site_id, visitor_id, first_seen, last_seen) of every pair, tz-aware UTC."""
        ts = pa.timestamp("us", tz="UTC")
        return pa.table({"site_id": pa.array(self.pair_site, pa.int64()),
                         "visitor_id": self.pair_visitor,
                         "first_seen": pa.array(self.pair_first, pa.int64()).cast(ts),
                         "last_seen": pa.array(self.pair_last, pa.int64()).cast(ts)})

    def number(self, visitors: pa.Table) -> None:
        """Per event its visitor number and whether its visitor is new in the day and in
        the event's hour, from ``visitors`` (site_id, visitor_id, visitor_num,
        first_seen: naive = UTC) holding every pair."""
        pairs = pa.table({"site_id": pa.array(self.pair_site, pa.int64()),
                          "visitor_id": self.pair_visitor.cast(pa.string()),
                          "_pair": pa.array(np.arange(len(self.pair_site)), pa.int64())})
        joined = pairs.join(visitors, ["site_id", "visitor_id"], join_type="left outer",
                            use_threads=False)
        if joined["visitor_num"].null_count:
            raise ValueError("web events of visitors without a number: register them first")
        if joined["first_seen"].null_count:
            raise ValueError("first_seen is missing for some visitors")
        if joined.num_rows != len(self.pair_site):
            raise ValueError("more than one number for a visitor")
        at = _int64(one_array(joined["_pair"]))
        nums = np.empty(len(at), np.int64)
        nums[at] = _int64(one_array(joined["visitor_num"]))
        if len(nums) and (nums.min() < 0 or nums.max() > MAX_VISITOR_NUM):
            raise ValueError("visitor numbers must fit in 32 bits (Roaring bitmaps)")
        first_seen = np.empty(len(at), np.int64)
        first_seen[at] = _us(joined["first_seen"])
        del joined
        new_pair = (first_seen >= _naive_utc_us(self.day.start_utc)) & (
            first_seen < _naive_utc_us(self.day.end_utc))
        self.visitor = nums.astype(np.uint32)[self.pair]
        self.new_day = new_pair[self.pair]
        self.new_hour = self.new_day & (self.hour == self.pair_first_hour[self.pair])
        del self.pair

    def dimension(self, dimension: str) -> tuple[np.ndarray, pa.Array]:
        """The value code of ``dimension`` of every event (an event dimension) or visit
        (the others), and the values the codes index."""
        if dimension == SITE_DIMENSION:
            return (np.zeros(len(self.visit_first), np.int64),
                    pa.array([SITE_VALUE], pa.string()))
        if dimension in VISIT_DIMENSIONS:  # every event takes its visit's first value
            first = self.visit_first if self.order is None else self.order[self.visit_first]
            by_input = np.argsort(first, kind="stable")
            column = self.cols.rows_of(dimension, first[by_input])
            codes, values = _codes(column, dimension)
            out = np.empty(len(codes), np.int64)
            out[by_input] = codes
            return out, values
        codes, values = _codes(self.cols.column(dimension), dimension)
        return self._input_order(codes), values


def _sorted_by(site: np.ndarray, visit: np.ndarray, occurred: np.ndarray) -> bool:
    """Whether the rows are in (site, visit, occurred) order."""
    if (site[1:] < site[:-1]).any():
        return False
    same = site[1:] == site[:-1]
    if (same & (visit[1:] < visit[:-1])).any():
        return False
    same &= visit[1:] == visit[:-1]
    return not (same & (occurred[1:] < occurred[:-1])).any()


# --- the rows of one dimension -------------------------------------------------------------

# The packed sort key of an event: ``key << 35 | visitor << 3 | new_day << 2 | new_hour << 1
# | pageview``, one int64 when the group key is below 2^28.
_KEY_SHIFT = 35
PACKED_KEY_LIMIT = 1 << (63 - _KEY_SHIFT)


@dataclass
class _Groups:
    """Per distinct group key (sorted): the event counts and the serialized visitor sets."""

    keys: np.ndarray
    counts: dict[str, np.ndarray]  # events, pageviews, visitors, new_visitors
    sets: pa.Array  # large_binary


def _groups_of_pairs(keys: np.ndarray, events: np.ndarray, pageviews: np.ndarray,
                     pair_key: np.ndarray, pair_visitor: np.ndarray,
                     pair_new: np.ndarray) -> _Groups:
    """Groups from their event counts and their distinct (key, visitor) pairs, sorted."""
    pg = _starts(pair_key)  # the same groups as ``keys``, over the distinct pairs
    pg_end = _ends(pg, len(pair_key))
    counts = {
        "events": events,
        "pageviews": pageviews,
        "visitors": pg_end - pg,
        "new_visitors": np.add.reduceat(pair_new.astype(np.int64), pg) if len(pg) else pg,
    }
    return _Groups(keys, counts, _bitmaps(pair_visitor, pg, pg_end))


def _event_groups(keys: np.ndarray, per_day: int, visitor: np.ndarray,
                  pageview: np.ndarray, new_hour: np.ndarray, new_day: np.ndarray,
                  ) -> tuple[_Groups, _Groups]:
    """The hourly and the daily groups of one dimension's events: ``keys`` are
    ``day_key * per_day + hour`` (the hour last, so a day's hours are contiguous in key
    order), consumed (overwritten).

    One sort of the events (packed in one int64 each: no argsort, no gathers) gives the
    hourly groups and their distinct (key, visitor) pairs; the daily groups add up the
    hourly counts and take their visitors from a sort of those pairs, which are fewer
    than the events (a visitor's events of one hour and value are one pair). ``new_hour``
    and ``new_day`` are constant within a pair (a visitor is new in a day, or in the hour
    of its first event)."""
    if len(keys) and (keys.min() < 0 or keys.max() >= PACKED_KEY_LIMIT):
        return _event_groups_lexsort(keys, per_day, visitor, pageview, new_hour, new_day)
    packed = keys
    packed <<= 32
    packed |= visitor
    for bit in (new_day, new_hour, pageview):
        packed <<= 1
        packed |= bit
    packed.sort()
    n = len(packed)
    work = packed >> 3  # (key, visitor)
    pairs = _starts(work)
    pair = packed[pairs]
    del pairs
    work >>= 32  # key
    g = _starts(work)
    uniq = work[g]
    np.bitwise_and(packed, 1, out=work)
    del packed
    np.cumsum(work, out=work)  # pageviews so far
    g_end = _ends(g, n)
    before = np.where(g > 0, work[np.maximum(g - 1, 0)], 0)
    pageviews = work[g_end - 1] - before if len(g) else g
    del work
    events = g_end - g
    hourly = _groups_of_pairs(uniq, events, pageviews, pair >> _KEY_SHIFT,
                              ((pair >> 3) & 0xFFFFFFFF).astype(np.uint32), (pair >> 1) & 1)
    # the daily groups: hourly counts added up, visitors from the pairs re-keyed by day
    day_of = uniq // per_day
    dg = _starts(day_of)
    day_pair = pair >> _KEY_SHIFT
    day_pair //= per_day
    day_pair <<= 33
    day_pair |= (pair >> 2) & 0x1FFFFFFFF  # visitor << 1 | new_day
    del pair
    day_pair.sort()
    day_pair = day_pair[_starts(day_pair)]
    daily = _groups_of_pairs(
        day_of[dg], np.add.reduceat(events, dg) if len(dg) else dg,
        np.add.reduceat(pageviews, dg) if len(dg) else dg, day_pair >> 33,
        ((day_pair >> 1) & 0xFFFFFFFF).astype(np.uint32), day_pair & 1)
    return hourly, daily


def _bitmaps(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """The serialized Roaring bitmap of each run ``values[starts[i]:ends[i]]`` (sorted,
    distinct), as one binary array. The values go to pyroaring as ``array.array`` slices:
    it reads those as one buffer, but a NumPy array one element at a time (7x slower)."""
    buffer = array("I")
    buffer.frombytes(np.ascontiguousarray(values, np.uint32).tobytes())
    sets = [BitMap(buffer[a:b]).serialize()
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    return pa.array(sets, pa.large_binary())


def _event_groups_lexsort(keys: np.ndarray, per_day: int, visitor: np.ndarray,
                          pageview: np.ndarray, new_hour: np.ndarray, new_day: np.ndarray,
                          ) -> tuple[_Groups, _Groups]:
    """``_event_groups`` for keys too wide to pack: sorts of index arrays."""
    order = np.lexsort((visitor, keys))
    k, v = keys[order], visitor[order]
    g = _starts(k)
    pairs = _starts(k, v)
    events = _ends(g, len(k)) - g
    pageviews = (np.add.reduceat(pageview[order].astype(np.int64), g) if len(g) else g)
    pk, pv = k[pairs], v[pairs]
    hourly = _groups_of_pairs(k[g], events, pageviews, pk, pv, new_hour[order][pairs])
    p_new_day = new_day[order][pairs]
    del order, k, v
    day_of = hourly.keys // per_day
    dg = _starts(day_of)
    dk = pk // per_day
    by_day = np.lexsort((pv, dk))
    dk, dv, dn = dk[by_day], pv[by_day], p_new_day[by_day]
    distinct = _starts(dk, dv)
    daily = _groups_of_pairs(
        day_of[dg], np.add.reduceat(events, dg) if len(dg) else dg,
        np.add.reduceat(pageviews, dg) if len(dg) else dg, dk[distinct], dv[distinct],
        dn[distinct])
    return hourly, daily


def _with_visit_keys(keys: np.ndarray, v_key: np.ndarray) -> np.ndarray:
    """The sorted distinct ``keys`` plus the visit keys they lack (only an event value's
    visit that started in another hour has none)."""
    if len(keys) == 0:
        return _distinct(v_key)
    at = np.minimum(np.searchsorted(keys, v_key), len(keys) - 1)
    missing = keys[at] != v_key
    return np.union1d(keys, v_key[missing]) if missing.any() else keys


@dataclass
class _Part:
    """The rows of one dimension, hourly or daily, as arrays (``_Rows`` makes tables)."""

    dimension: int  # index in DIMENSIONS
    site: np.ndarray  # site codes
    hour: np.ndarray | None  # hour codes (hourly rows)
    value: np.ndarray  # codes into ``values``
    values: pa.Array
    counts: dict[str, np.ndarray]
    sets: pa.Array  # large_binary


def _part(groups: _Groups, v_key: np.ndarray, ev: _Events, p_visit: np.ndarray,
          bounce: np.ndarray, dimension: int, values: pa.Array, width: int, n_hours: int,
          hourly: bool) -> _Part:
    """The rows of one dimension: event groups (events, pageviews, visitor sets) and visit
    groups (visits, bounces, duration) joined on their key, ``(site * width + value) *
    n_hours + hour`` (hourly) or ``site * width + value`` (daily)."""
    keys = groups.keys
    all_keys = _with_visit_keys(keys, v_key)
    n = len(all_keys)
    out: dict[str, np.ndarray] = {}
    if n == len(keys):  # every key has events (the common case)
        out.update(groups.counts)
        sets = groups.sets
    else:
        at = np.searchsorted(all_keys, keys)
        for name, col in groups.counts.items():
            full = np.zeros(n, np.int64)
            full[at] = col
            out[name] = full
        where = np.full(n, -1, np.int64)
        where[at] = np.arange(len(keys))
        sets = pc.if_else(pa.array(where >= 0),
                          groups.sets.take(pa.array(np.maximum(where, 0))),
                          pa.scalar(EMPTY_SET, pa.large_binary())) if len(keys) else \
            pa.array([EMPTY_SET] * n, pa.large_binary())
    v_at = np.searchsorted(all_keys, v_key)
    out["visits"] = np.bincount(v_at, minlength=n).astype(np.int64)
    out["bounces"] = np.bincount(v_at, weights=bounce[p_visit], minlength=n).astype(np.int64)
    out["duration_seconds"] = np.bincount(
        v_at, weights=ev.visit_duration[p_visit], minlength=n).astype(np.float64)
    rest = all_keys // n_hours if hourly else all_keys
    return _Part(dimension, rest // width, all_keys % n_hours if hourly else None,
                 rest % width, values, out, sets)


def _parts(ev: _Events) -> Iterator[tuple[_Part, _Part]]:
    """The hourly and daily rows of each dimension in turn (one dimension's arrays at a
    time)."""
    n_hours = max(len(ev.hours), 1)
    v_site, v_hour = ev.site[ev.visit_first], ev.hour[ev.visit_first]
    bounce = (ev.visit_events == 1).astype(np.int64)
    for d, dimension in enumerate(DIMENSIONS):
        codes, values = ev.dimension(dimension)
        width = max(len(values), 1)
        # the visits with each value: one per visit, or per (visit, value) for event values
        if dimension in EVENT_DIMENSIONS:
            pair = ev.visit.astype(np.int64)
            pair *= width
            pair += codes
            pair = _distinct(pair)
            p_visit, p_code = pair // width, pair % width
            del pair
        else:
            p_visit, p_code = np.arange(len(ev.visit_first)), codes
            codes = codes[ev.visit]
        key = ev.site.astype(np.int64)
        key *= width
        key += codes
        key *= n_hours
        key += ev.hour
        del codes
        hourly_groups, daily_groups = _event_groups(key, n_hours, ev.visitor, ev.pageview,
                                                    ev.new_hour, ev.new_day)
        del key
        v_key = v_site[p_visit].astype(np.int64)
        v_key *= width
        v_key += p_code
        daily = _part(daily_groups, v_key, ev, p_visit, bounce, d, values, width, 1, False)
        del daily_groups
        v_key *= n_hours
        v_key += v_hour[p_visit]
        hourly = _part(hourly_groups, v_key, ev, p_visit, bounce, d, values, width, n_hours,
                       True)
        del hourly_groups, v_key, p_visit, p_code
        release_memory()
        yield hourly, daily


class WebRows:
    """The hourly or daily rows of a partition (parts of every dimension), as tables in
    (site, hour, dimension, value) order, ``rows`` at a time."""

    def __init__(self, parts: list[_Part], sites: np.ndarray, hours: np.ndarray | None,
                 day: date):
        self.parts, self.sites, self.hours, self.day = parts, sites, hours, day
        self.num_rows = sum(len(p.value) for p in parts)

    def _order(self) -> np.ndarray:
        names = np.argsort(np.argsort(np.array(DIMENSIONS)))  # rank of each name
        site = np.concatenate([p.site for p in self.parts])
        hour = (np.concatenate([p.hour for p in self.parts]) if self.hours is not None
                else np.zeros(len(site), np.int64))
        dim = np.concatenate([np.full(len(p.value), names[p.dimension], np.int64)
                              for p in self.parts])
        ranks = []
        for p in self.parts:
            rank = np.empty(len(p.values), np.int64)
            rank[pc.sort_indices(p.values).to_numpy()] = np.arange(len(p.values))
            ranks.append(rank[p.value])
        return np.lexsort((np.concatenate(ranks), dim, hour, site))

    def tables(self, rows: int = 65_536) -> Iterator[pa.Table]:
        if not self.parts or not self.num_rows:
            return
        order = self._order()
        site = np.concatenate([p.site for p in self.parts])
        hour = (np.concatenate([p.hour for p in self.parts]) if self.hours is not None
                else None)
        dim = np.concatenate([np.full(len(p.value), p.dimension, np.int64)
                              for p in self.parts])
        base = np.cumsum([0] + [len(p.values) for p in self.parts])[:-1]
        value = np.concatenate([p.value + b for p, b in zip(self.parts, base, strict=True)])
        values = pa.concat_arrays([p.values.cast(pa.string()) for p in self.parts])
        counts = {name: np.concatenate([p.counts[name] for p in self.parts])
                  for name, _ in _COUNTS if name != "visitor_set"}
        sets = pa.chunked_array([p.sets for p in self.parts], pa.large_binary())
        names = pa.array(DIMENSIONS, pa.string())
        schema = HOURLY_SCHEMA if hour is not None else DAILY_SCHEMA
        for lo in range(0, len(order), rows):
            at = order[lo:lo + rows]
            n = len(at)
            cols: dict[str, pa.Array] = {"site_id": pa.array(self.sites[site[at]], pa.int64())}
            if hour is not None:
                cols["hour_start"] = pa.array(self.hours[hour[at]], pa.int64()).cast(
                    pa.timestamp("us"))
            cols["date"] = pa.repeat(pa.scalar(self.day, pa.date32()), n)
            cols["dimension"] = names.take(pa.array(dim[at]))
            cols["value"] = values.take(pa.array(value[at]))
            for name, typ in _COUNTS:
                if name == "visitor_set":
                    cols[name] = one_array(sets.take(pa.array(at))).cast(pa.binary())
                else:
                    cols[name] = pa.array(counts[name][at], typ)
            yield pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)

    def table(self) -> pa.Table:
        schema = HOURLY_SCHEMA if self.hours is not None else DAILY_SCHEMA
        parts = list(self.tables())
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def part(self, dimension: str) -> _Part | None:
        for p in self.parts:
            if DIMENSIONS[p.dimension] == dimension:
                return p
        return None


@dataclass
class WebRollup:
    hourly: WebRows
    daily: WebRows


def web_rollup(ev: _Events) -> WebRollup:
    """The hourly and daily rows of numbered events (``_Events.number``)."""
    hourly, daily = [], []
    for h, d in _parts(ev):
        hourly.append(h)
        daily.append(d)
    return WebRollup(WebRows(hourly, ev.sites, ev.hours, ev.day.day),
                     WebRows(daily, ev.sites, None, ev.day.day))


def web_events(cols: EventColumns, day: LocalDay) -> _Events:
    """The valid events of ``cols`` prepared for ``web_rollup`` (then numbered)."""
    events = _Events(cols, day)
    release_memory()
    return events


def release_memory() -> None:
    """Give back the memory Arrow's pool keeps of what column reads and casts freed (the
    NumPy work of the next stage could not reuse it)."""
    pa.default_memory_pool().release_unused()


def web_rollup_rows(
    events: pa.Table,
    visitor_nums: pa.Table,
    day: LocalDay,
    first_seen: pa.Table | None = None,
) -> tuple[pa.Table, pa.Table]:
    """The hourly and daily rollup rows (``HOURLY_SCHEMA``, ``DAILY_SCHEMA``) of one
    partition's valid landed events (``LANDED_WEB_SCHEMA``).

    ``visitor_nums`` maps (site_id, visitor_id) to ``visitor_num`` for every visitor of
    ``events``; ``first_seen`` gives (site_id, visitor_id, first_seen) as the warehouse
    holds it (any time zone; naive = UTC); by default each visitor's first event in
    ``events``. A visitor is new in the day when first_seen lies in the day's UTC window,
    and new in the hour of its first event of the partition.
    """
    if events.num_rows and pc.any(pc.is_valid(events["invalid_reason"])).as_py():
        raise ValueError("web_rollup_rows takes valid landed rows only")
    ev = web_events(TableColumns(events), day)
    visitors = visitor_nums.select(["site_id", "visitor_id", "visitor_num"]).cast(
        pa.schema([("site_id", pa.int64()), ("visitor_id", pa.string()),
                   ("visitor_num", pa.int64())]))
    seen = ev.seen() if first_seen is None else first_seen
    seen = seen.select(["site_id", "visitor_id", "first_seen"]).cast(pa.schema([
        ("site_id", pa.int64()), ("visitor_id", pa.string()),
        ("first_seen", pa.timestamp("us", tz="UTC"))]))  # naive values are UTC
    ev.number(visitors.join(seen, ["site_id", "visitor_id"], join_type="left outer",
                            use_threads=False))
    rollup = web_rollup(ev)
    return rollup.hourly.table(), rollup.daily.table()
