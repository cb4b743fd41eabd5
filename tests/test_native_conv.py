"""Native convolution kernels against the NumPy oracle.

im2col, col2im, conv2d_forward / conv2d_backward and the ReLU-fused conv2d_relu_forward /
conv2d_relu_backward, float32 and float64, over a deterministic sample of edge shapes that
covers every value of every axis. Tolerances come from tests/tolerance.py: the reduction
length of each result and a magnitude computed in float64 from absolute values (the same
oracle run on |x|, |W|, |dout|, ...).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastlayers
from fastlayers import reference as ref
from fastlayers.backend import _native as nat
from fastlayers.numerical import numerical_gradient

from .tolerance import assert_close_reduction, numerical_gradient_rtol

DTYPES = [np.float32, np.float64]
F64 = np.float64
IMPLS = [pytest.param(nat, id="native"), pytest.param(ref, id="numpy")]


# The bounds here are a direct sum's (tests/test_native_winograd.py covers the Winograd path).
pytestmark = pytest.mark.usefixtures("im2col_path")


def out_size(H, F, stride, pad):
    return (H + 2 * pad - F) // stride + 1


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# --- the sweep ---------------------------------------------------------------------------

AXES = {
    "N": [1, 2, 3, 17],
    "C": [1, 3, 16, 17],
    "H": list(range(1, 13)),
    "W": list(range(1, 13)),
    "FH": [1, 2, 3, 4, 5],
    "FW": [1, 2, 3, 4, 5],
    "stride": [1, 2, 3],
    "pad": [0, 1, 2],
    "FN": [1, 2, 5, 7, 16, 31],
}


def _valid(case):
    return case["H"] + 2 * case["pad"] >= case["FH"] and case["W"] + 2 * case["pad"] >= case["FW"]


def _sweep(count=44, seed=2024):
    """A seeded sample of valid geometries in which every value of every axis occurs."""
    rng = np.random.default_rng(seed)
    cases = []
    names = list(AXES)
    # Each value of each axis once, the other axes drawn at random (redrawn until valid).
    for name in names:
        for v in AXES[name]:
            while True:
                case = {k: AXES[k][rng.integers(len(AXES[k]))] for k in names}
                case[name] = v
                if _valid(case):
                    cases.append(case)
                    break
    keep = [cases[i] for i in sorted(rng.choice(len(cases), size=min(count, len(cases)), replace=False))]
    covered = {k: {c[k] for c in keep} for k in names}
    # Top up any value the subset dropped.
    for name in names:
        for v in AXES[name]:
            if v not in covered[name]:
                keep.append(next(c for c in cases if c[name] == v))
                covered = {k: {c[k] for c in keep} for k in names}
    # Output size 1 both ways, 1x1 direct convolutions, a window exactly the padded plane.
    keep += [
        dict(N=2, C=3, H=5, W=5, FH=5, FW=5, stride=1, pad=0, FN=7),
        dict(N=3, C=1, H=1, W=1, FH=3, FW=3, stride=2, pad=1, FN=2),
        dict(N=17, C=16, H=7, W=9, FH=1, FW=1, stride=1, pad=0, FN=5),
        dict(N=1, C=17, H=12, W=11, FH=1, FW=1, stride=1, pad=0, FN=31),
        dict(N=2, C=3, H=4, W=6, FH=1, FW=1, stride=2, pad=1, FN=7),
        dict(N=2, C=3, H=3, W=1, FH=5, FW=5, stride=3, pad=2, FN=2),
    ]
    return keep


CASES = _sweep()


def _case_id(c):
    return "N{N}C{C}H{H}W{W}F{FH}x{FW}s{stride}p{pad}FN{FN}".format(**c)


def _geometry(case):
    OH, OW = out_size(case["H"], case["FH"], case["stride"], case["pad"]), out_size(
        case["W"], case["FW"], case["stride"], case["pad"]
    )
    return OH, OW


def test_sweep_covers_every_axis_value():
    for name, values in AXES.items():
        assert {c[name] for c in CASES} >= set(values), name
    assert any(_geometry(c) == (1, 1) for c in CASES)


def _data(case, dtype, seed):
    rng = np.random.default_rng(seed)
    N, C, H, W, FN, FH, FW = (case[k] for k in ("N", "C", "H", "W", "FN", "FH", "FW"))
    OH, OW = _geometry(case)
    return dict(
        x=rand(rng, (N, C, H, W), dtype),
        W=rand(rng, (FN, C, FH, FW), dtype),
        b=rand(rng, (FN,), dtype),
        dout=rand(rng, (N, FN, OH, OW), dtype),
        dW0=rand(rng, (FN, C, FH, FW), dtype),
        db0=rand(rng, (FN,), dtype),
    )


def _frozen(*arrays):
    return [a.copy() for a in arrays]


def _assert_unchanged(before, after):
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")


def _abs64(a):
    return np.abs(a).astype(F64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_and_fused_forward(case, dtype):
    d = _data(case, dtype, 1)
    x, W, b = d["x"], d["W"], d["b"]
    s, p = case["stride"], case["pad"]
    OH, OW = _geometry(case)
    shape = (case["N"], case["FN"], OH, OW)
    mag = np.empty(shape, F64)
    ref.conv2d_forward(mag, _abs64(x), _abs64(W), _abs64(b), s, p)
    n = case["C"] * case["FH"] * case["FW"] + 1
    for kernel in ("conv2d_forward", "conv2d_relu_forward"):
        before = _frozen(x, W, b)
        got, want = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
        getattr(nat, kernel)(got, x, W, b, s, p)
        getattr(ref, kernel)(want, x, W, b, s, p)
        _assert_unchanged(before, (x, W, b))
        assert_close_reduction(got, want, mag, n, dtype, kernel)
        if kernel == "conv2d_relu_forward":
            assert (got >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward_and_fused_backward(case, dtype):
    d = _data(case, dtype, 2)
    x, W, b, dout = d["x"], d["W"], d["b"], d["dout"]
    s, p = case["stride"], case["pad"]
    N, FN, FH, FW = case["N"], case["FN"], case["FH"], case["FW"]
    OH, OW = _geometry(case)
    out = np.empty((N, FN, OH, OW), dtype)
    ref.conv2d_relu_forward(out, x, W, b, s, p)
    for kernel in ("conv2d_backward", "conv2d_relu_backward"):
        fused = kernel == "conv2d_relu_backward"
        extra = (out,) if fused else ()
        g = np.where(out > 0, dout, 0).astype(dtype) if fused else dout
        res = {}
        for name, impl in (("native", nat), ("numpy", ref)):
            dx = np.full(x.shape, np.nan, dtype)  # overwritten: garbage must not leak
            dW, db = d["dW0"].copy(), d["db0"].copy()  # accumulated
            before = _frozen(dout, x, W, *extra)
            getattr(impl, kernel)(dx, dW, db, dout, x, W, *extra, s, p)
            _assert_unchanged(before, (dout, x, W, *extra))
            res[name] = dx, dW, db
        (dx, dW, db), (rdx, rdW, rdb) = res["native"], res["numpy"]
        mdx, mdW, mdb = np.empty(x.shape, F64), np.zeros(W.shape, F64), np.zeros(FN, F64)
        ref.conv2d_backward(mdx, mdW, mdb, _abs64(g), _abs64(x), _abs64(W), s, p)
        assert_close_reduction(dx, rdx, mdx, FN * FH * FW, dtype, f"{kernel} dx")
        assert_close_reduction(dW, rdW, mdW + _abs64(d["dW0"]), N * OH * OW + 1, dtype, f"{kernel} dW")
        assert_close_reduction(db, rdb, mdb + _abs64(d["db0"]), N * OH * OW + 1, dtype, f"{kernel} db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES[::3], ids=_case_id)
def test_backward_without_dx(case, dtype):
    d = _data(case, dtype, 3)
    s, p = case["stride"], case["pad"]
    N, FN = case["N"], case["FN"]
    OH, OW = _geometry(case)
    out = np.empty(d["dout"].shape, dtype)
    ref.conv2d_relu_forward(out, d["x"], d["W"], d["b"], s, p)
    for kernel, extra in (("conv2d_backward", ()), ("conv2d_relu_backward", (out,))):
        res = {}
        for name, impl in (("native", nat), ("numpy", ref)):
            dW, db = d["dW0"].copy(), d["db0"].copy()
            getattr(impl, kernel)(None, dW, db, d["dout"], d["x"], d["W"], *extra, s, p)
            res[name] = dW, db
        mdW, mdb = np.zeros(d["W"].shape, F64), np.zeros(FN, F64)
        ref.conv2d_backward(None, mdW, mdb, _abs64(d["dout"]), _abs64(d["x"]), _abs64(d["W"]), s, p)
        assert_close_reduction(res["native"][0], res["numpy"][0], mdW + _abs64(d["dW0"]), N * OH * OW + 1, dtype)
        assert_close_reduction(res["native"][1], res["numpy"][1], mdb + _abs64(d["db0"]), N * OH * OW + 1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_im2col_and_col2im(case, dtype):
    d = _data(case, dtype, 4)
    x = d["x"]
    N, C, FH, FW, s, p = (case[k] for k in ("N", "C", "FH", "FW", "stride", "pad"))
    OH, OW = _geometry(case)
    shape = (N * OH * OW, C * FH * FW)
    got, want = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
    before = _frozen(x)
    nat.im2col(got, x, FH, FW, s, p)
    ref.im2col(want, x, FH, FW, s, p)
    _assert_unchanged(before, (x,))
    np.testing.assert_array_equal(got, want)  # a pure copy: exact

    col = rand(np.random.default_rng(5), shape, dtype)
    got, want = np.full(x.shape, np.nan, dtype), np.full(x.shape, np.nan, dtype)
    before = _frozen(col)
    nat.col2im(got, col, FH, FW, s, p)
    ref.col2im(want, col, FH, FW, s, p)
    _assert_unchanged(before, (col,))
    mag = np.empty(x.shape, F64)
    ref.col2im(mag, _abs64(col), FH, FW, s, p)
    assert_close_reduction(got, want, mag, FH * FW, dtype, "col2im")


# --- blocking: images cut into tiles ---------------------------------------------------

# The scratch holds (C*FH*FW + FN) columns of up to 1 MiB: these images need several tiles
# of whole output rows, or tiles of part of a row (one output row of their col is over the
# budget), with and without stride.
TILED = [
    dict(N=2, C=16, H=64, W=64, FH=5, FW=5, stride=1, pad=2, FN=5),
    dict(N=3, C=16, H=121, W=97, FH=3, FW=4, stride=2, pad=1, FN=7),
    dict(N=1, C=512, H=3, W=120, FH=3, FW=3, stride=1, pad=1, FN=2),
    dict(N=2, C=512, H=4, W=150, FH=3, FW=2, stride=2, pad=2, FN=3),
    # W over the budget for per-group dW partials: the images take turns instead.
    dict(N=3, C=512, H=5, W=4, FH=4, FW=4, stride=1, pad=1, FN=520),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TILED, ids=_case_id)
def test_images_cut_into_tiles_match_the_oracle(case, dtype):
    d = _data(case, dtype, 6)
    x, W, b, dout = d["x"], d["W"], d["b"], d["dout"]
    s, p = case["stride"], case["pad"]
    N, FN, FH, FW = case["N"], case["FN"], case["FH"], case["FW"]
    OH, OW = _geometry(case)
    got, want = np.full(dout.shape, np.nan, dtype), np.full(dout.shape, np.nan, dtype)
    nat.conv2d_forward(got, x, W, b, s, p)
    ref.conv2d_forward(want, x, W, b, s, p)
    mag = np.empty(dout.shape, F64)
    ref.conv2d_forward(mag, _abs64(x), _abs64(W), _abs64(b), s, p)
    assert_close_reduction(got, want, mag, case["C"] * FH * FW + 1, dtype, "out")
    res = {}
    for name, impl in (("native", nat), ("numpy", ref)):
        dx, dW, db = np.full(x.shape, np.nan, dtype), d["dW0"].copy(), d["db0"].copy()
        impl.conv2d_relu_backward(dx, dW, db, dout, x, W, want, s, p)
        res[name] = dx, dW, db
    g = np.where(want > 0, dout, 0)
    mdx, mdW, mdb = np.empty(x.shape, F64), np.zeros(W.shape, F64), np.zeros(FN, F64)
    ref.conv2d_backward(mdx, mdW, mdb, _abs64(g), _abs64(x), _abs64(W), s, p)
    for k, (what, m, n) in enumerate(
        (("dx", mdx, FN * FH * FW), ("dW", mdW + _abs64(d["dW0"]), N * OH * OW + 1), ("db", mdb + _abs64(d["db0"]), N * OH * OW + 1))
    ):
        assert_close_reduction(res["native"][k], res["numpy"][k], m, n, dtype, what)


MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource
    import numpy as np
    from fastlayers.backend import _native as nat
    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    def arrays(N):
        x = rng.standard_normal((N, 16, 128, 128), dtype=np.float32)
        W = rng.standard_normal((16, 16, 5, 5), dtype=np.float32)
        b = np.zeros(16, np.float32)
        # Outputs filled, so their pages are resident before the measurement.
        out, dx = np.full((N, 16, 128, 128), 0.0, np.float32), np.full(x.shape, 0.0, np.float32)
        return x, W, b, out, out + 1, dx, np.zeros_like(W), np.zeros_like(b)
    def run(a):
        x, W, b, out, dout, dx, dW, db = a
        nat.conv2d_forward(out, x, W, b, 1, 2)
        nat.conv2d_backward(dx, dW, db, dout, x, W, 1, 2)
    run(arrays(2))  # same per-image GEMMs: OpenBLAS and the scratch reach their working size
    big = arrays(8)
    before = peak_mib()
    run(big)
    col_mib = 8 * 128 * 128 * 16 * 5 * 5 * 4 / 2**20
    print(json.dumps({"growth_mib": peak_mib() - before, "batch_col_mib": col_mib}))
    """
)


