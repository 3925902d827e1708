"""Incremental email state: the fold is mergeable, and refreshes agree with the full recompute.

hypothesis is not installed in the venv, so the randomized tests are seeded loops: each seed
is a reproducible scenario (``pytest -k 'seed'`` shows which one failed).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.email import state as es
from analytics_pipeline.email import tables as et
from analytics_pipeline.email.compute import (
    recipient_states,
)
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA
from analytics_pipeline_tests.email_state_fixtures import (
    EVENTS,
    SEVERITIES,
    World,
    _value,
    assert_agrees_with_full_recompute,
    snapshot,
)

T0 = 1_772_000_000  # 2026-02-25

# --- a random world ---------------------------------------------------------------------------














# --- pure functions ---------------------------------------------------------------------------


def random_events(rng: random.Random, n: int, distinct_times: bool = False) -> pa.Table:
    """Events of 4 recipients (and unmatched ones) with many equal timestamps; an event id
    drawn twice is a copy of its first row, as a re-fetched event is."""
    rows, by_id = [], {}
    for i in range(n):
        eid = f"e{rng.randint(0, n)}"
        if eid not in by_id:
            ev = rng.choice(EVENTS)
            by_id[eid] = {
                "event_id": eid, "event": ev,
                "timestamp": datetime.fromtimestamp(
                    T0 + (i if distinct_times else rng.randint(0, 20) * 60), timezone.utc),
                "severity": rng.choice(SEVERITIES) if ev == "failed" else None,
                "delivery_status_code": f"c{i}", "delivery_status_message": f"m{i}",
                "message_id": "x", "address": "y", "recipient_id": rng.choice([1, 2, 3, 4, None])}
        rows.append(by_id[eid])
    return pa.Table.from_pylist(rows, schema=es.EVENT_SCHEMA)


def once(events: pa.Table) -> pa.Table:
    """Each temporary failure once (what the callers guarantee), the rest as given."""
    t = es.temporary_failures(events)
    return pa.concat_tables([events.filter(pc.invert(t)), es._dedupe(events.filter(t))])


@pytest.mark.parametrize("seed", range(40))
def test_fold_of_parts_merges_to_the_fold_of_the_whole(seed):
    """merge(fold(A), fold(B), fold(C)) == fold(A ∪ B ∪ C) for random splits of shuffled
    events, copies of one event falling in several parts: first times, the sticky earliest
    permanent failure and the last temporary failure are idempotent, and the temporary
    failures passed once per id add up."""
    rng = random.Random(seed)
    events = random_events(rng, rng.randint(1, 60))
    whole = es.fold_events(once(events))
    order = list(range(events.num_rows))
    rng.shuffle(order)
    shuffled = events.take(order)
    cuts = sorted(rng.sample(range(events.num_rows + 1), 2))
    parts, folded_temporary = [], set()
    for a, b in zip([0, *cuts], [*cuts, events.num_rows], strict=True):
        part = once(shuffled.slice(a, b - a))
        t = es.temporary_failures(part).to_pylist()
        ids = part["event_id"].to_pylist()
        keep = [not (t[i] and ids[i] in folded_temporary) for i in range(part.num_rows)]
        folded_temporary |= {ids[i] for i in range(part.num_rows) if t[i]}
        parts.append(es.fold_events(part.filter(pa.array(keep, pa.bool_()))))
    assert es.merge_folds(parts).to_pylist() == whole.to_pylist()
    assert es.merge_folds([whole, whole.filter(pc.invert(pc.is_valid(
        whole["last_temporary_failure_at"])))]).to_pylist() == whole.to_pylist()


@pytest.mark.parametrize("seed", range(20))
def test_fold_agrees_with_email_recipient_states(seed):
    """With distinct instants (no tie to break), the fold is email.recipient_states."""
    rng = random.Random(seed)
    events = once(random_events(rng, rng.randint(1, 60), distinct_times=True))
    matched = events.filter(pc.is_valid(events["recipient_id"]))
    ours = es.states_of(es.fold_events(matched))
    assert ours.to_pylist() == recipient_states(matched).to_pylist()


def test_permanent_failure_ties_go_to_the_smallest_id_and_stick():
    def ev(eid, minute, severity, code):
        return {"event_id": eid, "event": "failed", "severity": severity,
                "timestamp": datetime.fromtimestamp(T0 + minute * 60, timezone.utc),
                "delivery_status_code": code, "delivery_status_message": code,
                "message_id": "x", "address": "y", "recipient_id": 1}

    rows = [ev("b", 5, "permanent", "550-b"), ev("a", 5, "permanent", "550-a"),
            ev("c", 1, "temporary", "421"), ev("d", 9, "temporary", "421"),
            ev("e", 7, None, "550-e")]
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 1, 4, 0, 3]):
        table = pa.Table.from_pylist([rows[i] for i in order], schema=es.EVENT_SCHEMA)
        folds = [es.fold_events(table.slice(i, 1)) for i in range(table.num_rows)]
        for fold in (es.fold_events(table), es.merge_folds(folds)):
            (row,) = fold.to_pylist()
            assert (row["failure_event_id"], row["failure_code"]) == ("a", "550-a")
            assert row["failed_at"] == datetime.fromtimestamp(T0 + 300, timezone.utc)
            assert row["temporary_failures"] == 2
            assert row["last_temporary_failure_at"] == datetime.fromtimestamp(T0 + 540,
                                                                             timezone.utc)


# --- refreshes against the warehouse ----------------------------------------------------------


def test_rows_read_back_as_arrow_keep_nulls_empty_strings_and_instants(warehouse_url):
    """What the refresh reads of the warehouse (COPY out as CSV on PostgreSQL) comes back
    as written: NULL and '' apart, text that looks like NULL, separators, quotes, line
    breaks, booleans, timestamps in UTC."""
    engine = wh.make_engine(warehouse_url)
    wh.ensure_schema(engine)
    texts = [None, "", "NULL", "a,b", 'say "hi"', "two\nlines", "\\N", " "]
    when = datetime.fromtimestamp(T0 + 0.123456, timezone.utc)
    rows = pa.table({"kind": pa.array(["newsletter"] * len(texts)),
                     "event_id": pa.array([f"e{i}" for i in range(len(texts))]),
                     "event": pa.array(texts, pa.string()),
                     "timestamp": pa.array([when, None] * (len(texts) // 2), es.UTC_US)})
    u = es.email_state_unmatched.c
    schema = pa.schema([("event_id", pa.string()), ("event", pa.string()),
                        ("timestamp", es.UTC_US), ("flag", pa.bool_())])
    with engine.begin() as c:
        wh.insert_arrow(c, es.email_state_unmatched, rows)
        got = es._select_arrow(c, sa.select(
            u.event_id, u.event, u.timestamp, (u.event == "NULL").label("flag"))
            .where(u.kind == "newsletter").order_by(u.event_id), schema)
    assert got.column("event").to_pylist() == texts
    assert got.column("timestamp").to_pylist() == [when, None] * (len(texts) // 2)
    assert got.column("flag").to_pylist() == [None if t is None else t == "NULL"
                                              for t in texts]
    engine.dispose()







def unfolded(w: World) -> int:
    f = es.email_log_files.c
    with w.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).where(
            f.kind == w.kind, f.folded_at.is_(None))).scalar_one()


@pytest.mark.parametrize("seed", range(3))
def test_incremental_refreshes_agree_with_the_full_recompute(tmp_path, warehouse_url, seed):
    """Random event orders, copies of landed events (re-fetches), late events landing in old
    date folders, events preceding their recipient row, recipients committed out of id
    order, files registered or only discovered, re-runs without new files, a rebuild in
    the middle: after each series of refreshes the state and stats equal the full
    recompute's."""
    kind = "automation" if seed % 2 == 0 else "newsletter"
    w = World(tmp_path, warehouse_url, seed, kind)
    w.land(40, 0)
    assert w.refresh().mode == "full"  # nothing folded yet: the first refresh rebuilds
    for step in range(8):
        w.land(w.rng.randint(0, 30), w.rng.randint(0, 15))
        if w.rng.random() < 0.4:
            w.add_recipients(w.rng.randint(1, 4))
        r = w.refresh()
        assert r.mode == "incremental" and unfolded(w) == 0
        if w.rng.random() < 0.3:  # a re-run without new files changes nothing
            before = snapshot(w.engine, w.kind)
            assert w.refresh().files == 0
            assert snapshot(w.engine, w.kind) == before
        if step == 3:
            assert_agrees_with_full_recompute(w)  # ... and refreshes go on from a rebuild
    assert_agrees_with_full_recompute(w)


