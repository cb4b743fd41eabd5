"""How the BLAS seam cuts a GEMM (csrc/blas.cpp), and the kernels' results under each cut.

On OpenBLAS's AVX-512 cores fl::blas::gemm cuts a float32 GEMM of more than 10**6
multiply-adds whose op(B) is not transposed into pieces OpenBLAS computes with its unpacked
small-matrix kernel: row (or column) tiles of C, or, when C is small and K long, slices of K
in four groups whose partial products are added in group order. The tests force those cuts
on and off (``_set_gemm_small_tiles``) so that both run on any machine, and hold the
kernels that reach the GEMM through each cut to their oracles.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers
from fastlayers import reference
from fastlayers.backend import _native

from .tolerance import assert_close_reduction

SMALL = 1e6  # OpenBLAS's limit on M*N*K for its small-matrix sgemm


@pytest.fixture(params=[0, 1], ids=["packed-cuts", "small-cuts"])
def cuts(request):
    _native._set_gemm_small_tiles(request.param)
    try:
        yield request.param
    finally:
        _native._set_gemm_small_tiles(-1)


def rand(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def test_the_default_follows_the_blas_core():
    info = fastlayers.build_info()
    avx512 = info["blas_core"] in ("SkylakeX", "Cooperlake", "SapphireRapids")
    assert info["gemm_small_tiles"] is avx512


@pytest.mark.parametrize(
    "M,N,K,ta,tb,want",
    [
        # simple_cnn's fc1 forward: C (100,100) small, K = 4320 long: 44 slices of <= 100.
        (100, 100, 4320, False, False, ("k", 44, 4)),
        # its weight gradient x^T @ dout: 44 row tiles of 98-99 rows.
        (4320, 100, 100, True, False, ("r", 44, 1)),
        # its input gradient dout @ W^T: op(B) transposed, which the small kernel leaves to
        # the packed one (16 column tiles, as before).
        (100, 4320, 100, False, True, ("c", 16, 1)),
        # the MLP's fc1 forward and weight gradient, deep_cnn's fc1.
        (100, 100, 784, False, False, ("k", 8, 4)),
        (784, 100, 100, True, False, ("r", 8, 1)),
        (100, 50, 1024, False, False, ("k", 8, 4)),
        # 10**6 multiply-adds exactly is already small: cut as before.
        (100, 100, 100, False, False, ("r", 2, 1)),
        # Row tiles would be narrower than 32: K is cut instead.
        (50, 9, 3001, False, False, ("k", 4, 4)),
    ],
)
def test_plans(M, N, K, ta, tb, want):
    _native._set_gemm_small_tiles(1)
    try:
        assert _native._gemm_plan(M, N, K, ta, tb, True) == want
        # float64 has no small kernel to cut for: packed tiles.
        assert _native._gemm_plan(M, N, K, ta, tb, False)[0] != "k"
    finally:
        _native._set_gemm_small_tiles(-1)


def test_every_small_cut_fits_the_small_kernel():
    _native._set_gemm_small_tiles(1)
    try:
        rng = np.random.default_rng(0)
        shapes = [tuple(int(v) for v in rng.integers(1, 5000, 3)) for _ in range(400)]
        shapes += [(1, 1, 10**7), (3, 2, 999_983), (2000, 1, 1000), (10**5, 7, 5)]
        seen = set()
        for M, N, K in shapes:
            for ta in (False, True):
                packed = _packed_plan(M, N, K, ta)
                cut, tiles, groups = _native._gemm_plan(M, N, K, ta, False, True)
                if M * N * K <= SMALL:
                    assert (cut, tiles, groups) == packed
                    continue
                seen.add(cut)
                if cut == "k":
                    assert groups == 4 and tiles % groups == 0
                    depth = -(-K // tiles)  # the deepest slice
                    assert M * N * depth <= SMALL and K // tiles >= 1
                elif (cut, tiles, groups) != packed:
                    assert groups == 1 and tiles % 4 == 0
                    extent, other = (M, N) if cut == "r" else (N, M)
                    widest = -(-extent // tiles)
                    assert widest * other * K <= SMALL and extent // tiles >= 32
                # op(B) transposed: never cut for the small kernel.
                assert _native._gemm_plan(M, N, K, ta, True, True) == _packed_plan(M, N, K, ta, tb=True)
        assert {"k", "r", "c"} <= seen
    finally:
        _native._set_gemm_small_tiles(-1)


def _packed_plan(M, N, K, ta, tb=False):
    _native._set_gemm_small_tiles(0)
    try:
        return _native._gemm_plan(M, N, K, ta, tb, True)
    finally:
        _native._set_gemm_small_tiles(1)


# (N, D, M) of an affine layer: forward (N,M) = (N,D) @ (D,M), dW (D,M) = x^T @ dout, dx
# (N,D) = dout @ W^T. Among them every cut: K slices with C small (forward of the first four),
# row tiles of the weight gradient, slices of the weight gradient's own K (the batch) when
# its rows are too few to tile, C tiny against K, and prime sizes everywhere.
CUT_SHAPES = [(100, 4320, 100), (100, 1024, 50), (13, 2003, 17), (7, 30011, 5), (1000, 97, 13), (3001, 61, 7)]


@pytest.mark.parametrize("N,D,M", CUT_SHAPES)
def test_affine_under_each_cut(cuts, N, D, M):
    rng = np.random.default_rng(N + D + M)
    x, W, b, dout = rand(rng, (N, D)), rand(rng, (D, M)), rand(rng, (M,)), rand(rng, (N, M))
    dW0, db0 = rand(rng, (D, M)), rand(rng, (M,))
    results = {}
    for name, impl in (("native", _native), ("numpy", reference)):
        out = np.full((N, M), np.nan, np.float32)
        dx = np.full((N, D), np.nan, np.float32)  # overwritten (beta = 0): garbage must not leak
        dW, db = dW0.copy(), db0.copy()  # accumulated (beta = 1)
        impl.affine_forward(out, x, W, b)
        impl.affine_backward(dx, dW, db, dout, x, W)
        results[name] = out, dx, dW, db
    (out, dx, dW, db), (rout, rdx, rdW, rdb) = results["native"], results["numpy"]
    ax, aW, ad = np.abs(x).astype(np.float64), np.abs(W).astype(np.float64), np.abs(dout).astype(np.float64)
    assert_close_reduction(out, rout, ax @ aW + np.abs(b), D + 1, np.float32, "out")
    assert_close_reduction(dx, rdx, ad @ aW.T, M, np.float32, "dx")
    assert_close_reduction(dW, rdW, ax.T @ ad + np.abs(dW0), N + 1, np.float32, "dW")
    assert_close_reduction(db, rdb, ad.sum(0) + np.abs(db0), N + 1, np.float32, "db")


def test_maxout_under_each_cut(cuts):
    """maxout's forward writes each piece's product into a strided block of one (N, K*M)
    array: a K-sliced GEMM whose C has a leading dimension other than its width."""
    N, D, M, K = 50, 3001, 9, 3
    rng = np.random.default_rng(5)
    x, W, b = rand(rng, (N, D)), rand(rng, (K, D, M)), rand(rng, (K, M))
    if cuts:
        assert _native._gemm_plan(N, M, D, False, False, True)[0] == "k"
    out, arg = np.full((N, M), np.nan, np.float32), np.full((N, M), -1, np.int32)
    rout, rarg = np.empty((N, M), np.float32), np.empty((N, M), np.int32)
    _native.maxout_forward(out, arg, x, W, b)
    reference.maxout_forward(rout, rarg, x, W, b)
    z = np.matmul(x.astype(np.float64), W.astype(np.float64)) + b[:, None, :]
    magnitude = (np.matmul(np.abs(x).astype(np.float64), np.abs(W)) + np.abs(b)[:, None, :]).max(0)
    assert_close_reduction(out, rout, magnitude, D + 1, np.float32, "out")
    # The same piece wins wherever the two best are further apart than rounding could move them.
    top2 = np.sort(z, axis=0)[-2:]
    clear = top2[1] - top2[0] > 4 * magnitude * D * np.finfo(np.float32).eps
    assert clear.mean() > 0.9
    assert np.array_equal(arg[clear], rarg[clear])


def test_convolution_dx_under_each_cut(cuts):
    """The im2col backward computes dx as the gradient convolved with the flipped filters: one
    GEMM (C, H*W) over FN*9 per image, overwriting dx (beta = 0). A small image with many
    filters makes that GEMM's C small and its K long: with the small cuts, K slices."""
    N, C, H, W, FN = 8, 32, 4, 4, 256
    if cuts:
        assert _native._gemm_plan(C, H * W, FN * 9, False, False, True)[0] == "k"
    saved = fastlayers.backend.get_conv_algorithm()
    fastlayers.backend.set_conv_algorithm("im2col")
    try:
        rng = np.random.default_rng(9)
        x, Wt, dout = rand(rng, (N, C, H, W)), rand(rng, (FN, C, 3, 3)), rand(rng, (N, FN, H, W))
        dx = np.full(x.shape, np.nan, np.float32)
        dW, db = np.zeros(Wt.shape, np.float32), np.zeros(FN, np.float32)
        _native.conv2d_backward(dx, dW, db, dout, x, Wt, 1, 1)
    finally:
        fastlayers.backend.set_conv_algorithm(saved)
    f64 = np.float64
    want, mag = np.empty(x.shape, f64), np.empty(x.shape, f64)
    for out, args in ((want, (dout, x, Wt)), (mag, (np.abs(dout), np.abs(x), np.abs(Wt)))):
        reference.conv2d_backward(out, np.zeros(Wt.shape), np.zeros(FN), *(a.astype(f64) for a in args), 1, 1)
    assert_close_reduction(dx, want, mag, FN * 9, np.float32, "dx")
