"""Native pooling, batch normalisation and dropout kernels against the NumPy oracle.

Max pooling, dropout and scaling are selection or a fixed sequence of roundings, so native
and oracle agree bit for bit; averages and batch statistics are compared with the rounding
bounds of tests/tolerance.py, with magnitudes computed in float64 from absolute values.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastlayers import reference as R
from fastlayers.backend import _native as N
from fastlayers.backend import get_num_threads, set_num_threads
from fastlayers.numerical import numerical_gradient
from fastlayers.reference.norm import uniform

from .tolerance import assert_close_reduction, numerical_gradient_rtol

DTYPES = [np.float32, np.float64]
F64 = np.float64
BITS = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def assert_same_bits(got, want, what=""):
    """Equal bit patterns: NaN payloads and the sign of zero included."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if got.dtype.kind == "f":
        got, want = got.view(BITS[got.dtype]), want.view(BITS[want.dtype])
    bad = got != want
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.size} entries differ"


def both(kernel, make_args):
    """Runs `kernel` on fresh arguments from make_args() in each backend; returns (native, oracle) args."""
    out = []
    for impl in (N, R):
        args = make_args()
        getattr(impl, kernel)(*args)
        out.append(args)
    return out


# --- pooling -----------------------------------------------------------------------------

POOL_AXES = {
    "N": [1, 2, 3, 17],
    "C": [1, 3, 16, 17],
    "H": list(range(1, 13)),
    "W": list(range(1, 13)),
    "PH": list(range(1, 6)),
    "PW": list(range(1, 6)),
    "stride": [1, 2, 3],
    "pad": [0, 1, 2],
}


def pool_valid(c):
    return (c["pad"] <= c["PH"] // 2 and c["pad"] <= c["PW"] // 2
            and c["H"] + 2 * c["pad"] >= c["PH"] and c["W"] + 2 * c["pad"] >= c["PW"])


def pool_cases():
    """Every value of every axis at least once, a seeded random sample, outputs of size 1, and
    the 2x2 stride-2 fast path over widths that end a vector early, exactly and late."""
    rng = random.Random(20240531)
    cases = []

    def draw(**fixed):
        while True:
            c = {a: rng.choice(v) for a, v in POOL_AXES.items()}
            c.update(fixed)
            if pool_valid(c):
                return c

    for axis, values in POOL_AXES.items():
        for v in values:
            cases.append(draw(**{axis: v}))
    for _ in range(60):
        cases.append(draw())
    for PH, PW, pad in [(1, 1, 0), (3, 2, 0), (5, 5, 2), (4, 3, 1), (2, 5, 0), (3, 3, 1)]:
        # The padded plane is exactly the window: one output per plane.
        cases.append(dict(N=2, C=3, H=PH - 2 * pad, W=PW - 2 * pad, PH=PH, PW=PW, stride=rng.choice([1, 2, 3]),
                          pad=pad))
    for i, W in enumerate([2, 3, 7, 9, 15, 16, 17, 18, 24, 31, 32, 33, 34, 40]):
        # Odd and even numbers of output rows: narrow rows are pooled two per vector.
        cases.append(dict(N=2, C=3, H=(2, 5, 7, 8)[i % 4], W=W, PH=2, PW=2, stride=2, pad=0))
    assert all(pool_valid(c) for c in cases)
    return cases


POOL_CASES = pool_cases()


def pool_id(c):
    return "N{N}C{C}H{H}W{W}k{PH}x{PW}s{stride}p{pad}".format(**c)


