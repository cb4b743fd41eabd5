"""Every kernel's signature as data, so that tests can generate calls instead of writing them.

A ``Spec`` lists each argument of a kernel with its role (an output, an input, a parameter
updated in place, an index or label array, a hyper-parameter), the shape of a valid call as
expressions over the kernel's dimensions, and how valid values are drawn. ``build`` turns a
spec into the arguments of one valid call; ``run`` calls a backend and collects what it
wrote; ``assert_same_results`` compares the native kernel with the oracle using the
rounding bounds of tests/tolerance.py (the bound of each kernel family is derived next to
it). tests/test_bad_input.py derives its bad-argument table from these specs and
tests/test_properties.py its property tests.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from fastlayers import reference
from fastlayers.backend import KERNEL_NAMES, _native

from .tolerance import (
    ULPS_ELEMENTWISE, assert_close_elementwise, assert_close_reduction, gamma, tiny, unit_roundoff,
)

F64 = np.float64

# Array roles.
OUT = "out"  # float output, overwritten or accumulated (+=)
OPT = "opt"  # float gradient output that may be None (the gradient is then skipped)
INOUT = "inout"  # float array the kernel updates in place by contract (parameters, state, running_*)
IN = "in"  # float input
GATE = "gate"  # float input read for its sign only (the output of a fused ReLU forward)
IDX_OUT = "idx_out"  # integer output: an argmax (int32) or counts (int64)
IDX_IN = "idx_in"  # integer input holding indices that must lie in range: an argmax (int32)
LABELS = "labels"  # int64 class labels, or (N, K) targets of the scores' dtype
MASK_OUT = "mask_out"  # uint8 output (dropout mask)
MASK_IN = "mask_in"  # uint8 input

FLOAT_ROLES = (OUT, OPT, INOUT, IN, GATE)
WRITTEN_ROLES = (OUT, OPT, INOUT, IDX_OUT, MASK_OUT)
READ_ROLES = (IN, GATE, IDX_IN, LABELS, MASK_IN)

# Hyper-parameter kinds: what the contract (docs/kernels.md) accepts.
POS_INT = "pos_int"  # int >= 1
NONNEG_INT = "nonneg_int"  # int >= 0
AXIS = "axis"  # 0 or 1
SEED = "seed"  # int in [0, 2**32)
REAL = "real"  # any real number, NaN and infinities included (dloss: they propagate)
BOUND = "bound"  # a real clipping bound; infinities allowed, NaN not
FINITE = "finite"  # a finite real
RATE = "rate"  # a finite real >= 0 (lr, weight_decay, l1)
POSITIVE = "positive"  # a finite real > 0 (eps, max_norm)
FRACTION = "fraction"  # a real in [0, 1)
UNIT = "unit"  # a real in [0, 1]
HYPER_KINDS = (POS_INT, NONNEG_INT, AXIS, SEED, REAL, BOUND, FINITE, RATE, POSITIVE, FRACTION, UNIT)


@dataclasses.dataclass(frozen=True)
class Arg:
    name: str
    role: str
    shape: str = ""  # comma-separated expressions over the dims; "" for a hyper-parameter
    fill: str = "normal"  # normal | positive | index:<expr> (values in [0, expr)) | mask
    value: str = ""  # a hyper-parameter's valid value, an expression over the dims

    @property
    def is_array(self) -> bool:
        return self.role not in HYPER_KINDS

    @property
    def is_float(self) -> bool:
        return self.role in FLOAT_ROLES


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    args: tuple
    dims: dict  # the sizes a valid call is built from
    derived: dict = dataclasses.field(default_factory=dict)  # sizes that follow from dims and hyper-parameters
    # Arrays whose shape the kernel reads its sizes from. A wrong size there may be reported
    # on another argument (the one that then disagrees); any other array must be named itself.
    sources: frozenset = frozenset()
    any_ndim: bool = False  # the sources may have any number of dimensions
    tol: str = "exact"  # how native and oracle results are compared (see assert_same_results)
    n: str = "1"  # for tol="linear": an upper bound on the length of any sum, over the dims
    returns: bool = False  # returns a float (losses and penalties)
    like: str = "x"  # the float array checked first: every other float array must share its dtype

    def arg(self, name) -> Arg:
        return next(a for a in self.args if a.name == name)

    @property
    def arrays(self):
        return [a for a in self.args if a.is_array]

    @property
    def hypers(self):
        return [a for a in self.args if not a.is_array]



def A(name, role, shape, fill="normal"):
    return Arg(name, role, shape, fill)


def H(name, kind, value):
    return Arg(name, kind, value=str(value))


def _affine(name, relu):
    args = [A("out", OUT, "N, M"), A("x", IN, "N, D"), A("W", IN, "D, M"), A("b", IN, "M")]
    return Spec(name, tuple(args), dict(N=3, D=4, M=5), sources=frozenset({"x", "W"}), tol="linear", n="D + 1")


def _affine_backward(name, relu):
    args = [A("dx", OPT, "N, D"), A("dW", OUT, "D, M"), A("db", OUT, "M"), A("dout", IN, "N, M"),
            A("x", IN, "N, D"), A("W", IN, "D, M")] + ([A("out", GATE, "N, M")] if relu else [])
    return Spec(name, tuple(args), dict(N=3, D=4, M=5), sources=frozenset({"x", "W"} | ({"out"} if relu else set())),
                tol="linear", n="max(M, N + 1)")


CONV_DIMS = dict(N=2, C=3, H=5, Wd=6, F=4, KH=3, KW=2)
CONV_OUT = {"OH": "(H + 2 * pad - KH) // stride + 1", "OW": "(Wd + 2 * pad - KW) // stride + 1"}
CONV_HYPER = [H("stride", POS_INT, 1), H("pad", NONNEG_INT, 1)]


def _conv_forward(name):
    args = [A("out", OUT, "N, F, OH, OW"), A("x", IN, "N, C, H, Wd"), A("W", IN, "F, C, KH, KW"), A("b", IN, "F")]
    return Spec(name, tuple(args + CONV_HYPER), CONV_DIMS, CONV_OUT, frozenset({"x", "W"}), tol="linear",
                n="C * KH * KW + 1")


def _conv_backward(name, relu):
    args = [A("dx", OPT, "N, C, H, Wd"), A("dW", OUT, "F, C, KH, KW"), A("db", OUT, "F"), A("dout", IN, "N, F, OH, OW"),
            A("x", IN, "N, C, H, Wd"), A("W", IN, "F, C, KH, KW")] + ([A("out", GATE, "N, F, OH, OW")] if relu else [])
    return Spec(name, tuple(args + CONV_HYPER), CONV_DIMS, CONV_OUT, frozenset({"x", "W"}), tol="linear",
                n="max(N * OH * OW + 1, F * KH * KW)")


POOL_DIMS = dict(N=2, C=3, H=5, Wd=6)
POOL_HYPER = [H("PH", POS_INT, 2), H("PW", POS_INT, 3), H("stride", POS_INT, 2), H("pad", NONNEG_INT, 1)]
POOL_OUT = {"OH": "(H + 2 * pad - PH) // stride + 1", "OW": "(Wd + 2 * pad - PW) // stride + 1"}

CONV_POOL_DIMS = dict(N=2, C=3, H=5, Wd=6, F=4, KH=2, KW=2)
CONV_POOL_OUT = {"OH": "(H + 2 * pad - KH) // stride + 1", "OW": "(Wd + 2 * pad - KW) // stride + 1",
                 "POH": "(OH + 2 * pool_pad - PH) // pool_stride + 1",
                 "POW": "(OW + 2 * pool_pad - PW) // pool_stride + 1"}

BN_DIMS = dict(N=4, D=3)
S = "N, C, H"  # the shape of element-wise kernels' arrays (any shape is allowed)
ELEMENTWISE_DIMS = dict(N=2, C=3, H=4)
OPTIM_DIMS = dict(R=3, Q=4)
P = "R, Q"


def _unary(name, tol="exact", hyper=()):
    return Spec(name, (A("out", OUT, S), A("x", IN, S), *hyper), ELEMENTWISE_DIMS, sources=frozenset({"x"}),
                any_ndim=True, tol=tol)


def _unary_backward(name, reads="x", tol="exact", hyper=()):
    role = GATE if reads == "x" and tol == "exact" else IN
    return Spec(name, (A("dx", OUT, S), A("dout", IN, S), A(reads, role, S), *hyper), ELEMENTWISE_DIMS,
                sources=frozenset({reads}), any_ndim=True, tol=tol, like=reads)


def _update(name, states, hypers, tol="exact"):
    args = [A("param", INOUT, P), A("grad", IN, P)] + [A(s, INOUT, P, "positive") for s in states]
    args += hypers + [H("weight_decay", RATE, 0.01), H("l1", RATE, 0.001)]
    return Spec(name, tuple(args), OPTIM_DIMS, sources=frozenset({"param"}), any_ndim=True, tol=tol, like="param")


def _specs() -> dict:
    s = [
        _affine("affine_forward", False),
        _affine_backward("affine_backward", False),
        _affine("affine_relu_forward", True),
        _affine_backward("affine_relu_backward", True),
        Spec("im2col", (A("col", OUT, "N * OH * OW, C * KH * KW"), A("x", IN, "N, C, H, Wd"), H("FH", POS_INT, "KH"),
                        H("FW", POS_INT, "KW"), *CONV_HYPER), CONV_DIMS, CONV_OUT, frozenset({"x"})),
        Spec("col2im", (A("dx", OUT, "N, C, H, Wd"), A("col", IN, "N * OH * OW, C * KH * KW"), H("FH", POS_INT, "KH"),
                        H("FW", POS_INT, "KW"), *CONV_HYPER), CONV_DIMS, CONV_OUT, frozenset({"dx"}), tol="linear",
             n="KH * KW", like="col"),
        _conv_forward("conv2d_forward"),
        _conv_backward("conv2d_backward", False),
        _conv_forward("conv2d_relu_forward"),
        _conv_backward("conv2d_relu_backward", True),
        Spec("conv2d_relu_maxpool2d_forward",
             (A("out", OUT, "N, F, POH, POW"), A("argmax", IDX_OUT, "N, F, POH, POW"), A("x", IN, "N, C, H, Wd"),
              A("W", IN, "F, C, KH, KW"), A("b", IN, "F"), H("stride", POS_INT, 1), H("pad", NONNEG_INT, 0),
              H("PH", POS_INT, 2), H("PW", POS_INT, 2), H("pool_stride", POS_INT, 2), H("pool_pad", NONNEG_INT, 1)),
             CONV_POOL_DIMS, CONV_POOL_OUT, frozenset({"x", "W"}), tol="linear", n="C * KH * KW + 1"),
        Spec("conv2d_relu_maxpool2d_backward",
             (A("dx", OPT, "N, C, H, Wd"), A("dW", OUT, "F, C, KH, KW"), A("db", OUT, "F"),
              A("dout", IN, "N, F, POH, POW"), A("x", IN, "N, C, H, Wd"), A("W", IN, "F, C, KH, KW"),
              A("out", GATE, "N, F, POH, POW"), A("argmax", IDX_IN, "N, F, POH, POW", "index:OH * OW"),
              H("stride", POS_INT, 1), H("pad", NONNEG_INT, 0)),
             dict(CONV_POOL_DIMS, POH=2, POW=3), {k: v for k, v in CONV_POOL_OUT.items() if k in ("OH", "OW")},
             frozenset({"x", "W", "dout"}), tol="linear", n="max(N * OH * OW + 1, F * KH * KW) + POH * POW"),
        Spec("maxpool2d_forward", (A("out", OUT, "N, C, OH, OW"), A("argmax", IDX_OUT, "N, C, OH, OW"),
                                   A("x", IN, "N, C, H, Wd"), *POOL_HYPER), POOL_DIMS, POOL_OUT, frozenset({"x"})),
        Spec("maxpool2d_backward", (A("dx", OUT, "N, C, H, Wd"), A("dout", IN, "N, C, OH, OW"),
                                    A("argmax", IDX_IN, "N, C, OH, OW", "index:H * Wd")),
             dict(POOL_DIMS, OH=3, OW=2), sources=frozenset({"dx", "dout"}), tol="linear", n="OH * OW", like="dout"),
        Spec("avgpool2d_forward", (A("out", OUT, "N, C, OH, OW"), A("x", IN, "N, C, H, Wd"), *POOL_HYPER), POOL_DIMS,
             POOL_OUT, frozenset({"x"}), tol="linear", n="PH * PW + 1"),
        Spec("avgpool2d_backward", (A("dx", OUT, "N, C, H, Wd"), A("dout", IN, "N, C, OH, OW"), *POOL_HYPER),
             POOL_DIMS, POOL_OUT, frozenset({"dx"}), tol="linear", n="PH * PW + 1", like="dout"),
        # The warp repeats the oracle's double arithmetic operation by operation: bit for bit.
        Spec("affine_warp_forward", (A("out", OUT, "N, C, H, Wd"), A("x", IN, "N, C, H, Wd"), A("theta", IN, "N, 2, 3"),
                                     H("fill", REAL, 0.25)), POOL_DIMS, sources=frozenset({"x"})),
    ]
    for relu in (False, True):
        r = "_relu" if relu else ""
        s.append(Spec(f"batchnorm{r}_forward_train",
                      (A("out", OUT, "N, D"), A("mean", OUT, "D"), A("invstd", OUT, "D"),
                       A("running_mean", INOUT, "D"), A("running_var", INOUT, "D", "positive"), A("x", IN, "N, D"),
                       A("gamma", IN, "D"), A("beta", IN, "D"), H("momentum", UNIT, 0.9), H("eps", POSITIVE, 1e-5)),
                      BN_DIMS, sources=frozenset({"x"}), tol="bn_train"))
        s.append(Spec(f"batchnorm{r}_forward_eval",
                      (A("out", OUT, "N, D"), A("x", IN, "N, D"), A("gamma", IN, "D"), A("beta", IN, "D"),
                       A("running_mean", IN, "D"), A("running_var", IN, "D", "positive"), H("eps", POSITIVE, 1e-5)),
                      BN_DIMS, sources=frozenset({"x"}), tol="bn_eval"))
        s.append(Spec(f"batchnorm{r}_backward",
                      (A("dx", OPT, "N, D"), A("dgamma", OUT, "D"), A("dbeta", OUT, "D"), A("dout", IN, "N, D"),
                       A("x", IN, "N, D"), A("gamma", IN, "D"), A("mean", IN, "D"), A("invstd", IN, "D", "positive"))
                      + ((A("out", GATE, "N, D"),) if relu else ()),
                      BN_DIMS, sources=frozenset({"x"}), tol="bn_backward"))
    s += [
        Spec("dropout_forward", (A("out", OUT, S), A("mask", MASK_OUT, S), A("x", IN, S), H("p", FRACTION, 0.5),
                                 H("seed", SEED, 7), H("scale", FINITE, 2.0)), ELEMENTWISE_DIMS,
             sources=frozenset({"x"}), any_ndim=True),
        Spec("dropout_backward", (A("dx", OUT, S), A("dout", IN, S), A("mask", MASK_IN, S, "mask"),
                                  H("scale", FINITE, 2.0)), ELEMENTWISE_DIMS, sources=frozenset({"dout"}),
             any_ndim=True, like="dout"),
        Spec("scale_forward", (A("out", OUT, S), A("x", IN, S), H("alpha", FINITE, 0.5)), ELEMENTWISE_DIMS,
             sources=frozenset({"x"}), any_ndim=True),
        _unary("relu_forward"),
        _unary_backward("relu_backward"),
        _unary("leaky_relu_forward", hyper=(H("alpha", FINITE, 0.1),)),
        _unary_backward("leaky_relu_backward", hyper=(H("alpha", FINITE, 0.1),)),
        Spec("prelu_forward", (A("out", OUT, S), A("x", IN, S), A("alpha", IN, "C")), ELEMENTWISE_DIMS,
             sources=frozenset({"x"})),
        Spec("prelu_backward", (A("dx", OUT, S), A("dalpha", OUT, "C"), A("dout", IN, S), A("x", IN, S),
                                A("alpha", IN, "C")), ELEMENTWISE_DIMS, sources=frozenset({"x"}), tol="prelu_backward"),
        _unary("sigmoid_forward", "ulps"),
        _unary_backward("sigmoid_backward", "out", "sigmoid_backward"),
        _unary("tanh_forward", "ulps"),
        _unary_backward("tanh_backward", "out", "tanh_backward"),
        _unary("hardtanh_forward", hyper=(H("min_val", BOUND, -0.5), H("max_val", BOUND, 1.0))),
        _unary_backward("hardtanh_backward", hyper=(H("min_val", BOUND, -0.5), H("max_val", BOUND, 1.0))),
        _unary("softplus_forward", "ulps"),
        _unary_backward("softplus_backward", "x", "ulps"),
        _unary("identity_forward"),
        Spec("identity_backward", (A("dx", OUT, S), A("dout", IN, S)), ELEMENTWISE_DIMS, sources=frozenset({"dout"}),
             any_ndim=True, like="dout"),
        Spec("softmax_forward", (A("out", OUT, "N, K"), A("x", IN, "N, K")), dict(N=3, K=5),
             sources=frozenset({"x"}), tol="softmax"),
        Spec("softmax_backward", (A("dx", OUT, "N, K"), A("dout", IN, "N, K"), A("out", IN, "N, K", "positive")),
             dict(N=3, K=5), sources=frozenset({"out"}), tol="softmax_backward", like="out"),
        Spec("maxout_forward", (A("out", OUT, "N, M"), A("argmax", IDX_OUT, "N, M"), A("x", IN, "N, D"),
                                A("W", IN, "K, D, M"), A("b", IN, "K, M")), dict(N=3, D=4, K=2, M=5),
             sources=frozenset({"x", "W"}), tol="maxout_forward"),
        Spec("maxout_backward", (A("dx", OPT, "N, D"), A("dW", OUT, "K, D, M"), A("db", OUT, "K, M"),
                                 A("dout", IN, "N, M"), A("x", IN, "N, D"), A("W", IN, "K, D, M"),
                                 A("argmax", IDX_IN, "N, M", "index:K")), dict(N=3, D=4, K=2, M=5),
             sources=frozenset({"x", "W"}), tol="linear", n="K * (M + 1) + N + 1"),
        Spec("rbf_forward", (A("out", OUT, "N, M"), A("x", IN, "N, D"), A("centers", IN, "M, D"),
                             A("widths", IN, "M", "positive")), dict(N=3, D=4, M=5), sources=frozenset({"x", "centers"}),
             tol="rbf_forward"),
        Spec("rbf_backward", (A("dx", OPT, "N, D"), A("dcenters", OUT, "M, D"), A("dwidths", OUT, "M"),
                              A("dout", IN, "N, M"), A("x", IN, "N, D"), A("centers", IN, "M, D"),
                              A("widths", IN, "M", "positive"), A("out", IN, "N, M", "positive")),
             dict(N=3, D=4, M=5), sources=frozenset({"x", "centers"}), tol="rbf_backward"),
        Spec("softmax_cross_entropy_forward", (A("probs", OUT, "N, K"), A("logits", IN, "N, K"),
                                               A("t", LABELS, "N", "index:K")), dict(N=3, K=5),
             sources=frozenset({"logits"}), tol="sce_forward", returns=True, like="logits"),
        Spec("softmax_cross_entropy_backward", (A("dlogits", OUT, "N, K"), A("probs", IN, "N, K", "positive"),
                                                A("t", LABELS, "N", "index:K"), H("dloss", REAL, 0.5)),
             dict(N=3, K=5), sources=frozenset({"probs"}), tol="ulps", like="probs"),
        Spec("mse_forward", (A("y", IN, "N, D"), A("t", IN, "N, D")), dict(N=3, D=4), sources=frozenset({"y"}),
             any_ndim=True, tol="mse_forward", returns=True, like="y"),
        Spec("mse_backward", (A("dy", OUT, "N, D"), A("y", IN, "N, D"), A("t", IN, "N, D"), H("dloss", REAL, 0.5)),
             dict(N=3, D=4), sources=frozenset({"y"}), any_ndim=True, like="y"),
        _update("sgd_update", (), [H("lr", RATE, 0.1)]),
        _update("momentum_update", ("v",), [H("lr", RATE, 0.1), H("momentum", FRACTION, 0.9)]),
        _update("nesterov_update", ("v",), [H("lr", RATE, 0.1), H("momentum", FRACTION, 0.9)]),
        _update("adagrad_update", ("h",), [H("lr", RATE, 0.1), H("eps", POSITIVE, 1e-7)]),
        _update("rmsprop_update", ("h",), [H("lr", RATE, 0.1), H("decay", FRACTION, 0.99), H("eps", POSITIVE, 1e-7)]),
        _update("adam_update", ("m", "v"), [H("lr", RATE, 0.1), H("beta1", FRACTION, 0.9), H("beta2", FRACTION, 0.999),
                                            H("eps", POSITIVE, 1e-8), H("step", POS_INT, 3)], tol="adam"),
        Spec("max_norm_update", (A("w", INOUT, P), H("max_norm", POSITIVE, 1.0), H("axis", AXIS, 0)), OPTIM_DIMS,
             sources=frozenset({"w"}), tol="ulps", like="w"),
        Spec("sum_squares", (A("x", IN, P),), OPTIM_DIMS, sources=frozenset({"x"}), any_ndim=True, tol="sum",
             returns=True),
        Spec("sum_abs", (A("x", IN, P),), OPTIM_DIMS, sources=frozenset({"x"}), any_ndim=True, tol="sum",
             returns=True),
        Spec("scale_update", (A("x", INOUT, P), H("alpha", FINITE, 0.5)), OPTIM_DIMS, sources=frozenset({"x"}),
             any_ndim=True),
        Spec("clamp_update", (A("x", INOUT, P), H("limit", POSITIVE, 0.5)), OPTIM_DIMS, sources=frozenset({"x"}),
             any_ndim=True, tol="clamp", returns=True),
        Spec("zero_update", (A("x", INOUT, P),), OPTIM_DIMS, sources=frozenset({"x"}), any_ndim=True),
        Spec("dot", (A("x", IN, P), A("y", IN, P)), OPTIM_DIMS, sources=frozenset({"x"}), any_ndim=True, tol="dot",
             returns=True),
        Spec("max_abs", (A("x", IN, P),), OPTIM_DIMS, sources=frozenset({"x"}), any_ndim=True, tol="max_abs",
             returns=True),
        Spec("add_scaled_forward", (A("out", OUT, S), A("x", IN, S), A("y", IN, S), H("alpha", FINITE, -0.75)),
             ELEMENTWISE_DIMS, sources=frozenset({"x"}), any_ndim=True),
        Spec("lbfgs_direction", (A("d", OUT, "n"), A("g", IN, "n"), A("s", IN, "K, n"), A("y", IN, "K, n"),
                                 A("rho", IN, "K", "positive"), H("gamma", POSITIVE, 0.5), H("first", NONNEG_INT, 1)),
             dict(K=3, n=7), sources=frozenset({"g", "s"}), tol="lbfgs_direction", like="g"),
        Spec("sum_squares_diff", (A("a", IN, P), A("b", IN, P)), OPTIM_DIMS, sources=frozenset({"a"}), any_ndim=True,
             tol="sum", returns=True, like="a"),
        Spec("count_outside", (A("counts", IDX_OUT, "C"), A("x", IN, S), H("low", BOUND, -0.5), H("high", BOUND, 1.0)),
             ELEMENTWISE_DIMS, sources=frozenset({"x"})),
    ]
    return {spec.name: spec for spec in s}


SPECS = _specs()
assert sorted(SPECS) == sorted(KERNEL_NAMES), set(SPECS) ^ set(KERNEL_NAMES)
IMPLS = {"native": _native, "numpy": reference}


# ----------------------------------------------------------------------------------------
# Building calls
# ----------------------------------------------------------------------------------------


def sizes(spec: Spec, dims: dict | None = None, hyper: dict | None = None) -> dict:
    """The dims, the hyper-parameters' values and the derived sizes of one call."""
    ns = dict(spec.dims)
    ns.update(dims or {})
    for a in spec.hypers:
        ns[a.name] = eval(a.value, {"max": max}, dict(ns))  # noqa: S307 - expressions written above
    ns.update(hyper or {})
    for name, expr in spec.derived.items():
        ns[name] = eval(expr, {"max": max}, dict(ns))  # noqa: S307
    return ns


