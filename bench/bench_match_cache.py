"""Benchmark: the daily extraction of one local day in several timezones, matching each
partition's window (``cache=False``) or each UTC date once (the default).

Usage: python bench/bench_match_cache.py [--events-per-day 300000 --recipients 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore, ProviderEventLog
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA
from analytics_pipeline.email.metrics import EMAIL_PIPELINES
from analytics_pipeline.email.source import EmailSource, src_email_recipients, src_emails
from analytics_pipeline.email.steps import extract_email_partition

TZS = ["UTC", "Asia/Kathmandu", "America/New_York", "Asia/Kolkata", "America/Los_Angeles"]
DAY0 = 1_771_891_200  # 2026-02-24T00:00Z


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events-per-day", type=int, default=300_000)
    ap.add_argument("--recipients", type=int, default=20_000)
    args = ap.parse_args()
    pipeline = EMAIL_PIPELINES[0]
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        src_url = f"sqlite:///{tmp}/app.db"
        write_source(src_url, [{"id": a, "name": f"A{a}", "reporting_timezone": tz}
                               for a, tz in enumerate(TZS, 1)], [])
        src = wh.make_engine(src_url)
        with src.begin() as c:
            c.execute(src_emails.insert(), [
                {"id": e, "account_id": e, "kind": "newsletter", "automation_id": None,
                 "subject": "s", "track_opens": True} for e in range(1, len(TZS) + 1)])
            c.execute(src_email_recipients.insert(), [
                {"id": r, "account_id": r % len(TZS) + 1, "email_id": r % len(TZS) + 1,
                 "member_id": r, "member_email": f"m{r}@x.com",
                 "provider_message_id": f"<m{r % len(TZS) + 1}@mg>"}
                for r in range(1, args.recipients + 1)])
        engine = wh.make_engine(f"sqlite:///{tmp}/wh.db")
        wh.ensure_schema(engine)
        wh.replace_accounts(engine, [{"id": a, "name": f"A{a}", "reporting_timezone": tz,
                                      "timezone": tz, "timezone_valid": True}
                                     for a, tz in enumerate(TZS, 1)])
        log = ProviderEventLog(f"{tmp}/landing", pipeline.stream)
        n = 3 * args.events_per_day
        r = rng.integers(1, args.recipients + 1, n)
        ts = DAY0 + rng.uniform(0, 3 * 86_400, n)
        for k, part in enumerate(np.array_split(np.arange(n), 300)):
            m = len(part)
            log.append(pa.table({
                "event_id": pa.array(np.char.add("e", part.astype(str))),
                "event": pa.repeat(pa.scalar("delivered"), m),
                "timestamp": pa.array((ts[part] * 1e6).astype("int64")).cast(
                    pa.timestamp("us", tz="UTC")),
                "recipient": pa.array(np.char.add(np.char.add("m", r[part].astype(str)),
                                                  "@x.com")),
                "message_id": pa.array(np.char.add(np.char.add(
                    "m", (r[part] % len(TZS) + 1).astype(str)), "@mg")),
                "severity": pa.nulls(m, pa.string()), "tags": pa.nulls(m, pa.list_(pa.string())),
                "delivery_status_code": pa.nulls(m, pa.string()),
                "delivery_status_message": pa.nulls(m, pa.string()),
                "raw": pa.repeat(pa.scalar("{}"), m),
                "fetched_at": pa.repeat(pa.scalar(datetime.fromtimestamp(DAY0 + 4 * 86_400,
                                                                         timezone.utc)), m),
            }, schema=PROVIDER_EVENT_SCHEMA), f"{DAY0}-{k:04d}")
        emails = EmailSource(src_url)
        for cache in (False, True):
            store = LandingStore(f"{tmp}/store-{cache}")
            started = time.perf_counter()
            for tz in TZS:
                extract_email_partition(log, emails, store, engine, pipeline,
                                        LocalDay(date(2026, 2, 25), tz), "UTC", cache=cache)
            total = time.perf_counter() - started
            print(f"cache={cache}: {len(TZS)} timezone partitions of 2026-02-25 "
                  f"({args.events_per_day:,} events per UTC date): {total:.2f} s")


if __name__ == "__main__":
    main()
