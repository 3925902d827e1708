"""The web-analytics source's settings and their defaults (environment variables)."""

from __future__ import annotations

WEB_DEFAULTS: dict[str, str] = {
    "ANALYTICS_WEB_SESSION_TIMEOUT_MINUTES": "30",  # a gap longer than this starts a visit
    "ANALYTICS_WEB_RAW_RETENTION_DAYS": "90",  # landed web events
    "ANALYTICS_WEB_HOURLY_RETENTION_DAYS": "90",  # hourly rollups (daily ones are kept)
}
