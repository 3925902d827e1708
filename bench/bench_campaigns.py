"""Benchmark of the campaign-dispatch source: N campaigns and C ``campaign_contacts`` rows in
a fresh PostgreSQL application database, K broker messages on a RabbitMQ exchange and queue
of the run's own (deleted afterwards), measured three ways in one run.

(a) consumption: ``consume_messages`` until every message is consumed (each drain's
    batches landed durably, fsynced, then acknowledged; the drain's messages then parsed
    once and landed parsed, malformed ones quarantined), in a child process: messages per
    second end to end and for the drain alone, peak RSS;
(b) the first progress refresh (``refresh_progress`` as the asset runs it: every campaign
    with a message in the window is new to it), in a child process: wall time, each
    step's time, peak RSS;
(b2) the steady state: ``--again`` tracked reports delivered again (same message ids:
    nothing changes), consumed, then a refresh a minute later, which recomputes the
    campaigns with new messages and those still open (in flight, stuck, with a double
    send);
(c) the reference: the contact counts the progress needs recomputed as the reference Rails
    app does, campaigns read 1,000 at a time (``find_each``) and one prepared
    ``SELECT count(*), status FROM campaign_contacts WHERE campaign_id = $1 GROUP BY
    status`` per campaign (``campaign.campaign_contacts.group(:status).count``). Only these
    queries are timed: the reference's own message processing and writes are left out, in
    its favour. On every campaign, by id, unless that takes more than
    ``--reference-budget`` seconds: then on the campaigns done by then, extrapolated by
    count (audiences are drawn independently of ids); (c') and (c'') the same restricted
    to the campaigns (b) and (b2) recompute.

The data. Audiences are log-normal (a few campaigns of 100k+ contacts, the median under a
page, 1% empty), over a few accounts (Zipf), channel classes mixed (email, WhatsApp, SMS,
API, an unlisted ``Channel::Telegram`` and a few nulls). Contacts are stored campaign by
campaign (as the application inserts an audience) and loaded with ADBC; the contract's index
is built afterwards. The messages are the complete broker history of the campaigns
dispatched within the window the refresh reads, campaigns drawn at random until the
messages are spent; the others were dispatched before it, their progress comes from the
application database alone, and their contacts are 97.5% SENT, 2% FAILED, 0.5% PENDING.
Of the dispatched campaigns 75% are complete (every page sent by the packer and tracked by
the senders, an empty audience its page-0 report), 20% in flight (published in the last
three minutes, a prefix of their pages tracked, the contacts of the other pages PENDING)
and 5% stuck (published 30 to 60 minutes ago, pages without a report). Faults, from 2% of
the messages: packs published again whole with the same message ids (counted once) and
with new ones (duplicate pages), tracked reports published twice (the same id; a new id:
duplicate reports), five contacts put on two pages by the packer, one malformed message of
each kind the dev publisher knows (quarantined). Contacts SENT after more than one attempt:
0.05% of the SENT ones. The figures the refresh writes are checked against the plan.

Usage:
    python bench/bench_campaigns.py [--campaigns 10000 --contacts 20000000 --messages 25000]
        [--again 1000]
Needs PostgreSQL (ANALYTICS_BENCH_PG_URL, default postgres@127.0.0.1:5432) and RabbitMQ
(ANALYTICS_BENCH_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2F).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pika
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from bench_common import child, create_db, drop_db, peak_rss_mb, reset_peak_rss, rss_mb

from analytics_pipeline.campaigns.broker import connect, declare, pending_messages
from analytics_pipeline.campaigns.contract import (
    CAMPAIGN_SOURCE,
    DEFAULT_BATCH_SIZE,
    SEND_KEY,
    TRACKED_KEY,
    src_campaign_contacts,
    src_campaigns,
)
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.partitions import resolve_account_timezones
from analytics_pipeline.dev.campaign_publisher import MALFORMED, _dump, _send, _tracked

AMQP = os.environ.get("ANALYTICS_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BATCH = DEFAULT_BATCH_SIZE
CHUNK = 2_000_000  # contacts generated and ingested at a time
STREAM = f"rabbitmq/{CAMPAIGN_SOURCE}"

CHANNEL_CLASSES = ["Channel::Email", "Channel::Whatsapp", "Channel::Sms", "Channel::Api",
                   "Channel::Telegram", None]
CHANNEL_P = [0.5, 0.25, 0.15, 0.07, 0.02, 0.01]
STATUSES = ["PENDING", "SENT", "FAILED"]
PENDING, SENT, FAILED = 0, 1, 2
ERRORS = ["invalid number", "recipient unsubscribed", "provider timeout",
          "template rejected", "rate limited"]
INACTIVE, COMPLETE, IN_FLIGHT, STUCK = 0, 1, 2, 3
DOUBLE_SEND_CAMPAIGNS = 5


# --- the plan: campaigns, audiences, dispatch states, faults --------------------------------


class Plan:
    """The campaigns and what happened to them, and what the refresh must then find."""

    def __init__(self, campaigns: int, contacts: int, messages: int, accounts: int,
                 seed: int):
        rng = np.random.default_rng(seed)
        n = self.n = campaigns
        self.contacts, self.messages = contacts, messages
        self.ids = np.arange(1, n + 1, dtype=np.int64)
        w = rng.lognormal(0.0, 1.5, n)
        w[rng.random(n) < 0.01] = 0.0  # empty audiences
        audience = np.floor(w / w.sum() * contacts).astype(np.int64)
        audience[np.argsort(-w)[:contacts - int(audience.sum())]] += 1
        self.audience = audience
        self.pages = -(-audience // BATCH)
        zipf = 1.0 / np.arange(1, accounts + 1)
        self.account = rng.choice(accounts, n, p=zipf / zipf.sum()).astype(np.int64) + 1
        self.channel = rng.choice(len(CHANNEL_CLASSES), n, p=CHANNEL_P)
        # each account's contacts are numbered from account * 10^8; an audience is a run
        self.contact_start = self.account * 10**8 + rng.integers(0, 5 * 10**7, n)
        self.created_days_ago = rng.integers(0, 365, n)

        # dispatch states, drawn until the messages (less a reserve for faults) are spent
        draw = rng.random(n)
        want = np.where(draw < 0.75, COMPLETE, np.where(draw < 0.95, IN_FLIGHT, STUCK))
        want[self.pages == 0] = COMPLETE
        tracked = np.where(want == COMPLETE, self.pages,
                           rng.integers(0, np.maximum(self.pages, 1)))
        cost = np.where(self.pages == 0, 1, self.pages + tracked)
        self.reserve = max(messages // 50, 10)
        budget = messages - len(MALFORMED) - self.reserve
        self.state = np.full(n, INACTIVE, np.int64)
        used = 0
        for c in rng.permutation(n):
            if used + cost[c] <= budget:
                self.state[c] = want[c]
                used += int(cost[c])
        active = self.state != INACTIVE
        self.tracked = np.where(active, tracked, 0)  # pages tracked (page 0 not counted)
        self.page_base = np.where(active, np.cumsum(np.where(active, self.pages, 0))
                                  - np.where(active, self.pages, 0), -1)
        self.active_pages = int(self.pages[active].sum())
        self.page_sent = np.zeros(self.active_pages, np.int64)  # filled by the contacts
        self.page_failed = np.zeros(self.active_pages, np.int64)

        # faults, within the reserve and what the campaigns left of the budget
        spare = messages - len(MALFORMED) - used
        small = np.flatnonzero(active & (self.pages >= 1) & (self.pages <= 3))
        small = small[rng.permutation(len(small))]
        self.repacked_same, self.repacked_new = [], []
        for c in small:
            if len(self.repacked_same) < max(1, int(active.sum()) // 100) \
                    and self.pages[c] <= spare // 3:
                self.repacked_same.append(int(c))
                spare -= int(self.pages[c])
            elif len(self.repacked_new) < max(1, int(active.sum()) // 200) \
                    and self.pages[c] <= spare // 2:
                self.repacked_new.append(int(c))
                spare -= int(self.pages[c])
        repacked = set(self.repacked_same) | set(self.repacked_new)
        doubles = [int(c) for c in np.flatnonzero((self.state == COMPLETE) & (self.pages >= 2))
                   if int(c) not in repacked]
        self.double_send = doubles[:DOUBLE_SEND_CAMPAIGNS]  # contact 0 also on page 2
        self.double_send_status = {}
        # tracked pages reported twice: (campaign, page, new message id)
        pages = [(int(c), p) for c in np.flatnonzero(active & (self.tracked > 0))
                 if int(c) not in repacked for p in range(1, int(self.tracked[c]) + 1)]
        pick = rng.choice(len(pages), spare, replace=spare > len(pages)) if pages else []
        self.reported_twice = [(*pages[i], bool(k % 2)) for k, i in enumerate(pick)]
        self.risky = 0  # contacts SENT after more than one attempt (counted while made)
        self.risky_active = 0  # ... of the campaigns dispatched in the window
        self.settled_before = 0  # SENT or FAILED contacts of the campaigns not dispatched now

    def count(self, state: int) -> int:
        return int((self.state == state).sum())

    def expected(self) -> dict[str, int]:
        """What the warehouse must hold after the refresh: a row per campaign dispatched in
        the window (the others have no message there, and no row)."""
        active = self.state != INACTIVE
        dup_reported = {(c, p) for c, p, new in self.reported_twice if new}
        two_sent = sum(1 for c in self.double_send
                       if self.double_send_status[c] == SENT)
        return {
            "campaigns": int(active.sum()),
            "audience": int(self.audience[active].sum()),
            "completed": self.count(COMPLETE) - len(self.double_send),
            "stuck": self.count(STUCK),
            "pages_published": int(self.pages[active].sum()),
            "pages_tracked": int(self.tracked.sum()
                                 + ((self.pages == 0) & active).sum()),
            "duplicate_pages": int(sum(self.pages[c] for c in self.repacked_new)),
            "duplicate_reports": len(dup_reported),
            "sent": int(self.page_sent[self._tracked_pages()].sum()) + two_sent,
            "status_disagreement": len(self.double_send),
            "two_pages": len(self.double_send),
            "page_published_twice": 0,
            "attempts_sent": self.risky_active,
        }

    def _tracked_pages(self) -> np.ndarray:
        out = [np.arange(self.page_base[c], self.page_base[c] + self.tracked[c])
               for c in np.flatnonzero(self.tracked > 0)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def campaign_table(plan: Plan, now: datetime) -> pa.Table:
    base = np.datetime64(now.replace(tzinfo=None), "us")
    created = base - (plan.created_days_ago * 86_400_000_000).astype("timedelta64[us]")
    status = np.where((plan.state == IN_FLIGHT) | (plan.state == STUCK), "running",
                      "completed")
    return pa.table({
        "id": pa.array(plan.ids),
        "account_id": pa.array(plan.account),
        "name": pc.binary_join_element_wise("Campaign ", pc.cast(pa.array(plan.ids),
                                                                 pa.string()), ""),
        "channel_type": pa.array(CHANNEL_CLASSES, pa.string()).take(pa.array(plan.channel)),
        "status": pa.array(status, pa.string()),
        "created_at": pa.array(created, pa.timestamp("us")),
        "scheduled_at": pa.nulls(plan.n, pa.timestamp("us")),
    })


def contacts_chunk(plan: Plan, cs: np.ndarray, now: datetime, rng) -> pa.Table:
    """The ``campaign_contacts`` rows of campaigns ``cs`` (consecutive), and the sent and
    failed counts of their dispatched pages into the plan."""
    a = plan.audience[cs]
    n = int(a.sum())
    which = np.repeat(cs, a)
    first = np.cumsum(a) - a
    pos = np.arange(n, dtype=np.int64) - np.repeat(first, a)
    page = pos // BATCH + 1
    state = plan.state[which]
    r = rng.random(n)
    status = np.where(r < 0.975, SENT, FAILED)
    status[(state == INACTIVE) & (r >= 0.995)] = PENDING
    status[(state != INACTIVE) & (page > plan.tracked[which])] = PENDING
    attempts = np.select([status == PENDING, status == FAILED], [0, 3], 1).astype(np.int32)
    risky = (status == SENT) & (rng.random(n) < 0.0005)
    attempts[risky] = 2 + (rng.random(int(risky.sum())) < 0.3)
    plan.risky += int(risky.sum())
    active = state != INACTIVE
    plan.risky_active += int((risky & active).sum())
    plan.settled_before += int(((~active) & (status != PENDING)).sum())
    g = plan.page_base[which[active]] + page[active] - 1
    plan.page_sent += np.bincount(g, weights=status[active] == SENT,
                                  minlength=plan.active_pages).astype(np.int64)
    plan.page_failed += np.bincount(g, weights=status[active] == FAILED,
                                    minlength=plan.active_pages).astype(np.int64)
    for c in plan.double_send:
        at = np.searchsorted(cs, c)
        if at < len(cs) and cs[at] == c:
            plan.double_send_status[c] = int(status[first[at]])
    base = np.datetime64(now.replace(tzinfo=None), "us")
    created = base - (plan.created_days_ago[which] * 86_400_000_000).astype("timedelta64[us]")
    sent_at = created + (pos * 20_000).astype("timedelta64[us]")
    errors = pa.array(ERRORS).take(pa.array(rng.integers(0, len(ERRORS), n)))
    failed = pa.array(status == FAILED)
    return pa.table({
        "campaign_id": pa.array(plan.ids[which]),
        "contact_id": pa.array(plan.contact_start[which] + pos),
        "status": pa.array(STATUSES).take(pa.array(status)),
        "sent_at": pa.array(sent_at, pa.timestamp("us"), mask=status != SENT),
        "attempts": pa.array(attempts),
        "error": pc.if_else(failed, errors, pa.nulls(n, pa.string())),
    })


def load_source(url: str, plan: Plan, now: datetime, seed: int) -> None:
    """campaigns and campaign_contacts (ADBC, chunks of ~CHUNK rows), then the contract's
    index, then VACUUM ANALYZE."""
    import adbc_driver_postgresql.dbapi as adbc_pg

    engine = wh.make_engine(url)
    with engine.begin() as c:
        c.execute(sa.schema.CreateTable(src_campaigns))
        c.execute(sa.schema.CreateTable(src_campaign_contacts))  # its index comes later
    libpq = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    cum = np.cumsum(plan.audience)
    cuts = np.unique(np.searchsorted(cum, np.arange(CHUNK, int(cum[-1]), CHUNK)))
    with adbc_pg.connect(libpq) as conn, conn.cursor() as cur:
        cur.adbc_ingest("campaigns", campaign_table(plan, now), mode="append")
        for i, cs in enumerate(np.split(np.arange(plan.n), cuts)):
            if len(cs):
                t = contacts_chunk(plan, cs, now, np.random.default_rng([seed, i]))
                cur.adbc_ingest("campaign_contacts", t, mode="append")
        conn.commit()
    with engine.begin() as c:
        c.execute(sa.text("SET LOCAL maintenance_work_mem = '512MB'"))
        for ix in src_campaign_contacts.indexes:
            ix.create(c)
    engine.dispose()
    e = sa.create_engine(wh.normalize_url(url), isolation_level="AUTOCOMMIT")
    with e.connect() as c:
        c.execute(sa.text("VACUUM ANALYZE campaigns"))
        c.execute(sa.text("VACUUM ANALYZE campaign_contacts"))
    e.dispose()


# --- the messages ------------------------------------------------------------------------


def build_messages(plan: Plan, base: int, rng) -> list[tuple]:
    """(AMQP timestamp, routing key, body, message id, correlation id, straight to the
    queue) of every message, in timestamp order: the packer's ``campaigns.send`` pages and
    the senders' ``campaigns.tracked`` reports, shaped by the dev publisher's own builders."""
    out: list[tuple] = []
    double = set(plan.double_send)
    packs: dict[int, list[tuple]] = {}
    reports: dict[tuple[int, int], tuple] = {}  # (campaign index, page) -> its report
    for c in np.flatnonzero(plan.state != INACTIVE):
        c = int(c)
        cid, pages, state = int(plan.ids[c]), int(plan.pages[c]), int(plan.state[c])
        corr = uuid.uuid4().hex
        minutes = {COMPLETE: (10, 120), IN_FLIGHT: (0, 3), STUCK: (30, 60)}[state]
        start = base - int(rng.uniform(*minutes) * 60)
        if pages == 0:
            body = _dump(_tracked(cid, 0, 0, 0, True, corr))
            out.append((start, TRACKED_KEY, body, uuid.uuid4().hex, corr, False))
            continue
        first = int(plan.contact_start[c])
        audience = int(plan.audience[c])
        template = int(rng.integers(1, 500))
        channel = CHANNEL_CLASSES[plan.channel[c]] or "Channel::Email"
        pack = []
        for p in range(1, pages + 1):
            ids = list(range(first + (p - 1) * BATCH, first + min(p * BATCH, audience)))
            if c in double and p == 2:
                ids.append(first)  # the packer's bug: page 1's first contact again
            body = _dump(_send(cid, p, pages, ids, template, channel, corr))
            pack.append((start, SEND_KEY, body, uuid.uuid4().hex, corr, False))
        out += pack
        packs[c] = pack
        step = rng.uniform(1, 4)
        for p in range(1, int(plan.tracked[c]) + 1):
            g = plan.page_base[c] + p - 1
            sent, failed = int(plan.page_sent[g]), int(plan.page_failed[g])
            if c in double and p == 2:
                if plan.double_send_status[c] == SENT:
                    sent += 1
                else:
                    failed += 1
            at = min(base, start + int(p * step) + 1)
            body = _dump(_tracked(cid, p, sent, failed, p == pages, corr))
            reports[(c, p)] = (at, TRACKED_KEY, body, uuid.uuid4().hex, corr, False)
            out.append(reports[(c, p)])
    for c in plan.repacked_same:  # the packer's job redelivered: the same messages again
        out += [(base, *m[1:]) for m in packs[c]]
    for c in plan.repacked_new:  # ... under new message ids: duplicate pages
        out += [(base, m[1], m[2], uuid.uuid4().hex, *m[4:]) for m in packs[c]]
    for c, p, new in plan.reported_twice:
        m = reports[(c, p)]
        out.append((min(base, m[0] + 5), m[1], m[2], uuid.uuid4().hex if new else m[3],
                    *m[4:]))
    for kind, (key, body, _) in MALFORMED.items():
        out.append((base, key, body, uuid.uuid4().hex, None, kind == "unknown_routing_key"))
    out.sort(key=lambda m: m[0])
    return out


def _contact_ids(body: bytes) -> int:
    """How many contact ids a send's body carries (0 for a malformed one)."""
    try:
        ids = json.loads(body).get("contactIds")
    except (ValueError, AttributeError):
        return 0
    return len(ids) if isinstance(ids, list) else 0


