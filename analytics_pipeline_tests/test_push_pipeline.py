"""The push source end to end, as plain functions: pushes landed and rolled up, users mapped
and PostHog asked for their activity (the local simulator over HTTP), statistics per
campaign and automation, and the read path over a range, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay, resolve_account_timezones
from analytics_pipeline.dev.posthog_simulator import PostHogSimulator
from analytics_pipeline.dev.push_data import Campaign, PushWorld
from analytics_pipeline.push.contract import ACTIVITY_SCHEMA, ACTIVITY_SOURCE, push_impact_daily
from analytics_pipeline.push.posthog import PostHogClient
from analytics_pipeline.push.read import as_json, push_impact
from analytics_pipeline.push.source import PushSource
from analytics_pipeline.push.stats import sample_comparison_users
from analytics_pipeline.push.steps import (
    ComparisonSizing,
    compute_push_impact,
    extract_push_partition,
    fetch_push_activity,
    rollup_push_partition,
)

NY = "America/New_York"
DAY = LocalDay(date(2026, 2, 11), NY)
T = datetime(2026, 2, 11, 15, tzinfo=timezone.utc)  # 10:00 in New York
NOW = T + timedelta(days=3)
# counted activity: 80% of the events are not PostHog's own ($pageview)
EFFECT = 0.3 * 24 * 0.8  # campaign 7: extra counted events per pushed user in 24 hours


def world(trend: float = 0.0) -> PushWorld:
    return PushWorld(
        {1: 700},
        [Campaign(7, 1, 250, T, extra_rate=0.3),
         Campaign(8, 1, 250, T + timedelta(hours=2), offset=250),  # no effect
         Campaign(None, 1, 100, T + timedelta(hours=4), automation_id="welcome",
                  offset=500, extra_rate=0.2)],
        base_rate=0.2, trend_per_day=trend)


@pytest.fixture
def setup(warehouse_url, tmp_path):
    engine = wh.make_engine(warehouse_url)
    wh.ensure_schema(engine)
    accounts = resolve_account_timezones([{"id": 1, "name": "ny", "reporting_timezone": NY}],
                                         "UTC")
    wh.replace_accounts(engine, [a.__dict__ for a in accounts])
    store = LandingStore(str(tmp_path / "landing"))
    source_url = f"sqlite:///{tmp_path / 'app.db'}"
    yield engine, store, source_url
    engine.dispose()


def run(engine, store, source_url, w: PushWorld, sim: PostHogSimulator):
    w.write_source(source_url)
    source = PushSource(source_url, fallback_date=date(2024, 1, 1))
    extract_push_partition(source, store, engine, DAY, "UTC", now=NOW)
    rolled = rollup_push_partition(store, engine, DAY)
    client = PostHogClient(sim.base_url, sim.project_id, sim.api_key, sleep=lambda s: None)
    fetched = fetch_push_activity(source, store, engine, client, DAY, [24], now=NOW,
                                  comparison=ComparisonSizing(maximum=150))
    impact = compute_push_impact(store, engine, DAY, [24], alpha=0.05)
    return rolled, fetched, impact


def daily(engine) -> dict:
    t = push_impact_daily
    with engine.connect() as c:
        rows = c.execute(sa.select(t).where(t.c.metric == "events")).mappings().all()
    return {(r["group_type"], r["group_id"]): dict(r) for r in rows}


def test_campaign_effect_is_found_and_no_effect_is_not(setup):
    engine, store, source_url = setup
    w = world()
    with PostHogSimulator(rate_limit_per_hour=10_000) as sim:
        w.load_posthog(sim)
        rolled, fetched, impact = run(engine, store, source_url, w, sim)
        # the counts: every push sent, delivered or failed
        with engine.connect() as c:
            sent = c.execute(sa.select(sa.func.sum(wh.daily_rollups.c.count)).where(
                wh.daily_rollups.c.metric == "push_sent",
                wh.daily_rollups.c.dimension_type == "account")).scalar_one()
        assert sent == 600 and rolled.mismatches == {}
        # users known to PostHog by distinct id or by email are mapped; unknown ones not
        m = fetched.mapping[1]
        delivered = w.pushes.filter(w.pushes["delivered_at"].is_valid())
        assert m["users"] == len(set(delivered["user_id"].to_pylist()))
        unknown = set(w.users.filter(w.unknown)["id"].to_pylist())
        assert set(m["unmapped_user_ids"]) == unknown & set(delivered["user_id"].to_pylist())
        # all windows at once; the 100 unpushed users serve as the comparison of both
        # campaigns, around two anchors: a query names a person once, so a second query
        activity_queries = [q for q in sim.queries if "countIf" in q.query]
        assert len(activity_queries) == 2
        rows = daily(engine)
        c7, c8, auto = rows[("campaign", "7")], rows[("campaign", "8")], \
            rows[("automation", "welcome")]
        assert c7["significant"] and c7["ci_low"] <= EFFECT <= c7["ci_high"]
        unpushed = set(range(601, 701))  # user ids of the account's last 100 users
        assert c7["lift_ci_low"] > 0
        assert c7["comparison_users"] == len(unpushed - unknown)  # every mapped one
        assert c7["did_ci_low"] <= EFFECT <= c7["did_ci_high"]
        assert not c8["significant"] and c8["ci_low"] <= 0 <= c8["ci_high"]
        assert c8["did_ci_low"] <= 0 <= c8["did_ci_high"]
        assert auto["label"] == "welcome" and auto["comparison_users"] == 0
        assert auto["did"] is None and auto["significant"]
        assert impact.groups == 3
        # statistics again, and over a range: never a PostHog query
        asked = len(sim.queries)
        again = compute_push_impact(store, engine, DAY, [24], alpha=0.05)
        assert again.rows_written == impact.rows_written == again.rows_replaced
        assert daily(engine) == {k: {**v, "updated_at": daily(engine)[k]["updated_at"]}
                                 for k, v in rows.items()}
        df = push_impact(engine, store, 1, DAY.day - timedelta(days=1), DAY.day + timedelta(1))
        assert len(sim.queries) == asked
    by = {(r["group_type"], r["group_id"]): r for r in as_json(df)}
    assert by[("campaign", "7")]["mean_diff"] == pytest.approx(c7["mean_diff"])
    assert by[("campaign", "7")]["users"] == c7["users"]
    assert set(by[("campaign", "7")]) >= {"users", "mapped_rate", "p_value_wilcoxon", "did"}


def test_a_trend_shows_in_the_naive_lift_but_not_in_the_difference_in_differences(setup):
    engine, store, source_url = setup
    w = world(trend=0.5)  # everybody 50% more active per day
    with PostHogSimulator(rate_limit_per_hour=10_000) as sim:
        w.load_posthog(sim)
        run(engine, store, source_url, w, sim)
    c8 = daily(engine)[("campaign", "8")]  # no effect of its own
    assert c8["significant"] and c8["lift_ci_low"] > 0  # the naive reading is fooled
    assert c8["did_ci_low"] <= 0 <= c8["did_ci_high"]


def test_push_impact_cli_prints_and_answers_json(setup, monkeypatch, capsys):
    import json

    from analytics_pipeline.cli import main

    engine, store, source_url = setup
    with PostHogSimulator(rate_limit_per_hour=10_000) as sim:
        world().load_posthog(sim)
        run(engine, store, source_url, world(), sim)
    url = engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("ANALYTICS_LANDING_URI", store.base)
    args = ["push-impact", "--account", "1", "--from", "2026-02-11", "--to", "2026-02-11",
            "--warehouse-url", url]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "campaign 7" in text and "welcome" in text and "yes" in text
    assert main([*args, "--campaign", "7", "--json"]) == 0
    (obj,) = json.loads(capsys.readouterr().out)
    assert obj["group_id"] == "7" and obj["significant"] is True
    assert set(obj) >= {"users", "mapped_rate", "mean_before", "mean_after", "mean_diff",
                        "ci_low", "ci_high", "lift", "lift_ci_low", "lift_ci_high",
                        "p_value_t", "p_value_wilcoxon", "zero_both_share", "significant",
                        "did", "did_ci_low", "did_ci_high"}
    # an unknown account and a reversed range are one line each, exit 2
    assert main(["push-impact", "--account", "99", "--from", "2026-02-11", "--to",
                 "2026-02-11", "--warehouse-url", url]) == 2
    assert "account 99" in capsys.readouterr().err
    assert main([*args[:4], "2026-02-12", "--to", "2026-02-11", "--warehouse-url", url]) == 2
    assert "before" in capsys.readouterr().err


@pytest.mark.parametrize(("pushes", "expected"), [(0, 100), (40, 100), (100, 100),
                                                  (250, 250), (999, 999), (5_000, 1000)])
def test_comparison_size_follows_the_campaign_between_its_bounds(pushes, expected):
    assert ComparisonSizing().size(pushes) == expected
    assert ComparisonSizing(ratio=2.5, minimum=0, maximum=10**6).size(pushes) == \
        -(-5 * pushes // 2)
    # the maximum wins over the minimum (a setting below 100 keeps working); 0: none
    assert ComparisonSizing(maximum=50).size(pushes) == 50
    assert ComparisonSizing(maximum=0).size(pushes) == 0


@pytest.mark.parametrize("bad", [dict(ratio=-1), dict(minimum=-1), dict(maximum=-1),
                                 dict(ratio=float("nan")), dict(ratio=float("inf"))])
def test_comparison_sizing_refuses_impossible_bounds(bad):
    with pytest.raises(ValueError, match="comparison sizing"):
        ComparisonSizing(**bad)


def test_comparison_sizing_and_activity_batch_come_from_the_environment(monkeypatch):
    from analytics_pipeline.push.resources import push_resources

    monkeypatch.setenv("ANALYTICS_PUSH_COMPARISON_RATIO", "0.5")
    monkeypatch.setenv("ANALYTICS_PUSH_COMPARISON_MIN", "20")
    monkeypatch.setenv("ANALYTICS_PUSH_COMPARISON_SIZE", "300")
    monkeypatch.setenv("ANALYTICS_PUSH_ACTIVITY_BATCH", "1500")
    settings = push_resources()["push_settings"].process_config_and_initialize()
    assert settings.comparison() == ComparisonSizing(ratio=0.5, minimum=20, maximum=300)
    assert settings.activity_batch == 1500
    monkeypatch.setenv("ANALYTICS_PUSH_COMPARISON_RATIO", "lots")
    with pytest.raises(ValueError, match="ANALYTICS_PUSH_COMPARISON_RATIO"):
        push_resources()


def extracted(w: PushWorld, setup, sim: PostHogSimulator) -> tuple[PushSource, PostHogClient]:
    """``w`` in the app database and PostHog, its day's pushes landed."""
    engine, store, source_url = setup
    w.load_posthog(sim)
    w.write_source(source_url)
    source = PushSource(source_url, fallback_date=date(2024, 1, 1))
    extract_push_partition(source, store, engine, DAY, "UTC", now=NOW)
    return source, PostHogClient(sim.base_url, sim.project_id, sim.api_key)