def test_a_failed_refresh_changes_nothing_and_the_rerun_counts_once(tmp_path, warehouse_url,
                                                                     monkeypatch):
    w = World(tmp_path, warehouse_url, 11)
    w.land(40, 0)
    w.refresh()
    w.land(30, 10)
    w.add_recipients(3)
    before = snapshot(w.engine, w.kind)
    waiting = unfolded(w)

    def boom(*a, **kw):
        raise RuntimeError("killed mid-refresh")

    monkeypatch.setattr(es, "_apply_stat_deltas", boom)
    with pytest.raises(RuntimeError, match="killed"):
        w.refresh()
    assert snapshot(w.engine, w.kind) == before
    assert unfolded(w) == waiting
    monkeypatch.undo()
    assert w.refresh().files > 0
    assert w.refresh().files == 0
    assert_agrees_with_full_recompute(w)


def matched_recipients(w: World) -> list[dict]:
    """The mirrored recipients events can match (the lowest id of each key), with their
    stored state's first open and click."""
    m, s = es.email_state_recipients.c, et.email_recipient_states.c
    with w.engine.connect() as c:
        rows = c.execute(sa.select(m.recipient_id, m.message_id, m.address, m.email_id,
                                   m.automation_id, m.member_id, m.track_opens, s.opened_at,
                                   s.clicked_at)
                         .select_from(es.email_state_recipients.outerjoin(
                             et.email_recipient_states, sa.and_(
                                 s.kind == m.kind, s.recipient_id == m.recipient_id)))
                         .where(m.kind == w.kind).order_by(m.recipient_id)).all()
    first: dict = {}
    for r in rows:
        first.setdefault((r.message_id, r.address), dict(r._mapping))
    return list(first.values())


