"""The code location: every asset, check, job, schedule, sensor and resource in one place."""

from dagster import Definitions

from analytics_pipeline.assets import accounts, raw_reporting_events, reporting_rollups
from analytics_pipeline.resources import default_resources
from analytics_pipeline.sensors import (
    accounts_job,
    closed_days_sensor,
    refresh_accounts_schedule,
    reporting_job,
)

defs = Definitions(
    assets=[accounts, raw_reporting_events, reporting_rollups],
    jobs=[accounts_job, reporting_job],
    schedules=[refresh_accounts_schedule],
    sensors=[closed_days_sensor],
    resources=default_resources(),
)
