"""Oracle kernels: weight penalties and optimizer updates.

Every ``*_update`` kernel changes ``param`` and its state arrays in place and only reads
``grad``. The arithmetic stays in the parameter's dtype: hyper-parameters are Python floats,
which NumPy casts to the array's dtype instead of promoting the array to float64.
"""

from __future__ import annotations

import math

import numpy as np

from ._checks import Checker

__all__ = [
    "sgd_update",
    "momentum_update",
    "nesterov_update",
    "adagrad_update",
    "rmsprop_update",
    "adam_update",
    "max_norm_update",
    "sum_squares",
    "sum_abs",
    "scale_update",
    "clamp_update",
    "zero_update",
    "sum_squares_diff",
]


# Rates and eps must be finite: an infinite one turns every weight into inf or NaN (or, for
# eps, silently stops the updates).


def _at_least(c: Checker, v, name: str, low: float) -> float:
    v = c.real(v, name)
    # Written as "not (...)" so that NaN is refused too.
    if not (v >= low and math.isfinite(v)):
        c.value_error(f"argument '{name}' must be a finite number >= {low:g}; got {v}")
    return v


def _positive(c: Checker, v, name: str) -> float:
    v = c.real(v, name)
    if not (v > 0 and math.isfinite(v)):
        c.value_error(f"argument '{name}' must be a finite number > 0; got {v}")
    return v


def _fraction(c: Checker, v, name: str) -> float:
    v = c.real(v, name)
    if not 0 <= v < 1:
        c.value_error(f"argument '{name}' must be in [0, 1); got {v}")
    return v


def _param_grad(c: Checker, param, grad, state: dict):
    param = c.input(param, "param")
    c.writeable(param, "param")
    grad = c.input(grad, "grad", param, "param")
    c.same_shape(grad, "grad", param, "param")
    out = []
    for name, a in state.items():
        a = c.output(a, name, param, "param")
        c.same_shape(a, name, param, "param")
        out.append(a)
    # In place by contract, but param, grad and each state array must be distinct arrays.
    c.distinct(param=param, grad=grad, **dict(zip(state, out)))
    return param, grad, out


def _penalties(c: Checker, weight_decay, l1) -> tuple[float, float]:
    return _at_least(c, weight_decay, "weight_decay", 0), _at_least(c, l1, "l1", 0)


def _effective_grad(param: np.ndarray, grad: np.ndarray, weight_decay: float, l1: float) -> np.ndarray:
    """g = grad + weight_decay*param + l1*sign(param), in param's dtype (a fresh array)."""
    g = grad.copy()
    # Skipping a zero coefficient also keeps an infinite weight from turning g into NaN.
    if weight_decay != 0:
        g += weight_decay * param
    if l1 != 0:
        g += l1 * np.sign(param)
    return g


def sgd_update(param, grad, lr, weight_decay, l1):
    """param -= lr*g."""
    c = Checker("sgd_update")
    param, grad, _ = _param_grad(c, param, grad, {})
    lr = _at_least(c, lr, "lr", 0)
    weight_decay, l1 = _penalties(c, weight_decay, l1)
    g = _effective_grad(param, grad, weight_decay, l1)
    param -= lr * g


def momentum_update(param, grad, v, lr, momentum, weight_decay, l1):
    """v = momentum*v - lr*g; param += v."""
    c = Checker("momentum_update")
    param, grad, (v,) = _param_grad(c, param, grad, {"v": v})
    lr = _at_least(c, lr, "lr", 0)
    momentum = _fraction(c, momentum, "momentum")
    weight_decay, l1 = _penalties(c, weight_decay, l1)
    g = _effective_grad(param, grad, weight_decay, l1)
    v *= momentum
    v -= lr * g
    param += v


def nesterov_update(param, grad, v, lr, momentum, weight_decay, l1):
    """v_prev = v; v = momentum*v - lr*g; param += -momentum*v_prev + (1+momentum)*v."""
    c = Checker("nesterov_update")
    param, grad, (v,) = _param_grad(c, param, grad, {"v": v})
    lr = _at_least(c, lr, "lr", 0)
    momentum = _fraction(c, momentum, "momentum")
    weight_decay, l1 = _penalties(c, weight_decay, l1)
    g = _effective_grad(param, grad, weight_decay, l1)
    v_prev = v.copy()
    v *= momentum
    v -= lr * g
    param += -momentum * v_prev + (1 + momentum) * v


def adagrad_update(param, grad, h, lr, eps, weight_decay, l1):
    """h += g²; param -= lr*g/(sqrt(h) + eps)."""
    c = Checker("adagrad_update")
    param, grad, (h,) = _param_grad(c, param, grad, {"h": h})
    lr = _at_least(c, lr, "lr", 0)
    eps = _positive(c, eps, "eps")
    weight_decay, l1 = _penalties(c, weight_decay, l1)
    g = _effective_grad(param, grad, weight_decay, l1)
    h += g * g
    param -= lr * g / (np.sqrt(h) + eps)


