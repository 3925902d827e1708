"""The campaign source's broker side: the pipeline's own queue on the ``campaigns``
exchange, a bounded drain that lands messages durably before acknowledging them, and the
classification of landed messages into pages sent, pages tracked and quarantine.

At least once, end to end: a drain acknowledges a batch of deliveries only after the batch
is landed and fsynced (``ProviderEventLog.append(durable=True)``), so a crash anywhere
before the acknowledgement leaves the messages with the broker, which delivers them again;
landing the same message twice is harmless, because ``classify`` (like the log's read)
keeps one row per ``message_key``. Nothing is ever requeued on purpose: a malformed body is
landed and acknowledged like any other message and quarantined by ``classify``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pika
import pika.exceptions
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from analytics_pipeline.campaigns.contract import (
    CAMPAIGN_SOURCE,
    DEFAULT_QUEUE,
    EXCHANGE,
    LANDED_MESSAGE_SCHEMA,
    REASON_BAD_PAGE,
    REASON_BAD_TYPE,
    REASON_MISSING_FIELD,
    REASON_NEGATIVE,
    REASON_NOT_JSON,
    REASON_UNKNOWN_KEY,
    ROUTING_KEYS,
    SEND_KEY,
    TRACKED_KEY,
)
from analytics_pipeline.core.landing import ProviderEventLog
from analytics_pipeline.core.rollups import QUARANTINE_SCHEMA

DRAIN_BATCH_SIZE = 5000  # deliveries landed (one fsynced file per UTC date) per acknowledgement
DRAIN_MAX_SECONDS = 60.0  # a drain stops taking new batches after this
DRAIN_IDLE_SECONDS = 1.0  # a drain stops when nothing arrives for this long


class BrokerUnavailable(ConnectionError):
    """The broker could not be reached (the URL is named without its password)."""


class QueueNotFound(LookupError):
    """The pipeline's queue does not exist (a drain declares it)."""


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@contextmanager
def connect(url: str) -> Iterator[pika.BlockingConnection]:
    """A blocking connection to ``url`` (``amqp://user:password@host:port/vhost``, pika's
    URL parameters accepted), closed afterwards; closing it returns every delivery not
    acknowledged to the queue."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailable(
            f"RabbitMQ not reachable at {redact(url)}: {type(exc).__name__}") from None
    try:
        yield connection
    finally:
        try:
            if connection.is_open:
                connection.close()
        except pika.exceptions.AMQPError:  # already broken: the broker requeues regardless
            pass


def declare(channel, queue: str = DEFAULT_QUEUE, exchange: str = EXCHANGE) -> None:
    """The durable topic exchange and the pipeline's own durable queue, bound to both
    routing keys (idempotent). ``exchange`` is only ever changed by tests."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue, durable=True)
    for key in ROUTING_KEYS:
        channel.queue_bind(queue, exchange, routing_key=key)


def _ready(channel, queue: str) -> int:
    try:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            raise QueueNotFound(f"queue {queue!r} does not exist: a drain declares it") \
                from None
        raise


def pending_messages(url: str, queue: str = DEFAULT_QUEUE) -> int:
    """The queue's ready messages (not those delivered and not yet acknowledged), by a
    passive declare: nothing is consumed. A missing queue raises ``QueueNotFound``."""
    with connect(url) as connection:
        return _ready(connection.channel(), queue)


def message_key(routing_key: str, body: bytes, message_id: str | None) -> str:
    """A message's identity across redeliveries: its ``message_id`` when the publisher set
    one, else ``sha256:`` of the routing key, a NUL byte and the body."""
    if message_id:
        return message_id
    digest = hashlib.sha256(routing_key.encode() + b"\0" + bytes(body)).hexdigest()
    return f"sha256:{digest}"


