"""Bad input, one row at a time, on a loosely typed SQLite source and on a PostgreSQL source
whose columns are text (and ``bytea`` names): each bad row ends in quarantine with its
reason, exactly once, and the rest of the partition rolls up unchanged.

Each case puts one row beside a good control event and runs the support pipeline's plain
functions (extract → landing → rollup) over New York's 2026-02-11, the UTC partition that
sweeps events of no known account, and the two days an impossible date could fall on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest
import sqlalchemy as sa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay, resolve_account_timezones
from analytics_pipeline.core.sources import read_accounts
from analytics_pipeline.support.source import ReportingEventsSource
from analytics_pipeline.support.steps import extract_partition, rollup_partition

NY = "America/New_York"
PARTITIONS = [LocalDay(date(2026, 2, 11), NY), LocalDay(date(2026, 2, 11), "UTC"),
              LocalDay(date(2026, 2, 28), NY), LocalDay(date(2026, 3, 3), NY)]
COLUMNS = ["id", "name", "value", "value_in_business_hours", "account_id", "user_id",
           "inbox_id", "conversation_id", "event_start_time", "event_end_time", "created_at",
           "updated_at"]
AT = "2026-02-11 12:00:00"
CONTROL = {"id": 1, "name": "first_response", "value": 10.0, "value_in_business_hours": None,
           "account_id": 1, "user_id": 11, "inbox_id": 21, "conversation_id": 31,
           "event_start_time": None, "event_end_time": None, "created_at": AT,
           "updated_at": AT}


@dataclass(frozen=True)
class Bytes:
    """Raw bytes stored as TEXT (SQLite) or as bytea (PostgreSQL's ``name`` column)."""

    data: bytes


@dataclass(frozen=True)
class Case:
    row: dict  # overrides of a first_response of account 1 with id 1000
    reason: str | None  # expected quarantine reason; None: counted as a valid event
    event_id: str = "1000"
    sqlite_only: str = ""  # why PostgreSQL cannot hold this value, if it cannot
    extra_rows: tuple = ()  # more rows with the same outcome (duplicates, overflow pairs)


CASES = {
    "text id": Case({"id": "abc"}, "invalid_id", event_id="abc"),
    "text id twice": Case({"id": "abc"}, "invalid_id", event_id="abc",
                          extra_rows=({"id": "abc"},)),
    "fractional id": Case({"id": 1000.5}, "invalid_id", event_id="1000.5"),
    "impossible date": Case({"created_at": "2026-02-31 10:00:00"}, "unparseable_created_at"),
    "impossible hour": Case({"created_at": "2026-02-11 25:00:00"}, "unparseable_created_at"),
    "zone suffix Z": Case({"created_at": "2026-02-11T20:00:00Z"}, "unparseable_created_at"),
    "zone offset": Case({"created_at": "2026-02-11 20:00:00+05:30"},
                        "unparseable_created_at"),
    "created_at not a date": Case({"created_at": "yesterday"}, "unparseable_created_at"),
    "invalid UTF-8 in name": Case({"name": Bytes(b"first_\xffresponse")}, "invalid_utf8"),
    "invalid UTF-8 in created_at": Case({"created_at": Bytes(b"2026-02-11 12:00:0\xff")},
                                        "invalid_utf8", sqlite_only="text is UTF-8 checked"),
    "invalid UTF-8 in value": Case({"value": Bytes(b"1\xfe")}, "invalid_utf8",
                                   sqlite_only="text is UTF-8 checked"),
    "NUL byte in name": Case({"name": Bytes(b"first_response\x00")}, "nul_byte"),
    "value NaN text": Case({"value": "NaN"}, "invalid_value"),
    "value Infinity text": Case({"value": "Infinity"}, "invalid_value"),
    "value abc": Case({"value": "abc"}, "invalid_value"),
    "value empty": Case({"value": ""}, "invalid_value"),
    "value true": Case({"value": "true"}, "invalid_value"),
    "value 12abc": Case({"value": "12abc"}, "invalid_value"),
    "value negative": Case({"value": -5.0}, "invalid_value"),
    "business hours overflow": Case({"value_in_business_hours": "1e999"}, "invalid_value"),
    "sum overflow": Case({"value": 1e308}, "invalid_value",
                         extra_rows=({"id": 1001, "value": 1e308},)),
    "account id 124x": Case({"account_id": "124x"}, "invalid_account_id"),
    "account id 1x": Case({"account_id": "1x"}, "invalid_account_id"),
    "account id 125.7": Case({"account_id": 125.7}, "invalid_account_id"),
    "account id text 1.0": Case({"account_id": "1.0"}, "invalid_account_id"),
    "account id null": Case({"account_id": None}, "unknown_account"),
    "unknown account": Case({"account_id": 999}, "unknown_account"),
    "user id abc": Case({"user_id": "abc"}, "invalid_user_id"),
    "inbox id 1e30": Case({"inbox_id": 1e30}, "invalid_inbox_id"),
    "conversation id 2.5": Case({"conversation_id": "2.5"}, "invalid_conversation_id"),
    "name null": Case({"name": None}, "missing_name"),
    # what the contract allows, even spelt loosely, is counted, not quarantined
    "value as decimal text": Case({"value": "12.5"}, None),
    "ISO T separator": Case({"created_at": "2026-02-11T13:00:00.250"}, None),
    "duplicate id": Case({"id": 1, "value": 10.0}, "duplicate"),
}


def _sqlite_source(url: str, rows: list[dict]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        # no declared types: SQLite keeps whatever the application wrote
        c.exec_driver_sql("CREATE TABLE accounts (id, name, reporting_timezone)")
        c.exec_driver_sql(f"CREATE TABLE reporting_events ({', '.join(COLUMNS)})")
        c.exec_driver_sql("INSERT INTO accounts VALUES (1, 'ny', 'America/New_York'), "
                          "(2, 'utc', NULL)")
        for r in rows:
            marks = ["CAST(? AS TEXT)" if isinstance(r[k], Bytes) else "?" for k in COLUMNS]
            params = tuple(r[k].data if isinstance(r[k], Bytes) else r[k] for k in COLUMNS)
            c.exec_driver_sql(
                f"INSERT INTO reporting_events VALUES ({', '.join(marks)})", params)
    engine.dispose()


def _pg_source(url: str, rows: list[dict]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE IF EXISTS reporting_events, accounts")
        c.exec_driver_sql("CREATE TABLE accounts (id bigint, name text, "
                          "reporting_timezone text)")
        types = {c_: "text" for c_ in COLUMNS} | {"name": "bytea"}
        c.exec_driver_sql("CREATE TABLE reporting_events ("
                          + ", ".join(f"{k} {types[k]}" for k in COLUMNS) + ")")
        c.exec_driver_sql("INSERT INTO accounts VALUES (1, 'ny', 'America/New_York'), "
                          "(2, 'utc', NULL)")
        for r in rows:
            params = {}
            for k in COLUMNS:
                v = r[k]
                if k == "name":
                    params[k] = None if v is None else (
                        v.data if isinstance(v, Bytes) else str(v).encode())
                else:
                    params[k] = None if v is None else (
                        v.data.decode() if isinstance(v, Bytes) else
                        repr(v) if isinstance(v, float) else str(v))
            c.execute(sa.text("INSERT INTO reporting_events VALUES ("
                              + ", ".join(f":{k}" for k in COLUMNS) + ")"), params)
    engine.dispose()


def run_pipeline(source_url: str, tmp_path) -> tuple[list[dict], list[dict], dict]:
    engine = wh.make_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    wh.ensure_schema(engine)
    source = ReportingEventsSource(source_url, fallback_date=date(2024, 1, 1))
    read = read_accounts(source_url)
    wh.replace_accounts(engine, [a.__dict__ for a in
                                 resolve_account_timezones(read.accounts, "UTC")])
    store = LandingStore(str(tmp_path / "landing"))
    duplicates = counted = 0
    for day in PARTITIONS:
        duplicates += extract_partition(source, store, engine, day, "UTC").duplicates_dropped
        counted += sum(rollup_partition(store, engine, day).quarantined_by_reason.values())
    with engine.connect() as c:
        quarantined = [dict(r._mapping) for r in c.execute(wh.quarantine.select())]
    rows = wh.rollup_rows(engine)
    engine.dispose()
    return rows, quarantined, {"duplicates": duplicates, "quarantined": counted}


# PostgreSQL text cannot hold every bad value (it checks UTF-8): those cases run on SQLite.
PARAMS = [pytest.param(case_id, dialect, id=f"{case_id}-{dialect}")
          for case_id, case in CASES.items() for dialect in ("sqlite", "postgresql")
          if not (dialect == "postgresql" and case.sqlite_only)]


@pytest.mark.parametrize(("case_id", "dialect"), PARAMS)
def test_bad_row_is_quarantined_once_and_the_rest_rolls_up(case_id, dialect, tmp_path,
                                                          request):
    case = CASES[case_id]
    bad = {**CONTROL, "id": 1000, "value": 5.0, **case.row}
    rows = [CONTROL, bad] + [{**bad, **extra} for extra in case.extra_rows]
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
        _sqlite_source(url, rows)
    else:
        url = request.getfixturevalue("pg_source_url")
        _pg_source(url, rows)

    rollups, quarantined, stats = run_pipeline(url, tmp_path)

    account_rows = [(r["date"], r["metric"], r["count"], r["sum_value"]) for r in rollups
                    if r["dimension_type"] == "account"]
    if case.reason == "duplicate":
        assert quarantined == []
        assert stats["duplicates"] == 1
        assert account_rows == [(date(2026, 2, 11), "first_response", 1, 10.0)]
    elif case.reason is None:
        assert quarantined == []
        assert account_rows == [(date(2026, 2, 11), "first_response", 2,
                                 10.0 + float(bad["value"]))]
    else:
        expected_ids = {case.event_id} | {str(e["id"]) for e in case.extra_rows}
        assert stats["quarantined"] == len(quarantined)  # counted as stored
        got = {(q["event_id"], q["reason"]) for q in quarantined}
        assert got == {(i, case.reason) for i in expected_ids}
        assert len(quarantined) == len(expected_ids)  # once, across all partitions
        # only the control event is counted, on its own day
        assert account_rows == [(date(2026, 2, 11), "first_response", 1, 10.0)]
        assert all("\x00" not in q["payload"] for q in quarantined)
