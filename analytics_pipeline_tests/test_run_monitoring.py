"""Run monitoring with the repo's dagster.yaml (PostgreSQL storage, QueuedRunCoordinator):
a run whose worker died, or that never started, is failed by one iteration of Dagster's
monitoring daemon logic, so its timezone's queue moves on."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEvent, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.events import EngineEventData
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.test_utils import create_run_for_test
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.monitoring import run_monitoring
from sqlalchemy import make_url

from analytics_pipeline.run_launcher import LocalProcessRunLauncher, worker_alive

REPO = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("test_run_monitoring")
LOCAL_GRPC = {GRPC_INFO_TAG: json.dumps({"host": "localhost", "port": 4266})}


@contextmanager
def repo_instance(pg_database: str, home: Path, monkeypatch) -> Iterator[DagsterInstance]:
    """An instance configured by the repo's dagster.yaml, stored in ``pg_database``."""
    u = make_url(pg_database)
    monkeypatch.setenv("DAGSTER_PG_HOST", u.host)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(u.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", u.database)
    monkeypatch.setenv("DAGSTER_PG_USER", u.username)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-needed-with-trust-auth")
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    instance = DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


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
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_monitoring"]
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
