"""The campaign broker side on a real RabbitMQ: the packer's pages, a drain that lands
durably before it acknowledges, redeliveries and duplicate publications counted once,
malformed bodies quarantined and acknowledged; and the classification's vectorized
parsing against its row-by-row reference."""

from __future__ import annotations

import json
import os
import random
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from analytics_pipeline.campaigns import broker as broker_mod
from analytics_pipeline.campaigns.broker import (
    PARSED_SCHEMA,
    SEND_SCHEMA,
    TRACKED_SCHEMA,
    BrokerUnavailable,
    QueueNotFound,
    classify,
    drain_and_land,
    merge_parsed,
    message_key,
    parse_messages,
    pending_messages,
    redact,
)
from analytics_pipeline.campaigns.contract import (
    CAMPAIGN_SOURCE,
    LANDED_MESSAGE_SCHEMA,
    REASON_BAD_PAGE,
    REASON_BAD_TYPE,
    REASON_MISSING_FIELD,
    REASON_NEGATIVE,
    REASON_NOT_JSON,
    REASON_UNKNOWN_KEY,
    SEND_KEY,
    TRACKED_KEY,
)
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.core.rollups import QUARANTINE_SCHEMA
from analytics_pipeline.dev.campaign_publisher import (
    MALFORMED,
    PublishInterrupted,
    paginate,
    simulate_senders,
)
from analytics_pipeline_tests.campaign_fixtures import Broker, scratch_broker

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
def broker():
    with scratch_broker() as b:
        yield b


@pytest.fixture
def log(tmp_path):
    return ProviderEventLog(str(tmp_path / "landing"), f"rabbitmq/{CAMPAIGN_SOURCE}")


def drain(b: Broker, log: ProviderEventLog, max_messages: int = 100_000, run_id: str = "run-1",
          **kw):
    kw.setdefault("idle_seconds", 0.3)
    return drain_and_land(b.url, b.queue, log, max_messages, run_id, lambda: NOW,
                          exchange=b.exchange, **kw)


def landed(log: ProviderEventLog, distinct: bool = False) -> pa.Table:
    return log.read([NOW.date()], LANDED_MESSAGE_SCHEMA, id_column="message_key",
                    distinct=distinct)


# --- the packer's pages --------------------------------------------------------------------


@pytest.mark.parametrize("audience,sizes", [(2500, [1000, 1000, 500]),
                                            (3000, [1000, 1000, 1000]),
                                            (999, [999]), (1, [1])])
def test_pack_pages_of_the_batch_size(broker, log, audience, sizes):
    contacts = list(range(10_000, 10_000 + audience))
    with broker.publisher() as pub:
        pack = pub.publish_pack(7, contacts, template_id=31, channel_type="Channel::Whatsapp")
    assert [len(p["contactIds"]) for p in pack.pages] == sizes
    result = drain(broker, log)
    assert (result.received, result.landed, result.redelivered) == (len(sizes),) * 2 + (0,)
    assert result.by_routing_key == {SEND_KEY: len(sizes)}
    assert result.stopped_by == "drained" and result.dates == [NOW.date()]
    assert broker.pending() == 0
    sends, tracked, quarantined = classify(landed(log))
    assert tracked.num_rows == 0 and quarantined.num_rows == 0
    assert sends.schema == SEND_SCHEMA
    assert sends["page"].to_pylist() == list(range(1, len(sizes) + 1))
    assert set(sends["total_pages"].to_pylist()) == {len(sizes)}
    assert [len(c) for c in sends["contact_ids"].to_pylist()] == sizes
    assert sum(sends["contact_ids"].to_pylist(), []) == contacts
    assert set(sends["correlation_id"].to_pylist()) == {pack.correlation_id}
    assert set(sends["channel_type"].to_pylist()) == {"Channel::Whatsapp"}
    assert set(sends["template_id"].to_pylist()) == {31}
    assert sends["message_key"].to_pylist() == [m.message_id for m in pack.messages]
    assert sends["delivery_count"].to_pylist() == [1] * len(sizes)
    assert not any(sends["duplicate_publication"].to_pylist())
    assert all(sends["published_at"].to_pylist()) and set(sends["received_at"].to_pylist()) \
        == {NOW}


