"""The web-analytics read path: the numbers of any half-open range ``[start, end)`` of a
site, exact to the microsecond.

A range is cut along the site's local days and hours: whole local days come from the daily
rollups, whole local hours from the hourly rollups, and the partial hours at its edges from
the landed (sessionized) events. The parts are *added* (additive counts) and *unioned*
(visitor sets): never is one range subtracted from another, which goes negative when late
events land in between. Rows whose retention has passed are replaced by the enclosing
coarser rows, and the result says so in ``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pyroaring import BitMap
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay, is_valid_timezone, local_date_of
from analytics_pipeline.web.contract import (
    DIMENSIONS,
    EVENT_DIMENSIONS,
    LANDED_WEB_SCHEMA,
    WEB_SOURCE,
    web_daily_rollups,
    web_hourly_rollups,
    web_sites,
    web_visitors,
)
from analytics_pipeline.web.rollups import SITE_VALUE, dimension_values

HOUR = timedelta(hours=1)


class SiteNotReportable(LookupError):
    """The site is unknown to the warehouse, or its account has no valid timezone."""


@dataclass(frozen=True)
class Part:
    """A piece of a range read from one kind of row: a whole local ``day``, a whole local
    ``hour`` (``start`` is its UTC start), or ``events`` over ``[start, end)``."""

    kind: str
    day: LocalDay
    start: datetime
    end: datetime


@dataclass
class Agg:
    """Additive counts of one dimension value, and its visitor set."""

    events: int = 0
    pageviews: int = 0
    visits: int = 0
    bounces: int = 0
    duration_seconds: float = 0.0
    visitors: BitMap = field(default_factory=BitMap)

    def add(self, other: Agg) -> None:
        self.events += other.events
        self.pageviews += other.pageviews
        self.visits += other.visits
        self.bounces += other.bounces
        self.duration_seconds += other.duration_seconds
        self.visitors |= other.visitors

    def numbers(self) -> dict:
        visits = self.visits
        return {
            "visitors": len(self.visitors),
            "visits": visits,
            "pageviews": self.pageviews,
            "events": self.events,
            "bounce_rate": self.bounces / visits if visits else None,
            "visit_duration_seconds": self.duration_seconds / visits if visits else None,
        }


@dataclass(frozen=True)
class SiteInfo:
    site_id: int
    account_id: int
    domain: str
    timezone: str


def site_info(engine: Engine, site_id: int) -> SiteInfo:
    """The site's account and timezone, from the warehouse snapshots."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(web_sites.c.account_id, web_sites.c.domain, wh.accounts.c.timezone,
                      wh.accounts.c.reporting_timezone)
            .select_from(web_sites.outerjoin(wh.accounts,
                                             wh.accounts.c.id == web_sites.c.account_id))
            .where(web_sites.c.site_id == site_id)).first()
    if row is None:
        raise SiteNotReportable(f"site {site_id} is not in the warehouse (no extraction of "
                                "web events has seen it yet); check the id")
    account_id, domain, tz, stored = row
    if tz is None or not is_valid_timezone(tz):
        raise SiteNotReportable(
            f"site {site_id} belongs to account {account_id}, whose reporting timezone "
            f"{stored!r} is invalid or unknown: its days are not rolled up")
    return SiteInfo(site_id, int(account_id), domain, tz)


@dataclass(frozen=True)
class Retained:
    """What is still stored of each local day a read touches: days whose hourly rows were
    deleted by retention (their daily rows remain) and days whose landed events were."""

    hours_gone: frozenset[date] = frozenset()
    events_gone: frozenset[date] = frozenset()


