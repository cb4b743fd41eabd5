"""The direct path of the float32 convolution kernels (csrc/conv_direct.cpp).

With ``backend.set_conv_algorithm("direct")`` every stride-1 float32 convolution forward runs
the direct kernel (flat positions, filters in registers), and the convolution + ReLU + max
pooling backward without dx, patches of up to 64 floats, runs the pooled one (the gradient
lives only at each window's argmax: dW = sum of m * patch(argmax)); wider patches, and the
backwards that want dx, run conv_pooled.cpp's (tests/test_native_conv_pooled.py). Both are direct sums in another order than the GEMM,
so they are held to the float64 oracle with the same bound as im2col: 2 gamma_n times the sum
of the terms' magnitudes, n the reduction length. Awkward geometries: 1 to 4 input channels,
planes 1 to 13, filters 1x1 to 7x7 and 16 wide, padding 0 to 3, filter counts around the
forward's register blocks (14 filters), batches that do not fill the image groups.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlayers
from fastlayers import backend
from fastlayers import reference as ref
from fastlayers.backend import _native as nat

from .test_native_conv import _case_id, out_size, rand
from .tolerance import assert_close_reduction

F32, F64 = np.float32, np.float64

def _direct_runs() -> bool:
    with backend.conv_algorithm("direct"):
        return backend._native._conv_plan(1, 1, 8, 8, 4, 3, 3, 1, 0, 0, 0, False, 1)[0] == "direct"


pytestmark = pytest.mark.skipif(not _direct_runs(), reason="the direct path needs an AVX-512 CPU")


@pytest.fixture(autouse=True)
def direct_everywhere():
    with backend.conv_algorithm("direct"):
        yield


def _case(N, C, H, W, FN, FH, FW, pad):
    return dict(N=N, C=C, H=H, W=W, FN=FN, FH=FH, FW=FW, stride=1, pad=pad)


CASES = [
    _case(1, 1, 1, 1, 1, 1, 1, 0),
    _case(2, 1, 5, 7, 13, 3, 3, 1),
    _case(3, 1, 7, 9, 14, 3, 3, 0),
    _case(2, 1, 9, 4, 15, 5, 2, 2),
    _case(5, 2, 11, 13, 29, 5, 5, 2),
    _case(9, 1, 28, 28, 30, 5, 5, 0),   # simple_cnn's first layer
    _case(4, 1, 28, 28, 16, 3, 3, 1),   # deep_cnn's first layer
    _case(3, 3, 6, 6, 31, 7, 7, 3),
    _case(2, 4, 3, 17, 7, 1, 16, 0),
    _case(1, 2, 13, 1, 8, 6, 1, 3),
    _case(17, 1, 4, 4, 2, 4, 4, 1),
    _case(2, 3, 12, 12, 1, 2, 5, 1),
]
POOLS = [(2, 2, 2, 0), (3, 3, 2, 1), (2, 2, 1, 0), (1, 1, 1, 0), (3, 3, 3, 1), (2, 3, 2, 1)]


def _pooled_cases():
    out = []
    for i, case in enumerate(CASES):
        OH, OW = (out_size(case[d], case["F" + d], 1, case["pad"]) for d in ("H", "W"))
        for j in range(len(POOLS)):
            PH, PW, ps, pp = POOLS[(i + j) % len(POOLS)]
            if OH + 2 * pp >= PH and OW + 2 * pp >= PW:
                out.append((case, (PH, PW, ps, pp)))
                break
    out.append((_case(100, 1, 28, 28, 30, 5, 5, 0), (2, 2, 2, 0)))  # simple_cnn's whole batch
    return out


POOLED = _pooled_cases()


def _pid(cp):
    case, (PH, PW, ps, pp) = cp
    return f"{_case_id(case)}-pool{PH}x{PW}s{ps}p{pp}"


def _data(case, seed, pool=None):
    rng = np.random.default_rng(seed)
    N, C, H, W, FN, FH, FW, pad = (case[k] for k in ("N", "C", "H", "W", "FN", "FH", "FW", "pad"))
    OH, OW = out_size(H, FH, 1, pad), out_size(W, FW, 1, pad)
    d = dict(x=rand(rng, (N, C, H, W), F32), W=rand(rng, (FN, C, FH, FW), F32), b=rand(rng, (FN,), F32),
             conv=(N, FN, OH, OW))
    if pool is not None:
        PH, PW, ps, pp = pool
        d["pooled"] = (N, FN, out_size(OH, PH, ps, pp), out_size(OW, PW, ps, pp))
        d["dout"] = rand(rng, d["pooled"], F32)
    return d


def _plan(case, fused=0, pooled_plane=0, dx=False):
    c = case
    return nat._conv_plan(c["N"], c["C"], c["H"], c["W"], c["FN"], c["FH"], c["FW"], 1, c["pad"], fused,
                          pooled_plane, dx, 2)[0]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_matches_the_oracle(case):
    assert _plan(case) == "direct"
    d = _data(case, 1)
    x0, W0, b0 = d["x"].copy(), d["W"].copy(), d["b"].copy()
    mag = np.empty(d["conv"], F64)
    ref.conv2d_forward(mag, np.abs(d["x"]).astype(F64), np.abs(d["W"]).astype(F64), np.abs(d["b"]).astype(F64),
                       1, case["pad"])
    n = case["C"] * case["FH"] * case["FW"] + 1
    for kernel in ("conv2d_forward", "conv2d_relu_forward"):
        got, want = np.full(d["conv"], np.nan, F32), np.empty(d["conv"], F64)
        getattr(nat, kernel)(got, d["x"], d["W"], d["b"], 1, case["pad"])
        getattr(ref, kernel)(want, d["x"].astype(F64), d["W"].astype(F64), d["b"].astype(F64), 1, case["pad"])
        assert_close_reduction(got, want, mag, n, F32, kernel)
        if kernel == "conv2d_relu_forward":
            assert (got >= 0).all()
    for a, b in ((x0, d["x"]), (W0, d["W"]), (b0, d["b"])):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")


def _fused_forward(d, case, pool, impl=nat, dtype=F32):
    out, am = np.full(d["pooled"], np.nan, dtype), np.full(d["pooled"], -7, np.int32)
    impl.conv2d_relu_maxpool2d_forward(out, am, d["x"].astype(dtype), d["W"].astype(dtype), d["b"].astype(dtype),
                                       1, case["pad"], *pool)
    return out, am


@pytest.mark.parametrize("cp", POOLED, ids=_pid)
def test_fused_forward_gives_the_unfused_direct_bits(cp):
    case, pool = cp
    d = _data(case, 2, pool)
    y = np.empty(d["conv"], F32)
    nat.conv2d_relu_forward(y, d["x"], d["W"], d["b"], 1, case["pad"])
    out, am = np.empty(d["pooled"], F32), np.empty(d["pooled"], np.int32)
    nat.maxpool2d_forward(out, am, y, *pool)
    fout, fam = _fused_forward(d, case, pool)
    assert fout.tobytes() == out.tobytes() and np.array_equal(fam, am)


# With 2x2 windows at stride 2 and no padding the fused forward pools in the registers: 16
# filters along each vector, blocks of 1, 2, 3 or 4 vectors by 7, 3, 2 or 1 windows of a
# pooled row. Filter counts on both sides of each vector and block size, rows that need a
# shorter last block, odd convolution outputs (the last row or column is no window's).
REGISTER_CASES = [
    _case(2, 1, 28, 28, 30, 5, 5, 0),   # simple_cnn's: 2 vectors, 3 windows a block, 12 a row
    _case(3, 1, 9, 31, 1, 3, 3, 1),     # 1 filter in 16 lanes; 15 windows a row: 7 + 7 + 1
    _case(2, 2, 8, 10, 16, 3, 3, 0),
    _case(2, 1, 8, 11, 17, 2, 2, 0),    # conv 7x10
    _case(1, 3, 11, 11, 33, 3, 3, 1),   # 3 vectors, 2 windows a block; conv 11x11
    _case(2, 1, 12, 13, 48, 5, 3, 2),
    _case(2, 1, 12, 13, 49, 5, 3, 2),   # 4 vectors, 1 window a block
    _case(2, 2, 6, 7, 64, 3, 3, 1),
    _case(2, 2, 6, 7, 65, 3, 3, 1),     # 5 vectors: a block of 4, then of 1
    _case(1, 1, 2, 2, 5, 1, 1, 0),      # one window
    _case(2, 4, 5, 17, 15, 1, 16, 0),   # 16-wide filter rows; conv 5x2
]
POOL_2x2 = (2, 2, 2, 0)


def _registers(case) -> bool:
    c = case
    OH, OW = out_size(c["H"], c["FH"], 1, c["pad"]), out_size(c["W"], c["FW"], 1, c["pad"])
    return nat._conv_plan(c["N"], c["C"], c["H"], c["W"], c["FN"], c["FH"], c["FW"], 1, c["pad"], 2,
                          (OH // 2) * (OW // 2), False, 2, POOL_2x2)[3]


def _unfused_direct(x, W, b, case, conv_shape):
    y = np.empty(conv_shape, F32)
    nat.conv2d_relu_forward(y, x, W, b, 1, case["pad"])
    N, FN, OH, OW = conv_shape
    out, am = np.empty((N, FN, OH // 2, OW // 2), F32), np.empty((N, FN, OH // 2, OW // 2), np.int32)
    nat.maxpool2d_forward(out, am, y, *POOL_2x2)
    return out, am


@pytest.mark.parametrize("case", REGISTER_CASES, ids=_case_id)
def test_pooling_in_the_registers_gives_the_unfused_direct_bits(case):
    assert _registers(case)
    d = _data(case, 11, POOL_2x2)
    frozen = [d[k].copy() for k in ("x", "W", "b")]
    want = _unfused_direct(d["x"], d["W"], d["b"], case, d["conv"])
    got = _fused_forward(d, case, POOL_2x2)
    assert got[0].tobytes() == want[0].tobytes() and np.array_equal(got[1], want[1])
    for a, k in zip(frozen, ("x", "W", "b")):
        np.testing.assert_array_equal(a, d[k], err_msg="an input was modified")


@pytest.mark.parametrize("case", REGISTER_CASES, ids=_case_id)
def test_pooling_in_the_registers_keeps_the_oracles_ties_and_nans(case):
    """Small integers: every sum is exact in float32, so the maxima tie as often as they do in
    the float64 oracle (the first pixel of a window wins), and the biases push whole windows
    to <= 0, where the ReLU makes four zeros and the first must be chosen. Then an infinity
    and NaNs: the first NaN of a window wins, as np.argmax has it."""
    rng = np.random.default_rng(12)
    d = _data(case, 12, POOL_2x2)
    x = rng.integers(-2, 3, d["x"].shape).astype(F32)
    W = rng.integers(-1, 2, d["W"].shape).astype(F32)
    b = rng.integers(-6, 2, d["b"].shape).astype(F32)
    for trial in range(2):
        if trial:
            x = x.copy()
            x.reshape(-1)[rng.choice(x.size, max(1, x.size // 50), replace=False)] = np.nan
            x.reshape(-1)[0] = np.inf
        got = _fused_forward(dict(x=x, W=W, b=b, pooled=d["pooled"]), case, POOL_2x2)
        with np.errstate(invalid="ignore"):  # inf * 0 in the oracle's matrix product
            want = _fused_forward(dict(x=x, W=W, b=b, pooled=d["pooled"]), case, POOL_2x2, ref, F64)
        np.testing.assert_array_equal(got[0], want[0].astype(F32))
        np.testing.assert_array_equal(got[1], want[1])
        if not trial:
            assert (got[0] == 0).any() and (got[0] > 0).any()
        elif x.size >= 100:
            assert np.isnan(got[0]).any()


def test_other_pools_do_not_pool_in_the_registers():
    case = REGISTER_CASES[0]
    for pool in ((2, 2, 1, 0), (3, 3, 2, 1), (2, 2, 2, 1), (2, 3, 2, 0)):
        assert not nat._conv_plan(2, 1, 28, 28, 30, 5, 5, 1, 0, 2, 144, False, 2, pool)[3], pool
    assert not nat._conv_plan(2, 1, 28, 28, 30, 5, 5, 1, 0, 2, 144, False, 2)[3]  # pool unknown
    with backend.conv_algorithm("im2col"):
        assert not _registers(case)
    with pytest.raises(ValueError, match="not a valid pooling geometry"):
        nat._conv_plan(2, 1, 28, 28, 30, 5, 5, 1, 0, 2, 144, False, 2, (25, 2, 2, 0))


@pytest.mark.parametrize("cp", POOLED, ids=_pid)
def test_pooled_backward_matches_the_oracle(cp):
    case, pool = cp
    assert _plan(case, 2, 1, dx=False) == "direct"
    d = _data(case, 3, pool)
    # Both from the oracle's routing, so that they sum the same terms.
    rout, ram = _fused_forward(d, case, pool, ref, F64)
    out32 = rout.astype(F32)
    frozen = [a.copy() for a in (d["x"], d["W"], d["dout"], out32, ram)]
    dW0 = rand(np.random.default_rng(4), d["W"].shape, F32)
    db0 = rand(np.random.default_rng(5), d["b"].shape, F32)
    dW, db = dW0.copy(), db0.copy()
    nat.conv2d_relu_maxpool2d_backward(None, dW, db, d["dout"], d["x"], d["W"], out32, ram, 1, case["pad"])
    rdx, rdW, rdb = np.empty(d["x"].shape), dW0.astype(F64), db0.astype(F64)
    ref.conv2d_relu_maxpool2d_backward(rdx, rdW, rdb, d["dout"].astype(F64), d["x"].astype(F64),
                                       d["W"].astype(F64), rout, ram, 1, case["pad"])
    # Magnitudes: the same backward on absolute values, plus the accumulated start values.
    dconv = np.zeros(d["conv"], F64)
    ref.maxpool2d_backward(dconv, np.abs(np.where(rout > 0, d["dout"], 0)).astype(F64), ram)
    mdx, mdW, mdb = np.empty(d["x"].shape), np.abs(dW0).astype(F64), np.abs(db0).astype(F64)
    ref.conv2d_backward(mdx, mdW, mdb, dconv, np.abs(d["x"]).astype(F64), np.abs(d["W"]).astype(F64), 1, case["pad"])
    N, (OH, OW) = case["N"], d["conv"][2:]
    assert_close_reduction(dW, rdW, mdW, N * OH * OW + 1, F32, "dW")
    assert_close_reduction(db, rdb, mdb, N * OH * OW + 1, F32, "db")
    for a, b in zip(frozen, (d["x"], d["W"], d["dout"], out32, ram)):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")


def _nonfinite(d):
    x = d["x"].copy()
    x[0, 0, 0, 0] = np.inf
    x[-1, -1, x.shape[2] // 2, -1] = np.nan
    return x


@pytest.mark.parametrize("cp", POOLED[:6], ids=_pid)
def test_an_input_with_infinities_or_nans_runs_the_dense_backward(cp):
    """The dense sum multiplies the zero gradient of every pixel that is not an argmax by x
    (0 * inf = NaN); the pooled sum, which skips those products, would leave finite values
    there. With a non-finite x the kernel runs the dense backward: the im2col path's bits."""
    case, pool = cp
    d = _data(case, 7, pool)
    d["x"] = _nonfinite(d)
    out, am = _fused_forward(d, case, pool)
    res = {}
    for algorithm in ("direct", "im2col"):
        with backend.conv_algorithm(algorithm):
            g = [np.zeros_like(d["W"]), np.zeros_like(d["b"])]
            nat.conv2d_relu_maxpool2d_backward(None, *g, d["dout"], d["x"], d["W"], out, am, 1, case["pad"])
            res[algorithm] = g
    for name, a, b in zip(("dW", "db"), res["direct"], res["im2col"]):
        assert a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("case", CASES[:8], ids=_case_id)