@dataclass(frozen=True)
class DrainResult:
    """What one drain took from the queue and landed (counts of deliveries)."""

    received: int
    landed: int  # rows appended to the landing (all received, once acknowledged)
    # deliveries the broker flagged as delivered before (to a consumer that did not
    # acknowledge them: crashed, or handed them back unlanded at a deadline)
    redelivered: int
    by_routing_key: dict[str, int]
    batches: int  # landings, each followed by one acknowledgement
    files: int
    dates: list[date]  # UTC dates (of received_at) landed under
    seconds: float  # wall time
    stopped_by: str  # "drained" | "max_messages" | "idle" | "deadline"

    def metadata(self) -> dict:
        """Flat values for a materialization's metadata."""
        return {"received": self.received, "landed": self.landed,
                "redelivered": self.redelivered, "batches": self.batches,
                "files": self.files, "seconds": round(self.seconds, 3),
                "stopped_by": self.stopped_by,
                **{f"received_{k}": v for k, v in sorted(self.by_routing_key.items())}}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _published_at(props) -> datetime | None:
    """The AMQP ``timestamp`` property (epoch seconds), None when unset or unusable."""
    stamp = getattr(props, "timestamp", None)
    if stamp is None or isinstance(stamp, bool):
        return None
    try:
        return datetime.fromtimestamp(int(stamp), timezone.utc)
    except (OverflowError, OSError, ValueError, TypeError):
        return None


def _fetch_id(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:64] or "drain"


def _acknowledge(channel, delivery_tag: int) -> None:
    """Every delivery up to ``delivery_tag`` (one frame)."""
    channel.basic_ack(delivery_tag=delivery_tag, multiple=True)


def drain_and_land(
    url: str,
    queue: str,
    log: ProviderEventLog,
    max_messages: int,
    run_id: str,
    now: Callable[[], datetime] = _utcnow,
    *,
    exchange: str = EXCHANGE,
    batch_size: int = DRAIN_BATCH_SIZE,
    max_seconds: float = DRAIN_MAX_SECONDS,
    idle_seconds: float = DRAIN_IDLE_SECONDS,
) -> DrainResult:
    """Take up to ``max_messages`` deliveries from ``queue`` and land them in ``log``
    (``LANDED_MESSAGE_SCHEMA``, under the UTC date of ``received_at``, from ``now()``).

    The exchange and queue are declared first (idempotent). Deliveries come through one
    consumer with manual acknowledgements and a prefetch of one batch: each batch (at most
    ``batch_size``) is landed durably (fsynced) and only then acknowledged up to its last
    delivery tag. A failure before that acknowledgement acknowledges nothing of the batch:
    the connection closes and the broker delivers those messages again (flagged
    redelivered); batches acknowledged before stay acknowledged. The drain takes at most
    the messages ready when it started, and stops when nothing came for ``idle_seconds``
    or, between deliveries, after ``max_seconds``.
    """
    if max_messages < 1:
        raise ValueError("max_messages must be at least 1")
    started = time.monotonic()
    deadline = started + max_seconds
    received = redelivered = batches = files = 0
    by_key: Counter[str] = Counter()
    dates: set[date] = set()
    stopped_by = "drained"
    with connect(url) as connection:
        channel = connection.channel()
        declare(channel, queue, exchange)
        ready = _ready(channel, queue)
        target = min(max_messages, ready)
        if ready > max_messages:
            stopped_by = "max_messages"
        while received < target:
            if time.monotonic() >= deadline:
                stopped_by = "deadline"
                break
            want = min(batch_size, target - received, 65535)
            channel.basic_qos(prefetch_count=want)
            rows: list[tuple] = []
            last_tag = None
            idle = False
            for method, props, body in channel.consume(queue, auto_ack=False,
                                                       inactivity_timeout=idle_seconds):
                if method is None:
                    idle = True
                    break
                received_at = now()
                if received_at.tzinfo is None:
                    received_at = received_at.replace(tzinfo=timezone.utc)
                mid = _text(props.message_id)
                rows.append((message_key(method.routing_key, body, mid), mid,
                             method.routing_key, bytes(body), int(method.delivery_tag),
                             bool(method.redelivered), received_at, _published_at(props)))
                last_tag = method.delivery_tag
                if len(rows) >= want or time.monotonic() >= deadline:
                    break
            channel.cancel()  # requeues what was prefetched beyond this batch (none usually)
            if rows:
                table = _landed_table(rows, run_id)
                files += log.append(table, f"{_fetch_id(run_id)}-{batches:04d}",
                                    time_column="received_at", durable=True)
                _acknowledge(channel, last_tag)
                batches += 1
                received += len(rows)
                redelivered += sum(r[5] for r in rows)
                by_key.update(r[2] for r in rows)
                dates.update(r[6].astimezone(timezone.utc).date() for r in rows)
            if idle:
                stopped_by = "idle"
                break
            if not rows:
                break
    return DrainResult(
        received=received, landed=received, redelivered=redelivered,
        by_routing_key=dict(sorted(by_key.items())), batches=batches, files=files,
        dates=sorted(dates), seconds=time.monotonic() - started, stopped_by=stopped_by)


