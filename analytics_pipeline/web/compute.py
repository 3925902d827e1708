"""The web source's computations on Arrow tables, tested without Dagster or a database:
strict conversion of the rows as read, de-duplication by event id, validation (the first
failing rule is the row's ``invalid_reason``), the derived dimensions and the visits.

Everything is vectorized. Repeated strings (visitor, name, URL, referrer, user agent,
country) are dictionary-encoded as soon as they are read, and whatever is derived from
them (page, UTM parameters, referrer host, device/browser/OS, name and URL checks) is
computed once per *distinct* value and mapped back through the dictionary indices: the
only Python loops run over distinct user agents, distinct percent-encoded UTM values and
the (rare) invalid rows whose JSON payload is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from urllib.parse import unquote_plus

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ua_parser import parse

from analytics_pipeline.core.coerce import (
    decode_utf8,
    false_mask,
    first_failing_rule,
    to_int64,
    to_timestamp_utc,
)
from analytics_pipeline.core.landing import _hash64
from analytics_pipeline.core.sources import _printable
from analytics_pipeline.web.contract import (
    FUTURE_TOLERANCE_SECONDS,
    LANDED_WEB_SCHEMA,
    MAX_EVENT_NAME_LENGTH,
    REASON_FUTURE,
    REASON_INACTIVE_SITE,
    REASON_MISSING_ID,
    REASON_MISSING_VISITOR,
    REASON_NAME,
    REASON_OCCURRED_AT,
    REASON_UNKNOWN_SITE,
    REASON_URL,
    REASON_UTF8,
)

DEFAULT_SESSION_TIMEOUT_SECONDS = 1800

# the columns of ``web_events`` as read, in the order of the source contract
SOURCE_COLUMNS = ("id", "site_id", "visitor_id", "name", "url", "referrer", "user_agent",
                  "country", "occurred_at", "received_at")
# repeated values: kept dictionary-encoded from the read to the landing
_REPEATED = ("visitor_id", "name", "url", "referrer", "user_agent", "country")

_dict = pa.dictionary(pa.int32(), pa.string())
_ts = pa.timestamp("us", tz="UTC")

# A source row converted to its types, before validation. ``bad_*`` flag values that
# could not be converted exactly; ``raw`` holds the row as read (JSON) for those rows.
READ_WEB_SCHEMA = pa.schema([
    pa.field("event_id", pa.string()),
    pa.field("site_id", pa.int64()),
    *(pa.field(c, _dict) for c in _REPEATED),
    pa.field("occurred_at", _ts),
    pa.field("received_at", _ts),
    pa.field("bad_utf8", pa.bool_()),
    pa.field("bad_site_id", pa.bool_()),
    pa.field("bad_occurred_at", pa.bool_()),
    pa.field("raw", pa.string()),
])

SITES_SCHEMA = pa.schema([
    pa.field("id", pa.int64()),
    pa.field("account_id", pa.int64()),
    pa.field("domain", pa.string()),
    pa.field("active", pa.bool_()),
])

# An absolute http(s) URL with a host (userinfo and port allowed, IPv6 in brackets), and
# no whitespace or control character anywhere.
_URL = (r"^(?i:https?)://([^/?#@\s]*@)?([^/?#:@\[\]\s]+|\[[0-9A-Fa-f:.]+\])(:[0-9]*)?"
        r"([/?#]\S*)?$")
_CONTROL = r"[\x{00}-\x{1F}\x{7F}-\x{9F}]"
_PATH = r"^[^:]+://[^/?#]*(?P<path>[^?#]*)"
_QUERY = r"^[^?#]*\?(?P<query>[^#]*)"
# the host of any scheme://authority URL (a referrer may be android-app://, etc.)
_HOST = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#@]*@)?(?P<host>[^/?#:]+)"
_COUNTRY = r"^[A-Z]{2}$"


def _chunk(col: pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow mask as NumPy (null counts as False)."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _per_value(arr: pa.DictionaryArray, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``fn`` computed once per distinct value of ``arr``, mapped back to its rows (null
    rows stay null)."""
    return fn(arr.dictionary).take(arr.indices)


def _dict_of(values: pa.Array, indices: pa.Array) -> pa.DictionaryArray:
    """Per-row values of a computation over a dictionary, still dictionary-encoded: a
    null value nulls its rows' indices (the dictionary itself holds no null; it may
    repeat values, which decodes the same)."""
    if values.null_count:
        indices = pc.if_else(pc.is_valid(values.take(indices)), indices,
                             pa.nulls(len(indices), indices.type))
        values = pc.fill_null(values, "")
    return pa.DictionaryArray.from_arrays(indices, values)


def _encode(arr: pa.Array) -> pa.DictionaryArray:
    enc = arr.dictionary_encode()
    return enc.cast(_dict) if enc.type != _dict else enc