def test_big_batch_does_not_allocate_a_batch_sized_col():
    """A batch whose whole im2col would take 200 MiB runs within a few MiB of scratch."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True,
                         env=dict(os.environ))
    r = json.loads(out.stdout)
    assert r["batch_col_mib"] > 190
    assert r["growth_mib"] < 32, r


# --- arguments -------------------------------------------------------------------------

def _fwd_args(dtype=np.float32):
    rng = np.random.default_rng(7)
    x, W, b = rand(rng, (2, 3, 5, 5), dtype), rand(rng, (4, 3, 3, 3), dtype), rand(rng, (4,), dtype)
    return [np.zeros((2, 4, 5, 5), dtype), x, W, b, 1, 1]


def _bwd_args(dtype=np.float32):
    rng = np.random.default_rng(8)
    x, W = rand(rng, (2, 3, 5, 5), dtype), rand(rng, (4, 3, 3, 3), dtype)
    dout = rand(rng, (2, 4, 5, 5), dtype)
    return [np.zeros_like(x), np.zeros_like(W), np.zeros(4, dtype), dout, x, W, 1, 1]


def _fused_bwd_args(dtype=np.float32):
    a = _bwd_args(dtype)
    return a[:6] + [np.abs(a[3])] + a[6:]


def _im2col_args(dtype=np.float32):
    x = rand(np.random.default_rng(9), (2, 3, 5, 5), dtype)
    return [np.zeros((2 * 5 * 5, 27), dtype), x, 3, 3, 1, 1]


def _col2im_args(dtype=np.float32):
    col = rand(np.random.default_rng(10), (2 * 5 * 5, 27), dtype)
    return [np.zeros((2, 3, 5, 5), dtype), col, 3, 3, 1, 1]


KERNELS = {
    "conv2d_forward": _fwd_args,
    "conv2d_relu_forward": _fwd_args,
    "conv2d_backward": _bwd_args,
    "conv2d_relu_backward": _fused_bwd_args,
    "im2col": _im2col_args,
    "col2im": _col2im_args,
}


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


# (kernel, description, argument index, replacement(args) -> value, exception)
def _bad_cases():
    cases = []
    for k in KERNELS:
        hyper = 2 if k in ("im2col", "col2im") else 0  # index of FH or of stride, from the end
        n = len(KERNELS[k]())
        stride_i, pad_i = n - 2, n - 1
        cases += [
            (k, "int64 array", 1, lambda a: a[1].astype(np.int64), TypeError),
            (k, "mixed dtypes", 0, lambda a: a[0].astype(np.float64), TypeError),
            (k, "read-only output", 0, lambda a: readonly(a[0]), ValueError),
            (k, "wrong ndim", 1, lambda a: a[1].reshape(-1), ValueError),
            (k, "wrong output shape", 0, lambda a: np.empty(a[0].shape[:-1] + (a[0].shape[-1] + 1,), a[0].dtype),
             ValueError),
            (k, "transposed view", 1, lambda a: np.ascontiguousarray(a[1].T).T, ValueError),
            (k, "negative strides", 1, lambda a: a[1][::-1], ValueError),
            (k, "stride 0", stride_i, lambda a: 0, ValueError),
            (k, "float stride", stride_i, lambda a: 1.0, TypeError),
            (k, "bool pad", pad_i, lambda a: True, TypeError),
            (k, "negative pad", pad_i, lambda a: -1, ValueError),
            (k, "list", 1, lambda a: a[1].tolist(), TypeError),
        ]
        if hyper:
            cases += [
                (k, "window over the padded plane", 2, lambda a: 8, ValueError),
                (k, "FW 0", 3, lambda a: 0, ValueError),
                (k, "numpy int FH", 2, lambda a: np.int64(3), None),
            ]
        else:
            cases += [
                (k, "channel mismatch", 2 if "forward" in k else 5,
                 lambda a, k=k: np.ones((4, 2, 3, 3), a[1].dtype), ValueError),
                (k, "empty filter", 2 if "forward" in k else 5,
                 lambda a, k=k: np.ones((4, 3, 0, 3), a[1].dtype), ValueError),
                (k, "filter over the padded plane", 2 if "forward" in k else 5,
                 lambda a, k=k: np.ones((4, 3, 8, 3), a[1].dtype), ValueError),
            ]
    cases += [
        ("conv2d_forward", "bias shape", 3, lambda a: np.ones(3, np.float32), ValueError),
        ("conv2d_backward", "dout shape", 3, lambda a: np.ones((2, 4, 5, 4), np.float32), ValueError),
        ("conv2d_backward", "dW shape", 1, lambda a: np.zeros((4, 3, 3, 2), np.float32), ValueError),
        ("conv2d_backward", "db shape", 2, lambda a: np.zeros(5, np.float32), ValueError),
        ("conv2d_relu_backward", "out shape", 6, lambda a: np.ones((2, 4, 5, 4), np.float32), ValueError),
        ("conv2d_relu_backward", "out dtype", 6, lambda a: np.ones((2, 4, 5, 5), np.float64), TypeError),
        ("im2col", "col shape", 0, lambda a: np.empty((50, 26), np.float32), ValueError),
        ("col2im", "col shape", 1, lambda a: np.ones((49, 27), np.float32), ValueError),
    ]
    return cases


BAD = _bad_cases()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", BAD, ids=[f"{c[0]}-{c[1]}" for c in BAD])
def test_bad_arguments_raise_the_same_error_on_both_backends(impl, case):
    kernel, _, i, bad, exc = case
    args = KERNELS[kernel]()
    args[i] = bad(args)
    if exc is None:
        getattr(impl, kernel)(*args)
    else:
        with pytest.raises(exc, match=kernel):
            getattr(impl, kernel)(*args)


# (kernel, outputs and inputs that share memory)
def _aliased(kernel, first, second):
    """The arguments of kernel with argument `second` overwritten by a view of `first`'s memory."""
    args = KERNELS[kernel]()
    a, b = args[first], args[second]
    flat = a.reshape(-1)
    if flat.size < b.size:
        base = np.zeros(b.size, a.dtype)
        base[: flat.size] = flat
        args[first] = base[: flat.size].reshape(a.shape)
        flat = base
    view = flat[: b.size].reshape(b.shape)
    view[...] = b
    args[second] = view
    return args


