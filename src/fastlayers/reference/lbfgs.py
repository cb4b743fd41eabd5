"""Oracle kernels of the L-BFGS optimizer: the two-loop recursion and the flat-vector
operations around it (dot products, the max-norm, ``x + alpha*y``).

Dot products accumulate in float64 (also for float32 arrays, whose products are then
exact); element-wise steps stay in the arrays' dtype, with each scalar rounded to it once.
"""

from __future__ import annotations

import numpy as np

from ._checks import Checker

__all__ = ["dot", "max_abs", "add_scaled_forward", "lbfgs_direction"]


def _pair(c: Checker, x, y):
    x = c.input(x, "x")
    y = c.input(y, "y", x, "x")
    c.same_shape(y, "y", x, "x")
    return x, y


def _dot64(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.dot(x.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)))


def dot(x, y) -> float:
    """Sum of x*y over arrays of one shape, accumulated in float64."""
    c = Checker("dot")
    x, y = _pair(c, x, y)
    return _dot64(x, y)


def max_abs(x) -> float:
    """max |x|: NaN when any entry is NaN, 0.0 for an empty array."""
    c = Checker("max_abs")
    x = c.input(x, "x")
    return float(np.max(np.abs(x))) if x.size else 0.0


def add_scaled_forward(out, x, y, alpha):
    """out = x + alpha*y (alpha rounded to the arrays' dtype)."""
    c = Checker("add_scaled_forward")
    x, y = _pair(c, x, y)
    out = c.output(out, "out", x, "x")
    c.same_shape(out, "out", x, "x")
    alpha = c.finite(alpha, "alpha")
    c.outputs_distinct(dict(out=out), dict(x=x, y=y))
    a = x.dtype.type(alpha)
    out[...] = x + a * y


def lbfgs_direction(d, g, s, y, rho, gamma, first):
    """d = -H g: the L-BFGS two-loop recursion (Nocedal & Wright, Algorithm 7.4).

    g, d (n,); s, y (K, n): the K most recent pairs s = x_{k+1} - x_k, y = g_{k+1} - g_k,
    kept as a ring buffer whose oldest row is ``first`` (rows first, first+1, ... wrapping
    around, oldest to newest; ``0 <= first < max(K, 1)``); rho (K,) = 1/(y.s) per row;
    gamma > 0 scales the initial inverse Hessian H_0 = gamma*I. H is the matrix the BFGS
    update builds from H_0 and the pairs in order, so d is a descent direction when every
    y.s > 0. K = 0 gives d = -gamma*g.
    """
    c = Checker("lbfgs_direction")
    g = c.input(g, "g")
    c.ndim(g, "g", 1)
    n = g.shape[0]
    s = c.input(s, "s", g, "g")
    c.shape(s, "s", (-1, n))
    K = s.shape[0]
    y = c.input(y, "y", g, "g")
    c.same_shape(y, "y", s, "s")
    rho = c.input(rho, "rho", g, "g")
    c.shape(rho, "rho", (K,))
    d = c.output(d, "d", g, "g")
    c.same_shape(d, "d", g, "g")
    gamma = c.finite(gamma, "gamma")
    if not gamma > 0:
        c.value_error(f"argument 'gamma' must be a finite number > 0; got {gamma}")
    first = c.nonnegative_int(first, "first")
    if first >= max(K, 1):
        c.value_error(
            f"argument 'first' must be < K = {K}, the number of pairs in 's' (0 when there are none); got {first}"
        )
    c.outputs_distinct(dict(d=d), dict(g=g, s=s, y=y, rho=rho))
    T = g.dtype.type
    rows = [(first + j) % K for j in range(K)]  # oldest to newest
    q = g.copy()
    a = [0.0] * K
    for j in reversed(range(K)):
        i = rows[j]
        a[j] = float(rho[i]) * _dot64(s[i], q)
        q -= T(a[j]) * y[i]
    q *= T(gamma)
    for j in range(K):
        i = rows[j]
        b = float(rho[i]) * _dot64(y[i], q)
        q += T(a[j] - b) * s[i]
    np.negative(q, out=d)
