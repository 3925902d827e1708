"""The PostHog simulator over real HTTP: auth, limits and paging, HogQL execution, faults."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import urllib3

from analytics_pipeline.dev.posthog_simulator import Fault, PostHogSimulator

T0 = 1_772_000_000.0  # 2026-02-25T06:13:20Z
START = datetime.fromtimestamp(T0, timezone.utc)


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ph_clock():
    return Clock(T0)


@pytest.fixture
def posthog(ph_clock):
    with PostHogSimulator(clock=ph_clock) as s:
        yield s


HTTP = urllib3.PoolManager(retries=False)


def post(sim, hogql: str, values: dict | None = None, *, key: str | None = None,
         project: int | None = None, timeout: float = 10.0):
    """One query as a client sends it; returns (status, headers, parsed body)."""
    key = sim.api_key if key is None else key
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {"query": {"kind": "HogQLQuery", "query": hogql}}
    if values is not None:
        body["query"]["values"] = values
    url = f"{sim.base_url}/api/projects/{sim.project_id if project is None else project}/query/"
    r = HTTP.request("POST", url, body=json.dumps(body).encode(), headers=headers,
                     timeout=urllib3.Timeout(connect=5, read=timeout))
    return r.status, r.headers, json.loads(r.data)


def ok(sim, hogql: str, values: dict | None = None) -> dict:
    status, _, body = post(sim, hogql, values)
    assert status == 200, body
    return body


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def add(sim, rows: list[tuple]) -> None:
    """(event, distinct_id, datetime, properties) rows."""
    sim.add_events({
        "event": [r[0] for r in rows], "distinct_id": [r[1] for r in rows],
        "timestamp": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
        "properties": [json.dumps(r[3] if len(r) > 3 else {}) for r in rows]})


def add_numbered(sim, n: int) -> None:
    """n events one second apart, distinct ids u0..u9."""
    ts = (np.int64(T0) + np.arange(n)) * 1_000_000
    sim.add_events({"event": np.full(n, "$pageview"),
                    "distinct_id": np.char.add("u", (np.arange(n) % 10).astype(str)),
                    "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC"))})


# -- the endpoint -------------------------------------------------------------------------------


def test_bearer_key_is_required_and_never_echoed(posthog):
    status, _, body = post(posthog, "SELECT 1", key="")
    assert status == 401
    assert (body["type"], body["code"]) == ("authentication_error", "authentication_failed")
    wrong = "phx_Wr0ngKey'\"<secret>"
    status, _, body = post(posthog, "SELECT 1", key=wrong)
    assert status == 401 and body["type"] == "authentication_error"
    assert wrong not in json.dumps(body) and "Wr0ngKey" not in json.dumps(body)
    assert posthog.api_key not in json.dumps(body)
    assert posthog.queries == []
    assert post(posthog, "SELECT 1")[0] == 200


def test_another_project_or_path_is_404(posthog):
    status, _, body = post(posthog, "SELECT 1", project=posthog.project_id + 1)
    assert status == 404 and body["code"] == "not_found"
    r = HTTP.request("POST", f"{posthog.base_url}/api/projects/1/events/", body=b"{}",
                     headers={"Authorization": f"Bearer {posthog.api_key}"})
    assert r.status == 404
    assert posthog.queries == []


def test_default_limit_is_100_with_has_more(posthog):
    add_numbered(posthog, 250)
    body = ok(posthog, "SELECT uuid, timestamp FROM events ORDER BY timestamp")
    assert len(body["results"]) == 100 and body["hasMore"] is True
    assert (body["limit"], body["offset"]) == (100, 0)
    assert body["columns"] == ["uuid", "timestamp"]
    assert body["results"][0][1] == iso(START)
    assert len(ok(posthog, "SELECT uuid FROM events LIMIT 300")["results"]) == 250
    exact = ok(posthog, "SELECT uuid FROM events LIMIT 250")
    assert len(exact["results"]) == 250 and exact["hasMore"] is False
    assert ok(posthog, "SELECT uuid FROM events LIMIT 249")["hasMore"] is True
    assert ok(posthog, "SELECT count() FROM events")["results"] == [[250]]


def test_limit_is_capped_at_50000(posthog):
    add_numbered(posthog, 50_010)
    body = ok(posthog, "SELECT uuid FROM events LIMIT 100000")
    assert len(body["results"]) == 50_000 and body["limit"] == 50_000
    assert body["hasMore"] is True
    assert posthog.queries[-1].rows == 50_000


def test_limit_offset_pages_return_every_row_once(posthog):
    add_numbered(posthog, 1_234)
    seen, offset, pages = [], 0, 0
    while True:
        body = ok(posthog, "SELECT uuid FROM events ORDER BY timestamp, uuid "
                           "LIMIT {n} OFFSET {offset}", {"n": 500, "offset": offset})
        assert body["offset"] == offset
        seen += [r[0] for r in body["results"]]
        pages += 1
        if not body["hasMore"]:
            break
        offset += len(body["results"])
    assert pages == 3 and len(seen) == 1_234 and len(set(seen)) == 1_234
    everything = ok(posthog, "SELECT uuid FROM events LIMIT 2000")["results"]
    assert set(seen) == {r[0] for r in everything}


# -- binding values -------------------------------------------------------------------------


def test_values_bind_lists_and_iso_datetimes(posthog):
    rows = [("push_opened", d, START + timedelta(minutes=m))
            for d, m in [("a", 0), ("a", 30), ("b", 45), ("b", 90), ("c", 100), ("a", 120)]]
    add(posthog, rows)
    since = START + timedelta(minutes=30)
    # the same instant written with an offset: datetimes arrive as ISO strings
    since_text = since.astimezone(timezone(timedelta(hours=2))).isoformat()
    body = ok(posthog, "SELECT distinct_id, count() AS n FROM events "
                       "WHERE distinct_id IN {ids} AND timestamp >= {since} "
                       "GROUP BY distinct_id ORDER BY distinct_id",
              {"ids": ["a", "b", "zzz"], "since": since_text})
    assert body["results"] == [["a", 2], ["b", 2]]
    assert ok(posthog, "SELECT count() FROM events WHERE distinct_id IN {ids}",
              {"ids": []})["results"] == [[0]]
    assert ok(posthog, "SELECT count() FROM events WHERE timestamp < toDateTime({t})",
              {"t": iso(since)})["results"] == [[1]]
    record = posthog.queries[0]
    assert record.values == {"ids": ["a", "b", "zzz"], "since": since_text}
    assert record.rows == 2 and record.elapsed > 0


@pytest.mark.parametrize("value", ["O'Brien", "'; DROP TABLE events; --", "back\\slash'\"",
                                   "{ids}", "x' OR '1'='1"])
def test_values_are_data_never_sql(posthog, value):
    add(posthog, [("signup", "a", START, {"name": value}),
                  ("signup", "b", START, {"name": "someone else"})])
    body = ok(posthog, "SELECT {v} AS v, distinct_id FROM events WHERE properties.name = {v}",
              {"v": value})
    assert body["results"] == [[value, "a"]]
    assert ok(posthog, "SELECT count() FROM events")["results"] == [[2]]
    assert posthog.count("events") == 2


# -- HogQL over the tables -----------------------------------------------------------------


def test_person_lookup_by_lowercased_email(posthog):
    posthog.add_person("p1", ["d1"], email="Alice@Example.COM")
    posthog.add_person("p2", ["d2"], email="bob@example.com", properties={"plan": "pro"})
    posthog.add_person("p3", ["d3"])
    body = ok(posthog, "SELECT id, properties.email, properties.plan FROM persons "
                       "WHERE lower(properties.email) IN {emails} ORDER BY id",
              {"emails": ["alice@example.com", "bob@example.com", "carol@example.com"]})
    assert body["results"] == [["p1", "Alice@Example.COM", None],
                               ["p2", "bob@example.com", "pro"]]
    assert body["columns"] == ["id", "properties.email", "properties.plan"]


def test_merged_persons_count_once(posthog):
    posthog.add_person("p1", ["anon-1", "user-1"], email="a@example.com")  # merged
    posthog.add_person("p2", ["user-2"])
    add(posthog, [("push_opened", "anon-1", START), ("push_opened", "user-1", START),
                  ("$pageview", "user-1", START), ("push_opened", "user-2", START)])
    body = ok(posthog, "SELECT pdi.person_id, count() AS events, count(DISTINCT e.distinct_id) "
                       "FROM events e JOIN person_distinct_ids pdi "
                       "ON e.distinct_id = pdi.distinct_id "
                       "WHERE e.event = 'push_opened' GROUP BY pdi.person_id "
                       "ORDER BY pdi.person_id")
    assert body["results"] == [["p1", 2, 2], ["p2", 1, 1]]
    assert ok(posthog, "SELECT uniq(person_id) FROM events")["results"] == [[2]]
    # merging after the events moved them: person_id follows the distinct id
    posthog.merge("p1", "p2")
    assert ok(posthog, "SELECT person_id, count() FROM events GROUP BY person_id"
              )["results"] == [["p1", 4]]
    assert ok(posthog, "SELECT id FROM persons")["results"] == [["p1"]]


def test_events_of_unknown_distinct_ids_get_a_person(posthog):
    add(posthog, [("$pageview", "anon-9", START), ("$pageview", "anon-9", START)])
    persons = ok(posthog, "SELECT person_id FROM events")["results"]
    assert len({p[0] for p in persons}) == 1 and persons[0][0] is not None
    # identifying the anonymous id later re-attributes its events
    posthog.add_person("p9", ["anon-9"], email="nine@example.com")
    assert ok(posthog, "SELECT person_id, person.properties.email FROM events GROUP BY 1, 2"
              )["results"] == [["p9", "nine@example.com"]]
    assert posthog.count("persons") == 1


def test_count_if_per_person_around_a_send(posthog):
    posthog.add_person("p1", ["d1", "d1b"])
    posthog.add_person("p2", ["d2"])
    sent = START + timedelta(hours=1)
    add(posthog, [("$pageview", "d1", sent - timedelta(minutes=5)),
                  ("$pageview", "d1b", sent + timedelta(minutes=5)),
                  ("$pageview", "d1", sent + timedelta(minutes=50)),
                  ("$pageview", "d2", sent - timedelta(hours=2)),
                  ("$pageview", "d2", sent)])
    body = ok(posthog, "SELECT person_id, countIf(timestamp >= {t}) AS after, "
                       "countIf(timestamp < {t}) AS before FROM events "
                       "WHERE person_id IN {people} GROUP BY person_id ORDER BY person_id",
              {"t": iso(sent), "people": ["p1", "p2"]})
    assert body["results"] == [["p1", 2, 1], ["p2", 1, 1]]
    assert body["columns"] == ["person_id", "after", "before"]


def test_to_start_of_hour_buckets(posthog):
    base = datetime(2026, 2, 25, 6, 0, tzinfo=timezone.utc)
    add(posthog, [("push_opened", "a", base + timedelta(minutes=m)) for m in (0, 59, 60, 61, 185)]
        + [("$pageview", "a", base)])
    body = ok(posthog, "SELECT toStartOfHour(timestamp) AS hour, count() AS n FROM events "
                       "WHERE event = 'push_opened' GROUP BY hour ORDER BY hour")
    assert body["results"] == [["2026-02-25T06:00:00Z", 2], ["2026-02-25T07:00:00Z", 2],
                               ["2026-02-25T09:00:00Z", 1]]
    assert body["types"][0] == ["hour", "DateTime64(6, 'UTC')"]


def test_hogql_field_and_function_forms(posthog, ph_clock):
    posthog.add_person("p1", ["d1"], email="Ann@Example.com")
    at = START - timedelta(hours=3, minutes=30)
    posthog.add_event("$pageview", "d1", at, {"$browser": "Firefox", "a/b": 7, "n": None},
                      uuid="0190d0c4-0000-7000-8000-000000000001")
    body = ok(posthog, """
        SELECT uuid, properties.$browser, properties['$browser'], properties.`a/b`, properties.n,
               properties.missing, person.properties.email, e.person.properties['email'],
               e.person.id, dateDiff('hour', timestamp, now()), toUnixTimestamp(timestamp),
               startsWith(event, '$'), notLike(event, 'push%'), toDate(timestamp)
        FROM events e""")
    assert body["results"] == [[
        "0190d0c4-0000-7000-8000-000000000001", "Firefox", "Firefox", "7", None, None,
        "Ann@Example.com", "Ann@Example.com", "p1", 4, int(at.timestamp()), True, True,
        "2026-02-25"]]
    # calls nest, and now() is the simulator's clock
    body = ok(posthog, "SELECT toDate(toDateTime({t})), multiIf(event = 'x', 0, event = "
                       "'$pageview', toUnixTimestamp(now()), -1) FROM events",
              {"t": "2026-02-24T23:59:59-01:00"})
    assert body["results"] == [["2026-02-25", int(T0)]]
    ph_clock.t += 86_400
    assert ok(posthog, "SELECT now(), count() FROM events WHERE timestamp > now() - "
                       "INTERVAL 1 DAY")["results"] == [["2026-02-26T06:13:20Z", 0]]



def test_array_lookups_per_row(posthog):
    """indexOf/arrayElement look up each row's value in parallel lists passed as values."""
    posthog.add_person("p1", ["d1"])
    posthog.add_person("p2", ["d2"])
    posthog.add_person("p3", ["d3"])
    t1 = START + timedelta(microseconds=1)
    add(posthog, [("x", "d1", START), ("x", "d2", START + timedelta(seconds=5)),
                  ("x", "d3", START)])
    body = ok(posthog, "SELECT person_id, indexOf({persons}, person_id) AS i, "
                       "arrayElement({anchors}, indexOf({persons}, person_id)) AS anchor, "
                       "dateDiff('microsecond', toDateTime(arrayElement({anchors}, "
                       "indexOf({persons}, toString(person_id)))), timestamp) AS d "
                       "FROM events ORDER BY person_id",
              {"persons": ["p2", "p1"], "anchors": [iso(t1), iso(START)]})
    # p3 is not in the list: position 0 (ClickHouse), no element (the simulator's NULL)
    assert body["results"] == [["p1", 2, iso(START), 0], ["p2", 1, iso(t1), 4_999_999],
                               ["p3", 0, None, None]]
    assert ok(posthog, "SELECT arrayElement({a}, -1), arrayElement({a}, 1), indexOf({n}, 3)",
              {"a": ["x", "y"], "n": [1, 2, 3]})["results"] == [["y", "x", 3]]
    status, _, body = post(posthog, "SELECT indexOf({a})", {"a": [1]})
    assert status == 400 and "indexOf" in body["detail"]


