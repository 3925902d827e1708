"""The campaign source's reads of the application database (``campaigns``,
``campaign_contacts``): rows read as stored (SQLite as bytes, PostgreSQL natively) and
converted strictly in Arrow (``core.coerce``).

``campaign_contacts`` can hold tens of millions of rows: it is only ever read aggregated in
SQL (one row per campaign and status) or filtered to its few suspicious rows (contacts
sent after more than one attempt), never row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from analytics_pipeline.campaigns.contract import (
    CHANNELS,
    CONTACT_STATUSES,
    src_campaign_contacts,
    src_campaigns,
)
from analytics_pipeline.core.coerce import to_int64, to_text
from analytics_pipeline.core.sources import (
    _ids_match,
    arrow_session,
    columns_as_stored,
    inspect_table,
    inspect_tables,
)
from analytics_pipeline.core.warehouse import ID_CHUNK, normalize_url

OTHER_CHANNEL = "other"

# Campaigns as read: one row per campaign id.
CAMPAIGNS_SCHEMA = pa.schema([
    pa.field("campaign_id", pa.int64()),
    pa.field("account_id", pa.int64()),
    pa.field("name", pa.string()),
    pa.field("channel", pa.string()),  # the transport id (``channel_names``)
    pa.field("status", pa.string()),
])

# Per campaign: its contacts (every row of ``campaign_contacts``, whatever its status) and
# those of each known status.
CONTACT_COUNTS_SCHEMA = pa.schema([
    pa.field("campaign_id", pa.int64()),
    pa.field("audience", pa.int64()),
    pa.field("contacts_pending", pa.int64()),
    pa.field("contacts_sent", pa.int64()),
    pa.field("contacts_failed", pa.int64()),
])

# Contacts the application marked SENT after more than one attempt.
RISKY_CONTACTS_SCHEMA = pa.schema([
    pa.field("campaign_id", pa.int64()),
    pa.field("contact_id", pa.int64()),
    pa.field("attempts", pa.int64()),
])

_CHANNEL_CLASSES = pa.array(list(CHANNELS), pa.string())
_CHANNEL_IDS = pa.array(list(CHANNELS.values()), pa.string())
_CLASS = r"^Channel::[A-Za-z0-9_]+$"


def channel_names(channel_type: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The application's channel classes as transport ids: the ones ``CHANNELS`` names as
    it says, any other ``Channel::Xyz`` as ``xyz`` (lower-cased), anything else (null,
    empty, not a channel class) as ``other``."""
    arr = _chunk(channel_type)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string()) if not pa.types.is_null(arr.type) else \
            pa.nulls(len(arr), pa.string())
    arr = arr.cast(pa.string())
    known = _CHANNEL_IDS.take(pc.index_in(arr, value_set=_CHANNEL_CLASSES))
    is_class = pc.fill_null(pc.match_substring_regex(arr, _CLASS), False)
    lowered = pc.utf8_lower(pc.replace_substring_regex(arr, r"^Channel::", ""))
    other = pa.scalar(OTHER_CHANNEL, pa.string())
    return pc.coalesce(known, pc.if_else(is_class, lowered, other))


def _chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.Array):
        return col
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _count(mask: pa.Array, weights: pa.Array | None = None) -> int:
    m = np.asarray(pc.fill_null(mask, True).to_numpy(zero_copy_only=False), bool)
    if weights is None:
        return int(np.count_nonzero(m))
    w = np.asarray(weights.to_numpy(zero_copy_only=False), np.int64)
    return int(w[m].sum())


def _add(problems: dict[str, int], reason: str, n: int) -> None:
    if n:
        problems[reason] = problems.get(reason, 0) + n


@dataclass
class SourceRead:
    """What a read returned, and the source rows it could not use (reason → rows)."""

    table: pa.Table
    problems: dict[str, int] = field(default_factory=dict)


