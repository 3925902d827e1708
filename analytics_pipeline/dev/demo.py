"""A realistic demo application database (SQLite) and the end-to-end demo run."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from analytics_pipeline.core.sources import source_metadata, src_accounts
from analytics_pipeline.core.warehouse import make_engine
from analytics_pipeline.support.source import src_reporting_events

# Two weeks around the US spring-forward (2026-03-08: New York and Los Angeles have a
# 23-hour day), fixed so that the demo's numbers are reproducible.
DEMO_START = date(2026, 2, 28)
DEMO_DAYS = 14


@dataclass(frozen=True)
class DemoAccount:
    id: int
    name: str
    timezone: str | None
    conversations_per_day: int
    agents: int
    inboxes: int


DEMO_ACCOUNTS = (
    DemoAccount(1, "Acme Support", "America/New_York", 40, 6, 3),
    DemoAccount(2, "Bangalore Care", "Asia/Kolkata", 60, 8, 2),
    DemoAccount(3, "Nordic Help (no timezone set)", None, 25, 3, 2),
    DemoAccount(4, "Pacific Desk", "America/Los_Angeles", 30, 4, 2),
    DemoAccount(5, "Himalaya Treks", "Asia/Kathmandu", 15, 2, 1),
    DemoAccount(6, "Typo Timezone Ltd", "America/New_Yrok", 10, 2, 1),
)


def _fmt(ts: datetime) -> str:
    # As Rails writes timestamps to SQLite: naive UTC with microseconds.
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")


def generate_events(
    accounts: tuple[DemoAccount, ...] = DEMO_ACCOUNTS,
    start: date = DEMO_START,
    days: int = DEMO_DAYS,
    seed: int = 7,
) -> list[dict]:
    """Conversations with first responses, replies, resolutions and bot activity.

    Event times follow a business-day curve in each account's own timezone, so local
    midnights matter; a handful of deliberately bad rows exercise the quarantine.
    """
    from zoneinfo import ZoneInfo

    rng = random.Random(seed)
    rows: list[dict] = []
    next_id = 1
    conv_id = 1000
    for acc in accounts:
        try:
            tz = ZoneInfo(acc.timezone or "UTC")
        except Exception:  # noqa: BLE001 - the typo account: its office is in New York
            tz = ZoneInfo("America/New_York")
        for d in range(days):
            day = start + timedelta(days=d)
            for _ in range(acc.conversations_per_day):
                conv_id += 1
                hour = min(23.99, max(0.0, rng.gauss(13, 4.5)))
                local = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(hours=hour)
                t0 = local.astimezone(timezone.utc).replace(tzinfo=None)
                agent = 100 * acc.id + rng.randrange(acc.agents)
                inbox = 10 * acc.id + rng.randrange(acc.inboxes)
                base = {"account_id": acc.id, "inbox_id": inbox, "conversation_id": conv_id}

                def add(name, at, value, user=agent, bh=None, t0=t0, base=base, **extra):
                    nonlocal next_id
                    rows.append({
                        "id": next_id, "name": name, "value": value,
                        "value_in_business_hours": bh if bh is not None else
                        (None if value is None else round(value * rng.uniform(0.4, 1.0), 1)),
                        "user_id": user, "created_at": _fmt(at), "updated_at": _fmt(at),
                        "event_start_time": _fmt(t0), "event_end_time": _fmt(at),
                        **base, **extra,
                    })
                    next_id += 1

                if rng.random() < 0.25:  # a bot answers first
                    if rng.random() < 0.5:
                        add("conversation_bot_resolved", t0 + timedelta(minutes=3), None,
                            user=None)
                        continue
                    add("conversation_bot_handoff", t0 + timedelta(minutes=2), None, user=None)
                    if rng.random() < 0.1:  # handed off twice: counts once
                        add("conversation_bot_handoff", t0 + timedelta(minutes=4), None,
                            user=None)
                frt = rng.lognormvariate(6.5, 0.8)
                add("first_response", t0 + timedelta(seconds=frt), round(frt, 1))
                t = t0 + timedelta(seconds=frt)
                for _ in range(rng.randrange(0, 3)):
                    rt = rng.lognormvariate(6.0, 0.7)
                    t += timedelta(seconds=rt)
                    add("reply_time", t, round(rt, 1))
                if rng.random() < 0.8:
                    t += timedelta(minutes=rng.uniform(5, 240))
                    add("conversation_resolved", t, round((t - t0).total_seconds(), 1))
                if rng.random() < 0.3:
                    add("conversation_opened", t0, None)  # not a rollup metric: ignored
    # Bad rows: each is quarantined with a reason, none fails a partition.
    mid = datetime(start.year, start.month, start.day) + timedelta(days=days // 2, hours=15)
    bad = [
        {"name": "first_response", "value": -30.0, "account_id": 1},
        {"name": "reply_time", "value": float("inf"), "account_id": 2},
        {"name": "first_response", "value": 10.0, "account_id": 999},  # unknown account
        {"name": "first_response", "value": 12.0, "account_id": 1, "created_at": "yesterday"},
    ]
    for b in bad:
        rows.append({
            "id": next_id, "value_in_business_hours": None, "user_id": None, "inbox_id": None,
            "conversation_id": None, "created_at": _fmt(mid), "updated_at": _fmt(mid),
            "event_start_time": None, "event_end_time": None, **b,
        })
        next_id += 1
    return rows


def write_source(url: str, accounts: list[dict], events: list[dict], fresh: bool = True) -> None:
    """Write ``accounts`` and ``reporting_events`` rows as the app would (timestamps as
    given: text in SQLite, bad ones included); ``fresh`` recreates the tables first."""
    engine = make_engine(url)
    try:
        if fresh:
            source_metadata.drop_all(engine)
        source_metadata.create_all(engine)
        with engine.begin() as conn:
            if accounts:
                conn.execute(src_accounts.insert(), accounts)
            if events:
                cols = [c.name for c in src_reporting_events.columns]
                placeholders = ", ".join(f":{c}" for c in cols)
                conn.execute(
                    sa.text(f"INSERT INTO reporting_events ({', '.join(cols)}) "
                            f"VALUES ({placeholders})"),
                    [{c: e.get(c) for c in cols} for e in events],
                )
    finally:
        engine.dispose()


def create_demo_source(url: str, accounts: tuple[DemoAccount, ...] = DEMO_ACCOUNTS,
                       start: date = DEMO_START, days: int = DEMO_DAYS) -> int:
    """(Re)create the demo application database at ``url``; returns the event count."""
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite" and u.database:
        Path(u.database).unlink(missing_ok=True)
    events = generate_events(accounts, start, days)
    write_source(
        url,
        [{"id": a.id, "name": a.name, "reporting_timezone": a.timezone} for a in accounts],
        events,
    )
    return len(events)


# --- email demo: newsletters and a welcome automation, events served by the simulator -------

DEMO_EMAIL_HOURS_AGO = 60  # sends happen this long before the demo runs


def generate_email_demo(
    now: float, accounts: tuple[DemoAccount, ...] = DEMO_ACCOUNTS, seed: int = 11
) -> tuple[list[dict], list[dict], list[tuple[dict, float | None]]]:
    """Emails, recipients and Mailgun items (with their indexing time) for the demo.

    Each valid account sends one newsletter and runs a two-step welcome automation;
    recipients deliver, open (some several times), click, fail (permanently or
    temporarily), unsubscribe and complain. One open is indexed late, one item is
    malformed and one event belongs to nobody.
    """
    from analytics_pipeline.dev.mailgun_simulator import sample_item

    rng = random.Random(seed)
    emails, recipients, items = [], [], []
    rid = 0
    for acc in accounts:
        if acc.timezone == "America/New_Yrok":
            continue
        sent = now - DEMO_EMAIL_HOURS_AGO * 3600 + acc.id * 600
        sends = [(acc.id * 10, "newsletter", None, 20 + 8 * acc.id, sent)]
        sends += [(acc.id * 10 + s, "automation", acc.id * 100, 6 + 2 * acc.id,
                   sent + s * 12 * 3600) for s in (1, 2)]
        for email_id, kind, automation_id, n, at in sends:
            emails.append({"id": email_id, "account_id": acc.id, "kind": kind,
                           "automation_id": automation_id, "subject": f"{kind} {email_id}",
                           "track_opens": True, "created_at": None})
            message = f"<{email_id}.{int(at)}@mg.demo>"
            for i in range(n):
                rid += 1
                address = f"member{acc.id}-{i}@example.com"
                recipients.append({"id": rid, "account_id": acc.id, "email_id": email_id,
                                   "member_id": acc.id * 1000 + i,
                                   "member_email": address.title() if i % 5 == 0 else address,
                                   "provider_message_id": message, "sent_at": None})

                def event(name, t, _id=f"{email_id}-{i}", _to=address, _msg=message,
                          _kind=kind, **extra):
                    items.append((sample_item(f"{_id}-{name}-{len(items)}", name, t, _to, _msg,
                                              [_kind], **extra), None))

                t = at + rng.uniform(5, 120)
                roll = rng.random()
                if roll < 0.02:
                    event("failed", t, severity="permanent")
                    continue
                if roll < 0.05:
                    event("failed", t, severity="temporary")
                    t += 600
                event("delivered", t)
                if rng.random() < 0.45:
                    for k in range(1 + int(rng.random() < 0.3)):
                        event("opened", t + rng.uniform(60, 20 * 3600) + k * 3600)
                    if rng.random() < 0.3:
                        event("clicked", t + rng.uniform(3600, 30 * 3600))
                if rng.random() < 0.015:
                    event("unsubscribed", t + 7200)
                if rng.random() < 0.005:
                    event("complained", t + 7200)
    late = dict(items[5][0], id="late-indexed-open", event="opened")
    items.append((late, float(late["timestamp"]) + 20 * 60))  # indexed 20 minutes late
    items.append(({"id": "broken-item", "event": "opened", "timestamp": now - 3600 * 30,
                   "tags": ["newsletter"], "recipient": "x@example.com"}, None))  # no message
    items.append((sample_item("nobody", "opened", now - 3600 * 30, "ghost@example.com",
                              "<unknown@mg.demo>", ["newsletter"]), None))
    return emails, recipients, items


def write_email_source(url: str, emails: list[dict], recipients: list[dict]) -> None:
    from analytics_pipeline.email.source import src_email_recipients, src_emails

    engine = make_engine(url)
    try:
        source_metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(src_email_recipients.delete())
            conn.execute(src_emails.delete())
            if emails:
                conn.execute(src_emails.insert(), emails)
            if recipients:
                conn.execute(src_email_recipients.insert(), recipients)
    finally:
        engine.dispose()


def run_demo(regenerate: bool = True, out=print) -> int:
    """Generate the demo source, then materialize accounts, raw events and rollups for every
    closed demo day through Dagster (one range run per timezone, as a backfill would),
    in the persistent instance at ``DAGSTER_HOME``; print a per-account summary."""
    import os
    import shutil

    from analytics_pipeline.core import warehouse as wh
    from analytics_pipeline.core.settings import ANALYTICS_DIR, DEFAULTS, setting

    home = Path(os.environ.setdefault("DAGSTER_HOME", str((ANALYTICS_DIR / "dagster_home")
                                                           .resolve())))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    src = setting("ANALYTICS_SOURCE_URL")
    if regenerate and src == DEFAULTS["ANALYTICS_SOURCE_URL"]:
        # A fresh demo: the embedded warehouse and landing start empty too.
        for name in ("ANALYTICS_WAREHOUSE_URL", "ANALYTICS_LANDING_URI"):
            if setting(name) == DEFAULTS[name]:
                path = Path(DEFAULTS[name].removeprefix("sqlite:///"))
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    for p in path.parent.glob(path.name + "*"):
                        p.unlink()
        n = create_demo_source(src)
        out(f"demo application database: {n} reporting events, {len(DEMO_ACCOUNTS)} accounts")
    else:
        out(f"using the existing application database at {wh.redact(src)}")

    # Email: a local Mailgun simulator serves the demo's provider events (its settings are
    # only set for this process, so `make dev` does not poll it afterwards).
    import time as _time

    from analytics_pipeline.dev.mailgun_simulator import MailgunSimulator

    started = _time.time()
    emails, recipients, items = generate_email_demo(started)
    if regenerate and src == DEFAULTS["ANALYTICS_SOURCE_URL"]:
        write_email_source(src, emails, recipients)
    sim = MailgunSimulator(domain="mg.demo.example", api_key="demo-key")
    for item, indexed_at in items:
        sim.add(item, indexed_at)
    os.environ.update(MAILGUN_API_BASE=sim.start(), MAILGUN_DOMAIN=sim.domain,
                      MAILGUN_API_KEY=sim.api_key)
    try:
        return _run_demo_jobs(out)
    finally:
        sim.stop()


def _run_demo_jobs(out) -> int:
    from dagster import DagsterInstance

    from analytics_pipeline.core import warehouse as wh
    from analytics_pipeline.core.partitions import TIMEZONES_PARTITIONS_NAME, last_closed_day
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.definitions import defs
    from analytics_pipeline.email import tables as et
    from analytics_pipeline.report import metric_series

    with DagsterInstance.get() as instance:
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        result = defs.resolve_job_def("refresh_accounts").execute_in_process(
            instance=instance, run_config=quiet
        )
        if not result.success:
            out("materializing accounts failed; see the run in the Dagster UI")
            return 1
        grace = timedelta(minutes=int(setting("ANALYTICS_CLOSE_GRACE_MINUTES")))
        now = datetime.now(timezone.utc)
        last = DEMO_START + timedelta(days=DEMO_DAYS - 1)
        job = defs.resolve_job_def("support_reporting")
        for tz in sorted(instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)):
            end = min(last, last_closed_day(now, tz, grace))
            if end < DEMO_START:
                continue
            r = job.execute_in_process(
                instance=instance,
                run_config=quiet,
                tags={
                    "dagster/asset_partition_range_start": f"{DEMO_START.isoformat()}|{tz}",
                    "dagster/asset_partition_range_end": f"{end.isoformat()}|{tz}",
                    "analytics/timezone": tz,
                },
            )
            out(f"{tz:<22} {DEMO_START} … {end}: run {r.run_id[:8]} "
                f"{'succeeded' if r.success else 'FAILED'}")
            if not r.success:
                return 1
        # Email: fetch both pipelines, roll up their closed days, refresh the statistics.
        for kind in ("newsletter", "automation"):
            for job_name in (f"mailgun_{kind}_fetch", f"{kind}_email_stats_refresh"):
                r = defs.resolve_job_def(job_name).execute_in_process(
                    instance=instance, run_config=quiet)
                if not r.success:
                    out(f"{job_name} failed; see the run in the Dagster UI")
                    return 1
            job = defs.resolve_job_def(f"{kind}_email_daily")
            for tz in sorted(instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME)):
                end = last_closed_day(now, tz, grace)
                first = end - timedelta(days=3)
                r = job.execute_in_process(
                    instance=instance, run_config=quiet,
                    tags={"dagster/asset_partition_range_start": f"{first.isoformat()}|{tz}",
                          "dagster/asset_partition_range_end": f"{end.isoformat()}|{tz}",
                          "analytics/timezone": tz})
                if not r.success:
                    out(f"{kind} email days of {tz} failed; see the run in the Dagster UI")
                    return 1
        out("email: fetched from the local Mailgun simulator, rolled up and summarized")

    engine = wh.make_engine(setting("ANALYTICS_WAREHOUSE_URL"))
    out("")
    out(f"{'account':<32} {'timezone':<22} {'resolved':>8} {'avg 1st resp':>12} "
        f"{'handoffs':>8}")
    for a in wh.accounts_snapshot(engine):
        tzname = a["timezone"] or f"INVALID ({a['reporting_timezone']})"
        res = metric_series(engine, a["id"], "resolutions_count", DEMO_START, last, by="month")
        frt = metric_series(engine, a["id"], "first_response", DEMO_START, last, by="month")
        hand = metric_series(engine, a["id"], "bot_handoffs_count", DEMO_START, last,
                             by="month")
        n_frt = sum(p.count for p in frt)
        avg = (sum((p.value or 0) * p.count for p in frt) / n_frt / 60) if n_frt else None
        out(f"{a['name'][:32]:<32} {tzname:<22} {sum(p.count for p in res):>8} "
            f"{'-' if avg is None else f'{avg:.1f} min':>12} {sum(p.count for p in hand):>8}")
    out("")
    out(f"{'email (kind)':<32} {'sent':>6} {'delivered':>9} {'opened':>7} {'failed':>7} "
        f"{'open rate':>9}")
    with engine.connect() as conn:
        st = et.email_stats.c
        rows = conn.execute(sa.select(st.kind, st.email_id, st.sent_count, st.delivered_count,
                                      st.opened_count, st.failed_count, st.open_rate)
                            .order_by(st.email_id)).all()
        for kind, email_id, sent, delivered, opened, failed, rate in rows:
            shown = "-" if rate is None else f"{rate:.0%}"
            out(f"{f'{email_id} ({kind})':<32} {sent:>6} {delivered:>9} {opened:>7} "
                f"{failed:>7} {shown:>9}")
        q = sa.select(wh.quarantine.c.reason, sa.func.count()).group_by(wh.quarantine.c.reason)
        quarantined = dict(conn.execute(q).all())
    out(f"\nquarantined events: {quarantined or 'none'}")
    out("Open the UI on the same instance with `make dev`; query with "
        "`analytics-pipeline report --account 1 --metric first_response "
        f"--from {DEMO_START} --to {last} --by week`, or email opens per day with "
        "`--metric newsletter_opens` over the last days.")
    return 0
