"""A code location for test_run_monitoring.py: a job whose run lasts until it is killed."""

import time

from dagster import Definitions, in_process_executor, job, op


@op
def hold() -> None:
    time.sleep(600)


@job(executor_def=in_process_executor)  # one process: the run worker is the whole run
def hold_job() -> None:
    hold()


defs = Definitions(jobs=[hold_job])
