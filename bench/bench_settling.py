"""Benchmark: pages per second of a settling pass over a UTC day with many landed ids.

A day of ``--landed`` events is landed in ``--files`` files, then ``fetch_provider_events``
runs a settling pass only (no fresh window, no reconciliation) over that day, whose
``--pages`` pages of 300 items come from an in-memory client (no HTTP, so the measure is
the pass itself: parsing, de-duplication against the landed ids, landing). 1 % of the
items are new. Reported: the time to read the landed ids, and pages/s of the pass.

Usage: python bench/bench_settling.py [--landed 2000000 --files 300 --pages 300]
Run against older code with PYTHONPATH pointing at its checkout (``git archive``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.dev.mailgun_simulator import sample_item
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA
from analytics_pipeline.email.metrics import EMAIL_PIPELINES
from analytics_pipeline.email.steps import fetch_provider_events

DAY_START = 1_772_064_000.0  # 2026-02-26T00:00Z
PAGE = 300


class MemoryClient:
    """``MailgunClient.pages`` from prebuilt pages."""

    def __init__(self, pages: list[list[dict]]) -> None:
        self._pages = pages

    def pages(self, begin: float, end: float, event_filter=None, tags=None):
        yield from self._pages


def ids(n: int, prefix: str) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), 16))


def land(log: ProviderEventLog, n: int, files: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    eid = ids(n, "evt")
    ts = DAY_START + np.sort(rng.uniform(0, 86_000, n))
    for k, part in enumerate(np.array_split(np.arange(n), files)):
        m = len(part)
        t = pa.table({
            "event_id": pa.array(eid[part]), "event": pa.repeat(pa.scalar("delivered"), m),
            "timestamp": pa.array((ts[part] * 1e6).astype("int64")).cast(
                pa.timestamp("us", tz="UTC")),
            "recipient": pa.repeat(pa.scalar("r@x.com"), m),
            "message_id": pa.repeat(pa.scalar("m@mg"), m),
            "severity": pa.nulls(m, pa.string()), "tags": pa.nulls(m, pa.list_(pa.string())),
            "delivery_status_code": pa.nulls(m, pa.string()),
            "delivery_status_message": pa.nulls(m, pa.string()),
            "raw": pa.repeat(pa.scalar("{}"), m),
            "fetched_at": pa.repeat(pa.scalar(datetime.fromtimestamp(DAY_START + 90_000,
                                                                      timezone.utc)), m),
        }, schema=PROVIDER_EVENT_SCHEMA)
        log.append(t, f"{int(DAY_START)}-{k:06d}")
    return eid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--landed", type=int, default=2_000_000)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--compact", action="store_true",
                    help="then compact the day's folder and measure the id read again")
    args = ap.parse_args()
    pipeline = EMAIL_PIPELINES[0]
    with tempfile.TemporaryDirectory() as tmp:
        log = ProviderEventLog(os.path.join(tmp, "landing"), pipeline.stream)
        started = time.perf_counter()
        landed = land(log, args.landed, args.files)
        print(f"landed {args.landed:,} events in {args.files} files "
              f"({time.perf_counter() - started:.1f} s)")
        rng = np.random.default_rng(2)
        n = args.pages * PAGE
        new = rng.random(n) < 0.01
        item_ids = np.where(new, ids(n, "new"), landed[rng.integers(0, len(landed), n)])
        times = DAY_START + np.sort(rng.uniform(0, 86_000, n))
        items = [sample_item(str(i), "delivered", float(t), "r@x.com", "<m@mg>",
                             [pipeline.default_tags])
                 for i, t in zip(item_ids, times, strict=True)]
        pages = [items[i:i + PAGE] for i in range(0, n, PAGE)]
        engine = wh.warehouse_engine(f"sqlite:///{tmp}/wh.db")
        now = DAY_START + 2 * 86_400
        wh.advance_cursor(engine, pipeline.cursor_name, now - 60, DAY_START)
        day = datetime.fromtimestamp(DAY_START, timezone.utc).date()
        started = time.perf_counter()
        log.read([day], PROVIDER_EVENT_SCHEMA, columns=[])
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        r = fetch_provider_events(MemoryClient(pages), log, engine, pipeline, "", now - 60,
                                  now, settle_seconds=86_400 + 60,
                                  initial_lookback_seconds=3600, reconcile_every_seconds=None)
        total = time.perf_counter() - started
        stats = r.passes["settling"]
        assert stats.items_read == n and stats.stored == len(set(item_ids[new].tolist())), stats
        print(f"landed ids read once: {read_s:.2f} s; settling pass of {args.pages} pages "
              f"({n:,} items, {stats.stored:,} new): {total:.2f} s = "
              f"{args.pages / total:.1f} pages/s; without the id read: "
              f"{args.pages / max(total - read_s, 1e-9):.1f} pages/s")
        if args.compact:
            from analytics_pipeline.email.compaction import compact_log

            files = len(log.files(day))
            started = time.perf_counter()
            [c] = compact_log(log, engine, pipeline.name, [day], min_files=2)
            compact_s = time.perf_counter() - started
            started = time.perf_counter()
            log.read([day], PROVIDER_EVENT_SCHEMA, columns=[])
            print(f"compaction of {files} files ({c.rows:,} events): {compact_s:.2f} s; "
                  f"landed ids read from 1 file: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
