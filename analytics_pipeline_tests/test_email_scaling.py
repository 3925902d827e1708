"""Email state that scales (issue 7): de-duplication against the landed ids once per
window, compaction of the landed log per date, and recipient matching once per UTC date."""

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from analytics_pipeline.core import landing as landing_mod
from analytics_pipeline.core import warehouse as wh
from analytics_pipeline.core.landing import IdLookup
from analytics_pipeline.dev.mailgun_simulator import MailgunSimulator
from analytics_pipeline_tests.test_mailgun_fetch import SETTLE, T0, Clock, add, fetch, landed


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
