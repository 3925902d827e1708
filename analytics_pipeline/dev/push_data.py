"""Generated pushes and PostHog activity with known effects, for the tests, the demo and the
benchmark (development only).

A ``PushWorld`` is a few accounts' users (most with a PostHog distinct id, some known to
PostHog only by email, a few unknown to it), campaigns and automations sent on one day,
and every person's PostHog events over the days around it: a steady background rate
(optionally rising over time: a *trend* that affects everybody) plus, for pushed users of
a campaign with an effect, extra events in the hours after the push. Everything is drawn
with NumPy from one seed: no loop over events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from analytics_pipeline.core.sources import source_metadata
from analytics_pipeline.push.contract import src_push_notifications, src_users

HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(t: datetime) -> int:
    return int((t - _EPOCH) / timedelta(microseconds=1))


@dataclass
class Campaign:
    campaign_id: int | None  # None: an automation's pushes
    account_id: int
    users: int  # pushed users (the first ones of the account's pool)
    sent_at: datetime  # first send; sends spread over ``spread_minutes``
    extra_rate: float = 0.0  # extra events per hour in the 24 h after the push
    automation_id: str | None = None
    spread_minutes: int = 60
    offset: int = 0  # first user of the account's pool to push


@dataclass
class PushWorld:
    accounts: dict[int, int]  # account id → users
    campaigns: list[Campaign]
    base_rate: float = 0.2  # background events per user per hour
    trend_per_day: float = 0.0  # relative growth of everybody's rate per day
    email_only_share: float = 0.05  # users PostHog knows by email, not by distinct id
    unknown_share: float = 0.02  # users PostHog does not know at all
    days_around: int = 3  # events from this many days before the first push to after
    failed_share: float = 0.03  # pushes that fail (never delivered)
    unknown_ids: tuple[int, ...] | None = None  # exactly these users unknown to PostHog
    seed: int = 7
    users: pa.Table = field(init=False)
    pushes: pa.Table = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        ids, accounts = [], []
        next_id = 1
        for account, n in sorted(self.accounts.items()):
            ids.append(np.arange(next_id, next_id + n))
            accounts.append(np.full(n, account))
            next_id += n
        user_id = np.concatenate(ids).astype(np.int64)
        account_id = np.concatenate(accounts).astype(np.int64)
        kind = rng.random(len(user_id))
        self.unknown = (kind < self.unknown_share if self.unknown_ids is None
                        else np.isin(user_id, np.asarray(self.unknown_ids, np.int64)))
        self.email_only = (~self.unknown) & (kind < self.unknown_share + self.email_only_share)
        distinct = np.char.add("u-", user_id.astype(str))
        email = np.char.add(np.char.add("User.", user_id.astype(str)), "@Example.com")
        self.users = pa.table({
            "id": user_id, "account_id": account_id,
            "email": pa.array(email.tolist(), pa.string()),
            "posthog_distinct_id": pa.array(
                [None if e or u else d for d, e, u in zip(distinct.tolist(), self.email_only,
                                                         self.unknown, strict=True)],
                pa.string())})
        pool = {a: user_id[account_id == a] for a in self.accounts}
        rows = []
        push_id = 1
        for c in self.campaigns:
            users = pool[c.account_id][c.offset:c.offset + c.users]
            spread = rng.integers(0, c.spread_minutes * 60_000_000, len(users))
            sent = _us(c.sent_at) + spread
            delivered = sent + rng.integers(1_000_000, 30_000_000, len(users))
            status = np.where(rng.random(len(users)) < self.failed_share, "failed", "delivered")
            n = len(users)
            rows.append(pa.table({
                "id": np.arange(push_id, push_id + n, dtype=np.int64),
                "account_id": np.full(n, c.account_id, np.int64), "user_id": users,
                "campaign_id": pa.array([c.campaign_id] * n, pa.int64()),
                "automation_id": pa.array([c.automation_id] * n, pa.string()),
                "title": pa.array([f"push {c.campaign_id or c.automation_id}"] * n),
                "status": pa.array(status.tolist(), pa.string()),
                "sent_at": pa.array(sent, pa.timestamp("us")),
                "delivered_at": pa.array(np.where(status == "delivered", delivered, 0),
                                         pa.timestamp("us"), mask=status != "delivered"),
                "extra_rate": np.full(n, c.extra_rate)}))
            push_id += n
        self.pushes = pa.concat_tables(rows)

    # --- the application database --------------------------------------------------------

    def write_source(self, url: str) -> None:
        """``users`` and ``push_notifications`` into the application database at ``url``
        (created if need be; these two tables replaced)."""
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            for t in (src_push_notifications, src_users):
                t.drop(conn, checkfirst=True)
            source_metadata.create_all(conn, tables=[src_users, src_push_notifications])
            conn.execute(src_users.insert(), self.users.to_pylist())
            conn.execute(src_push_notifications.insert(),
                         self.pushes.drop_columns(["extra_rate"]).to_pylist())
        engine.dispose()

    # --- PostHog ----------------------------------------------------------------------------

    def persons(self) -> pa.Table:
        """PostHog persons: one per known user (``p-<id>``), identified by distinct id (and
        email) or by email only."""
        known = ~self.unknown
        ids = self.users["id"].to_numpy()[known]
        email = np.array(self.users["email"].to_pylist(), dtype=object)[known]
        only = self.email_only[known]
        return pa.table({
            "id": pa.array([f"p-{i}" for i in ids], pa.string()),
            "email": pa.array([e.lower() for e in email], pa.string()),
            "distinct_ids": pa.array([[f"anon-{i}"] if o else [f"u-{i}", f"anon-{i}"]
                                      for i, o in zip(ids, only, strict=True)],
                                     pa.list_(pa.string()))})

    def events(self) -> pa.Table:
        """Every known user's events from ``days_around`` days before the first push to as
        many after the last: Poisson counts per user-hour at the background rate (times the
        trend), plus each pushed user's extra rate in the 24 hours after their push;
        uniform within the hour. ``$pageview`` events (PostHog's own) are added too: they
        must not count."""
        rng = np.random.default_rng(self.seed + 1)
        first = min(c.sent_at for c in self.campaigns)
        last = max(c.sent_at for c in self.campaigns)
        start = _us(first.replace(minute=0, second=0, microsecond=0)) \
            - self.days_around * 24 * HOUR_US
        hours = int((_us(last) - start) // HOUR_US) + self.days_around * 24 + 1
        known = np.flatnonzero(~self.unknown)
        n_users = len(known)
        hour_start = start + np.arange(hours, dtype=np.int64) * HOUR_US
        days = (hour_start - start) / (24 * HOUR_US)
        rate = self.base_rate * (1 + self.trend_per_day * days)  # per hour, per user
        counts = rng.poisson(np.broadcast_to(rate, (n_users, hours)))
        # extra events after each delivered push
        p = self.pushes
        delivered = ~np.asarray(p["delivered_at"].is_null().to_numpy(zero_copy_only=False))
        ids = self.users["id"].to_numpy()[known]  # sorted
        users = p["user_id"].to_numpy()[delivered]
        anchors = p["delivered_at"].cast(pa.int64()).fill_null(0).to_numpy()[delivered]
        rates = p["extra_rate"].to_numpy()[delivered]
        at = np.minimum(np.searchsorted(ids, users), len(ids) - 1)
        keep = (ids[at] == users) & (rates > 0)
        k = rng.poisson(rates[keep] * 24)
        extra_user = np.repeat(at[keep], k)
        extra_ts = np.repeat(anchors[keep], k) + rng.integers(0, 24 * HOUR_US, int(k.sum()))
        user_index = np.repeat(np.repeat(np.arange(n_users), hours), counts.ravel())
        hour_index = np.repeat(np.tile(np.arange(hours), n_users), counts.ravel())
        del counts
        ts = hour_start[hour_index] + rng.integers(0, HOUR_US, len(hour_index))
        del hour_index
        user_index = np.concatenate([user_index, extra_user])
        ts = np.concatenate([ts, extra_ts])
        only = self.email_only[known]
        distinct = pa.array(np.where(only, np.char.add("anon-", ids.astype(str)),
                                     np.char.add("u-", ids.astype(str))).tolist(), pa.string())
        names = rng.choice(3, len(ts), p=[0.5, 0.45, 0.05])
        names[rng.random(len(ts)) < 0.2] = 3  # PostHog's own events, never counted
        kinds = pa.array(["app_opened", "item_viewed", "purchase", "$pageview"], pa.string())
        return pa.table({"event": kinds.take(pa.array(names)),
                         "distinct_id": distinct.take(pa.array(user_index)),
                         "timestamp": pa.array(ts, pa.timestamp("us"))})

    def load_posthog(self, sim) -> int:  # noqa: ANN001 - a dev PostHogSimulator
        """Persons and events into a PostHog simulator; returns the events loaded."""
        sim.add_persons(self.persons())
        return sim.add_events(self.events())