def convert_campaigns(t: pa.Table) -> SourceRead:
    """``campaigns`` rows as read → CAMPAIGNS_SCHEMA. A row whose id or account id is not
    an exact integer is not a campaign; neither are the rows of an id that occurs twice
    (which one is right cannot be told). A name, channel class or status that is not valid
    UTF-8, or holds a NUL byte, is dropped (null; the channel is then ``other``) and the
    campaign kept. Every such row is counted in ``problems``."""
    problems: dict[str, int] = {}
    if t.num_rows == 0:
        return SourceRead(CAMPAIGNS_SCHEMA.empty_table(), problems)
    ids, bad_id = to_int64(_chunk(t["id"]))
    account, bad_account = to_int64(_chunk(t["account_id"]))
    texts = {}
    for c in ("name", "channel_type", "status"):
        value, bad_utf8, nul = to_text(_chunk(t[c]))
        bad = pc.or_(bad_utf8, nul)
        _add(problems, f"{c} is not valid text (dropped)", _count(bad))
        texts[c] = pc.if_else(bad, pa.nulls(len(value), pa.string()), value)
    no_id = pc.or_(pc.fill_null(bad_id, True), pc.is_null(ids))
    no_account = pc.and_(pc.invert(no_id),
                         pc.or_(pc.fill_null(bad_account, True), pc.is_null(account)))
    _add(problems, "campaign id is not an integer", _count(no_id))
    _add(problems, "account id is not an integer", _count(no_account))
    usable = pc.invert(pc.or_(no_id, no_account))
    counts = pc.value_counts(ids.filter(usable))
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    dup = pc.and_(usable, pc.is_in(ids, value_set=repeated))
    _add(problems, "duplicate campaign id", _count(dup))
    keep = pc.and_(usable, pc.invert(dup))
    out = pa.Table.from_arrays(
        [ids, account, texts["name"], channel_names(texts["channel_type"]), texts["status"]],
        schema=CAMPAIGNS_SCHEMA).filter(keep)
    return SourceRead(out.sort_by("campaign_id"), problems)


def convert_contact_counts(t: pa.Table) -> SourceRead:
    """Rows of (campaign_id, status, n) as aggregated in SQL → CONTACT_COUNTS_SCHEMA, one row
    per campaign. Groups whose campaign id is not an exact integer are counted in
    ``problems`` and dropped; contacts of a status other than PENDING, SENT or FAILED
    belong to the audience but to no status column, and are counted in ``problems``."""
    problems: dict[str, int] = {}
    if t.num_rows == 0:
        return SourceRead(CONTACT_COUNTS_SCHEMA.empty_table(), problems)
    n = pc.fill_null(to_int64(_chunk(t["n"]))[0], 0)  # a count(*): always an integer
    ids, bad_id = to_int64(_chunk(t["campaign_id"]))
    status, bad_utf8, nul = to_text(_chunk(t["status"]))
    no_id = pc.or_(pc.fill_null(bad_id, True), pc.is_null(ids))
    _add(problems, "contact's campaign id is not an integer", _count(no_id, n))
    known = pc.fill_null(pc.is_in(status, value_set=pa.array(CONTACT_STATUSES)), False)
    known = pc.and_(known, pc.invert(pc.or_(bad_utf8, nul)))
    _add(problems, "contact status unknown", _count(
        pc.and_(pc.invert(known), pc.invert(no_id)), n))
    zero = pa.scalar(0, pa.int64())
    g = pa.table({
        "campaign_id": ids, "audience": n,
        **{f"contacts_{s.lower()}": pc.if_else(pc.and_(known, pc.equal(status, s)), n, zero)
           for s in CONTACT_STATUSES},
    }).filter(pc.invert(no_id))
    counted = CONTACT_COUNTS_SCHEMA.names[1:]
    agg = g.group_by("campaign_id", use_threads=False).aggregate([(c, "sum") for c in counted])
    out = pa.Table.from_arrays(
        [agg["campaign_id"], *[pc.cast(agg[f"{c}_sum"], pa.int64()) for c in counted]],
        schema=CONTACT_COUNTS_SCHEMA)
    return SourceRead(out.sort_by("campaign_id"), problems)


