"""The backend switch: which implementation of each kernel the layers call.

``"native"`` (the default) runs the C++ kernels of ``fastlayers._native`` and falls back to
the NumPy oracle for any kernel that has no native version yet; ``"numpy"`` runs the oracle
(``fastlayers.reference``) for everything. Select globally with :func:`set_backend` (or the
``FASTLAYERS_BACKEND`` environment variable), or for a block::

    with fastlayers.backend.use("numpy"):
        model.forward(x)

Layers fetch kernels with ``kernels()``; nothing else in the package imports a kernel
implementation directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from types import SimpleNamespace

from . import reference
from ._loader import load_native

_native = load_native()


def _retain_heap() -> None:
    # Without this, glibc hands freed arrays back to the kernel and each training step faults
    # them in again (csrc/memory.cpp). FASTLAYERS_RETAIN_HEAP=0 leaves malloc's settings alone.
    value = os.environ.get("FASTLAYERS_RETAIN_HEAP", "1")
    if value not in ("0", "1"):
        raise ValueError(f"FASTLAYERS_RETAIN_HEAP must be 0 or 1, got {value!r}")
    if value == "1":
        _native.retain_heap()


_retain_heap()

BACKENDS = ("native", "numpy")
KERNEL_NAMES: tuple[str, ...] = tuple(reference.__all__)

_TABLES = {
    "numpy": SimpleNamespace(**{name: getattr(reference, name) for name in KERNEL_NAMES}),
    "native": SimpleNamespace(
        **{name: getattr(_native, name, getattr(reference, name)) for name in KERNEL_NAMES}
    ),
}


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    return name


_default = _check(os.environ.get("FASTLAYERS_BACKEND", "native"))
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastlayers_backend", default=None)


def get_backend() -> str:
    """The backend in effect here: a ``use()`` block's, else the global one."""
    return _override.get() or _default


def set_backend(name: str) -> None:
    """Sets the global backend (``"native"`` or ``"numpy"``)."""
    global _default
    _default = _check(name)


@contextlib.contextmanager
def use(name: str):
    """Runs the enclosed block on backend ``name``, then restores the previous one."""
    token = _override.set(_check(name))
    try:
        yield
    finally:
        _override.reset(token)


def kernels() -> SimpleNamespace:
    """The kernel table of the backend in effect: ``kernels().affine_forward(out, x, W, b)``."""
    return _TABLES[_override.get() or _default]


def coverage() -> dict[str, bool]:
    """For every kernel name, whether the native backend runs it in C++."""
    return {name: hasattr(_native, name) for name in KERNEL_NAMES}


def set_num_threads(n: int) -> None:
    """Threads for both the OpenMP kernels and OpenBLAS's GEMMs (they share one pool)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    _native.set_num_threads(n)


def get_num_threads() -> int:
    return _native.get_num_threads()


CONV_ALGORITHMS = ("auto", "im2col", "winograd", "direct")


def set_conv_algorithm(algorithm: str) -> None:
    """Which algorithm the native float32 convolutions run; float64 always runs im2col.

    - ``"auto"`` (the default) picks per layer and pass what measured fastest here
      (``bench/kernels.py``, ``bench/winograd.py``): the direct convolution for stride-1
      layers with C*FH*FW <= 64 (first layers: few input channels) on an AVX-512 CPU, for
      the forward and for the backward of a Conv2d, ReLU, MaxPool2d block that does not
      want dx (other backwards of such a layer run im2col); Winograd
      F(4x4, 3x3) for 3x3 stride-1 layers with padding <= 2 and at least 16 input and 16
      output channels, on batches of at least 4 images (forward, dW and dx); im2col + GEMM
      for the rest.
    - ``"im2col"``: im2col + GEMM everywhere.
    - ``"winograd"``: Winograd wherever it applies at all (3x3, stride 1, padding <= 2,
      any channel count), im2col elsewhere; for tests and comparisons.
    - ``"direct"``: the direct convolution wherever it applies at all (AVX-512, stride 1,
      filter width <= 16, any channel count), im2col elsewhere; for tests and comparisons.

    The algorithms round differently (Winograd's transforms carry about ten times the
    rounding of a direct sum, far below training noise; the direct path sums in another
    order than the GEMM); each is deterministic, with the same bits for any thread count.
    The setting is process-wide.
    """
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"set_conv_algorithm: algorithm must be one of {CONV_ALGORITHMS}, got {algorithm!r}")
    _native.set_conv_algorithm(CONV_ALGORITHMS.index(algorithm))


def get_conv_algorithm() -> str:
    return CONV_ALGORITHMS[_native.get_conv_algorithm()]


@contextlib.contextmanager
def conv_algorithm(algorithm: str):
    """``with backend.conv_algorithm("im2col"): ...`` runs a block with another algorithm."""
    saved = get_conv_algorithm()
    set_conv_algorithm(algorithm)
    try:
        yield
    finally:
        set_conv_algorithm(saved)


def build_info() -> dict:
    """Compiler, OpenMP, threads, BLAS, the heap policy (``"retained"`` or ``"default"``)
    and the native kernels of this build."""
    info = dict(_native.build_facts())
    cov = coverage()
    info["native_kernels"] = sorted(name for name, native in cov.items() if native)
    info["numpy_only_kernels"] = sorted(name for name, native in cov.items() if not native)
    info["backend"] = get_backend()
    return info