def shape_of(arg: Arg, ns: dict) -> tuple:
    # A geometry that leaves no room gives a negative size; the array is then built empty and
    # the kernel's own check of that geometry is what the test sees.
    return tuple(max(0, int(eval(e, {"max": max}, dict(ns)))) for e in arg.shape.split(","))  # noqa: S307


def index_dtype(arg: Arg) -> np.dtype:
    """The integer dtype of an IDX_IN, IDX_OUT or LABELS argument: argmax arrays are int32
    (half the bytes a pooling layer writes and reads back), counts and labels int64."""
    return np.dtype(np.int32 if arg.name == "argmax" else np.int64)


def value_for(arg: Arg, ns: dict, dtype, rng) -> object:
    """A valid value of ``arg`` in a call of dtype ``dtype``."""
    if not arg.is_array:
        return ns[arg.name]
    shape = shape_of(arg, ns)
    if arg.role in (IDX_IN, LABELS):
        hi = int(eval(arg.fill.split(":", 1)[1], {}, dict(ns)))  # noqa: S307
        return rng.integers(0, max(hi, 1), size=shape).astype(index_dtype(arg))
    if arg.role == IDX_OUT:
        return np.full(shape, -7, index_dtype(arg))
    if arg.role in (MASK_IN, MASK_OUT):
        return rng.integers(0, 2, size=shape).astype(np.uint8)
    if arg.fill == "positive":
        return (rng.random(shape) + 0.5).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def build(spec: Spec, dtype=np.float32, dims: dict | None = None, hyper: dict | None = None, seed: int = 0) -> dict:
    """The arguments of a valid call, by name, in order; the same for the same inputs (fresh
    arrays each time)."""
    key = (spec.name, np.dtype(dtype).str, tuple(sorted((dims or {}).items())),
           tuple(sorted((hyper or {}).items())), seed)
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in _built(key).items()}


