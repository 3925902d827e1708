"""Mailgun Events API: an HTTP client with bounded retries, and items → Arrow.

``GET {base}/{domain}/events`` with basic auth ``api:{key}``, ascending pages of at most
300 items followed through ``paging.next`` until a page comes back empty. 429 honours
``Retry-After`` (or ``X-RateLimit-Reset``) with a cap, 5xx and connection errors are
retried with exponential backoff, 401/403/404 fail at once. The API key never appears in
an error message, a log line or metadata, and is sent only to the API base's own origin:
a paging link to another scheme, host or port is refused before any request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import urllib3
from urllib3.util.retry import Retry

DEFAULT_API_BASE = "https://api.mailgun.net/v3"
PAGE_LIMIT = 300
MAX_PAGES_PER_WINDOW = 100_000  # a guard against a provider that never ends its paging

# What is kept of an item, typed; other keys stay in the raw JSON.
ITEM_TYPE = pa.struct([
    ("id", pa.string()),
    ("event", pa.string()),
    ("timestamp", pa.float64()),
    ("recipient", pa.string()),
    ("severity", pa.string()),
    ("tags", pa.list_(pa.string())),
    ("message", pa.struct([("headers", pa.struct([("message-id", pa.string())]))])),
])

PROVIDER_EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("event", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("recipient", pa.string()),  # lower-cased: addresses compare case-insensitively
    ("message_id", pa.string()),
    ("severity", pa.string()),
    ("tags", pa.list_(pa.string())),
    ("delivery_status_code", pa.string()),
    ("delivery_status_message", pa.string()),
    ("raw", pa.string()),  # the item as Mailgun sent it: the long-term record
    ("fetched_at", pa.timestamp("us", tz="UTC")),
])



def normalize_message_ids(ids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Message ids in one spelling: surrounding whitespace and one pair of angle brackets
    stripped. Mailgun's send API returns ``<id@domain>`` (what applications store), its
    Events API reports ``id@domain``."""
    trimmed = pc.utf8_trim_whitespace(ids)
    bracketed = pc.and_(pc.starts_with(trimmed, "<"), pc.ends_with(trimmed, ">"))
    inner = pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(trimmed, 1, -1))
    return pc.if_else(pc.fill_null(bracketed, False), inner, trimmed)


NUL = "\x00"
REPLACEMENT = "\ufffd"
_JSON_NUL = "\\u0000"  # how json.dumps writes a NUL character
_JSON_REPLACEMENT = "\\ufffd"


def _clean_strings(arr: pa.Array, json_text: bool) -> pa.Array:
    """``arr`` (string or list of strings) with NUL replaced; unchanged when it has none."""
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        values = _clean_strings(arr.values, json_text)
        if values is arr.values:
            return arr
        if arr.offset:  # from_arrays takes no null bitmap with sliced offsets: unslice
            arr = pa.concat_arrays([arr])
            values = _clean_strings(arr.values, json_text)
        return type(arr).from_arrays(arr.offsets, values, mask=arr.is_null())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return arr
    if _has_nul_byte(arr):
        arr = pc.replace_substring(arr, NUL, REPLACEMENT)
    if json_text and pc.any(pc.match_substring(arr, _JSON_NUL)).as_py():
        arr = pc.replace_substring(arr, _JSON_NUL, _JSON_REPLACEMENT)
    return arr


def _has_nul_byte(arr: pa.Array) -> bool:
    """Whether a string array's characters include NUL: a min over its UTF-8 bytes (a
    0 byte is only ever the NUL character), without copying them."""
    _, offsets, data = arr.buffers()[:3]
    if data is None or len(arr) == 0:
        return False
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bounds = np.frombuffer(offsets, width)[arr.offset:arr.offset + len(arr) + 1]
    lo, hi = int(bounds[0]), int(bounds[-1])
    return hi > lo and int(np.frombuffer(data, np.uint8)[lo:hi].min()) == 0


def sanitize_text(table: pa.Table, json_columns: tuple[str, ...] = ("raw",)) -> pa.Table:
    """Replace NUL characters in every text column (and lists of text) with U+FFFD.

    PostgreSQL text cannot hold NUL (``invalid byte sequence ... 0x00`` in COPY), so a
    provider field with one would fail every write of it. In ``json_columns`` (the raw
    item) the JSON escape ``\\u0000`` is replaced too, so the record stays valid JSON that
    PostgreSQL's json types accept. Vectorized; columns without NUL are left as they are.
    """
    for i, name in enumerate(table.column_names):
        col = table.column(i)
        before = col.chunks
        chunks = [_clean_strings(c, name in json_columns) for c in before]
        if any(a is not b for a, b in zip(chunks, before, strict=True)):
            table = table.set_column(i, table.field(i), pa.chunked_array(chunks, col.type))
    return table


