"""Dagster resources: every setting from the environment (``EnvVar``), with defaults."""


import os
from datetime import date, timedelta

from dagster import ConfigurableResource, EnvVar
from pydantic import Field
from sqlalchemy.engine import Engine

from analytics_pipeline.landing import LandingStore
from analytics_pipeline.mailgun import MailgunClient
from analytics_pipeline.partitions import zone
from analytics_pipeline.settings import DEFAULTS
from analytics_pipeline.sources import EmailSource, ReportingEventsSource
from analytics_pipeline.warehouse import redact, warehouse_engine


class SourceDatabase(ConfigurableResource):
    """The application database the support-desk app writes (any SQLAlchemy URL)."""

    url: str = Field(description="SQLAlchemy URL of the application database")

    def reporting_events(self, fallback_date: date) -> ReportingEventsSource:
        return ReportingEventsSource(self.url, fallback_date=fallback_date)

    def emails(self) -> EmailSource:
        return EmailSource(self.url)

    @property
    def display_url(self) -> str:
        return redact(self.url)


class Warehouse(ConfigurableResource):
    """The warehouse holding accounts, daily_rollups and quarantine."""

    url: str = Field(description="SQLAlchemy URL of the warehouse")

    def engine(self) -> Engine:
        """The process's engine for this URL, schema ensured once: sensors call this every
        tick, so it must not build a new pool and re-inspect the catalog each time."""
        return warehouse_engine(self.url)

    @property
    def display_url(self) -> str:
        return redact(self.url)


class Landing(ConfigurableResource):
    """Root of the Parquet landing area: a local path or a pyarrow filesystem URI."""

    uri: str = Field(description="local path, s3://bucket/prefix, gs://bucket/prefix, ...")

    def store(self) -> LandingStore:
        return LandingStore(self.uri)


class PipelineSettings(ConfigurableResource):
    default_timezone: str = Field(default="UTC", description="timezone of accounts without one")
    start_date: str = Field(default="2024-01-01", description="first partition date")
    close_grace_minutes: int = Field(
        default=30, description="minutes after local midnight before a day is rolled up"
    )
    max_account_loss_percent: int = Field(
        default=50, description="an accounts snapshot dropping more than this percentage "
        "of the previous snapshot's accounts is refused unless confirmed in run config"
    )

    def validated_default_timezone(self) -> str:
        zone(self.default_timezone)  # raises a clear ValueError if misconfigured
        return self.default_timezone

    @property
    def grace(self) -> timedelta:
        return timedelta(minutes=self.close_grace_minutes)

    @property
    def max_account_loss(self) -> float:
        return self.max_account_loss_percent / 100.0

    @property
    def first_date(self) -> date:
        return date.fromisoformat(self.start_date)


class Mailgun(ConfigurableResource):
    """Mailgun Events API access. The key comes only from MAILGUN_API_KEY."""

    api_base: str = Field(default="https://api.mailgun.net/v3",
                          description="EU region: https://api.eu.mailgun.net/v3")
    domain: str = Field(default="", description="sending domain")
    api_key: str = Field(default="", description="private API key (secret)")
    newsletter_tags: str = Field(default="newsletter", description="tag filter expression")
    automation_tags: str = Field(default="automation", description="tag filter expression")
    settle_minutes: int = Field(default=30, description="events older than this are settled")
    reconcile_every_minutes: int = Field(
        default=360, description="how often a fetch also re-reads Mailgun's whole retention "
        "(reconciliation pass, for events indexed later than the settling window)")
    retention_hours: int = Field(
        default=72, description="how far back Mailgun keeps events (the reconciliation window)")
    fetch_stale_minutes: int = Field(
        default=60, description="a fetch run in flight for longer than this is presumed dead "
        "(killed) and no longer holds back the next fetch")
    lag_seconds: int = Field(default=60, description="the fresh pass stops this far from now")
    initial_lookback_hours: int = Field(
        default=72, description="how far back the first fetch of a stream starts"
    )
    timeout_seconds: float = Field(default=30.0)

    @property
    def configured(self) -> bool:
        return bool(self.domain and self.api_key)

    def tags_for(self, pipeline: str) -> str:
        return {"newsletter": self.newsletter_tags, "automation": self.automation_tags}[pipeline]

    def client(self) -> MailgunClient:
        if not self.configured:
            raise ValueError("Mailgun is not configured: set MAILGUN_DOMAIN and MAILGUN_API_KEY")
        return MailgunClient(self.domain, self.api_key, self.api_base,
                             timeout_seconds=self.timeout_seconds)


def _env(name: str):
    """``EnvVar(name)`` when the variable is set (the UI shows the name, never the value),
    else the embedded default."""
    return EnvVar(name) if os.environ.get(name) else DEFAULTS[name]


def _env_int(name: str):
    return EnvVar.int(name) if os.environ.get(name) else int(DEFAULTS[name])


def default_resources() -> dict[str, ConfigurableResource]:
    return {
        "source_db": SourceDatabase(url=_env("ANALYTICS_SOURCE_URL")),
        "warehouse": Warehouse(url=_env("ANALYTICS_WAREHOUSE_URL")),
        "landing": Landing(uri=_env("ANALYTICS_LANDING_URI")),
        "mailgun": Mailgun(
            api_base=_env("MAILGUN_API_BASE"),
            domain=_env("MAILGUN_DOMAIN"),
            api_key=_env("MAILGUN_API_KEY"),
            newsletter_tags=_env("MAILGUN_NEWSLETTER_TAGS"),
            automation_tags=_env("MAILGUN_AUTOMATION_TAGS"),
            settle_minutes=_env_int("MAILGUN_SETTLE_MINUTES"),
            reconcile_every_minutes=_env_int("MAILGUN_RECONCILE_EVERY_MINUTES"),
            retention_hours=_env_int("MAILGUN_RETENTION_HOURS"),
            fetch_stale_minutes=_env_int("MAILGUN_FETCH_STALE_MINUTES"),
        ),
        "settings": PipelineSettings(
            default_timezone=_env("ANALYTICS_DEFAULT_TIMEZONE"),
            start_date=_env("ANALYTICS_START_DATE"),
            close_grace_minutes=_env_int("ANALYTICS_CLOSE_GRACE_MINUTES"),
            max_account_loss_percent=_env_int("ANALYTICS_MAX_ACCOUNT_LOSS_PERCENT"),
        ),
    }
