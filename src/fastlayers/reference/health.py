"""Oracle kernels: statistics of activations for training-health figures (fastlayers.health)."""

from __future__ import annotations

import numpy as np

from ._checks import Checker

__all__ = ["count_outside"]


def count_outside(counts, x, low, high) -> None:
    """counts (C,) int64 += for each unit c (axis 1 of x, which has at least 2 dimensions) the
    entries of x[:, c, ...] below ``low`` or above ``high``; the bounds are rounded to x's
    dtype first (beyond its range they become +-inf) and NaN is never counted."""
    c = Checker("count_outside")
    x = c.input(x, "x")
    counts = c.int64(counts, "counts")
    c.writeable(counts, "counts")
    c.ndim_at_least(x, "x", 2)
    c.shape(counts, "counts", (x.shape[1],))
    lo, hi = c.real(low, "low"), c.real(high, "high")
    # Written as "not (...)" so that a NaN bound is refused too.
    if not lo <= hi:
        c.value_error(f"argument 'low' must be less than or equal to 'high'; got low={lo}, high={hi}")
    c.outputs_distinct({"counts": counts}, {"x": x})
    with np.errstate(over="ignore"):
        lo, hi = x.dtype.type(lo), x.dtype.type(hi)
    outside = (x < lo) | (x > hi)
    counts += np.count_nonzero(outside, axis=(0, *range(2, x.ndim)))