def _landed_table(rows: list[tuple], run_id: str) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    names = ["message_key", "message_id", "routing_key", "body", "delivery_tag",
             "redelivered", "received_at", "published_at"]
    data = {n: pa.array(c, LANDED_MESSAGE_SCHEMA.field(n).type)
            for n, c in zip(names, cols, strict=True)}
    data["consumer_run"] = pa.array([run_id] * len(rows), pa.string())
    return pa.table(data, schema=LANDED_MESSAGE_SCHEMA)


# --- classification ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    json: str
    column: str
    type: pa.DataType
    required: bool = True


_SEND_FIELDS = (
    _Field("campaignId", "campaign_id", pa.int64()),
    _Field("page", "page", pa.int64()),
    _Field("totalPages", "total_pages", pa.int64()),
    _Field("contactIds", "contact_ids", pa.list_(pa.int64())),
    _Field("templateId", "template_id", pa.int64(), required=False),
    _Field("channelType", "channel_type", pa.string()),
    _Field("correlationId", "correlation_id", pa.string(), required=False),
)
_TRACKED_FIELDS = (
    _Field("campaignId", "campaign_id", pa.int64()),
    _Field("page", "page", pa.int64()),
    _Field("sentCount", "sent_count", pa.int64()),
    _Field("failedCount", "failed_count", pa.int64()),
    _Field("completed", "completed", pa.bool_()),
    _Field("correlationId", "correlation_id", pa.string(), required=False),
)

_ts = pa.timestamp("us", tz="UTC")
_META = [
    pa.field("message_key", pa.string()),
    pa.field("received_at", _ts),  # the first delivery's
    pa.field("published_at", _ts),
    pa.field("redelivered", pa.bool_()),  # the broker flagged a delivery as redelivered
    pa.field("delivery_count", pa.int64()),  # deliveries landed
]

# One row per distinct message; ``publications``: distinct messages of the same campaign
# page, ``duplicate_publication``: not the first of them (received first) - a page
# published twice under different message ids.
SEND_SCHEMA = pa.schema(
    [pa.field(f.column, f.type) for f in _SEND_FIELDS] + _META
    + [pa.field("publications", pa.int64()), pa.field("duplicate_publication", pa.bool_())])
# Likewise ``reports`` / ``duplicate_report``: a page's outcome reported twice.
TRACKED_SCHEMA = pa.schema(
    [pa.field(f.column, f.type) for f in _TRACKED_FIELDS] + _META
    + [pa.field("reports", pa.int64()), pa.field("duplicate_report", pa.bool_())])

_INT64 = (-(2**63), 2**63)


def _reject_constant(name: str):
    raise ValueError(f"not JSON: {name}")