def test_paginate_and_batch_size_setting():
    assert [len(p) for p in paginate(range(2500), 1000)] == [1000, 1000, 500]
    assert [len(p) for p in paginate(range(3000), 1000)] == [1000] * 3
    assert paginate([], 1000) == []
    assert paginate([1, 2, 3], 2) == [[1, 2], [3]]
    with pytest.raises(ValueError):
        paginate([1], 0)


def test_empty_audience_is_one_completed_tracked_page_zero(broker, log):
    with broker.publisher() as pub:
        pack = pub.publish_pack(8, [], template_id=None)
    assert pack.pages == [] and len(pack.messages) == 1
    assert drain(broker, log).by_routing_key == {TRACKED_KEY: 1}
    sends, tracked, quarantined = classify(landed(log))
    assert sends.num_rows == 0 and quarantined.num_rows == 0
    assert tracked.schema == TRACKED_SCHEMA
    assert tracked.select(["campaign_id", "page", "sent_count", "failed_count", "completed",
                           "correlation_id", "reports"]).to_pylist() == [
        {"campaign_id": 8, "page": 0, "sent_count": 0, "failed_count": 0, "completed": True,
         "correlation_id": pack.correlation_id, "reports": 1}]


# --- at least once: redeliveries and duplicate publications ------------------------------


@pytest.mark.parametrize("message_ids", [True, False])
def test_a_redelivered_pack_counts_each_page_once(broker, log, message_ids):
    """The packer fails mid-loop, its job is redelivered and publishes every page again
    with the same bodies (and the same message ids, or none: then the content hash)."""
    contacts = list(range(1, 2501))
    with broker.publisher(message_ids=message_ids) as pub:
        with pytest.raises(PublishInterrupted) as failed:
            pub.publish_pack(7, contacts, fail_after=2)
        assert failed.value.published == 2
        pub.redeliver_pack(failed.value.pack)
        pub.redeliver_pack(failed.value.pack)  # and once more, whole
    assert drain(broker, log).received == 2 + 3 + 3
    every = landed(log)
    assert every.num_rows == 8
    sends, _, quarantined = classify(every)
    assert quarantined.num_rows == 0
    assert sends["page"].to_pylist() == [1, 2, 3]
    assert sends["delivery_count"].to_pylist() == [3, 3, 2]
    assert sends["publications"].to_pylist() == [1, 1, 1]
    assert not any(sends["duplicate_publication"].to_pylist())
    assert sum(sends["contact_ids"].to_pylist(), []) == contacts
    if not message_ids:
        assert all(k.startswith("sha256:") for k in sends["message_key"].to_pylist())
    # the log's own de-duplicated read agrees
    assert landed(log, distinct=True).num_rows == 3


def test_a_pack_published_again_under_new_message_ids_is_flagged(broker, log):
    with broker.publisher() as pub:
        pack = pub.publish_pack(7, list(range(1, 2501)))
        again = pub.redeliver_pack(pack, new_message_ids=True)
    assert {m.key for m in pack.messages}.isdisjoint(m.key for m in again.messages)
    drain(broker, log)
    sends, _, _ = classify(landed(log))
    assert sends.num_rows == 6
    assert sends["page"].to_pylist() == [1, 1, 2, 2, 3, 3]
    assert sends["publications"].to_pylist() == [2] * 6
    assert sends["duplicate_publication"].to_pylist() == [False, True] * 3
    first = sends.filter(pc.invert(sends["duplicate_publication"]))
    assert first["message_key"].to_pylist() == [m.key for m in pack.messages]