@functools.lru_cache(maxsize=4096)
def _built(key) -> dict:
    name, dtype, dims, hyper, seed = key
    spec = SPECS[name]
    ns = sizes(spec, dict(dims), dict(hyper))
    rng = np.random.default_rng(seed)
    return {a.name: value_for(a, ns, np.dtype(dtype), rng) for a in spec.args}


def run(impl, spec: Spec, args: dict):
    """Calls the kernel; returns (return value, copies of every array it may write)."""
    with np.errstate(all="ignore"):  # the oracle on NaN and infinities
        ret = getattr(impl, spec.name)(*args.values())
    written = {a.name: np.array(args[a.name], copy=True) for a in spec.args
               if a.role in WRITTEN_ROLES and isinstance(args[a.name], np.ndarray)}
    return ret, written


def snapshot(spec: Spec, args: dict) -> dict:
    return {a.name: args[a.name].copy() for a in spec.args
            if a.role in READ_ROLES and isinstance(args[a.name], np.ndarray)}


def assert_unchanged(before: dict, args: dict, what: str) -> None:
    for name, b in before.items():
        np.testing.assert_array_equal(args[name], b, err_msg=f"{what}: input '{name}' was modified")


# ----------------------------------------------------------------------------------------
# Comparing native with the oracle
# ----------------------------------------------------------------------------------------


