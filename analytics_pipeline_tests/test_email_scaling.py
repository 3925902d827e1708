"""Email state that scales (issue 7): de-duplication against the landed ids once per
window, compaction of the landed log per date, and recipient matching once per UTC date."""

import random
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from analytics_pipeline.core import landing as landing_mod
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import IdLookup, LandingStore, ProviderEventLog
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.dev.demo import write_source
from analytics_pipeline.email import state as es
from analytics_pipeline.email.compaction import compact_log, recover
from analytics_pipeline.email.compute import EMAIL_EVENT_SCHEMA
from analytics_pipeline.email.mailgun import PROVIDER_EVENT_SCHEMA, MailgunClient
from analytics_pipeline.email.metrics import EMAIL_PIPELINES
from analytics_pipeline.email.source import EmailSource, src_email_recipients, src_emails
from analytics_pipeline.email.steps import (
    email_landing_source,
    extract_email_partition,
    fetch_provider_events,
)
from analytics_pipeline_tests.email_state_fixtures import World, assert_agrees_with_full_recompute
from analytics_pipeline_tests.mailgun_fixtures import SETTLE, T0, add, landed

NEWSLETTER = EMAIL_PIPELINES[0]


def fetch(sim, engine, root, clock, **kw):
    client = MailgunClient(sim.domain, sim.api_key, sim.base_url, backoff_factor=0.01)
    return fetch_provider_events(
        client, ProviderEventLog(root, NEWSLETTER.stream), engine, NEWSLETTER,
        NEWSLETTER.default_tags, until=clock.t - 60, now=clock.t, settle_seconds=SETTLE,
        initial_lookback_seconds=3600, **kw)








# --- 1. de-duplication against the landed ids -----------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_id_lookup_answers_as_is_in(seed):
    rng = random.Random(seed)
    alphabet = "ab<>é@-"
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
             for _ in range(3000)]
    values = pa.array(words[:2000] + [None])
    probe = pa.array([*rng.sample(words, 2500), None, "x" * 5000]).slice(3)  # an offset
    lookup = IdLookup(pa.chunked_array([values.slice(0, 700), values.slice(700)]))
    expected = pc.fill_null(pc.is_in(probe, values.drop_null()), False)
    assert lookup.contains(probe).to_pylist() == expected.to_pylist()
    assert lookup.contains(pa.array([], pa.string())).to_pylist() == []


def test_id_lookup_is_exact_when_hashes_collide(monkeypatch):
    monkeypatch.setattr(landing_mod, "_hash64", lambda v: np.zeros(len(v), np.uint64))
    lookup = IdLookup(pa.array(["x", "y", "z"]))
    assert lookup.contains(pa.array(["z", "w", "x", None])).to_pylist() == [
        True, False, True, False]


def test_settling_pass_builds_its_lookup_of_landed_ids_once_not_per_page(
        sim, engine, landing_root, clock, monkeypatch):
    for i in range(1500):  # five pages of 300 items, newer than the first settling window
        add(sim, i, T0 - SETTLE + 10 + i)
    fetch(sim, engine, landing_root, clock)
    clock.t += 3600  # now settled: the settling pass re-reads the five pages
    add(sim, 9999, T0 - 1000.5, indexed_at=T0 + 60)
    sets_built = []
    is_in = pc.is_in

    def counting_is_in(values, value_set=None, **kw):
        if value_set is not None and len(value_set) >= 1500:
            sets_built.append(len(value_set))
        return is_in(values, value_set=value_set, **kw)

    monkeypatch.setattr(pc, "is_in", counting_is_in)
    hashed = []
    lookup_init = IdLookup.__init__

    def counting_init(self, ids):
        hashed.append(len(ids))
        lookup_init(self, ids)

    monkeypatch.setattr(IdLookup, "__init__", counting_init)
    r = fetch(sim, engine, landing_root, clock)
    assert r.passes["settling"].items_read >= 1500 and r.passes["settling"].stored == 1
    assert sets_built == []  # no hash set of the landed ids rebuilt page after page
    assert hashed == [1500]  # one lookup, for the one settling window
    assert landed(landing_root).num_rows == 1501


# --- 2. compaction of the landed log per date ---------------------------------------------


