"""The shape sets of the kernel benchmark: every kernel call one training step makes.

For each network of ``bench/train_step.py`` (float32, Adam, ``Sequential(fuse=True)``)
``NETWORKS`` lists one *shape set* per layer at batch 100, named ``"<network>/<layer>"``
(``"deep_cnn/conv3"``), with the layer's sizes written out (``networks(B)`` is the same table
at batch B). Each shape set expands into the
kernel calls that layer makes in one step, with every argument's shape and every
hyper-parameter: ``forward()``, ``backward()`` and, for the optimizer's flat buffers,
``update()``. ``step_calls(network)`` puts them in the order a training step makes them.

tests/test_bench_shapes.py runs a real training step of each network with the kernel table
replaced by a recorder and compares the recorded calls with ``step_calls``, one by one, so
this table cannot drift from the models.

Each array argument carries its role, which is also the traffic model of the benchmark's
GB/s: an ``in`` array is read once, an ``out`` array written once, and an ``acc`` array
(gradients accumulate, ``+=``) or ``inout`` array (updated in place) read and written once.
Kernels that are GEMMs also carry their floating-point operation count: 2*M*N*K per GEMM
plus one per bias element added (forward) or summed (backward).
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH = 100
DTYPE = "float32"


@dataclass(frozen=True)
class Arr:
    """An array argument. Arrays with the same name within a shape set are the same buffer
    (the forward's ``out`` is what its backward reads)."""

    name: str
    shape: tuple[int, ...]
    role: str  # "in", "out", "acc" or "inout"
    dtype: str = DTYPE
    # How the benchmark fills it before the first call: "normal", "zeros", "ones",
    # "square" (normal squared: a second-moment estimate), "labels" (ints in [0, high)).
    init: str = "normal"
    high: int = 0

    @property
    def nbytes(self) -> int:
        itemsize = {"float32": 4, "float64": 8, "int64": 8, "int32": 4, "uint8": 1}[self.dtype]
        n = 1
        for s in self.shape:
            n *= s
        return n * itemsize


@dataclass(frozen=True)
class Call:
    """One kernel call: its name and arguments (``Arr``, or a hyper-parameter value)."""

    kernel: str
    args: tuple
    flops: int = 0  # nonzero for the GEMM kernels only
    # Longest sum behind one output entry, for the validation's rounding bound.
    reduction: int = 1
    # Positions of arguments whose value changes from step to step (the dropout seed).
    varying: tuple[int, ...] = ()

    def arrays(self) -> list[Arr]:
        return [a for a in self.args if isinstance(a, Arr)]

    def traffic(self) -> int:
        """Bytes read plus bytes written, each array once in each direction it moves."""
        times = {"in": 1, "out": 1, "acc": 2, "inout": 2}
        return sum(times[a.role] * a.nbytes for a in self.arrays())

    def signature(self) -> tuple:
        """What tests/test_bench_shapes.py compares with a recorded call."""
        args = []
        for i, a in enumerate(self.args):
            if i in self.varying:
                args.append("varies")
            elif isinstance(a, Arr):
                args.append(("array", a.shape, a.dtype))
            else:
                args.append(a)
        return self.kernel, tuple(args)


class ShapeSet:
    name: str

    @property
    def network(self) -> str:
        return self.name.split("/")[0]

    def zero(self) -> list[Call]:
        return []

    def forward(self) -> list[Call]:
        return []

    def backward(self) -> list[Call]:
        return []

    def update(self) -> list[Call]:
        return []

    def calls(self) -> list[Call]:
        return self.zero() + self.forward() + self.backward() + self.update()


@dataclass(frozen=True)
class Affine(ShapeSet):
    """x (N, D) @ W (D, M) + b, followed by a fused ReLU when ``relu``. A layer without a
    bias still passes one (zeros), so its calls are the same."""

    name: str
    N: int
    D: int
    M: int
    relu: bool
    dx: bool = True  # False for a model's first layer: training skips the input's gradient

    def forward(self):
        N, D, M = self.N, self.D, self.M
        kernel = "affine_relu_forward" if self.relu else "affine_forward"
        args = (Arr("out", (N, M), "out"), Arr("x", (N, D), "in"), Arr("W", (D, M), "in"), Arr("b", (M,), "in"))
        return [Call(kernel, args, flops=2 * N * D * M + N * M, reduction=D)]

    def backward(self):
        N, D, M = self.N, self.D, self.M
        args = (Arr("dx", (N, D), "out") if self.dx else None, Arr("dW", (D, M), "acc"), Arr("db", (M,), "acc"),
                Arr("dout", (N, M), "in"), Arr("x", (N, D), "in"), Arr("W", (D, M), "in"))
        if self.relu:
            kernel, args = "affine_relu_backward", args + (Arr("out", (N, M), "in"),)
        else:
            kernel = "affine_backward"
        # dx = dout @ W.T and dW += x.T @ dout: a GEMM of N*D*M each; db sums N*M.
        gemms = 2 if self.dx else 1
        return [Call(kernel, args, flops=2 * gemms * N * D * M + N * M, reduction=max(N, M))]


@dataclass(frozen=True)
class Conv(ShapeSet):
    """Square F x F convolution of x (N, C, H, W) into (N, FN, OH, OW), ReLU fused when ``relu``."""

    name: str
    N: int
    C: int
    H: int
    W: int
    FN: int
    F: int
    stride: int
    pad: int
    OH: int
    OW: int
    relu: bool
    dx: bool = True  # False for a model's first layer: training skips the input's gradient

    def __post_init__(self):
        # OH and OW are written out in the table for the reader; they must follow from the rest.
        for size, out in ((self.H, self.OH), (self.W, self.OW)):
            if (size + 2 * self.pad - self.F) // self.stride + 1 != out:
                raise ValueError(f"{self.name}: output size {out} does not follow from the input, filter, stride and pad")

    def _gemm_flops(self) -> int:
        # im2col GEMM: (N*OH*OW, C*F*F) @ (C*F*F, FN).
        return 2 * (self.N * self.OH * self.OW) * (self.C * self.F * self.F) * self.FN

    def _arrays(self):
        N, C, FN, F = self.N, self.C, self.FN, self.F
        return (Arr("x", (N, C, self.H, self.W), "in"), Arr("W", (FN, C, F, F), "in"),
                Arr("out", (N, FN, self.OH, self.OW), "out"))

    def forward(self):
        x, W, out = self._arrays()
        kernel = "conv2d_relu_forward" if self.relu else "conv2d_forward"
        bias = self.N * self.FN * self.OH * self.OW
        return [Call(kernel, (out, x, W, Arr("b", (self.FN,), "in"), self.stride, self.pad),
                     flops=self._gemm_flops() + bias, reduction=self.C * self.F * self.F)]

    def backward(self):
        x, W, out = self._arrays()
        args = (Arr("dx", x.shape, "out") if self.dx else None, Arr("dW", W.shape, "acc"),
                Arr("db", (self.FN,), "acc"), Arr("dout", out.shape, "in"), x, W)
        if self.relu:
            kernel, args = "conv2d_relu_backward", args + (Arr("out", out.shape, "in"),)
        else:
            kernel = "conv2d_backward"
        # dW and dx are one GEMM each of the forward's size; db sums every output element.
        bias = self.N * self.FN * self.OH * self.OW
        gemms = 2 if self.dx else 1
        return [Call(kernel, args + (self.stride, self.pad), flops=gemms * self._gemm_flops() + bias,
                     reduction=max(self.N * self.OH * self.OW, self.FN * self.F * self.F))]


@dataclass(frozen=True)
class ConvPool(ShapeSet):
    """A Conv (ReLU fused) followed by P x P max pooling, run as one kernel
    (``conv2d_relu_maxpool2d_*``): the (N, FN, OH, OW) convolution output is never stored,
    only the pooled (N, FN, POH, POW) one and its argmax."""

    name: str
    N: int
    C: int
    H: int
    W: int
    FN: int
    F: int
    stride: int
    pad: int
    OH: int
    OW: int
    P: int
    pool_stride: int
    POH: int
    POW: int
    dx: bool = True

    def __post_init__(self):
        Conv(self.name, self.N, self.C, self.H, self.W, self.FN, self.F, self.stride, self.pad, self.OH, self.OW, True)
        MaxPool(self.name, self.N, self.FN, self.OH, self.OW, self.P, self.pool_stride, 0, self.POH, self.POW)

    def _conv(self) -> Conv:
        return Conv(self.name, self.N, self.C, self.H, self.W, self.FN, self.F, self.stride, self.pad, self.OH,
                    self.OW, True, self.dx)

    def _arrays(self):
        pooled = (self.N, self.FN, self.POH, self.POW)
        return (Arr("x", (self.N, self.C, self.H, self.W), "in"), Arr("W", (self.FN, self.C, self.F, self.F), "in"),
                Arr("out", pooled, "out"), Arr("argmax", pooled, "out", "int32"))

    def forward(self):
        x, W, out, argmax = self._arrays()
        conv = self._conv().forward()[0]
        args = (out, argmax, x, W, Arr("b", (self.FN,), "in"), self.stride, self.pad, self.P, self.P,
                self.pool_stride, 0)
        return [Call("conv2d_relu_maxpool2d_forward", args, flops=conv.flops, reduction=conv.reduction)]

    def backward(self):
        x, W, out, argmax = self._arrays()
        conv = self._conv().backward()[0]
        args = (Arr("dx", x.shape, "out") if self.dx else None, Arr("dW", W.shape, "acc"),
                Arr("db", (self.FN,), "acc"), Arr("dout", out.shape, "in"), x, W,
                Arr("out", out.shape, "in"), Arr("argmax", out.shape, "in", "int32"), self.stride, self.pad)
        return [Call("conv2d_relu_maxpool2d_backward", args, flops=conv.flops, reduction=conv.reduction)]


@dataclass(frozen=True)
class MaxPool(ShapeSet):
    """P x P max pooling of x (N, C, H, W) into (N, C, OH, OW)."""

    name: str
    N: int
    C: int
    H: int
    W: int
    P: int
    stride: int
    pad: int
    OH: int
    OW: int

    def __post_init__(self):
        for size, out in ((self.H, self.OH), (self.W, self.OW)):
            if (size + 2 * self.pad - self.P) // self.stride + 1 != out:
                raise ValueError(f"{self.name}: output size {out} does not follow from the input, window, stride and pad")

    def forward(self):
        o = (self.N, self.C, self.OH, self.OW)
        args = (Arr("out", o, "out"), Arr("argmax", o, "out", "int32"),
                Arr("x", (self.N, self.C, self.H, self.W), "in"), self.P, self.P, self.stride, self.pad)
        return [Call("maxpool2d_forward", args)]

    def backward(self):
        o = (self.N, self.C, self.OH, self.OW)
        args = (Arr("dx", (self.N, self.C, self.H, self.W), "out"), Arr("dout", o, "in"),
                Arr("argmax", o, "in", "int32"))
        return [Call("maxpool2d_backward", args)]


@dataclass(frozen=True)
class BatchNorm(ShapeSet):
    """Training-mode BatchNorm of x ``shape`` ((N, D) or (N, C, H, W)), ReLU fused when ``relu``."""

    name: str
    shape: tuple[int, ...]
    relu: bool
    momentum: float = 0.9
    eps: float = 1e-5

    def _per_feature(self, name: str, role: str, init: str = "normal") -> Arr:
        return Arr(name, (self.shape[1],), role, init=init)

    def _count(self) -> int:
        # Values behind each feature's statistics: N, or N*H*W per channel.
        m = self.shape[0]
        for s in self.shape[2:]:
            m *= s
        return m

    def forward(self):
        kernel = "batchnorm_relu_forward_train" if self.relu else "batchnorm_forward_train"
        f = self._per_feature
        args = (Arr("out", self.shape, "out"), f("mean", "out"), f("invstd", "out"),
                f("running_mean", "inout", "zeros"), f("running_var", "inout", "ones"),
                Arr("x", self.shape, "in"), f("gamma", "in", "ones"), f("beta", "in", "zeros"),
                self.momentum, self.eps)
        return [Call(kernel, args, reduction=self._count())]

    def backward(self):
        f = self._per_feature
        args = (Arr("dx", self.shape, "out"), f("dgamma", "acc"), f("dbeta", "acc"),
                Arr("dout", self.shape, "in"), Arr("x", self.shape, "in"), f("gamma", "in", "ones"),
                f("mean", "in"), f("invstd", "in"))
        if self.relu:
            kernel, args = "batchnorm_relu_backward", args + (Arr("out", self.shape, "in"),)
        else:
            kernel = "batchnorm_backward"
        return [Call(kernel, args, reduction=self._count())]


@dataclass(frozen=True)
class Dropout(ShapeSet):
    """Inverted dropout of x ``shape`` with drop probability ``p``."""

    name: str
    shape: tuple[int, ...]
    p: float

    @property
    def scale(self) -> float:
        return 1.0 / (1.0 - self.p)

    def forward(self):
        args = (Arr("out", self.shape, "out"), Arr("mask", self.shape, "out", "uint8"),
                Arr("x", self.shape, "in"), self.p, 12345, self.scale)
        return [Call("dropout_forward", args, varying=(4,))]

    def backward(self):
        args = (Arr("dx", self.shape, "out"), Arr("dout", self.shape, "in"),
                Arr("mask", self.shape, "in", "uint8"), self.scale)
        return [Call("dropout_backward", args)]


@dataclass(frozen=True)
class SoftmaxCrossEntropy(ShapeSet):
    """The loss over logits (N, K) with int64 labels."""

    name: str
    N: int
    K: int

    def _labels(self) -> Arr:
        return Arr("t", (self.N,), "in", "int64", init="labels", high=self.K)

    def forward(self):
        args = (Arr("probs", (self.N, self.K), "out"), Arr("logits", (self.N, self.K), "in"), self._labels())
        # The returned loss sums N*K terms.
        return [Call("softmax_cross_entropy_forward", args, reduction=self.N * self.K)]

    def backward(self):
        args = (Arr("dlogits", (self.N, self.K), "out"), Arr("probs", (self.N, self.K), "in"), self._labels(), 1.0)
        return [Call("softmax_cross_entropy_backward", args)]


@dataclass(frozen=True)
class Adam(ShapeSet):
    """An optimizer's flat buffer of ``size`` elements: its gradient zeroed before the step
    (``zero_update``), then one ``adam_update`` as in the first step of ``optim.Adam`` with
    its defaults."""

    name: str
    size: int
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    step: int = 1
    weight_decay: float = 0.0
    l1: float = 0.0

    def zero(self):
        return [Call("zero_update", (Arr("grad", (self.size,), "out"),))]

    def update(self):
        n = (self.size,)
        args = (Arr("param", n, "inout"), Arr("grad", n, "in"), Arr("m", n, "inout"),
                Arr("v", n, "inout", init="square"), self.lr, self.beta1, self.beta2, self.eps,
                self.step, self.weight_decay, self.l1)
        return [Call("adam_update", args)]


def networks(B: int = BATCH) -> dict[str, tuple[ShapeSet, ...]]:
    """The table at batch ``B``. The optimizer keeps two flat buffers, whose sizes do not
    depend on the batch: the weights (decayed when weight_decay is set) and everything else
    (biases, BatchNorm's gamma and beta), in the order of model.parameters()."""
    return {
        # models.simple_cnn(): conv 30@5x5 - relu - pool 2 - affine 100 - relu - affine 10
        "simple_cnn": (
            ConvPool("simple_cnn/conv1", N=B, C=1, H=28, W=28, FN=30, F=5, stride=1, pad=0, OH=24, OW=24,
                     P=2, pool_stride=2, POH=12, POW=12, dx=False),
            Affine("simple_cnn/fc1", N=B, D=30 * 12 * 12, M=100, relu=True),
            Affine("simple_cnn/fc2", N=B, D=100, M=10, relu=False),
            SoftmaxCrossEntropy("simple_cnn/loss", N=B, K=10),
            # 750 + 432000 + 1000 weights; 30 + 100 + 10 biases
            Adam("simple_cnn/adam_weights", size=433_750),
            Adam("simple_cnn/adam_others", size=140),
        ),
        # models.deep_cnn(): six 3x3 convs (16, 16, 32, 32, 64, 64), a 2x2 pool after every
        # second, affine 50 - relu - dropout - affine 10 - dropout
        "deep_cnn": (
            Conv("deep_cnn/conv1", N=B, C=1, H=28, W=28, FN=16, F=3, stride=1, pad=1, OH=28, OW=28, relu=True,
                 dx=False),
            ConvPool("deep_cnn/conv2", N=B, C=16, H=28, W=28, FN=16, F=3, stride=1, pad=1, OH=28, OW=28,
                     P=2, pool_stride=2, POH=14, POW=14),
            Conv("deep_cnn/conv3", N=B, C=16, H=14, W=14, FN=32, F=3, stride=1, pad=1, OH=14, OW=14, relu=True),
            ConvPool("deep_cnn/conv4", N=B, C=32, H=14, W=14, FN=32, F=3, stride=1, pad=2, OH=16, OW=16,
                     P=2, pool_stride=2, POH=8, POW=8),
            Conv("deep_cnn/conv5", N=B, C=32, H=8, W=8, FN=64, F=3, stride=1, pad=1, OH=8, OW=8, relu=True),
            ConvPool("deep_cnn/conv6", N=B, C=64, H=8, W=8, FN=64, F=3, stride=1, pad=1, OH=8, OW=8,
                     P=2, pool_stride=2, POH=4, POW=4),
            Affine("deep_cnn/fc1", N=B, D=64 * 4 * 4, M=50, relu=True),
            Dropout("deep_cnn/drop1", shape=(B, 50), p=0.5),
            Affine("deep_cnn/fc2", N=B, D=50, M=10, relu=False),
            Dropout("deep_cnn/drop2", shape=(B, 10), p=0.5),
            SoftmaxCrossEntropy("deep_cnn/loss", N=B, K=10),
            # 144 + 2304 + 4608 + 9216 + 18432 + 36864 + 51200 + 500 weights; 284 biases
            Adam("deep_cnn/adam_weights", size=123_268),
            Adam("deep_cnn/adam_others", size=284),
        ),
        # models.mlp(hidden=[100] * 5, batchnorm=True): (affine - batchnorm - relu) x 5 - affine
        # 10; the hidden affines have no bias, so BatchNorm+ReLU is the fused pair.
        "mlp_bn": (
            Affine("mlp_bn/fc1", N=B, D=784, M=100, relu=False, dx=False),
            BatchNorm("mlp_bn/bn1", shape=(B, 100), relu=True),
            Affine("mlp_bn/fc2", N=B, D=100, M=100, relu=False),
            BatchNorm("mlp_bn/bn2", shape=(B, 100), relu=True),
            Affine("mlp_bn/fc3", N=B, D=100, M=100, relu=False),
            BatchNorm("mlp_bn/bn3", shape=(B, 100), relu=True),
            Affine("mlp_bn/fc4", N=B, D=100, M=100, relu=False),
            BatchNorm("mlp_bn/bn4", shape=(B, 100), relu=True),
            Affine("mlp_bn/fc5", N=B, D=100, M=100, relu=False),
            BatchNorm("mlp_bn/bn5", shape=(B, 100), relu=True),
            Affine("mlp_bn/fc6", N=B, D=100, M=10, relu=False),
            SoftmaxCrossEntropy("mlp_bn/loss", N=B, K=10),
            # 78400 + 4 * 10000 + 1000 weights; 5 * (100 + 100) gamma and beta + 10 biases
            Adam("mlp_bn/adam_weights", size=119_400),
            Adam("mlp_bn/adam_others", size=1_010),
        ),
    }


NETWORKS = networks(BATCH)

# The name bench/train_step.py builds each network under (the same model and seed).
STEP_NAMES = {"simple_cnn": "simple-cnn", "deep_cnn": "deep-cnn", "mlp_bn": "mlp-bn"}


def step_calls(network: str, batch: int = BATCH) -> list[tuple[ShapeSet, Call]]:
    """Every kernel call of one training step, in order: the gradients zeroed, the forwards
    (the loss last), the backwards in reverse, then the optimizer updates."""
    sets = networks(batch)[network]
    calls = [(s, c) for s in sets for c in s.zero()]
    calls += [(s, c) for s in sets for c in s.forward()]
    calls += [(s, c) for s in reversed(sets) for c in s.backward()]
    calls += [(s, c) for s in sets for c in s.update()]
    return calls
