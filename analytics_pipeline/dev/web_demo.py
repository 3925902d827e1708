"""The demo's web traffic: two sites (Acme Support's in New York, Bangalore Care's in Kolkata)
with returning visitors, multi-page visits, custom events, a long tail of pages, UTM
campaigns, referrers, a handful of user agents and countries, late arrivals and a few broken
events, over the support days of the demo (``dev.demo``).

Each site's day is seeded by its index in the window, not its date, like the support data:
every run draws the same traffic whatever the dates. Visitors come from a pool shared by
every day of a site (so some return), identified by a hash of their pool number.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.web.contract import (
    REASON_FUTURE,
    REASON_MISSING_VISITOR,
    REASON_NAME,
    REASON_UNKNOWN_SITE,
    REASON_URL,
)


@dataclass(frozen=True)
class DemoSite:
    id: int
    account_id: int
    domain: str
    timezone: str  # its account's (the demo accounts' timezones)
    visits_per_day: int  # ~3 events a visit: ~1,500-3,000 events a day
    returning: float  # share of visits by a visitor of the returning pool
    sections: tuple[str, ...]  # the long tail: /<section>/<slug>
    core_pages: tuple[str, ...]  # most visited first
    cart_pages: tuple[str, ...]  # where add_to_cart happens
    countries: tuple[tuple[str | None, int], ...]  # (code, weight); None: not resolved
    search: tuple[str, ...]  # search engines' referrers, most used first


DEMO_SITES = (
    DemoSite(1, 1, "acme-support.example", "America/New_York", 650, 0.35,
             ("blog", "docs"),
             ("/", "/pricing", "/features", "/features/inbox", "/features/bots",
              "/integrations", "/customers", "/about", "/contact", "/login"),
             ("/pricing",),
             (("US", 55), ("CA", 9), ("GB", 8), ("IN", 6), ("DE", 5), ("BR", 4), ("AU", 4),
              ("FR", 3), ("MX", 3), (None, 3)),
             ("https://www.google.com/", "https://www.bing.com/search?q=helpdesk+software",
              "https://duckduckgo.com/")),
    DemoSite(2, 2, "bangalorecare.example", "Asia/Kolkata", 800, 0.45,
             ("products", "health-tips"),
             ("/", "/products", "/offers", "/stores", "/cart", "/about", "/contact",
              "/track-order", "/login", "/faq"),
             ("/products", "/offers"),
             (("IN", 78), ("US", 5), ("AE", 5), ("SG", 3), ("GB", 3), ("SA", 2), ("QA", 1),
              (None, 3)),
             ("https://www.google.co.in/", "https://www.google.com/", "https://www.bing.com/")),
)

UNKNOWN_SITE_ID = 99  # a site the application deleted: its events are no site's
RETURNING_POOL = 1_500  # visitors of a site who come back, the first ones most often

USER_AGENTS = (  # (agent, weight); one per visitor, whatever their visits
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36", 30),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0", 7),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/18.1 Safari/605.1.15", 12),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
     "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", 22),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Mobile Safari/537.36", 22),
    ("Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.6 Mobile/15E148 Safari/604.1", 7),
)
BOT_AGENT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

SOCIAL = ("https://t.co/x9Qm2LbT4e", "https://www.linkedin.com/feed/",
          "https://l.facebook.com/l.php?u=https%3A%2F%2Fexample", "https://www.reddit.com/",
          "android-app://com.google.android.gm/")  # the Gmail app
OTHER_SITES = ("https://news.ycombinator.com/item?id=42001234", "https://www.g2.com/compare",
               "https://medium.com/@support-ops/tools", "https://www.capterra.com/")
# (utm_source, utm_medium, utm_campaign as in the URL, the referrer a click brings)
CAMPAIGNS = (
    ("newsletter", "email", "november_digest", None),
    ("google", "cpc", "brand-search", "https://www.google.com/"),
    ("facebook", "social", "black%20friday", "https://l.facebook.com/"),
    ("linkedin", "social", "webinar+q4", "https://www.linkedin.com/"),
)

_WORDS = ("reduce", "measure", "automate", "improve", "scale", "organize", "track", "compare")
_TOPICS = ("first-response-time", "csat", "chatbots", "shared-inbox", "sla", "macros",
           "knowledge-base", "escalations", "night-shifts", "email-templates", "tags",
           "customer-feedback", "vitamins", "ayurveda", "sleep", "diabetes-care")


def _pages(site: DemoSite) -> list[str]:
    """The site's pages, most visited first: its core pages, then a long tail of articles."""
    tail = [f"/{section}/{w}-{t}" for section in site.sections for t in _TOPICS
            for w in _WORDS]
    random.Random(site.id).shuffle(tail)
    return [*site.core_pages, *tail]


