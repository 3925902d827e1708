"""The application's emails and recipients (the email source contract), read as Arrow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import sqlalchemy as sa

from analytics_pipeline.core.rollups import conform
from analytics_pipeline.core.sources import (
    _sqlalchemy_batches,
    arrow_batches,
    source_engine,
    source_metadata,
)
from analytics_pipeline.core.warehouse import normalize_url

src_emails = sa.Table(
    "emails",
    source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # 'newsletter' | 'automation'
    sa.Column("automation_id", sa.BigInteger),
    sa.Column("subject", sa.Text),
    sa.Column("track_opens", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", sa.DateTime),
)


src_email_recipients = sa.Table(
    "email_recipients",
    source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("email_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger),
    sa.Column("member_email", sa.Text, nullable=False),
    sa.Column("provider_message_id", sa.Text),
    sa.Column("sent_at", sa.DateTime),
    sa.Index("index_email_recipients_on_provider_message_id", "provider_message_id"),
)


RECIPIENT_SCHEMA = pa.schema([
    ("recipient_id", pa.int64()),
    ("account_id", pa.int64()),
    ("email_id", pa.int64()),
    ("member_id", pa.int64()),
    ("member_email", pa.string()),
    ("message_id", pa.string()),
    ("automation_id", pa.int64()),
    ("track_opens", pa.bool_()),
])


@dataclass
class EmailSource:
    """Emails and recipients of one kind ('newsletter' | 'automation')."""

    url: str

    def recipients(self, kind: str, message_ids: Sequence[str] | None = None) -> pa.Table:
        """Recipients of the kind's emails (only those sent in ``message_ids`` if given),
        with the email's automation and tracking."""
        if message_ids is not None:
            # the app may store what the send API returned, ``<id>``: match both spellings
            ids = sorted({v for m in message_ids if m for v in (m, f"<{m}>")})
            parts = [self._recipients(kind, ids[i:i + 2000]) for i in range(0, len(ids), 2000)]
            return pa.concat_tables(parts) if parts else RECIPIENT_SCHEMA.empty_table()
        return self._recipients(kind, None)

    def _recipients(self, kind: str, message_ids: list[str] | None) -> pa.Table:
        r, e = src_email_recipients.c, src_emails.c
        url = normalize_url(self.url)
        track = e.track_opens if url.get_backend_name() != "sqlite" else sa.cast(
            e.track_opens, sa.Boolean)
        query = (
            sa.select(
                r.id.label("recipient_id"), r.account_id, r.email_id, r.member_id,
                r.member_email, r.provider_message_id.label("message_id"),
                e.automation_id, track.label("track_opens"),
            )
            .select_from(src_email_recipients.join(src_emails, e.id == r.email_id))
            .where(e.kind == sa.literal_column(f"'{_kind(kind)}'"))
        )
        if message_ids is not None:
            # bound, not inlined: message ids come from the provider
            query = query.where(r.provider_message_id.in_(
                sa.bindparam("ids", message_ids, expanding=True)))
        if message_ids is None:
            with arrow_batches(url, query) as reader:
                batches = [conform(pa.Table.from_batches([b]), RECIPIENT_SCHEMA)
                           for b in reader if b.num_rows]
        else:  # provider-supplied values: executed with bound parameters, never inlined
            engine = source_engine(url)
            try:
                batches = [conform(pa.Table.from_batches([b]), RECIPIENT_SCHEMA)
                           for b in _sqlalchemy_batches(engine, query) if b.num_rows]
            finally:
                engine.dispose()
        if not batches:
            return RECIPIENT_SCHEMA.empty_table()
        return pa.concat_tables(batches)


def _kind(kind: str) -> str:
    if kind not in ("newsletter", "automation"):
        raise ValueError(f"unknown email kind {kind!r}")
    return kind
