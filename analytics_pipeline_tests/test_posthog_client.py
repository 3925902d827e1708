"""The PostHog Query API client against the local simulator over loopback: answers and Arrow,
paging, retries (429 with Retry-After, 5xx), failing fast (too long a wait, 401/403, 400),
redirects, secrets, and the stats counters."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest

from analytics_pipeline.dev.posthog_simulator import Fault, PostHogSimulator
from analytics_pipeline.push.posthog import PostHogClient, PostHogError, QueryStats

T0 = 1_772_000_000.0  # 2026-02-25T06:13:20Z
START = datetime.fromtimestamp(T0, timezone.utc)
SECRET = "phx_Sup3rSecretKey_do_not_log"


@pytest.fixture
def posthog():
    with PostHogSimulator(clock=lambda: T0, api_key=SECRET) as s:
        yield s


class Sleeps(list):
    """Records the waits a client asks for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(sim, **kw) -> PostHogClient:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("backoff_factor", 0.01)
    return PostHogClient(sim.base_url, sim.project_id, kw.pop("api_key", sim.api_key), **kw)


def add_numbered(sim, n: int) -> None:
    """n events one second apart, distinct ids u0..u9."""
    ts = (np.int64(T0) + np.arange(n)) * 1_000_000
    sim.add_events({"event": np.full(n, "$pageview"),
                    "distinct_id": np.char.add("u", (np.arange(n) % 10).astype(str)),
                    "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC"))})


# -- answers ---------------------------------------------------------------------------------


def test_query_answer_and_arrow_types(posthog):
    posthog.add_event("signup", "d1", START + timedelta(microseconds=7), {"plan": "pro"})
    c = client(posthog)
    answer = c.query("SELECT event, timestamp, properties.plan AS plan, properties.nope AS nope,"
                     " count() OVER () AS n, {v} AS v FROM events", {"v": "O'Brien"})
    assert answer.columns == ["event", "timestamp", "plan", "nope", "n", "v"]
    assert answer.results == [["signup", "2026-02-25T06:13:20.000007Z", "pro", None, 1,
                               "O'Brien"]]
    assert answer.has_more is False
    table = answer.to_arrow()
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("n").type == pa.int64()
    assert table.schema.field("nope").type == pa.string()
    assert table.column("timestamp")[0].as_py() == START + timedelta(microseconds=7)
    # the value travelled as a value, the query text kept its placeholder
    assert posthog.queries[-1].values == {"v": "O'Brien"}
    assert "{v}" in posthog.queries[-1].query


def test_query_all_pages_while_has_more(posthog):
    add_numbered(posthog, 250)
    c = client(posthog)
    table = c.query_all("SELECT uuid, timestamp FROM events WHERE event = {e} "
                        "ORDER BY timestamp, uuid", {"e": "$pageview"}, page_size=100)
    assert table.num_rows == 250 and len(set(table.column("uuid").to_pylist())) == 250
    assert table.column("timestamp").to_pylist() == sorted(table.column("timestamp").to_pylist())
    assert [q.query.split("\n")[-1] for q in posthog.queries] == [
        "LIMIT 100 OFFSET 0", "LIMIT 100 OFFSET 100", "LIMIT 100 OFFSET 200"]
    assert (c.stats.queries, c.stats.rows) == (3, 250)
    # without paging PostHog would have answered its default 100 rows
    assert len(c.query("SELECT uuid FROM events").results) == 100
    # an exact multiple of the page: the last page says hasMore = false
    assert client(posthog).query_all("SELECT uuid FROM events ORDER BY uuid",
                                     page_size=125).num_rows == 250


