"""Layers with the textbook's forward/backward interface, running on the active backend's kernels.

Every layer caches in ``forward`` what its ``backward`` needs. ``backward(dout)`` returns a
fresh ``dx`` (never writing into ``dout``) and *adds* parameter gradients into
``Parameter.grad``, because the kernels accumulate (docs/kernels.md); zero them before each
step. Parameters are float32 unless a layer is built with ``dtype=np.float64``, and an
input of another dtype is refused rather than silently cast.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from . import backend
from . import init as _init
from .parameter import Parameter
from .reference._checks import refuse_unallocatable

__all__ = [
    "Layer",
    "Affine",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "Flatten",
    "BatchNorm",
    "Dropout",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "Sigmoid",
    "Tanh",
    "HardTanh",
    "Softplus",
    "Identity",
    "Softmax",
    "Maxout",
    "RBF",
    "Sequential",
    "observe",
    "layer_from_config",
    "Relu",
    "BatchNormalization",
    "Convolution",
    "Pooling",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from e
    if dt not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(value, name: str, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _real(value, name: str, owner: str, allow_inf: bool = False) -> float:
    """A real constructor argument as a float: a str, bool or None is a TypeError (float("0.5")
    would quietly accept text), NaN a ValueError, and so is an infinity unless ``allow_inf``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{owner}: {name} is out of range, got an int of {int(value).bit_length()} bits") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{owner}: {name} must be a finite number, got {v}")
    return v


def _empty(layer: Layer, shape, dtype, what: str = "output") -> np.ndarray:
    """np.empty for an array whose size follows from the layer's settings as well as its input
    (a convolution's padding, an affine's width), refused before it is allocated when its
    size does not fit 64 bits (OverflowError) or exceeds this machine's memory (MemoryError)."""
    return np.empty(refuse_unallocatable(shape, dtype, f"{layer._tag()}: the {what}"), dtype)


