"""The NumPy oracle's affine layer and losses: gradients against central differences in
float64, hand-computed values, and the numerical stability of softmax cross-entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastlayers import reference as R
from fastlayers.numerical import numerical_gradient

from .tolerance import numerical_gradient_rtol

DTYPES = [np.float32, np.float64]


def assert_grad(analytic, numeric, what):
    """Central differences carry an absolute error relative to the gradient's scale."""
    rtol = numerical_gradient_rtol()
    atol = rtol * max(1.0, float(np.abs(numeric).max(initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=what)


# ---------------------------------------------------------------- affine


@pytest.mark.parametrize("N,D,M", [(1, 1, 1), (2, 3, 5), (7, 4, 3), (5, 13, 2)])
def test_affine_gradients(N, D, M):
    rng = np.random.default_rng(N * 100 + D * 10 + M)
    x, W, b = rng.standard_normal((N, D)), rng.standard_normal((D, M)), rng.standard_normal(M)
    r = rng.standard_normal((N, M))
    out = np.empty((N, M))

    def loss():
        R.affine_forward(out, x, W, b)
        return float(np.sum(out * r))

    num_x, num_W, num_b = (numerical_gradient(loss, a) for a in (x, W, b))
    dx = np.full((N, D), np.nan)
    dW, db = np.zeros((D, M)), np.zeros(M)
    R.affine_backward(dx, dW, db, r, x, W)
    assert_grad(dx, num_x, "affine dx")
    assert_grad(dW, num_W, "affine dW")
    assert_grad(db, num_b, "affine db")

    # dW, db accumulate; dx=None is skipped.
    R.affine_backward(None, dW, db, r, x, W)
    assert_grad(dW, 2 * num_W, "affine dW twice")
    assert_grad(db, 2 * num_b, "affine db twice")


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_forward_hand_value(dtype):
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype)
    W = np.array([[1.0, 0.0, 2.0], [3.0, -1.0, 0.0]], dtype)
    b = np.array([0.5, 1.0, -2.0], dtype)
    out = np.empty((2, 3), dtype)
    R.affine_forward(out, x, W, b)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.array([[7.5, -1.0, 0.0], [1.0, 0.5, -4.0]], dtype))


# ---------------------------------------------------------------- softmax cross-entropy


def targets(kind, rng, N, K):
    labels = rng.integers(0, K, N).astype(np.int64)
    if kind == "labels":
        return labels
    if kind == "onehot":
        return np.eye(K)[labels]
    return rng.dirichlet(np.ones(K), N)  # soft targets: each row a distribution


@pytest.mark.parametrize("kind", ["labels", "onehot", "soft"])
@pytest.mark.parametrize("N,K", [(1, 1), (1, 5), (4, 3), (7, 11)])
def test_softmax_cross_entropy_gradient(kind, N, K):
    rng = np.random.default_rng(N * 10 + K)
    logits = rng.standard_normal((N, K)) * 2
    t = targets(kind, rng, N, K)
    probs = np.empty((N, K))

    num = numerical_gradient(lambda: R.softmax_cross_entropy_forward(probs, logits, t), logits)
    R.softmax_cross_entropy_forward(probs, logits, t)
    for dloss in (1.0, 2.5):
        d = np.full((N, K), np.nan)
        R.softmax_cross_entropy_backward(d, probs, t, dloss)
        assert_grad(d, dloss * num, f"softmax CE dlogits ({kind}, dloss={dloss})")


def test_softmax_cross_entropy_label_and_onehot_agree():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6).astype(np.int64)
    p1, p2 = np.empty((6, 4)), np.empty((6, 4))
    l1 = R.softmax_cross_entropy_forward(p1, logits, labels)
    l2 = R.softmax_cross_entropy_forward(p2, logits, np.eye(4)[labels])
    assert l1 == pytest.approx(l2, rel=1e-15)
    np.testing.assert_array_equal(p1, p2)


def test_softmax_cross_entropy_hand_value():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = np.array([2, 1], np.int64)
    probs = np.empty((2, 3))
    loss = R.softmax_cross_entropy_forward(probs, logits, t)
    # Row 0: log(e + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2); row 1: log 3.
    want = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(3)) / 2
    assert isinstance(loss, float)
    assert loss == pytest.approx(want, rel=1e-14)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(probs[0], e / e.sum(), rtol=1e-15)
    np.testing.assert_allclose(probs[1], 1 / 3, rtol=1e-15)

    d = np.empty((2, 3))
    R.softmax_cross_entropy_backward(d, probs, t, 1.0)
    want_d = (probs - np.array([[0, 0, 1], [0, 1, 0]])) / 2
    np.testing.assert_allclose(d, want_d, rtol=1e-15, atol=1e-17)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_large_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype)
    t = np.array([0, 1, 2], np.int64)
    probs = np.empty_like(logits)
    loss = R.softmax_cross_entropy_forward(probs, logits, t)
    assert math.isfinite(loss)
    # Row 0 is certain and right (0), row 1 certain and wrong by 2e4, row 2 uniform (log 3).
    assert loss == pytest.approx((0.0 + 2e4 + math.log(3)) / 3, rel=1e-12)
    assert np.isfinite(probs).all() and probs.dtype == dtype
    np.testing.assert_array_equal(probs[0], np.array([1, 0, 0], dtype))
    d = np.empty_like(probs)
    R.softmax_cross_entropy_backward(d, probs, t, 1.0)
    assert np.isfinite(d).all()
    np.testing.assert_array_equal(d[0], 0)
    np.testing.assert_array_equal(d[1], np.array([1, -1, 0], dtype) / dtype(3))


# ---------------------------------------------------------------- mean squared error


@pytest.mark.parametrize("shape", [(1,), (1, 1), (4, 3), (3, 2, 5)])
def test_mse_gradient(shape):
    rng = np.random.default_rng(sum(shape))
    y, t = rng.standard_normal(shape), rng.standard_normal(shape)
    num = numerical_gradient(lambda: R.mse_forward(y, t), y)
    for dloss in (1.0, -0.5):
        dy = np.full(shape, np.nan)
        R.mse_backward(dy, y, t, dloss)
        assert_grad(dy, dloss * num, f"mse dy (dloss={dloss})")


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_hand_value(dtype):
    y = np.array([[1.0, 2.0], [3.0, 4.0]], dtype)
    t = np.array([[0.0, 2.0], [1.0, 4.0]], dtype)
    loss = R.mse_forward(y, t)
    # 0.5 * (1 + 0 + 4 + 0) / N with N = 2.
    assert isinstance(loss, float) and loss == 1.25
    dy = np.empty_like(y)
    R.mse_backward(dy, y, t, 2.0)
    np.testing.assert_array_equal(dy, np.array([[1.0, 0.0], [2.0, 0.0]], dtype))
