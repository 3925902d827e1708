"""Push impact per campaign and automation from landed pushes and PostHog answers (plain
functions on Arrow tables, no PostHog, no Dagster).

A group is (account, campaign or automation, window, activity measure). Its pushed users
are the users with a valid delivered push of the group; each counts once, with their
first push of the group (a user pushed five times is one user, not five: the statistics
assume independent rows). Its analysed users are those of them mapped to a PostHog
person; ``mapped_rate`` = analysed / pushed. Comparison users (campaigns only) come with
the campaign's PostHog answers.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.push.contract import ACTIVITY_METRICS
from analytics_pipeline.push.stats import OUTPUT_COLUMNS, impact_stats_from_arrays

GROUP_KEYS = ("account_id", "group_type", "group_id", "window_hours", "metric")
_MEASURES = {"events": ("before_events", "after_events"),
             "active_hours": ("before_hours", "after_hours")}


def pushed_groups(pushes: pa.Table) -> pa.Table:
    """(account_id, group_type, group_id, user_id, push_id, anchor_at) of every valid
    delivered push, once in its campaign's group and once in its automation's (a push may
    have both, or neither)."""
    ok = pc.and_(pc.is_null(pushes["invalid_reason"]),
                 pc.equal(pushes["status"], "delivered"))
    p = pushes.filter(ok)
    parts = []
    for group_type, column in (("campaign", "campaign_id"), ("automation", "automation_id")):
        q = p.filter(pc.is_valid(p[column]))
        parts.append(pa.table({
            "account_id": q["account_id"],
            "group_type": pa.repeat(pa.scalar(group_type), q.num_rows),
            "group_id": pc.cast(q[column], pa.string()),
            "user_id": q["user_id"], "push_id": q["push_id"], "anchor_at": q["anchor_at"]}))
    return pa.concat_tables(parts).combine_chunks()


def first_per_user(rows: pa.Table, keys: list[str]) -> pa.Table:
    """Of each ``keys`` + user_id, the row of the earliest anchor (then smallest push id)."""
    if rows.num_rows == 0:
        return rows
    order = pc.sort_indices(rows, [(k, "ascending") for k in (*keys, "user_id")]
                            + [("anchor_at", "ascending"), ("push_id", "ascending")])
    rows = rows.take(order)
    change = np.zeros(rows.num_rows, bool)
    change[0] = True
    for k in (*keys, "user_id"):
        col = rows[k].combine_chunks()
        neq = pc.fill_null(pc.not_equal(col.slice(1), col.slice(0, len(col) - 1)), True)
        both_null = pc.and_(pc.is_null(col.slice(1)), pc.is_null(col.slice(0, len(col) - 1)))
        change[1:] |= np.asarray(pc.and_not(neq, both_null).to_numpy(zero_copy_only=False),
                                 bool)
    return rows.filter(pa.array(change))


def impact_table(pushes: pa.Table, activity: pa.Table, windows_hours: list[int], *,
                 alpha: float = 0.05, confidence: float = 0.95) -> pa.Table:
    """One row per group (GROUP_KEYS) with ``pushed_users``, ``mapped_rate`` and the
    statistics of ``push.stats`` (OUTPUT_COLUMNS), for the landed ``pushes``
    (LANDED_PUSH_SCHEMA) and their ``activity`` (ACTIVITY_SCHEMA) of one or more
    partitions. A group whose users could not be analysed (none mapped) has a row with 0
    users and null statistics."""
    pushed = first_per_user(pushed_groups(pushes), ["account_id", "group_type", "group_id"])
    counts = pushed.group_by(["account_id", "group_type", "group_id"],
                             use_threads=False).aggregate([("user_id", "count")])
    treated = activity.filter(activity["treated"])
    treated = first_per_user(treated, ["account_id", "group_type", "group_id",
                                       "window_hours"])
    comparison = activity.filter(pc.invert(activity["treated"]))
    rows = pa.concat_tables([treated, comparison]).combine_chunks()
    per_metric = []
    for metric in ACTIVITY_METRICS:
        before, after = _MEASURES[metric]
        per_metric.append(pa.table({
            "account_id": rows["account_id"], "group_type": rows["group_type"],
            "group_id": rows["group_id"],
            "window_hours": pc.cast(rows["window_hours"], pa.int32()),
            "metric": pa.repeat(pa.scalar(metric), rows.num_rows),
            "treated": rows["treated"],
            "before": pc.cast(rows[before], pa.float64()),
            "after": pc.cast(rows[after], pa.float64())}))
    obs = pa.concat_tables(per_metric).combine_chunks()
    # every group: those with pushed users (each window and measure) and those answered
    expected = [pa.table({
        "account_id": counts["account_id"], "group_type": counts["group_type"],
        "group_id": counts["group_id"],
        "window_hours": pa.repeat(pa.scalar(w, pa.int32()), counts.num_rows),
        "metric": pa.repeat(pa.scalar(m), counts.num_rows)})
        for w in windows_hours for m in ACTIVITY_METRICS]
    keys = obs.select(list(GROUP_KEYS))
    distinct = pa.concat_tables([keys, *expected]).group_by(
        list(GROUP_KEYS), use_threads=False).aggregate([])
    if distinct.num_rows == 0:
        return _empty()
    distinct = distinct.sort_by([(k, "ascending") for k in GROUP_KEYS])
    numbered = distinct.append_column("group", pa.array(np.arange(distinct.num_rows),
                                                        pa.int64()))
    stats = impact_stats_from_arrays(
        _row_codes(keys, distinct), obs["before"].to_numpy(), obs["after"].to_numpy(),
        obs["treated"].to_numpy(zero_copy_only=False), key_name="group",
        confidence=confidence, alpha=alpha) if obs.num_rows else None
    out = numbered.join(counts, ["account_id", "group_type", "group_id"],
                        join_type="left outer", use_threads=False)
    if stats is not None:
        out = out.join(stats, "group", join_type="left outer", use_threads=False)
    out = out.sort_by("group")
    n = out.num_rows
    pushed_users = pc.cast(pc.fill_null(out["user_id_count"], 0), pa.int64())
    cols = {k: out[k] for k in GROUP_KEYS}
    cols["pushed_users"] = pushed_users
    for c in OUTPUT_COLUMNS:
        if c in out.column_names:
            cols[c] = out[c]
        else:
            cols[c] = pa.nulls(n, _empty().schema.field(c).type)
    for c in ("users", "comparison_users"):
        cols[c] = pc.cast(pc.fill_null(cols[c], 0), pa.int64())
    cols["mapped_rate"] = pc.if_else(
        pc.greater(pushed_users, 0),
        pc.divide(pc.cast(cols["users"], pa.float64()), pc.cast(pushed_users, pa.float64())),
        pa.scalar(None, pa.float64()))
    return pa.Table.from_arrays([cols[f.name] for f in _empty().schema],
                                schema=_empty().schema)


def _row_codes(keys: pa.Table, distinct: pa.Table) -> np.ndarray:
    """The index in ``distinct`` of each row of ``keys`` (same columns)."""
    numbered = distinct.append_column("_code", pa.array(np.arange(distinct.num_rows),
                                                        pa.int64()))
    rows = keys.append_column("_row", pa.array(np.arange(keys.num_rows), pa.int64()))
    joined = rows.join(numbered, list(GROUP_KEYS), use_threads=False)
    out = np.empty(keys.num_rows, np.int64)
    out[joined["_row"].to_numpy()] = joined["_code"].to_numpy()
    return out


def _empty() -> pa.Table:
    fields = [pa.field("account_id", pa.int64()), pa.field("group_type", pa.string()),
              pa.field("group_id", pa.string()), pa.field("window_hours", pa.int32()),
              pa.field("metric", pa.string()), pa.field("pushed_users", pa.int64()),
              pa.field("mapped_rate", pa.float64())]
    fields += [pa.field(c, pa.int64() if c in ("users", "comparison_users") else
                        pa.bool_() if c == "significant" else pa.float64())
               for c in OUTPUT_COLUMNS]
    return pa.schema(fields).empty_table()