# --- conversion ------------------------------------------------------------------------


def convert_batch(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """One batch as read from the source (bytes from SQLite, native values from
    PostgreSQL) → READ_WEB_SCHEMA, converted strictly: a value that cannot be converted
    exactly becomes null and is flagged, and such rows carry their raw values as JSON."""
    t = (pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch)
    n = t.num_rows
    col = {c: _chunk(t[c]) for c in SOURCE_COLUMNS}
    bad_utf8 = false_mask(n)
    for c, arr in col.items():  # bytes (SQLite, bytea): decoded once, whatever the column
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            col[c], bad = decode_utf8(arr)
            bad_utf8 = pc.or_(bad_utf8, bad)
    out: dict[str, pa.Array] = {"event_id": decode_utf8(col["id"])[0]}
    out["site_id"], bad_site = to_int64(col["site_id"])
    for c in _REPEATED:
        out[c] = _encode(decode_utf8(col[c])[0])
    out["occurred_at"], bad_occurred = to_timestamp_utc(col["occurred_at"])
    out["received_at"], bad_received = to_timestamp_utc(col["received_at"])
    flagged = pc.or_(pc.or_(bad_utf8, bad_site), pc.or_(bad_occurred, bad_received))
    out.update(bad_utf8=bad_utf8, bad_site_id=bad_site, bad_occurred_at=bad_occurred,
               raw=_raw_json(t, flagged, SOURCE_COLUMNS))
    return pa.Table.from_arrays([out[f.name] for f in READ_WEB_SCHEMA], schema=READ_WEB_SCHEMA)


def _raw_json(t: pa.Table, rows: pa.Array, columns: tuple[str, ...],
              names: tuple[str, ...] | None = None) -> pa.Array:
    """The ``columns`` of the flagged rows as JSON (keys: ``names``, the source's column
    names), null elsewhere; only the flagged rows become Python objects."""
    n = t.num_rows
    idx = np.flatnonzero(_np(rows))
    if not len(idx):
        return pa.nulls(n, pa.string())
    picked = t.select(list(columns)).take(pa.array(idx)).to_pylist()
    keys = names or columns
    values = np.full(n, None, dtype=object)
    values[idx] = [json.dumps({k: _printable(r[c]) for k, c in zip(keys, columns,
                                                                 strict=True)},
                              default=str, sort_keys=True) for r in picked]
    return pa.array(values, pa.string())


def first_of_each_id(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Mask of the rows to keep: the first row of each event id (null ids always pass,
    for the validation to reject). Ids are hashed to 64 bits (8 bytes per row, no hash
    table of strings); only rows whose hash repeats are compared as strings, so a hash
    collision never drops a distinct event."""
    ids = _chunk(ids) if isinstance(ids, pa.ChunkedArray) else ids
    return _first_of_each_hash(_hash64(ids), ids)


def _first_of_each_hash(h: np.ndarray, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``first_of_each_id`` given the ids' hashes ``h`` (hashed batch by batch, so that
    the ids are never copied whole); ``ids`` may be chunked."""
    n = len(h)
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    order = np.argsort(h, kind="stable")
    hs = h[order]
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = hs[1:] == hs[:-1]
    del hs
    repeat[:-1] |= repeat[1:]  # every member of a run of equal hashes
    candidates = order[repeat]
    del order, repeat
    candidates = np.sort(candidates[_np(pc.is_valid(ids))[candidates]])
    if not len(candidates):
        return keep
    rows = pa.table({"id": ids.take(pa.array(candidates)),
                     "row": pa.array(candidates, pa.int64())})
    first = rows.group_by("id", use_threads=False).aggregate([("row", "min")])["row_min"]
    keep[candidates] = False
    keep[_chunk(first).to_numpy()] = True
    return keep


def concat_read(tables: list[pa.Table]) -> pa.Table:
    """Converted batches as one table, one chunk, dictionaries unified."""
    if not tables:
        return READ_WEB_SCHEMA.empty_table()
    return pa.concat_tables(tables).combine_chunks()


# --- validation --------------------------------------------------------------------------


def _texts_bad_name(values: pa.Array) -> pa.Array:
    length = pc.utf8_length(values)
    return pc.or_(pc.or_(pc.equal(length, 0), pc.greater(length, MAX_EVENT_NAME_LENGTH)),
                  pc.match_substring_regex(values, _CONTROL))


def _empty_or_control(values: pa.Array) -> pa.Array:
    return pc.or_(pc.equal(pc.utf8_length(values), 0),
                  pc.match_substring_regex(values, _CONTROL))


def validate(events: pa.Table, sites: pa.Table) -> tuple[pa.Array, pa.Array]:
    """(invalid_reason, account_id) per row of a READ_WEB_SCHEMA table: the first rule
    the row breaks, in the contract's order; ``sites`` (SITES_SCHEMA) are the sites the
    partition may hold, i.e. of accounts of the snapshot, so any other site is unknown.

    A visitor id with a control character (NUL included) counts as missing: it cannot be
    stored as an id (PostgreSQL text holds no NUL).
    """
    n = events.num_rows
    site_id = _chunk(events["site_id"])
    at = pc.index_in(site_id, value_set=sites["id"])
    account_id = _chunk(sites["account_id"]).take(at)
    active = _chunk(sites["active"]).take(at)
    event_id = _chunk(events["event_id"])
    occurred, received = _chunk(events["occurred_at"]), _chunk(events["received_at"])
    tolerance = pa.scalar(FUTURE_TOLERANCE_SECONDS * 1_000_000, pa.duration("us"))
    late_bound = pc.add(received, tolerance)
    rules = [
        (REASON_UTF8, _chunk(events["bad_utf8"])),
        (REASON_MISSING_ID, pc.or_kleene(pc.is_null(event_id),
                                         pc.equal(pc.utf8_length(event_id), 0))),
        (REASON_UNKNOWN_SITE, pc.or_(_chunk(events["bad_site_id"]), pc.is_null(at))),
        (REASON_INACTIVE_SITE, pc.invert(active)),
        (REASON_MISSING_VISITOR, pc.fill_null(
            _per_value(_chunk(events["visitor_id"]), _empty_or_control), True)),
        (REASON_OCCURRED_AT, pc.or_(_chunk(events["bad_occurred_at"]), pc.is_null(occurred))),
        (REASON_FUTURE, pc.greater(occurred, late_bound)),
        (REASON_NAME, pc.fill_null(_per_value(_chunk(events["name"]), _texts_bad_name), True)),
        (REASON_URL, pc.invert(pc.fill_null(
            _per_value(_chunk(events["url"]),
                       lambda v: pc.match_substring_regex(v, _URL)), False))),
    ]
    return first_failing_rule(rules, n), account_id


# --- derived dimensions -----------------------------------------------------------------


def _field(values: pa.Array, pattern: str, name: str) -> pa.Array:
    """Group ``name`` of ``pattern`` per value (null where it does not match)."""
    found = pc.extract_regex(values, pattern)
    return pc.if_else(pc.is_valid(found), pc.struct_field(found, name),
                      pa.nulls(len(values), pa.string()))


def page_of(urls: pa.Array) -> pa.Array:
    """The URL's path without query string or fragment; "/" when empty."""
    path = _field(urls, _PATH, "path")
    return pc.if_else(pc.equal(path, ""), "/", path)


def _decode_percent(values: pa.Array) -> pa.Array:
    """Percent-decoding (``+`` as a space) of the values that need it; invalid UTF-8 in
    the decoded bytes becomes U+FFFD. Called on distinct values."""
    needs = _np(pc.match_substring_regex(values, r"[%+]"))
    if not needs.any():
        return values
    out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)
    out[needs] = [unquote_plus(v, errors="replace") for v in out[needs]]
    return pa.array(out, pa.string())


def utm_of(urls: pa.Array, parameter: str) -> pa.Array:
    """The first value of ``parameter`` in the URL's query string, percent-decoded;
    null when missing or empty."""
    query = _field(urls, _QUERY, "query")
    value = _field(query, rf"(?:^|&){parameter}=(?P<v>[^&]*)", "v")
    value = pc.if_else(pc.equal(value, ""), pa.nulls(len(value), pa.string()), value)
    if value.null_count == len(value):
        return value
    distinct = _encode(value)
    return _decode_percent(distinct.dictionary).take(distinct.indices)


def referrer_host(referrers: pa.Array) -> pa.Array:
    """The referrer URL's host, lower-cased, without a leading ``www.``; null when the
    referrer is missing or has no host."""
    host = pc.utf8_lower(_field(referrers, _HOST, "host"))
    host = pc.replace_substring_regex(host, r"^www\.", "")
    return pc.if_else(pc.equal(host, ""), pa.nulls(len(host), pa.string()), host)


def external_referrer(hosts: pa.DictionaryArray, site_domains: pa.Array,
                      ) -> pa.DictionaryArray:
    """``hosts`` (per row) with self-referrals nulled: a host that is the row's site
    domain (``www.`` or not) or a subdomain of it is direct traffic. Evaluated once per
    distinct (host, domain) pair."""
    if not len(hosts) or not len(hosts.dictionary):
        return hosts
    domains = _encode(pc.replace_substring_regex(pc.utf8_lower(site_domains), r"^www\.", ""))
    if not len(domains.dictionary):
        return hosts
    width = len(domains.dictionary) + 1
    h = np.asarray(pc.fill_null(hosts.indices, -1).to_numpy(), dtype=np.int64) + 1
    d = np.asarray(pc.fill_null(domains.indices, -1).to_numpy(), dtype=np.int64) + 1
    pairs, inverse = np.unique(h * width + d, return_inverse=True)
    ph, pd = pairs // width - 1, pairs % width - 1
    host = hosts.dictionary.take(pa.array(np.maximum(ph, 0)))
    own = np.zeros(len(pairs), dtype=bool)
    for d_at in np.unique(pd[pd >= 0]):  # per distinct site domain: a loop over sites
        of = np.flatnonzero(pd == d_at)
        name = domains.dictionary[int(d_at)].as_py()
        h = host.take(pa.array(of))
        own[of] = _np(pc.or_(pc.equal(h, name), pc.ends_with(h, "." + name)))
    external = (ph >= 0) & ~own
    indices = pc.if_else(pa.array(external[inverse.reshape(-1)]), hosts.indices,
                         pa.nulls(len(hosts), hosts.indices.type))
    return pa.DictionaryArray.from_arrays(indices, hosts.dictionary)


_BOT = re.compile(r"bot|crawl|spider|slurp|facebookexternalhit|headless|preview",
                  re.IGNORECASE)
_TABLET = re.compile(r"ipad|tablet|kindle|silk|playbook|nexus (7|9|10)|sm-t\d", re.IGNORECASE)
_MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Symbian OS",
              "Firefox OS", "Tizen"}
