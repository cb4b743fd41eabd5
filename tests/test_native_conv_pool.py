"""conv2d_relu_maxpool2d_{forward,backward}: convolution, ReLU and max pooling in one kernel.

The native kernel must give the same bits as the unfused native kernels it replaces
(conv2d_relu_forward + maxpool2d_forward, maxpool2d_backward + conv2d_relu_backward), and
agree with the oracle within float rounding; the oracle's backward is checked against a
float64 numerical gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastlayers import reference as ref
from fastlayers.backend import _native as nat
from fastlayers.numerical import numerical_gradient

from .test_native_conv import CASES, _case_id, _geometry, out_size, rand
from .tolerance import assert_close_reduction, numerical_gradient_rtol

DTYPES = [np.float32, np.float64]
IMPLS = [pytest.param(nat, id="native"), pytest.param(ref, id="numpy")]


# The bounds here are a direct sum's (tests/test_native_winograd.py covers the Winograd path).
pytestmark = pytest.mark.usefixtures("im2col_path")
F64 = np.float64

# (PH, PW, pool_stride, pool_pad): the networks' 2x2/2, overlapping windows, a 1x1 window,
# padding, a window wider than tall.
POOLS = [(2, 2, 2, 0), (3, 3, 2, 1), (2, 2, 1, 0), (1, 1, 1, 0), (3, 3, 3, 1), (2, 3, 2, 1)]


def _cases():
    out = []
    for i, case in enumerate(CASES):
        OH, OW = _geometry(case)
        for j in range(len(POOLS)):
            PH, PW, ps, pp = POOLS[(i + j) % len(POOLS)]
            if OH + 2 * pp >= PH and OW + 2 * pp >= PW:
                out.append((case, (PH, PW, ps, pp)))
                break
    # The networks' blocks: simple_cnn's first layer, deep_cnn's second and fourth.
    out += [
        (dict(N=100, C=1, H=28, W=28, FH=5, FW=5, stride=1, pad=0, FN=30), (2, 2, 2, 0)),
        (dict(N=7, C=16, H=28, W=28, FH=3, FW=3, stride=1, pad=1, FN=16), (2, 2, 2, 0)),
        (dict(N=5, C=32, H=14, W=14, FH=3, FW=3, stride=1, pad=2, FN=32), (2, 2, 2, 0)),
    ]
    return out


CONV_POOL = _cases()


def _id(cp):
    case, (PH, PW, ps, pp) = cp
    return f"{_case_id(case)}-pool{PH}x{PW}s{ps}p{pp}"


def _setup(case, pool, dtype, seed):
    rng = np.random.default_rng(seed)
    N, C, H, W, FN, FH, FW = (case[k] for k in ("N", "C", "H", "W", "FN", "FH", "FW"))
    OH, OW = _geometry(case)
    PH, PW, ps, pp = pool
    POH, POW = out_size(OH, PH, ps, pp), out_size(OW, PW, ps, pp)
    return dict(
        x=rand(rng, (N, C, H, W), dtype),
        W=rand(rng, (FN, C, FH, FW), dtype),
        b=rand(rng, (FN,), dtype),
        dout=rand(rng, (N, FN, POH, POW), dtype),
        conv=(N, FN, OH, OW),
        pooled=(N, FN, POH, POW),
    )


def _unfused_forward(impl, d, case, pool):
    PH, PW, ps, pp = pool
    y = np.empty(d["conv"], d["x"].dtype)
    impl.conv2d_relu_forward(y, d["x"], d["W"], d["b"], case["stride"], case["pad"])
    out, am = np.empty(d["pooled"], y.dtype), np.empty(d["pooled"], np.int32)
    impl.maxpool2d_forward(out, am, y, PH, PW, ps, pp)
    return y, out, am


def _fused_forward(impl, d, case, pool):
    out, am = np.full(d["pooled"], np.nan, d["x"].dtype), np.full(d["pooled"], -7, np.int32)
    impl.conv2d_relu_maxpool2d_forward(out, am, d["x"], d["W"], d["b"], case["stride"], case["pad"], *pool)
    return out, am


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cp", CONV_POOL, ids=_id)
def test_fused_kernels_give_the_unfused_native_bits(cp, dtype):
    case, pool = cp
    d = _setup(case, pool, dtype, 1)
    x0, W0, b0, dout0 = (d[k].copy() for k in ("x", "W", "b", "dout"))
    y, out, am = _unfused_forward(nat, d, case, pool)
    fout, fam = _fused_forward(nat, d, case, pool)
    assert fout.tobytes() == out.tobytes() and np.array_equal(fam, am)

    s, p = case["stride"], case["pad"]
    rng = np.random.default_rng(5)
    dW0, db0 = rand(rng, d["W"].shape, dtype), rand(rng, d["b"].shape, dtype)
    dy = np.empty(d["conv"], dtype)
    nat.maxpool2d_backward(dy, d["dout"], am)
    want = [np.empty_like(d["x"]), dW0.copy(), db0.copy()]
    nat.conv2d_relu_backward(*want, dy, d["x"], d["W"], y, s, p)
    for with_dx in (True, False):
        got = [np.full(d["x"].shape, np.nan, dtype) if with_dx else None, dW0.copy(), db0.copy()]
        nat.conv2d_relu_maxpool2d_backward(*got, d["dout"], d["x"], d["W"], fout, fam, s, p)
        for name, g, w in zip(("dx", "dW", "db"), got, want):
            if g is not None:
                assert g.tobytes() == w.tobytes(), name
    for a, b in zip((x0, W0, b0, dout0), (d["x"], d["W"], d["b"], d["dout"])):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cp", CONV_POOL, ids=_id)
def test_native_matches_the_oracle(cp, dtype):
    case, pool = cp
    d = _setup(case, pool, dtype, 2)
    s, p = case["stride"], case["pad"]
    out, am = _fused_forward(nat, d, case, pool)
    rout, ram = _fused_forward(ref, d, case, pool)
    # The oracle's fused forward is the composition, by definition.
    _, cout, cam = _unfused_forward(ref, d, case, pool)
    assert rout.tobytes() == cout.tobytes() and np.array_equal(ram, cam)
    # Magnitude bound of the convolution that produced each pooled value: |x| * |W| + |b|.
    mag = np.empty(d["conv"], F64)
    ref.conv2d_forward(mag, np.abs(d["x"]).astype(F64), np.abs(d["W"]).astype(F64), np.abs(d["b"]).astype(F64), s, p)
    n = case["C"] * case["FH"] * case["FW"] + 1
    flat_mag = mag.reshape(*mag.shape[:2], -1)
    chosen_mag = np.take_along_axis(flat_mag, am.reshape(*am.shape[:2], -1), axis=2).reshape(am.shape)
    assert_close_reduction(out, rout, chosen_mag, n, dtype, "out")
    # The chosen element may differ only between candidates equal within that rounding.
    y = np.empty(d["conv"], dtype)
    ref.conv2d_relu_forward(y, d["x"], d["W"], d["b"], s, p)
    yf = y.reshape(*y.shape[:2], -1)
    picked = np.take_along_axis(yf, am.reshape(*am.shape[:2], -1), axis=2).reshape(am.shape)
    assert_close_reduction(picked, rout, chosen_mag, n, dtype, "value at the native argmax")

    # Backward from the same routing (the oracle's out and argmax) on both.
    res = {}
    for name, impl in (("native", nat), ("numpy", ref)):
        g = [np.full(d["x"].shape, np.nan, dtype), np.zeros_like(d["W"]), np.zeros_like(d["b"])]
        impl.conv2d_relu_maxpool2d_backward(*g, d["dout"], d["x"], d["W"], rout, ram, s, p)
        res[name] = g
    dconv = np.zeros(d["conv"], F64)
    ref.maxpool2d_backward(dconv, np.abs(np.where(rout > 0, d["dout"], 0)).astype(F64), ram)
    mdx, mdW, mdb = np.empty(d["x"].shape, F64), np.zeros(d["W"].shape, F64), np.zeros(d["b"].shape, F64)
    ref.conv2d_backward(mdx, mdW, mdb, dconv, np.abs(d["x"]).astype(F64), np.abs(d["W"]).astype(F64), s, p)
    N, FN = case["N"], case["FN"]
    OH, OW = d["conv"][2:]
    (dx, dW, db), (rdx, rdW, rdb) = res["native"], res["numpy"]
    assert_close_reduction(dx, rdx, mdx, FN * case["FH"] * case["FW"], dtype, "dx")
    assert_close_reduction(dW, rdW, mdW, N * OH * OW + 1, dtype, "dW")
    assert_close_reduction(db, rdb, mdb, N * OH * OW + 1, dtype, "db")


@pytest.mark.parametrize("cp", CONV_POOL[::5], ids=_id)
def test_oracle_backward_matches_a_numerical_gradient(cp):
    case, pool = cp
    case = {**case, "N": min(case["N"], 2), "C": min(case["C"], 3), "FN": min(case["FN"], 3)}
    d = _setup(case, pool, F64, 3)
    s, p = case["stride"], case["pad"]
    out, am = _fused_forward(ref, d, case, pool)
    # Away from the ReLU's and the pooling's kinks the loss sum(out * dout) is smooth; a step of
    # 1e-6 cannot cross one unless two candidates are that close, which this data avoids.
    dx, dW, db = np.empty_like(d["x"]), np.zeros_like(d["W"]), np.zeros_like(d["b"])
    ref.conv2d_relu_maxpool2d_backward(dx, dW, db, d["dout"], d["x"], d["W"], out, am, s, p)

    def loss():
        o, _ = _fused_forward(ref, d, case, pool)
        return float(np.sum(o * d["dout"]))

    for name, grad in (("x", dx), ("W", dW), ("b", db)):
        num = numerical_gradient(loss, d[name])
        np.testing.assert_allclose(grad, num, rtol=numerical_gradient_rtol(), atol=1e-7, err_msg=name)


def _args(dtype=np.float32):
    rng = np.random.default_rng(7)
    x, W, b = rand(rng, (2, 3, 6, 6), dtype), rand(rng, (4, 3, 3, 3), dtype), rand(rng, (4,), dtype)
    return [np.zeros((2, 4, 3, 3), dtype), np.zeros((2, 4, 3, 3), np.int32), x, W, b, 1, 1, 2, 2, 2, 0]


def _bwd_args(dtype=np.float32):
    a = _args(dtype)
    out, am, x, W = a[0], a[1], a[2], a[3]
    nat.conv2d_relu_maxpool2d_forward(out, am, x, W, a[4], 1, 1, 2, 2, 2, 0)
    dout = rand(np.random.default_rng(8), out.shape, dtype)
    return [np.zeros_like(x), np.zeros_like(W), np.zeros(4, dtype), dout, x, W, out, am, 1, 1]


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


BAD = [
    ("forward", "int64 x", 2, lambda a: a[2].astype(np.int64), TypeError, "x"),
    ("forward", "mixed dtypes", 3, lambda a: a[3].astype(np.float64), TypeError, "W"),
    ("forward", "float argmax", 1, lambda a: a[1].astype(np.float32), TypeError, "argmax"),
    ("forward", "read-only out", 0, lambda a: readonly(a[0]), ValueError, "out"),
    ("forward", "read-only argmax", 1, lambda a: readonly(a[1]), ValueError, "argmax"),
    ("forward", "out shape", 0, lambda a: np.zeros((2, 4, 3, 2), np.float32), ValueError, "out"),
    ("forward", "channel mismatch", 3, lambda a: np.ones((4, 2, 3, 3), np.float32), ValueError, "W"),
    ("forward", "transposed x", 2, lambda a: np.ascontiguousarray(a[2].T).T, ValueError, "x"),
    ("forward", "pool_stride 0", 9, lambda a: 0, ValueError, "pool_stride"),
    ("forward", "pool_pad over half the window", 10, lambda a: 2, ValueError, "pool_pad"),
    ("forward", "float PH", 7, lambda a: 2.0, TypeError, "PH"),
    ("forward", "window over the output plane", 7, lambda a: 9, ValueError, "x"),
    ("forward", "list x", 2, lambda a: a[2].tolist(), TypeError, "x"),
    ("backward", "argmax out of range", 7, lambda a: np.full_like(a[7], 36), ValueError, "argmax"),
    ("backward", "negative argmax", 7, lambda a: np.full_like(a[7], -1), ValueError, "argmax"),
    ("backward", "out shape", 6, lambda a: np.ones((2, 4, 3, 2), np.float32), ValueError, "out"),
    ("backward", "argmax shape", 7, lambda a: np.zeros((2, 4, 3, 2), np.int32), ValueError, "argmax"),
    ("backward", "read-only dW", 1, lambda a: readonly(a[1]), ValueError, "dW"),
    ("backward", "dx shape", 0, lambda a: np.zeros((2, 3, 6, 5), np.float32), ValueError, "dx"),
    ("backward", "out dtype", 6, lambda a: a[6].astype(np.float64), TypeError, "out"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", BAD, ids=[f"{c[0]}-{c[1]}" for c in BAD])
def test_bad_arguments_raise_the_same_error_on_both_backends(impl, case):
    which, _, i, bad, exc, arg = case
    args = (_args if which == "forward" else _bwd_args)()
    args[i] = bad(args)
    with pytest.raises(exc, match=f"conv2d_relu_maxpool2d_{which}.*'{arg}'"):
        getattr(impl, f"conv2d_relu_maxpool2d_{which}")(*args)


@pytest.mark.parametrize("impl", IMPLS)
def test_outputs_overlapping_inputs_are_refused(impl):
    a = _args()
    a[0] = a[2].reshape(-1)[: a[0].size].reshape(a[0].shape)  # out is a view of x
    with pytest.raises(ValueError, match="overlap"):
        impl.conv2d_relu_maxpool2d_forward(*a)
    b = _bwd_args()
    b[1] = b[5]  # dW is W
    with pytest.raises(ValueError, match="overlap"):
        impl.conv2d_relu_maxpool2d_backward(*b)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_and_no_filters(impl):
    for N, FN in ((0, 4), (2, 0)):
        rng = np.random.default_rng(0)
        x, W, b = rand(rng, (N, 3, 6, 6), np.float32), rand(rng, (FN, 3, 3, 3), np.float32), np.zeros(FN, np.float32)
        out, am = np.empty((N, FN, 3, 3), np.float32), np.empty((N, FN, 3, 3), np.int32)
        impl.conv2d_relu_maxpool2d_forward(out, am, x, W, b, 1, 1, 2, 2, 2, 0)
        dx = np.full(x.shape, np.nan, np.float32)
        dW, db = np.zeros_like(W), np.zeros_like(b)
        impl.conv2d_relu_maxpool2d_backward(dx, dW, db, out, x, W, out, am, 1, 1)
        assert not np.isnan(dx).any() and not dW.any()
