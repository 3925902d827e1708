"""The RabbitMQ resource of the campaign-dispatch source and its settings, with their
defaults (defined once, here)."""

import os

from dagster import ConfigurableResource
from pydantic import Field

from analytics_pipeline.campaigns.broker import redact
from analytics_pipeline.campaigns.contract import DEFAULT_BATCH_SIZE, DEFAULT_QUEUE, EXCHANGE
from analytics_pipeline.core.resources import env_int_or_default, env_or_default

BROKER_URL = "ANALYTICS_BROKER_URL"

CAMPAIGN_DEFAULTS: dict[str, str] = {
    BROKER_URL: "",  # amqp://user:password@host:5672/vhost; unset: the source is off
    "ANALYTICS_BROKER_EXCHANGE": EXCHANGE,  # the application's topic exchange
    "ANALYTICS_BROKER_QUEUE": DEFAULT_QUEUE,  # the pipeline's own durable queue
    "ANALYTICS_CAMPAIGN_MAX_MESSAGES": "50000",  # deliveries drained by one run at most
    "CAMPAIGN_PACKER_BATCH_SIZE": str(DEFAULT_BATCH_SIZE),  # contacts per page (the packer's)
    "ANALYTICS_CAMPAIGN_STUCK_MINUTES": "15",  # a published page without report is stuck
    "ANALYTICS_CAMPAIGN_PROGRESS_DAYS": "30",  # UTC dates of landed messages the progress reads
    "ANALYTICS_CAMPAIGN_LATE_DAYS": "3",  # a day's rollup reads reports landed this much later
}
_D = CAMPAIGN_DEFAULTS


class CampaignBroker(ConfigurableResource):
    """RabbitMQ access and the campaign source's settings. The URL comes only from
    ANALYTICS_BROKER_URL and is shown only redacted (``display_url``)."""

    url: str = Field(default=_D[BROKER_URL],
                     description="AMQP URL of RabbitMQ, e.g. amqp://user:password@host:5672/"
                     "%2F (secret: shown redacted)")
    exchange: str = Field(default=_D["ANALYTICS_BROKER_EXCHANGE"],
                          description="the application's topic exchange of campaign messages")
    queue: str = Field(default=_D["ANALYTICS_BROKER_QUEUE"],
                       description="the pipeline's own durable queue, bound to campaigns.send "
                       "and campaigns.tracked (declared by the pipeline)")
    max_messages: int = Field(default=int(_D["ANALYTICS_CAMPAIGN_MAX_MESSAGES"]),
                              description="deliveries one consumption run drains at most (the "
                              "rest wait for the next run)")
    batch_size: int = Field(default=int(_D["CAMPAIGN_PACKER_BATCH_SIZE"]),
                            description="contacts per page, as the application's packer uses "
                            "(CAMPAIGN_PACKER_BATCH_SIZE)")
    stuck_minutes: int = Field(default=int(_D["ANALYTICS_CAMPAIGN_STUCK_MINUTES"]),
                               description="a published page without any report this long "
                               "after its publication makes its campaign stuck")
    progress_days: int = Field(default=int(_D["ANALYTICS_CAMPAIGN_PROGRESS_DAYS"]),
                               description="the progress refresh reads the messages landed on "
                               "the last this many UTC dates (older campaigns keep their "
                               "last row)")
    late_days: int = Field(default=int(_D["ANALYTICS_CAMPAIGN_LATE_DAYS"]),
                           description="a day's rollup counts the reports landed up to this "
                           "many days after it (a backlog consumed late)")

    @property
    def configured(self) -> bool:
        return bool(self.url)

    @property
    def display_url(self) -> str:
        return redact(self.url) if self.url else "(not configured)"

    def require_url(self) -> str:
        if not self.configured:
            raise ValueError(f"RabbitMQ is not configured: set {BROKER_URL}")
        return self.url


def broker_configured_in_env() -> bool:
    """Whether the code location's environment configures the broker, as the resource
    reads it (``campaign_broker_resource``)."""
    return bool(os.environ.get(BROKER_URL))


def campaign_broker_resource() -> CampaignBroker:
    """The campaign resource from the environment (EnvVar where set, defaults otherwise)."""

    def text(name: str):
        return env_or_default(name, CAMPAIGN_DEFAULTS)

    def number(name: str):
        return env_int_or_default(name, CAMPAIGN_DEFAULTS)

    return CampaignBroker(
        url=text(BROKER_URL),
        exchange=text("ANALYTICS_BROKER_EXCHANGE"),
        queue=text("ANALYTICS_BROKER_QUEUE"),
        max_messages=number("ANALYTICS_CAMPAIGN_MAX_MESSAGES"),
        batch_size=number("CAMPAIGN_PACKER_BATCH_SIZE"),
        stuck_minutes=number("ANALYTICS_CAMPAIGN_STUCK_MINUTES"),
        progress_days=number("ANALYTICS_CAMPAIGN_PROGRESS_DAYS"),
        late_days=number("ANALYTICS_CAMPAIGN_LATE_DAYS"),
    )