def test_mapped_functions_keep_their_arguments_whole(posthog):
    """intDiv(a + b, c) divides the sum: a mapping to an operator parenthesizes arguments."""
    assert ok(posthog, "SELECT intDiv(7 + 5, 4), intDiv(20, 2 + 3), intDiv({a} - 1, 2), "
                       "toUnixTimestamp(subtractHours(toDateTime({t}), 1 + 1))",
              {"a": 9, "t": "2026-02-25T06:00:00Z"})["results"] == [
        [3, 4, 4, int(datetime(2026, 2, 25, 4, tzinfo=timezone.utc).timestamp())]]

# -- limits, faults, errors ----------------------------------------------------------------


def test_rate_limit_per_rolling_hour(ph_clock):
    with PostHogSimulator(clock=ph_clock, rate_limit_per_hour=3) as sim:
        for _ in range(2):
            assert post(sim, "SELECT 1")[0] == 200
        ph_clock.t += 600
        assert post(sim, "SELECT 1")[0] == 200
        status, headers, body = post(sim, "SELECT 1")
        assert status == 429 and headers["Retry-After"] == "3000"
        assert body["type"] == "throttled_error"
        ph_clock.t += 3000  # the first two leave the window
        assert [post(sim, "SELECT 1")[0] for _ in range(3)] == [200, 200, 429]
        assert len(sim.queries) == 5


