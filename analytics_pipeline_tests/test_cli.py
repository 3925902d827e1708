"""Dagster's CLI with this code location (subprocesses) and ``analytics-pipeline report``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import make_url

from analytics_pipeline.cli import main
from analytics_pipeline.core.warehouse import redact
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


# ``analytics-pipeline report``: never creates a warehouse, never prints a misleading series.

REPO = Path(__file__).resolve().parents[1]


def report(*args: str) -> list[str]:
    return ["report", "--metric", "reply_time", "--from", "2026-03-06", "--to", "2026-03-10",
            *args]


def test_report_from_another_folder_fails_and_creates_nothing(tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANALYTICS_WAREHOUSE_URL", "ANALYTICS_HOME")}
    env["PYTHONPATH"] = str(REPO)  # this checkout, not an installed copy
    p = subprocess.run([sys.executable, "-m", "analytics_pipeline.cli", *report("--account", "1")],
                       env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == ""
    [line] = p.stderr.splitlines()  # one line, no traceback
    assert line.startswith("error: no warehouse at sqlite:///.analytics/warehouse.db")
    assert "ANALYTICS_WAREHOUSE_URL" in line and "--warehouse-url" in line
    assert list(cwd.iterdir()) == []


def test_report_never_creates_a_sqlite_file_or_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'missing' / 'wh.db'}"
    assert main(report("--account", "1", "--warehouse-url", url)) == 2
    err = capsys.readouterr().err
    assert f"no warehouse at {url}" in err and "--warehouse-url" in err
    # nor through a SQLite URI that asks for creation
    uri = f"sqlite:///file:{tmp_path / 'nope.db'}?mode=rwc&uri=true"
    assert main(report("--account", "1", "--warehouse-url", uri)) == 2
    assert "the file does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # an existing database without the warehouse tables stays as it was
    (tmp_path / "other.db").write_bytes(b"")
    assert main(report("--account", "1", "--warehouse-url",
                       f"sqlite:///{tmp_path / 'other.db'}")) == 2
    assert "has no warehouse tables (missing: accounts, daily_rollups)" in capsys.readouterr().err
    assert (tmp_path / "other.db").stat().st_size == 0
    assert sorted(x.name for x in tmp_path.iterdir()) == ["other.db"]
    # an unknown metric is refused before any database is opened, listing the known ones
    assert main(["report", "--account", "1", "--metric", "bogus", "--from", "2026-03-06",
                 "--to", "2026-03-10", "--warehouse-url", url]) == 2
    assert "unknown metric 'bogus'; known metrics: " in capsys.readouterr().err


def test_report_on_a_postgres_database_without_the_tables(pg_database, capsys):
    # trust authentication ignores the password: it must not be printed
    url = make_url(pg_database).set(password="s3cret-pw").render_as_string(hide_password=False)
    assert main(report("--account", "1", "--warehouse-url", url)) == 2
    err = capsys.readouterr().err
    assert "has no warehouse tables" in err and "***" in err and "s3cret" not in err
    gone = make_url(url).set(database="ap_no_such_database")
    assert main(report("--account", "1", "--warehouse-url",
                       gone.render_as_string(hide_password=False))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open the warehouse at ") and "ap_no_such_database" in err
    assert "s3cret" not in err and len(err.splitlines()) == 1
    engine = sa.create_engine(pg_database)
    try:
        assert sa.inspect(engine).get_table_names() == []  # the read created nothing
    finally:
        engine.dispose()


@pytest.fixture
def rolled_up(env):
    """The sample accounts snapshot and New York's 2026-03-05..10 rolled up."""
    assert env.materialize_range("2026-03-05|America/New_York",
                                 "2026-03-10|America/New_York").success
    return env


def test_report_refuses_unknown_and_invalid_timezone_accounts(rolled_up, capsys):
    url = rolled_up.warehouse_url
    assert main(report("--account", "999", "--warehouse-url", url)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"error: account 999 is not in the warehouse's accounts snapshot "
                   f"({redact(url)}); materialize accounts first or check the id\n")
    assert main(report("--account", "4", "--warehouse-url", url)) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert "account 4 has an invalid reporting timezone 'America/New_Yrok'" in err
    assert "not rolled up" in err


def test_report_shows_units_and_clips_weeks(rolled_up, capsys):
    url = rolled_up.warehouse_url
    assert main(report("--account", "1", "--json", "--warehouse-url", url)) == 0
    days = json.loads(capsys.readouterr().out)
    assert {d["unit"] for d in days} == {"seconds"} and sum(d["count"] for d in days) > 0
    # 2026-03-06 is a Friday, 03-10 a Tuesday: both weeks are cut by the range
    assert main(report("--account", "1", "--by", "week", "--json", "--warehouse-url", url)) == 0
    weeks = json.loads(capsys.readouterr().out)
    assert [(w["period_start"], w["period_end"], w["partial"]) for w in weeks] == [
        ("2026-03-06", "2026-03-08", True), ("2026-03-09", "2026-03-10", True)]
    assert [w["count"] for w in weeks] == [sum(d["count"] for d in days[:3]),
                                           sum(d["count"] for d in days[3:])]
    assert main(report("--account", "1", "--by", "week", "--warehouse-url", url)) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert "reply_time for account 1 (America/New_York), by week" in header
    assert "average duration in minutes" in header
    assert first.startswith("2026-03-06..2026-03-08")
    assert f"{weeks[0]['value'] / 60:.1f} min" in first and "partial week" in first
    assert second.startswith("2026-03-09..2026-03-10")
    # counts have no duration unit
    assert main(["report", "--account", "1", "--metric", "resolutions_count", "--from",
                 "2026-03-06", "--to", "2026-03-06", "--json", "--warehouse-url", url]) == 0
    assert json.loads(capsys.readouterr().out)[0]["unit"] == "count"
