"""The campaign read path: an account's campaigns as of their last progress refresh, from
the warehouse's ``campaign_progress``, as a pandas DataFrame for notebook users; the CLI's
``analytics-pipeline campaigns`` prints it."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from analytics_pipeline.campaigns.contract import campaign_progress as progress_table
from analytics_pipeline.core.warehouse import accounts, display_url, redact

# the CLI's --json objects: exactly these keys, one object per campaign
JSON_KEYS = ("campaign_id", "channel", "audience", "pages_expected", "pages_published",
             "pages_tracked", "sent", "failed", "completed", "progress", "stuck",
             "duplicate_pages", "double_sends")
_BOOLS = ("completed", "stuck")
_FLOATS = ("progress",)
_TEXT = ("channel",)


def campaign_progress(engine: Engine, account_id: int, campaign_id: int | None = None,
                      warehouse_url: str | None = None) -> pd.DataFrame:
    """One row per campaign of ``account_id`` (every column of ``campaign_progress``, in
    campaign order; ``progress`` a fraction 0..1), or only ``campaign_id``. Raises
    ``ValueError`` when the warehouse has no progress yet, the account is unknown, or the
    campaign is not one of the account's; an account without campaigns gives no rows."""
    shown = redact(warehouse_url) if warehouse_url is not None else display_url(engine)
    if not sa.inspect(engine).has_table(progress_table.name):
        raise ValueError(f"the warehouse at {shown} has no campaign progress yet: run the "
                         "campaign_consumption job (materialize campaign_progress) first")
    c = progress_table.c
    q = sa.select(progress_table).where(c.account_id == account_id)
    if campaign_id is not None:
        q = q.where(c.campaign_id == campaign_id)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q.order_by(c.campaign_id))]
        known = bool(rows) or conn.execute(
            sa.select(accounts.c.id).where(accounts.c.id == account_id)).first() is not None
    if not known:
        raise ValueError(f"account {account_id} is not in the warehouse's accounts snapshot "
                         f"and has no campaign progress ({shown}); check the id")
    if campaign_id is not None and not rows:
        raise ValueError(f"campaign {campaign_id} of account {account_id} has no progress "
                         f"({shown}): not one of the account's campaigns, or no message of it "
                         "was consumed yet")
    return pd.DataFrame(rows, columns=[col.name for col in progress_table.columns])


def as_json(df: pd.DataFrame) -> list[dict]:
    """The CLI's ``--json`` objects: one per campaign, with exactly ``JSON_KEYS``."""
    out = []
    for r in df.to_dict("records"):
        obj = {}
        for k in JSON_KEYS:
            v = r[k]
            if k in _BOOLS:
                obj[k] = bool(v)
            elif k in _FLOATS:
                obj[k] = float(v)
            elif k in _TEXT:
                obj[k] = str(v)
            else:
                obj[k] = int(v)
        out.append(obj)
    return out
