"""A run launcher whose run workers Dagster's run monitoring can health-check.

Dagster's ``DefaultRunLauncher`` starts each run worker as a process of the code server, but
it does not implement ``check_run_worker_health``, so the monitoring daemon never notices a
worker that died (OOM kill, the daemon tree killed, a reboot): the run stays STARTED forever,
and with the per-timezone concurrency limit of ``dagster.yaml`` its timezone never rolls up
again. This launcher is the default one plus that check: the run worker logs its pid when it
starts ("Started process for run (pid: N)"); the worker is alive if that process still
exists and is the same process (it started no later than it logged its pid, so a recycled pid
does not count). Workers of code servers on another host are not judged (reported RUNNING).
The launcher cannot resume runs: a dead worker's run is marked failed (set
``run_monitoring.max_resume_run_attempts: 0``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", ""})
PID_MESSAGE_PREFIX = "Started process for run"
# /proc's start time is in clock ticks since a boot time given in whole seconds
START_TIME_SLACK_SECONDS = 2.0


def process_started_at(pid: int) -> float | None:
    """Epoch seconds at which process ``pid`` started; None if there is no such live process
    (zombies count as dead). Without /proc, a live pid gives 0.0 (start time unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def worker_alive(pid: int, logged_at: float) -> bool:
    """Whether the process that logged ``pid`` at ``logged_at`` still runs."""
    started = process_started_at(pid)
    return started is not None and started <= logged_at + START_TIME_SLACK_SECONDS


class LocalProcessRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` plus a run worker health check for the monitoring daemon."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        grpc_info = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
        host = grpc_info.get("host")
        if host is None or (host not in LOCAL_HOSTS and not grpc_info.get("socket")):
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"not judged: run worker on code server host {host!r}")
        started = [
            e for e in self._instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
            if e.dagster_event is not None and (e.message or "").startswith(PID_MESSAGE_PREFIX)
        ]
        if not started:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not judged: no worker pid logged")
        last = started[-1]
        pid = int(last.dagster_event.engine_event_data.metadata["pid"].value)
        if worker_alive(pid, last.timestamp):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is running",
                                        run_worker_id=str(pid))
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker process {pid} is gone (killed or crashed)",
            run_worker_id=str(pid))
