"""Bad web events, one at a time, on a loosely typed SQLite source and on a PostgreSQL
source whose ``web_events`` columns are text (``name`` bytea): each bad row lands once,
across the partitions it could fall in, with the first rule it breaks as its
``invalid_reason`` and its raw values; a control event beside it lands valid, unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import pytest
import sqlalchemy as sa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay, resolve_account_timezones
from analytics_pipeline.web.compute import SOURCE_COLUMNS
from analytics_pipeline.web.contract import LANDED_WEB_SCHEMA, WEB_SOURCE
from analytics_pipeline.web.source import WebEventsSource
from analytics_pipeline.web.steps import extract_web_partition

NY = "America/New_York"
# New York's day of the control event, the UTC day that sweeps events of no known site,
# and the days an impossible date (2026-02-31) could fall on
PARTITIONS = [LocalDay(date(2026, 2, 11), NY), LocalDay(date(2026, 2, 11), "UTC"),
              LocalDay(date(2026, 2, 28), NY), LocalDay(date(2026, 2, 28), "UTC")]
AT = "2026-02-11 12:00:00"
CONTROL = {"id": "ctl", "site_id": 10, "visitor_id": "v1", "name": "pageview",
           "url": "https://example.com/", "referrer": None, "user_agent": None,
           "country": "US", "occurred_at": AT, "received_at": AT}
# sites: 10 active, 11 inactive (account 1, New York), 40 of an account not in the snapshot
SITES = [(10, 1, "example.com", True), (11, 1, "old.example.com", False),
         (40, 3, "gone.example", True)]


@dataclass(frozen=True)
class Bytes:
    """Raw bytes stored as TEXT (SQLite) or as bytea (PostgreSQL's ``name`` column)."""

    data: bytes


@dataclass(frozen=True)
class Case:
    row: dict  # overrides of an event "bad" of visitor v2 at the control's instant
    reason: str | None  # expected invalid_reason; None: lands valid
    sqlite_only: str = ""  # why PostgreSQL cannot hold this value, if it cannot
    extra_rows: tuple = ()  # more rows (duplicates)


CASES = {
    "site id 12x": Case({"site_id": "12x"}, "unknown_site"),
    "site id float": Case({"site_id": 10.5}, "unknown_site"),
    "site id overflow": Case({"site_id": 1e30}, "unknown_site"),
    "site id null": Case({"site_id": None}, "unknown_site"),
    "unknown site": Case({"site_id": 999}, "unknown_site"),
    "site of an account not in the snapshot": Case({"site_id": 40}, "unknown_site"),
    "inactive site": Case({"site_id": 11}, "inactive_site"),
    "impossible date": Case({"occurred_at": "2026-02-31 10:00:00"},
                            "unparseable_occurred_at"),
    "impossible hour": Case({"occurred_at": "2026-02-11 25:00:00"},
                            "unparseable_occurred_at"),
    "occurred_at not a date": Case({"occurred_at": "yesterday"}, "unparseable_occurred_at"),
    "occurred_at null": Case({"occurred_at": None}, "unparseable_occurred_at"),
    "invalid UTF-8 in name": Case({"name": Bytes(b"page\xffview")}, "invalid_utf8"),
    "invalid UTF-8 in url": Case({"url": Bytes(b"https://example.com/\xfe")}, "invalid_utf8",
                                 sqlite_only="text is UTF-8 checked"),
    "invalid UTF-8 in visitor id": Case({"visitor_id": Bytes(b"v\xff")}, "invalid_utf8",
                                        sqlite_only="text is UTF-8 checked"),
    "invalid UTF-8 in occurred_at": Case({"occurred_at": Bytes(b"2026-02-11 12:00:0\xff")},
                                         "invalid_utf8", sqlite_only="text is UTF-8 checked"),
    "NUL byte in name": Case({"name": Bytes(b"page\x00view")}, "invalid_event_name"),
    "same id twice": Case({"id": "twice"}, None, extra_rows=({"id": "twice"},)),
    "missing id": Case({"id": None}, "missing_id"),
    "empty id": Case({"id": ""}, "missing_id"),
    "missing visitor id": Case({"visitor_id": None}, "missing_visitor_id"),
    "empty visitor id": Case({"visitor_id": ""}, "missing_visitor_id"),
    "future occurred_at": Case({"occurred_at": "2026-02-11 12:05:01"},
                               "occurred_after_received"),
    "occurred_at within the tolerance": Case({"occurred_at": "2026-02-11 12:05:00"}, None),
    "late event": Case({"occurred_at": "2026-02-11 06:00:00",
                        "received_at": "2026-02-13 00:00:00"}, None),
    "empty name": Case({"name": ""}, "invalid_event_name"),
    "name null": Case({"name": None}, "invalid_event_name"),
    "name of 201 characters": Case({"name": "é" * 201}, "invalid_event_name"),
    "name of 200 characters": Case({"name": "é" * 200}, None),
    "name with a tab": Case({"name": "page\tview"}, "invalid_event_name"),
    "custom event name": Case({"name": "signup"}, None),
    "url not a url": Case({"url": "not a url"}, "unparseable_url"),
    "url ftp": Case({"url": "ftp://x"}, "unparseable_url"),
    "url without host": Case({"url": "http://"}, "unparseable_url"),
    "url null": Case({"url": None}, "unparseable_url"),
    "first failing rule wins": Case({"site_id": 999, "visitor_id": None, "url": "x"},
                                    "unknown_site"),
    # what the contract allows, even spelt loosely, lands valid
    "site id as text": Case({"site_id": "10"}, None),
    "ISO T separator": Case({"occurred_at": "2026-02-11T12:00:00.250"}, None),
}


def _sqlite_source(url: str, rows: list[dict], sites: list[tuple] = SITES) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        # no declared types: SQLite keeps whatever the application wrote
        c.exec_driver_sql("CREATE TABLE sites (id, account_id, domain, active)")
        c.exec_driver_sql(f"CREATE TABLE web_events ({', '.join(SOURCE_COLUMNS)})")
        for s in sites:
            marks = ", ".join("CAST(? AS TEXT)" if isinstance(v, Bytes) else "?" for v in s)
            c.exec_driver_sql(f"INSERT INTO sites VALUES ({marks})",
                              tuple(v.data if isinstance(v, Bytes) else v for v in s))
        for r in rows:
            marks = ["CAST(? AS TEXT)" if isinstance(r[k], Bytes) else "?"
                     for k in SOURCE_COLUMNS]
            params = tuple(r[k].data if isinstance(r[k], Bytes) else r[k]
                           for k in SOURCE_COLUMNS)
            c.exec_driver_sql(f"INSERT INTO web_events VALUES ({', '.join(marks)})", params)
    engine.dispose()


def _pg_source(url: str, rows: list[dict], sites: list[tuple] = SITES) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE IF EXISTS web_events, sites")
        c.exec_driver_sql("CREATE TABLE sites (id bigint, account_id bigint, domain text, "
                          "active boolean)")
        types = {k: "text" for k in SOURCE_COLUMNS} | {"name": "bytea"}
        c.exec_driver_sql("CREATE TABLE web_events ("
                          + ", ".join(f"{k} {types[k]}" for k in SOURCE_COLUMNS) + ")")
        for s in sites:
            c.execute(sa.text("INSERT INTO sites VALUES (:i, :a, :d, :x)"),
                      dict(zip("iadx", s, strict=True)))
        for r in rows:
            params = {}
            for k in SOURCE_COLUMNS:
                v = r[k]
                if v is None:
                    params[k] = None
                elif k == "name":
                    params[k] = v.data if isinstance(v, Bytes) else str(v).encode()
                else:
                    params[k] = repr(v) if isinstance(v, float) else str(v)
            c.execute(sa.text("INSERT INTO web_events VALUES ("
                              + ", ".join(f":{k}" for k in SOURCE_COLUMNS) + ")"), params)
    engine.dispose()


def run_extraction(source_url: str, tmp_path) -> tuple[list[dict], int]:
    """Every partition's landed rows, and the duplicates dropped in all of them."""
    engine = wh.make_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    wh.ensure_schema(engine)
    accounts = resolve_account_timezones(
        [{"id": 1, "name": "ny", "reporting_timezone": NY},
         {"id": 2, "name": "utc", "reporting_timezone": None}], "UTC")
    wh.replace_accounts(engine, [a.__dict__ for a in accounts])
    store = LandingStore(str(tmp_path / "landing"))
    source = WebEventsSource(source_url, fallback_date=date(2024, 1, 1))
    landed: list[dict] = []
    duplicates = 0
    for day in PARTITIONS:
        result = extract_web_partition(source, store, engine, day, "UTC")
        rows = store.read_partition(WEB_SOURCE, day, LANDED_WEB_SCHEMA).to_pylist()
        assert result.rows == len(rows)
        assert result.invalid_rows == sum(r["invalid_reason"] is not None for r in rows)
        landed += [{**r, "partition": day.key} for r in rows]
        duplicates += result.duplicates_dropped
    engine.dispose()
    return landed, duplicates


PARAMS = [pytest.param(case_id, dialect, id=f"{case_id}-{dialect}")
          for case_id, case in CASES.items() for dialect in ("sqlite", "postgresql")
          if not (dialect == "postgresql" and case.sqlite_only)]


@pytest.mark.parametrize(("case_id", "dialect"), PARAMS)
def test_bad_web_event_lands_once_with_its_reason(case_id, dialect, tmp_path, request):
    case = CASES[case_id]
    bad = {**CONTROL, "id": "bad", "visitor_id": "v2", **case.row}
    rows = [CONTROL, bad] + [{**bad, **extra} for extra in case.extra_rows]
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
        _sqlite_source(url, rows)
    else:
        url = request.getfixturevalue("pg_source_url")
        _pg_source(url, rows)

    landed, duplicates = run_extraction(url, tmp_path)

    control = [r for r in landed if r["event_id"] == "ctl"]
    assert [(r["partition"], r["invalid_reason"], r["visit_events"], r["country"])
            for r in control] == [(PARTITIONS[0].key, None, 1, "US")]
    others = [r for r in landed if r["event_id"] != "ctl"]
    assert [r["invalid_reason"] for r in others] == [case.reason]  # once, in one partition
    assert duplicates == len(case.extra_rows)
    (row,) = others
    if case.reason is None:
        assert row["partition"] == PARTITIONS[0].key
        assert (row["visit_events"], row["page"], row["raw"]) == (1, "/", None)
    else:
        payload = json.loads(row["raw"])
        assert set(payload) == set(SOURCE_COLUMNS)
        assert "\x00" not in row["raw"]
        assert (row["visit_id"], row["page"], row["hour_start"]) == (None, None, None)


# A bad row of the application's `sites` table is no site: the events of its id are
# quarantined as unknown_site (never attributed to a half-read site); the good site's
# event beside them lands valid.
SITE_CASES = {
    "site id 20x": ("20x", 1, "bad.example", True, False),
    "site id fractional": (20.5, 1, "bad.example", True, False),
    "account id not an integer": (20, "1x", "bad.example", True, False),
    "account id null": (20, None, "bad.example", True, False),
    "domain null": (20, 1, None, True, True),
    "domain invalid utf-8": (20, 1, Bytes(b"bad\xff.example"), True, False),
    "domain with NUL": (20, 1, "bad\x00.example", True, False),
    "active not a boolean": (20, 1, "bad.example", "maybe", False),
    "duplicate site id": (10, 1, "again.example", True, True),
}


@pytest.mark.parametrize(("case_id", "dialect"), [
    pytest.param(c, d, id=f"{c}-{d}") for c in SITE_CASES for d in ("sqlite", "postgresql")
    if d == "sqlite" or SITE_CASES[c][4]])  # PostgreSQL's typed sites hold only these
def test_bad_site_rows_are_no_site(case_id, dialect, tmp_path, request):
    *bad_site, _ = SITE_CASES[case_id]
    site_id = 10 if case_id == "duplicate site id" else 20
    sites = [*SITES, tuple(bad_site)]
    rows = [CONTROL] if site_id == 10 else [
        CONTROL, {**CONTROL, "id": "on-bad-site", "visitor_id": "v2", "site_id": site_id}]
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
        _sqlite_source(url, rows, sites)
    else:
        url = request.getfixturevalue("pg_source_url")
        _pg_source(url, rows, sites)
    landed, _ = run_extraction(url, tmp_path)
    reasons = {r["event_id"]: r["invalid_reason"] for r in landed}
    if site_id == 10:  # a repeated id makes both rows no site: its events are unknown
        assert reasons == {"ctl": "unknown_site"}
    else:
        assert reasons == {"ctl": None, "on-bad-site": "unknown_site"}
    assert len(landed) == len(rows)  # each event once, in one partition
