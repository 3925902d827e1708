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


def _utc(value: object) -> datetime | None:
    """A timestamp as read (a datetime, or text in SQLite) as an aware UTC instant; None
    when it cannot be read."""
    if isinstance(value, datetime):
        t = value
    else:
        try:
            t = datetime.fromisoformat(str(value).strip().replace(" ", "T", 1))
        except ValueError:
            return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def received_dates(source_url: str, after: datetime,
                   until: datetime) -> list[tuple[int, date, datetime | None, datetime | None]]:
    """Per (site id, UTC date of the event) of the events received in ``(after, until]``
    (naive UTC bounds): the earliest and latest event instant of that date (None when
    they cannot be read). An event without a usable ``occurred_at`` is dated by its
    ``received_at``, as extraction does. A UTC date overlaps at most two local dates, and
    the earliest and latest events are real events: their local dates are exactly the
    local dates that received events."""
    e = src_web_events.c
    dated = sa.func.date(e.occurred_at).is_not(None)
    day = sa.func.coalesce(sa.func.date(e.occurred_at), sa.func.date(e.received_at))
    instant = sa.case((dated, e.occurred_at), else_=e.received_at)
    query = (sa.select(e.site_id, day, sa.func.min(instant), sa.func.max(instant))
             .where(e.received_at > after, e.received_at <= until)
             .group_by(e.site_id, day))
    engine = source_engine(source_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    out = []
    for site_id, d, lo, hi in rows:
        try:
            out.append((int(site_id), d if isinstance(d, date) else date.fromisoformat(str(d)),
                        _utc(lo), _utc(hi)))
        except (TypeError, ValueError):
            continue  # an unusable site id or date: extraction quarantines the event
    return out


def site_timezones(engine: Engine) -> dict[int, str]:
    """Site id → its account's valid timezone (warehouse snapshots)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(web_sites.c.site_id, wh.accounts.c.timezone).join(
            wh.accounts, wh.accounts.c.id == web_sites.c.account_id)).all()
    return {int(s): tz for s, tz in rows if tz and is_valid_timezone(tz)}


def late_partitions(received: list[tuple[int, date, datetime | None, datetime | None]],
                    timezones: dict[int, str]) -> list[LocalDay]:
    """The local days (of each site's timezone) of the earliest and latest event of each
    received UTC date; when they cannot be read, every local date the UTC date touches
    (one or two)."""
    days: set[LocalDay] = set()
    for site_id, d, lo, hi in received:
        tz = timezones.get(site_id)
        if tz is None:
            continue  # unknown site: quarantined by the default timezone's partitions
        start = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        end = start + timedelta(days=1) - timedelta(microseconds=1)
        if lo is not None and hi is not None and start <= lo <= hi <= end:
            start, end = lo, hi
        days.add(LocalDay(local_date_of(start, tz), tz))
        days.add(LocalDay(local_date_of(end, tz), tz))
    return sorted(days, key=lambda x: (x.day, x.tz))
