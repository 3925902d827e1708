"""The demo's campaign dispatches (development only): four campaigns of demo accounts 1 and 2
in the application database, and their broker messages published by the dev packer and
senders (``dev.campaign_publisher``) onto the demo's own exchange and queue:

- 7101, Acme Support's email newsletter: 2,500 contacts in 3 pages, every page reported,
  the reports' sent/failed equal to the contacts' SENT/FAILED statuses: complete;
- 7102, Acme Support's win-back email to an empty segment: its page 0 reported completed;
- 7201, Bangalore Care's WhatsApp notice: packed ~1 hour before now, page 1 reported, page 2
  never: stuck;
- 7202, Bangalore Care's SMS offers: the packer's job was redelivered, so every page was
  published twice; the senders skipped the contacts already sent, but one, sent after two
  attempts: complete, with two duplicate pages and one double send.

The complete, empty and redelivered campaigns are sent on a demo day whose local day has
closed in both accounts' timezones, so ``campaign_rollups_daily`` rolls them up. Every
message has a fixed message id: publishing the demo again (a re-run, whether or not the
landing was kept) lands the same messages, which count once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone

import sqlalchemy as sa

from analytics_pipeline.campaigns.contract import src_campaign_contacts, src_campaigns
from analytics_pipeline.core.partitions import zone

LOCAL_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"  # unless ANALYTICS_BROKER_URL
# The demo's own exchange and queue: the demo never consumes the application's queue, and
# the application's packer never publishes onto the demo's exchange.
DEMO_EXCHANGE = "analytics_pipeline.demo.campaigns"
DEMO_QUEUE = "analytics_pipeline.demo.campaigns"

# account id → timezone: the demo accounts of the same ids
CAMPAIGN_ACCOUNTS = {1: "America/New_York", 2: "Asia/Kolkata"}

COMPLETE, EMPTY, STUCK, REDELIVERED = "complete", "empty", "stuck", "redelivered"


@dataclass(frozen=True)
class DemoCampaign:
    id: int
    account_id: int
    name: str
    channel_type: str  # the application's channel class
    audience: int
    scenario: str
    local_hour: int  # packed at this local hour of the demo day (stuck: ~1 hour before now)
    fail_every: int = 0  # every n-th contact fails (0: none)
    template_id: int | None = None


DEMO_CAMPAIGNS = (
    DemoCampaign(7101, 1, "March newsletter", "Channel::Email", 2_500, COMPLETE, 9,
                 fail_every=53, template_id=31),
    DemoCampaign(7102, 1, "Win-back: lapsed VIPs (empty segment)", "Channel::Email", 0,
                 EMPTY, 14, template_id=32),
    DemoCampaign(7201, 2, "Order delay notice", "Channel::Whatsapp", 1_800, STUCK, 0,
                 fail_every=40, template_id=41),
    DemoCampaign(7202, 2, "Festival offers", "Channel::Sms", 1_200, REDELIVERED, 10,
                 fail_every=61, template_id=42),
)

STUCK_PACKED_BEFORE_NOW = timedelta(minutes=62)
REDELIVERED_AFTER = timedelta(minutes=2)  # the packer's job delivered again
FIRST_REPORT_AFTER = timedelta(minutes=5)  # then one page reported every REPORT_EVERY
REPORT_EVERY = timedelta(minutes=4)
FAILED_ATTEMPTS = 3  # a failed contact was tried this many times


@dataclass
class Dispatch:
    """One demo campaign as dispatched: its pages, who failed, when each step happened."""

    campaign: DemoCampaign
    packed_at: datetime  # aware UTC
    pages: list[list[int]]  # contact ids, page 1 first
    failed: frozenset[int]
    reported_at: list[datetime | None]  # per page; None: never reported
    redelivered_at: datetime | None = None
    double_sent: int | None = None  # the contact sent after two attempts

    @property
    def tz(self) -> str:
        return CAMPAIGN_ACCOUNTS[self.campaign.account_id]

    def page_counts(self, page: int) -> tuple[int, int]:
        """(sent, failed) of ``page`` (from 1)."""
        contacts = self.pages[page - 1]
        bad = sum(1 for c in contacts if c in self.failed)
        return len(contacts) - bad, bad


def batch_size_setting() -> int:
    """The packer's page size, as the campaign resource reads it."""
    from analytics_pipeline.campaigns.resources import CAMPAIGN_DEFAULTS

    name = "CAMPAIGN_PACKER_BATCH_SIZE"
    return int(os.environ.get(name) or CAMPAIGN_DEFAULTS[name])