def _pair(value, name: str, owner: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{owner}: {name} must be an int or a pair (height, width), got {value!r}")
        return _positive_int(value[0], name, owner), _positive_int(value[1], name, owner)
    v = _positive_int(value, name, owner)
    return v, v


def _pair_config(pair: tuple[int, int]):
    # A square size is stored as one int, so that config() survives a JSON round trip unchanged.
    return pair[0] if pair[0] == pair[1] else [pair[0], pair[1]]


def _init_name(init) -> str:
    if isinstance(init, str):
        return init
    return getattr(init, "__name__", repr(init))


# Layer types by class name, for layer_from_config. Every Layer subclass registers itself,
# so a user-defined layer round-trips through config() as well; a subclass defined
# elsewhere never displaces one of the built-in names.
LAYERS: dict[str, type] = {}


class Layer:
    """Base class: forward/backward, parameters, buffers, train/eval, config."""

    training: bool = True
    needs_input_grad: bool = True
    dtype: np.dtype | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__name__
        if name.startswith("_"):
            return
        current = LAYERS.get(name)
        if current is not None and current.__module__ == __name__ and cls.__module__ != __name__:
            return
        LAYERS[name] = cls

    # -- computation -------------------------------------------------------------------
    def forward(self, x, train=None) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout) -> np.ndarray | None:
        raise NotImplementedError

    def __call__(self, x, train=None) -> np.ndarray:
        return self.forward(x, train)

    def _is_training(self, train) -> bool:
        return self.training if train is None else bool(train)

    # Layers that can apply a following ReLU inside their own kernel (Affine, Conv2d,
    # BatchNorm) set this and implement ``forward_relu``; Sequential then runs such a pair as
    # one call, which saves a full pass over the activations in each direction. Conv2d can
    # also take a MaxPool2d after the ReLU (``fuses_relu_maxpool``, ``forward_fused``).
    fuses_relu: bool = False
    fuses_relu_maxpool: bool = False

    def forward_relu(self, x, train=None) -> np.ndarray:
        """``max(forward(x), 0)`` in one kernel; the next ``backward`` then takes the gradient
        of that output and returns the gradient through both."""
        raise NotImplementedError(f"{self._tag()} cannot fuse a ReLU")

    def flops(self, input_shape) -> tuple[int, int]:
        """Floating-point operations of one forward and one backward on an input of shape
        ``input_shape`` (batch axis first), counting matrix products only: 2·M·N·K for an
        (M, K) @ (K, N) product. The backward counts the input gradient only when
        ``needs_input_grad`` is set, because the layer skips it otherwise. Layers without a
        matrix product report (0, 0): their time goes to memory traffic, not arithmetic."""
        return 0, 0

    # -- parameters and state ------------------------------------------------------------
    def _own_parameters(self) -> list[tuple[str, Parameter]]:
        return []

    def _own_buffers(self) -> dict[str, np.ndarray]:
        return {}

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        return [(prefix + name, p) for name, p in self._own_parameters()]

    def parameters(self) -> list[Parameter]:
        # A Parameter shared by several layers is listed once, so an optimizer steps it once.
        seen: set[int] = set()
        out = []
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def buffers(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Non-learnable state (the arrays themselves, not copies), named like parameters."""
        return {prefix + name: b for name, b in self._own_buffers().items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed by name."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: b.copy() for name, b in self.buffers().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copies ``state`` into the parameters and buffers; strict about keys, shapes and dtypes.

        Everything is checked before anything is written, so a refused state leaves the
        layer unchanged.
        """
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict: expected a dict of arrays, got {type(state).__name__}")
        params = dict(self.named_parameters())
        buffers = self.buffers()
        names = list(params) + list(buffers)
        missing = [k for k in names if k not in state]
        if missing:
            raise ValueError(f"load_state_dict: missing key(s): {', '.join(map(repr, missing))}")
        unexpected = [k for k in state if k not in params and k not in buffers]
        if unexpected:
            raise ValueError(f"load_state_dict: unexpected key(s): {', '.join(map(repr, unexpected))}")
        for name in names:
            dst = params[name].data if name in params else buffers[name]
            src = np.asarray(state[name])
            if src.shape != dst.shape:
                raise ValueError(f"load_state_dict: key {name!r} has shape {src.shape}; expected {dst.shape}")
            if src.dtype != dst.dtype:
                raise ValueError(f"load_state_dict: key {name!r} has dtype {src.dtype}; expected {dst.dtype}")
        for name in names:
            # Copy in place: an optimizer may hold views of these arrays.
            dst = params[name].data if name in params else buffers[name]
            dst[...] = state[name]

    # -- modes and structure -------------------------------------------------------------
    def modules(self) -> list[Layer]:
        return [self]

    def train(self, mode: bool = True) -> Layer:
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def set_rng(self, rng) -> None:
        """Random source for stochastic layers; deterministic layers ignore it."""

    def _config(self) -> dict:
        return {}

    def config(self) -> dict:
        """JSON-serialisable ``{"type": ..., **constructor kwargs}``; see ``layer_from_config``."""
        return {"type": type(self).__name__, **self._config()}

    def _tag(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    # -- argument checks shared by the layers --------------------------------------------
    def _input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._tag()}: input must be a numpy.ndarray, got {type(x).__name__}")
        want = self.dtype
        if want is not None and x.dtype != want:
            raise TypeError(
                f"{self._tag()}: input has dtype {x.dtype} but the layer's parameters are {want}; "
                f"cast explicitly (x.astype(np.{want})) or build the layer with dtype=np.{x.dtype}"
            )
        if want is None and not (x.dtype in _FLOATS and x.dtype.isnative):
            raise TypeError(f"{self._tag()}: input must have dtype float32 or float64, got {x.dtype}")
        return np.ascontiguousarray(x)

    def _dout(self, dout, like: np.ndarray) -> np.ndarray:
        """``dout`` checked against the forward output ``like``."""
        if not isinstance(dout, np.ndarray):
            raise TypeError(f"{self._tag()}: dout must be a numpy.ndarray, got {type(dout).__name__}")
        if dout.dtype != like.dtype:
            raise TypeError(f"{self._tag()}: dout has dtype {dout.dtype}; expected {like.dtype} like the output")
        if dout.shape != like.shape:
            raise ValueError(f"{self._tag()}: dout has shape {dout.shape}; expected the output's shape {like.shape}")
        return np.ascontiguousarray(dout)

    def _cached(self, cache):
        if cache is None:
            raise RuntimeError(f"{self._tag()}: backward called before forward")
        return cache


# ----------------------------------------------------------------------------------------
# Affine and convolution
# ----------------------------------------------------------------------------------------


def _flatten_features(layer: Layer, x: np.ndarray, features: int) -> np.ndarray:
    """(N, ...) -> (N, D), like the textbook's Affine, with a clear error when D is wrong."""
    if x.ndim < 2:
        raise ValueError(f"{layer._tag()}: input must be (N, features) or (N, ...); got shape {x.shape}")
    d = math.prod(x.shape[1:])  # not np.prod: this runs every step, and math.prod is 20x cheaper
    if d != features:
        raise ValueError(f"{layer._tag()}: input has {d} features per sample (shape {x.shape}); expected {features}")
    return x.reshape(x.shape[0], d)


class _FusesReLU(Layer):
    """A layer whose kernel can apply the ReLU that follows it: ``_forward(x, train, relu)``
    serves both ``forward`` and ``forward_relu``, and backward follows what forward did."""

    fuses_relu = True

    def _forward(self, x, train, relu: bool):
        raise NotImplementedError

    def forward(self, x, train=None):
        return self._forward(x, train, relu=False)

    def forward_relu(self, x, train=None):
        return self._forward(x, train, relu=True)

    def forward_fused(self, x, train, absorbed):
        """This layer followed by the layers in ``absorbed`` (the ReLU after it), in one kernel."""
        return self.forward_relu(x, train)


class _WeightBias(_FusesReLU):
    """A weight ``W`` (decayed by default) and an optional bias ``b`` of one entry per output."""

    def _weights(self, W: np.ndarray, outputs: int) -> None:
        self.W = Parameter(np.asarray(W, dtype=self.dtype), "W", regularize=True)
        self.b = Parameter(np.zeros(outputs, self.dtype), "b", regularize=False) if self.bias else None

    def _own_parameters(self):
        return [("W", self.W)] + ([("b", self.b)] if self.b is not None else [])

    def _bias(self):
        # Without a bias the kernel still adds one: zeros, whose gradient is thrown away.
        if self.b is not None:
            return self.b.data, self.b.grad
        n = self.W.shape[1] if self.W.data.ndim == 2 else self.W.shape[0]
        return np.zeros(n, self.dtype), np.zeros(n, self.dtype)


class Affine(_WeightBias):
    """out = x @ W + b; an input of more than two dimensions is flattened per sample."""

    def __init__(self, in_features, out_features, init="he_normal", bias=True, dtype=np.float32, rng=None):
        self.in_features = _positive_int(in_features, "in_features", "Affine")
        self.out_features = _positive_int(out_features, "out_features", "Affine")
        self.dtype = _float_dtype(dtype)
        self.init = init
        self.bias = bool(bias)
        gen = _init.as_generator(rng)
        D, M = self.in_features, self.out_features
        W = _init.get(init)((D, M), gen, dtype=self.dtype, fan_in=D, fan_out=M)
        self._weights(W, M)
        self._cache = None


    def _forward(self, x, train, relu: bool):
        x = self._input(x)
        x2 = _flatten_features(self, x, self.in_features)
        out = _empty(self, (x2.shape[0], self.out_features), self.dtype)
        k = backend.kernels()
        (k.affine_relu_forward if relu else k.affine_forward)(out, x2, self.W.data, self._bias()[0])
        self._cache = (x.shape, x2, out, relu)
        return out

    def backward(self, dout):
        shape, x2, out, relu = self._cached(self._cache)
        dout = self._dout(dout, out)
        dx = np.empty(x2.shape, self.dtype) if self.needs_input_grad else None
        k = backend.kernels()
        if relu:
            k.affine_relu_backward(dx, self.W.grad, self._bias()[1], dout, x2, self.W.data, out)
        else:
            k.affine_backward(dx, self.W.grad, self._bias()[1], dout, x2, self.W.data)
        return None if dx is None else dx.reshape(shape)

    def flops(self, input_shape):
        # forward out = x @ W; backward dW = x.T @ dout and dx = dout @ W.T, each N·D·M.
        gemm = 2 * int(input_shape[0]) * self.in_features * self.out_features
        return gemm, gemm * (2 if self.needs_input_grad else 1)

    def _tag(self):
        return f"Affine({self.in_features}->{self.out_features})"

    def _config(self):
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "init": _init_name(self.init),
            "bias": self.bias,
            "dtype": self.dtype.name,
        }