def test_tracked_reports_twice_lost_and_double_sends(broker, log):
    with broker.publisher(batch_size=10) as pub:
        pack = pub.publish_pack(9, list(range(1, 31)), double_send=[5])
        simulate_senders(pub, [pack], failed=[7, 21], lose=[(9, 2)], twice=[(9, 3)])
        pub.publish_tracked(9, 1, 11, 0, False, correlation_id=pack.correlation_id, times=2,
                            new_message_ids=True)  # page 1 again, under a new id
    result = drain(broker, log)
    assert result.by_routing_key == {SEND_KEY: 3, TRACKED_KEY: 1 + 2 + 2}
    sends, tracked, quarantined = classify(landed(log))
    assert quarantined.num_rows == 0
    pages = {p: set(c) for p, c in zip(sends["page"].to_pylist(),
                                       sends["contact_ids"].to_pylist(), strict=True)}
    assert 5 in pages[1] and 5 in pages[2]  # the contact on two pages
    assert tracked.select(["page", "sent_count", "failed_count", "completed", "reports",
                           "duplicate_report", "delivery_count"]).to_pylist() == [
        {"page": 1, "sent_count": 9, "failed_count": 1, "completed": False, "reports": 3,
         "duplicate_report": False, "delivery_count": 1},
        {"page": 1, "sent_count": 11, "failed_count": 0, "completed": False, "reports": 3,
         "duplicate_report": True, "delivery_count": 1},
        {"page": 1, "sent_count": 11, "failed_count": 0, "completed": False, "reports": 3,
         "duplicate_report": True, "delivery_count": 1},
        # page 2's report was lost; page 3's, delivered twice, counts once
        {"page": 3, "sent_count": 9, "failed_count": 1, "completed": True, "reports": 1,
         "duplicate_report": False, "delivery_count": 2},
    ]


def test_a_crash_after_landing_before_the_ack_redelivers_and_counts_once(
        broker, log, monkeypatch):
    with broker.publisher(batch_size=100) as pub:
        pack = pub.publish_pack(7, list(range(1, 1001)))
        simulate_senders(pub, [pack])
    assert broker.pending() == 20

    def crash(channel, tag):  # landed and fsynced; the connection drops before the ack
        raise ConnectionResetError("connection lost before the acknowledgement")

    monkeypatch.setattr(broker_mod, "_acknowledge", crash)
    with pytest.raises(ConnectionResetError):
        drain(broker, log, run_id="run-crashed")
    assert landed(log).num_rows == 20  # landed ...
    assert broker.wait_pending(20) == 20  # ... and still with the broker
    monkeypatch.undo()

    again = drain(broker, log, run_id="run-2")
    assert (again.received, again.redelivered) == (20, 20)
    assert broker.pending() == 0
    every = landed(log)
    assert every.num_rows == 40
    assert sorted(set(every["consumer_run"].to_pylist())) == ["run-2", "run-crashed"]
    sends, tracked, quarantined = classify(every)
    assert quarantined.num_rows == 0
    assert sends.num_rows == 10 and tracked.num_rows == 10
    assert sum(len(c) for c in sends["contact_ids"].to_pylist()) == 1000
    assert pc.sum(tracked["sent_count"]).as_py() == 1000
    assert sends["delivery_count"].to_pylist() == [2] * 10
    assert all(sends["redelivered"].to_pylist())
    assert not any(sends["duplicate_publication"].to_pylist())


def test_a_failed_landing_acknowledges_nothing_of_its_batch(broker, log, monkeypatch):
    with broker.publisher() as pub:
        for i in range(10):
            pub.publish_tracked(5, i + 1, 1, 0, False)
    real = ProviderEventLog.append
    calls = []

    def append(self, table, *args, **kw):
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, table, *args, **kw)

    monkeypatch.setattr(ProviderEventLog, "append", append)
    with pytest.raises(OSError):
        drain(broker, log, batch_size=4)
    assert calls == [4, 4]
    assert landed(log).num_rows == 4  # the first batch, acknowledged
    assert broker.wait_pending(6) == 6  # the second, never landed, is back with the rest
    monkeypatch.undo()
    result = drain(broker, log, batch_size=4)
    assert (result.received, result.batches, result.redelivered) == (6, 2, 4)
    _, tracked, _ = classify(landed(log))
    assert tracked["page"].to_pylist() == list(range(1, 11))
    assert tracked["delivery_count"].to_pylist() == [1] * 10