def _campaign_of(body: bytes) -> int | None:
    """A well-formed report's campaign id (None for a malformed body)."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value.get("campaignId") if isinstance(value, dict) else None


def publish(url: str, exchange: str, queue_name: str, messages: list[tuple]) -> float:
    """Every message, persistent, without publisher confirms; then waits until the queue
    holds them all. Returns the seconds taken."""
    t0 = time.perf_counter()
    with connect(url) as connection:
        channel = connection.channel()
        for ts, key, body, mid, corr, direct in messages:
            props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                         message_id=mid, correlation_id=corr, timestamp=ts)
            channel.basic_publish("" if direct else exchange, queue_name if direct else key,
                                  body, props)
    deadline = time.monotonic() + 300
    while (ready := pending_messages(url, queue_name)) < len(messages):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ready} of {len(messages)} messages reached the queue")
        time.sleep(0.2)
    return time.perf_counter() - t0


# --- (a) consumption -----------------------------------------------------------------------


def consume(url: str, queue_name: str, exchange: str, landing: str, src_url: str,
            wh_url: str, n: int, out: mp.Queue) -> None:
    """(a) in a child process: ``consume_messages`` (drain: landed, fsynced, acknowledged;
    then the drain's messages parsed once and landed parsed, malformed ones quarantined,
    report dates worked out) until the ``n`` messages are consumed; the drain timed apart."""
    from analytics_pipeline.campaigns import steps
    from analytics_pipeline.campaigns.source import CampaignSource
    from analytics_pipeline.core.landing import ProviderEventLog

    engine = wh.make_engine(wh_url)
    wh.ensure_schema(engine)
    log = ProviderEventLog(landing, STREAM)
    drain_seconds = []
    real_drain = steps.drain_and_land

    def timed_drain(*a, **kw):
        t = time.perf_counter()
        try:
            return real_drain(*a, **kw)
        finally:
            drain_seconds.append(time.perf_counter() - t)

    steps.drain_and_land = timed_drain
    reset_peak_rss()
    results = []
    t0 = time.perf_counter()
    while sum(r.drain.received for r in results) < n and len(results) < 10:
        results.append(steps.consume_messages(
            url, queue_name, log, engine, CampaignSource(src_url),
            n - sum(r.drain.received for r in results), f"bench-{uuid.uuid4().hex[:12]}",
            exchange=exchange, max_seconds=3600.0, idle_seconds=5.0))
    elapsed = time.perf_counter() - t0
    engine.dispose()
    keys: dict[str, int] = {}
    for r in results:
        for k, v in r.drain.by_routing_key.items():
            keys[k] = keys.get(k, 0) + v
    out.put({"seconds": elapsed, "drain_seconds": sum(drain_seconds),
             "received": sum(r.drain.received for r in results),
             "drains": len(results), "batches": sum(r.drain.batches for r in results),
             "files": sum(r.drain.files for r in results), "by_key": keys,
             "quarantined": sum(sum(r.quarantined_by_reason.values()) for r in results),
             "warnings": [w for r in results for w in r.warnings],
             "dates": sorted({d for r in results for d in r.drain.dates}),
             "stopped_by": [r.drain.stopped_by for r in results], "peak_mb": peak_rss_mb()})


# --- (b) the refresh -------------------------------------------------------------------------


def refresh(src_url: str, wh_url: str, landing: str, now: datetime, profile: bool,
            out: mp.Queue) -> None:
    """(b) in a child process: ``refresh_progress`` as the asset runs it, its steps timed
    (with the peak RSS so far), the campaigns it recomputed noted."""
    from analytics_pipeline.campaigns import steps
    from analytics_pipeline.campaigns.source import CampaignSource
    from analytics_pipeline.core.landing import ProviderEventLog

    engine = wh.make_engine(wh_url)
    log = ProviderEventLog(landing, STREAM)
    src = CampaignSource(src_url)
    timed: list[tuple[str, float, float]] = []  # (step, seconds, peak RSS so far)
    ids: list[int] = []

    def wrap(owner, name: str, label: str):
        real = getattr(owner, name)

        def inner(*a, **kw):
            t = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                timed.append((label, time.perf_counter() - t, peak_rss_mb()))
        setattr(owner, name, inner)

    for name in ("parse_late_files", "read_parsed", "merge_parsed", "quarantine_messages",
                 "with_contact_ids",
                 "refreshed_files", "open_campaigns", "double_sends", "campaign_progress",
                 "write_progress", "stored_progress", "progress_checks"):
        wrap(steps, name, name)
    real_reads = src.progress_reads
    src.progress_reads = lambda i: ids.extend(i) or real_reads(i)
    wrap(src, "progress_reads", "progress_reads() (campaigns; counts ∥ risky contacts)")
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    rss0 = rss_mb()
    reset_peak_rss()
    t0 = time.perf_counter()
    r = steps.refresh_progress(log, src, engine, now, 30, BATCH, timedelta(minutes=15))
    total = time.perf_counter() - t0
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(20)
    engine.dispose()
    out.put({"seconds": total, "steps": timed, "peak_mb": peak_rss_mb(), "rss0_mb": rss0,
             "deliveries": r.deliveries, "sends": r.sends, "tracked": r.tracked,
             "quarantined": r.quarantined, "files_new": r.files_new,
             "files_parsed_late": r.files_parsed_late,
             "double_sends": r.written.double_sends, "progress_rows": r.campaigns,
             "rechecked": r.campaigns_rechecked,
             "in_window": r.campaigns_in_window, "ids": sorted(set(ids)),
             "problems": r.source_problems})


def warehouse_figures(wh_url: str) -> dict[str, int]:
    """What (b) wrote, in the plan's terms."""
    e = sa.create_engine(wh.normalize_url(wh_url))
    with e.connect() as c:
        r = c.execute(sa.text(
            "SELECT count(*), sum(audience), count(*) FILTER (WHERE completed), "
            "count(*) FILTER (WHERE stuck), sum(pages_published), sum(pages_tracked), "
            "sum(duplicate_pages), sum(duplicate_reports), sum(sent), "
            "sum(status_disagreement) FROM campaign_progress")).one()
        signals = dict(c.execute(sa.text(
            "SELECT signal, count(*) FROM campaign_double_sends GROUP BY signal")).all())
        contacts = c.execute(sa.text(
            "SELECT campaign_id, contacts_pending, contacts_sent, contacts_failed "
            "FROM campaign_progress")).all()
    e.dispose()
    names = ["campaigns", "audience", "completed", "stuck", "pages_published",
             "pages_tracked", "duplicate_pages", "duplicate_reports", "sent",
             "status_disagreement"]
    out = {k: int(v or 0) for k, v in zip(names, r, strict=True)}
    out["two_pages"] = int(signals.get("two_pages", 0))
    out["attempts_sent"] = int(signals.get("attempts_sent", 0))
    out["page_published_twice"] = int(signals.get("page_published_twice", 0))
    out["_contacts"] = {int(i): (int(p), int(s), int(f)) for i, p, s, f in contacts}
    return out