_DESKTOP_OS = {"Windows", "Mac OS X", "macOS", "Linux", "Ubuntu", "Fedora", "Debian",
               "Chrome OS", "FreeBSD", "OpenBSD", "NetBSD", "Solaris"}


def classify_user_agent(agent: str) -> tuple[str, str, str]:
    """(device, browser, os) of one user agent string, with ua-parser (``Other`` when it
    knows no family). ua-parser names devices, not their kind: the kind is read from the
    device family and the OS (``Spider`` is a bot; an Android agent without ``Mobile`` is
    a tablet, as Google recommends tablets to send)."""
    r = parse(agent)
    browser = r.user_agent.family if r.user_agent else "Other"
    os_ = r.os.family if r.os else "Other"
    device_family = r.device.family if r.device else ""
    if device_family == "Spider" or _BOT.search(agent):
        device = "bot"
    elif _TABLET.search(device_family) or _TABLET.search(agent) or (
            os_ == "Android" and "Mobile" not in agent):
        device = "tablet"
    elif os_ in _MOBILE_OS or "Mobi" in agent:
        device = "mobile"
    elif os_ in _DESKTOP_OS:
        device = "desktop"
    else:
        device = "other"
    return device, browser, os_


def user_agent_dimensions(agents: pa.DictionaryArray) -> dict[str, pa.DictionaryArray]:
    """device, browser, os per row, parsing each *distinct* non-empty agent once (null for
    a missing or empty agent)."""
    distinct = agents.dictionary.to_pylist()
    parsed = [classify_user_agent(a) if a else (None, None, None) for a in distinct]
    columns = list(zip(*parsed, strict=True)) if parsed else [(), (), ()]
    return {name: _dict_of(pa.array(values, pa.string()), agents.indices)
            for name, values in zip(("device", "browser", "os"), columns, strict=True)}