def _check_images(layer: Layer, x: np.ndarray) -> None:
    if x.ndim != 4:
        raise ValueError(f"{layer._tag()}: input must be 4-D (N, C, H, W); got shape {x.shape}")


def _out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


class Conv2d(_WeightBias):
    """2-D convolution (cross-correlation, as in the textbook) over NCHW input."""

    fuses_relu_maxpool = True

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        init="he_normal",
        bias=True,
        dtype=np.float32,
        rng=None,
    ):
        self.in_channels = _positive_int(in_channels, "in_channels", "Conv2d")
        self.out_channels = _positive_int(out_channels, "out_channels", "Conv2d")
        self.kernel_size = _pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = _positive_int(stride, "stride", "Conv2d")
        self.padding = _positive_int(padding, "padding", "Conv2d", minimum=0)
        self.dtype = _float_dtype(dtype)
        self.init = init
        self.bias = bool(bias)
        FN, C, (FH, FW) = self.out_channels, self.in_channels, self.kernel_size
        gen = _init.as_generator(rng)
        W = _init.get(init)((FN, C, FH, FW), gen, dtype=self.dtype, fan_in=C * FH * FW, fan_out=FN * FH * FW)
        self._weights(W, FN)
        self._cache = None


    def output_shape(self, input_shape) -> tuple[int, int, int]:
        """(FN, OH, OW) for an input of shape (C, H, W)."""
        _, H, W = input_shape
        (FH, FW), s, p = self.kernel_size, self.stride, self.padding
        return self.out_channels, _out_size(H, FH, s, p), _out_size(W, FW, s, p)

    def _checked(self, x):
        x = self._input(x)
        _check_images(self, x)
        N, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"{self._tag()}: input has {C} channels (shape {x.shape}); expected {self.in_channels}")
        (FH, FW), p = self.kernel_size, self.padding
        if H + 2 * p < FH or W + 2 * p < FW:
            raise ValueError(
                f"{self._tag()}: input {H}x{W} with padding {p} is smaller than the {FH}x{FW} filter"
            )
        return x, (N, *self.output_shape((C, H, W)))

    def _forward(self, x, train, relu: bool):
        x, shape = self._checked(x)
        out = _empty(self, shape, self.dtype)
        k = backend.kernels()
        (k.conv2d_relu_forward if relu else k.conv2d_forward)(
            out, x, self.W.data, self._bias()[0], self.stride, self.padding
        )
        self._cache = (x, out, relu, None)
        return out

    def forward_fused(self, x, train, absorbed):
        """With ``absorbed`` = (ReLU, MaxPool2d) the whole conv-relu-pool block runs as one kernel
        (``conv2d_relu_maxpool2d_forward``): the convolution's output is never stored, only the
        pooled one, which is the block's output."""
        if len(absorbed) == 1:
            return self.forward_relu(x, train)
        pool = absorbed[1]
        x, shape = self._checked(x)
        pooled, (PH, PW) = pool._output(shape), pool.kernel_size
        out, argmax = _empty(self, pooled, self.dtype, "pooled output"), _empty(self, pooled, np.int32, "argmax")
        backend.kernels().conv2d_relu_maxpool2d_forward(
            out, argmax, x, self.W.data, self._bias()[0], self.stride, self.padding, PH, PW, pool.stride, pool.padding
        )
        self._cache = (x, out, True, argmax)
        return out

    def backward(self, dout):
        x, out, relu, argmax = self._cached(self._cache)
        dout = self._dout(dout, out)
        dx = np.empty_like(x) if self.needs_input_grad else None
        k = backend.kernels()
        if argmax is not None:
            k.conv2d_relu_maxpool2d_backward(
                dx, self.W.grad, self._bias()[1], dout, x, self.W.data, out, argmax, self.stride, self.padding
            )
        elif relu:
            k.conv2d_relu_backward(
                dx, self.W.grad, self._bias()[1], dout, x, self.W.data, out, self.stride, self.padding
            )
        else:
            k.conv2d_backward(dx, self.W.grad, self._bias()[1], dout, x, self.W.data, self.stride, self.padding)
        return dx

    def flops(self, input_shape):
        # Per image, out (FN, OH·OW) = W (FN, K) @ col (K, OH·OW) with K = C·FH·FW; the
        # backward's dW = dout @ col.T and dcol = W.T @ dout are products of the same size
        # (the native kernel computes dx as a convolution where it can, a product of
        # C·H·W·FN·FH·FW multiply-adds: the same when the output is the input's size).
        N, C, H, W = (int(d) for d in input_shape)
        FN, OH, OW = self.output_shape((C, H, W))
        FH, FW = self.kernel_size
        gemm = 2 * N * OH * OW * FN * self.in_channels * FH * FW
        return gemm, gemm * (2 if self.needs_input_grad else 1)

    def _tag(self):
        return f"Conv2d({self.in_channels}->{self.out_channels})"

    def _config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": _pair_config(self.kernel_size),
            "stride": self.stride,
            "padding": self.padding,
            "init": _init_name(self.init),
            "bias": self.bias,
            "dtype": self.dtype.name,
        }


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        PH, PW = self.kernel_size
        if stride is None:
            if PH != PW:
                raise ValueError(f"{name}: a non-square window {PH}x{PW} needs an explicit stride")
            stride = PH
        self.stride = _positive_int(stride, "stride", name)
        self.padding = _positive_int(padding, "padding", name, minimum=0)
        if self.padding > PH // 2 or self.padding > PW // 2:
            raise ValueError(
                f"{name}: padding {self.padding} exceeds half the {PH}x{PW} window; a window could hold only padding"
            )
        self._cache = None

    def output_shape(self, input_shape) -> tuple[int, int, int]:
        C, H, W = input_shape
        (PH, PW), s, p = self.kernel_size, self.stride, self.padding
        return C, _out_size(H, PH, s, p), _out_size(W, PW, s, p)

    def _output(self, shape) -> tuple[int, int, int, int]:
        """(N, C, OH, OW) for an (N, C, H, W) input, which must hold the window."""
        (PH, PW), p = self.kernel_size, self.padding
        H, W = shape[2:]
        if H + 2 * p < PH or W + 2 * p < PW:
            raise ValueError(f"{self._tag()}: input {H}x{W} with padding {p} is smaller than the {PH}x{PW} window")
        return (shape[0], *self.output_shape(shape[1:]))

    def _checked(self, x):
        x = self._input(x)
        _check_images(self, x)
        _, C, OH, OW = self._output(x.shape)
        return x, (x.shape[0], C, OH, OW)

    def _tag(self):
        PH, PW = self.kernel_size
        return f"{type(self).__name__}({PH}x{PW}, stride={self.stride}, padding={self.padding})"

    def _config(self):
        return {"kernel_size": _pair_config(self.kernel_size), "stride": self.stride, "padding": self.padding}


