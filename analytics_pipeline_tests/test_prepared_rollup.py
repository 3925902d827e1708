"""The rollup a support extraction prepares while it lands the events (issue 12): the
rollup asset writes what rolling up the landing again would write (sums equal up to the
order of floating-point additions), and only uses it when it was computed from the same
landing, accounts, metrics and code.

The source holds every bad-input case of ``test_bad_input`` at once, next to good events
of several agents, inboxes and conversations, an event name no metric reads, and events of
an account no timezone knows (swept by the UTC partition).
"""

from __future__ import annotations

import threading
from datetime import date

import pyarrow as pa
import pytest

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import resolve_account_timezones
from analytics_pipeline.core.sources import read_accounts
from analytics_pipeline.support import steps
from analytics_pipeline.support.source import ReportingEventsSource
from analytics_pipeline.support.steps import extract_partition, rollup_partition
from analytics_pipeline_tests.test_bad_input import (
    CASES,
    CONTROL,
    PARTITIONS,
    _pg_source,
    _sqlite_source,
)


def _rows() -> list[dict]:
    rows = [CONTROL]
    next_id = 2000
    for case in CASES.values():
        if case.sqlite_only or case.reason == "duplicate":
            continue
        for change in (case.row, *case.extra_rows):
            row = {**CONTROL, "value": 5.0, **change}
            if "id" not in change:
                row["id"] = next_id
                next_id += 1
            rows.append(row)
    names = ["first_response", "reply_time", "conversation_resolved",
             "conversation_bot_handoff", "conversation_opened", "not_a_metric"]
    for i in range(60):
        rows.append({**CONTROL, "id": 5000 + i, "name": names[i % len(names)],
                     "value": float(i), "value_in_business_hours": float(i) / 2,
                     "user_id": 11 + i % 3, "inbox_id": 21 + i % 2,
                     "conversation_id": 31 + i % 7,
                     "account_id": 999 if i % 10 == 0 else 1,  # 999: no known account
                     "created_at": f"2026-02-11 {i % 24:02d}:30:00"})
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def pipeline(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
        _sqlite_source(url, _rows())
    else:
        url = request.getfixturevalue("pg_source_url")
        _pg_source(url, _rows())
    engine = wh.make_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    wh.ensure_schema(engine)
    wh.replace_accounts(engine, [a.__dict__ for a in
                                 resolve_account_timezones(read_accounts(url).accounts, "UTC")])
    source = ReportingEventsSource(url, fallback_date=date(2024, 1, 1))
    yield source, engine, LandingStore(str(tmp_path / "landing"))
    engine.dispose()


def _written(engine) -> tuple[list[dict], list[tuple]]:
    with engine.connect() as c:
        quarantined = sorted((q.source, q.event_id, q.reason, q.payload, q.partition_date,
                              q.timezone) for q in c.execute(wh.quarantine.select()))
    return wh.rollup_rows(engine), quarantined


def _figures(r) -> dict:
    return {k: v for k, v in r.__dict__.items() if k not in ("rows_replaced", "prepared")}


def _in_small_batches(source, monkeypatch, size: int = 3) -> None:
    """The source hands over batches of ``size`` rows and the fold aggregates chunks of 5:
    partial aggregates merged across batches, as with a large partition."""
    stream = source.extract_batches

    def small(*args, **kwargs):
        for batch in stream(*args, **kwargs):
            yield from pa.Table.from_batches([batch]).to_batches(max_chunksize=size)

    monkeypatch.setattr(source, "extract_batches", small)
    monkeypatch.setattr(steps, "CHUNK_ROWS", 5)


@pytest.mark.parametrize("batches", ["whole", "small"])
def test_the_prepared_rollup_writes_what_rolling_up_the_landing_writes(pipeline, batches,
                                                                        monkeypatch):
    source, engine, store = pipeline
    if batches == "small":
        _in_small_batches(source, monkeypatch)
    for day in PARTITIONS:
        extract_partition(source, store, engine, day, "UTC")
    prepared = [rollup_partition(store, engine, day) for day in PARTITIONS]
    assert all(r.prepared for r in prepared)
    prepared_written = _written(engine)
    recomputed = [rollup_partition(store, engine, day, recompute=True,
                                   batch_rows=7 if batches == "small" else 1_000_000)
                  for day in PARTITIONS]
    assert not any(r.prepared for r in recomputed)
    assert [_figures(r) for r in prepared] == [_figures(r) for r in recomputed]
    assert prepared_written == _written(engine)
    # the fixture exercises every outcome: rows, quarantine, ignored names
    rows, quarantined = prepared_written
    assert rows and quarantined
    assert any(r.ignored_by_name for r in prepared)
    assert not any(r.mismatches for r in prepared)


def test_changed_inputs_roll_the_landing_up_again(pipeline, monkeypatch):
    source, engine, store = pipeline
    day = next(d for d in PARTITIONS if d.tz == "UTC")  # sweeps account 999's events
    extract_partition(source, store, engine, day, "UTC")
    before = rollup_partition(store, engine, day)
    # account 999's 7 events (6 of the fixture, 1 bad-input case) and a null account id
    assert before.prepared and before.quarantined_by_reason["unknown_account"] == 8

    # account 999 becomes known, in another timezone: its events are no longer unknown
    wh.replace_accounts(engine, [*wh.accounts_snapshot(engine), {
        "id": 999, "name": "tokyo", "reporting_timezone": "Asia/Tokyo",
        "timezone": "Asia/Tokyo", "timezone_valid": True}])
    after = rollup_partition(store, engine, day)
    assert not after.prepared
    assert after.quarantined_by_reason["unknown_account"] == 1
    # counted as another timezone's events (or ignored by name), no longer quarantined
    assert (after.other_timezone + sum(after.ignored_by_name.values())
            == before.other_timezone + sum(before.ignored_by_name.values()) + 7)

    # new code (a deploy between the two assets) never reuses an older computation
    extract_partition(source, store, engine, day, "UTC")
    assert rollup_partition(store, engine, day).prepared
    monkeypatch.setattr(steps, "_DIGEST", "another version")
    assert not rollup_partition(store, engine, day).prepared


def test_a_partial_extraction_leaves_no_prepared_rollup_behind(pipeline):
    source, engine, store = pipeline
    day = PARTITIONS[0]
    extract_partition(source, store, engine, day, "UTC")
    full = rollup_partition(store, engine, day)
    rows = _written(engine)
    extract_partition(source, store, engine, day, "UTC", only_accounts=[1])
    assert "prepared_rollup" not in store.partition_meta("reporting_events", day)
    again = rollup_partition(store, engine, day)
    assert not again.prepared
    assert _figures(again) == _figures(full) and _written(engine) == rows


@pytest.mark.parametrize("failing_batch", [1, 2])
def test_a_failing_preparation_keeps_the_previous_landing(pipeline, monkeypatch,
                                                          failing_batch):
    source, engine, store = pipeline
    day = PARTITIONS[0]
    extract_partition(source, store, engine, day, "UTC")
    meta = store.partition_meta("reporting_events", day)
    _in_small_batches(source, monkeypatch)  # the failure reaches the feeder or the join
    real, seen = steps.ReportingRollup.add, []

    def broken(self, events):
        seen.append(events.num_rows)
        if len(seen) == failing_batch:
            raise RuntimeError("rollup bug")
        real(self, events)

    monkeypatch.setattr(steps.ReportingRollup, "add", broken)
    with pytest.raises(RuntimeError, match="rollup bug"):
        extract_partition(source, store, engine, day, "UTC")
    assert store.partition_meta("reporting_events", day) == meta
    alive = {t.name for t in threading.enumerate() if t.is_alive()}
    assert not alive & {"landing-fold", "landing-prefetch"}


def test_negative_rows_counts_rows_with_a_negative_count_or_sum():
    from datetime import date as d

    from analytics_pipeline.core.rollups import ROLLUP_SCHEMA
    from analytics_pipeline.core.steps import negative_rows

    def row(count, s, b):
        return {"account_id": 1, "date": d(2026, 2, 11), "dimension_type": "account",
                "dimension_id": 1, "metric": "m", "count": count, "sum_value": s,
                "sum_value_business_hours": b}

    rows = pa.Table.from_pylist([row(1, 0.0, 0.0), row(-1, 0.0, 0.0), row(1, -0.5, 0.0),
                                 row(1, 0.0, -2.0), row(0, 0.0, 0.0)], schema=ROLLUP_SCHEMA)
    assert negative_rows(rows) == 3
    assert negative_rows(ROLLUP_SCHEMA.empty_table()) == 0
