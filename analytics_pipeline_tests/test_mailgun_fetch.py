"""Polling Mailgun into landing: cursors, settling pass, crash safety, quarantine, sensors."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from dagster import (
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from dagster._core.test_utils import create_run_for_test

from analytics_pipeline.core import landing as landing_mod
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.core.resources import Landing, Warehouse
from analytics_pipeline.email import sensors
from analytics_pipeline.email.assets import mailgun_event_assets
from analytics_pipeline.email.resources import Mailgun
from analytics_pipeline_tests.mailgun_fixtures import (
    AUTOMATION,
    NEWSLETTER,
    SETTLE,
    T0,
    Clock,
    add,
    fetch,
    landed,
)


def test_fresh_pass_lands_and_advances_cursor(sim, engine, landing_root, clock):
    for i in range(5):
        add(sim, i, T0 - 600 + i)
    add(sim, 99, T0 - 30)  # inside the lag: the next run's
    r = fetch(sim, engine, landing_root, clock)
    assert r.fetched == 5
    assert r.buckets == sorted({int(T0 - 600 + i) // 900 for i in range(5)})
    assert wh.get_cursor(engine, NEWSLETTER.cursor_name) == (T0 - 60, T0 - SETTLE)
    assert sorted(landed(landing_root)["event_id"].to_pylist()) == [
        f"ev-newsletter-{i}" for i in range(5)]


def test_overlapping_and_duplicate_fetches_count_once(sim, engine, landing_root, clock):
    for i in range(400):
        add(sim, i, T0 - 3000 + i)
    fetch(sim, engine, landing_root, clock)
    clock.t += 10 * 60
    fetch(sim, engine, landing_root, clock)  # the settling pass re-reads the same events
    # a crashed cursor write: the same window is fetched again from scratch
    with engine.begin() as c:
        c.execute(wh.provider_cursors.delete())
    fetch(sim, engine, landing_root, clock)
    t = landed(landing_root)
    assert t.num_rows == 400 and len(set(t["event_id"].to_pylist())) == 400


def test_settling_pass_stores_only_new_events(sim, engine, landing_root, clock):
    import pyarrow.parquet as pq

    for i in range(50):
        add(sim, i, T0 - 3000 + i)
    fetch(sim, engine, landing_root, clock)
    clock.t += 3600  # the whole first hour is now settled and re-read
    add(sim, 99, T0 - 1500, indexed_at=T0 + 60)  # indexed 26 minutes late: fresh pass missed it
    r = fetch(sim, engine, landing_root, clock)
    assert r.fetched == 1
    day = datetime.fromtimestamp(T0, timezone.utc).date()
    folder = ProviderEventLog(landing_root, NEWSLETTER.stream).date_dir(day)
    import pathlib

    stored = sum(pq.read_metadata(f).num_rows for f in pathlib.Path(folder).glob("*.parquet"))
    assert stored == 51


def test_late_indexed_event_is_found_by_the_settling_pass(sim, engine, landing_root, clock):
    add(sim, 1, T0 - 300)
    add(sim, 2, T0 - 290, indexed_at=T0 + 600)  # indexed ten minutes late
    fetch(sim, engine, landing_root, clock)
    assert landed(landing_root)["event_id"].to_pylist() == ["ev-newsletter-1"]
    clock.t = T0 + 11 * 60
    fetch(sim, engine, landing_root, clock)  # fresh pass has moved on: still missing
    assert landed(landing_root).num_rows == 1
    clock.t = T0 + SETTLE + 60  # now the window of event 2 is settled and re-read
    r = fetch(sim, engine, landing_root, clock)
    assert [w[0] for w in r.windows] == ["fresh", "settling"]
    assert sorted(landed(landing_root)["event_id"].to_pylist()) == [
        "ev-newsletter-1", "ev-newsletter-2"]


def test_crash_after_fetching_before_landing_loses_nothing(
        sim, engine, landing_root, clock, monkeypatch):
    for i in range(3):
        add(sim, i, T0 - 500 + i)
    real_append = landing_mod.ProviderEventLog.append

    def crash(self, *a, **k):
        raise OSError("killed mid-write")

    monkeypatch.setattr(landing_mod.ProviderEventLog, "append", crash)
    with pytest.raises(OSError):
        fetch(sim, engine, landing_root, clock)
    assert wh.get_cursor(engine, NEWSLETTER.cursor_name) is None  # nothing advanced
    monkeypatch.setattr(landing_mod.ProviderEventLog, "append", real_append)
    clock.t += 120
    fetch(sim, engine, landing_root, clock)
    assert landed(landing_root).num_rows == 3


def test_malformed_item_is_quarantined_while_the_page_lands(sim, engine, landing_root, clock):
    add(sim, 1, T0 - 400)
    sim.add({"id": "broken-1", "event": "opened", "timestamp": T0 - 399, "recipient": "a@x",
             "tags": ["newsletter"], "message": {"headers": {}}})
    add(sim, 2, T0 - 398)
    r = fetch(sim, engine, landing_root, clock)
    assert r.malformed == 1
    assert sorted(landed(landing_root)["event_id"].to_pylist()) == [
        "ev-newsletter-1", "ev-newsletter-2"]
    with engine.connect() as c:
        q = c.execute(sa.select(wh.quarantine.c.source, wh.quarantine.c.event_id,
                                wh.quarantine.c.reason)).all()
    assert q == [("mailgun:newsletter", "broken-1",
                  "malformed_item: missing message.headers.message-id")]
    fetch(sim, engine, landing_root, Clock(clock.t + 3600))  # seen again: still one row
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(wh.quarantine)).scalar() == 1


def test_newsletter_and_automation_cursors_are_independent(sim, engine, landing_root, clock):
    add(sim, 1, T0 - 400, tag="newsletter")
    add(sim, 2, T0 - 400, tag="automation")
    fetch(sim, engine, landing_root, clock, NEWSLETTER)
    assert wh.get_cursor(engine, AUTOMATION.cursor_name) is None
    assert landed(landing_root, AUTOMATION).num_rows == 0
    clock.t += 600
    fetch(sim, engine, landing_root, clock, AUTOMATION)
    assert landed(landing_root, AUTOMATION)["event_id"].to_pylist() == ["ev-automation-2"]
    assert landed(landing_root, NEWSLETTER)["event_id"].to_pylist() == ["ev-newsletter-1"]
    assert wh.get_cursor(engine, NEWSLETTER.cursor_name)[0] == T0 - 60
    assert wh.get_cursor(engine, AUTOMATION.cursor_name)[0] == T0 + 540


# --- Dagster level ---------------------------------------------------------------------------


def resources(sim, warehouse_url, landing_root, **mailgun):
    settings = {"api_base": sim.base_url, "domain": sim.domain, "api_key": sim.api_key,
                **mailgun}
    return {
        "mailgun": Mailgun(**settings),
        "warehouse": Warehouse(url=warehouse_url),
        "landing": Landing(uri=landing_root),
    }


def test_fetch_asset_materializes(sim, warehouse_url, landing_root):
    import time

    now = time.time()
    sim.clock = time.time
    add(sim, 1, now - 600)
    with instance_for_test() as instance:
        result = materialize([mailgun_event_assets["newsletter"]], instance=instance,
                             resources=resources(sim, warehouse_url, landing_root))
        assert result.success
        meta = result.get_asset_materialization_events()[0].materialization.metadata
        assert meta["events_fetched"].value == 1
        assert meta["fresh_events_stored"].value == 1 and meta["fresh_items_read"].value == 1
        assert meta["reconciliation"].value == "ran"  # the stream's first run
        assert meta["reconciliation_events_stored"].value == 0
        assert sim.api_key not in str(meta)


def evaluate(sensor_def, instance, sim, warehouse_url, landing_root, **mailgun):
    ctx = build_sensor_context(instance=instance,
                               resources=resources(sim, warehouse_url, landing_root, **mailgun))
    return sensor_def(ctx)


def test_sensor_launches_runs_and_waits_for_the_one_in_flight(
        sim, warehouse_url, landing_root, monkeypatch):
    sensor_def = sensors.mailgun_sensors["newsletter"]
    monkeypatch.setattr(sensors, "_utcnow", lambda: datetime.fromtimestamp(T0, timezone.utc))
    with instance_for_test() as instance:
        req = evaluate(sensor_def, instance, sim, warehouse_url, landing_root)
        assert isinstance(req, RunRequest)
        assert req.run_key == f"mailgun:newsletter:{int(T0 - 60)}"
        cfg = req.run_config["ops"]["mailgun_newsletter_events"]["config"]
        assert cfg["until"] == T0 - 60
        create_run_for_test(instance, job_name="mailgun_newsletter_fetch",
                            status=DagsterRunStatus.STARTED)
        assert isinstance(evaluate(sensor_def, instance, sim, warehouse_url, landing_root),
                          SkipReason)
        # the other pipeline is not blocked by it
        other = sensors.mailgun_sensors["automation"]
        assert isinstance(evaluate(other, instance, sim, warehouse_url, landing_root),
                          RunRequest)


def test_sensor_skips_when_not_configured_or_up_to_date(
        sim, warehouse_url, landing_root, monkeypatch):
    sensor_def = sensors.mailgun_sensors["newsletter"]
    monkeypatch.setattr(sensors, "_utcnow", lambda: datetime.fromtimestamp(T0, timezone.utc))
    with instance_for_test() as instance:
        skip = evaluate(sensor_def, instance, sim, warehouse_url, landing_root, domain="")
        assert isinstance(skip, SkipReason) and "not configured" in skip.skip_message
        e = wh.make_engine(warehouse_url)
        wh.ensure_schema(e)
        # the durable cursor (kept by pipeline name, not sensor name) is up to date
        wh.advance_cursor(e, NEWSLETTER.cursor_name, T0 - 60, T0 - SETTLE)
        e.dispose()
        assert isinstance(evaluate(sensor_def, instance, sim, warehouse_url, landing_root),
                          SkipReason)
        renamed = sensors.mailgun_sensor(NEWSLETTER, sensors.mailgun_jobs["newsletter"])
        assert isinstance(evaluate(renamed, instance, sim, warehouse_url, landing_root),
                          SkipReason)


def test_malformed_item_seen_by_both_passes_is_counted_once(sim, engine, landing_root, clock):
    """The first fetch's fresh and settling passes both read [start, now - settle): a
    malformed item there (with an id, or without one: content hash) is reported as often
    as it is stored, once."""
    add(sim, 1, T0 - 2100)
    sim.add({"id": "broken-1", "event": "opened", "timestamp": T0 - 2000, "recipient": "a@x",
             "tags": ["newsletter"], "message": {"headers": {}}})
    sim.add({"event": "opened", "timestamp": T0 - 1990, "recipient": "b@x",
             "tags": ["newsletter"], "message": {"headers": {"message-id": "<m@mg>"}}})
    r = fetch(sim, engine, landing_root, clock)
    assert [w[0] for w in r.windows][:2] == ["fresh", "settling"]
    with engine.connect() as c:
        stored = c.execute(sa.select(sa.func.count()).select_from(wh.quarantine)).scalar()
    assert stored == 2
    assert r.malformed == stored


def test_events_indexed_later_than_the_settling_window_land_by_reconciliation(
        sim, engine, landing_root, clock):
    """Polled every 5 minutes, the fresh and settling passes miss events that Mailgun
    indexes more than ~30 minutes late; the 6-hourly reconciliation pass re-reads the
    retention window, stores exactly the missed ones and reports how late they were."""
    stamps = {}
    for i in range(20):  # indexed 31 minutes late
        stamps[i] = T0 + 60 + i * 20
        add(sim, i, stamps[i], indexed_at=stamps[i] + 31 * 60)
    for i in range(20, 80):  # indexed 35 to 90 minutes late
        stamps[i] = T0 + 60 + i * 20
        add(sim, i, stamps[i], indexed_at=stamps[i] + (35 + (i - 20) * 55 / 59) * 60)
    for i in range(80, 100):  # on time
        stamps[i] = T0 + 60 + i * 20
        add(sim, i, stamps[i])
    first = fetch(sim, engine, landing_root, clock)
    assert first.reconciled  # the first run reconciles what its settling pass does not read
    for _ in range(36):  # three hours of polling
        clock.t += 300
        r = fetch(sim, engine, landing_root, clock)
        assert not r.reconciled and "reconciliation" not in [w[0] for w in r.windows]
    before = set(landed(landing_root)["event_id"].to_pylist())
    late = {f"ev-newsletter-{i}" for i in range(20, 80)}
    assert not before & late  # the 35-90 minutes late events were all missed
    missed = {f"ev-newsletter-{i}" for i in range(100)} - before
    clock.t = T0 + 6 * 3600 + 60  # six hours after the last reconciliation
    r = fetch(sim, engine, landing_root, clock)
    assert r.reconciled and [w[0] for w in r.windows] == ["fresh", "settling", "reconciliation"]
    after = landed(landing_root)["event_id"].to_pylist()
    assert len(after) == 100 and set(after) == {f"ev-newsletter-{i}" for i in range(100)}
    rec = r.passes["reconciliation"]
    assert rec.stored == len(missed) and rec.items_read == 100
    oldest = min(stamps[int(e.rsplit("-", 1)[1])] for e in missed)
    assert rec.max_lateness_seconds == pytest.approx(clock.t - oldest)
    assert r.passes["settling"].stored == 0 and r.passes["fresh"].stored == 0
    assert r.fetched == len(missed)
    # the last run is kept in the warehouse: a run ten minutes later does not reconcile
    clock.t += 600
    assert not fetch(sim, engine, landing_root, clock).reconciled
    assert wh.get_stream_state(engine, NEWSLETTER.cursor_name).reconciled_at == T0 + 6 * 3600 + 60


def fetch_run(instance, status):
    """A fetch run of the newsletter pipeline in ``status`` (a queued run needs an origin)."""
    from dagster._core.remote_origin import (
        InProcessCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    origin = RemoteJobOrigin(RemoteRepositoryOrigin(InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="analytics_pipeline.definitions")), "__repository__"),
        "mailgun_newsletter_fetch")
    return create_run_for_test(instance, job_name="mailgun_newsletter_fetch", status=status,
                               remote_job_origin=origin)


@pytest.mark.parametrize("status", [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED,
                                    DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING])
def test_sensor_counts_queued_and_starting_fetches_as_in_flight(
        sim, warehouse_url, landing_root, monkeypatch, status):
    """Under the queued run coordinator a fetch waits QUEUED: the next tick must not queue
    another one behind it."""
    sensor_def = sensors.mailgun_sensors["newsletter"]
    monkeypatch.setattr(sensors, "_utcnow", lambda: datetime.now(timezone.utc))
    with instance_for_test() as instance:
        run = fetch_run(instance, status)
        skip = evaluate(sensor_def, instance, sim, warehouse_url, landing_root)
        assert isinstance(skip, SkipReason) and run.run_id in skip.skip_message


def test_sensor_stops_waiting_for_a_fetch_in_flight_too_long(
        sim, warehouse_url, landing_root, monkeypatch):
    """A fetch killed with kill -9 stays STARTED forever: past MAILGUN_FETCH_STALE_MINUTES it
    no longer blocks the stream (reported in the new request's tags and the log), while a
    queued one still does, whatever its age."""
    sensor_def = sensors.mailgun_sensors["newsletter"]
    with instance_for_test() as instance:
        dead = create_run_for_test(instance, job_name="mailgun_newsletter_fetch",
                                   status=DagsterRunStatus.STARTED)
        later = datetime.now(timezone.utc) + timedelta(minutes=59)
        monkeypatch.setattr(sensors, "_utcnow", lambda: later)
        skip = evaluate(sensor_def, instance, sim, warehouse_url, landing_root)
        assert isinstance(skip, SkipReason) and dead.run_id in skip.skip_message
        later = datetime.now(timezone.utc) + timedelta(minutes=61)
        req = evaluate(sensor_def, instance, sim, warehouse_url, landing_root)
        assert isinstance(req, RunRequest)
        assert req.tags["analytics/stale_fetch_runs"] == dead.run_id
        # a shorter limit from the environment's setting
        later = datetime.now(timezone.utc) + timedelta(minutes=11)
        assert isinstance(evaluate(sensor_def, instance, sim, warehouse_url, landing_root,
                                   fetch_stale_minutes=10), RunRequest)
        queued = fetch_run(instance, DagsterRunStatus.QUEUED)
        later = datetime.now(timezone.utc) + timedelta(hours=5)
        skip = evaluate(sensor_def, instance, sim, warehouse_url, landing_root)
        assert isinstance(skip, SkipReason) and queued.run_id in skip.skip_message


def test_a_fetch_journals_the_files_it_appended_for_the_state_refresh(
        sim, engine, landing_root, clock):
    """The incremental state refresh folds exactly the journaled files: every file a fetch
    appends is journaled before the cursor moves, and nothing else."""
    import sqlalchemy as sa

    from analytics_pipeline.email import state

    for i in range(30):
        add(sim, i, T0 - 90_000 + i * 3000)  # spread over two UTC dates
    fetch(sim, engine, landing_root, clock)
    log = ProviderEventLog(landing_root, NEWSLETTER.stream)
    with engine.connect() as c:
        journaled = sorted(c.execute(sa.select(state.email_log_files.c.path).where(
            state.email_log_files.c.kind == "newsletter")).scalars())
    assert journaled == state.list_log_files(log) and len(journaled) >= 2