class MaxPool2d(_Pool2d):
    """Max pooling; backward routes each gradient to the element that won its window."""

    def forward(self, x, train=None):
        x, shape = self._checked(x)
        out = np.empty(shape, x.dtype)
        argmax = np.empty(shape, np.int32)
        (PH, PW) = self.kernel_size
        backend.kernels().maxpool2d_forward(out, argmax, x, PH, PW, self.stride, self.padding)
        self._cache = (x.shape, out, argmax)
        return out

    def backward(self, dout):
        shape, out, argmax = self._cached(self._cache)
        dout = self._dout(dout, out)
        if not self.needs_input_grad:
            return None
        dx = np.empty(shape, out.dtype)
        backend.kernels().maxpool2d_backward(dx, dout, argmax)
        return dx


class AvgPool2d(_Pool2d):
    """Average pooling over the in-bounds elements of each window."""

    def forward(self, x, train=None):
        x, shape = self._checked(x)
        out = np.empty(shape, x.dtype)
        PH, PW = self.kernel_size
        backend.kernels().avgpool2d_forward(out, x, PH, PW, self.stride, self.padding)
        self._cache = (x.shape, out)
        return out

    def backward(self, dout):
        shape, out = self._cached(self._cache)
        dout = self._dout(dout, out)
        if not self.needs_input_grad:
            return None
        dx = np.empty(shape, out.dtype)
        PH, PW = self.kernel_size
        backend.kernels().avgpool2d_backward(dx, dout, PH, PW, self.stride, self.padding)
        return dx


class Flatten(Layer):
    """(N, ...) -> (N, D). The forward output is a view of a contiguous input (no copy)."""

    def __init__(self):
        self._cache = None

    def forward(self, x, train=None):
        x = self._input(x)
        if x.ndim < 1:
            raise ValueError(f"Flatten: input must have a batch axis; got shape {x.shape}")
        out = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        self._cache = (x.shape, out)
        return out

    def backward(self, dout):
        shape, out = self._cached(self._cache)
        dout = self._dout(dout, out)
        if not self.needs_input_grad:
            return None
        dx = np.empty(shape, out.dtype)
        backend.kernels().identity_backward(dx.reshape(dout.shape), dout)
        return dx


# ----------------------------------------------------------------------------------------
# Normalisation and regularisation
# ----------------------------------------------------------------------------------------