def country_of(values: pa.Array) -> pa.Array:
    """Upper-cased 2-letter code, null for anything else."""
    up = pc.utf8_upper(pc.utf8_trim_whitespace(values))
    return pc.if_else(pc.match_substring_regex(up, _COUNTRY), up,
                      pa.nulls(len(values), pa.string()))


def hour_start(occurred_at: pa.Array, day_start: datetime) -> pa.Array:
    """UTC start of the local hour of each instant: ``day_start`` + whole hours, so the
    hours of Asia/Kathmandu start at :15 UTC and a DST day has 23 or 25 of them (the
    instants lie in the day's window)."""
    start = int(day_start.timestamp()) * 1_000_000
    us = np.asarray(pc.cast(occurred_at, pa.int64()).to_numpy(zero_copy_only=False))
    hour = 3_600_000_000
    return pa.array(start + np.floor_divide(us - start, hour) * hour, _ts)


# --- visits ------------------------------------------------------------------------------


def visits(site_id: np.ndarray, visitor_rank: np.ndarray, occurred_us: np.ndarray,
           timeout_seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visits of events sorted by (site, visitor, occurred_at, event_id): a new visit
    starts at a new site or visitor or after a gap of more than ``timeout_seconds``.
    Returns (visit id per row, numbered 0.. in order; first row of each visit; last row
    of each visit).

    A partition holds one local day of each site, so a visit never crosses the site's
    local midnight: the events after it are in the next day's partition, where they
    start a new visit.
    """
    n = len(site_id)
    new = np.ones(n, dtype=bool)
    if n > 1:
        gap = np.diff(occurred_us) > int(timeout_seconds * 1_000_000)
        new[1:] = (site_id[1:] != site_id[:-1]) | (visitor_rank[1:] != visitor_rank[:-1]) | gap
    visit_id = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    last = np.append(first[1:], n) - 1
    return visit_id, first, last


# --- the landed partition ------------------------------------------------------------------

# per-row dictionary codes kept of each batch (int32 indices; one dictionary per batch,
# unified once all the batches are in)
_KEPT_CODES = ("visitor_id", "name", "page", "referrer", "utm_source", "utm_medium",
               "utm_campaign", "user_agent", "country")
_VISIT_COLUMNS = ("visit_id", "visit_start", "visit_events", "visit_duration_seconds",
                  "entry_page", "exit_page")
SLICE_ROWS = 262_144
_PACKED_BITS = 63  # the sort key of the visits: one int64 when (site, visitor, instant) fit


def _compact(values: pa.Array, indices: pa.Array) -> pa.DictionaryArray:
    """Per-row values of a computation over a dictionary (``values``, one per dictionary
    entry), dictionary-encoded over the *distinct* values only: a null value nulls its
    rows (as ``_dict_of``), and many dictionary entries with the same derived value (the
    URLs of one page) keep one entry."""
    enc = _encode(values)
    return pa.DictionaryArray.from_arrays(enc.indices.take(indices), enc.dictionary)


class LandingBuilder:
    """A partition's READ_WEB_SCHEMA events, added batch by batch as they are read, → its
    landed rows (``finish``: a ``LandedPartition``).

    Each batch is validated and its dimensions derived as it arrives (on its dictionaries:
    once per distinct URL, referrer, visitor and name); what is kept of it is narrow: the
    event id, the site id, the instants, int32 dictionary codes of the repeated strings
    and of the derived dimensions, and the landed rows of its invalid rows (with ``raw``).
    The source's URL, referrer and user agent strings are dropped with the batch.
    ``dedupe`` keeps the first row read of each event id (``first_of_each_id``), over the
    whole partition, from 64-bit hashes of the ids taken batch by batch.
    """

    def __init__(self, sites: pa.Table, day_start: datetime,
                 session_timeout_seconds: float = DEFAULT_SESSION_TIMEOUT_SECONDS,
                 dedupe: bool = True):
        self.sites, self.day_start = sites, day_start
        self.timeout_seconds, self.dedupe = session_timeout_seconds, dedupe
        self.rows = 0
        self._ids: list[pa.Array] = []
        self._hashes: list[np.ndarray] = []
        self._ok: list[np.ndarray] = []
        self._site: list[np.ndarray] = []
        self._occurred: list[np.ndarray] = []
        self._received: list[pa.Array] = []
        self._codes: dict[str, list[pa.DictionaryArray]] = {c: [] for c in _KEPT_CODES}
        self._invalid: list[tuple[np.ndarray, pa.Table]] = []

    def add(self, events: pa.Table) -> None:
        """One batch of READ_WEB_SCHEMA events (in the order read)."""
        n = events.num_rows
        if not n:
            return
        reason, account_id = validate(events, self.sites)
        ok = _np(pc.is_null(reason))
        if not ok.all():
            bad = np.flatnonzero(~ok)
            rows = events.append_column("invalid_reason", reason).append_column(
                "account_id", account_id).take(pa.array(bad))
            self._invalid.append((bad + self.rows, _landed_invalid(rows)))
        del reason, account_id
        # Copies of what is kept, never views: a column as read may share its memory
        # with the whole batch as the driver returned it (an imported Arrow batch lives
        # as long as any of its buffers), which would keep every string of it alive.
        event_id = pa.concat_arrays([_chunk(events["event_id"])])
        self._ids.append(event_id)
        if self.dedupe:
            self._hashes.append(_hash64(event_id))
        self._ok.append(ok)
        site = _chunk(events["site_id"])
        self._site.append(np.array(pc.fill_null(site, 0).to_numpy(), dtype=np.int64))
        occurred = pc.cast(_chunk(events["occurred_at"]), pa.int64())
        self._occurred.append(np.array(pc.fill_null(occurred, 0).to_numpy(), dtype=np.int64))
        self._received.append(pa.concat_arrays([_chunk(events["received_at"])]))
        url, ref = _chunk(events["url"]), _chunk(events["referrer"])
        hosts = _compact(referrer_host(ref.dictionary), ref.indices)
        domains = _chunk(self.sites["domain"]).take(pc.index_in(site,
                                                                value_set=self.sites["id"]))
        codes = {
            "page": _compact(page_of(url.dictionary), url.indices),
            "referrer": external_referrer(hosts, domains),
            **{f"utm_{p}": _compact(utm_of(url.dictionary, f"utm_{p}"), url.indices)
               for p in ("source", "medium", "campaign")},
        }
        for c in _KEPT_CODES:
            self._codes[c].append(codes[c] if c in codes else _chunk(events[c]))
        self.rows += n

    def finish(self) -> LandedPartition:
        """De-duplication, then the valid rows' order (site, visitor, occurred_at, event
        id) and visits; the intermediates are freed as they are used."""
        n = self.rows
        ids = pa.chunked_array(self._ids, pa.string())
        self._ids = []
        keep = np.ones(n, dtype=bool)
        if self.dedupe and n:
            keep = _first_of_each_hash(np.concatenate(self._hashes), ids)
        self._hashes = []
        ids = ids.combine_chunks()
        invalid = [t.filter(pa.array(keep[at])) for at, t in self._invalid]
        self._invalid = []
        valid = np.concatenate(self._ok) if n else np.zeros(0, dtype=bool)
        self._ok = []
        valid &= keep
        duplicates = int(n - np.count_nonzero(keep))
        del keep
        site = np.concatenate(self._site) if n else np.zeros(0, dtype=np.int64)
        occurred = np.concatenate(self._occurred) if n else np.zeros(0, dtype=np.int64)
        self._site, self._occurred = [], []
        received = pa.chunked_array(self._received, _ts).combine_chunks()
        self._received = []
        codes = {}
        for c in _KEPT_CODES:
            codes[c] = pa.chunked_array(self._codes[c], _dict).combine_chunks()
            self._codes[c] = []
        order, visit_id, first, last = _visit_order(ids, site, codes["visitor_id"],
                                                    occurred, valid, self.timeout_seconds)
        del valid
        return LandedPartition(
            sites=self.sites, day_start=self.day_start, ids=ids, site=site,
            occurred=occurred, received=received, codes=codes, order=order,
            visit_id=visit_id, first=first, last=last,
            invalid=(pa.concat_tables(invalid) if invalid
                     else _landed_invalid(_empty_read_with_reason())),
            duplicates=duplicates, rows_read=n)


def _empty_read_with_reason() -> pa.Table:
    return READ_WEB_SCHEMA.empty_table().append_column(
        "invalid_reason", pa.array([], pa.string())).append_column(
        "account_id", pa.array([], pa.int64()))


def _visit_order(ids: pa.Array, site: np.ndarray, visitor: pa.DictionaryArray,
                 occurred: np.ndarray, valid: np.ndarray, timeout_seconds: float,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The landed order of the ``valid`` rows (a mask over the rows in the order read),
    sorted by (site, visitor, occurred_at, event_id) on a narrow key: the site's rank,
    the visitor's rank in the lexical order of the visitor dictionary (unified, so one
    value has one code), the instant, packed into one int64 when they fit; rows equal on
    all three (rare) are ordered by their event ids. Returns (order: positions in the
    order read, visit id per landed row, first and last landed row of each visit)."""
    rows = np.flatnonzero(valid)
    if len(rows) < 2**31:
        rows = rows.astype(np.int32)
    if not len(rows):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    step = 1 << 20  # rows at a time: no full-length temporaries but the key
    site_values = np.sort(pc.unique(pa.array(site)).to_numpy())  # every row's: a superset
    rank = np.asarray(pc.rank(visitor.dictionary, "ascending").to_numpy(), dtype=np.int64)
    codes = visitor.indices
    t_lo = min(int(occurred[rows[lo:lo + step]].min()) for lo in range(0, len(rows), step))
    t_hi = max(int(occurred[rows[lo:lo + step]].max()) for lo in range(0, len(rows), step))
    bits = [max(int(x).bit_length(), 1) for x in (len(site_values), len(rank),
                                                   t_hi - t_lo + 1)]
    if sum(bits) > _PACKED_BITS:  # too wide to pack: three keys
        s = np.searchsorted(site_values, site[rows])
        v = rank[np.asarray(pc.fill_null(codes.take(pa.array(rows)), 0).to_numpy())]
        t = occurred[rows]
        perm = np.lexsort((t, v, s))
        s, v, t = s[perm], v[perm], t[perm]
        tied = (s[1:] == s[:-1]) & (v[1:] == v[:-1]) & (t[1:] == t[:-1])
        if tied.any():
            _order_ties_by_id(perm, tied, ids, rows)
        del tied
        order = rows[perm]
        return (order, *visits(s, v, t, timeout_seconds))
    key = np.empty(len(rows), dtype=np.int64)
    for lo in range(0, len(rows), step):
        r = rows[lo:lo + step]
        v = rank[np.asarray(pc.fill_null(codes.take(pa.array(r)), 0).to_numpy())]
        key[lo:lo + step] = ((np.searchsorted(site_values, site[r]) << (bits[1] + bits[2]))
                             | (v << bits[2]) | (occurred[r] - t_lo))
    del rank
    perm = np.argsort(key)
    key = key[perm]
    tied = key[1:] == key[:-1]
    if tied.any():  # equal (site, visitor, instant): by event id, as Arrow sorts strings
        _order_ties_by_id(perm, tied, ids, rows)
    del tied
    order = rows[perm]
    del perm, rows
    # visits from the sorted key: a new site or visitor, or a gap over the timeout
    n = len(key)
    new = np.ones(n, dtype=bool)
    limit = int(timeout_seconds * 1_000_000)
    mask = (1 << bits[2]) - 1
    for lo in range(1, n, step):
        hi = min(lo + step, n)
        cur, prev = key[lo:hi], key[lo - 1:hi - 1]
        new[lo:hi] = ((cur >> bits[2]) != (prev >> bits[2])) | (
            (cur & mask) - (prev & mask) > limit)
    del key
    visit_id = np.cumsum(new, dtype=np.int32 if n < 2**31 else np.int64) - 1
    first = np.flatnonzero(new)
    last = np.append(first[1:], n) - 1
    return order, visit_id, first, last


