"""Property tests: every native kernel against its oracle on shapes, views and settings that
hypothesis draws.

For each kernel (its signature from tests/kernel_table.py) hypothesis draws the dtype
(float32 or float64), every size from a small range that includes zero, valid
hyper-parameters (strides, paddings, windows, rates), the data of the input the kernel takes
its dtype from, and for each array argument either the array itself or a view of it:
transposed, taken with a step, or reversed. The property: when every array is C-contiguous,
native and oracle both succeed with results that agree within the rounding bounds of
tests/tolerance.py, or both refuse with the same exception type (a size that leaves no room
for the window, say); when some array is a view, both refuse it with the same exception type
and a message naming the kernel. The examples are derandomised, so CI runs the same ones
every time.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .kernel_table import (
    AXIS, BOUND, FINITE, FRACTION, IMPLS, NONNEG_INT, POS_INT, POSITIVE, RATE, REAL, SEED, SPECS, UNIT,
    assert_same_results, build, run,
)

EXAMPLES = 20  # per kernel: 60 kernels, about 6 ms an example on two cores

# Sizes: small, zero allowed. Filter and window sizes start at 1 (a zero-size filter is a
# refusal the kernel table covers; drawing it here would waste examples).
DIM_RANGE = {"H": (0, 6), "Wd": (0, 6), "KH": (1, 3), "KW": (1, 3), "POH": (1, 3), "POW": (1, 3),
             "OH": (0, 3), "OW": (0, 3)}
DEFAULT_RANGE = (0, 4)

# Kernels whose outputs choose a maximum among computed values: their data come from a
# continuous distribution, where a near tie between two GEMM roundings has probability ~1e-7
# (hypothesis's favourite repeated values would make ties that two roundings break apart).
CONTINUOUS = {"maxout_forward", "conv2d_relu_maxpool2d_forward"}

VIEWS = ["array"] * 5 + ["transposed", "step", "reversed"]


def hyper_strategy(name: str, kind: str):
    if kind == POS_INT:
        if name in ("FH", "FW"):
            return None  # follows the filter size drawn as KH, KW
        return st.integers(1, 1000) if name == "step" else st.integers(1, 3)
    if kind == NONNEG_INT:
        return st.integers(0, 1) if name == "pool_pad" else st.integers(0, 2)
    if kind == AXIS:
        return st.integers(0, 1)
    if kind == SEED:
        return st.integers(0, 2**32 - 1)
    floats = {FRACTION: (0.0, 0.99), UNIT: (0.0, 1.0), POSITIVE: (1e-8, 10.0), RATE: (0.0, 1.0), FINITE: (-3.0, 3.0),
              REAL: (-3.0, 3.0)}
    if kind == BOUND:
        return st.floats(-2.0, 0.0) if name == "min_val" else st.floats(0.1, 2.0)
    return st.floats(*floats[kind])


def clamp_pads(hyper):
    """Pooling refuses a pad beyond half the window; keep the draws valid."""
    h = dict(hyper)
    for pad in ("pad", "pool_pad") if "PH" in h else ():
        if pad in h and (pad == "pool_pad" or "pool_pad" not in h):
            h[pad] = min(h[pad], h["PH"] // 2, h["PW"] // 2)
    return h


def view_of(a: np.ndarray, kind: str) -> np.ndarray:
    """The same values as ``a``, as a view of another layout (not C-contiguous unless degenerate)."""
    if kind == "transposed" and a.ndim >= 2:
        return np.ascontiguousarray(a.T).T
    if kind == "step" and a.ndim >= 1:
        wide = np.repeat(a, 2, axis=-1)
        return wide[..., ::2]
    if kind == "reversed" and a.ndim >= 1:
        return a[::-1].copy()[::-1]
    return a


@st.composite
def calls(draw, spec):
    dtype = draw(hnp.floating_dtypes(sizes=(32, 64), endianness="="))
    dims = {d: draw(st.integers(*DIM_RANGE.get(d, DEFAULT_RANGE))) for d in spec.dims}
    hyper = {}
    for h in spec.hypers:
        s = hyper_strategy(h.name, h.role)
        if s is not None:
            hyper[h.name] = draw(s)
    hyper = clamp_pads(hyper)
    if "FH" in {h.name for h in spec.hypers}:
        hyper["FH"], hyper["FW"] = dims["KH"], dims["KW"]
    seed = draw(st.integers(0, 2**31 - 1))
    args = build(spec, dtype, dims, hyper, seed=seed)
    like = args[spec.like]
    if spec.name not in CONTINUOUS and spec.arg(spec.like).fill == "normal" and isinstance(like, np.ndarray):
        width = 32 if dtype == np.float32 else 64
        args[spec.like] = draw(hnp.arrays(dtype, like.shape, elements=st.floats(-4, 4, width=width)))
    views = {a.name: draw(st.sampled_from(VIEWS)) for a in spec.arrays if isinstance(args[a.name], np.ndarray)}
    return dtype, dims, hyper, seed, args, views


def outcome(impl, spec, args):
    try:
        return "ok", run(impl, spec, args)
    except Exception as e:  # noqa: BLE001 - the exception is the outcome being compared
        return "raised", e


@pytest.mark.parametrize("kernel", sorted(SPECS))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_native_matches_oracle(kernel, data):
    spec = SPECS[kernel]
    dtype, dims, hyper, seed, args, views = data.draw(calls(spec))
    plain, viewed = {}, {}
    for name, impl in IMPLS.items():
        # Each backend gets its own copies (outputs are written): contiguous, then in the
        # drawn layouts.
        plain[name] = outcome(impl, spec, {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()})
        viewed[name] = outcome(impl, spec, {k: view_of(v.copy(), views.get(k, "array"))
                                            if isinstance(v, np.ndarray) else v for k, v in args.items()})
    (kn, vn), (ko, vo) = plain["native"], plain["numpy"]
    assert kn == ko, f"native {kn}: {vn!r}; numpy {ko}: {vo!r}"
    if kn == "raised":
        assert type(vn) is type(vo), (vn, vo)
        assert str(vn).startswith(kernel + ":") and str(vo).startswith(kernel + ":"), (vn, vo)
    else:
        assert_same_results(spec, args, vn, vo, dtype)
    strided = [k for k, v in args.items() if isinstance(v, np.ndarray)
               and not view_of(v, views.get(k, "array")).flags.c_contiguous]
    if not strided:
        return
    # The same call with views: refused on both backends, as the plain call was or, if it
    # succeeded, for the layout of a viewed argument.
    (kn, vn), (ko, vo) = viewed["native"], viewed["numpy"]
    assert kn == ko == "raised", (strided, viewed)
    assert type(vn) is type(vo), (vn, vo)
    for e in (vn, vo):
        assert str(e).startswith(kernel + ":"), e
        if plain["native"][0] == "ok":
            assert type(e) is ValueError and "C-contiguous" in str(e), e
            assert any(f"'{k}'" in str(e) for k in strided), (strided, e)

