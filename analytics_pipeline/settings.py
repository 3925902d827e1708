"""Environment-driven settings with the embedded defaults of DESIGN.md.

Resources read these through ``EnvVar`` when a variable is set; the defaults keep a
fresh checkout runnable with no configuration (SQLite + local Parquet under
``.analytics/`` in the working directory).
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

ANALYTICS_DIR = Path(os.environ.get("ANALYTICS_HOME", ".analytics"))

DEFAULTS: dict[str, str] = {
    "ANALYTICS_SOURCE_URL": f"sqlite:///{ANALYTICS_DIR / 'demo_source.db'}",
    "ANALYTICS_WAREHOUSE_URL": f"sqlite:///{ANALYTICS_DIR / 'warehouse.db'}",
    "ANALYTICS_LANDING_URI": str(ANALYTICS_DIR / "landing"),
    "ANALYTICS_DEFAULT_TIMEZONE": "UTC",
    "ANALYTICS_START_DATE": "2024-01-01",
    "ANALYTICS_CLOSE_GRACE_MINUTES": "30",
    "ANALYTICS_MAX_ACCOUNT_LOSS_PERCENT": "50",
    "MAILGUN_API_BASE": "https://api.mailgun.net/v3",
    "MAILGUN_DOMAIN": "",
    "MAILGUN_API_KEY": "",
    "MAILGUN_NEWSLETTER_TAGS": "newsletter",
    "MAILGUN_AUTOMATION_TAGS": "automation",
    "MAILGUN_SETTLE_MINUTES": "30",
    "MAILGUN_RECONCILE_EVERY_MINUTES": "360",
    "MAILGUN_RETENTION_HOURS": "72",
    "MAILGUN_FETCH_STALE_MINUTES": "60",
}


def setting(name: str) -> str:
    """The environment value of ``name``, or its embedded default."""
    value = os.environ.get(name)
    return value if value else DEFAULTS[name]


def start_date() -> date:
    raw = setting("ANALYTICS_START_DATE")
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"ANALYTICS_START_DATE must be YYYY-MM-DD, got {raw!r}") from exc
