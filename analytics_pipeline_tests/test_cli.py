"""Dagster's CLI with this code location, against a persistent instance (subprocesses)."""

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from analytics_pipeline.dev.demo import write_source
from analytics_pipeline_tests.pipeline_fixtures import ACCOUNTS, sample_events

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def run(args, env, cwd):
    p = subprocess.run([DAGSTER, "asset", "materialize", "-m", "analytics_pipeline.definitions",
                        *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_dagster_cli_materialize_accounts_partition_and_range(tmp_path):
    src = f"sqlite:///{tmp_path / 'app.db'}"
    write_source(src, ACCOUNTS, sample_events())
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    whurl = f"sqlite:///{tmp_path / 'wh.db'}"
    env = {**os.environ, "DAGSTER_HOME": str(home), "ANALYTICS_SOURCE_URL": src,
           "ANALYTICS_WAREHOUSE_URL": whurl, "ANALYTICS_LANDING_URI": str(tmp_path / "land")}
    run(["--select", "accounts"], env, tmp_path)
    run(["--select", "raw_reporting_events,reporting_rollups", "--partition",
         "2026-02-11|America/New_York"], env, tmp_path)
    run(["--select", "raw_reporting_events,reporting_rollups", "--partition-range",
         "2026-03-06|America/New_York...2026-03-10|America/New_York"], env, tmp_path)
    engine = sa.create_engine(whurl)
    with engine.connect() as c:
        dates = [r[0] for r in c.execute(sa.text(
            "select distinct date from daily_rollups where account_id = 1 order by date"))]
    assert dates == ["2026-02-11", "2026-03-06", "2026-03-07", "2026-03-08", "2026-03-09",
                     "2026-03-10"]
