"""The NumPy oracle's activation kernels: values, gradients against central differences,
overwrite-vs-accumulate semantics, large-input stability and argument checks.

Gradient checks run in float64 on the scalar loss L = sum(out * R) with a fixed random R,
so that every entry of the backward pass is exercised with a different upstream gradient.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fastlayers import reference as R
from fastlayers.numerical import numerical_gradient

from .tolerance import assert_close_elementwise, numerical_gradient_rtol

DTYPES = [np.float32, np.float64]
# 1, primes, 2-D and 4-D: no size is a multiple of a vector width.
SHAPES = [(1,), (7,), (3, 5), (2, 3, 1, 5)]
# Entries closer than this to a kink are resampled: the step h = 1e-6 then never crosses one.
KINK_MARGIN = 1e-3


def sample(rng, shape, kinks=(), scale=1.5, dtype=np.float64):
    x = rng.standard_normal(shape) * scale
    for _ in range(100):
        near = np.zeros(shape, bool)
        for k in kinks:
            near |= np.abs(x - k) < KINK_MARGIN
        if not near.any():
            break
        x[near] = rng.standard_normal(int(near.sum())) * scale
    assert not any((np.abs(x - k) < KINK_MARGIN).any() for k in kinks)
    return np.ascontiguousarray(x, dtype=dtype)


def assert_grad(analytic, numeric, what):
    """Central differences carry an absolute error relative to the gradient's scale, so the
    tolerance is rtol times the largest entry (an entry that should be 0 must be ~0)."""
    rtol = numerical_gradient_rtol()
    atol = rtol * max(1.0, float(np.abs(numeric).max(initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=what)


# name -> (forward(out, x), backward(dx, dout, x, out), kinks, reference forward in float64)
ELEMENTWISE = {
    "relu": (
        R.relu_forward,
        lambda dx, dout, x, out: R.relu_backward(dx, dout, x),
        (0.0,),
        lambda x: np.maximum(x, 0),
    ),
    "leaky_relu_0.1": (
        lambda out, x: R.leaky_relu_forward(out, x, 0.1),
        lambda dx, dout, x, out: R.leaky_relu_backward(dx, dout, x, 0.1),
        (0.0,),
        lambda x: np.where(x > 0, x, 0.1 * x),
    ),
    "leaky_relu_abs": (
        lambda out, x: R.leaky_relu_forward(out, x, -1),
        lambda dx, dout, x, out: R.leaky_relu_backward(dx, dout, x, -1),
        (0.0,),
        np.abs,
    ),
    "sigmoid": (
        R.sigmoid_forward,
        lambda dx, dout, x, out: R.sigmoid_backward(dx, dout, out),
        (),
        lambda x: 1 / (1 + np.exp(-x)),
    ),
    "tanh": (
        R.tanh_forward,
        lambda dx, dout, x, out: R.tanh_backward(dx, dout, out),
        (),
        np.tanh,
    ),
    "hardtanh": (
        lambda out, x: R.hardtanh_forward(out, x, -0.5, 1.25),
        lambda dx, dout, x, out: R.hardtanh_backward(dx, dout, x, -0.5, 1.25),
        (-0.5, 1.25),
        lambda x: np.clip(x, -0.5, 1.25),
    ),
    "softplus": (
        R.softplus_forward,
        lambda dx, dout, x, out: R.softplus_backward(dx, dout, x),
        (),
        lambda x: np.logaddexp(0.0, x),
    ),
    "identity": (
        R.identity_forward,
        lambda dx, dout, x, out: R.identity_backward(dx, dout),
        (),
        lambda x: x,
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_gradient(name, shape):
    forward, backward, kinks, _ = ELEMENTWISE[name]
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    x = sample(rng, shape, kinks)
    r = rng.standard_normal(shape)
    out = np.empty_like(x)

    def loss():
        forward(out, x)
        return float(np.sum(out * r))

    num = numerical_gradient(loss, x)
    forward(out, x)
    dx = np.full(shape, np.nan)  # overwritten: garbage in must not leak out
    backward(dx, r, x, out)
    assert_grad(dx, num, f"{name} dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_forward_values(name, dtype):
    forward, _, kinks, ref = ELEMENTWISE[name]
    rng = np.random.default_rng(3)
    x = sample(rng, (4, 9), kinks, dtype=dtype)
    x_before = x.copy()
    out = np.full(x.shape, np.nan, dtype)
    forward(out, x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(x, x_before)
    assert_close_elementwise(out, ref(x.astype(np.float64)).astype(dtype), dtype, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_alpha_minus_one_is_abs(dtype):
    x = np.array([-3.5, -1e-30, -0.0, 0.0, 2.0, 1e30, np.inf, -np.inf], dtype)
    out = np.empty_like(x)
    R.leaky_relu_forward(out, x, -1)
    np.testing.assert_array_equal(out, np.abs(x))
    dx = np.empty_like(x)
    R.leaky_relu_backward(dx, np.ones_like(x), x, -1)
    np.testing.assert_array_equal(dx, np.where(x > 0, 1.0, -1.0).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_softplus_extreme_inputs(dtype):
    # Warnings are errors under pytest, so an overflow in exp would fail here.
    x = np.array([-1e4, -1e3, -30.0, 0.0, 30.0, 1e3, 1e4], dtype)
    y = np.empty_like(x)
    R.sigmoid_forward(y, x)
    assert np.isfinite(y).all()
    assert y[0] == 0 and y[-1] == 1 and y[3] == 0.5
    assert y[5] == 1 and y[1] == 0
    # The negative branch keeps full relative accuracy where 1 - sigmoid(-x) would round to 0.
    assert_close_elementwise(y[2], dtype(np.exp(-30.0) / (1 + np.exp(-30.0))), dtype, what="sigmoid(-30)")

    dy = np.empty_like(x)
    R.sigmoid_backward(dy, np.ones_like(x), y)
    assert np.isfinite(dy).all() and dy[0] == 0 and dy[-1] == 0 and dy[3] == 0.25

    sp = np.empty_like(x)
    R.softplus_forward(sp, x)
    assert np.isfinite(sp).all()
    assert sp[0] == 0 and sp[-1] == dtype(1e4) and sp[5] == dtype(1e3)
    assert_close_elementwise(sp[3], dtype(np.log(2.0)), dtype, what="softplus(0)")
    assert_close_elementwise(sp[2], dtype(np.log1p(np.exp(-30.0))), dtype, what="softplus(-30)")

    dsp = np.empty_like(x)
    R.softplus_backward(dsp, np.ones_like(x), x)
    assert np.isfinite(dsp).all()
    assert dsp[0] == 0 and dsp[-1] == 1 and dsp[3] == 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_extreme_inputs(dtype):
    x = np.array([-1e4, 0.0, 1e4], dtype)
    y = np.empty_like(x)
    R.tanh_forward(y, x)
    np.testing.assert_array_equal(y, np.array([-1, 0, 1], dtype))
    dx = np.empty_like(x)
    R.tanh_backward(dx, np.full_like(x, 3), y)
    np.testing.assert_array_equal(dx, np.array([0, 3, 0], dtype))


def test_hardtanh_gradient_zero_on_and_outside_bounds():
    x = np.array([-2.0, -1.0, -0.999, 0.0, 0.999, 1.0, 2.0])
    dx = np.empty_like(x)
    R.hardtanh_backward(dx, np.full_like(x, 5.0), x, -1.0, 1.0)
    np.testing.assert_array_equal(dx, [0, 0, 5, 5, 5, 0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_through_forward(dtype):
    x = np.array([np.nan, 1.0, -1.0], dtype)
    for name, (forward, _, _, _) in ELEMENTWISE.items():
        out = np.zeros_like(x)
        forward(out, x)
        assert np.isnan(out[0]), name


# ---------------------------------------------------------------- PReLU


PRELU_CASES = [
    ((1,), 1),
    ((7,), 1),
    ((3, 5), 1),
    ((3, 5), 5),
    ((2, 3, 1, 5), 1),
    ((2, 3, 1, 5), 3),
    ((1, 2, 3), 2),
]


@pytest.mark.parametrize("shape,channels", PRELU_CASES)
def test_prelu_gradients(shape, channels):
    rng = np.random.default_rng(11 + sum(shape) * 7 + channels)
    x = sample(rng, shape, (0.0,))
    alpha = rng.uniform(0.05, 0.5, channels)
    r = rng.standard_normal(shape)
    out = np.empty_like(x)

    def loss():
        R.prelu_forward(out, x, alpha)
        return float(np.sum(out * r))

    num_x = numerical_gradient(loss, x)
    num_alpha = numerical_gradient(loss, alpha)
    dx = np.full(shape, np.nan)
    dalpha = np.zeros(channels)
    R.prelu_backward(dx, dalpha, r, x, alpha)
    assert_grad(dx, num_x, "prelu dx")
    assert_grad(dalpha, num_alpha, "prelu dalpha")
    assert np.abs(dalpha).max() > 0 or not (x < 0).any()

    # dalpha accumulates; dx is overwritten.
    dx_first = dx.copy()
    R.prelu_backward(dx, dalpha, r, x, alpha)
    np.testing.assert_array_equal(dx, dx_first)
    np.testing.assert_allclose(dalpha, 2 * num_alpha, rtol=numerical_gradient_rtol(),
                               atol=numerical_gradient_rtol() * max(1.0, np.abs(num_alpha).max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_prelu_forward_values(dtype):
    x = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 0.0]], dtype)
    out = np.empty_like(x)
    R.prelu_forward(out, x, np.array([0.5, 0.25, 2.0], dtype))
    np.testing.assert_array_equal(out, np.array([[-0.5, 2.0, -6.0], [4.0, -1.25, 0.0]], dtype))
    R.prelu_forward(out, x, np.array([0.5], dtype))
    np.testing.assert_array_equal(out, np.array([[-0.5, 2.0, -1.5], [4.0, -2.5, 0.0]], dtype))
    assert out.dtype == dtype


# ---------------------------------------------------------------- softmax


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 5), (13, 2)])
def test_softmax_gradient(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 2
    r = rng.standard_normal(shape)
    out = np.empty_like(x)

    def loss():
        R.softmax_forward(out, x)
        return float(np.sum(out * r))

    num = numerical_gradient(loss, x)
    R.softmax_forward(out, x)
    dx = np.full(shape, np.nan)
    R.softmax_backward(dx, r, out)
    assert_grad(dx, num, "softmax dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_rows_sum_to_one_and_shift_invariance(dtype):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 11)) * 3).astype(dtype)
    y = np.empty_like(x)
    R.softmax_forward(y, x)
    assert y.dtype == dtype and (y > 0).all()
    eps = float(np.finfo(dtype).eps)
    # A sum of 11 terms in [0, 1] that is exactly 1 in real arithmetic.
    np.testing.assert_allclose(y.sum(axis=1, dtype=np.float64), 1.0, rtol=0, atol=2 * 11 * eps)
    want = np.exp(x.astype(np.float64))
    want /= want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=16 * eps, atol=0)

    # Adding c rounds each logit by up to ulp(c)/2, which moves each probability by
    # at most a factor exp(eps*|c|), i.e. a relative change of about 2*eps*|c|.
    c = 100.0
    xs = (x + dtype(c)).astype(dtype)
    ys = np.empty_like(xs)
    R.softmax_forward(ys, xs)
    np.testing.assert_allclose(ys, y, rtol=4 * eps * c + 16 * eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_large_logits(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype)
    y = np.empty_like(x)
    R.softmax_forward(y, x)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0], np.array([1, 0, 0], dtype))
    np.testing.assert_allclose(y[1], 1 / 3, rtol=4 * np.finfo(dtype).eps)


def test_softmax_backward_is_orthogonal_to_ones():
    # Softmax outputs sum to one, so any upstream gradient that is constant along a row
    # has no effect: dx must vanish.
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 6))
    y = np.empty_like(x)
    R.softmax_forward(y, x)
    dx = np.empty_like(x)
    R.softmax_backward(dx, np.full_like(x, 3.0), y)
    np.testing.assert_allclose(dx, 0, atol=1e-15)


# ---------------------------------------------------------------- maxout


def maxout_data(rng, N, D, K, M):
    """Data whose winning piece leads by a clear margin, so that no finite-difference step
    can change the argmax."""
    for _ in range(100):
        x = rng.standard_normal((N, D))
        W = rng.standard_normal((K, D, M))
        b = rng.standard_normal((K, M))
        z = np.sort(np.einsum("nd,kdm->knm", x, W) + b[:, None, :], axis=0)
        if K == 1 or (z[-1] - z[-2]).min() > 1e-3:
            return x, W, b
    raise AssertionError("could not draw maxout data without near-ties")


MAXOUT_SHAPES = [(1, 1, 1, 1), (1, 3, 2, 1), (5, 3, 3, 2), (7, 2, 4, 5), (3, 4, 1, 3)]


@pytest.mark.parametrize("N,D,K,M", MAXOUT_SHAPES)
def test_maxout_gradients(N, D, K, M):
    rng = np.random.default_rng(N * 1000 + D * 100 + K * 10 + M)
    x, W, b = maxout_data(rng, N, D, K, M)
    r = rng.standard_normal((N, M))
    out = np.empty((N, M))
    argmax = np.empty((N, M), np.int32)

    def loss():
        R.maxout_forward(out, argmax, x, W, b)
        return float(np.sum(out * r))

    num_x, num_W, num_b = (numerical_gradient(loss, a) for a in (x, W, b))
    R.maxout_forward(out, argmax, x, W, b)
    dx = np.full((N, D), np.nan)
    dW, db = np.zeros_like(W), np.zeros_like(b)
    R.maxout_backward(dx, dW, db, r, x, W, argmax)
    assert_grad(dx, num_x, "maxout dx")
    assert_grad(dW, num_W, "maxout dW")
    assert_grad(db, num_b, "maxout db")

    # Parameter gradients accumulate; dx=None skips dx and leaves them unchanged.
    R.maxout_backward(None, dW, db, r, x, W, argmax)
    np.testing.assert_allclose(dW, 2 * num_W, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(num_W).max()))
    np.testing.assert_allclose(db, 2 * num_b, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(num_b).max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxout_forward_values_and_ties(dtype):
    x = np.array([[1.0, 2.0], [0.0, 0.0]], dtype)
    W = np.array([[[1.0], [0.0]], [[0.0], [1.0]], [[0.0], [1.0]]], dtype)  # K=3, D=2, M=1
    b = np.zeros((3, 1), dtype)
    out = np.empty((2, 1), dtype)
    argmax = np.full((2, 1), -7, np.int32)
    R.maxout_forward(out, argmax, x, W, b)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.array([[2.0], [0.0]], dtype))
    # Pieces 1 and 2 tie in row 0 and all three tie in row 1: the first maximum wins.
    np.testing.assert_array_equal(argmax, [[1], [0]])

    dx = np.empty((2, 2), dtype)
    dW, db = np.zeros_like(W), np.zeros_like(b)
    R.maxout_backward(dx, dW, db, np.ones((2, 1), dtype), x, W, argmax)
    np.testing.assert_array_equal(db, np.array([[1.0], [1.0], [0.0]], dtype))
    np.testing.assert_array_equal(dW[1], x[0][:, None])
    np.testing.assert_array_equal(dW[2], 0)


# ---------------------------------------------------------------- RBF


RBF_SHAPES = [(1, 1, 1), (3, 2, 5), (7, 3, 2), (2, 5, 3)]


@pytest.mark.parametrize("N,D,M", RBF_SHAPES)
def test_rbf_gradients(N, D, M):
    rng = np.random.default_rng(N * 100 + D * 10 + M)
    x = rng.standard_normal((N, D)) * 0.7
    centers = rng.standard_normal((M, D)) * 0.7
    widths = rng.uniform(0.6, 1.8, M)
    widths[::2] *= -1  # only w² enters the forward pass; the sign must carry into dwidths
    r = rng.standard_normal((N, M))
    out = np.empty((N, M))

    def loss():
        R.rbf_forward(out, x, centers, widths)
        return float(np.sum(out * r))

    num_x, num_c, num_w = (numerical_gradient(loss, a) for a in (x, centers, widths))
    R.rbf_forward(out, x, centers, widths)
    dx = np.full((N, D), np.nan)
    dc, dw = np.zeros_like(centers), np.zeros_like(widths)
    R.rbf_backward(dx, dc, dw, r, x, centers, widths, out)
    assert_grad(dx, num_x, "rbf dx")
    assert_grad(dc, num_c, "rbf dcenters")
    assert_grad(dw, num_w, "rbf dwidths")

    R.rbf_backward(None, dc, dw, r, x, centers, widths, out)
    tol = numerical_gradient_rtol()
    np.testing.assert_allclose(dc, 2 * num_c, rtol=tol, atol=tol * max(1.0, np.abs(num_c).max()))
    np.testing.assert_allclose(dw, 2 * num_w, rtol=tol, atol=tol * max(1.0, np.abs(num_w).max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rbf_forward_values(dtype):
    x = np.array([[0.0, 0.0], [3.0, 4.0]], dtype)
    centers = np.array([[0.0, 0.0], [3.0, 0.0]], dtype)
    widths = np.array([5.0, 2.0], dtype)
    out = np.empty((2, 2), dtype)
    R.rbf_forward(out, x, centers, widths)
    assert out.dtype == dtype
    want = np.exp(-np.array([[0.0, 9.0 / 8.0], [25.0 / 50.0, 16.0 / 8.0]]))
    assert_close_elementwise(out, want.astype(dtype), dtype, what="rbf")


# ---------------------------------------------------------------- argument checks


def f64(*shape):
    return np.zeros(shape)


def read_only(a):
    a.flags.writeable = False
    return a


CHECKS = [
    # (kernel call, exception type, name that the message must contain)
    (lambda: R.sigmoid_forward(np.zeros(3, np.float32), f64(3)), TypeError, "'out'"),
    (lambda: R.relu_forward(f64(3), np.zeros(3, np.int64)), TypeError, "'x'"),
    (lambda: R.tanh_backward(f64(3), np.zeros(3, np.float32), f64(3)), TypeError, "'dout'"),
    (lambda: R.softplus_forward(f64(4), f64(3)), ValueError, "'out'"),
    (lambda: R.relu_backward(read_only(f64(3)), f64(3), f64(3)), ValueError, "'dx'"),
    (lambda: R.sigmoid_forward(read_only(f64(3)), f64(3)), ValueError, "'out'"),
    (lambda: R.identity_backward(f64(2), f64(3)), ValueError, "'dx'"),
    (lambda: R.tanh_forward(f64(3, 4), f64(4, 3).T), ValueError, "'x'"),
    (lambda: R.leaky_relu_forward(f64(3), f64(3), "0.1"), TypeError, "'alpha'"),
    (lambda: R.leaky_relu_backward(f64(3), f64(3), f64(3), None), TypeError, "'alpha'"),
    (lambda: R.leaky_relu_forward(f64(3), f64(3), float("nan")), ValueError, "'alpha'"),
    (lambda: R.prelu_forward(f64(2, 3), f64(2, 3), f64(2)), ValueError, "'alpha'"),
    (lambda: R.prelu_forward(f64(3), f64(3), f64(3)), ValueError, "'alpha'"),
    (lambda: R.prelu_forward(f64(2, 3), f64(2, 3), f64(1, 3)), ValueError, "'alpha'"),
    (lambda: R.prelu_forward(f64(2, 3), f64(2, 3), np.zeros(3, np.float32)), TypeError, "'alpha'"),
    (lambda: R.prelu_backward(f64(2, 3), f64(1), f64(2, 3), f64(2, 3), f64(3)), ValueError, "'dalpha'"),
    (lambda: R.prelu_backward(f64(2, 3), read_only(f64(3)), f64(2, 3), f64(2, 3), f64(3)), ValueError, "'dalpha'"),
    (lambda: R.hardtanh_forward(f64(3), f64(3), 1.0, 1.0), ValueError, "'min_val'"),
    (lambda: R.hardtanh_backward(f64(3), f64(3), f64(3), 2, -2), ValueError, "'min_val'"),
    (lambda: R.hardtanh_forward(f64(3), f64(3), -1, "1"), TypeError, "'max_val'"),
    (lambda: R.softmax_forward(f64(3), f64(3)), ValueError, "'x'"),
    (lambda: R.softmax_forward(f64(2, 0), f64(2, 0)), ValueError, "'x'"),
    (lambda: R.softmax_backward(f64(2, 3), f64(2, 3), np.zeros((2, 3), np.float32)), TypeError, "'dout'"),
    (lambda: R.maxout_forward(f64(2, 3), np.zeros((2, 3), np.int32), f64(2, 4), f64(2, 5, 3), f64(2, 3)),
     ValueError, "'W'"),
    (lambda: R.maxout_forward(f64(2, 3), np.zeros((2, 3), np.int32), f64(2, 4), f64(2, 4, 3), f64(3, 3)),
     ValueError, "'b'"),
    (lambda: R.maxout_forward(f64(2, 3), f64(2, 3), f64(2, 4), f64(2, 4, 3), f64(2, 3)), TypeError, "'argmax'"),
    (lambda: R.maxout_forward(f64(2, 3), read_only(np.zeros((2, 3), np.int32)), f64(2, 4), f64(2, 4, 3), f64(2, 3)),
     ValueError, "'argmax'"),
    (lambda: R.maxout_backward(f64(2, 4), f64(2, 4, 3), f64(2, 3), f64(2, 3), f64(2, 4), f64(2, 4, 3),
                               np.full((2, 3), 2, np.int32)), ValueError, "'argmax'"),
    (lambda: R.maxout_backward(None, read_only(f64(2, 4, 3)), f64(2, 3), f64(2, 3), f64(2, 4), f64(2, 4, 3),
                               np.zeros((2, 3), np.int32)), ValueError, "'dW'"),
    (lambda: R.maxout_backward(None, f64(2, 4, 3), f64(2, 3), f64(3, 3), f64(2, 4), f64(2, 4, 3),
                               np.zeros((2, 3), np.int32)), ValueError, "'dout'"),
    (lambda: R.rbf_forward(f64(2, 3), f64(2, 4), f64(3, 4), np.array([1.0, 0.0, 2.0])), ValueError, "'widths'"),
    (lambda: R.rbf_forward(f64(2, 3), f64(2, 4), f64(3, 4), np.array([1.0, 1e-170, 2.0])), ValueError, "'widths'"),
    (lambda: R.rbf_forward(f64(2, 3), f64(2, 4), f64(3, 5), np.ones(3)), ValueError, "'centers'"),
    (lambda: R.rbf_forward(f64(2, 3), f64(2, 4), f64(3, 4), np.ones(2)), ValueError, "'widths'"),
    (lambda: R.rbf_backward(f64(2, 4), f64(3, 4), np.zeros(3, np.float32), f64(2, 3), f64(2, 4), f64(3, 4),
                            np.ones(3), f64(2, 3)), TypeError, "'dwidths'"),
    (lambda: R.rbf_backward(f64(2, 4), f64(3, 4), f64(3), f64(2, 3), f64(2, 4), f64(3, 4), np.ones(3), f64(3, 2)),
     ValueError, "'out'"),
]


@pytest.mark.parametrize("case", range(len(CHECKS)))
def test_argument_checks(case):
    call, exc, name = CHECKS[case]
    with pytest.raises(exc) as info:
        call()
    assert name in str(info.value)


def test_every_activation_kernel_is_exported():
    pairs = ["relu", "leaky_relu", "prelu", "sigmoid", "tanh", "hardtanh", "softplus", "identity",
             "softmax", "maxout", "rbf"]
    for p in pairs:
        for suffix in ("_forward", "_backward"):
            assert p + suffix in R.activations.__all__
            assert callable(getattr(R, p + suffix))