def pool_input(c, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (c["N"], c["C"], c["H"], c["W"])
    if seed % 2:
        # Small integers: many ties, so "first maximum in window order" is exercised.
        return rng.integers(-3, 4, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def pool_out_shape(c):
    OH = (c["H"] + 2 * c["pad"] - c["PH"]) // c["stride"] + 1
    OW = (c["W"] + 2 * c["pad"] - c["PW"]) // c["stride"] + 1
    return (c["N"], c["C"], OH, OW)


def max_overlap(c):
    """Most windows any one input element belongs to."""
    return -(-c["PH"] // c["stride"]) * -(-c["PW"] // c["stride"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_maxpool_matches_oracle(case, dtype):
    seed = POOL_CASES.index(case)
    x = pool_input(case, dtype, seed)
    x0 = x.copy()
    oshape = pool_out_shape(case)
    hyper = (case["PH"], case["PW"], case["stride"], case["pad"])
    (o, a, _, *_), (ro, ra, _, *_) = both(
        "maxpool2d_forward",
        lambda: (np.full(oshape, np.nan, dtype), np.full(oshape, -7, np.int32), x, *hyper))
    assert_same_bits(o, ro, "out")
    np.testing.assert_array_equal(a, ra, err_msg="argmax")
    assert_same_bits(x, x0, "x unchanged")

    dout = np.random.default_rng(seed + 1).standard_normal(oshape).astype(dtype)
    (dx, *_), (rdx, *_) = both("maxpool2d_backward", lambda: (np.full(x.shape, np.nan, dtype), dout, ra))
    if max_overlap(case) == 1:
        assert_same_bits(dx, rdx, "dx")  # each element receives at most one entry: a copy
    else:
        mag = np.zeros(x.shape, F64)
        R.maxpool2d_backward(mag, np.abs(dout).astype(F64), ra)
        assert_close_reduction(dx, rdx, mag, max_overlap(case), dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_avgpool_matches_oracle(case, dtype):
    seed = POOL_CASES.index(case)
    x = pool_input(case, dtype, seed)
    oshape = pool_out_shape(case)
    hyper = (case["PH"], case["PW"], case["stride"], case["pad"])
    (o, *_), (ro, *_) = both("avgpool2d_forward", lambda: (np.full(oshape, np.nan, dtype), x, *hyper))
    mag = np.empty(oshape, F64)
    R.avgpool2d_forward(mag, np.abs(x).astype(F64), *hyper)  # window sum of |x| / count
    assert_close_reduction(o, ro, mag, case["PH"] * case["PW"] + 1, dtype, "out")

    dout = np.random.default_rng(seed + 1).standard_normal(oshape).astype(dtype)
    (dx, *_), (rdx, *_) = both("avgpool2d_backward", lambda: (np.full(x.shape, np.nan, dtype), dout, *hyper))
    mag = np.empty(x.shape, F64)
    R.avgpool2d_backward(mag, np.abs(dout).astype(F64), *hyper)
    assert_close_reduction(dx, rdx, mag, max_overlap(case) + 1, dtype, "dx")


SPECIALS = [np.nan, -np.inf, np.inf, -0.0, 0.0, 1.0, -1.0, 2.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("PH,PW,stride,pad", [(2, 2, 2, 0), (3, 3, 1, 1), (2, 3, 1, 1), (5, 4, 2, 2), (3, 1, 3, 0)])
def test_maxpool_nan_inf_and_signed_zeros(dtype, PH, PW, stride, pad):
    rng = np.random.default_rng(PH * 100 + PW * 10 + pad)
    x = rng.choice(np.array(SPECIALS, dtype), size=(3, 4, 9, 11))
    x[0, 0] = -np.inf  # a plane of -inf: every window reports its first real element
    x[0, 1, :, 1::2] = np.nan  # many windows with several NaNs: the first one wins
    oshape = pool_out_shape(dict(N=3, C=4, H=9, W=11, PH=PH, PW=PW, stride=stride, pad=pad))
    (o, a, *_), (ro, ra, *_) = both(
        "maxpool2d_forward", lambda: (np.empty(oshape, dtype), np.empty(oshape, np.int32), x, PH, PW, stride, pad))
    assert_same_bits(o, ro, "out")
    np.testing.assert_array_equal(a, ra, err_msg="argmax")


def test_maxpool_semantics_by_hand():
    # Window order is row-major; the first NaN wins over later NaNs and over +inf; ties keep
    # the first maximum; -0.0 and 0.0 tie.
    x = np.array([[[[1.0, np.nan, 7.0, 7.0, -0.0, 0.0, -np.inf, -np.inf],
                    [np.inf, np.nan, 7.0, 7.0, 0.0, -0.0, -np.inf, -np.inf]]]])
    out, am = np.empty((1, 1, 1, 4)), np.empty((1, 1, 1, 4), np.int32)
    N.maxpool2d_forward(out, am, x, 2, 2, 2, 0)
    np.testing.assert_array_equal(am, [[[[1, 2, 4, 6]]]])
    assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == 7.0 and out[0, 0, 0, 3] == -np.inf
    assert np.signbit(out[0, 0, 0, 2])  # the first of the tied zeros, -0.0
    # All -inf with padding: the first in-bounds element, not padding.
    x = np.full((1, 1, 3, 3), -np.inf)
    out, am = np.empty((1, 1, 3, 3)), np.empty((1, 1, 3, 3), np.int32)
    N.maxpool2d_forward(out, am, x, 3, 3, 1, 1)
    np.testing.assert_array_equal(am[0, 0], [[0, 0, 1], [0, 0, 1], [3, 3, 4]])


def test_maxpool_backward_overlapping_windows_by_hand():
    # 3x3 windows, stride 1: the centre wins all four windows and collects all four entries.
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1:3, 1:3] = [[9.0, 1.0], [1.0, 1.0]]
    out, am = np.empty((1, 1, 2, 2)), np.empty((1, 1, 2, 2), np.int32)
    N.maxpool2d_forward(out, am, x, 3, 3, 1, 0)
    np.testing.assert_array_equal(am, np.full((1, 1, 2, 2), 5))
    dx = np.full(x.shape, np.nan)
    N.maxpool2d_backward(dx, np.array([[[[1.0, 2.0], [4.0, 8.0]]]]), am)
    want = np.zeros(x.shape)
    want[0, 0, 1, 1] = 15.0
    np.testing.assert_array_equal(dx, want)


def test_maxpool_backward_rejects_out_of_range_argmax():
    dout = np.ones((1, 2, 2, 2))
    for bad in (-1, 16, 2**31 - 1):
        am = np.zeros((1, 2, 2, 2), np.int32)
        am[0, 1, 1, 0] = bad
        for impl in (N, R):
            dx = np.full((1, 2, 4, 4), 5.0)
            with pytest.raises(ValueError, match="argmax") as info:
                impl.maxpool2d_backward(dx, dout, am)
            assert str(bad) in str(info.value)
            assert (dx == 5.0).all()  # refused before anything is written


@pytest.mark.parametrize("where", [0, 7, 8, 13, 4095, 8190, 8191])
def test_a_bad_argmax_is_found_anywhere_in_a_large_array(where):
    """The range check runs 8 indices a step (AVX-512) with a scalar tail: a bad index in the
    first or last step, on a step boundary or in the tail, is still reported exactly."""
    shape = (3, 7, 17, 23)  # 8,211 entries: not a whole number of 8-index steps
    dout = np.ones(shape, np.float32)
    for bad in (-3, 70 * 46, 2**31 - 1):
        am = np.random.default_rng(where).integers(0, 34 * 46, shape, dtype=np.int32)
        am.reshape(-1)[where] = bad
        dx = np.full((3, 7, 34, 46), 5.0, np.float32)
        with pytest.raises(ValueError, match="argmax") as info:
            N.maxpool2d_backward(dx, dout, am)
        assert f"holds index {bad};" in str(info.value)
        assert (dx == 5.0).all()


def test_avgpool_counts_in_bounds_elements_by_hand():
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    out = np.empty((1, 1, 2, 2))
    N.avgpool2d_forward(out, x, 2, 2, 2, 1)
    np.testing.assert_array_equal(out[0, 0], [[1.0, 2.5], [5.5, 7.0]])
    dx = np.full(x.shape, np.nan)
    N.avgpool2d_backward(dx, np.ones((1, 1, 2, 2)), 2, 2, 2, 1)
    np.testing.assert_array_equal(dx[0, 0], [[1.0, 0.5, 0.5], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])


# --- batch normalisation -----------------------------------------------------------------

BN_SHAPES = [
    (1, 1), (1, 7), (2, 3), (3, 64), (17, 65), (100, 100), (5, 130), (64, 1),
    (1, 1, 1, 1), (1, 3, 1, 1), (3, 17, 1, 1), (2, 3, 5, 3), (3, 16, 4, 4), (17, 17, 3, 3), (1, 16, 12, 12),
    (2, 1, 12, 11), (3, 3, 1, 7),
]
MOMENTA = [0.0, 0.1, 0.9, 1.0]


def bn_layout(shape):
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    bshape = (1, shape[1]) if len(shape) == 2 else (1, shape[1], 1, 1)
    return axes, bshape, int(np.prod(shape)) // shape[1]


def bn_inputs(shape, dtype, seed, offset=0.5):
    rng = np.random.default_rng(seed)
    F = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)
    gamma = (rng.standard_normal(F) + 1.0).astype(dtype)
    beta = rng.standard_normal(F).astype(dtype)
    return x, gamma, beta


def bn_train_bounds(x, gamma, beta, rm0, rv0, momentum):
    """float64 magnitudes for out, mean, invstd, running_mean, running_var of a training forward.

    The mean is a sum of |x|; the variance a sum of (x - mu)^2 whose terms are bounded by
    (|x| + |mu|)^2 (any algorithm, the naive one included: the stability test is stricter);
    invstd = (var + eps)^-1/2 moves by istd^3/2 per unit of var; out inherits the mean's error
    through istd*gamma and the variance's through |x - mu|*gamma.
    """
    axes, bshape, m = bn_layout(x.shape)
    xa = np.abs(x.astype(F64))
    mu = x.astype(F64).mean(axis=axes)
    var = ((x.astype(F64) - mu.reshape(bshape)) ** 2).mean(axis=axes)
    istd = 1 / np.sqrt(var + 1e-5)
    mag_mean = xa.mean(axis=axes)
    mag_var = ((xa + mag_mean.reshape(bshape)) ** 2).mean(axis=axes)
    mag_istd = 0.5 * istd**3 * mag_var + istd
    g = np.abs(gamma.astype(F64)).reshape(bshape)
    mag_out = ((xa + mag_mean.reshape(bshape)) * istd.reshape(bshape) * g
               + np.abs(x - mu.reshape(bshape)) * g * (0.5 * istd**3 * mag_var).reshape(bshape)
               + np.abs(beta.astype(F64)).reshape(bshape))
    unb = m / (m - 1) if m > 1 else 1.0
    mag_rm = momentum * np.abs(rm0.astype(F64)) + (1 - momentum) * mag_mean
    mag_rv = momentum * np.abs(rv0.astype(F64)) + (1 - momentum) * mag_var * unb
    return mag_out, mag_mean, mag_istd, mag_rm, mag_rv, m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
def test_batchnorm_forward_train_matches_oracle(shape, dtype, relu):
    seed = BN_SHAPES.index(shape)
    x, gamma, beta = bn_inputs(shape, dtype, seed)
    F = shape[1]
    rng = np.random.default_rng(seed + 50)
    rm0, rv0 = rng.standard_normal(F).astype(dtype), (rng.random(F) + 0.5).astype(dtype)
    momentum = MOMENTA[seed % len(MOMENTA)]
    inputs0 = [a.copy() for a in (x, gamma, beta)]
    kernel = "batchnorm_relu_forward_train" if relu else "batchnorm_forward_train"
    got, want = both(kernel, lambda: (np.full(shape, np.nan, dtype), np.full(F, np.nan, dtype),
                                      np.full(F, np.nan, dtype), rm0.copy(), rv0.copy(), x, gamma, beta,
                                      momentum, 1e-5))
    mag_out, mag_mean, mag_istd, mag_rm, mag_rv, m = bn_train_bounds(x, gamma, beta, rm0, rv0, momentum)
    # m terms of each sum plus the few element-wise roundings that follow it.
    for i, (what, mag) in enumerate(zip(("out", "mean", "invstd", "running_mean", "running_var"),
                                        (mag_out, mag_mean, mag_istd, mag_rm, mag_rv))):
        assert_close_reduction(got[i], want[i], mag, m + 4, dtype, what)
    if relu:
        assert (got[0] >= 0).all()
    for a, a0 in zip((x, gamma, beta), inputs0):
        assert_same_bits(a, a0, "input unchanged")


def test_batchnorm_single_element_keeps_biased_zero_variance():
    for shape in [(1, 2), (1, 2, 1, 1)]:
        x = np.array([3.0, -1.0]).reshape(shape)
        out, mean, invstd = np.empty_like(x), np.empty(2), np.empty(2)
        rm, rv = np.array([1.0, 1.0]), np.array([2.0, 4.0])
        N.batchnorm_forward_train(out, mean, invstd, rm, rv, x, np.ones(2), np.zeros(2), 0.5, 0.25)
        np.testing.assert_array_equal(mean, [3.0, -1.0])
        np.testing.assert_array_equal(invstd, [2.0, 2.0])
        np.testing.assert_array_equal(out.reshape(-1), [0.0, 0.0])
        np.testing.assert_array_equal(rm, [2.0, 0.0])
        np.testing.assert_array_equal(rv, [1.0, 2.0])


@pytest.mark.parametrize("layout", ["ND", "NCHW"])
@pytest.mark.parametrize("dtype,offset", [(np.float32, 1e4), (np.float64, 1e8)])
def test_batchnorm_variance_is_stable_for_a_large_mean(layout, dtype, offset):
    """|mean| >> std: E[x^2] - E[x]^2 loses every digit of the variance, two passes do not.

    The bound allows the rounding of the squared deviations (gamma_m * var) and the square of
    the worst-case error of the mean (gamma_m * max|x|)^2, the only way the mean's error enters
    a two-pass variance. The test checks that the naive formula, evaluated in the same
    precision, violates it on these data, so a kernel using it would fail.
    """
    shape = (512, 3) if layout == "ND" else (8, 3, 8, 8)
    axes, bshape, m = bn_layout(shape)
    rng = np.random.default_rng(11)
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    xd = x.astype(F64)
    exact = ((xd - xd.mean(axis=axes).reshape(bshape)) ** 2).sum(axis=axes) / (m - 1)
    g = m * np.finfo(dtype).eps / 2
    bound = 2 * g * exact + (2 * g * np.abs(xd).max()) ** 2 + np.finfo(dtype).eps * exact

    naive = ((x * x).mean(axis=axes) - x.mean(axis=axes) ** 2) * (m / (m - 1))
    assert (np.abs(naive - exact) > bound).any(), "the data must defeat E[x^2] - E[x]^2"

    F = shape[1]
    for impl in (N, R):
        rv = np.zeros(F, dtype)
        impl.batchnorm_forward_train(np.empty_like(x), np.empty(F, dtype), np.empty(F, dtype), np.zeros(F, dtype),
                                     rv, x, np.ones(F, dtype), np.zeros(F, dtype), 0.0, 1e-5)
        err = np.abs(rv.astype(F64) - exact)
        assert (err <= bound).all(), f"{impl.__name__}: variance error {err.max():.3g} > {bound.max():.3g}"


def bn_backward_bounds(dout, x, gamma, mean, invstd, dgamma0, dbeta0, gate):
    axes, bshape, m = bn_layout(x.shape)
    ga = np.abs(dout.astype(F64)) * gate
    istd = invstd.astype(F64).reshape(bshape)
    xh = (np.abs(x.astype(F64)) + np.abs(mean.astype(F64)).reshape(bshape)) * istd
    s_g, s_gx = ga.sum(axis=axes), (ga * xh).sum(axis=axes)
    mag_dx = (np.abs(gamma.astype(F64)).reshape(bshape) * istd / max(m, 1)) * (
        m * ga + s_g.reshape(bshape) + xh * s_gx.reshape(bshape))
    return mag_dx, s_gx + np.abs(dgamma0), s_g + np.abs(dbeta0), m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
def test_batchnorm_backward_matches_oracle(shape, dtype, relu):
    seed = BN_SHAPES.index(shape)
    x, gamma, beta = bn_inputs(shape, dtype, seed)
    F = shape[1]
    out, mean, invstd = np.empty_like(x), np.empty(F, dtype), np.empty(F, dtype)
    R.batchnorm_relu_forward_train(out, mean, invstd, np.zeros(F, dtype), np.ones(F, dtype), x, gamma, beta,
                                   0.9, 1e-5)
    rng = np.random.default_rng(seed + 100)
    dout = rng.standard_normal(shape).astype(dtype)
    dg0, db0 = rng.standard_normal(F).astype(dtype), rng.standard_normal(F).astype(dtype)
    kernel = "batchnorm_relu_backward" if relu else "batchnorm_backward"
    extra = (out,) if relu else ()
    got, want = both(kernel, lambda: (np.full(shape, np.nan, dtype), dg0.copy(), db0.copy(), dout, x, gamma,
                                      mean, invstd, *extra))
    gate = (out > 0) if relu else np.ones(shape, bool)
    mag_dx, mag_dg, mag_db, m = bn_backward_bounds(dout, x, gamma, mean, invstd, dg0, db0, gate)
    assert_close_reduction(got[0], want[0], mag_dx, m + 4, dtype, "dx")
    assert_close_reduction(got[1], want[1], mag_dg, m + 2, dtype, "dgamma")
    assert_close_reduction(got[2], want[2], mag_db, m + 1, dtype, "dbeta")
    # dx = None skips dx and accumulates the same parameter gradients.
    dg, db = dg0.copy(), db0.copy()
    getattr(N, kernel)(None, dg, db, dout, x, gamma, mean, invstd, *extra)
    assert_same_bits(dg, got[1], "dgamma without dx")
    assert_same_bits(db, got[2], "dbeta without dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES[::2], ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
def test_batchnorm_forward_eval_matches_oracle(shape, dtype, relu):
    seed = BN_SHAPES.index(shape)
    x, gamma, beta = bn_inputs(shape, dtype, seed)
    F = shape[1]
    rng = np.random.default_rng(seed + 200)
    rm, rv = rng.standard_normal(F).astype(dtype), (rng.random(F) + 0.1).astype(dtype)
    kernel = "batchnorm_relu_forward_eval" if relu else "batchnorm_forward_eval"
    (o, *_), (ro, *_) = both(kernel, lambda: (np.full(shape, np.nan, dtype), x, gamma, beta, rm, rv, 1e-5))
    _, bshape, _ = bn_layout(shape)
    istd = 1 / np.sqrt(rv.astype(F64) + 1e-5)
    mag = ((np.abs(x.astype(F64)) + np.abs(rm.astype(F64)).reshape(bshape)) * (istd * np.abs(gamma)).reshape(bshape)
           + np.abs(beta.astype(F64)).reshape(bshape))
    # Element-wise: x - rm, rv + eps, sqrt, 1/., two products and a sum.
    assert_close_reduction(o, ro, mag, 7, dtype, "out")


def test_batchnorm_eval_accepts_inputs_that_share_memory():
    # The BatchNorm layer's evaluation backward passes one zero vector as beta and running_mean.
    x, gamma, _ = bn_inputs((5, 4), np.float64, 0)
    zeros = np.zeros(4)
    got, want = both("batchnorm_forward_eval", lambda: (np.empty_like(x), x, gamma, zeros, zeros, gamma * gamma, 1e-5))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-15, atol=0)


@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 2, 3)])
def test_fused_oracles_match_numerical_gradient(shape):
    rng = np.random.default_rng(5)
    x, gamma, beta = bn_inputs(shape, F64, 5)
    F = shape[1]
    w = rng.standard_normal(shape)
    out, mean, invstd = np.empty_like(x), np.empty(F), np.empty(F)

    def loss():
        R.batchnorm_relu_forward_train(out, mean, invstd, np.zeros(F), np.ones(F), x, gamma, beta, 0.9, 1e-5)
        return float(np.sum(out * w))

    loss()
    y = np.empty_like(x)
    R.batchnorm_forward_train(y, mean.copy(), invstd.copy(), np.zeros(F), np.ones(F), x, gamma, beta, 0.9, 1e-5)
    assert np.abs(y).min() > 1e-3, "no pre-activation within a step of the ReLU kink"
    np.testing.assert_array_equal(out, np.maximum(y, 0))
    numeric = {what: numerical_gradient(loss, wrt) for what, wrt in (("dx", x), ("dgamma", gamma), ("dbeta", beta))}
    loss()  # out, mean and invstd at the unperturbed point again
    rtol = numerical_gradient_rtol()
    for impl in (R, N):
        dx, dg, db = np.full_like(x, np.nan), np.zeros(F), np.zeros(F)
        impl.batchnorm_relu_backward(dx, dg, db, w, x, gamma, mean, invstd, out)
        for what, analytic in (("dx", dx), ("dgamma", dg), ("dbeta", db)):
            atol = rtol * max(1.0, float(np.abs(numeric[what]).max()))
            np.testing.assert_allclose(analytic, numeric[what], rtol=rtol, atol=atol,
                                       err_msg=f"{impl.__name__} {what}")
    ev, rev = np.empty_like(x), np.empty_like(x)
    R.batchnorm_forward_eval(ev, x, gamma, beta, mean, invstd, 1e-5)
    R.batchnorm_relu_forward_eval(rev, x, gamma, beta, mean, invstd, 1e-5)
    np.testing.assert_array_equal(rev, np.maximum(ev, 0))


