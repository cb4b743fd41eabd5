"""Loss layers: ``forward(y, t) -> float`` (the batch mean), ``backward(dout=1.0) -> dy``."""

from __future__ import annotations

import numpy as np

from . import backend

__all__ = ["Loss", "SoftmaxCrossEntropy", "SoftmaxWithLoss", "MeanSquaredError", "loss_from_config", "LOSSES"]


def _dout(owner: str, dout) -> float:
    # float("2") would accept text; NaN and infinities pass, as an upstream gradient may hold them.
    if isinstance(dout, bool) or not isinstance(dout, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: dout must be a real number, got {type(dout).__name__}")
    return float(dout)


def _scores(owner: str, y) -> np.ndarray:
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{owner}: input must be a numpy.ndarray, got {type(y).__name__}")
    return np.ascontiguousarray(y)


class Loss:
    """Base class; ``loss`` holds the value of the last forward."""

    loss: float | None = None

    def __call__(self, y, t) -> float:
        return self.forward(y, t)

    def config(self) -> dict:
        return {"type": type(self).__name__}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _cached(self, cache):
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        return cache


class SoftmaxCrossEntropy(Loss):
    """Softmax then cross-entropy, fused (the textbook's SoftmaxWithLoss).

    ``t`` is integer labels (N,) or one-hot / soft targets (N, K). Integer labels of any
    integer dtype are accepted and widened to int64; integer one-hot rows are cast to the
    scores' dtype. ``probs`` keeps the softmax of the last forward.
    """

    def __init__(self):
        self.probs: np.ndarray | None = None
        self._cache = None

    def _targets(self, t, scores: np.ndarray) -> np.ndarray:
        t = np.asarray(t)
        if t.dtype.kind in "iu":
            t = t.astype(np.int64 if t.ndim == 1 else scores.dtype, copy=False)
        return np.ascontiguousarray(t)

    def forward(self, scores, t) -> float:
        scores = _scores("SoftmaxCrossEntropy", scores)
        t = self._targets(t, scores)
        probs = np.empty_like(scores)
        loss = backend.kernels().softmax_cross_entropy_forward(probs, scores, t)
        self.probs, self._cache, self.loss = probs, (probs, t), float(loss)
        return self.loss

    def backward(self, dout=1.0) -> np.ndarray:
        probs, t = self._cached(self._cache)
        dscores = np.empty_like(probs)
        backend.kernels().softmax_cross_entropy_backward(dscores, probs, t, _dout("SoftmaxCrossEntropy", dout))
        return dscores


class MeanSquaredError(Loss):
    """0.5 * sum((y - t)²) / N, the textbook's sum of squares averaged over the batch."""

    def __init__(self):
        self._cache = None

    def forward(self, y, t) -> float:
        y = _scores("MeanSquaredError", y)
        t = np.asarray(t)
        if t.dtype.kind in "iub":
            t = t.astype(y.dtype)
        t = np.ascontiguousarray(t)
        loss = backend.kernels().mse_forward(y, t)
        self._cache, self.loss = (y, t), float(loss)
        return self.loss

    def backward(self, dout=1.0) -> np.ndarray:
        y, t = self._cached(self._cache)
        dy = np.empty_like(y)
        backend.kernels().mse_backward(dy, y, t, _dout("MeanSquaredError", dout))
        return dy


SoftmaxWithLoss = SoftmaxCrossEntropy

LOSSES: dict[str, type[Loss]] = {
    "SoftmaxCrossEntropy": SoftmaxCrossEntropy,
    "SoftmaxWithLoss": SoftmaxCrossEntropy,
    "MeanSquaredError": MeanSquaredError,
}


def loss_from_config(cfg: dict) -> Loss:
    """Inverse of ``Loss.config()``."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"loss_from_config: expected a dict with a 'type' key, got {cfg!r}")
    kwargs = dict(cfg)
    name = kwargs.pop("type")
    if name not in LOSSES:
        raise ValueError(f"loss_from_config: unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    if kwargs:
        raise ValueError(f"loss_from_config: {name} takes no arguments, got {', '.join(sorted(kwargs))}")
    return LOSSES[name]()
