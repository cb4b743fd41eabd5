"""Bad input gets a clear error, never a crash and never a silent wrong answer.

The kernel table is generated from the signatures in tests/kernel_table.py: every argument
of every kernel is made wrong in every way that applies to its role (type, dtype, byte
order, layout, alignment, writeability, shape, aliasing, hyper-parameter values), and every
case runs on both backends. A case either expects the documented exception (its type, a
message that starts with the kernel's name and names the argument, with the expected and
the actual value where there is one) and that nothing was written, or a correct result: the
native kernel's output equals the oracle's on a plain call with the same values. Zero-size
dimensions and sizes the kernel reads from its arguments may be legal or not; both backends
must then agree. NaN and infinities propagate (compared with the oracle, NaN for NaN).

The second half covers the public Python API (layers, losses, optimizers, the trainer's
batching and the IDX loader) with a table of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pytest

from fastlayers.backend import _native

from .kernel_table import (
    AXIS, BOUND, FINITE, FRACTION, GATE, IDX_IN, IDX_OUT, IMPLS, IN, INOUT, LABELS, NONNEG_INT, OPT, POS_INT,
    POSITIVE, RATE, REAL, SEED, SPECS, UNIT, WRITTEN_ROLES, Spec, assert_same_results, assert_unchanged, build, index_dtype,
    run,
    snapshot,
)

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

RAISE, RESULT, AGREE = "raise", "result", "agree"


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str
    what: str
    dtype: np.dtype
    mutate: Callable  # (spec, args) -> None, changes the valid call in place
    expect: str  # RAISE, RESULT (correct result) or AGREE (both backends do the same)
    exc: type | None = None
    words: tuple = ()  # the message must hold each of these
    names: tuple = ()  # ... and name one of these arguments (empty: the argument set by the case)
    dims: tuple = ()  # (dim, size) overrides of the valid call

    @property
    def id(self) -> str:
        return f"{self.kernel}-{self.what}-{self.dtype}"

    @property
    def group(self) -> str:
        """The argument the case is about (or "geometry", "sizes"): the unit of one test."""
        head = self.what.split(":")[0]
        return head.split("=")[0] if ":" not in self.what else head


def q(name: str) -> str:
    return f"'{name}'"


def shape_str(shape) -> str:
    inner = ", ".join(str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


# ----------------------------------------------------------------------------------------
# How arrays are made wrong
# ----------------------------------------------------------------------------------------


def setter(name, make):
    """A mutation replacing argument ``name`` by make(current value)."""
    def mutate(spec, args):
        args[name] = make(args[name])
    return mutate


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def misaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    m = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    m[...] = a
    return m


def transposed(a):
    return np.ascontiguousarray(a.T).T


def strided(a):
    wide = np.repeat(a, 2, axis=-1)
    return wide[..., ::2]


def reversed_(a):
    return a.copy()[::-1]


def broadcast(a):
    return np.broadcast_to(a.reshape(-1)[:1], a.shape)


def big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


LAYOUTS = [
    ("transposed", transposed, "C-contiguous"),
    ("strided", strided, "C-contiguous"),
    ("negative stride", reversed_, "C-contiguous"),
    ("zero-stride broadcast", broadcast, "C-contiguous"),
    ("misaligned", misaligned, "aligned"),
]


def _layout_applies(a, make) -> bool:
    try:
        v = make(a)
    except (ValueError, TypeError):
        return False
    return not (v.flags.c_contiguous and v.flags.aligned) and v.size > 0


def alias_onto(out_name, other_name, offset):
    """``out_name`` becomes a view on the bytes of ``other_name`` (from element ``offset``)."""
    def mutate(spec, args):
        o, a = args[out_name], args[other_name]
        raw = a.view(np.uint8).reshape(-1)[offset * o.itemsize:][: o.nbytes]
        args[out_name] = raw.view(o.dtype).reshape(o.shape)
    return mutate


def same_array(first, second):
    def mutate(spec, args):
        args[second] = args[first]
    return mutate


def with_specials(names):
    """NaN, +inf and -inf planted in each named float array (and the rest left finite)."""
    def mutate(spec, args):
        for name in names:
            a = args[name]
            flat = a.reshape(-1)
            for i, v in enumerate((np.nan, np.inf, -np.inf)):
                if i < flat.size:
                    flat[(i * 7) % flat.size] = v
    return mutate


# ----------------------------------------------------------------------------------------
# Hyper-parameters: what each kind refuses, per docs/kernels.md
# ----------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
INT_TYPES = [(2.0, TypeError, ["int", "float"]), (np.float64(2), TypeError, ["int", "float64"]),
             (True, TypeError, ["int", "bool"]), ("2", TypeError, ["int", "str"]), (None, TypeError, ["NoneType"]),
             (2**64, ValueError, ["out of range", str(2**64)])]
REAL_TYPES = [("0.5", TypeError, ["real number", "str"]), (None, TypeError, ["real number", "NoneType"]),
              (True, TypeError, ["real number", "bool"]), (1j, TypeError, ["real number", "complex"]),
              (np.array(0.5), TypeError, ["real number", "ndarray"]), (10**400, ValueError, ["out of range"])]
BAD_HYPER = {
    POS_INT: [(0, ValueError, [">= 1", "got 0"]), (-3, ValueError, [">= 1", "got -3"])] + INT_TYPES,
    NONNEG_INT: [(-1, ValueError, [">= 0", "got -1"])] + INT_TYPES,
    AXIS: [(2, ValueError, ["0 or 1", "got 2"]), (-1, ValueError, ["got -1"])] + INT_TYPES[:5],
    SEED: [(-1, ValueError, ["[0, 2**32)", "got -1"]), (2**32, ValueError, ["[0, 2**32)", str(2**32)]),
           (np.int64(-5), ValueError, ["got -5"])] + INT_TYPES[:5],
    REAL: REAL_TYPES,
    BOUND: [(NAN, ValueError, ["less than", "nan"])] + REAL_TYPES,
    FINITE: [(NAN, ValueError, ["finite", "nan"]), (INF, ValueError, ["finite", "inf"]),
             (-INF, ValueError, ["finite", "-inf"])] + REAL_TYPES,
    RATE: [(-0.1, ValueError, [">= 0", "-0.1"]), (NAN, ValueError, ["finite", "nan"]),
           (INF, ValueError, ["finite", "inf"])] + REAL_TYPES,
    POSITIVE: [(0.0, ValueError, ["> 0", "0.0"]), (-1e-3, ValueError, ["> 0", "-0.001"]),
               (NAN, ValueError, ["finite", "nan"]), (INF, ValueError, ["finite", "inf"])] + REAL_TYPES,
    FRACTION: [(1.0, ValueError, ["[0, 1)", "1.0"]), (-0.1, ValueError, ["[0, 1)", "-0.1"]),
               (NAN, ValueError, ["[0, 1)", "nan"]), (INF, ValueError, ["[0, 1)", "inf"])] + REAL_TYPES,
    UNIT: [(1.5, ValueError, ["[0, 1]", "1.5"]), (-0.1, ValueError, ["[0, 1]", "-0.1"]),
           (NAN, ValueError, ["[0, 1]", "nan"])] + REAL_TYPES,
}
# Values of another type that the contract accepts: numpy scalars, and for REAL the values
# that propagate (an upstream gradient of NaN or infinity is data, not a bad setting).
GOOD_HYPER = {
    POS_INT: [lambda v: np.int32(v), lambda v: np.int64(v)],
    NONNEG_INT: [lambda v: np.int32(v)],
    AXIS: [lambda v: np.int64(v)],
    SEED: [lambda v: np.uint32(v), lambda v: 2**32 - 1],
    REAL: [lambda v: np.float32(v), lambda v: NAN, lambda v: -INF, lambda v: 3],
    BOUND: [lambda v: np.float32(v)],
    FINITE: [lambda v: np.float32(v), lambda v: 1],
    RATE: [lambda v: np.float32(v), lambda v: 0],
    POSITIVE: [lambda v: np.float32(v)],
    FRACTION: [lambda v: np.float32(v), lambda v: 0],
    UNIT: [lambda v: np.float32(v), lambda v: 1],
}


# ----------------------------------------------------------------------------------------
# The kernel table
# ----------------------------------------------------------------------------------------


def _array_cases(spec: Spec, a, value, dtype) -> list[Case]:
    k, n = spec.name, a.name
    out = []

    def raises(what, make, exc, words, names=()):
        out.append(Case(k, f"{n}: {what}", dtype, setter(n, make), RAISE, exc, tuple(words), tuple(names)))

    def result(what, mutate):
        out.append(Case(k, f"{n}: {what}", dtype, mutate, RESULT))

    raises("list", lambda v: v.tolist(), TypeError, [q(n), "numpy.ndarray", "list"])
    raises("Python scalar", lambda v: 1.0, TypeError, [q(n), "numpy.ndarray", "float"])
    if a.role == OPT:
        result("None skips it", setter(n, lambda v: None))
    else:
        raises("None", lambda v: None, TypeError, [q(n), "numpy.ndarray", "NoneType"])

    if a.is_float:
        for bad in (np.int64, np.float16, object, np.complex64):
            bad = np.dtype(bad)
            raises(f"dtype {bad}", lambda v, bad=bad: v.astype(bad), TypeError, [q(n), str(bad)])
        be = dtype.newbyteorder(">")
        raises(f"dtype {be.str}", big_endian, TypeError, [q(n), be.str])
        if n != spec.like:
            other = F64 if dtype == F32 else F32
            raises(f"mixed dtype {other}", lambda v, o=other: v.astype(o), TypeError,
                   [q(n), str(dtype), str(other), q(spec.like)])
    elif a.role in (IDX_IN, IDX_OUT, LABELS):
        want = index_dtype(a)
        other = np.dtype(np.int64 if want == np.int32 else np.int32)
        raises("dtype float32", lambda v: v.astype(np.float32), TypeError, [q(n), str(want), "float32"])
        raises(f"dtype {other}", lambda v: v.astype(other), TypeError, [q(n), str(want), str(other)])
        be = want.newbyteorder(">")
        raises(f"dtype {be.str}", big_endian, TypeError, [q(n), str(want), be.str])
    else:  # uint8 masks
        raises("dtype bool", lambda v: v.astype(bool), TypeError, [q(n), "uint8", "bool"])
        raises("dtype int64", lambda v: v.astype(np.int64), TypeError, [q(n), "uint8", "int64"])

    for what, make, word in LAYOUTS:
        if _layout_applies(value, make):
            raises(what, make, ValueError, [q(n), word])

    if a.role in WRITTEN_ROLES:
        raises("read-only", readonly, ValueError, [q(n), "read-only"])
    else:
        result("read-only input", setter(n, readonly))

    # Shapes. An argument the kernel reads its sizes from may be reported through another
    # argument that then disagrees; the others must be named themselves.
    source = n in spec.sources
    names = tuple(x.name for x in spec.arrays) if source else (n,)
    if a.role == LABELS:
        # (1, N) integers are neither labels nor targets of the scores' dtype.
        raises("extra leading axis", lambda v: v.reshape((1, *v.shape)), TypeError, [q(n), "int64"])
    elif not (source and spec.any_ndim):
        raises("extra leading axis", lambda v: v.reshape((1, *v.shape)), ValueError, ["shape"], names)
        if value.ndim >= 2:
            raises("axis dropped", lambda v: v[0].copy(), ValueError, ["shape"], names)
        else:
            raises("0-d", lambda v: v.reshape(-1)[:1].reshape(()).copy(), ValueError, ["shape"], names)
    for axis in range(value.ndim):
        def grow(v, axis=axis):
            pad = [(0, 0)] * v.ndim
            pad[axis] = (0, 1)
            return np.pad(v, pad)
        what = f"axis {axis} one longer"
        if source:
            out.append(Case(k, f"{n}: {what}", dtype, setter(n, grow), AGREE, ValueError, ("shape",), names))
        else:
            raises(what, grow, ValueError, [q(n), "shape", shape_str(grow(value).shape)])
    return out


def _alias_cases(spec: Spec, args: dict, dtype) -> list[Case]:
    k = spec.name
    out = []
    arrays = [a for a in spec.arrays if isinstance(args[a.name], np.ndarray)]
    for o in arrays:
        if o.role not in WRITTEN_ROLES:
            continue
        ov = args[o.name]
        for a in arrays:
            av = args[a.name]
            if a.name == o.name or av.nbytes < ov.nbytes or ov.size == 0:
                continue
            for offset, what in ((0, "the same memory as"), (1, "memory overlapping")):
                if av.nbytes < ov.nbytes + offset * ov.itemsize:
                    continue
                out.append(Case(k, f"{o.name}: {what} {a.name}", dtype, alias_onto(o.name, a.name, offset), RAISE,
                                ValueError, (q(o.name), q(a.name), "overlap")))
    # Inputs may share memory with each other (docs/kernels.md).
    reads = [a for a in arrays if a.role in (IN, GATE)]
    for i, a in enumerate(reads):
        for b in reads[i + 1:]:
            if args[a.name].shape == args[b.name].shape:
                out.append(Case(k, f"{b.name}: the same array as {a.name}", dtype, same_array(a.name, b.name), RESULT))
    return out


def _hyper_cases(spec: Spec, dtype) -> list[Case]:
    k = spec.name
    out = []
    for h in spec.hypers:
        for v, exc, words in BAD_HYPER[h.role]:
            out.append(Case(k, f"{h.name}: {v!r:.40}", dtype, setter(h.name, lambda _, v=v: v), RAISE, exc,
                            (q(h.name), *words)))
        for i, make in enumerate(GOOD_HYPER[h.role]):
            out.append(Case(k, f"{h.name}: accepted form {i}", dtype, setter(h.name, make), RESULT))
    names = {h.name for h in spec.hypers}
    if {"min_val", "max_val"} <= names:
        def crossed(spec, args):
            args["min_val"] = args["max_val"]
        out.append(Case(k, "min_val: equal to max_val", dtype, crossed, RAISE, ValueError, ("'min_val'", "'max_val'")))
    return out


def _geometry_cases(spec: Spec, dtype) -> list[Case]:
    """A window larger than the padded input, and a pooling pad beyond half the window."""
    k = spec.name
    out = []
    hyper = {h.name for h in spec.hypers}
    image = "dx" if k in ("col2im", "avgpool2d_backward") else "x"

    def window(name):
        def mutate(spec, args):
            args[name] = args[image].shape[2] + 2 * args["pad"] + 1
        return mutate

    def filters(spec, args):
        W, x = args["W"], args["x"]
        args["W"] = np.ones((W.shape[0], W.shape[1], x.shape[2] + 2 * args["pad"] + 1, W.shape[3]), W.dtype)

    def pool_window(spec, args):
        x, W = args["x"], args["W"]
        OH = (x.shape[2] + 2 * args["pad"] - W.shape[2]) // args["stride"] + 1
        args["PH"] = OH + 2 * args["pool_pad"] + 1

    def wide_pad(name):
        def mutate(spec, args):
            args[name] = args["PH"] // 2 + 1
        return mutate

    words = (q(image), "padded plane", "window")
    if "FH" in hyper:
        out.append(Case(k, "geometry: window beyond the padded input", dtype, window("FH"), RAISE, ValueError, words))
    if k.startswith("conv2d"):
        out.append(Case(k, "geometry: filter beyond the padded input", dtype, filters, RAISE, ValueError, words))
    if "PH" in hyper and "pool_pad" not in hyper:
        out.append(Case(k, "geometry: window beyond the padded input", dtype, window("PH"), RAISE, ValueError, words))
        out.append(Case(k, "geometry: pad beyond half the window", dtype, wide_pad("pad"), RAISE, ValueError,
                        ("'pad'", "PH // 2")))
    if "pool_pad" in hyper:
        out.append(Case(k, "geometry: pool window beyond the convolution output", dtype, pool_window, RAISE, ValueError,
                        ("the convolution output of 'x'", "padded plane", "pool_pad=", "window")))
        out.append(Case(k, "geometry: pool_pad beyond half the window", dtype, wide_pad("pool_pad"), RAISE, ValueError,
                        ("'pool_pad'", "PH // 2")))
    return out


def _value_cases(spec: Spec, args: dict, dtype) -> list[Case]:
    """Index and label values out of range, and NaN and infinities in every float input."""
    k = spec.name
    out = []
    for a in spec.arrays:
        if a.role in (IDX_IN, LABELS):
            hi = a.fill.split(":", 1)[1]
            far = int(np.iinfo(index_dtype(a)).max)  # the largest value the array can hold
            for what, v in (("negative", -1), ("one past the end", None), ("far past the end", far)):
                def plant(spec, args, n=a.name, v=v):
                    t = args[n].copy()
                    t.reshape(-1)[-1] = v if v is not None else _upper(spec, args, n)
                    args[n] = t
                word = "label" if a.role == LABELS else "holds"
                out.append(Case(k, f"{a.name}: {what} {hi}", dtype, plant, RAISE, ValueError, (q(a.name), word)))
        if a.role == LABELS:
            N, K = args["logits" if "logits" in args else "probs"].shape

            def onehot(spec, args, n=a.name, K=K):
                t = args[n]
                args[n] = np.eye(K, dtype=dtype)[t]
            out.append(Case(k, f"{a.name}: one-hot targets", dtype, onehot, RESULT))
            out.append(Case(k, f"{a.name}: one-hot int64 targets", dtype,
                            setter(a.name, lambda t, K=K: np.eye(K, dtype=np.int64)[t]), RAISE, TypeError,
                            (q(a.name), str(dtype), "int64")))
            out.append(Case(k, f"{a.name}: float labels", dtype, setter(a.name, lambda t: t.astype(dtype)), RAISE,
                            TypeError, (q(a.name), "int64", str(dtype))))
    floats = [a.name for a in spec.arrays if a.role in (IN, GATE, INOUT)]
    for n in floats:
        out.append(Case(k, f"{n}: NaN and infinities", dtype, with_specials([n]), RESULT))
    return out


def _upper(spec, args, name):
    """The first out-of-range value of an index or label argument in this call."""
    x = args.get("x")
    if spec.name == "maxpool2d_backward":
        return args["dx"].shape[2] * args["dx"].shape[3]
    if spec.name == "maxout_backward":
        return args["W"].shape[0]
    if spec.name.startswith("softmax_cross_entropy"):
        return args["logits" if "logits" in args else "probs"].shape[1]
    # conv2d_relu_maxpool2d_backward: indices into the (OH, OW) convolution output
    OH = (x.shape[2] + 2 * args["pad"] - args["W"].shape[2]) // args["stride"] + 1
    OW = (x.shape[3] + 2 * args["pad"] - args["W"].shape[3]) // args["stride"] + 1
    return OH * OW


def _zero_cases(spec: Spec, dtype) -> list[Case]:
    return [Case(spec.name, f"sizes: {d}=0", dtype, lambda spec, args: None, AGREE, dims=((d, 0),))
            for d in spec.dims]


def kernel_cases() -> list[Case]:
    cases = []
    for spec in SPECS.values():
        for dtype in (F32, F64):
            args = build(spec, dtype)
            if dtype == F32:
                for a in spec.arrays:
                    cases += _array_cases(spec, a, args[a.name], dtype)
                cases += _alias_cases(spec, args, dtype)
                cases += _hyper_cases(spec, dtype)
                cases += _geometry_cases(spec, dtype)
                cases += _zero_cases(spec, dtype)
            else:
                # The dtype-dependent cases again for float64 calls.
                for a in spec.arrays:
                    if a.is_float and a.name != spec.like:
                        cases.append(Case(spec.name, f"{a.name}: mixed dtype float32", dtype,
                                          setter(a.name, lambda v: v.astype(F32)), RAISE, TypeError,
                                          (q(a.name), "float64", "float32")))
            cases += _value_cases(spec, args, dtype)
    return cases


KERNEL_CASES = kernel_cases()


def make_call(case: Case, seed: int = 0) -> tuple[Spec, dict]:
    spec = SPECS[case.kernel]
    args = build(spec, case.dtype, dict(case.dims), seed=seed)
    case.mutate(spec, args)
    return spec, args


def plain(spec: Spec, args: dict) -> dict:
    """The same values as contiguous, writeable arrays of their own (None stays None)."""
    return {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in args.items()}


def check_refused(case: Case, impl_name: str) -> None:
    spec, args = make_call(case)
    written = {a.name: np.array(args[a.name], copy=True) for a in spec.args
               if a.role in WRITTEN_ROLES and isinstance(args[a.name], np.ndarray) and args[a.name].dtype != object}
    with pytest.raises(case.exc) as info:
        run(IMPLS[impl_name], spec, args)
    message = str(info.value)
    starts = message.startswith(case.kernel + ":")
    assert starts, f"{impl_name}: {message!r} does not start with the kernel's name"
    missing = [w for w in case.words if w not in message]
    assert not missing, f"{impl_name}: {missing} not in {message!r}"
    names = case.names or ((case.group,) if case.group in {a.name for a in spec.args} else ())
    named = not names or any(q(n) in message for n in names)
    assert named, f"{impl_name}: none of {names} named in {message!r}"
    for name, before in written.items():
        same = np.array_equal(np.asarray(args[name]), before, equal_nan=before.dtype.kind == "f")
        assert same, f"{impl_name}: '{name}' written although the call was refused"


def check_result(case: Case) -> None:
    """Both backends succeed on the case's call; each result equals the oracle's on a plain
    call with the same values, and the inputs are left unchanged."""
    spec, args = make_call(case)
    want = run(IMPLS["numpy"], spec, plain(spec, args))
    for impl_name in ("native", "numpy"):
        spec, args = make_call(case)
        before = snapshot(spec, args)
        got = run(IMPLS[impl_name], spec, args)
        assert_unchanged(before, args, f"{case.id} {impl_name}")
        assert_same_results(spec, make_call(case)[1], got, want, case.dtype)


def check_agree(case: Case) -> None:
    """Both backends refuse with the same exception type and a message naming an argument,
    or both succeed with the same results."""
    outcomes = {}
    for impl_name in ("native", "numpy"):
        spec, args = make_call(case)
        try:
            outcomes[impl_name] = ("ok", run(IMPLS[impl_name], spec, args), args)
        except Exception as e:  # noqa: BLE001 - the exception is the outcome being compared
            outcomes[impl_name] = ("raised", e, args)
    (kn, vn, _), (ko, vo, _) = outcomes["native"], outcomes["numpy"]
    assert kn == ko, f"native {kn} {vn!r}, numpy {ko} {vo!r}"
    if kn == "raised":
        assert type(vn) is type(vo), f"native {vn!r}, numpy {vo!r}"
        assert isinstance(vn, (ValueError, TypeError, OverflowError, MemoryError)), repr(vn)
        for e in (vn, vo):
            message = str(e)
            starts = message.startswith(case.kernel + ":")
            assert starts, f"{message!r} does not start with the kernel's name"
            named = any(q(a.name) in message for a in spec.args)
            assert named, f"no argument named in {message!r}"
        named = not case.names or any(q(n) in str(vn) for n in case.names)
        assert named, f"none of {case.names} named in {str(vn)!r}"
    else:
        spec, args = make_call(case)
        assert_same_results(spec, args, vn, vo, case.dtype)


def check(case: Case) -> None:
    if case.expect == RAISE:
        for impl_name in ("native", "numpy"):
            check_refused(case, impl_name)
    elif case.expect == RESULT:
        check_result(case)
    else:
        check_agree(case)


# One test per argument (or hyper-parameter, geometry, sizes) of each kernel and dtype; it
# runs every case of that group and reports each one that fails.
GROUPS: dict[str, list[Case]] = {}
for _case in KERNEL_CASES:
    GROUPS.setdefault(f"{_case.kernel}-{_case.group}-{_case.dtype}", []).append(_case)


@pytest.mark.parametrize("group", list(GROUPS))
def test_kernel_table(group):
    failures = []
    for case in GROUPS[group]:
        try:
            check(case)
        except (Exception, pytest.fail.Exception) as e:  # noqa: BLE001 - each failure is reported below
            failures.append(f"{case.what}: {type(e).__name__}: {e}")
    assert not failures, f"{len(failures)} of {len(GROUPS[group])} cases failed:\n" + "\n".join(failures)


def test_kernel_table_covers_every_kernel_and_role():
    covered = {c.kernel for c in KERNEL_CASES}
    assert covered == set(SPECS) == set(_native_names())
    kinds = {c.what.split(": ")[-1].split(" ")[0] for c in KERNEL_CASES}
    for kind in ("list", "dtype", "mixed", "transposed", "strided", "negative", "misaligned", "read-only",
                 "extra", "NaN", "the", "memory", "0", "-1", "None"):
        assert kind in kinds, kind
    # Every kernel gets each kind of case that applies to its arguments.
    for kernel in SPECS:
        whats = " ".join(c.what for c in KERNEL_CASES if c.kernel == kernel)
        for word in ("list", "Python scalar", "int64", "float16", "object", "complex64", ">f", "transposed",
                     "read-only", "one longer", "NaN", "=0"):
            assert word in whats, (kernel, word)


def _native_names():
    return [n for n in SPECS if hasattr(_native, n)]


# ----------------------------------------------------------------------------------------
# Special values the contract spells out
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
def test_max_pooling_keeps_nan_forward_and_backward(dtype):
    """A NaN wins its window over +inf, in the output and in the argmax, on both backends; the
    backward routes the window's gradient to the NaN's position."""
    x = np.arange(2 * 16, dtype=dtype).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 0, 0] = np.inf  # the same window: NaN must still win
    x[0, 1, 2:, 2:] = -np.inf  # a window of -inf only: its first element
    for impl_name, impl in IMPLS.items():
        _pool_nan(impl_name, impl, x, dtype)


def _pool_nan(impl_name, impl, x, dtype):
    with np.errstate(invalid="ignore"):  # the oracle's products with NaN
        out, argmax = np.empty((1, 2, 2, 2), dtype), np.empty((1, 2, 2, 2), np.int32)
        impl.maxpool2d_forward(out, argmax, x, 2, 2, 2, 0)
        assert np.isnan(out[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 1 * 4 + 1, impl_name
        assert out[0, 1, 1, 1] == -np.inf and argmax[0, 1, 1, 1] == 2 * 4 + 2, impl_name
        assert not np.isnan(out.reshape(-1)[1:]).any(), impl_name
        dout = np.arange(1, 9, dtype=dtype).reshape(1, 2, 2, 2)
        dx = np.full(x.shape, np.nan, dtype)
        impl.maxpool2d_backward(dx, dout, argmax)
        assert dx[0, 0, 1, 1] == 1 and dx[0, 0, 0, 0] == 0, impl_name
        assert dx.sum() == dout.sum(), impl_name
        # The fused convolution + ReLU + pooling keeps a NaN that the convolution produces.
        W = np.ones((1, 2, 1, 1), dtype)
        b = np.zeros(1, dtype)
        fo, fa = np.empty((1, 1, 2, 2), dtype), np.empty((1, 1, 2, 2), np.int32)
        impl.conv2d_relu_maxpool2d_forward(fo, fa, x, W, b, 1, 0, 2, 2, 2, 0)
        assert np.isnan(fo[0, 0, 0, 0]) and fa[0, 0, 0, 0] == 1 * 4 + 1, impl_name
        dW, db = np.zeros_like(W), np.zeros_like(b)
        fdx = np.empty_like(x)
        impl.conv2d_relu_maxpool2d_backward(fdx, dW, db, np.ones_like(fo), x, W, fo, fa, 1, 0)
        assert np.isnan(dW).all(), impl_name  # the NaN input is in the chosen element's receptive field


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("targets", ["labels", "one-hot"])
def test_softmax_cross_entropy_of_huge_logits_is_finite(dtype, targets):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4], [-1e4, 1e4, 1e4]], dtype)
    labels = np.array([1, 2, 0, 0], np.int64)  # mostly the least likely class: losses of ~2e4
    t = labels if targets == "labels" else np.eye(3, dtype=dtype)[labels]
    for impl_name, impl in IMPLS.items():
        probs = np.empty_like(logits)
        loss = impl.softmax_cross_entropy_forward(probs, logits, t)
        assert np.isfinite(loss) and loss > 1e3, (impl_name, loss)
        assert np.isfinite(probs).all(), impl_name
        # exp(z - lse): lse rounds relative to |z| = 1e4, an absolute error of the exponent.
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=4 * 5 * np.finfo(dtype).eps * 1e4)
        dlogits = np.empty_like(logits)
        impl.softmax_cross_entropy_backward(dlogits, probs, t, 1.0)
        assert np.isfinite(dlogits).all(), impl_name
        assert (np.abs(dlogits) <= 1 / len(labels) + np.finfo(dtype).eps).all(), impl_name


# ----------------------------------------------------------------------------------------
# Sizes that overflow 64 bits or exceed memory: refused before anything is allocated
# ----------------------------------------------------------------------------------------


def _ones(*shape):
    return np.ones(shape, np.float32)


def _conv_pool_forward(pad, pool_stride, FN=1):
    return (_ones(1, FN, 1, 1), np.zeros((1, FN, 1, 1), np.int32), _ones(1, 1, 1, 1), _ones(FN, 1, 1, 1), _ones(FN),
            1, pad, 1, 1, pool_stride, 0)


def _conv_pool_backward(pad):
    return (_ones(1, 1, 1, 1), _ones(1, 1, 1, 1), _ones(1), _ones(1, 1, 1, 1), _ones(1, 1, 1, 1), _ones(1, 1, 1, 1),
            _ones(1, 1, 1, 1), np.zeros((1, 1, 1, 1), np.int32), 1, pad)


def _maxout(n):
    # x (n, 1) and W (n, 1, 1): 8 MiB each for n = 2**21, but every piece of every sample is
    # n * n values (16 TiB).
    return (_ones(n, 1), np.zeros((n, 1), np.int32), _ones(n, 1), _ones(n, 1, 1), _ones(n, 1))


def _maxout_backward(n):
    return (None, _ones(n, 1, 1), _ones(n, 1), _ones(n, 1), _ones(n, 1), _ones(n, 1, 1), np.zeros((n, 1), np.int32))


HUGE = [
    # A pooling stride far beyond the window: one pooled pixel over a convolution output of
    # 64 filters over a 46,001 x 46,001 plane (541 GB), whose indices still fit int32.
    ("conv2d_relu_maxpool2d_forward", lambda: _conv_pool_forward(23000, 2**22, FN=64), MemoryError,
     ["convolution output", "memory"]),
    # argmax is int32 (half the bytes of int64 that a pooling layer writes and reads back): a
    # forward whose indices would not fit is refused before anything else. Planes of
    # (2**21 + 1)**2 and ~2**64 pixels under one pooled pixel; an empty batch of 2**30 x 2**30
    # planes (nothing to compute, but no int32 index could name their pixels); 2**31 + 1
    # maxout pieces of no width.
    ("conv2d_relu_maxpool2d_forward", lambda: _conv_pool_forward(2**20, 2**22), ValueError,
     ["argmax", "int32", str((2**21 + 1) ** 2)]),
    ("conv2d_relu_maxpool2d_forward", lambda: _conv_pool_forward(2**31, 2**33), ValueError, ["argmax", "int32"]),
    ("maxpool2d_forward", lambda: (np.empty((0, 1, 2**29, 2**29), np.float32), np.empty((0, 1, 2**29, 2**29), np.int32),
                                   np.empty((0, 1, 2**30, 2**30), np.float32), 2, 2, 2, 0),
     ValueError, ["int32", "an (H, W) plane of 'x'", str(2**60)]),
    ("maxout_forward", lambda: (_ones(2, 0), np.empty((2, 0), np.int32), _ones(2, 1),
                                np.empty((2**31 + 1, 1, 0), np.float32), np.empty((2**31 + 1, 0), np.float32)),
     ValueError, ["int32", "the pieces of 'W'", str(2**31 + 1)]),
    ("conv2d_relu_maxpool2d_backward", lambda: _conv_pool_backward(2**20), MemoryError,
     ["convolution gradient", "memory"]),
    ("conv2d_relu_maxpool2d_backward", lambda: _conv_pool_backward(2**31), OverflowError,
     ["convolution gradient", "64-bit"]),
    ("maxout_forward", lambda: _maxout(2**21), MemoryError, ["pieces", "memory"]),
    ("maxout_backward", lambda: _maxout_backward(2**21), MemoryError, ["pieces", "memory"]),
    # A padding that makes the output astronomically large: no array can have that shape.
    ("conv2d_forward", lambda: (_ones(1, 1, 1, 1), _ones(1, 1, 1, 1), _ones(1, 1, 1, 1), _ones(1), 1, 2**40),
     ValueError, ["'out'", "shape", str(2**41 + 1)]),
    ("conv2d_forward", lambda: (_ones(1, 1, 1, 1), _ones(1, 1, 1, 1), _ones(1, 1, 1, 1), _ones(1), 1, 2**62),
     ValueError, []),
    ("im2col", lambda: (_ones(1, 1), _ones(1, 1, 2, 2), 1, 1, 1, 2**62), ValueError, []),
    # Zero-stride views of a huge logical shape over one element are not C-contiguous.
    ("conv2d_forward", lambda: (_ones(1, 1, 1, 1), np.lib.stride_tricks.as_strided(
        _ones(1), shape=(1, 1, 2**28, 2**28), strides=(0, 0, 0, 0)), _ones(1, 1, 1, 1), _ones(1), 1, 0),
     ValueError, ["'x'", "C-contiguous"]),
    ("im2col", lambda: (np.lib.stride_tricks.as_strided(_ones(1), shape=(2**40, 1), strides=(0, 0)),
                        _ones(1, 1, 2, 2), 1, 1, 1, 0), ValueError, ["'col'", "C-contiguous"]),
]


@pytest.mark.parametrize("kernel,make,exc,words", HUGE, ids=[f"{h[0]}-{i}" for i, h in enumerate(HUGE)])
def test_huge_sizes_are_refused_before_allocating(kernel, make, exc, words):
    for impl_name, impl in IMPLS.items():
        with pytest.raises(exc) as info:
            getattr(impl, kernel)(*make())
        message = str(info.value)
        assert message.startswith(kernel + ":"), (impl_name, message)
        missing = [w for w in words if w not in message]
        assert not missing, (impl_name, missing, message)


@pytest.mark.parametrize("kernel", ["avgpool2d_forward", "conv2d_forward", "im2col"])
def test_empty_batch_over_huge_planes_computes_nothing(kernel):
    """An empty batch of 2**30 x 2**30 planes (no bytes at all): the kernels have nothing to
    compute, and the oracle builds none of its exabyte-sized temporaries."""
    x = np.empty((0, 1, 2**30, 2**30), np.float32)
    for impl_name, impl in IMPLS.items():
        if kernel == "avgpool2d_forward":
            args = (np.empty((0, 1, 2**29, 2**29), np.float32), x, 2, 2, 2, 0)
        elif kernel == "conv2d_forward":
            args = (np.empty((0, 1, 2**30, 2**30), np.float32), x, _ones(1, 1, 1, 1), _ones(1), 1, 0)
        else:
            args = (np.empty((0, 1), np.float32), x, 1, 1, 1, 0)
        getattr(impl, kernel)(*args)  # nothing to check but that it returns


# ----------------------------------------------------------------------------------------
# The public API: layers, losses, optimizers, the trainer's batching and the IDX loader
# ----------------------------------------------------------------------------------------

from fastlayers import Trainer, backend, data, losses, optim  # noqa: E402
from fastlayers import layers as L  # noqa: E402
from fastlayers.parameter import Parameter  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ApiCase:
    what: str
    call: Callable  # () -> result
    exc: type | None = None  # None: the call succeeds and ``check`` holds for its result
    words: tuple = ()
    check: Callable | None = None


def holds(predicate):
    """A check that ``predicate(result)`` is true, showing the result when it is not."""
    def check(result):
        assert predicate(result), f"unexpected result: {result!r}"
    return check


def _x(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# name -> (constructor, a valid input shape, the axis-1 meaning: "features", "channels" or None)
LAYERS = {
    "Affine": (lambda: L.Affine(4, 3, rng=0), (2, 4), "features"),
    "Conv2d": (lambda: L.Conv2d(2, 3, 3, padding=1, rng=0), (2, 2, 5, 5), "channels"),
    "MaxPool2d": (lambda: L.MaxPool2d(2), (2, 2, 4, 4), None),
    "AvgPool2d": (lambda: L.AvgPool2d(2, padding=1), (2, 2, 4, 4), None),
    "Flatten": (lambda: L.Flatten(), (2, 2, 3), None),
    "BatchNorm": (lambda: L.BatchNorm(3), (4, 3), "features"),
    "BatchNorm-4d": (lambda: L.BatchNorm(2), (2, 2, 3, 3), "channels"),
    "Dropout": (lambda: L.Dropout(0.5, seed=1), (2, 5), None),
    "ReLU": (lambda: L.ReLU(), (2, 5), None),
    "LeakyReLU": (lambda: L.LeakyReLU(0.1), (2, 5), None),
    "PReLU": (lambda: L.PReLU(3), (2, 3, 4), "channels"),
    "Sigmoid": (lambda: L.Sigmoid(), (2, 5), None),
    "Tanh": (lambda: L.Tanh(), (2, 5), None),
    "HardTanh": (lambda: L.HardTanh(-0.5, 0.5), (2, 5), None),
    "Softplus": (lambda: L.Softplus(), (2, 5), None),
    "Identity": (lambda: L.Identity(), (2, 5), None),
    "Softmax": (lambda: L.Softmax(), (2, 5), None),
    "Maxout": (lambda: L.Maxout(4, 3, pieces=2, rng=0), (2, 4), "features"),
    "RBF": (lambda: L.RBF(4, 3, rng=0), (2, 4), "features"),
    "Sequential": (lambda: L.Sequential(L.Conv2d(1, 2, 3, rng=0), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                                        L.Affine(8, 3, rng=0)), (2, 1, 6, 6), "channels"),
}
# Inputs of a fixed number of dimensions (the others take any ndim >= 1, or >= 2 and flatten).
FIXED_NDIM = {"Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm", "BatchNorm-4d", "Softmax", "Sequential"}


def _forward(make, x, train=True):
    layer = make()
    return layer.forward(x, train=train)


def _round_trip(make, x):
    """forward and backward (of ones); returns (out, dx, the parameters' gradients)."""
    layer = make()
    out = layer.forward(x, train=True)
    dx = layer.backward(np.ones_like(out))
    return out, dx, [p.grad.copy() for p in layer.parameters()]


def _same_as(make, x_ref, train=True):
    """A check: the result equals the layer's output for ``x_ref``."""
    def check(out):
        np.testing.assert_array_equal(out, _forward(make, x_ref, train))
    return check


def _layer_cases() -> list[ApiCase]:
    cases = []
    for name, (make, shape, axis1) in LAYERS.items():
        x = _x(shape)
        has_params = bool(make().parameters())

        def add(what, call, exc=None, words=(), check=None, name=name):
            cases.append(ApiCase(f"{name}: {what}", call, exc, tuple(words), check))

        add("list input", lambda make=make, x=x: _forward(make, x.tolist()), TypeError, ["numpy.ndarray", "list"])
        add("scalar input", lambda make=make: _forward(make, 1.0), TypeError, ["numpy.ndarray", "float"])
        add("None input", lambda make=make: _forward(make, None), TypeError, ["numpy.ndarray", "NoneType"])
        for bad in ("int64", "float16", "object", "complex64", ">f4"):
            add(f"{bad} input", lambda make=make, x=x, bad=bad: _forward(make, x.astype(bad)), TypeError, [bad])
        if has_params:
            # Nothing upcasts silently: float64 into float32 parameters is refused.
            add("float64 input, float32 parameters", lambda make=make, x=x: _forward(make, x.astype(np.float64)),
                TypeError, ["float64", "float32", "cast explicitly"])
        else:
            def f64_check(out, make=make, x=x):
                assert out.dtype == np.float64
                np.testing.assert_allclose(out, _forward(make, x.astype(np.float64)), rtol=0, atol=0)
                np.testing.assert_allclose(out, _forward(make, x), rtol=1e-6, atol=1e-6)
            add("float64 input follows the input's dtype", lambda make=make, x=x: _forward(make, x.astype(np.float64)),
                check=f64_check)
        if name in FIXED_NDIM or axis1 == "features":
            add("extra leading axis", lambda make=make, x=x: _forward(make, x[None]), ValueError, ["shape"])
            add("one axis fewer", lambda make=make, x=x: _forward(make, x[0]), ValueError, ["shape"])
        if axis1 is not None:
            wider = _x((shape[0], shape[1] + 1, *shape[2:]))
            add(f"{axis1} mismatch", lambda make=make, w=wider: _forward(make, w), ValueError,
                [axis1, str(shape[1]), str(wider.shape)])
        empty = np.empty((0, *shape[1:]), np.float32)
        if name.startswith("BatchNorm"):
            add("empty batch in training", lambda make=make, e=empty: _forward(make, e), ValueError, ["m >= 1"])
            add("empty batch in evaluation", lambda make=make, e=empty: _forward(make, e, train=False),
                check=holds(lambda out, e=empty: out.shape == e.shape))
        else:
            def empty_check(result, make=make, x=x):
                out, dx, grads = result
                assert out.shape[0] == 0 and out.shape[1:] == _forward(make, x).shape[1:], out.shape
                assert dx is None or dx.shape == (0, *x.shape[1:]), dx.shape
                assert all(not g.any() for g in grads), "an empty batch changed a gradient"
            add("empty batch", lambda make=make, e=empty: _round_trip(make, e), check=empty_check)
        if x.ndim >= 2:
            add("transposed view input", lambda make=make, x=x: _forward(make, np.ascontiguousarray(x.T).T),
                check=_same_as(make, x))
        add("negative-stride view input", lambda make=make, x=x: _forward(make, x[::-1].copy()[::-1]),
            check=_same_as(make, x))

        def nan_check(out, make=make):
            assert np.isnan(out).any(), "a NaN input vanished"
        xn = x.copy()
        xn.reshape(-1)[0] = np.nan
        add("NaN input propagates", lambda make=make, xn=xn: _forward(make, xn), check=nan_check)
        add("backward before forward", lambda make=make, x=x: make().backward(x), RuntimeError, ["before forward"])

        def backward_with(dout_of, make=make, x=x):
            layer = make()
            out = layer.forward(x, train=True)
            return layer.backward(dout_of(out))
        add("backward of a list", lambda bw=backward_with: bw(lambda o: o.tolist()), TypeError, ["numpy.ndarray"])
        add("backward of another dtype", lambda bw=backward_with: bw(lambda o: o.astype(np.float64)), TypeError,
            ["float64", "float32"])
        add("backward of another shape", lambda bw=backward_with: bw(lambda o: o[:1]), ValueError, ["shape"])
    return cases


def _constructor_cases() -> list[ApiCase]:
    bad = [
        ("Affine(0, 3)", lambda: L.Affine(0, 3), ValueError, ["in_features", ">= 1"]),
        ("Affine(2.0, 3)", lambda: L.Affine(2.0, 3), TypeError, ["in_features", "int", "float"]),
        ("Affine(True, 3)", lambda: L.Affine(True, 3), TypeError, ["in_features", "bool"]),
        ("Affine dtype int32", lambda: L.Affine(2, 3, dtype=np.int32), TypeError, ["float32 or float64", "int32"]),
        ("Affine dtype float16", lambda: L.Affine(2, 3, dtype=np.float16), TypeError, ["float16"]),
        ("Conv2d stride 0", lambda: L.Conv2d(1, 1, 3, stride=0), ValueError, ["stride", ">= 1"]),
        ("Conv2d stride 1.5", lambda: L.Conv2d(1, 1, 3, stride=1.5), TypeError, ["stride", "int"]),
        ("Conv2d padding -1", lambda: L.Conv2d(1, 1, 3, padding=-1), ValueError, ["padding", ">= 0"]),
        ("Conv2d padding 1.0", lambda: L.Conv2d(1, 1, 3, padding=1.0), TypeError, ["padding", "int"]),
        ("Conv2d kernel (3,)", lambda: L.Conv2d(1, 1, (3,)), ValueError, ["kernel_size", "pair"]),
        ("Conv2d kernel '3'", lambda: L.Conv2d(1, 1, "3"), TypeError, ["kernel_size", "str"]),
        ("Conv2d kernel 0", lambda: L.Conv2d(1, 1, 0), ValueError, ["kernel_size", ">= 1"]),
        ("MaxPool2d padding beyond half the window", lambda: L.MaxPool2d(2, padding=2), ValueError, ["padding"]),
        ("MaxPool2d non-square window without stride", lambda: L.MaxPool2d((2, 3)), ValueError, ["stride"]),
        ("AvgPool2d stride -1", lambda: L.AvgPool2d(2, stride=-1), ValueError, ["stride", ">= 1"]),
        ("BatchNorm momentum 1.5", lambda: L.BatchNorm(3, momentum=1.5), ValueError, ["momentum", "[0, 1]"]),
        ("BatchNorm momentum NaN", lambda: L.BatchNorm(3, momentum=NAN), ValueError, ["momentum"]),
        ("BatchNorm momentum '0.9'", lambda: L.BatchNorm(3, momentum="0.9"), TypeError, ["momentum", "str"]),
        ("BatchNorm eps 0", lambda: L.BatchNorm(3, eps=0.0), ValueError, ["eps", "> 0"]),
        ("BatchNorm eps inf", lambda: L.BatchNorm(3, eps=INF), ValueError, ["eps", "finite"]),
        ("BatchNorm num_features 0", lambda: L.BatchNorm(0), ValueError, ["num_features"]),
        ("Dropout p 1", lambda: L.Dropout(1.0), ValueError, ["p", "[0, 1)"]),
        ("Dropout p NaN", lambda: L.Dropout(NAN), ValueError, ["p"]),
        ("Dropout p '0.5'", lambda: L.Dropout("0.5"), TypeError, ["p", "str"]),
        ("Dropout seed 1.5", lambda: L.Dropout(0.5, seed=1.5), TypeError, ["seed", "float"]),
        ("Dropout seed -1", lambda: L.Dropout(0.5, seed=-1), ValueError, ["seed", "2**32"]),
        ("Dropout seed 2**32", lambda: L.Dropout(0.5, seed=2**32), ValueError, ["seed", "2**32"]),
        ("Dropout mode", lambda: L.Dropout(0.5, mode="textbook"), ValueError, ["mode"]),
        ("LeakyReLU alpha inf", lambda: L.LeakyReLU(INF), ValueError, ["alpha", "finite"]),
        ("LeakyReLU alpha None", lambda: L.LeakyReLU(None), TypeError, ["alpha", "NoneType"]),
        ("HardTanh min >= max", lambda: L.HardTanh(1.0, 0.0), ValueError, ["min_val", "max_val"]),
        ("HardTanh NaN bound", lambda: L.HardTanh(NAN, 1.0), ValueError, ["min_val"]),
        ("PReLU num_parameters 0", lambda: L.PReLU(0), ValueError, ["num_parameters"]),
        ("PReLU init NaN", lambda: L.PReLU(1, init=NAN), ValueError, ["init", "finite"]),
        ("Maxout pieces 0", lambda: L.Maxout(2, 3, pieces=0), ValueError, ["pieces"]),
        ("RBF out_features 0", lambda: L.RBF(2, 0), ValueError, ["out_features"]),
        ("Sequential of a non-layer", lambda: L.Sequential(L.ReLU(), 3), TypeError, ["item 1", "int"]),
    ]
    good = [
        ("HardTanh infinite bounds clip nothing", lambda: L.HardTanh(-INF, INF).forward(np.array([[-1e30, 1e30]], np.float32)),
         lambda out: np.testing.assert_array_equal(out, np.array([[-1e30, 1e30]], np.float32))),
        ("Conv2d numpy int sizes", lambda: L.Conv2d(np.int64(1), np.int32(2), np.int64(3), rng=0).forward(_x((1, 1, 3, 3))),
         holds(lambda out: out.shape == (1, 2, 1, 1))),
    ]
    return ([ApiCase(f"constructor: {w}", c, e, tuple(ws)) for w, c, e, ws in bad]
            + [ApiCase(f"constructor: {w}", c, check=k) for w, c, k in good])


def _geometry_api_cases() -> list[ApiCase]:
    return [
        ApiCase("Conv2d: filter larger than the padded input", lambda: L.Conv2d(1, 1, 5, padding=1).forward(_x((1, 1, 2, 2))),
                ValueError, ("smaller than the 5x5 filter",)),
        ApiCase("MaxPool2d: window larger than the input", lambda: L.MaxPool2d(4).forward(_x((1, 1, 2, 2))), ValueError,
                ("smaller than the 4x4 window",)),
        # A padding that makes the output astronomically large: refused before np.empty.
        ApiCase("Conv2d: output beyond memory", lambda: L.Conv2d(1, 1, 1, padding=2**20).forward(_x((1, 1, 1, 1))),
                MemoryError, ("Conv2d(1->1)", "output", "memory")),
        ApiCase("Conv2d: output beyond 64 bits", lambda: L.Conv2d(1, 1, 1, padding=2**40).forward(_x((1, 1, 1, 1))),
                OverflowError, ("Conv2d(1->1)", "output", "64-bit")),
        ApiCase("Conv2d+ReLU+MaxPool2d: convolution output beyond memory",
                lambda: L.Sequential(L.Conv2d(1, 64, 1, padding=23000), L.ReLU(), L.MaxPool2d(1, stride=2**22))
                .forward(_x((1, 1, 1, 1))), MemoryError, ("convolution output", "memory")),
        ApiCase("Conv2d+ReLU+MaxPool2d: a plane beyond an int32 argmax",
                lambda: L.Sequential(L.Conv2d(1, 1, 1, padding=2**20), L.ReLU(), L.MaxPool2d(1, stride=2**22))
                .forward(_x((1, 1, 1, 1))), ValueError, ("argmax", "int32")),
        # 2**20 samples of 2**22 outputs: 16 TiB of float32.
        ApiCase("Affine: output beyond memory", lambda: L.Affine(1, 2**22).forward(_x((2**20, 1))), MemoryError,
                ("Affine(1->4194304)", "memory")),
    ]


def _loss_cases() -> list[ApiCase]:
    sce, mse = losses.SoftmaxCrossEntropy, losses.MeanSquaredError
    s = _x((3, 4))
    labels = np.array([0, 3, 1])

    def sce_fwd(t, scores=s):
        return sce().forward(scores, t)

    def same_loss(t_ref):
        return lambda loss: np.testing.assert_allclose(loss, sce_fwd(t_ref), rtol=1e-6)

    def sce_backward(dout):
        loss = sce()
        loss.forward(s, labels)
        return loss.backward(dout)

    def mse_backward(dout):
        loss = mse()
        loss.forward(s, np.zeros_like(s))
        return loss.backward(dout)

    def finite(result):
        assert np.isfinite(result).all()

    return [ApiCase(f"loss: {w}", *rest) for w, *rest in [
        ("SCE label out of range", lambda: sce_fwd(np.array([0, 4, 1])), ValueError, ("label 4", "[0, 4)")),
        ("SCE negative label", lambda: sce_fwd(np.array([0, -1, 1])), ValueError, ("label -1",)),
        ("SCE float labels", lambda: sce_fwd(labels.astype(np.float32)), TypeError, ("'t'", "int64", "float32")),
        ("SCE bool labels", lambda: sce_fwd(np.array([True, False, True])), TypeError, ("'t'", "int64", "bool")),
        ("SCE labels of the wrong length", lambda: sce_fwd(np.array([0, 1])), ValueError, ("'t'", "(2,)", "(3,)")),
        ("SCE 3-D targets", lambda: sce_fwd(np.zeros((3, 4, 1), np.float32)), ValueError, ("'t'", "1-D labels")),
        ("SCE one-hot of another dtype", lambda: sce_fwd(np.eye(4)[labels]), TypeError, ("'t'", "float32", "float64")),
        ("SCE scores as a list", lambda: sce().forward(s.tolist(), labels), TypeError, ("numpy.ndarray", "list")),
        ("SCE 1-D scores", lambda: sce().forward(s[0], np.array([1])), ValueError, ("2-D",)),
        ("SCE int scores", lambda: sce().forward(s.astype(np.int64), labels), TypeError, ("int64",)),
        ("SCE backward before forward", lambda: sce().backward(), RuntimeError, ("before forward",)),
        ("SCE backward of a string", lambda: sce_backward("1"), TypeError, ("dout", "str")),
        ("SCE labels as a list (widened to int64)", lambda: sce_fwd([0, 3, 1]), None, (), same_loss(labels)),
        ("SCE uint8 labels (widened)", lambda: sce_fwd(labels.astype(np.uint8)), None, (), same_loss(labels)),
        ("SCE int one-hot targets (cast to the scores' dtype)", lambda: sce_fwd(np.eye(4, dtype=np.int64)[labels]),
         None, (), same_loss(labels)),
        ("SCE empty batch", lambda: sce_fwd(np.empty(0, np.int64), np.empty((0, 4), np.float32)), None, (),
         holds(lambda loss: loss == 0.0)),
        ("SCE logits of +-1e4", lambda: sce_fwd(labels, np.array([[1e4, -1e4, 0, 0], [-1e4] * 4, [1e4, 1e4, -1e4, 0]],
                                                                 np.float32)), None, (),
         holds(np.isfinite)),
        ("SCE NaN backward dout propagates", lambda: sce_backward(NAN), None, (),
         holds(lambda d: np.isnan(d).all())),
        ("MSE targets of another shape", lambda: mse().forward(s, s[:2]), ValueError, ("'t'", "shape")),
        ("MSE targets of another dtype", lambda: mse().forward(s, s.astype(np.float64)), TypeError, ("'t'", "float64")),
        ("MSE targets as a list of floats", lambda: mse().forward(s, s.tolist()), TypeError, ("'t'", "float64")),
        ("MSE integer targets (cast)", lambda: mse().forward(s, np.zeros(s.shape, np.int64)), None, (),
         lambda loss: np.testing.assert_allclose(loss, mse().forward(s, np.zeros_like(s)))),
        ("MSE backward of None", lambda: mse_backward(None), TypeError, ("dout", "NoneType")),
        ("MSE backward of inf", lambda: mse_backward(INF), None, (),
         holds(lambda d: not np.isfinite(d).any())),
    ]]


def _optimizer_cases() -> list[ApiCase]:
    def params(readonly_=False, dtype=np.float32):
        p = Parameter(np.ones((2, 3), dtype), "W", regularize=True)
        if readonly_:
            p.data.setflags(write=False)
        p.grad[...] = 0.5
        return [p]

    def rebound_readonly():
        ps = params()
        opt = optim.SGD(ps, lr=0.1)
        ps[0].data = readonly(np.ones((2, 3), np.float32))
        opt.step()

    cases = [
        ("read-only parameter", lambda: optim.SGD(params(readonly_=True)), ValueError, ("params[0]", "'W'", "read-only")),
        ("parameter rebound to a read-only array", rebound_readonly, ValueError, ("params[0]", "read-only")),
        ("params is a Parameter", lambda: optim.SGD(params()[0]), TypeError, ("list of Parameter",)),
        ("params is an ndarray", lambda: optim.SGD(np.ones(3)), TypeError, ("list of Parameter",)),
        ("params holds an ndarray", lambda: optim.SGD([np.ones(3)]), TypeError, ("params[0]", "Parameter", "ndarray")),
        ("params is empty", lambda: optim.SGD([]), ValueError, ("empty",)),
        ("a parameter twice", lambda: optim.SGD(params() * 2), ValueError, ("more than once",)),
        ("regularize", lambda: optim.SGD(params(), regularize="biases"), ValueError, ("regularize",)),
    ]
    for cls in (optim.SGD, optim.Momentum, optim.Nesterov, optim.AdaGrad, optim.RMSprop, optim.Adam):
        n = cls.__name__
        for v, exc, words in [(-0.1, ValueError, (">= 0",)), (NAN, ValueError, ("finite",)), (INF, ValueError, ("finite",)),
                              ("0.1", TypeError, ("real number", "str")), (None, TypeError, ("NoneType",)),
                              (True, TypeError, ("bool",)), (10**400, ValueError, ("out of range",))]:
            cases.append((f"{n} lr={v!r:.12}", lambda cls=cls, v=v: cls(params(), lr=v), exc, (n, "lr", *words)))
        for hp, v in [("weight_decay", INF), ("l1", -1.0), ("max_norm", INF), ("max_norm", 0.0)]:
            cases.append((f"{n} {hp}={v!r}", lambda cls=cls, hp=hp, v=v: cls(params(), **{hp: v}), ValueError, (n, hp)))

        def setting_lr(cls=cls):
            opt = cls(params())
            opt.lr = INF
        cases.append((f"{n} lr set to inf between steps", setting_lr, ValueError, (n, "lr", "finite")))
        cases.append((f"{n} step with a NaN gradient propagates",
                      lambda cls=cls: _nan_step(cls, params),
                      None, (), holds(lambda w: np.isnan(w).all())))
    for cls, hp, v in [(optim.Momentum, "momentum", 1.0), (optim.Nesterov, "momentum", -0.1), (optim.AdaGrad, "eps", 0.0),
                       (optim.RMSprop, "decay", NAN), (optim.RMSprop, "eps", INF), (optim.Adam, "beta1", 1.0),
                       (optim.Adam, "beta2", INF), (optim.Adam, "eps", -1e-8)]:
        cases.append((f"{cls.__name__} {hp}={v!r}", lambda cls=cls, hp=hp, v=v: cls(params(), **{hp: v}), ValueError,
                      (cls.__name__, hp)))
    return [ApiCase(f"optimizer: {w}", *rest) for w, *rest in cases]


def _nan_step(cls, params):
    ps = params()
    ps[0].grad[...] = np.nan
    opt = cls(ps)
    opt.step()
    return ps[0].data


def _trainer(seed=0):
    model = L.Sequential(L.Affine(4, 3, rng=seed))
    return Trainer(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), seed=seed, verbose=False)