def test_fused_relu_propagates_nan():
    x = np.array([[np.nan, 1.0], [2.0, 3.0]])
    for impl in (N, R):
        out = np.empty_like(x)
        impl.batchnorm_relu_forward_eval(out, x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), 1e-5)
        assert np.isnan(out[0, 0]) and (out[:, 1] > 0).all()


# --- dropout -----------------------------------------------------------------------------

DROPOUT_SIZES = [1, 7, 31, 4097, (1 << 16) + 3, (100, 50), (2, 3, 4, 5)]
DROPOUT_P = [0.0, 1e-9, 0.1, 0.5, 0.999999, 1 - 2.0**-24, float(np.nextafter(1.0, 0.0))]
SEEDS = [0, 1, 12345, 2**32 - 1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", DROPOUT_SIZES, ids=str)
def test_dropout_matches_oracle_bit_for_bit(size, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(size).astype(dtype)
    dout = rng.standard_normal(size).astype(dtype)
    for (seed, p), scale in zip(itertools.product(SEEDS, DROPOUT_P), itertools.cycle([1.0, 2.0, 0.3, 1e30])):
        scale = 1 / (1 - p) if scale == 2.0 and p < 0.5 else scale
        (o, mk, *_), (ro, rmk, *_) = both("dropout_forward", lambda: (np.full(x.shape, np.nan, dtype),
                                                                      np.full(x.shape, 7, np.uint8), x, p, seed, scale))
        np.testing.assert_array_equal(mk, rmk, err_msg=f"mask seed={seed} p={p}")
        assert_same_bits(o, ro, f"out seed={seed} p={p}")
        (dx, *_), (rdx, *_) = both("dropout_backward", lambda: (np.full(x.shape, np.nan, dtype), dout, rmk, scale))
        assert_same_bits(dx, rdx, f"dx seed={seed} p={p}")
    if x.size > 1000:
        keep = np.empty(x.shape, np.uint8)
        N.dropout_forward(np.empty_like(x), keep, x, 0.25, 9, 1.0)
        assert abs(keep.mean() - 0.75) < 5 / np.sqrt(x.size)  # the generator is not degenerate


def test_dropout_threshold_is_inclusive():
    """keep = u >= p: p equal to some u keeps that element; the next float above p drops it."""
    seed, n = 77, 4097
    u = uniform(seed, n)
    x = np.ones(n)
    for k in (0, 5, 4096):
        for p, kept in ((float(u[k]), 1), (float(np.nextafter(u[k], 1.0)), 0)):
            if not 0 <= p < 1:
                continue
            for impl in (N, R):
                mask = np.empty(n, np.uint8)
                impl.dropout_forward(np.empty(n), mask, x, p, seed, 1.0)
                assert mask[k] == kept, (impl.__name__, k, p)


def test_dropout_special_values_and_numeric_mask():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0] * 50, np.float32)
    for seed in SEEDS:
        (o, mk, *_), (ro, rmk, *_) = both("dropout_forward", lambda: (np.empty_like(x), np.empty(x.shape, np.uint8),
                                                                      x, 0.5, seed, 2.0))
        np.testing.assert_array_equal(mk, rmk)
        np.testing.assert_array_equal(o, ro)  # a dropped inf is NaN in both
    # dropout_backward reads the mask as a number, as the oracle's product does.
    mask = np.array([0, 1, 2, 255] * 75, np.uint8)
    (dx, *_), (rdx, *_) = both("dropout_backward", lambda: (np.empty_like(x), x, mask, 0.5))
    np.testing.assert_array_equal(dx, rdx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.5, -3.0, 1.0 / 3.0, 0.0, 7])
