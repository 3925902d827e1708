"""A local campaign packer and senders: the application's broker messages, with faults.

Used by the tests and the demo. It publishes what the application does on the
``campaigns`` topic exchange: the packer splits an audience into pages of ``batch_size``
contacts (pages from 1) and publishes one ``campaigns.send`` per page, all of a pack under
one correlation id; an empty audience publishes a single ``campaigns.tracked`` with page 0,
zero counts and ``completed: true``; senders publish one ``campaigns.tracked`` per page.
Messages are persistent and carry the AMQP ``timestamp`` and, unless turned off, a
``message_id``. Faults, as at-least-once delivery and bugs produce them: a pack published
again whole (a job redelivered after a publish failure mid-loop, with the same bodies and
the same or new message ids), a tracked report published twice or lost, malformed bodies,
a contact on two pages.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pika

from analytics_pipeline.campaigns.broker import connect, message_key
from analytics_pipeline.campaigns.contract import (
    DEFAULT_BATCH_SIZE,
    EXCHANGE,
    REASON_BAD_PAGE,
    REASON_BAD_TYPE,
    REASON_MISSING_FIELD,
    REASON_NEGATIVE,
    REASON_NOT_JSON,
    REASON_UNKNOWN_KEY,
    SEND_KEY,
    TRACKED_KEY,
)


@dataclass(frozen=True)
class Published:
    """One message as published."""

    routing_key: str
    body: bytes
    message_id: str | None
    correlation_id: str | None = None

    @property
    def key(self) -> str:
        """Its ``message_key`` once landed."""
        return message_key(self.routing_key, self.body, self.message_id)

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


@dataclass
class Pack:
    """A campaign's pack: its messages in publication order (the pages' sends, or the
    page-0 tracked report of an empty audience)."""

    campaign_id: int
    correlation_id: str
    messages: list[Published] = field(default_factory=list)

    @property
    def pages(self) -> list[dict]:
        """The payloads of its sends."""
        return [m.payload for m in self.messages if m.routing_key == SEND_KEY]


class PublishInterrupted(RuntimeError):
    """A pack's publication failed after ``published`` messages (the packer's job fails
    and is redelivered: ``CampaignPublisher.redeliver_pack(pack)``)."""

    def __init__(self, pack: Pack, published: int):
        super().__init__(f"publish of campaign {pack.campaign_id} failed after "
                         f"{published} of {len(pack.messages)} messages")
        self.pack = pack
        self.published = published


def paginate(contact_ids: Sequence[int], batch_size: int) -> list[list[int]]:
    """The packer's pages: consecutive slices of ``batch_size`` (the last one shorter)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    ids = list(contact_ids)
    return [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]


