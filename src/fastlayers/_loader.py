"""Loads the native extension and the OpenBLAS it links against.

The extension records only the soname ``libscipy_openblas.so``. Its RUNPATH finds the
library for a normal install; for installs where the relative path does not hold
(``pip install --target``, editable builds) the library is preloaded here by path.
``import scipy_openblas32`` would also work but loads the library with RTLD_GLOBAL, which
makes SciPy's own BLAS wrappers bind to this copy; ``RTLD_LOCAL`` keeps it private to us.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path


def _preload_openblas() -> None:
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or spec.origin is None:
        raise ImportError(
            "fastlayers needs the 'scipy-openblas32' package (its OpenBLAS runs every GEMM); "
            "install it with: pip install scipy-openblas32"
        )
    lib = Path(spec.origin).parent / "lib" / "libscipy_openblas.so"
    ctypes.CDLL(str(lib), mode=os.RTLD_LOCAL)


def load_native():
    _preload_openblas()
    from . import _native

    return _native
