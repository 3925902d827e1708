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


@dataclass
class _Events:
    """The partition's valid events sorted by (site, visit, time, id), as NumPy arrays."""

    site: np.ndarray  # int64 site ids
    hour: np.ndarray  # int64 µs since epoch (UTC) of the event's local hour
    visitor: np.ndarray  # uint32 visitor numbers
    pageview: np.ndarray  # bool
    visit: np.ndarray  # int64 visit index, 0..n_visits-1
    table: pa.Table  # the sorted events (for the dimension columns)
    visit_first: np.ndarray  # index of each visit's first event
    visit_events: np.ndarray  # events per visit
    visit_duration: np.ndarray  # seconds, last - first event of the visit
    new_day: np.ndarray  # per event: its visitor's first_seen lies in the day
    first_hour: np.ndarray  # per event: the hour of its visitor's first event here


def _us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A timestamp column as int64 microseconds since the epoch (UTC)."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(
        zero_copy_only=False)


def _naive_utc_us(moment: datetime) -> int:
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(
        tzinfo=timezone.utc)
    return int(round(moment.timestamp() * 1_000_000))


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


def _run_index(n: int, starts: np.ndarray) -> np.ndarray:
    """For each of ``n`` sorted rows, the index of its run (runs begin at ``starts``)."""
    flags = np.zeros(n, np.int64)
    flags[starts] = 1
    return np.cumsum(flags) - 1


def _prepare(events: pa.Table, visitors: pa.Table, day: LocalDay) -> _Events:
    if events.num_rows and pc.any(pc.is_valid(events["invalid_reason"])).as_py():
        raise ValueError("web_rollup_rows takes valid landed rows only")
    for col in ("site_id", "visitor_id", "visit_id", "hour_start", "occurred_at"):
        if events[col].null_count:
            raise ValueError(f"valid landed web events have no null {col}")
    needed = ["event_id", "site_id", "visitor_id", "name", "occurred_at", "hour_start",
              "visit_id", *(d for d in DIMENSIONS if d != SITE_DIMENSION)]
    events = events.select(list(dict.fromkeys(needed)))
    # the visitors' numbers joined on a narrow table (row, site, visitor), then put back in
    # row order: the event columns (dictionary-encoded or not) never go through the join
    n = events.num_rows
    visitor_ids = events["visitor_id"]
    if pa.types.is_dictionary(visitor_ids.type):
        visitor_ids = visitor_ids.cast(visitor_ids.type.value_type)
    keys = pa.table({"site_id": events["site_id"], "visitor_id": visitor_ids,
                     "_row": pa.array(np.arange(n, dtype=np.int64))})
    del visitor_ids
    joined = keys.join(visitors, ["site_id", "visitor_id"], join_type="left outer",
                       use_threads=False)
    del keys
    if joined["visitor_num"].null_count:
        raise ValueError("web events of visitors without a number: register them first")
    rows = joined["_row"].to_numpy()
    extra = {}
    for name in visitors.column_names:
        if name not in ("site_id", "visitor_id"):
            col = joined[name].combine_chunks()
            extra[name] = col.take(pa.array(np.argsort(rows)))
    del joined
    for name, col in extra.items():
        events = events.append_column(name, col)
    order = pc.sort_indices(events, [("site_id", "ascending"), ("visit_id", "ascending"),
                                     ("occurred_at", "ascending"), ("event_id", "ascending")])
    table = events.take(order)
    del events, order
    nums = table["visitor_num"].to_numpy()
    if len(nums) and (nums.min() < 0 or nums.max() > MAX_VISITOR_NUM):
        raise ValueError("visitor numbers must fit in 32 bits (Roaring bitmaps)")
    site = table["site_id"].to_numpy()
    visit_id = table["visit_id"].to_numpy()
    occurred = _us(table["occurred_at"])
    hour = _us(table["hour_start"])
    first_idx = _starts(site, visit_id)
    visit = _run_index(len(site), first_idx)
    ends = _ends(first_idx, len(site))
    n_events = ends - first_idx
    duration = (occurred[ends - 1] - occurred[first_idx]) / 1e6 if len(site) else np.zeros(0)

    # new visitors: first_seen within the day; new in the hour of their first event here
    first_seen = _us(table["first_seen"])
    new_day = (first_seen >= _naive_utc_us(day.start_utc)) & (
        first_seen < _naive_utc_us(day.end_utc))
    by_visitor = np.lexsort((occurred, nums, site))
    v_starts = _starts(site[by_visitor], nums[by_visitor])
    first_hour_of_group = hour[by_visitor][v_starts]
    group = _run_index(len(site), v_starts)
    first_hour = np.empty(len(site), np.int64)
    first_hour[by_visitor] = first_hour_of_group[group]
    names = table["name"].combine_chunks().cast(pa.string())
    pageview = pc.fill_null(pc.equal(names, PAGEVIEW), False).to_numpy(zero_copy_only=False)
    return _Events(site, hour, nums.astype(np.uint32), pageview, visit, table, first_idx,
                   n_events, duration, new_day, first_hour)


