"""The code location: every asset, check, job, schedule, sensor and resource in one place.

Each source package contributes its definitions; the core contributes the accounts
snapshot and the closed-days sensor that requests every source's days.
"""

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
)

from analytics_pipeline.campaigns.assets import (
    campaign_messages,
    campaign_progress,
    campaign_rollups,
)
from analytics_pipeline.campaigns.jobs import (
    campaign_consumption_job,
    campaign_rollups_job,
    campaign_rollups_stream,
)
from analytics_pipeline.campaigns.resources import campaign_broker_resource
from analytics_pipeline.campaigns.sensors import (
    campaign_broker_sensor,
    late_campaign_reports_sensor,
)
from analytics_pipeline.core.accounts import accounts, accounts_job
from analytics_pipeline.core.resources import core_resources
from analytics_pipeline.core.scheduling import build_closed_days_sensor
from analytics_pipeline.email.assets import email_pipeline_assets, mailgun_event_assets
from analytics_pipeline.email.resources import mailgun_resource
from analytics_pipeline.email.sensors import (
    email_daily_jobs,
    email_stats_jobs,
    email_streams,
    late_email_sensors,
    mailgun_jobs,
    mailgun_sensors,
)
from analytics_pipeline.push.assets import (
    push_activity,
    push_impact,
    push_rollups,
    raw_push_notifications,
)
from analytics_pipeline.push.jobs import (
    push_delivery_job,
    push_delivery_stream,
    push_impact_job,
    push_impact_stream,
)
from analytics_pipeline.push.resources import push_resources
from analytics_pipeline.support.assets import raw_reporting_events, reporting_rollups
from analytics_pipeline.support.jobs import reporting_job, support_stream
from analytics_pipeline.web.assets import raw_web_events, web_rollups
from analytics_pipeline.web.jobs import (
    web_job,
    web_retention_job,
    web_retention_schedule,
    web_stream,
)
from analytics_pipeline.web.resources import web_resource
from analytics_pipeline.web.sensors import late_web_events_sensor

closed_days_sensor = build_closed_days_sensor([support_stream, *email_streams, web_stream,
                                               push_delivery_stream, push_impact_stream,
                                               campaign_rollups_stream])

# Evaluates the assets' automation conditions (the periodic refreshes of accounts and of the
# email statistics); on by default, like the other sensors, so nothing waits for an operator.
periodic_refreshes_sensor = AutomationConditionSensorDefinition(
    "periodic_refreshes_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Declarative automation: refreshes the accounts snapshot every 30 minutes and each "
    "email pipeline's recipient states and statistics every 15 minutes after new Mailgun "
    "events landed.",
)

defs = Definitions(
    assets=[
        accounts, raw_reporting_events, reporting_rollups,
        *mailgun_event_assets.values(),
        *(a for assets in email_pipeline_assets.values() for a in assets),
        raw_web_events, web_rollups,
        raw_push_notifications, push_rollups, push_activity, push_impact,
        campaign_messages, campaign_progress, campaign_rollups,
    ],
    jobs=[accounts_job, reporting_job, *mailgun_jobs.values(), *email_daily_jobs.values(),
          *email_stats_jobs.values(), web_job, web_retention_job, push_delivery_job,
          push_impact_job, campaign_consumption_job, campaign_rollups_job],
    schedules=[web_retention_schedule],
    sensors=[closed_days_sensor, periodic_refreshes_sensor, *mailgun_sensors.values(),
             *late_email_sensors.values(), late_web_events_sensor, campaign_broker_sensor,
             late_campaign_reports_sensor],
    resources={**core_resources(), "mailgun": mailgun_resource(), "web": web_resource(),
               **push_resources(), "campaign_broker": campaign_broker_resource()},
    # A run's steps run in its worker process, one after the other. Every job here is a
    # chain (landing → rollups → …), so a process per step (the multiprocess default) ran
    # nothing in parallel and cost each step a process start and a fresh import of this
    # code location: seconds per step, most of a short run (bench/bench_backfill.py).
    # Runs, not steps, are the unit of parallelism: one per timezone, queued
    # (dagster.yaml), and spread over machines by the run launcher.
    executor=in_process_executor,
)
