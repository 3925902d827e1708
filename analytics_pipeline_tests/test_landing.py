import json
import os
import signal
import stat
import subprocess
import sys
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics_pipeline.core import landing as landing_mod
from analytics_pipeline.core.landing import LandingStore, ProviderEventLog
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.support.validation import RAW_REPORTING_SCHEMA
from analytics_pipeline_tests.landing_worker import check, expected_rows, version_table

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


def test_derived_tables_are_current_with_their_version_only(tmp_path):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]),
                          derived=lambda: {"summary": pa.table({"n": [2]})})
    meta, tables = store.partition_derived("reporting_events", DAY, ["summary", "other"])
    assert tables["summary"]["n"].to_pylist() == [2] and "other" not in tables
    # never mistaken for landed data
    assert store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA).num_rows == 2
    # a later write that derives nothing leaves nothing of the previous version's
    store.write_partition("reporting_events", DAY, table([3]), meta={"k": 1})
    assert store.partition_derived("reporting_events", DAY, ["summary"]) == ({"k": 1}, {})
    other = LocalDay(date(2026, 2, 12), "UTC")
    assert store.partition_derived("reporting_events", other, ["summary"]) == ({}, {})


def test_a_failing_derivation_publishes_nothing(tmp_path):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]),
                          derived=lambda: {"summary": pa.table({"n": [2]})})

    def broken():
        raise RuntimeError("derivation failed")

    with pytest.raises(RuntimeError, match="derivation failed"):
        store.write_partition("reporting_events", DAY, table([3]), derived=broken)
    with pytest.raises(ValueError, match="letters, digits"):
        store.write_partition("reporting_events", DAY, table([4]),
                              derived=lambda: {"../x": pa.table({"n": [1]})})
    assert store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"] \
        .to_pylist() == [1, 2]
    assert store.partition_derived("reporting_events", DAY, ["summary"])[1]["summary"] \
        .to_pylist() == [{"n": 2}]
    versions = [p.name for p in store_dir(tmp_path).iterdir() if p.name.startswith("v-")]
    assert len(versions) == 1  # the failed writes' folders are gone


def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "reporting_events" / "date=2026-02-11" / "timezone=America%2FNew_York"


def test_background_fold_sees_every_batch_and_reraises_its_error():
    seen = []
    fold = landing_mod.BackgroundFold(seen.append, depth=2)
    for i in range(50):
        fold.feed(i)
    fold.join()
    assert seen == list(range(50))

    def add(item):
        if item == 3:
            raise ValueError("bad batch")

    fold = landing_mod.BackgroundFold(add, depth=2)
    with pytest.raises(ValueError, match="bad batch"):
        for i in range(1000):  # the error reaches the feeder; it never blocks
            fold.feed(i)
    with pytest.raises(ValueError, match="bad batch"):
        fold.join()
    fold.close()


def test_background_fold_close_stops_a_busy_helper_and_refuses_more():
    started, release = threading.Event(), threading.Event()

    def slow(item):
        started.set()
        release.wait(5)

    fold = landing_mod.BackgroundFold(slow, depth=1)
    fold.feed(1)
    fold.feed(2)  # queued behind the busy helper
    started.wait(5)
    threading.Timer(0.2, release.set).start()
    fold.close()  # the writer gave up: no join
    assert not any(t.name == "landing-fold" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="joined or closed"):
        fold.feed(3)


