"""NumPy helpers for the hot paths of every source."""

from __future__ import annotations

import numpy as np


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct values, ascending: ``np.unique(values)``, by a sort.

    NumPy 2.4's ``np.unique`` without ``return_*`` takes a hash-based path that is
    pathologically slow on large arrays of spread-out integers (measured here: 3.9 s for
    3M random int64, 15.8 s for 10.4M, against 0.07 s and 0.4 s by sorting)."""
    s = np.sort(np.asarray(values).ravel())
    if len(s) < 2:
        return s
    keep = np.empty(len(s), bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]