def test_queued_faults_then_success(posthog):
    posthog.inject(Fault(500), Fault(429, retry_after=7), Fault(503, retry_after=2))
    assert post(posthog, "SELECT 1")[0] == 500
    status, headers, _ = post(posthog, "SELECT 1")
    assert status == 429 and headers["Retry-After"] == "7"
    assert post(posthog, "SELECT 1")[0] == 503
    assert ok(posthog, "SELECT 1 AS one")["results"] == [[1]]
    assert len(posthog.requests) == 4 and len(posthog.queries) == 1


def test_slow_response_times_out_a_client(posthog):
    posthog.inject(Fault(200, delay=1.0))
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        post(posthog, "SELECT 1", timeout=0.2)
    assert ok(posthog, "SELECT 2 AS two")["results"] == [[2]]


@pytest.mark.parametrize("hogql", [
    "SELECT * FROM nope",
    "SELECT * FROM system.tables",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT nope FROM events",
    "SELECT event FROM events WHERE",
    "SELECT 1; DROP TABLE events",
    "DROP TABLE events",
    "SELECT {missing}",
    "SELECT noSuchFunction(event) FROM events",
])
def test_invalid_queries_are_400(posthog, hogql):
    status, _, body = post(posthog, hogql)
    assert status == 400 and body["type"] == "validation_error" and body["detail"]
    assert posthog.queries[-1].status == 400
    assert posthog.count("events") == 0 and ok(posthog, "SELECT count() FROM events")