def test_scale_forward_matches_oracle(dtype, alpha):
    x = np.random.default_rng(1).standard_normal((1 << 16) + 3).astype(dtype)
    (o, *_), (ro, *_) = both("scale_forward", lambda: (np.full(x.shape, np.nan, dtype), x, alpha))
    assert_same_bits(o, ro, "out")


# --- argument checking: native and oracle refuse the same calls ---------------------------


def _f(shape, dtype=np.float64, fill=0.5):
    return np.full(shape, fill, dtype)


def _ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _alias(base, shape):
    """A C-contiguous array of `shape` on the first bytes of `base` (same dtype)."""
    return base.reshape(-1)[: int(np.prod(shape))].reshape(shape)


def _good_calls():
    """kernel -> function of keyword overrides returning a valid argument tuple (.names: the names)."""
    x4, o4 = _f((2, 3, 6, 6)), _f((2, 3, 3, 3))
    am = np.zeros((2, 3, 3, 3), np.int32)
    x2, f = _f((4, 3)), _f(3)
    m = np.ones((4, 3), np.uint8)

    def k(names, defaults):
        # Callables in defaults/overrides are called, so each call gets fresh outputs.
        def call(**over):
            args = []
            for name, d in zip(names, defaults):
                v = over.get(name, d)
                args.append(v() if callable(v) else v)
            return tuple(args)
        call.names = names
        return call

    fresh = lambda a: (lambda: a.copy())  # noqa: E731
    return {
        "maxpool2d_forward": k(["out", "argmax", "x", "PH", "PW", "stride", "pad"],
                               [fresh(o4), fresh(am), x4, 2, 2, 2, 0]),
        "maxpool2d_backward": k(["dx", "dout", "argmax"], [fresh(x4), o4, am]),
        "avgpool2d_forward": k(["out", "x", "PH", "PW", "stride", "pad"], [fresh(o4), x4, 2, 2, 2, 0]),
        "avgpool2d_backward": k(["dx", "dout", "PH", "PW", "stride", "pad"], [fresh(x4), o4, 2, 2, 2, 0]),
        "batchnorm_forward_train": k(
            ["out", "mean", "invstd", "running_mean", "running_var", "x", "gamma", "beta", "momentum", "eps"],
            [fresh(x2), fresh(f), fresh(f), fresh(f), fresh(f), x2, f, f, 0.9, 1e-5]),
        "batchnorm_relu_forward_train": k(
            ["out", "mean", "invstd", "running_mean", "running_var", "x", "gamma", "beta", "momentum", "eps"],
            [fresh(x2), fresh(f), fresh(f), fresh(f), fresh(f), x2, f, f, 0.9, 1e-5]),
        "batchnorm_forward_eval": k(["out", "x", "gamma", "beta", "running_mean", "running_var", "eps"],
                                    [fresh(x2), x2, f, f, f, f, 1e-5]),
        "batchnorm_relu_forward_eval": k(["out", "x", "gamma", "beta", "running_mean", "running_var", "eps"],
                                         [fresh(x2), x2, f, f, f, f, 1e-5]),
        "batchnorm_backward": k(["dx", "dgamma", "dbeta", "dout", "x", "gamma", "mean", "invstd"],
                                [fresh(x2), fresh(f), fresh(f), x2, x2, f, f, f]),
        "batchnorm_relu_backward": k(["dx", "dgamma", "dbeta", "dout", "x", "gamma", "mean", "invstd", "out"],
                                     [fresh(x2), fresh(f), fresh(f), x2, x2, f, f, f, x2]),
        "dropout_forward": k(["out", "mask", "x", "p", "seed", "scale"], [fresh(x2), fresh(m), x2, 0.5, 3, 2.0]),
        "dropout_backward": k(["dx", "dout", "mask", "scale"], [fresh(x2), x2, m, 2.0]),
        "scale_forward": k(["out", "x", "alpha"], [fresh(x2), x2, 0.5]),
    }