def decompose(
    start: datetime, end: datetime, tz: str, retained: Retained = Retained(),
) -> tuple[list[Part], list[str]]:
    """``[start, end)`` as whole local days, whole local hours and partial hours, in order.

    A piece of a day whose hourly rows are gone is read as the whole day; a partial hour of
    a day whose landed events are gone, as the whole hour. Each widening is named in the
    returned notes."""
    parts: list[Part] = []
    notes: list[str] = []
    t = start
    while t < end:
        day = LocalDay(local_date_of(t, tz), tz)
        if t == day.start_utc and day.end_utc <= end:
            parts.append(Part("day", day, day.start_utc, day.end_utc))
            t = day.end_utc
            continue
        if day.day in retained.hours_gone:
            notes.append(f"{day.day}: hourly rows have expired (retention); the whole day "
                         "is counted")
            parts.append(Part("day", day, day.start_utc, day.end_utc))
            t = day.end_utc
            continue
        k = (t - day.start_utc) // HOUR
        h0 = day.start_utc + k * HOUR
        h1 = min(h0 + HOUR, day.end_utc)
        if t == h0 and h1 <= end:
            parts.append(Part("hour", day, h0, h1))
            t = h1
            continue
        stop = min(h1, end)
        if day.day in retained.events_gone:
            notes.append(f"{h0.isoformat()}: landed events have expired (retention); the "
                         "whole hour is counted")
            parts.append(Part("hour", day, h0, h1))
            t = h1
            continue
        parts.append(Part("events", day, t, stop))
        t = stop
    return parts, notes


def retained(engine: Engine, store: LandingStore, site: SiteInfo, start: datetime,
             end: datetime) -> Retained:
    """Which local days of ``[start, end)`` lost their hourly rows (a daily row but no
    hourly one) or their landing (hourly rows but no landed partition): decided by what
    is stored, not by the calendar, so a read is exact wherever the rows still exist."""
    first = local_date_of(start, site.timezone)
    last = local_date_of(end - timedelta(microseconds=1), site.timezone)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def dated(table: sa.Table) -> set[date]:
        with engine.connect() as conn:
            return {d if isinstance(d, date) else date.fromisoformat(str(d))
                    for (d,) in conn.execute(sa.select(table.c.date).distinct().where(
                        table.c.site_id == site.site_id, table.c.date.in_(days)))}

    daily, hourly = dated(web_daily_rollups), dated(web_hourly_rollups)
    # only the first and last day can hold partial hours
    edges = {first, last} & hourly
    no_landing = {d for d in edges
                  if not store.has_partition(WEB_SOURCE, LocalDay(d, site.timezone))}
    return Retained(frozenset(daily - hourly), frozenset(no_landing))


def _naive(t: datetime) -> datetime:
    return t.astimezone(timezone.utc).replace(tzinfo=None)


def _rollup_aggs(engine: Engine, table: sa.Table, key: str, site_id: int, keys: list,
                 dimension: str) -> dict[object, dict[str, Agg]]:
    """{key value: {dimension value: Agg}} of the stored rows of ``keys``."""
    out: dict[object, dict[str, Agg]] = {}
    if not keys:
        return out
    c = table.c
    with engine.connect() as conn:
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            rows = conn.execute(sa.select(
                getattr(c, key), c.value, c.events, c.pageviews, c.visits, c.bounces,
                c.duration_seconds, c.visitor_set,
            ).where(c.site_id == site_id, c.dimension == dimension,
                    getattr(c, key).in_(chunk)))
            for k, value, ev, pv, vi, bo, du, vs in rows:
                if isinstance(k, datetime):
                    k = k.replace(tzinfo=None)
                out.setdefault(k, {})[value] = Agg(int(ev), int(pv), int(vi), int(bo),
                                                   float(du), BitMap.deserialize(bytes(vs)))
    return out


def _rollup_totals(engine: Engine, table: sa.Table, key: str, site_id: int, keys: list,
                   dimension: str) -> dict[str, Agg]:
    """{dimension value: Agg} summed over the stored rows of ``keys``: the counts added by
    the database, the visitor sets of a value unioned at once (a breakdown over a month
    reads one row per day and value: no per-row object)."""
    out: dict[str, Agg] = {}
    if not keys:
        return out
    c = table.c
    blobs: dict[str, list[bytes]] = {}
    with engine.connect() as conn:
        for i in range(0, len(keys), 1000):
            where = (c.site_id == site_id, c.dimension == dimension,
                     getattr(c, key).in_(keys[i:i + 1000]))
            for value, ev, pv, vi, bo, du in conn.execute(sa.select(
                    c.value, sa.func.sum(c.events), sa.func.sum(c.pageviews),
                    sa.func.sum(c.visits), sa.func.sum(c.bounces),
                    sa.func.sum(c.duration_seconds)).where(*where).group_by(c.value)):
                a = out.setdefault(value, Agg())
                a.events += int(ev)
                a.pageviews += int(pv)
                a.visits += int(vi)
                a.bounces += int(bo)
                a.duration_seconds += float(du)
            for value, vs in conn.execute(sa.select(c.value, c.visitor_set).where(*where)):
                blobs.setdefault(value, []).append(vs)
    deserialize = BitMap.deserialize
    for value, sets in blobs.items():
        out[value].visitors = BitMap.union(*(deserialize(bytes(b)) for b in sets)) \
            if len(sets) > 1 else deserialize(bytes(sets[0]))
    return out