# --- (c) the reference ---------------------------------------------------------------------


def reference(url: str, budget: float) -> dict:
    """(c) ``find_each`` over campaigns, one prepared GROUP BY status per campaign."""
    import psycopg2

    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # each statement its own transaction, as ActiveRecord's reads
    cur = conn.cursor()
    cur.execute("PREPARE counts(bigint) AS SELECT count(*) AS count_all, status "
                "FROM campaign_contacts WHERE campaign_id = $1 GROUP BY status")
    counts: dict[int, dict[str, int]] = {}
    seconds: dict[int, float] = {}  # each campaign's query
    t0 = time.perf_counter()
    last, stopped = 0, False
    while not stopped:
        cur.execute("SELECT id, account_id, name, channel_type, status FROM campaigns "
                    "WHERE id > %s ORDER BY id LIMIT 1000", (last,))
        batch = cur.fetchall()
        if not batch:
            break
        for row in batch:
            q0 = time.perf_counter()
            cur.execute("EXECUTE counts(%s)", (row[0],))
            counts[row[0]] = {status: n for n, status in cur.fetchall()}
            seconds[row[0]] = time.perf_counter() - q0
            if time.perf_counter() - t0 > budget:
                stopped = True
                break
        last = batch[-1][0]
    elapsed = time.perf_counter() - t0
    cur.execute("SELECT count(*) FROM campaigns")
    total = cur.fetchone()[0]
    conn.close()
    return {"seconds": elapsed, "done": len(counts), "total": total,
            "estimate": elapsed * total / max(len(counts), 1), "counts": counts,
            "per_campaign": seconds}


