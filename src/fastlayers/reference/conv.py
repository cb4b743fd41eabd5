"""Oracle kernels: convolution (im2col) and pooling, NCHW."""

from __future__ import annotations

import numpy as np

from ._checks import Checker
from .activations import relu_backward, relu_forward

__all__ = [
    "im2col",
    "col2im",
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_relu_forward",
    "conv2d_relu_backward",
    "conv2d_relu_maxpool2d_forward",
    "conv2d_relu_maxpool2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
]


# --- shared helpers ----------------------------------------------------------------------


def _geometry(
    c: Checker, H: int, W: int, FH, FW, stride, pad, fh_name="FH", fw_name="FW", x_name="x", stride_name="stride",
    pad_name="pad",
):
    """Validated (FH, FW, stride, pad, OH, OW) for an H x W input plane."""
    FH = c.positive_int(FH, fh_name)
    FW = c.positive_int(FW, fw_name)
    stride = c.positive_int(stride, stride_name)
    pad = c.nonnegative_int(pad, pad_name)
    Hp, Wp = H + 2 * pad, W + 2 * pad
    plane = f"argument '{x_name}'" if x_name else "the convolution output of 'x'"
    if Hp < FH or Wp < FW:
        c.value_error(
            f"{plane} has a padded plane of ({Hp}, {Wp}) (H={H}, W={W}, {pad_name}={pad}); "
            f"expected at least the window ({FH}, {FW})"
        )
    OH = (Hp - FH) // stride + 1
    OW = (Wp - FW) // stride + 1
    return FH, FW, stride, pad, OH, OW


def _pool_pad(c: Checker, pad: int, PH: int, PW: int, pad_name="pad") -> None:
    # Keeps at least one real element in every window, so no output is made of padding alone.
    if pad > PH // 2 or pad > PW // 2:
        c.value_error(
            f"argument '{pad_name}' must be <= PH // 2 and <= PW // 2 = {min(PH // 2, PW // 2)} "
            f"for a ({PH}, {PW}) window; got {pad}"
        )


def _windows(xp: np.ndarray, FH: int, FW: int, stride: int, OH: int, OW: int) -> np.ndarray:
    """(..., Hp, Wp) padded planes -> (..., FH, FW, OH, OW): entry [i, j, oh, ow] is xp[oh*s+i, ow*s+j]."""
    lead = xp.shape[:-2]
    out = np.empty((*lead, FH, FW, OH, OW), dtype=xp.dtype)
    for i in range(FH):
        for j in range(FW):
            out[..., i, j, :, :] = xp[..., i : i + stride * OH : stride, j : j + stride * OW : stride]
    return out


def _unwindows(cols: np.ndarray, Hp: int, Wp: int, stride: int) -> np.ndarray:
    """Adjoint of ``_windows``: sums (..., FH, FW, OH, OW) back into (..., Hp, Wp) planes."""
    *lead, FH, FW, OH, OW = cols.shape
    xp = np.zeros((*lead, Hp, Wp), dtype=cols.dtype)
    for i in range(FH):
        for j in range(FW):
            xp[..., i : i + stride * OH : stride, j : j + stride * OW : stride] += cols[..., i, j, :, :]
    return xp


def _room_conv(c: Checker, N, C, H, W, FH, FW, pad, OH, OW, dtype) -> None:
    """The padded input and the im2col matrix that the computation below builds, refused
    before they are allocated if they cannot be (see Checker.room)."""
    c.room((N, C, H + 2 * pad, W + 2 * pad), dtype, "the padded input")
    c.room((N * OH * OW, C * FH * FW), dtype, "the im2col matrix")


