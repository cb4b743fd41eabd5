"""Parameters: an array, its gradient and whether weight penalties apply to it."""

from __future__ import annotations

import numpy as np


class Parameter:
    """A learnable array.

    ``data`` and ``grad`` have the same shape and dtype. Kernels *accumulate* into ``grad``
    (see docs/kernels.md), so a training step zeroes it first (``Optimizer.zero_grad()``).
    ``regularize`` says whether weight decay, L1 and max-norm apply: True for weights,
    False for biases, BatchNorm's gamma/beta and activation parameters, unless set.
    Always reach the arrays through the attributes (``p.data``), never keep a reference:
    an optimizer moves them into one contiguous buffer and rebinds them as views (see
    :class:`fastlayers.optim.Optimizer`). Assigning a new array to ``p.data`` or
    ``p.grad`` is fine: the optimizer notices at its next call and moves the new array's
    values into its buffer. To change values while keeping the binding, write in place
    (``p.data[...] = values``).
    """

    __slots__ = ("data", "grad", "name", "regularize")

    def __init__(self, data: np.ndarray, name: str = "", regularize: bool = False):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Parameter data must be a numpy.ndarray, got {type(data).__name__}")
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter {name!r} must be float32 or float64, got {data.dtype}")
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)
        self.name = name
        self.regularize = regularize

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"
