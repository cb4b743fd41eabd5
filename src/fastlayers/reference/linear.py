"""Oracle kernels: the affine layer."""

from __future__ import annotations

from ._checks import Checker

__all__ = ["affine_forward", "affine_backward"]


def affine_forward(out, x, W, b):
    """out (N,M) = x (N,D) @ W (D,M) + b (M,)."""
    c = Checker("affine_forward")
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
    out[...] = x @ W + b


def affine_backward(dx, dW, db, dout, x, W):
    """dx = dout @ W.T (overwritten; None skips it); dW += x.T @ dout; db += dout.sum(0)."""
    c = Checker("affine_backward")
    x = c.input(x, "x")
    W = c.input(W, "W", x, "x")
    dout = c.input(dout, "dout", x, "x")
    dx = c.optional_output(dx, "dx", x, "x")
    dW = c.output(dW, "dW", x, "x")
    db = c.output(db, "db", x, "x")
    c.ndim(x, "x", 2)
    N, D = x.shape
    c.ndim(W, "W", 2)
    c.shape(W, "W", (D, -1))
    M = W.shape[1]
    c.shape(dout, "dout", (N, M))
    if dx is not None:
        c.shape(dx, "dx", (N, D))
    c.shape(dW, "dW", (D, M))
    c.shape(db, "db", (M,))
    if dx is not None:
        dx[...] = dout @ W.T
    dW += x.T @ dout
    db += dout.sum(axis=0)