def _visit_values(events: pa.Table, dimension: str) -> pa.Array:
    """Each event's value of ``dimension``: its own for event dimensions, its visit's first
    event's for visit dimensions (entry and exit pages are per visit already)."""
    n = events.num_rows
    if dimension == "site":
        return pa.repeat(pa.scalar(SITE_VALUE, pa.string()), n)
    if dimension in EVENT_DIMENSIONS or dimension in ("entry_page", "exit_page"):
        col = events[dimension]
    else:
        order = pc.sort_indices(events, [("visit_id", "ascending"), ("occurred_at", "ascending"),
                                         ("event_id", "ascending")])
        ordered = events.select(["visit_id", dimension]).take(order)
        first = ordered.group_by("visit_id", use_threads=False).aggregate(
            [(dimension, "first", pc.ScalarAggregateOptions(skip_nulls=False))])
        firsts = first.rename_columns(["visit_id", "_value"])
        joined = events.select(["visit_id"]).append_column(
            "_row", pa.array(np.arange(n))).join(firsts, "visit_id")
        joined = joined.sort_by("_row")
        col = joined["_value"]
    return dimension_values(col, dimension)  # missing values as the rollups store them


def _visitor_numbers(engine: Engine, site_id: int, visitor_ids: pa.Array) -> pa.Table:
    """``visitor_id`` → ``visitor_num`` of the given visitors of a site (web_visitors), by
    id: exactly the day's visitors, in batches of 5,000 (a day's partial hours are read
    once per ``web_stats`` call, whatever the buckets and the breakdown)."""
    ids = pc.unique(visitor_ids.drop_null())
    got: list[tuple[str, int]] = []
    c = web_visitors.c
    with engine.connect() as conn:
        for i in range(0, len(ids), 5000):
            got.extend(conn.execute(sa.select(c.visitor_id, c.visitor_num).where(
                c.site_id == site_id, c.visitor_id.in_(ids.slice(i, 5000).to_pylist()))).all())
    found, nums = zip(*got, strict=True) if got else ((), ())
    return pa.table({"visitor_id": pa.array(found, pa.string()),
                     "visitor_num": pa.array(nums, pa.int64())})