def test_malformed_messages_are_quarantined_and_acknowledged(broker, log):
    expected = {}
    with broker.publisher() as pub:
        good = pub.publish_pack(3, [1, 2, 3])
        for kind in MALFORMED:
            message, reason = pub.publish_malformed(kind, queue=broker.queue)
            expected[message.key] = reason
    result = drain(broker, log)
    assert result.received == len(MALFORMED) + 1
    assert broker.pending() == 0  # every one acknowledged: no requeue loop
    assert drain(broker, log).received == 0
    sends, tracked, quarantined = classify(landed(log))
    assert sends["message_key"].to_pylist() == [good.messages[0].key] and tracked.num_rows == 0
    assert quarantined.schema == QUARANTINE_SCHEMA
    assert dict(zip(quarantined["event_id"].to_pylist(), quarantined["reason"].to_pylist(),
                    strict=True)) == expected
    assert set(quarantined["source"].to_pylist()) == {CAMPAIGN_SOURCE}
    by_reason = dict(zip(quarantined["reason"].to_pylist(),
                         quarantined["payload"].to_pylist(), strict=True))
    assert by_reason[REASON_NOT_JSON]  # the body, as text
    assert {REASON_NOT_JSON, REASON_UNKNOWN_KEY, REASON_MISSING_FIELD, REASON_BAD_TYPE,
            REASON_NEGATIVE, REASON_BAD_PAGE} == set(expected.values())


# --- the drain's bounds -----------------------------------------------------------------------


def test_pending_messages_does_not_consume(broker, log):
    with broker.publisher() as pub:
        for page in range(1, 6):
            pub.publish_tracked(4, page, 1, 0, page == 5)
    assert broker.pending() == 5
    assert broker.pending() == 5
    assert drain(broker, log).received == 5
    assert broker.pending() == 0
    with pytest.raises(QueueNotFound):
        pending_messages(broker.url, f"{broker.queue}.missing")


def test_max_messages_bounds_a_drain(broker, log):
    with broker.publisher() as pub:
        for page in range(1, 11):
            pub.publish_tracked(4, page, 1, 0, False)
    first = drain(broker, log, max_messages=4, batch_size=3)
    assert (first.received, first.batches, first.stopped_by) == (4, 2, "max_messages")
    assert broker.pending() == 6
    rest = drain(broker, log, max_messages=100)
    assert (rest.received, rest.stopped_by) == (6, "drained")
    _, tracked, _ = classify(landed(log))
    assert tracked["page"].to_pylist() == list(range(1, 11))
    with pytest.raises(ValueError):
        drain(broker, log, max_messages=0)


def test_an_empty_queue_is_a_quick_no_op(broker, log):
    result = drain(broker, log, idle_seconds=5)
    assert (result.received, result.files, result.stopped_by) == (0, 0, "drained")
    assert result.seconds < 3
    assert landed(log).num_rows == 0


def test_an_unreachable_broker_is_named_without_its_password(log):
    url = "amqp://analytics:s3cret@127.0.0.1:1/%2F"
    with pytest.raises(BrokerUnavailable) as failed:
        drain_and_land(url, "q", log, 10, "run")
    assert "s3cret" not in str(failed.value) and "127.0.0.1:1" in str(failed.value)
    assert redact(url) == "amqp://analytics:***@127.0.0.1:1/%2F"
    assert redact("amqp://127.0.0.1/") == "amqp://127.0.0.1/"


# --- durable landing ---------------------------------------------------------------------


@pytest.fixture
def fsyncs(monkeypatch):
    """(inode, is a directory) of every fsynced file descriptor."""
    seen: list[tuple[int, bool]] = []
    real = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        seen.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def _ino(path) -> int:
    return os.stat(path).st_ino


def test_a_drain_lands_durably(broker, log, fsyncs):
    with broker.publisher() as pub:
        pub.publish_tracked(4, 1, 1, 0, True)
    assert drain(broker, log).files == 1
    folder = Path(log.date_dir(NOW.date()))
    (name,) = log.files(NOW.date())
    assert (_ino(folder / name), False) in fsyncs and (_ino(folder), True) in fsyncs


# --- classification: the vectorized path against the row-by-row reference ---------------------


def _row(routing_key: str, body: bytes, message_id: str | None = None,
         redelivered: bool = False, at: datetime = NOW) -> dict:
    return {"message_key": message_key(routing_key, body, message_id),
            "message_id": message_id, "routing_key": routing_key, "body": body,
            "delivery_tag": 1, "redelivered": redelivered, "received_at": at,
            "published_at": None, "consumer_run": "test"}