def _log_content(log) -> list[dict]:
    t = log.read(log.days(), PROVIDER_EVENT_SCHEMA)
    return t.sort_by("event_id").to_pylist()


def _visible(log) -> dict:
    return {d: log.files(d) for d in log.days()}


def _journal(w) -> dict:
    f = es.email_log_files.c
    with w.engine.connect() as c:
        return {p: folded is not None for p, folded in c.execute(
            sa.select(f.path, f.folded_at).where(f.kind == w.kind))}


@pytest.mark.parametrize("fold_all", [True, False])
def test_compaction_keeps_the_log_and_the_journal_exact(tmp_path, warehouse_url, fold_all):
    """Compacted folders hold one file with the same events (first fetched kept); the
    journal holds the compacted file, folded iff all it replaced were; a refresh then
    (without discovery, as the asset runs it) equals the full rebuild."""
    w = World(tmp_path, warehouse_url, 7 if fold_all else 8)
    w.land(40, 0)
    w.refresh()
    for _ in range(3):
        w.land(25, 10)  # copies of landed events, in other files, fetched later
    es.register_log_files(w.engine, w.kind, w.log, "f")  # every fetch's files journaled
    if fold_all:
        w.refresh()
    before = _log_content(w.log)
    several = [d for d, names in _visible(w.log).items() if len(names) >= 2]
    assert several
    done = compact_log(w.log, w.engine, w.kind, w.log.days(), min_files=2)
    assert sorted(c.day for c in done) == several
    assert all(c.folded == fold_all for c in done)
    assert _log_content(w.log) == before
    after = _visible(w.log)
    assert all(len(after[d]) == 1 and after[d][0].startswith("compact-") for d in several)
    assert not any(log_leftovers(w.log).values())
    journal = _journal(w)
    assert sorted(journal) == es.list_log_files(w.log)  # no row of a replaced file is left
    assert all(journal[f"date={c.day}/{after[c.day][0]}"] == fold_all for c in done)
    r = es.refresh_email_state(w.log, w.emails, w.engine, w.kind, discover=False)
    assert (r.files == 0) == fold_all  # not folded: the compacted files are folded again
    assert_agrees_with_full_recompute(w)
    # a second compaction finds nothing to do (every folder is one file now)
    assert compact_log(w.log, w.engine, w.kind, w.log.days(), min_files=2) == []


def log_leftovers(log) -> dict:
    return {d: log.replaced_leftovers(d) for d in log.days()}


def test_a_reader_listing_the_folder_during_a_compaction_reads_every_event_once(
        tmp_path, warehouse_url, monkeypatch):
    w = World(tmp_path, warehouse_url, 9)
    for _ in range(3):
        w.land(30, 5)
    before = _log_content(w.log)
    read_table = landing_mod.pq.read_table
    state = {"compacted": False}

    def read_then_compact(*a, **kw):
        if not state["compacted"] and not state.get("inside"):
            state["inside"] = True  # the reader has listed the folder and read one file
            table = read_table(*a, **kw)
            compact_log(w.log, w.engine, w.kind, w.log.days(), min_files=2)
            state["compacted"], state["inside"] = True, False
            return table
        return read_table(*a, **kw)

    monkeypatch.setattr(landing_mod.pq, "read_table", read_then_compact)
    assert _log_content(w.log) == before
    assert state["compacted"]