def _bitmaps_by_value(values: pa.Array, nums: np.ndarray) -> dict[str, BitMap]:
    """One visitor set per value: sort by value code, one bitmap per run."""
    if len(nums) == 0:
        return {}
    enc = pc.dictionary_encode(values)
    codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    names = enc.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    codes, nums = codes[order], nums[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    firsts = codes[np.r_[0, bounds]]
    return {names[c]: BitMap(seg.astype(np.uint32))
            for c, seg in zip(firsts, np.split(nums, bounds), strict=True)}


def _event_aggs(events: pa.Table, numbers: pa.Table, start: datetime, end: datetime,
                dimension: str) -> dict[str, Agg]:
    """The contribution of landed events over ``[start, end)``: events and visitors of the
    events in it, visits (bounces, durations) of the visits that start in it."""
    if events.num_rows == 0:
        return {}
    values = _visit_values(events, dimension)
    lo = pa.scalar(start, pa.timestamp("us", tz="UTC"))
    hi = pa.scalar(end, pa.timestamp("us", tz="UTC"))
    t, vstart = events["occurred_at"], events["visit_start"]
    table = pa.table({
        "value": values, "visitor_id": events["visitor_id"],
        "pageview": pc.cast(pc.equal(events["name"], "pageview"), pa.int64()),
        "visit_id": events["visit_id"],
        "inside": pc.and_(pc.greater_equal(t, lo), pc.less(t, hi)),
        "starts": pc.and_(pc.greater_equal(vstart, lo), pc.less(vstart, hi)),
        "visit_events": events["visit_events"],
        "visit_duration_seconds": events["visit_duration_seconds"],
    })
    out: dict[str, Agg] = {}
    ev = table.filter(table["inside"])
    if ev.num_rows:
        counts = ev.group_by("value").aggregate([("pageview", "count"), ("pageview", "sum")])
        for v, n, p in zip(counts["value"].to_pylist(), counts["pageview_count"].to_pylist(),
                           counts["pageview_sum"].to_pylist(), strict=True):
            out[v] = Agg(events=n, pageviews=int(p or 0))
        pairs = ev.group_by(["value", "visitor_id"]).aggregate([])
        known = pairs.join(numbers, "visitor_id", join_type="left outer")
        if known["visitor_num"].null_count:
            raise LookupError(
                f"{known['visitor_num'].null_count} visitors of landed events have no number "
                "yet: the partition's rollup has not run since they landed")
        nums = np.asarray(known["visitor_num"].to_numpy(), dtype=np.int64)
        for v, bm in _bitmaps_by_value(known["value"].combine_chunks(), nums).items():
            out[v].visitors = bm
    vis = table.filter(table["starts"]).group_by(["visit_id", "value"]).aggregate(
        [("visit_events", "max"), ("visit_duration_seconds", "max")])
    if vis.num_rows:
        per = vis.append_column("bounce", pc.cast(pc.equal(vis["visit_events_max"], 1),
                                                  pa.int64()))
        per = per.group_by("value").aggregate([("visit_id", "count"), ("bounce", "sum"),
                                               ("visit_duration_seconds_max", "sum")])
        for v, n, b, d in zip(per["value"].to_pylist(), per["visit_id_count"].to_pylist(),
                              per["bounce_sum"].to_pylist(),
                              per["visit_duration_seconds_max_sum"].to_pylist(), strict=True):
            a = out.setdefault(v, Agg())
            a.visits, a.bounces, a.duration_seconds = n, int(b or 0), float(d or 0.0)
    return out


@dataclass
class WebStats:
    """A range's numbers (``totals``), its zero-filled ``series`` (one row per bucket, with
    ``start``) and its ``breakdown`` (one row per value, by visitors then value), as pandas
    DataFrames for notebooks; ``as_dict`` is the CLI's JSON."""

    site_id: int
    start: datetime
    end: datetime
    totals: dict
    series: pd.DataFrame | None = None
    breakdown: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {"site_id": self.site_id, "from": self.start.isoformat(),
               "to": self.end.isoformat(), **self.totals}
        if self.series is not None:
            out["series"] = _records(self.series)
        if self.breakdown is not None:
            out["breakdown"] = _records(self.breakdown)
        if self.notes:
            out["notes"] = self.notes
        return out


def _records(df: pd.DataFrame) -> list[dict]:
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    for r in rows:
        if isinstance(r.get("start"), (pd.Timestamp, datetime)):
            r["start"] = pd.Timestamp(r["start"]).isoformat()
    return rows


_BASE_COLUMNS = ["event_id", "site_id", "visitor_id", "name", "occurred_at", "visit_id",
                 "visit_start", "visit_events", "visit_duration_seconds"]
_NO_EVENTS = LANDED_WEB_SCHEMA.empty_table()
_NO_NUMBERS = pa.table({"visitor_id": pa.array([], pa.string()),
                        "visitor_num": pa.array([], pa.int64())})


def load_edges(engine: Engine, store: LandingStore, site: SiteInfo, parts: list[Part],
               dimensions: set[str]) -> dict[LocalDay, tuple[pa.Table, pa.Table]]:
    """The landed events the partial hours of a read need, per local day: only the site's
    valid rows (row groups of other sites are not read), only the columns used, only the
    visits that have an event or start in a partial hour (all of their events, for the
    visit's first values and its pages), and the numbers of their visitors."""
    out: dict[LocalDay, tuple[pa.Table, pa.Table]] = {}
    edges: dict[LocalDay, list[Part]] = {}
    for p in parts:
        if p.kind == "events":
            edges.setdefault(p.day, []).append(p)
    columns = _BASE_COLUMNS + sorted(d for d in dimensions if d != "site")
    ts = pa.timestamp("us", tz="UTC")
    for day, pieces in edges.items():
        try:
            t = store.read_partition(
                WEB_SOURCE, day, LANDED_WEB_SCHEMA, columns=columns,
                filters=(pc.field("site_id") == site.site_id)
                & pc.field("invalid_reason").is_null())
        except FileNotFoundError:
            continue
        touched = pa.repeat(pa.scalar(False), t.num_rows)
        for p in pieces:
            lo, hi = pa.scalar(p.start, ts), pa.scalar(p.end, ts)
            ev = pc.and_(pc.greater_equal(t["occurred_at"], lo), pc.less(t["occurred_at"], hi))
            st = pc.and_(pc.greater_equal(t["visit_start"], lo), pc.less(t["visit_start"], hi))
            touched = pc.or_(touched, pc.or_(ev, st))
        visits = pc.unique(t["visit_id"].filter(touched))
        t = t.filter(pc.is_in(t["visit_id"], value_set=visits))
        ids = pc.unique(t["visitor_id"].combine_chunks())
        out[day] = (t, _visitor_numbers(engine, site.site_id, ids))
    return out


class _Reader:
    """Rows fetched once per read, whatever the number of buckets asking for them."""

    def __init__(self, engine: Engine, store: LandingStore, site: SiteInfo, dimension: str,
                 landed: dict[LocalDay, tuple[pa.Table, pa.Table]] | None = None):
        self.engine, self.store, self.site, self.dimension = engine, store, site, dimension
        # the landed events of a day (and their visitors' numbers), shared between readers
        self._events = landed if landed is not None else {}
        self.days: dict[object, dict[str, Agg]] = {}
        self.hours: dict[object, dict[str, Agg]] = {}

    def prefetch(self, parts: list[Part]) -> None:
        days = sorted({p.day.day for p in parts if p.kind == "day"})
        hours = sorted({_naive(p.start) for p in parts if p.kind == "hour"})
        self.days = _rollup_aggs(self.engine, web_daily_rollups, "date", self.site.site_id,
                                 days, self.dimension)
        self.hours = _rollup_aggs(self.engine, web_hourly_rollups, "hour_start",
                                  self.site.site_id, hours, self.dimension)

    def _landed(self, day: LocalDay) -> tuple[pa.Table, pa.Table]:
        return self._events.get(day) or (_NO_EVENTS, _NO_NUMBERS)

    def part(self, p: Part) -> dict[str, Agg]:
        if p.kind == "day":
            return self.days.get(p.day.day, {})
        if p.kind == "hour":
            return self.hours.get(_naive(p.start), {})
        events, numbers = self._landed(p.day)
        return _event_aggs(events, numbers, p.start, p.end, self.dimension)

    def total(self, parts: list[Part]) -> dict[str, Agg]:
        out: dict[str, Agg] = {}
        for p in parts:
            for v, a in self.part(p).items():
                out.setdefault(v, Agg()).add(a)
        return out


class _FirstSeen:
    """New visitors of spans of a read: visitors whose first event on the site
    (``web_visitors.first_seen``) lies in the span. Such a visitor has an event there, so
    they are among the span's visitors; counting them needs no visitor set. One COUNT for
    the whole read; the first-seen times once when a series needs them per bucket."""

    def __init__(self, engine: Engine, site_id: int, start: datetime, end: datetime,
                 per_bucket: bool):
        c = web_visitors.c
        where = (c.site_id == site_id, c.first_seen >= _naive(start),
                 c.first_seen < _naive(end))
        with engine.connect() as conn:
            if per_bucket:
                seen = [r[0] for r in conn.execute(sa.select(c.first_seen).where(*where))]
                self.times = np.sort(np.array(seen, dtype="datetime64[us]"))
                self.total = len(self.times)
            else:
                self.times = None
                self.total = int(conn.execute(
                    sa.select(sa.func.count()).select_from(web_visitors).where(*where))
                    .scalar() or 0)

    def between(self, start: datetime, end: datetime) -> int:
        if self.times is None:
            return self.total
        lo, hi = (np.datetime64(_naive(t), "us") for t in (start, end))
        return int(np.searchsorted(self.times, hi) - np.searchsorted(self.times, lo))


def buckets(start: datetime, end: datetime, tz: str, by: str) -> list[tuple[datetime, datetime]]:
    """The local days or hours overlapping ``[start, end)``, clipped to it."""
    out = []
    t = start
    while t < end:
        day = LocalDay(local_date_of(t, tz), tz)
        if by == "day":
            b1 = day.end_utc
        else:
            b1 = min(day.start_utc + ((t - day.start_utc) // HOUR + 1) * HOUR, day.end_utc)
        out.append((t, min(b1, end)))
        t = min(b1, end)
    return out


def web_stats(
    engine: Engine, store: LandingStore, site_id: int, start: datetime, end: datetime,
    by: str | None = None, breakdown: str | None = None, limit: int = 10,
) -> WebStats:
    """The numbers of site ``site_id`` over ``[start, end)`` (aware instants; naive ones are
    read as UTC), optionally a series ``by`` hour or day and a ``breakdown`` by dimension."""
    start, end = (t if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in (start, end))
    if end <= start:
        raise ValueError(f"empty range: --to {end.isoformat()} is not after --from "
                         f"{start.isoformat()}")
    if by not in (None, "hour", "day"):
        raise ValueError(f"--by must be hour or day, not {by!r}")
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, not {limit}")
    if breakdown is not None and breakdown not in DIMENSIONS[1:]:
        raise ValueError(f"unknown breakdown {breakdown!r}; one of: "
                         + ", ".join(DIMENSIONS[1:]))
    site = site_info(engine, site_id)
    kept = retained(engine, store, site, start, end)
    notes: list[str] = []

    def plan(a: datetime, b: datetime) -> list[Part]:
        parts, why = decompose(a, b, site.timezone, kept)
        notes.extend(n for n in why if n not in notes)
        return parts

    whole = plan(start, end)
    bucket_parts = [(a, plan(a, b)) for a, b in buckets(start, end, site.timezone, by)] \
        if by else []
    landed = load_edges(engine, store, site, whole, {"site", breakdown or "site"})
    overview = _Reader(engine, store, site, "site", landed)
    overview.prefetch(whole + [p for _, ps in bucket_parts for p in ps])
    # parts are contiguous: what they cover is the range, or wider where retention widened
    # a piece to its whole hour or day; new visitors are counted over what is covered
    first = _FirstSeen(engine, site_id, whole[0].start, whole[-1].end, per_bucket=bool(by))

    def numbers(parts: list[Part]) -> dict:
        agg = overview.total(parts).get(SITE_VALUE, Agg())
        return {**agg.numbers(),
                "new_visitors": first.between(parts[0].start, parts[-1].end)}

    totals = numbers(whole)
    series = None
    if by:
        rows = []
        for a, parts in bucket_parts:
            rows.append({"start": pd.Timestamp(a), **numbers(parts)})
        series = pd.DataFrame(rows)
    table = None
    if breakdown:
        reader = _Reader(engine, store, site, breakdown, landed)
        per = _rollup_totals(engine, web_daily_rollups, "date", site.site_id,
                             sorted({p.day.day for p in whole if p.kind == "day"}), breakdown)
        hourly = _rollup_totals(engine, web_hourly_rollups, "hour_start", site.site_id,
                                sorted({_naive(p.start) for p in whole if p.kind == "hour"}),
                                breakdown)
        for extra in (hourly, *(reader.part(p) for p in whole if p.kind == "events")):
            for v, a in extra.items():
                per.setdefault(v, Agg()).add(a)
        rows = [{"value": v, **a.numbers()} for v, a in per.items()]
        rows.sort(key=lambda r: (-r["visitors"], r["value"]))
        table = pd.DataFrame(rows[:limit], columns=[
            "value", "visitors", "visits", "pageviews", "events", "bounce_rate",
            "visit_duration_seconds"])
    return WebStats(site_id, start, end, totals, series, table, notes)