def _zipf_cumulative(n: int, s: float = 1.1) -> list[float]:
    """Cumulative weights 1/rank^s (for ``random.choices``' cum_weights)."""
    return list(itertools.accumulate(1 / (rank + 1) ** s for rank in range(n)))


def _visitor_id(site_id: int, k: int) -> str:
    return hashlib.blake2b(f"{site_id}:{k}".encode(), digest_size=8).hexdigest()


@functools.lru_cache(maxsize=65_536)
def _visitor(site: DemoSite, k: int, bot: bool) -> tuple[str, str, str | None]:
    """(id, user agent, country) of visitor ``k`` of ``site``: a visitor keeps their device
    and country, whatever the day."""
    vid = _visitor_id(site.id, k)
    if bot:
        return vid, BOT_AGENT, "US"
    who = random.Random(vid)
    agents, agent_w = zip(*USER_AGENTS, strict=True)
    countries, country_w = zip(*site.countries, strict=True)
    return vid, who.choices(agents, agent_w)[0], who.choices(countries, country_w)[0]


def _fmt(t: datetime) -> datetime:
    """Naive UTC, microseconds kept, as the application stores it."""
    return t.astimezone(timezone.utc).replace(tzinfo=None)


def generate_web_events(start: date, days: int, sites: tuple[DemoSite, ...] = DEMO_SITES,
                        seed: int = 13) -> list[dict]:
    """The ``web_events`` rows of the demo sites for ``days`` local days from ``start``
    (each in its site's timezone), and the broken rows (``BROKEN_REASONS``).

    A visit has 1-8 page views (think times of a few seconds to minutes; about one in 30
    gaps is longer than 30 minutes, as when a tab is left open), some add_to_cart and
    signup events. Its first page view carries its UTM campaign and referrer (search,
    social, other sites, the site itself, or none); the next ones have the previous page
    as referrer. Events of a visit that runs past the window's last midnight are left out,
    and no event is received after it (so the late-events sensor finds nothing new).
    """
    rows: list[dict] = []
    for site in sites:
        tz = ZoneInfo(site.timezone)
        pages = _pages(site)
        cum = _zipf_cumulative(len(pages))
        base = f"https://www.{site.domain}"
        window_end = LocalDay(start + timedelta(days=days), site.timezone).start_utc
        for d in range(days):
            rng = random.Random(seed * 1_000_003 + site.id * 1_009 + d)
            day = start + timedelta(days=d)
            midnight = datetime(day.year, day.month, day.day)
            for i in range(round(site.visits_per_day * rng.uniform(0.85, 1.15))):
                bot = rng.random() < 0.03
                if bot:
                    k = 9_000 + rng.randrange(3)
                elif rng.random() < site.returning:
                    k = int(RETURNING_POOL * rng.random() ** 2)  # the loyal ones most often
                else:
                    k = 100_000 + d * 10_000 + i  # seen for the first time
                visitor, agent, country = _visitor(site, k, bot)
                # a business-day curve and an evening peak, in the site's local time
                hour = rng.gauss(11, 3) if rng.random() < 0.6 else rng.gauss(20, 2.5)
                t = (midnight + timedelta(hours=hour % 24)).replace(tzinfo=tz)
                t = t.astimezone(timezone.utc)
                query, referrer = "", None
                if bot:
                    n, path = 1, rng.choices(pages, cum_weights=cum)[0]
                else:
                    n = rng.choices(range(1, 9), (40, 18, 13, 10, 7, 5, 4, 3))[0]
                    path = rng.choices(pages, cum_weights=cum)[0]
                    r = rng.random()
                    if r < 0.15:
                        source, medium, campaign, referrer = rng.choice(CAMPAIGNS)
                        query = (f"?utm_source={source}&utm_medium={medium}"
                                 f"&utm_campaign={campaign}")
                        path = rng.choice(site.cart_pages)
                    elif r < 0.45:
                        referrer = rng.choices(site.search, (6, 2, 1))[0]
                    elif r < 0.55:
                        referrer = rng.choice(SOCIAL)
                    elif r < 0.63:
                        referrer = rng.choice(OTHER_SITES)
                    elif r < 0.68:  # a tab of the site itself, left open: direct traffic
                        referrer = base + rng.choice(pages[:5])
                events: list[tuple[datetime, str, str, str | None]] = []
                for j in range(n):
                    url = base + path + (query if j == 0 else "")
                    events.append((t, "pageview", url, referrer))
                    if path in site.cart_pages and rng.random() < 0.2:
                        events.append((t + timedelta(seconds=rng.uniform(5, 90)),
                                       "add_to_cart", base + path, referrer))
                    referrer, query = base + path, ""
                    gap = (rng.uniform(31, 120) * 60 if rng.random() < 1 / 30
                           else min(rng.lognormvariate(3.8, 1.0), 1500))
                    t += timedelta(seconds=gap)
                    path = rng.choices(pages, cum_weights=cum)[0]
                if not bot and rng.random() < (0.12 if query or n > 3 else 0.02):
                    events.append((t, "pageview", base + "/signup", referrer))
                    events.append((t + timedelta(seconds=rng.uniform(20, 180)), "signup",
                                   base + "/signup", base + "/signup"))
                for at, name, url, ref in events:
                    if at >= window_end:
                        continue
                    delay = rng.lognormvariate(-0.5, 0.8)  # seconds
                    if rng.random() < 0.03:  # an app offline for a while, then replayed
                        delay = rng.uniform(120, 6 * 3600)
                    rows.append({
                        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                        "site_id": site.id, "visitor_id": visitor, "name": name,
                        "url": url, "referrer": ref, "user_agent": agent,
                        "country": country, "occurred_at": _fmt(at),
                        "received_at": _fmt(min(at + timedelta(seconds=delay), window_end)),
                    })
    rows.extend(broken_web_events(start, days, sites[0]))
    return rows


