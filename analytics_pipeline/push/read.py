"""The push-impact read path: the statistics of an account's campaigns and automations
over any range of send dates, recomputed from the landed pushes and PostHog answers of
the range (a range's statistics are not a combination of its days' statistics: each
user counts once, with their first push of the range). Returns pandas DataFrames for
notebook users; never queries PostHog.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.push.contract import (
    ACTIVITY_METRICS,
    ACTIVITY_SCHEMA,
    ACTIVITY_SOURCE,
    LANDED_PUSH_SCHEMA,
    PUSH_SOURCE,
)
from analytics_pipeline.push.impact import impact_table
from analytics_pipeline.push.stats import OUTPUT_COLUMNS
from analytics_pipeline.push.steps import group_labels
from analytics_pipeline.report import reportable_account

MAX_RANGE_DAYS = 3660
JSON_KEYS = ("users", "mapped_rate", "mean_before", "mean_after", "mean_diff", "ci_low",
             "ci_high", "lift", "lift_ci_low", "lift_ci_high", "p_value_t", "p_value_wilcoxon",
             "zero_both_share", "significant", "did", "did_ci_low", "did_ci_high")


def push_impact(engine: Engine, store: LandingStore, account_id: int, start: date,
                end: date, *, campaign: int | None = None, automation: str | None = None,
                metric: str = "events", window_hours: int | None = None,
                alpha: float = 0.05, warehouse_url: str = "") -> pd.DataFrame:
    """One row per campaign or automation (and window) of ``account_id`` with pushes sent
    on local dates ``start``..``end`` (inclusive): ``group_type``, ``group_id``, ``label``,
    ``window_hours``, ``pushed_users``, ``days_without_activity`` (days of the range whose
    PostHog answers are not landed) and the statistics (``push.stats``). ``campaign`` or
    ``automation`` keeps one group."""
    if metric not in ACTIVITY_METRICS:
        raise ValueError(f"unknown activity measure {metric!r}; one of "
                         f"{', '.join(ACTIVITY_METRICS)}")
    if campaign is not None and automation is not None:
        raise ValueError("give --campaign or --automation, not both")
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    if (end - start).days > MAX_RANGE_DAYS:
        raise ValueError(f"a range of at most {MAX_RANGE_DAYS} days")
    account = reportable_account(engine, account_id, warehouse_url)
    tz = account["timezone"]
    ids = pa.array([account_id], pa.int64())
    pushes, answers, missing, landed = [], [], 0, 0
    day = start
    while day <= end:
        part = LocalDay(day, tz)
        if store.has_partition(PUSH_SOURCE, part):
            landed += 1
            p = store.read_partition(PUSH_SOURCE, part, LANDED_PUSH_SCHEMA,
                                     filters=pc.field("account_id") == account_id)
            pushes.append(p.filter(pc.is_in(p["account_id"], ids)))
            if store.has_partition(ACTIVITY_SOURCE, part):
                a = store.read_partition(ACTIVITY_SOURCE, part, ACTIVITY_SCHEMA,
                                         filters=pc.field("account_id") == account_id)
                answers.append(a.filter(pc.is_in(a["account_id"], ids)))
            elif p.num_rows:
                missing += 1
        day += timedelta(days=1)
    if not landed:
        raise ValueError(
            f"no pushes are landed for account {account_id}'s days {start}..{end} ({tz}) "
            f"under {store.base}: materialize raw_push_notifications for them, or point "
            "ANALYTICS_LANDING_URI (--landing-uri) at the pipeline's landing")
    p = pa.concat_tables(pushes) if pushes else LANDED_PUSH_SCHEMA.empty_table()
    a = pa.concat_tables(answers) if answers else ACTIVITY_SCHEMA.empty_table()
    windows = sorted(set(a["window_hours"].to_pylist())) or ([window_hours] if window_hours
                                                             else [24])
    table = impact_table(p, a, windows, alpha=alpha)
    table = table.filter(pc.equal(table["metric"], metric))
    if window_hours is not None:
        table = table.filter(pc.equal(table["window_hours"], window_hours))
    if campaign is not None:
        table = table.filter(pc.and_(pc.equal(table["group_type"], "campaign"),
                                     pc.equal(table["group_id"], str(campaign))))
    if automation is not None:
        table = table.filter(pc.and_(pc.equal(table["group_type"], "automation"),
                                     pc.equal(table["group_id"], automation)))
    table = table.append_column("label", group_labels(engine, table))
    df = table.to_pandas()
    df["days_without_activity"] = missing
    first = ["group_type", "group_id", "label", "window_hours", "metric", "pushed_users",
             "mapped_rate"]
    return df[first + [c for c in OUTPUT_COLUMNS] + ["days_without_activity"]]


def as_json(df: pd.DataFrame) -> list[dict]:
    """The CLI's ``--json`` objects: one per campaign or automation and window, with the
    statistics keys (nulls as null)."""
    out = []
    for r in df.to_dict("records"):
        obj = {"group_type": r["group_type"], "group_id": r["group_id"], "label": r["label"],
               "window_hours": int(r["window_hours"])}
        for k in JSON_KEYS:
            v = r[k]
            if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
                obj[k] = None
            elif k in ("users",):
                obj[k] = int(v)
            elif k == "significant":
                obj[k] = bool(v)
            else:
                obj[k] = float(v)
        out.append(obj)
    return out
