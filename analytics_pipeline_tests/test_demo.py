"""The demo's days: support and email on the same dates, reproducible numbers, an aligned
summary. (The demo run itself is `make demo`; these check its pure parts.)"""

from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest

from analytics_pipeline.core.partitions import last_closed_day, local_date_of
from analytics_pipeline.dev.demo import (
    DEMO_ACCOUNTS,
    DEMO_DAYS,
    account_table,
    demo_timezones,
    demo_window,
    generate_email_demo,
    generate_events,
)

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
