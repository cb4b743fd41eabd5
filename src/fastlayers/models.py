"""Ready-made networks from the textbook, built as ``layers.Sequential``.

``get("simple-cnn")``, ``get("deep-cnn", batchnorm=True)``, ``get("mlp", hidden=[50, 50])``.
``seed`` makes both the initial weights and the dropout masks reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import init as _init
from . import layers as L

__all__ = ["simple_cnn", "deep_cnn", "mlp", "MODELS", "get"]


def _input_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    return shape


def _spatial(shape: tuple[int, int, int], layer) -> tuple[int, int, int]:
    c, h, w = layer.output_shape(shape)
    if h < 1 or w < 1:
        raise ValueError(f"input too small: {layer._tag()} would produce a {h}x{w} output from {shape}")
    return c, h, w


def simple_cnn(
    input_shape=(1, 28, 28),
    conv=30,
    kernel=5,
    hidden=100,
    classes=10,
    seed=None,
    dtype=np.float32,
    init="he_normal",
) -> L.Sequential:
    """The textbook's SimpleConvNet (ch07): conv - relu - pool(2) - affine - relu - affine.

    The convolution has stride 1 and no padding; the pool is 2x2 with stride 2. The
    textbook draws every weight from N(0, 0.01²); He initialisation (the default here)
    keeps the activations' scale through the ReLUs, so training (with Adam in particular)
    leaves the initial plateau much sooner. Pass ``init="normal"`` for the textbook's.
    """
    C, H, W = _input_shape(input_shape)
    rng = _init.as_generator(seed)
    conv_layer = L.Conv2d(C, conv, kernel, stride=1, padding=0, init=init, dtype=dtype, rng=rng)
    pool = L.MaxPool2d(2, stride=2)
    shape = _spatial(_spatial((C, H, W), conv_layer), pool)
    model = L.Sequential(
        conv_layer,
        L.ReLU(),
        pool,
        L.Affine(int(np.prod(shape)), hidden, init=init, dtype=dtype, rng=rng),
        L.ReLU(),
        L.Affine(hidden, classes, init=init, dtype=dtype, rng=rng),
    )
    model.set_rng(rng)
    return model


# (filters, pad) of the six 3x3 convolutions of the textbook's DeepConvNet (ch08/deep_convnet.py);
# a 2x2 pool follows every second one. The pad of 2 in the fourth keeps 14x14 -> 16x16, so the
# last pool leaves 4x4 from a 28x28 input.
_DEEP_CONVS = ((16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1))


def deep_cnn(
    input_shape=(1, 28, 28),
    classes=10,
    batchnorm=False,
    seed=None,
    dtype=np.float32,
    hidden=50,
    dropout=0.5,
    dropout_mode="inverted",
) -> L.Sequential:
    """The textbook's DeepConvNet (ch08), He-initialised as there.

    (conv3x3 - relu - conv3x3 - relu - pool) x 3 - affine(50) - relu - dropout - affine - dropout.
    ``batchnorm=True`` inserts a BatchNorm after every convolution and the hidden affine,
    before its ReLU; those convolutions and that affine then have no bias (see ``mlp``). The textbook's Dropout scales at inference; the default here is
    inverted dropout (scaled during training), which has the same expected output.
    """
    C, H, W = _input_shape(input_shape)
    rng = _init.as_generator(seed)
    layers: list[L.Layer] = []
    shape = (C, H, W)
    for i, (filters, pad) in enumerate(_DEEP_CONVS):
        conv = L.Conv2d(
            shape[0], filters, 3, stride=1, padding=pad, init="he_normal", bias=not batchnorm, dtype=dtype, rng=rng
        )
        shape = _spatial(shape, conv)
        layers.append(conv)
        if batchnorm:
            layers.append(L.BatchNorm(filters, dtype=dtype))
        layers.append(L.ReLU())
        if i % 2 == 1:
            pool = L.MaxPool2d(2, stride=2)
            shape = _spatial(shape, pool)
            layers.append(pool)
    layers.append(L.Affine(int(np.prod(shape)), hidden, init="he_normal", bias=not batchnorm, dtype=dtype, rng=rng))
    if batchnorm:
        layers.append(L.BatchNorm(hidden, dtype=dtype))
    layers += [L.ReLU(), L.Dropout(dropout, mode=dropout_mode)]
    layers += [L.Affine(hidden, classes, init="he_normal", dtype=dtype, rng=rng), L.Dropout(dropout, mode=dropout_mode)]
    model = L.Sequential(*layers)
    model.set_rng(rng)
    return model


_ACTIVATIONS = {
    "relu": (L.ReLU, "he_normal"),
    "leaky_relu": (L.LeakyReLU, "he_normal"),
    "prelu": (L.PReLU, "he_normal"),
    "softplus": (L.Softplus, "he_normal"),
    "sigmoid": (L.Sigmoid, "glorot_normal"),
    "tanh": (L.Tanh, "glorot_normal"),
    "hardtanh": (L.HardTanh, "glorot_normal"),
}


def mlp(
    input_size=784,
    hidden: Sequence[int] = (100,) * 5,
    classes=10,
    batchnorm=False,
    dropout=0.0,
    activation="relu",
    seed=None,
    dtype=np.float32,
    init=None,
    dropout_mode="inverted",
) -> L.Sequential:
    """The textbook's MultiLayerNet(Extend): per hidden layer Affine - [BatchNorm] - act - [Dropout].

    ``init`` defaults to He for ReLU-like activations and Xavier (Glorot) for sigmoid/tanh,
    the textbook's recommendation. Image input (N, C, H, W) is flattened by the first Affine.
    With ``batchnorm=True`` the hidden Affines have no bias: BatchNorm subtracts the batch
    mean, which cancels any bias exactly (its gradient is identically zero), and BatchNorm's
    beta takes over its role. The textbook's MultiLayerNetExtend keeps the redundant bias.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp: unknown activation {activation!r}; expected one of {', '.join(_ACTIVATIONS)}")
    act, default_init = _ACTIVATIONS[activation]
    init = default_init if init is None else init
    rng = _init.as_generator(seed)
    sizes = [int(input_size), *[int(h) for h in hidden]]
    layers: list[L.Layer] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        layers.append(L.Affine(d_in, d_out, init=init, bias=not batchnorm, dtype=dtype, rng=rng))
        if batchnorm:
            layers.append(L.BatchNorm(d_out, dtype=dtype))
        layers.append(act(dtype=dtype) if act is L.PReLU else act())
        if dropout:
            layers.append(L.Dropout(dropout, mode=dropout_mode))
    layers.append(L.Affine(sizes[-1], classes, init=init, dtype=dtype, rng=rng))
    model = L.Sequential(*layers)
    model.set_rng(rng)
    return model


MODELS = {"simple-cnn": simple_cnn, "deep-cnn": deep_cnn, "mlp": mlp}


def get(name: str, **kw) -> L.Sequential:
    """Builds the model registered as ``name`` (see ``MODELS``) with keyword arguments ``kw``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(map(repr, MODELS))}")
    return MODELS[name](**kw)