def _send(**kw) -> dict:
    return {"campaignId": 7, "page": 1, "totalPages": 2, "contactIds": [1, 2],
            "templateId": 3, "channelType": "Channel::Email", "correlationId": "c", **kw}


def _tracked(**kw) -> dict:
    return {"campaignId": 7, "page": 1, "sentCount": 2, "failedCount": 0,
            "completed": False, "correlationId": "c", **kw}


def _reference(routing_key: str, body: bytes) -> str | None:
    """The reason by the row-by-row path alone (None: valid)."""
    if routing_key not in (SEND_KEY, TRACKED_KEY):
        return REASON_UNKNOWN_KEY
    fields = broker_mod._SEND_FIELDS if routing_key == SEND_KEY else broker_mod._TRACKED_FIELDS
    row, reason = broker_mod._parse_row(body, fields)
    if reason:
        return reason
    if routing_key == TRACKED_KEY:
        if row["sent_count"] < 0 or row["failed_count"] < 0:
            return REASON_NEGATIVE
        return REASON_BAD_PAGE if row["page"] < 0 else None
    if row["page"] < 1 or row["page"] > row["total_pages"]:
        return REASON_BAD_PAGE
    return None


def _variants(rng: random.Random) -> list[tuple[str, bytes]]:
    odd_values = [None, "1", 1.0, 1.5, True, False, [], [1], {}, {"a": 1}, -1, 0, 2**63,
                  -(2**63), 2**63 - 1, "x", [1, None], [1, "2"], [True], [1.0], 10**30]
    out = []
    for key, make in ((SEND_KEY, _send), (TRACKED_KEY, _tracked)):
        base = make()
        out.append((key, json.dumps(base).encode()))
        for name in base:
            out.append((key, json.dumps({k: v for k, v in base.items() if k != name})
                        .encode()))
            for v in odd_values:
                out.append((key, json.dumps({**base, name: v}).encode()))
        text = json.dumps(base)
        out += [
            (key, (" " + text).encode()), (key, (text + " ").encode()),
            (key, json.dumps(base, indent=2).encode()),
            (key, b"\xef\xbb\xbf" + text.encode()),
            (key, text.replace('"c"', '"\\ud800"').encode()),
            (key, text.replace('"c"', '"a\tb"').encode()),  # a raw control character
            (key, text.replace('"c"', '"\\u0000\\n"').encode()),
            (key, text.replace('"c"', '"café"').encode()),
            (key, (text[:-1] + ', "extra": {"deep": [1, 2, {"x": NaN}]}}').encode()),
            (key, (text[:-1] + ', "extra": {"deep": [1, 2, {"x": null}]}}').encode()),
            (key, (text[:-1] + ', "extra": [Infinity, -Infinity]}').encode()),
            (key, (text[:-1] + ', "extra": [Inf, -Inf, nan, inf]}').encode()),
            (key, (text[:-1] + ', "extra": "NaN and Infinity in a string"}').encode()),
            (key, (text[:-1] + ', "campaignId": 8}').encode()),  # a duplicate key
            (key, (text + text).encode()), (key, (text + " null").encode()),
            (key, (text + "null" + text).encode()),
            (key, b"null"), (key, b"[]"), (key, b"{}"), (key, b""), (key, b"\xff\xfe"),
            (key, b"{"), (key, b"}"), (key, b"{}}"), (key, b'{"a":1,}'),
            (key, text.replace("7", "07", 1).encode()),
            (key, text.replace(", ", ",\n", 1).encode()),
            (key, text.replace(", ", ",\r", 1).encode()),
        ]
    out.append(("campaigns.other", json.dumps(_send()).encode()))
    out.append(("", b"{}"))
    rng.shuffle(out)
    return out


