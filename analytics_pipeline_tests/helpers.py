"""Test helpers: the PostgreSQL and RabbitMQ used by the tests, and source rows as the app
writes them."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest
import sqlalchemy as sa

PG_SERVER = os.environ.get(
    "ANALYTICS_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


def _pg_unavailable_reason() -> str | None:
    try:
        engine = sa.create_engine(PG_SERVER, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL not reachable at {sa.make_url(PG_SERVER).render_as_string()}: " \
               f"{type(exc).__name__}"


_PG_REASON = _pg_unavailable_reason()


def require_postgres() -> None:
    if _PG_REASON is None:
        return
    if os.environ.get("ANALYTICS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required in CI: {_PG_REASON}")
    pytest.skip(_PG_REASON)


AMQP_URL = os.environ.get("ANALYTICS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@functools.cache
def _rabbitmq_unavailable_reason() -> str | None:
    """Checked once, on first use (only the broker's tests pay for it)."""
    try:
        import pika
    except ImportError:
        return "pika is not installed (pip install -e .)"
    from analytics_pipeline.campaigns.broker import redact
    params = pika.URLParameters(AMQP_URL)
    params.socket_timeout = params.blocked_connection_timeout = 3
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"RabbitMQ not reachable at {redact(AMQP_URL)}: {type(exc).__name__}"


def require_rabbitmq() -> str:
    """The broker URL for the tests; skips (fails when ANALYTICS_REQUIRE_RABBITMQ=1, as in
    CI) when RabbitMQ is not reachable."""
    reason = _rabbitmq_unavailable_reason()
    if reason is None:
        return AMQP_URL
    if os.environ.get("ANALYTICS_REQUIRE_RABBITMQ") == "1":
        pytest.fail(f"RabbitMQ is required in CI: {reason}")
    pytest.skip(reason)


@contextmanager
def scratch_pg_database(prefix: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (its URL), dropped afterwards."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def ts(s: str) -> str:
    """A source timestamp as the app stores it (naive UTC text)."""
    return datetime.fromisoformat(s.replace("Z", "")).strftime("%Y-%m-%d %H:%M:%S.%f")


_ids = iter(range(1, 10**9))


def event(name: str, at: str, account_id: int = 1, value: float | None = None, **kw) -> dict:
    """A reporting_events row with sensible defaults."""
    return {
        "id": kw.pop("id", None) or next(_ids), "name": name, "value": value,
        "value_in_business_hours": kw.pop("bh", None), "account_id": account_id,
        "user_id": kw.pop("user_id", None), "inbox_id": kw.pop("inbox_id", None),
        "conversation_id": kw.pop("conversation_id", None), "created_at": ts(at),
        "updated_at": ts(at), **kw,
    }