def _event_groups(keys: np.ndarray, visitor: np.ndarray, pageview: np.ndarray,
                  new: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], list[bytes]]:
    """Per distinct key (sorted): events, pageviews, distinct visitors, new visitors, and
    the serialized bitmap of the visitors (one sort of the (key, visitor) pairs).

    ``new`` must be constant within a (key, visitor) pair (it is: a visitor is new in a
    day, or in the hour of its first event). Keys below 2^30 are sorted as one int64 per
    event, ``key << 33 | visitor << 1 | new`` (a plain sort, no argsort or gathers);
    larger keys take a lexsort."""
    if len(keys) and (keys.min() < 0 or keys.max() >= 1 << 30):
        return _event_groups_lexsort(keys, visitor, pageview, new)
    packed = (keys.astype(np.int64) << 33) | (visitor.astype(np.int64) << 1) | new.astype(
        np.int64)
    packed.sort()
    k = packed >> 33
    g = _starts(k)
    uniq = k[g]
    pairs = _starts(packed >> 1)
    pk, pv = k[pairs], ((packed[pairs] >> 1) & 0xFFFFFFFF).astype(np.uint32)
    pn = (packed[pairs] & 1).astype(np.int64)
    del packed
    pg = _starts(pk)  # the same groups, over the distinct pairs
    pg_end = _ends(pg, len(pk))
    bitmaps = [BitMap(pv[a:b]).serialize()
               for a, b in zip(pg.tolist(), pg_end.tolist(), strict=True)]
    if len(uniq) and uniq[-1] < 4 * len(keys) + 1024:  # dense: a bincount over the key space
        pageviews = np.bincount(keys, weights=pageview, minlength=int(uniq[-1]) + 1)[uniq]
    else:
        pageviews = np.bincount(np.searchsorted(uniq, keys), weights=pageview,
                                minlength=len(uniq))
    counts = {
        "events": _ends(g, len(k)) - g,
        "pageviews": pageviews.astype(np.int64),
        "visitors": pg_end - pg,
        "new_visitors": np.add.reduceat(pn, pg) if len(pg) else pg,
    }
    return uniq, counts, bitmaps


def _event_groups_lexsort(keys: np.ndarray, visitor: np.ndarray, pageview: np.ndarray,
                          new: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                    list[bytes]]:
    order = np.lexsort((visitor, keys))
    k, v, nw = keys[order], visitor[order], new[order]
    g = _starts(k)
    pairs = _starts(k, v)
    pk, pv, pn = k[pairs], v[pairs], nw[pairs].astype(np.int64)
    pg = _starts(pk)  # the same groups, over the distinct pairs
    pg_end = _ends(pg, len(pk))
    bitmaps = [BitMap(pv[a:b]).serialize()
               for a, b in zip(pg.tolist(), pg_end.tolist(), strict=True)]
    counts = {
        "events": _ends(g, len(k)) - g,
        "pageviews": np.add.reduceat(pageview[order].astype(np.int64), g) if len(g) else g,
        "visitors": pg_end - pg,
        "new_visitors": np.add.reduceat(pn, pg) if len(pg) else pg,
    }
    return k[g], counts, bitmaps


