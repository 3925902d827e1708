"""Dagster's queued run coordinator, plus the tags that make every launch path queue alike.

``dagster.yaml`` limits runs to one per value of ``analytics/timezone`` so two runs never
write the same ``date|timezone`` slice. The sensors set that tag; runs launched from the UI,
by the backfill daemon (``__ASSET_JOB`` with ``dagster/asset_partition_range_start``/``_end``
or a single ``dagster/partition``) or by ``dagster job launch``/``backfill`` do not. Every
one of them is submitted through the instance's run coordinator, so this one derives, before
enqueueing, for a run that lacks them:

- ``analytics/timezone`` from the run's partition tags: ``dagster/partition/timezone``, or the
  timezone of a range whose start and end are in the same timezone. A range across timezones
  gets no per-timezone tag (one tag value cannot name several timezones): it is logged as a
  warning in the run's event log and is limited only by ``max_concurrent_runs``. The assets'
  single-run backfill policy makes such runs when a backfill has fewer dates than timezones
  (one day everywhere: one run for that date across the timezones).
- ``analytics/group``: the sorted asset group names of the run's assets (its asset and check
  selection, else its job's assets), looked up in the workspace the run is submitted from,
  so backfill runs of ``__ASSET_JOB`` are recognisable (and filterable) by pipeline.

The dequeueing, the limits and everything else are ``QueuedRunCoordinator``'s.
"""

import logging
from collections.abc import Mapping

from dagster import DagsterRun
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
    get_multidimensional_partition_tag,
)

from analytics_pipeline.core.partitions import TIMEZONE_DIM

TIMEZONE_TAG = "analytics/timezone"
GROUP_TAG = "analytics/group"
PARTITION_TIMEZONE_TAG = get_multidimensional_partition_tag(TIMEZONE_DIM)

log = logging.getLogger(__name__)


def _timezone_of_key(key: str | None) -> str | None:
    """The timezone of a ``date|timezone`` key; None for any other key."""
    _, sep, tz = (key or "").partition("|")
    return tz if sep and tz else None


def timezone_of_run(tags: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(timezone, None)`` for a run of one timezone, ``(None, reason)`` for a ranged run
    across timezones, ``(None, None)`` for a run that is not partitioned by timezone."""
    if tags.get(PARTITION_TIMEZONE_TAG):
        return tags[PARTITION_TIMEZONE_TAG], None
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is not None and end is not None:
        tz_start, tz_end = _timezone_of_key(start), _timezone_of_key(end)
        if tz_start is not None and tz_start == tz_end:
            return tz_start, None
        if tz_start is not None or tz_end is not None:
            return None, (f"partition range {start}...{end} spans several timezones: no "
                          f"{TIMEZONE_TAG} tag, so this run is not limited to one per timezone")
        return None, None
    return _timezone_of_key(tags.get(PARTITION_NAME_TAG)), None


def asset_groups_of_run(run: DagsterRun, context: SubmitRunContext) -> list[str]:
    """Sorted group names of the run's assets, from the workspace's snapshot of its code
    location; raises if the location or repository is not loaded there."""
    origin = run.remote_job_origin
    if origin is None:
        return []
    repo_origin = origin.repository_origin
    repo = context.workspace.get_code_location(
        repo_origin.code_location_origin.location_name).get_repository(
        repo_origin.repository_name)
    keys = set(run.asset_selection or ())
    keys |= {check.asset_key for check in run.asset_check_selection or ()}
    if keys:
        snaps = [repo.get_asset_node_snap(key) for key in keys]
    else:
        snaps = list(repo.get_asset_node_snaps(run.job_name))
    return sorted({snap.group_name for snap in snaps if snap is not None and snap.group_name})


class AnalyticsRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` that tags each run with its timezone and asset groups."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        tags: dict[str, str] = {}
        if TIMEZONE_TAG not in run.tags:
            tz, problem = timezone_of_run(run.tags)
            if tz is not None:
                tags[TIMEZONE_TAG] = tz
            elif problem is not None:
                log.warning("run %s: %s", run.run_id, problem)
                self._instance.report_engine_event(problem, run)
        if GROUP_TAG not in run.tags:
            try:
                groups = asset_groups_of_run(run, context)
            except Exception as exc:  # noqa: BLE001 - a missing tag must never block a launch
                log.warning("run %s: asset groups not found in the workspace (%s: %s)",
                            run.run_id, type(exc).__name__, exc)
                groups = []
            if groups:
                tags[GROUP_TAG] = ",".join(groups)
        if tags:
            self._instance.add_run_tags(run.run_id, tags)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = context._replace(dagster_run=run)
        return super().submit_run(context)
