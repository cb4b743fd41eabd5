"""Native activation and MSE kernels against their NumPy oracles.

Every kernel, forward and backward, float32 and float64: element-wise kernels over sizes
that are not multiples of any vector width (1, 7, 31, 4097, 2^16 + 3) and over several ndims,
with the special values their contract defines (0, -0, +-inf, NaN, +-1e4, the kinks and the
HardTanh bounds exactly); PReLU with both slope shapes; softmax rows with overflow-size
logits; maxout with ties; RBF near the centres; MSE over 1-D to 4-D. Then the argument
checks on both backends, and bit-identical results with 1 and 2 threads.

Tolerances come from tests/tolerance.py: selections and copies are compared exactly;
transcendental element-wise results within ULPS_ELEMENTWISE ulps; reductions with the
rounding bound of their length and of the magnitude of their terms (computed in float64
from absolute values), derived below for each kernel.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

import fastlayers
from fastlayers import reference
from fastlayers.backend import _native

from .tolerance import ULPS_ELEMENTWISE, assert_close_elementwise, assert_close_reduction, gamma, tiny

DTYPES = [np.float32, np.float64]
IMPLS = [pytest.param(_native, id="native"), pytest.param(reference, id="numpy")]
# 1, primes and one past a power of two: no size is a multiple of a vector width.
FLAT_SIZES = [1, 7, 31, 4097, (1 << 16) + 3]
SHAPES = [(n,) for n in FLAT_SIZES] + [(3, 5), (2, 3, 1, 5), (2, 3, 4, 5), (17, 13, 3)]


def seed(*parts) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def with_specials(rng, shape, dtype, specials, scale=3.0):
    """Standard normal * scale with each special value planted at a few fixed positions."""
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    flat = x.reshape(-1)
    if specials:
        step = max(1, flat.size // (3 * len(specials)))
        for i, pos in enumerate(range(0, flat.size, step)):
            flat[pos] = specials[i % len(specials)]
    return x


def oracle(name, *args):
    """The oracle on special values: inf * 0 and the like warn in NumPy (warnings are errors)."""
    with np.errstate(all="ignore"):
        return getattr(reference, name)(*args)


def both(name, outputs, *args):
    """Runs native and oracle on fresh copies of `outputs` (lists of arrays); checks that the
    inputs are left unchanged and returns (native outputs, oracle outputs)."""
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    got = [o.copy() for o in outputs]
    want = [o.copy() for o in outputs]
    getattr(_native, name)(*got, *args)
    oracle(name, *want, *args)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} modified an input")
    return got, want


def assert_ulps(got, want, dtype, what):
    """Element-wise within ULPS_ELEMENTWISE ulps; infinities must match exactly."""
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: infinities")
    assert_close_elementwise(got[~inf], want[~inf], dtype, what=what)


# ----------------------------------------------------------------------------------------
# Element-wise kernels
# ----------------------------------------------------------------------------------------

# name -> (hyper-parameters, backward reads "x" / "out" / nothing, exact?, special inputs)
INF, NAN = np.inf, np.nan
COMMON = [0.0, -0.0, INF, -INF, NAN, 1e4, -1e4]
ELEMENTWISE = {
    "leaky_relu": ((0.1,), "x", True, COMMON),
    "leaky_relu_abs": ((-1,), "x", True, COMMON),
    "leaky_relu_zero": ((0.0,), "x", True, COMMON),
    "sigmoid": ((), "out", False, COMMON + [-88.0, -104.0, 20.0, 1e-30]),
    "tanh": ((), "out", False, COMMON + [1e-30, 0.625, -9.5, 20.0]),
    "hardtanh": ((-1.0, 1.0), "x", True, COMMON + [-1.0, 1.0]),
    "hardtanh_wide": ((-0.5, 2.0), "x", True, COMMON + [-0.5, 2.0]),
    "hardtanh_inf": ((-INF, 0.25), "x", True, COMMON + [0.25]),
    "hardtanh_beyond_float32": ((-1e39, 1e39), "x", True, COMMON),
    "softplus": ((), "x", False, COMMON + [-88.0, -104.0, -750.0, 40.0, 1e-30]),
    "identity": ((), None, True, COMMON),
}


def kernel_of(name):
    return name.split("_")[0] if not name.startswith("leaky_relu") else "leaky_relu"


def near_bounds(x, hyper, dtype):
    """HardTanh: plant the neighbours of each finite bound as well."""
    flat = x.reshape(-1)
    with np.errstate(over="ignore"):
        finite = [dtype(b) for b in hyper if np.isfinite(dtype(b))] if flat.size >= 8 else []
    vals = [v for b in finite for v in (np.nextafter(b, dtype(-INF)), np.nextafter(b, dtype(INF)))]
    flat[1 : 1 + len(vals)] = vals[: max(0, flat.size - 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise(name, shape, dtype):
    hyper, reads, exact, specials = ELEMENTWISE[name]
    kernel = kernel_of(name)
    rng = seed(name, shape, dtype)
    x = with_specials(rng, shape, dtype, specials)
    if kernel == "hardtanh":
        near_bounds(x, hyper, dtype)
    dout = (rng.standard_normal(shape) * 2).astype(dtype)
    nan = np.full(shape, np.nan, dtype)  # outputs are overwritten: garbage in must not leak

    (got,), (want,) = both(f"{kernel}_forward", [nan], x, *hyper)
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=f"{name} forward")
    else:
        assert_ulps(got, want, dtype, f"{name} forward")

    if reads == "x":
        args = (dout, x, *hyper)
    elif reads == "out":
        y = np.empty_like(x)
        oracle(f"{kernel}_forward", y, x, *hyper)
        args = (dout, y)
    else:
        args = (dout,)
    (got,), (want,) = both(f"{kernel}_backward", [nan], *args)
    if kernel == "tanh":
        # dout * (1 - y*y): a sum of two terms, 1 and -y^2, scaled by dout. A compiler that
        # fuses y*y into the subtraction (FMA, with -march=native) rounds once fewer, which
        # near |y| = 1 is a large relative change but within the bound of that sum.
        y64, g64 = y.astype(np.float64), np.abs(dout.astype(np.float64))
        magnitude = g64 * (1 + y64 * y64)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="tanh backward NaN")
        ok = ~np.isnan(want)
        assert_close_reduction(got[ok], want[ok], magnitude[ok], 2, dtype, "tanh backward")
    elif exact or reads == "out":
        # Selections, or the oracle's products in the oracle's order: identical bits.
        np.testing.assert_array_equal(got, want, err_msg=f"{name} backward")
    else:
        assert_ulps(got, want, dtype, f"{name} backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_softplus_tanh_extremes(dtype):
    x = np.array([-INF, -1e4, -1e3, -30.0, -0.0, 0.0, 30.0, 1e3, 1e4, INF, NAN], dtype)
    ones = np.ones_like(x)
    y = np.full_like(x, 7)
    _native.sigmoid_forward(y, x)
    np.testing.assert_array_equal(y[[0, 1, 2, 4, 5, 7, 8, 9]], np.array([0, 0, 0, 0.5, 0.5, 1, 1, 1], dtype))
    assert np.isnan(y[-1])
    assert_close_elementwise(y[3], dtype(np.exp(-30.0) / (1 + np.exp(-30.0))), dtype, what="sigmoid(-30)")
    sp = np.full_like(x, 7)
    _native.softplus_forward(sp, x)
    np.testing.assert_array_equal(sp[[0, 1, 2, 8, 9]], np.array([0, 0, 0, 1e4, INF], dtype))
    assert np.isnan(sp[-1])
    assert_close_elementwise(sp[3], dtype(np.log1p(np.exp(-30.0))), dtype, what="softplus(-30)")
    assert_close_elementwise(sp[4:6], np.full(2, np.log(2.0), dtype), dtype, what="softplus(0)")
    dsp = np.full_like(x, 7)
    _native.softplus_backward(dsp, ones, x)
    np.testing.assert_array_equal(dsp[[0, 1, 4, 5, 8, 9]], np.array([0, 0, 0.5, 0.5, 1, 1], dtype))
    t = np.full_like(x, 7)
    _native.tanh_forward(t, x)
    np.testing.assert_array_equal(t[[0, 1, 4, 5, 8, 9]], np.array([-1, -1, -0.0, 0, 1, 1], dtype))
    assert np.signbit(t[4]) and not np.signbit(t[5])
    assert np.isnan(t[-1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_alpha_forms(dtype):
    x = with_specials(seed("alpha", dtype), (257,), dtype, COMMON)
    for alpha in (0.01, 0, -1, 1.5, 3, np.float32(0.2), np.float64(-0.3), np.int64(2)):
        (got,), (want,) = both("leaky_relu_forward", [np.empty_like(x)], x, alpha)
        np.testing.assert_array_equal(got, want, err_msg=f"alpha={alpha!r}")


# ----------------------------------------------------------------------------------------
# PReLU
# ----------------------------------------------------------------------------------------

PRELU_SHAPES = [(1,), (4097,), (5, 1), (3, 16), (17, 17), (2, 3, 7), (2, 17, 5, 5), (3, 16, 1, 1), (2, 3, 31, 70)]


def prelu_dalpha_magnitude(dout, x, alpha, dalpha0):
    """dalpha[c] sums dout * x over the non-positive x of channel c: |terms| summed in float64."""
    t = np.where(x > 0, 0.0, np.abs(dout.astype(np.float64) * x))
    if alpha.size == 1:
        return np.array([t.sum()]) + np.abs(dalpha0), t.size
    axes = (0,) + tuple(range(2, x.ndim))
    return t.sum(axis=axes) + np.abs(dalpha0), t.size // x.shape[1]


# A per-channel alpha needs a channel axis (x.ndim >= 2).
PRELU_CASES = [(s, pc) for s in PRELU_SHAPES for pc in (False, True) if len(s) >= 2 or not pc]
PRELU_IDS = [f"{s}-{'channel' if c else 'shared'}" for s, c in PRELU_CASES]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,per_channel", PRELU_CASES, ids=PRELU_IDS)
def test_prelu(shape, per_channel, dtype):
    rng = seed("prelu", shape, per_channel, dtype)
    x = with_specials(rng, shape, dtype, [0.0, -0.0, 1e4, -1e4])
    dout = (rng.standard_normal(shape) * 2).astype(dtype)
    C = shape[1] if per_channel else 1
    alpha = (rng.random(C) * 0.5 - 0.1).astype(dtype)
    nan = np.full(shape, np.nan, dtype)
    (got,), (want,) = both("prelu_forward", [nan], x, alpha)
    np.testing.assert_array_equal(got, want, err_msg="prelu forward")

    dalpha0 = rng.standard_normal(C).astype(dtype)  # accumulated into: start non-zero
    (dx, da), (rdx, rda) = both("prelu_backward", [nan, dalpha0], dout, x, alpha)
    np.testing.assert_array_equal(dx, rdx, err_msg="prelu dx")
    magnitude, n = prelu_dalpha_magnitude(dout, x, alpha, dalpha0)
    # Each term is one product (one rounding), then n terms and the initial value are summed.
    assert_close_reduction(da, rda, magnitude, n + 2, dtype, "prelu dalpha")


@pytest.mark.parametrize("impl", IMPLS)
def test_prelu_propagates_nan_into_dalpha(impl):
    x = np.array([[1.0, -2.0], [np.nan, -1.0]], np.float32)
    dout = np.ones_like(x)
    alpha = np.array([0.25, 0.5], np.float32)
    dx, dalpha = np.empty_like(x), np.zeros(2, np.float32)
    impl.prelu_backward(dx, dalpha, dout, x, alpha)
    assert np.isnan(dalpha[0]) and dalpha[1] == -3.0
    # An infinite dout where x > 0 passes no gradient to alpha (no 0 * inf).
    dout = np.array([[np.inf, 1.0], [1.0, 1.0]], np.float32)
    x = np.array([[1.0, -2.0], [3.0, -1.0]], np.float32)
    dalpha = np.zeros(2, np.float32)
    impl.prelu_backward(dx, dalpha, dout, x, alpha)
    np.testing.assert_array_equal(dalpha, [0.0, -3.0])


# ----------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------

SOFTMAX_SHAPES = [(1, 1), (1, 10), (3, 2), (17, 13), (100, 10), (5, 1001), (2, 4097)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_softmax(shape, scale, dtype):
    rng = seed("softmax", shape, scale, dtype)
    N, K = shape
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    nan = np.full(shape, np.nan, dtype)
    (got,), (want,) = both("softmax_forward", [nan], x)
    # y_k = e_k / S: exp within ULPS_ELEMENTWISE/2 ulps in each backend, S a K-term sum, one
    # division. x - max is the same rounded number in both. Relative to y, the two backends
    # differ by at most 2 gamma(K + ULPS_ELEMENTWISE + 1).
    assert_close_reduction(got, want, np.abs(want), K + ULPS_ELEMENTWISE, dtype, "softmax forward")

    y = want
    dout = rng.standard_normal(shape).astype(dtype)
    (got,), (want,) = both("softmax_backward", [nan], dout, y)
    # dx_k = y_k (g_k - s), s = sum_j g_j y_j: rounding of s (K products, K terms), of the
    # difference and of the product; |g_k - s| <= |g_k| + sum_j |g_j y_j|.
    y64, g64 = np.abs(y.astype(np.float64)), np.abs(dout.astype(np.float64))
    magnitude = y64 * (g64 + (g64 * y64).sum(axis=1, keepdims=True))
    assert_close_reduction(got, want, magnitude, K + 3, dtype, "softmax backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_special_rows(dtype):
    x = np.array(
        [
            [1.0, NAN, 2.0],  # NaN anywhere: the whole row is NaN
            [1.0, INF, 2.0],  # +inf: inf - inf is NaN
            [-INF, -INF, -INF],  # no finite entry
            [-INF, 0.0, 1.0],  # one -inf: probability exactly 0
            [1e4, -1e4, 1e4],  # overflow-size logits
            [0.0, 0.0, 0.0],
        ],
        dtype,
    )
    (got,), (want,) = both("softmax_forward", [np.empty_like(x)], x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:3]).all() and not np.isnan(got[3:]).any()
    assert got[3, 0] == 0 and got[4, 1] == 0
    assert_close_reduction(got[3:], want[3:], np.abs(want[3:]), 3 + ULPS_ELEMENTWISE, dtype, "special rows")


# ----------------------------------------------------------------------------------------
# Maxout
# ----------------------------------------------------------------------------------------


def maxout_cases():
    """Every value of every axis, over a deterministic subset of the product."""
    Ns, Ds, Ks, Ms = [1, 3, 17], [1, 2, 7, 31], [1, 2, 3, 5], [1, 3, 11]
    full = list(itertools.product(Ns, Ds, Ks, Ms))
    rng = np.random.default_rng(5)
    picked = {full[i] for i in rng.choice(len(full), 18, replace=False)}
    for i in range(4):  # each value of each axis at least once
        picked.add((Ns[i % 3], Ds[i], Ks[i], Ms[i % 3]))
    picked.add((100, 784, 2, 100))  # the network shape
    return sorted(picked)


def maxout_data(rng, N, D, K, M, dtype):
    x = rng.standard_normal((N, D)).astype(dtype)
    W = (rng.standard_normal((K, D, M)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal((K, M)).astype(dtype)
    return x, W, b


def maxout_magnitude(x, W, b):
    """(K, N, M): the sum of |terms| of each z[k] = x @ W[k] + b[k]."""
    return np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64)) + np.abs(b)[:, None, :]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,K,M", maxout_cases())
def test_maxout(N, D, K, M, dtype):
    rng = seed("maxout", N, D, K, M, dtype)
    x, W, b = maxout_data(rng, N, D, K, M, dtype)
    out0 = np.full((N, M), np.nan, dtype)
    am0 = np.full((N, M), -7, np.int32)
    (out, am), (rout, ram) = both("maxout_forward", [out0, am0], x, W, b)
    mag = maxout_magnitude(x, W, b)
    bound = 2 * gamma(D + 2, dtype) * mag + tiny(dtype)  # (K, N, M): z of each backend within it
    z = np.matmul(x.astype(np.float64), W.astype(np.float64)) + b[:, None, :]
    rows, cols = np.indices((N, M))
    # out is z[argmax] of each backend; where they chose different pieces (a near tie) both
    # pieces' rounding counts.
    assert_close_reduction(out, rout, mag[ram, rows, cols] + mag[am, rows, cols], D + 1, dtype, "maxout out")
    # The argmax agrees wherever no other piece comes within the rounding of the winner; where
    # one does, the native choice must still be a maximum up to that rounding.
    top = z[ram, rows, cols]
    rivals = (z >= top - 2 * (bound + bound[ram, rows, cols])) & (np.arange(K)[:, None, None] != ram)
    clear = ~rivals.any(axis=0)
    np.testing.assert_array_equal(am[clear], ram[clear])
    assert (z[am, rows, cols] >= top - 2 * (bound[am, rows, cols] + bound[ram, rows, cols])).all()

    dout = rng.standard_normal((N, M)).astype(dtype)
    dW0, db0 = rng.standard_normal(W.shape).astype(dtype), rng.standard_normal(b.shape).astype(dtype)
    (dx, dW, db), (rdx, rdW, rdb) = both(
        "maxout_backward", [np.full((N, D), np.nan, dtype), dW0, db0], dout, x, W, ram
    )
    g = np.where(ram[None] == np.arange(K)[:, None, None], np.abs(dout.astype(np.float64)), 0.0)  # (K, N, M)
    ax, aW = np.abs(x.astype(np.float64)), np.abs(W.astype(np.float64))
    # dx sums K products g_k @ W[k].T of M terms each; dW[k] and db[k] add N terms to dW0, db0.
    assert_close_reduction(dx, rdx, np.einsum("knm,kdm->nd", g, aW), K * (M + 1), dtype, "maxout dx")
    assert_close_reduction(dW, rdW, np.einsum("nd,knm->kdm", ax, g) + np.abs(dW0), N + 1, dtype, "maxout dW")
    assert_close_reduction(db, rdb, g.sum(axis=1) + np.abs(db0), N + 1, dtype, "maxout db")

    # dx = None skips the input gradient and leaves the parameter gradients the same.
    dW2, db2 = dW0.copy(), db0.copy()
    _native.maxout_backward(None, dW2, db2, dout, x, W, ram)
    np.testing.assert_array_equal(dW2, dW)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [2, 3, 5])
def test_maxout_ties_go_to_the_first_piece(K, dtype):
    rng = seed("ties", K, dtype)
    N, D, M = 6, 7, 5
    x = rng.standard_normal((N, D)).astype(dtype)
    piece = rng.standard_normal((D, M)).astype(dtype)
    W = np.stack([piece] * K)  # identical pieces: every z[k] is the same number
    b = np.zeros((K, M), dtype)
    x[1, 3] = NAN  # a NaN row: NaN in every piece, the first NaN wins
    b[:, 4] = -INF  # a column of -inf in every piece: all equal, the first wins
    b[K - 1, 2] = 1.0  # a clear winner, the last piece
    for impl in (_native, reference):
        out, am = np.empty((N, M), dtype), np.empty((N, M), np.int32)
        impl.maxout_forward(out, am, x, W, b)
        want = np.zeros((N, M), np.int32)
        want[:, 2] = K - 1
        want[1, 2] = 0  # NaN beats the winner
        np.testing.assert_array_equal(am, want, err_msg=impl.__name__)
        assert np.isnan(out[1]).all() and (out[np.arange(N) != 1, 4] == -INF).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [-1, 3])
def test_maxout_backward_rejects_argmax_out_of_range(impl, bad):
    x, W, b = maxout_data(np.random.default_rng(0), 4, 3, 3, 2, np.float32)
    argmax = np.zeros((4, 2), np.int32)
    argmax[2, 1] = bad
    with pytest.raises(ValueError, match="argmax"):
        impl.maxout_backward(None, np.zeros_like(W), np.zeros_like(b), np.ones((4, 2), np.float32), x, W, argmax)


# ----------------------------------------------------------------------------------------
# RBF
# ----------------------------------------------------------------------------------------


def rbf_cases():
    Ns, Ds, Ms = [1, 3, 17], [1, 2, 7, 31], [1, 4, 13]
    cases = {(Ns[i % 3], Ds[i % 4], Ms[i % 3]) for i in range(12)}
    return sorted(cases | {(2, 1, 1), (17, 31, 13), (100, 784, 100)})


def rbf_data(rng, N, D, M, dtype):
    centers = rng.standard_normal((M, D))
    x = rng.standard_normal((N, D))
    # Some inputs sit on a centre or next to one: distances ~0, where |x|^2 + |c|^2 - 2 x.c cancels.
    for n in range(0, N, 3):
        x[n] = centers[n % M] + (0 if n % 2 else 1e-3) * rng.standard_normal(D)
    widths = np.sqrt(D) * (0.5 + rng.random(M)) * np.where(rng.random(M) < 0.3, -1, 1)
    return x.astype(dtype), centers.astype(dtype), widths.astype(dtype)


def rbf_sq_magnitude(x, c):
    """(N, M): the sum of |terms| of ||x||^2 + ||c||^2 - 2 x.c, which bounds both ways of
    computing a squared distance (differences, or the expansion)."""
    ax, ac = np.abs(x.astype(np.float64)), np.abs(c.astype(np.float64))
    return (ax**2).sum(1)[:, None] + (ac**2).sum(1)[None, :] + 2 * ax @ ac.T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,M", rbf_cases())
def test_rbf(N, D, M, dtype):
    rng = seed("rbf", N, D, M, dtype)
    x, c, w = rbf_data(rng, N, D, M, dtype)
    (out,), (rout,) = both("rbf_forward", [np.full((N, M), np.nan, dtype)], x, c, w)
    sq_mag = rbf_sq_magnitude(x, c)
    w2 = w.astype(np.float64) ** 2
    # Each backend's squared distance errs by at most gamma(D + 3) * sq_mag; that error divided
    # by 2 w^2 is an absolute error of the exponent, i.e. a relative error of out, on top of
    # exp's own ulps.
    rel = 2 * gamma(D + 3, dtype) * sq_mag / (2 * w2) + ULPS_ELEMENTWISE * np.finfo(dtype).eps
    err = np.abs(out.astype(np.float64) - rout)
    bound = rel * np.abs(rout.astype(np.float64)) + tiny(dtype)
    assert (err <= bound).all(), f"rbf out: worst {err.max():.3g} vs bound {bound.flat[np.argmax(err - bound)]:.3g}"
    assert (out >= 0).all() and (out <= 1).all()

    dout = rng.standard_normal((N, M)).astype(dtype)
    dc0, dw0 = rng.standard_normal(c.shape).astype(dtype), rng.standard_normal(w.shape).astype(dtype)
    (dx, dc, dw), (rdx, rdc, rdw) = both(
        "rbf_backward", [np.full((N, D), np.nan, dtype), dc0, dw0], dout, x, c, w, rout
    )
    # g = dout * out / w^2 is the same rounded number in both backends.
    g = np.abs(dout.astype(np.float64) * rout / w2)
    ax, ac = np.abs(x.astype(np.float64)), np.abs(c.astype(np.float64))
    assert_close_reduction(dx, rdx, g @ ac + ax * g.sum(1, keepdims=True), M + 2, dtype, "rbf dx")
    assert_close_reduction(dc, rdc, np.abs(dc0) + g.T @ ax + ac * g.sum(0)[:, None], N + 2, dtype, "rbf dcenters")
    # dwidths sums N terms g * d2 / w, each d2 carrying its own error of gamma(D + 3) * sq_mag.
    dw_mag = np.abs(dw0) + (g * sq_mag).sum(0) / np.abs(w)
    assert_close_reduction(dw, rdw, dw_mag, N + D + 4, dtype, "rbf dwidths")

    dc2, dw2 = dc0.copy(), dw0.copy()
    _native.rbf_backward(None, dc2, dw2, dout, x, c, w, rout)
    np.testing.assert_array_equal(dc2, dc)
    np.testing.assert_array_equal(dw2, dw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "dtype,width", [(np.float32, 0.0), (np.float32, 1e-30), (np.float64, -0.0), (np.float64, 1e-170)]
)
def test_rbf_rejects_widths_whose_square_is_zero(impl, dtype, width):
    x, c = np.ones((2, 3), dtype), np.zeros((2, 3), dtype)
    w = np.array([1.0, width], dtype)
    with pytest.raises(ValueError, match="widths"):
        impl.rbf_forward(np.empty((2, 2), dtype), x, c, w)
    with pytest.raises(ValueError, match="widths"):
        ones = np.ones((2, 2), dtype)
        impl.rbf_backward(None, np.zeros_like(c), np.zeros_like(w), ones, x, c, w, ones)


def test_rbf_small_width_that_squares_fine_in_float64():
    x, c = np.ones((2, 3)), np.ones((2, 3))
    w = np.array([1.0, 1e-30])  # square 1e-60: fine in float64 (it underflows in float32)
    (out,), (rout,) = both("rbf_forward", [np.empty((2, 2))], x, c, w)
    np.testing.assert_array_equal(out, rout)
    np.testing.assert_array_equal(out, np.ones((2, 2)))  # x on the centres: distance exactly 0


# ----------------------------------------------------------------------------------------
# MSE
# ----------------------------------------------------------------------------------------

MSE_SHAPES = [(1,), (7,), (4097,), ((1 << 16) + 3,), (3, 5), (100, 10), (2, 3, 4, 5), (17, 3, 7, 7)]
MSE_SHAPES += [(0,), (0, 3), (3, 0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MSE_SHAPES, ids=str)
def test_mse(shape, dtype):
    rng = seed("mse", shape, dtype)
    y = (rng.standard_normal(shape) * 3).astype(dtype)
    t = rng.standard_normal(shape).astype(dtype)
    y_before, t_before = y.copy(), t.copy()
    got, want = _native.mse_forward(y, t), reference.mse_forward(y, t)
    assert isinstance(got, float)
    np.testing.assert_array_equal(y, y_before)
    np.testing.assert_array_equal(t, t_before)
    N = shape[0]
    d = y.astype(np.float64) - t
    magnitude = 0.5 * (d * d).sum() / N if N else 0.0
    # Both sum n squares of a float64 difference (itself rounded once), in float64.
    assert_close_reduction(got, want, magnitude, y.size + 3, np.float64, "mse forward")
    for dloss in (1.0, 0.5, 3, np.float32(2.5)):
        (got,), (want,) = both("mse_backward", [np.full(shape, np.nan, dtype)], y, t, dloss)
        np.testing.assert_array_equal(got, want, err_msg=f"mse backward dloss={dloss!r}")


@pytest.mark.parametrize("impl", IMPLS)
def test_mse_inputs_may_be_one_array(impl):
    y = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert impl.mse_forward(y, y) == 0.0
    dy = np.full_like(y, np.nan)
    impl.mse_backward(dy, y, y, 1.0)
    np.testing.assert_array_equal(dy, np.zeros_like(y))


@pytest.mark.parametrize("impl", IMPLS)
def test_mse_propagates_nan_and_inf(impl):
    y = np.array([[1.0, np.inf]], np.float32)
    assert impl.mse_forward(y, np.zeros_like(y)) == np.inf
    y[0, 1] = np.nan
    assert np.isnan(impl.mse_forward(y, np.zeros_like(y)))


# ----------------------------------------------------------------------------------------
# Argument checks, native and oracle alike
# ----------------------------------------------------------------------------------------


def calls(dtype=np.float32):
    """kernel -> (arguments, indices of the outputs, index of an input to spoil). Small,
    valid argument lists; each fault below replaces one argument."""
    f = lambda *s: np.ones(s, dtype)  # noqa: E731
    x4 = f(4, 3)
    return {
        "leaky_relu_forward": ([f(4, 3), x4, 0.1], [0], 1),
        "leaky_relu_backward": ([f(4, 3), f(4, 3), x4, 0.1], [0], 2),
        "prelu_forward": ([f(4, 3), x4, f(3)], [0], 1),
        "prelu_backward": ([f(4, 3), f(3), f(4, 3), x4, f(3)], [0, 1], 3),
        "sigmoid_forward": ([f(4, 3), x4], [0], 1),
        "sigmoid_backward": ([f(4, 3), f(4, 3), x4], [0], 2),
        "tanh_forward": ([f(4, 3), x4], [0], 1),
        "tanh_backward": ([f(4, 3), f(4, 3), x4], [0], 2),
        "hardtanh_forward": ([f(4, 3), x4, -1.0, 1.0], [0], 1),
        "hardtanh_backward": ([f(4, 3), f(4, 3), x4, -1.0, 1.0], [0], 2),
        "softplus_forward": ([f(4, 3), x4], [0], 1),
        "softplus_backward": ([f(4, 3), f(4, 3), x4], [0], 2),
        "identity_forward": ([f(4, 3), x4], [0], 1),
        "identity_backward": ([f(4, 3), x4], [0], 1),
        "softmax_forward": ([f(4, 3), x4], [0], 1),
        "softmax_backward": ([f(4, 3), f(4, 3), x4], [0], 2),
        # K = N pieces, so that b (K, M) has the shape of out (N, M) and can alias it.
        "maxout_forward": ([f(4, 2), np.zeros((4, 2), np.int32), x4, f(4, 3, 2), f(4, 2)], [0, 1], 2),
        "maxout_backward": ([f(4, 3), f(2, 3, 2), f(2, 2), f(4, 2), x4, f(2, 3, 2), np.zeros((4, 2), np.int32)],
                            [0, 1, 2], 4),
        # M = D units, so that out (N, M) has the shape of x (N, D) and can alias it.
        "rbf_forward": ([f(4, 3), x4, f(3, 3), f(3)], [0], 1),
        "rbf_backward": ([f(4, 3), f(2, 3), f(2), f(4, 2), x4, f(2, 3), f(2), f(4, 2)], [0, 1, 2], 4),
        "mse_forward": ([x4, f(4, 3)], [], 0),
        "mse_backward": ([f(4, 3), x4, f(4, 3), 1.0], [0], 1),
    }


KERNELS = sorted(calls())


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def transposed(a):
    return np.ascontiguousarray(np.swapaxes(a, 0, -1)).swapaxes(0, -1) if a.ndim > 1 else a[::-1]


def negative_stride(a):
    return np.ascontiguousarray(a[::-1])[::-1]


def grown(a):
    return np.ones((a.shape[0] + 1,) + a.shape[1:], a.dtype)


FAULTS = {
    # name: (transform of the spoiled input, exception)
    "int32 input": (lambda a: a.astype(np.int32), TypeError),
    "float16 input": (lambda a: a.astype(np.float16), TypeError),
    "list input": (lambda a: a.tolist(), TypeError),
    "transposed view": (transposed, ValueError),
    "negative stride": (negative_stride, ValueError),
    "wrong shape": (grown, ValueError),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("kernel", KERNELS)
def test_bad_input(kernel, fault, impl):
    args, _, i = calls()[kernel]
    make, exc = FAULTS[fault]
    args[i] = make(args[i])
    with pytest.raises(exc):
        getattr(impl, kernel)(*args)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", [k for k in KERNELS if calls()[k][1]])
def test_bad_outputs(kernel, impl):
    fn = getattr(impl, kernel)
    for o in calls()[kernel][1]:
        for fault, exc in (("mixed dtype", TypeError), ("read-only", ValueError), ("wrong shape", ValueError),
                           ("transposed", ValueError), ("negative stride", ValueError)):
            args = calls()[kernel][0]
            a = args[o]
            if fault == "mixed dtype":
                if a.dtype == np.int32:
                    args[o] = a.astype(np.int64)
                else:
                    args[o] = a.astype(np.float64)
            elif fault == "read-only":
                args[o] = readonly(a)
            elif fault == "wrong shape":
                args[o] = grown(a)
            elif fault == "transposed":
                args[o] = transposed(a)
            else:
                args[o] = negative_stride(a)
            with pytest.raises(exc):
                fn(*args)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_dtype_input(kernel, impl):
    args, outs, _ = calls(np.float64)[kernel]
    ref = calls(np.float32)[kernel][0]
    inputs = [j for j, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype == np.float64 and j not in outs]
    assert inputs
    for j in inputs:  # each floating input in float32 while the rest are float64
        spoiled = list(args)
        spoiled[j] = ref[j]
        with pytest.raises(TypeError):
            getattr(impl, kernel)(*spoiled)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", [k for k in KERNELS if calls()[k][1]])
def test_aliasing_outputs_rejected(kernel, impl):
    """Every output against every array of the same shape and dtype: whole-array aliasing,
    and an overlapping view of one buffer for the element-wise case."""
    args, outs, _ = calls()[kernel]
    fn = getattr(impl, kernel)
    tried = 0
    for o in outs:
        for j, a in enumerate(args):
            if j == o or not isinstance(a, np.ndarray) or a.shape != args[o].shape or a.dtype != args[o].dtype:
                continue
            spoiled = list(args)
            spoiled[o] = spoiled[j]
            with pytest.raises(ValueError, match="overlap"):
                fn(*spoiled)
            tried += 1
    assert tried, "no aliasing case"
    if kernel.endswith("_forward") and args[0].shape == args[1].shape == (4, 3):
        buf = np.ones(13, args[1].dtype)
        spoiled = list(args)
        spoiled[0], spoiled[1] = buf[1:].reshape(4, 3), buf[:12].reshape(4, 3)  # shifted by one element
        with pytest.raises(ValueError, match="overlap"):
            fn(*spoiled)


@pytest.mark.parametrize("impl", IMPLS)
def test_hyper_parameters_checked(impl):
    x, out = np.ones(5, np.float32), np.empty(5, np.float32)
    for alpha, exc in ((np.inf, ValueError), (np.nan, ValueError), (1e39, ValueError), (True, TypeError),
                       ("0.1", TypeError), (None, TypeError)):
        with pytest.raises(exc):
            impl.leaky_relu_forward(out, x, alpha)
        with pytest.raises(exc):
            impl.leaky_relu_backward(out, x.copy(), x, alpha)
    impl.leaky_relu_forward(np.empty(5), np.ones(5), 1e39)  # finite in float64
    for lo, hi, exc in ((1.0, 1.0, ValueError), (2.0, 1.0, ValueError), (np.nan, 1.0, ValueError),
                        (0.0, np.nan, ValueError), (False, 1.0, TypeError), (0.0, "1", TypeError)):
        with pytest.raises(exc):
            impl.hardtanh_forward(out, x, lo, hi)
        with pytest.raises(exc):
            impl.hardtanh_backward(out, x.copy(), x, lo, hi)
    for dloss in (True, "1", None):
        with pytest.raises(TypeError):
            impl.mse_backward(out, x, x.copy(), dloss)


@pytest.mark.parametrize("impl", IMPLS)
def test_shape_rules(impl):
    f = np.float32
    with pytest.raises(ValueError):  # per-channel alpha on 1-D x
        impl.prelu_forward(np.empty(3, f), np.ones(3, f), np.ones(3, f))
    with pytest.raises(ValueError):  # alpha length != channels
        impl.prelu_forward(np.empty((2, 3), f), np.ones((2, 3), f), np.ones(2, f))
    with pytest.raises(ValueError):  # alpha not 1-D
        impl.prelu_forward(np.empty((2, 3), f), np.ones((2, 3), f), np.ones((1, 1), f))
    with pytest.raises(ValueError):  # dalpha shape
        impl.prelu_backward(np.empty((2, 3), f), np.zeros(1, f), np.ones((2, 3), f), np.ones((2, 3), f), np.ones(3, f))
    for shape in ((3,), (2, 3, 4), (3, 0)):  # softmax: 2-D with at least one column
        with pytest.raises(ValueError):
            impl.softmax_forward(np.empty(shape, f), np.ones(shape, f))
    with pytest.raises(ValueError):  # no pieces
        impl.maxout_forward(np.empty((2, 2), f), np.empty((2, 2), np.int32), np.ones((2, 3), f),
                            np.ones((0, 3, 2), f), np.ones((0, 2), f))
    with pytest.raises(ValueError):  # W feature axis != D
        impl.maxout_forward(np.empty((2, 2), f), np.empty((2, 2), np.int32), np.ones((2, 3), f),
                            np.ones((1, 4, 2), f), np.ones((1, 2), f))
    with pytest.raises(ValueError):  # centers feature axis != D
        impl.rbf_forward(np.empty((2, 2), f), np.ones((2, 3), f), np.ones((2, 4), f), np.ones(2, f))
    with pytest.raises(ValueError):  # y must have a batch axis
        impl.mse_forward(np.ones((), f), np.ones((), f))
    with pytest.raises(ValueError):  # t shape
        impl.mse_forward(np.ones((2, 3), f), np.ones((3, 2), f))


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_size(impl):
    f = np.float32
    for name in ("sigmoid_forward", "tanh_forward", "softplus_forward", "identity_forward"):
        getattr(impl, name)(np.empty((0, 3), f), np.ones((0, 3), f))
    out, am = np.empty((0, 2), f), np.empty((0, 2), np.int32)
    impl.maxout_forward(out, am, np.ones((0, 3), f), np.ones((2, 3, 2), f), np.ones((2, 2), f))
    dW, db = np.ones((2, 3, 2), f), np.ones((2, 2), f)
    impl.maxout_backward(np.empty((0, 3), f), dW, db, np.ones((0, 2), f), np.ones((0, 3), f), np.ones((2, 3, 2), f), am)
    np.testing.assert_array_equal(dW, 1)
    # M = 0 units: dx is a sum over nothing, so zeros.
    dx = np.full((4, 3), np.nan, f)
    impl.maxout_backward(dx, np.ones((2, 3, 0), f), np.ones((2, 0), f), np.ones((4, 0), f), np.ones((4, 3), f),
                         np.ones((2, 3, 0), f), np.empty((4, 0), np.int32))
    np.testing.assert_array_equal(dx, 0)
    dx = np.full((4, 3), np.nan, f)
    impl.rbf_backward(dx, np.ones((0, 3), f), np.ones(0, f), np.ones((4, 0), f), np.ones((4, 3), f),
                      np.ones((0, 3), f), np.ones(0, f), np.ones((4, 0), f))
    np.testing.assert_array_equal(dx, 0)
    # D = 0 features: every distance is 0, every maxout piece is its bias.
    out = np.full((3, 2), np.nan, f)
    impl.rbf_forward(out, np.ones((3, 0), f), np.ones((2, 0), f), np.ones(2, f))
    np.testing.assert_array_equal(out, 1)
    out, am = np.full((3, 2), np.nan, f), np.full((3, 2), -1, np.int32)
    impl.maxout_forward(out, am, np.ones((3, 0), f), np.ones((2, 0, 2), f), np.array([[1, 5], [2, 0]], f))
    np.testing.assert_array_equal(out, [[2, 5]] * 3)
    np.testing.assert_array_equal(am, [[1, 0]] * 3)


# ----------------------------------------------------------------------------------------
# Bit-identical with 1 and 2 threads
# ----------------------------------------------------------------------------------------


def thread_cases(dtype):
    """Inputs big enough that every kernel splits its work over 2 threads."""
    rng = np.random.default_rng(99)
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    n = (1 << 17) + 5
    x, g = r(n), r(n)
    y = np.empty_like(x)
    reference.sigmoid_forward(y, x)
    x4, g4 = r(64, 16, 12, 13), r(64, 16, 12, 13)
    x2, g2 = r(4096, 33), r(4096, 33)
    sx, sg = r(300, 1000), r(300, 1000)
    sy = np.empty_like(sx)
    reference.softmax_forward(sy, sx)
    mx, mW, mb, mg = r(256, 300), r(3, 300, 64) * 0.1, r(3, 64), r(256, 64)
    mam = np.empty((256, 64), np.int32)
    reference.maxout_forward(np.empty((256, 64), dtype), mam, mx, mW, mb)
    rx, rc, rw, rg = r(256, 300), r(64, 300), np.full(64, 20.0, dtype), r(256, 64)
    ro = np.empty((256, 64), dtype)
    reference.rbf_forward(ro, rx, rc, rw)
    e = lambda *s: np.zeros(s, dtype)  # noqa: E731
    return [
        ("leaky_relu_forward", [e(n)], (x, 0.1)),
        ("leaky_relu_backward", [e(n)], (g, x, 0.1)),
        ("prelu_forward", [e(*x4.shape)], (x4, r(16))),
        ("prelu_backward", [e(*x4.shape), e(16)], (g4, x4, r(16))),
        ("prelu_backward", [e(*x2.shape), e(33)], (g2, x2, r(33))),
        ("prelu_backward", [e(n), e(1)], (g, x, r(1))),
        ("sigmoid_forward", [e(n)], (x,)),
        ("sigmoid_backward", [e(n)], (g, y)),
        ("tanh_forward", [e(n)], (x,)),
        ("tanh_backward", [e(n)], (g, y)),
        ("hardtanh_forward", [e(n)], (x, -1.0, 1.0)),
        ("hardtanh_backward", [e(n)], (g, x, -1.0, 1.0)),
        ("softplus_forward", [e(n)], (x,)),
        ("softplus_backward", [e(n)], (g, x)),
        ("identity_forward", [e(n)], (x,)),
        ("identity_backward", [e(n)], (g,)),
        ("softmax_forward", [e(300, 1000)], (sx,)),
        ("softmax_backward", [e(300, 1000)], (sg, sy)),
        ("maxout_forward", [e(256, 64), np.zeros((256, 64), np.int32)], (mx, mW, mb)),
        ("maxout_backward", [e(256, 300), e(3, 300, 64), e(3, 64)], (mg, mx, mW, mam)),
        ("rbf_forward", [e(256, 64)], (rx, rc, rw)),
        ("rbf_backward", [e(256, 300), e(64, 300), e(64)], (rg, rx, rc, rw, ro)),
        ("mse_backward", [e(n)], (x, g, 0.5)),
    ]


def run_cases(cases, threads):
    fastlayers.backend.set_num_threads(threads)
    runs = []
    for name, outs, args in cases:
        outs = [o.copy() for o in outs]
        getattr(_native, name)(*outs, *args)
        runs.append(outs)
    return runs


@pytest.mark.skipif(not fastlayers.build_info()["openmp"], reason="one thread only without OpenMP")
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_with_1_and_2_threads(dtype):
    cases = thread_cases(dtype)
    n = (1 << 18) + 3
    y, t = np.random.default_rng(1).standard_normal((2, n)).astype(dtype)
    saved = fastlayers.backend.get_num_threads()
    try:
        one, two, again = run_cases(cases, 1), run_cases(cases, 2), run_cases(cases, 2)
        mse = {}
        for threads in (1, 2):
            fastlayers.backend.set_num_threads(threads)
            mse[threads] = _native.mse_forward(y, t)
    finally:
        fastlayers.backend.set_num_threads(saved)
    assert mse[1] == mse[2], "mse_forward: results differ between 1 and 2 threads"
    for (name, _, _), a1, a2, a3 in zip(cases, one, two, again):
        for i, (r1, r2, r3) in enumerate(zip(a1, a2, a3)):
            assert np.array_equal(r2, r3), f"{name} output {i}: two runs with 2 threads differ"
            # GEMM outputs included: the BLAS seam tiles GEMMs by shape, not thread count.
            assert np.array_equal(r1, r2), f"{name} output {i}: results differ between 1 and 2 threads"
