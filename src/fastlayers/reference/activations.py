"""Oracle kernels: activation functions, forward and backward."""

from __future__ import annotations

import numpy as np

from ._checks import Checker, _shape_str

__all__ = [
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "prelu_forward",
    "prelu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "hardtanh_forward",
    "hardtanh_backward",
    "softplus_forward",
    "softplus_backward",
    "identity_forward",
    "identity_backward",
    "softmax_forward",
    "softmax_backward",
    "maxout_forward",
    "maxout_backward",
    "rbf_forward",
    "rbf_backward",
]


def _unary(kernel: str, out, x, out_name: str = "out"):
    c = Checker(kernel)
    x = c.input(x, "x")
    out = c.output(out, out_name, x, "x")
    c.same_shape(out, out_name, x, "x")
    c.outputs_distinct({out_name: out}, {"x": x})
    return c, out, x


def _unary_backward(kernel: str, dx, dout, x, x_name: str = "x"):
    c = Checker(kernel)
    x = c.input(x, x_name)
    dout = c.input(dout, "dout", x, x_name)
    dx = c.output(dx, "dx", x, x_name)
    c.same_shape(dout, "dout", x, x_name)
    c.same_shape(dx, "dx", x, x_name)
    c.outputs_distinct({"dx": dx}, {"dout": dout, x_name: x})
    return c, dx, dout, x


def relu_forward(out, x):
    """out = max(x, 0); NaN propagates."""
    _, out, x = _unary("relu_forward", out, x)
    out[...] = np.where(np.isnan(x) | (x > 0), x, 0)


def relu_backward(dx, dout, x):
    """dx = dout where x > 0, else 0."""
    _, dx, dout, x = _unary_backward("relu_backward", dx, dout, x)
    dx[...] = np.where(x > 0, dout, 0)


def _finite_hyper(c: Checker, v, name: str, dtype: np.dtype):
    """A real hyper-parameter that is finite once rounded to the arrays' dtype."""
    v = c.real(v, name)
    with np.errstate(over="ignore"):
        t = dtype.type(v)
    if not np.isfinite(t):
        c.value_error(f"argument '{name}' must be finite in {dtype}; got {v}")
    return t


def leaky_relu_forward(out, x, alpha):
    """out = x where x > 0, else alpha * x (alpha = -1 gives |x|)."""
    c, out, x = _unary("leaky_relu_forward", out, x)
    alpha = _finite_hyper(c, alpha, "alpha", x.dtype)
    out[...] = np.where(x > 0, x, x * alpha)


def leaky_relu_backward(dx, dout, x, alpha):
    """dx = dout where x > 0, else alpha * dout."""
    c, dx, dout, x = _unary_backward("leaky_relu_backward", dx, dout, x)
    alpha = _finite_hyper(c, alpha, "alpha", x.dtype)
    dx[...] = np.where(x > 0, dout, dout * alpha)


def _prelu_alpha(c: Checker, alpha, x: np.ndarray) -> np.ndarray:
    """alpha reshaped to broadcast against x: one shared slope, or one per channel (axis 1)."""
    alpha = c.input(alpha, "alpha", x, "x")
    c.ndim(alpha, "alpha", 1)
    if alpha.shape[0] == 1:
        return alpha
    if x.ndim < 2:
        c.value_error(
            f"argument 'alpha' has shape {_shape_str(alpha.shape)}; a per-channel alpha needs 'x' with "
            f"at least 2 dimensions (channels on axis 1), got shape {_shape_str(x.shape)}"
        )
    c.shape(alpha, "alpha", (x.shape[1],))
    return alpha.reshape((1, -1) + (1,) * (x.ndim - 2))


def prelu_forward(out, x, alpha):
    """out = x where x > 0, else alpha * x; alpha (1,) shared or (C,) per channel of axis 1."""
    c, out, x = _unary("prelu_forward", out, x)
    a = _prelu_alpha(c, alpha, x)
    c.outputs_distinct({"out": out}, {"x": x, "alpha": alpha})
    out[...] = np.where(x > 0, x, a * x)