class BatchNorm(_FusesReLU):
    """Batch normalisation per feature of (N, D) or per channel of (N, C, H, W) input.

    Training normalises with the batch statistics and moves the running statistics
    (``running = momentum*running + (1-momentum)*batch``); evaluation uses the running ones.
    """

    def __init__(self, num_features, momentum=0.9, eps=1e-5, dtype=np.float32):
        self.num_features = _positive_int(num_features, "num_features", "BatchNorm")
        momentum, eps = _real(momentum, "momentum", "BatchNorm"), _real(eps, "eps", "BatchNorm")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1], got {momentum}")
        if not eps > 0.0:
            raise ValueError(f"BatchNorm: eps must be > 0, got {eps}")
        self.momentum, self.eps = momentum, eps
        self.dtype = _float_dtype(dtype)
        F = self.num_features
        self.gamma = Parameter(np.ones(F, self.dtype), "gamma", regularize=False)
        self.beta = Parameter(np.zeros(F, self.dtype), "beta", regularize=False)
        self.running_mean = np.zeros(F, self.dtype)
        self.running_var = np.ones(F, self.dtype)
        self._cache = None

    def _own_parameters(self):
        return [("gamma", self.gamma), ("beta", self.beta)]

    def _own_buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def _forward(self, x, train, relu: bool):
        x = self._input(x)
        if x.ndim not in (2, 4):
            raise ValueError(f"{self._tag()}: input must be (N, D) or (N, C, H, W); got shape {x.shape}")
        if x.shape[1] != self.num_features:
            what = "features" if x.ndim == 2 else "channels"
            raise ValueError(f"{self._tag()}: input has {x.shape[1]} {what} (shape {x.shape}); expected {self.num_features}")
        out = np.empty_like(x)
        k = backend.kernels()
        if self._is_training(train):
            mean = np.empty(self.num_features, self.dtype)
            invstd = np.empty(self.num_features, self.dtype)
            kernel = k.batchnorm_relu_forward_train if relu else k.batchnorm_forward_train
            kernel(
                out, mean, invstd, self.running_mean, self.running_var,
                x, self.gamma.data, self.beta.data, self.momentum, self.eps,
            )
            self._cache = ("train", x, out, mean, invstd, relu)
        else:
            kernel = k.batchnorm_relu_forward_eval if relu else k.batchnorm_forward_eval
            kernel(out, x, self.gamma.data, self.beta.data, self.running_mean, self.running_var, self.eps)
            self._cache = ("eval", x, out, self.running_mean.copy(), self.running_var.copy(), relu)
        return out

    def backward(self, dout):
        mode, x, out, a, b, relu = self._cached(self._cache)
        dout = self._dout(dout, out)
        k = backend.kernels()
        dx = np.empty_like(x)
        if mode == "train" and relu:
            k.batchnorm_relu_backward(dx, self.gamma.grad, self.beta.grad, dout, x, self.gamma.data, a, b, out)
        elif mode == "train":
            k.batchnorm_backward(dx, self.gamma.grad, self.beta.grad, dout, x, self.gamma.data, a, b)
        else:
            if relu:
                g = np.empty_like(dout)
                k.relu_backward(g, dout, out)
                dout = g
            # In evaluation BatchNorm is the fixed per-channel map y = gamma*xhat + beta with
            # xhat = (x - running_mean)/sqrt(running_var + eps). The eval kernel applied to
            # dout with a zero mean and beta yields exactly gamma*dout/sqrt(running_var + eps).
            zeros = np.zeros(self.num_features, self.dtype)
            k.batchnorm_forward_eval(dx, dout, self.gamma.data, zeros, zeros, b, self.eps)
            xhat = np.empty_like(x)
            k.batchnorm_forward_eval(xhat, x, np.ones(self.num_features, self.dtype), zeros, a, b, self.eps)
            axes = (0,) if x.ndim == 2 else (0, 2, 3)
            self.gamma.grad += (dout * xhat).sum(axis=axes)
            self.beta.grad += dout.sum(axis=axes)
        return dx if self.needs_input_grad else None

    def _tag(self):
        return f"BatchNorm({self.num_features})"

    def _config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps, "dtype": self.dtype.name}


class Dropout(Layer):
    """Drops each element with probability ``p`` in training.

    ``mode="inverted"`` scales the kept elements by 1/(1-p) in training and is the identity
    in evaluation; ``mode="scale_at_inference"`` (the textbook's) keeps them unscaled and
    multiplies by (1-p) in evaluation. Either way the expected output equals the
    evaluation output. With ``seed`` set every training forward draws the same mask
    (for gradient checks); otherwise each draws a fresh seed from ``rng``.
    """

    MODES = ("inverted", "scale_at_inference")

    def __init__(self, p=0.5, mode="inverted", seed=None):
        p = _real(p, "p", "Dropout")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        if mode not in self.MODES:
            raise ValueError(f"Dropout: mode must be one of {', '.join(map(repr, self.MODES))}; got {mode!r}")
        if seed is not None:
            # int(seed) would quietly truncate 1.5 or parse "7"; a bad seed is refused here,
            # not at the first training forward.
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError(f"Dropout: seed must be an int or None, got {type(seed).__name__}")
            if not 0 <= seed < 2**32:
                raise ValueError(f"Dropout: seed must be in [0, 2**32), got {seed}")
        self.p, self.mode, self.seed = p, mode, seed
        self.rng = np.random.default_rng()
        self._cache = None

    def set_rng(self, rng) -> None:
        self.rng = _init.as_generator(rng)

    def _seed(self) -> int:
        if self.seed is None:
            return int(self.rng.integers(2**32))
        seed = int(self.seed)
        if not 0 <= seed < 2**32:
            raise ValueError(f"Dropout: seed must be in [0, 2**32), got {seed}")
        return seed

    def forward(self, x, train=None):
        x = self._input(x)
        out = np.empty_like(x)
        k = backend.kernels()
        if self._is_training(train):
            scale = 1.0 / (1.0 - self.p) if self.mode == "inverted" else 1.0
            mask = np.empty(x.shape, np.uint8)
            k.dropout_forward(out, mask, x, self.p, self._seed(), scale)
            self._cache = (out, mask, scale)
        else:
            scale = 1.0 if self.mode == "inverted" else 1.0 - self.p
            if scale == 1.0:
                k.identity_forward(out, x)
            else:
                k.scale_forward(out, x, scale)
            self._cache = (out, None, scale)
        return out

    def backward(self, dout):
        out, mask, scale = self._cached(self._cache)
        dout = self._dout(dout, out)
        if not self.needs_input_grad:
            return None
        dx = np.empty_like(dout)
        k = backend.kernels()
        if mask is not None:
            k.dropout_backward(dx, dout, mask, scale)
        elif scale == 1.0:
            k.identity_backward(dx, dout)
        else:
            k.scale_forward(dx, dout, scale)
        return dx

    def _config(self):
        cfg = {"p": self.p, "mode": self.mode}
        if self.seed is not None:
            cfg["seed"] = int(self.seed)
        return cfg


