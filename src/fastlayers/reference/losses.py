"""Oracle kernels: losses. Forward kernels return the loss as a Python float."""

from __future__ import annotations

import numpy as np

from ._checks import Checker, _shape_str

__all__ = [
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "mse_forward",
    "mse_backward",
]


def _targets(c: Checker, t, logits: np.ndarray, N: int, K: int, scores: str) -> np.ndarray:
    """int64 labels (N,) in [0, K), or a (N,K) target distribution of the scores' dtype."""
    t = c.array(t, "t")
    if t.ndim not in (1, 2):
        c.value_error(f"argument 't' must be 1-D labels (N,) or 2-D targets (N, K); got shape {_shape_str(t.shape)}")
    if t.ndim == 1:
        t = c.int64(t, "t")
        c.shape(t, "t", (N,))
        bad = np.flatnonzero((t < 0) | (t >= K))
        if bad.size:
            c.value_error(f"argument 't' holds label {t[bad[0]]} at index {bad[0]}; expected labels in [0, {K})")
        onehot = np.zeros((N, K), dtype=logits.dtype)
        onehot[np.arange(N), t] = 1
        return onehot
    t = c.input(t, "t", logits, scores)
    c.shape(t, "t", (N, K))
    return t


def softmax_cross_entropy_forward(probs, logits, t) -> float:
    """probs (N,K) = softmax(logits); returns mean over N of -sum_k t_k log probs_k."""
    c = Checker("softmax_cross_entropy_forward")
    logits = c.input(logits, "logits")
    probs = c.output(probs, "probs", logits, "logits")
    c.ndim(logits, "logits", 2)
    N, K = logits.shape
    if K < 1:
        c.value_error(f"argument 'logits' must have at least one class; got shape {logits.shape}")
    c.same_shape(probs, "probs", logits, "logits")
    target = _targets(c, t, logits, N, K, "logits")
    c.outputs_distinct({"probs": probs}, {"logits": logits, "t": t})
    z = logits.astype(np.float64)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    probs[...] = np.exp(z - lse)
    # Terms with a zero target are skipped, so a -inf logit there cannot produce 0 * inf.
    terms = np.where(target != 0, target * (lse - z), 0.0)
    return float(terms.sum() / N) if N else 0.0


def softmax_cross_entropy_backward(dlogits, probs, t, dloss=1.0):
    """dlogits = dloss * (probs - target) / N."""
    c = Checker("softmax_cross_entropy_backward")
    probs = c.input(probs, "probs")
    dlogits = c.output(dlogits, "dlogits", probs, "probs")
    c.ndim(probs, "probs", 2)
    N, K = probs.shape
    c.same_shape(dlogits, "dlogits", probs, "probs")
    target = _targets(c, t, probs, N, K, "probs")
    c.outputs_distinct({"dlogits": dlogits}, {"probs": probs, "t": t})
    dloss = c.real(dloss, "dloss")
    dlogits[...] = (probs - target) * (dloss / max(N, 1))


def mse_forward(y, t) -> float:
    """0.5 * sum((y - t)^2) / N for y, t of shape (N, ...)."""
    c = Checker("mse_forward")
    y = c.input(y, "y")
    t = c.input(t, "t", y, "y")
    c.ndim_at_least(y, "y", 1)
    c.same_shape(t, "t", y, "y")
    N = y.shape[0]
    diff = y.astype(np.float64) - t
    return float(0.5 * np.sum(diff * diff) / N) if N else 0.0


def mse_backward(dy, y, t, dloss=1.0):
    """dy = dloss * (y - t) / N."""
    c = Checker("mse_backward")
    y = c.input(y, "y")
    t = c.input(t, "t", y, "y")
    dy = c.output(dy, "dy", y, "y")
    c.ndim_at_least(y, "y", 1)
    c.same_shape(t, "t", y, "y")
    c.same_shape(dy, "dy", y, "y")
    dloss = c.real(dloss, "dloss")
    # y and t may be one array; dy may share memory with neither.
    c.outputs_distinct({"dy": dy}, {"y": y, "t": t})
    dy[...] = (y - t) * (dloss / max(y.shape[0], 1))
