"""Impact per campaign and automation from landed pushes and PostHog answers (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from analytics_pipeline.push.contract import ACTIVITY_SCHEMA, LANDED_PUSH_SCHEMA
from analytics_pipeline.push.impact import impact_table

T0 = datetime(2026, 2, 11, 15, tzinfo=timezone.utc)


def pushes(rows: list[dict]) -> pa.Table:
    base = {"account_id": 1, "campaign_id": None, "automation_id": None,
            "status": "delivered", "delivered_at": None, "invalid_reason": None, "raw": None}
    full = []
    for r in rows:
        r = {**base, **r}
        r.setdefault("sent_at", T0)
        r.setdefault("anchor_at", r["delivered_at"] or r["sent_at"])
        full.append(r)
    return pa.Table.from_pylist(full, schema=LANDED_PUSH_SCHEMA)


def activity(rows: list[dict]) -> pa.Table:
    base = {"account_id": 1, "group_type": "campaign", "treated": True, "person_id": "p",
            "anchor_at": T0, "window_hours": 24, "before_hours": 0, "after_hours": 0}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=ACTIVITY_SCHEMA)


def test_one_row_per_user_first_push_and_mapping_rate():
    p = pushes([
        {"push_id": 1, "user_id": 10, "campaign_id": 7},
        {"push_id": 2, "user_id": 10, "campaign_id": 7, "sent_at": T0 + timedelta(hours=1)},
        {"push_id": 3, "user_id": 11, "campaign_id": 7},
        {"push_id": 4, "user_id": 12, "campaign_id": 7},  # not mapped: no answer
        {"push_id": 5, "user_id": 13, "campaign_id": 7, "status": "failed"},  # not analysed
        {"push_id": 6, "user_id": 14, "automation_id": "welcome"},  # nobody mapped
    ])
    a = activity([
        {"group_id": "7", "push_id": 1, "user_id": 10, "before_events": 1, "after_events": 3},
        {"group_id": "7", "push_id": 2, "user_id": 10, "before_events": 9, "after_events": 9,
         "anchor_at": T0 + timedelta(hours=1)},
        {"group_id": "7", "push_id": 3, "user_id": 11, "before_events": 2, "after_events": 5},
    ])
    out = {(r["group_type"], r["group_id"], r["metric"]): r
           for r in impact_table(p, a, [24]).to_pylist()}
    c = out[("campaign", "7", "events")]
    assert (c["pushed_users"], c["users"], c["mapped_rate"]) == (3, 2, pytest.approx(2 / 3))
    assert (c["mean_before"], c["mean_after"], c["mean_diff"]) == (1.5, 4.0, 2.5)  # push 1
    w = out[("automation", "welcome", "events")]
    assert (w["pushed_users"], w["users"], w["mapped_rate"], w["mean_diff"]) == (1, 0, 0.0,
                                                                                 None)
    assert set(out) == {(g, i, m) for g, i in (("campaign", "7"), ("automation", "welcome"))
                        for m in ("events", "active_hours")}


def test_matches_scipy_and_uses_the_comparison_group():
    rng = np.random.default_rng(3)
    n = 200
    before, after = rng.poisson(2, n), rng.poisson(3, n)
    cb, ca = rng.poisson(2, n), rng.poisson(2.2, n)
    p = pushes([{"push_id": i, "user_id": i, "campaign_id": 7} for i in range(n)])
    rows = [{"group_id": "7", "push_id": i, "user_id": i, "before_events": int(before[i]),
             "after_events": int(after[i])} for i in range(n)]
    rows += [{"group_id": "7", "push_id": None, "user_id": 1000 + i, "treated": False,
              "before_events": int(cb[i]), "after_events": int(ca[i])} for i in range(n)]
    (r,) = [r for r in impact_table(p, activity(rows), [24]).to_pylist()
            if r["metric"] == "events"]
    assert r["p_value_t"] == pytest.approx(stats.ttest_rel(after, before).pvalue, rel=1e-9)
    assert r["did"] == pytest.approx((after - before).mean() - (ca - cb).mean())
    assert r["comparison_users"] == n and r["significant"] is True
