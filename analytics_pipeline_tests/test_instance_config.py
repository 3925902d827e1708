"""The instance configuration files: the top-level dagster.yaml works with no environment
(Dagster's CLI reads it from the cwd when DAGSTER_HOME is unset); deploy/dagster.yaml is the
same plus PostgreSQL storage."""

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
import yaml

from analytics_pipeline.dev.demo import write_source
from analytics_pipeline_tests.pipeline_fixtures import ACCOUNTS, REPO, sample_events

DAGSTER = str(Path(sys.executable).with_name("dagster"))
LOCAL, DEPLOY = REPO / "dagster.yaml", REPO / "deploy" / "dagster.yaml"


def body_without_storage(text: str) -> str:
    """The file without its leading comment block and its top-level ``storage`` section."""
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and lines[0].startswith("storage:"):
        lines.pop(0)
        while lines and (lines[0].startswith(" ") or not lines[0].strip()):
            lines.pop(0)
    return "\n".join(lines)


def test_deploy_config_is_the_local_one_plus_postgres_storage():
    local, deploy = yaml.safe_load(LOCAL.read_text()), yaml.safe_load(DEPLOY.read_text())
    assert "storage" not in local  # Dagster's default: SQLite under DAGSTER_HOME
    db = deploy.pop("storage")["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"
    assert {k: v for k, v in db.items() if k != "scheme"} == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "db_name": {"env": "DAGSTER_PG_DB"}, "username": {"env": "DAGSTER_PG_USER"},
        "password": {"env": "DAGSTER_PG_PASSWORD"}}
    assert deploy == local
    # comments included, so an explanation edited in one file is edited in both
    assert body_without_storage(DEPLOY.read_text()) == body_without_storage(LOCAL.read_text())


def test_cli_from_the_repo_root_without_dagster_home_uses_the_embedded_instance(tmp_path):
    src = f"sqlite:///{tmp_path / 'app.db'}"
    write_source(src, ACCOUNTS, sample_events())
    wh_url = f"sqlite:///{tmp_path / 'wh.db'}"
    env = {k: v for k, v in os.environ.items()
           if k != "DAGSTER_HOME" and not k.startswith("DAGSTER_PG_")}
    env.update(ANALYTICS_SOURCE_URL=src, ANALYTICS_WAREHOUSE_URL=wh_url,
               ANALYTICS_LANDING_URI=str(tmp_path / "landing"))
    before = set(REPO.glob(".tmp_dagster_home_*"))
    p = subprocess.run([DAGSTER, "asset", "materialize", "-m", "analytics_pipeline.definitions",
                        "--select", "accounts"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "RUN_SUCCESS" in p.stderr
    engine = sa.create_engine(wh_url)
    with engine.connect() as c:
        assert c.execute(sa.text("select count(*) from accounts")).scalar() == 4
    engine.dispose()
    # Dagster removes its temporary home; .gitignore covers it while it exists
    assert set(REPO.glob(".tmp_dagster_home_*")) <= before
    ignored = subprocess.run(["git", "check-ignore", "-q", ".tmp_dagster_home_abc123/x"],
                             cwd=REPO)
    assert ignored.returncode == 0
