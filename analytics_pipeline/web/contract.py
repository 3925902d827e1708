"""The web-analytics source's contracts, shared by its extraction, rollups and read path:
the application's tables, the landed (sessionized) event schema, the quarantine reasons,
the dimensions and the warehouse tables.

Definitions (README, *Web analytics*): a **visit** is a visitor's events on a site with no
gap longer than ``ANALYTICS_WEB_SESSION_TIMEOUT_MINUTES`` (30); it also ends at the site's
local midnight, so every visit lies in one partition. A visit counts in the hour and the
day it starts; a **bounce** is a visit of exactly one event; a visit's **duration** is its
last event minus its first. **Visitors** of any range are the distinct ``visitor_id``s of
the range (a union of visitor sets, never a sum); **new visitors** are those whose first
event on the site lies in the range.
"""

from __future__ import annotations

import pyarrow as pa
import sqlalchemy as sa

from analytics_pipeline.core.sources import source_metadata
from analytics_pipeline.core.warehouse import metadata

# --- application database -------------------------------------------------------------

src_sites = sa.Table(
    "sites", source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("domain", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
)

src_web_events = sa.Table(
    "web_events", source_metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("site_id", sa.BigInteger, nullable=False),
    sa.Column("visitor_id", sa.Text),
    sa.Column("name", sa.Text),
    sa.Column("url", sa.Text),
    sa.Column("referrer", sa.Text),
    sa.Column("user_agent", sa.Text),
    sa.Column("country", sa.Text),
    sa.Column("occurred_at", sa.DateTime),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Index("index_web_events_on_site_id_and_occurred_at", "site_id", "occurred_at"),
    sa.Index("index_web_events_on_received_at", "received_at"),
)

WEB_SOURCE = "web_events"  # landing source name and quarantine source

# --- quarantine reasons (the first rule a row breaks, in this order) -------------------

REASON_UTF8 = "invalid_utf8"
REASON_MISSING_ID = "missing_id"
REASON_UNKNOWN_SITE = "unknown_site"
REASON_INACTIVE_SITE = "inactive_site"
REASON_MISSING_VISITOR = "missing_visitor_id"
REASON_OCCURRED_AT = "unparseable_occurred_at"
REASON_FUTURE = "occurred_after_received"  # occurred_at > received_at + 5 minutes
REASON_NAME = "invalid_event_name"  # empty, > 200 characters, control characters
REASON_URL = "unparseable_url"

FUTURE_TOLERANCE_SECONDS = 300
MAX_EVENT_NAME_LENGTH = 200

# --- the landed, sessionized event ---------------------------------------------------

_ts = pa.timestamp("us", tz="UTC")

# One row per source event of the partition (de-duplicated by id). Valid rows carry the
# derived dimensions and their visit; invalid rows keep what could be read, their
# ``invalid_reason`` and the source row as JSON in ``raw``, and are quarantined by the
# rollup.
LANDED_WEB_SCHEMA = pa.schema([
    pa.field("event_id", pa.string()),
    pa.field("site_id", pa.int64()),
    pa.field("account_id", pa.int64()),
    pa.field("visitor_id", pa.string()),
    pa.field("name", pa.string()),
    pa.field("occurred_at", _ts),
    pa.field("received_at", _ts),
    pa.field("hour_start", _ts),  # UTC start of the site's local hour of occurred_at
    # derived dimensions
    pa.field("page", pa.string()),  # URL path, no query string
    pa.field("referrer", pa.string()),  # referrer host; null = direct (or self-referral)
    pa.field("utm_source", pa.string()),
    pa.field("utm_medium", pa.string()),
    pa.field("utm_campaign", pa.string()),
    pa.field("device", pa.string()),  # desktop | mobile | tablet | bot | other
    pa.field("browser", pa.string()),
    pa.field("os", pa.string()),
    pa.field("country", pa.string()),
    # the visit, numbered within the partition in (site, visitor, time) order
    pa.field("visit_id", pa.int64()),
    pa.field("visit_start", _ts),
    pa.field("visit_events", pa.int64()),
    pa.field("visit_duration_seconds", pa.float64()),
    pa.field("entry_page", pa.string()),
    pa.field("exit_page", pa.string()),
    pa.field("invalid_reason", pa.string()),
    pa.field("raw", pa.string()),
])

# --- dimensions --------------------------------------------------------------------------

# Dimensions whose value belongs to the visit (the visit's first event's value, or its
# entry/exit page): a visit counts once for its value. Event dimensions: each event counts
# for its own value, a visit counts for every value among its events.
VISIT_DIMENSIONS = ("entry_page", "exit_page", "referrer", "utm_source", "utm_medium",
                    "utm_campaign", "device", "browser", "os", "country")
EVENT_DIMENSIONS = ("name", "page")
# "site" is the overview: one value, "" (every event of the site)
DIMENSIONS = ("site", *EVENT_DIMENSIONS, *VISIT_DIMENSIONS)
DIRECT = "(direct)"  # the value of a visit without referrer (or referred by its own site)
NONE_VALUE = "(none)"  # the value of a missing utm parameter, country, agent

# --- warehouse -----------------------------------------------------------------------

# The sites as last extracted (each extraction upserts the sites it read): the read path
# finds a site's account, and through the accounts snapshot its timezone, here.
web_sites = sa.Table(
    "web_sites", metadata,
    sa.Column("site_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("domain", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


# Per site, every visitor id once, numbered globally (the numbers are what the visitor
# sets hold: 32-bit Roaring bitmaps, so at most 2^32 - 1 visitors in a warehouse), with
# the first and last time seen (new visitors of a range: first_seen within it).
web_visitors = sa.Table(
    "web_visitors", metadata,
    sa.Column("visitor_num", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              primary_key=True, autoincrement=True),
    sa.Column("site_id", sa.BigInteger, nullable=False),
    sa.Column("visitor_id", sa.Text, nullable=False),
    sa.Column("first_seen", sa.DateTime, nullable=False),
    sa.Column("last_seen", sa.DateTime, nullable=False),
    sa.UniqueConstraint("site_id", "visitor_id", name="uq_web_visitors_site_visitor"),
    sa.Index("ix_web_visitors_site_first_seen", "site_id", "first_seen"),
)


def _rollup_columns() -> list[sa.Column]:
    return [
        sa.Column("dimension", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("pageviews", sa.BigInteger, nullable=False),
        sa.Column("visits", sa.BigInteger, nullable=False),
        sa.Column("bounces", sa.BigInteger, nullable=False),
        sa.Column("duration_seconds", sa.Float(precision=53), nullable=False),
        sa.Column("visitors", sa.BigInteger, nullable=False),
        # new visitors as of the write (first seen in this hour/day); reads recompute them
        # from web_visitors, which late events can move earlier
        sa.Column("new_visitors", sa.BigInteger, nullable=False),
        sa.Column("visitor_set", sa.LargeBinary, nullable=False),  # serialized Roaring
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.CheckConstraint("events >= 0 AND pageviews >= 0 AND visits >= 0 "
                           "AND bounces >= 0 AND visitors >= 0 AND new_visitors >= 0 "
                           "AND duration_seconds >= 0"),
    ]


# The site's local hours, keyed by their UTC start (an hour of Asia/Kathmandu starts at
# :15 UTC); ``date`` is the local date the hour belongs to.
web_hourly_rollups = sa.Table(
    "web_hourly_rollups", metadata,
    sa.Column("site_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hour_start", sa.DateTime, primary_key=True),  # naive UTC
    sa.Column("date", sa.Date, nullable=False),
    *_rollup_columns(),
    sa.Index("ix_web_hourly_site_date", "site_id", "date"),
)

web_daily_rollups = sa.Table(
    "web_daily_rollups", metadata,
    sa.Column("site_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("date", sa.Date, primary_key=True),
    *_rollup_columns(),
)