def _dimension(ev: _Events, dimension: str) -> tuple[np.ndarray, pa.Array]:
    """The value code of ``dimension`` of every event, and the values the codes index."""
    n = len(ev.site)
    if dimension == SITE_DIMENSION:
        codes = np.zeros(n, np.int64)
        dictionary = pa.array([SITE_VALUE], pa.string())
    else:
        values = dimension_values(ev.table[dimension], dimension)
        encoded = values.dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        dictionary = encoded.dictionary
        if dimension in VISIT_DIMENSIONS:  # every event takes its visit's first value
            codes = codes[ev.visit_first][ev.visit]
    return codes, dictionary


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
    visitors = visitor_nums.select(["site_id", "visitor_id", "visitor_num"]).cast(
        pa.schema([("site_id", pa.int64()), ("visitor_id", pa.string()),
                   ("visitor_num", pa.int64())]))
    if first_seen is None:
        first_seen = events.group_by(["site_id", "visitor_id"], use_threads=False).aggregate(
            [("occurred_at", "min")]).rename_columns(["site_id", "visitor_id", "first_seen"])
    seen = first_seen.select(["site_id", "visitor_id", "first_seen"]).cast(pa.schema([
        ("site_id", pa.int64()), ("visitor_id", pa.string()),
        ("first_seen", pa.timestamp("us", tz="UTC"))]))  # naive values are UTC
    visitors = visitors.join(seen, ["site_id", "visitor_id"], join_type="left outer",
                             use_threads=False)
    if visitors["first_seen"].null_count:
        raise ValueError("first_seen is missing for some visitors")
    ev = _prepare(events, visitors, day)

    # sites and hours as small codes, so that one int64 encodes a (site, hour, value) group
    site_starts = _starts(ev.site)  # the events are sorted by site
    sites, site_code = ev.site[site_starts], _run_index(len(ev.site), site_starts)
    hours = _distinct(ev.hour)
    hour_code = np.searchsorted(hours, ev.hour)
    n_hours = max(len(hours), 1)
    v_site, v_hour = site_code[ev.visit_first], hour_code[ev.visit_first]
    bounce = (ev.visit_events == 1).astype(np.int64)
    new_hour = ev.new_day & (ev.hour == ev.first_hour)

    hourly_parts: list[pa.Table] = []
    daily_parts: list[pa.Table] = []
    for dimension in DIMENSIONS:
        codes, dictionary = _dimension(ev, dimension)
        width = max(len(dictionary), 1)
        h_key = (site_code * n_hours + hour_code) * width + codes
        d_key = site_code * width + codes
        # the visits with each value: one per visit, or per (visit, value) for event values
        if dimension in EVENT_DIMENSIONS:
            pair = _distinct(ev.visit * width + codes)
            p_visit, p_code = pair // width, pair % width
        else:
            p_visit, p_code = np.arange(len(ev.visit_first)), codes[ev.visit_first]
        vh_key = (v_site[p_visit] * n_hours + v_hour[p_visit]) * width + p_code

        hourly_parts.append(_table_of_groups(
            h_key, vh_key, ev, p_visit, bounce, new_hour, dimension, dictionary,
            width, sites, hours, n_hours, day.day))
        daily_parts.append(_table_of_groups(
            d_key, v_site[p_visit] * width + p_code, ev, p_visit, bounce, ev.new_day,
            dimension, dictionary, width, sites, None, 1, day.day))
    hourly = pa.concat_tables(hourly_parts) if hourly_parts else HOURLY_SCHEMA.empty_table()
    daily = pa.concat_tables(daily_parts) if daily_parts else DAILY_SCHEMA.empty_table()
    return hourly, daily


def _with_visit_keys(keys: np.ndarray, v_key: np.ndarray) -> np.ndarray:
    """The sorted distinct ``keys`` plus the visit keys they lack (only an event value's
    visit that started in another hour has none)."""
    if len(keys) == 0:
        return _distinct(v_key)
    at = np.minimum(np.searchsorted(keys, v_key), len(keys) - 1)
    missing = keys[at] != v_key
    return np.union1d(keys, v_key[missing]) if missing.any() else keys


def _table_of_groups(
    e_key: np.ndarray, v_key: np.ndarray, ev: _Events, p_visit: np.ndarray,
    bounce: np.ndarray, new: np.ndarray, dimension: str, dictionary: pa.Array, width: int,
    sites: np.ndarray, hours: np.ndarray | None, n_hours: int, day: date,
) -> pa.Table:
    """The rows of one dimension: event groups (events, pageviews, visitor sets) and visit
    groups (visits, bounces, duration) joined on their key."""
    keys, counts, bitmaps = _event_groups(e_key, ev.visitor, ev.pageview, new)
    all_keys = _with_visit_keys(keys, v_key)
    n = len(all_keys)
    at = np.searchsorted(all_keys, keys)
    out: dict[str, np.ndarray] = {}
    for name, values in counts.items():
        col = np.zeros(n, np.int64)
        col[at] = values
        out[name] = col
    # a list, not a NumPy array: NumPy would turn the bytes into fixed-width strings,
    # which drop trailing NUL bytes
    sets: list[bytes] = [EMPTY_SET] * n
    for i, b in zip(at.tolist(), bitmaps, strict=True):
        sets[i] = b
    v_at = np.searchsorted(all_keys, v_key)
    out["visits"] = np.bincount(v_at, minlength=n).astype(np.int64)
    out["bounces"] = np.bincount(v_at, weights=bounce[p_visit], minlength=n).astype(np.int64)
    out["duration_seconds"] = np.bincount(
        v_at, weights=ev.visit_duration[p_visit], minlength=n).astype(np.float64)

    code = all_keys % width
    rest = all_keys // width
    site_idx, hour_idx = rest // n_hours, rest % n_hours
    columns: dict[str, pa.Array] = {"site_id": pa.array(sites[site_idx], pa.int64())}
    if hours is not None:
        columns["hour_start"] = pa.array(hours[hour_idx], pa.int64()).cast(
            pa.timestamp("us"))
    columns["date"] = pa.repeat(pa.scalar(day, pa.date32()), n)
    columns["dimension"] = pa.repeat(pa.scalar(dimension, pa.string()), n)
    columns["value"] = dictionary.take(pa.array(code, pa.int64())) if n else pa.array(
        [], pa.string())
    for name, typ in _COUNTS:
        if name == "visitor_set":
            columns[name] = pa.array(sets, pa.binary())
        else:
            columns[name] = pa.array(out[name], typ)
    schema = HOURLY_SCHEMA if hours is not None else DAILY_SCHEMA
    return pa.Table.from_pydict(columns, schema=schema)
