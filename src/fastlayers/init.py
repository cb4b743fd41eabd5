"""Weight initialisers.

Every initialiser has the signature ``f(shape, rng=None, dtype=np.float32, fan_in=None,
fan_out=None, **kw)`` and returns a new C-contiguous array of ``shape`` and ``dtype``
(float32 or float64). ``rng`` is None (fresh entropy), an int seed or a
``numpy.random.Generator``. Random numbers are drawn in float64 and then rounded, so one
seed gives the same weights in float32 and float64 up to that rounding.

Fans (see :func:`fans`): a 2-D Affine weight ``(in, out)`` has fan_in = in and
fan_out = out; a 4-D convolution weight ``(FN, C, FH, FW)`` has fan_in = C*FH*FW and
fan_out = FN*FH*FW. ``fan_in``/``fan_out`` override them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "as_generator",
    "fans",
    "zeros",
    "normal",
    "uniform",
    "glorot_uniform",
    "glorot_normal",
    "xavier_uniform",
    "xavier_normal",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "truncated_normal",
    "get",
    "NAMES",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def as_generator(rng=None) -> np.random.Generator:
    """None -> a fresh ``default_rng()``; an int -> ``default_rng(int)``; a Generator is returned as is."""
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng seed must be >= 0, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {type(shape).__name__}") from None
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
        if s < 0:
            raise ValueError(f"shape must have non-negative sizes, got {shape!r}")
    return tuple(int(s) for s in shape)


def _dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape``.

    2-D ``(in, out)``: (in, out). 4-D ``(FN, C, FH, FW)``: (C*FH*FW, FN*FH*FW).
    3-D ``(K, in, out)`` (K stacked matrices, e.g. maxout pieces): (in, out).
    1-D ``(n,)``: (n, n).
    """
    shape = _shape(shape)
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[2]
    if len(shape) == 4:
        fn, c, fh, fw = shape
        return c * fh * fw, fn * fh * fw
    raise ValueError(f"fans: expected a 1-D to 4-D shape, got {shape!r}")


def _fans(shape, fan_in, fan_out) -> tuple[int, int]:
    fi, fo = fans(shape) if fan_in is None or fan_out is None else (0, 0)
    fi = fi if fan_in is None else fan_in
    fo = fo if fan_out is None else fan_out
    for name, v in (("fan_in", fi), ("fan_out", fo)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v} (shape {shape!r})")
    return int(fi), int(fo)