def test_a_failing_writer_stops_the_fold_and_keeps_the_previous_version(tmp_path,
                                                                         monkeypatch):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]))
    fold = landing_mod.BackgroundFold(lambda b: threading.Event().wait(0.05), depth=1)

    def batches():
        for i in range(20):
            b = table([100 + i]).to_batches()[0]
            fold.feed(b)
            yield b

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(landing_mod.pq.ParquetWriter, "write_batch", broken)
    try:
        with pytest.raises(OSError, match="disk full"):
            store.write_partition("reporting_events", DAY, batches(), schema=RAW_REPORTING_SCHEMA,
                                  derived=lambda: fold.join() or {})
    finally:
        fold.close()
    assert store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"] \
        .to_pylist() == [1, 2]
    alive = {t.name for t in threading.enumerate() if t.is_alive()}
    assert not alive & {"landing-fold", "landing-prefetch"}


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
    # pyarrow's in-memory mock filesystem stands for an object store (no rename)
    store = LandingStore("mock:///bucket/landing")
    assert not store._local
    store.write_partition("reporting_events", DAY, table([1, 2]))
    store.write_partition("reporting_events", DAY, table([3]))
    assert store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"] \
        .to_pylist() == [3]
    assert store.partition_rows("reporting_events", DAY) == 1
    parent = store.partition_dir("reporting_events", DAY).rsplit("/", 1)[0]
    from pyarrow import fs as pafs

    def inside() -> list[str]:
        return sorted(i.base_name for i in store.fs.get_file_info(
            pafs.FileSelector(store.partition_dir("reporting_events", DAY))))

    names = [i.base_name for i in store.fs.get_file_info(pafs.FileSelector(parent))]
    assert names == ["timezone=America%2FNew_York"]
    # the manifest, the current version and the one it replaced, kept for the grace age
    assert len(inside()) == 3 and "_SUCCESS" in inside()
    store.gc_grace_seconds = 0  # the grace age has passed
    assert store.collect_garbage() == 1
    assert len(inside()) == 2
    assert store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"] \
        .to_pylist() == [3]


def test_object_store_crash_before_manifest_keeps_previous_version(monkeypatch):
    store = LandingStore("mock:///bucket/landing")
    store.write_partition("reporting_events", DAY, table([1, 2]))

    def network_down(final, manifest):
        raise OSError("network down")

    monkeypatch.setattr(store, "_write_manifest", network_down)
    with pytest.raises(OSError):
        store.write_partition("reporting_events", DAY, table([3]))
    assert sorted(store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"]
                  .to_pylist()) == [1, 2]


def test_dedupe_keeps_the_first_fetched_row_of_each_id():
    from analytics_pipeline.core.landing import dedupe

    t = pa.table({"event_id": ["a", "b", "a", "c", "b"], "fetched_at": [3, 1, 2, 5, 4],
                  "v": [30, 10, 20, 50, 40]})
    out = dedupe(t, "event_id")
    assert sorted(zip(out["event_id"].to_pylist(), out["v"].to_pylist(), strict=True)) == [
        ("a", 20), ("b", 10), ("c", 50)]


def test_partition_of_the_previous_layout_is_read_replaced_and_collected(tmp_path):
    # the rename-swap layout: files directly in the partition directory, a manifest without
    # a version, and the .staging-/.old- directories that kills and races left beside it
    store = LandingStore(str(tmp_path))
    final = Path(store.partition_dir("reporting_events", DAY))
    final.mkdir(parents=True)
    pq.write_table(table([1, 2]), final / "part-0.parquet")
    (final / "_SUCCESS").write_text(json.dumps({"rows": 2, "window": "w"}))
    for name in (".staging-timezone=America%2FNew_York-aaa", ".old-timezone=America%2FNew_York-b"):
        (final.parent / name).mkdir()
        pq.write_table(table([9]), final.parent / name / "part-0.parquet")
    assert ids(store) == [1, 2]
    assert store.partition_meta("reporting_events", DAY) == {"window": "w", "rows": 2}

    store.write_partition("reporting_events", DAY, table([3]))
    assert ids(store) == [3]
    age(tmp_path, 2 * HOUR)
    store.write_partition("reporting_events", DAY, table([4]))
    assert ids(store) == [4]
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    assert not (final / "part-0.parquet").exists()


# --- faults: killed writers, concurrent readers, garbage collection -------------------------

REPO = Path(__file__).resolve().parents[1]
HOUR = 3600


def worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "analytics_pipeline_tests.landing_worker", *args], cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(REPO), os.environ.get("PYTHONPATH")]))})


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def age(root: Path, seconds: float) -> None:
    """Make everything under ``root`` look ``seconds`` older (instead of waiting)."""
    for p in [root, *root.rglob("*")]:
        st = p.stat()
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def ids(store: LandingStore) -> list[int]:
    return sorted(store.read_partition("reporting_events", DAY, RAW_REPORTING_SCHEMA)["id"]
                  .to_pylist())


