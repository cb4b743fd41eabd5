"""Optimizer updates, max-norm and penalties: native kernels against the NumPy oracle.

The update rules other than Adam repeat the oracle's operations one for one, in its dtype
and order (csrc/optim.h; the kernel files are built without fused multiply-adds), and
every operation involved (+, -, *, /, sqrt) is correctly rounded in both: their results
must be bit-identical. Adam's m and v are too; its parameter step multiplies by the
reciprocal bias corrections where the oracle divides, so the parameter is compared with
the rounding bound of the short chain of operations that forms the step.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from fastlayers import backend, reference
from fastlayers.backend import _native

from .tolerance import assert_close_elementwise, assert_close_reduction

DTYPES = [np.float32, np.float64]
IMPLS = [pytest.param(_native, id="native"), pytest.param(reference, id="numpy")]
# 1, primes and sizes that are not multiples of any SIMD width, 0, and 2-D shapes.
SHAPES = [(0,), (1,), (7,), (31,), (4097,), ((1 << 16) + 3,), (3, 5), (17, 31), (4, 0)]
PENALTIES = [(0.0, 0.0), (0.05, 0.0), (0.0, 0.01), (0.05, 0.01)]

# name -> (state names, hyper-parameters between lr and weight_decay; Adam's step is added per call)
RULES = {
    "sgd_update": ((), ()),
    "momentum_update": (("v",), (0.9,)),
    "nesterov_update": (("v",), (0.7,)),
    "adagrad_update": (("h",), (1e-7,)),
    "rmsprop_update": (("h",), (0.9, 1e-7)),
    "adam_update": (("m", "v"), (0.9, 0.999, 1e-8)),
}
LR = 0.01


def params_with_zeros(rng, shape, dtype):
    """Normal values with exact zeros (+0 and -0: sign(0) = 0 for l1) and a few repeats."""
    p = rng.standard_normal(shape).astype(dtype)
    flat = p.reshape(-1)
    flat[::5] = 0
    flat[1::11] = -0.0
    return p


def call(impl, name, param, grad, state, lr=LR, hyper=None, step=1, wd=0.0, l1=0.0):
    names, default = RULES[name]
    hyper = list(default if hyper is None else hyper)
    if name == "adam_update":
        hyper.append(step)
    return getattr(impl, name)(param, grad, *state, lr, *hyper, wd, l1)


def run_both(name, param, grad, state, step, wd, l1):
    """One update from the same inputs on each backend; returns (native, oracle) results."""
    out = {}
    for key, impl in (("native", _native), ("numpy", reference)):
        p, s = param.copy(), [a.copy() for a in state]
        g = grad.copy()
        assert call(impl, name, p, g, s, step=step, wd=wd, l1=l1) is None
        np.testing.assert_array_equal(g, grad, err_msg=f"{key} {name} modified grad")
        out[key] = p, s
    return out["native"], out["numpy"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd,l1", PENALTIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(RULES))
def test_update_matches_oracle_over_several_steps(name, shape, wd, l1, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((name, shape)).encode()))
    names, _ = RULES[name]
    param = params_with_zeros(rng, shape, dtype)
    state = [np.zeros(shape, dtype) for _ in names]
    for step in (1, 2, 3, 4):
        grad = rng.standard_normal(shape).astype(dtype)
        grad.reshape(-1)[2::13] = 0
        (p_nat, s_nat), (p_ref, s_ref) = run_both(name, param, grad, state, step, wd, l1)
        for a, b, what in zip(s_nat, s_ref, names):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} state {what}, step {step}")
        if name == "adam_update":
            # The step d = lr*m_hat/(sqrt(v_hat)+eps) takes about 8 roundings on either side.
            d = np.abs(param.astype(np.float64) - p_ref.astype(np.float64))
            assert_close_reduction(p_nat, p_ref, np.abs(param.astype(np.float64)) + d, 8, dtype,
                                   f"{name} param, step {step}")
        else:
            np.testing.assert_array_equal(p_nat, p_ref, err_msg=f"{name} param, step {step}")
        # Continue from the oracle's state, so the steps follow one trajectory.
        param, state = p_ref, s_ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", [1, 2, 10, 1000, 10**6, 2**40])
def test_adam_bias_correction_small_and_large_steps(dtype, step):
    rng = np.random.default_rng(step % 1000)
    shape = (257,)
    param = params_with_zeros(rng, shape, dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    # A state such as many steps would leave: m of the gradient's scale, v of its square.
    state = [rng.standard_normal(shape).astype(dtype) * 0.1, (rng.random(shape) * 0.1).astype(dtype)]
    for beta1, beta2 in ((0.9, 0.999), (0.0, 0.5), (0.99, 0.9999)):
        out = {}
        for key, impl in (("native", _native), ("numpy", reference)):
            p, s = param.copy(), [a.copy() for a in state]
            call(impl, "adam_update", p, grad, s, hyper=[beta1, beta2, 1e-8], step=step, wd=0.01)
            out[key] = p, s
        (p_nat, s_nat), (p_ref, s_ref) = out["native"], out["numpy"]
        for a, b in zip(s_nat, s_ref):
            np.testing.assert_array_equal(a, b)
        d = np.abs(param.astype(np.float64) - p_ref)
        assert_close_reduction(p_nat, p_ref, np.abs(param.astype(np.float64)) + d, 8, dtype, f"adam step {step}")


def test_adam_first_step_moves_each_weight_by_lr():
    # Step 1 from zero state: m_hat = g, v_hat = g², so every weight moves by lr*sign(g)
    # (up to eps): the bias correction is what makes the first step full size.
    g = np.array([1e-3, -2.0, 50.0, -1e-5], np.float32)
    p, m, v = np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)
    _native.adam_update(p, g, m, v, 0.1, 0.9, 0.999, 1e-12, 1, 0.0, 0.0)
    np.testing.assert_allclose(p, -0.1 * np.sign(g), rtol=1e-5)


@pytest.mark.parametrize("name", list(RULES))
def test_non_finite_values_follow_the_oracle(name):
    # An infinite weight with weight_decay 0 must not turn into NaN (0*inf is skipped), and
    # NaN passes through sign() as NaN, in both implementations.
    names, _ = RULES[name]
    param = np.array([np.inf, -np.inf, np.nan, 1.0, 0.0, -0.0, 2.0], np.float64)
    grad = np.array([0.5, 0.5, 0.5, np.nan, 1.0, -1.0, np.inf])
    for wd, l1 in PENALTIES:
        state = [np.zeros(7) for _ in names]
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the oracle
            (p_nat, s_nat), (p_ref, s_ref) = run_both(name, param, grad, state, 1, wd, l1)
        np.testing.assert_array_equal(p_nat, p_ref)
        for a, b in zip(s_nat, s_ref):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", IMPLS)
def test_l1_leaves_zero_weights_alone(impl):
    # sign(+0) = sign(-0) = 0: a zero weight with zero gradient stays zero under L1.
    p = np.array([0.0, -0.0, 1.0, -1.0], np.float32)
    impl.sgd_update(p, np.zeros(4, np.float32), 0.5, 0.0, 0.1)
    np.testing.assert_array_equal(p, np.array([0.0, 0.0, 0.95, -0.95], np.float32))


# ---------------------------------------------------------------------------------------
# max-norm

MAX_NORM_SHAPES = [(1, 1), (1, 7), (7, 1), (3, 5), (17, 31), (784, 100), (64, 576), (0, 3), (3, 0)]


def max_norm_input(rng, shape, axis, dtype, limit):
    """Slices (columns for axis 0, rows for axis 1) with norms well over the limit, well
    under it, and exactly zero."""
    w = rng.standard_normal(shape)
    slices = w.shape[1 - axis]
    if w.size == 0:
        return w.astype(dtype), np.zeros(slices, bool)
    target = rng.choice([0.0, 0.5, 3.0], size=slices) * limit
    norms = np.sqrt(np.sum(w * w, axis=axis))
    scale = np.where(norms > 0, target / norms, 0.0)
    w = w * (scale[None, :] if axis == 0 else scale[:, None])
    return w.astype(dtype), target > limit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", MAX_NORM_SHAPES, ids=str)
def test_max_norm_matches_oracle(shape, axis, dtype):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1] + axis)
    limit = 1.5
    w0, over = max_norm_input(rng, shape, axis, dtype, limit)
    got, want = w0.copy(), w0.copy()
    _native.max_norm_update(got, limit, axis)
    reference.max_norm_update(want, limit, axis)
    take = (lambda a, m: a[:, m]) if axis == 0 else (lambda a, m: a[m, :])
    # Slices within the limit (zero ones included) are left bit for bit.
    np.testing.assert_array_equal(take(got, ~over), take(w0, ~over))
    np.testing.assert_array_equal(take(want, ~over), take(w0, ~over))
    # Rescaled ones: the factor max_norm/norm is formed in double from a float64 norm in
    # both, then rounded to the dtype, so they agree to an ulp or two.
    assert_close_elementwise(take(got, over), take(want, over), dtype, what="rescaled slices")
    if over.any():
        norms = np.sqrt(np.sum(take(got, over).astype(np.float64) ** 2, axis=axis))
        np.testing.assert_allclose(norms, limit, rtol=8 * shape[axis] * np.finfo(dtype).eps)


@pytest.mark.parametrize("impl", IMPLS)
def test_max_norm_nan_slice_is_left_alone(impl):
    w = np.array([[np.nan, 3.0], [1.0, 4.0]])
    impl.max_norm_update(w, 1.0, 0)
    np.testing.assert_array_equal(w[:, 0], [np.nan, 1.0])
    np.testing.assert_allclose(w[:, 1], [0.6, 0.8], rtol=1e-15)


# ---------------------------------------------------------------------------------------
# penalties


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(100, 784), (3, 1 << 20)], ids=str)
def test_sums_match_oracle_and_exact_sums(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = params_with_zeros(rng, shape, dtype)
    x64 = x.astype(np.float64).reshape(-1)
    n = x.size
    before = x.copy()
    for name, terms in (("sum_squares", x64 * x64), ("sum_abs", np.abs(x64))):
        got = getattr(_native, name)(x)
        want = getattr(reference, name)(x)
        assert type(got) is float
        magnitude = float(np.sum(terms))
        # Both accumulate the exactly-representable float64 terms (x² of a float32 is exact
        # in double; for float64 input the squares round once more) in double.
        assert_close_reduction(got, want, magnitude, n + 1, np.float64, name)
        assert_close_reduction(got, math.fsum(terms), magnitude, n + 1, np.float64, name + " vs fsum")
    np.testing.assert_array_equal(x, before)


def test_sum_of_empty_array_is_zero():
    for dtype in DTYPES:
        assert _native.sum_squares(np.zeros(0, dtype)) == 0.0
        assert _native.sum_abs(np.zeros((3, 0), dtype)) == 0.0


# ---------------------------------------------------------------------------------------
# errors: the same exception type from both implementations


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def update_args(name, dtype=np.float64, n=6):
    names, hyper = RULES[name]
    arrays = [np.ones(n, dtype), np.ones(n, dtype)] + [np.zeros(n, dtype) for _ in names]
    scalars = [LR, *hyper] + ([1] if name == "adam_update" else []) + [0.0, 0.0]
    return arrays, scalars


def array_cases(name):
    """(description, argument index, replacement built from the valid arrays, exception)."""
    names, _ = RULES[name]
    cases = [
        ("int64 param", 0, lambda a: np.ones(6, np.int64), TypeError),
        ("list param", 0, lambda a: [1.0] * 6, TypeError),
        ("float32 grad", 1, lambda a: np.ones(6, np.float32), TypeError),
        ("grad shape", 1, lambda a: np.ones(7), ValueError),
        ("grad 2-D", 1, lambda a: np.ones((2, 3)), ValueError),
        ("read-only param", 0, lambda a: readonly(a[0]), ValueError),
        ("transposed param", 0, lambda a: np.ones((3, 2)).T, ValueError),
        ("negative-stride param", 0, lambda a: np.ones(6)[::-1], ValueError),
        ("strided grad", 1, lambda a: np.ones(12)[::2], ValueError),
        ("negative-stride grad", 1, lambda a: np.ones(6)[::-1], ValueError),
        ("grad is param", 1, lambda a: a[0], ValueError),
        ("grad overlaps param", 1, lambda a: None, ValueError),  # built in the test from one buffer
    ]
    for j, s in enumerate(names):
        k = 2 + j
        cases += [
            (f"float32 {s}", k, lambda a: np.zeros(6, np.float32), TypeError),
            (f"{s} shape", k, lambda a: np.zeros(5), ValueError),
            (f"read-only {s}", k, lambda a: readonly(np.zeros(6)), ValueError),
            (f"negative-stride {s}", k, lambda a: np.zeros(6)[::-1], ValueError),
            (f"{s} is param", k, lambda a: a[0], ValueError),
            (f"{s} is grad", k, lambda a: a[1], ValueError),
        ]
    if len(names) == 2:
        cases.append(("v is m", 3, lambda a: a[2], ValueError))
    return cases


ALL_ARRAY_CASES = [(name, case) for name in RULES for case in array_cases(name)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,case", ALL_ARRAY_CASES, ids=[f"{n}-{c[0]}" for n, c in ALL_ARRAY_CASES])
def test_update_refuses_bad_arrays(impl, name, case):
    desc, index, make, exc = case
    arrays, scalars = update_args(name)
    if desc == "grad overlaps param":
        buf = np.ones(9)
        arrays[0], arrays[1] = buf[:6], buf[3:]
    else:
        arrays[index] = make(arrays)
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in arrays]
    with pytest.raises(exc):
        getattr(impl, name)(*arrays, *scalars)
    # A refused call writes nothing.
    for a, b in zip(arrays, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)


def hyper_cases(name):
    """(description, scalar index, bad value, exception, word in the message)."""
    names, hyper = RULES[name]
    base = ["lr", *{
        "sgd_update": [],
        "momentum_update": ["momentum"],
        "nesterov_update": ["momentum"],
        "adagrad_update": ["eps"],
        "rmsprop_update": ["decay", "eps"],
        "adam_update": ["beta1", "beta2", "eps", "step"],
    }[name], "weight_decay", "l1"]
    cases = []
    for i, arg in enumerate(base):
        if arg == "step":
            cases += [(arg, i, 0, ValueError), (arg, i, -3, ValueError), (arg, i, 1.0, TypeError),
                      (arg, i, True, TypeError), (arg, i, "1", TypeError)]
            continue
        cases += [(arg, i, "0.1", TypeError), (arg, i, None, TypeError), (arg, i, True, TypeError),
                  (arg, i, float("nan"), ValueError)]
        if arg in ("lr", "weight_decay", "l1"):
            cases += [(arg, i, -1e-12, ValueError), (arg, i, -np.inf, ValueError)]
        elif arg == "eps":
            cases += [(arg, i, 0.0, ValueError), (arg, i, -1e-8, ValueError)]
        else:  # fractions in [0, 1)
            cases += [(arg, i, 1.0, ValueError), (arg, i, -0.1, ValueError), (arg, i, 1.5, ValueError)]
    return cases


ALL_HYPER_CASES = [(name, case) for name in RULES for case in hyper_cases(name)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,case", ALL_HYPER_CASES,
                         ids=[f"{n}-{c[0]}-{c[2]!r}" for n, c in ALL_HYPER_CASES])
def test_update_refuses_bad_hyper_parameters(impl, name, case):
    arg, index, value, exc = case
    arrays, scalars = update_args(name)
    scalars[index] = value
    before = arrays[0].copy()
    with pytest.raises(exc, match=arg):
        getattr(impl, name)(*arrays, *scalars)
    np.testing.assert_array_equal(arrays[0], before)


@pytest.mark.parametrize("impl", IMPLS)
def test_update_accepts_numpy_scalars_and_boundary_values(impl):
    p = np.ones(3, np.float32)
    impl.adam_update(p, np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32),
                     np.float32(0.0), 0, np.float64(0.0), 1e-30, np.int64(7), 0, np.float32(0))
    np.testing.assert_array_equal(p, 1.0)  # lr = 0
    impl.momentum_update(p, np.ones(3, np.float32), np.zeros(3, np.float32), 1, 0, 0, 0)
    np.testing.assert_array_equal(p, 0.0)


MAX_NORM_CASES = [
    ("1-D w", lambda: [np.ones(4), 1.0, 0], ValueError),
    ("3-D w", lambda: [np.ones((2, 2, 2)), 1.0, 0], ValueError),
    ("int w", lambda: [np.ones((2, 2), np.int64), 1.0, 0], TypeError),
    ("read-only w", lambda: [readonly(np.ones((2, 2))), 1.0, 0], ValueError),
    ("transposed w", lambda: [np.ones((2, 3)).T, 1.0, 0], ValueError),
    ("negative-stride w", lambda: [np.ones((2, 3))[::-1], 1.0, 0], ValueError),
    ("max_norm 0", lambda: [np.ones((2, 2)), 0.0, 0], ValueError),
    ("max_norm nan", lambda: [np.ones((2, 2)), float("nan"), 0], ValueError),
    ("max_norm str", lambda: [np.ones((2, 2)), "1", 0], TypeError),
    ("axis 2", lambda: [np.ones((2, 2)), 1.0, 2], ValueError),
    ("axis -1", lambda: [np.ones((2, 2)), 1.0, -1], ValueError),
    ("axis float", lambda: [np.ones((2, 2)), 1.0, 0.0], TypeError),
    ("axis bool", lambda: [np.ones((2, 2)), 1.0, False], TypeError),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", MAX_NORM_CASES, ids=[c[0] for c in MAX_NORM_CASES])
def test_max_norm_refuses(impl, case):
    _, make, exc = case
    with pytest.raises(exc):
        impl.max_norm_update(*make())


SUM_CASES = [
    ("list", lambda: [1.0, 2.0], TypeError),
    ("int32", lambda: np.ones(3, np.int32), TypeError),
    ("float16", lambda: np.ones(3, np.float16), TypeError),
    ("transposed", lambda: np.ones((2, 3)).T, ValueError),
    ("negative stride", lambda: np.ones(5)[::-1], ValueError),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["sum_squares", "sum_abs"])
@pytest.mark.parametrize("case", SUM_CASES, ids=[c[0] for c in SUM_CASES])
def test_sums_refuse(impl, name, case):
    _, make, exc = case
    with pytest.raises(exc):
        getattr(impl, name)(make())


@pytest.mark.parametrize("impl", IMPLS)
def test_update_in_place_on_a_view_of_a_larger_buffer(impl):
    # The optimizer hands kernels contiguous slices of flat buffers: writes must land in
    # the slice and nowhere else.
    buf = np.zeros(20, np.float32)
    m, v = np.zeros(20, np.float32), np.zeros(20, np.float32)
    grad = np.ones(20, np.float32)
    impl.adam_update(buf[5:12], grad[5:12], m[5:12], v[5:12], 0.1, 0.9, 0.999, 1e-8, 1, 0.0, 0.0)
    assert (buf[5:12] < 0).all() and not buf[:5].any() and not buf[12:].any()
    assert not m[:5].any() and not v[12:].any()


# ---------------------------------------------------------------------------------------
# the same bits for any thread count


def _run_every_kernel(seed):
    rng = np.random.default_rng(seed)
    n = (1 << 18) + 3
    out = {}
    for name, (names, _) in RULES.items():
        for dtype in DTYPES:
            p = params_with_zeros(rng, (n,), dtype)
            g = rng.standard_normal(n).astype(dtype)
            s = [np.abs(rng.standard_normal(n)).astype(dtype) for _ in names]
            call(_native, name, p, g, s, step=3, wd=0.01, l1=0.001)
            out[f"{name} {np.dtype(dtype)}"] = [p, *s]
    for axis in (0, 1):
        for dtype in DTYPES:
            w = rng.standard_normal((1024, 300)).astype(dtype)
            _native.max_norm_update(w, 5.0 if axis == 0 else 4.0, axis)
            out[f"max_norm axis {axis} {np.dtype(dtype)}"] = [w]
    for dtype in DTYPES:
        x = rng.standard_normal((1 << 20) + 5).astype(dtype)
        out[f"sums {np.dtype(dtype)}"] = [np.array([_native.sum_squares(x), _native.sum_abs(x)])]
    return out


def test_bitwise_identical_for_one_and_two_threads():
    before = backend.get_num_threads()
    try:
        backend.set_num_threads(1)
        one = _run_every_kernel(5)
        backend.set_num_threads(2)
        two = _run_every_kernel(5)
    finally:
        backend.set_num_threads(before)
    assert one.keys() == two.keys()
    for key in one:
        for a, b in zip(one[key], two[key]):
            assert a.tobytes() == b.tobytes(), key


@pytest.mark.parametrize("impl", [_native, reference], ids=["native", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, (1 << 15) + 1, 3 * (1 << 16) + 5])
def test_zero_update_leaves_positive_zeros_everywhere(impl, dtype, n):
    # NaN, infinities and -0.0 all become +0.0, in every chunk a thread could own.
    x = np.array([np.nan, -np.inf, np.inf, -0.0, 1.5], dtype)[np.arange(n) % 5].reshape(-1, 1)
    impl.zero_update(x)
    assert not x.any() and not np.signbit(x).any()