def test_classify_agrees_with_the_row_by_row_reference():
    rng = random.Random(20260302)
    variants = _variants(rng)
    rows = [_row(k, b, at=NOW + timedelta(microseconds=i)) for i, (k, b) in enumerate(variants)]
    sends, tracked, quarantined = classify(pa.Table.from_pylist(rows,
                                                                schema=LANDED_MESSAGE_SCHEMA))
    got = dict(zip(quarantined["event_id"].to_pylist(), quarantined["reason"].to_pylist(),
                   strict=True))
    valid = set(sends["message_key"].to_pylist()) | set(tracked["message_key"].to_pylist())
    assert len(valid) + len(got) == len({r["message_key"] for r in rows})
    assert not valid & set(got)
    mismatches = []
    for (k, b), r in zip(variants, rows, strict=True):
        want = _reference(k, b)
        have = None if r["message_key"] in valid else got.get(r["message_key"])
        if want != have:
            mismatches.append((k, b, want, have))
    assert mismatches == [], "\n".join(map(repr, mismatches))
    # the values the vectorized path typed are those the reference reads
    for table, fields in ((sends, broker_mod._SEND_FIELDS),
                          (tracked, broker_mod._TRACKED_FIELDS)):
        bodies = {r["message_key"]: r["body"] for r in rows}
        for out in table.to_pylist():
            ref, _ = broker_mod._parse_row(bodies[out["message_key"]], fields)
            assert {c: out[c] for c in ref} == ref


def test_classify_agrees_with_the_reference_on_mutated_bodies():
    """Random edits of well-formed bodies (characters deleted, inserted, replaced)."""
    rng = random.Random(7)
    alphabet = list(b'{}[]",:0123456789-+.eE tnrufalsNI\\/\t\x00abc') + [0xFF, 0xC3, 0xA9]
    variants = []
    for _ in range(600):
        key = rng.choice([SEND_KEY, TRACKED_KEY])
        b = bytearray(json.dumps((_send if key == SEND_KEY else _tracked)()).encode())
        for _ in range(rng.randint(1, 3)):
            op, i = rng.random(), rng.randrange(len(b))
            if op < 0.33:
                del b[i]
            elif op < 0.66:
                b.insert(i, rng.choice(alphabet))
            else:
                b[i] = rng.choice(alphabet)
        variants.append((key, bytes(b)))
    rows = [_row(k, b, at=NOW + timedelta(microseconds=i)) for i, (k, b) in enumerate(variants)]
    sends, tracked, quarantined = classify(pa.Table.from_pylist(rows,
                                                                schema=LANDED_MESSAGE_SCHEMA))
    got = dict(zip(quarantined["event_id"].to_pylist(), quarantined["reason"].to_pylist(),
                   strict=True))
    valid = set(sends["message_key"].to_pylist()) | set(tracked["message_key"].to_pylist())
    assert 0 < len(valid) < len(variants)
    mismatches = [(k, b) for (k, b), r in zip(variants, rows, strict=True)
                  if _reference(k, b) != (None if r["message_key"] in valid
                                          else got.get(r["message_key"]))]
    assert mismatches == []


def test_classify_parses_well_formed_bodies_together(monkeypatch):
    """Only the bodies pyarrow's reader rejects (or never sees) are parsed one by one."""
    calls = []
    real = broker_mod._parse_row
    monkeypatch.setattr(broker_mod, "_parse_row",
                        lambda body, fields: calls.append(body) or real(body, fields))
    rows = [_row(SEND_KEY, json.dumps(_send(campaignId=c, page=p, totalPages=4,
                                            contactIds=list(range(p * 1000, p * 1000 + 1000))
                                            )).encode())
            for c in range(50) for p in range(1, 5)]
    bad = [json.dumps(_send(campaignId="x")).encode(), b"{oops}",
           json.dumps(_send(page=1.0)).encode()]
    rows[17:17] = [_row(SEND_KEY, b) for b in bad]
    rows += [_row(TRACKED_KEY, json.dumps(_tracked(page=p)).encode()) for p in range(300)]
    sends, tracked, quarantined = classify(pa.Table.from_pylist(rows,
                                                                schema=LANDED_MESSAGE_SCHEMA))
    assert (sends.num_rows, tracked.num_rows, quarantined.num_rows) == (200, 300, 3)
    assert sorted(calls) == sorted(bad)
    assert sends["contact_ids"].type == pa.list_(pa.int64())
    assert pc.sum(pc.list_value_length(sends["contact_ids"])).as_py() == 200_000


