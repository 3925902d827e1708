"""The PostHog resource and the push-impact settings, with their defaults (defined once,
here)."""

import os

from dagster import ConfigurableResource
from pydantic import Field

from analytics_pipeline.core.resources import env_int_or_default, env_or_default

POSTHOG_DEFAULTS: dict[str, str] = {
    "POSTHOG_HOST": "",  # e.g. https://us.posthog.com
    "POSTHOG_PROJECT_ID": "",
    "POSTHOG_PERSONAL_API_KEY": "",
    "POSTHOG_MAX_WAIT_SECONDS": "300",  # a longer Retry-After fails the run (retry later)
}
PUSH_DEFAULTS: dict[str, str] = {
    "ANALYTICS_PUSH_WINDOWS_HOURS": "24",  # comma-separated window lengths W, hours
    "ANALYTICS_PUSH_EVENTS": "",  # comma-separated event names; empty: all but $-events
    "ANALYTICS_PUSH_MIN_MAPPING_RATE": "0.95",  # the mapping check fails below this
    "ANALYTICS_PUSH_ALPHA": "0.05",  # significance level
    "ANALYTICS_PUSH_COMPARISON_RATIO": "1",  # comparison users per delivered push
    "ANALYTICS_PUSH_COMPARISON_MIN": "100",  # … but at least this many per campaign
    "ANALYTICS_PUSH_COMPARISON_SIZE": "1000",  # … and at most this many
    "ANALYTICS_PUSH_GRACE_HOURS": "2",  # after the longest window closes, before analysing
    "ANALYTICS_PUSH_MAPPING_REFRESH_DAYS": "7",  # a stored user → person mapping is reused
    "ANALYTICS_PUSH_BATCH_USERS": "1000",  # users or emails per PostHog mapping query
    "ANALYTICS_PUSH_ACTIVITY_BATCH": "2000",  # (person, push) pairs per activity query
    "ANALYTICS_AUTOMATIONS_DIR": "",  # automation definition files (JSON or YAML)
}


class PostHog(ConfigurableResource):
    """PostHog Query API access. The key comes only from POSTHOG_PERSONAL_API_KEY and is
    sent only to ``host``."""

    host: str = Field(default=POSTHOG_DEFAULTS["POSTHOG_HOST"],
                      description="PostHog base URL, e.g. https://us.posthog.com")
    project_id: str = Field(default=POSTHOG_DEFAULTS["POSTHOG_PROJECT_ID"])
    personal_api_key: str = Field(default=POSTHOG_DEFAULTS["POSTHOG_PERSONAL_API_KEY"],
                                  description="personal API key with query:read (secret)")
    max_wait_seconds: int = Field(
        default=int(POSTHOG_DEFAULTS["POSTHOG_MAX_WAIT_SECONDS"]),
        description="longest Retry-After waited for; a longer one fails the run, to be "
        "retried later")
    timeout_seconds: float = Field(default=120.0)

    @property
    def configured(self) -> bool:
        return bool(self.host and self.project_id and self.personal_api_key)

    def client(self):  # noqa: ANN201 - PostHogClient (imported lazily: no cycle)
        from analytics_pipeline.push.posthog import PostHogClient

        if not self.configured:
            raise ValueError("PostHog is not configured: set POSTHOG_HOST, POSTHOG_PROJECT_ID "
                             "and POSTHOG_PERSONAL_API_KEY")
        return PostHogClient(self.host, self.project_id, self.personal_api_key,
                             timeout_seconds=self.timeout_seconds,
                             max_wait_seconds=self.max_wait_seconds)


