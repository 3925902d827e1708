"""Helpers for Dagster-level tests: a small source, resources and run helpers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test, materialize
from sqlalchemy import make_url

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.accounts import accounts
from analytics_pipeline.core.resources import Landing, PipelineSettings, SourceDatabase, Warehouse
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline.support.assets import raw_reporting_events, reporting_rollups
from analytics_pipeline_tests.helpers import event

ACCOUNTS = [
    {"id": 1, "name": "Acme", "reporting_timezone": "America/New_York"},
    {"id": 2, "name": "Bangalore", "reporting_timezone": "Asia/Kolkata"},
    {"id": 3, "name": "No tz", "reporting_timezone": None},
    {"id": 4, "name": "Typo", "reporting_timezone": "America/New_Yrok"},
]


def sample_events() -> list[dict]:
    """Events around New York's 2026-02-11 and the 2026-03-08 DST day."""
    return [
        event("first_response", "2026-02-11T05:00:00", 1, 60.0, bh=30.0, user_id=11,
              inbox_id=21, conversation_id=1),
        event("first_response", "2026-02-12T04:59:59", 1, 120.0, bh=120.0, user_id=12,
              inbox_id=21, conversation_id=2),
        event("conversation_resolved", "2026-02-11T18:00:00", 1, 3600.0, bh=1800.0,
              user_id=11, inbox_id=21, conversation_id=1),
        event("conversation_bot_handoff", "2026-02-11T06:00:00", 1, conversation_id=3),
        event("conversation_bot_handoff", "2026-02-11T06:05:00", 1, conversation_id=3),
        event("first_response", "2026-02-12T05:00:00", 1, 999.0, user_id=11),  # 02-12
        event("first_response", "2026-02-11T04:59:59", 1, 999.0, user_id=11),  # 02-10
        event("reply_time", "2026-02-11T12:00:00", 1, -5.0),  # quarantined
        event("conversation_opened", "2026-02-11T12:00:00", 1),  # ignored
        event("reply_time", "2026-02-11T10:00:00", 2, 30.0, user_id=31),
        event("reply_time", "2026-02-11T10:00:00", 3, 40.0, user_id=41),
        event("reply_time", "2026-02-11T10:00:00", 4, 50.0, user_id=51),  # invalid tz account
        event("reply_time", "2026-02-11T10:00:00", 77, 50.0),  # unknown account → UTC sweep
    ] + [
        event("reply_time", f"2026-03-{d:02d}T{h:02d}:30:00", 1, float(d * 10 + h))
        for d in range(5, 11) for h in (3, 4, 5, 12, 23)
    ]


@dataclass
class Env:
    source_url: str
    warehouse_url: str
    landing: str
    instance: DagsterInstance

    @property
    def resources(self) -> dict:
        return {
            "source_db": SourceDatabase(url=self.source_url),
            "warehouse": Warehouse(url=self.warehouse_url),
            "landing": Landing(uri=self.landing),
            "settings": PipelineSettings(default_timezone="UTC", start_date="2024-01-01"),
        }

    def engine(self):
        return wh.make_engine(self.warehouse_url)

    def materialize_accounts(self, **kw):
        return materialize([accounts], instance=self.instance, resources=self.resources, **kw)

    def materialize_partition(self, key: str, run_config: dict | None = None, **kw):
        return materialize(
            [raw_reporting_events, reporting_rollups], partition_key=key,
            instance=self.instance, resources=self.resources, run_config=run_config, **kw,
        )

    def materialize_range(self, start: str, end: str, **kw):
        return materialize(
            [raw_reporting_events, reporting_rollups], instance=self.instance,
            resources=self.resources,
            tags={"dagster/asset_partition_range_start": start,
                  "dagster/asset_partition_range_end": end},
            **kw,
        )

    def rows(self, **filters) -> list[dict]:
        e = self.engine()
        try:
            rows = wh.rollup_rows(e)
        finally:
            e.dispose()
        return [r for r in rows if all(r[k] == v for k, v in filters.items())]


def make_env(tmp_path, warehouse_url: str, instance: DagsterInstance,
             events: list[dict] | None = None) -> Env:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    write_source(src, ACCOUNTS, sample_events() if events is None else events)
    return Env(src, warehouse_url, str(tmp_path / "landing"), instance)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """A temporary Dagster instance."""
    with instance_for_test() as inst:
        yield inst


@pytest.fixture
def env(tmp_path, warehouse_url, instance) -> Env:
    """The sample source, a warehouse (SQLite and PostgreSQL) and a refreshed snapshot."""
    e = make_env(tmp_path, warehouse_url, instance)
    assert e.materialize_accounts().success
    return e


@contextmanager
def repo_instance(pg_database: str, home: Path, monkeypatch) -> Iterator[DagsterInstance]:
    """An instance configured by the repo's production deploy/dagster.yaml (PostgreSQL
    storage) in a home of its own (the instance writes compute logs under its home, which
    must not be the checkout), stored in ``pg_database``."""
    u = make_url(pg_database)
    monkeypatch.setenv("DAGSTER_PG_HOST", u.host)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(u.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", u.database)
    monkeypatch.setenv("DAGSTER_PG_USER", u.username)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-needed-with-trust-auth")
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    inst = DagsterInstance.from_config(str(home))
    try:
        yield inst
    finally:
        inst.dispose()
