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
