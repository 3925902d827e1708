"""The code location: every asset, check, job, schedule, sensor and resource in one place."""

from dagster import Definitions

from analytics_pipeline.assets import (
    accounts,
    mailgun_event_assets,
    raw_reporting_events,
    reporting_rollups,
)
from analytics_pipeline.resources import default_resources
from analytics_pipeline.sensors import (
    accounts_job,
    closed_days_sensor,
    mailgun_jobs,
    mailgun_sensors,
    refresh_accounts_schedule,
    reporting_job,
)

defs = Definitions(
    assets=[accounts, raw_reporting_events, reporting_rollups, *mailgun_event_assets.values()],
    jobs=[accounts_job, reporting_job, *mailgun_jobs.values()],
    schedules=[refresh_accounts_schedule],
    sensors=[closed_days_sensor, *mailgun_sensors.values()],
    resources=default_resources(),
)