def test_classify_keeps_the_first_delivery_and_counts_the_others():
    body = json.dumps(_send()).encode()
    later = NOW + timedelta(seconds=5)
    rows = [_row(SEND_KEY, body, "m1", at=later, redelivered=True),
            _row(SEND_KEY, body, "m1", at=NOW),
            _row(SEND_KEY, body, "m1", at=later)]
    sends, _, _ = classify(pa.Table.from_pylist(rows, schema=LANDED_MESSAGE_SCHEMA))
    assert sends.select(["message_key", "received_at", "redelivered", "delivery_count",
                         "publications"]).to_pylist() == [
        {"message_key": "m1", "received_at": NOW, "redelivered": True, "delivery_count": 3,
         "publications": 1}]
    empty = classify(LANDED_MESSAGE_SCHEMA.empty_table())
    assert [t.num_rows for t in empty] == [0, 0, 0]
    assert [t.schema for t in empty] == [SEND_SCHEMA, TRACKED_SCHEMA, QUARANTINE_SCHEMA]


def test_message_key_is_the_id_else_the_hash_of_key_and_body():
    assert message_key(SEND_KEY, b"{}", "abc") == "abc"
    assert message_key(SEND_KEY, b"{}", None) == message_key(SEND_KEY, b"{}", "")
    assert message_key(SEND_KEY, b"{}", None) != message_key(TRACKED_KEY, b"{}", None)
    assert message_key(SEND_KEY, b"{}", None).startswith("sha256:")


@pytest.mark.parametrize("parts", [1, 2, 5, 40])
def test_parses_of_any_split_merge_to_classify_of_all(parts):
    """Deliveries parsed drain by drain (each message parsed once, when landed) and merged
    give exactly what classifying them all at once gives: redeliveries across drains count
    once with their deliveries summed, the first delivery wins, duplicates of a page are
    flagged across drains, malformed messages quarantined once."""
    rng = random.Random(parts)
    variants = _variants(rng)[:120]
    rows = []
    for i, (k, b) in enumerate(variants):
        rows.append(_row(k, b, at=NOW + timedelta(seconds=i)))
        if i % 3 == 0:  # delivered again later (another drain, probably), flagged or not
            rows.append(_row(k, b, redelivered=i % 2 == 0,
                             at=NOW + timedelta(seconds=500 + i)))
    # a page published twice under two ids, a report delivered twice under one id
    rows += [_row(SEND_KEY, json.dumps(_send(page=2)).encode(), "p-a", at=NOW),
             _row(SEND_KEY, json.dumps(_send(page=2)).encode(), "p-b",
                  at=NOW + timedelta(seconds=900)),
             _row(TRACKED_KEY, json.dumps(_tracked()).encode(), "t-1", at=NOW),
             _row(TRACKED_KEY, json.dumps(_tracked()).encode(), "t-1", redelivered=True,
                  at=NOW + timedelta(seconds=901))]
    for i, r in enumerate(rows):
        r["delivery_tag"] = i + 1
    table = pa.Table.from_pylist(rows, schema=LANDED_MESSAGE_SCHEMA)
    cut = np.sort(np.random.default_rng(parts).permutation(len(rows))[:parts - 1])
    pieces = np.split(np.random.default_rng(parts + 1).permutation(len(rows)), cut)
    parsed = pa.concat_tables([parse_messages(table.take(pa.array(np.sort(p))), NOW)
                               for p in pieces])
    assert parsed.schema == PARSED_SCHEMA
    merged, whole = merge_parsed(parsed), classify(table)
    for got, want in zip(merged, whole, strict=True):
        assert got.schema == want.schema
        assert got.to_pylist() == want.to_pylist()
    sends, tracked, _ = merged
    page2 = sends.filter(pc.equal(sends["message_key"], "p-b"))
    assert page2["duplicate_publication"].to_pylist() == [True]
    t1 = tracked.filter(pc.equal(tracked["message_key"], "t-1"))
    assert t1.select(["delivery_count", "redelivered"]).to_pylist() == [
        {"delivery_count": 2, "redelivered": True}]
