"""Warehouse tables that only the email pipelines write: recipient states and statistics."""

from __future__ import annotations

import sqlalchemy as sa

from analytics_pipeline.core.warehouse import metadata

_ts = sa.DateTime(timezone=True)


def _email_table(name: str, key: str, columns: list[sa.Column]) -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("kind", sa.Text, primary_key=True),  # 'newsletter' | 'automation'
        sa.Column(key, sa.BigInteger, primary_key=True, autoincrement=False),
        *columns,
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


_counts = ["sent_count", "delivered_count", "opened_count", "clicked_count", "failed_count",
           "unsubscribed_count", "complained_count"]


email_recipient_states = _email_table("email_recipient_states", "recipient_id", [
    sa.Column("account_id", sa.BigInteger), sa.Column("email_id", sa.BigInteger),
    sa.Column("member_id", sa.BigInteger),
    *[sa.Column(c, _ts) for c in ("delivered_at", "opened_at", "clicked_at",
                                  "unsubscribed_at", "complained_at", "failed_at")],
    sa.Column("failure_code", sa.Text), sa.Column("failure_message", sa.Text),
    sa.Column("temporary_failures", sa.BigInteger, nullable=False),
    sa.Column("last_temporary_failure_at", _ts),
])


email_stats = _email_table("email_stats", "email_id", [
    *[sa.Column(c, sa.BigInteger, nullable=False) for c in _counts],
    sa.Column("open_rate", sa.Float(precision=53)),
])


automation_email_stats = _email_table("automation_email_stats", "automation_id", [
    *[sa.Column(c, sa.BigInteger, nullable=False) for c in _counts],
    sa.Column("open_rate", sa.Float(precision=53)),
])


member_email_stats = _email_table("member_email_stats", "member_id", [
    sa.Column("email_count", sa.BigInteger, nullable=False),
    sa.Column("email_opened_count", sa.BigInteger, nullable=False),
    sa.Column("email_open_rate", sa.Float(precision=53)),
])