GOOD = _good_calls()
ARG_NAMES = {kernel: call.names for kernel, call in GOOD.items()}
# Outputs come first in every kernel's argument list (running_* are updated in place).
N_OUTPUTS = {
    "maxpool2d_forward": 2, "maxpool2d_backward": 1, "avgpool2d_forward": 1, "avgpool2d_backward": 1,
    "batchnorm_forward_train": 5, "batchnorm_relu_forward_train": 5, "batchnorm_forward_eval": 1,
    "batchnorm_relu_forward_eval": 1, "batchnorm_backward": 3, "batchnorm_relu_backward": 3,
    "dropout_forward": 2, "dropout_backward": 1, "scale_forward": 1,
}
HYPER_BAD = {
    "PH": [(0, ValueError), (2.0, TypeError), (True, TypeError), (7, ValueError)],
    "PW": [(-1, ValueError), ("2", TypeError)],
    "stride": [(0, ValueError), (np.float64(2), TypeError)],
    "pad": [(-1, ValueError), (2, ValueError), (None, TypeError)],
    "momentum": [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), ("0.9", TypeError),
                 (False, TypeError)],
    "eps": [(0.0, ValueError), (-1e-5, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
            (None, TypeError)],
    "p": [(1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), ("0.5", TypeError)],
    "seed": [(-1, ValueError), (2**32, ValueError), (2**70, ValueError), (np.int64(-5), ValueError),
             (3.0, TypeError), (True, TypeError)],
    "scale": [("2", TypeError), (None, TypeError)],
    "alpha": [([1.0], TypeError), (True, TypeError)],
}
ALIAS = "alias"  # an override meaning "a view on the bytes of the other overridden array"