def _pattern(got, want, what, loose=False):
    """NaN at the same places, the same infinities at the same places. ``loose``: the same
    non-finite places, NaN and infinities interchangeable (a kernel that distributes a
    product over a difference, as BatchNorm's backward does, turns inf * (a - b) into
    inf*a - inf*b: NaN where the oracle's product is an infinity, and the other way round
    where the oracle's difference is inf - inf)."""
    got, want = np.asarray(got, F64), np.asarray(want, F64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if loose:
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=f"{what}: non-finite pattern")
    else:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN pattern")
        inf = np.isinf(want) | np.isinf(got)
        np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: infinities")
    return np.isfinite(want) & np.isfinite(got)


def _close(got, want, magnitude, n, dtype, what, loose=False):
    """assert_close_reduction on the entries finite in both whose bound is finite (an entry
    computed from an infinite input has no finite bound; its NaN/inf pattern is checked)."""
    ok = _pattern(got, want, what, loose)
    magnitude = np.broadcast_to(np.asarray(magnitude, F64), np.shape(want))
    ok &= np.isfinite(magnitude)
    assert_close_reduction(np.asarray(got, F64)[ok], np.asarray(want, F64)[ok], magnitude[ok], n, dtype, what)


def _ulps(got, want, dtype, what):
    ok = _pattern(got, want, what)
    assert_close_elementwise(np.asarray(got)[ok], np.asarray(want)[ok], dtype, what=what)


