"""Bad pushes, one at a time, on a loosely typed SQLite source and on a PostgreSQL source
whose ``push_notifications`` columns are text (``status`` bytea): each bad row lands once,
across the partitions it could fall in, with the first rule it breaks as its
``invalid_reason`` and its raw values, and is quarantined once by the rollup; a control
push beside it lands valid and is counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pytest
import sqlalchemy as sa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay, resolve_account_timezones
from analytics_pipeline.push.compute import PUSH_COLUMNS, USER_COLUMNS
from analytics_pipeline.push.contract import LANDED_PUSH_SCHEMA, PUSH_SOURCE
from analytics_pipeline.push.source import PushSource
from analytics_pipeline.push.steps import extract_push_partition, rollup_push_partition

NY = "America/New_York"
NOW = datetime(2026, 2, 12, 12, 0, tzinfo=timezone.utc)  # the extraction's clock
# New York's day of the control push, the UTC day that sweeps pushes of no known account,
# the days an impossible date (2026-02-31) could fall on, and those of the fallback date
PARTITIONS = [LocalDay(date(2026, 2, 11), NY), LocalDay(date(2026, 2, 11), "UTC"),
              LocalDay(date(2026, 2, 28), NY), LocalDay(date(2026, 2, 28), "UTC"),
              LocalDay(date(2023, 12, 31), NY), LocalDay(date(2024, 1, 1), "UTC")]
AT = "2026-02-11 12:00:00"
CONTROL = {"id": 1, "account_id": 1, "user_id": 100, "campaign_id": 7, "automation_id": None,
           "status": "delivered", "sent_at": AT, "delivered_at": "2026-02-11 12:00:05"}
# users: 100 and 101 of account 1 (New York), 200 of account 2 (UTC)
USERS = [(100, 1, "a@example.com", "d-100"), (101, 1, None, None), (200, 2, "c@x.io", None)]


@dataclass(frozen=True)
class Bytes:
    """Raw bytes stored as TEXT (SQLite) or as bytea (PostgreSQL's ``status`` column)."""

    data: bytes


@dataclass(frozen=True)
class Case:
    row: dict  # overrides of a push "2" of user 101 at the control's instant
    reason: str | None  # expected invalid_reason; None: lands valid
    sqlite_only: str = ""  # why PostgreSQL cannot hold this value, if it cannot
    extra_rows: tuple = ()  # more rows (duplicates)


CASES = {
    "id 12x": Case({"id": "12x"}, "invalid_id"),
    "id fractional": Case({"id": 2.5}, "invalid_id"),
    "id overflow": Case({"id": 1e30}, "invalid_id"),
    "id null": Case({"id": None}, "invalid_id"),
    "account id not an integer": Case({"account_id": "1x"}, "invalid_id"),
    "user id null": Case({"user_id": None}, "invalid_id"),
    "user id text": Case({"user_id": "abc"}, "invalid_id"),
    "campaign id not an integer": Case({"campaign_id": "7x"}, "invalid_id"),
    "unknown user": Case({"user_id": 999}, "unknown_user"),
    "user of another account": Case({"user_id": 200}, "unknown_user"),
    "account not in the snapshot": Case({"account_id": 3}, "unknown_user"),
    "unknown status": Case({"status": "bounced"}, "unknown_status"),
    "status in capitals": Case({"status": "Delivered"}, "unknown_status"),
    "status null": Case({"status": None}, "unknown_status"),
    "impossible sent_at": Case({"sent_at": "2026-02-31 10:00:00"}, "unparseable_sent_at"),
    "sent_at not a date": Case({"sent_at": "yesterday"}, "unparseable_sent_at"),
    "sent_at null": Case({"sent_at": None}, "unparseable_sent_at",
                         sqlite_only="the partition is the fallback date's"),
    "delivered_at not a date": Case({"delivered_at": "soon"}, "unparseable_delivered_at"),
    "delivered before sent": Case({"delivered_at": "2026-02-11 11:59:59"},
                                  "delivered_before_sent"),
    "delivered in the future": Case({"delivered_at": "2026-02-12 12:05:01"},
                                    "timestamp_in_future"),
    "delivered within the tolerance": Case({"delivered_at": "2026-02-12 12:05:00"}, None),
    "invalid UTF-8 in status": Case({"status": Bytes(b"deliv\xffered")}, "invalid_utf8"),
    "invalid UTF-8 in automation": Case({"automation_id": Bytes(b"welc\xfeome")},
                                        "invalid_utf8", sqlite_only="text is UTF-8 checked"),
    "NUL byte in status": Case({"status": Bytes(b"deliv\x00ered")}, "invalid_utf8"),
    "empty automation id": Case({"automation_id": ""}, "invalid_automation_id"),
    "automation id of 201 characters": Case({"automation_id": "a" * 201},
                                            "invalid_automation_id"),
    "automation id with a tab": Case({"automation_id": "wel\tcome"}, "invalid_automation_id"),
    "first failing rule wins": Case({"user_id": 999, "status": "x"}, "unknown_status"),
    "same id twice": Case({"id": 5}, None, extra_rows=({"id": 5, "status": "failed"},)),
    # what the contract allows, even spelt loosely, lands valid
    "user id as text": Case({"user_id": "101"}, None),
    "campaign null, automation set": Case({"campaign_id": None, "automation_id": "welcome"},
                                          None),
    "sent, not delivered": Case({"status": "sent", "delivered_at": None}, None),
    "ISO T separator": Case({"sent_at": "2026-02-11T12:00:00.250"}, None),
}


def _sqlite_source(url: str, rows: list[dict]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        # no declared types: SQLite keeps whatever the application wrote
        c.exec_driver_sql(f"CREATE TABLE users ({', '.join(USER_COLUMNS)})")
        c.exec_driver_sql(f"CREATE TABLE push_notifications ({', '.join(PUSH_COLUMNS)}, "
                          "title)")
        c.exec_driver_sql("INSERT INTO users VALUES (?, ?, ?, ?)", USERS)
        for r in rows:
            marks = ["CAST(? AS TEXT)" if isinstance(r[k], Bytes) else "?" for k in PUSH_COLUMNS]
            params = tuple(r[k].data if isinstance(r[k], Bytes) else r[k] for k in PUSH_COLUMNS)
            c.exec_driver_sql(f"INSERT INTO push_notifications ({', '.join(PUSH_COLUMNS)}) "
                              f"VALUES ({', '.join(marks)})", params)
    engine.dispose()


def _pg_source(url: str, rows: list[dict]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE IF EXISTS push_notifications, users")
        c.exec_driver_sql("CREATE TABLE users (id bigint, account_id bigint, email text, "
                          "posthog_distinct_id text)")
        types = {k: "text" for k in PUSH_COLUMNS} | {"status": "bytea"}
        c.exec_driver_sql("CREATE TABLE push_notifications ("
                          + ", ".join(f"{k} {types[k]}" for k in PUSH_COLUMNS) + ", title text)")
        for u in USERS:
            c.execute(sa.text("INSERT INTO users VALUES (:i, :a, :e, :d)"),
                      dict(zip("iaed", u, strict=True)))
        for r in rows:
            params = {}
            for k in PUSH_COLUMNS:
                v = r[k]
                if v is None:
                    params[k] = None
                elif k == "status":
                    params[k] = v.data if isinstance(v, Bytes) else str(v).encode()
                else:
                    params[k] = repr(v) if isinstance(v, float) else str(v)
            c.execute(sa.text(f"INSERT INTO push_notifications ({', '.join(PUSH_COLUMNS)}) "
                              "VALUES (" + ", ".join(f":{k}" for k in PUSH_COLUMNS) + ")"),
                      params)
    engine.dispose()


def run_pipeline(source_url: str, tmp_path) -> tuple[list[dict], int, list[dict], dict]:
    """Every partition's landed rows, the duplicates dropped, the quarantine and the
    push_sent totals per account after the rollups."""
    engine = wh.make_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    wh.ensure_schema(engine)
    accounts = resolve_account_timezones(
        [{"id": 1, "name": "ny", "reporting_timezone": NY},
         {"id": 2, "name": "utc", "reporting_timezone": None}], "UTC")
    wh.replace_accounts(engine, [a.__dict__ for a in accounts])
    store = LandingStore(str(tmp_path / "landing"))
    source = PushSource(source_url, fallback_date=date(2024, 1, 1))
    landed: list[dict] = []
    duplicates = 0
    for day in PARTITIONS:
        result = extract_push_partition(source, store, engine, day, "UTC", now=NOW)
        rows = store.read_partition(PUSH_SOURCE, day, LANDED_PUSH_SCHEMA).to_pylist()
        assert result.rows == len(rows)
        assert result.invalid_rows == sum(r["invalid_reason"] is not None for r in rows)
        landed += [{**r, "partition": day.key} for r in rows]
        duplicates += result.duplicates_dropped
        rolled = rollup_push_partition(store, engine, day)
        assert rolled.mismatches == {}
    with engine.connect() as c:
        quarantine = [dict(r._mapping) for r in c.execute(sa.select(wh.quarantine))]
        sent = {r[0]: r[1] for r in c.execute(
            sa.select(wh.daily_rollups.c.account_id, sa.func.sum(wh.daily_rollups.c.count))
            .where(wh.daily_rollups.c.metric == "push_sent",
                   wh.daily_rollups.c.dimension_type == "account")
            .group_by(wh.daily_rollups.c.account_id))}
    engine.dispose()
    return landed, duplicates, quarantine, sent


PARAMS = [pytest.param(case_id, dialect, id=f"{case_id}-{dialect}")
          for case_id, case in CASES.items() for dialect in ("sqlite", "postgresql")
          if not (dialect == "postgresql" and case.sqlite_only)]


@pytest.mark.parametrize(("case_id", "dialect"), PARAMS)
def test_bad_push_lands_once_with_its_reason(case_id, dialect, tmp_path, request):
    case = CASES[case_id]
    bad = {**CONTROL, "id": 2, "user_id": 101, **case.row}
    rows = [CONTROL, bad] + [{**bad, **extra} for extra in case.extra_rows]
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
        _sqlite_source(url, rows)
    else:
        url = request.getfixturevalue("pg_source_url")
        _pg_source(url, rows)

    landed, duplicates, quarantine, sent = run_pipeline(url, tmp_path)

    control = [r for r in landed if r["push_id"] == 1]
    assert [(r["partition"], r["invalid_reason"], r["anchor_at"].isoformat())
            for r in control] == [(PARTITIONS[0].key, None, "2026-02-11T12:00:05+00:00")]
    others = [r for r in landed if r["push_id"] != 1]
    assert [r["invalid_reason"] for r in others] == [case.reason]  # once, in one partition
    assert duplicates == len(case.extra_rows)
    (row,) = others
    if case.reason is None:
        assert row["partition"] == PARTITIONS[0].key and row["raw"] is None
        assert quarantine == [] and sent == {1: 2}
    else:
        payload = json.loads(row["raw"])
        assert set(payload) == set(PUSH_COLUMNS)
        assert "\x00" not in row["raw"] and row["anchor_at"] is None
        assert [(q["source"], q["reason"]) for q in quarantine] == [(PUSH_SOURCE, case.reason)]
        assert json.loads(quarantine[0]["payload"]) == payload
        assert sent == {1: 1}  # the control push only
