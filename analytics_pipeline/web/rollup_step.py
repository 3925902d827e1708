"""The web source's rollup of one partition, as a plain function tested without Dagster:
landed sessionized events → quarantine, visitor numbers, hourly and daily rollups, checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine

from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.rollups import landed_quarantine, value_counts
from analytics_pipeline.core.steps import LandingOutOfDate, landed_accounts
from analytics_pipeline.web.contract import DIMENSIONS, LANDED_WEB_SCHEMA, WEB_SOURCE
from analytics_pipeline.web.rollups import (
    SITE_DIMENSION,
    EventColumns,
    WebRows,
    one_array,
    web_events,
    web_rollup,
)
from analytics_pipeline.web.store import (
    register_visitors,
    replace_web_slice,
    web_rollup_problems,
)

PREVIEW_PAGES = 10
PROBLEMS_SHOWN = 20  # per check, in the result (the counts are complete)


@dataclass
class WebRollupResult:
    key: str
    events: int = 0  # landed rows read
    valid: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    sites: int = 0
    hourly_rows: int = 0
    daily_rows: int = 0
    rows_replaced: int = 0
    visits: int = 0  # site level, summed over sites
    visitors: int = 0  # site level (distinct per site), summed over sites
    mismatches: dict[str, int] = field(default_factory=dict)  # check → problems found
    problems: dict[str, list[str]] = field(default_factory=dict)  # the first of each
    preview: list[dict] = field(default_factory=list)  # top pages


def quarantine_rows(invalid: pa.Table) -> pa.Table:
    """``QUARANTINE_SCHEMA`` rows of the landed web rows with an ``invalid_reason``."""
    return landed_quarantine(invalid, WEB_SOURCE, "event_id")


# the landed string columns the rollup reads dictionary-encoded (as stored)
_DICTIONARY_COLUMNS = frozenset(
    c for c in ("visitor_id", "name", *(d for d in DIMENSIONS if d != SITE_DIMENSION))
    if pa.types.is_string(LANDED_WEB_SCHEMA.field(c).type))
_BATCH_ROWS = 65_536


class LandedColumns(EventColumns):
    """The valid rows of a landed partition's files, read one column at a time (repeated
    strings as dictionary codes; the partition is never held whole)."""

    def __init__(self, store: LandingStore, files: list[str], valid: list[np.ndarray | None],
                 sizes: list[int]):
        self.store, self.files, self.valid, self.sizes = store, files, valid, sizes
        self.num_rows = sum(int(m.sum()) if m is not None else k
                            for m, k in zip(valid, sizes, strict=True))

    def column(self, name: str) -> pa.Array:
        chunks: list[pa.Array] = []
        dictionary = [name] if name in _DICTIONARY_COLUMNS else None
        for path, ok in zip(self.files, self.valid, strict=True):
            col = pq.read_table(path, filesystem=self.store.fs, columns=[name],
                                read_dictionary=dictionary)[name]
            if ok is not None:
                col = col.filter(pa.array(ok))
            chunks.extend(col.chunks)
        if not chunks:
            typ = LANDED_WEB_SCHEMA.field(name).type
            return pa.array([], pa.dictionary(pa.int32(), typ) if dictionary else typ)
        return one_array(pa.chunked_array(chunks))

    def rows_of(self, name: str, rows: np.ndarray) -> pa.Array:
        if name in _DICTIONARY_COLUMNS:  # codes: cheap to read whole
            return super().rows_of(name, rows)
        # other columns (event ids) batch by batch, keeping only the rows asked for
        parts: list[pa.Array] = []
        base = 0  # valid rows before this file
        for path, ok, size in zip(self.files, self.valid, self.sizes, strict=True):
            at = np.arange(size) if ok is None else np.flatnonzero(ok)
            lo, hi = np.searchsorted(rows, [base, base + len(at)])
            wanted = at[rows[lo:hi] - base]  # rows of the file
            base += len(at)
            if not len(wanted):
                continue
            start = 0
            for batch in pq.ParquetFile(path, filesystem=self.store.fs).iter_batches(
                    batch_size=_BATCH_ROWS, columns=[name]):
                a, b = np.searchsorted(wanted, [start, start + batch.num_rows])
                if b > a:
                    parts.append(batch.column(0).take(pa.array(wanted[a:b] - start)))
                start += batch.num_rows
        typ = LANDED_WEB_SCHEMA.field(name).type
        return pa.concat_arrays(parts) if parts else pa.array([], typ)


def _read_landed(store: LandingStore, day: LocalDay) -> tuple[LandedColumns, pa.Table]:
    """The partition's valid rows (column at a time) and its invalid rows (every column,
    as landed)."""
    files = store.partition_files(WEB_SOURCE, day)
    valid, sizes, invalid_parts = [], [], []
    for path in files:
        reasons = pq.read_table(path, filesystem=store.fs, columns=["invalid_reason"])
        ok = pc.is_null(reasons["invalid_reason"])
        sizes.append(reasons.num_rows)
        if reasons["invalid_reason"].null_count != reasons.num_rows:
            whole = pq.read_table(path, filesystem=store.fs)
            invalid_parts.append(whole.filter(pc.invert(ok)))
            del whole
            valid.append(one_array(ok).to_numpy(zero_copy_only=False))
        else:
            valid.append(None)
    invalid = (pa.concat_tables(invalid_parts) if invalid_parts
               else LANDED_WEB_SCHEMA.empty_table())
    return LandedColumns(store, files, valid, sizes), invalid


def rollup_web_partition(store: LandingStore, engine: Engine, day: LocalDay) -> WebRollupResult:
    """Roll one landed partition of web events up into the warehouse.

    The slice replaced is what the landing recorded (``site_ids`` of ``account_ids``),
    refused like core's rollups when the timezone's accounts changed since the landing.
    Invalid rows are quarantined; the valid rows' visitors are registered (numbers,
    first/last seen), then the hourly and daily rows replace the slice in one transaction,
    and the checks run on what was written.
    """
    accounts, problem = landed_accounts(store, engine, day, WEB_SOURCE)
    if problem:
        raise LandingOutOfDate(problem)
    meta = store.partition_meta(WEB_SOURCE, day)
    if meta.get("site_ids") is None:
        raise LandingOutOfDate(f"{day.key}: the web landing does not record its sites; "
                               "re-materialize its raw events asset first")
    site_ids = sorted({int(s) for s in meta["site_ids"]})
    valid, invalid = _read_landed(store, day)
    result = WebRollupResult(key=day.key, events=valid.num_rows + invalid.num_rows,
                             sites=len(site_ids))
    bad = quarantine_rows(invalid)
    del invalid
    if valid.num_rows:
        stray_sites = pc.invert(pc.is_in(valid.column("site_id"),
                                         pa.array(site_ids, pa.int64())))
        stray_accounts = pc.invert(pc.is_in(valid.column("account_id"),
                                            pa.array(accounts, pa.int64())))
        if pc.any(pc.or_(stray_sites, stray_accounts)).as_py():
            raise ValueError(f"{day.key}: landed valid events of sites or accounts the "
                             "landing does not record; re-materialize its raw events asset")
        del stray_sites, stray_accounts
    result.valid = valid.num_rows
    result.quarantined_by_reason = value_counts(bad["reason"])

    events = web_events(valid, day)
    events.number(register_visitors(engine, events.seen()))
    rollup = web_rollup(events)
    del events
    result.rows_replaced = replace_web_slice(engine, day, site_ids, rollup.hourly,
                                             rollup.daily, bad)
    result.hourly_rows, result.daily_rows = rollup.hourly.num_rows, rollup.daily.num_rows

    overview = rollup.daily.part(SITE_DIMENSION)
    if overview is not None:
        result.visits = int(overview.counts["visits"].sum())
        result.visitors = int(overview.counts["visitors"].sum())
    problems = web_rollup_problems(engine, day.day, site_ids)
    result.mismatches = {check: len(found) for check, found in problems.items()}
    result.problems = {check: found[:PROBLEMS_SHOWN] for check, found in problems.items()
                       if found}
    result.preview = _top_pages(rollup.daily)
    return result


def _top_pages(daily: WebRows) -> list[dict]:
    """The ``PREVIEW_PAGES`` daily page rows of the most visitors (then pageviews, site,
    page)."""
    part = daily.part("page")
    if part is None or not len(part.value):
        return []
    pages = pa.table({
        "site_id": pa.array(daily.sites[part.site], pa.int64()),
        "page": part.values.cast(pa.string()).take(pa.array(part.value)),
        "visitors": pa.array(part.counts["visitors"], pa.int64()),
        "pageviews": pa.array(part.counts["pageviews"], pa.int64())})
    return pages.sort_by([("visitors", "descending"), ("pageviews", "descending"),
                          ("site_id", "ascending"), ("page", "ascending")]).slice(
        0, PREVIEW_PAGES).to_pylist()