def _abs_oracle(spec: Spec, args: dict) -> dict:
    """The oracle run in float64 on the absolute values of every float input and initial
    output (gates, indices and labels as given): for a kernel that only multiplies and adds,
    each output is then the sum of the absolute values of the terms that formed it, the
    magnitude that the rounding bound of a sum scales with."""
    a64 = {}
    for a in spec.args:
        v = args[a.name]
        if a.is_float and isinstance(v, np.ndarray):
            v = v.astype(F64) if a.role == GATE else np.abs(v.astype(F64))
        elif isinstance(v, np.ndarray):
            v = v.copy()
        a64[a.name] = v
    _, written = run(reference, spec, a64)
    return written


def assert_same_results(spec: Spec, args: dict, native, oracle, dtype) -> None:
    """Native and oracle results of one call (``args`` as passed, outputs as before the call)
    agree: indices and masks exactly, floats within the rounding bound of the kernel's family."""
    (rg, wg), (rw, ww) = native, oracle
    name = spec.name
    dtype = np.dtype(dtype)
    for k in wg:
        if spec.arg(k).role in (IDX_OUT, MASK_OUT):
            np.testing.assert_array_equal(wg[k], ww[k], err_msg=f"{name}: {k}")
    floats = [k for k in wg if spec.arg(k).is_float]
    tol = spec.tol
    if tol == "exact":
        for k in floats:
            np.testing.assert_array_equal(wg[k], ww[k], err_msg=f"{name}: {k}")
    elif tol == "ulps":
        for k in floats:
            _ulps(wg[k], ww[k], dtype, f"{name}: {k}")
    elif tol == "linear":
        n = int(eval(spec.n, {"max": max}, _call_sizes(spec, args)))  # noqa: S307
        mag = _abs_oracle(spec, args)
        for k in floats:
            _close(wg[k], ww[k], mag[k], n, dtype, f"{name}: {k}")
    else:
        CUSTOM[tol](spec, args, wg, ww, rg, rw, dtype)
    if spec.returns and tol not in CUSTOM:
        raise AssertionError(f"{name}: a returned value needs a custom comparison")