def outputs(kernel):
    return ARG_NAMES[kernel][: N_OUTPUTS[kernel]]


def _bad_cases():
    """(kernel, what, overrides, exception): each argument made wrong in every applicable way."""
    cases = []
    for kernel in GOOD:
        names, args = ARG_NAMES[kernel], GOOD[kernel]()
        outs = outputs(kernel)
        for n, a in zip(names, args):
            if isinstance(a, np.ndarray):
                other = {np.dtype(np.float64): np.float32, np.dtype(np.int32): np.int64}.get(a.dtype, np.int32)
                cases.append((kernel, f"{n} dtype", {n: a.astype(other)}, TypeError))
                cases.append((kernel, f"{n} list", {n: a.tolist()}, TypeError))
                cases.append((kernel, f"{n} shape", {n: np.zeros(a.shape + (1,), a.dtype)}, ValueError))
                if a.ndim >= 2:
                    strided = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
                    cases.append((kernel, f"{n} transposed", {n: strided}, ValueError))
                cases.append((kernel, f"{n} reversed", {n: a.copy()[::-1]}, ValueError))
                if n in outs:
                    cases.append((kernel, f"{n} read-only", {n: _ro(a)}, ValueError))
            elif n in HYPER_BAD:
                for v, exc in HYPER_BAD[n]:
                    cases.append((kernel, f"{n}={v!r}", {n: v}, exc))
        # Each output on the bytes of each other array argument that is at least as large.
        for o in outs:
            oa = args[names.index(o)]
            for i, a in zip(names, args):
                if i != o and isinstance(a, np.ndarray) and a.nbytes >= oa.nbytes:
                    cases.append((kernel, f"{o} aliases {i}", {i: a.copy(), o: ALIAS}, ValueError))
    return cases


