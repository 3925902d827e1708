"""Landing writers and readers run as separate processes by test_landing.py.

    python -m analytics_pipeline_tests.landing_worker write ROOT ROWS
        writes one batch of a streamed partition, prints "writing", then waits for a line on
        stdin before writing the rest (ROWS rows in all) and prints "done";
    python -m analytics_pipeline_tests.landing_worker read ROOT
        prints "ready" after its first read, then reads the partition in a loop (whole and in
        batches) until stdin closes; prints one JSON line {"reads": n, "sizes": [...],
        "errors": [...]}: each read's row count, checked to be one version's rows.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from analytics_pipeline.core.landing import LandingStore
from analytics_pipeline.core.partitions import LocalDay
from analytics_pipeline.support.validation import RAW_REPORTING_SCHEMA

DAY = LocalDay(date(2026, 2, 11), "America/New_York")
SOURCE = "reporting_events"


def version_table(version: int, rows: int | None = None) -> pa.Table:
    """The rows of one version: every row carries the version as its account id, so a read
    mixing two versions, or a partial one, is detected."""
    rows = expected_rows(version) if rows is None else rows
    cols = {f.name: pa.nulls(rows, f.type) for f in RAW_REPORTING_SCHEMA}
    cols["id"] = pa.array(range(rows), pa.int64())
    cols["name"] = pa.array(["reply_time"] * rows, pa.string())
    cols["account_id"] = pa.array([version] * rows, pa.int64())
    return pa.table(cols, schema=RAW_REPORTING_SCHEMA)


def check(table: pa.Table) -> tuple[int, str | None]:
    """Row count of a read and what is wrong with it (None: one complete version)."""
    n = table.num_rows
    versions = pc.unique(table["account_id"]).to_pylist()
    if len(versions) != 1:
        return n, f"{len(versions)} versions mixed in one read"
    if n != expected_rows(versions[0]):
        return n, f"version {versions[0]} read with {n} rows, written with " \
                  f"{expected_rows(versions[0])}"
    return n, None


def expected_rows(version: int) -> int:
    return 1000 + 37 * version


def write(root: str, rows: int) -> None:
    def batches():
        t = version_table(99, rows)
        first, rest = t.slice(0, 100), t.slice(100)
        yield from first.to_batches()
        print("writing", flush=True)
        sys.stdin.readline()
        yield from rest.to_batches(max_chunksize=1000)

    LandingStore(root).write_partition(SOURCE, DAY, batches(), schema=RAW_REPORTING_SCHEMA)
    print("done", flush=True)


def read(root: str) -> None:
    store = LandingStore(root)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    reads, sizes, errors = 0, set(), []
    first = True
    while not stop.is_set() or first:
        try:
            n, problem = check(store.read_partition(SOURCE, DAY, RAW_REPORTING_SCHEMA))
            parts = list(store.iter_partition(SOURCE, DAY, RAW_REPORTING_SCHEMA, batch_rows=500))
            m, problem2 = check(pa.concat_tables(parts))
            sizes.update((n, m))
            problem = problem or problem2
        except Exception as exc:  # noqa: BLE001 - reported to the test
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            errors.append(problem)
        reads += 1
        if first:
            print("ready", flush=True)
            first = False
    print(json.dumps({"reads": reads, "sizes": sorted(sizes), "errors": errors[:20]}),
          flush=True)


if __name__ == "__main__":
    mode, root = sys.argv[1], sys.argv[2]
    if mode == "write":
        write(root, int(sys.argv[3]))
    else:
        read(root)