def convert_risky_contacts(t: pa.Table) -> SourceRead:
    """Rows of (campaign_id, contact_id, attempts, status) as read, filtered loosely in SQL →
    RISKY_CONTACTS_SCHEMA: the contacts whose status is exactly SENT after more than one
    attempt, ids and attempts exact integers (rows the SQL filter let through that are not
    are counted in ``problems``). One row per (campaign, contact): the largest attempts."""
    problems: dict[str, int] = {}
    if t.num_rows == 0:
        return SourceRead(RISKY_CONTACTS_SCHEMA.empty_table(), problems)
    campaign, bad_c = to_int64(_chunk(t["campaign_id"]))
    contact, bad_k = to_int64(_chunk(t["contact_id"]))
    attempts, bad_a = to_int64(_chunk(t["attempts"]))
    status, _, _ = to_text(_chunk(t["status"]))
    bad_ids = pc.or_(pc.or_(pc.fill_null(bad_c, True), pc.fill_null(bad_k, True)),
                     pc.or_(pc.is_null(campaign), pc.is_null(contact)))
    _add(problems, "contact's campaign or contact id is not an integer", _count(bad_ids))
    bad_attempts = pc.and_(pc.invert(bad_ids),
                           pc.or_(pc.fill_null(bad_a, True), pc.is_null(attempts)))
    _add(problems, "contact's attempts is not an integer", _count(bad_attempts))
    keep = pc.and_(pc.invert(pc.or_(bad_ids, bad_attempts)),
                   pc.and_(pc.fill_null(pc.greater(attempts, 1), False),
                           pc.fill_null(pc.equal(status, "SENT"), False)))
    t = pa.table({"campaign_id": campaign, "contact_id": contact,
                  "attempts": attempts}).filter(keep)
    agg = t.group_by(["campaign_id", "contact_id"], use_threads=False).aggregate(
        [("attempts", "max")]).rename_columns(RISKY_CONTACTS_SCHEMA.names)
    return SourceRead(agg.cast(RISKY_CONTACTS_SCHEMA).sort_by(
        [("campaign_id", "ascending"), ("contact_id", "ascending")]), problems)


def _attempts_over_one(col: sa.ColumnElement, kind: str) -> sa.ColumnElement | None:
    """A condition every contact with exactly-integer attempts > 1 meets (a superset: the
    conversion decides), or None when the column's type allows no cheap superset."""
    if kind in ("int", "float"):
        return col > 1
    if kind == "loose":  # SQLite: whatever was stored; CAST parses a leading integer
        return sa.cast(col, sa.Integer) > 1
    if kind == "text":  # canonical positive integers other than 1
        return sa.and_(col.op("~")(r"^[1-9][0-9]*$"), col != "1")
    return None


def _status_is_sent(col: sa.ColumnElement, kind: str) -> sa.ColumnElement | None:
    if kind == "text":
        return col == "SENT"
    if kind == "loose":
        return sa.cast(col, sa.Text) == "SENT"
    return None