def test_query_all_typed_by_schema_and_empty(posthog):
    c = client(posthog)
    schema = pa.schema([("n", pa.int64()), ("x", pa.string())])
    table = c.query_all("SELECT count() AS n, 'a' AS x FROM events ORDER BY n", schema=schema)
    assert table.to_pylist() == [{"n": 0, "x": "a"}] and table.schema == schema
    empty = c.query_all("SELECT event, timestamp FROM events ORDER BY timestamp")
    assert empty.num_rows == 0
    assert empty.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize("hogql", [
    "SELECT uuid FROM events",  # no stable order
    "SELECT uuid FROM events ORDER BY uuid LIMIT 10",
    "SELECT uuid FROM events ORDER BY uuid;",
    "SELECT x FROM (SELECT uuid AS x FROM events ORDER BY uuid)",  # ORDER BY of a subquery
])
def test_query_all_refuses_queries_it_cannot_page(posthog, hogql):
    with pytest.raises(ValueError):
        client(posthog).query_all(hogql)
    assert posthog.requests == []


# -- retries -----------------------------------------------------------------------------------


def test_429_with_retry_after_then_success(posthog):
    posthog.inject(Fault(429, retry_after=7))
    c = client(posthog)
    assert c.query("SELECT 1 AS one").results == [[1]]
    assert c.sleep == [7.0]  # the wait PostHog asked for, not the backoff
    assert len(posthog.requests) == 2
    assert (c.stats.queries, c.stats.requests, c.stats.retries) == (1, 2, 1)
    assert c.stats.wait_seconds == 7.0


def test_retry_after_really_sleeps_by_default(posthog):
    posthog.inject(Fault(429, retry_after=1))
    c = PostHogClient(posthog.base_url, posthog.project_id, posthog.api_key)
    started = time.monotonic()
    assert c.query("SELECT 1 AS one").results == [[1]]
    assert time.monotonic() - started >= 0.95


def test_429_with_too_long_retry_after_fails_fast(posthog):
    posthog.inject(Fault(429, retry_after=3600))
    c = client(posthog, max_wait_seconds=300)
    started = time.monotonic()
    with pytest.raises(PostHogError) as info:
        c.query("SELECT 1")
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert "3600 seconds" in message and "Retry-After" in message
    assert "max_wait_seconds=300" in message and "retried later" in message
    assert c.sleep == [] and len(posthog.requests) == 1 and posthog.queries == []


def test_hourly_budget_spent_fails_fast():
    """The simulator's own rolling-hour limit, as PostHog's: the next slot is far away."""
    with PostHogSimulator(clock=lambda: T0, rate_limit_per_hour=2) as sim:
        c = client(sim)
        c.query("SELECT 1")
        c.query("SELECT 1")
        with pytest.raises(PostHogError, match=r"asked to wait 3600 seconds"):
            c.query("SELECT 1")
        assert c.sleep == []


def test_500_then_success_with_backoff(posthog):
    posthog.inject(Fault(500), Fault(502))
    c = client(posthog, backoff_factor=0.5)
    assert c.query("SELECT 2 AS two").results == [[2]]
    assert len(posthog.requests) == 3
    # urllib3's exponential backoff: none before the first retry, then factor * 2^(n-1)
    assert c.sleep == [1.0]
    assert c.stats.retries == 2 and c.stats.requests == 3


def test_5xx_until_retries_are_spent(posthog):
    posthog.inject(*[Fault(503)] * 5)
    c = client(posthog, retries=2)
    with pytest.raises(PostHogError, match=r"HTTP 503 .* after 2 retries"):
        c.query("SELECT 1")
    assert len(posthog.requests) == 3
    assert (c.stats.queries, c.stats.requests, c.stats.retries) == (1, 3, 2)


def test_timeout_is_retried_then_reported(posthog):
    posthog.inject(Fault(200, delay=1.0), Fault(200, delay=1.0))
    c = client(posthog, retries=1, timeout_seconds=0.2)
    with pytest.raises(PostHogError, match="unreachable.*ReadTimeoutError"):
        c.query("SELECT 1")
    assert c.stats.retries == 1