def test_killed_writer_keeps_previous_data_and_its_leftovers_are_collected(tmp_path):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]))
    before = tree(tmp_path)
    writer = worker("write", str(tmp_path), "50000")
    try:
        assert writer.stdout.readline().strip() == "writing"  # mid-write: one batch written
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait()
    leftovers = tree(tmp_path) - before
    assert leftovers  # the killed writer left files behind
    assert store.has_partition("reporting_events", DAY)
    assert ids(store) == [1, 2]
    assert store.partition_rows("reporting_events", DAY) == 2

    age(tmp_path, 2 * HOUR)  # past the grace age: no writer can still be working on them
    store.write_partition("reporting_events", DAY, table([3]))
    assert ids(store) == [3]
    assert not leftovers & tree(tmp_path), "the killed writer's files were not collected"


def test_a_write_never_collects_the_files_of_a_writer_still_working(tmp_path):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]))
    writer = worker("write", str(tmp_path), "5000")
    try:
        assert writer.stdout.readline().strip() == "writing"
        store.write_partition("reporting_events", DAY, table([3]))  # collects stale files only
        assert ids(store) == [3]
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done"
    finally:
        writer.kill()
        writer.wait()
    assert store.partition_rows("reporting_events", DAY) == 5000  # the last write wins


def test_reader_process_sees_one_complete_version_while_a_writer_rewrites(tmp_path):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, version_table(0))
    reader = worker("read", str(tmp_path))
    try:
        assert reader.stdout.readline().strip() == "ready"
        for v in range(1, 150):
            store.write_partition("reporting_events", DAY, version_table(v))
        out, _ = reader.communicate("", timeout=300)
    finally:
        reader.kill()
        reader.wait()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == []
    assert len(result["sizes"]) >= 2  # the reads did overlap the rewrites
    assert set(result["sizes"]) <= {expected_rows(v) for v in range(150)}


@pytest.mark.parametrize("root", ["local", "mock:///bucket/landing"])
def test_reader_thread_sees_one_complete_version_while_a_writer_rewrites(tmp_path, root):
    store = LandingStore(str(tmp_path) if root == "local" else root)
    store.write_partition("reporting_events", DAY, version_table(0))
    stop, errors, reads = threading.Event(), [], []

    def read_loop() -> None:
        while not stop.is_set():
            try:
                n, problem = check(store.read_partition("reporting_events", DAY,
                                                        RAW_REPORTING_SCHEMA))
                m, problem2 = check(pa.concat_tables(list(store.iter_partition(
                    "reporting_events", DAY, RAW_REPORTING_SCHEMA, batch_rows=500))))
                reads.append(n)
                if problem or problem2:
                    errors.append(problem or problem2)
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(f"{type(exc).__name__}: {exc}")

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for v in range(1, 100):
            store.write_partition("reporting_events", DAY, version_table(v))
    finally:
        stop.set()
        reader.join()
    assert errors[:5] == []
    assert reads


def test_partition_meta_is_the_last_successful_writes_meta(tmp_path):
    store = LandingStore(str(tmp_path))
    store.write_partition("reporting_events", DAY, table([1, 2]),
                          meta={"account_ids": [1, 7], "window": "w1"})
    assert store.partition_meta("reporting_events", DAY) == {
        "account_ids": [1, 7], "window": "w1", "rows": 2}

    def batches():
        yield from table([3]).to_batches()
        raise ConnectionError("source went away")

    with pytest.raises(ConnectionError):
        store.write_partition("reporting_events", DAY, batches(), meta={"account_ids": [9]},
                              schema=RAW_REPORTING_SCHEMA)
    assert store.partition_meta("reporting_events", DAY)["account_ids"] == [1, 7]
    store.replace_accounts("reporting_events", DAY, table([4], account=7), [7],
                           RAW_REPORTING_SCHEMA, meta={"account_ids": [7]})
    assert store.partition_meta("reporting_events", DAY) == {"account_ids": [7], "rows": 3}


