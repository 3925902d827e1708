"""The demo's pushes and PostHog activity (development only): two accounts' users, a
campaign with a real effect, one without, an automation, and a local PostHog serving the
users' activity around them; then the impact as a user reads it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from analytics_pipeline.core.partitions import zone
from analytics_pipeline.dev.push_data import Campaign, PushWorld

# account id → (timezone, users); the demo accounts of the same ids
PUSH_ACCOUNTS = {1: ("America/New_York", 1500), 2: ("Asia/Kolkata", 1000)}
AUTOMATION_ID = "welcome-series"


def _local(day: date, hour: int, tz: str) -> datetime:
    return datetime.combine(day, time(hour), zone(tz))


def push_world(day: date) -> PushWorld:
    """The demo's pushes, all sent on local ``day``: account 1 (New York) gets campaign 101
    (with an effect: +0.3 events an hour for a day), campaign 102 (none) and the welcome
    automation (an effect); account 2 (Kolkata) gets campaign 201 (an effect)."""
    ny, kol = PUSH_ACCOUNTS[1][0], PUSH_ACCOUNTS[2][0]
    return PushWorld(
        {a: n for a, (_, n) in PUSH_ACCOUNTS.items()},
        [Campaign(101, 1, 300, _local(day, 10, ny), extra_rate=0.3, spread_minutes=45),
         Campaign(102, 1, 300, _local(day, 15, ny), offset=300, spread_minutes=45),
         Campaign(None, 1, 150, _local(day, 8, ny), automation_id=AUTOMATION_ID,
                  extra_rate=0.2, offset=600, spread_minutes=600),
         Campaign(201, 2, 400, _local(day, 11, kol), extra_rate=0.25, spread_minutes=30)],
        base_rate=0.15, trend_per_day=0.02)


def write_automations(directory: Path) -> Path:
    """The automation's definition file, as the push system keeps it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{AUTOMATION_ID}.yaml"
    path.write_text(f"id: {AUTOMATION_ID}\nname: Welcome series (day 1)\n"
                    "trigger: signup\ndelay_minutes: 30\nplatforms: [ios, android]\n")
    return directory


@contextmanager
def posthog_for(world: PushWorld) -> Iterator[dict[str, str]]:
    """A local PostHog holding the world's persons and events; yields the settings that
    point the pipeline at it (only for this process)."""
    from analytics_pipeline.dev.posthog_simulator import PostHogSimulator

    sim = PostHogSimulator(api_key="phx_demo_key", rate_limit_per_hour=10_000)
    try:
        world.load_posthog(sim)
        yield {"POSTHOG_HOST": sim.start(), "POSTHOG_PROJECT_ID": str(sim.project_id),
               "POSTHOG_PERSONAL_API_KEY": sim.api_key}
    finally:
        sim.close()


def push_dashboard(engine: Engine, store, day: date) -> list[str]:  # noqa: ANN001
    """The impact of the day's campaigns and automation, per account, as printed lines."""
    from analytics_pipeline.push.read import push_impact

    lines = ["", f"push impact, sends of {day} (events per user, 24 h before vs after each "
             "push; DiD: against unpushed users)",
             f"{'account':>7} {'campaign / automation':<26} {'users':>5} {'mapped':>6} "
             f"{'before':>6} {'after':>6} {'lift':>7} {'lift 95% CI':>15} {'DiD':>6} "
             f"{'DiD 95% CI':>13} signif."]

    def f(v, fmt="{:.2f}"):  # noqa: ANN001, ANN202
        return "-" if v is None or v != v else fmt.format(v)

    for account in PUSH_ACCOUNTS:
        df = push_impact(engine, store, account, day, day, window_hours=24)
        for r in df.to_dict("records"):
            ci = f"{f(r['lift_ci_low'], '{:+.0%}')}..{f(r['lift_ci_high'], '{:+.0%}')}"
            did = f"{f(r['did_ci_low'])}..{f(r['did_ci_high'])}"
            sig = r["significant"]
            lines.append(
                f"{account:>7} {r['label'][:26]:<26} {int(r['users']):>5} "
                f"{f(r['mapped_rate'], '{:.0%}'):>6} {f(r['mean_before']):>6} "
                f"{f(r['mean_after']):>6} {f(r['lift'], '{:+.0%}'):>7} {ci:>15} "
                f"{f(r['did']):>6} {did:>13} "
                f"{'-' if sig is None or sig != sig else ('yes' if sig else 'no')}")
    return lines


def push_day(last: date) -> date:
    """The demo's push day: two days before the last closed one, so that every push's
    24-hour after-window has closed in every timezone."""
    return last - timedelta(days=2)
