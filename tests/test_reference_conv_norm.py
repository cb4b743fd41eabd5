"""The NumPy oracle for convolution, pooling, batch normalisation and dropout.

Backward passes are checked against central differences in float64; forward passes against
direct loops written here and against small cases computed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastlayers import reference as ref
from fastlayers.numerical import numerical_gradient
from fastlayers.reference.norm import uniform

from .tolerance import assert_close_reduction, numerical_gradient_rtol

F64 = np.float64


def _rng(seed=0):
    return np.random.default_rng(seed)


def _assert_grad(analytic, numeric, what):
    # Central-difference rounding is relative to the loss scale, not to each entry, so the
    # absolute floor scales with the largest gradient entry.
    rtol = numerical_gradient_rtol()
    atol = rtol * max(1.0, float(np.abs(numeric).max(initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=what)


def _out_size(H, F, stride, pad):
    return (H + 2 * pad - F) // stride + 1


def _direct_conv(x, W, b, stride, pad):
    N, C, H, Wd = x.shape
    FN, _, FH, FW = W.shape
    OH, OW = _out_size(H, FH, stride, pad), _out_size(Wd, FW, stride, pad)
    out = np.zeros((N, FN, OH, OW))
    for n in range(N):
        for f in range(FN):
            for oh in range(OH):
                for ow in range(OW):
                    s = b[f]
                    for c in range(C):
                        for i in range(FH):
                            for j in range(FW):
                                h, w = oh * stride + i - pad, ow * stride + j - pad
                                if 0 <= h < H and 0 <= w < Wd:
                                    s += x[n, c, h, w] * W[f, c, i, j]
                    out[n, f, oh, ow] = s
    return out


# (N, C, H, W, FN, FH, FW, stride, pad): awkward sizes, primes, output size 1, N = 1, C = 1.
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0),
    (2, 3, 5, 7, 2, 3, 3, 1, 1),
    (3, 2, 7, 5, 3, 2, 3, 2, 0),
    (1, 3, 7, 7, 2, 3, 2, 3, 2),
    (2, 1, 3, 2, 2, 3, 2, 1, 0),  # output 1 x 1
    (1, 2, 4, 6, 1, 1, 3, 2, 2),
    (2, 2, 1, 3, 2, 3, 3, 3, 1),  # H = 1, padded up to the filter
]


@pytest.mark.parametrize("N,C,H,W,FN,FH,FW,stride,pad", CONV_CASES)
def test_conv2d_forward_matches_direct_loops(N, C, H, W, FN, FH, FW, stride, pad):
    rng = _rng(1)
    x = rng.standard_normal((N, C, H, W))
    Wt = rng.standard_normal((FN, C, FH, FW))
    b = rng.standard_normal(FN)
    OH, OW = _out_size(H, FH, stride, pad), _out_size(W, FW, stride, pad)
    out = np.full((N, FN, OH, OW), np.nan)
    ref.conv2d_forward(out, x, Wt, b, stride, pad)
    np.testing.assert_allclose(out, _direct_conv(x, Wt, b, stride, pad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("N,C,H,W,FN,FH,FW,stride,pad", CONV_CASES)
def test_conv2d_backward_matches_numerical_gradient(N, C, H, W, FN, FH, FW, stride, pad):
    rng = _rng(2)
    x = rng.standard_normal((N, C, H, W))
    Wt = rng.standard_normal((FN, C, FH, FW))
    b = rng.standard_normal(FN)
    OH, OW = _out_size(H, FH, stride, pad), _out_size(W, FW, stride, pad)
    R = rng.standard_normal((N, FN, OH, OW))
    out = np.empty_like(R)

    def loss():
        ref.conv2d_forward(out, x, Wt, b, stride, pad)
        return float(np.sum(out * R))

    dx = np.full_like(x, np.nan)  # overwritten, so stale contents must not leak
    dW = np.ones_like(Wt)  # accumulated onto
    db = np.full_like(b, 2.0)
    ref.conv2d_backward(dx, dW, db, R, x, Wt, stride, pad)
    _assert_grad(dx, numerical_gradient(loss, x), "dx")
    _assert_grad(dW - 1.0, numerical_gradient(loss, Wt), "dW")
    _assert_grad(db - 2.0, numerical_gradient(loss, b), "db")

    # dx=None skips the input gradient and still accumulates the parameter gradients.
    dW2, db2 = np.zeros_like(Wt), np.zeros_like(b)
    ref.conv2d_backward(None, dW2, db2, R, x, Wt, stride, pad)
    np.testing.assert_allclose(dW2, dW - 1.0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db2, db - 2.0, rtol=1e-12, atol=1e-12)


def test_conv2d_float32_stays_float32():
    rng = _rng(3)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    Wt = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    out = np.empty((2, 4, 3, 3), np.float32)
    ref.conv2d_forward(out, x, Wt, b, 1, 0)
    x64, W64, b64 = x.astype(F64), Wt.astype(F64), b.astype(F64)
    expect = _direct_conv(x64, W64, b64, 1, 0)
    magnitude = _direct_conv(np.abs(x64), np.abs(W64), np.abs(b64), 1, 0)
    assert_close_reduction(out, expect, magnitude, 3 * 3 * 3 + 1, np.float32, "conv2d float32")


@pytest.mark.parametrize("N,C,H,W,FN,FH,FW,stride,pad", CONV_CASES)
def test_im2col_layout_and_col2im_adjoint(N, C, H, W, FN, FH, FW, stride, pad):
    rng = _rng(4)
    x = rng.standard_normal((N, C, H, W))
    OH, OW = _out_size(H, FH, stride, pad), _out_size(W, FW, stride, pad)
    col = np.full((N * OH * OW, C * FH * FW), np.nan)
    ref.im2col(col, x, FH, FW, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    for i in range(FH):
                        for j in range(FW):
                            got = col[(n * OH + oh) * OW + ow, (c * FH + i) * FW + j]
                            assert got == xp[n, c, oh * stride + i, ow * stride + j]

    cvec = rng.standard_normal(col.shape)
    back = np.full_like(x, np.nan)
    ref.col2im(back, cvec, FH, FW, stride, pad)
    lhs, rhs = float(np.sum(col * cvec)), float(np.sum(x * back))
    assert math.isclose(lhs, rhs, rel_tol=1e-12, abs_tol=1e-12), (lhs, rhs)


def test_col2im_sums_overlaps_by_hand():
    # 1x1x3x3 input, 2x2 window, stride 1: the centre pixel belongs to all four windows.
    col = np.ones((4, 4))
    dx = np.empty((1, 1, 3, 3))
    ref.col2im(dx, col, 2, 2, 1, 0)
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


# --- pooling -----------------------------------------------------------------------------

# (N, C, H, W, PH, PW, stride, pad)
POOL_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 0),
    (2, 3, 5, 7, 2, 2, 2, 1),
    (1, 2, 7, 5, 3, 3, 2, 1),
    (3, 1, 4, 4, 3, 2, 1, 1),
    (2, 2, 7, 7, 2, 3, 3, 1),
    (1, 1, 6, 5, 3, 3, 3, 0),
]


@pytest.mark.parametrize("N,C,H,W,PH,PW,stride,pad", POOL_CASES)
def test_maxpool_backward_matches_numerical_gradient(N, C, H, W, PH, PW, stride, pad):
    rng = _rng(5)
    # A permutation keeps entries at least 1/size apart, so no tie sits within h of a switch.
    x = rng.permutation(N * C * H * W).reshape(N, C, H, W) / (N * C * H * W) - 0.5
    OH, OW = _out_size(H, PH, stride, pad), _out_size(W, PW, stride, pad)
    R = rng.standard_normal((N, C, OH, OW))
    out = np.empty_like(R)
    argmax = np.empty(R.shape, np.int32)

    def loss():
        ref.maxpool2d_forward(out, argmax, x, PH, PW, stride, pad)
        return float(np.sum(out * R))

    loss()
    am = argmax.copy()
    dx = np.full_like(x, np.nan)
    # Every output is the element its argmax names.
    planes = x.reshape(N, C, H * W)
    np.testing.assert_array_equal(out, np.take_along_axis(planes, am.reshape(N, C, -1), 2).reshape(out.shape))
    ref.maxpool2d_backward(dx, R, am)
    _assert_grad(dx, numerical_gradient(loss, x), "dx")


@pytest.mark.parametrize("N,C,H,W,PH,PW,stride,pad", POOL_CASES)
def test_avgpool_backward_matches_numerical_gradient(N, C, H, W, PH, PW, stride, pad):
    rng = _rng(6)
    x = rng.standard_normal((N, C, H, W))
    OH, OW = _out_size(H, PH, stride, pad), _out_size(W, PW, stride, pad)
    R = rng.standard_normal((N, C, OH, OW))
    out = np.empty_like(R)

    def loss():
        ref.avgpool2d_forward(out, x, PH, PW, stride, pad)
        return float(np.sum(out * R))

    dx = np.full_like(x, np.nan)
    ref.avgpool2d_backward(dx, R, PH, PW, stride, pad)
    _assert_grad(dx, numerical_gradient(loss, x), "dx")


def test_maxpool_with_padding_by_hand():
    # All entries negative: a zero pad would win, a -inf pad never does.
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    out = np.empty((1, 1, 3, 3))
    argmax = np.empty((1, 1, 3, 3), np.int32)
    ref.maxpool2d_forward(out, argmax, x, 2, 2, 2, 1)
    # Windows cover rows {0}, {1,2}, {3} and the same columns; the max is the top-left real one.
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1, 3], [4, 5, 7], [12, 13, 15]])
    np.testing.assert_array_equal(out[0, 0], -1.0 - argmax[0, 0])


def test_maxpool_nan_propagates_and_all_minus_inf_window():
    x = np.array([[[[1.0, np.nan, 5.0, -np.inf],
                    [2.0, 0.0, 3.0, -np.inf]]]])
    out = np.empty((1, 1, 1, 2))
    argmax = np.empty((1, 1, 1, 2), np.int32)
    ref.maxpool2d_forward(out, argmax, x, 2, 2, 2, 0)
    assert np.isnan(out[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 1
    assert out[0, 0, 0, 1] == 5.0 and argmax[0, 0, 0, 1] == 2

    # A window of -inf only, padded: the first in-bounds element, not a padding slot.
    y = np.full((1, 1, 3, 3), -np.inf)
    out = np.empty((1, 1, 2, 2))
    argmax = np.empty((1, 1, 2, 2), np.int32)
    ref.maxpool2d_forward(out, argmax, y, 2, 2, 2, 1)
    np.testing.assert_array_equal(out, -np.inf)
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [3, 4]])


def test_maxpool_backward_routes_overlapping_windows():
    x = np.array([[[[0.0, 1.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 0.0]]]])
    out = np.empty((1, 1, 2, 2))
    argmax = np.empty((1, 1, 2, 2), np.int32)
    ref.maxpool2d_forward(out, argmax, x, 2, 2, 1, 0)
    np.testing.assert_array_equal(argmax, 4)
    dx = np.full_like(x, np.nan)
    ref.maxpool2d_backward(dx, np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), argmax)
    expect = np.zeros_like(x)
    expect[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(dx, expect)


def test_avgpool_counts_only_in_bounds_elements():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    out = np.empty((1, 1, 2, 2))
    ref.avgpool2d_forward(out, x, 2, 2, 2, 1)
    # Windows: {0}, {1,2}, {3,6}, {4,5,7,8}.
    np.testing.assert_array_equal(out[0, 0], [[0.0, 1.5], [4.5, 6.0]])
    dx = np.full_like(x, np.nan)
    ref.avgpool2d_backward(dx, np.ones((1, 1, 2, 2)), 2, 2, 2, 1)
    np.testing.assert_array_equal(dx[0, 0], [[1, 0.5, 0.5], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])


# --- batch normalisation -----------------------------------------------------------------


def _bn_arrays(shape, rng):
    F = shape[1]
    x = rng.standard_normal(shape) * 2.0 + 0.5
    gamma = rng.standard_normal(F) + 1.0
    beta = rng.standard_normal(F)
    return x, gamma, beta


@pytest.mark.parametrize("shape", [(2, 3), (5, 1), (4, 4), (2, 3, 2, 3), (3, 2, 1, 1), (1, 2, 3, 1)])
def test_batchnorm_backward_matches_numerical_gradient(shape):
    rng = _rng(7)
    x, gamma, beta = _bn_arrays(shape, rng)
    F = shape[1]
    R = rng.standard_normal(shape)
    out = np.empty_like(x)
    mean, invstd, rm, rv = (np.empty(F) for _ in range(4))

    def loss():
        rm[...], rv[...] = 0.0, 1.0
        ref.batchnorm_forward_train(out, mean, invstd, rm, rv, x, gamma, beta, 0.9, 1e-5)
        return float(np.sum(out * R))

    loss()
    m0, s0 = mean.copy(), invstd.copy()
    dx = np.full_like(x, np.nan)
    dgamma, dbeta = np.ones(F), np.full(F, 2.0)
    ref.batchnorm_backward(dx, dgamma, dbeta, R, x, gamma, m0, s0)
    _assert_grad(dx, numerical_gradient(loss, x), "dx")
    _assert_grad(dgamma - 1.0, numerical_gradient(loss, gamma), "dgamma")
    _assert_grad(dbeta - 2.0, numerical_gradient(loss, beta), "dbeta")

    dgamma2, dbeta2 = np.zeros(F), np.zeros(F)
    ref.batchnorm_backward(None, dgamma2, dbeta2, R, x, gamma, m0, s0)
    np.testing.assert_allclose(dgamma2, dgamma - 1.0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbeta2, dbeta - 2.0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,axes", [((6, 3), (0,)), ((2, 3, 4, 5), (0, 2, 3))])
def test_batchnorm_forward_train_statistics_and_running_update(shape, axes):
    rng = _rng(8)
    x, gamma, beta = _bn_arrays(shape, rng)
    F = shape[1]
    m = x.size // F
    out = np.empty_like(x)
    mean, invstd = np.empty(F), np.empty(F)
    rm0, rv0 = rng.standard_normal(F), rng.random(F) + 0.5
    rm, rv = rm0.copy(), rv0.copy()
    momentum, eps = 0.8, 1e-3
    ref.batchnorm_forward_train(out, mean, invstd, rm, rv, x, gamma, beta, momentum, eps)

    mu, var = x.mean(axis=axes), x.var(axis=axes)
    np.testing.assert_allclose(mean, mu, rtol=1e-13)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(var + eps), rtol=1e-13)
    np.testing.assert_allclose(rm, momentum * rm0 + (1 - momentum) * mu, rtol=1e-13)
    unbiased = x.var(axis=axes, ddof=1)
    np.testing.assert_allclose(unbiased, var * m / (m - 1), rtol=1e-13)
    np.testing.assert_allclose(rv, momentum * rv0 + (1 - momentum) * unbiased, rtol=1e-13)
    bshape = [1] * x.ndim
    bshape[1] = F
    xhat = (x - mu.reshape(bshape)) / np.sqrt(var.reshape(bshape) + eps)
    np.testing.assert_allclose(out, xhat * gamma.reshape(bshape) + beta.reshape(bshape), rtol=1e-12, atol=1e-12)


def test_batchnorm_single_element_keeps_biased_zero_variance():
    x = np.array([[3.0, -1.0]])
    out, mean, invstd = np.empty_like(x), np.empty(2), np.empty(2)
    rm, rv = np.array([1.0, 1.0]), np.array([2.0, 4.0])
    ref.batchnorm_forward_train(out, mean, invstd, rm, rv, x, np.ones(2), np.zeros(2), 0.5, 0.25)
    np.testing.assert_array_equal(mean, [3.0, -1.0])
    np.testing.assert_array_equal(invstd, [2.0, 2.0])
    np.testing.assert_array_equal(out, [[0.0, 0.0]])
    np.testing.assert_array_equal(rm, [2.0, 0.0])
    np.testing.assert_array_equal(rv, [1.0, 2.0])


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_batchnorm_forward_eval_uses_running_statistics(shape):
    rng = _rng(9)
    x, gamma, beta = _bn_arrays(shape, rng)
    F = shape[1]
    rm, rv = rng.standard_normal(F), rng.random(F) + 0.1
    rm_c, rv_c = rm.copy(), rv.copy()
    out = np.empty_like(x)
    ref.batchnorm_forward_eval(out, x, gamma, beta, rm, rv, 1e-5)
    b = (1, F) + (1,) * (x.ndim - 2)
    expect = (x - rm.reshape(b)) / np.sqrt(rv.reshape(b) + 1e-5) * gamma.reshape(b) + beta.reshape(b)
    np.testing.assert_allclose(out, expect, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(rm, rm_c)
    np.testing.assert_array_equal(rv, rv_c)


# --- dropout and the counter-based uniform -----------------------------------------------


def _splitmix_uniform(seed, i):
    mask = 2**64 - 1
    z = (seed * 2**32 + i) & mask
    z = (z + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return (z >> 40) / 2**24


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1])
def test_uniform_matches_plain_integer_splitmix(seed):
    u = uniform(seed, 1000)
    assert u.dtype == np.float64 and u.shape == (1000,)
    for i in (0, 1, 2, 7, 999):
        assert u[i] == _splitmix_uniform(seed, i)
    assert u.min() >= 0.0 and u.max() < 1.0


def test_uniform_rejects_bad_seeds():
    with pytest.raises(ValueError, match="seed"):
        uniform(2**32, 3)
    with pytest.raises(ValueError, match="seed"):
        uniform(-1, 3)
    with pytest.raises(TypeError, match="seed"):
        uniform(1.5, 3)
    with pytest.raises(TypeError, match="seed"):
        uniform(True, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_mask_is_uniform_threshold(dtype):
    rng = _rng(10)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    p, seed, scale = 0.4, 77, 1 / 0.6
    out = np.empty_like(x)
    mask = np.empty(x.shape, np.uint8)
    ref.dropout_forward(out, mask, x, p, seed, scale)
    keep = (uniform(seed, x.size) >= p).reshape(x.shape)
    np.testing.assert_array_equal(mask, keep.astype(np.uint8))
    assert 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(out, x * mask * dtype(scale))

    # u == p keeps the element (the threshold is >=); u values are exact multiples of 2**-24.
    u = uniform(seed, x.size)
    ref.dropout_forward(out, mask, x, float(u[5]), seed, scale)
    assert mask.flat[5] == 1
    np.testing.assert_array_equal(mask.reshape(-1), (u >= u[5]).astype(np.uint8))

    dout = rng.standard_normal(x.shape).astype(dtype)
    dx = np.full_like(x, np.nan)
    ref.dropout_backward(dx, dout, mask, scale)
    np.testing.assert_array_equal(dx, dout * mask * dtype(scale))


def test_dropout_keep_rate_reproducibility_and_seeds():
    n, p = 100_000, 0.3
    x = np.ones(n)
    out, mask = np.empty(n), np.empty(n, np.uint8)
    ref.dropout_forward(out, mask, x, p, 2024, 1.0)
    kept = int(mask.sum())
    # Binomial(n, 1-p): 6 standard deviations, a false alarm about once in 5e8 runs.
    assert abs(kept - n * (1 - p)) <= 6 * math.sqrt(n * p * (1 - p)), kept

    mask2 = np.empty(n, np.uint8)
    ref.dropout_forward(np.empty(n), mask2, x, p, 2024, 1.0)
    np.testing.assert_array_equal(mask, mask2)
    ref.dropout_forward(np.empty(n), mask2, x, p, 2025, 1.0)
    assert (mask != mask2).mean() > 0.3  # independent masks disagree on 2p(1-p) = 42%

    ref.dropout_forward(out, mask, x, 0.0, 5, 1.0)
    assert mask.all() and (out == 1.0).all()


def test_dropout_rejects_bad_p_and_seed():
    x = np.ones(4)
    out, mask = np.empty(4), np.empty(4, np.uint8)
    for p in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="'p'"):
            ref.dropout_forward(out, mask, x, p, 0, 1.0)
    with pytest.raises(ValueError, match="'seed'"):
        ref.dropout_forward(out, mask, x, 0.5, 2**32, 1.0)
    with pytest.raises(TypeError, match="'seed'"):
        ref.dropout_forward(out, mask, x, 0.5, 3.0, 1.0)
    with pytest.raises(TypeError, match="'mask'"):
        ref.dropout_forward(out, np.empty(4, np.bool_), x, 0.5, 0, 1.0)


def test_scale_forward():
    x = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
    out = np.empty_like(x)
    ref.scale_forward(out, x, 0.25)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.25, -0.5], [0.125, 0.0]])


# --- argument checking -------------------------------------------------------------------


def _ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _bad_calls():
    x = np.zeros((2, 3, 5, 5))
    W = np.zeros((4, 3, 3, 3))
    b = np.zeros(4)
    out = np.zeros((2, 4, 3, 3))
    pool_out = np.zeros((2, 3, 2, 2))
    am = np.zeros((2, 3, 2, 2), np.int32)
    f = np.zeros(3)
    x2 = np.zeros((4, 3))
    return [
        ("conv W dtype", lambda: ref.conv2d_forward(out, x, W.astype(np.float32), b, 1, 0), TypeError, "'W'"),
        ("conv out shape", lambda: ref.conv2d_forward(np.zeros((2, 4, 3, 4)), x, W, b, 1, 0), ValueError, "'out'"),
        ("conv C mismatch", lambda: ref.conv2d_forward(out, x, np.zeros((4, 2, 3, 3)), b, 1, 0), ValueError, "'W'"),
        ("conv b shape", lambda: ref.conv2d_forward(out, x, W, np.zeros(3), 1, 0), ValueError, "'b'"),
        ("conv stride 0", lambda: ref.conv2d_forward(out, x, W, b, 0, 0), ValueError, "'stride'"),
        ("conv stride float", lambda: ref.conv2d_forward(out, x, W, b, 1.0, 0), TypeError, "'stride'"),
        ("conv pad -1", lambda: ref.conv2d_forward(out, x, W, b, 1, -1), ValueError, "'pad'"),
        ("conv too small", lambda: ref.conv2d_forward(out, np.zeros((2, 3, 2, 5)), W, b, 1, 0),
         ValueError, "'x'"),
        ("conv x 3-D", lambda: ref.conv2d_forward(out, np.zeros((3, 5, 5)), W, b, 1, 0), ValueError, "'x'"),
        ("conv dW read-only", lambda: ref.conv2d_backward(None, _ro(W), b.copy(), out, x, W, 1, 0),
         ValueError, "'dW'"),
        ("conv dout shape", lambda: ref.conv2d_backward(None, W.copy(), b.copy(), np.zeros((2, 4, 3, 2)), x, W, 1, 0),
         ValueError, "'dout'"),
        ("im2col col shape", lambda: ref.im2col(np.zeros((18, 26)), x, 3, 3, 1, 0), ValueError, "'col'"),
        ("col2im col dtype", lambda: ref.col2im(x.copy(), np.zeros((18, 27), np.float32), 3, 3, 1, 0),
         TypeError, "'dx'"),
        ("maxpool pad too big", lambda: ref.maxpool2d_forward(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4), np.int32),
                                                              x, 2, 2, 2, 2), ValueError, "'pad'"),
        ("maxpool argmax dtype", lambda: ref.maxpool2d_forward(pool_out, am.astype(np.int64), x, 2, 2, 2, 0),
         TypeError, "'argmax'"),
        ("maxpool out read-only", lambda: ref.maxpool2d_forward(_ro(pool_out), am, x, 2, 2, 2, 0),
         ValueError, "'out'"),
        ("maxpool argmax range", lambda: ref.maxpool2d_backward(x.copy(), pool_out, am + 25), ValueError, "'argmax'"),
        ("avgpool pad too big", lambda: ref.avgpool2d_forward(np.zeros((2, 3, 3, 3)), x, 3, 3, 2, 2),
         ValueError, "'pad'"),
        ("avgpool PH 0", lambda: ref.avgpool2d_forward(pool_out, x, 0, 2, 2, 0), ValueError, "'PH'"),
        ("avgpool dout shape", lambda: ref.avgpool2d_backward(x.copy(), np.zeros((2, 3, 3, 2)), 2, 2, 2, 0),
         ValueError, "'dout'"),
        ("bn x 3-D", lambda: ref.batchnorm_forward_eval(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), f, f, f, f, 1e-5),
         ValueError, "'x'"),
        ("bn gamma shape", lambda: ref.batchnorm_forward_eval(x2.copy(), x2, np.zeros(4), f, f, f, 1e-5),
         ValueError, "'gamma'"),
        ("bn running_var read-only",
         lambda: ref.batchnorm_forward_train(x2.copy(), f.copy(), f.copy(), f.copy(), _ro(f), x2, f, f, 0.9, 1e-5),
         ValueError, "'running_var'"),
        ("bn momentum", lambda: ref.batchnorm_forward_train(x2.copy(), f.copy(), f.copy(), f.copy(), f.copy(),
                                                             x2, f, f, 1.5, 1e-5), ValueError, "'momentum'"),
        ("bn eps", lambda: ref.batchnorm_forward_eval(x2.copy(), x2, f, f, f, f, 0.0), ValueError, "'eps'"),
        ("bn backward dtype", lambda: ref.batchnorm_backward(None, f.copy(), f.copy(), x2.astype(np.float32),
                                                              x2, f, f, f), TypeError, "'dout'"),
        ("dropout mask shape", lambda: ref.dropout_backward(x2.copy(), x2, np.zeros((4, 2), np.uint8), 2.0),
         ValueError, "'mask'"),
        ("scale out dtype", lambda: ref.scale_forward(x2.astype(np.float32), x2, 2.0), TypeError, "'out'"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_arguments_raise_naming_the_argument(case):
    _, call, exc, name = case
    with pytest.raises(exc) as info:
        call()
    assert name in str(info.value)
