"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""

import multiprocessing as mp
import os
import queue
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

# The PostgreSQL server the benchmarks create their throwaway databases on.
PG = os.environ.get("ANALYTICS_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def create_db(prefix: str) -> str:
    """A new, empty database on ``PG``; returns its URL (password kept, for the children)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(PG).set(database=name).render_as_string(hide_password=False)


def drop_db(url: str) -> None:
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    """This process's current resident set size (VmRSS), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux), so that the next
    ``peak_rss_mb`` is the peak of what runs from here."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def prefixed_strings(prefix: str, ints: np.ndarray, suffix: str = "") -> pa.Array:
    """``prefix + str(i) + suffix`` for every integer, vectorized."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ints), pa.string()), suffix, "")


def child(target, *args):
    """Run ``target(*args, queue)`` in a fresh (spawned) process and return what it puts on
    the queue; a child that dies without reporting fails the run instead of hanging it."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:
        try:
            got = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{target.__name__} failed (exit code {p.exitcode})") \
                    from None
    p.join()
    return got
