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
