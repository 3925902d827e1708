"""Campaign dispatch progress, double sends, rollup events and checks, computed from the
parsed broker messages and the application database, as pure vectorized functions on
Arrow tables (NumPy inside: no Python loop per message, page or contact), plus the write
of the two warehouse tables.

Inputs (one row per distinct message, de-duplicated by message key by the parser):

- ``sends``: campaign_id, page, total_pages, contact_ids list<int64>, template_id,
  channel_type, correlation_id, message_key, received_at, published_at (nullable),
  redelivered.
- ``tracked``: campaign_id, page, sent_count, failed_count, completed, correlation_id,
  message_key, received_at, published_at (nullable).
- ``campaigns`` (``source.CAMPAIGNS_SCHEMA``), ``contact_counts``
  (``source.CONTACT_COUNTS_SCHEMA``), ``risky_contacts`` (``source.RISKY_CONTACTS_SCHEMA``).

Decisions shared by every function here:

- **When a message happened** (``message_instants``): its AMQP ``published_at`` when the
  publisher set one, else ``received_at``; never later than ``received_at`` (a message
  cannot be published after it was received: a publisher clock running ahead is clamped).
  The publisher's time does not move when the consumer lags behind or a backlog is
  re-consumed, so a report is dated when the sender made it.
- **A page counts once**: a (campaign, page) published by several messages (a redelivered
  pack re-publishes every page, possibly under new message keys) is one published page
  and one *duplicate page*; a page reported by several tracked messages is one tracked page
  and one *duplicate report*, and only its **first report** counts (earliest instant, then
  earliest ``received_at``, then smallest message key: the same choice on every run).
- **Campaigns known only from messages** (not in ``campaigns`` nor ``campaign_contacts``)
  still get a progress row: account ``UNKNOWN_ACCOUNT`` (0), no name, the channel of their
  send messages, an audience of the distinct contact ids of their published pages (a lower
  bound while pages are missing), pages expected at least the ``total_pages`` their send
  messages announce, and no contact statuses (``status_disagreement`` 0: there is nothing
  to disagree with).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.campaigns import contract
from analytics_pipeline.campaigns.metrics import (
    CHANNEL_IDS,
    FAILED,
    OTHER_CHANNEL_ID,
    PAGES_TRACKED,
    SENT,
)
from analytics_pipeline.campaigns.source import OTHER_CHANNEL, channel_names
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.arrays import sorted_unique
from analytics_pipeline.core.partitions import local_midnight_utc

_ts = pa.timestamp("us", tz="UTC")

UNKNOWN_ACCOUNT = 0  # account_id of a campaign the application database does not know

SIGNAL_TWO_PAGES = "two_pages"
SIGNAL_PAGE_PUBLISHED_TWICE = "page_published_twice"
SIGNAL_ATTEMPTS_SENT = "attempts_sent"

# every column of ``campaign_progress`` but ``updated_at`` (the write's clock)
PROGRESS_SCHEMA = pa.schema([
    pa.field("campaign_id", pa.int64()),
    pa.field("account_id", pa.int64()),
    pa.field("name", pa.string()),
    pa.field("channel", pa.string()),
    pa.field("audience", pa.int64()),
    pa.field("pages_expected", pa.int64()),
    pa.field("pages_published", pa.int64()),
    pa.field("pages_tracked", pa.int64()),
    pa.field("duplicate_pages", pa.int64()),
    pa.field("duplicate_reports", pa.int64()),
    pa.field("sent", pa.int64()),
    pa.field("failed", pa.int64()),
    pa.field("contacts_pending", pa.int64()),
    pa.field("contacts_sent", pa.int64()),
    pa.field("contacts_failed", pa.int64()),
    pa.field("status_disagreement", pa.int64()),
    pa.field("completed", pa.bool_()),
    pa.field("progress", pa.float64()),
    pa.field("first_published_at", _ts),
    pa.field("last_reported_at", _ts),
    pa.field("send_rate_per_minute", pa.float64()),
    pa.field("stuck", pa.bool_()),
    pa.field("stuck_pages", pa.int64()),
    pa.field("double_sends", pa.int64()),
])

# every column of ``campaign_double_sends`` but ``updated_at``
DOUBLE_SENDS_SCHEMA = pa.schema([
    pa.field("campaign_id", pa.int64()),
    pa.field("contact_id", pa.int64()),
    pa.field("signal", pa.string()),
    pa.field("detail", pa.string()),
])

# the events core's RollupAccumulator takes, plus the local ``date`` they belong to
ROLLUP_EVENTS_SCHEMA = pa.schema([
    pa.field("name", pa.string()),
    pa.field("account_id", pa.int64()),
    pa.field("campaign_id", pa.int64()),
    pa.field("channel_id", pa.int64()),
    pa.field("date", pa.date32()),
    pa.field("value", pa.float64()),
    pa.field("value_in_business_hours", pa.float64()),
])

# progress_checks' names and severities
CHECK_NOT_STUCK = "campaigns_not_stuck"
CHECK_NO_DOUBLE_SENDS = "no_double_sends"
CHECK_COUNTS_AGREE = "tracked_counts_agree_with_contacts"
CHECK_WITHIN_AUDIENCE = "reported_within_audience"
CHECK_SEVERITY = {CHECK_NOT_STUCK: "WARN", CHECK_NO_DOUBLE_SENDS: "ERROR",
                  CHECK_COUNTS_AGREE: "ERROR", CHECK_WITHIN_AUDIENCE: "ERROR"}

_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min


# --- columns as NumPy -------------------------------------------------------------------

def _chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.Array):
        return col
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _ints(col: pa.ChunkedArray | pa.Array, what: str) -> np.ndarray:
    a = _chunk(col)
    if a.null_count:
        raise ValueError(f"{what} holds nulls")
    return np.asarray(a.cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64)


def _micros(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTC microseconds since the epoch, valid mask) of a timestamp column."""
    a = _chunk(col)
    if pa.types.is_timestamp(a.type):
        if a.type.tz is None:
            a = pc.assume_timezone(a, "UTC")
        a = a.cast(_ts).cast(pa.int64())
    valid = np.asarray(pc.is_valid(a).to_numpy(zero_copy_only=False), bool)
    return np.asarray(pc.fill_null(a, 0).to_numpy(zero_copy_only=False), np.int64), valid


