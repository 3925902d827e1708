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

# LANDED_WEB_SCHEMA with the repeated strings still dictionary-encoded (what
# ``land_web_events`` returns; cast to LANDED_WEB_SCHEMA slice by slice when written)
_LANDED_DICT = ("visitor_id", "name", "page", "referrer", "utm_source", "utm_medium",
                "utm_campaign", "device", "browser", "os", "country", "entry_page",
                "exit_page")
LANDED_WEB_DICT_SCHEMA = pa.schema([
    pa.field(f.name, _dict) if f.name in _LANDED_DICT else f for f in LANDED_WEB_SCHEMA
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
    n = len(ids)
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    h = _hash64(ids)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = hs[1:] == hs[:-1]
    repeat[:-1] |= repeat[1:]  # every member of a run of equal hashes
    candidates = np.sort(order[repeat & _np(pc.is_valid(ids))[order]])
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


def _ranks(values: pa.DictionaryArray) -> np.ndarray:
    """Each row's rank of its value in lexical order (a sort key for dictionaries,
    which Arrow's table sort does not take)."""
    rank = np.asarray(pc.rank(values.dictionary, "ascending").to_numpy(), dtype=np.int64)
    idx = np.asarray(pc.fill_null(values.indices, 0).to_numpy(), dtype=np.int64)
    return rank[idx] if len(rank) else np.zeros(len(values), dtype=np.int64)


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


def land_web_events(events: pa.Table, sites: pa.Table, day_start: datetime,
                    session_timeout_seconds: float = DEFAULT_SESSION_TIMEOUT_SECONDS,
                    ) -> pa.Table:
    """A partition's de-duplicated READ_WEB_SCHEMA events → LANDED_WEB_DICT_SCHEMA:
    valid rows (first, in visit order) with their dimensions and visit, then invalid rows
    with their reason, the columns that could be read and ``raw``.

    Visit-level dimensions (referrer, UTM, device, browser, OS, country) keep each
    event's own value here; the rollup takes the value of the visit's first event.
    """
    reason, account_id = validate(events, sites)
    events = events.append_column("invalid_reason", reason).append_column(
        "account_id", account_id)
    ok = pc.is_null(reason)
    valid_events, invalid = events.filter(ok), _landed_invalid(events.filter(pc.invert(ok)))
    del events  # the caller keeps no reference either: the read rows are freed here
    valid = _landed_valid(valid_events, sites, day_start, session_timeout_seconds)
    return pa.concat_tables([valid, invalid])


def _landed_valid(t: pa.Table, sites: pa.Table, day_start: datetime,
                  timeout_seconds: float) -> pa.Table:
    n = t.num_rows
    if not n:
        return LANDED_WEB_DICT_SCHEMA.empty_table()
    visitor = _chunk(t["visitor_id"])
    order = pc.sort_indices(
        pa.table({"s": t["site_id"], "v": _ranks(visitor), "t": t["occurred_at"],
                  "e": t["event_id"]}),
        sort_keys=[("s", "ascending"), ("v", "ascending"), ("t", "ascending"),
                   ("e", "ascending")])
    t = t.take(order)
    visitor = _chunk(t["visitor_id"])
    site_id = np.asarray(_chunk(t["site_id"]).to_numpy())
    occurred = _chunk(t["occurred_at"])
    occurred_us = np.asarray(pc.cast(occurred, pa.int64()).to_numpy())
    visit_id, first, last = visits(site_id, _ranks(visitor), occurred_us, timeout_seconds)

    url = _chunk(t["url"])
    page = _dict_of(page_of(url.dictionary), url.indices)
    ref = _chunk(t["referrer"])
    hosts = _dict_of(referrer_host(ref.dictionary), ref.indices)
    domains = _chunk(sites["domain"]).take(pc.index_in(_chunk(t["site_id"]),
                                                       value_set=sites["id"]))
    out = {
        "event_id": t["event_id"], "site_id": t["site_id"], "account_id": t["account_id"],
        "visitor_id": visitor, "name": t["name"], "occurred_at": occurred,
        "received_at": t["received_at"], "hour_start": hour_start(occurred, day_start),
        "page": page,
        "referrer": external_referrer(hosts, domains),
        **{f"utm_{p}": _dict_of(utm_of(url.dictionary, f"utm_{p}"), url.indices)
           for p in ("source", "medium", "campaign")},
        **user_agent_dimensions(_chunk(t["user_agent"])),
        "country": _dict_of(country_of(_chunk(t["country"]).dictionary),
                            _chunk(t["country"]).indices),
        "visit_id": pa.array(visit_id, pa.int64()),
        "visit_start": pa.array(occurred_us[first][visit_id], _ts),
        "visit_events": pa.array((last - first + 1)[visit_id], pa.int64()),
        "visit_duration_seconds": pa.array(
            ((occurred_us[last] - occurred_us[first]) / 1e6)[visit_id], pa.float64()),
        "entry_page": page.take(pa.array(first[visit_id])),
        "exit_page": page.take(pa.array(last[visit_id])),
        "invalid_reason": pa.nulls(n, pa.string()),
        "raw": pa.nulls(n, pa.string()),
    }
    return pa.Table.from_arrays([_as(out[f.name], f.type) for f in LANDED_WEB_DICT_SCHEMA],
                                schema=LANDED_WEB_DICT_SCHEMA)


def _as(arr: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> pa.Array:
    arr = _chunk(arr) if isinstance(arr, pa.ChunkedArray) else arr
    return arr if arr.type == type_ else arr.cast(type_)


def _landed_invalid(t: pa.Table) -> pa.Table:
    """Invalid rows: what could be read, derived columns null, ``raw`` as read (rows
    flagged at conversion) or else from the converted values."""
    n = t.num_rows
    if not n:
        return LANDED_WEB_DICT_SCHEMA.empty_table()
    raw = _chunk(t["raw"])
    typed = _raw_json(t.rename_columns(["id" if c == "event_id" else c
                                        for c in t.column_names]),
                      pc.is_null(raw), SOURCE_COLUMNS)
    keep = {"event_id", "site_id", "account_id", "visitor_id", "name", "occurred_at",
            "received_at", "invalid_reason"}
    cols = []
    for f in LANDED_WEB_DICT_SCHEMA:
        if f.name == "raw":
            cols.append(pc.coalesce(raw, typed))
        elif f.name in keep:
            cols.append(_as(t[f.name], f.type))
        else:
            cols.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(cols, schema=LANDED_WEB_DICT_SCHEMA)


def landed_slices(table: pa.Table, rows: int = 262_144) -> Iterator[pa.RecordBatch]:
    """LANDED_WEB_SCHEMA record batches of a LANDED_WEB_DICT_SCHEMA table: the strings
    are decoded one slice at a time, so the partition is never held decoded whole."""
    for lo in range(0, table.num_rows, rows):
        part = table.slice(lo, rows)
        yield from part.cast(LANDED_WEB_SCHEMA).combine_chunks().to_batches()
