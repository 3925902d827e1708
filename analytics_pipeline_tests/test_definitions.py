"""The code location loads and holds exactly these definitions: a renaming or a lost
definition fails here. Development-only code is not imported by loading it."""

import subprocess
import sys

from analytics_pipeline.definitions import defs

ASSETS = [
    "accounts",
    "automation_email_rollups", "automation_email_stats", "automation_recipient_states",
    "campaign_messages", "campaign_progress", "campaign_rollups",
    "mailgun_automation_events", "mailgun_newsletter_events",
    "newsletter_email_rollups", "newsletter_email_stats", "newsletter_recipient_states",
    "push_activity", "push_impact", "push_rollups",
    "raw_automation_email_events", "raw_newsletter_email_events", "raw_push_notifications",
    "raw_reporting_events", "raw_web_events", "reporting_rollups", "web_rollups",
]
CHECKS = [
    "accounts:every_account_has_valid_timezone",
    "accounts:every_source_account_row_is_valid",
    "automation_email_rollups:rollup_counts_non_negative",
    "automation_email_rollups:rollups_reconcile_with_landing",
    "campaign_progress:campaigns_not_stuck",
    "campaign_progress:no_double_sends",
    "campaign_progress:reported_within_audience",
    "campaign_progress:tracked_counts_agree_with_contacts",
    "campaign_rollups:rollup_counts_non_negative",
    "campaign_rollups:rollups_reconcile_with_landing",
    "newsletter_email_rollups:rollup_counts_non_negative",
    "newsletter_email_rollups:rollups_reconcile_with_landing",
    "push_activity:users_mapped_to_posthog",
    "push_rollups:rollup_counts_non_negative",
    "push_rollups:rollups_reconcile_with_landing",
    "reporting_rollups:rollup_counts_non_negative",
    "reporting_rollups:rollups_reconcile_with_landing",
    "web_rollups:web_counts_non_negative",
    "web_rollups:web_daily_totals_equal_hourly",
    "web_rollups:web_daily_visitors_between_hourly_max_and_sum",
    "web_rollups:web_visits_at_least_bounces",
]
JOBS = [
    "automation_email_daily", "automation_email_stats_refresh", "campaign_consumption",
    "campaign_rollups_daily", "mailgun_automation_fetch",
    "mailgun_newsletter_fetch", "newsletter_email_daily", "newsletter_email_stats_refresh",
    "push_delivery", "push_impact_analysis", "refresh_accounts", "support_reporting",
    "web_analytics", "web_retention",
]
SENSORS = [
    "campaign_broker_sensor", "closed_days_sensor", "late_automation_email_events_sensor",
    "late_campaign_reports_sensor",
    "late_newsletter_email_events_sensor", "late_web_events_sensor",
    "mailgun_automation_sensor", "mailgun_newsletter_sensor", "periodic_refreshes_sensor",
]
# periodic refreshes are automation conditions (on_cron); retention is a plain job
SCHEDULES = ["web_retention_schedule"]
RESOURCES = ["campaign_broker", "landing", "mailgun", "posthog", "push_settings", "settings",
             "source_db", "warehouse", "web"]


def test_the_code_location_holds_exactly_these_definitions():
    repo = defs.get_repository_def()
    assert sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()) == ASSETS
    assert sorted(f"{c.asset_key.to_user_string()}:{c.name}"
                  for c in repo.asset_graph.asset_check_keys) == CHECKS
    assert sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")) == JOBS
    assert sorted(s.name for s in repo.sensor_defs) == SENSORS
    assert sorted(s.name for s in repo.schedule_defs) == SCHEDULES
    assert sorted(defs.resources) == RESOURCES


def test_every_sensor_schedule_and_job_says_what_it_does():
    repo = defs.get_repository_def()
    jobs = [j for j in repo.get_all_jobs() if not j.name.startswith("__")]
    assert jobs and repo.sensor_defs
    for d in [*repo.sensor_defs, *repo.schedule_defs, *jobs]:
        assert d.description and d.description.strip(), d.name
        assert "`" not in d.description, d.name  # the UI shows markdown backticks raw


def test_loading_the_code_location_imports_no_development_code():
    code = ("import sys, analytics_pipeline.definitions; "
            "print([m for m in sys.modules if m.startswith('analytics_pipeline.dev')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_loading_is_quiet_about_backfill_policies_only():
    """The beta notice of ``backfill_policy`` (one per asset, at every CLI call) is silenced;
    other beta warnings are not. Python's default warning filters, as in a CLI process."""
    code = ("import warnings, analytics_pipeline.definitions; from dagster import BetaWarning; "
            "warnings.warn('another beta feature', BetaWarning)")
    err = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True,
                         text=True, check=True).stderr
    assert "backfill_policy" not in err
    assert "BetaWarning: another beta feature" in err


def test_periodic_refreshes_are_declarative_automation():
    """Accounts refresh after each 30-minute tick; an email pipeline's states and stats after
    a 15-minute tick once its fetch has landed something new, both assets of the multi-asset
    together; nothing is requested before a tick has passed."""
    from datetime import datetime, timedelta, timezone

    from dagster import (
        AssetMaterialization,
        evaluate_automation_conditions,
        instance_for_test,
    )

    keys = sorted(defs.get_repository_def().asset_graph.get_all_asset_keys())

    def requested(result) -> set[str]:
        return {k.to_user_string() for k in keys if result.get_num_requested(k)}

    t0 = datetime(2026, 2, 24, 10, 1, tzinfo=timezone.utc)
    with instance_for_test() as instance:
        first = evaluate_automation_conditions(defs, instance, evaluation_time=t0)
        assert first.total_requested == 0
        later = evaluate_automation_conditions(
            defs, instance, evaluation_time=t0 + timedelta(minutes=15), cursor=first.cursor)
        assert requested(later) == set()  # 10:15 passed, but no fetch landed since
        instance.report_runless_asset_event(AssetMaterialization("mailgun_newsletter_events"))
        after_fetch = evaluate_automation_conditions(
            defs, instance, evaluation_time=t0 + timedelta(minutes=31), cursor=later.cursor)
        assert requested(after_fetch) == {"accounts", "newsletter_recipient_states",
                                          "newsletter_email_stats"}