def _bools(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(_chunk(col), False).to_numpy(zero_copy_only=False), bool)


def _instant_us(when: datetime) -> int:
    if when.tzinfo is None:  # naive means UTC
        when = when.replace(tzinfo=timezone.utc)
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def message_instants(messages: pa.Table) -> np.ndarray:
    """When each message happened, in UTC microseconds: ``published_at`` when set, never
    later than ``received_at``; else ``received_at`` (which the parser always sets)."""
    received, has_received = _micros(messages["received_at"])
    if not has_received.all():
        raise ValueError("a message without received_at: the parser always sets it")
    published, has_published = _micros(messages["published_at"])
    return np.where(has_published, np.minimum(published, received), received)


def _first_of_groups(sorted_keys: np.ndarray) -> np.ndarray:
    """Positions where a run of equal keys starts (keys sorted)."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64)
    starts = np.ones(len(sorted_keys), bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return np.flatnonzero(starts)


def _run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    return np.diff(np.append(starts, n))


class _Pairs:
    """(campaign, page) pairs of both message kinds as one int64 key: the campaign's
    index in ``campaigns`` times the number of distinct pages, plus the page's index
    (both dense, so the key cannot overflow)."""

    def __init__(self, campaigns: np.ndarray, pages: np.ndarray):
        self.campaigns = campaigns  # sorted unique campaign ids
        self.pages = pages  # sorted unique page numbers
        self.width = max(len(pages), 1)

    def key(self, campaign: np.ndarray, page: np.ndarray) -> np.ndarray:
        c = np.searchsorted(self.campaigns, campaign).astype(np.int64)
        return c * self.width + np.searchsorted(self.pages, page).astype(np.int64)

    def campaign_index(self, key: np.ndarray) -> np.ndarray:
        return key // self.width

    def page(self, key: np.ndarray) -> np.ndarray:
        if len(self.pages) == 0:
            return np.zeros(len(key), np.int64)
        return self.pages[key % self.width]


@dataclass
class FirstReports:
    """The tracked pages, one per (campaign, page), by their first report."""

    rows: np.ndarray  # row of ``tracked`` holding the page's first report
    reports: np.ndarray  # how many tracked messages reported the page
    instant: np.ndarray  # the first report's instant (UTC microseconds)


def first_reports(tracked: pa.Table) -> FirstReports:
    """Each tracked page's first report: earliest instant (``message_instants``), then
    earliest ``received_at``, then smallest message key; pages in (campaign, page) order."""
    n = tracked.num_rows
    if n == 0:
        z = np.zeros(0, np.int64)
        return FirstReports(z, z, z)
    instant = message_instants(tracked)
    received, _ = _micros(tracked["received_at"])
    t = pa.table({"campaign_id": _chunk(tracked["campaign_id"]).cast(pa.int64()),
                  "page": _chunk(tracked["page"]).cast(pa.int64()),
                  "instant": instant, "received": received,
                  "key": _chunk(tracked["message_key"])})
    order = np.asarray(pc.sort_indices(t, sort_keys=[
        ("campaign_id", "ascending"), ("page", "ascending"), ("instant", "ascending"),
        ("received", "ascending"), ("key", "ascending")]).to_numpy(), np.int64)
    c = _ints(t["campaign_id"], "tracked campaign_id")[order]
    p = _ints(t["page"], "tracked page")[order]
    new = np.ones(n, bool)
    new[1:] = (c[1:] != c[:-1]) | (p[1:] != p[:-1])
    starts = np.flatnonzero(new)
    rows = order[starts]
    return FirstReports(rows, _run_lengths(starts, n), instant[rows])


def _explode(sends: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(row of ``sends``, contact id) of every contact id of every page (null ids dropped)."""
    if sends.num_rows == 0:
        z = np.zeros(0, np.int64)
        return z, z
    lists = _chunk(sends["contact_ids"])
    flat = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False),
                         np.int64)
    valid = np.asarray(pc.is_valid(flat).to_numpy(zero_copy_only=False), bool)
    contacts = np.asarray(pc.fill_null(flat, 0).cast(pa.int64())
                          .to_numpy(zero_copy_only=False), np.int64)
    if not valid.all():
        return parents[valid], contacts[valid]
    return parents, contacts


