from datetime import date, datetime, timedelta, timezone

import pytest

from analytics_pipeline.core.partitions import (
    LocalDay,
    last_closed_day,
    local_date_of,
    resolve_account_timezones,
    zone,
)

UTC = timezone.utc


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_new_york_day_window():
    d = LocalDay(date(2026, 2, 11), "America/New_York")
    assert d.start_utc == utc(2026, 2, 11, 5)
    assert d.end_utc == utc(2026, 2, 12, 5)
    assert d.hours == 24


def test_dst_days_are_23_and_25_hours():
    assert LocalDay(date(2026, 3, 8), "America/New_York").hours == 23
    assert LocalDay(date(2026, 11, 1), "America/New_York").hours == 25
    assert LocalDay(date(2026, 3, 29), "Europe/Berlin").hours == 23


def test_half_and_quarter_hour_offsets_are_exact():
    k = LocalDay(date(2026, 2, 11), "Asia/Kolkata")
    assert (k.start_utc, k.end_utc) == (utc(2026, 2, 10, 18, 30), utc(2026, 2, 11, 18, 30))
    n = LocalDay(date(2026, 2, 11), "Asia/Kathmandu")
    assert (n.start_utc, n.end_utc) == (utc(2026, 2, 10, 18, 15), utc(2026, 2, 11, 18, 15))


def test_boundary_events_belong_to_the_right_local_day():
    assert local_date_of(utc(2026, 2, 12, 4, 59, 59), "America/New_York") == date(2026, 2, 11)
    assert local_date_of(utc(2026, 2, 12, 5, 0, 0), "America/New_York") == date(2026, 2, 12)
    d = LocalDay(date(2026, 2, 11), "America/New_York")
    assert d.start_utc <= utc(2026, 2, 12, 4, 59, 59) < d.end_utc
    assert not d.start_utc <= utc(2026, 2, 12, 5) < d.end_utc


def test_partition_key_round_trip():
    d = LocalDay.from_key("2026-02-11|America/New_York")
    assert d == LocalDay(date(2026, 2, 11), "America/New_York")
    assert LocalDay.from_key(d.multi_key()) == d
    assert str(d.multi_key()) == "2026-02-11|America/New_York"
    with pytest.raises(ValueError):
        LocalDay.from_key("2026-02-11")


def test_last_closed_day_respects_grace_per_timezone():
    grace = timedelta(minutes=30)
    # New York's 2026-02-11 ends at 05:00Z; with 30 min grace it is due at 05:30Z.
    assert last_closed_day(utc(2026, 2, 12, 5, 29), "America/New_York", grace) == date(2026, 2, 10)
    assert last_closed_day(utc(2026, 2, 12, 5, 30), "America/New_York", grace) == date(2026, 2, 11)
    # UTC+14 closes its day at 10:00Z of the previous UTC date.
    assert last_closed_day(utc(2026, 2, 11, 10, 31), "Pacific/Kiritimati", grace) == date(
        2026, 2, 11
    )
    # Kolkata's 2026-02-11 ends at 18:30Z the same UTC date.
    kolkata = "Asia/Kolkata"
    assert last_closed_day(utc(2026, 2, 11, 18, 29), kolkata, timedelta(0)) == date(2026, 2, 10)
    assert last_closed_day(utc(2026, 2, 11, 18, 30), kolkata, timedelta(0)) == date(2026, 2, 11)


def test_invalid_timezone_names():
    for bad in ["Mars/Olympus", "", "America/New_Yrok", "UTC|x", " UTC"]:
        with pytest.raises(ValueError):
            zone(bad)


def test_resolve_account_timezones_defaults_and_invalid():
    rows = [
        {"id": 1, "name": "a", "reporting_timezone": "America/New_York"},
        {"id": 2, "name": "b", "reporting_timezone": None},
        {"id": 3, "name": "c", "reporting_timezone": "  "},
        {"id": 4, "name": "d", "reporting_timezone": "Not/AZone"},
    ]
    out = {a.id: a for a in resolve_account_timezones(rows, "UTC")}
    assert out[1].timezone == "America/New_York"
    assert out[2].timezone == "UTC" and out[3].timezone == "UTC"
    assert out[4].timezone is None and not out[4].timezone_valid
    with pytest.raises(ValueError):
        resolve_account_timezones(rows, "Bad/Default")