def test_a_failed_or_killed_compaction_leaves_the_log_and_the_journal_consistent(
        tmp_path, warehouse_url, monkeypatch):
    w = World(tmp_path, warehouse_url, 10)
    for _ in range(3):
        w.land(30, 5)
    es.register_log_files(w.engine, w.kind, w.log, "f")
    w.refresh()
    before, files, journal = _log_content(w.log), _visible(w.log), _journal(w)

    # 1. the transaction fails after the switch: everything as before
    publish = ProviderEventLog.publish_compaction

    def publish_then_fail(self, c):
        publish(self, c)
        raise RuntimeError("warehouse gone")

    monkeypatch.setattr(ProviderEventLog, "publish_compaction", publish_then_fail)
    with pytest.raises(RuntimeError, match="warehouse gone"):
        compact_log(w.log, w.engine, w.kind, w.log.days(), min_files=2)
    monkeypatch.undo()
    assert (_visible(w.log), _journal(w), _log_content(w.log)) == (files, journal, before)
    assert not any(log_leftovers(w.log).values())

    # 2. killed after publishing, before committing: the next compaction undoes it first
    day = next(d for d, names in files.items() if len(names) >= 2)
    c = w.log.prepare_compaction(day, PROVIDER_EVENT_SCHEMA)
    w.log.publish_compaction(c)  # no journal switch: as if the process died here
    assert _log_content(w.log) == before
    assert recover(w.log, w.engine, w.kind, day) == 1
    assert (_visible(w.log), _journal(w)) == (files, journal)

    # 3. killed after committing, before deleting the replaced files: finished next time
    monkeypatch.setattr(ProviderEventLog, "finish_compaction", lambda self, c: None)
    done = compact_log(w.log, w.engine, w.kind, [day], min_files=2)
    monkeypatch.undo()
    assert log_leftovers(w.log)[day]
    assert recover(w.log, w.engine, w.kind, day) == 1
    assert not log_leftovers(w.log)[day] and len(done) == 1
    assert _log_content(w.log) == before
    assert es.refresh_email_state(w.log, w.emails, w.engine, w.kind, discover=False).files == 0
    assert_agrees_with_full_recompute(w)


def test_a_fetch_compacts_the_dates_that_settled(sim, engine, landing_root, clock):
    for k in range(4):  # four fetches: four files in the date folder of T0
        for i in range(5):
            add(sim, 10 * k + i, clock.t - 120 + i)
        r = fetch(sim, engine, landing_root, clock, compact_min_files=3)
        assert r.compacted == []  # not settled yet
        clock.t += 600
    log = ProviderEventLog(landing_root, NEWSLETTER.stream)
    day = datetime.fromtimestamp(T0, timezone.utc).date()
    assert len(log.files(day)) >= 4
    before = landed(landing_root).sort_by("event_id")
    clock.t = datetime(2026, 2, 26, 1, tzinfo=timezone.utc).timestamp()  # day settled
    r = fetch(sim, engine, landing_root, clock, compact_min_files=3)
    assert [(c.day, c.files_replaced >= 4) for c in r.compacted] == [(day, True)]
    assert len(log.files(day)) == 1
    assert landed(landing_root).sort_by("event_id") == before


# --- 3. recipient matching once per UTC date ----------------------------------------------

TZS = ["UTC", "Asia/Kathmandu", "America/New_York"]  # accounts 1, 2, 3; 4 is unknown