def _distinct(*cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """The distinct tuples of ``cols``, sorted by the first column, then the next...

    When the columns' ranges multiply to under 2^63 the tuples are packed into one int64
    (the first column most significant) and sorted once, three times faster than a
    lexsort of 10M contacts; otherwise lexsorted."""
    if len(cols[0]) == 0:
        return cols
    lows = [int(c.min()) for c in cols]
    spans = [int(c.max()) - lo + 1 for c, lo in zip(cols, lows, strict=True)]
    if math.prod(spans) < 2**63:
        key = np.zeros(len(cols[0]), np.int64)
        for c, lo, span in zip(cols, lows, spans, strict=True):
            key = key * span + (c.astype(np.int64) - lo)
        u = sorted_unique(key)
        out = []
        for lo, span in zip(reversed(lows), reversed(spans), strict=True):
            out.append(u % span + lo)
            u = u // span
        return tuple(reversed(out))
    order = np.lexsort(cols[::-1])
    s = [c[order] for c in cols]
    new = np.zeros(len(order), bool)
    new[0] = True
    for c in s:
        new[1:] |= c[1:] != c[:-1]
    return tuple(c[new] for c in s)


def _repeated(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which rows' (a, b) pair occurs more than once: one sort of the pairs packed into an
    int64 when their ranges allow (else a lexsort), then a binary search of the few
    repeated pairs, instead of sorting every (campaign, contact, page) triple."""
    n = len(a)
    if n < 2:
        return np.zeros(n, bool)
    a_lo, b_lo = int(a.min()), int(b.min())
    a_span, b_span = int(a.max()) - a_lo + 1, int(b.max()) - b_lo + 1
    if a_span * b_span < 2**63:
        key = (a.astype(np.int64) - a_lo) * b_span + (b.astype(np.int64) - b_lo)
        s = np.sort(key)
        again = s[1:][s[1:] == s[:-1]]
        if len(again) == 0:
            return np.zeros(n, bool)
        again = sorted_unique(again)
        at = np.minimum(np.searchsorted(again, key), len(again) - 1)
        return again[at] == key
    order = np.lexsort((b, a))
    sa_, sb = a[order], b[order]
    same = (sa_[1:] == sa_[:-1]) & (sb[1:] == sb[:-1])
    hit = np.zeros(n, bool)
    hit[1:] |= same
    hit[:-1] |= same
    out = np.zeros(n, bool)
    out[order] = hit
    return out


def _per(index: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Exact int64 sums (counts without ``weights``) per index 0..n-1."""
    out = np.zeros(n, np.int64)
    np.add.at(out, index, 1 if weights is None else weights.astype(np.int64))
    return out


def _ts_array(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64(), mask=~valid).cast(_ts)


# --- progress ---------------------------------------------------------------------------

def campaign_progress(
    campaigns: pa.Table, contact_counts: pa.Table, sends: pa.Table, tracked: pa.Table,
    batch_size: int, now: datetime, stuck_after: timedelta = timedelta(minutes=15),
    double_sends: pa.Table | None = None,
) -> pa.Table:
    """One PROGRESS_SCHEMA row per campaign of any input, in campaign order.

    - ``audience``: the campaign's rows in ``campaign_contacts`` (0 for a campaign without
      any); for a campaign known only from messages, the distinct contact ids of its pages.
    - ``pages_expected``: ``ceil(audience / batch_size)``, 1 for an empty audience (its page
      0); for a campaign known only from messages at least its sends' ``total_pages``.
    - ``pages_published`` / ``pages_tracked``: distinct page numbers sent / reported;
      ``duplicate_pages`` / ``duplicate_reports``: those published / reported twice or more.
    - ``sent`` / ``failed``: summed over the tracked pages, each by its first report.
    - ``contacts_*``: ``campaign_contacts`` by status; ``status_disagreement``:
      |sent − contacts SENT| + |failed − contacts FAILED| (0 for a campaign known only from
      messages).
    - ``completed``: every expected page (1..pages_expected) tracked and sent + failed =
      audience; an empty audience: its page 0 reported with ``completed: true`` (and no
      counts).
    - ``progress``: expected pages tracked / pages expected, in 0..1. The pages expected are
      1..pages_expected, or page 0 alone for an empty audience; a page number outside them
      is tracked but makes no progress.
    - ``first_published_at``: the first send's instant; ``last_reported_at``: the latest
      first report's; ``send_rate_per_minute``: sent per minute between the two (null
      when either is missing or they do not span any time).
    - ``stuck_pages``: published pages without any tracked report ``stuck_after`` after
      their first publication, at ``now``; ``stuck``: any.
    - ``double_sends``: distinct contacts of the campaign in ``double_sends`` (0 without).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    c_ids = _ints(campaigns["campaign_id"], "campaigns campaign_id")
    k_ids = _ints(contact_counts["campaign_id"], "contact counts campaign_id")
    s_ids = _ints(sends["campaign_id"], "sends campaign_id")
    t_ids = _ints(tracked["campaign_id"], "tracked campaign_id")
    s_page = _ints(sends["page"], "sends page")
    t_page = _ints(tracked["page"], "tracked page")
    ids = sorted_unique(np.concatenate([c_ids, k_ids, s_ids, t_ids]))
    n = len(ids)
    pairs = _Pairs(ids, sorted_unique(np.concatenate([s_page, t_page])))

    # application database
    in_campaigns = np.zeros(n, bool)
    ci = np.searchsorted(ids, c_ids)
    in_campaigns[ci] = True
    account = np.full(n, UNKNOWN_ACCOUNT, np.int64)
    account[ci] = _ints(campaigns["account_id"], "campaigns account_id")
    name = pa.nulls(n, pa.string())
    channel = pa.nulls(n, pa.string())
    if len(ci):
        at = np.full(n, -1, np.int64)
        at[ci] = np.arange(len(ci))
        where = pa.array(at, mask=at < 0)
        name = _chunk(campaigns["name"]).cast(pa.string()).take(where)
        channel = _chunk(campaigns["channel"]).cast(pa.string()).take(where)
    ki = np.searchsorted(ids, k_ids)
    in_counts = np.zeros(n, bool)
    in_counts[ki] = True
    counts = {}
    for col in ("audience", "contacts_pending", "contacts_sent", "contacts_failed"):
        counts[col] = np.zeros(n, np.int64)
        counts[col][ki] = _ints(contact_counts[col], f"contact counts {col}")
    known = in_campaigns | in_counts
    audience = counts["audience"]

    # sends: pages published, duplicates, first publication, stuck pages
    s_instant = message_instants(sends) if sends.num_rows else np.zeros(0, np.int64)
    s_key = pairs.key(s_ids, s_page)
    order = np.lexsort((s_instant, s_key))
    starts = _first_of_groups(s_key[order])
    pub_pair = s_key[order][starts]
    publications = _run_lengths(starts, len(order))
    first_pub = s_instant[order][starts]
    pub_c = pairs.campaign_index(pub_pair)
    pages_published = _per(pub_c, n)
    duplicate_pages = _per(pub_c[publications >= 2], n)
    first_published = np.full(n, _I64_MAX, np.int64)
    np.minimum.at(first_published, pub_c, first_pub)

    # tracked: first reports
    fr = first_reports(tracked)
    rep_pair = pairs.key(t_ids[fr.rows], t_page[fr.rows])  # in sorted order
    rep_c = pairs.campaign_index(rep_pair)
    pages_tracked = _per(rep_c, n)
    duplicate_reports = _per(rep_c[fr.reports >= 2], n)
    sent = np.zeros(n, np.int64)
    failed = np.zeros(n, np.int64)
    if tracked.num_rows:
        sent = _per(rep_c, n, _ints(tracked["sent_count"], "sent_count")[fr.rows])
        failed = _per(rep_c, n, _ints(tracked["failed_count"], "failed_count")[fr.rows])
    last_reported = np.full(n, _I64_MIN, np.int64)
    np.maximum.at(last_reported, rep_c, fr.instant)

    # campaigns known only from messages: audience, pages and channel from their sends
    unknown = ~known
    announced = np.zeros(n, np.int64)  # the packer's total_pages (unknown campaigns only)
    if unknown.any() and sends.num_rows:
        np.maximum.at(announced, np.searchsorted(ids, s_ids),
                      _ints(sends["total_pages"], "total_pages"))
        announced = np.where(unknown, announced, 0)
        rows, contacts = _explode(sends)
        ec = np.searchsorted(ids, s_ids[rows])
        pick = unknown[ec]
        uc, _ = _distinct(ec[pick], contacts[pick])
        audience = np.where(unknown, _per(uc, n), audience)
    if sends.num_rows and not in_campaigns.all():  # the channel their sends name
        first_send = np.full(n, -1, np.int64)  # each campaign's earliest send row
        sc = np.searchsorted(ids, s_ids)
        by_time = np.lexsort((s_instant, sc))
        firsts = _first_of_groups(sc[by_time])
        first_send[sc[by_time][firsts]] = by_time[firsts]
        sent_channel = channel_names(_chunk(sends["channel_type"]).take(
            pa.array(first_send, mask=first_send < 0)))
        channel = pc.if_else(pa.array(~in_campaigns), sent_channel, channel)
    channel = pc.fill_null(channel, OTHER_CHANNEL)

    expected = np.where(audience == 0, 1, -(-audience // batch_size))
    expected = np.where(unknown, np.maximum(expected, announced), expected)

    # tracked pages that make progress: 1..expected, or the page 0 of an empty audience
    empty = (audience == 0) & (announced == 0)
    rep_page = pairs.page(rep_pair)
    ok = np.where(empty[rep_c], rep_page == 0,
                  (rep_page >= 1) & (rep_page <= expected[rep_c]))
    tracked_expected = _per(rep_c[ok], n)
    empty_done = np.zeros(n, bool)
    if tracked.num_rows:
        done = (t_page == 0) & _bools(tracked["completed"])
        empty_done[np.searchsorted(ids, t_ids[done])] = True
    sums_match = sent + failed == audience
    completed = np.where(empty, empty_done & sums_match,
                         (tracked_expected == expected) & sums_match)
    progress = np.minimum(tracked_expected / expected, 1.0)

    disagreement = np.where(known, np.abs(sent - counts["contacts_sent"])
                            + np.abs(failed - counts["contacts_failed"]), 0)

    has_pub = first_published != _I64_MAX
    has_rep = last_reported != _I64_MIN
    span = np.where(has_pub & has_rep, last_reported - first_published, 0)
    rated = has_pub & has_rep & (span > 0)
    rate = np.where(rated, sent / np.where(rated, span, 1) * 60e6, 0.0)

    reported = np.isin(pub_pair, rep_pair, assume_unique=True)  # both sorted, unique
    limit = _instant_us(now) - int(stuck_after / timedelta(microseconds=1))
    stuck_pages = _per(pub_c[~reported & (first_pub < limit)], n)

    doubles = np.zeros(n, np.int64)
    if double_sends is not None and double_sends.num_rows:
        dc, _ = _distinct(_ints(double_sends["campaign_id"], "double sends campaign_id"),
                          _ints(double_sends["contact_id"], "double sends contact_id"))
        inside = np.isin(dc, ids)
        doubles = _per(np.searchsorted(ids, dc[inside]), n)

    cols = {
        "campaign_id": ids, "account_id": account, "name": name, "channel": channel,
        "audience": audience, "pages_expected": expected, "pages_published": pages_published,
        "pages_tracked": pages_tracked, "duplicate_pages": duplicate_pages,
        "duplicate_reports": duplicate_reports, "sent": sent, "failed": failed,
        "contacts_pending": counts["contacts_pending"],
        "contacts_sent": counts["contacts_sent"], "contacts_failed": counts["contacts_failed"],
        "status_disagreement": disagreement, "completed": completed, "progress": progress,
        "first_published_at": _ts_array(first_published, has_pub),
        "last_reported_at": _ts_array(last_reported, has_rep),
        "send_rate_per_minute": pa.array(rate, pa.float64(), mask=~rated),
        "stuck": stuck_pages > 0, "stuck_pages": stuck_pages, "double_sends": doubles,
    }
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) if isinstance(
        cols[f.name], np.ndarray) else cols[f.name].cast(f.type) for f in PROGRESS_SCHEMA],
        schema=PROGRESS_SCHEMA)


# --- double sends -----------------------------------------------------------------------

def _grouped_detail(c: np.ndarray, k: np.ndarray, parts: pa.Array, prefix: str,
                    sep: str) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Rows sorted by (c, k): one (c, k, prefix + parts joined by sep) per group."""
    if len(c) == 0:
        return c, k, pa.array([], pa.string())
    new = np.ones(len(c), bool)
    new[1:] = (c[1:] != c[:-1]) | (k[1:] != k[:-1])
    starts = np.flatnonzero(new)
    offsets = pa.array(np.append(starts, len(c)).astype(np.int32))
    lists = pa.ListArray.from_arrays(offsets, parts)
    joined = pc.binary_join(lists, sep)
    detail = pc.binary_join_element_wise(pa.scalar(prefix), joined, "")
    return c[starts], k[starts], detail


def _signal_table(c: np.ndarray, k: np.ndarray, signal: str, detail: pa.Array) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(c, pa.int64()), pa.array(k, pa.int64()),
         pa.repeat(pa.scalar(signal, pa.string()), len(c)), detail],
        schema=DOUBLE_SENDS_SCHEMA)