def _call_sizes(spec: Spec, args: dict) -> dict:
    """Every dim and hyper-parameter of a call, read back from its arrays (so that a test may
    pass arrays of other sizes than the spec's)."""
    ns = {}
    for a in spec.args:
        v = args[a.name]
        if not a.is_array:
            ns[a.name] = v
        elif isinstance(v, np.ndarray) and v.ndim == len(a.shape.split(",")):
            for expr, size in zip(a.shape.split(","), v.shape):
                if expr.strip().isidentifier():
                    ns[expr.strip()] = size
    if "FH" in ns:
        ns.setdefault("KH", ns["FH"])
        ns.setdefault("KW", ns["FW"])
    for k, expr in spec.derived.items():
        if k not in ns:
            ns[k] = eval(expr, {"max": max}, dict(ns))  # noqa: S307
    return ns


def _f64(a):
    return np.asarray(a, F64)


def _bn_axes(x):
    return ((0,), (1, -1)) if x.ndim == 2 else ((0, 2, 3), (1, -1, 1, 1))


def _bn_train(spec, args, wg, ww, rg, rw, dtype):
    # As in tests/test_native_pool_norm.py: every output is a reduction of m terms followed by
    # a few element-wise roundings; the magnitudes bound the terms of each.
    x, gamma_, beta = _f64(args["x"]), _f64(args["gamma"]), _f64(args["beta"])
    rm0, rv0 = _f64(args["running_mean"]), _f64(args["running_var"])
    momentum, eps = args["momentum"], args["eps"]
    axes, b = _bn_axes(x)
    m = x.size // max(x.shape[1], 1)
    with np.errstate(all="ignore"):
        mu = x.mean(axis=axes)
        var = ((x - mu.reshape(b)) ** 2).mean(axis=axes)
        istd = 1 / np.sqrt(var + eps)
        xa = np.abs(x)
        mag_mean = xa.mean(axis=axes)
        mag_var = ((xa + mag_mean.reshape(b)) ** 2).mean(axis=axes)
        mag_istd = 0.5 * istd**3 * mag_var + istd
        g = np.abs(gamma_).reshape(b)
        mag_out = ((xa + mag_mean.reshape(b)) * istd.reshape(b) * g
                   + np.abs(x - mu.reshape(b)) * g * (0.5 * istd**3 * mag_var).reshape(b) + np.abs(beta).reshape(b))
        unb = m / (m - 1) if m > 1 else 1.0
        mags = {"out": mag_out, "mean": mag_mean, "invstd": mag_istd,
                "running_mean": momentum * np.abs(rm0) + (1 - momentum) * mag_mean,
                "running_var": momentum * np.abs(rv0) + (1 - momentum) * mag_var * unb}
    for k, mag in mags.items():
        _close(wg[k], ww[k], mag, m + 4, dtype, f"{spec.name}: {k}")


def _bn_eval(spec, args, wg, ww, rg, rw, dtype):
    x, rm, rv = _f64(args["x"]), _f64(args["running_mean"]), _f64(args["running_var"])
    _, b = _bn_axes(x)
    with np.errstate(all="ignore"):
        istd = 1 / np.sqrt(rv + args["eps"])
        mag = ((np.abs(x) + np.abs(rm).reshape(b)) * (istd * np.abs(_f64(args["gamma"]))).reshape(b)
               + np.abs(_f64(args["beta"])).reshape(b))
    _close(wg["out"], ww["out"], mag, 7, dtype, f"{spec.name}: out")


def _bn_backward(spec, args, wg, ww, rg, rw, dtype):
    x, dout = _f64(args["x"]), _f64(args["dout"])
    axes, b = _bn_axes(x)
    m = x.size // max(x.shape[1], 1)
    gate = (args["out"] > 0) if "out" in args else 1.0
    with np.errstate(all="ignore"):
        ga = np.abs(dout) * gate
        istd = np.abs(_f64(args["invstd"])).reshape(b)
        xh = (np.abs(x) + np.abs(_f64(args["mean"])).reshape(b)) * istd
        s_g, s_gx = ga.sum(axis=axes), (ga * xh).sum(axis=axes)
        mag_dx = (np.abs(_f64(args["gamma"])).reshape(b) * istd / max(m, 1)) * (
            m * ga + s_g.reshape(b) + xh * s_gx.reshape(b))
    if "dx" in wg:
        _close(wg["dx"], ww["dx"], mag_dx, m + 4, dtype, f"{spec.name}: dx", loose=True)
    # dgamma = sum(dout * xhat) is invstd * sum(dout * (x - mean)) natively: factored likewise.
    _close(wg["dgamma"], ww["dgamma"], s_gx + np.abs(_f64(args["dgamma"])), m + 2, dtype, f"{spec.name}: dgamma",
           loose=True)
    _close(wg["dbeta"], ww["dbeta"], s_g + np.abs(_f64(args["dbeta"])), m + 1, dtype, f"{spec.name}: dbeta")