def contact_ids(c: DemoCampaign) -> list[int]:
    return [c.account_id * 100_000 + i for i in range(1, c.audience + 1)]


def plan_dispatches(day: date, now: datetime, batch_size: int,
                    campaigns: tuple[DemoCampaign, ...] = DEMO_CAMPAIGNS) -> list[Dispatch]:
    """The demo's dispatches: packed at their local hour of ``day`` in their account's
    timezone (the stuck one ~1 hour before ``now``), pages reported from 5 minutes after,
    one every 4 minutes (the stuck campaign's last page never)."""
    from analytics_pipeline.dev.campaign_publisher import paginate

    now = now.astimezone(timezone.utc).replace(microsecond=0)
    out = []
    for c in campaigns:
        tz = CAMPAIGN_ACCOUNTS[c.account_id]
        if c.scenario == STUCK:
            packed = now - STUCK_PACKED_BEFORE_NOW
        else:
            packed = datetime.combine(day, time(c.local_hour), zone(tz)).astimezone(
                timezone.utc)
        ids = contact_ids(c)
        failed = frozenset(k for i, k in enumerate(ids, start=1)
                           if c.fail_every and i % c.fail_every == 0)
        pages = paginate(ids, batch_size)
        reported: list[datetime | None] = [packed + FIRST_REPORT_AFTER + i * REPORT_EVERY
                                           for i in range(len(pages))]
        d = Dispatch(c, packed, pages, failed, reported)
        if c.scenario == STUCK:
            if len(pages) < 2:
                raise ValueError(f"campaign {c.id} needs two pages to be stuck on its last")
            d.reported_at[-1] = None
        if c.scenario == REDELIVERED:
            d.redelivered_at = packed + REDELIVERED_AFTER
            d.double_sent = next(k for k in pages[-1] if k not in failed)
        out.append(d)
    return out


def _naive(t: datetime) -> datetime:
    return t.astimezone(timezone.utc).replace(tzinfo=None)


def campaign_rows(dispatches: list[Dispatch]) -> tuple[list[dict], list[dict]]:
    """(``campaigns`` rows, ``campaign_contacts`` rows) as the application stores them: a
    reported page's contacts SENT (at its report) or FAILED, the others PENDING."""
    campaigns, contacts = [], []
    for d in dispatches:
        c = d.campaign
        done = all(t is not None for t in d.reported_at)
        campaigns.append({"id": c.id, "account_id": c.account_id, "name": c.name,
                          "channel_type": c.channel_type,
                          "status": "completed" if done else "running",
                          "created_at": _naive(d.packed_at - timedelta(days=1)),
                          "scheduled_at": _naive(d.packed_at)})
        for page, at in zip(d.pages, d.reported_at, strict=True):
            for k in page:
                row = {"campaign_id": c.id, "contact_id": k, "status": "PENDING",
                       "sent_at": None, "attempts": 0, "error": None}
                if at is not None and k in d.failed:
                    row.update(status="FAILED", attempts=FAILED_ATTEMPTS,
                               error="undeliverable: the provider rejected the address")
                elif at is not None:
                    row.update(status="SENT", sent_at=_naive(at),
                               attempts=2 if k == d.double_sent else 1)
                contacts.append(row)
    return campaigns, contacts


def write_campaign_source(url: str, dispatches: list[Dispatch]) -> tuple[int, int]:
    """Replace ``campaigns`` and ``campaign_contacts`` of the application database at
    ``url`` with the demo's; returns (campaigns, contacts)."""
    from analytics_pipeline.core.warehouse import make_engine

    campaigns, contacts = campaign_rows(dispatches)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            src_campaigns.metadata.create_all(conn, tables=[src_campaigns,
                                                            src_campaign_contacts])
            conn.execute(src_campaign_contacts.delete())
            conn.execute(src_campaigns.delete())
            conn.execute(src_campaigns.insert(), campaigns)
            if contacts:
                conn.execute(src_campaign_contacts.insert(), contacts)
    finally:
        engine.dispose()
    return len(campaigns), len(contacts)