def _text(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.string())


def double_sends(sends: pa.Table, tracked: pa.Table, risky_contacts: pa.Table) -> pa.Table:
    """Contacts that may have received a campaign twice (DOUBLE_SENDS_SCHEMA), one row per
    (campaign, contact, signal), in that order:

    - ``two_pages``: the contact is on two or more *different* pages of the campaign
      (detail: ``pages 1, 3``);
    - ``page_published_twice``: the contact is on a page published by two or more distinct
      messages *and* reported sent (``sent_count`` > 0) by two or more distinct tracked
      messages: both deliveries were sent and counted (detail: ``page 2 published 2 times,
      reported sent 2 times``; pages joined by ``; ``). A page published twice but
      reported once was sent once: it is only a duplicate page of the progress;
    - ``attempts_sent``: the application marked the contact SENT after more than one
      attempt (``risky_contacts``; detail: ``attempts 3``).
    """
    pieces = []
    rows, contacts = _explode(sends)
    s_ids = _ints(sends["campaign_id"], "sends campaign_id")
    s_page = _ints(sends["page"], "sends page")
    e_c, e_p = s_ids[rows], s_page[rows]

    # two_pages needs a contact listed twice in the campaign's send messages: only those
    # are looked at closely (distinct (campaign, contact, page), then two pages or more)
    twice = _repeated(e_c, contacts)
    c, k, p = _distinct(e_c[twice], contacts[twice], e_p[twice])
    if len(c):
        new = np.ones(len(c), bool)
        new[1:] = (c[1:] != c[:-1]) | (k[1:] != k[:-1])
        group = np.cumsum(new) - 1
        many = (np.bincount(group) >= 2)[group]
        gc, gk, detail = _grouped_detail(c[many], k[many], _text(p[many]), "pages ", ", ")
        pieces.append(_signal_table(gc, gk, SIGNAL_TWO_PAGES, detail))

    # page_published_twice
    t_ids = _ints(tracked["campaign_id"], "tracked campaign_id")
    t_page = _ints(tracked["page"], "tracked page")
    if len(rows) and tracked.num_rows:
        pairs = _Pairs(sorted_unique(np.concatenate([s_ids, t_ids])),
                       sorted_unique(np.concatenate([s_page, t_page])))
        pub, pub_n = np.unique(pairs.key(s_ids, s_page), return_counts=True)
        sent_rows = _ints(tracked["sent_count"], "sent_count") > 0
        rep, rep_n = np.unique(pairs.key(t_ids[sent_rows], t_page[sent_rows]),
                               return_counts=True)
        twice_pub, twice_rep = pub[pub_n >= 2], rep[rep_n >= 2]
        flagged = np.intersect1d(twice_pub, twice_rep, assume_unique=True)
        if len(flagged):
            # every contact of any publication of a flagged page (rare: looked up per page)
            sent_key = pairs.key(s_ids, s_page)
            at = np.minimum(np.searchsorted(flagged, sent_key), len(flagged) - 1)
            on = (flagged[at] == sent_key)[rows]
            c, k, p = _distinct(e_c[on], contacts[on], e_p[on])
            key = pairs.key(c, p)
            hit = np.ones(len(c), bool)
            n_pub = pub_n[np.searchsorted(pub, key[hit])]
            n_rep = rep_n[np.searchsorted(rep, key[hit])]
            what = pc.binary_join_element_wise(
                "page ", _text(p[hit]), " published ", _text(n_pub),
                " times, reported sent ", _text(n_rep), " times", "")
            gc, gk, detail = _grouped_detail(c[hit], k[hit], what, "", "; ")
            pieces.append(_signal_table(gc, gk, SIGNAL_PAGE_PUBLISHED_TWICE, detail))

    # attempts_sent
    if risky_contacts.num_rows:
        rc = _ints(risky_contacts["campaign_id"], "risky campaign_id")
        rk = _ints(risky_contacts["contact_id"], "risky contact_id")
        ra = _ints(risky_contacts["attempts"], "risky attempts")
        order = np.lexsort((-ra, rk, rc))
        rc, rk, ra = rc[order], rk[order], ra[order]
        first = np.ones(len(rc), bool)
        first[1:] = (rc[1:] != rc[:-1]) | (rk[1:] != rk[:-1])
        detail = pc.binary_join_element_wise("attempts ", _text(ra[first]), "")
        pieces.append(_signal_table(rc[first], rk[first], SIGNAL_ATTEMPTS_SENT, detail))

    if not pieces:
        return DOUBLE_SENDS_SCHEMA.empty_table()
    out = pa.concat_tables(pieces).combine_chunks()
    return out.sort_by([("campaign_id", "ascending"), ("contact_id", "ascending"),
                        ("signal", "ascending")])


