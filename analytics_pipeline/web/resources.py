"""The web source's settings resource and its defaults (defined once, here)."""

from dagster import ConfigurableResource
from pydantic import Field

from analytics_pipeline.core.resources import env_int_or_default

WEB_DEFAULTS: dict[str, str] = {
    "ANALYTICS_WEB_SESSION_TIMEOUT_MINUTES": "30",  # a longer gap starts a new visit
    "ANALYTICS_WEB_RAW_RETENTION_DAYS": "90",  # landed web events
    "ANALYTICS_WEB_HOURLY_RETENTION_DAYS": "90",  # hourly rollups (daily ones are kept)
    "ANALYTICS_WEB_LATE_LAG_SECONDS": "60",  # the late-events sensor reads up to now - this
}
_D = WEB_DEFAULTS


class WebSettings(ConfigurableResource):
    """Sessionization and retention of the web source."""

    session_timeout_minutes: int = Field(
        default=int(_D["ANALYTICS_WEB_SESSION_TIMEOUT_MINUTES"]),
        description="a visitor's gap longer than this starts a new visit")
    raw_retention_days: int = Field(
        default=int(_D["ANALYTICS_WEB_RAW_RETENTION_DAYS"]),
        description="landed web events older than this many days are deleted")
    hourly_retention_days: int = Field(
        default=int(_D["ANALYTICS_WEB_HOURLY_RETENTION_DAYS"]),
        description="hourly rollups older than this many days are deleted (daily rows stay)")
    late_lag_seconds: int = Field(
        default=int(_D["ANALYTICS_WEB_LATE_LAG_SECONDS"]),
        description="the late-events sensor reads events received up to now minus this, "
        "so rows committed a little after their received_at are not skipped")


def web_resource() -> WebSettings:
    """The web settings from the environment (EnvVar where set, defaults otherwise)."""
    return WebSettings(**{
        field: env_int_or_default(name, WEB_DEFAULTS) for field, name in (
            ("session_timeout_minutes", "ANALYTICS_WEB_SESSION_TIMEOUT_MINUTES"),
            ("raw_retention_days", "ANALYTICS_WEB_RAW_RETENTION_DAYS"),
            ("hourly_retention_days", "ANALYTICS_WEB_HOURLY_RETENTION_DAYS"),
            ("late_lag_seconds", "ANALYTICS_WEB_LATE_LAG_SECONDS"),
        )
    })
