"""A realistic demo application database (SQLite) and the end-to-end demo run."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from analytics_pipeline.core.partitions import is_valid_timezone, last_closed_day, zone
from analytics_pipeline.core.sources import source_metadata, src_accounts
from analytics_pipeline.core.warehouse import make_engine
from analytics_pipeline.dev.web_demo import DEMO_SITES, web_commands, web_dashboard
from analytics_pipeline.support.source import src_reporting_events
from analytics_pipeline.web.contract import WEB_SOURCE

if TYPE_CHECKING:
    from analytics_pipeline.dev.campaign_demo import CampaignDemo

# The demo covers the last DEMO_DAYS local days closed in every demo timezone, so support
# and email events (which must stay within Mailgun's 72-hour initial lookback) share dates.
# ANALYTICS_DEMO_START=YYYY-MM-DD pins the support days instead (e.g. 2026-02-28 for the
# 2026-03-08 spring-forward, a 23-hour day in New York); email then stays recent.
DEMO_DAYS = 14
DEMO_START_ENV = "ANALYTICS_DEMO_START"


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


def demo_timezones(accounts: tuple[DemoAccount, ...] = DEMO_ACCOUNTS,
                   default_tz: str = "UTC") -> list[str]:
    """The valid effective timezones of the demo accounts."""
    names = {a.timezone or default_tz for a in accounts}
    return sorted(n for n in names if is_valid_timezone(n))


def demo_window(now: datetime, grace: timedelta, start: date | None = None,
                accounts: tuple[DemoAccount, ...] = DEMO_ACCOUNTS,
                days: int = DEMO_DAYS) -> tuple[date, date]:
    """(first, last) demo date: the last ``days`` local days that have closed and settled
    (grace + the email settling time) in every demo timezone, or ``days`` from ``start``."""
    # settled too: an email day is rolled up only once Mailgun's late indexing has settled
    closed = min(last_closed_day(now - _settle(), tz, grace)
                 for tz in demo_timezones(accounts))
    if start is None:
        return closed - timedelta(days=days - 1), closed
    last = start + timedelta(days=days - 1)
    if last > closed:
        raise ValueError(f"{DEMO_START_ENV}={start}: the demo's last day {last} has not "
                         f"closed everywhere yet (latest possible start: "
                         f"{closed - timedelta(days=days - 1)})")
    return start, last


def _fmt(ts: datetime) -> str:
    # As Rails writes timestamps to SQLite: naive UTC with microseconds.
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")


def generate_events(
    start: date,
    accounts: tuple[DemoAccount, ...] = DEMO_ACCOUNTS,
    days: int = DEMO_DAYS,
    seed: int = 7,
) -> list[dict]:
    """Conversations with first responses, replies, resolutions and bot activity.

    Event times follow a business-day curve in each account's own timezone, so local
    midnights matter; a handful of deliberately bad rows exercise the quarantine. Each
    account's day is seeded by its index in the window, not its date, so every run
    draws the same numbers whatever the dates.
    """
    from zoneinfo import ZoneInfo

    rows: list[dict] = []
    next_id = 1
    conv_id = 1000
    for acc in accounts:
        try:
            tz = ZoneInfo(acc.timezone or "UTC")
        except Exception:  # noqa: BLE001 - the typo account: its office is in New York
            tz = ZoneInfo("America/New_York")
        for d in range(days):
            rng = random.Random(seed * 1_000_003 + acc.id * 1_009 + d)
            day = start + timedelta(days=d)
            for _ in range(acc.conversations_per_day):
                conv_id += 1
                hour = min(23.99, max(0.0, rng.gauss(13, 4.5)))
                local = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(hours=hour)
                t0 = local.astimezone(timezone.utc).replace(tzinfo=None)
                agent = 100 * acc.id + rng.randrange(acc.agents)
                inbox = 10 * acc.id + rng.randrange(acc.inboxes)
                base = {"account_id": acc.id, "inbox_id": inbox, "conversation_id": conv_id}

                def add(name, at, value, user=agent, bh=None, t0=t0, base=base, rng=rng,
                        **extra):
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
                       start: date | None = None, days: int = DEMO_DAYS) -> tuple[int, int]:
    """(Re)create the demo application database at ``url`` (``start``: the demo window's
    first day, by default that of ``demo_window``): support events, and the web events of
    the demo sites on the same days. Returns (reporting events, web events)."""
    from analytics_pipeline.dev.web_demo import create_web_demo_source

    if start is None:
        start, _ = demo_window(datetime.now(timezone.utc), _grace(), _pinned_start(),
                               accounts, days)
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite" and u.database:
        Path(u.database).unlink(missing_ok=True)
    events = generate_events(start, accounts, days)
    write_source(
        url,
        [{"id": a.id, "name": a.name, "reporting_timezone": a.timezone} for a in accounts],
        events,
    )
    return len(events), create_web_demo_source(url, start, days)


def _grace() -> timedelta:
    from analytics_pipeline.core.settings import setting

    return timedelta(minutes=int(setting("ANALYTICS_CLOSE_GRACE_MINUTES")))


def _settle() -> timedelta:
    import os

    from analytics_pipeline.email.resources import MAILGUN_DEFAULTS

    name = "MAILGUN_SETTLE_MINUTES"
    return timedelta(minutes=int(os.environ.get(name) or MAILGUN_DEFAULTS[name]))


def _pinned_start() -> date | None:
    import os

    raw = os.environ.get(DEMO_START_ENV)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{DEMO_START_ENV} must be YYYY-MM-DD, got {raw!r}") from None


# --- email demo: newsletters and a welcome automation, events served by the simulator -------

# Local hour of each account's sends on the email day. Its events span at most ~14.2 hours
# (automation steps 2 and 4 hours later, opens up to 9 hours and clicks up to 10 hours after
# delivery), so they all fall on that local day, and within Mailgun's 72-hour initial
# lookback (the day has closed less than ~41 hours before now, see demo_window).
DEMO_EMAIL_HOUR = 8


def generate_email_demo(
    email_day: date, accounts: tuple[DemoAccount, ...] = DEMO_ACCOUNTS, seed: int = 11
) -> tuple[list[dict], list[dict], list[tuple[dict, float | None]]]:
    """Emails, recipients and Mailgun items (with their indexing time) for the demo.

    Each valid account sends one newsletter and runs a two-step welcome automation on
    ``email_day`` (the demo window's last day, in its own timezone); recipients deliver,
    open (some several times), click, fail (permanently or temporarily), unsubscribe and
    complain. One open is indexed late, one item is malformed and one event belongs to
    nobody.
    """
    from analytics_pipeline.dev.mailgun_simulator import sample_item

    rng = random.Random(seed)
    emails, recipients, items = [], [], []
    rid = 0
    first_sent: float | None = None
    for acc in accounts:
        if not is_valid_timezone(acc.timezone or "UTC"):
            continue  # the typo account: left out of every partition anyway
        local = datetime(email_day.year, email_day.month, email_day.day, DEMO_EMAIL_HOUR,
                         tzinfo=zone(acc.timezone or "UTC"))
        sent = local.timestamp() + acc.id * 60
        first_sent = sent if first_sent is None else first_sent
        sends = [(acc.id * 10, "newsletter", None, 20 + 8 * acc.id, sent)]
        sends += [(acc.id * 10 + s, "automation", acc.id * 100, 6 + 2 * acc.id,
                   sent + s * 2 * 3600) for s in (1, 2)]
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
                        event("opened", t + rng.uniform(60, 8 * 3600) + k * 3600)
                    if rng.random() < 0.3:
                        event("clicked", t + rng.uniform(3600, 10 * 3600))
                if rng.random() < 0.015:
                    event("unsubscribed", t + 7200)
                if rng.random() < 0.005:
                    event("complained", t + 7200)
    late = dict(items[5][0], id="late-indexed-open", event="opened")
    items.append((late, float(late["timestamp"]) + 20 * 60))  # indexed 20 minutes late
    odd = (first_sent or 0.0) + 3 * 3600
    items.append(({"id": "broken-item", "event": "opened", "timestamp": odd,
                   "tags": ["newsletter"], "recipient": "x@example.com"}, None))  # no message
    items.append((sample_item("nobody", "opened", odd, "ghost@example.com",
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
    try:
        first, last = demo_window(datetime.now(timezone.utc), _grace(), _pinned_start())
    except ValueError as exc:
        out(str(exc))
        return 1
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
        n, n_web = create_demo_source(src, start=first)
        out(f"demo application database: {n} reporting events, {len(DEMO_ACCOUNTS)} accounts, "
            f"{n_web} web events of {len(DEMO_SITES)} sites, support and web days "
            f"{first} … {last}")
    else:
        out(f"using the existing application database at {wh.redact(src)}")

    # Push impact: the pushes of one day whose after-windows have closed, and a local
    # PostHog serving the users' activity around them (settings for this process only).
    from analytics_pipeline.dev.push_demo import (
        posthog_for,
        push_day,
        push_world,
        write_automations,
    )

    pday = push_day(last)
    world = push_world(pday)
    if regenerate and src == DEFAULTS["ANALYTICS_SOURCE_URL"]:
        world.write_source(src)
        out(f"demo pushes: {world.pushes.num_rows} pushes of {len(world.campaigns)} campaigns "
            f"and automations to {world.users.num_rows} users, sent on {pday}")
    os.environ.setdefault("ANALYTICS_AUTOMATIONS_DIR",
                          str(write_automations(ANALYTICS_DIR / "automations")))

    # Email: a local Mailgun simulator serves the demo's provider events (its settings are
    # only set for this process, so `make dev` does not poll it afterwards). The sends fall
    # on the window's last day, unless the window is pinned far back (Mailgun's initial
    # lookback is 72 hours): then on the last day closed everywhere.
    from analytics_pipeline.dev.mailgun_simulator import MailgunSimulator

    email_day = last
    if _pinned_start() is not None:
        _, email_day = demo_window(datetime.now(timezone.utc), _grace())
    emails, recipients, items = generate_email_demo(email_day)
    if regenerate and src == DEFAULTS["ANALYTICS_SOURCE_URL"]:
        write_email_source(src, emails, recipients)
    # Campaigns: the demo's campaigns in the application database and their broker messages
    # on the demo's own exchange and queue of RabbitMQ (when it is reachable; the broker
    # settings are only set for this process, so `make dev` consumes nothing afterwards).
    # Sent on the email day: closed in every timezone, within the rollups' late window.
    from analytics_pipeline.dev.campaign_demo import prepare_campaign_demo

    campaigns, line = prepare_campaign_demo(
        src, src == DEFAULTS["ANALYTICS_SOURCE_URL"], regenerate, email_day,
        datetime.now(timezone.utc))
    out(line)
    sim = MailgunSimulator(domain="mg.demo.example", api_key="demo-key")
    for item, indexed_at in items:
        sim.add(item, indexed_at)
    os.environ.update(MAILGUN_API_BASE=sim.start(), MAILGUN_DOMAIN=sim.domain,
                      MAILGUN_API_KEY=sim.api_key)
    try:
        with posthog_for(world) as posthog_env:
            os.environ.update(posthog_env)
            return _run_demo_jobs(out, first, last, email_day, pday, campaigns)
    finally:
        sim.stop()


TZ_COLUMN_MAX = 40  # the summary's timezone column widens up to this, then truncates


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def account_table(rows: list[tuple[str, str, int, str, int]]) -> list[str]:
    """The summary's lines: (name, timezone, resolved, avg first response, handoffs) in
    columns that every row keeps, however long a (misspelt) timezone is."""
    tzw = min(TZ_COLUMN_MAX, max(len("timezone"), *(len(r[1]) for r in rows)))
    lines = [f"{'account':<32} {'timezone':<{tzw}} {'resolved':>8} {'avg 1st resp':>12} "
             f"{'handoffs':>8}"]
    for name, tzname, resolved, avg, handoffs in rows:
        lines.append(f"{_cell(name, 32):<32} {_cell(tzname, tzw):<{tzw}} {resolved:>8} "
                     f"{avg:>12} {handoffs:>8}")
    return lines


def _run_demo_jobs(out, first: date, last: date, email_day: date, pday: date,
                   campaigns: CampaignDemo | None = None) -> int:
    """Materialize what the sensors would have requested by now, so that their first
    start in `make dev` finds it done: every closed support day from ``first`` (to
    ``last`` when the window is pinned), and each email stream's days from its first
    fetch's lookback to its settled watermark, as the closed-days sensor computes them;
    then, with ``campaigns``, publish them, consume them and roll up their day."""
    from dagster import DagsterInstance

    from analytics_pipeline.core import warehouse as wh
    from analytics_pipeline.core.partitions import (
        TIMEZONES_PARTITIONS_NAME,
        last_closed_day,
        local_date_of,
    )
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.definitions import defs
    from analytics_pipeline.email import tables as et
    from analytics_pipeline.email.metrics import EMAIL_PIPELINES
    from analytics_pipeline.report import metric_series

    pinned = _pinned_start() is not None
    engine = wh.make_engine(setting("ANALYTICS_WAREHOUSE_URL"))
    with DagsterInstance.get() as instance:
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

        def run_range(job_name: str, tz: str, lo: date, hi: date) -> bool:
            r = defs.resolve_job_def(job_name).execute_in_process(
                instance=instance, run_config=quiet,
                tags={"dagster/asset_partition_range_start": f"{lo.isoformat()}|{tz}",
                      "dagster/asset_partition_range_end": f"{hi.isoformat()}|{tz}",
                      "analytics/timezone": tz})
            out(f"{job_name:<24} {tz:<22} {lo} … {hi}: run {r.run_id[:8]} "
                f"{'succeeded' if r.success else 'FAILED'}")
            return r.success

        result = defs.resolve_job_def("refresh_accounts").execute_in_process(
            instance=instance, run_config=quiet
        )
        if not result.success:
            out("materializing accounts failed; see the run in the Dagster UI")
            return 1
        grace = _grace()
        now = datetime.now(timezone.utc)
        timezones = sorted(instance.get_dynamic_partitions(TIMEZONES_PARTITIONS_NAME))
        for tz in timezones:
            end = last_closed_day(now, tz, grace)
            end = min(end, last) if pinned else end
            if end >= first and not run_range("support_reporting", tz, first, end):
                return 1
        # Web: the same closed days (the closed-days sensor's web stream), every timezone.
        for tz in timezones:
            end = last_closed_day(now, tz, grace)
            end = min(end, last) if pinned else end
            if end >= first and not run_range("web_analytics", tz, first, end):
                return 1
        # Pushes: every closed day's counts (the push_delivery stream), then the impact of
        # the push day, whose after-windows have closed (the push_impact_analysis stream).
        from analytics_pipeline.dev.push_demo import PUSH_ACCOUNTS

        for tz in timezones:
            end = last_closed_day(now, tz, grace)
            end = min(end, last) if pinned else end
            if end >= first and not run_range("push_delivery", tz, first, end):
                return 1
        for tz in sorted({tz for tz, _ in PUSH_ACCOUNTS.values()}):
            if not run_range("push_impact_analysis", tz, pday, pday):
                return 1
        # Email: fetch both pipelines, roll up their settled days, refresh the statistics.
        for pipeline in EMAIL_PIPELINES:
            names = pipeline.names
            for job_name in (names.fetch_job, names.stats_job):
                r = defs.resolve_job_def(job_name).execute_in_process(
                    instance=instance, run_config=quiet)
                if not r.success:
                    out(f"{job_name} failed; see the run in the Dagster UI")
                    return 1
            state = wh.get_stream_state(engine, pipeline.cursor_name)
            cursor = wh.get_cursor(engine, pipeline.cursor_name)
            if state is None or state.first_fetch_from is None or cursor is None:
                out(f"{names.fetch_job} recorded no stream state; see the run in the UI")
                return 1
            since = datetime.fromtimestamp(state.first_fetch_from, timezone.utc)
            settled = min(now, datetime.fromtimestamp(cursor[1], timezone.utc))
            for tz in timezones:
                lo, hi = local_date_of(since, tz), last_closed_day(settled, tz, grace)
                if hi >= lo and not run_range(names.daily_job, tz, lo, hi):
                    return 1
        out("email: fetched from the local Mailgun simulator, rolled up and summarized")
        if campaigns is not None:
            # Campaigns: publish, consume (land, progress, checks), roll up the day in each
            # timezone of the campaigns' accounts.
            from analytics_pipeline.campaigns.broker import BrokerUnavailable
            from analytics_pipeline.dev.campaign_demo import publish_dispatches

            try:
                n = publish_dispatches(campaigns.url, campaigns.dispatches,
                                       campaigns.batch_size, campaigns.exchange,
                                       campaigns.queue)
            except BrokerUnavailable as exc:
                out(f"campaigns: skipped, {exc}")
                campaigns = None
        if campaigns is not None:
            r = defs.resolve_job_def("campaign_consumption").execute_in_process(
                instance=instance, run_config=quiet)
            out(f"{'campaign_consumption':<24} {f'{n} messages published':<22} "
                f"run {r.run_id[:8]} {'succeeded' if r.success else 'FAILED'}")
            if not r.success:
                return 1
            for tz in campaigns.timezones:
                if not run_range("campaign_rollups_daily", tz, campaigns.day, campaigns.day):
                    return 1

    out("")
    rows = []
    for a in wh.accounts_snapshot(engine):
        tzname = a["timezone"] or f"INVALID ({a['reporting_timezone']})"
        res = metric_series(engine, a["id"], "resolutions_count", first, last, by="month")
        frt = metric_series(engine, a["id"], "first_response", first, last, by="month")
        hand = metric_series(engine, a["id"], "bot_handoffs_count", first, last, by="month")
        n_frt = sum(p.count for p in frt)
        avg = (sum((p.value or 0) * p.count for p in frt) / n_frt / 60) if n_frt else None
        rows.append((a["name"], tzname, sum(p.count for p in res),
                     "-" if avg is None else f"{avg:.1f} min", sum(p.count for p in hand)))
    for line in account_table(rows):
        out(line)
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
        q = sa.select(wh.quarantine.c.reason, sa.func.count()).where(
            wh.quarantine.c.source != WEB_SOURCE).group_by(wh.quarantine.c.reason)
        quarantined = dict(conn.execute(q).all())  # the web's: in its dashboard below
    out(f"\nquarantined events: {quarantined or 'none'}")
    for line in web_dashboard(engine, first, last):
        out(line)
    from analytics_pipeline.core.landing import LandingStore
    from analytics_pipeline.dev.push_demo import push_dashboard

    for line in push_dashboard(engine, LandingStore(setting("ANALYTICS_LANDING_URI")), pday):
        out(line)
    if campaigns is not None:
        from analytics_pipeline.dev.campaign_demo import campaign_dashboard

        for line in campaign_dashboard(engine, campaigns.day):
            out(line)
    engine.dispose()
    lo, hi = (first, last) if email_day <= last else (email_day, email_day)
    out("")
    out(f"Support and web days {first} … {last}; emails sent on {email_day} (each account's local "
        "day). Open the UI on the same instance with `make dev`; query with")
    out(f"  analytics-pipeline report --account 1 --metric first_response --from {first} "
        f"--to {last} --by week")
    out(f"  analytics-pipeline report --account 1 --metric newsletter_opens --from {lo} "
        f"--to {hi} --by week")
    for line in web_commands(last):
        out(line)
    out(f"  analytics-pipeline push-impact --account 1 --from {pday} --to {pday}")
    out(f"  analytics-pipeline push-impact --account 1 --campaign 101 --from {pday} --to {pday}"
        " --json")
    if campaigns is not None:
        from analytics_pipeline.dev.campaign_demo import campaign_commands

        for line in campaign_commands(campaigns.day):
            out(line)
    return 0