def prelu_backward(dx, dalpha, dout, x, alpha):
    """dx = dout where x > 0, else alpha * dout (overwritten); dalpha += sum of dout * x where x <= 0."""
    c, dx, dout, x = _unary_backward("prelu_backward", dx, dout, x)
    a = _prelu_alpha(c, alpha, x)
    dalpha = c.output(dalpha, "dalpha", x, "x")
    c.same_shape(dalpha, "dalpha", alpha, "alpha")
    c.outputs_distinct({"dx": dx, "dalpha": dalpha}, {"dout": dout, "x": x, "alpha": alpha})
    dx[...] = np.where(x > 0, dout, a * dout)
    contrib = np.where(x > 0, 0, dout * x)
    if alpha.shape[0] == 1:
        dalpha += contrib.sum(dtype=x.dtype)
    else:
        axes = (0,) + tuple(range(2, x.ndim))
        dalpha += contrib.sum(axis=axes)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-|x|) never exceeds 1, so neither branch can overflow; each branch divides by a
    # denominator in [1, 2], so there is no cancellation either.
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z))


def sigmoid_forward(out, x):
    """out = 1 / (1 + exp(-x)), finite for any finite x."""
    c, out, x = _unary("sigmoid_forward", out, x)
    out[...] = _sigmoid(x)


def sigmoid_backward(dx, dout, out):
    """dx = dout * y * (1 - y), y the forward output."""
    c, dx, dout, y = _unary_backward("sigmoid_backward", dx, dout, out, x_name="out")
    dx[...] = dout * y * (1 - y)


def tanh_forward(out, x):
    """out = tanh(x)."""
    c, out, x = _unary("tanh_forward", out, x)
    np.tanh(x, out=out)


def tanh_backward(dx, dout, out):
    """dx = dout * (1 - y^2), y the forward output."""
    c, dx, dout, y = _unary_backward("tanh_backward", dx, dout, out, x_name="out")
    dx[...] = dout * (1 - y * y)


def _hardtanh_bounds(c: Checker, min_val, max_val, dtype: np.dtype):
    lo = c.real(min_val, "min_val")
    hi = c.real(max_val, "max_val")
    if not lo < hi:
        c.value_error(f"argument 'min_val' must be less than 'max_val'; got min_val={lo}, max_val={hi}")
    # Bounds beyond the dtype's range become +-inf, which clip nothing: the intended meaning.
    with np.errstate(over="ignore"):
        return dtype.type(lo), dtype.type(hi)


def hardtanh_forward(out, x, min_val, max_val):
    """out = clip(x, min_val, max_val); NaN propagates."""
    c, out, x = _unary("hardtanh_forward", out, x)
    lo, hi = _hardtanh_bounds(c, min_val, max_val, x.dtype)
    np.clip(x, lo, hi, out=out)


def hardtanh_backward(dx, dout, x, min_val, max_val):
    """dx = dout strictly inside (min_val, max_val), else 0."""
    c, dx, dout, x = _unary_backward("hardtanh_backward", dx, dout, x)
    lo, hi = _hardtanh_bounds(c, min_val, max_val, x.dtype)
    dx[...] = np.where((x > lo) & (x < hi), dout, 0)


def softplus_forward(out, x):
    """out = log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)), finite for any finite x."""
    c, out, x = _unary("softplus_forward", out, x)
    out[...] = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def softplus_backward(dx, dout, x):
    """dx = dout * sigmoid(x)."""
    c, dx, dout, x = _unary_backward("softplus_backward", dx, dout, x)
    dx[...] = dout * _sigmoid(x)


def identity_forward(out, x):
    """out = x."""
    c, out, x = _unary("identity_forward", out, x)
    out[...] = x


