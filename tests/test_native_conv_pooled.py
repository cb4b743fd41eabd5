"""The sparse backward of convolution + ReLU + max pooling (csrc/conv_pooled.cpp).

The gradient of the convolution's output lives only at each pooling window's argmax, and there
only where the pooled output is positive, so ``conv2d_relu_maxpool2d_backward`` sums just those
entries: dW from the channel-last image at each entry's pixels, dx by adding m * W back at the
same pixels. The sums run in another order than the GEMM's, so they are held to the float64
oracle with im2col's bound: 2 gamma_n times the sum of the terms' magnitudes, n the reduction
length. Awkward geometries: 1 to 33 input channels (around the 16-float vectors), strides 1 to
3, filters 1x1 to 7x7 (up to five blocks of taps), padding 0 to 3, overlapping and padded
pooling windows, batches that do not fill the 8 image groups, and deep_cnn's three pooled layers.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers
from fastlayers import backend
from fastlayers import reference as ref
from fastlayers.backend import _native as nat

from .test_native_conv import _case_id, out_size, rand
from .tolerance import assert_close_reduction

F32, F64 = np.float32, np.float64


def _plan(case, pooled_plane, dx, algorithm):
    c = case
    with backend.conv_algorithm(algorithm):
        return nat._conv_plan(c["N"], c["C"], c["H"], c["W"], c["FN"], c["FH"], c["FW"], c["stride"], c["pad"], 2,
                              pooled_plane, dx, 2)[1]


def _runs() -> bool:
    case = dict(N=1, C=16, H=8, W=8, FN=4, FH=3, FW=3, stride=1, pad=1)
    return _plan(case, 16, True, "direct") == "pooled"


pytestmark = pytest.mark.skipif(not _runs(), reason="the sparse pooled backward needs an AVX-512 CPU")


def _case(N, C, H, W, FN, FH, FW, stride, pad):
    return dict(N=N, C=C, H=H, W=W, FN=FN, FH=FH, FW=FW, stride=stride, pad=pad)


# (convolution, pooling (PH, PW, stride, pad))
CASES = [
    (_case(1, 1, 4, 4, 1, 1, 1, 1, 0), (2, 2, 2, 0)),
    (_case(3, 2, 7, 9, 5, 3, 3, 1, 1), (2, 2, 2, 0)),
    (_case(2, 5, 11, 6, 7, 2, 5, 1, 2), (3, 3, 2, 1)),
    (_case(9, 16, 12, 12, 13, 3, 3, 1, 1), (2, 2, 2, 0)),
    (_case(11, 17, 9, 10, 3, 5, 5, 1, 2), (2, 2, 1, 0)),    # overlapping windows; 3 tap blocks
    (_case(4, 33, 8, 8, 6, 3, 3, 2, 1), (2, 3, 2, 1)),      # stride 2, 3 channel vectors
    (_case(2, 3, 13, 13, 17, 7, 7, 1, 3), (3, 3, 3, 1)),    # 49 taps: 5 blocks
    (_case(5, 8, 15, 11, 2, 4, 2, 3, 0), (2, 2, 2, 0)),     # stride 3
    (_case(10, 16, 28, 28, 16, 3, 3, 1, 1), (2, 2, 2, 0)),  # deep_cnn conv2
    (_case(10, 32, 14, 14, 32, 3, 3, 1, 1), (2, 2, 2, 0)),  # deep_cnn conv4
    (_case(10, 64, 7, 7, 64, 3, 3, 1, 1), (2, 2, 2, 0)),    # deep_cnn conv6
]


def _cid(cp):
    case, (PH, PW, ps, pp) = cp
    return f"{_case_id(case)}-pool{PH}x{PW}s{ps}p{pp}"


@pytest.fixture(autouse=True)
def pooled_everywhere():
    with backend.conv_algorithm("direct"):
        yield


def _data(case, pool, seed):
    rng = np.random.default_rng(seed)
    N, C, H, W, FN, FH, FW, s, pad = (case[k] for k in ("N", "C", "H", "W", "FN", "FH", "FW", "stride", "pad"))
    OH, OW = out_size(H, FH, s, pad), out_size(W, FW, s, pad)
    PH, PW, ps, pp = pool
    pooled = (N, FN, out_size(OH, PH, ps, pp), out_size(OW, PW, ps, pp))
    return dict(x=rand(rng, (N, C, H, W), F32), W=rand(rng, (FN, C, FH, FW), F32), b=rand(rng, (FN,), F32),
                dout=rand(rng, pooled, F32), conv=(N, FN, OH, OW), pooled=pooled)


def _forward(d, case, pool, impl=nat, dtype=F32):
    out, am = np.full(d["pooled"], np.nan, dtype), np.full(d["pooled"], -7, np.int32)
    impl.conv2d_relu_maxpool2d_forward(out, am, d["x"].astype(dtype), d["W"].astype(dtype), d["b"].astype(dtype),
                                       case["stride"], case["pad"], *pool)
    return out, am


def _backward(d, case, out, am, dx=True, dW0=None, db0=None):
    g = [np.full(d["x"].shape, np.nan, F32) if dx else None,
         np.zeros_like(d["W"]) if dW0 is None else dW0.copy(), np.zeros_like(d["b"]) if db0 is None else db0.copy()]
    nat.conv2d_relu_maxpool2d_backward(*g, d["dout"], d["x"], d["W"], out, am, case["stride"], case["pad"])
    return g


@pytest.mark.parametrize("dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("cp", CASES, ids=_cid)
def test_backward_matches_the_oracle(cp, dx):
    case, pool = cp
    d = _data(case, pool, 1)
    # Without dx, a stride-1 layer of patches up to 64 floats runs the direct path's own.
    own = not dx and case["stride"] == 1 and case["C"] * case["FH"] * case["FW"] <= 64
    assert _plan(case, d["pooled"][2] * d["pooled"][3], dx, "direct") == ("direct" if own else "pooled")
    # Both from the oracle's forward, so that they route to the same argmax.
    rout, ram = _forward(d, case, pool, ref, F64)
    out32 = rout.astype(F32)
    frozen = [a.copy() for a in (d["x"], d["W"], d["dout"], out32, ram)]
    dW0 = rand(np.random.default_rng(2), d["W"].shape, F32)
    db0 = rand(np.random.default_rng(3), d["b"].shape, F32)
    gdx, gdW, gdb = _backward(d, case, out32, ram, dx, dW0, db0)
    rdx, rdW, rdb = np.empty(d["x"].shape), dW0.astype(F64), db0.astype(F64)
    s, pad = case["stride"], case["pad"]
    ref.conv2d_relu_maxpool2d_backward(rdx, rdW, rdb, d["dout"].astype(F64), d["x"].astype(F64),
                                       d["W"].astype(F64), rout, ram, s, pad)
    # Magnitudes: the same backward on absolute values, plus the accumulated start values.
    dconv = np.zeros(d["conv"], F64)
    ref.maxpool2d_backward(dconv, np.abs(np.where(rout > 0, d["dout"], 0)).astype(F64), ram)
    mdx, mdW, mdb = np.empty(d["x"].shape), np.abs(dW0).astype(F64), np.abs(db0).astype(F64)
    ref.conv2d_backward(mdx, mdW, mdb, dconv, np.abs(d["x"]).astype(F64), np.abs(d["W"]).astype(F64), s, pad)
    N, FN, OH, OW = d["conv"]
    assert_close_reduction(gdW, rdW, mdW, N * OH * OW + 1, F32, "dW")
    assert_close_reduction(gdb, rdb, mdb, N * OH * OW + 1, F32, "db")
    if dx:
        assert_close_reduction(gdx, rdx, mdx, FN * case["FH"] * case["FW"], F32, "dx")
    for a, b in zip(frozen, (d["x"], d["W"], d["dout"], out32, ram)):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")


def _poison(a, where):
    a = a.copy()
    for idx, v in where:
        a[idx] = v
    return a


@pytest.mark.parametrize("cp", CASES[1:7], ids=_cid)
@pytest.mark.parametrize("bad", ["x", "W"])
def test_a_non_finite_input_runs_the_dense_backward(cp, bad):
    """The dense sums multiply the zero gradient of every pixel that is not an argmax by x,
    and every filter by it for dx (0 * inf = NaN); the sparse sums skip those products. With an
    infinity or NaN in x, or in W when dx is wanted, the kernel runs the dense backward: the
    im2col path's bits, dx included."""
    case, pool = cp
    d = _data(case, pool, 4)
    out, am = _forward(d, case, pool)
    d[bad] = _poison(d[bad], [((0, 0, 0, 0), np.inf), ((-1, -1, -1, -1), np.nan)])
    got = _backward(d, case, out, am)
    with backend.conv_algorithm("im2col"):
        want = _backward(d, case, out, am)
    for name, a, b in zip(("dx", "dW", "db"), got, want):
        assert a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("cp", CASES[1:7], ids=_cid)
