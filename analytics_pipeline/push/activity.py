"""Each cohort member's PostHog activity before and after its anchor, aggregated in PostHog.

For an anchor ``t`` and a window ``W`` (hours): *before* is ``[t − W, t)``, *after* is
``[t, t + W)``, exact to the microsecond (an event at ``t`` is after, at ``t − W`` before, at
``t + W`` outside). Counts are of the events the ``EventFilter`` keeps; active hours are the
distinct hour slots ``floor((timestamp − (t − W)) / 1 h)`` (before) or ``floor((timestamp −
t) / 1 h)`` (after) holding at least one such event.

PostHog does the aggregation: one query per batch of at most ``batch`` persons (default
2,000) answers one row per person with every window's four numbers (``countIf`` and
``uniqExactIf`` over the event's offset from its person's anchor, in microseconds), never
one row per event. The persons and their anchors travel as two parallel lists in
``values``; each event finds its anchor with
``arrayElement({anchors}, indexOf({persons}, person_id))``. Events are filtered by
``person_id`` and grouped by it, so a merged person's events (all its distinct ids) count
once, for that person.

Packing: ``indexOf`` finds one anchor per person, so a query may name each person once.
Identical (person, anchor) pairs are asked once and their numbers shared by their cohort
rows. A person with several distinct anchors (pushed twice in a partition, or a comparison
user of several campaigns) has them in different queries, dealt out with everyone else's
pairs (``pack_batches``): ``n`` distinct pairs take ``ceil(n / batch)`` queries whatever
the number of windows, unless a person holds more anchors than that (a person's ``k``
anchors need ``k`` queries).

Batch size: the persons and anchors travel inside the query (~70 bytes a pair), so 2,000
pairs are ~140 KB of query text, within ClickHouse's default ``max_query_size`` (256 KiB)
that PostHog's HogQL ends in; ``MAX_BATCH`` (2,500) keeps to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.push.posthog import MAX_PAGE, PostHogClient, PostHogError

EVENTS_SETTING = "ANALYTICS_PUSH_EVENTS"
MAX_BATCH = 2500  # persons per query (query text size, see the module docstring)
DEFAULT_BATCH = 2000
HOUR_US = 3_600_000_000
COUNT_COLUMNS = ("before_events", "after_events", "before_hours", "after_hours")


@dataclass(frozen=True)
class EventFilter:
    """Which PostHog events count: by default every event except PostHog's own
    (``$``-prefixed: ``$pageview``, ``$autocapture``, ``$identify``, …), or exactly the
    listed event names."""

    events: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.events is not None:
            names = tuple(dict.fromkeys(e.strip() for e in self.events if e and e.strip()))
            if not names:
                raise ValueError("EventFilter: an explicit event list must name an event")
            object.__setattr__(self, "events", names)

    @classmethod
    def parse(cls, value: str | None) -> EventFilter:
        """From the setting's text: comma-separated event names; empty means the default."""
        names = [e.strip() for e in (value or "").split(",") if e.strip()]
        return cls(tuple(names)) if names else cls()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EventFilter:
        """From ``ANALYTICS_PUSH_EVENTS``."""
        return cls.parse((os.environ if environ is None else environ).get(EVENTS_SETTING))

    def condition(self) -> tuple[str, dict]:
        """The HogQL condition on ``event`` and the values it uses."""
        if self.events is None:
            return "NOT startsWith(event, '$')", {}
        return "event IN {events}", {"events": list(self.events)}


def activity_query(windows: int, event_condition: str) -> str:
    """The HogQL of one batch for ``windows`` windows, their lengths in microseconds given as
    ``{window_0}``, ``{window_1}``…; one row per person, ordered by person."""
    aggregates = []
    for i in range(windows):
        w = f"{{window_{i}}}"
        before = f"offset_us < 0 AND offset_us + {w} >= 0"
        after = f"offset_us >= 0 AND offset_us < {w}"
        aggregates += [
            f"countIf({before}) AS before_events_{i}",
            f"countIf({after}) AS after_events_{i}",
            f"uniqExactIf(intDiv(offset_us + {w}, {HOUR_US}), {before}) AS before_hours_{i}",
            f"uniqExactIf(intDiv(offset_us, {HOUR_US}), {after}) AS after_hours_{i}",
        ]
    select = ",\n       ".join(aggregates)
    return f"""SELECT person_id,
       {select}
FROM (
    SELECT person_id,
           dateDiff('microsecond',
                    toDateTime(arrayElement({{anchors}},
                                            indexOf({{persons}}, toString(person_id)))),
                    timestamp) AS offset_us
    FROM events
    WHERE person_id IN {{persons}}
      AND timestamp >= toDateTime({{since}}) AND timestamp < toDateTime({{until}})
      AND ({event_condition})
)
GROUP BY person_id
ORDER BY person_id"""


def _windows(windows_hours: Sequence[int]) -> list[int]:
    windows = [int(w) for w in windows_hours]
    if not windows:
        raise ValueError("fetch_activity: at least one window is needed")
    if any(w <= 0 or w != v for w, v in zip(windows, windows_hours, strict=True)):
        raise ValueError(f"fetch_activity: windows must be positive whole hours, got "
                         f"{list(windows_hours)}")
    if len(set(windows)) != len(windows):
        raise ValueError(f"fetch_activity: repeated window in {windows}")
    return windows


