"""Partition-atomic writes on SQLite and PostgreSQL."""

from datetime import date

import pyarrow as pa
import pytest

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.rollups import QUARANTINE_SCHEMA, ROLLUP_SCHEMA

D = date(2026, 2, 11)


def rollups(*rows) -> pa.Table:
    return pa.Table.from_pylist(
        [dict(zip(["account_id", "dimension_type", "dimension_id", "metric", "count",
                   "sum_value", "sum_value_business_hours"], r, strict=True)) | {"date": D}
         for r in rows],
        schema=ROLLUP_SCHEMA,
    )


def quarantined(*ids) -> pa.Table:
    return pa.Table.from_pylist(
        [{"source": "reporting_events", "event_id": str(i), "reason": "invalid_value",
          "payload": "{}"} for i in ids], schema=QUARANTINE_SCHEMA)


@pytest.fixture
def engine(warehouse_url):
    e = wh.make_engine(warehouse_url)
    wh.ensure_schema(e)
    wh.ensure_schema(e)  # idempotent
    wh.replace_accounts(e, [
        {"id": 1, "name": "a", "reporting_timezone": "America/New_York",
         "timezone": "America/New_York", "timezone_valid": True},
        {"id": 2, "name": "b", "reporting_timezone": "Asia/Kolkata", "timezone": "Asia/Kolkata",
         "timezone_valid": True},
    ])
    yield e
    e.dispose()


def snapshot(engine):
    return [{k: v for k, v in r.items()} for r in wh.rollup_rows(engine)]


def test_replace_is_idempotent(engine):
    rows = rollups((1, "account", 1, "first_response", 2, 10.0, 5.0),
                   (1, "agent", 7, "first_response", 2, 10.0, 5.0))
    wh.replace_partition(engine, D, "America/New_York", "reporting_events", rows, quarantined(9),
                         account_ids=[1])
    first = snapshot(engine)
    deleted = wh.replace_partition(engine, D, "America/New_York", "reporting_events", rows,
                                   quarantined(9), account_ids=[1])
    assert deleted == 2
    assert snapshot(engine) == first
    assert len(first) == 2
    with engine.connect() as c:
        assert c.execute(wh.quarantine.select()).rowcount != 0
        assert len(c.execute(wh.quarantine.select()).all()) == 1