# --- rollup events ----------------------------------------------------------------------

def channel_ids(channels: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``metrics.CHANNEL_IDS`` numbers of transport ids; any other channel is ``other``."""
    names = pa.array(list(CHANNEL_IDS), pa.string())
    nums = pa.array(list(CHANNEL_IDS.values()), pa.int64())
    at = nums.take(pc.index_in(_chunk(channels).cast(pa.string()), value_set=names))
    return np.asarray(pc.fill_null(at, OTHER_CHANNEL_ID).to_numpy(zero_copy_only=False),
                      np.int64)


def local_dates(instants_us: np.ndarray, tz: str) -> np.ndarray:
    """The local calendar date (days since 1970-01-01) of UTC instants in ``tz``, by the
    same local midnights as the partitions' windows (``core.partitions``): one
    ``ZoneInfo`` conversion per day spanned, a binary search per instant."""
    if len(instants_us) == 0:
        return np.zeros(0, np.int64)
    day_us = 86_400 * 1_000_000
    lo = int(instants_us.min() // day_us) - 2
    hi = int(instants_us.max() // day_us) + 2
    epoch = date(1970, 1, 1)
    days = np.arange(lo, hi + 1, dtype=np.int64)
    midnights = np.array([_instant_us(local_midnight_utc(epoch + timedelta(days=int(d)), tz))
                          for d in days], np.int64)
    return days[np.searchsorted(midnights, instants_us, side="right") - 1]


@dataclass
class _Reports:
    account_id: np.ndarray
    campaign_id: np.ndarray
    channel_id: np.ndarray
    date: np.ndarray  # days since the epoch
    sent: np.ndarray
    failed: np.ndarray


def _counted_reports(tracked: pa.Table, campaigns: pa.Table,
                     tz_of_account: Mapping[int, str]) -> _Reports:
    fr = first_reports(tracked)
    z = np.zeros(0, np.int64)
    if len(fr.rows) == 0 or campaigns.num_rows == 0:
        return _Reports(z, z, z, z, z, z)
    t_ids = _ints(tracked["campaign_id"], "tracked campaign_id")[fr.rows]
    at = pc.index_in(pa.array(t_ids), value_set=_chunk(campaigns["campaign_id"]))
    known = np.asarray(pc.is_valid(at).to_numpy(zero_copy_only=False), bool)
    where = pc.fill_null(at, 0)
    account = np.asarray(_chunk(campaigns["account_id"]).take(where)
                         .to_numpy(zero_copy_only=False), np.int64)
    channel = channel_ids(_chunk(campaigns["channel"]).take(where))
    accounts = np.unique(account[known])
    zones = np.array([tz_of_account.get(int(a)) or "" for a in accounts], dtype=object)
    tz = np.full(len(account), "", dtype=object)
    tz[known] = zones[np.searchsorted(accounts, account[known])]
    keep = known & (tz != "")
    day = np.zeros(len(account), np.int64)
    for zone in np.unique(tz[keep]):  # one pass per timezone
        rows = keep & (tz == zone)
        day[rows] = local_dates(fr.instant[rows], str(zone))
    sent = _ints(tracked["sent_count"], "sent_count")[fr.rows]
    failed = _ints(tracked["failed_count"], "failed_count")[fr.rows]
    if (sent < 0).any() or (failed < 0).any():
        raise ValueError("a negative sent_count or failed_count: the parser rejects them")
    return _Reports(account[keep], t_ids[keep], channel[keep], day[keep], sent[keep],
                    failed[keep])


_EVENT_NAMES = pa.array([PAGES_TRACKED, SENT, FAILED], pa.string())


def _events(r: _Reports, lo: int, hi: int) -> pa.Table:
    """Three events per page: pages tracked (value 0), sent and failed (their counts)."""
    idx = np.arange(lo, hi)
    which = np.concatenate([idx, idx, idx])
    code = np.repeat(np.arange(3, dtype=np.int64), len(idx))
    value = np.concatenate([np.zeros(len(idx)), r.sent[lo:hi].astype(np.float64),
                            r.failed[lo:hi].astype(np.float64)])
    return pa.Table.from_arrays([
        _EVENT_NAMES.take(pa.array(code)), pa.array(r.account_id[which]),
        pa.array(r.campaign_id[which]), pa.array(r.channel_id[which]),
        pa.array(r.date[which].astype(np.int32), pa.int32()).cast(pa.date32()),
        pa.array(value), pa.array(np.zeros(len(which)))], schema=ROLLUP_EVENTS_SCHEMA)


def rollup_event_batches(tracked: pa.Table, campaigns: pa.Table,
                         tz_of_account: Mapping[int, str],
                         max_rows: int = 1_000_000) -> Iterator[pa.Table]:
    """``rollup_events`` in tables of at most ``max_rows`` events (three per page)."""
    r = _counted_reports(tracked, campaigns, tz_of_account)
    if len(r.sent) == 0:
        return
    weight = np.cumsum(np.full(len(r.sent), 3))
    lo = 0
    while lo < len(weight):
        base = weight[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(weight, base + max_rows, side="right")), lo + 1)
        yield _events(r, lo, hi)
        lo = hi


def rollup_events(tracked: pa.Table, campaigns: pa.Table,
                  tz_of_account: Mapping[int, str]) -> pa.Table:
    """The events the campaign metrics count (ROLLUP_EVENTS_SCHEMA: the columns core's
    ``RollupAccumulator`` takes, plus the local ``date`` each belongs to): per tracked page,
    by its first report, one ``campaign_pages_tracked`` event and one ``campaign_sent`` and
    one ``campaign_failed`` event whose value is ``sent_count`` / ``failed_count``, on the local
    date of the report's instant (``message_instants``: ``published_at`` when set, clamped
    to ``received_at``) in its account's timezone ``tz_of_account[account_id]``.

    Channels are ``metrics.CHANNEL_IDS`` numbers. Reports of a campaign not in
    ``campaigns`` (no account) or of an account without a timezone in ``tz_of_account`` are
    not events of any partition and are left out.
    """
    batches = list(rollup_event_batches(tracked, campaigns, tz_of_account, 1 << 62))
    if not batches:
        return ROLLUP_EVENTS_SCHEMA.empty_table()
    return pa.concat_tables(batches).combine_chunks()


# --- warehouse --------------------------------------------------------------------------

@dataclass
class ProgressWrite:
    campaigns: int  # progress rows written
    double_sends: int  # double-send rows written
    progress_replaced: int  # rows deleted first
    double_sends_replaced: int


def _naive(table: pa.Table) -> pa.Table:
    """Timestamps as naive UTC, the warehouse's DateTime columns."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type) and f.type.tz is not None:
            utc_us = table[f.name].cast(_ts).cast(pa.int64())
            table = table.set_column(i, f.name, utc_us.cast(pa.timestamp("us")))
    return table


