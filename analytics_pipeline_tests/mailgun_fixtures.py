"""Mailgun test helpers and fixtures: a settable clock, the local simulator, a warehouse
engine, and a fetch as the polling run does it."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.dev.mailgun_simulator import MailgunSimulator, sample_item
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA, MailgunClient
from analytics_pipeline.email.metrics import EMAIL_PIPELINES
from analytics_pipeline.email.steps import fetch_provider_events

NEWSLETTER, AUTOMATION = EMAIL_PIPELINES


T0 = 1_772_000_000.0  # 2026-02-25T06:13:20Z


SETTLE = 30 * 60


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def sim(clock):
    with MailgunSimulator(clock=clock) as s:
        yield s


@pytest.fixture
def engine(warehouse_url):
    e = wh.make_engine(warehouse_url)
    wh.ensure_schema(e)
    yield e
    e.dispose()


def fetch(sim, engine, root, clock, pipeline=NEWSLETTER, tags=None):
    client = MailgunClient(sim.domain, sim.api_key, sim.base_url, backoff_factor=0.01)
    return fetch_provider_events(
        client, ProviderEventLog(root, pipeline.stream), engine, pipeline,
        tags if tags is not None else pipeline.default_tags, until=clock.t - 60, now=clock.t,
        settle_seconds=SETTLE, initial_lookback_seconds=3600)


def landed(root, pipeline=NEWSLETTER):
    day = datetime.fromtimestamp(T0, timezone.utc).date()
    return ProviderEventLog(root, pipeline.stream).read([day], PROVIDER_EVENT_SCHEMA)


def add(sim, i, t, tag="newsletter", event="delivered", indexed_at=None):
    sim.add(sample_item(f"ev-{tag}-{i}", event, t, f"r{i}@x.com", f"<m{i}@mg>", [tag]),
            indexed_at=indexed_at)