def _prelu_backward(spec, args, wg, ww, rg, rw, dtype):
    np.testing.assert_array_equal(wg["dx"], ww["dx"], err_msg=f"{spec.name}: dx")
    x, dout, alpha = _f64(args["x"]), _f64(args["dout"]), args["alpha"]
    with np.errstate(all="ignore"):
        t = np.where(x > 0, 0.0, np.abs(dout * x))
    if alpha.size == 1:
        mag, n = np.array([t.sum()]), t.size
    else:
        mag, n = t.sum(axis=(0,) + tuple(range(2, x.ndim))), t.size // max(x.shape[1], 1)
    _close(wg["dalpha"], ww["dalpha"], mag + np.abs(_f64(args["dalpha"])), n + 2, dtype, f"{spec.name}: dalpha")


def _sigmoid_backward(spec, args, wg, ww, rg, rw, dtype):
    y, g = _f64(args["out"]), np.abs(_f64(args["dout"]))
    _close(wg["dx"], ww["dx"], g * np.abs(y) * (1 + np.abs(y)), 2, dtype, f"{spec.name}: dx")


def _tanh_backward(spec, args, wg, ww, rg, rw, dtype):
    # dout * (1 - y*y): two terms scaled by dout (an FMA may round once fewer).
    y, g = _f64(args["out"]), np.abs(_f64(args["dout"]))
    _close(wg["dx"], ww["dx"], g * (1 + y * y), 2, dtype, f"{spec.name}: dx")


def _softmax(spec, args, wg, ww, rg, rw, dtype):
    K = args["x"].shape[1]
    _close(wg["out"], ww["out"], np.abs(_f64(ww["out"])), K + ULPS_ELEMENTWISE, dtype, f"{spec.name}: out")


def _softmax_backward(spec, args, wg, ww, rg, rw, dtype):
    y, g = np.abs(_f64(args["out"])), np.abs(_f64(args["dout"]))
    with np.errstate(all="ignore"):
        mag = y * (g + (g * y).sum(axis=1, keepdims=True))
    _close(wg["dx"], ww["dx"], mag, y.shape[1] + 3, dtype, f"{spec.name}: dx")


def _maxout_forward(spec, args, wg, ww, rg, rw, dtype):
    x, W, b = _f64(args["x"]), _f64(args["W"]), _f64(args["b"])
    with np.errstate(all="ignore"):
        mag = np.abs(x) @ np.abs(W) + np.abs(b)[:, None, :]  # (K, N, M)
    N, M = ww["out"].shape
    rows, cols = np.indices((N, M))
    am, ram = np.clip(wg["argmax"], 0, W.shape[0] - 1), ww["argmax"]
    m = mag[ram, rows, cols] + mag[am, rows, cols] if W.shape[0] else np.zeros((N, M))
    _close(wg["out"], ww["out"], m, x.shape[1] + 1, dtype, f"{spec.name}: out")


def _rbf_sq_mag(x, c):
    ax, ac = np.abs(_f64(x)), np.abs(_f64(c))
    return (ax**2).sum(1)[:, None] + (ac**2).sum(1)[None, :] + 2 * ax @ ac.T


def _rbf_forward(spec, args, wg, ww, rg, rw, dtype):
    # As in tests/test_native_activations.py: the squared distance's rounding, divided by
    # 2 w^2, is an absolute error of the exponent, a relative error of out.
    x, c, w = args["x"], args["centers"], args["widths"]
    D = x.shape[1]
    with np.errstate(all="ignore"):
        rel = 2 * gamma(D + 3, dtype) * _rbf_sq_mag(x, c) / (2 * _f64(w) ** 2) + ULPS_ELEMENTWISE * np.finfo(dtype).eps
    got, want = _f64(wg["out"]), _f64(ww["out"])
    ok = _pattern(got, want, f"{spec.name}: out") & np.isfinite(rel)
    bound = rel[ok] * np.abs(want[ok]) + tiny(dtype)
    assert (np.abs(got[ok] - want[ok]) <= bound).all(), f"{spec.name}: out beyond the bound"


def _rbf_backward(spec, args, wg, ww, rg, rw, dtype):
    x, c, w = _f64(args["x"]), _f64(args["centers"]), _f64(args["widths"])
    N, D = x.shape
    M = c.shape[0]
    with np.errstate(all="ignore"):
        g = np.abs(_f64(args["dout"]) * _f64(args["out"]) / w**2)
        ax, ac = np.abs(x), np.abs(c)
        if "dx" in wg:
            _close(wg["dx"], ww["dx"], g @ ac + ax * g.sum(1, keepdims=True), M + 2, dtype, f"{spec.name}: dx")
        _close(wg["dcenters"], ww["dcenters"], np.abs(_f64(args["dcenters"])) + g.T @ ax + ac * g.sum(0)[:, None],
               N + 2, dtype, f"{spec.name}: dcenters")
        dw_mag = np.abs(_f64(args["dwidths"])) + (g * _rbf_sq_mag(x, c)).sum(0) / np.abs(w)
    _close(wg["dwidths"], ww["dwidths"], dw_mag, N + D + 4, dtype, f"{spec.name}: dwidths")


def _sce_forward(spec, args, wg, ww, rg, rw, dtype):
    # As in tests/test_native_parity.py: exp of (z - lse), lse a K-term reduction whose
    # rounding the logits' magnitude amplifies; the loss is the mean of N such terms.
    logits = _f64(args["logits"])
    K = logits.shape[1]
    u = np.finfo(dtype).eps
    finite = np.abs(logits[np.isfinite(logits)])
    zmag = float(finite.max()) + 1.0 if finite.size else 1.0
    ok = _pattern(wg["probs"], ww["probs"], f"{spec.name}: probs")
    assert np.allclose(wg["probs"][ok], ww["probs"][ok], rtol=0, atol=4 * (K + 2) * u * zmag), f"{spec.name}: probs"
    _pattern(rg, rw, f"{spec.name}: loss")
    assert isinstance(rg, float) and isinstance(rw, float), (type(rg), type(rw))
    if np.isfinite(rw) and np.isfinite(zmag):
        assert abs(rg - rw) <= 4 * (K + 2) * u * zmag * (1 + abs(rw)), f"{spec.name}: loss {rg} vs {rw}"


