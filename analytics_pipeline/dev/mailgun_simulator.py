"""A local Mailgun Events API: the endpoint, paging, filters and faults, on loopback.

Used by the tests and the demo. It speaks the real service's shape: ``GET
/v3/{domain}/events`` with basic auth ``api:{key}``, ``begin``/``end`` (epoch seconds),
``ascending``, ``limit`` (≤ 300), ``event`` and ``tags`` filter expressions (``a OR b``,
``NOT a``), pages ``{"items": [...], "paging": {"next": ..., ...}}`` whose ``next`` URL
resumes after the last item served. Events can be *indexed late* (visible only from
``indexed_at`` on), so an ascending query can miss events in pages it already served,
as the real one can. Faults are queued: 429 with ``Retry-After``/``X-RateLimit-Reset``,
500, slow responses.
"""

from __future__ import annotations

import base64
import bisect
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Fault:
    status: int = 500  # 429, 500, 503, or 200 with a delay
    retry_after: int | None = None  # whole seconds, as HTTP says
    rate_limit_reset: float | None = None
    delay: float = 0.0


def _matches(expr: str | None, values: list[str]) -> bool:
    """Mailgun filter expressions, the common subset: ``a``, ``a OR b``, ``NOT a``."""
    if not expr:
        return True
    expr = expr.strip()
    if expr.upper().startswith("NOT "):
        return not _matches(expr[4:], values)
    options = [t.strip().lower() for t in expr.split(" OR ")]
    return any(v.lower() in options for v in values)


