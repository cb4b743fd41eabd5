"""The Winograd F(4x4, 3x3) path of the float32 convolution kernels (csrc/winograd.cpp).

Every 3x3 stride-1 convolution kernel runs with ``backend.set_conv_algorithm("winograd")`` over a sample of
awkward geometries (channel counts 1 to 33, planes 1 to 13 that are not multiples of the
4x4 tile, padding 0 to 2) and is held to the float64 oracle within a bound derived for the
algorithm rather than for a direct sum: a float32 evaluation of a chain of linear maps
M1 ... Mk applied to x errs by at most gamma_n |M1| ... |Mk| |x| componentwise (Higham 3.5),
with n the number of roundings on the longest path. So the magnitude here is the Winograd
computation itself run in float64 on absolute values (|B^T|, |G|, |A^T|, |x|, |W|), and n
counts the roundings: forward 6 (input transform) + 1 (filters to float32) + 1 (product)
+ C (channel sum) + 6 (output transform) + 1 (bias) = C + 15; dW 6 + 4 (gradient
transform) + 1 + the tile count + 2.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastlayers
from fastlayers import backend
from fastlayers import reference as ref
from fastlayers.backend import _native as nat

from .tolerance import gamma, tiny

F32, F64 = np.float32, np.float64

BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], F64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], F64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], F64)


@pytest.fixture(autouse=True)
def winograd_everywhere():
    saved = backend.get_conv_algorithm()
    backend.set_conv_algorithm("winograd")
    yield
    backend.set_conv_algorithm(saved)


def _tiles(a, pad, th, tw):
    """(N, C, th, tw, 6, 6) input tiles of a (N, C, H, W) zero-padded by pad on the top/left."""
    N, C, H, W = a.shape
    xp = np.zeros((N, C, 4 * th + 2, 4 * tw + 2), F64)
    xp[:, :, pad : pad + H, pad : pad + W] = a[:, :, : 4 * th + 2 - pad, : 4 * tw + 2 - pad]
    s = xp.strides
    return np.lib.stride_tricks.as_strided(xp, (N, C, th, tw, 6, 6), (s[0], s[1], 4 * s[2], 4 * s[3], s[2], s[3]))


def _input_magnitude(x, pad, OH, OW):
    """|B^T| |d| |B| for every 6x6 input tile d: (N, C, th, tw, 6, 6)."""
    th, tw = -(-OH // 4), -(-OW // 4)
    return np.einsum("ip,nctupq,jq->nctuij", abs(BT), _tiles(np.abs(x).astype(F64), pad, th, tw), abs(BT))


def forward_magnitude(x, W, b, pad):
    """|A^T| (sum_c (|G||W||G^T|) .* (|B^T||d||B|)) |A| + |b| per output, in float64."""
    N, C, H, Wd = x.shape
    FN = W.shape[0]
    OH, OW = H + 2 * pad - 2, Wd + 2 * pad - 2
    th, tw = -(-OH // 4), -(-OW // 4)
    V = _input_magnitude(x, pad, OH, OW)
    U = np.einsum("ip,fcpq,jq->fcij", abs(G), np.abs(W).astype(F64), abs(G))
    M = np.einsum("fcij,nctuij->nftuij", U, V)
    Y = np.einsum("ri,nftuij,sj->nftrus", abs(AT), M, abs(AT)).reshape(N, FN, 4 * th, 4 * tw)
    Y = Y[:, :, :OH, :OW]
    return Y + (np.abs(b).astype(F64)[None, :, None, None] if b is not None else 0)


def dW_magnitude(g, x, pad):
    """|G^T| (sum over tiles (|B^T||d||B|) .* (|A||dY||A^T|)) |G| per (f, c), in float64."""
    N = x.shape[0]
    FN, OH, OW = g.shape[1:]
    th, tw = -(-OH // 4), -(-OW // 4)
    V = _input_magnitude(x, pad, OH, OW)
    gp = np.zeros((N, FN, 4 * th, 4 * tw), F64)
    gp[:, :, :OH, :OW] = np.abs(g)
    dY = gp.reshape(N, FN, th, 4, tw, 4).transpose(0, 1, 2, 4, 3, 5)
    dM = np.einsum("ir,nfturs,js->nftuij", abs(AT.T), dY, abs(AT.T))
    dU = np.einsum("nctuij,nftuij->fcij", V, dM)
    return np.einsum("pi,fcpq,qj->fcij", abs(G), dU, abs(G))


def dx_magnitude(g, W, pad):
    Wt = np.ascontiguousarray(np.abs(W).transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    return forward_magnitude(g, Wt, None, 2 - pad)


def assert_within(got, want, magnitude, n, what):
    bound = gamma(n, F32) * magnitude + tiny(F32)
    err = np.abs(got.astype(F64) - want)
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} entries exceed the Winograd rounding bound; worst error "
        f"{err.max():.3g} vs bound {bound.flat[np.argmax(err - bound)]:.3g} (n={n})"
    )


CASES = [
    # N, C, H, W, FN, pad: planes not multiples of 4, single tiles, overhanging tiles, one
    # channel, primes, channel counts across the 16-lane vector width, a batch of 17.
    (1, 1, 1, 1, 1, 1),
    (1, 1, 3, 3, 1, 0),
    (2, 3, 5, 7, 2, 1),
    (3, 5, 9, 6, 7, 2),
    (1, 16, 4, 4, 16, 1),
    (2, 17, 13, 11, 33, 0),
    (17, 2, 6, 10, 3, 1),
    (2, 33, 8, 8, 31, 1),
    (3, 32, 14, 14, 32, 2),
    (1, 7, 2, 12, 5, 2),
    (2, 64, 7, 5, 17, 1),
    (4, 1, 28, 28, 16, 1),
]


def _id(c):
    return "N{}C{}H{}W{}FN{}p{}".format(*c)


def _data(case, seed):
    N, C, H, W, FN, pad = case
    rng = np.random.default_rng(seed)
    OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
    return dict(
        x=rng.standard_normal((N, C, H, W)).astype(F32),
        W=rng.standard_normal((FN, C, 3, 3)).astype(F32),
        b=rng.standard_normal(FN).astype(F32),
        dout=rng.standard_normal((N, FN, OH, OW)).astype(F32),
        dW0=rng.standard_normal((FN, C, 3, 3)).astype(F32),
        db0=rng.standard_normal(FN).astype(F32),
    )


def f64(a):
    return a.astype(F64)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_forward_within_the_winograd_bound(case):
    N, C, H, W, FN, pad = case
    d = _data(case, 1)
    mag = forward_magnitude(d["x"], d["W"], d["b"], pad)
    for kernel in ("conv2d_forward", "conv2d_relu_forward"):
        got = np.full(mag.shape, np.nan, F32)
        getattr(nat, kernel)(got, d["x"], d["W"], d["b"], 1, pad)
        want = np.empty(mag.shape, F64)
        getattr(ref, kernel)(want, f64(d["x"]), f64(d["W"]), f64(d["b"]), 1, pad)
        assert_within(got, want, mag, C + 15, kernel)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_backward_within_the_winograd_bound(case):
    N, C, H, W, FN, pad = case
    d = _data(case, 2)
    x, Wt, dout = d["x"], d["W"], d["dout"]
    out = np.empty(dout.shape, F32)
    nat.conv2d_relu_forward(out, x, Wt, d["b"], 1, pad)
    OH, OW = dout.shape[2:]
    tiles = N * -(-OH // 4) * -(-OW // 4)
    for kernel in ("conv2d_backward", "conv2d_relu_backward"):
        fused = kernel == "conv2d_relu_backward"
        extra = (out,) if fused else ()
        g = np.where(out > 0, dout, 0).astype(F32) if fused else dout
        for with_dx in (True, False):
            dx = np.full(x.shape, np.nan, F32)
            dW, db = d["dW0"].copy(), d["db0"].copy()
            getattr(nat, kernel)(dx if with_dx else None, dW, db, dout, x, Wt, *extra, 1, pad)
            rdx, rdW, rdb = np.empty(x.shape, F64), f64(d["dW0"]), f64(d["db0"])
            ref.conv2d_backward(rdx, rdW, rdb, f64(g), f64(x), f64(Wt), 1, pad)
            if with_dx:
                assert_within(dx, rdx, dx_magnitude(g, Wt, pad), FN + 15, f"{kernel} dx")
            else:
                assert np.isnan(dx).all(), "dx was written though it was not asked for"
            mdW = dW_magnitude(g, x, pad) + np.abs(f64(d["dW0"]))
            assert_within(dW, rdW, mdW, tiles + 13, f"{kernel} dW")
            mdb = np.abs(f64(g)).sum(axis=(0, 2, 3)) + np.abs(f64(d["db0"]))
            assert_within(db, rdb, mdb, N * OH * OW + 1, f"{kernel} db")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_float64_keeps_im2col(case):
    d = {k: f64(v) for k, v in _data(case, 3).items()}
    outs = []
    for mode in ("winograd", "im2col"):
        backend.set_conv_algorithm(mode)
        o = np.empty(d["dout"].shape, F64)
        nat.conv2d_relu_forward(o, d["x"], d["W"], d["b"], 1, case[5])
        outs.append(o)
    assert np.array_equal(*outs)


# Output channels in whole vectors of 16 pool straight from the channel-last tiles
# (vm::relu_max2x2), the others from the planar output: both, with odd output planes whose
# last row or column no window covers.
POOL_CASES = [(2, 3, 8, 8, 5, 1), (3, 17, 13, 11, 33, 0), (1, 32, 14, 14, 32, 2), (2, 16, 6, 9, 7, 1),
              (2, 16, 7, 9, 16, 1), (2, 16, 28, 28, 16, 1), (3, 64, 8, 8, 64, 1), (2, 8, 9, 6, 48, 0)]


@pytest.mark.parametrize("case", POOL_CASES, ids=_id)
def test_fused_pool_kernels_give_the_unfused_bits(case):
    """conv2d_relu_maxpool2d_* on the Winograd path equal conv2d_relu_* followed by max
    pooling, bit for bit (2x2 windows, stride 2)."""
    N, C, H, W, FN, pad = case
    d = _data(case, 4)
    x, Wt, b = d["x"], d["W"], d["b"]
    OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
    POH, POW = (OH - 2) // 2 + 1, (OW - 2) // 2 + 1
    y = np.empty((N, FN, OH, OW), F32)
    nat.conv2d_relu_forward(y, x, Wt, b, 1, pad)
    want, want_arg = np.empty((N, FN, POH, POW), F32), np.empty((N, FN, POH, POW), np.int32)
    nat.maxpool2d_forward(want, want_arg, y, 2, 2, 2, 0)
    got, arg = np.empty_like(want), np.empty_like(want_arg)
    nat.conv2d_relu_maxpool2d_forward(got, arg, x, Wt, b, 1, pad, 2, 2, 2, 0)
    assert np.array_equal(got, want) and np.array_equal(arg, want_arg)

    dpool = np.random.default_rng(5).standard_normal(want.shape).astype(F32)
    dy = np.empty_like(y)
    nat.maxpool2d_backward(dy, dpool, want_arg)
    dx, dW, db = np.empty_like(x), d["dW0"].copy(), d["db0"].copy()
    nat.conv2d_relu_backward(dx, dW, db, dy, x, Wt, y, 1, pad)
    fdx, fdW, fdb = np.empty_like(x), d["dW0"].copy(), d["db0"].copy()
    nat.conv2d_relu_maxpool2d_backward(fdx, fdW, fdb, dpool, x, Wt, got, arg, 1, pad)
    for a, b_ in ((fdx, dx), (fdW, dW), (fdb, db)):
        assert np.array_equal(a, b_)


@pytest.mark.parametrize("case", POOL_CASES, ids=_id)
def test_fused_pool_forward_with_infinities_and_nans_gives_the_unfused_bits(case):
    """A non-finite output makes the Winograd forward hand the layer to im2col (see
    winograd.h); the fused kernel must notice it as the unfused one does, so both give
    im2col's bits, NaNs and infinities included."""
    N, C, H, W, FN, pad = case
    d = _data(case, 7)
    x = d["x"].copy()
    x[0, 0, 0, 0] = np.inf
    x[-1, -1, H // 2, W // 2] = np.nan
    OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
    y = np.empty((N, FN, OH, OW), F32)
    nat.conv2d_relu_forward(y, x, d["W"], d["b"], 1, pad)
    shape = (N, FN, (OH - 2) // 2 + 1, (OW - 2) // 2 + 1)
    want, want_arg = np.empty(shape, F32), np.empty(shape, np.int32)
    nat.maxpool2d_forward(want, want_arg, y, 2, 2, 2, 0)
    got, arg = np.empty(shape, F32), np.empty(shape, np.int32)
    nat.conv2d_relu_maxpool2d_forward(got, arg, x, d["W"], d["b"], 1, pad, 2, 2, 2, 0)
    assert np.isnan(got).any()
    assert got.tobytes() == want.tobytes() and np.array_equal(arg, want_arg)


@pytest.mark.skipif(not fastlayers.build_info()["openmp"], reason="one thread only without OpenMP")
@pytest.mark.parametrize("case", [CASES[6], CASES[8], (100, 64, 8, 8, 64, 1)], ids=_id)
def test_bitwise_identical_for_one_and_two_threads(case):
    d = _data(case, 6)
    pad = case[5]

    def run():
        out = np.empty(d["dout"].shape, F32)
        nat.conv2d_relu_forward(out, d["x"], d["W"], d["b"], 1, pad)
        dx, dW, db = np.empty_like(d["x"]), d["dW0"].copy(), d["db0"].copy()
        nat.conv2d_relu_backward(dx, dW, db, d["dout"], d["x"], d["W"], out, 1, pad)
        return out, dx, dW, db

    saved = backend.get_num_threads()
    try:
        backend.set_num_threads(1)
        one = run()
        backend.set_num_threads(2)
        two = run()
    finally:
        backend.set_num_threads(saved)
    for k, (a, b) in enumerate(zip(one, two)):
        assert np.array_equal(a, b), f"result {k} differs between 1 and 2 threads"


def test_modes_and_the_automatic_choice():
    with pytest.raises(ValueError, match="set_conv_algorithm: algorithm must be one of"):
        backend.set_conv_algorithm("sometimes")
    rng = np.random.default_rng(7)

    def winograd(C, FN, mode, N=4):
        """Whether `mode` took the Winograd path for the forward and for the backward: the
        results differ in rounding from im2col's."""
        x = rng.standard_normal((N, C, 10, 10)).astype(F32)
        W = rng.standard_normal((FN, C, 3, 3)).astype(F32)
        dout = rng.standard_normal((N, FN, 10, 10)).astype(F32)
        outs, grads = [], []
        for m in (mode, "im2col"):
            backend.set_conv_algorithm(m)
            o = np.empty((N, FN, 10, 10), F32)
            nat.conv2d_forward(o, x, W, np.zeros(FN, F32), 1, 1)
            dx, dW, db = np.empty_like(x), np.zeros_like(W), np.zeros(FN, F32)
            nat.conv2d_backward(dx, dW, db, dout, x, W, 1, 1)
            outs.append(o)
            grads.append(dW)
        return not np.array_equal(*outs), not np.array_equal(*grads)

    assert winograd(3, 3, "winograd") == (True, True)
    assert winograd(3, 3, "auto") == (False, False)
    assert winograd(15, 64, "auto") == (False, False)
    assert winograd(16, 16, "auto") == (True, True)
    assert winograd(16, 32, "auto") == (True, True)
    assert winograd(64, 32, "auto") == (True, True)
    assert winograd(32, 32, "im2col") == (False, False)
    assert winograd(32, 32, "auto", N=3) == (False, False)  # too few images to pay off
    assert winograd(32, 32, "winograd", N=1) == (True, True)
    backend.set_conv_algorithm("auto")
    assert backend.get_conv_algorithm() == "auto"
    with backend.conv_algorithm("im2col"):
        assert backend.get_conv_algorithm() == "im2col"
    assert backend.get_conv_algorithm() == "auto"


@pytest.mark.parametrize("where", ["x", "W", "dout"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("FN", [4, 16])  # 16: the output is finished channel-last
def test_non_finite_values_give_im2cols_results(where, bad, FN):
    """The transforms would spread one inf or NaN over a whole tile (inf - inf is NaN): such
    a result is redone with im2col, so the non-finite values fall where a direct sum puts
    them, bit for bit as with set_conv_algorithm("im2col")."""
    rng = np.random.default_rng(8)
    d = {"x": rng.standard_normal((2, 3, 12, 12)).astype(F32), "W": rng.standard_normal((FN, 3, 3, 3)).astype(F32),
         "dout": rng.standard_normal((2, FN, 12, 12)).astype(F32)}
    d[where][(0,) * (d[where].ndim - 2) + (1, 1)] = bad
    b = np.zeros(FN, F32)

    def run():
        out = np.empty((2, FN, 12, 12), F32)
        nat.conv2d_relu_forward(out, d["x"], d["W"], b, 1, 1)
        dx, dW, db = np.empty_like(d["x"]), np.ones_like(d["W"]), np.ones(FN, F32)
        nat.conv2d_backward(dx, dW, db, d["dout"], d["x"], d["W"], 1, 1)
        return out, dx, dW, db

    got = run()
    backend.set_conv_algorithm("im2col")
    want = run()
    # A non-finite dout leaves the forward finite, and on the Winograd path.
    first = 1 if where == "dout" else 0
    for k, (a, e) in enumerate(zip(got, want)):
        if k >= first:
            assert np.array_equal(a, e, equal_nan=True), f"result {k} differs from im2col's"
    assert not all(np.isfinite(a).all() for a in got)


@pytest.mark.skipif(os.environ.get("FASTLAYERS_DISABLE_AVX512", "0") not in ("", "0"),
                    reason="already the baseline build")
def test_the_baseline_build_within_the_same_bounds():
    """The planar/channel-last copies (csrc/transpose.h) and the transforms have a baseline
    build beside the AVX-512 one, which an AVX-512 machine never runs by itself: the forward,
    backward and fused-pool tests above, again with FASTLAYERS_DISABLE_AVX512=1."""
    env = {**os.environ, "FASTLAYERS_DISABLE_AVX512": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "within_the_winograd_bound or unfused_bits"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout, run.stdout[-2000:]