def sanitize_str(value: str) -> str:
    """One string (a malformed item's id or JSON), as ``sanitize_text`` does a column."""
    return value.replace(NUL, REPLACEMENT).replace(_JSON_NUL, _JSON_REPLACEMENT)


class MailgunError(RuntimeError):
    """A Mailgun request that cannot succeed (auth, missing domain, retries exhausted)."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, with the scheme's default port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a malformed port: an origin that matches nothing
        port = -1
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


class _RateLimitRetry(Retry):
    """urllib3 retry that also reads ``X-RateLimit-Reset`` and caps every wait."""

    max_wait = 60.0

    def get_retry_after(self, response) -> float | None:  # noqa: ANN001
        try:
            after = super().get_retry_after(response)
        except urllib3.exceptions.InvalidHeader:
            after = None  # a malformed Retry-After: fall back to the reset header/backoff
        if after is None:
            reset = response.headers.get("X-RateLimit-Reset")
            if reset:
                try:
                    value = float(reset)
                except ValueError:
                    value = None
                if value is not None:
                    if value > 1e12:  # epoch milliseconds
                        value /= 1000.0
                    # an epoch instant, or (small values) seconds to wait
                    after = value - time.time() if value > 1e9 else value
        if after is None:
            return None
        return max(0.0, min(after, self.max_wait))


@dataclass
class MailgunClient:
    domain: str
    api_key: str
    api_base: str = DEFAULT_API_BASE
    timeout_seconds: float = 30.0
    retries: int = 5
    backoff_factor: float = 0.5
    max_wait_seconds: float = 60.0

    def __post_init__(self) -> None:
        retry_cls = type("MailgunRetry", (_RateLimitRetry,), {"max_wait": self.max_wait_seconds})
        retry = retry_cls(
            total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
            backoff_factor=self.backoff_factor, backoff_max=self.max_wait_seconds,
            status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET"}),
            respect_retry_after_header=True, raise_on_status=False,
        )
        self._http = urllib3.PoolManager(
            retries=retry,
            timeout=urllib3.Timeout(connect=min(10.0, self.timeout_seconds),
                                    read=self.timeout_seconds),
            headers=urllib3.make_headers(basic_auth=f"api:{self.api_key}",
                                         user_agent="analytics-pipeline"),
        )

    def _get(self, url: str) -> dict:
        try:
            resp = self._http.request("GET", url)
        except urllib3.exceptions.HTTPError as exc:
            raise MailgunError(
                f"Mailgun events for domain {self.domain!r} unreachable after retries: "
                f"{type(exc).__name__}"
            ) from None
        if resp.status in (401, 403):
            raise MailgunError(
                f"Mailgun refused the API key for domain {self.domain!r} (HTTP {resp.status}); "
                "check MAILGUN_API_KEY and the key's access to this domain"
            )
        if resp.status == 404:
            raise MailgunError(
                f"Mailgun domain {self.domain!r} not found at {self.api_base} (HTTP 404); "
                "check MAILGUN_DOMAIN and the region (MAILGUN_API_BASE)"
            )
        if resp.status >= 400:
            raise MailgunError(
                f"Mailgun events for domain {self.domain!r} failed with HTTP {resp.status} "
                "after retries"
            )
        try:
            return json.loads(resp.data)
        except ValueError:
            raise MailgunError(
                f"Mailgun returned a page that is not JSON for domain {self.domain!r}"
            ) from None

    def pages(
        self, begin: float, end: float, event_filter: str | None = None,
        tags: str | None = None,
    ) -> Iterator[list[dict]]:
        """Pages of items with ``begin <= timestamp < end``, ascending, until one is empty."""
        params = {"begin": f"{begin:.6f}", "end": f"{end:.6f}", "ascending": "yes",
                  "limit": PAGE_LIMIT}
        if event_filter:
            params["event"] = event_filter
        if tags:
            params["tags"] = tags
        url: str | None = f"{self.api_base.rstrip('/')}/{self.domain}/events?{urlencode(params)}"
        origin = _origin(self.api_base)
        for _ in range(MAX_PAGES_PER_WINDOW):
            page = self._get(url)
            items = page.get("items") or []
            if not items:
                return
            yield items
            nxt = (page.get("paging") or {}).get("next")
            if not nxt:
                return
            url = urljoin(url, str(nxt))
            if _origin(url) != origin:
                # The basic-auth header goes with every request: never to another origin.
                scheme, host, port = _origin(url)
                raise MailgunError(
                    f"Mailgun paging for domain {self.domain!r} points to another origin "
                    f"({scheme}://{host}:{port}, API base is {origin[0]}://{origin[1]}:"
                    f"{origin[2]}); not followed, no request sent"
                )
        raise MailgunError(f"Mailgun paging for domain {self.domain!r} did not end")


@dataclass
class ParsedPage:
    events: pa.Table  # PROVIDER_EVENT_SCHEMA
    malformed: list[tuple[str, str, str]]  # (event id or "", reason, raw json)


def _check_item(item: object) -> str | None:
    """Why an item cannot be landed, or None."""
    if not isinstance(item, dict):
        return "item is not an object"
    for key in ("id", "event", "timestamp", "recipient"):
        if item.get(key) in (None, ""):
            return f"missing {key}"
    try:
        ts = float(item["timestamp"])
    except (TypeError, ValueError):
        return "timestamp is not a number"
    if not (0 < ts < 1e11):
        return "timestamp out of range"
    headers = (item.get("message") or {}).get("headers") if isinstance(
        item.get("message"), dict) else None
    if not isinstance(headers, dict) or not headers.get("message-id"):
        return "missing message.headers.message-id"
    try:
        pa.array([item], type=ITEM_TYPE)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        return f"unexpected field type: {str(exc)[:120]}"
    return None


def _status(item: dict, key: str) -> str | None:
    status = item.get("delivery-status")
    value = status.get(key) if isinstance(status, dict) else None
    return None if value in (None, "") else str(value)


def parse_items(items: list, fetched_at: float, begin: float | None = None,
                end: float | None = None) -> ParsedPage:
    """Items → PROVIDER_EVENT_SCHEMA rows; malformed items come back with a reason.

    The typed conversion runs in Arrow for the whole page; only a page that Arrow refuses
    is checked item by item, so that one bad item never loses the rest of the page.
    """
    malformed: list[tuple[str, str, str]] = []
    try:
        good = items
        arr = pa.array(good, type=ITEM_TYPE)
        # Arrow accepts nulls where we require values: check those vectorized.
        missing = pc.or_kleene(
            pc.or_kleene(pc.is_null(pc.struct_field(arr, "id")),
                         pc.is_null(pc.struct_field(arr, "event"))),
            pc.or_kleene(pc.is_null(pc.struct_field(arr, "timestamp")),
                         pc.is_null(pc.struct_field(arr, "recipient"))),
        )
        mid = pc.struct_field(pc.struct_field(arr, "message"), "headers")
        missing = pc.or_kleene(missing, pc.is_null(pc.struct_field(mid, "message-id")))
        if pc.any(pc.fill_null(missing, True)).as_py():
            raise ValueError("page has incomplete items")
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        good = []
        for item in items:
            why = _check_item(item)
            if why is None:
                good.append(item)
            else:
                ident = str(item.get("id", "")) if isinstance(item, dict) else ""
                malformed.append((sanitize_str(ident), why,
                                  sanitize_str(json.dumps(item, default=str))))
        arr = pa.array(good, type=ITEM_TYPE)
    n = len(arr)
    ts = pc.struct_field(arr, "timestamp")
    micros = pc.cast(pc.round(pc.multiply(ts, 1e6)), pa.int64())
    table = pa.Table.from_arrays(
        [
            pc.struct_field(arr, "id"),
            pc.utf8_lower(pc.struct_field(arr, "event")),
            pc.cast(micros, pa.timestamp("us", tz="UTC")),
            pc.utf8_lower(pc.utf8_trim_whitespace(pc.struct_field(arr, "recipient"))),
            normalize_message_ids(pc.struct_field(
                pc.struct_field(pc.struct_field(arr, "message"), "headers"), "message-id")),
            pc.utf8_lower(pc.struct_field(arr, "severity")),
            pc.struct_field(arr, "tags"),
            pa.array([_status(i, "code") for i in good], pa.string()),
            pa.array([_status(i, "message") for i in good], pa.string()),
            pa.array([json.dumps(i, separators=(",", ":"), default=str) for i in good],
                     pa.string()),
            pa.repeat(pa.scalar(int(fetched_at * 1e6), pa.int64()), n).cast(
                pa.timestamp("us", tz="UTC")),
        ],
        schema=PROVIDER_EVENT_SCHEMA,
    )
    if begin is not None and end is not None and n:
        # Windows are half-open and disjoint: what the provider returns outside them is
        # the business of the neighbouring window.
        lo = pa.scalar(int(begin * 1e6), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        hi = pa.scalar(int(end * 1e6), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        keep = pc.and_(pc.greater_equal(table["timestamp"], lo),
                       pc.less(table["timestamp"], hi))
        table = table.filter(keep)
    return ParsedPage(sanitize_text(table), malformed)
