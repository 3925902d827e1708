"""The web source's per-partition work, as plain functions tested without Dagster."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.core.sources import ExtractStats
from analytics_pipeline.web.compute import DEFAULT_SESSION_TIMEOUT_SECONDS, landed_slices
from analytics_pipeline.web.contract import LANDED_WEB_SCHEMA, WEB_SOURCE, web_sites
from analytics_pipeline.web.source import WebEventsSource


@dataclass
class WebExtractResult:
    key: str
    rows: int
    invalid_rows: int
    duplicates_dropped: int
    sites: int  # sites of the partition's accounts
    accounts: int  # accounts of the partition's timezone
    visits: int
    window: str
    path: str = ""


def record_sites(engine: Engine, sites: pa.Table) -> int:
    """Upsert the sites read from the application into ``web_sites`` (the read path finds a
    site's account, hence its timezone, there). Returns the rows written."""
    rows = [{"site_id": r["id"], "account_id": r["account_id"], "domain": r["domain"],
             "active": bool(r["active"]), "updated_at": wh.utc_now_naive()}
            for r in sites.to_pylist()
            if r["id"] is not None and r["account_id"] is not None and r["domain"]]
    if not rows:
        return 0
    with engine.begin() as conn:
        stmt = wh.upsert_insert(conn, web_sites)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["site_id"],
            set_={c: stmt.excluded[c] for c in ("account_id", "domain", "active",
                                                "updated_at")}), rows)
    return len(rows)


def extract_web_partition(
    source: WebEventsSource,
    store: LandingStore,
    engine: Engine,
    day: LocalDay,
    default_tz: str,
    session_timeout_seconds: float = DEFAULT_SESSION_TIMEOUT_SECONDS,
) -> WebExtractResult:
    """Land one partition's web events, validated and sessionized (LANDED_WEB_SCHEMA).

    The partition's sites are those of the accounts snapshot's accounts in ``day.tz``;
    the default timezone's partitions also sweep the events of no known site (null,
    unknown, not an integer, or of an account missing from the snapshot), quarantined
    as ``unknown_site``. The whole partition is held in memory (a visitor's visits need
    all of the day's events), narrow: each batch is converted, validated and its
    dimensions derived as it is read, keeping int32 dictionary codes of its strings; the
    wide rows are gathered in landed order and written slice by slice. The manifest
    records the accounts and sites it holds.
    """
    accounts = wh.account_ids_in_timezone(engine, day.tz)
    known_accounts = pa.array(wh.known_account_ids(engine), pa.int64())
    all_sites = source.sites()
    record_sites(engine, all_sites)
    known = all_sites.filter(pc.is_in(all_sites["account_id"], value_set=known_accounts))
    targets = known.filter(pc.is_in(known["account_id"],
                                    value_set=pa.array(accounts, pa.int64())))
    site_ids = targets["id"].to_pylist()
    orphans_of = known["id"].to_pylist() if day.tz == default_tz else None
    stats = ExtractStats()
    landed = source.land(day, targets, orphans_of, stats, session_timeout_seconds)
    stats.invalid_rows = landed.invalid_rows
    visits = landed.visits
    window = f"{day.start_utc.isoformat()} → {day.end_utc.isoformat()}"
    meta = {
        "accounts": len(accounts), "account_ids": accounts, "site_ids": site_ids,
        "window_start_utc": day.start_utc.isoformat(),
        "window_end_utc": day.end_utc.isoformat(), "orphans_swept": orphans_of is not None,
        "rows_read": stats.rows_read, "invalid_rows": stats.invalid_rows,
        "duplicates_dropped": stats.duplicates_dropped, "visits": visits,
        "session_timeout_seconds": session_timeout_seconds,
    }
    # the slices are gathered from memory: one ahead of the writer is enough to overlap
    # their decoding with the compression, and each one held is ~50 MB
    path = store.write_partition(WEB_SOURCE, day, landed_slices(landed), meta,
                                 LANDED_WEB_SCHEMA, prefetch=1)
    return WebExtractResult(
        key=day.key, rows=landed.num_rows, invalid_rows=stats.invalid_rows,
        duplicates_dropped=stats.duplicates_dropped, sites=len(site_ids),
        accounts=len(accounts), visits=visits, window=window, path=path)
