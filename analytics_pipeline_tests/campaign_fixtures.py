"""The campaign tests' broker: an exchange and a queue of one test's own on the real
RabbitMQ (deleted afterwards), so tests running at the same time never see each other's
messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from analytics_pipeline.campaigns.broker import connect, declare, pending_messages
from analytics_pipeline.campaigns.resources import CampaignBroker
from analytics_pipeline.dev.campaign_publisher import CampaignPublisher
from analytics_pipeline_tests.helpers import require_rabbitmq


@dataclass
class Broker:
    url: str
    exchange: str
    queue: str

    def publisher(self, at: datetime | None = None, **kw) -> CampaignPublisher:
        """The packer and senders; ``at``: their clock (the messages' AMQP timestamp)."""
        if at is not None:
            kw["clock"] = lambda: at.timestamp()
        return CampaignPublisher(self.url, exchange=self.exchange, **kw)

    def resource(self, **kw) -> CampaignBroker:
        return CampaignBroker(**{"url": self.url, "exchange": self.exchange,
                                 "queue": self.queue, **kw})

    def pending(self) -> int:
        return pending_messages(self.url, self.queue)

    def wait_pending(self, n: int, timeout: float = 10.0) -> int:
        """The ready count once it is ``n`` (the broker requeues a closed connection's
        unacknowledged deliveries asynchronously)."""
        end = time.monotonic() + timeout
        while (got := self.pending()) != n and time.monotonic() < end:
            time.sleep(0.05)
        return got


@contextmanager
def scratch_broker(cls: type[Broker] = Broker) -> Iterator[Broker]:
    """A ``cls`` on an exchange and queue of its own, declared, then deleted (skips, or
    fails under CI, when RabbitMQ is not there)."""
    url = require_rabbitmq()
    token = uuid.uuid4().hex[:12]
    b = cls(url, f"test.campaigns.{token}", f"test.analytics_pipeline.{token}")
    with connect(url) as connection:
        declare(connection.channel(), b.queue, b.exchange)
    try:
        yield b
    finally:
        with connect(url) as connection:
            channel = connection.channel()
            channel.queue_delete(b.queue)
            channel.exchange_delete(b.exchange)
