"""Registry semantics of every row of DESIGN.md's table, on Arrow, without Dagster."""

from datetime import date, datetime, timezone

import pyarrow as pa
import pytest

from analytics_pipeline.catalog import get_metric
from analytics_pipeline.core.registry import raw_events
from analytics_pipeline.core.rollups import (
    RollupAccumulator,
    TotalsAccumulator,
    compute_rollups,
    expected_account_totals,
)
from analytics_pipeline.support.metrics import REPORTING_METRICS
from analytics_pipeline.support.validation import (
    RAW_REPORTING_SCHEMA,
    REASON_ACCOUNT,
    REASON_TIMESTAMP,
    REASON_VALUE,
    validate,
)

DAY = date(2026, 2, 11)
AT = datetime(2026, 2, 11, 15, tzinfo=timezone.utc)


def events(*rows: dict) -> pa.Table:
    base = {f.name: None for f in RAW_REPORTING_SCHEMA}
    full = [{**base, "created_at": AT, "account_id": 1, **r} for r in rows]
    for i, r in enumerate(full):
        r["id"] = r["id"] or i + 1
    return pa.Table.from_pylist(full, schema=RAW_REPORTING_SCHEMA)


def roll(t: pa.Table, accounts=(1, 2)) -> dict:
    v = validate(t, accounts, raw_events(REPORTING_METRICS))
    rows = compute_rollups(v.valid, DAY, REPORTING_METRICS).to_pylist()
    return {
        (r["dimension_type"], r["dimension_id"], r["metric"]): (
            r["count"], r["sum_value"], r["sum_value_business_hours"]
        )
        for r in rows
    }


@pytest.mark.parametrize("raw,metric", [("first_response", "first_response"),
                                        ("reply_time", "reply_time")])
def test_duration_metrics_count_and_sum(raw, metric):
    out = roll(events(
        {"name": raw, "value": 100.0, "value_in_business_hours": 40.0, "user_id": 7,
         "inbox_id": 3},
        {"name": raw, "value": 50.0, "value_in_business_hours": 50.0, "user_id": 7,
         "inbox_id": 4},
    ))
    assert out[("account", 1, metric)] == (2, 150.0, 90.0)
    assert out[("agent", 7, metric)] == (2, 150.0, 90.0)
    assert out[("inbox", 3, metric)] == (1, 100.0, 40.0)
    assert out[("inbox", 4, metric)] == (1, 50.0, 50.0)


def test_resolved_event_produces_both_metrics_on_all_three_dimensions():
    out = roll(events({"name": "conversation_resolved", "value": 3600.0,
                       "value_in_business_hours": 1800.0, "user_id": 7, "inbox_id": 3}))
    for dim, did in [("account", 1), ("agent", 7), ("inbox", 3)]:
        assert out[(dim, did, "resolutions_count")] == (1, 0.0, 0.0)
        assert out[(dim, did, "resolution_time")] == (1, 3600.0, 1800.0)
    assert len(out) == 6


def test_bot_resolved_counts_with_zero_sums():
    out = roll(events({"name": "conversation_bot_resolved", "value": 99.0, "inbox_id": 3},
                      {"name": "conversation_bot_resolved"}))
    assert out[("account", 1, "bot_resolutions_count")] == (2, 0.0, 0.0)
    assert out[("inbox", 3, "bot_resolutions_count")] == (1, 0.0, 0.0)


def test_bot_handoffs_count_distinct_conversations():
    out = roll(events(
        {"name": "conversation_bot_handoff", "conversation_id": 10, "inbox_id": 3},
        {"name": "conversation_bot_handoff", "conversation_id": 10, "inbox_id": 3},
        {"name": "conversation_bot_handoff", "conversation_id": 11, "inbox_id": 3},
        {"name": "conversation_bot_handoff", "conversation_id": 12, "account_id": 2},
        {"name": "conversation_bot_handoff", "conversation_id": None},  # nothing to count
    ))
    assert out[("account", 1, "bot_handoffs_count")] == (2, 0.0, 0.0)
    assert out[("account", 2, "bot_handoffs_count")] == (1, 0.0, 0.0)
    assert out[("inbox", 3, "bot_handoffs_count")] == (2, 0.0, 0.0)


def test_null_values_count_as_zero_and_null_ids_skip_the_dimension():
    out = roll(events({"name": "first_response", "value": None, "user_id": None,
                       "inbox_id": 5}))
    assert out[("account", 1, "first_response")] == (1, 0.0, 0.0)
    assert out[("inbox", 5, "first_response")] == (1, 0.0, 0.0)
    assert not any(k[0] == "agent" for k in out)


def test_unknown_event_names_are_ignored_and_counted():
    t = events({"name": "conversation_opened"}, {"name": "conversation_opened"},
               {"name": "first_response", "value": 1.0})
    v = validate(t, [1], raw_events(REPORTING_METRICS))
    assert v.ignored_by_name == {"conversation_opened": 2}
    assert v.valid.num_rows == 1