def test_a_campaign_draws_comparison_users_in_proportion(setup):
    """Campaigns 7 and 8 (250 pushes each, a few failed) with ratio 0.2: a fifth of their
    delivered pushes in comparison users from the 100 never pushed, the same on a re-run."""
    engine, store, source_url = setup
    w = world()
    with PostHogSimulator(rate_limit_per_hour=10_000) as sim:
        source, client = extracted(w, setup, sim)
        sizing = ComparisonSizing(ratio=0.2, minimum=10, maximum=1000)
        drawn = []
        for _ in range(2):
            fetch_push_activity(source, store, engine, client, DAY, [24], now=NOW,
                                comparison=sizing)
            act = store.read_partition(ACTIVITY_SOURCE, DAY, ACTIVITY_SCHEMA)
            comp = act.filter(pc.invert(act["treated"]))
            drawn.append({g: sorted(comp.filter(pc.equal(comp["group_id"], g))["user_id"]
                                    .to_pylist()) for g in ("7", "8")})
    assert drawn[0] == drawn[1]
    unknown = set(w.users.filter(w.unknown)["id"].to_pylist())
    delivered = w.pushes.filter(w.pushes["delivered_at"].is_valid())
    for g in ("7", "8"):
        n = pc.sum(pc.equal(delivered["campaign_id"], int(g))).as_py()
        size = -(-n // 5)
        assert 40 <= size <= 50
        # drawn from the 100 never pushed; those PostHog knows are analysed
        sample = sample_comparison_users(np.arange(601, 701), [], size,
                                         f"campaign:{g}:{DAY.key}")
        assert len(sample) == size
        assert drawn[0][g] == sorted(set(sample.tolist()) - unknown)
    assert drawn[0]["7"] != drawn[0]["8"]


@pytest.mark.parametrize("setting", [dict(activity_batch=2501), dict(activity_batch=0),
                                     dict(batch=1001)])
def test_batch_settings_out_of_range_fail_before_any_posthog_query(setting, setup):
    engine, store, _ = setup
    with PostHogSimulator(rate_limit_per_hour=10_000) as sim:
        source, client = extracted(world(), setup, sim)
        with pytest.raises(ValueError, match="ANALYTICS_PUSH_"):
            fetch_push_activity(source, store, engine, client, DAY, [24], now=NOW, **setting)
        assert sim.queries == []
