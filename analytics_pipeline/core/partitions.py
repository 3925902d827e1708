"""Partitions: a calendar ``date`` crossed with the IANA ``timezone`` of the accounts.

Partition ``2026-02-11|America/New_York`` covers every account reporting in New York
time over its local day 2026-02-11, i.e. the UTC window between the two local
midnights (23 or 25 hours long on DST days). See DESIGN.md, "Partitions".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from analytics_pipeline.core.settings import start_date

DATE_DIM = "date"
TIMEZONE_DIM = "timezone"
TIMEZONES_PARTITIONS_NAME = "timezones"

# Used as a plain calendar date; end_offset=1 so that today's key exists (a day east
# of UTC closes before the UTC day does).
date_partitions = DailyPartitionsDefinition(
    start_date=start_date().isoformat(), end_offset=1, timezone="UTC"
)
timezone_partitions = DynamicPartitionsDefinition(name=TIMEZONES_PARTITIONS_NAME)
daily_timezone_partitions = MultiPartitionsDefinition(
    {DATE_DIM: date_partitions, TIMEZONE_DIM: timezone_partitions}
)


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name; raises ``ValueError`` for an unknown name."""
    if not name or name != name.strip() or "|" in name or "," in name:
        raise ValueError(f"invalid timezone name {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc


def is_valid_timezone(name: str | None) -> bool:
    if name is None:
        return False
    try:
        zone(name)
    except ValueError:
        return False
    return True


def local_midnight_utc(day: date, tz_name: str) -> datetime:
    """UTC instant of local midnight starting ``day`` in ``tz_name``.

    A local midnight that does not exist (a DST jump at 00:00, as in some zones)
    resolves to the first instant of the day, per PEP 495 ``fold=0`` semantics.
    """
    local = datetime(day.year, day.month, day.day, tzinfo=zone(tz_name))
    return local.astimezone(timezone.utc)


@dataclass(frozen=True)
class LocalDay:
    """One partition: a local calendar day in one timezone."""

    day: date
    tz: str

    @property
    def start_utc(self) -> datetime:
        return local_midnight_utc(self.day, self.tz)

    @property
    def end_utc(self) -> datetime:
        return local_midnight_utc(self.day + timedelta(days=1), self.tz)

    @property
    def hours(self) -> float:
        return (self.end_utc - self.start_utc).total_seconds() / 3600

    @property
    def key(self) -> str:
        return f"{self.day.isoformat()}|{self.tz}"

    def multi_key(self) -> MultiPartitionKey:
        return MultiPartitionKey({DATE_DIM: self.day.isoformat(), TIMEZONE_DIM: self.tz})

    def closes_at(self, grace: timedelta) -> datetime:
        """The UTC instant after which this day is settled enough to roll up."""
        return self.end_utc + grace

    @classmethod
    def from_key(cls, key: str | MultiPartitionKey) -> LocalDay:
        if isinstance(key, MultiPartitionKey):
            dims = key.keys_by_dimension
            return cls(date.fromisoformat(dims[DATE_DIM]), dims[TIMEZONE_DIM])
        day, sep, tz = str(key).partition("|")
        if not sep:
            raise ValueError(f"partition key {key!r} is not of the form 'YYYY-MM-DD|Area/City'")
        return cls(date.fromisoformat(day), tz)

    def validated(self) -> LocalDay:
        """This day, or ValueError when its timezone is not an IANA name (a ``timezone``
        key added by hand, e.g. ``Europe/Pariss``)."""
        if not is_valid_timezone(self.tz):
            raise ValueError(
                f"partition {self.key}: {self.tz!r} is not an IANA timezone name (a key added "
                "by hand?); the next accounts refresh removes it")
        return self


def local_date_of(instant_utc: datetime, tz_name: str) -> date:
    return instant_utc.astimezone(zone(tz_name)).date()


def last_closed_day(now_utc: datetime, tz_name: str, grace: timedelta) -> date:
    """The latest local date in ``tz_name`` whose day has closed plus ``grace`` at ``now``."""
    candidate = local_date_of(now_utc - grace, tz_name) - timedelta(days=1)
    # local_date_of(now - grace) is the local day in progress (grace included), so the
    # day before it has ended at least `grace` ago; verify against the exact window.
    while LocalDay(candidate + timedelta(days=1), tz_name).closes_at(grace) <= now_utc:
        candidate += timedelta(days=1)
    return candidate


@dataclass(frozen=True)
class AccountTimezone:
    """An account's reporting timezone as resolved for partitioning."""

    id: int
    name: str | None
    reporting_timezone: str | None  # as stored in the source
    timezone: str | None  # effective: the source's, or the default; None when invalid
    timezone_valid: bool


def resolve_account_timezones(rows: list[dict], default_tz: str) -> list[AccountTimezone]:
    """Give each account its effective timezone; an invalid name leaves it unpartitioned.

    An account without a timezone (null or blank) uses ``default_tz``. An invalid name is
    not guessed: the account is left out of every partition and reported, so its numbers
    are never cut at the wrong midnight.
    """
    zone(default_tz)
    out = []
    for r in rows:
        raw = r.get("reporting_timezone")
        name = raw.strip() if isinstance(raw, str) else None
        if not name:
            out.append(AccountTimezone(int(r["id"]), r.get("name"), raw, default_tz, True))
        elif is_valid_timezone(name):
            out.append(AccountTimezone(int(r["id"]), r.get("name"), raw, name, True))
        else:
            out.append(AccountTimezone(int(r["id"]), r.get("name"), raw, None, False))
    return out