def _mse_forward(spec, args, wg, ww, rg, rw, dtype):
    # Both sum the squares of float64 differences in float64.
    y = _f64(args["y"])
    N = y.shape[0] if y.ndim else 1
    with np.errstate(all="ignore"):
        d = y - _f64(args["t"])
        mag = 0.5 * (d * d).sum() / N if N else 0.0
    assert isinstance(rg, float) and isinstance(rw, float), (type(rg), type(rw))
    _close(rg, rw, mag, y.size + 3, np.float64, f"{spec.name}: loss")


def _adam(spec, args, wg, ww, rg, rw, dtype):
    # m and v are the oracle's operations in its order: identical; the parameter step takes
    # about 8 roundings either side (tests/test_native_optim.py).
    for k in ("m", "v"):
        np.testing.assert_array_equal(wg[k], ww[k], err_msg=f"{spec.name}: {k}")
    p0 = _f64(args["param"])
    with np.errstate(all="ignore"):
        mag = np.abs(p0) + np.abs(p0 - _f64(ww["param"]))
    _close(wg["param"], ww["param"], mag, 8, dtype, f"{spec.name}: param")


def _sum(spec, args, wg, ww, rg, rw, dtype):
    # The terms are formed exactly or with one rounding in float64 (x*x, and for
    # sum_squares_diff the difference, exact for float32 and rounded once for float64).
    if spec.name == "sum_squares_diff":
        x = _f64(args["a"]) - _f64(args["b"])
    else:
        x = _f64(args["x"])
    with np.errstate(all="ignore"):
        mag = float(np.abs(x).sum() if spec.name == "sum_abs" else (x * x).sum())
    assert isinstance(rg, float) and isinstance(rw, float), (type(rg), type(rw))
    _close(rg, rw, mag, x.size + (2 if spec.name == "sum_squares_diff" else 1), np.float64, spec.name)


def _clamp(spec, args, wg, ww, rg, rw, dtype):
    # Comparisons and selects only: the same bits, and the same count of clamped entries.
    np.testing.assert_array_equal(wg["x"], ww["x"], err_msg=f"{spec.name}: x")
    assert type(rg) is int and type(rw) is int and rg == rw, f"{spec.name}: returned {rg!r}, oracle {rw!r}"


def _dot(spec, args, wg, ww, rg, rw, dtype):
    # Both accumulate in float64; float32 products are exact there, float64 ones round once.
    x, y = _f64(args["x"]), _f64(args["y"])
    with np.errstate(all="ignore"):
        mag = float(np.abs(x * y).sum())
    assert isinstance(rg, float) and isinstance(rw, float), (type(rg), type(rw))
    _close(rg, rw, mag, x.size + 1, np.float64, spec.name)


def _max_abs(spec, args, wg, ww, rg, rw, dtype):
    # A maximum is exact: the same number, NaN for NaN.
    assert isinstance(rg, float) and isinstance(rw, float), (type(rg), type(rw))
    assert rg == rw or (np.isnan(rg) and np.isnan(rw)), f"{spec.name}: {rg} vs {rw}"


def lbfgs_direction_magnitude(g, s, y, rho, gamma, first) -> np.ndarray:
    """The two-loop recursion run in float64 on the absolute values of its inputs with every
    subtraction made an addition: for each entry of d, the sum of the absolute values of
    the products of inputs that make it up. The recursion only adds and multiplies (rho and
    gamma are inputs), so a computation that rounds L times along any path from the inputs
    to d is within ((1+u)^L - 1) times this of the exact result (Higham, 3.1 and 3.3)."""
    g, s, y, rho = (np.abs(_f64(a)) for a in (g, s, y, rho))
    K = s.shape[0]
    rows = [(first + j) % K for j in range(K)]
    q, a = g.copy(), [0.0] * K
    for j in reversed(range(K)):
        i = rows[j]
        a[j] = rho[i] * (s[i] @ q)
        q = q + a[j] * y[i]
    q = abs(gamma) * q
    for j in range(K):
        i = rows[j]
        b = rho[i] * (y[i] @ q)
        q = q + (a[j] + b) * s[i]
    return q


def lbfgs_direction_rounding(K: int, n: int, dtype) -> float:
    """(1+u)^L_T (1+u_64)^L_64 - 1 for the roundings of lbfgs_direction along any path: in the
    arrays' dtype, 3 per pair in each loop (the scalar cast to it, the product, the sum) and
    2 for gamma (cast, product); in float64, per pair n in the first loop's dot product and
    1 for rho, n in the second's, 1 for rho and 1 for a_j - b."""
    u_t, u_64 = unit_roundoff(dtype), unit_roundoff(F64)
    l_t, l_64 = 6 * K + 2, K * (2 * n + 3)
    return math.expm1(l_t * math.log1p(u_t) + l_64 * math.log1p(u_64))


def _lbfgs_direction(spec, args, wg, ww, rg, rw, dtype):
    K, n = args["s"].shape
    with np.errstate(all="ignore"):
        mag = lbfgs_direction_magnitude(args["g"], args["s"], args["y"], args["rho"], args["gamma"], args["first"])
    ok = _pattern(wg["d"], ww["d"], f"{spec.name}: d") & np.isfinite(mag)
    bound = 2 * lbfgs_direction_rounding(K, n, dtype) * mag[ok] + tiny(dtype)
    err = np.abs(_f64(wg["d"])[ok] - _f64(ww["d"])[ok])
    assert (err <= bound).all(), f"{spec.name}: d beyond the rounding bound ({err.max():.3g} vs {bound.max():.3g})"


CUSTOM = {
    "bn_train": _bn_train,
    "bn_eval": _bn_eval,
    "bn_backward": _bn_backward,
    "prelu_backward": _prelu_backward,
    "sigmoid_backward": _sigmoid_backward,
    "tanh_backward": _tanh_backward,
    "softmax": _softmax,
    "softmax_backward": _softmax_backward,
    "maxout_forward": _maxout_forward,
    "rbf_forward": _rbf_forward,
    "rbf_backward": _rbf_backward,
    "sce_forward": _sce_forward,
    "mse_forward": _mse_forward,
    "adam": _adam,
    "sum": _sum,
    "clamp": _clamp,
    "dot": _dot,
    "max_abs": _max_abs,
    "lbfgs_direction": _lbfgs_direction,
}
