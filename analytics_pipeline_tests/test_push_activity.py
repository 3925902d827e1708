"""Users → PostHog persons (stored, reused, refreshed) and activity around pushes, against the
local PostHog simulator over loopback; the mapping on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from analytics_pipeline.dev.posthog_simulator import PostHogSimulator
from analytics_pipeline.push.activity import (
    COUNT_COLUMNS,
    EVENTS_SETTING,
    EventFilter,
    fetch_activity,
    pack_batches,
)
from analytics_pipeline.push.contract import ACTIVITY_SCHEMA, push_user_mapping
from analytics_pipeline.push.mapping import map_users
from analytics_pipeline.push.posthog import PostHogClient

T0 = 1_772_000_000.0  # 2026-02-25T06:13:20Z
NOW = datetime(2026, 2, 25, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
US = timedelta(microseconds=1)
TS = pa.timestamp("us", tz="UTC")


@pytest.fixture
def posthog():
    with PostHogSimulator(clock=lambda: T0) as s:
        yield s


@pytest.fixture
def client(posthog):
    return PostHogClient(posthog.base_url, posthog.project_id, posthog.api_key,
                         sleep=lambda s: None)


def users_table(rows: list[tuple]) -> pa.Table:
    """(user_id, account_id, email, posthog_distinct_id) rows."""
    return pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "account_id": pa.array([r[1] for r in rows], pa.int64()),
        "email": pa.array([r[2] for r in rows], pa.string()),
        "posthog_distinct_id": pa.array([r[3] for r in rows], pa.string())})


def stored(engine) -> dict[int, tuple]:
    m = push_user_mapping.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(m.user_id, m.account_id, m.person_id, m.method,
                                      m.mapped_at)).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def as_dict(mapping: pa.Table) -> dict[int, tuple]:
    return {r["user_id"]: (r["person_id"], r["method"]) for r in mapping.to_pylist()}


def add_events(sim, rows: list[tuple]) -> None:
    """(event, distinct_id, datetime) rows."""
    sim.add_events({"event": [r[0] for r in rows], "distinct_id": [r[1] for r in rows],
                    "timestamp": pa.array([r[2] for r in rows], TS)})


def cohort_table(rows: list[tuple]) -> pa.Table:
    """(push_id, person_id, anchor_at) rows."""
    return pa.table({"push_id": pa.array([r[0] for r in rows], pa.int64()),
                     "person_id": pa.array([r[1] for r in rows], pa.string()),
                     "anchor_at": pa.array([r[2] for r in rows], TS)})


def by_push(activity: pa.Table) -> dict[tuple[int, int], tuple]:
    return {(r["push_id"], r["window_hours"]): tuple(r[c] for c in COUNT_COLUMNS)
            for r in activity.to_pylist()}


# -- the user mapping ------------------------------------------------------------------------

PERSON_A = "0190d0c4-0000-7000-8000-00000000000a"
PERSON_B = "0190d0c4-0000-7000-8000-00000000000b"


def load_persons(sim) -> None:
    sim.add_person("p1", ["anon-1", "user-1"], email="Alice@Example.COM")  # merged
    sim.add_person("p2", ["user-2"], email="bob@example.com")
    # two persons with one email: the smaller id (as text) wins, whatever the load order
    sim.add_person(PERSON_B, ["d-b"], email="shared@example.com")
    sim.add_person(PERSON_A, ["d-a"], email="SHARED@example.com")


def test_users_map_by_distinct_id_then_email(engine, posthog, client):
    load_persons(posthog)
    users = users_table([
        (1, 10, "someone@else.com", "user-1"),  # the distinct id wins over the email
        (2, 10, "  ALICE@example.com ", "not-in-posthog"),  # falls back to the email
        (3, 10, "Bob@Example.com", None),
        (4, 11, "nobody@example.com", "nope"),
        (5, 11, None, None),
        (6, 11, "shared@example.com", ""),
        (7, 11, None, "anon-1"),  # the merged person's other distinct id
        (1, 10, "someone@else.com", "user-1"),  # given twice: one row
    ])
    result = map_users(engine, client, users, NOW)
    assert result.column_names == ["user_id", "person_id", "method"]
    assert as_dict(result) == {
        1: ("p1", "distinct_id"), 2: ("p1", "email"), 3: ("p2", "email"),
        4: (None, "unmapped"), 5: (None, "unmapped"), 6: (PERSON_A, "email"),
        7: ("p1", "distinct_id")}
    assert result["user_id"].to_pylist() == [1, 2, 3, 4, 5, 6, 7]
    naive = NOW.replace(tzinfo=None)
    assert stored(engine) == {
        1: (10, "p1", "distinct_id", naive), 2: (10, "p1", "email", naive),
        3: (10, "p2", "email", naive), 4: (11, None, "unmapped", naive),
        5: (11, None, "unmapped", naive), 6: (11, PERSON_A, "email", naive),
        7: (11, "p1", "distinct_id", naive)}
    # one query by distinct id, one by email for the users it did not find, as values
    ids_query, email_query = posthog.queries
    assert "person_distinct_ids" in ids_query.query and "{distinct_ids}" in ids_query.query
    assert sorted(ids_query.values["distinct_ids"]) == ["anon-1", "nope", "not-in-posthog",
                                                        "user-1"]
    assert "persons" in email_query.query and "{emails}" in email_query.query
    assert sorted(email_query.values["emails"]) == ["alice@example.com", "bob@example.com",
                                                    "nobody@example.com",
                                                    "shared@example.com"]


def test_stored_mappings_are_reused_then_refreshed(engine, posthog, client):
    load_persons(posthog)
    users = users_table([(1, 10, None, "user-2"), (2, 10, "carol@example.com", None)])
    first = map_users(engine, client, users, NOW, refresh_after=timedelta(days=7))
    assert as_dict(first) == {1: ("p2", "distinct_id"), 2: (None, "unmapped")}
    queries = len(posthog.queries)

    # PostHog changes: carol appears, p2 is merged into p1 (user-2 now names p1)
    posthog.add_person("p3", ["carol-device"], email="carol@example.com")
    posthog.merge("p1", "p2")

    # within refresh_after: both reused (mapped and unmapped), no query at all
    again = map_users(engine, client, users, NOW + timedelta(days=6, hours=23))
    assert as_dict(again) == as_dict(first) and len(posthog.queries) == queries

    # a new user alone is looked up (no distinct id: by email only); the others reused
    more = users_table([(1, 10, None, "user-2"), (2, 10, "carol@example.com", None),
                        (3, 12, "ALICE@example.com", None)])
    mixed = map_users(engine, client, more, NOW + timedelta(days=1))
    assert as_dict(mixed) == {1: ("p2", "distinct_id"), 2: (None, "unmapped"),
                              3: ("p1", "email")}
    assert len(posthog.queries) == queries + 1
    assert posthog.queries[-1].values == {"emails": ["alice@example.com"]}
    queries = len(posthog.queries)

    # after refresh_after: re-queried and upserted with the new answers
    later = NOW + timedelta(days=7, seconds=1)
    refreshed = map_users(engine, client, users, later)
    assert as_dict(refreshed) == {1: ("p1", "distinct_id"), 2: ("p3", "email")}
    assert len(posthog.queries) == queries + 2
    rows = stored(engine)
    assert rows[1] == (10, "p1", "distinct_id", later.replace(tzinfo=None))
    assert rows[2] == (10, "p3", "email", later.replace(tzinfo=None))
    assert rows[3][3] == (NOW + timedelta(days=1)).replace(tzinfo=None)


def test_mapping_queries_hold_at_most_batch_values(engine, posthog, client):
    n = 2_500
    ids = np.arange(n)
    posthog.add_persons({
        "id": np.char.add("person-", ids.astype(str)),
        "email": np.char.add(np.char.add("User", ids.astype(str)), "@Example.com"),
        "distinct_ids": pa.array([[f"d{i}"] for i in range(n)], pa.list_(pa.string()))})
    # the last 600 users have a distinct id PostHog does not know, and their email
    known = ids < n - 600
    users = users_table([
        (int(i), 1, f"user{i}@example.com", f"d{i}" if k else f"gone{i}")
        for i, k in zip(ids, known, strict=True)])
    result = map_users(engine, client, users, NOW, batch=1000)
    methods = result["method"].to_pylist()
    assert methods.count("distinct_id") == n - 600 and methods.count("email") == 600
    assert result["person_id"].to_pylist() == [f"person-{i}" for i in ids]
    sizes = [(sorted(q.values)[0], len(next(iter(q.values.values()))))
             for q in posthog.queries]
    assert sizes == [("distinct_ids", 1000), ("distinct_ids", 1000), ("distinct_ids", 500),
                     ("emails", 600)]
    assert len(stored(engine)) == n
    with pytest.raises(ValueError):
        map_users(engine, client, users, NOW, batch=1001)


# -- activity --------------------------------------------------------------------------------


def test_window_boundaries_are_exact_to_the_microsecond(posthog, client):
    t = datetime(2026, 2, 25, 12, 0, 0, 123_456, tzinfo=timezone.utc)
    posthog.add_person("p1", ["d1"])
    add_events(posthog, [
        ("a", "d1", t - 2 * H - US),  # outside both windows
        ("a", "d1", t - 2 * H),  # before (W=2), first hour slot
        ("a", "d1", t - H - US),  # before (W=2), slot 0
        ("a", "d1", t - H),  # before (W=2: slot 1; W=1: slot 0)
        ("a", "d1", t - US),  # before, last slot
        ("a", "d1", t),  # after, slot 0
        ("a", "d1", t + H - US),  # after, slot 0
        ("a", "d1", t + H),  # after (W=2), slot 1; outside W=1
        ("a", "d1", t + 2 * H - US),  # after (W=2), slot 1
        ("a", "d1", t + 2 * H),  # outside
        ("$pageview", "d1", t),  # PostHog's own: not counted by default
    ])
    out = fetch_activity(client, cohort_table([(1, "p1", t)]), [2, 1])
    assert by_push(out) == {
        # before_events, after_events, before_hours, after_hours
        (1, 2): (4, 4, 2, 2),
        (1, 1): (2, 2, 1, 1),
    }
    assert len(posthog.queries) == 1  # both windows in one query
    # an explicit list: only those events
    only = fetch_activity(client, cohort_table([(1, "p1", t)]), [1],
                          EventFilter(("$pageview",)))
    assert by_push(only) == {(1, 1): (0, 1, 0, 1)}
    assert posthog.queries[-1].values["events"] == ["$pageview"]


def test_activity_output_columns_and_zeros(posthog, client):
    t = NOW
    posthog.add_person("p1", ["d1"])
    add_events(posthog, [("a", "d1", t + 30 * 60 * 1_000_000 * US)])
    cohort = cohort_table([(7, "p1", t), (8, "nobody", t)]).append_column(
        "account_id", pa.array([3, 4], pa.int64()))
    out = fetch_activity(client, cohort, [24, 1])
    assert out.column_names == ["push_id", "person_id", "anchor_at", "account_id",
                                "window_hours", *COUNT_COLUMNS]
    for name in ("window_hours", *COUNT_COLUMNS):
        assert out.schema.field(name).type == ACTIVITY_SCHEMA.field(name).type
    assert out.select(["push_id", "account_id", "window_hours"]).to_pylist() == [
        {"push_id": 7, "account_id": 3, "window_hours": 24},
        {"push_id": 7, "account_id": 3, "window_hours": 1},
        {"push_id": 8, "account_id": 4, "window_hours": 24},
        {"push_id": 8, "account_id": 4, "window_hours": 1}]
    assert by_push(out)[(8, 24)] == (0, 0, 0, 0) and by_push(out)[(7, 1)] == (0, 1, 0, 1)
    empty = fetch_activity(client, cohort.slice(0, 0), [24])
    assert empty.num_rows == 0 and empty.column_names == out.column_names


def test_merged_persons_are_counted_once(posthog, client):
    posthog.add_person("p1", ["anon-1", "user-1"])  # one person, two distinct ids
    posthog.add_person("p2", ["user-2"])
    add_events(posthog, [("a", "anon-1", NOW - 10 * 60 * 1_000_000 * US),
                         ("a", "user-1", NOW - 5 * 60 * 1_000_000 * US),
                         ("a", "user-1", NOW + US), ("a", "anon-1", NOW + 2 * US),
                         ("a", "user-2", NOW + US)])
    out = fetch_activity(client, cohort_table([(1, "p1", NOW), (2, "p2", NOW)]), [1])
    assert by_push(out) == {(1, 1): (2, 2, 1, 1), (2, 1): (0, 1, 0, 1)}
    answer = posthog.queries[-1]
    assert answer.rows == 2  # one row per person, not per event or distinct id
    # merging later moves events: the next fetch counts them for the surviving person
    posthog.merge("p1", "p2")
    out = fetch_activity(client, cohort_table([(1, "p1", NOW)]), [1])
    assert by_push(out) == {(1, 1): (2, 3, 1, 1)}


def test_several_pushes_of_a_person_are_split_into_rounds(posthog, client):
    posthog.add_person("p1", ["d1"])
    posthog.add_person("p2", ["d2"])
    t1, t2, t3 = NOW, NOW + 3 * H, NOW + 30 * 60 * 1_000_000 * US
    add_events(posthog, [("a", "d1", NOW + 10 * US), ("a", "d1", NOW + 3 * H + 10 * US),
                         ("a", "d1", NOW + 3 * H + 20 * US), ("a", "d2", NOW + 10 * US)])
    cohort = cohort_table([(1, "p1", t1), (2, "p1", t2), (3, "p2", t1),
                           (4, "p1", t1),  # the same person and anchor as push 1
                           (5, "p1", t3)])
    out = fetch_activity(client, cohort, [1])
    assert by_push(out) == {
        (1, 1): (0, 1, 0, 1), (4, 1): (0, 1, 0, 1),
        (2, 1): (0, 2, 0, 1),
        (3, 1): (0, 1, 0, 1),
        (5, 1): (1, 0, 1, 0),
    }
    # p1 has three distinct anchors: three rounds, each query names a person once
    assert len(posthog.queries) == 3
    for q in posthog.queries:
        persons = q.values["persons"]
        assert len(persons) == len(set(persons)) and len(q.values["anchors"]) == len(persons)
    assert [sorted(q.values["persons"]) for q in posthog.queries] == [["p1", "p2"], ["p1"],
                                                                      ["p1"]]


def test_rounds_share_queries_and_answers_match_one_query_per_pair(posthog, client):
    """Six persons, two of them with a second anchor: 8 pairs in batches of 4 take two
    queries (not one per round and a partial batch each), no person twice in one, and
    every number matches asking each pair alone."""
    for i in range(6):
        posthog.add_person(f"p{i}", [f"d{i}"])
    add_events(posthog, [("a", f"d{i}", NOW + (i + 1) * 10 * 60 * 1_000_000 * US)
                         for i in range(6)] + [("a", "d0", NOW - US), ("a", "d1", NOW + 2 * H)])
    cohort = cohort_table([(i, f"p{i}", NOW) for i in range(6)]
                          + [(6, "p0", NOW + H), (7, "p1", NOW + 2 * H)])
    out = fetch_activity(client, cohort, [1, 24], batch=4)
    queries = [q.values["persons"] for q in posthog.queries]
    assert len(queries) == 2 and sorted(map(len, queries)) == [4, 4]
    assert all(len(set(q)) == len(q) for q in queries)
    alone = fetch_activity(client, cohort, [1, 24], batch=1)
    assert len(posthog.queries) == 2 + 8
    assert by_push(out) == by_push(alone)
    assert by_push(out)[(6, 1)] == (1, 0, 1, 0) and by_push(out)[(7, 1)] == (0, 1, 0, 1)


@pytest.mark.parametrize("anchors", [[1], [1, 1, 1], [3, 1, 1, 1], [4, 1, 1, 1, 1, 1, 1],
                                     [5, 5, 2, 1, 1, 1, 1], [1, 2, 1, 3, 1, 2]])
@pytest.mark.parametrize("batch", [1, 2, 3, 1000])
@pytest.mark.parametrize("shuffle", [False, True])
def test_packing_takes_the_fewest_queries_a_person_once_each(anchors, batch, shuffle):
    """Each person's ``k`` anchors: every pair in exactly one query, no person twice in a
    query, exactly ``max(ceil(pairs / batch), most anchors of a person)`` queries (the
    least possible), whatever the order of the pairs."""
    code = np.repeat(np.arange(len(anchors)), anchors)
    if shuffle:
        code = np.random.default_rng(len(anchors) * batch).permutation(code)
    batches = pack_batches(code, batch)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(code)))
    assert all(0 < len(b) <= batch and len(set(code[b])) == len(b) for b in batches)
    assert len(batches) == max(-(-len(code) // batch), max(anchors))
    assert pack_batches(code[:0], batch) == []


def test_2500_persons_with_two_windows_take_three_queries(posthog, client):
    n = 2_500
    persons = np.char.add("person-", np.arange(n).astype(str))
    posthog.add_persons({"id": persons, "distinct_ids": pa.array(
        [[f"d{i}"] for i in range(n)], pa.list_(pa.string()))})
    rng = np.random.default_rng(3)
    anchors = int(NOW.timestamp() * 1e6) + rng.integers(0, 86_400_000_000, n)
    # every third person: one event 90 minutes after its push
    who = np.arange(0, n, 3)
    posthog.add_events({"event": np.full(len(who), "opened"),
                        "distinct_id": np.char.add("d", who.astype(str)),
                        "timestamp": pa.array(anchors[who] + 90 * 60 * 1_000_000, TS)})
    cohort = pa.table({"push_id": np.arange(n), "person_id": persons,
                       "anchor_at": pa.array(anchors, TS)})
    out = fetch_activity(client, cohort, [1, 24], batch=1000)
    assert len(posthog.queries) == 3 and client.stats.queries == 3
    # dealt out evenly: ceil(2500 / 1000) queries of 833 or 834 persons
    assert sorted(len(q.values["persons"]) for q in posthog.queries) == [833, 833, 834]
    assert client.stats.rows == len(who)  # one row per active person
    assert out.num_rows == 2 * n
    after = out.filter(pc.equal(out["window_hours"], 24))["after_events"].to_numpy()
    expected = np.zeros(n, np.int64)
    expected[who] = 1
    assert (after == expected).all()
    assert out.filter(pc.equal(out["window_hours"], 1))["after_events"].to_numpy(
        ).sum() == 0


def test_activity_answers_longer_than_a_page_are_paged(posthog, client):
    for i in range(5):
        posthog.add_person(f"p{i}", [f"d{i}"])
    add_events(posthog, [("a", f"d{i}", NOW + US * (i + 1)) for i in range(5)])
    cohort = cohort_table([(i, f"p{i}", NOW) for i in range(5)])
    out = fetch_activity(client, cohort, [1], page_size=2)
    assert [q.query.rsplit("\n", 1)[-1] for q in posthog.queries] == [
        "LIMIT 2 OFFSET 0", "LIMIT 2 OFFSET 2", "LIMIT 2 OFFSET 4"]
    assert by_push(out) == {(i, 1): (0, 1, 0, 1) for i in range(5)}


def test_event_filter_from_the_setting():
    assert EventFilter.from_env({}) == EventFilter()
    assert EventFilter.from_env({EVENTS_SETTING: " , "}) == EventFilter()
    f = EventFilter.from_env({EVENTS_SETTING: "app_opened, $pageview,app_opened ,"})
    assert f.events == ("app_opened", "$pageview")
    assert f.condition() == ("event IN {events}", {"events": ["app_opened", "$pageview"]})
    assert EventFilter().condition() == ("NOT startsWith(event, '$')", {})


def test_bad_cohorts_and_windows_are_refused(client):
    good = cohort_table([(1, "p1", NOW)])
    for windows in ([], [0], [1, 1], [1.5]):
        with pytest.raises(ValueError):
            fetch_activity(client, good, windows)
    with pytest.raises(ValueError, match="person_id"):
        fetch_activity(client, cohort_table([(1, None, NOW)]), [1])
    with pytest.raises(ValueError, match="already has"):
        fetch_activity(client, good.append_column("after_events", pa.array([1])), [1])
    assert client.stats.queries == 0