def test_non_finite_gradients_land_where_the_oracles_do(cp):
    """An infinity or NaN in dout (where out > 0) is an entry like any other: it reaches the
    same dW rows, db entries and dx pixels as in the oracle's dense sums."""
    case, pool = cp
    d = _data(case, pool, 5)
    rout, ram = _forward(d, case, pool, ref, F64)
    live = np.argwhere(rout > 0)
    d["dout"] = _poison(d["dout"], [(tuple(live[0]), np.nan), (tuple(live[-1]), -np.inf)])
    got = _backward(d, case, rout.astype(F32), ram)
    want = [np.empty(d["x"].shape), np.zeros(d["W"].shape), np.zeros(d["b"].shape)]
    with np.errstate(invalid="ignore"):
        ref.conv2d_relu_maxpool2d_backward(*want, d["dout"].astype(F64), d["x"].astype(F64), d["W"].astype(F64),
                                           rout, ram, case["stride"], case["pad"])
    for name, a, b in zip(("dx", "dW", "db"), got, want):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b), err_msg=name)
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=name)


@pytest.mark.skipif(not fastlayers.build_info()["openmp"], reason="one thread only without OpenMP")
@pytest.mark.parametrize("cp", [CASES[4], CASES[8]], ids=_cid)
def test_bitwise_identical_for_one_and_two_threads(cp):
    case, pool = cp
    d = _data(case, pool, 6)
    out, am = _forward(d, case, pool)
    saved = backend.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            backend.set_num_threads(threads)
            runs.append(_backward(d, case, out, am))
    finally:
        backend.set_num_threads(saved)
    for name, a, b in zip(("dx", "dW", "db"), *runs):
        assert a.tobytes() == b.tobytes(), f"{name} differs between 1 and 2 threads"


def test_auto_takes_the_sparse_backward_below_a_pooling_only():
    deep2, deep4, deep6 = (_case(100, C, H, H, C, 3, 3, 1, 1) for C, H in ((16, 28), (32, 14), (64, 7)))
    simple = _case(100, 1, 28, 28, 30, 5, 5, 1, 0)
    rgb = _case(100, 3, 32, 32, 32, 3, 3, 1, 1)
    for case, plane in ((deep2, 196), (deep4, 49), (deep6, 9)):
        assert _plan(case, plane, True, "auto") == "pooled"
        assert _plan(case, plane, True, "winograd") == "winograd"
        assert _plan(case, plane, True, "im2col") == "im2col"
    # A first layer without dx keeps the direct path's own pooled backward; a pooling that
    # keeps every pixel, or a few channels in a vector of 16, leave too little to skip.
    assert _plan(simple, 144, False, "auto") == "direct"
    assert _plan(deep2, 28 * 28, True, "auto") == "winograd"
    assert _plan(rgb, 256, True, "auto") == "im2col"
    assert _plan(rgb, 256, True, "direct") == "pooled"
