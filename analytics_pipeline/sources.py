"""Sources: normalized events for a local day and a set of accounts, as Arrow.

The application database is read with SQLAlchemy Core for the query and an Arrow-native
ADBC driver for the rows of PostgreSQL (binary COPY straight into Arrow batches), so no
Python object is built per row; SQLite (the embedded default) and other dialects use a
streamed, column-wise fetch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

import pyarrow as pa
import sqlalchemy as sa

from analytics_pipeline.partitions import LocalDay
from analytics_pipeline.rollups import RAW_REPORTING_SCHEMA, conform
from analytics_pipeline.warehouse import make_engine, normalize_url, redact, scrub

# The source contract (DESIGN.md): tables as the support-desk app keeps them.
source_metadata = sa.MetaData()
src_accounts = sa.Table(
    "accounts",
    source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
    sa.Column("reporting_timezone", sa.Text),
)
src_reporting_events = sa.Table(
    "reporting_events",
    source_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("value", sa.Float(precision=53)),
    sa.Column("value_in_business_hours", sa.Float(precision=53)),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("inbox_id", sa.BigInteger),
    sa.Column("conversation_id", sa.BigInteger),
    sa.Column("event_start_time", sa.DateTime),
    sa.Column("event_end_time", sa.DateTime),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime),
    sa.Index("index_reporting_events_on_account_id_and_created_at", "account_id", "created_at"),
)


class EventSource(Protocol):
    """What every source offers the raw extraction assets."""

    name: str

    def extract(
        self, day: LocalDay, account_ids: Sequence[int], include_orphans: bool = False
    ) -> pa.Table: ...

    def extract_batches(
        self, day: LocalDay, account_ids: Sequence[int], include_orphans: bool = False
    ) -> Iterator[pa.RecordBatch]: ...


def _ts_literal(instant: datetime) -> str:
    """A naive-UTC timestamp literal that sorts like the normalized SQLite text."""
    return instant.strftime("%Y-%m-%d %H:%M:%S.000")


@dataclass
class ReportingEventsSource:
    """``reporting_events`` of the application database (DESIGN.md source contract).

    ``fallback_date`` dates events whose ``created_at`` and ``updated_at`` are both
    unusable, so every such event lands in exactly one partition (where it is
    quarantined) instead of in none or in all of them.
    """

    url: str
    fallback_date: date
    name: str = "reporting_events"

    def _query(
        self, dialect: str, day: LocalDay, account_ids: Sequence[int], include_orphans: bool
    ) -> sa.Select:
        e = src_reporting_events.c
        start, end = _ts_literal(day.start_utc), _ts_literal(day.end_utc)
        fallback = f"{self.fallback_date.isoformat()} 00:00:00.000"
        if dialect == "sqlite":
            # SQLite keeps timestamps as text in several spellings; strftime normalizes
            # them (and yields NULL for text that is not a timestamp).
            def norm(col):
                return sa.func.strftime("%Y-%m-%d %H:%M:%f", col)

            created, updated = norm(e.created_at), norm(e.updated_at)
            raw_created = sa.case(
                (created.is_(None), sa.cast(e.created_at, sa.Text)), else_=sa.null()
            )
            numeric = {
                c: sa.cast(getattr(e, c), sa.Float) if c.startswith("value")
                else sa.cast(getattr(e, c), sa.BigInteger)
                for c in ("value", "value_in_business_hours", "account_id", "user_id",
                          "inbox_id", "conversation_id")
            }
            created_out = created
        else:
            created, updated = e.created_at, e.updated_at
            raw_created = sa.null()
            numeric = {c: getattr(e, c) for c in ("value", "value_in_business_hours",
                                                   "account_id", "user_id", "inbox_id",
                                                   "conversation_id")}
            created_out = e.created_at
        lo, hi, fb = (sa.literal_column(f"'{v}'") for v in (start, end, fallback))
        undated_at = sa.func.coalesce(updated, fb)
        in_window = sa.or_(
            sa.and_(created >= lo, created < hi),
            sa.and_(created.is_(None), undated_at >= lo, undated_at < hi),
        )
        ids = [int(a) for a in account_ids]
        who = e.account_id.in_(ids) if ids else sa.false()
        if include_orphans:
            known = sa.exists().where(src_accounts.c.id == e.account_id)
            who = sa.or_(who, ~known)
        return sa.select(
            e.id,
            e.name,
            numeric["value"].label("value"),
            numeric["value_in_business_hours"].label("value_in_business_hours"),
            numeric["account_id"].label("account_id"),
            numeric["user_id"].label("user_id"),
            numeric["inbox_id"].label("inbox_id"),
            numeric["conversation_id"].label("conversation_id"),
            created_out.label("created_at"),
            raw_created.label("created_at_raw"),
        ).where(who, in_window)

    def extract(
        self, day: LocalDay, account_ids: Sequence[int], include_orphans: bool = False
    ) -> pa.Table:
        """Events of ``account_ids`` over the UTC window of ``day`` (RAW_REPORTING_SCHEMA).

        ``include_orphans`` also returns events whose account is missing from the
        source's ``accounts`` (the default-timezone partition sweeps them to quarantine).
        """
        batches = list(self.extract_batches(day, account_ids, include_orphans))
        return pa.Table.from_batches(batches, schema=RAW_REPORTING_SCHEMA)

    def extract_batches(
        self, day: LocalDay, account_ids: Sequence[int], include_orphans: bool = False
    ) -> Iterator[pa.RecordBatch]:
        """The same rows as ``extract``, streamed in record batches (bounded memory)."""
        url = normalize_url(self.url)
        query = self._query(url.get_backend_name(), day, account_ids, include_orphans)
        with arrow_batches(url, query) as reader:
            for batch in reader:
                if batch.num_rows:
                    yield from conform(pa.Table.from_batches([batch])).to_batches()

    def read_accounts(self) -> list[dict]:
        engine = make_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(src_accounts).order_by(src_accounts.c.id))
                return [dict(r._mapping) for r in rows]
        finally:
            engine.dispose()


def _compile(url: sa.URL, query: sa.Select) -> str:
    # Only integers and timestamps we format ourselves are inlined, never user text.
    dialect = url.get_dialect()()
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


@contextmanager
def arrow_batches(url: str | sa.URL, query: sa.Select) -> Iterator[Iterator[pa.RecordBatch]]:
    """Stream ``query``'s rows as Arrow record batches, natively where possible."""
    url = normalize_url(url)
    backend = url.get_backend_name()
    sql = _compile(url, query)
    if backend == "postgresql":
        import adbc_driver_postgresql.dbapi as adbc_pg

        libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            conn = adbc_pg.connect(libpq)
        except Exception as exc:
            raise ConnectionError(
                f"cannot connect to the source database {redact(url)}: "
                f"{scrub(str(exc), url)}"
            ) from None
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            yield iter(cur.fetch_record_batch())
    else:
        # SQLite (and any other dialect): typed per value, not per column, so ADBC's
        # per-batch type inference could fail mid-stream; fetch column-wise instead.
        engine = make_engine(url)
        try:
            yield _sqlalchemy_batches(engine, query)
        finally:
            engine.dispose()


def _sqlalchemy_batches(
    engine: sa.Engine, query: sa.Select, batch: int = 100_000
) -> Iterator[pa.RecordBatch]:
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(query)
        names = list(result.keys())
        while rows := result.fetchmany(batch):
            columns = zip(*rows, strict=True)
            yield pa.RecordBatch.from_pydict(
                {n: pa.array(c) for n, c in zip(names, columns, strict=True)}
            )


# --- email: the application's emails and recipients ------------------------------------------

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
            engine = make_engine(url)
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
