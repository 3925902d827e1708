"""Retention of the web source: landed events and hourly rollups are kept for a number of
days (90 by default), daily rollups forever. Reads of expired hours fall back to the
enclosing day (``read.decompose``), and say so."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.web.contract import WEB_SOURCE, web_hourly_rollups


@dataclass
class RetentionResult:
    raw_before: date
    hourly_before: date
    landed_dates_dropped: list[date]
    hourly_rows_deleted: int


def enforce_web_retention(engine: Engine, store: LandingStore, today: date, raw_days: int,
                          hourly_days: int) -> RetentionResult:
    """Drop landed web events of local dates before ``today - raw_days`` and hourly rollup
    rows of dates before ``today - hourly_days``. Idempotent; daily rollups are never
    touched."""
    if raw_days < 1 or hourly_days < 1:
        raise ValueError("web retention must keep at least one day "
                         f"(raw {raw_days}, hourly {hourly_days})")
    raw_before = today - timedelta(days=raw_days)
    hourly_before = today - timedelta(days=hourly_days)
    with engine.begin() as conn:
        deleted = conn.execute(sa.delete(web_hourly_rollups).where(
            web_hourly_rollups.c.date < hourly_before)).rowcount
    dropped = store.drop_dates_before(WEB_SOURCE, raw_before)
    return RetentionResult(raw_before, hourly_before, dropped, int(deleted or 0))