@dataclass
class MailgunSimulator:
    domain: str = "mg.example.com"
    api_key: str = "key-simulator"
    clock: Callable[[], float] = time.time
    events: list[dict] = field(default_factory=list)
    faults: deque = field(default_factory=deque)
    requests: list[str] = field(default_factory=list)

    def add(self, item: dict, indexed_at: float | None = None) -> None:
        """Add an event; it becomes visible at ``indexed_at`` (default: its timestamp)."""
        if indexed_at is None:
            ts = item.get("timestamp") if isinstance(item, dict) else None
            indexed_at = float(ts) if isinstance(ts, (int, float)) else 0.0
        self.events.append({"item": item, "indexed_at": indexed_at})
        self._sorted = None

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    # -- server ------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002 - quiet
                pass

            def do_GET(self):  # noqa: N802
                sim._handle(self)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://{host}:{self._server.server_address[1]}/v3"
        return self.base_url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MailgunSimulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling ----------------------------------------------------------------

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: dict,
              headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        self.requests.append(h.path)
        if self.faults:
            fault = self.faults.popleft()
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status != 200:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                if fault.rate_limit_reset is not None:
                    headers["X-RateLimit-Reset"] = str(fault.rate_limit_reset)
                self._send(h, fault.status, {"message": "simulated fault"}, headers)
                return
        expected = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()
        if h.headers.get("Authorization") != expected:
            self._send(h, 401, {"message": "Invalid private key"})
            return
        url = urlparse(h.path)
        parts = url.path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "v3" or parts[2] != "events":
            self._send(h, 404, {"message": "not found"})
            return
        if parts[1] != self.domain:
            self._send(h, 404, {"message": f"Domain not found: {parts[1]}"})
            return
        if len(parts) == 4:  # a paging URL: the query is in the token
            query = json.loads(base64.urlsafe_b64decode(parts[3].encode()))
        else:
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            try:
                query = {
                    "begin": float(q["begin"]) if "begin" in q else None,
                    "end": float(q["end"]) if "end" in q else None,
                    "ascending": q.get("ascending", "no") == "yes",
                    "limit": min(300, int(q.get("limit", 100))),
                    "event": q.get("event"), "tags": q.get("tags"), "after": None,
                }
            except ValueError:
                self._send(h, 400, {"message": "invalid parameter"})
                return
        self._send(h, 200, self._page(query, h.headers.get("Host", "127.0.0.1")))

    def _index(self) -> tuple[list, list]:
        if getattr(self, "_sorted", None) is None:
            rows = []
            for e in self.events:
                ts = e["item"].get("timestamp") if isinstance(e["item"], dict) else None
                ts = float(ts) if isinstance(ts, (int, float)) else 0.0
                rows.append(((ts, str(e["item"].get("id", ""))), e))
            rows.sort(key=lambda r: r[0])
            self._sorted = ([r[0] for r in rows], [r[1] for r in rows])
        return self._sorted

    def _page(self, query: dict, host: str) -> dict:
        if query["ascending"]:
            return self._page_ascending(query, host)
        return self._page_scan(query, host)

    def _visible(self, e: dict, ts: float, query: dict, now: float) -> bool:
        item = e["item"]
        return (e["indexed_at"] <= now
                and _matches(query["event"], [str(item.get("event", ""))])
                and (not query["tags"] or _matches(query["tags"], list(item.get("tags") or []))))

    def _page_ascending(self, query: dict, host: str) -> dict:
        """Ascending pages from a sorted index: O(page) per request, for large loads."""
        keys, rows = self._index()
        now = self.clock()
        start = (query["begin"] if query["begin"] is not None else float("-inf"), "")
        if query.get("after"):
            after = tuple(query["after"])
            i = bisect.bisect_right(keys, after)
            i = max(i, bisect.bisect_left(keys, start))
        else:
            i = bisect.bisect_left(keys, start)
        page, last = [], None
        while i < len(keys) and len(page) < query["limit"]:
            key, e = keys[i], rows[i]
            if query["end"] is not None and key[0] >= query["end"]:
                break
            if self._visible(e, key[0], query, now):
                page.append(e["item"])
                last = key
            i += 1
        return self._render(query, host, page, last)

    def _render(self, query: dict, host: str, items: list, last) -> dict:
        nxt = dict(query, after=list(last) if last else query.get("after"))
        token = base64.urlsafe_b64encode(json.dumps(nxt).encode()).decode()
        base = f"http://{host}/v3/{self.domain}/events"
        return {"items": items,
                "paging": {"next": f"{base}/{token}", "previous": f"{base}/{token}",
                           "first": base, "last": base}}

    def _page_scan(self, query: dict, host: str) -> dict:
        now = self.clock()
        asc = query["ascending"]
        visible = []
        for e in self.events:
            item = e["item"]
            ts = float(item.get("timestamp", 0)) if isinstance(item.get("timestamp"),
                                                               (int, float)) else 0.0
            if e["indexed_at"] > now:
                continue
            if query["begin"] is not None and ts < query["begin"]:
                continue
            if query["end"] is not None and ts >= query["end"]:
                continue
            if not _matches(query["event"], [str(item.get("event", ""))]):
                continue
            if query["tags"] and not _matches(query["tags"], list(item.get("tags") or [])):
                continue
            visible.append(((ts, str(item.get("id", ""))), item))
        visible.sort(key=lambda kv: kv[0], reverse=not asc)
        after = tuple(query["after"]) if query.get("after") else None
        if after is not None:
            visible = [kv for kv in visible if (kv[0] > after if asc else kv[0] < after)]
        page = visible[: query["limit"]]
        return self._render(query, host, [kv[1] for kv in page], page[-1][0] if page else None)


def sample_item(event_id: str, event: str, timestamp: float, recipient: str,
                message_id: str, tags: list[str] | None = None, **extra) -> dict:
    """An item as Mailgun sends it."""
    item = {"id": event_id, "event": event, "timestamp": timestamp, "recipient": recipient,
            "tags": tags or [], "user-variables": {},
            "message": {"headers": {"message-id": message_id, "to": recipient}}}
    if event == "failed":
        item.setdefault("severity", extra.pop("severity", "permanent"))
        item["delivery-status"] = {"code": extra.pop("code", 550),
                                   "message": "mailbox unavailable",
                                   "description": "", "enhanced-code": "5.1.1"}
    item.update(extra)
    return item