def rmsprop_update(param, grad, h, lr, decay, eps, weight_decay, l1):
    """h = decay*h + (1-decay)*g²; param -= lr*g/(sqrt(h) + eps)."""
    c = Checker("rmsprop_update")
    param, grad, (h,) = _param_grad(c, param, grad, {"h": h})
    lr = _at_least(c, lr, "lr", 0)
    decay = _fraction(c, decay, "decay")
    eps = _positive(c, eps, "eps")
    weight_decay, l1 = _penalties(c, weight_decay, l1)
    g = _effective_grad(param, grad, weight_decay, l1)
    h *= decay
    h += (1 - decay) * g * g
    param -= lr * g / (np.sqrt(h) + eps)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay, l1):
    """Adam with bias correction; ``step`` counts from 1 and eps sits outside the sqrt."""
    c = Checker("adam_update")
    param, grad, (m, v) = _param_grad(c, param, grad, {"m": m, "v": v})
    lr = _at_least(c, lr, "lr", 0)
    beta1 = _fraction(c, beta1, "beta1")
    beta2 = _fraction(c, beta2, "beta2")
    eps = _positive(c, eps, "eps")
    step = c.positive_int(step, "step")
    weight_decay, l1 = _penalties(c, weight_decay, l1)
    g = _effective_grad(param, grad, weight_decay, l1)
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    # The corrections are scalars, computed in double like every hyper-parameter.
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    param -= lr * m_hat / (np.sqrt(v_hat) + eps)


def max_norm_update(w, max_norm, axis):
    """Rescales each slice along ``axis`` (0: columns, 1: rows) of 2-D ``w`` with L2 norm > max_norm to max_norm."""
    c = Checker("max_norm_update")
    w = c.input(w, "w")
    c.writeable(w, "w")
    c.ndim(w, "w", 2)
    max_norm = _positive(c, max_norm, "max_norm")
    axis = c.nonnegative_int(axis, "axis")
    if axis not in (0, 1):
        c.value_error(f"argument 'axis' must be 0 or 1; got {axis}")
    # Norms accumulate in float64 (one per slice); the rescaling itself is in w's dtype.
    norms = np.sqrt(np.sum(np.square(w, dtype=np.float64), axis=axis))
    over = norms > max_norm
    if not over.any():
        return
    factors = (max_norm / norms[over]).astype(w.dtype)
    if axis == 0:
        w[:, over] *= factors
    else:
        w[over, :] *= factors[:, None]


def sum_squares(x) -> float:
    """Sum of x², accumulated in float64."""
    c = Checker("sum_squares")
    x = c.input(x, "x")
    x64 = x.astype(np.float64).reshape(-1)
    return float(np.dot(x64, x64))


def sum_abs(x) -> float:
    """Sum of |x|, accumulated in float64."""
    c = Checker("sum_abs")
    x = c.input(x, "x")
    return float(np.sum(np.abs(x), dtype=np.float64))



def scale_update(x, alpha):
    """x *= alpha in place; the product is formed in float64 and rounded once to x's dtype."""
    c = Checker("scale_update")
    x = c.input(x, "x")
    c.writeable(x, "x")
    alpha = c.finite(alpha, "alpha")
    x[...] = (x.astype(np.float64) * alpha).astype(x.dtype)


def clamp_update(x, limit) -> int:
    """Clamps x in place to [-limit, limit], limit rounded to x's dtype; returns how many
    entries lay outside (NaN stays NaN and is not counted)."""
    c = Checker("clamp_update")
    x = c.input(x, "x")
    c.writeable(x, "x")
    limit = _positive(c, limit, "limit")
    with np.errstate(over="ignore", invalid="ignore"):  # a limit beyond float32's range becomes inf
        bound = x.dtype.type(limit)
        outside = int(np.count_nonzero(np.abs(x) > bound))
    np.clip(x, -bound, bound, out=x)
    return outside


def zero_update(x):
    """x = 0 in place, every entry +0.0 (an optimizer's zero_grad, one call per flat buffer)."""
    c = Checker("zero_update")
    x = c.input(x, "x")
    c.writeable(x, "x")
    x[...] = 0


def sum_squares_diff(a, b) -> float:
    """Sum of (a - b)², the difference and its square formed in float64 (the size of an
    update: the parameters after it against a copy from before)."""
    c = Checker("sum_squares_diff")
    a = c.input(a, "a")
    b = c.input(b, "b", a, "a")
    c.same_shape(b, "b", a, "a")
    d = a.astype(np.float64).reshape(-1) - b.astype(np.float64).reshape(-1)
    return float(np.dot(d, d))
