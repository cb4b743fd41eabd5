"""Gradient checking: backprop against central differences, parameter by parameter."""

from __future__ import annotations

import numpy as np

from . import layers as _layers
from . import losses as _losses
from .numerical import numerical_gradient

FLOOR = 1e-6


def _as_float64(model):
    """A float64 copy of ``model`` with the same weights and buffers (the original is untouched)."""

    def retype(cfg):
        if isinstance(cfg, dict):
            return {k: ("float64" if k == "dtype" else retype(v)) for k, v in cfg.items()}
        if isinstance(cfg, list):
            return [retype(v) for v in cfg]
        return cfg

    copy = _layers.layer_from_config(retype(model.config()))
    copy.load_state_dict({name: a.astype(np.float64) for name, a in model.state_dict().items()})
    return copy


def gradcheck(
    model,
    x: np.ndarray,
    t: np.ndarray,
    loss=None,
    h: float = 1e-6,
    max_entries: int | None = 64,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, float]:
    """Compares backprop with central-difference gradients for every parameter and the input.

    The check runs on a float64 copy of ``model`` (float32 differences are dominated by
    rounding), in training mode, with every Dropout mask frozen so that both sides see the
    same function. ``loss`` defaults to softmax cross-entropy. For each parameter up to
    ``max_entries`` entries chosen at random (all of them with ``None``) are perturbed by
    ±``h``; the result is the relative error ``‖a - n‖ / max(‖a‖ + ‖n‖, FLOOR)`` over those
    entries, which is ~1e-7 or smaller for a correct backward pass on well-scaled data.
    ``FLOOR`` (1e-6) keeps a gradient that is exactly zero (a bias feeding BatchNorm, say)
    from turning the central differences' rounding noise into a relative error of one.

    Returns ``{name: relative error}`` (the input under ``"input"``) and, with ``verbose``,
    prints it as a table. A BatchNorm layer in training mode with a batch of one normalises
    every feature to zero, which makes the check vacuous, so such batches are refused.
    """
    loss = _losses.SoftmaxCrossEntropy() if loss is None else loss
    x = np.asarray(x)
    if len(x) < 2 and any(isinstance(m, _layers.BatchNorm) for m in model.modules()):
        raise ValueError("gradcheck: a batch of one through BatchNorm makes every gradient zero; use a batch >= 2")
    net = _as_float64(model)
    net.train()
    for i, m in enumerate(net.modules()):
        m.needs_input_grad = True
        if isinstance(m, _layers.Dropout):
            m.seed = 12345 + i
    x = np.array(x, dtype=np.float64)
    t = np.array(t, dtype=np.float64) if np.asarray(t).dtype.kind == "f" else np.array(t, dtype=np.int64)
    buffers = {name: b.copy() for name, b in net.buffers().items()}

    def restore_buffers():
        # BatchNorm's running statistics move on every training forward; they do not
        # affect the training-mode output, but keep the copy identical across evaluations.
        for name, b in net.buffers().items():
            b[...] = buffers[name]

    def objective() -> float:
        restore_buffers()
        return loss.forward(net.forward(x, train=True), t)

    for p in net.parameters():
        p.zero_grad()
    objective()
    dx = net.backward(loss.backward())

    rng = np.random.default_rng(seed)
    targets = [(name, p.data, p.grad) for name, p in net.named_parameters()] + [("input", x, dx)]
    results: dict[str, float] = {}
    for name, arr, analytic in targets:
        idx = np.arange(arr.size)
        if max_entries is not None and arr.size > max_entries:
            idx = np.sort(rng.choice(arr.size, size=max_entries, replace=False))
        num = numerical_gradient(objective, arr, h, indices=idx)
        a = analytic.reshape(-1)[idx]
        denom = max(np.linalg.norm(a) + np.linalg.norm(num), FLOOR)
        results[name] = float(np.linalg.norm(a - num) / denom)
    if verbose:
        print(format_table(results))
    return results


def format_table(results: dict[str, float]) -> str:
    width = max(len("parameter"), *(len(k) for k in results))
    lines = [f"{'parameter':<{width}}  relative error", f"{'-' * width}  --------------"]
    lines += [f"{name:<{width}}  {err:.3e}" for name, err in results.items()]
    return "\n".join(lines)