def _dump(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _send(campaign_id: int, page: int, total: int, contacts: list[int], template_id,
          channel_type: str, correlation_id: str) -> dict:
    return {"campaignId": campaign_id, "page": page, "totalPages": total,
            "contactIds": contacts, "templateId": template_id, "channelType": channel_type,
            "correlationId": correlation_id}


def _tracked(campaign_id: int, page: int, sent: int, failed: int, completed: bool,
             correlation_id: str | None) -> dict:
    return {"campaignId": campaign_id, "page": page, "sentCount": sent,
            "failedCount": failed, "completed": completed, "correlationId": correlation_id}


# Malformed messages: kind -> (routing key, body, the quarantine reason classify gives).
_GOOD_SEND = _send(990, 1, 1, [1], 5, "Channel::Email", "bad")
MALFORMED: dict[str, tuple[str, bytes, str]] = {
    "not_json": (SEND_KEY, b'{"campaignId": 990, "page": ', REASON_NOT_JSON),
    "not_utf8": (SEND_KEY, b'{"campaignId": "\xff"}', REASON_NOT_JSON),
    "not_object": (TRACKED_KEY, b"[990, 1, 0, 0, true]", REASON_NOT_JSON),
    "null": (TRACKED_KEY, b"null", REASON_NOT_JSON),
    "empty": (SEND_KEY, b"", REASON_NOT_JSON),
    "missing_field": (SEND_KEY, _dump({k: v for k, v in _GOOD_SEND.items()
                                       if k != "contactIds"}), REASON_MISSING_FIELD),
    "null_field": (TRACKED_KEY, _dump(_tracked(990, 1, None, 0, False, "bad")),
                   REASON_MISSING_FIELD),
    "string_id": (SEND_KEY, _dump({**_GOOD_SEND, "campaignId": "990"}), REASON_BAD_TYPE),
    "float_page": (SEND_KEY, _dump({**_GOOD_SEND, "page": 1.0}), REASON_BAD_TYPE),
    "contact_not_int": (SEND_KEY, _dump({**_GOOD_SEND, "contactIds": [1, "2"]}),
                        REASON_BAD_TYPE),
    "completed_not_bool": (TRACKED_KEY, _dump({**_tracked(990, 1, 1, 0, False, "bad"),
                                               "completed": 1}), REASON_BAD_TYPE),
    "negative_count": (TRACKED_KEY, _dump(_tracked(990, 1, -1, 0, False, "bad")),
                       REASON_NEGATIVE),
    "page_beyond_total": (SEND_KEY, _dump({**_GOOD_SEND, "page": 2}), REASON_BAD_PAGE),
    "page_zero_send": (SEND_KEY, _dump({**_GOOD_SEND, "page": 0}), REASON_BAD_PAGE),
    "page_negative_tracked": (TRACKED_KEY, _dump(_tracked(990, -1, 0, 0, False, "bad")),
                              REASON_BAD_PAGE),
    # published to the queue itself (the default exchange), as a stray producer would
    "unknown_routing_key": ("", _dump(_GOOD_SEND), REASON_UNKNOWN_KEY),
}


class CampaignPublisher:
    """The packer and the senders, publishing on ``url`` (publisher confirms on, so a
    message is in its queues when a publish returns). ``message_ids=False``: messages
    carry no ``message_id`` (their key is then the hash of routing key and body)."""

    def __init__(self, url: str, batch_size: int = DEFAULT_BATCH_SIZE,
                 exchange: str = EXCHANGE, message_ids: bool = True,
                 clock: Callable[[], float] = time.time):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.url = url
        self.batch_size = batch_size
        self.exchange = exchange
        self.message_ids = message_ids
        self.clock = clock
        self.published: list[Published] = []
        self._context = connect(url)
        self._connection = self._context.__enter__()
        self._channel = self._connection.channel()
        self._channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self._channel.confirm_delivery()

    def close(self) -> None:
        self._context.__exit__(None, None, None)

    def __enter__(self) -> CampaignPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- publishing ----------------------------------------------------------------------

    def _message_id(self, wanted: bool | None) -> str | None:
        return uuid.uuid4().hex if (self.message_ids if wanted is None else wanted) else None

    def publish(self, message: Published, exchange: str | None = None) -> Published:
        """Publish ``message`` as it is (same body, same message id)."""
        props = pika.BasicProperties(
            content_type="application/json", delivery_mode=2,
            message_id=message.message_id, correlation_id=message.correlation_id,
            timestamp=int(self.clock()))
        self._channel.basic_publish(self.exchange if exchange is None else exchange,
                                    message.routing_key, message.body, props)
        self.published.append(message)
        return message

    def publish_raw(self, routing_key: str, body: bytes, message_id: str | None = None,
                    exchange: str | None = None) -> Published:
        """Any body on any routing key (``exchange=""``: straight to the queue named by
        ``routing_key``)."""
        return self.publish(Published(routing_key, body, message_id), exchange)

    def build_pack(self, campaign_id: int, contact_ids: Sequence[int], template_id=None,
                   channel_type: str = "Channel::Email", *, correlation_id: str | None = None,
                   double_send: Iterable[int] = (), message_ids: bool | None = None) -> Pack:
        """The pack's messages, not published. ``double_send``: contacts also put on the
        next page (the previous one for the last page), a packer bug."""
        correlation_id = correlation_id or uuid.uuid4().hex
        pack = Pack(campaign_id, correlation_id)
        pages = paginate(contact_ids, self.batch_size)
        if not pages:
            pack.messages.append(Published(
                TRACKED_KEY, _dump(_tracked(campaign_id, 0, 0, 0, True, correlation_id)),
                self._message_id(message_ids), correlation_id))
            return pack
        for contact in double_send:
            at = next((i for i, p in enumerate(pages) if contact in p), None)
            if at is None or len(pages) < 2:
                raise ValueError(f"contact {contact} cannot be put on a second page")
            pages[at + 1 if at + 1 < len(pages) else at - 1].append(contact)
        for number, contacts in enumerate(pages, start=1):
            pack.messages.append(Published(
                SEND_KEY, _dump(_send(campaign_id, number, len(pages), contacts, template_id,
                                      channel_type, correlation_id)),
                self._message_id(message_ids), correlation_id))
        return pack

    def publish_pack(self, campaign_id: int, contact_ids: Sequence[int], template_id=None,
                     channel_type: str = "Channel::Email", *,
                     correlation_id: str | None = None, double_send: Iterable[int] = (),
                     message_ids: bool | None = None, fail_after: int | None = None) -> Pack:
        """Pack and publish a campaign's audience. ``fail_after``: publish that many
        messages, then raise ``PublishInterrupted`` (a publish failure mid-loop)."""
        pack = self.build_pack(campaign_id, contact_ids, template_id, channel_type,
                               correlation_id=correlation_id, double_send=double_send,
                               message_ids=message_ids)
        for i, message in enumerate(pack.messages):
            if fail_after is not None and i >= fail_after:
                raise PublishInterrupted(pack, i)
            self.publish(message)
        return pack

    def redeliver_pack(self, pack: Pack, new_message_ids: bool = False) -> Pack:
        """The packer's job delivered again: every message of ``pack`` published again,
        the same bodies, the same message ids (or new ones: ``new_message_ids``)."""
        again = Pack(pack.campaign_id, pack.correlation_id)
        for m in pack.messages:
            mid = uuid.uuid4().hex if new_message_ids else m.message_id
            again.messages.append(self.publish(Published(m.routing_key, m.body, mid,
                                                         m.correlation_id)))
        return again

    def publish_tracked(self, campaign_id: int, page: int, sent: int, failed: int,
                        completed: bool, *, correlation_id: str | None = None, times: int = 1,
                        new_message_ids: bool = False, message_ids: bool | None = None,
                        message_id: str | None = None) -> list[Published]:
        """A sender's report of a page; ``times=2``: published twice (the same message,
        or with a new message id each time: ``new_message_ids``). ``message_id``: the
        (first) publication's id, instead of a new one."""
        body = _dump(_tracked(campaign_id, page, sent, failed, completed, correlation_id))
        mid = message_id or self._message_id(message_ids)
        out = []
        for i in range(times):
            if i and new_message_ids:
                mid = uuid.uuid4().hex
            out.append(self.publish(Published(TRACKED_KEY, body, mid, correlation_id)))
        return out

    def publish_malformed(self, kind: str, queue: str | None = None,
                          message_id: str | None = None) -> tuple[Published, str]:
        """A malformed message of ``kind`` (``MALFORMED``) and the reason it must be
        quarantined with; ``unknown_routing_key`` goes straight to ``queue``."""
        routing_key, body, reason = MALFORMED[kind]
        if kind == "unknown_routing_key":
            if queue is None:
                raise ValueError("an unknown routing key is published straight to a queue")
            return self.publish_raw(queue, body, message_id, exchange=""), reason
        return self.publish_raw(routing_key, body, message_id), reason


def simulate_senders(publisher: CampaignPublisher, packs: Iterable[Pack], *,
                     failed: Iterable[int] = (), lose: Iterable[tuple[int, int]] = (),
                     twice: Iterable[tuple[int, int]] = (),
                     new_message_ids: bool = False) -> list[Published]:
    """The senders' reports of every published page of ``packs``, in page order: contacts
    in ``failed`` fail, the others are sent; ``completed`` on the last page. Faults, by
    (campaign id, page): ``lose`` publishes no report, ``twice`` publishes it twice (the
    same message, or a new message id: ``new_message_ids``)."""
    failed, lose, twice = set(failed), set(lose), set(twice)
    out: list[Published] = []
    for pack in packs:
        for page in pack.pages:
            where = (pack.campaign_id, page["page"])
            if where in lose:
                continue
            bad = sum(1 for c in page["contactIds"] if c in failed)
            out += publisher.publish_tracked(
                pack.campaign_id, page["page"], len(page["contactIds"]) - bad, bad,
                page["page"] == page["totalPages"], correlation_id=pack.correlation_id,
                times=2 if where in twice else 1, new_message_ids=new_message_ids)
    return out