# the broken rows' ids → the reason each is quarantined with
BROKEN_REASONS = {
    "broken-unknown-site": REASON_UNKNOWN_SITE,
    "broken-no-visitor": REASON_MISSING_VISITOR,
    "broken-future": REASON_FUTURE,
    "broken-empty-name": REASON_NAME,
    "broken-relative-url": REASON_URL,
}


def broken_web_events(start: date, days: int, site: DemoSite) -> list[dict]:
    """One row per quarantine reason, mid-window at 15:00 on ``site``'s clock."""
    day = start + timedelta(days=days // 2)
    t = _fmt(datetime(day.year, day.month, day.day, 15, tzinfo=ZoneInfo(site.timezone)))
    ok = {"site_id": site.id, "visitor_id": "0badc0ffee000001", "name": "pageview",
          "url": f"https://www.{site.domain}/pricing", "referrer": None,
          "user_agent": USER_AGENTS[0][0], "country": "US", "occurred_at": t,
          "received_at": t + timedelta(seconds=1)}
    return [
        {**ok, "id": "broken-unknown-site", "site_id": UNKNOWN_SITE_ID},
        {**ok, "id": "broken-no-visitor", "visitor_id": None},
        # the device's clock is a day ahead: it occurred "after" it was received
        {**ok, "id": "broken-future", "received_at": t - timedelta(days=1)},
        {**ok, "id": "broken-empty-name", "name": ""},
        {**ok, "id": "broken-relative-url", "url": "/pricing?ref=widget"},
    ]


def demo_sites_rows(sites: tuple[DemoSite, ...] = DEMO_SITES) -> list[dict]:
    return [{"id": s.id, "account_id": s.account_id, "domain": s.domain, "active": True}
            for s in sites]


def create_web_demo_source(url: str, start: date, days: int) -> int:
    """Write the demo sites and their web events into the application database at
    ``url`` (replacing any); returns the number of events."""
    from analytics_pipeline.dev.web_source import write_web_source

    events = generate_web_events(start, days)
    write_web_source(url, demo_sites_rows(), events)
    return len(events)


# --- the demo's printed dashboard --------------------------------------------------------

TOP_PAGES, TOP_REFERRERS = 5, 3
PAGE_WIDTH = 44


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _duration(v: float | None) -> str:
    return "-" if v is None else f"{int(v // 60)}m{int(v % 60):02d}s"


def web_dashboard(engine, first: date, last: date,
                  sites: tuple[DemoSite, ...] = DEMO_SITES) -> list[str]:
    """Per site, its numbers over the window's local days (``web_stats``: visitors are the
    distinct visitors of the whole window, next to the sum of its days' visitors), then the
    top pages and referrers of its last day, and the web quarantine."""
    import sqlalchemy as sa

    from analytics_pipeline.core import warehouse as wh
    from analytics_pipeline.core.landing import LandingStore
    from analytics_pipeline.core.settings import setting
    from analytics_pipeline.web.contract import WEB_SOURCE
    from analytics_pipeline.web.read import web_stats

    store = LandingStore(setting("ANALYTICS_LANDING_URI"))
    lines = ["", f"web analytics, each site's local days {first} … {last} (web_stats):",
             f"{'site':<26} {'timezone':<17} {'visitors':>8} {'(sum of days)':>13} "
             f"{'visits':>7} {'pageviews':>9} {'bounce rate':>11} {'avg visit':>9}"]
    tops: list[str] = []
    for site in sites:
        lo = LocalDay(first, site.timezone).start_utc
        hi = LocalDay(last, site.timezone).end_utc
        stats = web_stats(engine, store, site.id, lo, hi, by="day")
        t = stats.totals
        summed = int(stats.series["visitors"].sum())
        lines.append(f"{f'{site.id} {site.domain}':<26} {site.timezone:<17} "
                     f"{t['visitors']:>8} {summed:>13} {t['visits']:>7} {t['pageviews']:>9} "
                     f"{_rate(t['bounce_rate']):>11} {_duration(t['visit_duration_seconds']):>9}")
        day = LocalDay(last, site.timezone)
        pages = web_stats(engine, store, site.id, day.start_utc, day.end_utc,
                          breakdown="page", limit=TOP_PAGES).breakdown
        refs = web_stats(engine, store, site.id, day.start_utc, day.end_utc,
                         breakdown="referrer", limit=TOP_REFERRERS).breakdown
        head = f"{site.domain} on {last}, top pages"
        tops.append(f"{head:<{PAGE_WIDTH + 2}} {'visitors':>8} {'pageviews':>9}")
        for r in pages.to_dict("records"):
            page = r["value"] if len(r["value"]) <= PAGE_WIDTH else \
                r["value"][:PAGE_WIDTH - 1] + "…"
            tops.append(f"  {page:<{PAGE_WIDTH}} {r['visitors']:>8} {r['pageviews']:>9}")
        tops.append("  top referrers (visitors/visits): " + ", ".join(
            f"{r['value']} {r['visitors']}/{r['visits']}" for r in refs.to_dict("records")))
    with engine.connect() as conn:
        q = wh.quarantine.c
        bad = dict(conn.execute(sa.select(q.reason, sa.func.count()).where(
            q.source == WEB_SOURCE).group_by(q.reason).order_by(q.reason)).all())
    return [*lines, "", *tops, "", f"quarantined web events: {bad or 'none'}"]


def web_commands(last: date, sites: tuple[DemoSite, ...] = DEMO_SITES) -> list[str]:
    """Two ``web-stats`` command lines over ranges that start and end mid-hour: the
    first site's working hours of the last day by hour, the second site's last week by
    referrer."""

    def at(d: date, hour: int, minute: int, tz: str) -> str:
        return datetime(d.year, d.month, d.day, hour, minute, tzinfo=ZoneInfo(tz)).isoformat()

    a, b = sites[0], sites[-1]
    week = last - timedelta(days=6)
    return [
        f"  analytics-pipeline web-stats --site {a.id} --from "
        f"{at(last, 9, 30, a.timezone)} --to {at(last, 17, 45, a.timezone)} --by hour",
        f"  analytics-pipeline web-stats --site {b.id} --from "
        f"{at(week, 10, 15, b.timezone)} --to {at(last, 18, 40, b.timezone)} "
        "--breakdown referrer",
    ]
