"""The web source's rollup of one partition, as a plain function tested without Dagster:
landed sessionized events → quarantine, visitor numbers, hourly and daily rollups, checks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine

from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.rollups import QUARANTINE_SCHEMA, value_counts
from analytics_pipeline.core.steps import LandingOutOfDate, landed_accounts
from analytics_pipeline.web.contract import DIMENSIONS, LANDED_WEB_SCHEMA, WEB_SOURCE
from analytics_pipeline.web.rollups import SITE_DIMENSION, web_rollup_rows
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
    """``QUARANTINE_SCHEMA`` rows of the landed rows with an ``invalid_reason``: the payload
    is the source row as landed in ``raw`` (else the landed row as JSON); a row without
    an id is named by its payload's hash. One row per (event_id, reason)."""
    if invalid.num_rows == 0:
        return QUARANTINE_SCHEMA.empty_table()
    payload = invalid["raw"].combine_chunks()
    ids = invalid["event_id"].combine_chunks()
    if payload.null_count or ids.null_count or pc.any(pc.equal(ids, "")).as_py():
        # rare (a row landed without raw values or without an id): a loop over these only
        rows = invalid.drop_columns(["raw", "invalid_reason"]).to_pylist()
        texts = [p if p is not None else json.dumps(r, default=str, sort_keys=True)
                 for p, r in zip(payload.to_pylist(), rows, strict=True)]
        payload = pa.array(texts, pa.string())
        ids = pa.array([i if i else "sha1:" + hashlib.sha1(t.encode()).hexdigest()
                        for i, t in zip(ids.to_pylist(), texts, strict=True)], pa.string())
    bad = pa.Table.from_arrays(
        [pa.repeat(pa.scalar(WEB_SOURCE, pa.string()), invalid.num_rows), ids,
         invalid["invalid_reason"].combine_chunks().cast(pa.string()), payload],
        schema=QUARANTINE_SCHEMA)
    return bad.group_by(["source", "event_id", "reason"], use_threads=False).aggregate(
        [("payload", "first")]).rename_columns(QUARANTINE_SCHEMA.names)


# the landed columns the rollup reads for valid rows; the repeated strings among them stay
# dictionary-encoded as stored (the partition is never held decoded whole)
_VALID_COLUMNS = tuple(dict.fromkeys((
    "event_id", "site_id", "account_id", "visitor_id", "name", "occurred_at",
                  "hour_start", "visit_id", "invalid_reason",
                  *(d for d in DIMENSIONS if d != SITE_DIMENSION))))
_DICTIONARY_COLUMNS = tuple(c for c in _VALID_COLUMNS
                            if c not in ("event_id", "visitor_id", "invalid_reason")
                            and pa.types.is_string(LANDED_WEB_SCHEMA.field(c).type))


def _read_landed(store: LandingStore, day: LocalDay) -> tuple[pa.Table, pa.Table]:
    """The partition's valid rows (``_VALID_COLUMNS``, repeated strings dictionary-encoded)
    and its invalid rows (every column, as landed)."""
    files = store.partition_files(WEB_SOURCE, day)
    if not files:
        empty = LANDED_WEB_SCHEMA.empty_table()
        return empty.select(list(_VALID_COLUMNS)), empty
    valid_parts, invalid_parts = [], []
    for path in files:
        reasons = pq.read_table(path, filesystem=store.fs, columns=["invalid_reason"])
        table = pq.read_table(path, filesystem=store.fs, columns=list(_VALID_COLUMNS),
                              read_dictionary=list(_DICTIONARY_COLUMNS))
        ok = pc.is_null(reasons["invalid_reason"])
        if reasons["invalid_reason"].null_count != reasons.num_rows:
            whole = pq.read_table(path, filesystem=store.fs)
            invalid_parts.append(whole.filter(pc.invert(ok)))
            del whole
            table = table.filter(ok)
        valid_parts.append(table)
    valid = pa.concat_tables(valid_parts) if len(valid_parts) > 1 else valid_parts[0]
    invalid = (pa.concat_tables(invalid_parts) if invalid_parts
               else LANDED_WEB_SCHEMA.empty_table())
    return valid, invalid


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
    stray_sites = pc.invert(pc.is_in(valid["site_id"], pa.array(site_ids, pa.int64())))
    stray_accounts = pc.invert(pc.is_in(valid["account_id"], pa.array(accounts, pa.int64())))
    if valid.num_rows and pc.any(pc.or_(stray_sites, stray_accounts)).as_py():
        raise ValueError(f"{day.key}: landed valid events of sites or accounts the landing "
                         "does not record; re-materialize its raw events asset")
    result.valid = valid.num_rows
    result.quarantined_by_reason = value_counts(bad["reason"])

    seen = valid.group_by(["site_id", "visitor_id"], use_threads=False).aggregate(
        [("occurred_at", "min"), ("occurred_at", "max")]).rename_columns(
        ["site_id", "visitor_id", "first_seen", "last_seen"])
    nums = register_visitors(engine, seen)
    hourly, daily = web_rollup_rows(valid, nums, day, nums)
    result.rows_replaced = replace_web_slice(engine, day, site_ids, hourly, daily, bad)
    result.hourly_rows, result.daily_rows = hourly.num_rows, daily.num_rows

    overview = daily.filter(pc.equal(daily["dimension"], SITE_DIMENSION))
    result.visits = int(pc.sum(overview["visits"]).as_py() or 0)
    result.visitors = int(pc.sum(overview["visitors"]).as_py() or 0)
    problems = web_rollup_problems(engine, day.day, site_ids)
    result.mismatches = {check: len(found) for check, found in problems.items()}
    result.problems = {check: found[:PROBLEMS_SHOWN] for check, found in problems.items()
                       if found}
    pages = daily.filter(pc.equal(daily["dimension"], "page")).sort_by(
        [("visitors", "descending"), ("pageviews", "descending"), ("site_id", "ascending"),
         ("value", "ascending")]).slice(0, PREVIEW_PAGES)
    result.preview = pages.select(["site_id", "value", "visitors", "pageviews"]) \
        .rename_columns(["site_id", "page", "visitors", "pageviews"]).to_pylist()
    return result
