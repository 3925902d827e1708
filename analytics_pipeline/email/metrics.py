
"""Email metrics of each Mailgun pipeline, their dimensions, and the pipelines."""

from __future__ import annotations

from dataclasses import dataclass

from analytics_pipeline.core.registry import (
    ACCOUNT,
    Aggregation,
    Dimension,
    Metric,
    ReadAs,
    register,
)
from analytics_pipeline.email.names import AUTOMATION as AUTOMATION_NAMES
from analytics_pipeline.email.names import NEWSLETTER, EmailNames

EMAIL = Dimension("email", "email_id")


AUTOMATION = Dimension("automation", "automation_id")


def _email_metrics(pipeline: str) -> tuple[Metric, ...]:
    """Daily email metrics of one pipeline, on the local date of the event.

    Failures are split by severity upstream (raw names ``failed_permanent`` and
    ``failed_temporary``); ``unique_*`` count distinct recipients per day.
    """
    dims = (ACCOUNT, EMAIL) + ((AUTOMATION,) if pipeline == "automation" else ())
    source = f"email:{pipeline}"

    def m(name: str, raw: str, agg: Aggregation = Aggregation.COUNT_ONLY, what: str = ""):
        return Metric(f"{pipeline}_{name}", raw, agg, ReadAs.COUNT, dims, source,
                      f"{pipeline} emails: {what}", distinct_of="recipient_id")

    return (
        m("delivered", "delivered", what="deliveries"),
        m("opens", "opened", what="open events"),
        m("unique_opens", "opened", Aggregation.COUNT_DISTINCT, "recipients who opened"),
        m("clicks", "clicked", what="click events"),
        m("unique_clicks", "clicked", Aggregation.COUNT_DISTINCT, "recipients who clicked"),
        m("failed", "failed_permanent", what="permanent failures"),
        m("temporary_failures", "failed_temporary", what="temporary failures"),
        m("unsubscribed", "unsubscribed", what="unsubscribes"),
        m("complained", "complained", what="spam complaints"),
    )


EMAIL_METRICS: tuple[Metric, ...] = register(
    _email_metrics("newsletter") + _email_metrics("automation"))


@dataclass(frozen=True)
class EmailPipeline:
    """One independent email pipeline: its Mailgun tag selection and its streams."""

    name: str  # also the email kind in the app database: 'newsletter' | 'automation'
    default_tags: str  # Mailgun tag filter expression
    names: EmailNames  # its Dagster names

    @property
    def stream(self) -> str:
        return f"mailgun/{self.name}"

    @property
    def cursor_name(self) -> str:
        return f"mailgun:{self.name}"


EMAIL_PIPELINES: tuple[EmailPipeline, ...] = (
    EmailPipeline("newsletter", "newsletter", NEWSLETTER),
    EmailPipeline("automation", "automation", AUTOMATION_NAMES),
)
