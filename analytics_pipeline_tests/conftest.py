"""Shared fixtures: every warehouse test runs on SQLite and on the real PostgreSQL.

Helpers that tests import live in ``helpers.py``; fixtures used by several modules in
``pipeline_fixtures.py`` (registered below).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from analytics_pipeline_tests.helpers import scratch_pg_database

# Fixtures shared by several test modules (``instance``, ``env``, ``clock``, ``sim``) live
# there.
pytest_plugins = ["analytics_pipeline_tests.pipeline_fixtures",
                  "analytics_pipeline_tests.mailgun_fixtures"]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    with scratch_pg_database("ap_test") as url:
        yield url


@pytest.fixture(scope="module")
def pg_source_url() -> Iterator[str]:
    """A PostgreSQL source database shared by a module's tests (each rewrites its tables)."""
    with scratch_pg_database("ap_source") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture(params=["sqlite", "postgresql"])
def source_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def landing_root(tmp_path) -> str:
    return str(tmp_path / "landing")