ALIASES = [
    ("conv2d_forward", 0, 1), ("conv2d_forward", 2, 0), ("conv2d_forward", 3, 0),
    ("conv2d_relu_forward", 0, 1),
    ("conv2d_backward", 0, 4), ("conv2d_backward", 3, 0), ("conv2d_backward", 1, 5), ("conv2d_backward", 2, 3),
    ("conv2d_backward", 0, 1),
    ("conv2d_relu_backward", 6, 0), ("conv2d_relu_backward", 1, 5),
    ("im2col", 0, 1), ("col2im", 1, 0),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("alias", ALIASES, ids=[f"{k}-{a}-{b}" for k, a, b in ALIASES])
def test_outputs_aliasing_an_argument_are_refused(impl, alias):
    kernel, first, second = alias
    with pytest.raises(ValueError, match="overlap"):
        getattr(impl, kernel)(*_aliased(kernel, first, second))


@pytest.mark.parametrize("impl", IMPLS)
def test_inputs_may_share_memory(impl):
    """Only outputs are checked for overlap: x and W may be the same array."""
    x = np.ones((1, 2, 3, 3), np.float32)
    out = np.empty((1, 1, 1, 1), np.float32)
    impl.conv2d_forward(out, x, x, np.zeros(1, np.float32), 1, 0)
    assert out[0, 0, 0, 0] == 18


# --- sizes beyond int64 ------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_col_whose_rows_overflow_int64_is_a_shape_error(impl):
    """N*OH*OW = 2**20 * (3*2**20)**2 does not fit int64; the arrays are empty, so this
    reaches the size arithmetic itself rather than an allocation."""
    x = np.empty((2**20, 0, 2**20, 2**20), np.float32)
    col = np.empty((0, 0), np.float32)
    with pytest.raises(ValueError, match="col"):
        impl.im2col(col, x, 1, 1, 1, 2**20)
    with pytest.raises(ValueError, match="col"):
        impl.col2im(x, col, 1, 1, 1, 2**20)


@pytest.mark.parametrize("impl", IMPLS)
def test_col_whose_columns_overflow_int64_is_a_shape_error(impl):
    """C*FH*FW = 2**40 * 2**30 does not fit int64."""
    x = np.empty((1, 2**40, 0, 1), np.float32)
    with pytest.raises(ValueError, match="col"):
        impl.im2col(np.empty((0, 0), np.float32), x, 2**30, 1, 1, 2**29)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_a_pad_beyond_int64_planes_is_refused(impl, kernel):
    args = KERNELS[kernel]()
    args[-1] = 2**62
    with pytest.raises(ValueError):
        getattr(impl, kernel)(*args)


def test_empty_batches_channels_and_filters():
    rng = np.random.default_rng(11)
    for N, C, FN in ((0, 3, 4), (2, 0, 4), (2, 3, 0)):
        x, W, b = rand(rng, (N, C, 4, 4), F64), rand(rng, (FN, C, 3, 3), F64), rand(rng, (FN,), F64)
        dout = rand(rng, (N, FN, 2, 2), F64)
        got, want = np.full((N, FN, 2, 2), np.nan), np.full((N, FN, 2, 2), np.nan)
        nat.conv2d_forward(got, x, W, b, 1, 0)
        ref.conv2d_forward(want, x, W, b, 1, 0)
        np.testing.assert_array_equal(got, want)  # C = 0: out = b exactly
        res = []
        for impl in (nat, ref):
            dx, dW, db = np.full(x.shape, np.nan), np.ones(W.shape), np.ones(FN)
            impl.conv2d_backward(dx, dW, db, dout, x, W, 1, 0)
            res.append((dx, dW, db))
        np.testing.assert_array_equal(res[0][0], res[1][0])  # empty, or zero when FN = 0
        np.testing.assert_array_equal(res[0][1], res[1][1])  # empty, or untouched when N = 0
        mdb = np.abs(dout).sum(axis=(0, 2, 3)) + 1
        assert_close_reduction(res[0][2], res[1][2], mdb, N * 4 + 1, F64, "db")


# --- reproducibility ---------------------------------------------------------------------

REPRO = [
    # Images in parallel with single-threaded GEMMs, dW from fixed image groups.
    dict(N=17, C=16, H=12, W=12, FH=3, FW=3, stride=1, pad=1, FN=16),
    # One image: multi-threaded GEMMs straight into dW.
    dict(N=1, C=16, H=64, W=64, FH=3, FW=3, stride=1, pad=1, FN=32),
    # 1x1 direct.
    dict(N=9, C=32, H=16, W=16, FH=1, FW=1, stride=1, pad=0, FN=24),
    # A lone image whose GEMM is 100x100x784: OpenBLAS gives other bits for it on 2 threads.
    dict(N=1, C=16, H=16, W=16, FH=7, FW=7, stride=1, pad=0, FN=100),
    # W too large for per-group partials: images in turn, each split by input channels.
    dict(N=2, C=512, H=4, W=4, FH=4, FW=4, stride=1, pad=0, FN=520),
]


def _run_all(case, dtype):
    d = _data(case, dtype, 12)
    x, W, b, dout = d["x"], d["W"], d["b"], d["dout"]
    s, p = case["stride"], case["pad"]
    FH, FW = case["FH"], case["FW"]
    results = []
    out = np.empty(dout.shape, dtype)
    for k in ("conv2d_forward", "conv2d_relu_forward"):
        o = np.empty(dout.shape, dtype)
        getattr(nat, k)(o, x, W, b, s, p)
        results.append(o)
    nat.conv2d_relu_forward(out, x, W, b, s, p)
    for k, extra in (("conv2d_backward", ()), ("conv2d_relu_backward", (out,))):
        for with_dx in (True, False):
            dx, dW, db = np.empty_like(x), d["dW0"].copy(), d["db0"].copy()
            getattr(nat, k)(dx if with_dx else None, dW, db, dout, x, W, *extra, s, p)
            results += [dx, dW, db] if with_dx else [dW, db]
    OH, OW = _geometry(case)
    col = np.empty((case["N"] * OH * OW, case["C"] * FH * FW), dtype)
    nat.im2col(col, x, FH, FW, s, p)
    dx = np.empty_like(x)
    nat.col2im(dx, col, FH, FW, s, p)
    return results + [col, dx]


@pytest.mark.skipif(not fastlayers.build_info()["openmp"], reason="one thread only without OpenMP")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", REPRO, ids=_case_id)
def test_bitwise_identical_for_one_and_two_threads(case, dtype):
    saved = fastlayers.backend.get_num_threads()
    try:
        fastlayers.backend.set_num_threads(1)
        one = _run_all(case, dtype)
        fastlayers.backend.set_num_threads(2)
        two = _run_all(case, dtype)
    finally:
        fastlayers.backend.set_num_threads(saved)
    for k, (a, b) in enumerate(zip(one, two)):
        assert np.array_equal(a, b), f"result {k} differs between 1 and 2 threads"


def test_concurrent_calls_from_python_threads():
    """Two Python threads running convolutions at once (the GIL is released), beside a third
    running plain GEMMs, must neither deadlock nor change any result by a single bit."""
    rng = np.random.default_rng(14)
    x, W = rand(rng, (12, 16, 14, 14), np.float32), rand(rng, (32, 16, 3, 3), np.float32)
    b = rand(rng, (32,), np.float32)
    want = np.empty((12, 32, 14, 14), np.float32)
    nat.conv2d_forward(want, x, W, b, 1, 1)
    a, B = rand(rng, (300, 500), np.float32), rand(rng, (500, 400), np.float32)
    gemm_want = np.empty((300, 400), np.float32)
    nat.affine_forward(gemm_want, a, B, np.zeros(400, np.float32))
    differs = []

    def convs():
        out, dx, dW, db = np.empty_like(want), np.empty_like(x), np.zeros_like(W), np.zeros_like(b)
        for _ in range(10):
            nat.conv2d_forward(out, x, W, b, 1, 1)
            nat.conv2d_backward(dx, dW, db, want, x, W, 1, 1)
            differs.append(not np.array_equal(out, want))

    gemm_outs = []

    def gemms():
        for _ in range(30):
            o = np.empty_like(gemm_want)
            nat.affine_forward(o, a, B, np.zeros(400, np.float32))
            gemm_outs.append(o)

    threads = [threading.Thread(target=f, daemon=True) for f in (convs, convs, gemms)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert len(differs) == 20 and not any(differs)
    assert len(gemm_outs) == 30
    if fastlayers.build_info()["openmp"]:
        # OpenBLAS stays single-threaded and GEMMs are tiled by shape: every bit repeats.
        assert fastlayers.build_info()["blas_threads"] == 1
        for o in gemm_outs:
            assert np.array_equal(o, gemm_want), "GEMM beside convolutions"
    else:
        # OpenBLAS's own threads may run a call single-threaded while busy: other rounding.
        mag = np.abs(a).astype(F64) @ np.abs(B)
        for o in gemm_outs:
            assert_close_reduction(o, gemm_want, mag, 500, np.float32, "GEMM beside convolutions")


# --- the fused oracle's gradient -----------------------------------------------------------

def test_fused_oracle_backward_matches_numerical_gradient():
    rng = np.random.default_rng(13)
    s, p = 2, 1
    x, W, b = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    OH, OW = out_size(6, 3, s, p), out_size(5, 2, s, p)
    R = rng.standard_normal((2, 4, OH, OW))
    out = np.empty((2, 4, OH, OW))

    def loss():
        ref.conv2d_relu_forward(out, x, W, b, s, p)
        return float(np.sum(out * R))

    loss()
    # Central differences need every pre-activation clear of the kink at 0.
    pre = np.empty_like(out)
    ref.conv2d_forward(pre, x, W, b, s, p)
    assert np.abs(pre).min() > 1e-4
    y = out.copy()
    dx, dW, db = np.empty_like(x), np.zeros_like(W), np.zeros_like(b)
    ref.conv2d_relu_backward(dx, dW, db, R, x, W, y, s, p)
    rtol = numerical_gradient_rtol()
    for analytic, param, what in ((dx, x, "dx"), (dW, W, "dW"), (db, b, "db")):
        numeric = numerical_gradient(loss, param)
        atol = rtol * max(1.0, float(np.abs(numeric).max()))
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=what)


WIDE_VS_BASELINE_PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fastlayers.backend import _native as N
    from fastlayers import backend
    backend.set_conv_algorithm("im2col")  # the direct path runs on AVX-512 CPUs only
    rng = np.random.default_rng(11)
    res = {}
    for dt in ("float32", "float64"):
        # Row widths around the 16 (float) and 8 (double) lanes of a 64-byte vector.
        for W, k, pad in ((1, 1, 0), (7, 3, 1), (9, 3, 0), (17, 3, 1), (20, 5, 2), (33, 3, 1)):
            x = rng.standard_normal((3, 2, 5, W)).astype(dt)
            w = rng.standard_normal((4, 2, k, k)).astype(dt)
            OH, OW = 5 + 2 * pad - k + 1, W + 2 * pad - k + 1
            out = np.empty((3, 4, OH, OW), dt)
            N.conv2d_forward(out, x, w, np.zeros(4, dt), 1, pad)
            dout = rng.standard_normal(out.shape).astype(dt)
            dx, dW, db = np.empty_like(x), np.zeros_like(w), np.zeros(4, dt)
            N.conv2d_backward(dx, dW, db, dout, x, w, 1, pad)
            res.update({f"out_{dt}_{W}": out, f"dx_{dt}_{W}": dx, f"dW_{dt}_{W}": dW})
        p = rng.standard_normal(1001).astype(dt)
        g, m, v = rng.standard_normal(1001).astype(dt), np.zeros(1001, dt), np.zeros(1001, dt)
        for step in (1, 2, 3):
            N.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, step, 1e-4, 1e-5)
        res[f"adam_{dt}"] = p
    np.savez(sys.argv[1], **res)
    """
)


def test_avx512_and_baseline_builds_give_the_same_bits(tmp_path):
    """im2col/col2im and Adam have AVX-512 builds chosen at run time; they only copy, add in a
    fixed order, or divide and take roots (correctly rounded), so both builds must agree to the
    bit. On a CPU without AVX-512 both runs take the baseline and the test checks determinism."""
    paths = {}
    for label, disable in (("default", "0"), ("baseline", "1")):
        paths[label] = tmp_path / f"{label}.npz"
        env = {**os.environ, "FASTLAYERS_DISABLE_AVX512": disable}
        subprocess.run([sys.executable, "-c", WIDE_VS_BASELINE_PROBE, str(paths[label])], env=env, check=True,
                       timeout=120)
    a, b = np.load(paths["default"]), np.load(paths["baseline"])
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert a[key].tobytes() == b[key].tobytes(), key
