"""Shared fixtures: every warehouse test runs on SQLite and on the real PostgreSQL.

Helpers that tests import live in ``helpers.py``; fixtures used by several modules in
``pipeline_fixtures.py`` (registered below).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from analytics_pipeline_tests.helpers import PG_SERVER, require_postgres

# Fixtures shared by several test modules (``instance``, ``env``, ``clock``, ``sim``) live
# there.
pytest_plugins = ["analytics_pipeline_tests.pipeline_fixtures",
                  "analytics_pipeline_tests.mailgun_fixtures"]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    require_postgres()
    name = f"ap_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
