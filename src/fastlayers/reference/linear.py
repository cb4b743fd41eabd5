"""Oracle kernels: the affine layer."""

from __future__ import annotations

import numpy as np

from ._checks import Checker
from .activations import relu_backward, relu_forward

__all__ = ["affine_forward", "affine_backward", "affine_relu_forward", "affine_relu_backward"]


def _forward_args(c: Checker, out, x, W, b):
    x = c.input(x, "x")
    W = c.input(W, "W", x, "x")
    b = c.input(b, "b", x, "x")
    out = c.output(out, "out", x, "x")
    c.ndim(x, "x", 2)
    N, D = x.shape
    c.ndim(W, "W", 2)
    c.shape(W, "W", (D, -1))
    M = W.shape[1]
    c.shape(b, "b", (M,))
    c.shape(out, "out", (N, M))
    c.outputs_distinct({"out": out}, {"x": x, "W": W, "b": b})


def _backward_args(c: Checker, dx, dW, db, dout, x, W, out=None, relu=False):
    x = c.input(x, "x")
    W = c.input(W, "W", x, "x")
    dout = c.input(dout, "dout", x, "x")
    dx = c.optional_output(dx, "dx", x, "x")
    dW = c.output(dW, "dW", x, "x")
    db = c.output(db, "db", x, "x")
    if relu:
        out = c.input(out, "out", x, "x")
    c.ndim(x, "x", 2)
    N, D = x.shape
    c.ndim(W, "W", 2)
    c.shape(W, "W", (D, -1))
    M = W.shape[1]
    c.shape(dout, "dout", (N, M))
    if relu:
        c.shape(out, "out", (N, M))
    if dx is not None:
        c.shape(dx, "dx", (N, D))
    c.shape(dW, "dW", (D, M))
    c.shape(db, "db", (M,))
    c.outputs_distinct({"dx": dx, "dW": dW, "db": db}, {"dout": dout, "x": x, "W": W, "out": out})


def affine_forward(out, x, W, b):
    """out (N,M) = x (N,D) @ W (D,M) + b (M,)."""
    _forward_args(Checker("affine_forward"), out, x, W, b)
    out[...] = x @ W + b


def affine_backward(dx, dW, db, dout, x, W):
    """dx = dout @ W.T (overwritten; None skips it); dW += x.T @ dout; db += dout.sum(0)."""
    _backward_args(Checker("affine_backward"), dx, dW, db, dout, x, W)
    if dx is not None:
        dx[...] = dout @ W.T
    dW += x.T @ dout
    db += dout.sum(axis=0)


def affine_relu_forward(out, x, W, b):
    """out (N,M) = max(x @ W + b, 0): Affine followed by ReLU in one kernel."""
    _forward_args(Checker("affine_relu_forward"), out, x, W, b)
    affine_forward(out, x, W, b)
    relu_forward(out, out.copy())


def affine_relu_backward(dx, dW, db, dout, x, W, out):
    """The backward of affine_relu_forward, given its output ``out``: the ReLU passes dout
    where out > 0, then as affine_backward."""
    _backward_args(Checker("affine_relu_backward"), dx, dW, db, dout, x, W, out, relu=True)
    dz = np.empty_like(dout)
    relu_backward(dz, dout, out)
    affine_backward(dx, dW, db, dz, x, W)
