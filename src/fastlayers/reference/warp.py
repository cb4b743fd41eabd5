"""Oracle kernel: affine warp of NCHW images with bilinear interpolation (data augmentation).

Coordinates: pixel (row i, column j) of a plane has its centre at the point (x, y) = (j, i).
``theta[n]`` (2, 3) maps a point of the *output* image to the point of the *input* image it
samples (inverse mapping):

    sx = theta[n, 0, 0] * x + theta[n, 0, 1] * y + theta[n, 0, 2]
    sy = theta[n, 1, 0] * x + theta[n, 1, 1] * y + theta[n, 1, 2]

The input is read at (sx, sy) by bilinear interpolation between the four pixels around it;
outside the image every pixel holds ``fill``. All of it runs in float64 (the matrices and
pixels are converted exactly, the result is rounded to the images' dtype once), in the order
written below, which the native kernel repeats operation for operation: the two agree bit
for bit.
"""

from __future__ import annotations

import numpy as np

from ._checks import Checker

__all__ = ["affine_warp_forward"]


def _tap(planes: np.ndarray, rows: np.ndarray, cols: np.ndarray, H: int, W: int, fill: float) -> np.ndarray:
    """planes (N, C, H*W) float64 read at integer (rows, cols) (N, H*W); fill outside the image."""
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    flat = np.where(inside, rows * W + cols, 0)
    values = np.take_along_axis(planes, flat[:, None, :], axis=2)
    return np.where(inside[:, None, :], values, fill)


def affine_warp_forward(out, x, theta, fill):
    """out (N,C,H,W) = x (N,C,H,W) sampled at theta[n] (N,2,3) applied to each output pixel
    centre (x = column, y = row), bilinear, ``fill`` outside the input. There is no backward:
    the inputs are data, not parameters."""
    c = Checker("affine_warp_forward")
    x = c.input(x, "x")
    out = c.output(out, "out", x, "x")
    theta = c.input(theta, "theta", x, "x")
    fill = c.real(fill, "fill")
    c.ndim(x, "x", 4)
    N, C, H, W = x.shape
    c.same_shape(out, "out", x, "x")
    c.shape(theta, "theta", (N, 2, 3))
    c.outputs_distinct({"out": out}, {"x": x, "theta": theta})
    if out.size == 0:
        return
    with np.errstate(over="ignore"):
        # The fill a pixel wholly outside the input receives: the value rounded to the dtype.
        fill = float(x.dtype.type(fill))
    t = theta.astype(np.float64).reshape(N, 6, 1)
    cols = np.tile(np.arange(W, dtype=np.float64), H)  # x of each output pixel, (H*W,)
    rows = np.repeat(np.arange(H, dtype=np.float64), W)  # y of each output pixel
    with np.errstate(all="ignore"):  # NaN and infinities in theta or x propagate
        sx = t[:, 0] * cols + t[:, 1] * rows + t[:, 2]  # (N, H*W)
        sy = t[:, 3] * cols + t[:, 4] * rows + t[:, 5]
        undefined = np.isnan(sx) | np.isnan(sy)
        # A point outside (-1, W) x (-1, H) has every tap of non-zero weight outside the image
        # (infinite coordinates included): it is filled, not interpolated.
        near = (sx > -1) & (sx < W) & (sy > -1) & (sy < H)
        sx, sy = np.where(near, sx, 0.0), np.where(near, sy, 0.0)
        x0, y0 = np.floor(sx), np.floor(sy)
        fx, fy = sx - x0, sy - y0
        # sx - floor(sx) rounds up to 1 for sx just below 0: that point is taken as 0, so that
        # fx < 1 and the first tap's weight (1 - fy) * (1 - fx) is never 0.
        x0, fx = np.where(fx == 1, x0 + 1, x0), np.where(fx == 1, 0.0, fx)
        y0, fy = np.where(fy == 1, y0 + 1, y0), np.where(fy == 1, 0.0, fy)
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        w00, w01 = (1 - fy) * (1 - fx), (1 - fy) * fx
        w10, w11 = fy * (1 - fx), fy * fx
        planes = x.reshape(N, C, H * W).astype(np.float64)
        # Taps of zero weight are skipped rather than multiplied by 0, so that an integer
        # shift copies pixels exactly (-0.0 included) and an infinite neighbour or fill at
        # zero weight does not make a NaN.
        acc = w00[:, None] * _tap(planes, y0, x0, H, W, fill)
        for w, dy, dx in ((w01, 0, 1), (w10, 1, 0), (w11, 1, 1)):
            term = w[:, None] * _tap(planes, y0 + dy, x0 + dx, H, W, fill)
            acc = np.where((w != 0)[:, None], acc + term, acc)
        acc = np.where(near[:, None], acc, fill)
        acc = np.where(undefined[:, None], np.nan, acc)
        out[...] = acc.reshape(N, C, H, W).astype(x.dtype)
