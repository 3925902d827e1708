"""A backfill launched as the UI launches it, executed by Dagster's backfill daemon logic:
a date range over two timezones becomes one run per timezone, and it completes."""

import logging
import time
from pathlib import Path

import sqlalchemy as sa
from dagster import AssetKey, instance_for_test
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration

from analytics_pipeline_tests.pipeline_fixtures import make_env

REPO = Path(__file__).resolve().parents[1]
TIMEZONES = ("America/New_York", "Asia/Kolkata")
DAYS = [f"2026-03-{d:02d}" for d in range(6, 11)]


def test_ui_backfill_runs_once_per_timezone(tmp_path, monkeypatch):
    wh_url = f"sqlite:///{tmp_path / 'wh.db'}"
    overrides = {"run_coordinator": {"module": "dagster._core.run_coordinator",
                                     "class": "DefaultRunCoordinator"}}
    with instance_for_test(overrides=overrides) as instance:
        env = make_env(tmp_path, wh_url, instance)
        # the code server started below reads its configuration from the environment
        monkeypatch.setenv("ANALYTICS_SOURCE_URL", env.source_url)
        monkeypatch.setenv("ANALYTICS_WAREHOUSE_URL", wh_url)
        monkeypatch.setenv("ANALYTICS_LANDING_URI", env.landing)
        assert env.materialize_accounts().success
        target = ModuleTarget(module_name="analytics_pipeline.definitions", attribute=None,
                              working_directory=str(REPO), location_name="analytics_pipeline")
        with create_test_daemon_workspace_context(target, instance) as ctx:
            backfill = PartitionBackfill.from_asset_partitions(
                backfill_id="march", asset_graph=ctx.create_request_context().asset_graph,
                partition_names=[f"{d}|{tz}" for d in DAYS for tz in TIMEZONES],
                asset_selection=[AssetKey("raw_reporting_events"),
                                 AssetKey("reporting_rollups")],
                backfill_timestamp=time.time(), tags={}, dynamic_partitions_store=instance,
                all_partitions=False, title=None, description=None, run_config=None,
            )
            instance.add_backfill(backfill)
            deadline = time.monotonic() + 240
            while instance.get_backfill("march").status == BulkActionStatus.REQUESTED:
                assert time.monotonic() < deadline, "backfill did not finish"
                list(execute_backfill_iteration(ctx, logging.getLogger("test_backfill")))
                time.sleep(1)
            assert instance.get_backfill("march").status == BulkActionStatus.COMPLETED_SUCCESS
        runs = [r for r in instance.get_runs() if r.tags.get("dagster/backfill") == "march"]
        ranges = sorted((r.tags["dagster/asset_partition_range_start"],
                         r.tags["dagster/asset_partition_range_end"]) for r in runs)
        assert ranges == [(f"{DAYS[0]}|{tz}", f"{DAYS[-1]}|{tz}") for tz in TIMEZONES]
        engine = sa.create_engine(wh_url)
        with engine.connect() as c:
            per_day = dict(c.execute(sa.text(
                "select date, count from daily_rollups where account_id = 1 and "
                "dimension_type = 'account' and metric = 'reply_time' order by date")).all())
        engine.dispose()
        # each date of the ranged run is cut at New York's own midnight (DST on the 8th;
        # the sample has no events after 2026-03-10T23:30Z, hence 4 on the 10th)
        assert per_day == {"2026-03-06": 5, "2026-03-07": 5, "2026-03-08": 4,
                           "2026-03-09": 5, "2026-03-10": 4}
