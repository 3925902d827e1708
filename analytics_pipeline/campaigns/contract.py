"""The campaign-dispatch source's contracts, shared by its consumption, progress, rollups
and read path: the application's tables, the broker's exchange and messages, the landed
message schema, the quarantine reasons and the warehouse tables.

A packer splits a campaign's audience into pages of ``CAMPAIGN_PACKER_BATCH_SIZE``
contacts (pages numbered from 1) and publishes one ``campaigns.send`` per page; senders
publish one ``campaigns.tracked`` per page with its outcome. An empty audience publishes a
single ``campaigns.tracked`` with page 0, zero counts and ``completed: true``. Delivery is
at least once: a message (same ``message_id``, else same routing key and body) landed
twice counts once.
"""

from __future__ import annotations

import pyarrow as pa
import sqlalchemy as sa

from analytics_pipeline.core.sources import source_metadata
from analytics_pipeline.core.warehouse import KeyText, metadata

# --- application database -------------------------------------------------------------

src_campaigns = sa.Table(
    "campaigns", source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("channel_type", sa.Text),  # the application's class: Channel::Email, ...
    sa.Column("status", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("scheduled_at", sa.DateTime),
)

src_campaign_contacts = sa.Table(
    "campaign_contacts", source_metadata,
    sa.Column("campaign_id", sa.BigInteger, nullable=False),
    sa.Column("contact_id", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # PENDING | SENT | FAILED
    sa.Column("sent_at", sa.DateTime),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Index("index_campaign_contacts_on_campaign_id_and_contact_id", "campaign_id",
             "contact_id"),
)

CONTACT_STATUSES = ("PENDING", "SENT", "FAILED")

# The application's channel classes, reported under their transport ids; any other
# ``Channel::Xyz`` is reported as ``xyz`` (lower-cased), anything else as ``other``.
CHANNELS = {"Channel::Email": "email", "Channel::Whatsapp": "whatsapp",
            "Channel::Sms": "sms", "Channel::Api": "api"}

# --- broker ------------------------------------------------------------------------------

EXCHANGE = "campaigns"  # topic exchange
SEND_KEY = "campaigns.send"
TRACKED_KEY = "campaigns.tracked"
ROUTING_KEYS = (SEND_KEY, TRACKED_KEY)
DEFAULT_QUEUE = "analytics_pipeline.campaigns"  # the pipeline's own durable queue
DEFAULT_BATCH_SIZE = 1000  # CAMPAIGN_PACKER_BATCH_SIZE

CAMPAIGN_SOURCE = "campaign_messages"  # landing stream and quarantine source

# --- quarantine reasons (a malformed message, acknowledged, never requeued) -------------

REASON_NOT_JSON = "not_json"  # not UTF-8 JSON, or not an object
REASON_UNKNOWN_KEY = "unknown_routing_key"
REASON_MISSING_FIELD = "missing_field"  # a required field absent or null
REASON_BAD_TYPE = "invalid_field_type"  # e.g. campaignId not an integer, contactIds not ints
REASON_NEGATIVE = "negative_count"  # sentCount / failedCount < 0
REASON_BAD_PAGE = "page_out_of_range"  # page < 1 (send), < 0 (tracked), > totalPages

# --- landed messages ----------------------------------------------------------------------

_ts = pa.timestamp("us", tz="UTC")

# One row per delivery landed; ``message_key`` identifies the message across redeliveries
# (``message_id`` when the publisher set one, else ``sha256:`` of routing key and body).
LANDED_MESSAGE_SCHEMA = pa.schema([
    pa.field("message_key", pa.string()),
    pa.field("message_id", pa.string()),
    pa.field("routing_key", pa.string()),
    pa.field("body", pa.binary()),  # as delivered
    pa.field("delivery_tag", pa.int64()),
    pa.field("redelivered", pa.bool_()),
    pa.field("received_at", _ts),  # when the consumer got it
    pa.field("published_at", _ts),  # the AMQP timestamp property, when set
    pa.field("consumer_run", pa.string()),  # the run (or consumer) that landed it
])

# --- warehouse -----------------------------------------------------------------------

# Per campaign, as of the last progress refresh.
campaign_progress = sa.Table(
    "campaign_progress", metadata,
    sa.Column("campaign_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("channel", KeyText, nullable=False),
    sa.Column("audience", sa.BigInteger, nullable=False),
    sa.Column("pages_expected", sa.BigInteger, nullable=False),
    sa.Column("pages_published", sa.BigInteger, nullable=False),
    sa.Column("pages_tracked", sa.BigInteger, nullable=False),
    sa.Column("duplicate_pages", sa.BigInteger, nullable=False),  # pages published twice+
    sa.Column("duplicate_reports", sa.BigInteger, nullable=False),  # pages tracked twice+
    sa.Column("sent", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("contacts_pending", sa.BigInteger, nullable=False),
    sa.Column("contacts_sent", sa.BigInteger, nullable=False),
    sa.Column("contacts_failed", sa.BigInteger, nullable=False),
    sa.Column("status_disagreement", sa.BigInteger, nullable=False),  # |tracked − statuses|
    sa.Column("completed", sa.Boolean, nullable=False),
    sa.Column("progress", sa.Float(precision=53), nullable=False),  # 0..1
    sa.Column("first_published_at", sa.DateTime),
    sa.Column("last_reported_at", sa.DateTime),
    sa.Column("send_rate_per_minute", sa.Float(precision=53)),
    sa.Column("stuck", sa.Boolean, nullable=False),
    sa.Column("stuck_pages", sa.BigInteger, nullable=False),
    sa.Column("double_sends", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Index("ix_campaign_progress_account", "account_id"),
)

# The contacts that may have received a campaign twice, with the signal that found them.
campaign_double_sends = sa.Table(
    "campaign_double_sends", metadata,
    sa.Column("campaign_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("contact_id", sa.BigInteger, primary_key=True, autoincrement=False),
    # two_pages | page_published_twice | attempts_sent
    sa.Column("signal", KeyText, primary_key=True),
    sa.Column("detail", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

# The parsed message files (``date=…/<file>`` under the parsed stream) a progress refresh
# has taken in: the next refresh recomputes the campaigns of the files not listed here and
# the campaigns still open, and leaves completed ones alone. Written in the transaction
# that writes their progress; rows older than the refresh window are dropped.
campaign_progress_files = sa.Table(
    "campaign_progress_files", metadata,
    sa.Column("path", KeyText, primary_key=True),
    sa.Column("day", sa.Date, nullable=False),  # the folder's UTC date
    sa.Column("refreshed_at", sa.DateTime, nullable=False),
)