class MatchWorld:
    def __init__(self, tmp_path, warehouse_url: str, seed: int):
        self.rng = random.Random(seed)
        self.source_url = f"sqlite:///{tmp_path / 'app.db'}"
        write_source(self.source_url, [{"id": a, "name": f"A{a}", "reporting_timezone": tz}
                                       for a, tz in enumerate(TZS, 1)], [])
        src = wh.make_engine(self.source_url)
        with src.begin() as c:
            c.execute(src_emails.insert(), [
                {"id": e, "account_id": a, "kind": "newsletter", "automation_id": None,
                 "subject": "s", "track_opens": True} for e, a in ((1, 1), (2, 2), (3, 3),
                                                                   (4, 4))])
        src.dispose()
        self.recipients: list[dict] = []
        self.add_recipients(30)
        self.engine = wh.make_engine(warehouse_url)
        wh.ensure_schema(self.engine)
        wh.replace_accounts(self.engine, [
            {"id": a, "name": f"A{a}", "reporting_timezone": tz, "timezone": tz,
             "timezone_valid": True} for a, tz in enumerate(TZS, 1)])
        self.log = ProviderEventLog(str(tmp_path / "landing"), NEWSLETTER.stream)
        self.store = LandingStore(str(tmp_path / "landing"))
        self.emails = EmailSource(self.source_url)
        self.n = 0

    def add_recipients(self, n: int, insert: bool = True) -> list[dict]:
        rows = []
        for _ in range(n):
            rid = len(self.recipients) + 1
            email = self.rng.randint(1, 4)
            rows.append({"id": rid, "account_id": email, "email_id": email,
                         "member_id": rid, "member_email": f"M{rid}@Example.com",
                         "provider_message_id": f"<m{email}@mg>"})
            self.recipients.append(rows[-1])
        if insert:
            self.insert(rows)
        return rows

    def insert(self, rows: list[dict]) -> None:
        src = wh.make_engine(self.source_url)
        with src.begin() as c:
            c.execute(src_email_recipients.insert(), rows)
        src.dispose()

    def land(self, n: int, fetched: float, who: list[dict] | None = None) -> None:
        rows = []
        for _ in range(n):
            self.n += 1
            r = self.rng.choice(who or self.recipients)
            address = r["member_email"].lower() if self.rng.random() > 0.1 else "x@y.com"
            rows.append({
                "event_id": f"e{self.n}", "event": self.rng.choice(["delivered", "opened"]),
                # 2026-02-23T12:00Z .. 2026-02-27T12:00Z, on quarter-hour edges and between
                "timestamp": datetime.fromtimestamp(
                    1_771_848_000 + self.rng.randint(0, 4 * 96) * 900
                    + self.rng.choice([0, 0, 1, 899]), timezone.utc),
                "recipient": address, "message_id": r["provider_message_id"].strip("<>"),
                "raw": f'{{"id": "e{self.n}"}}',
                "fetched_at": datetime.fromtimestamp(fetched, timezone.utc)})
        rows += [dict(r, fetched_at=datetime.fromtimestamp(fetched + 1, timezone.utc))
                 for r in self.rng.sample(rows, n // 10)]  # copies, fetched again
        self.log.append(pa.Table.from_pylist(rows, schema=PROVIDER_EVENT_SCHEMA), f"f{self.n}")

    def extract(self, day: LocalDay, cache: bool):
        r = extract_email_partition(self.log, self.emails, self.store, self.engine, NEWSLETTER,
                                    day, "UTC", cache=cache)
        landed = self.store.read_partition(email_landing_source(NEWSLETTER), day,
                                           EMAIL_EVENT_SCHEMA).sort_by("event_id")
        q = wh.quarantine.c
        with self.engine.connect() as c:
            bad = sorted(c.execute(sa.select(q.event_id, q.reason, q.payload).where(
                q.source == "mailgun:newsletter:match", q.partition_date == day.day,
                q.timezone == day.tz)).all())
        return r, landed.to_pylist(), bad


def assert_cached_equals_uncached(w: MatchWorld, day: LocalDay):
    cached = w.extract(day, cache=True)
    uncached = w.extract(day, cache=False)
    assert cached == uncached, day.key
    return cached


@pytest.mark.parametrize("seed", [1, 2])
def test_matching_once_per_utc_date_lands_what_matching_per_partition_lands(
        tmp_path, warehouse_url, seed, monkeypatch):
    w = MatchWorld(tmp_path, warehouse_url, seed)
    for k in range(4):
        w.land(120, T0 + k)
    days = [LocalDay(date(2026, 2, d), tz) for d in (24, 25, 26) for tz in TZS]
    for day in days[:4]:
        r, landed_rows, bad = assert_cached_equals_uncached(w, day)
        assert r.events > 0 and landed_rows
        assert bool(bad) == (day.tz == "UTC")  # quarantined by the default timezone only
    # late events, some of recipients whose row is not in the app yet, between partitions
    w.land(40, T0 + 10)
    late = w.add_recipients(2, insert=False)
    w.land(10, T0 + 11, who=late)
    for day in days:
        assert_cached_equals_uncached(w, day)
    # their rows arrive, no file lands: the cached unmatched events are matched again
    w.insert(late)
    for day in days:
        assert_cached_equals_uncached(w, day)
    # with nothing new landed, a timezone whose UTC dates are cached reads no log
    reads = []
    read = ProviderEventLog.read
    monkeypatch.setattr(ProviderEventLog, "read",
                        lambda self, *a, **kw: reads.append(a) or read(self, *a, **kw))
    w.extract(LocalDay(date(2026, 2, 25), "Asia/Kathmandu"), cache=True)
    w.extract(LocalDay(date(2026, 2, 25), "America/New_York"), cache=True)
    assert reads == []
    # a compaction changes the files: the cache is rebuilt, with the same result
    compact_log(w.log, w.engine, NEWSLETTER.name, w.log.days(), min_files=2)
    assert_cached_equals_uncached(w, LocalDay(date(2026, 2, 25), "Asia/Kathmandu"))
    assert reads