def has_campaign_tables(url: str) -> bool:
    from analytics_pipeline.core.warehouse import make_engine

    engine = make_engine(url)
    try:
        names = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    return {src_campaigns.name, src_campaign_contacts.name} <= names


def broker_unavailable_reason(url: str, timeout: float = 3.0) -> str | None:
    """None when RabbitMQ answers at ``url``, else why not (the URL redacted)."""
    from analytics_pipeline.campaigns.broker import redact

    try:
        import pika

        params = pika.URLParameters(url)
        params.socket_timeout = params.blocked_connection_timeout = timeout
        params.stack_timeout = timeout
        params.connection_attempts = 1
        pika.BlockingConnection(params).close()
        return None
    except Exception as exc:  # noqa: BLE001 - any reason is the reason to skip
        detail = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {detail[0]}" if detail else type(exc).__name__
        return f"RabbitMQ not reachable at {redact(url)} ({why})"


class _Clock:
    """The publishers' clock (their messages' AMQP timestamp), set before each message."""

    def __init__(self) -> None:
        self.at = datetime.now(timezone.utc)

    def __call__(self) -> float:
        return self.at.timestamp()


def publish_dispatches(url: str, dispatches: list[Dispatch], batch_size: int,
                       exchange: str = DEMO_EXCHANGE, queue: str = DEMO_QUEUE) -> int:
    """Declare ``queue`` bound to ``exchange`` and purge it (what an earlier demo left
    unconsumed), then publish the dispatches' messages with their times as AMQP
    timestamps; returns the messages published."""
    from analytics_pipeline.campaigns.broker import connect, declare
    from analytics_pipeline.dev.campaign_publisher import CampaignPublisher

    with connect(url) as connection:
        channel = connection.channel()
        declare(channel, queue, exchange)
        channel.queue_purge(queue)
    clock = _Clock()
    with CampaignPublisher(url, batch_size, exchange, clock=clock) as pub:
        for d in dispatches:
            c = d.campaign
            prefix, correlation = f"demo-{c.id}", f"demo-{c.id}"
            pack = pub.build_pack(c.id, [k for page in d.pages for k in page], c.template_id,
                                  c.channel_type, correlation_id=correlation,
                                  message_ids=False)
            clock.at = d.packed_at
            if not d.pages:  # an empty audience: the packer's page 0 report
                clock.at = d.packed_at + timedelta(seconds=1)
                [m] = pack.messages
                pub.publish(replace(m, message_id=f"{prefix}-tracked-0"))
                continue
            for m in pack.messages:
                pub.publish(replace(m, message_id=f"{prefix}-send-{m.payload['page']}"))
            if d.redelivered_at is not None:  # the same bodies, new message ids
                clock.at = d.redelivered_at
                for m in pack.messages:
                    pub.publish(replace(
                        m, message_id=f"{prefix}-send-{m.payload['page']}-redelivered"))
            for page, at in enumerate(d.reported_at, start=1):
                if at is None:
                    continue
                clock.at = at
                sent, failed = d.page_counts(page)
                pub.publish_tracked(c.id, page, sent, failed, page == len(d.pages),
                                    correlation_id=correlation,
                                    message_id=f"{prefix}-tracked-{page}")
        return len(pub.published)


@dataclass
class CampaignDemo:
    """The campaign part of a demo run: what to publish, where, and the day to roll up."""

    url: str
    day: date
    dispatches: list[Dispatch]
    batch_size: int
    exchange: str = DEMO_EXCHANGE
    queue: str = DEMO_QUEUE

    @property
    def timezones(self) -> list[str]:
        return sorted({d.tz for d in self.dispatches})


