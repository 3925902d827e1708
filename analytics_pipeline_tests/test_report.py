"""Read path: zero-filled series, sum/count averages, periods and the CLI."""

from datetime import date

import pyarrow as pa
import pytest

from analytics_pipeline.cli import main
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.rollups import QUARANTINE_SCHEMA, ROLLUP_SCHEMA
from analytics_pipeline.report import metric_series


@pytest.fixture
def engine(warehouse_url):
    e = wh.make_engine(warehouse_url)
    wh.ensure_schema(e)
    wh.replace_accounts(e, [{"id": 1, "name": "Acme", "reporting_timezone": "UTC",
                             "timezone": "UTC", "timezone_valid": True}])
    rows = []
    # account 1: 2026-02-02 (Mon) 2 first responses summing 100s; 02-04 one of 50s;
    # 02-10 (next week) one of 30s; 3 resolutions on 02-03.
    for d, c, s, b in [(date(2026, 2, 2), 2, 100.0, 40.0), (date(2026, 2, 4), 1, 50.0, 50.0),
                       (date(2026, 2, 10), 1, 30.0, 0.0)]:
        rows.append((1, d, "account", 1, "first_response", c, s, b))
        rows.append((1, d, "agent", 7, "first_response", c, s, b))
    rows.append((1, date(2026, 2, 3), "account", 1, "resolutions_count", 3, 0.0, 0.0))
    cols = ["account_id", "date", "dimension_type", "dimension_id", "metric", "count",
            "sum_value", "sum_value_business_hours"]
    table = pa.Table.from_pylist([dict(zip(cols, r, strict=True)) for r in rows],
                                 schema=ROLLUP_SCHEMA)
    for d in sorted({r[1] for r in rows}):
        part = table.filter(pa.compute.equal(table["date"], pa.scalar(d, pa.date32())))
        wh.replace_partition(e, d, "UTC", "reporting_events", part,
                             QUARANTINE_SCHEMA.empty_table(), account_ids=[1])
    yield e
    e.dispose()


def test_daily_series_is_zero_filled(engine):
    pts = metric_series(engine, 1, "resolutions_count", date(2026, 2, 1), date(2026, 2, 4))
    assert [(p.period_start.day, p.value) for p in pts] == [(1, 0), (2, 0), (3, 3), (4, 0)]


def test_average_is_sum_over_count_and_none_without_events(engine):
    pts = metric_series(engine, 1, "first_response", date(2026, 2, 1), date(2026, 2, 4))
    assert [p.value for p in pts] == [None, 50.0, None, 50.0]


def test_weekly_average_weighs_every_event(engine):
    pts = metric_series(engine, 1, "first_response", date(2026, 2, 2), date(2026, 2, 15),
                        by="week")
    assert [(p.period_start, p.value, p.count) for p in pts] == [
        (date(2026, 2, 2), 50.0, 3), (date(2026, 2, 9), 30.0, 1)]


def test_weeks_are_clipped_to_the_range(engine):
    # 02-04 (Wed) .. 02-10 (Tue): the 02-02 events are outside, the weeks cut at both ends
    pts = metric_series(engine, 1, "first_response", date(2026, 2, 4), date(2026, 2, 10),
                        by="week")
    assert [(p.period_start, p.period_end, p.partial, p.value, p.count) for p in pts] == [
        (date(2026, 2, 4), date(2026, 2, 8), True, 50.0, 1),
        (date(2026, 2, 9), date(2026, 2, 10), True, 30.0, 1)]


def test_monthly_business_hours_and_dimension(engine):
    pts = metric_series(engine, 1, "first_response", date(2026, 1, 30), date(2026, 2, 28),
                        by="month", business_hours=True)
    assert [(p.period_start, p.period_end, p.partial, p.value) for p in pts] == [
        (date(2026, 1, 30), date(2026, 1, 31), True, None),
        (date(2026, 2, 1), date(2026, 2, 28), False, 90.0 / 4)]
    agent = metric_series(engine, 1, "first_response", date(2026, 2, 2), date(2026, 2, 2),
                          dimension="agent", dimension_id=7)
    assert agent[0].value == 50.0
    assert metric_series(engine, 1, "first_response", date(2026, 2, 2), date(2026, 2, 2),
                         dimension="agent", dimension_id=8)[0].value is None


def test_bad_arguments_give_clear_errors(engine):
    with pytest.raises(ValueError, match="unknown metric"):
        metric_series(engine, 1, "nope", date(2026, 2, 1), date(2026, 2, 2))
    with pytest.raises(ValueError, match="before"):
        metric_series(engine, 1, "first_response", date(2026, 2, 2), date(2026, 2, 1))
    with pytest.raises(ValueError, match="needs --id"):
        metric_series(engine, 1, "first_response", date(2026, 2, 1), date(2026, 2, 2),
                      dimension="agent")
    with pytest.raises(ValueError, match="no email dimension; its dimensions: account, agent"):
        metric_series(engine, 1, "first_response", date(2026, 2, 1), date(2026, 2, 2),
                      dimension="email", dimension_id=3)


def test_cli_report(engine, warehouse_url, capsys):
    code = main(["report", "--account", "1", "--metric", "first_response", "--from",
                 "2026-02-01", "--to", "2026-02-14", "--by", "week", "--json",
                 "--warehouse-url", warehouse_url])
    assert code == 0
    out = capsys.readouterr().out
    assert '"value": 50.0' in out and '"count": 3' in out and '"unit": "seconds"' in out
    assert main(["report", "--account", "1", "--metric", "bogus", "--from", "2026-02-01",
                 "--to", "2026-02-02", "--warehouse-url", warehouse_url]) == 2
    assert "unknown metric" in capsys.readouterr().err
