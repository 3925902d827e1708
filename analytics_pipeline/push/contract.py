"""The push-impact source's contracts, shared by its extraction, PostHog fetch, statistics
and read path: the application's tables, the landed schemas, the quarantine reasons and
the warehouse tables.

Definitions (README, *Push impact*): a push's anchor ``t`` is ``delivered_at`` (else
``sent_at``); its user's activity *before* is counted over ``[t − W, t)`` and *after* over
``[t, t + W)`` for every configured window ``W``. A push belongs to the local date of its
``sent_at`` in its account's reporting timezone (``date|timezone`` partitions); only
delivered pushes are analysed, every push is counted by the ``push_*`` metrics.
"""

from __future__ import annotations

import pyarrow as pa
import sqlalchemy as sa

from analytics_pipeline.core.sources import source_metadata
from analytics_pipeline.core.warehouse import KeyText, metadata

# --- application database -------------------------------------------------------------

src_users = sa.Table(
    "users", source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("email", sa.Text),
    sa.Column("posthog_distinct_id", sa.Text),
)

src_push_notifications = sa.Table(
    "push_notifications", source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("campaign_id", sa.BigInteger),
    sa.Column("automation_id", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("sent_at", sa.DateTime, nullable=False),
    sa.Column("delivered_at", sa.DateTime),
    sa.Index("index_push_notifications_on_account_id_and_sent_at", "account_id", "sent_at"),
)

PUSH_SOURCE = "push_notifications"  # landing source name and quarantine source
ACTIVITY_SOURCE = "push_activity"  # landing of the PostHog answers

STATUSES = ("sent", "delivered", "failed")

# --- quarantine reasons (the first rule a row breaks, in this order) -------------------

REASON_UTF8 = "invalid_utf8"
REASON_BAD_ID = "invalid_id"  # id, account_id, user_id or campaign_id not an integer
REASON_SENT_AT = "unparseable_sent_at"
REASON_DELIVERED_AT = "unparseable_delivered_at"
REASON_UNKNOWN_STATUS = "unknown_status"
REASON_UNKNOWN_USER = "unknown_user"  # no such user, or a user of another account
REASON_DELIVERED_BEFORE_SENT = "delivered_before_sent"
REASON_FUTURE = "timestamp_in_future"  # sent_at or delivered_at after the extraction time
REASON_BAD_AUTOMATION = "invalid_automation_id"  # empty, control characters, > 200 chars

FUTURE_TOLERANCE_SECONDS = 300
MAX_AUTOMATION_ID_LENGTH = 200

# --- landed rows -----------------------------------------------------------------------

_ts = pa.timestamp("us", tz="UTC")

# One row per push of the partition (its sent_at in the partition's window), de-duplicated
# by id. Invalid rows keep what could be read, their reason and the source row as JSON.
LANDED_PUSH_SCHEMA = pa.schema([
    pa.field("push_id", pa.int64()),
    pa.field("account_id", pa.int64()),
    pa.field("user_id", pa.int64()),
    pa.field("campaign_id", pa.int64()),
    pa.field("automation_id", pa.string()),
    pa.field("status", pa.string()),
    pa.field("sent_at", _ts),
    pa.field("delivered_at", _ts),
    pa.field("anchor_at", _ts),  # delivered_at, else sent_at
    pa.field("invalid_reason", pa.string()),
    pa.field("raw", pa.string()),
])

# The PostHog answers of a partition, one row per (cohort member, window): a treated row
# per delivered push of a mapped user, a comparison row per sampled user of a campaign.
# Counts are of the configured events; active hours are the distinct hours since ``t − W``
# (before) or ``t`` (after) in which the person had at least one such event.
ACTIVITY_SCHEMA = pa.schema([
    pa.field("account_id", pa.int64()),
    pa.field("group_type", pa.string()),  # "campaign" | "automation"
    pa.field("group_id", pa.string()),  # campaign id as text, or the automation id
    pa.field("treated", pa.bool_()),  # False: a comparison user
    pa.field("push_id", pa.int64()),  # null for comparison users
    pa.field("user_id", pa.int64()),
    pa.field("person_id", pa.string()),
    pa.field("anchor_at", _ts),
    pa.field("window_hours", pa.int32()),
    pa.field("before_events", pa.int64()),
    pa.field("after_events", pa.int64()),
    pa.field("before_hours", pa.int64()),
    pa.field("after_hours", pa.int64()),
])

GROUP_TYPES = ("campaign", "automation")
# the activity measures analysed: events counted, and hours with at least one event
ACTIVITY_METRICS = ("events", "active_hours")

# --- warehouse -----------------------------------------------------------------------

# Each app user's PostHog person, with how it was found; re-checked after a while (a
# person can be merged into another, a user can be created in PostHog later).
push_user_mapping = sa.Table(
    "push_user_mapping", metadata,
    sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("person_id", sa.Text),  # null when unmapped
    sa.Column("method", KeyText, nullable=False),  # distinct_id | email | unmapped
    sa.Column("mapped_at", sa.DateTime, nullable=False),  # naive UTC
    sa.CheckConstraint("method IN ('distinct_id', 'email', 'unmapped')",
                       name="ck_push_user_mapping_method"),
    sa.CheckConstraint("(method = 'unmapped') = (person_id IS NULL)",
                       name="ck_push_user_mapping_person"),
)

# Every automation seen (in a push or as a definition file), numbered once (the rollups'
# automation dimension id), with its definition as last read from ANALYTICS_AUTOMATIONS_DIR
# (null when no file defines it: its results are labelled by id).
push_automations = sa.Table(
    "push_automations", metadata,
    sa.Column("automation_num", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              primary_key=True, autoincrement=True),
    sa.Column("automation_id", KeyText, nullable=False, unique=True),
    sa.Column("name", sa.Text),  # null when no file defines it
    sa.Column("definition", sa.Text),  # the file's content as JSON; null without a file
    sa.Column("source_file", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

# The statistics of each campaign and automation per send date (partition), window.
push_impact_daily = sa.Table(
    "push_impact_daily", metadata,
    sa.Column("account_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("group_type", KeyText, primary_key=True),
    sa.Column("group_id", KeyText, primary_key=True),
    sa.Column("window_hours", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("metric", KeyText, primary_key=True),  # events | active_hours
    sa.Column("label", sa.Text, nullable=False),
    # users with a delivered push of the group, and those analysed (mapped to a person):
    # one row per user (their first push of the group), however often they were pushed
    sa.Column("pushed_users", sa.BigInteger, nullable=False),
    sa.Column("users", sa.BigInteger, nullable=False),
    sa.Column("mapped_rate", sa.Float(precision=53)),
    sa.Column("comparison_users", sa.BigInteger, nullable=False),
    sa.Column("mean_before", sa.Float(precision=53)),
    sa.Column("mean_after", sa.Float(precision=53)),
    sa.Column("mean_diff", sa.Float(precision=53)),
    sa.Column("ci_low", sa.Float(precision=53)),
    sa.Column("ci_high", sa.Float(precision=53)),
    sa.Column("lift", sa.Float(precision=53)),
    sa.Column("lift_ci_low", sa.Float(precision=53)),
    sa.Column("lift_ci_high", sa.Float(precision=53)),
    sa.Column("p_value_t", sa.Float(precision=53)),
    sa.Column("p_value_wilcoxon", sa.Float(precision=53)),
    sa.Column("zero_both_share", sa.Float(precision=53)),
    sa.Column("significant", sa.Boolean),
    sa.Column("did", sa.Float(precision=53)),
    sa.Column("did_ci_low", sa.Float(precision=53)),
    sa.Column("did_ci_high", sa.Float(precision=53)),
    sa.Column("p_value_did", sa.Float(precision=53)),
    sa.Column("timezone", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Index("ix_push_impact_daily_date_timezone", "date", "timezone"),
)