@dataclass
class CampaignSource:
    """``campaigns`` and ``campaign_contacts`` of the application database. Every read
    takes the campaigns to read (None: all of them)."""

    url: str
    # each table's column kinds, inspected once per source (a refresh reads three times)
    _kinds: dict[str, dict[str, str]] = field(default_factory=dict, init=False, repr=False,
                                              compare=False)

    _run: Callable | None = field(default=None, init=False, repr=False, compare=False)

    def kinds(self, table: str) -> dict[str, str]:
        if table not in self._kinds:
            self._kinds[table] = inspect_table(normalize_url(self.url), table).kinds
        return self._kinds[table]

    @contextmanager
    def session(self, inspect: bool = True) -> Iterator[CampaignSource]:
        """Reads inside share one connection, and (``inspect``) both tables are inspected
        at once: a progress refresh makes three small reads, and connections cost tens of
        milliseconds each."""
        url = normalize_url(self.url)
        missing = [t for t in ("campaigns", "campaign_contacts") if t not in self._kinds]
        if inspect and missing:
            self._kinds.update({t: v.kinds for t, v in inspect_tables(url, missing).items()})
        if self._run is not None:  # inside an open session: share it
            yield self
            return
        with arrow_session(url) as run:
            self._run = run
            try:
                yield self
            finally:
                self._run = None

    def progress_reads(self, campaign_ids: Sequence[int]
                       ) -> tuple[SourceRead, SourceRead, SourceRead]:
        """``campaigns``, ``contact_counts`` and ``risky_contacts`` of ``campaign_ids``; the
        two reads of ``campaign_contacts`` (each a scan of the campaigns' contacts) run at
        the same time on two connections, so the database scans on two cores."""
        with self.session():
            campaigns = self.campaigns(campaign_ids)
        other = CampaignSource(self.url)
        other._kinds.update(self._kinds)
        with ThreadPoolExecutor(max_workers=1) as pool:
            risky = pool.submit(other.risky_contacts, campaign_ids)
            counts = self.contact_counts(campaign_ids)
            return campaigns, counts, risky.result()

    def _chunks(self, campaign_ids: Sequence[int] | None) -> list[list[int] | None]:
        if campaign_ids is None:
            return [None]
        ids = sorted({int(i) for i in campaign_ids})
        return [ids[i:i + ID_CHUNK] for i in range(0, len(ids), ID_CHUNK)]

    def _read(self, queries: list[sa.Select]) -> pa.Table | None:
        if self._run is None:
            with self.session(inspect=False):
                return self._read(queries)
        tables = []
        for q in queries:
            tables.extend(pa.Table.from_batches([b]) for b in self._run(q) if b.num_rows)
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive").combine_chunks()

    def campaigns(self, campaign_ids: Sequence[int] | None = None) -> SourceRead:
        """The campaigns (CAMPAIGNS_SCHEMA), see ``convert_campaigns``."""
        url = normalize_url(self.url)
        kinds = self.kinds("campaigns")
        c = src_campaigns.c
        cols = columns_as_stored(src_campaigns, ["id", "account_id", "name", "channel_type",
                                                 "status"], url.get_backend_name())
        queries = [sa.select(*cols) if chunk is None else
                   sa.select(*cols).where(_ids_match(c.id, kinds["id"], chunk))
                   for chunk in self._chunks(campaign_ids)]
        t = self._read(queries)
        return convert_campaigns(t) if t is not None else \
            SourceRead(CAMPAIGNS_SCHEMA.empty_table())

    def contact_counts(self, campaign_ids: Sequence[int] | None = None) -> SourceRead:
        """Contacts per campaign and status (CONTACT_COUNTS_SCHEMA), counted in SQL: one
        row per campaign and stored status comes back, however many contacts."""
        url = normalize_url(self.url)
        kinds = self.kinds("campaign_contacts")
        k = src_campaign_contacts.c
        campaign, status = columns_as_stored(src_campaign_contacts, ["campaign_id", "status"],
                                             url.get_backend_name())
        base = sa.select(campaign, status, sa.func.count().label("n"))
        queries = []
        for chunk in self._chunks(campaign_ids):
            q = base if chunk is None else base.where(
                _ids_match(k.campaign_id, kinds["campaign_id"], chunk))
            queries.append(q.group_by(campaign, status))
        t = self._read(queries)
        return convert_contact_counts(t) if t is not None else \
            SourceRead(CONTACT_COUNTS_SCHEMA.empty_table())

    def risky_contacts(self, campaign_ids: Sequence[int] | None = None) -> SourceRead:
        """Contacts SENT after more than one attempt (RISKY_CONTACTS_SCHEMA): filtered in SQL
        (loosely, as the column's type allows), then exactly in Arrow."""
        url = normalize_url(self.url)
        kinds = self.kinds("campaign_contacts")
        k = src_campaign_contacts.c
        cols = columns_as_stored(src_campaign_contacts,
                                 ["campaign_id", "contact_id", "attempts", "status"],
                                 url.get_backend_name())
        where = [w for w in (_attempts_over_one(k.attempts, kinds["attempts"]),
                             _status_is_sent(k.status, kinds["status"])) if w is not None]
        queries = []
        for chunk in self._chunks(campaign_ids):
            cond = list(where)
            if chunk is not None:
                cond.append(_ids_match(k.campaign_id, kinds["campaign_id"], chunk))
            queries.append(sa.select(*cols).where(*cond) if cond else sa.select(*cols))
        t = self._read(queries)
        return convert_risky_contacts(t) if t is not None else \
            SourceRead(RISKY_CONTACTS_SCHEMA.empty_table())
