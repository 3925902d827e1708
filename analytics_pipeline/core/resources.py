"""Dagster resources of the core: every setting from the environment (``EnvVar``), each
default defined once, in ``core.settings.DEFAULTS``."""

import os
from datetime import date, timedelta

from dagster import (
    ConfigurableResource,
    EnvVar,
)
from pydantic import Field
from sqlalchemy.engine import Engine

from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import zone
from analytics_pipeline.core.settings import DEFAULTS
from analytics_pipeline.core.warehouse import redact, warehouse_engine


class SourceDatabase(ConfigurableResource):
    """The application database (any SQLAlchemy URL); each source reads its own tables."""

    url: str = Field(description="SQLAlchemy URL of the application database")

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
    default_timezone: str = Field(default=DEFAULTS["ANALYTICS_DEFAULT_TIMEZONE"],
                                  description="timezone of accounts without one")
    start_date: str = Field(default=DEFAULTS["ANALYTICS_START_DATE"],
                            description="first partition date")
    close_grace_minutes: int = Field(
        default=int(DEFAULTS["ANALYTICS_CLOSE_GRACE_MINUTES"]),
        description="minutes after local midnight before a day is rolled up"
    )
    max_account_loss_percent: int = Field(
        default=int(DEFAULTS["ANALYTICS_MAX_ACCOUNT_LOSS_PERCENT"]),
        description="an accounts snapshot dropping more than this percentage "
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


def env_or_default(name: str, defaults: dict[str, str] = DEFAULTS):
    """``EnvVar(name)`` when the variable is set (the UI shows the name, never the value),
    else the embedded default."""
    return EnvVar(name) if os.environ.get(name) else defaults[name]


def env_int_or_default(name: str, defaults: dict[str, str] = DEFAULTS):
    return EnvVar.int(name) if os.environ.get(name) else int(defaults[name])


def core_resources() -> dict[str, ConfigurableResource]:
    """The resources every source uses; sources add their own in ``definitions``."""
    return {
        "source_db": SourceDatabase(url=env_or_default("ANALYTICS_SOURCE_URL")),
        "warehouse": Warehouse(url=env_or_default("ANALYTICS_WAREHOUSE_URL")),
        "landing": Landing(uri=env_or_default("ANALYTICS_LANDING_URI")),
        "settings": PipelineSettings(
            default_timezone=env_or_default("ANALYTICS_DEFAULT_TIMEZONE"),
            start_date=env_or_default("ANALYTICS_START_DATE"),
            close_grace_minutes=env_int_or_default("ANALYTICS_CLOSE_GRACE_MINUTES"),
            max_account_loss_percent=env_int_or_default("ANALYTICS_MAX_ACCOUNT_LOSS_PERCENT"),
        ),
    }
