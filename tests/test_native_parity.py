"""Every native kernel against its NumPy oracle, float32 and float64, over awkward shapes.

Tolerances come from tests/tolerance.py: GEMM-based kernels are compared with the rounding
bound of a length-n dot product; element-wise kernels within a few ulps.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers
from fastlayers import reference
from fastlayers.backend import _native

from .tolerance import assert_close_elementwise, assert_close_reduction, numerical_gradient_rtol

DTYPES = [np.float32, np.float64]
# 1, primes and sizes that are not multiples of any SIMD width or GEMM tile.
AFFINE_SHAPES = [(1, 1, 1), (1, 7, 3), (2, 3, 5), (17, 31, 13), (100, 784, 100), (3, 1, 97), (64, 129, 10), (0, 4, 3)]


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def test_every_native_kernel_has_an_oracle():
    native = {n for n in dir(_native) if n.endswith(("_forward", "_backward", "_update")) or n in ("im2col", "col2im")}
    assert native <= set(reference.__all__)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,M", AFFINE_SHAPES)
def test_affine_forward(dtype, N, D, M):
    rng = np.random.default_rng(N * 1000 + D * 10 + M)
    x, W, b = rand(rng, (N, D), dtype), rand(rng, (D, M), dtype), rand(rng, (M,), dtype)
    got, want = np.full((N, M), np.nan, dtype), np.full((N, M), np.nan, dtype)
    _native.affine_forward(got, x, W, b)
    reference.affine_forward(want, x, W, b)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(W) + np.abs(b)
    assert_close_reduction(got, want, magnitude, D + 1, dtype, "affine_forward out")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,M", AFFINE_SHAPES)
def test_affine_backward(dtype, N, D, M):
    rng = np.random.default_rng(7 + N * 1000 + D * 10 + M)
    x, W, dout = rand(rng, (N, D), dtype), rand(rng, (D, M), dtype), rand(rng, (N, M), dtype)
    # Parameter gradients accumulate: start both from the same non-zero values.
    dW0, db0 = rand(rng, (D, M), dtype), rand(rng, (M,), dtype)
    results = {}
    for name, impl in (("native", _native), ("numpy", reference)):
        dx = np.full((N, D), np.nan, dtype)  # overwritten, so garbage in must not matter
        dW, db = dW0.copy(), db0.copy()
        impl.affine_backward(dx, dW, db, dout, x, W)
        results[name] = dx, dW, db
    (dx, dW, db), (rdx, rdW, rdb) = results["native"], results["numpy"]
    ax, aW, ad = np.abs(x).astype(np.float64), np.abs(W).astype(np.float64), np.abs(dout).astype(np.float64)
    assert_close_reduction(dx, rdx, ad @ aW.T, M, dtype, "dx")
    assert_close_reduction(dW, rdW, ax.T @ ad + np.abs(dW0), N + 1, dtype, "dW")
    assert_close_reduction(db, rdb, ad.sum(0) + np.abs(db0), N + 1, dtype, "db")


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_backward_skips_dx(dtype):
    rng = np.random.default_rng(3)
    x, W, dout = rand(rng, (5, 4), dtype), rand(rng, (4, 3), dtype), rand(rng, (5, 3), dtype)
    dW, db = np.zeros((4, 3), dtype), np.zeros(3, dtype)
    _native.affine_backward(None, dW, db, dout, x, W)
    rdW, rdb = np.zeros_like(dW), np.zeros_like(db)
    reference.affine_backward(None, rdW, rdb, dout, x, W)
    assert_close_reduction(dW, rdW, np.abs(x.T).astype(np.float64) @ np.abs(dout), 5, dtype, "dW")


ELEMENTWISE_SHAPES = [(1,), (7,), (3, 5), (2, 3, 4, 5), (100, 30, 24, 24), (1 << 16) + 3]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
def test_relu(dtype, shape):
    rng = np.random.default_rng(11)
    x = rand(rng, shape, dtype)
    x.flat[:: max(1, x.size // 5)] = 0  # the kink: both sides must agree that 0 passes no gradient
    dout = rand(rng, shape, dtype)
    for kernel, args in (("relu_forward", (x,)), ("relu_backward", (dout, x))):
        got, want = np.full(x.shape, np.nan, dtype), np.full(x.shape, np.nan, dtype)
        getattr(_native, kernel)(got, *args)
        getattr(reference, kernel)(want, *args)
        np.testing.assert_array_equal(got, want, err_msg=kernel)  # exact: selection, no arithmetic


def test_relu_propagates_nan():
    x = np.array([np.nan, -1.0, 2.0, -np.inf, np.inf], np.float32)
    out = np.empty_like(x)
    _native.relu_forward(out, x)
    np.testing.assert_array_equal(out, [np.nan, 0, 2, 0, np.inf])


def ce_targets(rng, kind, N, K, dtype):
    labels = rng.integers(0, K, size=N).astype(np.int64)
    if kind == "labels":
        return labels
    if kind == "onehot":
        t = np.zeros((N, K), dtype)
        t[np.arange(N), labels] = 1
        return t
    t = rng.random((N, K)).astype(dtype)
    return (t / t.sum(1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K", [(1, 1), (1, 10), (3, 2), (17, 13), (100, 10), (5, 1001)])
@pytest.mark.parametrize("kind", ["labels", "onehot", "soft"])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_softmax_cross_entropy(dtype, N, K, kind, scale):
    rng = np.random.default_rng(N * 31 + K)
    logits = rand(rng, (N, K), dtype, scale)
    t = ce_targets(rng, kind, N, K, dtype)
    p_got, p_want = np.empty_like(logits), np.empty_like(logits)
    loss_got = _native.softmax_cross_entropy_forward(p_got, logits, t)
    loss_want = reference.softmax_cross_entropy_forward(p_want, logits, t)
    assert np.isfinite(loss_got)
    # Probabilities: exp of (z - lse), lse a K-term reduction whose rounding is amplified by
    # the logits' magnitude; the loss is a mean of N such terms.
    u = np.finfo(dtype).eps
    zmag = float(np.abs(logits).max()) + 1.0
    assert np.allclose(p_got, p_want, rtol=0, atol=4 * (K + 2) * u * zmag), "probs"
    assert abs(loss_got - loss_want) <= 4 * (K + 2) * u * zmag * (1 + abs(loss_want)), "loss"
    d_got, d_want = np.empty_like(logits), np.empty_like(logits)
    _native.softmax_cross_entropy_backward(d_got, p_want, t, 0.5)
    reference.softmax_cross_entropy_backward(d_want, p_want, t, 0.5)
    assert_close_elementwise(d_got, d_want, dtype, what="dlogits")


def test_native_backend_matches_numpy_backend_end_to_end_small():
    """The same kernels through the backend switch give the same numbers."""
    rng = np.random.default_rng(0)
    x, W, b = rand(rng, (8, 6), np.float32), rand(rng, (6, 4), np.float32), rand(rng, (4,), np.float32)
    outs = {}
    for name in ("native", "numpy"):
        with fastlayers.backend.use(name):
            K = fastlayers.backend.kernels()
            out = np.empty((8, 4), np.float32)
            K.affine_forward(out, x, W, b)
            outs[name] = out
    assert_close_reduction(outs["native"], outs["numpy"], np.abs(x) @ np.abs(W) + np.abs(b), 7, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,M", AFFINE_SHAPES)
def test_affine_relu_matches_affine_then_relu(dtype, N, D, M):
    """The fused kernels against the oracle, and the oracle against its two unfused parts."""
    rng = np.random.default_rng(5 + N * 1000 + D * 10 + M)
    x, W, b = rand(rng, (N, D), dtype), rand(rng, (D, M), dtype), rand(rng, (M,), dtype)
    dout = rand(rng, (N, M), dtype)
    dW0, db0 = rand(rng, (D, M), dtype), rand(rng, (M,), dtype)
    outs, grads = {}, {}
    for name, impl in (("native", _native), ("numpy", reference)):
        out = np.full((N, M), np.nan, dtype)
        impl.affine_relu_forward(out, x, W, b)
        dx, dW, db = np.full((N, D), np.nan, dtype), dW0.copy(), db0.copy()
        impl.affine_relu_backward(dx, dW, db, dout, x, W, out)
        outs[name], grads[name] = out, (dx, dW, db)
    z = np.empty((N, M), dtype)
    reference.affine_forward(z, x, W, b)
    # The ReLU selects; only the GEMM rounds, so the fused oracle equals the unfused one exactly.
    np.testing.assert_array_equal(outs["numpy"], np.maximum(z, 0))
    magnitude = np.abs(x).astype(np.float64) @ np.abs(W) + np.abs(b)
    assert_close_reduction(outs["native"], outs["numpy"], magnitude, D + 1, dtype, "out")
    # Compare backward on the same mask: take the oracle's out for both.
    dx, dW, db = np.full((N, D), np.nan, dtype), dW0.copy(), db0.copy()
    _native.affine_relu_backward(dx, dW, db, dout, x, W, outs["numpy"])
    rdx, rdW, rdb = grads["numpy"]
    g = np.abs(np.where(outs["numpy"] > 0, dout, 0)).astype(np.float64)
    ax, aW = np.abs(x).astype(np.float64), np.abs(W).astype(np.float64)
    assert_close_reduction(dx, rdx, g @ aW.T, M, dtype, "dx")
    assert_close_reduction(dW, rdW, ax.T @ g + np.abs(dW0), N + 1, dtype, "dW")
    assert_close_reduction(db, rdb, g.sum(0) + np.abs(db0), N + 1, dtype, "db")


def test_affine_relu_oracle_backward_is_the_gradient():
    from fastlayers.numerical import numerical_gradient

    rng = np.random.default_rng(2)
    x, W, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    w = rng.standard_normal((4, 3))  # loss = sum(w * out): dout = w

    def loss():  # numerical_gradient perturbs x in place
        out = np.empty((4, 3))
        reference.affine_relu_forward(out, x, W, b)
        return float((w * out).sum())

    out = np.empty((4, 3))
    reference.affine_relu_forward(out, x, W, b)
    assert (np.abs(x @ W + b) > 1e-3).all(), "a kink within the difference step would make the check meaningless"
    dx, dW, db = np.empty_like(x), np.zeros_like(W), np.zeros_like(b)
    reference.affine_relu_backward(dx, dW, db, w, x, W, out)
    np.testing.assert_allclose(dx, numerical_gradient(loss, x), rtol=numerical_gradient_rtol(), atol=1e-8)
    np.testing.assert_allclose(dW, numerical_gradient(loss, W), rtol=numerical_gradient_rtol(), atol=1e-8)
    np.testing.assert_allclose(db, numerical_gradient(loss, b), rtol=numerical_gradient_rtol(), atol=1e-8)


@pytest.mark.parametrize("impl", [_native, reference], ids=["native", "numpy"])
def test_affine_kernels_refuse_aliased_outputs(impl):
    x = np.ones((3, 3), np.float32)
    W, b = np.ones((3, 3), np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        impl.affine_forward(x, x, W, b)
    with pytest.raises(ValueError, match="overlap"):
        impl.affine_relu_backward(np.empty((3, 3), np.float32), W, b, x, x, W, x)
    buf = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        impl.relu_forward(buf[2:8], buf[:6])


@pytest.mark.skipif(not fastlayers.build_info()["openmp"], reason="without OpenMP, OpenBLAS threads its GEMMs itself")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "N,D,M", [(100, 784, 100), (256, 300, 64), (1000, 4320, 100), (57600, 25, 30), (7, 3, 5), (100, 4320, 100),
              (100, 1024, 50), (13, 2003, 17)])
@pytest.mark.parametrize("small", [0, 1], ids=["packed-cuts", "small-cuts"])
def test_gemm_kernels_are_bitwise_independent_of_the_thread_count(dtype, N, D, M, small):
    """The BLAS seam cuts each GEMM into tiles (or, for OpenBLAS's small-matrix kernel, slices
    of K in groups) fixed by its shape, each one single-threaded OpenBLAS call, so 1 and 2
    threads give the same bits (OpenBLAS's own threading does not). Both cut policies."""
    rng = np.random.default_rng(0)
    x, W, b = rand(rng, (N, D), dtype), rand(rng, (D, M), dtype), rand(rng, (M,), dtype)
    dout = rand(rng, (N, M), dtype)
    results = []
    before = fastlayers.get_num_threads()
    _native._set_gemm_small_tiles(small)
    try:
        for threads in (1, 2):
            fastlayers.set_num_threads(threads)
            out, dx = np.empty((N, M), dtype), np.empty((N, D), dtype)
            dW, db = np.zeros((D, M), dtype), np.zeros(M, dtype)
            _native.affine_forward(out, x, W, b)
            _native.affine_backward(dx, dW, db, dout, x, W)
            results.append((out, dx, dW, db))
    finally:
        fastlayers.set_num_threads(before)
        _native._set_gemm_small_tiles(-1)
    for name, one, two in zip(("out", "dx", "dW", "db"), *results):
        assert np.array_equal(one, two), name