class PushSettings(ConfigurableResource):
    """What the push-impact analysis measures and how sure it must be."""

    windows_hours: str = Field(default=PUSH_DEFAULTS["ANALYTICS_PUSH_WINDOWS_HOURS"],
                               description="comma-separated window lengths W, in hours")
    events: str = Field(default=PUSH_DEFAULTS["ANALYTICS_PUSH_EVENTS"],
                        description="comma-separated PostHog event names counted as "
                        "activity; empty: every event except PostHog's $-prefixed ones")
    min_mapping_rate: float = Field(
        default=float(PUSH_DEFAULTS["ANALYTICS_PUSH_MIN_MAPPING_RATE"]),
        description="the mapping check fails (ERROR) for an account below this rate")
    alpha: float = Field(default=float(PUSH_DEFAULTS["ANALYTICS_PUSH_ALPHA"]),
                         description="significance level of the tests")
    comparison_ratio: float = Field(
        default=float(PUSH_DEFAULTS["ANALYTICS_PUSH_COMPARISON_RATIO"]),
        description="comparison users drawn (deterministically) per delivered push of a "
        "campaign")
    comparison_min: int = Field(
        default=int(PUSH_DEFAULTS["ANALYTICS_PUSH_COMPARISON_MIN"]),
        description="at least this many comparison users per campaign")
    comparison_size: int = Field(
        default=int(PUSH_DEFAULTS["ANALYTICS_PUSH_COMPARISON_SIZE"]),
        description="at most this many comparison users per campaign")
    grace_hours: int = Field(default=int(PUSH_DEFAULTS["ANALYTICS_PUSH_GRACE_HOURS"]),
                             description="hours after the longest after-window closes "
                             "before a day is analysed")
    mapping_refresh_days: int = Field(
        default=int(PUSH_DEFAULTS["ANALYTICS_PUSH_MAPPING_REFRESH_DAYS"]),
        description="a stored user → person mapping younger than this is reused")
    batch_users: int = Field(default=int(PUSH_DEFAULTS["ANALYTICS_PUSH_BATCH_USERS"]),
                             description="users or emails per PostHog mapping query "
                             "(at most 1,000)")
    activity_batch: int = Field(
        default=int(PUSH_DEFAULTS["ANALYTICS_PUSH_ACTIVITY_BATCH"]),
        description="(person, push) pairs per PostHog activity query (at most 2,500: "
        "they travel in the query text)")
    automations_dir: str = Field(default=PUSH_DEFAULTS["ANALYTICS_AUTOMATIONS_DIR"],
                                 description="directory of automation definition files")

    def windows(self) -> list[int]:
        """The window lengths, hours, sorted, each once; a bad value is an error."""
        out = set()
        for part in self.windows_hours.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or int(part) <= 0:
                raise ValueError(f"ANALYTICS_PUSH_WINDOWS_HOURS: {part!r} is not a positive "
                                 "whole number of hours")
            out.add(int(part))
        if not out:
            raise ValueError("ANALYTICS_PUSH_WINDOWS_HOURS names no window")
        return sorted(out)

    def comparison(self):  # noqa: ANN201 - ComparisonSizing (imported lazily: no cycle)
        from analytics_pipeline.push.steps import ComparisonSizing

        return ComparisonSizing(ratio=self.comparison_ratio, minimum=self.comparison_min,
                                maximum=self.comparison_size)

    def event_names(self) -> list[str] | None:
        names = [n.strip() for n in self.events.split(",") if n.strip()]
        return names or None


def _env_float(name: str) -> float:
    """A float setting (not secret: Dagster's EnvVar has no float form, the value shows)."""
    text = os.environ.get(name) or PUSH_DEFAULTS[name]
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a number") from None


def push_resources() -> dict[str, ConfigurableResource]:
    """The push source's resources from the environment (EnvVar where set, defaults
    otherwise)."""

    def text(name: str, defaults: dict[str, str] = PUSH_DEFAULTS):
        return env_or_default(name, defaults)

    return {
        "posthog": PostHog(
            host=text("POSTHOG_HOST", POSTHOG_DEFAULTS),
            project_id=text("POSTHOG_PROJECT_ID", POSTHOG_DEFAULTS),
            personal_api_key=text("POSTHOG_PERSONAL_API_KEY", POSTHOG_DEFAULTS),
            max_wait_seconds=env_int_or_default("POSTHOG_MAX_WAIT_SECONDS", POSTHOG_DEFAULTS)),
        "push_settings": PushSettings(
            windows_hours=text("ANALYTICS_PUSH_WINDOWS_HOURS"),
            events=text("ANALYTICS_PUSH_EVENTS"),
            min_mapping_rate=_env_float("ANALYTICS_PUSH_MIN_MAPPING_RATE"),
            alpha=_env_float("ANALYTICS_PUSH_ALPHA"),
            comparison_ratio=_env_float("ANALYTICS_PUSH_COMPARISON_RATIO"),
            comparison_min=env_int_or_default("ANALYTICS_PUSH_COMPARISON_MIN", PUSH_DEFAULTS),
            comparison_size=env_int_or_default("ANALYTICS_PUSH_COMPARISON_SIZE", PUSH_DEFAULTS),
            grace_hours=env_int_or_default("ANALYTICS_PUSH_GRACE_HOURS", PUSH_DEFAULTS),
            mapping_refresh_days=env_int_or_default("ANALYTICS_PUSH_MAPPING_REFRESH_DAYS",
                                                    PUSH_DEFAULTS),
            batch_users=env_int_or_default("ANALYTICS_PUSH_BATCH_USERS", PUSH_DEFAULTS),
            activity_batch=env_int_or_default("ANALYTICS_PUSH_ACTIVITY_BATCH", PUSH_DEFAULTS),
            automations_dir=text("ANALYTICS_AUTOMATIONS_DIR")),
    }