def _data_cases() -> list[ApiCase]:
    x, t = _x((5, 4)), np.array([0, 1, 2, 0, 1])

    def one_batch(history):
        assert len(history) == 1 and np.isfinite(history[0]["loss"]), history

    def bigger_batch_is_one_step():
        trainer = _trainer()
        w0 = trainer.model.layers[0].W.data.copy()
        history = trainer.fit(x, t, epochs=1, batch_size=100)
        # One step on all five samples: the same weights as a full batch of exactly five.
        other = _trainer()
        other.fit(x, t, epochs=1, batch_size=5)
        np.testing.assert_array_equal(trainer.model.layers[0].W.data, other.model.layers[0].W.data)
        assert not np.array_equal(trainer.model.layers[0].W.data, w0)
        return history

    def idx(tmp_bytes, name="f.idx"):
        return data.parse_idx(tmp_bytes, name)

    return [ApiCase(f"data: {w}", *rest) for w, *rest in [
        ("fit on an empty dataset", lambda: _trainer().fit(x[:0], t[:0], epochs=1), ValueError, ("no training samples",)),
        ("fit with a batch larger than the dataset", bigger_batch_is_one_step, None, (), one_batch),
        ("fit on lists", lambda: _trainer().fit(x.tolist(), t.tolist(), epochs=1), TypeError, ("numpy arrays",)),
        ("fit with labels of another length", lambda: _trainer().fit(x, t[:4], epochs=1), ValueError, ("5 samples", "4")),
        ("fit with batch_size 0", lambda: _trainer().fit(x, t, batch_size=0), ValueError, ("batch_size",)),
        ("fit with batch_size 2.0", lambda: _trainer().fit(x, t, batch_size=2.0), ValueError, ("batch_size",)),
        ("fit with labels out of range", lambda: _trainer().fit(x, t + 1, epochs=1), ValueError, ("label 3",)),
        ("fit with float64 images into a float32 model", lambda: _trainer().fit(x.astype(np.float64), t, epochs=1),
         TypeError, ("float64", "float32")),
        ("evaluate an empty set", lambda: _trainer().evaluate(x[:0], t[:0]), ValueError, ("no samples",)),
        ("parse_idx of a list", lambda: idx([0, 0, 8, 1]), TypeError, ("parse_idx", "bytes-like", "list")),
        ("parse_idx of a str", lambda: idx("\x00\x00\x08\x01"), TypeError, ("parse_idx", "bytes-like", "str")),
        ("parse_idx of no bytes", lambda: idx(b""), data.DatasetError, ("f.idx", "too short")),
        ("parse_idx of an empty dataset", lambda: idx(b"\x00\x00\x08\x01\x00\x00\x00\x00"), None, (),
         holds(lambda a: a.shape == (0,))),
        ("load_idx of a missing file", lambda: data.load_idx("/nonexistent/train-images-idx3-ubyte"), data.DatasetError,
         ("/nonexistent/train-images-idx3-ubyte", "cannot read")),
        ("load_dir of an empty directory", lambda: data.load_dir("/nonexistent-directory"), data.DatasetError,
         ("missing the train files",)),
    ]]


API_CASES = _layer_cases() + _constructor_cases() + _geometry_api_cases() + _loss_cases() + _optimizer_cases() + _data_cases()


@pytest.mark.parametrize("backend_name", ["native", "numpy"])
@pytest.mark.parametrize("case", API_CASES, ids=[c.what for c in API_CASES])
def test_api_table(case, backend_name):
    with backend.use(backend_name), np.errstate(all="ignore"):
        if case.exc is None:
            result = case.call()
            if case.check is not None:
                case.check(result)
            return
        with pytest.raises(case.exc) as info:
            case.call()
    message = str(info.value)
    missing = [w for w in case.words if w not in message]
    assert not missing, f"{missing} not in {message!r}"