def test_quarantine_reasons_and_payload():
    t = events(
        {"id": 1, "name": "first_response", "value": -5.0},
        {"id": 2, "name": "first_response", "value": float("nan")},
        {"id": 3, "name": "reply_time", "value": 1.0, "value_in_business_hours": float("inf")},
        {"id": 4, "name": "first_response", "value": 1.0, "account_id": 999},
        {"id": 5, "name": "first_response", "created_at": None,
         "invalid_reason": REASON_TIMESTAMP,
         "raw": '{"created_at": "yesterday", "id": 5, "name": "first_response"}'},
        {"id": 6, "name": "first_response", "value": 2.0},
    )
    v = validate(t, [1], raw_events(REPORTING_METRICS))
    reasons = dict(zip(v.quarantine["event_id"].to_pylist(), v.quarantine["reason"].to_pylist(),
                       strict=True))
    assert reasons == {"1": REASON_VALUE, "2": REASON_VALUE, "3": REASON_VALUE,
                       "4": REASON_ACCOUNT, "5": REASON_TIMESTAMP}
    assert '"created_at": "yesterday"' in v.quarantine["payload"][4].as_py()
    assert v.valid["id"].to_pylist() == [6]
    assert v.quarantined_by_reason == {REASON_VALUE: 3, REASON_ACCOUNT: 1, REASON_TIMESTAMP: 1}


def test_expected_totals_match_rollups():
    t = events(
        {"name": "first_response", "value": 10.0, "value_in_business_hours": 5.0},
        {"name": "conversation_resolved", "value": 7.0, "account_id": 2},
        {"name": "conversation_bot_handoff", "conversation_id": 1},
        {"name": "conversation_bot_handoff", "conversation_id": 1},
    )
    v = validate(t, [1, 2], raw_events(REPORTING_METRICS))
    exp = expected_account_totals(v.valid, REPORTING_METRICS)
    assert exp[(1, "first_response")] == (1, 10.0, 5.0)
    assert exp[(2, "resolution_time")] == (1, 7.0, 0.0)
    assert exp[(2, "resolutions_count")] == (1, 0.0, 0.0)
    assert exp[(1, "bot_handoffs_count")] == (1, 0.0, 0.0)


def test_empty_input_gives_empty_rollups():
    v = validate(RAW_REPORTING_SCHEMA.empty_table(), [1], raw_events(REPORTING_METRICS))
    assert compute_rollups(v.valid, DAY, REPORTING_METRICS).num_rows == 0


def test_unknown_metric_error_names_known_ones():
    with pytest.raises(ValueError, match="first_response"):
        get_metric("nope")


def test_streamed_batches_give_the_same_rollups_as_one_batch():
    import random

    rng = random.Random(3)
    names = ["first_response", "reply_time", "conversation_resolved",
             "conversation_bot_resolved", "conversation_bot_handoff", "other"]
    rows = [{"name": rng.choice(names), "value": rng.choice([None, rng.uniform(0, 100)]),
             "value_in_business_hours": rng.uniform(0, 50), "account_id": rng.randint(1, 3),
             "user_id": rng.choice([None, 1, 2, 3]), "inbox_id": rng.choice([None, 7, 8]),
             "conversation_id": rng.choice([None, *range(40)])} for _ in range(3000)]
    t = validate(events(*rows), [1, 2, 3], raw_events(REPORTING_METRICS)).valid
    whole = compute_rollups(t, DAY, REPORTING_METRICS)
    acc = RollupAccumulator(DAY, REPORTING_METRICS)
    totals = TotalsAccumulator(REPORTING_METRICS)
    for off in range(0, t.num_rows, 250):
        acc.add(t.slice(off, 250))
        totals.add(t.slice(off, 250))
    keys = ["account_id", "dimension_type", "dimension_id", "metric"]
    streamed = acc.finish()
    a = {tuple(r[k] for k in keys): (r["count"], round(r["sum_value"], 6))
         for r in whole.to_pylist()}
    b = {tuple(r[k] for k in keys): (r["count"], round(r["sum_value"], 6))
         for r in streamed.to_pylist()}
    assert a == b and len(a) > 50
    exp = expected_account_totals(t, REPORTING_METRICS)
    got = totals.finish()
    assert {k: (v[0], round(v[1], 6)) for k, v in exp.items()} == {
        k: (v[0], round(v[1], 6)) for k, v in got.items()}
    # the account dimension of the rollups adds up to the independent totals
    for (account, m), (count, s, _) in got.items():
        rows_m = [r for r in whole.to_pylist() if r["metric"] == m
                  and r["dimension_type"] == "account" and r["account_id"] == account]
        assert sum(r["count"] for r in rows_m) == count
        assert round(sum(r["sum_value"] for r in rows_m), 6) == round(s, 6)
