"""Email state test helpers: a small world of recipients and landed events, snapshots of
the state tables, and the agreement check against a full recompute."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pyarrow as pa
import sqlalchemy as sa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline.email import state as es
from analytics_pipeline.email import tables as et
from analytics_pipeline.email.compute import (
    automation_stats,
    email_stats,
    match_recipients,
    member_stats,
    recipient_facts,
    recipient_states,
)
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA
from analytics_pipeline.email.source import EmailSource, src_email_recipients, src_emails
from analytics_pipeline_tests.mailgun_fixtures import T0

EVENTS = ["delivered", "opened", "clicked", "failed", "failed", "unsubscribed", "complained",
          "accepted"]


SEVERITIES = ["permanent", "temporary", "temporary", None, "unknown"]


class World:
    """A source app database, a landed log and a warehouse, driven by one seed."""

    def __init__(self, tmp_path, warehouse_url: str, seed: int, kind: str = "automation"):
        self.rng = random.Random(seed)
        self.kind = kind
        self.source_url = f"sqlite:///{tmp_path / 'source.db'}"
        write_source(self.source_url, [{"id": 1, "name": "Acme", "reporting_timezone": None}],
                     [])
        self.engine = wh.make_engine(warehouse_url)
        wh.ensure_schema(self.engine)
        self.log = ProviderEventLog(str(tmp_path / "landing"), f"mailgun/{kind}")
        self.emails = EmailSource(self.source_url)
        rng = self.rng
        self.email_rows = [{"id": e, "account_id": 1, "kind": kind,
                            "automation_id": rng.choice([None, 1, 2]),
                            "subject": "s", "track_opens": rng.choice([True, True, False])}
                           for e in range(1, 7)]
        self.email_rows.append({"id": 99, "account_id": 1, "kind": "other-kind",
                                "automation_id": None, "subject": "s", "track_opens": True})
        self.recipients: list[dict] = []
        self.future: list[dict] = []  # recipients whose events may land before their row
        for _ in range(40):
            self.future.append(self._recipient())
        self.inserted = 0
        self.held: list[dict] = []
        src = wh.make_engine(self.source_url)
        with src.begin() as c:
            c.execute(src_emails.insert(), self.email_rows)
        src.dispose()
        self.add_recipients(25)
        self.landed: list[dict] = []
        self.fetch = 0
        self.next_event = 0

    def _recipient(self) -> dict:
        rng = self.rng
        email = rng.randint(1, 6)
        rid = len(self.future) + 1 if not hasattr(self, "_rid") else self._rid + 1
        self._rid = rid
        mid = f"<b{email}@mg>" if rng.random() < 0.8 else f" <r{rid}@mg> "
        return {"id": rid, "account_id": 1, "email_id": email,
                "member_id": rng.choice([None, *range(1, 9)]),
                "member_email": f"M{rng.randint(1, 12)}@Example.com ",
                "provider_message_id": mid}

    def add_recipients(self, n: int) -> None:
        rows = self.future[self.inserted:self.inserted + n]
        self.inserted += len(rows)
        # a row committed late: one of this batch's rows is held back to the next batch,
        # so it arrives below ids already mirrored
        rows, held = self.held + rows, []
        if len(rows) > 1 and self.rng.random() < 0.5:
            held = [min(rows, key=lambda r: r["id"])]
            rows = [r for r in rows if r is not held[0]]
        self.held = held
        if self.inserted > len(self.future) - 10:
            self.future += [self._recipient() for _ in range(20)]
        # ids are not committed in order: shuffle so a later insert has a lower id
        self.rng.shuffle(rows)
        src = wh.make_engine(self.source_url)
        with src.begin() as c:
            for r in rows:
                c.execute(src_email_recipients.insert(), [r])
        src.dispose()
        self.recipients += rows

    def _event(self) -> dict:
        rng = self.rng
        r = rng.choice(self.future[:self.inserted + 8])  # some events precede their row
        address = r["member_email"].strip().lower()
        mid = r["provider_message_id"].strip().strip("<>")
        if rng.random() < 0.08:
            address = f"stranger{rng.randint(1, 3)}@example.com"
        ev = rng.choice(EVENTS)
        self.next_event += 1
        return {
            "event_id": f"ev{self.next_event:05d}", "event": ev,
            # coarse times: many ties between events of one recipient
            "timestamp": datetime.fromtimestamp(T0 + rng.randint(0, 96) * 3600, timezone.utc),
            "recipient": address, "message_id": mid,
            "severity": rng.choice(SEVERITIES) if ev == "failed" else None,
            "tags": [self.kind],
            "delivery_status_code": rng.choice(["550", "421", None]),
            "delivery_status_message": rng.choice(["gone", "later", "full", None]),
            "raw": "{}",
        }

    def land(self, new: int, copies: int) -> None:
        """Land ``new`` events plus ``copies`` re-deliveries of landed ones (a re-fetch),
        shuffled, split over a few appends (late events go to old date folders)."""
        self.fetch += 1
        fetched = datetime.fromtimestamp(T0 + 200 * 3600 + self.fetch, timezone.utc)
        rows = [self._event() for _ in range(new)]
        rows += [dict(self.rng.choice(self.landed)) for _ in range(min(copies,
                                                                      len(self.landed)))]
        self.landed += rows[:new]
        self.rng.shuffle(rows)
        fetch_id = f"f{self.fetch}"
        for part in range(self.rng.randint(1, 3)):
            chunk = rows[part::3] if part < 2 else rows[2::3]
            if chunk:
                table = pa.Table.from_pylist([{**r, "fetched_at": fetched} for r in chunk],
                                             schema=PROVIDER_EVENT_SCHEMA)
                self.log.append(table, f"{fetch_id}-{part}")
        if self.rng.random() < 0.5:  # the fetch step registers; otherwise discovery finds them
            es.register_log_files(self.engine, self.kind, self.log, fetch_id)

    def refresh(self) -> es.EmailStateResult:
        return es.refresh_email_state(self.log, self.emails, self.engine, self.kind)

    def rebuild(self, chunk_rows: int = 7) -> es.EmailStateResult:
        return es.rebuild_email_state(self.log, self.emails, self.engine, self.kind,
                                      chunk_rows=chunk_rows)


PUBLISHED = [et.email_recipient_states, et.email_stats, et.automation_email_stats,
             et.member_email_stats]


BOOKKEEPING = [es.email_state_recipients, es.email_state_failures, es.email_state_totals,
               es.email_state_temporary_failures, es.email_state_unmatched]


def _value(v):
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
    return v


def snapshot(engine, kind: str, tables=PUBLISHED + BOOKKEEPING) -> dict:
    """Every row of the kind (updated_at aside), normalized and in key order."""
    out = {}
    with engine.connect() as c:
        for t in tables:
            cols = [col for col in t.c if col.name not in ("updated_at", "kind")]
            keys = [col for col in t.primary_key.columns if col.name != "kind"]
            rows = c.execute(sa.select(*cols).where(t.c.kind == kind).order_by(*keys)).all()
            out[t.name] = [{k: _value(v) for k, v in r._mapping.items()} for r in rows]
    return out


def reference(world: World) -> dict:
    """The recompute of ``email.py`` over the de-duplicated log, as published rows."""
    log = world.log
    events = log.read(log.days(), PROVIDER_EVENT_SCHEMA)
    recipients = world.emails.recipients(world.kind)
    m = match_recipients(events, recipients)
    states = recipient_states(m.events)
    facts = recipient_facts(recipients, states)
    info = recipients.select(["recipient_id", "account_id", "email_id", "member_id"])
    tables = {"email_recipient_states": states.join(info, "recipient_id",
                                                    join_type="left outer"),
              "email_stats": email_stats(facts), "member_email_stats": member_stats(facts),
              "automation_email_stats": automation_stats(facts)}
    out = {}
    for t in PUBLISHED:
        keys = [c.name for c in t.primary_key.columns if c.name != "kind"]
        names = [c.name for c in t.c if c.name not in ("updated_at", "kind")]
        rows = tables[t.name].sort_by([(k, "ascending") for k in keys]).select(names)
        out[t.name] = [{k: _value(v) for k, v in r.items()} for r in rows.to_pylist()]
    return out


def without_failure_text(snap: dict) -> dict:
    """email.py breaks ties between permanent failures of one instant by read order, this
    module by event id: compare everything but the failure's code and message."""
    return {name: [{k: v for k, v in r.items() if k not in ("failure_code", "failure_message")}
                   for r in rows] for name, rows in snap.items()}


def published(snap: dict, kind: str) -> dict:
    names = [t.name for t in PUBLISHED if kind == "automation" or
             t is not et.automation_email_stats]
    return {n: snap[n] for n in names}


def assert_agrees_with_full_recompute(w: World) -> None:
    """The incremental state equals a full rebuild of the same log, row for row (published
    tables and bookkeeping), and the published rows equal email.py's recompute."""
    incremental = snapshot(w.engine, w.kind)
    result = w.rebuild()
    assert result.mode == "full"
    full = snapshot(w.engine, w.kind)
    for name in full:
        assert incremental[name] == full[name], name
    assert without_failure_text(published(full, w.kind)) == \
        without_failure_text(published(reference(w), w.kind))