def _lock_progress(conn: sa.Connection) -> None:
    """Serialize progress writers on PostgreSQL (SQLite serializes write transactions):
    two refreshes of one campaign would otherwise both delete, then both insert."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(b"campaign_progress", digest_size=8).digest()
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(
        int.from_bytes(digest, "big", signed=True))))


def with_double_sends(progress: pa.Table, double_sends: pa.Table) -> pa.Table:
    """``progress`` with its ``double_sends`` column counted from ``double_sends``."""
    ids = _ints(progress["campaign_id"], "progress campaign_id")
    counts = np.zeros(len(ids), np.int64)
    if double_sends.num_rows and len(ids):
        dc, _ = _distinct(_ints(double_sends["campaign_id"], "double sends campaign_id"),
                          _ints(double_sends["contact_id"], "double sends contact_id"))
        order = np.argsort(ids, kind="stable")
        pos = np.minimum(np.searchsorted(ids[order], dc), len(ids) - 1)
        inside = ids[order][pos] == dc
        np.add.at(counts, order[pos[inside]], 1)
    i = progress.schema.get_field_index("double_sends")
    return progress.set_column(i, "double_sends", pa.array(counts, pa.int64()))


class ConcurrentRefresh(RuntimeError):
    """Another refresh recorded parsed files after this one listed them: what this one
    computed may predate them, so it must not be written (it is computed again)."""


def write_progress(engine: Engine, progress: pa.Table, double_sends: pa.Table,
                   files: Sequence[tuple[str, date]] = (),
                   forget_before: date | None = None,
                   stuck: pa.Table | None = None,
                   seen_files: set[str] | None = None) -> ProgressWrite:
    """Replace the rows of the refreshed campaigns (those of ``progress``) in
    ``campaign_progress`` and ``campaign_double_sends`` in one transaction; rows of other
    campaigns are untouched. ``progress.double_sends`` is recounted from ``double_sends``,
    whose campaigns must all be refreshed ones. In the same transaction: ``stuck``
    (campaign_id, stuck, stuck_pages) updates those columns of other campaigns' stored
    rows; ``files`` (path, UTC date) are recorded as taken in by this refresh, and the
    records of files dated before ``forget_before`` dropped. ``seen_files``: the records
    the refresh started from; if another refresh has recorded more since, nothing is
    written and ``ConcurrentRefresh`` is raised (the writes are serialized, so the check
    and the write are atomic together)."""
    ids = sorted({int(i) for i in _ints(progress["campaign_id"], "progress campaign_id")})
    if len(ids) != progress.num_rows:
        raise ValueError("campaign_progress rows repeat a campaign")
    if double_sends.num_rows:
        stray = pc.invert(pc.is_in(double_sends["campaign_id"], pa.array(ids, pa.int64())))
        if pc.any(stray).as_py():
            raise ValueError("double sends of campaigns outside the refreshed progress rows")
    now_naive = wh.utc_now_naive()
    now = pa.scalar(now_naive, pa.timestamp("us"))
    progress = with_double_sends(progress, double_sends)
    rows = _naive(progress.append_column(
        "updated_at", pa.repeat(now, progress.num_rows)))
    doubles = double_sends.select(DOUBLE_SENDS_SCHEMA.names).append_column(
        "updated_at", pa.repeat(now, double_sends.num_rows))
    p, d = contract.campaign_progress, contract.campaign_double_sends
    f = contract.campaign_progress_files
    out = ProgressWrite(progress.num_rows, double_sends.num_rows, 0, 0)
    with engine.begin() as conn:
        _lock_progress(conn)
        if seen_files is not None:
            now_recorded = {r[0] for r in conn.execute(sa.select(f.c.path))}
            if now_recorded - seen_files:
                raise ConcurrentRefresh(f"{len(now_recorded - seen_files)} parsed file(s) "
                                        "were taken in by another refresh meanwhile")
        for lo in range(0, len(ids), wh.ID_CHUNK):
            chunk = ids[lo:lo + wh.ID_CHUNK]
            out.progress_replaced += conn.execute(
                p.delete().where(p.c.campaign_id.in_(chunk))).rowcount or 0
            out.double_sends_replaced += conn.execute(
                d.delete().where(d.c.campaign_id.in_(chunk))).rowcount or 0
        wh.insert_arrow(conn, p, rows.select([c.name for c in p.columns]))
        wh.insert_arrow(conn, d, doubles.select([c.name for c in d.columns]))
        if stuck is not None and stuck.num_rows:
            conn.execute(p.update().where(p.c.campaign_id == sa.bindparam("cid")).values(
                stuck=sa.bindparam("s"), stuck_pages=sa.bindparam("n"),
                updated_at=now_naive), [
                {"cid": int(c), "s": bool(b), "n": int(n)} for c, b, n in zip(
                    stuck["campaign_id"].to_pylist(), stuck["stuck"].to_pylist(),
                    stuck["stuck_pages"].to_pylist(), strict=True)])
        if forget_before is not None:
            conn.execute(f.delete().where(f.c.day < forget_before))
        if files:
            stmt = wh.upsert_insert(conn, f).on_conflict_do_nothing(index_elements=["path"])
            conn.execute(stmt, [{"path": path, "day": day, "refreshed_at": now_naive}
                                for path, day in files])
    return out


def refreshed_files(engine: Engine) -> set[str]:
    """The parsed message files earlier refreshes took in."""
    f = contract.campaign_progress_files
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.select(f.c.path))}


def open_campaigns(engine: Engine) -> np.ndarray:
    """The campaigns whose stored progress is not completed (sorted ids)."""
    p = contract.campaign_progress
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sa.select(p.c.campaign_id).where(
            p.c.completed.is_(False)))]
    return sorted_unique(np.asarray(ids, np.int64))


def _read_rows(engine: Engine, table: sa.Table, ids: Sequence[int],
               schema: pa.Schema) -> pa.Table:
    """``table``'s rows of the campaigns ``ids`` as ``schema`` (its timestamps UTC)."""
    names = schema.names
    cols = [table.c[n] for n in names]
    rows: list[tuple] = []
    with engine.connect() as conn:
        for lo in range(0, len(ids), wh.ID_CHUNK):
            rows += conn.execute(sa.select(*cols).where(
                table.c.campaign_id.in_(ids[lo:lo + wh.ID_CHUNK]))
                .order_by(*[table.c[k.name] for k in table.primary_key])).all()
    data = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    arrays = []
    for f, values in zip(schema, data, strict=True):
        if pa.types.is_timestamp(f.type):
            arrays.append(pc.assume_timezone(pa.array(values, pa.timestamp("us")), "UTC"))
        else:
            arrays.append(pa.array(values, f.type))
    out = pa.Table.from_arrays(arrays, schema=schema)
    return out.sort_by([(k.name, "ascending") for k in table.primary_key])


