"""Oracle kernels: activation functions, forward and backward."""

from __future__ import annotations

import numpy as np

from ._checks import Checker

__all__ = ["relu_forward", "relu_backward"]


def _unary(kernel: str, out, x, out_name: str = "out"):
    c = Checker(kernel)
    x = c.input(x, "x")
    out = c.output(out, out_name, x, "x")
    c.same_shape(out, out_name, x, "x")
    return c, out, x


def _unary_backward(kernel: str, dx, dout, x, x_name: str = "x"):
    c = Checker(kernel)
    x = c.input(x, x_name)
    dout = c.input(dout, "dout", x, x_name)
    dx = c.output(dx, "dx", x, x_name)
    c.same_shape(dout, "dout", x, x_name)
    c.same_shape(dx, "dx", x, x_name)
    return c, dx, dout, x


def relu_forward(out, x):
    """out = max(x, 0); NaN propagates."""
    _, out, x = _unary("relu_forward", out, x)
    out[...] = np.where(np.isnan(x) | (x > 0), x, 0)


def relu_backward(dx, dout, x):
    """dx = dout where x > 0, else 0."""
    _, dx, dout, x = _unary_backward("relu_backward", dx, dout, x)
    dx[...] = np.where(x > 0, dout, 0)