# -- failing fast --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_fails_fast_without_the_key(posthog, caplog, status):
    caplog.set_level(logging.DEBUG)
    if status == 401:
        c = client(posthog, api_key="phx_Wr0ngButSecret")
        secret = "phx_Wr0ngButSecret"
    else:
        posthog.inject(Fault(403))
        c, secret = client(posthog), SECRET
    with pytest.raises(PostHogError) as info:
        c.query("SELECT 1")
    message = str(info.value)
    assert f"HTTP {status}" in message
    assert posthog.base_url in message and f"project {posthog.project_id}" in message
    assert secret not in message and info.value.__cause__ is None
    assert secret not in caplog.text and "Bearer" not in caplog.text
    assert message in caplog.text  # the failure is logged, without the key
    assert secret not in repr(c)
    assert len(posthog.requests) == 1 and c.sleep == []


def test_400_surfaces_posthogs_detail(posthog):
    c = client(posthog)
    with pytest.raises(PostHogError) as info:
        c.query("SELECT nope FROM events")
    assert "HTTP 400" in str(info.value)
    assert posthog.queries[-1].error.split("\n")[0] in str(info.value)
    assert "nope" in str(info.value)
    assert len(posthog.requests) == 1


def test_404_names_host_and_project(posthog):
    c = PostHogClient(posthog.base_url, 999, posthog.api_key, sleep=Sleeps())
    with pytest.raises(PostHogError, match=r"project 999 at http://127\.0\.0\.1:\d+ .*404"):
        c.query("SELECT 1")


class _Recorder(BaseHTTPRequestHandler):
    seen: list = []
    location = ""

    def log_message(self, *args):  # noqa: ANN002
        pass

    def do_POST(self):  # noqa: N802
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if type(self).location:
            self.send_response(307)
            self.send_header("Location", type(self).location)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            body = json.dumps({"results": [], "columns": [], "types": [],
                               "hasMore": False}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


def _serve(handler) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_redirects_are_not_followed():
    other = type("Other", (_Recorder,), {"seen": [], "location": ""})
    redirecting = type("Redirecting", (_Recorder,), {"seen": []})
    other_server, other_url = _serve(other)
    redirecting.location = f"{other_url}/api/projects/1/query/"
    server, url = _serve(redirecting)
    try:
        c = PostHogClient(url, 1, SECRET, sleep=Sleeps())
        with pytest.raises(PostHogError, match="redirect.*not followed") as info:
            c.query("SELECT 1")
        assert SECRET not in str(info.value)
        assert redirecting.seen == [("/api/projects/1/query/", f"Bearer {SECRET}")]
        assert other.seen == []  # the key never reached the other origin
    finally:
        for s in (server, other_server):
            s.shutdown()
            s.server_close()


def test_host_with_credentials_is_not_named_in_messages(posthog):
    host = posthog.base_url.replace("http://", "http://user:pw@")
    c = PostHogClient(host, 999, posthog.api_key, sleep=Sleeps())
    with pytest.raises(PostHogError) as info:
        c.query("SELECT 1")
    assert "pw" not in str(info.value) and posthog.base_url in str(info.value)
    with pytest.raises(ValueError):
        PostHogClient("ftp://example.com", 1, SECRET)


# -- stats ---------------------------------------------------------------------------------------


def test_stats_count_queries_requests_and_rows(posthog):
    add_numbered(posthog, 30)
    c = client(posthog)
    assert c.stats == QueryStats()
    c.query("SELECT uuid FROM events LIMIT 12")
    posthog.inject(Fault(429, retry_after=3))
    c.query_all("SELECT uuid FROM events ORDER BY uuid", page_size=20)
    with pytest.raises(PostHogError):
        c.query("SELECT nope FROM events")
    s = c.stats
    assert (s.queries, s.requests, s.retries, s.rows) == (4, 5, 1, 12 + 30)
    assert s.seconds > 0 and s.wait_seconds == 3.0 and c.sleep == [3.0]
    assert set(s.as_dict()) == {"queries", "requests", "retries", "rows", "wait_seconds",
                                "seconds"}