def test_provider_log_collects_stale_temporary_files_only(tmp_path):
    log = ProviderEventLog(str(tmp_path), "mailgun/newsletter")
    events = pa.table({"event_id": ["a"], "timestamp": pa.array(
        [datetime(2026, 2, 11, 12)], pa.timestamp("us", "UTC"))})
    log.append(events, "f1")
    folder = Path(log.date_dir(date(2026, 2, 11)))
    stale, fresh = folder / ".tmp-f0-dead.parquet", folder / ".tmp-f9-busy.parquet"
    stale.write_bytes(b"half a file")
    age(folder, 2 * HOUR)
    fresh.write_bytes(b"a writer is still on it")
    log.append(events, "f2")
    assert not stale.exists() and fresh.exists()
    assert len([p for p in folder.iterdir() if not p.name.startswith(".")]) == 2


def test_drop_dates_before_removes_whole_old_partitions_only(tmp_path):
    store = LandingStore(str(tmp_path))
    table = pa.table({"x": [1, 2]})
    for d in ("2026-01-01", "2026-01-02", "2026-01-03"):
        for tz in ("UTC", "Asia/Kolkata"):
            store.write_partition("src", LocalDay(date.fromisoformat(d), tz), table)
    store.write_partition("other", LocalDay(date(2026, 1, 1), "UTC"), table)
    assert store.drop_dates_before("src", date(2026, 1, 3)) == [date(2026, 1, 1),
                                                                 date(2026, 1, 2)]
    assert not store.has_partition("src", LocalDay(date(2026, 1, 2), "Asia/Kolkata"))
    assert store.read_partition("src", LocalDay(date(2026, 1, 3), "UTC"),
                                table.schema).num_rows == 2
    assert store.has_partition("other", LocalDay(date(2026, 1, 1), "UTC"))
    assert store.drop_dates_before("src", date(2026, 1, 3)) == []
    assert store.drop_dates_before("missing", date(2026, 1, 3)) == []


# --- durable appends (fsync), for callers that acknowledge what they landed ------------------


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


def _events(day: date) -> pa.Table:
    at = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
    return pa.table({"event_id": ["a", "b"], "timestamp": pa.array([at, at + timedelta(
        hours=13)], pa.timestamp("us", "UTC"))})


def test_durable_append_fsyncs_files_and_folders(tmp_path, fsyncs):
    log = ProviderEventLog(str(tmp_path / "landing"), "mailgun/newsletter")
    day = date(2026, 2, 11)
    assert log.append(_events(day), "f1") == 2
    assert fsyncs == []  # not asked for: as before
    log2 = ProviderEventLog(str(tmp_path / "landing2"), "mailgun/newsletter")
    assert log2.append(_events(day), "f1", durable=True) == 2
    for d in (day, day + timedelta(days=1)):
        folder = Path(log2.date_dir(d))
        (name,) = log2.files(d)
        assert (_ino(folder / name), False) in fsyncs  # the data, before its rename
        assert (_ino(folder), True) in fsyncs  # the rename
    # the folders the append created, in their parents, up to the existing root
    stream = Path(log2.base)
    for created in (stream, stream.parent, stream.parent.parent):
        assert (_ino(created.parent), True) in fsyncs
    assert (_ino(tmp_path.parent), True) not in fsyncs
    fsyncs.clear()
    log2.append(_events(day).slice(0, 1), "f2", durable=True)  # the folder exists now
    assert (_ino(log2.date_dir(day)), True) in fsyncs and len(fsyncs) == 2
    got = log2.read([day, day + timedelta(days=1)], _events(day).schema)
    assert sorted(got["event_id"].to_pylist()) == ["a", "b"]
    assert not [p for p in Path(log2.date_dir(day)).iterdir() if p.name.startswith(".tmp-")]


def test_durable_append_on_an_object_store_is_the_put(fsyncs):
    log = ProviderEventLog("mock:///landing", "mailgun/newsletter")
    assert log.append(_events(date(2026, 2, 11)), "f1", durable=True) == 2
    assert fsyncs == []
    assert log.read([date(2026, 2, 11)], _events(date(2026, 2, 11)).schema).num_rows == 1


def test_provider_log_reads_every_copy_when_asked(tmp_path):
    log = ProviderEventLog(str(tmp_path), "mailgun/newsletter")
    day = date(2026, 2, 11)
    log.append(_events(day), "f1")
    log.append(_events(day), "f2")
    schema = _events(day).schema
    assert log.read([day], schema)["event_id"].to_pylist() == ["a"]
    assert log.read([day], schema, distinct=False)["event_id"].to_pylist() == ["a", "a"]