def land_one(w: World, r: dict, event: str, when: datetime, name: str) -> None:
    w.log.append(pa.Table.from_pylist([{
        "event_id": name, "event": event, "timestamp": when, "recipient": r["address"],
        "message_id": r["message_id"],
        "fetched_at": datetime.fromtimestamp(T0 + 999_999, timezone.utc)}],
        schema=PROVIDER_EVENT_SCHEMA), name)


def stats_rows(w: World) -> dict:
    out = {}
    with w.engine.connect() as c:
        for t in (et.email_stats, et.automation_email_stats, et.member_email_stats):
            key = next(col for col in t.primary_key.columns if col.name != "kind")
            for r in c.execute(sa.select(t).where(t.c.kind == w.kind)):
                row = dict(r._mapping)
                out[(t.name, row[key.name])] = row
    return out


def test_only_the_stats_rows_that_change_are_rewritten(tmp_path, warehouse_url):
    """A first open changes its recipient's state and the rows of its email, automation
    and member; a later click of a recipient who clicked before changes nothing: exactly
    the rows whose values change get a new updated_at (a click is not in member stats)."""
    w = World(tmp_path, warehouse_url, 3)
    w.land(60, 0)
    w.refresh()
    old = datetime(2000, 1, 1)
    with w.engine.begin() as c:
        for t in (et.email_stats, et.automation_email_stats, et.member_email_stats):
            c.execute(t.update().values(updated_at=old))
    recipients = matched_recipients(w)
    opener = next(r for r in recipients if r["opened_at"] is None and
                  r["member_id"] is not None and r["automation_id"] is not None)
    clicker = next(r for r in recipients if r["clicked_at"] is not None and
                   r["email_id"] != opener["email_id"])
    before = stats_rows(w)
    land_one(w, opener, "opened", datetime.fromtimestamp(T0, timezone.utc), "first-open")
    land_one(w, clicker, "clicked", _value(clicker["clicked_at"]) + timedelta(hours=1),
             "later-click")
    result = w.refresh()
    assert (result.recipients_touched, result.states_changed) == (2, 1)
    after = stats_rows(w)
    rewritten = {k for k, r in after.items() if r["updated_at"] != old}
    changed = {k for k, r in after.items()
               if {c: v for c, v in r.items() if c != "updated_at"} !=
               {c: v for c, v in before.get(k, {}).items() if c != "updated_at"}}
    assert rewritten == changed
    assert {("email_stats", opener["email_id"]), ("member_email_stats", opener["member_id"]),
            ("automation_email_stats", opener["automation_id"])} == changed
    assert after[("email_stats", opener["email_id"])]["opened_count"] == \
        before[("email_stats", opener["email_id"])]["opened_count"] + 1
    assert_agrees_with_full_recompute(w)


