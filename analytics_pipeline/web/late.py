"""Late web events: which ``date|timezone`` partitions received events in a window of
``received_at``, computed in the application database (one grouped query, no event reaches
Python). Browsers batch and replay events, so ``occurred_at`` can be hours or days before
``received_at``; the late-events sensor re-materializes the partitions already rolled up."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.partitions import LocalDay, is_valid_timezone, local_date_of
from analytics_pipeline.core.sources import source_engine
from analytics_pipeline.web.contract import src_web_events, web_sites


def received_dates(source_url: str, after: datetime, until: datetime) -> list[tuple[int, date]]:
    """(site id, UTC date of the event) of every event received in ``(after, until]``
    (naive UTC bounds). An event without a usable ``occurred_at`` is dated by its
    ``received_at``, as extraction does."""
    e = src_web_events.c
    day = sa.func.coalesce(sa.func.date(e.occurred_at), sa.func.date(e.received_at))
    query = (sa.select(e.site_id, day).where(e.received_at > after, e.received_at <= until)
             .group_by(e.site_id, day))
    engine = source_engine(source_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    out = []
    for site_id, d in rows:
        try:
            out.append((int(site_id), d if isinstance(d, date) else date.fromisoformat(str(d))))
        except (TypeError, ValueError):
            continue  # an unusable site id or date: extraction quarantines the event
    return out


def site_timezones(engine: Engine) -> dict[int, str]:
    """Site id → its account's valid timezone (warehouse snapshots)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(web_sites.c.site_id, wh.accounts.c.timezone).join(
            wh.accounts, wh.accounts.c.id == web_sites.c.account_id)).all()
    return {int(s): tz for s, tz in rows if tz and is_valid_timezone(tz)}


def late_partitions(received: list[tuple[int, date]], timezones: dict[int, str]) -> list[LocalDay]:
    """The local days (of each site's timezone) that the UTC dates touch: a UTC date
    overlaps one or two local dates."""
    days: set[LocalDay] = set()
    for site_id, d in received:
        tz = timezones.get(site_id)
        if tz is None:
            continue  # unknown site: quarantined by the default timezone's partitions
        start = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        end = start + timedelta(days=1) - timedelta(microseconds=1)
        days.add(LocalDay(local_date_of(start, tz), tz))
        days.add(LocalDay(local_date_of(end, tz), tz))
    return sorted(days, key=lambda x: (x.day, x.tz))
