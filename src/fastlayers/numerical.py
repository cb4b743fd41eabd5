"""Central-difference numerical gradients, the yardstick for every backward pass."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np


def _takes_x(f) -> bool:
    """Whether ``f`` must be called as ``f(x)``: it cannot be called without arguments but
    can with one (the textbook's ``lambda W: net.loss(x, t)``)."""
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):  # builtins without a signature
        return False
    try:
        sig.bind()
        return False
    except TypeError:
        pass
    try:
        sig.bind(None)
        return True
    except TypeError:
        return False


def numerical_gradient(f: Callable[..., float], x: np.ndarray, h: float = 1e-6, indices=None) -> np.ndarray:
    """d f / d x by central differences, perturbing ``x`` in place one entry at a time.

    With ``indices`` (flat indices into ``x``) only those entries are differentiated and the
    result is a 1-D array of their derivatives, in that order; otherwise it has ``x``'s shape.

    ``f`` reads ``x`` itself (so ``x`` may be a parameter deep inside a model): it is called
    as ``f()``, or as ``f(x)`` when it needs exactly one argument, as in the textbook
    (``numerical_gradient(lambda W: net.loss(x, t), net.W)``). Each entry is restored
    exactly after use. The error is O(h²) truncation plus O(eps·|f|/h) rounding; h = 1e-6
    balances the two for float64 data of order one, which is why gradient checks run in
    float64 (in float32 the rounding term alone is ~0.1).
    """
    if not callable(f):
        raise TypeError(f"numerical_gradient: f must be callable, got {type(f).__name__}")
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError(f"numerical_gradient: x must be a floating numpy.ndarray, got {getattr(x, 'dtype', type(x).__name__)}")
    if not x.flags.writeable:
        raise ValueError("numerical_gradient: x must be writeable (it is perturbed in place)")
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient: x must be contiguous so that its entries can be perturbed in place")
    idx = np.arange(flat.size) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if _takes_x(f):
        f = functools.partial(f, x)
    g = np.empty(len(idx), dtype=np.float64)
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        g[j] = (fp - fm) / (2 * h)
    return g.reshape(x.shape) if indices is None else g