def test_bulk_load_of_200k_events(posthog):
    rng = np.random.default_rng(7)
    n, users = 200_000, 5_000
    user = rng.integers(0, users, n)
    # every person has two distinct ids (anonymous and identified), events use either
    posthog.add_persons({
        "id": np.char.add("p", np.arange(users).astype(str)),
        "email": np.char.add(np.char.add("User", np.arange(users).astype(str)), "@Example.com"),
        "distinct_ids": pa.array([[f"anon{i}", f"user{i}"] for i in range(users)],
                                 pa.list_(pa.string()))})
    prefix = np.where(rng.random(n) < 0.5, "anon", "user")
    events = np.where(rng.random(n) < 0.2, "push_opened", "$pageview")
    seconds = rng.integers(0, 86_400, n)
    posthog.add_events({"event": events,
                        "distinct_id": np.char.add(prefix, user.astype(str)),
                        "timestamp": (T0 + seconds).astype(np.float64)})
    assert posthog.count("events") == n and posthog.count("persons") == users
    body = ok(posthog, "SELECT event, count(), uniq(person_id) FROM events GROUP BY event "
                       "ORDER BY event")
    opened = events == "push_opened"
    assert body["results"] == [
        ["$pageview", int((~opened).sum()), len(np.unique(user[~opened]))],
        ["push_opened", int(opened.sum()), len(np.unique(user[opened]))]]
    body = ok(posthog, "SELECT person_id, count() FROM events "
                       "WHERE person.properties.email = {email} GROUP BY person_id",
              {"email": "User42@Example.com"})
    assert body["results"] == [["p42", int((user == 42).sum())]]
    hour = ok(posthog, "SELECT count() FROM events WHERE timestamp >= {a} AND timestamp < {b}",
              {"a": iso(START), "b": iso(START + timedelta(hours=1))})
    assert hour["results"] == [[int((seconds < 3600).sum())]]