# ----------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------


class _Activation(Layer):
    """An element-wise kernel pair ``<kernel>_forward`` / ``<kernel>_backward``."""

    kernel = ""
    # What the backward kernel reads besides dout: the input "x", the output "out", or nothing.
    backward_reads = "x"

    def __init__(self):
        self._cache = None

    def _hyper(self) -> tuple:
        return ()

    def forward(self, x, train=None):
        x = self._input(x)
        out = np.empty_like(x)
        getattr(backend.kernels(), self.kernel + "_forward")(out, x, *self._hyper())
        self._cache = (x, out)
        return out

    def backward(self, dout):
        x, out = self._cached(self._cache)
        dout = self._dout(dout, out)
        if not self.needs_input_grad:
            return None
        dx = np.empty_like(dout)
        kern = getattr(backend.kernels(), self.kernel + "_backward")
        if self.backward_reads == "x":
            kern(dx, dout, x, *self._hyper())
        elif self.backward_reads == "out":
            kern(dx, dout, out, *self._hyper())
        else:
            kern(dx, dout)
        return dx


class ReLU(_Activation):
    kernel = "relu"


class LeakyReLU(_Activation):
    kernel = "leaky_relu"

    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = _real(alpha, "alpha", "LeakyReLU")

    def _hyper(self):
        return (self.alpha,)

    def _config(self):
        return {"alpha": self.alpha}


class Sigmoid(_Activation):
    kernel = "sigmoid"
    backward_reads = "out"


class Tanh(_Activation):
    kernel = "tanh"
    backward_reads = "out"


class HardTanh(_Activation):
    kernel = "hardtanh"

    def __init__(self, min_val=-1.0, max_val=1.0):
        super().__init__()
        # Infinite bounds clip nothing on that side (the kernels' contract); NaN is refused.
        self.min_val = _real(min_val, "min_val", "HardTanh", allow_inf=True)
        self.max_val = _real(max_val, "max_val", "HardTanh", allow_inf=True)
        if not self.min_val < self.max_val:
            raise ValueError(f"HardTanh: min_val must be < max_val, got {self.min_val} and {self.max_val}")

    def _hyper(self):
        return (self.min_val, self.max_val)

    def _config(self):
        return {"min_val": self.min_val, "max_val": self.max_val}


class Softplus(_Activation):
    kernel = "softplus"


class Identity(_Activation):
    kernel = "identity"
    backward_reads = "nothing"


class Softmax(_Activation):
    """Softmax over the last axis of (N, K); for training prefer losses.SoftmaxCrossEntropy."""

    kernel = "softmax"
    backward_reads = "out"


class PReLU(Layer):
    """Leaky ReLU with a learned slope: one shared (num_parameters=1) or one per channel (axis 1)."""

    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        self.num_parameters = _positive_int(num_parameters, "num_parameters", "PReLU")
        self.init = _real(init, "init", "PReLU")
        self.dtype = _float_dtype(dtype)
        self.alpha = Parameter(np.full(self.num_parameters, self.init, self.dtype), "alpha", regularize=False)
        self._cache = None

    def _own_parameters(self):
        return [("alpha", self.alpha)]

    def forward(self, x, train=None):
        x = self._input(x)
        if self.num_parameters > 1 and (x.ndim < 2 or x.shape[1] != self.num_parameters):
            raise ValueError(
                f"{self._tag()}: input must have {self.num_parameters} channels on axis 1; got shape {x.shape}"
            )
        out = np.empty_like(x)
        backend.kernels().prelu_forward(out, x, self.alpha.data)
        self._cache = (x, out)
        return out

    def backward(self, dout):
        x, out = self._cached(self._cache)
        dout = self._dout(dout, out)
        dx = np.empty_like(x)
        backend.kernels().prelu_backward(dx, self.alpha.grad, dout, x, self.alpha.data)
        return dx if self.needs_input_grad else None

    def _tag(self):
        return f"PReLU({self.num_parameters})"

    def _config(self):
        return {"num_parameters": self.num_parameters, "init": self.init, "dtype": self.dtype.name}