BAD_CASES = _bad_cases()


def _resolve(kernel, over):
    """The argument tuple with the overrides applied, ALIAS resolved to a view."""
    like = dict(zip(ARG_NAMES[kernel], GOOD[kernel]()))
    over = dict(over)
    for o, v in list(over.items()):
        if isinstance(v, str) and v == ALIAS:
            (i,) = [n for n in over if n != o]
            t = like[o]
            over[o] = over[i].view(np.uint8).reshape(-1)[: t.nbytes].view(t.dtype).reshape(t.shape)
    return GOOD[kernel](**{n: (lambda v=v: v) for n, v in over.items()})


@pytest.mark.parametrize("kernel,what,over,exc", BAD_CASES, ids=[f"{c[0]}-{c[1]}" for c in BAD_CASES])
def test_bad_arguments_raise_the_same_exception_type(kernel, what, over, exc):
    for impl in (N, R):
        args = _resolve(kernel, over)
        with pytest.raises(exc) as info:
            getattr(impl, kernel)(*args)
        assert str(info.value).startswith(kernel + ":"), (impl.__name__, str(info.value))


@pytest.mark.parametrize("kernel", sorted(GOOD))
def test_good_calls_pass_and_leave_inputs_unchanged(kernel):
    for impl in (N, R):
        args = GOOD[kernel]()
        before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        getattr(impl, kernel)(*args)
        for n, a, b in zip(ARG_NAMES[kernel], args, before):
            if isinstance(a, np.ndarray) and n not in outputs(kernel):
                assert_same_bits(a, b, f"{impl.__name__} {kernel} modified {n}")


def test_optional_dx_none_and_zero_size_batch():
    x = np.zeros((0, 3, 4, 4))
    for impl in (N, R):
        with pytest.raises(ValueError, match="m >= 1"):
            impl.batchnorm_forward_train(np.empty_like(x), *(np.zeros(3) for _ in range(4)), x, np.ones(3),
                                         np.zeros(3), 0.9, 1e-5)
        dg, db = np.ones(3), np.ones(3)
        impl.batchnorm_backward(None, dg, db, x, x, np.ones(3), np.zeros(3), np.ones(3))
        np.testing.assert_array_equal(dg, 1.0)
        out = np.empty((0, 3, 2, 2))
        impl.maxpool2d_forward(out, np.empty(out.shape, np.int32), x, 2, 2, 2, 0)


# --- threads and instruction sets --------------------------------------------------------


def _big_runs(dtype):
    """Every kernel on inputs large enough to run on both threads, as closures returning outputs."""
    rng = np.random.default_rng(8)
    x4 = rng.standard_normal((8, 16, 24, 24)).astype(dtype)
    o4 = (8, 16, 12, 12)
    xb = (rng.standard_normal((16, 16, 28, 28)) * 3 + 1).astype(dtype)
    x2 = (rng.standard_normal((1024, 200)) * 3 + 1).astype(dtype)
    d1 = rng.standard_normal((1 << 17) + 3).astype(dtype)
    mask = (rng.random(d1.shape) < 0.5).astype(np.uint8)
    am = np.empty(o4, np.int32)
    R.maxpool2d_forward(np.empty(o4, dtype), am, x4, 2, 2, 2, 0)
    runs = {}

    def add(name, f):
        runs[name] = f

    for hyper in [(2, 2, 2, 0), (3, 3, 1, 1)]:
        oshape = pool_out_shape(dict(N=8, C=16, H=24, W=24, PH=hyper[0], PW=hyper[1], stride=hyper[2], pad=hyper[3]))

        def mp(hyper=hyper, oshape=oshape):
            o, a = np.empty(oshape, dtype), np.empty(oshape, np.int32)
            N.maxpool2d_forward(o, a, x4, *hyper)
            dx = np.empty_like(x4)
            N.maxpool2d_backward(dx, rng_dout(oshape, dtype), a)
            o2, dx2 = np.empty(oshape, dtype), np.empty_like(x4)
            N.avgpool2d_forward(o2, x4, *hyper)
            N.avgpool2d_backward(dx2, rng_dout(oshape, dtype), *hyper)
            return o, a, dx, o2, dx2
        add(f"pool{hyper}", mp)
    for name, x in (("bn NCHW", xb), ("bn ND", x2)):
        F = x.shape[1]
        g, b = np.linspace(0.5, 2, F).astype(dtype), np.linspace(-1, 1, F).astype(dtype)

        def bn(x=x, F=F, g=g, b=b):
            res = []
            for relu in ("", "relu_"):
                o, mu, s, rm, rv = np.empty_like(x), np.empty(F, dtype), np.empty(F, dtype), np.zeros(F, dtype), \
                    np.ones(F, dtype)
                getattr(N, f"batchnorm_{relu}forward_train")(o, mu, s, rm, rv, x, g, b, 0.9, 1e-5)
                e = np.empty_like(x)
                getattr(N, f"batchnorm_{relu}forward_eval")(e, x, g, b, rm, rv, 1e-5)
                dx, dg, db = np.empty_like(x), np.zeros(F, dtype), np.zeros(F, dtype)
                extra = (o,) if relu else ()
                getattr(N, f"batchnorm_{relu}backward")(dx, dg, db, rng_dout(x.shape, dtype), x, g, mu, s, *extra)
                res += [o, mu, s, rm, rv, e, dx, dg, db]
            return res
        add(name, bn)

    def drop():
        o, mk, dx, s = np.empty_like(d1), np.empty(d1.shape, np.uint8), np.empty_like(d1), np.empty_like(d1)
        N.dropout_forward(o, mk, d1, 0.3, 99, 1 / 0.7)
        N.dropout_backward(dx, d1, mask, 2.0)
        N.scale_forward(s, d1, 0.7)
        return o, mk, dx, s
    add("dropout", drop)
    return runs