def _real(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _nonneg(name: str, v) -> float:
    v = _real(name, v)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _finish(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def zeros(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None) -> np.ndarray:
    """All zeros (biases)."""
    return np.zeros(_shape(shape), dtype=_dtype(dtype))


def normal(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None, std=0.01, mean=0.0) -> np.ndarray:
    """N(mean, std²); the textbook's first choice, std = 0.01."""
    shape, dt = _shape(shape), _dtype(dtype)
    std, mean = _nonneg("std", std), _real("mean", mean)
    return _finish(mean + std * as_generator(rng).standard_normal(shape), dt)


def uniform(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None, low=-0.05, high=0.05) -> np.ndarray:
    """U[low, high)."""
    shape, dt = _shape(shape), _dtype(dtype)
    low, high = _real("low", low), _real("high", high)
    if not low <= high:
        raise ValueError(f"uniform: low must be <= high, got low={low}, high={high}")
    return _finish(as_generator(rng).uniform(low, high, shape), dt)


def _fan_scaled(shape, rng, dtype, scale_of: Callable[[int, int], float], fan_in, fan_out, gain, uniform: bool) -> np.ndarray:
    """U[-s, s) or s·N(0, 1), with s = gain * scale_of(fan_in, fan_out)."""
    shape, dt = _shape(shape), _dtype(dtype)
    gain = _nonneg("gain", gain)
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=dt)
    s = gain * scale_of(*_fans(shape, fan_in, fan_out))
    gen = as_generator(rng)
    return _finish(gen.uniform(-s, s, shape) if uniform else s * gen.standard_normal(shape), dt)


def glorot_uniform(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None, gain=1.0) -> np.ndarray:
    """U[-a, a) with a = gain*sqrt(6/(fan_in + fan_out)) (Glorot & Bengio 2010); std = a/sqrt(3)."""
    return _fan_scaled(shape, rng, dtype, lambda fi, fo: math.sqrt(6.0 / (fi + fo)), fan_in, fan_out, gain, uniform=True)


def glorot_normal(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None, gain=1.0) -> np.ndarray:
    """N(0, std²) with std = gain*sqrt(2/(fan_in + fan_out)); the textbook's "Xavier" normal."""
    return _fan_scaled(shape, rng, dtype, lambda fi, fo: math.sqrt(2.0 / (fi + fo)), fan_in, fan_out, gain, uniform=False)


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal


def he_normal(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None, gain=1.0) -> np.ndarray:
    """N(0, std²) with std = gain*sqrt(2/fan_in) (He et al. 2015), the default for ReLU layers."""
    return _fan_scaled(shape, rng, dtype, lambda fi, fo: math.sqrt(2.0 / fi), fan_in, fan_out, gain, uniform=False)


def he_uniform(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None, gain=1.0) -> np.ndarray:
    """U[-a, a) with a = gain*sqrt(6/fan_in), the uniform with He's variance 2/fan_in."""
    return _fan_scaled(shape, rng, dtype, lambda fi, fo: math.sqrt(6.0 / fi), fan_in, fan_out, gain, uniform=True)


def orthogonal(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None, gain=1.0) -> np.ndarray:
    """A (scaled) random orthogonal matrix (Saxe et al. 2014), for shapes of 2 or more dimensions.

    The weight is viewed as the matrix ``(shape[0], prod(shape[1:]))`` (an Affine ``(in, out)``
    as is; a convolution ``(FN, C*FH*FW)``): its columns are orthonormal when it is tall, its
    rows when it is wide, times ``gain``. The QR factor's signs are fixed by diag(R) so the
    result is uniformly (Haar) distributed.
    """
    shape, dt = _shape(shape), _dtype(dtype)
    gain = _nonneg("gain", gain)
    if len(shape) < 2:
        raise ValueError(f"orthogonal: needs a shape of at least 2 dimensions, got {shape!r}")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=dt)
    rows, cols = shape[0], math.prod(shape[1:])
    a = as_generator(rng).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)
    if rows < cols:
        q = q.T
    return _finish((gain * q).reshape(shape), dt)


def truncated_normal(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None, std=0.01, mean=0.0) -> np.ndarray:
    """N(mean, std²) with every draw beyond 2 std of the mean drawn again.

    The result's standard deviation is about 0.88*std (the truncation removes the tails).
    """
    shape, dt = _shape(shape), _dtype(dtype)
    std, mean = _nonneg("std", std), _real("mean", mean)
    g = as_generator(rng)
    z = g.standard_normal(shape)
    bad = np.abs(z) > 2.0
    # Each round keeps ~95% of what it redraws, so this ends after a handful of rounds.
    while bad.any():
        z[bad] = g.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return _finish(mean + std * z, dt)


_INITS: dict[str, Callable[..., np.ndarray]] = {
    "zeros": zeros,
    "normal": normal,
    "uniform": uniform,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "orthogonal": orthogonal,
    "truncated_normal": truncated_normal,
}
# "xavier" and "he" are the textbook's names for its Gaussian initial values.
_ALIASES = {
    "xavier_uniform": "glorot_uniform",
    "xavier_normal": "glorot_normal",
    "xavier": "glorot_normal",
    "glorot": "glorot_normal",
    "he": "he_normal",
    "kaiming_normal": "he_normal",
    "kaiming_uniform": "he_uniform",
}
NAMES: tuple[str, ...] = tuple(_INITS) + tuple(_ALIASES)


def get(name_or_callable) -> Callable[..., np.ndarray]:
    """The initialiser called ``name`` (case-insensitive, aliases included), or a callable as is."""
    if callable(name_or_callable):
        return name_or_callable
    if not isinstance(name_or_callable, str):
        raise TypeError(f"initialiser must be a name or a callable, got {type(name_or_callable).__name__}")
    key = name_or_callable.lower()
    key = _ALIASES.get(key, key)
    if key not in _INITS:
        raise ValueError(f"unknown initialiser {name_or_callable!r}; expected one of {', '.join(NAMES)}")
    return _INITS[key]