# -- loading data ---------------------------------------------------------------------------


def test_timestamps_load_from_any_form(posthog):
    instant = datetime(2026, 2, 25, 6, 0, tzinfo=timezone.utc)
    posthog.add_event("aware", "d", instant)
    posthog.add_event("naive is UTC", "d", instant.replace(tzinfo=None))
    posthog.add_event("offset", "d", instant.astimezone(timezone(timedelta(hours=-5))))
    posthog.add_event("epoch", "d", instant.timestamp())
    posthog.add_event("iso", "d", "2026-02-25T07:00:00+01:00")
    posthog.add_events({"event": ["numpy"], "distinct_id": ["d"],
                        "timestamp": np.array(["2026-02-25T06:00"], "datetime64[us]")})
    assert posthog.count("events") == 6
    assert ok(posthog, "SELECT DISTINCT timestamp FROM events")["results"] == [[iso(instant)]]


def test_merge_moves_ids_events_and_fills_properties(posthog):
    posthog.add_person("p1", ["a"], email="a@example.com")
    posthog.add_person("p2", ["b"], properties={"plan": "pro", "email": "old@example.com"})
    posthog.add_person("p3", ["c", "c2"], properties={"country": "DE"})
    add(posthog, [("x", d, START) for d in ("a", "b", "c", "c2")])
    posthog.merge("p1", "p2", "p3")
    body = ok(posthog, "SELECT id, properties.email, properties.plan, properties.country "
                       "FROM persons")
    assert body["results"] == [["p1", "a@example.com", "pro", "DE"]]
    assert ok(posthog, "SELECT person_id, count() FROM events GROUP BY person_id"
              )["results"] == [["p1", 4]]
    assert posthog.count("person_distinct_ids") == 4
    with pytest.raises(ValueError, match="more than one person"):
        posthog.add_distinct_ids({"distinct_id": ["a", "a"], "person_id": ["p1", "p9"]})
    with pytest.raises(ValueError, match="more than one person"):
        posthog.add_persons({"id": ["p7", "p8"], "distinct_ids": [["z"], ["z"]]})
    assert posthog.count("persons") == 1  # nothing half-applied