def _anchor_micros(anchor: pa.ChunkedArray) -> np.ndarray:
    """Anchors as epoch microseconds (UTC; a naive timestamp is UTC)."""
    if not pa.types.is_timestamp(anchor.type):
        raise ValueError(f"fetch_activity: anchor_at must be a timestamp, got {anchor.type}")
    micros = pc.cast(anchor, pa.timestamp("us", tz=anchor.type.tz), safe=False)
    return micros.cast(pa.int64()).to_numpy()


def _iso(micros: np.ndarray) -> list[str]:
    return np.char.add(np.datetime_as_string(micros.astype("datetime64[us]"), unit="us"),
                       "Z").tolist()


def _iso_second(micros: int, up: bool) -> str:
    """An instant rounded to a whole second (down, or up), as ISO 8601 UTC."""
    seconds = -(-micros // 1_000_000) if up else micros // 1_000_000
    return str(np.datetime64(int(seconds), "s")) + "Z"


def pack_batches(code: np.ndarray, batch: int) -> list[np.ndarray]:
    """Pair indices grouped into the fewest queries of at most ``batch`` pairs with no
    person twice in one: ``max(ceil(n / batch), k)`` queries for ``n`` pairs when a person
    holds at most ``k`` of them (``code`` is each pair's person).

    With the pairs listed person by person, the ``i``-th goes to query ``i mod q``: a
    person's consecutive pairs (``k ≤ q``) land in different queries, and each query gets
    ``n / q ≤ batch`` pairs, rounded.
    """
    n = len(code)
    if not n:
        return []
    by_person = np.argsort(code, kind="stable")
    _, per_person = np.unique(code, return_counts=True)
    q = max(-(-n // batch), int(per_person.max()))
    slot = np.arange(n) % q
    order = by_person[np.argsort(slot, kind="stable")]
    bounds = np.searchsorted(np.sort(slot), np.arange(q + 1))
    return [np.sort(order[bounds[i]:bounds[i + 1]]) for i in range(q)]


def fetch_activity(client: PostHogClient, cohort: pa.Table, windows_hours: Sequence[int],
                   event_filter: EventFilter | None = None, batch: int = DEFAULT_BATCH,
                   page_size: int = MAX_PAGE) -> pa.Table:
    """One row per cohort row and window, in cohort order then ``windows_hours`` order: the
    cohort's columns (passed through), ``window_hours`` (int32) and ``before_events``,
    ``after_events``, ``before_hours``, ``after_hours`` (int64, 0 without events).

    ``cohort`` holds ``person_id`` (PostHog person, text) and ``anchor_at`` (timestamp,
    UTC) plus any passthrough columns. Queries: one per ``batch`` (≤ 2,500) distinct
    (person, anchor) pairs, a person at most once per query (see the module docstring), all
    windows in the same query; an answer longer than ``page_size`` rows is paged.
    """
    windows = _windows(windows_hours)
    event_filter = event_filter or EventFilter()
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be within 1..{MAX_BATCH}, got {batch}")
    for name in ("person_id", "anchor_at"):
        if name not in cohort.column_names:
            raise ValueError(f"fetch_activity: cohort needs a {name} column")
        if cohort[name].null_count:
            raise ValueError(f"fetch_activity: cohort {name} must not be null")
    clash = [c for c in ("window_hours", *COUNT_COLUMNS) if c in cohort.column_names]
    if clash:
        raise ValueError(f"fetch_activity: cohort already has column(s) {clash}")

    n, k = cohort.num_rows, len(windows)
    counts = np.zeros((0, k, len(COUNT_COLUMNS)), np.int64)
    inverse = np.zeros(0, np.int64)
    if n:
        encoded = pc.dictionary_encode(cohort["person_id"].cast(pa.string())).combine_chunks()
        persons = encoded.dictionary
        keys = np.column_stack([encoded.indices.to_numpy().astype(np.int64),
                                _anchor_micros(cohort["anchor_at"])])
        # distinct (person, anchor) pairs, sorted by person then anchor
        pairs, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        code, anchor = pairs[:, 0], pairs[:, 1]
        counts = np.zeros((len(pairs), k, len(COUNT_COLUMNS)), np.int64)
        condition, filter_values = event_filter.condition()
        hogql = activity_query(k, condition)
        schema = pa.schema([("person_id", pa.string())] + [
            (f"{c}_{i}", pa.int64()) for i in range(k) for c in COUNT_COLUMNS])
        widest = max(windows) * HOUR_US
        for chunk in pack_batches(code, batch):
            names = persons.take(pa.array(code[chunk]))
            values = {
                "persons": names.to_pylist(), "anchors": _iso(anchor[chunk]),
                "since": _iso_second(int(anchor[chunk].min()) - widest, up=False),
                "until": _iso_second(int(anchor[chunk].max()) + widest, up=True),
                **{f"window_{j}": w * HOUR_US for j, w in enumerate(windows)},
                **filter_values}
            answer = client.query_all(hogql, values, page_size=page_size, schema=schema)
            at = pc.index_in(answer["person_id"], value_set=names)
            if at.null_count:
                raise PostHogError("PostHog answered activity for a person not asked for")
            target = chunk[at.to_numpy()]
            for j in range(k):
                for c, column in enumerate(COUNT_COLUMNS):
                    counts[target, j, c] = answer[f"{column}_{j}"].to_numpy()

    out = cohort.take(pa.array(np.repeat(np.arange(n), k)))
    out = out.append_column("window_hours", pa.array(np.tile(windows, n), pa.int32()))
    per_row = counts[inverse]  # (cohort rows, windows, columns)
    for c, column in enumerate(COUNT_COLUMNS):
        out = out.append_column(column, pa.array(per_row[:, :, c].reshape(-1), pa.int64()))
    return out
