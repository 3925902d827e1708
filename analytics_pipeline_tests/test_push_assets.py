"""The push assets in Dagster (``materialize`` on a temporary instance, the PostHog
simulator over HTTP): the mapping check at its threshold, per-partition metadata, the
statistics asset reading only landed answers, and the closed-days streams."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from dagster import AssetCheckSeverity, materialize

from analytics_pipeline.dev.posthog_simulator import PostHogSimulator
from analytics_pipeline.dev.push_data import Campaign, PushWorld
from analytics_pipeline.push.assets import (
    PUSH_USERS_MAPPED,
    push_activity,
    push_impact,
    push_rollups,
    raw_push_notifications,
)
from analytics_pipeline.push.resources import PostHog, PushSettings

KEY = "2026-02-11|America/New_York"
T = datetime(2026, 2, 11, 15, tzinfo=timezone.utc)
UNKNOWN = (3, 17, 42, 66, 91)  # 5 of the 100 pushed users: 95% mapped


@pytest.fixture
def world(env) -> PushWorld:
    w = PushWorld({1: 120}, [Campaign(7, 1, 100, T, extra_rate=0.3)], failed_share=0.0,
                  unknown_ids=UNKNOWN)
    w.write_source(env.source_url)
    return w


def run(env, sim, threshold: float, assets=None):
    resources = {**env.resources,
                 "posthog": PostHog(host=sim.base_url, project_id=str(sim.project_id),
                                    personal_api_key=sim.api_key),
                 "push_settings": PushSettings(min_mapping_rate=threshold,
                                               windows_hours="24,6")}
    return materialize(assets or [raw_push_notifications, push_rollups, push_activity,
                                  push_impact],
                       partition_key=KEY, instance=env.instance, resources=resources,
                       raise_on_error=False)


@pytest.mark.parametrize(("threshold", "passes"), [(0.94, True), (0.96, False)])
def test_mapping_check_at_94_and_96_percent(env, world, threshold, passes):
    with PostHogSimulator(rate_limit_per_hour=10_000) as sim:
        world.load_posthog(sim)
        result = run(env, sim, threshold)
    assert result.success  # the check reports; it does not stop the statistics
    (check,) = [c for c in result.get_asset_check_evaluations()
                if c.check_name == PUSH_USERS_MAPPED]
    assert check.passed is passes and check.severity == AssetCheckSeverity.ERROR
    meta = check.metadata
    assert meta["unmapped_total"].value == 5
    unmapped = {r.data["user_id"] for r in meta["unmapped_users"].value.records}
    assert unmapped == set(UNKNOWN)
    (rate,) = meta["mapping_rate_by_account"].value.records
    assert rate.data == {"account_id": 1, "users": 100, "mapped": 95, "mapping_rate": 0.95}


def test_statistics_asset_alone_never_asks_posthog(env, world):
    with PostHogSimulator(rate_limit_per_hour=10_000) as sim:
        world.load_posthog(sim)
        assert run(env, sim, 0.9).success
        asked = len(sim.queries)
        again = run(env, sim, 0.9, assets=[push_impact])
        assert again.success and len(sim.queries) == asked
    mats = again.get_asset_materialization_events()
    (m,) = [e.materialization for e in mats]
    assert m.partition == KEY
    # one campaign, significant in both windows (24 and 6 hours)
    assert m.metadata["groups"].value == 1 and m.metadata["significant"].value == 2
    # two windows × two measures for the one campaign
    assert m.metadata["dagster/row_count"].value == 4


def test_a_bad_key_fails_fast_without_showing_it(env, world):
    with PostHogSimulator(rate_limit_per_hour=10_000) as sim:
        world.load_posthog(sim)
        resources = {**env.resources,
                     "posthog": PostHog(host=sim.base_url, project_id=str(sim.project_id),
                                        personal_api_key="phx_wrong_secret_123"),
                     "push_settings": PushSettings()}
        result = materialize([raw_push_notifications, push_activity], partition_key=KEY,
                             instance=env.instance, resources=resources,
                             raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    text = str(failure.event_specific_data.error.to_string())
    assert "401" in text or "refused" in text.lower()
    assert "phx_wrong_secret_123" not in text
    for record in env.instance.all_logs(result.run_id):
        assert "phx_wrong_secret_123" not in (record.user_message or "")


def test_impact_days_wait_for_the_longest_window(monkeypatch):
    from types import SimpleNamespace

    from analytics_pipeline.push.jobs import _impact_clock

    now = datetime(2026, 2, 13, 12, tzinfo=timezone.utc)
    resources = SimpleNamespace(posthog=PostHog(host="http://x", project_id="1",
                                                personal_api_key="k"),
                                push_settings=PushSettings(windows_hours="6,48",
                                                           grace_hours=2))
    assert _impact_clock(resources, now).closed_until == now - timedelta(hours=50)
    resources.posthog = PostHog()  # not configured: the stream waits
    assert _impact_clock(resources, now) is None