def prepare_campaign_demo(source_url: str, demo_source: bool, regenerate: bool, day: date,
                          now: datetime) -> tuple[CampaignDemo | None, str]:
    """(the campaign part to run, or None, and the line saying what was done or why it is
    skipped). When it runs, the demo's campaigns are written into the application database
    (``regenerate``) and the broker settings point this process (only: ``make dev`` keeps
    its own environment) at the demo's exchange and queue on RabbitMQ, at
    ``ANALYTICS_BROKER_URL`` or else the local one. Call it before anything imports
    ``analytics_pipeline.definitions`` (whose resource reads the settings on import)."""
    import sys

    from analytics_pipeline.campaigns.broker import redact
    from analytics_pipeline.campaigns.resources import BROKER_URL

    skipped = "campaigns: skipped, "
    if not demo_source:
        return None, skipped + "the application database is not the demo's " \
                               "(ANALYTICS_SOURCE_URL is set)"
    if not regenerate and not has_campaign_tables(source_url):
        return None, skipped + "the kept application database has no campaigns (run the " \
                               "demo without --keep-source)"
    url = os.environ.get(BROKER_URL) or LOCAL_BROKER_URL
    reason = broker_unavailable_reason(url)
    if reason is not None:
        fix = f"check {BROKER_URL}" if os.environ.get(BROKER_URL) else \
            f"start RabbitMQ there or set {BROKER_URL}"
        return None, f"{skipped}{reason}: {fix}"
    if "analytics_pipeline.definitions" in sys.modules:
        return None, skipped + "the code location was loaded before the demo could point " \
                               "its broker resource at the demo's queue"
    batch = batch_size_setting()
    dispatches = plan_dispatches(day, now, batch)
    if regenerate:
        write_campaign_source(source_url, dispatches)
    os.environ.update({BROKER_URL: url, "ANALYTICS_BROKER_EXCHANGE": DEMO_EXCHANGE,
                       "ANALYTICS_BROKER_QUEUE": DEMO_QUEUE})
    n_contacts = sum(d.campaign.audience for d in dispatches)
    return CampaignDemo(url, day, dispatches, batch), (
        f"demo campaigns: {len(dispatches)} campaigns of accounts "
        f"{' and '.join(map(str, CAMPAIGN_ACCOUNTS))} ({n_contacts} contacts), sent on {day} "
        f"(the stuck one ~1 hour ago), through exchange {DEMO_EXCHANGE} and queue "
        f"{DEMO_QUEUE} at {redact(url)}")


def progress_table(rows: list[dict]) -> list[str]:
    """The demo's printed progress: one line per campaign (``campaign_progress`` rows)."""
    lines = [f"{'campaign':>8} {'acct':>4} {'channel':<8} {'audience':>8} "
             f"{'pages trk/pub/exp':>17} {'sent':>6} {'failed':>6} {'completed':>9} "
             f"{'progress':>8} {'stuck':>7} {'dup pages':>9} {'double sends':>12}  name"]
    for r in rows:
        pages = f"{r['pages_tracked']}/{r['pages_published']}/{r['pages_expected']}"
        stuck = f"yes ({r['stuck_pages']})" if r["stuck"] else "no"
        lines.append(
            f"{r['campaign_id']:>8} {r['account_id']:>4} {str(r['channel'])[:8]:<8} "
            f"{r['audience']:>8} {pages:>17} {r['sent']:>6} {r['failed']:>6} "
            f"{'yes' if r['completed'] else 'no':>9} {r['progress']:>8.0%} {stuck:>7} "
            f"{r['duplicate_pages']:>9} {r['double_sends']:>12}  {r['name'] or '-'}")
    return lines


def campaign_dashboard(engine, day: date) -> list[str]:  # noqa: ANN001
    """The demo campaigns' progress (``campaigns.read``) and the demo day's rollups, per
    account, as printed lines."""
    from analytics_pipeline.campaigns.read import campaign_progress
    from analytics_pipeline.report import metric_series

    rows: list[dict] = []
    for account in CAMPAIGN_ACCOUNTS:
        rows += campaign_progress(engine, account).to_dict("records")
    lines = ["", "campaign dispatch progress (campaign_progress, as of the consumption run; "
             "pages tracked/published/expected)", *progress_table(rows)]
    for account, tz in CAMPAIGN_ACCOUNTS.items():
        sent, failed, pages = (metric_series(engine, account, m, day, day)[0] for m in
                               ("campaign_sent", "campaign_failed", "campaign_pages_tracked"))
        lines.append(f"  rolled up on {day} ({tz}), account {account}: {pages.count} pages "
                     f"tracked, {int(sent.value or 0)} sent, {int(failed.value or 0)} failed")
    return lines


def campaign_commands(day: date) -> list[str]:
    return ["  analytics-pipeline campaigns --account 1",
            "  analytics-pipeline campaigns --account 2 --campaign 7202 --json",
            f"  analytics-pipeline report --account 2 --metric campaign_sent --from {day} "
            f"--to {day} --dimension channel --id 3"]
