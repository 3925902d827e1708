"""core.arrays: the sort-based unique agrees with NumPy's."""

import numpy as np
import pytest

from analytics_pipeline.core.arrays import sorted_unique


@pytest.mark.parametrize("values", [
    np.zeros(0, np.int64), np.array([5]), np.array([3, 3, 3]), np.array([2, -1, 2, 7, -1]),
    np.random.default_rng(1).integers(-2**62, 2**62, 10_000),
    np.random.default_rng(2).integers(0, 50, 10_000),
    np.array([1.5, np.inf, -0.0, 0.0, 1.5]),
])
def test_sorted_unique_is_numpys_unique(values):
    got = sorted_unique(values)
    assert got.dtype == values.dtype and got.tolist() == np.unique(values).tolist()