def rng_dout(shape, dtype):
    return np.random.default_rng(int(np.prod(shape)) % 1000).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_on_one_and_two_threads(dtype):
    runs = _big_runs(dtype)
    saved = get_num_threads()
    results = {}
    try:
        for t in (1, 2):
            set_num_threads(t)
            results[t] = {name: f() for name, f in runs.items()}
    finally:
        set_num_threads(saved)
    for name in runs:
        for a, b in zip(results[1][name], results[2][name]):
            assert_same_bits(a, b, f"{name}: 1 vs 2 threads")


BASELINE_PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fastlayers.backend import _native as N
    assert N._isa_dispatch() == "baseline", N._isa_dispatch()
    rng = np.random.default_rng(4)
    res = {}
    for dt in ("float32", "float64"):
        for W in (2, 7, 16, 17, 33):
            x = rng.integers(-3, 4, size=(2, 3, 5, W)).astype(dt)
            x.flat[::7] = np.nan
            o, a = np.empty((2, 3, 2, W // 2), dt), np.empty((2, 3, 2, W // 2), np.int32)
            N.maxpool2d_forward(o, a, x, 2, 2, 2, 0)
            res[f"mp_x_{dt}_{W}"], res[f"mp_o_{dt}_{W}"], res[f"mp_a_{dt}_{W}"] = x, o, a
        d = rng.standard_normal(4099).astype(dt)
        o, m = np.empty_like(d), np.empty(d.shape, np.uint8)
        N.dropout_forward(o, m, d, 0.4, 123, 1.5)
        res[f"do_x_{dt}"], res[f"do_o_{dt}"], res[f"do_m_{dt}"] = d, o, m
        for shape in ((33, 70), (3, 5, 4, 5)):
            x = (rng.standard_normal(shape) + 2).astype(dt)
            F = shape[1]
            g, b = np.ones(F, dt), np.zeros(F, dt)
            o, mu, s = np.empty_like(x), np.empty(F, dt), np.empty(F, dt)
            N.batchnorm_relu_forward_train(o, mu, s, np.zeros(F, dt), np.ones(F, dt), x, g, b, 0.9, 1e-5)
            dx, dg, db = np.empty_like(x), np.zeros(F, dt), np.zeros(F, dt)
            N.batchnorm_relu_backward(dx, dg, db, x, x, g, mu, s, o)
            key = f"{dt}_{len(shape)}"
            res.update({f"bn_x_{key}": x, f"bn_o_{key}": o, f"bn_dx_{key}": dx, f"bn_dg_{key}": dg})
    np.savez(sys.argv[1], **res)
    """
)


def test_baseline_build_matches_the_oracle(tmp_path):
    """The loops built for baseline x86-64 (what a CPU without AVX-512 runs) against the oracle."""
    path = tmp_path / "baseline.npz"
    env = {**os.environ, "FASTLAYERS_DISABLE_AVX512": "1"}
    subprocess.run([sys.executable, "-c", BASELINE_PROBE, str(path)], env=env, check=True, timeout=120)
    res = np.load(path)
    for key in res.files:
        if key.startswith("mp_x_"):
            tag = key[5:]
            x = res[key]
            o, a = np.empty(res[f"mp_o_{tag}"].shape, x.dtype), np.empty(res[f"mp_a_{tag}"].shape, np.int32)
            R.maxpool2d_forward(o, a, x, 2, 2, 2, 0)
            assert_same_bits(res[f"mp_o_{tag}"], o, key)
            np.testing.assert_array_equal(res[f"mp_a_{tag}"], a)
        elif key.startswith("do_x_"):
            tag = key[5:]
            d = res[key]
            o, m = np.empty_like(d), np.empty(d.shape, np.uint8)
            R.dropout_forward(o, m, d, 0.4, 123, 1.5)
            np.testing.assert_array_equal(res[f"do_m_{tag}"], m)
            assert_same_bits(res[f"do_o_{tag}"], o, key)
        elif key.startswith("bn_x_"):
            tag = key[5:]
            x = res[key]
            dt, F = x.dtype, x.shape[1]
            g, b = np.ones(F, dt), np.zeros(F, dt)
            o, mu, s = np.empty_like(x), np.empty(F, dt), np.empty(F, dt)
            R.batchnorm_relu_forward_train(o, mu, s, np.zeros(F, dt), np.ones(F, dt), x, g, b, 0.9, 1e-5)
            mag_out, *_ = bn_train_bounds(x, g, b, np.zeros(F), np.ones(F), 0.9)
            m = x.size // F
            assert_close_reduction(res[f"bn_o_{tag}"], o, mag_out, m + 4, dt, key)
            dx, dg, db = np.empty_like(x), np.zeros(F, dt), np.zeros(F, dt)
            R.batchnorm_relu_backward(dx, dg, db, x, x, g, mu, s, res[f"bn_o_{tag}"])
            mag_dx, mag_dg, _, _ = bn_backward_bounds(x, x, g, mu, s, np.zeros(F), np.zeros(F),
                                                      res[f"bn_o_{tag}"] > 0)
            assert_close_reduction(res[f"bn_dx_{tag}"], dx, mag_dx, m + 4, dt, key)
            assert_close_reduction(res[f"bn_dg_{tag}"], dg, mag_dg, m + 2, dt, key)
