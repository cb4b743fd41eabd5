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


_WINOGRAD_MODES = ("auto", "never", "always")


def set_winograd(mode: str) -> None:
    """When float32 3x3 stride-1 convolutions use Winograd F(4x4, 3x3) instead of im2col.

    ``"auto"`` (the default): where it measured faster here, the forward of layers with at
    least 16 input and 16 output channels, and their backward (dW and dx) when the two
    counts also multiply to 512 or more; ``"never"``;
    ``"always"``: every 3x3 stride-1 float32 convolution with padding <= 2, whatever its
    channels. Float64 always uses im2col. Winograd rounds differently from im2col (about
    10x the float32 error of the direct sum, still far below training noise), and it is
    deterministic: the same bits for any thread count.
    """
    if mode not in _WINOGRAD_MODES:
        raise ValueError(f"set_winograd: mode must be one of {_WINOGRAD_MODES}, got {mode!r}")
    _native.set_winograd_mode(_WINOGRAD_MODES.index(mode))


def get_winograd() -> str:
    return _WINOGRAD_MODES[_native.get_winograd_mode()]


def build_info() -> dict:
    """Compiler, OpenMP, threads, BLAS and the native kernels of this build."""
    info = dict(_native.build_facts())
    cov = coverage()
    info["native_kernels"] = sorted(name for name, native in cov.items() if native)
    info["numpy_only_kernels"] = sorted(name for name, native in cov.items() if not native)
    info["backend"] = get_backend()
    return info
