"""The Mailgun resource, its settings and their defaults (defined once, here)."""

from dagster import (
    ConfigurableResource,
)
from pydantic import Field

from analytics_pipeline.core.resources import env_int_or_default, env_or_default
from analytics_pipeline.email.mailgun import DEFAULT_API_BASE, MailgunClient

MAILGUN_DEFAULTS: dict[str, str] = {
    "MAILGUN_API_BASE": DEFAULT_API_BASE,
    "MAILGUN_DOMAIN": "",
    "MAILGUN_API_KEY": "",
    "MAILGUN_NEWSLETTER_TAGS": "newsletter",
    "MAILGUN_AUTOMATION_TAGS": "automation",
    "MAILGUN_SETTLE_MINUTES": "30",
    "MAILGUN_RECONCILE_EVERY_MINUTES": "360",
    "MAILGUN_RETENTION_HOURS": "72",
    "MAILGUN_FETCH_STALE_MINUTES": "60",
    "MAILGUN_LAG_SECONDS": "60",
    "MAILGUN_INITIAL_LOOKBACK_HOURS": "72",
}
_D = MAILGUN_DEFAULTS


class Mailgun(ConfigurableResource):
    """Mailgun Events API access. The key comes only from MAILGUN_API_KEY."""

    api_base: str = Field(default=_D["MAILGUN_API_BASE"],
                          description="EU region: https://api.eu.mailgun.net/v3")
    domain: str = Field(default=_D["MAILGUN_DOMAIN"], description="sending domain")
    api_key: str = Field(default=_D["MAILGUN_API_KEY"], description="private API key (secret)")
    newsletter_tags: str = Field(default=_D["MAILGUN_NEWSLETTER_TAGS"],
                                 description="tag filter expression")
    automation_tags: str = Field(default=_D["MAILGUN_AUTOMATION_TAGS"],
                                 description="tag filter expression")
    settle_minutes: int = Field(default=int(_D["MAILGUN_SETTLE_MINUTES"]),
                                description="events older than this are settled")
    reconcile_every_minutes: int = Field(
        default=int(_D["MAILGUN_RECONCILE_EVERY_MINUTES"]),
        description="how often a fetch also re-reads Mailgun's whole retention "
        "(reconciliation pass, for events indexed later than the settling window)")
    retention_hours: int = Field(
        default=int(_D["MAILGUN_RETENTION_HOURS"]),
        description="how far back Mailgun keeps events (the reconciliation window)")
    fetch_stale_minutes: int = Field(
        default=int(_D["MAILGUN_FETCH_STALE_MINUTES"]),
        description="a fetch run in flight for longer than this is presumed dead "
        "(killed) and no longer holds back the next fetch")
    lag_seconds: int = Field(default=int(_D["MAILGUN_LAG_SECONDS"]),
                             description="the fresh pass stops this far from now")
    initial_lookback_hours: int = Field(
        default=int(_D["MAILGUN_INITIAL_LOOKBACK_HOURS"]),
        description="how far back the first fetch of a stream starts")
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


def mailgun_resource() -> Mailgun:
    """The Mailgun resource from the environment (EnvVar where set, defaults otherwise)."""

    def text(name: str):
        return env_or_default(name, MAILGUN_DEFAULTS)

    def number(name: str):
        return env_int_or_default(name, MAILGUN_DEFAULTS)

    return Mailgun(
        api_base=text("MAILGUN_API_BASE"),
        domain=text("MAILGUN_DOMAIN"),
        api_key=text("MAILGUN_API_KEY"),
        newsletter_tags=text("MAILGUN_NEWSLETTER_TAGS"),
        automation_tags=text("MAILGUN_AUTOMATION_TAGS"),
        settle_minutes=number("MAILGUN_SETTLE_MINUTES"),
        reconcile_every_minutes=number("MAILGUN_RECONCILE_EVERY_MINUTES"),
        retention_hours=number("MAILGUN_RETENTION_HOURS"),
        fetch_stale_minutes=number("MAILGUN_FETCH_STALE_MINUTES"),
        lag_seconds=number("MAILGUN_LAG_SECONDS"),
        initial_lookback_hours=number("MAILGUN_INITIAL_LOOKBACK_HOURS"),
    )