def identity_backward(dx, dout):
    """dx = dout."""
    c = Checker("identity_backward")
    dout = c.input(dout, "dout")
    dx = c.output(dx, "dx", dout, "dout")
    c.same_shape(dx, "dx", dout, "dout")
    c.outputs_distinct({"dx": dx}, {"dout": dout})
    dx[...] = dout


def _rows(c: Checker, a: np.ndarray, name: str) -> None:
    c.ndim(a, name, 2)
    if a.shape[1] < 1:
        c.value_error(f"argument '{name}' must have at least one column; got shape {_shape_str(a.shape)}")


def softmax_forward(out, x):
    """out (N,K) = softmax over the last axis, with the row maximum subtracted first."""
    c, out, x = _unary("softmax_forward", out, x)
    _rows(c, x, "x")
    # A row holding +inf or only -inf has no defined softmax; it becomes NaN without a
    # floating-point warning, like a NaN in the input.
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        out[...] = e / e.sum(axis=1, keepdims=True)


def softmax_backward(dx, dout, out):
    """dx = y * (dout - sum(dout * y, axis=-1)), y the forward output."""
    c, dx, dout, y = _unary_backward("softmax_backward", dx, dout, out, x_name="out")
    _rows(c, y, "out")
    dx[...] = y * (dout - (dout * y).sum(axis=1, keepdims=True))


def _maxout_shapes(c: Checker, x: np.ndarray, W) -> tuple[np.ndarray, int, int, int, int]:
    c.ndim(x, "x", 2)
    N, D = x.shape
    W = c.input(W, "W", x, "x")
    c.ndim(W, "W", 3)
    c.shape(W, "W", (-1, D, -1))
    K, M = W.shape[0], W.shape[2]
    if K < 1:
        c.value_error(f"argument 'W' must hold at least one piece; got shape {_shape_str(W.shape)}")
    return W, N, D, K, M


def maxout_forward(out, argmax, x, W, b):
    """out (N,M) = max_k (x @ W[k] + b[k]); argmax (N,M) int32 holds the first maximising k."""
    c = Checker("maxout_forward")
    x = c.input(x, "x")
    W, N, _, K, M = _maxout_shapes(c, x, W)
    b = c.input(b, "b", x, "x")
    c.shape(b, "b", (K, M))
    out = c.output(out, "out", x, "x")
    c.shape(out, "out", (N, M))
    argmax = c.int32(argmax, "argmax")
    c.writeable(argmax, "argmax")
    c.shape(argmax, "argmax", (N, M))
    c.argmax_fits_int32(K, "the pieces of 'W'")
    c.outputs_distinct({"out": out, "argmax": argmax}, {"x": x, "W": W, "b": b})
    c.room((K, N, M), x.dtype, "the pieces' outputs (K, N, M)")
    z = np.matmul(x, W) + b[:, None, :]  # (K, N, M)
    # np.argmax returns the first maximum (and the first NaN): ties go to the lowest piece.
    argmax[...] = np.argmax(z, axis=0)
    out[...] = np.take_along_axis(z, argmax[None], axis=0)[0]


def maxout_backward(dx, dW, db, dout, x, W, argmax):
    """Route dout to the winning piece: dx = sum_k g_k @ W[k].T (overwritten; None skips it),
    dW[k] += x.T @ g_k, db[k] += g_k.sum(0), with g_k = dout where argmax == k."""
    c = Checker("maxout_backward")
    x = c.input(x, "x")
    W, N, D, K, M = _maxout_shapes(c, x, W)
    dout = c.input(dout, "dout", x, "x")
    c.shape(dout, "dout", (N, M))
    argmax = c.int32(argmax, "argmax")
    c.shape(argmax, "argmax", (N, M))
    bad = np.flatnonzero((argmax < 0) | (argmax >= K))
    if bad.size:
        c.value_error(
            f"argument 'argmax' holds {argmax.flat[bad[0]]} at flat index {bad[0]}; expected values in [0, {K})"
        )
    dx = c.optional_output(dx, "dx", x, "x")
    if dx is not None:
        c.shape(dx, "dx", (N, D))
    dW = c.output(dW, "dW", x, "x")
    c.same_shape(dW, "dW", W, "W")
    db = c.output(db, "db", x, "x")
    c.shape(db, "db", (K, M))
    c.outputs_distinct({"dW": dW, "db": db, "dx": dx}, {"dout": dout, "x": x, "W": W, "argmax": argmax})
    c.room((K, N, M), x.dtype, "the pieces' gradients (K, N, M)")
    if dx is not None:
        dx[...] = 0
    for k in range(K):
        g = np.where(argmax == k, dout, 0)
        dW[k] += x.T @ g
        db[k] += g.sum(axis=0)
        if dx is not None:
            dx += g @ W[k].T


