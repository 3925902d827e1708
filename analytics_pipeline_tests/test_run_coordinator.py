"""The run coordinator of dagster.yaml: runs launched without the sensors' tags (UI and
daemon backfills, ``dagster job launch``) get ``analytics/timezone`` and ``analytics/group``,
so Dagster's queued-run daemon runs at most one of them per timezone."""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, instance_for_test
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from analytics_pipeline.core.partitions import TIMEZONES_PARTITIONS_NAME
from analytics_pipeline.core.run_coordinator import (
    GROUP_TAG,
    TIMEZONE_TAG,
    AnalyticsRunCoordinator,
    timezone_of_run,
)
from analytics_pipeline_tests.pipeline_fixtures import REPO

LOG = logging.getLogger("test_run_coordinator")
NY, KOLKATA = "America/New_York", "Asia/Kolkata"
SUPPORT = [AssetKey("raw_reporting_events"), AssetKey("reporting_rollups")]
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def test_timezone_of_run_tags():
    assert timezone_of_run({"dagster/partition/timezone": KOLKATA}) == (KOLKATA, None)
    assert timezone_of_run({RANGE_START: f"2026-03-01|{NY}", RANGE_END: f"2026-03-09|{NY}"}) \
        == (NY, None)
    tz, problem = timezone_of_run({RANGE_START: f"2026-03-01|{NY}",
                                   RANGE_END: f"2026-03-09|{KOLKATA}"})
    assert tz is None and "spans several timezones" in problem
    assert timezone_of_run({"dagster/partition": f"2026-03-01|{NY}"}) == (NY, None)
    assert timezone_of_run({RANGE_START: "2026-03-01", RANGE_END: "2026-03-09"}) == (None, None)
    assert timezone_of_run({}) == (None, None)


@contextmanager
def queued_instance() -> Iterator[tuple[DagsterInstance, object]]:
    """A temporary instance with the repo's run coordinator section, a launcher that only
    records launches, and a workspace serving the code location."""
    coordinator = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_coordinator"]
    overrides = {"run_coordinator": coordinator,
                 "run_launcher": {"module": "dagster._core.test_utils",
                                  "class": "MockedRunLauncher"}}
    target = ModuleTarget(module_name="analytics_pipeline.definitions", attribute=None,
                          working_directory=str(REPO), location_name="analytics_pipeline")
    with instance_for_test(overrides=overrides) as instance, \
            create_test_daemon_workspace_context(target, instance) as ctx:
        assert isinstance(instance.run_coordinator, AnalyticsRunCoordinator)
        instance.add_dynamic_partitions(TIMEZONES_PARTITIONS_NAME, [NY, KOLKATA])
        yield instance, ctx


def backfill(instance: DagsterInstance, ctx, backfill_id: str, keys: list[str],
             n_runs: int) -> list:
    """Launch a backfill as the UI does and run the backfill daemon until it submitted
    ``n_runs`` runs."""
    instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=ctx.create_request_context().asset_graph,
        partition_names=keys, asset_selection=SUPPORT, backfill_timestamp=time.time(),
        tags={}, dynamic_partitions_store=instance, all_partitions=False, title=None,
        description=None, run_config=None))
    deadline = time.monotonic() + 120
    while True:
        runs = [r for r in instance.get_runs() if r.tags.get("dagster/backfill") == backfill_id]
        if len(runs) >= n_runs:
            return runs
        assert time.monotonic() < deadline, "the backfill daemon submitted no runs"
        list(execute_backfill_iteration(ctx, LOG))


def test_backfill_runs_are_tagged_and_queue_one_per_timezone():
    with queued_instance() as (instance, ctx):
        # a New York run in progress (a sensor run, or an earlier backfill)
        busy = create_run_for_test(instance, job_name="support_reporting",
                                   status=DagsterRunStatus.STARTED, tags={TIMEZONE_TAG: NY})
        days = ["2026-03-06", "2026-03-07", "2026-03-08"]
        runs = backfill(instance, ctx, "march", [f"{d}|{tz}" for d in days for tz in (NY, KOLKATA)],
                        n_runs=2)
        assert len(runs) == 2  # one ranged run per timezone (single-run backfill policy)
        by_tz = {r.tags[TIMEZONE_TAG]: r for r in runs}
        assert set(by_tz) == {NY, KOLKATA}
        for tz, run in by_tz.items():
            assert run.tags[RANGE_START] == f"{days[0]}|{tz}"
            assert run.tags[RANGE_END] == f"{days[-1]}|{tz}"
            assert run.tags[GROUP_TAG] == "support_desk"
            assert run.status == DagsterRunStatus.QUEUED

        list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(ctx))
        assert instance.get_run_by_id(by_tz[KOLKATA].run_id).status == DagsterRunStatus.STARTING
        assert instance.get_run_by_id(by_tz[NY].run_id).status == DagsterRunStatus.QUEUED

        # New York's slot frees: its queued run goes next
        instance.report_run_canceled(instance.get_run_by_id(busy.run_id))
        list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(ctx))
        assert instance.get_run_by_id(by_tz[NY].run_id).status == DagsterRunStatus.STARTING


def test_single_partition_run_is_tagged():
    with queued_instance() as (instance, ctx):
        [run] = backfill(instance, ctx, "one", [f"2026-03-06|{KOLKATA}"], n_runs=1)
        assert run.tags[TIMEZONE_TAG] == KOLKATA
        assert run.tags[GROUP_TAG] == "support_desk"


def test_run_across_timezones_gets_no_timezone_tag_and_says_so():
    """A backfill of one date over two timezones: Dagster makes one ranged run of both."""
    with queued_instance() as (instance, ctx):
        [run] = backfill(instance, ctx, "one-day", [f"2026-03-06|{tz}" for tz in (NY, KOLKATA)],
                         n_runs=1)
        assert {run.tags[RANGE_START], run.tags[RANGE_END]} == {f"2026-03-06|{NY}",
                                                                 f"2026-03-06|{KOLKATA}"}
        assert run.status == DagsterRunStatus.QUEUED
        assert TIMEZONE_TAG not in run.tags
        assert run.tags[GROUP_TAG] == "support_desk"
        # in the run's event log, where the operator looks
        assert any("spans several timezones" in (e.message or "")
                   for e in instance.all_logs(run.run_id))


@pytest.mark.parametrize("job_name, group", [("refresh_accounts", "accounts"),
                                             ("support_reporting", "support_desk")])
def test_job_runs_get_their_assets_group(job_name, group):
    """``dagster job launch``/a sensor: a job run without an asset selection."""
    with queued_instance() as (instance, ctx):
        request = ctx.create_request_context()
        remote = request.get_code_location("analytics_pipeline").get_repository(
            "__repository__").get_full_job(job_name)
        run = create_run_for_test(instance, job_name=job_name,
                                  remote_job_origin=remote.get_remote_origin(),
                                  job_code_origin=remote.get_python_origin())
        assert instance.submit_run(run.run_id, request).tags[GROUP_TAG] == group