def _valid(value, type_: pa.DataType) -> bool:
    if pa.types.is_int64(type_):
        return type(value) is int and _INT64[0] <= value < _INT64[1]
    if pa.types.is_boolean(type_):
        return type(value) is bool
    if pa.types.is_string(type_):
        if not isinstance(value, str):
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape
            return False
        return True
    if pa.types.is_list(type_):
        return isinstance(value, list) and all(_valid(v, type_.value_type) for v in value)
    raise TypeError(type_)


def _parse_row(body: bytes, fields: tuple[_Field, ...]) -> tuple[dict | None, str | None]:
    """One body the slow way: strict UTF-8 JSON (no NaN/Infinity) whose top level is an
    object; then every required field present and not null; then every field's type.
    The reference the vectorized path must agree with."""
    try:
        obj = json.loads(bytes(body).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, REASON_NOT_JSON
    if not isinstance(obj, dict):
        return None, REASON_NOT_JSON
    if any(f.required and obj.get(f.json) is None for f in fields):
        return None, REASON_MISSING_FIELD
    row = {}
    for f in fields:
        value = obj.get(f.json)
        if value is not None and not _valid(value, f.type):
            return None, REASON_BAD_TYPE
        row[f.column] = value
    return row, None


def _as_text(bodies: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The bodies as large strings (null where not UTF-8), and which are UTF-8."""
    try:
        return bodies.cast(pa.large_string()), np.ones(len(bodies), dtype=bool)
    except (pa.ArrowInvalid, UnicodeDecodeError):  # rare: decode row by row
        texts = []
        for b in bodies.to_pylist():
            try:
                texts.append(None if b is None else b.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(None)
        text = pa.array(texts, pa.large_string())
        return text, pc.is_valid(text).to_numpy(zero_copy_only=False)


def _read_json(lines: pa.Array, schema: pa.Schema) -> pa.Table | None:
    """The NDJSON reader over ``lines`` (one object per line), None if it fails."""
    lines = lines.cast(pa.large_string())
    joined = pc.binary_join_element_wise(lines, pa.scalar("", pa.large_string()),
                                         pa.scalar("\n", pa.large_string()))
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)
    start, end = int(offsets[joined.offset]), int(offsets[joined.offset + len(joined)])
    data = joined.buffers()[2].slice(start, end - start)
    longest = int(pc.max(pc.binary_length(lines)).as_py() or 0)
    try:
        return pajson.read_json(
            pa.BufferReader(data),
            read_options=pajson.ReadOptions(block_size=max(1 << 20, 2 * longest + 2)),
            parse_options=pajson.ParseOptions(explicit_schema=schema,
                                              unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _parse(bodies: pa.Array, fields: tuple[_Field, ...]) -> tuple[pa.Table, np.ndarray,
                                                                     dict[int, str]]:
    """Parse ``bodies``: (the typed values of the rows that parsed and typed, their row
    numbers, {row: reason} of the others). Candidates (UTF-8, one line, ``{...}``, no
    ``NaN``/``Inf`` anywhere) go through pyarrow's JSON reader together; a block it
    rejects is halved until the rows it rejects are alone, and only those, and the
    others, are parsed row by row."""
    schema = pa.schema([pa.field(f.json, f.type) for f in fields])
    text, utf8 = _as_text(bodies)
    filled = pc.fill_null(text, "")
    candidate = (utf8
                 & pc.starts_with(filled, "{").to_numpy(zero_copy_only=False)
                 & pc.ends_with(filled, "}").to_numpy(zero_copy_only=False)
                 & ~pc.match_substring(filled, "\n").to_numpy(zero_copy_only=False)
                 & ~pc.match_substring(filled, "\r").to_numpy(zero_copy_only=False)
                 # the reader takes NaN and Inf(inity) where it skips a field; JSON does not
                 & ~pc.match_substring(filled, "NaN").to_numpy(zero_copy_only=False)
                 & ~pc.match_substring(filled, "Inf").to_numpy(zero_copy_only=False))
    parts: list[tuple[np.ndarray, pa.Table]] = []
    slow: list[int] = list(np.nonzero(~candidate)[0])
    stack = [np.nonzero(candidate)[0]]
    while stack:
        rows = stack.pop()
        if len(rows) == 0:
            continue
        table = _read_json(text.take(pa.array(rows)), schema)
        if table is not None and table.num_rows == len(rows):  # one object per body
            parts.append((rows, table))
        elif len(rows) == 1:
            slow.append(int(rows[0]))
        else:
            half = len(rows) // 2
            stack += [rows[half:], rows[:half]]
    reasons: dict[int, str] = {}
    slow_rows, slow_values = [], []
    for i in sorted(slow):
        value, reason = _parse_row(bodies[i].as_py() or b"", fields)
        if reason is None:
            slow_rows.append(i)
            slow_values.append(value)
        else:
            reasons[i] = reason
    columns = pa.schema([pa.field(f.column, f.type) for f in fields])
    tables = [t.rename_columns(columns.names).cast(columns) for _, t in parts]
    if slow_values:
        tables.append(pa.Table.from_pylist(slow_values, schema=columns))
    rows = np.concatenate([r for r, _ in parts] + [np.array(slow_rows, dtype=np.int64)]) \
        if parts or slow_rows else np.zeros(0, dtype=np.int64)
    values = pa.concat_tables(tables) if tables else columns.empty_table()
    return values, rows.astype(np.int64), reasons


def _rule_reasons(values: pa.Table, fields: tuple[_Field, ...], kind: str) -> pa.Array:
    """The reason of each typed row (null: valid), first rule broken: a required field
    null, a list with a null element, a negative count, the page out of range."""
    n = values.num_rows
    reason = pa.nulls(n, pa.string())

    def flag(mask, why: str):
        nonlocal reason
        mask = pc.fill_null(mask, False)
        reason = pc.if_else(pc.and_(pc.is_null(reason), mask), why, reason)

    missing = pa.array(np.zeros(n, dtype=bool))
    for f in fields:
        if f.required:
            missing = pc.or_(missing, pc.is_null(values[f.column]))
    flag(missing, REASON_MISSING_FIELD)
    for f in fields:
        if pa.types.is_list(f.type):
            col = values[f.column].combine_chunks() if n else pa.array([], f.type)
            bad = np.zeros(n, dtype=bool)
            flat = pc.list_flatten(col)
            if flat.null_count:
                parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
                bad[parents[pc.is_null(flat).to_numpy(zero_copy_only=False)]] = True
            flag(pa.array(bad), REASON_BAD_TYPE)
    if kind == TRACKED_KEY:
        flag(pc.or_(pc.less(values["sent_count"], 0), pc.less(values["failed_count"], 0)),
             REASON_NEGATIVE)
        flag(pc.less(values["page"], 0), REASON_BAD_PAGE)
    else:
        flag(pc.or_(pc.less(values["page"], 1),
                    pc.greater(values["page"], values["total_pages"])), REASON_BAD_PAGE)
    return reason


def _first_of_each_key(table: pa.Table, tag: str, deliveries: str | None) -> pa.Table:
    """One row per ``message_key``: its first delivery (earliest ``received_at``, then the
    ``tag`` column), with ``delivery_count`` the deliveries of the key (the rows, or the sum
    of their ``deliveries`` column) and ``redelivered`` if the broker flagged any."""
    keys = pc.fill_null(table["message_key"], "")
    order = pc.sort_indices(pa.table({"k": keys, "t": table["received_at"],
                                      "tag": table[tag]}),
                            sort_keys=[("k", "ascending"), ("t", "ascending"),
                                       ("tag", "ascending")])
    t = table.take(order)
    k = keys.take(order).combine_chunks()
    n = t.num_rows
    starts = np.ones(n, dtype=bool)
    if n > 1:
        starts[1:] = pc.not_equal(k[1:], k[:-1]).to_numpy(zero_copy_only=False)
    first = np.flatnonzero(starts)
    if deliveries is None:
        counts = np.diff(np.append(first, n))
    else:
        counts = np.add.reduceat(pc.fill_null(t[deliveries], 1).to_numpy(
            zero_copy_only=False).astype(np.int64), first) if n else np.zeros(0, np.int64)
    again = pc.fill_null(t["redelivered"], False).to_numpy(zero_copy_only=False).astype(bool)
    any_again = np.logical_or.reduceat(again, first) if n else np.zeros(0, dtype=bool)
    out = t.take(pa.array(first))
    count = pa.array(counts.astype(np.int64), pa.int64())
    if "delivery_count" in out.column_names:
        out = out.set_column(out.schema.get_field_index("delivery_count"), "delivery_count",
                             count)
    else:
        out = out.append_column("delivery_count", count)
    return out.set_column(out.schema.get_field_index("redelivered"), "redelivered",
                          pa.array(any_again, pa.bool_()))


def _distinct(messages: pa.Table) -> pa.Table:
    """One row per message_key of landed deliveries: its first delivery (by received_at),
    with the number of deliveries landed and whether any was flagged redelivered."""
    return _first_of_each_key(messages, "delivery_tag", None)


def _with_duplicates(table: pa.Table, count_name: str, flag_name: str) -> pa.Table:
    """Sorted by campaign, page, first received (then delivered); ``count_name``: distinct
    messages of the same campaign page; ``flag_name``: every one after the first."""
    table = table.sort_by([("campaign_id", "ascending"), ("page", "ascending"),
                           ("received_at", "ascending"), ("_tag", "ascending"),
                           ("message_key", "ascending")]).drop_columns(["_tag"])
    n = table.num_rows
    if n == 0:
        return table.append_column(count_name, pa.array([], pa.int64())) \
                    .append_column(flag_name, pa.array([], pa.bool_()))
    camp = table["campaign_id"].to_numpy()
    page = table["page"].to_numpy()
    starts = np.ones(n, dtype=bool)
    starts[1:] = (camp[1:] != camp[:-1]) | (page[1:] != page[:-1])
    group = np.cumsum(starts) - 1
    first = np.nonzero(starts)[0]
    sizes = np.diff(np.append(first, n))
    return table.append_column(count_name, pa.array(sizes[group].astype(np.int64))) \
                .append_column(flag_name, pa.array(~starts))


def _kind(distinct: pa.Table, kind: str, fields: tuple[_Field, ...]
          ) -> tuple[pa.Table, pa.Table]:
    """(valid rows with their values and meta columns, quarantine rows) of one key."""
    msgs = distinct.filter(pc.equal(distinct["routing_key"], kind))
    values, rows, reasons = _parse(msgs["body"].combine_chunks(), fields)
    broken = _rule_reasons(values, fields, kind)
    ok = pc.is_null(broken)
    rule_rows = rows[~ok.to_numpy(zero_copy_only=False)]
    for i, why in zip(rule_rows, pc.drop_null(broken).to_pylist(), strict=True):
        reasons[int(i)] = why
    keep = rows[ok.to_numpy(zero_copy_only=False)]
    valid = values.filter(ok)
    meta = msgs.take(pa.array(keep, pa.int64()))
    for f in _META:
        valid = valid.append_column(f, meta[f.name].cast(f.type))
    valid = valid.append_column("_tag", meta["delivery_tag"])  # ties of received_at
    return valid, _quarantine(msgs, reasons)


def _quarantine(msgs: pa.Table, reasons: dict[int, str]) -> pa.Table:
    if not reasons:
        return QUARANTINE_SCHEMA.empty_table()
    rows = sorted(reasons)
    picked = msgs.take(pa.array(rows, pa.int64()))
    payload = [bytes(b or b"").decode("utf-8", "backslashreplace")
               for b in picked["body"].to_pylist()]
    return pa.table({
        "source": pa.array([CAMPAIGN_SOURCE] * len(rows), pa.string()),
        "event_id": picked["message_key"].cast(pa.string()),
        "reason": pa.array([reasons[i] for i in rows], pa.string()),
        "payload": pa.array(payload, pa.string()),
    }, schema=QUARANTINE_SCHEMA)


# One row per distinct message of a parse (one drain's deliveries, or any landed set): the
# fields of both kinds (null where the message's kind has none), its meta columns, the tag
# of its first delivery, and for a malformed message its reason and body (as text, for the
# quarantine); ``parsed_at``: when it was parsed. ``merge_parsed`` of the parses of any
# split of the deliveries equals ``classify`` of them all: a drain's messages are parsed
# once, when they are landed, and never again.
_PARSED_FIELDS = tuple(dict.fromkeys(_SEND_FIELDS + tuple(
    f for f in _TRACKED_FIELDS if f.column not in {g.column for g in _SEND_FIELDS})))
PARSED_SCHEMA = pa.schema(
    [pa.field("routing_key", pa.string())]
    + [pa.field(f.column, f.type) for f in _PARSED_FIELDS] + _META
    + [pa.field("delivery_tag", pa.int64()), pa.field("reason", pa.string()),
       pa.field("payload", pa.string()), pa.field("parsed_at", _ts)])


def _parsed_rows(table: pa.Table, routing_key: str | None, parsed_at: pa.Scalar) -> pa.Table:
    """``table``'s columns in PARSED_SCHEMA, the missing ones null."""
    n = table.num_rows
    cols = []
    for f in PARSED_SCHEMA:
        if f.name == "routing_key" and routing_key is not None:
            cols.append(pa.repeat(pa.scalar(routing_key, pa.string()), n))
        elif f.name == "parsed_at":
            cols.append(pa.repeat(parsed_at, n))
        elif f.name == "delivery_tag" and "_tag" in table.column_names:
            cols.append(table["_tag"].cast(pa.int64()))
        elif f.name in table.column_names:
            cols.append(table[f.name].cast(f.type))
        else:
            cols.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(cols, schema=PARSED_SCHEMA)


def parse_messages(messages: pa.Table, parsed_at: datetime) -> pa.Table:
    """Landed deliveries (``LANDED_MESSAGE_SCHEMA``) to one PARSED_SCHEMA row per distinct
    ``message_key`` (its first delivery; ``delivery_count`` and ``redelivered`` over the
    deliveries given), valid or with the reason ``classify`` gives."""
    messages = messages.select(LANDED_MESSAGE_SCHEMA.names)
    distinct = _distinct(messages)
    at = pa.scalar(parsed_at if parsed_at.tzinfo else parsed_at.replace(tzinfo=timezone.utc),
                   _ts)
    known = pc.is_in(distinct["routing_key"], pa.array(list(ROUTING_KEYS), pa.string()))
    unknown = distinct.filter(pc.invert(pc.fill_null(known, False)))
    sends, bad_sends = _kind(distinct, SEND_KEY, _SEND_FIELDS)
    tracked, bad_tracked = _kind(distinct, TRACKED_KEY, _TRACKED_FIELDS)
    bad = pa.concat_tables([
        _quarantine(unknown, dict.fromkeys(range(unknown.num_rows), REASON_UNKNOWN_KEY)),
        bad_sends, bad_tracked])
    parts = [_parsed_rows(sends, SEND_KEY, at), _parsed_rows(tracked, TRACKED_KEY, at)]
    if bad.num_rows:
        rows = pc.index_in(bad["event_id"], value_set=distinct["message_key"])
        meta = distinct.take(rows)
        meta = meta.append_column("_tag", meta["delivery_tag"]) \
            .append_column("reason", bad["reason"]).append_column("payload", bad["payload"])
        parts.append(_parsed_rows(meta.drop_columns(["delivery_tag"]), None, at))
    return pa.concat_tables(parts)


def merge_parsed(parsed: pa.Table, keep: Sequence[str] = ()
                 ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Parses (PARSED_SCHEMA, of one or several drains) to what ``classify`` gives for all
    their deliveries: one row per ``message_key``, its first delivery (earliest
    ``received_at``, then delivery tag), deliveries summed, redelivered if any was.

    A PARSED_SCHEMA column absent from ``parsed`` comes out null (read ``contact_ids``
    only where needed: they are most of the bytes); ``keep``: extra columns of ``parsed``
    carried after the sends' and reports' own (e.g. where each chosen row was read)."""
    missing = [f for f in PARSED_SCHEMA if f.name not in parsed.column_names]
    for f in missing:
        parsed = parsed.append_column(f, pa.nulls(parsed.num_rows, f.type))
    if parsed.num_rows == 0:
        extra = [parsed.schema.field(k) for k in keep]
        return (pa.schema(list(SEND_SCHEMA) + extra).empty_table(),
                pa.schema(list(TRACKED_SCHEMA) + extra).empty_table(),
                QUARANTINE_SCHEMA.empty_table())
    t = _first_of_each_key(parsed, "delivery_tag", "delivery_count")
    valid = pc.is_null(t["reason"])
    meta = [f.name for f in _META]

    def kind(key: str, fields: tuple[_Field, ...]) -> pa.Table:
        rows = t.filter(pc.and_(valid, pc.equal(t["routing_key"], key)))
        return rows.select([f.column for f in fields] + meta + ["delivery_tag", *keep]) \
            .rename_columns([f.column for f in fields] + meta + ["_tag", *keep])

    sends = _with_duplicates(kind(SEND_KEY, _SEND_FIELDS), "publications",
                             "duplicate_publication")
    tracked = _with_duplicates(kind(TRACKED_KEY, _TRACKED_FIELDS), "reports",
                               "duplicate_report")
    bad = t.filter(pc.invert(valid))
    quarantined = pa.table({
        "source": pa.repeat(pa.scalar(CAMPAIGN_SOURCE), bad.num_rows),
        "event_id": bad["message_key"], "reason": bad["reason"],
        "payload": bad["payload"]}, schema=QUARANTINE_SCHEMA).sort_by(
        [("event_id", "ascending")])
    return _typed(sends, SEND_SCHEMA, keep), _typed(tracked, TRACKED_SCHEMA, keep), quarantined


def _typed(table: pa.Table, schema: pa.Schema, keep: Sequence[str]) -> pa.Table:
    out = table.select(schema.names).cast(schema)
    for k in keep:
        out = out.append_column(table.schema.field(k), table[k])
    return out


def classify(messages: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Landed messages (``LANDED_MESSAGE_SCHEMA``, every delivery or one per message) to
    (sends: ``SEND_SCHEMA``, tracked: ``TRACKED_SCHEMA``, quarantined:
    ``QUARANTINE_SCHEMA``), one row per distinct ``message_key`` in exactly one of them.

    A message is quarantined, with the first reason that applies: a routing key other
    than ``campaigns.send``/``campaigns.tracked``; a body that is not UTF-8 JSON or not an
    object; a required field absent or null; a field of the wrong JSON type (integers are
    integers, not 1.0 or "1"; ``completed`` a boolean; ``contactIds`` integers only); a
    negative ``sentCount``/``failedCount``; a page below 1 (send; tracked: below 0) or
    above ``totalPages``. ``templateId`` and ``correlationId`` may be absent or null;
    fields beyond the contract are ignored.
    """
    return merge_parsed(parse_messages(messages, datetime.now(timezone.utc)))