def _rbf_shapes(c: Checker, x: np.ndarray, centers, widths) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    c.ndim(x, "x", 2)
    N, D = x.shape
    centers = c.input(centers, "centers", x, "x")
    c.ndim(centers, "centers", 2)
    c.shape(centers, "centers", (-1, D))
    M = centers.shape[0]
    widths = c.input(widths, "widths", x, "x")
    c.shape(widths, "widths", (M,))
    # Every formula divides by widths^2, so a width whose square underflows is as bad as 0.
    zero = np.flatnonzero(widths * widths == 0)
    if zero.size:
        c.value_error(
            f"argument 'widths' holds {widths[zero[0]]} at index {zero[0]}; expected non-zero widths "
            "whose square is non-zero"
        )
    return centers, widths, N, D, M


def _sq_dist(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    # Differences rather than |x|^2 - 2 x.c + |c|^2: the latter cancels and can go negative.
    diff = x[:, None, :] - centers[None, :, :]
    return np.einsum("nmd,nmd->nm", diff, diff)


def rbf_forward(out, x, centers, widths):
    """out (N,M) = exp(-||x_n - c_m||^2 / (2 widths_m^2))."""
    c = Checker("rbf_forward")
    x = c.input(x, "x")
    centers, widths, N, _, M = _rbf_shapes(c, x, centers, widths)
    out = c.output(out, "out", x, "x")
    c.shape(out, "out", (N, M))
    c.outputs_distinct({"out": out}, {"x": x, "centers": centers, "widths": widths})
    out[...] = np.exp(-_sq_dist(x, centers) / (2 * widths * widths))


def rbf_backward(dx, dcenters, dwidths, dout, x, centers, widths, out):
    """Gradients of rbf_forward given its output: dx overwritten (None skips it);
    dcenters += sum_n g (x_n - c_m) / w_m^2; dwidths += sum_n g ||x_n - c_m||^2 / w_m^3,
    with g = dout * out."""
    c = Checker("rbf_backward")
    x = c.input(x, "x")
    centers, widths, N, D, M = _rbf_shapes(c, x, centers, widths)
    dout = c.input(dout, "dout", x, "x")
    c.shape(dout, "dout", (N, M))
    out = c.input(out, "out", x, "x")
    c.shape(out, "out", (N, M))
    dx = c.optional_output(dx, "dx", x, "x")
    if dx is not None:
        c.shape(dx, "dx", (N, D))
    dcenters = c.output(dcenters, "dcenters", x, "x")
    c.same_shape(dcenters, "dcenters", centers, "centers")
    dwidths = c.output(dwidths, "dwidths", x, "x")
    c.same_shape(dwidths, "dwidths", widths, "widths")
    c.outputs_distinct(
        {"dcenters": dcenters, "dwidths": dwidths, "dx": dx},
        {"dout": dout, "x": x, "centers": centers, "widths": widths, "out": out},
    )
    inv_w2 = 1 / (widths * widths)
    g = dout * out * inv_w2  # (N, M): the common factor of every gradient
    if dx is not None:
        dx[...] = g @ centers - x * g.sum(axis=1, keepdims=True)
    dcenters += g.T @ x - centers * g.sum(axis=0)[:, None]
    dwidths += (g * _sq_dist(x, centers)).sum(axis=0) / widths