def stored_progress(engine: Engine, campaign_ids: Sequence[int]) -> tuple[pa.Table, pa.Table]:
    """(PROGRESS_SCHEMA, DOUBLE_SENDS_SCHEMA) rows stored for ``campaign_ids``, in campaign
    (then contact, signal) order: what the checks look at after a refresh that recomputed
    only some of them."""
    ids = sorted({int(i) for i in campaign_ids})
    return (_read_rows(engine, contract.campaign_progress, ids, PROGRESS_SCHEMA),
            _read_rows(engine, contract.campaign_double_sends, ids, DOUBLE_SENDS_SCHEMA))


# --- checks -----------------------------------------------------------------------------

def _where(progress: pa.Table, mask: pa.Array, cols: list[str]) -> list[dict]:
    return progress.filter(mask).select(cols).to_pylist()  # the failing campaigns only


def progress_checks(progress: pa.Table, double_sends: pa.Table) -> dict[str, list[str]]:
    """Check name → the problems found (empty: the check passes); severities in
    ``CHECK_SEVERITY``:

    - ``campaigns_not_stuck`` (WARN): no published page waits for its report;
    - ``no_double_sends`` (ERROR): no contact found by any double-send signal;
    - ``tracked_counts_agree_with_contacts`` (ERROR): a completed campaign's tracked sent
      and failed counts equal its contacts' SENT and FAILED statuses;
    - ``reported_within_audience`` (ERROR): sent + failed ≤ audience (a campaign unknown
      to the application database is measured against its inferred audience, and said so).
    """
    out: dict[str, list[str]] = {name: [] for name in CHECK_SEVERITY}
    for r in _where(progress, pc.equal(progress["stuck"], True),
                    ["campaign_id", "stuck_pages", "pages_published", "pages_tracked"]):
        out[CHECK_NOT_STUCK].append(
            f"campaign {r['campaign_id']}: {r['stuck_pages']} published page(s) without a "
            f"report ({r['pages_tracked']} of {r['pages_published']} published pages "
            "tracked)")
    if double_sends.num_rows:
        g = double_sends.group_by(["campaign_id", "signal"], use_threads=False).aggregate(
            [("contact_id", "count_distinct")]).sort_by(
            [("campaign_id", "ascending"), ("signal", "ascending")])
        by_campaign: dict[int, list[str]] = {}
        for r in g.to_pylist():  # one row per campaign and signal
            by_campaign.setdefault(r["campaign_id"], []).append(
                f"{r['signal']} {r['contact_id_count_distinct']}")
        for c, parts in by_campaign.items():
            out[CHECK_NO_DOUBLE_SENDS].append(
                f"campaign {c}: contacts possibly sent twice ({', '.join(parts)})")
    disagree = pc.and_(progress["completed"], pc.greater(progress["status_disagreement"], 0))
    for r in _where(progress, disagree, ["campaign_id", "sent", "failed", "contacts_sent",
                                         "contacts_failed"]):
        out[CHECK_COUNTS_AGREE].append(
            f"campaign {r['campaign_id']}: tracked {r['sent']} sent / {r['failed']} failed, "
            f"contacts {r['contacts_sent']} SENT / {r['contacts_failed']} FAILED")
    over = pc.greater(pc.add(progress["sent"], progress["failed"]), progress["audience"])
    for r in _where(progress, over, ["campaign_id", "account_id", "sent", "failed",
                                     "audience"]):
        inferred = (" (not in the application's campaigns: its audience may be inferred "
                    "from its pages)" if r["account_id"] == UNKNOWN_ACCOUNT else "")
        out[CHECK_WITHIN_AUDIENCE].append(
            f"campaign {r['campaign_id']}: {r['sent']} sent + {r['failed']} failed > "
            f"audience {r['audience']}{inferred}")
    return out
