"""Run monitoring with the repo's deploy/dagster.yaml (PostgreSQL storage, queued runs):
a run whose worker died, or that never started, is failed by one iteration of Dagster's
monitoring daemon logic, so its timezone's queue moves on."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEvent, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.events import EngineEventData
from dagster._core.storage.tags import GRPC_INFO_TAG, RUN_FAILURE_REASON_TAG
from dagster._core.test_utils import create_run_for_test
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry
from dagster._daemon.monitoring import run_monitoring

from analytics_pipeline.core.run_launcher import (
    LocalProcessRunLauncher,
    process_started_at,
    worker_alive,
)
from analytics_pipeline_tests.pipeline_fixtures import REPO, repo_instance

LOG = logging.getLogger("test_run_monitoring")
LOCAL_GRPC = {GRPC_INFO_TAG: json.dumps({"host": "localhost", "port": 4266})}


def monitor_once(instance: DagsterInstance) -> None:
    """One iteration of the monitoring daemon (what ``dagster-daemon run`` does every
    ``poll_interval_seconds``); errors it captures are raised here."""
    with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as ctx:
        errors = [e for e in run_monitoring.execute_run_monitoring_iteration(ctx, LOG) if e]
    assert not errors, errors


def report(instance: DagsterInstance, run_id: str, event_type: DagsterEventType) -> None:
    instance.report_dagster_event(DagsterEvent(event_type.value, job_name="hold"), run_id)


def status(instance: DagsterInstance, run_id: str) -> DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_repo_instance_runs_the_monitoring_daemon(pg_database, tmp_path, monkeypatch):
    settings = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["run_monitoring"]
    with repo_instance(pg_database, tmp_path / "home", monkeypatch) as instance:
        assert instance.run_monitoring_enabled
        assert "MONITORING" in instance.get_required_daemon_types()
        assert isinstance(instance.run_launcher, LocalProcessRunLauncher)
        assert instance.run_launcher.supports_check_run_worker_health
        # the launcher cannot resume a run: runs whose worker died are failed, not resumed
        assert not instance.run_launcher.supports_resume_run
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_start_timeout_seconds == settings["start_timeout_seconds"]
        assert instance.run_monitoring_cancel_timeout_seconds == \
            settings["cancel_timeout_seconds"]
        assert instance.run_monitoring_poll_interval_seconds == settings["poll_interval_seconds"]


def test_started_run_whose_worker_died_is_failed(pg_database, tmp_path, monkeypatch):
    with repo_instance(pg_database, tmp_path / "home", monkeypatch) as instance:
        run = create_run_for_test(instance, job_name="hold", status=DagsterRunStatus.NOT_STARTED,
                                  tags={**LOCAL_GRPC, "analytics/timezone": "Asia/Kolkata"})
        report(instance, run.run_id, DagsterEventType.RUN_STARTING)
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        try:
            # what the run worker logs first (dagster/_grpc/impl.py), then RUN_START
            instance.report_engine_event(
                f"Started process for run (pid: {worker.pid}).", run,
                EngineEventData.in_process(worker.pid))
            report(instance, run.run_id, DagsterEventType.RUN_START)
            assert status(instance, run.run_id) == DagsterRunStatus.STARTED

            monitor_once(instance)  # a live worker is left alone
            assert status(instance, run.run_id) == DagsterRunStatus.STARTED
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        monitor_once(instance)
        assert status(instance, run.run_id) == DagsterRunStatus.FAILURE
        failure = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)[-1]
        assert f"run worker process {worker.pid} is gone" in failure.message
        # the repo's run_retries re-executes it: the requested partitions still run
        assert should_retry(instance.get_run_by_id(run.run_id), instance)


def test_step_failures_are_not_retried(pg_database, tmp_path, monkeypatch):
    """A run whose step failed (bad code, a landing to re-extract) is not retried in a loop:
    only runs that failed outside their steps are."""
    with repo_instance(pg_database, tmp_path / "home", monkeypatch) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure
        run = create_run_for_test(instance, job_name="hold", status=DagsterRunStatus.STARTED,
                                  tags={RUN_FAILURE_REASON_TAG: "STEP_FAILURE"})
        instance.report_run_failed(instance.get_run_by_id(run.run_id), "a step failed")
        assert not should_retry(instance.get_run_by_id(run.run_id), instance)


def test_run_stuck_in_starting_is_failed_after_the_start_timeout(
    pg_database, tmp_path, monkeypatch
):
    with repo_instance(pg_database, tmp_path / "home", monkeypatch) as instance:
        assert "MONITORING" in instance.get_required_daemon_types()  # the daemon runs this
        # the daemon dequeued the run (STARTING) and died before a worker started
        run = create_run_for_test(instance, job_name="hold", status=DagsterRunStatus.NOT_STARTED)
        report(instance, run.run_id, DagsterEventType.RUN_STARTING)
        launched = instance.get_run_stats(run.run_id).launch_time
        timeout = instance.run_monitoring_start_timeout_seconds
        # the daemon's clock, moved instead of waiting
        monkeypatch.setattr(run_monitoring, "get_current_timestamp", lambda: launched + timeout - 1)
        monitor_once(instance)
        assert status(instance, run.run_id) == DagsterRunStatus.STARTING
        monkeypatch.setattr(run_monitoring, "get_current_timestamp", lambda: launched + timeout + 1)
        monitor_once(instance)
        assert status(instance, run.run_id) == DagsterRunStatus.FAILURE


def test_worker_alive_rejects_a_recycled_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert worker_alive(proc.pid, time.time())
        if not Path("/proc/self/stat").exists():
            pytest.skip("process start times need /proc")
        # the pid was "logged" a minute before this process existed: a different process
        assert not worker_alive(proc.pid, time.time() - 60)
    finally:
        proc.kill()
        proc.wait()
    assert not worker_alive(proc.pid, time.time())


def wait_for(predicate, what: str, seconds: float = 180) -> None:
    """Poll ``predicate`` (a deadline against hanging, not a speed assertion)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def worker_pid(instance: DagsterInstance, run_id: str) -> int:
    started = [e for e in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
               if (e.message or "").startswith("Started process for run")]
    return int(started[-1].dagster_event.engine_event_data.metadata["pid"].value)


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def test_queued_runs_survive_a_daemon_restart_and_a_killed_worker_frees_its_timezone(
    pg_database, tmp_path, monkeypatch
):
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    from analytics_pipeline_tests.monitoring_location import hold_job

    target = ModuleTarget(module_name="analytics_pipeline_tests.monitoring_location",
                          attribute=None, working_directory=str(REPO),
                          location_name="monitoring_test")
    tz_tag = {"analytics/timezone": "America/New_York"}
    home = tmp_path / "home"

    def submit(instance: DagsterInstance, ctx) -> str:
        request = ctx.create_request_context()
        remote = request.get_code_location("monitoring_test").get_repository(
            "__repository__").get_full_job("hold_job")
        run = instance.create_run_for_job(
            job_def=hold_job, remote_job_origin=remote.get_remote_origin(),
            job_code_origin=remote.get_python_origin(), tags=tz_tag)
        return instance.submit_run(run.run_id, request).run_id

    def dequeue(ctx) -> None:
        list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(ctx))

    # 1. the webserver queues a run; then the daemon/webserver tree goes away
    with repo_instance(pg_database, home, monkeypatch) as instance, \
            create_test_daemon_workspace_context(target, instance) as ctx:
        first = submit(instance, ctx)
        assert status(instance, first) == DagsterRunStatus.QUEUED

    # 2. a restarted daemon's first dequeue iteration launches the queued run; while it runs,
    #    a second run of its timezone waits; then the whole tree is killed: the run worker
    #    and the code server that started it (which alone could have noticed the worker die)
    doomed: list[int] = []
    with repo_instance(pg_database, home, monkeypatch) as instance:
        with create_test_daemon_workspace_context(target, instance) as ctx:
            try:
                dequeue(ctx)
                wait_for(lambda: status(instance, first) == DagsterRunStatus.STARTED, "start")
                pid = worker_pid(instance, first)
                doomed += [pid, parent_pid(pid)]
                second = submit(instance, ctx)
                dequeue(ctx)
                assert status(instance, second) == DagsterRunStatus.QUEUED  # one per timezone
                monitor_once(instance)
                assert status(instance, first) == DagsterRunStatus.STARTED  # alive: left alone
            finally:
                for p in doomed:
                    os.kill(p, signal.SIGKILL)
        wait_for(lambda: not worker_alive(doomed[0], time.time()), "the worker to die")

    # 3. the next daemon: the dead run still holds the timezone until monitoring fails it
    with repo_instance(pg_database, home, monkeypatch) as instance:
        with create_test_daemon_workspace_context(target, instance) as ctx:
            dequeue(ctx)
            assert status(instance, second) == DagsterRunStatus.QUEUED
            assert status(instance, first) == DagsterRunStatus.STARTED
            monitor_once(instance)
            assert status(instance, first) == DagsterRunStatus.FAILURE
            dequeue(ctx)  # the timezone's slot is free again
            assert status(instance, second) != DagsterRunStatus.QUEUED
            try:
                wait_for(lambda: status(instance, second) == DagsterRunStatus.STARTED, "start")
                server = parent_pid(worker_pid(instance, second))
            finally:
                instance.run_launcher.terminate(second)
                wait_for(lambda: instance.get_run_by_id(second).is_finished, "the run to stop")
        # the code server finishes its bookkeeping in the database before that is dropped
        wait_for(lambda: process_started_at(server) is None, "the code server to exit")
