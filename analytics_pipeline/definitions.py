"""The code location: every asset, check, job, schedule, sensor and resource in one place."""

from dagster import Definitions

from analytics_pipeline.assets import (
    accounts,
    email_pipeline_assets,
    mailgun_event_assets,
    raw_reporting_events,
    reporting_rollups,
)
from analytics_pipeline.resources import default_resources
from analytics_pipeline.sensors import (
    accounts_job,
    closed_days_sensor,
    email_daily_jobs,
    email_stats_jobs,
    email_stats_schedules,
    late_email_sensors,
    mailgun_jobs,
    mailgun_sensors,
    refresh_accounts_schedule,
    reporting_job,
)

defs = Definitions(
    assets=[
        accounts, raw_reporting_events, reporting_rollups,
        *mailgun_event_assets.values(),
        *(a for assets in email_pipeline_assets.values() for a in assets),
    ],
    jobs=[accounts_job, reporting_job, *mailgun_jobs.values(), *email_daily_jobs.values(),
          *email_stats_jobs.values()],
    schedules=[refresh_accounts_schedule, *email_stats_schedules.values()],
    sensors=[closed_days_sensor, *mailgun_sensors.values(), *late_email_sensors.values()],
    resources=default_resources(),
)