class Maxout(Layer):
    """out = max over ``pieces`` affine maps; W (pieces, in, out), b (pieces, out)."""

    def __init__(self, in_features, out_features, pieces=2, init="he_normal", dtype=np.float32, rng=None):
        self.in_features = _positive_int(in_features, "in_features", "Maxout")
        self.out_features = _positive_int(out_features, "out_features", "Maxout")
        self.pieces = _positive_int(pieces, "pieces", "Maxout")
        self.init = init
        self.dtype = _float_dtype(dtype)
        gen = _init.as_generator(rng)
        K, D, M = self.pieces, self.in_features, self.out_features
        # Each piece is an ordinary (D, M) affine map, so each is initialised as one.
        f = _init.get(init)
        W = np.stack([np.asarray(f((D, M), gen, dtype=self.dtype, fan_in=D, fan_out=M), self.dtype) for _ in range(K)])
        self.W = Parameter(np.ascontiguousarray(W), "W", regularize=True)
        self.b = Parameter(np.zeros((K, M), self.dtype), "b", regularize=False)
        self._cache = None

    def _own_parameters(self):
        return [("W", self.W), ("b", self.b)]

    def forward(self, x, train=None):
        x = self._input(x)
        x2 = _flatten_features(self, x, self.in_features)
        N = x2.shape[0]
        out = _empty(self, (N, self.out_features), self.dtype)
        argmax = np.empty((N, self.out_features), np.int32)
        backend.kernels().maxout_forward(out, argmax, x2, self.W.data, self.b.data)
        self._cache = (x.shape, x2, out, argmax)
        return out

    def backward(self, dout):
        shape, x2, out, argmax = self._cached(self._cache)
        dout = self._dout(dout, out)
        dx = np.empty(x2.shape, self.dtype) if self.needs_input_grad else None
        backend.kernels().maxout_backward(dx, self.W.grad, self.b.grad, dout, x2, self.W.data, argmax)
        return None if dx is None else dx.reshape(shape)

    def flops(self, input_shape):
        # Every piece is a full x @ W[k], forward and backward (the gradient of the pieces
        # that lost is masked to zero, not skipped).
        gemm = 2 * int(input_shape[0]) * self.in_features * self.out_features * self.pieces
        return gemm, gemm * (2 if self.needs_input_grad else 1)

    def _tag(self):
        return f"Maxout({self.in_features}->{self.out_features}, pieces={self.pieces})"

    def _config(self):
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "pieces": self.pieces,
            "init": _init_name(self.init),
            "dtype": self.dtype.name,
        }


class RBF(Layer):
    """Gaussian radial basis units: out[n, m] = exp(-||x_n - c_m||² / (2 widths_m²)).

    Centres start standard normal (the scale of standardised inputs), widths at one.
    """

    def __init__(self, in_features, out_features, dtype=np.float32, rng=None):
        self.in_features = _positive_int(in_features, "in_features", "RBF")
        self.out_features = _positive_int(out_features, "out_features", "RBF")
        self.dtype = _float_dtype(dtype)
        gen = _init.as_generator(rng)
        D, M = self.in_features, self.out_features
        centers = _init.get("normal")((M, D), gen, dtype=self.dtype, fan_in=D, fan_out=M, std=1.0)
        self.centers = Parameter(np.asarray(centers, self.dtype), "centers", regularize=False)
        self.widths = Parameter(np.ones(M, self.dtype), "widths", regularize=False)
        self._cache = None

    def _own_parameters(self):
        return [("centers", self.centers), ("widths", self.widths)]

    def forward(self, x, train=None):
        x = self._input(x)
        x2 = _flatten_features(self, x, self.in_features)
        out = _empty(self, (x2.shape[0], self.out_features), self.dtype)
        backend.kernels().rbf_forward(out, x2, self.centers.data, self.widths.data)
        self._cache = (x.shape, x2, out)
        return out

    def backward(self, dout):
        shape, x2, out = self._cached(self._cache)
        dout = self._dout(dout, out)
        dx = np.empty(x2.shape, self.dtype) if self.needs_input_grad else None
        backend.kernels().rbf_backward(
            dx, self.centers.grad, self.widths.grad, dout, x2, self.centers.data, self.widths.data, out
        )
        return None if dx is None else dx.reshape(shape)

    def _tag(self):
        return f"RBF({self.in_features}->{self.out_features})"

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "dtype": self.dtype.name}


# ----------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------


class _PlanRunner:
    """Runs the units of a Sequential's plan in order.

    Sequential reaches it through the class attribute ``_runner``; fastlayers.profile puts
    a timing runner on one model's instance for the duration of a profiled step, so the
    untimed path never pays for a clock read.
    """

    @staticmethod
    def forward(units, x, train):
        for _, layer, absorbed in units:
            x = layer.forward_fused(x, train, absorbed) if absorbed else layer.forward(x, train)
        return x

    @staticmethod
    def backward(units, dout):
        for _, layer, _ in reversed(units):
            dout = layer.backward(dout)
            if dout is None:
                break
        return dout


