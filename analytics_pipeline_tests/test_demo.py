"""The demo's days: support and email on the same dates, reproducible numbers, an aligned
summary. (The demo run itself is `make demo`; these check its pure parts.)"""

import functools
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from analytics_pipeline.core.partitions import LocalDay, last_closed_day, local_date_of
from analytics_pipeline.dev.demo import (
    DEMO_ACCOUNTS,
    DEMO_DAYS,
    account_table,
    demo_timezones,
    demo_window,
    generate_email_demo,
    generate_events,
)
from analytics_pipeline.dev.web_demo import (
    BOT_AGENT,
    BROKEN_REASONS,
    DEMO_SITES,
    UNKNOWN_SITE_ID,
    demo_sites_rows,
    generate_web_events,
    web_commands,
)
from analytics_pipeline.web import compute
from analytics_pipeline.web.contract import LANDED_WEB_SCHEMA
from analytics_pipeline.web.rollups import web_rollup_rows

UTC = timezone.utc
GRACE = timedelta(minutes=30)
LOOKBACK = timedelta(hours=72)  # MAILGUN_INITIAL_LOOKBACK_HOURS' default


# Every hour of a day in UTC, and both sides of the US fall-back and spring-forward.
NOWS = [datetime(2026, 11, 30, h, 7, tzinfo=UTC) for h in range(24)] + [
    datetime(2026, 11, 2, 8, 29, tzinfo=UTC), datetime(2026, 3, 9, 6, 59, tzinfo=UTC)]


@pytest.mark.parametrize("now", NOWS, ids=lambda n: n.strftime("%m-%dT%H:%M"))
def test_support_and_email_share_closed_days_within_mailguns_lookback(now):
    first, last = demo_window(now, GRACE)
    assert (last - first).days == DEMO_DAYS - 1
    for tz in demo_timezones():
        assert last <= last_closed_day(now - timedelta(minutes=30), tz, GRACE)
    _, _, items = generate_email_demo(last)
    tz_of = {a.id: a.timezone or "UTC" for a in DEMO_ACCOUNTS}
    for item, _ in items:
        t = datetime.fromtimestamp(float(item["timestamp"]), UTC)
        assert now - LOOKBACK < t < now, item["id"]
        account = int(item["recipient"].split("-")[0].removeprefix("member")) if (
            item["recipient"].startswith("member")) else 1
        assert local_date_of(t, tz_of[account]) == last, item["id"]


def test_numbers_depend_on_the_day_index_not_the_date():
    def shape(start: date, seed: int = 7) -> Counter:
        return Counter((e["account_id"], e["name"], e["value"])
                       for e in generate_events(start, seed=seed))

    assert shape(date(2026, 2, 28)) == shape(date(2026, 11, 15))
    assert shape(date(2026, 2, 28)) != shape(date(2026, 2, 28), seed=8)  # values do vary


def test_pinned_start_must_have_closed():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert demo_window(now, GRACE, date(2026, 2, 28)) == (date(2026, 2, 28), date(2026, 3, 13))
    with pytest.raises(ValueError, match="ANALYTICS_DEMO_START"):
        demo_window(now, GRACE, date(2026, 11, 25))


def test_summary_columns_stay_aligned_with_an_invalid_timezone():
    rows = [("Acme Support", "America/New_York", 372, "15.0 min", 80),
            ("Typo Timezone Ltd", "INVALID (America/New_Yrok)", 0, "-", 0)]
    lines = account_table(rows)
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split()[-3:] == ["0", "-", "0"]
    long = account_table(rows + [("X", "INVALID (" + "A" * 60 + ")", 1, "-", 1)])
    assert len({len(line) for line in long}) == 1
    assert "…" in long[-1] and len(long[-1]) == len(lines[0]) + 40 - len(rows[1][1])


# --- web traffic -------------------------------------------------------------------------

WINTER, DST = date(2026, 11, 15), date(2026, 2, 28)  # DST's window holds 2026-03-08


@functools.lru_cache(maxsize=4)
def web_events(start: date) -> tuple[dict, ...]:
    return tuple(generate_web_events(start, DEMO_DAYS))


def read_table(rows) -> pa.Table:
    """Rows as the extraction reads them (text), converted."""
    as_text = [{k: None if v is None else str(v) for k, v in r.items()} for r in rows]
    return compute.convert_batch(pa.Table.from_pylist(
        as_text, schema=pa.schema([(c, pa.string()) for c in compute.SOURCE_COLUMNS])))


SITES_TABLE = pa.Table.from_pylist(demo_sites_rows(), schema=compute.SITES_SCHEMA)


def test_web_events_are_generated_deterministically_by_day_index():
    assert generate_web_events(WINTER, DEMO_DAYS) == list(web_events(WINTER))

    def shape(start: date) -> Counter:
        return Counter((e["site_id"], e["visitor_id"], e["name"], e["url"], e["referrer"],
                        e["user_agent"], e["country"]) for e in web_events(start))

    assert shape(DST) == shape(WINTER)
    assert shape(WINTER) != Counter(
        (e["site_id"], e["visitor_id"], e["name"], e["url"], e["referrer"], e["user_agent"],
         e["country"]) for e in generate_web_events(WINTER, DEMO_DAYS, seed=14))


