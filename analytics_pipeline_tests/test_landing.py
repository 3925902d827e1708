from datetime import date

import pyarrow as pa
import pytest

from analytics_pipeline import landing as landing_mod
from analytics_pipeline.landing import LandingStore
from analytics_pipeline.partitions import LocalDay
from analytics_pipeline.rollups import RAW_REPORTING_SCHEMA

DAY = LocalDay(date(2026, 2, 11), "America/New_York")


def table(ids, account=1):
    rows = [{"id": i, "name": "reply_time", "account_id": account} for i in ids]
    return pa.Table.from_pylist(rows, schema=RAW_REPORTING_SCHEMA)


def test_one_directory_per_partition_and_swap(tmp_path):
    store = LandingStore(str(tmp_path))
    path = store.write_partition("reporting_events", DAY, table([1, 2]))
    assert path.endswith("date=2026-02-11/timezone=America%2FNew_York")
    store.write_partition("reporting_events", DAY, table([3]))
    assert store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"].to_pylist() \
        == [3]
    leftovers = [p.name for p in (tmp_path / "reporting_events" / "date=2026-02-11").iterdir()]
    assert leftovers == ["timezone=America%2FNew_York"]


def test_failed_write_keeps_previous_partition(tmp_path, monkeypatch):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(landing_mod.pq, "write_table", boom)
    with pytest.raises(OSError):
        store.write_partition("reporting_events", DAY, table([3]))
    assert sorted(store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"]
                  .to_pylist()) == [1, 2]


def test_missing_partition_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize its raw asset first"):
        LandingStore(str(tmp_path)).read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)


def test_replace_accounts_keeps_other_accounts(tmp_path):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY,
                          pa.concat_tables([table([1], account=1), table([2], account=2)]))
    store.replace_accounts("reporting_events", DAY, table([3, 4], account=2), [2],
                           RAW_REPORTING_SCHEMA)
    t = store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA).sort_by("id")
    assert t["id"].to_pylist() == [1, 3, 4]


def test_stream_error_mid_extraction_keeps_previous_partition(tmp_path):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]))

    def batches():
        yield from table([3]).to_batches()
        raise ConnectionError("source went away")

    with pytest.raises(ConnectionError):
        store.write_partition("reporting_events", DAY, batches(), schema=RAW_REPORTING_SCHEMA)
    assert sorted(store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"]
                  .to_pylist()) == [1, 2]
    assert [p.name for p in (tmp_path / "reporting_events" / "date=2026-02-11").iterdir()] == [
        "timezone=America%2FNew_York"]


def test_streamed_write_counts_rows(tmp_path):
    store = LandingStore(str(tmp_path))
    data = (b for i in range(5) for b in table(range(i * 10, i * 10 + 10)).to_batches())
    store.write_partition("reporting_events", DAY, data, schema=RAW_REPORTING_SCHEMA)
    assert store.partition_rows("reporting_events", DAY) == 50


def test_object_store_path_writes_manifest_last_and_replaces():
    # pyarrow's in-memory mock filesystem takes the non-local (object store) code path
    store = LandingStore("mock:///bucket/landing")
    assert not store._local
    store.write_partition("reporting_events", DAY, table([1, 2]))
    store.write_partition("reporting_events", DAY, table([3]))
    assert store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"] \
        .to_pylist() == [3]
    assert store.partition_rows("reporting_events", DAY) == 1
    parent = store.partition_dir("reporting_events", DAY).rsplit("/", 1)[0]
    from pyarrow import fs as pafs

    names = [i.base_name for i in store.fs.get_file_info(pafs.FileSelector(parent))]
    assert names == ["timezone=America%2FNew_York"]
    inside = [i.base_name for i in store.fs.get_file_info(
        pafs.FileSelector(store.partition_dir("reporting_events", DAY)))]
    assert len(inside) == 2 and "_SUCCESS" in inside  # the manifest and one version


def test_object_store_crash_before_manifest_keeps_previous_version(monkeypatch):
    store = LandingStore("mock:///bucket/landing")
    store.write_partition("reporting_events", DAY, table([1, 2]))
    real = store._write_manifest

    def fail_on_final_manifest(path, manifest):
        if ".staging-" not in path:
            raise OSError("network down")
        real(path, manifest)

    monkeypatch.setattr(store, "_write_manifest", fail_on_final_manifest)
    with pytest.raises(OSError):
        store.write_partition("reporting_events", DAY, table([3]))
    assert sorted(store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"]
                  .to_pylist()) == [1, 2]


def test_dedupe_keeps_the_first_fetched_row_of_each_id():
    from analytics_pipeline.landing import dedupe

    t = pa.table({"event_id": ["a", "b", "a", "c", "b"], "fetched_at": [3, 1, 2, 5, 4],
                  "v": [30, 10, 20, 50, 40]})
    out = dedupe(t, "event_id")
    assert sorted(zip(out["event_id"].to_pylist(), out["v"].to_pylist(), strict=True)) == [
        ("a", 20), ("b", 10), ("c", 50)]


def test_crash_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]))
    real_move = store._move
    calls = []

    def move(src, dst):  # the old directory goes aside, then the process "dies"
        calls.append(src)
        if len(calls) == 2:
            raise OSError("power cut")
        real_move(src, dst)

    monkeypatch.setattr(store, "_move", move)
    with pytest.raises(OSError):
        store.write_partition("reporting_events", DAY, table([3]))
    monkeypatch.setattr(store, "_move", real_move)
    assert sorted(store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"]
                  .to_pylist()) == [1, 2]
    store.write_partition("reporting_events", DAY, table([4]))
    assert store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"] \
        .to_pylist() == [4]
    names = [p.name for p in (tmp_path / "reporting_events" / "date=2026-02-11").iterdir()]
    assert names == ["timezone=America%2FNew_York"]