def _order_ties_by_id(perm: np.ndarray, tied: np.ndarray, ids: pa.Array,
                      rows: np.ndarray) -> None:
    """Reorder in place each run of ``perm`` whose keys are equal (``tied[i]``: landed
    rows i and i + 1 are) by event id."""
    member = np.zeros(len(perm), dtype=bool)
    member[1:] |= tied
    member[:-1] |= tied
    at = np.flatnonzero(member)
    starts = np.ones(len(at), dtype=bool)
    starts[1:] = ~tied[at[:-1]]  # a run starts where the previous member is not tied to it
    group = np.cumsum(starts)
    read = rows[perm[at]]
    by = pc.sort_indices(pa.table({"g": group, "e": ids.take(pa.array(read)), "r": read}),
                         sort_keys=[("g", "ascending"), ("e", "ascending"),
                                    ("r", "ascending")])
    perm[at] = perm[at[np.asarray(by.to_numpy())]]


class LandedPartition:
    """A partition's landed rows (LANDED_WEB_SCHEMA), held narrow: the valid rows as
    codes in the order read plus their landed order and visits, the invalid rows whole.
    ``slices`` gathers the wide rows in landed order, one slice at a time."""

    def __init__(self, *, sites: pa.Table, day_start: datetime, ids: pa.Array,
                 site: np.ndarray, occurred: np.ndarray, received: pa.Array,
                 codes: dict[str, pa.DictionaryArray], order: np.ndarray,
                 visit_id: np.ndarray, first: np.ndarray, last: np.ndarray,
                 invalid: pa.Table, duplicates: int, rows_read: int):
        self.sites, self.day_start = sites, day_start
        self._ids, self._site, self._occurred, self._received = ids, site, occurred, received
        self._codes = codes
        idx = np.int32 if len(site) < 2**31 else np.int64
        self._order = order.astype(idx)
        self._visit_id = visit_id.astype(idx)
        start, end = occurred[order[first]], occurred[order[last]]
        self._visit_start = start
        self._visit_events = (last - first + 1).astype(np.int64)
        self._visit_duration = (end - start) / 1e6
        self._entry = order[first].astype(idx)
        self._exit = order[last].astype(idx)
        self.invalid = invalid
        self.duplicates, self.rows_read = duplicates, rows_read
        self.valid_rows = len(order)
        self.visits = len(first)
        # per distinct user agent of a valid row, parsed once; per distinct country
        agents = codes["user_agent"]
        used = np.zeros(len(agents.dictionary), dtype=bool)
        used[np.asarray(pc.drop_null(agents.indices.take(pa.array(order))).to_numpy())] = True
        distinct = agents.dictionary.filter(pa.array(used))
        self._agent_at = pa.array(np.cumsum(used) - 1, pa.int32())
        self._agent = user_agent_dimensions(pa.DictionaryArray.from_arrays(
            pa.array(np.arange(len(distinct)), pa.int32()), distinct))
        self._country = country_of(codes["country"].dictionary)

    @property
    def num_rows(self) -> int:
        return self.valid_rows + self.invalid.num_rows

    @property
    def invalid_rows(self) -> int:
        return self.invalid.num_rows

    def _valid(self, lo: int, hi: int) -> pa.Table:
        """Landed rows ``lo:hi`` of the valid rows, LANDED_WEB_SCHEMA."""
        idx = self._order[lo:hi]
        at = pa.array(idx)
        site = pa.array(self._site[idx], pa.int64())
        occurred = pa.array(self._occurred[idx], _ts)
        codes = self._codes
        v = self._visit_id[lo:hi]
        agent = self._agent_at.take(codes["user_agent"].indices.take(at))
        n = hi - lo
        out = {
            "event_id": self._ids.take(at), "site_id": site,
            "account_id": _chunk(self.sites["account_id"]).take(
                pc.index_in(site, value_set=self.sites["id"])),
            "occurred_at": occurred, "received_at": self._received.take(at),
            "hour_start": hour_start(occurred, self.day_start),
            **{c: codes[c].take(at) for c in ("visitor_id", "name", "page", "referrer",
                                             "utm_source", "utm_medium", "utm_campaign")},
            **{c: self._agent[c].take(agent) for c in ("device", "browser", "os")},
            "country": self._country.take(codes["country"].indices.take(at)),
            "visit_id": pa.array(v, pa.int64()),
            "visit_start": pa.array(self._visit_start[v], _ts),
            "visit_events": pa.array(self._visit_events[v], pa.int64()),
            "visit_duration_seconds": pa.array(self._visit_duration[v], pa.float64()),
            "entry_page": codes["page"].take(pa.array(self._entry[v])),
            "exit_page": codes["page"].take(pa.array(self._exit[v])),
            "invalid_reason": pa.nulls(n, pa.string()),
            "raw": pa.nulls(n, pa.string()),
        }
        return pa.Table.from_arrays([_as(out[f.name], f.type) for f in LANDED_WEB_SCHEMA],
                                    schema=LANDED_WEB_SCHEMA)

    def slices(self, rows: int = SLICE_ROWS) -> Iterator[pa.RecordBatch]:
        """LANDED_WEB_SCHEMA record batches of ``rows`` rows: the valid rows in visit
        order, then the invalid rows in the order read; the strings are decoded one slice
        at a time, so the partition is never held decoded whole."""
        nv = self.valid_rows
        for lo in range(0, self.num_rows, rows):
            hi = min(lo + rows, self.num_rows)
            parts = []
            if lo < nv:
                parts.append(self._valid(lo, min(hi, nv)))
            if hi > nv:
                first = max(lo, nv)
                parts.append(self.invalid.slice(first - nv, hi - first).cast(
                    LANDED_WEB_SCHEMA))
            yield from pa.concat_tables(parts).combine_chunks().to_batches()


