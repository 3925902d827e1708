"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def prefixed_strings(prefix: str, ints: np.ndarray, suffix: str = "") -> pa.Array:
    """``prefix + str(i) + suffix`` for every integer, vectorized."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ints), pa.string()), suffix, "")