def _pad(x: np.ndarray, pad: int, value: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant", constant_values=value)


def _im2col(x: np.ndarray, FH: int, FW: int, stride: int, pad: int, OH: int, OW: int) -> np.ndarray:
    N, C = x.shape[:2]
    w = _windows(_pad(x, pad), FH, FW, stride, OH, OW)  # (N, C, FH, FW, OH, OW)
    return w.transpose(0, 4, 5, 1, 2, 3).reshape(N * OH * OW, C * FH * FW)


def _col2im(col: np.ndarray, N: int, C: int, H: int, W: int, FH: int, FW: int, stride: int, pad: int,
            OH: int, OW: int) -> np.ndarray:
    w = col.reshape(N, OH, OW, C, FH, FW).transpose(0, 3, 4, 5, 1, 2)
    xp = _unwindows(w, H + 2 * pad, W + 2 * pad, stride)
    return xp[:, :, pad : pad + H, pad : pad + W]


# --- im2col / col2im ---------------------------------------------------------------------


def im2col(col, x, FH, FW, stride, pad):
    """col (N*OH*OW, C*FH*FW): row (n*OH + oh)*OW + ow, column (c*FH + i)*FW + j."""
    c = Checker("im2col")
    x = c.input(x, "x")
    col = c.output(col, "col", x, "x")
    c.ndim(x, "x", 4)
    N, C, H, W = x.shape
    FH, FW, stride, pad, OH, OW = _geometry(c, H, W, FH, FW, stride, pad)
    c.shape(col, "col", (N * OH * OW, C * FH * FW))
    c.outputs_distinct({"col": col}, {"x": x})
    if col.size == 0:
        return
    _room_conv(c, N, C, H, W, FH, FW, pad, OH, OW, x.dtype)
    col[...] = _im2col(x, FH, FW, stride, pad, OH, OW)


def col2im(dx, col, FH, FW, stride, pad):
    """dx (N,C,H,W) = the adjoint of im2col applied to col (overwritten; padding dropped)."""
    c = Checker("col2im")
    col = c.input(col, "col")
    dx = c.output(dx, "dx", col, "col")
    c.ndim(dx, "dx", 4)
    N, C, H, W = dx.shape
    FH, FW, stride, pad, OH, OW = _geometry(c, H, W, FH, FW, stride, pad, x_name="dx")
    c.shape(col, "col", (N * OH * OW, C * FH * FW))
    c.outputs_distinct({"dx": dx}, {"col": col})
    if dx.size == 0:
        return
    _room_conv(c, N, C, H, W, FH, FW, pad, OH, OW, col.dtype)
    dx[...] = _col2im(col, N, C, H, W, FH, FW, stride, pad, OH, OW)


# --- convolution -------------------------------------------------------------------------


def _conv_args(c: Checker, x, W):
    c.ndim(x, "x", 4)
    N, C, H, Wd = x.shape
    c.ndim(W, "W", 4)
    c.shape(W, "W", (-1, C, -1, -1))
    FN, _, FH, FW = W.shape
    return N, C, H, Wd, FN, FH, FW


def _checked_conv(c: Checker, x, W, stride, pad):
    """x and W as in _conv_args, a non-empty filter, then the validated geometry:
    (N, C, H, W, FN, FH, FW, stride, pad, OH, OW)."""
    N, C, H, Wd, FN, FH, FW = _conv_args(c, x, W)
    if FH < 1 or FW < 1:
        c.value_error(f"argument 'W' must have a non-empty filter; got shape {W.shape}")
    FH, FW, stride, pad, OH, OW = _geometry(c, H, Wd, FH, FW, stride, pad)
    return N, C, H, Wd, FN, FH, FW, stride, pad, OH, OW


def _forward_args(c: Checker, out, x, W, b, stride, pad):
    x = c.input(x, "x")
    W = c.input(W, "W", x, "x")
    b = c.input(b, "b", x, "x")
    out = c.output(out, "out", x, "x")
    N, C, H, Wd, FN, FH, FW = _conv_args(c, x, W)
    c.shape(b, "b", (FN,))
    if FH < 1 or FW < 1:
        c.value_error(f"argument 'W' must have a non-empty filter; got shape {W.shape}")
    FH, FW, stride, pad, OH, OW = _geometry(c, H, Wd, FH, FW, stride, pad)
    c.shape(out, "out", (N, FN, OH, OW))
    c.outputs_distinct({"out": out}, {"x": x, "W": W, "b": b})
    return out, x, W, b, stride, pad


def conv2d_forward(out, x, W, b, stride, pad):
    """out (N,FN,OH,OW) = cross-correlation of x (N,C,H,W) with W (FN,C,FH,FW), plus b (FN,)."""
    c = Checker("conv2d_forward")
    out, x, W, b, stride, pad = _forward_args(c, out, x, W, b, stride, pad)
    N, C, H, Wd = x.shape
    FN, _, FH, FW = W.shape
    _, _, OH, OW = out.shape
    if out.size == 0:
        return
    _room_conv(c, N, C, H, Wd, FH, FW, pad, OH, OW, x.dtype)
    col = _im2col(x, FH, FW, stride, pad, OH, OW)
    y = col @ W.reshape(FN, C * FH * FW).T + b  # (N*OH*OW, FN)
    out[...] = y.reshape(N, OH, OW, FN).transpose(0, 3, 1, 2)


def conv2d_relu_forward(out, x, W, b, stride, pad):
    """out = max(conv2d_forward(x, W, b), 0), NaN propagating like relu_forward."""
    c = Checker("conv2d_relu_forward")
    out, x, W, b, stride, pad = _forward_args(c, out, x, W, b, stride, pad)
    if out.size == 0:
        return
    _room_conv(c, *x.shape, *W.shape[2:], pad, *out.shape[2:], x.dtype)
    y = np.empty_like(out)
    conv2d_forward(y, x, W, b, stride, pad)
    relu_forward(out, y)


def _backward_args(c: Checker, dx, dW, db, dout, x, W, out, stride, pad, fused: bool):
    x = c.input(x, "x")
    W = c.input(W, "W", x, "x")
    dout = c.input(dout, "dout", x, "x")
    if fused:
        out = c.input(out, "out", x, "x")
    dx = c.optional_output(dx, "dx", x, "x")
    dW = c.output(dW, "dW", x, "x")
    db = c.output(db, "db", x, "x")
    N, C, H, Wd, FN, FH, FW, stride, pad, OH, OW = _checked_conv(c, x, W, stride, pad)
    c.shape(dout, "dout", (N, FN, OH, OW))
    if fused:
        c.same_shape(out, "out", dout, "dout")
    if dx is not None:
        c.same_shape(dx, "dx", x, "x")
    c.same_shape(dW, "dW", W, "W")
    c.shape(db, "db", (FN,))
    c.outputs_distinct({"dx": dx, "dW": dW, "db": db}, {"dout": dout, "x": x, "W": W, "out": out if fused else None})
    return stride, pad


def conv2d_backward(dx, dW, db, dout, x, W, stride, pad):
    """dx overwritten (None skips it); dW += dout correlated with x; db += dout summed over N, OH, OW."""
    c = Checker("conv2d_backward")
    stride, pad = _backward_args(c, dx, dW, db, dout, x, W, None, stride, pad, False)
    N, C, H, Wd = x.shape
    FN, _, FH, FW = W.shape
    _, _, OH, OW = dout.shape
    if dout.size == 0:
        # No gradient flows: dx = W^T @ (an empty dout) is zero; dW and db gain nothing.
        if dx is not None:
            dx[...] = 0
        return
    _room_conv(c, N, C, H, Wd, FH, FW, pad, OH, OW, x.dtype)
    g = dout.transpose(0, 2, 3, 1).reshape(N * OH * OW, FN)
    col = _im2col(x, FH, FW, stride, pad, OH, OW)
    dW += (g.T @ col).reshape(FN, C, FH, FW)
    db += g.sum(axis=0)
    if dx is not None:
        dcol = g @ W.reshape(FN, C * FH * FW)
        dx[...] = _col2im(dcol, N, C, H, Wd, FH, FW, stride, pad, OH, OW)


def conv2d_relu_backward(dx, dW, db, dout, x, W, out, stride, pad):
    """conv2d_backward of (dout where out > 0, else 0); out is conv2d_relu_forward's output."""
    c = Checker("conv2d_relu_backward")
    stride, pad = _backward_args(c, dx, dW, db, dout, x, W, out, stride, pad, True)
    _room_conv(c, *x.shape, *W.shape[2:], pad, *dout.shape[2:], x.dtype)
    g = np.empty_like(dout)
    relu_backward(g, dout, out)
    conv2d_backward(dx, dW, db, g, x, W, stride, pad)


# --- pooling -----------------------------------------------------------------------------


def maxpool2d_forward(out, argmax, x, PH, PW, stride, pad):
    """out (N,C,OH,OW) = window maxima (NaN wins); argmax (int32) = flat h*W + w of the element chosen."""
    c = Checker("maxpool2d_forward")
    x = c.input(x, "x")
    out = c.output(out, "out", x, "x")
    argmax = c.int32(argmax, "argmax")
    c.writeable(argmax, "argmax")
    c.ndim(x, "x", 4)
    N, C, H, W = x.shape
    PH, PW, stride, pad, OH, OW = _geometry(c, H, W, PH, PW, stride, pad, "PH", "PW")
    _pool_pad(c, pad, PH, PW)
    c.argmax_fits_int32(H * W, "an (H, W) plane of 'x'")
    c.shape(out, "out", (N, C, OH, OW))
    c.shape(argmax, "argmax", (N, C, OH, OW))
    c.outputs_distinct({"out": out, "argmax": argmax}, {"x": x})
    if out.size == 0:
        return
    _room_pool(c, N, C, H, W, PH, PW, pad, OH, OW, x.dtype)

    K = PH * PW
    vals = _windows(_pad(x, pad, -np.inf), PH, PW, stride, OH, OW).reshape(N, C, K, OH, OW)
    # Source index of every window slot; -1 marks padding.
    plane = np.full((H + 2 * pad, W + 2 * pad), -1, dtype=np.int64)
    plane[pad : pad + H, pad : pad + W] = np.arange(H * W, dtype=np.int64).reshape(H, W)
    idx = _windows(plane, PH, PW, stride, OH, OW).reshape(K, OH, OW)

    # np.argmax returns the first NaN if there is one, else the first maximum.
    k = np.argmax(vals, axis=2)[:, :, None]
    out[...] = np.take_along_axis(vals, k, axis=2)[:, :, 0]
    chosen = np.take_along_axis(np.broadcast_to(idx, (N, C, K, OH, OW)), k, axis=2)[:, :, 0]
    # Padding is chosen only when the window's maximum is -inf; any real element of it is
    # -inf too, and the contract picks the first one.
    first_real = np.take_along_axis(idx, np.argmax(idx >= 0, axis=0)[None], axis=0)[0]
    argmax[...] = np.where(chosen < 0, first_real, chosen)


def maxpool2d_backward(dx, dout, argmax):
    """dx (N,C,H,W) overwritten: each dout entry is added at its argmax (windows may overlap)."""
    c = Checker("maxpool2d_backward")
    dout = c.input(dout, "dout")
    dx = c.output(dx, "dx", dout, "dout")
    argmax = c.int32(argmax, "argmax")
    c.ndim(dx, "dx", 4)
    N, C, H, W = dx.shape
    c.ndim(dout, "dout", 4)
    c.shape(dout, "dout", (N, C, -1, -1))
    c.same_shape(argmax, "argmax", dout, "dout")
    if argmax.size:
        lo, hi = int(argmax.min()), int(argmax.max())
        if lo < 0 or hi >= H * W:
            bad = lo if lo < 0 else hi
            c.value_error(f"argument 'argmax' holds index {bad}; expected indices in [0, {H * W})")
    c.outputs_distinct({"dx": dx}, {"dout": dout, "argmax": argmax})
    flat = np.zeros((N * C, H * W), dtype=dx.dtype)
    rows = np.arange(N * C)[:, None]
    per_plane = dout.shape[2] * dout.shape[3]  # explicit: reshape cannot infer -1 when N*C == 0
    np.add.at(flat, (rows, argmax.reshape(N * C, per_plane)), dout.reshape(N * C, per_plane))
    dx[...] = flat.reshape(N, C, H, W)


def _room_pool(c: Checker, N, C, H, W, PH, PW, pad, OH, OW, dtype) -> None:
    """The padded input and the windows that the pooling below builds (see Checker.room)."""
    c.room((H + 2 * pad, W + 2 * pad), np.int64, "the padded plane")
    c.room((N, C, H + 2 * pad, W + 2 * pad), dtype, "the padded input")
    c.room((N, C, PH * PW, OH, OW), dtype, "the pooling windows")


def _avg_counts(H: int, W: int, PH: int, PW: int, stride: int, pad: int, OH: int, OW: int, dtype) -> np.ndarray:
    """(OH, OW) number of in-bounds elements of each window."""
    ones = np.zeros((H + 2 * pad, W + 2 * pad), dtype=dtype)
    ones[pad : pad + H, pad : pad + W] = 1
    return _windows(ones, PH, PW, stride, OH, OW).sum(axis=(0, 1))


def avgpool2d_forward(out, x, PH, PW, stride, pad):
    """out (N,C,OH,OW) = mean over the in-bounds elements of each window."""
    c = Checker("avgpool2d_forward")
    x = c.input(x, "x")
    out = c.output(out, "out", x, "x")
    c.ndim(x, "x", 4)
    N, C, H, W = x.shape
    PH, PW, stride, pad, OH, OW = _geometry(c, H, W, PH, PW, stride, pad, "PH", "PW")
    _pool_pad(c, pad, PH, PW)
    c.shape(out, "out", (N, C, OH, OW))
    c.outputs_distinct({"out": out}, {"x": x})
    if out.size == 0:
        return
    _room_pool(c, N, C, H, W, PH, PW, pad, OH, OW, x.dtype)
    sums = _windows(_pad(x, pad), PH, PW, stride, OH, OW).sum(axis=(2, 3))
    out[...] = sums / _avg_counts(H, W, PH, PW, stride, pad, OH, OW, x.dtype)


def avgpool2d_backward(dx, dout, PH, PW, stride, pad):
    """dx (N,C,H,W) overwritten: each dout entry shared equally by its window's in-bounds elements."""
    c = Checker("avgpool2d_backward")
    dout = c.input(dout, "dout")
    dx = c.output(dx, "dx", dout, "dout")
    c.ndim(dx, "dx", 4)
    N, C, H, W = dx.shape
    PH, PW, stride, pad, OH, OW = _geometry(c, H, W, PH, PW, stride, pad, "PH", "PW", x_name="dx")
    _pool_pad(c, pad, PH, PW)
    c.shape(dout, "dout", (N, C, OH, OW))
    c.outputs_distinct({"dx": dx}, {"dout": dout})
    if dx.size == 0:
        return
    _room_pool(c, N, C, H, W, PH, PW, pad, OH, OW, dout.dtype)
    g = dout / _avg_counts(H, W, PH, PW, stride, pad, OH, OW, dout.dtype)
    spread = np.broadcast_to(g[:, :, None, None, :, :], (N, C, PH, PW, OH, OW))
    dx[...] = _unwindows(spread, H + 2 * pad, W + 2 * pad, stride)[:, :, pad : pad + H, pad : pad + W]


# --- convolution + ReLU + max pooling ------------------------------------------------------


def _conv_pool_geometry(c: Checker, x, W, stride, pad, PH, PW, pool_stride, pool_pad):
    N, C, H, Wd, FN, FH, FW, stride, pad, OH, OW = _checked_conv(c, x, W, stride, pad)
    PH, PW, pool_stride, pool_pad, POH, POW = _geometry(
        c, OH, OW, PH, PW, pool_stride, pool_pad, "PH", "PW", None, "pool_stride", "pool_pad"
    )
    _pool_pad(c, pool_pad, PH, PW, "pool_pad")
    return (N, FN, OH, OW), (stride, pad, PH, PW, pool_stride, pool_pad), (N, FN, POH, POW)


def conv2d_relu_maxpool2d_forward(out, argmax, x, W, b, stride, pad, PH, PW, pool_stride, pool_pad):
    """out, argmax (N,FN,POH,POW) = maxpool2d_forward(conv2d_relu_forward(x, W, b, stride, pad),
    PH, PW, pool_stride, pool_pad). The convolution's (N,FN,OH,OW) output is not returned;
    argmax indexes its (OH,OW) planes, as maxpool2d_forward's does."""
    c = Checker("conv2d_relu_maxpool2d_forward")
    x = c.input(x, "x")
    W = c.input(W, "W", x, "x")
    b = c.input(b, "b", x, "x")
    out = c.output(out, "out", x, "x")
    argmax = c.int32(argmax, "argmax")
    c.writeable(argmax, "argmax")
    conv_shape, geo, pooled = _conv_pool_geometry(c, x, W, stride, pad, PH, PW, pool_stride, pool_pad)
    c.argmax_fits_int32(conv_shape[2] * conv_shape[3], "the convolution's (OH, OW) output plane")
    c.shape(b, "b", (conv_shape[1],))
    c.shape(out, "out", pooled)
    c.shape(argmax, "argmax", pooled)
    c.outputs_distinct({"out": out, "argmax": argmax}, {"x": x, "W": W, "b": b})
    stride, pad, PH, PW, pool_stride, pool_pad = geo
    if out.size == 0:
        return
    c.room(conv_shape, x.dtype, "the convolution output")
    _room_conv(c, *x.shape, *W.shape[2:], pad, *conv_shape[2:], x.dtype)
    _room_pool(c, *conv_shape, PH, PW, pool_pad, *pooled[2:], x.dtype)
    y = np.empty(conv_shape, x.dtype)
    conv2d_relu_forward(y, x, W, b, stride, pad)
    maxpool2d_forward(out, argmax, y, PH, PW, pool_stride, pool_pad)


def conv2d_relu_maxpool2d_backward(dx, dW, db, dout, x, W, out, argmax, stride, pad):
    """The backward of conv2d_relu_maxpool2d_forward: dout (N,FN,POH,POW) goes back through the
    pooling to its argmax, through the ReLU where the pooled out > 0 (the chosen convolution
    output is out itself), then through the convolution as in conv2d_backward (dx skipped when
    None; dW, db accumulated)."""
    c = Checker("conv2d_relu_maxpool2d_backward")
    x = c.input(x, "x")
    W = c.input(W, "W", x, "x")
    dout = c.input(dout, "dout", x, "x")
    out = c.input(out, "out", x, "x")
    argmax = c.int32(argmax, "argmax")
    dx = c.optional_output(dx, "dx", x, "x")
    dW = c.output(dW, "dW", x, "x")
    db = c.output(db, "db", x, "x")
    N, C, H, Wd, FN, FH, FW, stride, pad, OH, OW = _checked_conv(c, x, W, stride, pad)
    c.ndim(dout, "dout", 4)
    c.shape(dout, "dout", (N, FN, -1, -1))
    c.same_shape(out, "out", dout, "dout")
    c.same_shape(argmax, "argmax", dout, "dout")
    if argmax.size:
        lo, hi = int(argmax.min()), int(argmax.max())
        if lo < 0 or hi >= OH * OW:
            c.value_error(f"argument 'argmax' holds index {lo if lo < 0 else hi}; expected indices in [0, {OH * OW})")
    if dx is not None:
        c.same_shape(dx, "dx", x, "x")
    c.same_shape(dW, "dW", W, "W")
    c.shape(db, "db", (FN,))
    c.outputs_distinct(
        {"dx": dx, "dW": dW, "db": db}, {"dout": dout, "x": x, "W": W, "out": out, "argmax": argmax}
    )
    if dout.size == 0:
        if dx is not None:
            dx[...] = 0
        return
    c.room((N, FN, OH, OW), x.dtype, "the convolution gradient")
    _room_conv(c, N, C, H, Wd, FH, FW, pad, OH, OW, x.dtype)
    dconv = np.empty((N, FN, OH, OW), x.dtype)
    maxpool2d_backward(dconv, np.where(out > 0, dout, 0).astype(x.dtype), argmax)
    conv2d_backward(dx, dW, db, dconv, x, W, stride, pad)