def _as(arr: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> pa.Array:
    arr = _chunk(arr) if isinstance(arr, pa.ChunkedArray) else arr
    return arr if arr.type == type_ else arr.cast(type_)


def land_web_events(events: pa.Table, sites: pa.Table, day_start: datetime,
                    session_timeout_seconds: float = DEFAULT_SESSION_TIMEOUT_SECONDS,
                    ) -> LandedPartition:
    """A partition's de-duplicated READ_WEB_SCHEMA events (one table) → its landed rows:
    valid rows (first, in visit order) with their dimensions and visit, then invalid rows
    with their reason, the columns that could be read and ``raw``. ``LandingBuilder``
    takes the events batch by batch instead.

    Visit-level dimensions (referrer, UTM, device, browser, OS, country) keep each
    event's own value here; the rollup takes the value of the visit's first event.
    """
    builder = LandingBuilder(sites, day_start, session_timeout_seconds, dedupe=False)
    builder.add(events)
    return builder.finish()


def _landed_invalid(t: pa.Table) -> pa.Table:
    """Invalid rows (READ_WEB_SCHEMA with ``invalid_reason`` and ``account_id``) →
    LANDED_WEB_SCHEMA with the repeated strings still dictionary-encoded: what could be
    read, derived columns null, ``raw`` as read (rows flagged at conversion) or else from
    the converted values."""
    n = t.num_rows
    raw = _chunk(t["raw"])
    typed = _raw_json(t.rename_columns(["id" if c == "event_id" else c
                                        for c in t.column_names]),
                      pc.is_null(raw), SOURCE_COLUMNS)
    keep = {"event_id", "site_id", "account_id", "visitor_id", "name", "occurred_at",
            "received_at", "invalid_reason"}
    cols, fields = [], []
    for f in LANDED_WEB_SCHEMA:
        if f.name == "raw":
            cols.append(pc.coalesce(raw, typed))
        elif f.name in keep:
            cols.append(_chunk(t[f.name]))
        else:
            cols.append(pa.nulls(n, f.type))
        fields.append(pa.field(f.name, cols[-1].type))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def landed_slices(landed: LandedPartition, rows: int = SLICE_ROWS,
                  ) -> Iterator[pa.RecordBatch]:
    """LANDED_WEB_SCHEMA record batches of a landed partition (``LandedPartition.slices``)."""
    return landed.slices(rows)