def reference_subset(c: dict, ids: list[int]) -> tuple[float, str]:
    """(c) restricted to the campaigns ``ids``: their queries' time (plus their share of the
    campaigns' batches), extrapolated by count to those not done."""
    done = [i for i in ids if i in c["per_campaign"]]
    queries = sum(c["per_campaign"][i] for i in done)
    overhead = c["seconds"] - sum(c["per_campaign"].values())  # find_each batches, Python
    spent = queries + overhead * len(done) / max(c["done"], 1)
    if len(done) == len(ids):
        return spent, f"{len(ids):,} campaigns"
    return spent * len(ids) / max(len(done), 1), \
        f"extrapolated from {len(done):,} of {len(ids):,} campaigns"


def warm(url: str) -> float:
    """Reads the contacts once (untimed for (b) and (c)): both then find them cached."""
    t0 = time.perf_counter()
    e = sa.create_engine(wh.normalize_url(url))
    with e.connect() as c:
        c.execute(sa.text("SELECT count(*), sum(attempts) FROM campaign_contacts")).one()
    e.dispose()
    return time.perf_counter() - t0


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--campaigns", type=int, default=10_000)
    p.add_argument("--contacts", type=int, default=20_000_000)
    p.add_argument("--messages", type=int, default=25_000)
    p.add_argument("--accounts", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reference-budget", type=float, default=180.0,
                   help="seconds of (c) before it is extrapolated from the campaigns done")
    p.add_argument("--again", type=int, default=1000,
                   help="tracked reports delivered again before the steady refresh (b2)")
    p.add_argument("--profile", action="store_true", help="cProfile (b) to stderr")
    args = p.parse_args()
    if args.messages < len(MALFORMED) + 10:
        p.error(f"--messages must be at least {len(MALFORMED) + 10}")

    load_before = os.getloadavg()[0]
    now = datetime.now(timezone.utc)
    token = uuid.uuid4().hex[:10]
    exchange, queue_name = f"bench.campaigns.{token}", f"bench.analytics_pipeline.{token}"
    with connect(AMQP) as connection:  # fails early when RabbitMQ is not there
        declare(connection.channel(), queue_name, exchange)
    src = create_db("ap_bcamp_src")
    whurl = create_db("ap_bcamp_wh")
    tmp = tempfile.mkdtemp(prefix="ap_bcamp_")
    landing = os.path.join(tmp, "landing")
    try:
        t = time.perf_counter()
        plan = Plan(args.campaigns, args.contacts, args.messages, args.accounts, args.seed)
        load_source(src, plan, now, args.seed)
        load_s = time.perf_counter() - t
        print(f"generated and loaded {args.campaigns:,} campaigns, {args.contacts:,} contacts "
              f"in {load_s:.1f}s: dispatched in the window {plan.count(COMPLETE):,} complete, "
              f"{plan.count(IN_FLIGHT):,} in flight, {plan.count(STUCK):,} stuck; "
              f"{plan.risky:,} contacts SENT after several attempts", flush=True)

        t = time.perf_counter()
        messages = build_messages(plan, int(time.time()), np.random.default_rng(args.seed + 1))
        build_s = time.perf_counter() - t
        assert len(messages) == args.messages, (len(messages), args.messages)
        body_mb = sum(len(m[2]) for m in messages) / 1e6
        n_send = sum(1 for m in messages if m[1] == SEND_KEY)
        n_tracked = sum(1 for m in messages if m[1] == TRACKED_KEY)
        n_ids = sum(_contact_ids(m[2]) for m in messages if m[1] == SEND_KEY)
        # the steady state's consumption: reports delivered again (same ids: no change)
        rng = np.random.default_rng(args.seed + 2)
        reports = [m for m in messages if m[1] == TRACKED_KEY and _campaign_of(m[2])]
        again = [reports[i] for i in rng.choice(len(reports), min(args.again, len(reports)),
                                                replace=False)]
        pub_s = publish(AMQP, exchange, queue_name, messages)
        print(f"built {len(messages):,} messages ({n_send:,} sends, {n_tracked:,} tracked, "
              f"{body_mb:,.1f} MB of bodies) in {build_s:.1f}s, published in {pub_s:.1f}s",
              flush=True)
        del messages, reports

        wh_engine = wh.make_engine(whurl)
        wh.ensure_schema(wh_engine)
        wh.replace_accounts(wh_engine, [x.__dict__ for x in resolve_account_timezones(
            [{"id": a, "name": f"account {a}", "reporting_timezone": "UTC"}
             for a in range(1, args.accounts + 1)], "UTC")])
        wh_engine.dispose()
        a = child(consume, AMQP, queue_name, exchange, landing, src, whurl, args.messages)
        print(f"(a) {a['received']:,} consumed in {a['seconds']:.2f}s: {a}", flush=True)
        if a["received"] != args.messages:
            print(f"CHECKS FAILED: drained {a['received']} of {args.messages}")
            return 1

        warm_s = warm(src)
        when = datetime.now(timezone.utc)
        b = child(refresh, src, whurl, landing, when, args.profile)
        print(f"(b) first refresh in {b['seconds']:.2f}s: "
              f"{ {k: v for k, v in b.items() if k not in ('steps', 'ids')} }", flush=True)
        got = warehouse_figures(whurl)
        publish(AMQP, exchange, queue_name, again)
        a2 = child(consume, AMQP, queue_name, exchange, landing, src, whurl, len(again))
        b2 = child(refresh, src, whurl, landing, when + timedelta(minutes=1), False)
        print(f"(b2) steady refresh after {a2['received']:,} more messages in "
              f"{b2['seconds']:.2f}s: "
              f"{ {k: v for k, v in b2.items() if k not in ('steps', 'ids')} }", flush=True)
        got2 = warehouse_figures(whurl)
        c = reference(src, args.reference_budget)
        print(f"(c) {c['done']:,} of {c['total']:,} campaigns in {c['seconds']:.2f}s",
              flush=True)

        want = plan.expected()
        mismatches = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        mismatches.update({f"after (b2): {k}": (got2.get(k), v) for k, v in want.items()
                           if got2.get(k) != v})
        if b["quarantined"] != len(MALFORMED) or a["quarantined"] != len(MALFORMED):
            mismatches["quarantined"] = (a["quarantined"], b["quarantined"], len(MALFORMED))
        wrong = [cid for cid, byst in c["counts"].items() if cid in got["_contacts"]
                 and got["_contacts"][cid] != tuple(byst.get(s, 0) for s in STATUSES)]
        if wrong:
            mismatches["reference counts differ"] = (len(wrong), wrong[:5])
        # (b2) recomputes the campaigns of the messages delivered again, and looks again at
        # whether the other open ones are stuck
        again_ids = {_campaign_of(m[2]) for m in again}
        open_ = plan.count(IN_FLIGHT) + plan.count(STUCK) + len(plan.double_send)
        # (a malformed report among them, quarantined, recomputes nothing)
        if not len(again_ids) - len(MALFORMED) <= b2["progress_rows"] <= len(again_ids) \
                or not open_ - len(again_ids) <= b2["rechecked"] <= open_:
            mismatches["steady refresh"] = (b2["progress_rows"], len(again_ids),
                                            b2["rechecked"], open_)

        n, m = args.campaigns, args.messages
        c_full = c["seconds"] if c["done"] == c["total"] else c["estimate"]
        c_note = ("all campaigns" if c["done"] == c["total"] else
                  f"extrapolated from {c['done']:,} of {c['total']:,} campaigns timed in "
                  f"{c['seconds']:.1f} s")
        cw, cw_note = reference_subset(c, b["ids"])
        c2, c2_note = reference_subset(c, b2["ids"])

        def steps_of(r: dict) -> str:
            merged: dict[str, float] = {}
            for name, sec, _ in r["steps"]:
                merged[name] = merged.get(name, 0.0) + sec
            return ", ".join(f"{k} {v:.2f}" for k, v in merged.items() if v >= 0.005)

        print()
        print(f"| measure ({n:,} campaigns, {args.contacts:,} contacts, {m:,} messages; "
              "2-core shared machine) | result |")
        print("|---|---|")
        print(f"| setup: generate + ADBC load + index + VACUUM ANALYZE | {load_s:.1f} s |")
        print(f"| setup: messages built / published (pika, no confirms) | {build_s:.1f} s / "
              f"{pub_s:.1f} s = {m / pub_s:,.0f} msg/s ({n_send:,} sends carrying "
              f"{n_ids:,} contact ids, {n_tracked:,} tracked, {body_mb:,.0f} MB) |")
        print(f"| (a) consume_messages: drained, landed (fsynced), acknowledged; parsed once "
              f"and landed parsed; quarantined | {a['received']:,} in {a['seconds']:.2f} s = "
              f"**{a['received'] / a['seconds']:,.0f} msg/s** (the drain alone "
              f"{a['drain_seconds']:.2f} s = {a['received'] / a['drain_seconds']:,.0f} msg/s;"
              f" {a['batches']} batches, {a['drains']} drain(s)) |")
        print(f"| (a) peak RSS | {a['peak_mb']:,.0f} MB (target < 1,024 MB) |")
        print(f"| (b) first refresh: every campaign of the window ({b['progress_rows']:,}) | "
              f"**{b['seconds']:.2f} s** ({steps_of(b)}) |")
        print(f"| (b) peak RSS | {b['peak_mb']:,.0f} MB (at start {b['rss0_mb']:,.0f} MB; "
              "target < 1,024 MB) |")
        print(f"| (b2) steady refresh after a consumption of {a2['received']:,} messages: "
              f"{b2['progress_rows']:,} campaigns recomputed (new messages), "
              f"{b2['rechecked']:,} open ones checked for stuck pages | "
              f"**{b2['seconds']:.2f} s** ({steps_of(b2)}; peak RSS {b2['peak_mb']:,.0f} MB)"
              " |")
        print(f"| (c) one GROUP BY per campaign (find_each + prepared query), every campaign | "
              f"**{c_full:.2f} s** ({c_note}; {c_full / n * 1e3:.2f} ms per campaign) |")
        print(f"| (c') (c) for the window's {len(b['ids']):,} campaigns | {cw:.2f} s "
              f"({cw_note}) |")
        print(f"| (c'') (c) for the {len(b2['ids']):,} campaigns (b2) recomputes | "
              f"{c2:.2f} s ({c2_note}) |")
        print(f"| warm-up scan before (b), untimed | {warm_s:.1f} s |")
        print(f"| load average (1 min) at start / end | {load_before:.2f} / "
              f"{os.getloadavg()[0]:.2f} |")
        print()
        print(f"ratio (c) / (b2):   {c_full / b2['seconds']:,.1f}x  (target >= 20x: the "
              "refresh after a consumption run, against recomputing every campaign)")
        print(f"ratio (c'') / (b2): {c2 / b2['seconds']:,.1f}x  (the same campaigns, one "
              "query each)")
        print(f"ratio (c) / (b):    {c_full / b['seconds']:,.1f}x  (the first refresh)")
        print(f"ratio (c') / (b):   {cw / b['seconds']:,.1f}x  (the window's campaigns, one "
              "query each)")
        print(f"peak RSS (a) / (b) / (b2): {a['peak_mb']:,.0f} / {b['peak_mb']:,.0f} / "
              f"{b2['peak_mb']:,.0f} MB  (target < 1,024 MB)")
        print(f"written: {got['completed']:,} completed, {got['stuck']:,} stuck, "
              f"{got['duplicate_pages']:,} duplicate pages, {got['duplicate_reports']:,} "
              f"duplicate reports, double sends: two_pages {got['two_pages']}, attempts_sent "
              f"{got['attempts_sent']:,}, page_published_twice {got['page_published_twice']}")
        if b["problems"]:
            print(f"source problems: {b['problems']}")
        if mismatches:
            print(f"CHECKS FAILED (got, expected): {mismatches}")
            return 1
        print("checks: the refreshes' figures match the plan (after (b) and after (b2)); "
              "(c)'s counts match (b)'s")
    finally:
        drop_db(src)
        drop_db(whurl)
        shutil.rmtree(tmp, ignore_errors=True)
        with connect(AMQP) as connection:
            channel = connection.channel()
            channel.queue_delete(queue_name)
            channel.exchange_delete(exchange)
    return 0


if __name__ == "__main__":
    sys.exit(main())
