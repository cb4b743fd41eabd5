"""Argument checks shared by the oracle kernels, mirroring csrc/bindings/checks.cpp.

The oracle is held to the same contract as the native kernels: the same arguments are
refused with the same exception types, so a test of the seam can run on both backends.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

INT64_MAX = 2**63 - 1
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _shape_str(shape) -> str:
    inner = ", ".join("*" if s is None or s < 0 else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


class Checker:
    """Checks the arguments of one kernel; messages start with the kernel's name."""

    def __init__(self, kernel: str):
        self.kernel = kernel

    def value_error(self, msg: str):
        raise ValueError(f"{self.kernel}: {msg}")

    def type_error(self, msg: str):
        raise TypeError(f"{self.kernel}: {msg}")

    def array(self, a, name: str) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            self.type_error(f"argument '{name}' must be a numpy.ndarray, got {type(a).__name__}")
        if not a.flags.c_contiguous:
            self.value_error(
                f"argument '{name}' must be C-contiguous; got a strided view of shape {_shape_str(a.shape)} "
                "(pass numpy.ascontiguousarray(...) explicitly)"
            )
        if not a.flags.aligned:
            self.value_error(f"argument '{name}' must be aligned to its dtype; got a misaligned buffer")
        return a

    def _dtype_ok(self, a: np.ndarray, want: np.dtype) -> bool:
        return a.dtype == want and a.dtype.isnative

    def input(self, a, name: str, like: np.ndarray | None = None, like_name: str | None = None) -> np.ndarray:
        """A float array; with ``like``, of the same dtype as ``like``."""
        a = self.array(a, name)
        if like is None:
            if not (a.dtype in FLOATS and a.dtype.isnative):
                self.type_error(
                    f"argument '{name}' must have dtype float32 or float64 (native byte order); got {a.dtype}"
                )
        elif not self._dtype_ok(a, like.dtype):
            self.type_error(f"argument '{name}' must have dtype {like.dtype} like '{like_name}'; got {a.dtype}")
        return a

    def output(self, a, name: str, like: np.ndarray, like_name: str) -> np.ndarray:
        a = self.input(a, name, like, like_name)
        self.writeable(a, name)
        return a

    def optional_output(self, a, name: str, like: np.ndarray, like_name: str) -> np.ndarray | None:
        return None if a is None else self.output(a, name, like, like_name)

    def _exact(self, a, name: str, want: str) -> np.ndarray:
        """An index or mask array: exactly dtype ``want``, in native byte order, never converted."""
        a = self.array(a, name)
        if not self._dtype_ok(a, np.dtype(want)):
            self.type_error(f"argument '{name}' must have dtype {want}; got {a.dtype}")
        return a

    def int32(self, a, name: str) -> np.ndarray:
        return self._exact(a, name, "int32")

    def argmax_fits_int32(self, count: int, what: str) -> None:
        """Refuses to write an argmax whose indices run to count - 1 (a plane of count pixels,
        count maxout pieces) when that does not fit int32."""
        if count - 1 > np.iinfo(np.int32).max:
            self.value_error(f"the argmax indices of {what} ({count}) do not fit its dtype int32; expected at most 2**31")

    def int64(self, a, name: str) -> np.ndarray:
        return self._exact(a, name, "int64")

    def uint8(self, a, name: str) -> np.ndarray:
        return self._exact(a, name, "uint8")

    def writeable(self, a: np.ndarray, name: str) -> None:
        if not a.flags.writeable:
            self.value_error(f"output '{name}' is read-only; expected a writeable array")

    def ndim(self, a: np.ndarray, name: str, want: int) -> None:
        if a.ndim != want:
            self.value_error(f"argument '{name}' must be {want}-D; got shape {_shape_str(a.shape)}")

    def ndim_at_least(self, a: np.ndarray, name: str, want: int) -> None:
        if a.ndim < want:
            self.value_error(
                f"argument '{name}' must have at least {want} dimensions; got shape {_shape_str(a.shape)}"
            )

    def shape(self, a: np.ndarray, name: str, want) -> None:
        """``want`` entries of -1 (or None) match any size."""
        ok = a.ndim == len(want) and all(w is None or w < 0 or s == w for s, w in zip(a.shape, want))
        if not ok:
            self.value_error(f"argument '{name}' has shape {_shape_str(a.shape)}; expected {_shape_str(want)}")

    def same_shape(self, a: np.ndarray, name: str, ref: np.ndarray, ref_name: str) -> None:
        if a.shape != ref.shape:
            self.value_error(
                f"argument '{name}' has shape {_shape_str(a.shape)}; expected {_shape_str(ref.shape)} "
                f"(the shape of '{ref_name}')"
            )

    def distinct(self, **arrays) -> None:
        """No two of the named arrays share memory (outputs must not alias inputs)."""
        items = [(n, a) for n, a in arrays.items() if a is not None]
        for i, (na, a) in enumerate(items):
            for nb, b in items[i + 1 :]:
                if a.size and b.size and np.shares_memory(a, b):
                    self.value_error(
                        f"arguments '{na}' and '{nb}' overlap in memory; "
                        "expected distinct arrays (outputs must not alias inputs)"
                    )

    def outputs_distinct(self, outputs: dict, inputs: dict) -> None:
        """The project's rule: every output overlaps neither another output nor any input;
        inputs may share memory with each other. None entries are skipped."""
        outs = [(n, a) for n, a in outputs.items() if a is not None]
        for i, (name, a) in enumerate(outs):
            for other, b in outs[i + 1 :] + list(inputs.items()):
                self.distinct(**{name: a, other: b})

    def _int(self, v, name: str) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            self.type_error(f"argument '{name}' must be an int; got {type(v).__name__}")
        v = int(v)
        # The native kernels read sizes as int64; a larger value is as unusable as a negative one.
        if v > INT64_MAX:
            self.value_error(f"argument '{name}' is out of range; got {v}")
        return v

    def positive_int(self, v, name: str) -> int:
        v = self._int(v, name)
        if v < 1:
            self.value_error(f"argument '{name}' must be >= 1; got {v}")
        return v

    def nonnegative_int(self, v, name: str) -> int:
        v = self._int(v, name)
        if v < 0:
            self.value_error(f"argument '{name}' must be >= 0; got {v}")
        return v

    def real(self, v, name: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            self.type_error(f"argument '{name}' must be a real number; got {type(v).__name__}")
        try:
            return float(v)
        except OverflowError:
            self.value_error(f"argument '{name}' is out of range; got an int of {int(v).bit_length()} bits")

    def finite(self, v, name: str) -> float:
        """A real that is neither infinite nor NaN."""
        v = self.real(v, name)
        if not math.isfinite(v):
            self.value_error(f"argument '{name}' must be a finite number; got {v}")
        return v

    def room(self, shape, dtype, what: str) -> None:
        """Refuses a temporary of ``shape`` before it is allocated (see ``refuse_unallocatable``)."""
        refuse_unallocatable(shape, dtype, f"{self.kernel}: {what}")


def refuse_unallocatable(shape, dtype, what: str) -> tuple[int, ...]:
    """Raises before an array of ``shape`` is allocated when its size does not fit 64 bits
    (OverflowError) or exceeds this machine's memory (MemoryError): an allocation the
    operating system might grant lazily and then kill the process for touching, or one NumPy
    refuses with a message that names no kernel or layer. ``what`` starts the message (the
    kernel or layer and the array). Returns the shape as ints."""
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > INT64_MAX:
        raise OverflowError(f"{what} of shape {shape} does not fit a 64-bit size")
    limit = physical_memory_bytes()
    if limit and nbytes > limit:
        raise MemoryError(f"{what} of shape {shape} needs {nbytes} bytes; more than this machine's memory ({limit} bytes)")
    return shape


@functools.cache
def physical_memory_bytes() -> int:
    """This machine's physical memory (0 when the system does not say); asked once, as the
    layers check every output they allocate against it."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