class Sequential(Layer):
    """Layers applied in order; parameters are named "<index>.<name>" ("2.1.W" when nested).

    With ``fuse=True`` (the default) an Affine, Conv2d or BatchNorm directly followed by a
    ReLU runs as one fused kernel (``affine_relu_forward`` and friends), and a Conv2d, ReLU,
    MaxPool2d block as one kernel (``conv2d_relu_maxpool2d_forward``) that never stores the
    convolution's output: the same numbers, bit for bit, with fewer passes over the
    activations in each direction. The absorbed layer objects are then skipped.
    ``fuse=False`` runs every layer on its own.
    """

    _runner = _PlanRunner()

    def __init__(self, *layers: Layer, fuse: bool = True):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} must be a Layer, got {type(layer).__name__}")
        self.layers: list[Layer] = list(layers)
        self.fuse = bool(fuse)
        self._needs_input_grad = True
        self._plan: list[tuple[int, Layer, tuple[Layer, ...]]] = []

    @property
    def needs_input_grad(self) -> bool:
        # Only the first layer's input gradient leaves the container.
        return self.layers[0].needs_input_grad if self.layers else self._needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        self._needs_input_grad = bool(value)
        if self.layers:
            self.layers[0].needs_input_grad = bool(value)

    def _units(self) -> list[tuple[int, Layer, tuple[Layer, ...]]]:
        """The execution plan: (index in ``layers``, layer, the layers after it that its kernel
        runs too: () alone, (ReLU,), or for a Conv2d (ReLU, MaxPool2d))."""
        layers, units = self.layers, []
        i, n = 0, len(layers)
        while i < n:
            layer, absorbed = layers[i], ()
            if self.fuse and layer.fuses_relu and i + 1 < n and type(layers[i + 1]) is ReLU:
                absorbed = (layers[i + 1],)
                if layer.fuses_relu_maxpool and i + 2 < n and type(layers[i + 2]) is MaxPool2d:
                    absorbed += (layers[i + 2],)
            units.append((i, layer, absorbed))
            i += 1 + len(absorbed)
        return units

    # Set on an instance by ``observe`` for as long as its block runs.
    _observer = None

    def forward(self, x, train=None):
        # The plan is kept so that backward visits exactly the units that ran: a ReLU fused
        # into the layer before it has no backward of its own.
        units = self._units()
        if self._observer is None:
            x = self._runner.forward(units, x, train)
        else:
            # One unit at a time through the same runner (a profiling runner keeps timing).
            for unit in units:
                x = self._runner.forward([unit], x, train)
                self._observer(unit, x)
        self._plan = units
        return x

    def backward(self, dout):
        if self.layers and not self._plan:
            raise RuntimeError(f"{self._tag()}: backward called before forward")
        return self._runner.backward(self._plan, dout)

    def flops(self, input_shape):
        raise NotImplementedError(
            "Sequential.flops: each layer counts its own FLOPs for its own input shape; "
            "fastlayers.profile records them per layer as the model runs"
        )

    def named_parameters(self, prefix=""):
        out = []
        for i, layer in enumerate(self.layers):
            out.extend(layer.named_parameters(f"{prefix}{i}."))
        return out

    def buffers(self, prefix=""):
        out = {}
        for i, layer in enumerate(self.layers):
            out.update(layer.buffers(f"{prefix}{i}."))
        return out

    def modules(self):
        out: list[Layer] = [self]
        for layer in self.layers:
            out.extend(layer.modules())
        return out

    def set_rng(self, rng) -> None:
        """Gives every child its own independent generator spawned from ``rng``."""
        gen = _init.as_generator(rng)
        n = len(self.layers)
        if hasattr(gen, "spawn"):
            children = gen.spawn(n)
        else:  # NumPy < 1.25 has no Generator.spawn; seeds drawn from gen are independent enough
            children = [np.random.default_rng(int(s)) for s in gen.integers(2**63, size=n)]
        for layer, child in zip(self.layers, children):
            layer.set_rng(child)

    def config(self):
        cfg = {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}
        if not self.fuse:
            cfg["fuse"] = False
        return cfg

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index], fuse=self.fuse)
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self) -> str:
        if not self.layers:
            return "Sequential()"
        lines = ["Sequential("]
        for i, layer in enumerate(self.layers):
            body = repr(layer).replace("\n", "\n  ")
            lines.append(f"  ({i}): {body}")
        lines.append(")")
        return "\n".join(lines)


def _sequentials(layer: Layer, prefix: str = ""):
    if isinstance(layer, Sequential):
        yield prefix, layer
        for i, child in enumerate(layer.layers):
            yield from _sequentials(child, f"{prefix}{i}.")


@contextlib.contextmanager
def observe(model: Layer, fn):
    """Calls ``fn(name, layers, output)`` after each unit of the execution plan of every
    ``Sequential`` in ``model`` (nested ones included) runs forward, while the block runs.

    ``name`` is the path of the unit's first layer ("3", "2.1", like parameter names without
    the parameter), ``layers`` the tuple of layers the unit ran (``(Conv2d, ReLU,
    MaxPool2d)`` for a fused block, so a fused ReLU's output is the unit's output, or its
    pooled output) and ``output`` the unit's output array itself, not a copy: read it, do
    not write it. A nested Sequential is reported as a unit of its parent after its own
    units. A model that is not a Sequential has no plan and is not observed. Observing
    changes no numbers; one model can be observed by one block at a time.
    """
    found = list(_sequentials(model))
    if any("_observer" in vars(seq) for _, seq in found):
        raise RuntimeError("observe: the model is already being observed")

    def observer(prefix):
        def call(unit, output):
            index, layer, absorbed = unit
            fn(f"{prefix}{index}", (layer, *absorbed), output)

        return call

    try:
        for prefix, seq in found:
            seq._observer = observer(prefix)
        yield model
    finally:
        for _, seq in found:
            vars(seq).pop("_observer", None)


# Textbook names.
Relu = ReLU
BatchNormalization = BatchNorm
Convolution = Conv2d
Pooling = MaxPool2d

LAYERS.update({"Relu": ReLU, "BatchNormalization": BatchNorm, "Convolution": Conv2d, "Pooling": MaxPool2d})


def layer_from_config(cfg: dict) -> Layer:
    """Builds a layer (with fresh weights) from ``Layer.config()``; Sequential nests."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"layer_from_config: expected a dict with a 'type' key, got {cfg!r}")
    kwargs = dict(cfg)
    name = kwargs.pop("type")
    if name not in LAYERS:
        raise ValueError(f"layer_from_config: unknown layer type {name!r}; known: {', '.join(sorted(LAYERS))}")
    cls = LAYERS[name]
    if issubclass(cls, Sequential):
        return cls(*[layer_from_config(c) for c in kwargs.get("layers", [])], fuse=kwargs.get("fuse", True))
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"layer_from_config: bad arguments for {name}: {e}") from e
