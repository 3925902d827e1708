"""The Mailgun client against the local simulator: paging, filters, retries, auth."""

import time

import pytest

from analytics_pipeline.dev.mailgun_simulator import Fault, MailgunSimulator, sample_item
from analytics_pipeline.email.mailgun import MailgunClient, MailgunError, parse_items

T0 = 1_772_000_000.0  # 2026-02-25


@pytest.fixture
def sim():
    with MailgunSimulator(clock=lambda: T0 + 10_000) as s:
        for i in range(650):
            s.add(sample_item(f"e{i:04d}", ["delivered", "opened", "clicked"][i % 3], T0 + i,
                              f"User{i}@Example.com", f"<m{i % 7}@mg>",
                              ["newsletter"] if i % 2 else ["automation"]))
        yield s


def client(sim, **kw):
    return MailgunClient(sim.domain, sim.api_key, sim.base_url, backoff_factor=0.01, **kw)


def test_pages_follow_next_until_empty_and_respect_filters(sim):
    pages = list(client(sim).pages(T0, T0 + 650))
    assert [len(p) for p in pages] == [300, 300, 50]
    ids = [i["id"] for p in pages for i in p]
    assert ids == sorted(ids) and len(set(ids)) == 650
    opened = [i for p in client(sim).pages(T0, T0 + 650, event_filter="opened OR clicked")
              for i in p]
    assert {i["event"] for i in opened} == {"opened", "clicked"}
    tagged = [i for p in client(sim).pages(T0, T0 + 100, tags="newsletter") for i in p]
    assert len(tagged) == 50 and all("newsletter" in i["tags"] for i in tagged)
    # end is exclusive
    assert sum(len(p) for p in client(sim).pages(T0, T0 + 10)) == 10


def test_429_honours_retry_after_then_succeeds(sim):
    sim.inject(Fault(429, retry_after=1))
    t = time.monotonic()
    pages = list(client(sim).pages(T0, T0 + 5))
    assert time.monotonic() - t >= 0.9
    assert sum(len(p) for p in pages) == 5


def test_429_with_rate_limit_reset_and_5xx_are_retried(sim):
    sim.inject(Fault(429, rate_limit_reset=time.time() + 0.5), Fault(500), Fault(503))
    assert sum(len(p) for p in client(sim).pages(T0, T0 + 5)) == 5
    assert len(sim.requests) >= 4


def test_retry_waits_are_bounded(sim):
    sim.inject(Fault(429, retry_after=3600))
    t = time.monotonic()
    assert sum(len(p) for p in client(sim, max_wait_seconds=0.5).pages(T0, T0 + 5)) == 5
    assert time.monotonic() - t < 5


def test_persistent_5xx_gives_up_with_a_clear_error(sim):
    sim.inject(*[Fault(500)] * 10)
    with pytest.raises(MailgunError, match="mg.example.com"):
        list(client(sim, retries=2).pages(T0, T0 + 5))


def test_slow_response_times_out_and_is_retried(sim):
    sim.inject(Fault(200, delay=1.5))
    pages = list(client(sim, timeout_seconds=0.5).pages(T0, T0 + 5))
    assert sum(len(p) for p in pages) == 5


def test_401_fails_fast_without_the_key(sim):
    bad = MailgunClient(sim.domain, "key-VERY-SECRET-123", sim.base_url)
    with pytest.raises(MailgunError) as info:
        list(bad.pages(T0, T0 + 5))
    assert "VERY-SECRET" not in str(info.value)
    assert sim.domain in str(info.value) and "401" in str(info.value)
    assert len(sim.requests) == 1  # not retried


def test_404_names_the_domain(sim):
    other = MailgunClient("unknown.example.com", sim.api_key, sim.base_url)
    with pytest.raises(MailgunError, match="unknown.example.com.*404"):
        list(other.pages(T0, T0 + 5))


def test_parse_items_types_lowercases_and_keeps_raw():
    items = [sample_item("a", "Delivered", T0 + 0.5, " Ann@Example.COM ", "<m1@mg>"),
             sample_item("b", "failed", T0 + 1, "bob@example.com", "<m1@mg>",
                         severity="Temporary")]
    page = parse_items(items, fetched_at=T0 + 60)
    rows = page.events.to_pylist()
    assert [r["event"] for r in rows] == ["delivered", "failed"]
    assert rows[0]["recipient"] == "ann@example.com"
    assert rows[0]["timestamp"].timestamp() == T0 + 0.5
    assert rows[1]["severity"] == "temporary" and rows[1]["delivery_status_code"] == "550"
    assert '"recipient":" Ann@Example.COM "' in rows[0]["raw"]
    assert page.malformed == []


