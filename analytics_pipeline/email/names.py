"""Every Dagster name of the two email pipelines, written out literally.

The pipelines are built by factories (``assets.py``, ``sensors.py``) because newsletter and
automation emails are the same machinery with another tag selection; their names are
listed here so that a grep for any asset, job, sensor or schedule finds it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmailNames:
    group: str
    fetched_asset: str  # landed Mailgun events, appended by each polling run
    raw_asset: str  # the day's events matched to recipients, per date|timezone
    rollups_asset: str
    states_asset: str
    stats_asset: str
    statistics_op: str  # the multi-asset computing states and stats
    fetch_job: str
    daily_job: str
    stats_job: str
    fetch_sensor: str
    late_sensor: str
    stream: str  # the closed-days sensor's stream


NEWSLETTER = EmailNames(
    group="email_newsletter",
    fetched_asset="mailgun_newsletter_events",
    raw_asset="raw_newsletter_email_events",
    rollups_asset="newsletter_email_rollups",
    states_asset="newsletter_recipient_states",
    stats_asset="newsletter_email_stats",
    statistics_op="newsletter_email_statistics",
    fetch_job="mailgun_newsletter_fetch",
    daily_job="newsletter_email_daily",
    stats_job="newsletter_email_stats_refresh",
    fetch_sensor="mailgun_newsletter_sensor",
    late_sensor="late_newsletter_email_events_sensor",
    stream="email:newsletter",
)

AUTOMATION = EmailNames(
    group="email_automation",
    fetched_asset="mailgun_automation_events",
    raw_asset="raw_automation_email_events",
    rollups_asset="automation_email_rollups",
    states_asset="automation_recipient_states",
    stats_asset="automation_email_stats",
    statistics_op="automation_email_statistics",
    fetch_job="mailgun_automation_fetch",
    daily_job="automation_email_daily",
    stats_job="automation_email_stats_refresh",
    fetch_sensor="mailgun_automation_sensor",
    late_sensor="late_automation_email_events_sensor",
    stream="email:automation",
)