def test_forward_with_infinities_and_nans_matches_the_oracle(case):
    """The flat layout's thrown-away columns must not leak into the outputs: each output sums
    exactly the oracle's terms, so infinities and NaNs land where the oracle's do."""
    d = _data(case, 8)
    x = _nonfinite(d)
    got, want = np.empty(d["conv"], F32), np.empty(d["conv"], F64)
    nat.conv2d_forward(got, x, d["W"], d["b"], 1, case["pad"])
    ref.conv2d_forward(want, x.astype(F64), d["W"].astype(F64), d["b"].astype(F64), 1, case["pad"])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))


@pytest.mark.skipif(not fastlayers.build_info()["openmp"], reason="one thread only without OpenMP")
@pytest.mark.parametrize("cp", [POOLED[4], POOLED[-1]], ids=_pid)
def test_bitwise_identical_for_one_and_two_threads(cp):
    case, pool = cp
    d = _data(case, 9, pool)
    saved = backend.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            backend.set_num_threads(threads)
            y = np.empty(d["conv"], F32)
            nat.conv2d_forward(y, d["x"], d["W"], d["b"], 1, case["pad"])
            out, am = _fused_forward(d, case, pool)
            dW, db = np.zeros_like(d["W"]), np.zeros_like(d["b"])
            nat.conv2d_relu_maxpool2d_backward(None, dW, db, d["dout"], d["x"], d["W"], out, am, 1, case["pad"])
            runs.append([y, out, am, dW, db])
    finally:
        backend.set_num_threads(saved)
    for k, (a, b) in enumerate(zip(*runs)):
        assert a.tobytes() == b.tobytes(), f"result {k} differs between 1 and 2 threads"