def test_parse_items_quarantines_only_the_malformed_item():
    items = [sample_item("a", "opened", T0, "a@x", "<m@mg>"),
             {"id": "b", "event": "opened", "timestamp": "soon", "recipient": "b@x",
              "message": {"headers": {"message-id": "<m@mg>"}}},
             {"id": "c", "event": "opened", "timestamp": T0, "recipient": "c@x"},
             "not an object",
             sample_item("d", "clicked", T0 + 1, "d@x", "<m@mg>")]
    page = parse_items(items, fetched_at=T0)
    assert page.events["event_id"].to_pylist() == ["a", "d"]
    assert [(i, why) for i, why, _ in page.malformed] == [
        ("b", "timestamp is not a number"), ("c", "missing message.headers.message-id"),
        ("", "item is not an object")]


def test_parse_items_drops_items_outside_the_window():
    items = [sample_item(str(i), "opened", T0 + i, "a@x", "<m@mg>") for i in range(5)]
    page = parse_items(items, fetched_at=T0, begin=T0 + 1, end=T0 + 3)
    assert page.events["event_id"].to_pylist() == ["1", "2"]


# --- paging links: credentials only to the configured origin --------------------------------


class _Recorder:
    """A tiny HTTP server that records every request it receives (and its headers)."""

    def __init__(self, host: str, page: dict | None = None):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002
                pass

            def do_GET(self):  # noqa: N802
                rec.requests.append({"path": self.path, **dict(self.headers)})
                body = json.dumps(rec.page).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.page = page or {"items": [], "paging": {}}
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("where", ["other_host", "other_port", "other_scheme"])
def test_paging_link_to_another_origin_is_not_followed(where):
    """A page whose ``paging.next`` names another scheme, host or port fails with a clear
    error naming the domain, and the other origin never receives a request (nor the key)."""
    foreign = _Recorder("127.0.0.2" if where == "other_host" else "127.0.0.1",
                        {"items": [sample_item("x", "opened", T0, "a@x", "<m@mg>")],
                         "paging": {}})
    api = _Recorder("127.0.0.1")
    nxt = {"other_host": f"http://127.0.0.2:{foreign.port}/v3/mg.example.com/events/t",
           "other_port": f"http://127.0.0.1:{foreign.port}/v3/mg.example.com/events/t",
           "other_scheme": f"https://127.0.0.1:{api.port}/v3/mg.example.com/events/t"}[where]
    api.page = {"items": [sample_item("a", "opened", T0, "a@x", "<m@mg>")],
                "paging": {"next": nxt}}
    c = MailgunClient("mg.example.com", "key-VERY-SECRET-123", f"http://127.0.0.1:{api.port}/v3",
                      backoff_factor=0.01, retries=1)
    try:
        pages = c.pages(T0, T0 + 5)
        assert [i["id"] for i in next(pages)] == ["a"]
        with pytest.raises(MailgunError) as info:
            next(pages)
        assert "mg.example.com" in str(info.value) and "paging" in str(info.value)
        assert "VERY-SECRET" not in str(info.value)
        assert foreign.requests == []
        assert len(api.requests) == 1  # the other scheme is not even tried on the API port
    finally:
        foreign.close()
        api.close()


def test_paging_link_on_the_same_origin_is_followed():
    api = _Recorder("127.0.0.1")
    base = f"http://127.0.0.1:{api.port}/v3"
    api.page = {"items": [sample_item("a", "opened", T0, "a@x", "<m@mg>")],
                "paging": {"next": f"http://127.0.0.1:{api.port}/v3/mg.example.com/events/t"}}
    c = MailgunClient("mg.example.com", "k", base, backoff_factor=0.01)
    try:
        pages = c.pages(T0, T0 + 5)
        next(pages)
        next(pages)
        assert [r["path"] for r in api.requests][1] == "/v3/mg.example.com/events/t"
    finally:
        api.close()