@pytest.mark.parametrize("start", [WINTER, DST], ids=str)
def test_web_events_fall_in_the_window_and_are_received_by_its_end(start):
    rows = [r for r in web_events(start) if r["id"] not in BROKEN_REASONS]
    for site in DEMO_SITES:
        lo = LocalDay(start, site.timezone).start_utc.replace(tzinfo=None)
        hi = LocalDay(start + timedelta(days=DEMO_DAYS), site.timezone).start_utc \
            .replace(tzinfo=None)
        mine = [r for r in rows if r["site_id"] == site.id]
        assert all(lo <= r["occurred_at"] <= r["received_at"] <= hi for r in mine)
        days = Counter(local_date_of(r["occurred_at"].replace(tzinfo=UTC), site.timezone)
                       for r in mine)
        assert sorted(days) == [start + timedelta(days=d) for d in range(DEMO_DAYS)]
        assert all(1_500 <= n <= 3_000 for n in days.values()), days
    assert {r["site_id"] for r in web_events(start)} == {1, 2, UNKNOWN_SITE_ID}
    late = [r for r in rows if r["received_at"] - r["occurred_at"] > timedelta(minutes=2)]
    assert 500 < len(late) < 0.05 * len(rows)
    if start == DST:  # New York's 23-hour day has its traffic
        day = LocalDay(date(2026, 3, 8), "America/New_York")
        assert day.hours == 23
        assert sum(day.start_utc <= r["occurred_at"].replace(tzinfo=UTC) < day.end_utc
                   for r in rows if r["site_id"] == 1) > 1_500


def test_only_the_broken_web_events_are_quarantined_with_their_reasons():
    rows = web_events(WINTER)
    reasons, _ = compute.validate(read_table(rows), SITES_TABLE)
    got = {r["id"]: why for r, why in zip(rows, reasons.to_pylist(), strict=True) if why}
    assert got == BROKEN_REASONS


def test_web_traffic_has_the_dimensions_the_dashboard_shows():
    rows = [r for r in web_events(WINTER) if r["id"] not in BROKEN_REASONS]
    assert {r["name"] for r in rows} == {"pageview", "add_to_cart", "signup"}
    assert len({r["url"].split("?")[0] for r in rows if r["site_id"] == 1}) > 100  # long tail
    assert {r["user_agent"] for r in rows} >= {BOT_AGENT}
    assert len({r["user_agent"] for r in rows}) == 7
    assert any("utm_campaign=black%20friday" in r["url"] for r in rows)
    assert any(r["referrer"] and "acme-support.example" in r["referrer"] for r in rows)
    visitors_by_day: dict[str, set] = {}
    for r in rows:
        visitors_by_day.setdefault(r["visitor_id"], set()).add(r["occurred_at"].date())
    assert sum(len(d) > 1 for d in visitors_by_day.values()) > 500  # returning visitors


def web_day_numbers(start: date, index: int, site=DEMO_SITES[0]) -> dict:
    """The site's overview numbers of the window's day ``index``, computed as the pipeline
    does (landing, visits, daily rollup)."""
    day = LocalDay(start + timedelta(days=index), site.timezone)
    rows = [r for r in web_events(start) if r["site_id"] == site.id
            and day.start_utc <= r["occurred_at"].replace(tzinfo=UTC) < day.end_utc]
    landed = compute.land_web_events(read_table(rows), SITES_TABLE, day.start_utc)
    landed = pa.Table.from_batches(list(compute.landed_slices(landed)), LANDED_WEB_SCHEMA)
    valid = landed.filter(pc.is_null(landed["invalid_reason"]))
    ids = pc.unique(valid["visitor_id"]).to_pylist()
    nums = pa.table({"site_id": [site.id] * len(ids), "visitor_id": ids,
                     "visitor_num": list(range(len(ids)))})
    _, daily = web_rollup_rows(valid, nums, day)
    (row,) = daily.filter(pc.equal(daily["dimension"], "site")).to_pylist()
    return {k: row[k] for k in ("events", "pageviews", "visits", "bounces", "visitors")}


def test_the_demos_web_numbers_are_reproducible():
    # the same day index gives the same numbers on other dates, 2026-03-08's 23 hours too
    numbers = web_day_numbers(WINTER, 8)
    assert numbers == web_day_numbers(DST, 8)
    assert numbers == {"events": 1888, "pageviews": 1807, "visits": 682, "bounces": 259,
                       "visitors": 613}


def test_web_commands_start_and_end_mid_hour_in_each_sites_time():
    recent = web_commands(date(2026, 11, 28))
    assert recent[0] == ("  analytics-pipeline web-stats --site 1 --from "
                         "2026-11-28T09:30:00-05:00 --to 2026-11-28T17:45:00-05:00 --by hour")
    assert "--from 2026-11-22T10:15:00+05:30" in recent[1]
    old = web_commands(date(2026, 3, 13))
    assert "--from 2026-03-13T09:30:00-04:00" in old[0]  # New York's summer time by then
