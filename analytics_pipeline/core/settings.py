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
}


def setting(name: str, defaults: dict[str, str] = DEFAULTS) -> str:
    """The environment value of ``name``, or its embedded default."""
    value = os.environ.get(name)
    return value if value else defaults[name]


def start_date() -> date:
    raw = setting("ANALYTICS_START_DATE")
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"ANALYTICS_START_DATE must be YYYY-MM-DD, got {raw!r}") from exc
