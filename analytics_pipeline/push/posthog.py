"""PostHog Query API: an HTTP client for HogQL with bounded retries, paging, and answers → Arrow.

``POST {host}/api/projects/{project_id}/query/`` with ``Authorization: Bearer {key}`` and
``{"query": {"kind": "HogQLQuery", "query": ..., "values": {...}}}``. Data reaches a query
only as ``values`` (``{name}`` placeholders), never spliced into its text. An answer has
``results`` (rows), ``columns``, ``types`` and ``hasMore``: 100 rows unless the query says
``LIMIT``, at most 50,000; ``query_all`` pages with ``LIMIT``/``OFFSET``.

Retries (urllib3 ``Retry``, POST included: queries are read-only): 429 and 5xx, and
connection errors, with exponential backoff, honouring ``Retry-After`` up to
``max_wait_seconds``. A longer ``Retry-After`` (the hourly query budget is spent) fails at
once with a ``PostHogError`` naming the wait, so the run fails and is retried later instead
of sleeping for an hour. 401/403 fail at once. The key never appears in an error message,
a log line or metadata, and goes only to the configured host: redirects are not followed.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import urllib3
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

MAX_PAGE = 50_000  # PostHog caps a query's LIMIT at this
RETRY_STATUSES = (429, 500, 502, 503, 504)


class PostHogError(RuntimeError):
    """A PostHog query that cannot succeed (auth, invalid query, rate limit, retries spent).
    Its message names the host and project, never the API key."""


@dataclass
class QueryAnswer:
    columns: list[str]
    types: list  # PostHog's [name, ClickHouse type] pairs
    results: list[list]
    has_more: bool

    def to_arrow(self, schema: pa.Schema | None = None) -> pa.Table:
        """The rows as Arrow columns: typed by ``schema`` (by column name) when given, else
        from the ClickHouse types of the answer."""
        return answer_to_arrow(self.columns, self.types, self.results, schema)


@dataclass
class QueryStats:
    """What a client did, for run metadata and benchmarks."""

    queries: int = 0  # queries issued (one per ``query`` call, pages included)
    requests: int = 0  # HTTP requests, retries included
    retries: int = 0
    rows: int = 0  # result rows received
    wait_seconds: float = 0.0  # slept before retries (Retry-After or backoff)
    seconds: float = 0.0  # wall time spent in queries

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- Arrow conversion --------------------------------------------------------------------------

_INTS = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"}
_WRAPPERS = re.compile(r"^(?:Nullable|LowCardinality)\((.*)\)$")


def arrow_type(clickhouse_type: str) -> pa.DataType | None:
    """The Arrow type of a ClickHouse type PostHog reports; None: let Arrow infer."""
    t = clickhouse_type.strip()
    while (m := _WRAPPERS.match(t)) is not None:
        t = m.group(1).strip()
    if t in _INTS:
        return pa.int64()
    if t in ("Float32", "Float64") or t.startswith("Decimal"):
        return pa.float64()
    if t in ("String", "UUID") or t.startswith("FixedString") or t.startswith("Enum"):
        return pa.string()
    if t in ("Bool", "Boolean"):
        return pa.bool_()
    if t.startswith("DateTime"):
        return pa.timestamp("us", tz="UTC")
    if t in ("Date", "Date32"):
        return pa.date32()
    return None


def _column(values: tuple | list, kind: pa.DataType | None) -> pa.Array:
    if kind is None:
        return pa.array(values)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        # datetimes come as ISO 8601 text (``…Z``); Arrow parses them in C++
        return pa.array(values, pa.string()).cast(kind)
    return pa.array(values, kind)


def answer_to_arrow(columns: list[str], types: list | None, results: list[list],
                    schema: pa.Schema | None = None) -> pa.Table:
    """Rows as JSON gave them → an Arrow table, one column at a time (no per-row objects)."""
    by_name = dict(types or [])
    data = list(zip(*results, strict=True)) if results else [()] * len(columns)
    arrays = []
    for name, values in zip(columns, data, strict=True):
        if schema is not None and name in schema.names:
            kind = schema.field(name).type
        else:
            kind = arrow_type(str(by_name.get(name, "")))
        arrays.append(_column(values, kind))
    return pa.Table.from_arrays(arrays, names=list(columns))


# -- retries -----------------------------------------------------------------------------------


def _requested_wait(response) -> float | None:  # noqa: ANN001
    """Seconds a response's Retry-After asks for (seconds or an HTTP date); None: none or
    unreadable."""
    raw = response.headers.get("Retry-After") if response is not None else None
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


class _TooLongWait(Exception):
    pass


class _PostHogRetry(Retry):
    """urllib3 retry that refuses to wait longer than ``max_wait`` and reports its sleeps.

    A response asking for a longer wait ends the retries at once (``MaxRetryError`` in
    ``increment``; with ``raise_on_status=False`` urllib3 then returns that response), and
    the client turns it into a ``PostHogError``.
    """

    max_wait = 300.0
    on_retry: Callable[[], None] = staticmethod(lambda: None)
    on_sleep: Callable[[float], None] = staticmethod(lambda seconds: None)
    sleeper: Callable[[float], None] = staticmethod(time.sleep)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,  # noqa: ANN001
                  _stacktrace=None):
        wait = _requested_wait(response)
        if wait is not None and wait > self.max_wait:
            raise MaxRetryError(_pool, url, _TooLongWait(wait))
        new = super().increment(method, url, response=response, error=error, _pool=_pool,
                                _stacktrace=_stacktrace)
        self.on_retry()  # not exhausted: another request follows
        return new

    def sleep(self, response=None) -> None:  # noqa: ANN001
        seconds = None
        if self.respect_retry_after_header and response is not None:
            seconds = _requested_wait(response)
        if not seconds:
            seconds = self.get_backoff_time()
        seconds = min(max(0.0, seconds), self.max_wait)
        if seconds > 0:
            self.on_sleep(seconds)
            self.sleeper(seconds)


# -- the client --------------------------------------------------------------------------------

_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_LIMIT_TAIL = re.compile(r"\b(limit|offset)\b\s+[\w{}]+\s*(?:,\s*[\w{}]+\s*)?$", re.IGNORECASE)


def _pageable(hogql: str) -> str:
    """The query, checked to end with a top-level ORDER BY (stable pages) and no LIMIT."""
    q = hogql.strip()
    if q.endswith(";"):
        raise ValueError("query_all: the query must not end with ';'")
    matches = list(_ORDER_BY.finditer(q))
    tail = q[matches[-1].end():] if matches else ""
    if not matches or tail.count("(") != tail.count(")") or not tail.strip():
        raise ValueError("query_all: the query must end with an ORDER BY clause (pages are "
                         "read with LIMIT/OFFSET, which needs a stable order)")
    if _LIMIT_TAIL.search(q):
        raise ValueError("query_all adds LIMIT/OFFSET itself; the query must not have them")
    return q


@dataclass
class PostHogClient:
    host: str  # e.g. https://us.posthog.com
    project_id: int | str
    api_key: str = field(repr=False)
    timeout_seconds: float = 60.0
    retries: int = 5
    backoff_factor: float = 0.5
    max_wait_seconds: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)  # tests inject
    stats: QueryStats = field(default_factory=QueryStats, init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.host.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"PostHog host must be an http(s) URL, got {self.host!r}")
        # no user info: the host is named in messages
        name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = f":{parts.port}" if parts.port else ""
        self.host = f"{parts.scheme}://{name}{port}{parts.path.rstrip('/')}"
        self.url = f"{self.host}/api/projects/{self.project_id}/query/"
        stats = self.stats

        def count_retry() -> None:
            stats.retries += 1
            stats.requests += 1

        def count_sleep(seconds: float) -> None:
            stats.wait_seconds += seconds

        retry_cls = type("PostHogRetry", (_PostHogRetry,), {
            "max_wait": float(self.max_wait_seconds), "on_retry": staticmethod(count_retry),
            "on_sleep": staticmethod(count_sleep), "sleeper": staticmethod(self.sleep)})
        self._retry = retry_cls(
            total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
            redirect=False,  # the bearer key goes to the configured host only
            backoff_factor=self.backoff_factor, backoff_max=self.max_wait_seconds,
            status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"POST"}),
            respect_retry_after_header=True, raise_on_status=False, raise_on_redirect=False,
        )
        self._http = urllib3.PoolManager(
            retries=self._retry,
            timeout=urllib3.Timeout(connect=min(10.0, self.timeout_seconds),
                                    read=self.timeout_seconds),
        )
        self._headers = {"Authorization": f"Bearer {self.api_key}",
                         "Content-Type": "application/json", "Accept": "application/json",
                         "User-Agent": "analytics-pipeline"}

    def _where(self) -> str:
        return f"project {self.project_id} at {self.host}"

    def query(self, hogql: str, values: Mapping[str, Any] | None = None) -> QueryAnswer:
        """Run one HogQL query; ``values`` fill its ``{name}`` placeholders."""
        body = json.dumps({"query": {"kind": "HogQLQuery", "query": hogql,
                                     "values": dict(values or {})}}).encode()
        self.stats.queries += 1
        self.stats.requests += 1
        started = time.perf_counter()
        retries_before = self.stats.retries
        try:
            resp = self._http.request("POST", self.url, body=body, headers=self._headers,
                                      redirect=False, retries=self._retry)
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise self._fail(f"PostHog query API unreachable for {self._where()} after "
                             f"{self.retries} retries: {type(reason).__name__}") from None
        finally:
            self.stats.seconds += time.perf_counter() - started
        if resp.status != 200:
            raise self._fail(self._status_message(resp, self.stats.retries - retries_before))
        try:
            data = json.loads(resp.data)
            answer = QueryAnswer(columns=list(data["columns"]), types=data.get("types") or [],
                                 results=data["results"], has_more=bool(data.get("hasMore")))
        except (ValueError, KeyError, TypeError):
            raise self._fail(f"PostHog returned an answer that is not a query result for "
                             f"{self._where()}") from None
        self.stats.rows += len(answer.results)
        log.debug("PostHog query for %s: %d rows (hasMore=%s) in %.2fs", self._where(),
                  len(answer.results), answer.has_more, time.perf_counter() - started)
        return answer

    def query_all(self, hogql: str, values: Mapping[str, Any] | None = None,
                  page_size: int = MAX_PAGE, schema: pa.Schema | None = None) -> pa.Table:
        """Every row of a query that ends with ``ORDER BY``: pages of ``page_size`` rows read
        with an appended ``LIMIT page_size OFFSET n`` while PostHog answers ``hasMore``."""
        q = _pageable(hogql)
        page_size = int(page_size)
        if not 1 <= page_size <= MAX_PAGE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE}, got {page_size}")
        tables, offset = [], 0
        while True:
            answer = self.query(f"{q}\nLIMIT {page_size} OFFSET {offset}", values)
            tables.append(answer.to_arrow(schema))
            if not answer.has_more:
                break
            if not answer.results:
                raise self._fail(f"PostHog answered hasMore with an empty page at offset "
                                 f"{offset} for {self._where()}")
            offset += len(answer.results)
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _fail(self, message: str) -> PostHogError:
        # the key cannot be in the message, but make it impossible rather than unlikely
        if self.api_key:
            message = message.replace(self.api_key, "***")
        log.warning("%s", message)
        return PostHogError(message)

    def _status_message(self, resp, retried: int) -> str:  # noqa: ANN001
        status = resp.status
        where = self._where()
        if status in (401, 403):
            return (f"PostHog refused the personal API key for {where} (HTTP {status}); check "
                    "the key and its access to this project (query:read scope)")
        if status == 404:
            return f"PostHog project not found: {where} (HTTP 404); check the host and project id"
        if 300 <= status < 400:
            return (f"PostHog answered a redirect (HTTP {status}) for {where}; not followed, "
                    "the API key is only sent to the configured host: check the host URL")
        wait = _requested_wait(resp)
        if status in RETRY_STATUSES and wait is not None and wait > self.max_wait_seconds:
            what = "rate limit reached" if status == 429 else f"HTTP {status}"
            return (f"PostHog {what} for {where}: it asked to wait {wait:.0f} seconds "
                    f"(Retry-After), more than max_wait_seconds={self.max_wait_seconds:g}; "
                    "failing now so the run can be retried later")
        if status == 429:
            return (f"PostHog rate limit for {where} still reached after {retried} retries "
                    "(HTTP 429)")
        if status == 400:
            return f"PostHog rejected the query for {where} (HTTP 400): {_detail(resp)}"
        if status >= 500:
            return f"PostHog failed with HTTP {status} for {where} after {retried} retries"
        return f"PostHog query failed with HTTP {status} for {where}: {_detail(resp)}"


def _detail(resp) -> str:  # noqa: ANN001
    """PostHog's own explanation of an error answer (``detail``), else a short body."""
    try:
        data = json.loads(resp.data)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("detail"):
        return str(data["detail"])[:2000]
    text = (resp.data or b"")[:300].decode("utf-8", "replace").strip()
    return text or "no detail"