def test_failure_during_write_leaves_previous_rows(engine, monkeypatch):
    old = rollups((1, "account", 1, "first_response", 2, 10.0, 5.0))
    wh.replace_partition(engine, D, "America/New_York", "reporting_events", old,
                         quarantined(), account_ids=[1])
    before = snapshot(engine)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(wh, "_insert_rollups", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        wh.replace_partition(engine, D, "America/New_York", "reporting_events",
                             rollups((1, "account", 1, "first_response", 5, 1.0, 1.0)),
                             quarantined(), account_ids=[1])
    assert snapshot(engine) == before


def test_unique_key_violation_rolls_back(engine):
    old = rollups((1, "account", 1, "first_response", 2, 10.0, 5.0))
    wh.replace_partition(engine, D, "America/New_York", "reporting_events", old, quarantined(),
                         account_ids=[1])
    dup = rollups((1, "account", 1, "reply_time", 1, 1.0, 1.0),
                  (1, "account", 1, "reply_time", 1, 1.0, 1.0))
    with pytest.raises(Exception):  # noqa: B017 - driver-specific IntegrityError
        wh.replace_partition(engine, D, "America/New_York", "reporting_events", dup,
                             quarantined(), account_ids=[1])
    assert [r["metric"] for r in snapshot(engine)] == ["first_response"]


def test_replace_touches_only_its_partition(engine):
    wh.replace_partition(engine, D, "Asia/Kolkata", "reporting_events",
                         rollups((2, "account", 2, "reply_time", 1, 3.0, 3.0)), quarantined(),
                         account_ids=[2])
    wh.replace_partition(engine, D, "America/New_York", "reporting_events",
                         rollups((1, "account", 1, "reply_time", 1, 1.0, 1.0)), quarantined(),
                         account_ids=[1])
    wh.replace_partition(engine, D, "America/New_York", "reporting_events", rollups(),
                         quarantined(), account_ids=[1])
    assert [r["account_id"] for r in snapshot(engine)] == [2]


def test_account_moving_timezone_is_replaced_whatever_timezone_wrote_it(engine):
    wh.replace_partition(engine, D, "America/New_York", "reporting_events",
                         rollups((1, "account", 1, "reply_time", 4, 4.0, 4.0)), quarantined(),
                         account_ids=[1])
    # Account 1 moves to Kolkata; the Kolkata partition now owns its day.
    wh.replace_accounts(engine, [
        {"id": 1, "name": "a", "reporting_timezone": "Asia/Kolkata", "timezone": "Asia/Kolkata",
         "timezone_valid": True},
        {"id": 2, "name": "b", "reporting_timezone": "Asia/Kolkata", "timezone": "Asia/Kolkata",
         "timezone_valid": True},
    ])
    wh.replace_partition(engine, D, "Asia/Kolkata", "reporting_events",
                         rollups((1, "account", 1, "reply_time", 3, 3.0, 3.0)), quarantined(),
                         account_ids=[1, 2])
    rows = snapshot(engine)
    assert [(r["account_id"], r["timezone"], r["count"]) for r in rows] == [
        (1, "Asia/Kolkata", 3)]


def test_account_subset_replace_keeps_other_accounts(engine):
    wh.replace_accounts(engine, [
        {"id": i, "name": str(i), "reporting_timezone": "UTC", "timezone": "UTC",
         "timezone_valid": True} for i in (1, 2)])
    wh.replace_partition(engine, D, "UTC", "reporting_events",
                         rollups((1, "account", 1, "reply_time", 1, 1.0, 1.0),
                                 (2, "account", 2, "reply_time", 1, 1.0, 1.0)), quarantined(),
                                 account_ids=[1, 2])
    wh.replace_partition(engine, D, "UTC", "reporting_events",
                         rollups((2, "account", 2, "reply_time", 9, 9.0, 9.0)), quarantined(),
                         account_ids=[2], partial=True)
    assert [(r["account_id"], r["count"]) for r in snapshot(engine)] == [(1, 1), (2, 9)]


def test_redact_hides_password():
    assert "s3cret" not in wh.redact("postgresql://u:s3cret@h/db")
    assert wh.normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg2"


def test_concurrent_writers_of_one_partition_serialize(engine):
    """Two writers of the same partition: the second replaces the first's rows instead of
    failing on the unique key or doubling them."""
    import threading

    errors = []

    def write(count):
        try:
            wh.replace_partition(engine, D, "America/New_York", "reporting_events",
                                 rollups((1, "account", 1, "reply_time", count, 1.0, 1.0)),
                                 quarantined(), account_ids=[1])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = snapshot(engine)
    assert len(rows) == 1 and rows[0]["count"] in (1, 2, 3, 4)


def test_ensure_schema_drops_retired_indexes_and_keeps_rows(engine):
    """A warehouse an earlier version created keeps its rows and loses the index nothing
    reads any more (it only slowed down every partition's write)."""
    import sqlalchemy as sa

    wh.replace_partition(engine, D, "America/New_York", "reporting_events",
                         rollups((1, "account", 1, "m", 3, 1.5, 0.5)), quarantined(), [1])
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE INDEX ix_daily_rollups_date_timezone ON daily_rollups (date, timezone)"))
    assert "ix_daily_rollups_date_timezone" in {
        ix["name"] for ix in sa.inspect(engine).get_indexes("daily_rollups")}
    wh.ensure_schema(engine)
    assert {ix["name"] for ix in sa.inspect(engine).get_indexes("daily_rollups")}.isdisjoint(
        wh.RETIRED_INDEXES)
    assert [(r["account_id"], r["count"]) for r in snapshot(engine)] == [(1, 3)]
