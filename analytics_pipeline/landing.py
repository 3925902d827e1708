"""Landing: Parquet written with pyarrow, one directory per source × partition.

A partition directory is replaced atomically: the new files are written to a sibling
staging directory, then swapped in by rename. Readers see the old or the new data,
never a mix. Any pyarrow filesystem URI works (local path, s3://, gs://); object stores
have no directory rename, so there each write lands in a new version folder and the
partition's ``_SUCCESS`` manifest, replaced last in one PUT, names the current version.
"""

from __future__ import annotations

import json
import posixpath
import queue
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analytics_pipeline.partitions import LocalDay

MANIFEST = "_SUCCESS"


def prefetched(batches: Iterable[pa.RecordBatch], depth: int = 4) -> Iterable[pa.RecordBatch]:
    """Pull ``batches`` on a helper thread so that fetching the next batch (network, the
    database) overlaps with compressing the current one; errors are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    error: list[BaseException] = []
    stop = threading.Event()

    def pump() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            error.append(exc)
        finally:
            q.put(done)

    t = threading.Thread(target=pump, name="landing-prefetch", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not done:
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock the producer if the consumer stopped early
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.1)
    if error:
        raise error[0]


def _segment(value: str) -> str:
    # Timezone names contain "/", which must not become a directory level.
    return quote(value, safe="")


@dataclass
class LandingStore:
    """Parquet landing under ``root`` (a local path or a pyarrow filesystem URI)."""

    root: str

    def __post_init__(self) -> None:
        fs, path = pafs.FileSystem.from_uri(self.root) if "://" in self.root else (
            pafs.LocalFileSystem(), self._local_root(self.root)
        )
        self.fs: pafs.FileSystem = fs
        self.base: str = path.rstrip("/")
        self._local = isinstance(fs, pafs.LocalFileSystem)

    @staticmethod
    def _local_root(root: str) -> str:
        from pathlib import Path

        return str(Path(root).resolve())

    def partition_dir(self, source: str, day: LocalDay) -> str:
        return posixpath.join(
            self.base, _segment(source), f"date={day.day.isoformat()}",
            f"timezone={_segment(day.tz)}",
        )

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def has_partition(self, source: str, day: LocalDay) -> bool:
        final = self.partition_dir(source, day)
        self._recover(final)
        return self._exists(posixpath.join(final, MANIFEST))

    def _recover(self, final: str) -> None:
        """Undo a local swap interrupted between its two renames: the previous
        directory, moved aside, is put back (a failed write changes nothing)."""
        if not self._local or self._exists(final):
            return
        parent, base = posixpath.split(final)
        if not self._exists(parent):
            return
        aside = sorted(
            (i for i in self.fs.get_file_info(pafs.FileSelector(parent))
             if posixpath.basename(i.path).startswith(f".old-{base}-")),
            key=lambda i: i.mtime_ns or 0,
        )
        if aside:
            self.fs.move(aside[-1].path, final)

    def write_partition(
        self,
        source: str,
        day: LocalDay,
        data: pa.Table | Iterable[pa.RecordBatch],
        meta: dict | None = None,
        schema: pa.Schema | None = None,
    ) -> str:
        """Replace the partition's data atomically; returns the directory.

        ``data`` is a table or a stream of record batches (written as they come, so a
        large partition never sits in memory whole; ``schema`` is then required).
        """
        final = self.partition_dir(source, day)
        self._recover(final)
        parent = posixpath.dirname(final)
        token = uuid.uuid4().hex[:12]
        staging = posixpath.join(parent, f".staging-{posixpath.basename(final)}-{token}")
        self.fs.create_dir(staging, recursive=True)
        try:
            rows = self._write_parquet(posixpath.join(staging, "part-0.parquet"), data, schema)
        except BaseException:
            self.fs.delete_dir(staging)
            raise
        manifest = {"rows": rows, **(meta or {})}
        self._write_manifest(posixpath.join(staging, MANIFEST), manifest)
        try:
            if self._local:
                # rename(2) cannot replace a non-empty directory: move the old one aside first,
                # then the new one in, then drop the old one. A crash between the two renames
                # is undone by _recover on the next read or write.
                old = posixpath.join(parent, f".old-{posixpath.basename(final)}-{token}")
                if self._exists(final):
                    self._move(final, old)
                self._move(staging, final)
                if self._exists(old):
                    self.fs.delete_dir(old)
            else:
                # Object stores cannot rename a directory, but replacing one object is atomic:
                # the data goes to a fresh version folder, then the manifest (pointing at it)
                # is overwritten, then older versions are removed. A crash at any point leaves
                # the previous version readable.
                version = posixpath.join(final, f"v-{token}")
                for info in self.fs.get_file_info(pafs.FileSelector(staging)):
                    name = posixpath.basename(info.path)
                    if name != MANIFEST:
                        self.fs.create_dir(version, recursive=True)
                        self.fs.move(info.path, posixpath.join(version, name))
                manifest["version"] = f"v-{token}"
                self._write_manifest(posixpath.join(final, MANIFEST), manifest)
                self.fs.delete_dir(staging)
                for info in self.fs.get_file_info(pafs.FileSelector(final)):
                    if info.type == pafs.FileType.Directory and info.path != version:
                        self.fs.delete_dir(info.path)
        except BaseException:
            if self._exists(staging):  # best effort: the previous data stays readable
                self.fs.delete_dir(staging)
            raise
        return final

    def _move(self, src: str, dst: str) -> None:
        self.fs.move(src, dst)

    def _write_manifest(self, path: str, manifest: dict) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(json.dumps(manifest, sort_keys=True, default=str).encode())

    def _write_parquet(
        self, path: str, data: pa.Table | Iterable[pa.RecordBatch], schema: pa.Schema | None
    ) -> int:
        if isinstance(data, pa.Table):
            pq.write_table(data, path, filesystem=self.fs, compression="zstd",
                           row_group_size=1_000_000)
            return data.num_rows
        if schema is None:
            raise ValueError("writing a stream of batches needs its schema")
        rows = 0
        with pq.ParquetWriter(path, schema, filesystem=self.fs, compression="zstd") as w:
            for batch in prefetched(data):
                w.write_batch(batch, row_group_size=1_000_000)
                rows += batch.num_rows
        return rows

    def _manifest(self, source: str, day: LocalDay) -> dict:
        path = posixpath.join(self.partition_dir(source, day), MANIFEST)
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read())

    def partition_meta(self, source: str, day: LocalDay) -> dict:
        """The ``meta`` given to the partition's last successful write, plus ``rows``."""
        if not self.has_partition(source, day):
            raise FileNotFoundError(
                f"no landed data for {source} {day.key}: materialize its raw asset first")
        return self._manifest(source, day)

    def _data_files(self, source: str, day: LocalDay) -> list[str]:
        if not self.has_partition(source, day):
            raise FileNotFoundError(
                f"no landed data for {source} {day.key}: materialize its raw asset first"
            )
        final = self.partition_dir(source, day)
        version = self._manifest(source, day).get("version")
        folder = posixpath.join(final, version) if version else final
        return sorted(
            i.path for i in self.fs.get_file_info(pafs.FileSelector(folder))
            if i.path.endswith(".parquet")
        )

    def read_partition(
        self, source: str, day: LocalDay, schema: pa.Schema, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """The landed table of a partition; a partition never landed raises FileNotFoundError."""
        files = self._data_files(source, day)
        if not files:
            return schema.empty_table()
        tables = [pq.read_table(f, filesystem=self.fs, columns=columns) for f in files]
        return pa.concat_tables(tables)

    def iter_partition(
        self, source: str, day: LocalDay, schema: pa.Schema, batch_rows: int = 1_000_000
    ) -> Iterable[pa.Table]:
        """The landed rows of a partition in tables of at most ``batch_rows`` rows."""
        for path in self._data_files(source, day):
            with self.fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                    yield pa.Table.from_batches([batch])

    def replace_accounts(
        self, source: str, day: LocalDay, table: pa.Table, account_ids: Sequence[int],
        schema: pa.Schema, meta: dict | None = None,
    ) -> str:
        """Replace only ``account_ids``' events of a partition, keeping the others."""
        if self.has_partition(source, day):
            old = self.read_partition(source, day, schema)
            keep = pc.invert(pc.is_in(old["account_id"], pa.array(account_ids, pa.int64())))
            table = pa.concat_tables([old.filter(pc.fill_null(keep, True)), table.cast(schema)])
        return self.write_partition(source, day, table, meta)

    def partition_rows(self, source: str, day: LocalDay) -> int:
        """Row count of a landed partition, from its manifest."""
        return int(self._manifest(source, day)["rows"])


@dataclass
class ProviderEventLog:
    """Append-only landing of provider events, one folder per stream and UTC date.

    Every fetch appends whole files (written aside and renamed, or one object PUT), so a
    crash never leaves half a file; an event stored twice (a window re-fetched after a
    crash) is de-duplicated by event id when read, which makes re-fetching always safe.
    """

    root: str
    stream: str  # e.g. "mailgun/newsletter"

    def __post_init__(self) -> None:
        self._store = LandingStore(self.root)
        self.fs = self._store.fs
        self.base = posixpath.join(self._store.base, *(_segment(s) for s in
                                                       self.stream.split("/")))

    def date_dir(self, day: date) -> str:
        return posixpath.join(self.base, f"date={day.isoformat()}")

    def append(self, table: pa.Table, fetch_id: str, time_column: str = "timestamp") -> int:
        """Write ``table``'s rows under the UTC date of ``time_column``; returns files."""
        if table.num_rows == 0:
            return 0
        days = pc.cast(pc.cast(table[time_column], pa.timestamp("us")), pa.date32())
        files = 0
        for day in pc.unique(days).to_pylist():
            part = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
            folder = self.date_dir(day)
            self.fs.create_dir(folder, recursive=True)
            name = f"{fetch_id}-{uuid.uuid4().hex[:8]}.parquet"
            final = posixpath.join(folder, name)
            if self._store._local:
                tmp = posixpath.join(folder, f".tmp-{name}")
                pq.write_table(part, tmp, filesystem=self.fs, compression="zstd")
                self.fs.move(tmp, final)
            else:
                pq.write_table(part, final, filesystem=self.fs, compression="zstd")
            files += 1
        return files

    def days(self) -> list[date]:
        """Every UTC date with landed events, ascending."""
        if self.fs.get_file_info(self.base).type == pafs.FileType.NotFound:
            return []
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.base)):
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.Directory and name.startswith("date="):
                out.append(date.fromisoformat(name[5:]))
        return sorted(out)

    def read(self, days: Iterable, schema: pa.Schema, id_column: str = "event_id",
             columns: Sequence[str] | None = None) -> pa.Table:
        """Events landed under ``days`` (UTC dates), each event id once (first fetched);
        ``columns`` limits what is read (the id and fetch time are always included)."""
        if columns is not None:
            wanted = list(dict.fromkeys([id_column, "fetched_at", *columns]))
            schema = pa.schema([schema.field(c) for c in wanted])
        tables = []
        for day in days:
            folder = self.date_dir(day)
            if self.fs.get_file_info(folder).type == pafs.FileType.NotFound:
                continue
            for info in self.fs.get_file_info(pafs.FileSelector(folder)):
                name = posixpath.basename(info.path)
                if name.endswith(".parquet") and not name.startswith("."):
                    tables.append(pq.read_table(info.path, filesystem=self.fs, schema=schema,
                                                columns=schema.names))
        if not tables:
            return schema.empty_table()
        return dedupe(pa.concat_tables(tables), id_column)


def dedupe(table: pa.Table, id_column: str, order_column: str | None = "fetched_at") -> pa.Table:
    """One row per ``id_column`` (the earliest by ``order_column``), vectorized."""
    if table.num_rows == 0:
        return table
    if order_column and order_column in table.column_names:
        table = table.sort_by([(order_column, "ascending")])
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    first = (
        pa.table({"k": table[id_column], "row": rows})
        .group_by("k", use_threads=False)
        .aggregate([("row", "min")])["row_min"]
    )
    return table.take(pc.take(first, pc.sort_indices(first)))  # first rows, in order


def utc_dates_between(start: datetime, end: datetime) -> list[date]:
    """The UTC dates that the half-open instant range [start, end) touches."""
    first = start.astimezone(timezone.utc).date()
    last = (end - timedelta(microseconds=1)).astimezone(timezone.utc).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