def test_logs_landed_before_are_folded_once_and_registration_is_idempotent(tmp_path,
                                                                           warehouse_url):
    w = World(tmp_path, warehouse_url, 5)
    for _ in range(3):  # landed before this module existed: nobody registered them
        w.log.append(pa.Table.from_pylist(
            [{**w._event(), "fetched_at": datetime.fromtimestamp(T0, timezone.utc)}
             for _ in range(20)], schema=PROVIDER_EVENT_SCHEMA), f"old{_}")
    first = w.refresh()
    assert first.mode == "full" and first.files == len(es.list_log_files(w.log))
    assert unfolded(w) == 0
    w.log.append(pa.Table.from_pylist(
        [{**w._event(), "fetched_at": datetime.fromtimestamp(T0 + 1, timezone.utc)}
         for _ in range(20)], schema=PROVIDER_EVENT_SCHEMA), "fresh-1")
    # without discovery an unregistered file waits; registering it (twice) makes it due
    assert es.refresh_email_state(w.log, w.emails, w.engine, w.kind, discover=False).files == 0
    assert es.register_log_files(w.engine, w.kind, w.log, "fresh-1") >= 1
    assert es.register_log_files(w.engine, w.kind, w.log, "fresh-1") == 0
    assert es.refresh_email_state(w.log, w.emails, w.engine, w.kind, discover=False).files >= 1
    assert w.refresh().files == 0
    assert_agrees_with_full_recompute(w)


def test_deltas_follow_one_recipient_through_several_refreshes(tmp_path, warehouse_url):
    """Scripted deltas, each refresh checked against the full recompute: a recipient with
    no state yet is delivered, then opens (not-opened -> opened: tracked_opened and the
    rates move), then fails permanently after delivery, then gets a temporary failure
    twice (a copy counts once) and an earlier open (a changed first time, no count
    change); new recipients arrive without any event (sent counts and rate denominators
    move)."""
    w = World(tmp_path, warehouse_url, 21)
    w.land(30, 0)
    w.refresh()
    r = next(x for x in matched_recipients(w) if x["opened_at"] is None and
             x["member_id"] is not None)
    at = [datetime.fromtimestamp(T0 + h * 3600, timezone.utc) for h in range(200)]
    steps = [[("delivered", 100, "d1")], [("opened", 120, "o1")],
             [("failed", 130, "p1")], [("failed", 140, "t1"), ("opened", 110, "o0")]]
    for i, step in enumerate(steps):
        for event, hour, name in step:
            w.log.append(pa.Table.from_pylist([{
                "event_id": name, "event": event, "timestamp": at[hour],
                "recipient": r["address"], "message_id": r["message_id"],
                "severity": {"p1": "permanent", "t1": "temporary"}.get(name),
                "delivery_status_code": "550", "delivery_status_message": "gone",
                "fetched_at": at[199]}], schema=PROVIDER_EVENT_SCHEMA), f"{name}-{i}")
        if name == "t1":  # the same temporary failure landed again
            w.log.append(w.log.read(w.log.days(), PROVIDER_EVENT_SCHEMA).filter(
                pc.equal(pc.field("event_id"), "t1")), "t1-copy")
        w.add_recipients(2)  # recipients without events
        result = w.refresh()
        assert result.mode == "incremental" and result.states_changed >= 1
        assert_agrees_with_full_recompute(w)
    (state,) = [x for x in snapshot(w.engine, w.kind)["email_recipient_states"]
                if x["recipient_id"] == r["recipient_id"]]
    assert (state["opened_at"], state["failed_at"], state["temporary_failures"]) == \
        (at[110], at[130], 1 + sum(1 for e in w.landed if e["recipient"] == r["address"] and
                                   e["message_id"] == r["message_id"] and
                                   e["event"] == "failed" and e["severity"] == "temporary"))
