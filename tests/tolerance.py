"""Tolerances derived from the dtype and the reduction length, never tuned to pass.

Two implementations of the same float computation differ by at most the sum of their
rounding errors. For a sum or dot product of n terms the classical bound (Higham,
"Accuracy and Stability of Numerical Algorithms", 3.1) is
    |computed - exact| <= gamma_n * sum |terms|,   gamma_n = n*u / (1 - n*u),
with u the unit roundoff (eps/2). Two such computations therefore agree within
2 * gamma_n * sum|terms|. Element-wise functions (exp, log, tanh, ...) are correctly
rounded to within a few ulps in both libm and NumPy; we allow ``ULPS_ELEMENTWISE`` ulps.
"""

from __future__ import annotations

import numpy as np

ULPS_ELEMENTWISE = 8


def unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def gamma(n: int, dtype) -> float:
    nu = max(n, 1) * unit_roundoff(dtype)
    assert nu < 1, "reduction too long for a meaningful bound"
    return nu / (1 - nu)


def tiny(dtype) -> float:
    """Absolute floor for results that are exactly zero in one implementation."""
    return float(np.finfo(dtype).tiny)


def assert_close_reduction(actual, expected, magnitude, n: int, dtype, what: str = "") -> None:
    """actual and expected both compute sums of n terms whose absolute values sum to magnitude."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    bound = 2 * gamma(n + 1, dtype) * np.asarray(magnitude, np.float64) + tiny(dtype)
    err = np.abs(actual - expected)
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} entries exceed the rounding bound; worst error "
        f"{err.max():.3g} vs bound {bound.flat[np.argmax(err - bound)]:.3g} (n={n}, {np.dtype(dtype)})"
    )


def assert_close_elementwise(actual, expected, dtype, ulps: int = ULPS_ELEMENTWISE, what: str = "") -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    same_nan = np.isnan(actual) == np.isnan(expected)
    assert same_nan.all(), f"{what}: NaN pattern differs"
    ok = ~np.isnan(expected)
    bound = ulps * float(np.finfo(dtype).eps) * np.abs(expected[ok]) + tiny(dtype)
    err = np.abs(actual[ok] - expected[ok])
    assert (err <= bound).all() or np.array_equal(actual[ok], expected[ok]), (
        f"{what}: worst error {err.max():.3g} exceeds {ulps} ulps ({np.dtype(dtype)})"
    )


def numerical_gradient_rtol() -> float:
    """Relative tolerance for float64 central differences with step h = 1e-6 on O(1) data.

    Truncation error is O(h^2) ~ 1e-12, cancellation error O(eps/h) ~ 2e-10 relative to the
    function's scale; 1e-6 leaves four orders of margin for curvature and scale yet still
    catches any real backward bug (those give errors of order 1e-2 and up).
    """
    return 1e-6
