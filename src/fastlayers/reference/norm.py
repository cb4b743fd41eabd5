"""Oracle kernels: batch normalisation, dropout and the inference-time scaling."""

from __future__ import annotations

import numpy as np

from ._checks import Checker
from .activations import relu_backward, relu_forward

__all__ = [
    "batchnorm_forward_train",
    "batchnorm_forward_eval",
    "batchnorm_backward",
    "batchnorm_relu_forward_train",
    "batchnorm_relu_forward_eval",
    "batchnorm_relu_backward",
    "dropout_forward",
    "dropout_backward",
    "scale_forward",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _seed(c: Checker, seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        c.type_error(f"argument 'seed' must be an int; got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        c.value_error(f"argument 'seed' must be in [0, 2**32); got {seed}")
    return int(seed)


def uniform(seed: int, n: int) -> np.ndarray:
    """The counter-based uniforms u(seed, i), i = 0..n-1, in [0, 1) as float64.

    SplitMix64's finaliser applied to ``seed * 2**32 + i``; each value depends only on
    ``(seed, i)``, so the native backend reproduces every mask bit for bit.
    """
    c = Checker("uniform")
    seed = _seed(c, seed)
    n = c.nonnegative_int(n, "n")
    # uint64 arithmetic is meant to wrap; errstate silences NumPy's scalar overflow warnings.
    with np.errstate(over="ignore"):
        z = np.uint64(seed << 32) + np.arange(n, dtype=np.uint64)
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) * 2.0**-24


def _bn_layout(c: Checker, x: np.ndarray):
    """(axes reduced, broadcast shape of a per-feature vector, features, elements per feature)."""
    if x.ndim == 2:
        N, F = x.shape
        return (0,), (1, F), F, N
    if x.ndim == 4:
        N, F, H, W = x.shape
        return (0, 2, 3), (1, F, 1, 1), F, N * H * W
    c.value_error(f"argument 'x' must be 2-D (N,D) or 4-D (N,C,H,W); got shape {x.shape}")


def _eps(c: Checker, eps) -> float:
    eps = c.real(eps, "eps")
    if not (eps > 0 and np.isfinite(eps)):
        c.value_error(f"argument 'eps' must be a finite number > 0; got {eps}")
    return eps


def _train_args(c: Checker, out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps):
    x = c.input(x, "x")
    gamma = c.input(gamma, "gamma", x, "x")
    beta = c.input(beta, "beta", x, "x")
    out = c.output(out, "out", x, "x")
    mean = c.output(mean, "mean", x, "x")
    invstd = c.output(invstd, "invstd", x, "x")
    running_mean = c.output(running_mean, "running_mean", x, "x")
    running_var = c.output(running_var, "running_var", x, "x")
    axes, bshape, F, m = _bn_layout(c, x)
    for a, name in ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (invstd, "invstd"),
                    (running_mean, "running_mean"), (running_var, "running_var")):
        c.shape(a, name, (F,))
    c.same_shape(out, "out", x, "x")
    momentum = c.real(momentum, "momentum")
    if not 0 <= momentum <= 1:
        c.value_error(f"argument 'momentum' must be in [0, 1]; got {momentum}")
    eps = _eps(c, eps)
    if m == 0:
        c.value_error(f"argument 'x' has no elements per feature (shape {x.shape}); batch statistics need m >= 1")
    c.outputs_distinct(dict(out=out, mean=mean, invstd=invstd, running_mean=running_mean, running_var=running_var),
                       dict(x=x, gamma=gamma, beta=beta))
    return out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, axes, bshape, m


def _train(out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, axes, bshape, m):
    # Two passes (mean, then mean of squared deviations) avoid the cancellation of E[x²] - E[x]².
    mu = x.mean(axis=axes)
    var = ((x - mu.reshape(bshape)) ** 2).mean(axis=axes)
    istd = 1 / np.sqrt(var + eps)
    out[...] = (x - mu.reshape(bshape)) * istd.reshape(bshape) * gamma.reshape(bshape) + beta.reshape(bshape)
    mean[...] = mu
    invstd[...] = istd
    unbiased = var * (m / (m - 1)) if m > 1 else var
    running_mean[...] = momentum * running_mean + (1 - momentum) * mu
    running_var[...] = momentum * running_var + (1 - momentum) * unbiased


def batchnorm_forward_train(out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps):
    """Normalises with the batch statistics, writes mean and invstd, updates running_* in place."""
    c = Checker("batchnorm_forward_train")
    _train(*_train_args(c, out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps))


def _eval_args(c: Checker, out, x, gamma, beta, running_mean, running_var, eps):
    x = c.input(x, "x")
    gamma = c.input(gamma, "gamma", x, "x")
    beta = c.input(beta, "beta", x, "x")
    running_mean = c.input(running_mean, "running_mean", x, "x")
    running_var = c.input(running_var, "running_var", x, "x")
    out = c.output(out, "out", x, "x")
    _, bshape, F, _ = _bn_layout(c, x)
    for a, name in ((gamma, "gamma"), (beta, "beta"), (running_mean, "running_mean"),
                    (running_var, "running_var")):
        c.shape(a, name, (F,))
    c.same_shape(out, "out", x, "x")
    eps = _eps(c, eps)
    c.outputs_distinct(dict(out=out), dict(x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var))
    return out, x, gamma, beta, running_mean, running_var, eps, bshape


def _eval(out, x, gamma, beta, running_mean, running_var, eps, bshape):
    istd = 1 / np.sqrt(running_var + eps)
    out[...] = (x - running_mean.reshape(bshape)) * istd.reshape(bshape) * gamma.reshape(bshape) \
        + beta.reshape(bshape)


def batchnorm_forward_eval(out, x, gamma, beta, running_mean, running_var, eps):
    """out = (x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    c = Checker("batchnorm_forward_eval")
    _eval(*_eval_args(c, out, x, gamma, beta, running_mean, running_var, eps))


def _backward_args(c: Checker, dx, dgamma, dbeta, dout, x, gamma, mean, invstd, out=None, relu=False):
    x = c.input(x, "x")
    dout = c.input(dout, "dout", x, "x")
    gamma = c.input(gamma, "gamma", x, "x")
    mean = c.input(mean, "mean", x, "x")
    invstd = c.input(invstd, "invstd", x, "x")
    if relu:
        out = c.input(out, "out", x, "x")
    dx = c.optional_output(dx, "dx", x, "x")
    dgamma = c.output(dgamma, "dgamma", x, "x")
    dbeta = c.output(dbeta, "dbeta", x, "x")
    axes, bshape, F, m = _bn_layout(c, x)
    c.same_shape(dout, "dout", x, "x")
    if relu:
        c.same_shape(out, "out", x, "x")
    if dx is not None:
        c.same_shape(dx, "dx", x, "x")
    for a, name in ((gamma, "gamma"), (mean, "mean"), (invstd, "invstd"), (dgamma, "dgamma"), (dbeta, "dbeta")):
        c.shape(a, name, (F,))
    c.outputs_distinct(dict(dx=dx, dgamma=dgamma, dbeta=dbeta),
                       dict(dout=dout, x=x, gamma=gamma, mean=mean, invstd=invstd, out=out))
    return dx, dgamma, dbeta, dout, x, gamma, mean, invstd, out, axes, bshape, m


def _backward(dx, dgamma, dbeta, dout, x, gamma, mean, invstd, axes, bshape, m):
    istd = invstd.reshape(bshape)
    xhat = (x - mean.reshape(bshape)) * istd
    sum_dout = dout.sum(axis=axes)
    sum_dout_xhat = (dout * xhat).sum(axis=axes)
    if dx is not None and m > 0:
        dx[...] = (gamma.reshape(bshape) * istd / m) * (
            m * dout - sum_dout.reshape(bshape) - xhat * sum_dout_xhat.reshape(bshape)
        )
    dgamma += sum_dout_xhat
    dbeta += sum_dout


def batchnorm_backward(dx, dgamma, dbeta, dout, x, gamma, mean, invstd):
    """dx overwritten (None skips it); dgamma += sum(dout * xhat); dbeta += sum(dout)."""
    c = Checker("batchnorm_backward")
    dx, dgamma, dbeta, dout, x, gamma, mean, invstd, _, axes, bshape, m = _backward_args(
        c, dx, dgamma, dbeta, dout, x, gamma, mean, invstd)
    _backward(dx, dgamma, dbeta, dout, x, gamma, mean, invstd, axes, bshape, m)


# --- batch normalisation fused with ReLU ---------------------------------------------------
#
# Plain compositions of the kernels above with relu_forward / relu_backward; the native
# versions do both in one pass over the data.


def batchnorm_relu_forward_train(out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps):
    """out = max(BN(x), 0) with the batch statistics; mean, invstd, running_* as batchnorm_forward_train."""
    c = Checker("batchnorm_relu_forward_train")
    out, *rest = _train_args(c, out, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps)
    y = np.empty_like(out)
    _train(y, *rest)
    relu_forward(out, y)


def batchnorm_relu_forward_eval(out, x, gamma, beta, running_mean, running_var, eps):
    """out = max(batchnorm_forward_eval(x, ...), 0)."""
    c = Checker("batchnorm_relu_forward_eval")
    out, *rest = _eval_args(c, out, x, gamma, beta, running_mean, running_var, eps)
    y = np.empty_like(out)
    _eval(y, *rest)
    relu_forward(out, y)


def batchnorm_relu_backward(dx, dgamma, dbeta, dout, x, gamma, mean, invstd, out):
    """batchnorm_backward of g = dout where out > 0 else 0 (out: the fused forward's output)."""
    c = Checker("batchnorm_relu_backward")
    dx, dgamma, dbeta, dout, x, gamma, mean, invstd, out, axes, bshape, m = _backward_args(
        c, dx, dgamma, dbeta, dout, x, gamma, mean, invstd, out, relu=True)
    g = np.empty_like(dout)
    relu_backward(g, dout, out)
    _backward(dx, dgamma, dbeta, g, x, gamma, mean, invstd, axes, bshape, m)


# --- dropout -----------------------------------------------------------------------------


def dropout_forward(out, mask, x, p, seed, scale):
    """mask = uniform(seed, i) >= p over the flat index i; out = x * mask * scale."""
    c = Checker("dropout_forward")
    x = c.input(x, "x")
    out = c.output(out, "out", x, "x")
    mask = c.uint8(mask, "mask")
    c.writeable(mask, "mask")
    c.same_shape(out, "out", x, "x")
    c.same_shape(mask, "mask", x, "x")
    p = c.real(p, "p")
    if not 0 <= p < 1:
        c.value_error(f"argument 'p' must be in [0, 1); got {p}")
    seed = _seed(c, seed)
    scale = c.finite(scale, "scale")
    c.outputs_distinct(dict(out=out, mask=mask), dict(x=x))
    keep = (uniform(seed, x.size) >= p).reshape(x.shape)
    mask[...] = keep
    # Literal product as in the contract: a dropped inf gives NaN, without a warning.
    with np.errstate(invalid="ignore"):
        out[...] = x * mask * scale


def dropout_backward(dx, dout, mask, scale):
    """dx = dout * mask * scale."""
    c = Checker("dropout_backward")
    dout = c.input(dout, "dout")
    dx = c.output(dx, "dx", dout, "dout")
    mask = c.uint8(mask, "mask")
    c.same_shape(dx, "dx", dout, "dout")
    c.same_shape(mask, "mask", dout, "dout")
    scale = c.finite(scale, "scale")
    c.outputs_distinct(dict(dx=dx), dict(dout=dout, mask=mask))
    with np.errstate(invalid="ignore"):
        dx[...] = dout * mask * scale


def scale_forward(out, x, alpha):
    """out = alpha * x."""
    c = Checker("scale_forward")
    x = c.input(x, "x")
    out = c.output(out, "out", x, "x")
    c.same_shape(out, "out", x, "x")
    alpha = c.finite(alpha, "alpha")
    c.outputs_distinct(dict(out=out), dict(x=x))
    out[...] = alpha * x