def test_auto_picks_the_direct_path_for_first_layers_only():
    simple = _case(100, 1, 28, 28, 30, 5, 5, 0)
    deep1, deep2 = _case(100, 1, 28, 28, 16, 3, 3, 1), _case(100, 16, 28, 28, 16, 3, 3, 1)
    rgb5 = _case(100, 3, 32, 32, 32, 5, 5, 2)  # C*FH*FW = 75 > 64
    with backend.conv_algorithm("auto"):
        assert _plan(simple, 2, 144) == "direct" and _plan(deep1, 1) == "direct"
        assert _plan(deep2, 2, 196) == "winograd"
        assert _plan(rgb5) == "im2col"
        strided = nat._conv_plan(100, 1, 28, 28, 30, 5, 5, 2, 0, 0, 0, False, 2)[0]
        assert strided == "im2col"
    with backend.conv_algorithm("im2col"):
        assert _plan(simple, 2, 144) == "im2col"
    with backend.conv_algorithm("winograd"):
        assert _plan(simple, 2, 144) == "im2col" and _plan(deep1) == "winograd"
    assert _plan(rgb5) == "direct"  # forced


def test_a_cpu_without_avx512_runs_im2col(tmp_path):
    probe = textwrap.dedent(
        """
        from fastlayers import backend
        for algorithm in ("auto", "direct"):
            backend.set_conv_algorithm(algorithm)
            print(backend._native._conv_plan(100, 1, 28, 28, 30, 5, 5, 1, 0, 2, 144, False, 2)[0])
        """
    )
    env = {**os.environ, "FASTLAYERS_DISABLE_AVX512": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True,
                         timeout=120).stdout.split()
    assert out == ["im2col", "im2col"]


def test_conv_plan_refuses_a_bad_geometry():
    with pytest.raises(ValueError, match="not a valid convolution geometry"):
        nat._conv_plan(1, 1, 2, 2, 1, 3, 3, 1, 0, 0, 0, False, 1)
