"""Data augmentation: random translation, rotation, scaling and horizontal flips of NCHW images.

``Augment(translate=2, rotate=10, scale=(0.9, 1.1), hflip=True)`` draws, for each image of a
batch, a shift, an angle, a scale factor and whether to mirror it, composes them into one
affine map about the image centre, and warps the whole batch with one call of the
``affine_warp_forward`` kernel (bilinear interpolation, ``fill`` where the image moved away).
``Trainer(..., augment=Augment(...))`` applies it to every training batch of ``fit``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import backend

_KEYS = ("translate", "rotate", "scale", "hflip", "fill")


def _real(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Augment: {what} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Augment: {what} must be finite, got {value}")
    return value


def _pair(value, what: str) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"Augment: {what} must be a number or a pair of numbers, got {value!r}")
    return tuple(value)


class Augment:
    """Random affine augmentation of image batches (N, C, H, W), float32 or float64.

    Each image gets, drawn independently and uniformly:

    - ``translate``: a shift of up to that many *pixels* (not a fraction of the size) along
      x and along y, each in [-t, t]; a pair ``(tx, ty)`` sets the two directions apart.
      Shifts need not be whole pixels.
    - ``rotate``: an angle in [-rotate, rotate] *degrees* (at most 180); positive angles turn
      the picture counter-clockwise as displayed (rows downwards), so 90 is ``np.rot90``.
    - ``scale``: ``(lo, hi)``, a zoom factor in [lo, hi] (0 < lo <= hi; above 1 enlarges).
    - ``hflip``: with probability 1/2, a mirror image (left and right swapped).

    They compose about the centre of the image, ((W-1)/2, (H-1)/2) in pixel coordinates:
    the picture is mirrored, scaled and rotated about its centre, then shifted. Pixels that
    come from outside the input are ``fill`` (blended with the image along its edge).

    ``augment(x, rng)`` returns a new array of x's shape and dtype and leaves ``x``
    untouched; ``rng`` is a ``numpy.random.Generator``, from which the parameters are drawn
    in a fixed order (translation, angle, scale, flip; only those that are enabled, one
    vectorised draw each), so the same generator state gives the same batch. With nothing
    enabled (the default) the result equals ``x`` bit for bit and nothing is drawn.
    ``matrices(n, H, W, rng)`` gives the (n, 2, 3) float64 maps themselves (see
    ``docs/kernels.md``, ``affine_warp_forward``).
    """

    def __init__(self, translate=0.0, rotate=0.0, scale=None, hflip: bool = False, fill: float = 0.0):
        if isinstance(translate, numbers.Real) and not isinstance(translate, bool):
            translate = (translate, translate)
        tx, ty = (_real(v, "translate") for v in _pair(translate, "translate"))
        if tx < 0 or ty < 0:
            raise ValueError(f"Augment: translate must be >= 0 pixels, got {translate!r}")
        rotate = _real(rotate, "rotate")
        if not 0 <= rotate <= 180:
            raise ValueError(f"Augment: rotate must be in [0, 180] degrees, got {rotate}")
        if scale is not None:
            lo, hi = (_real(v, "scale") for v in _pair(scale, "scale"))
            if not 0 < lo <= hi:
                raise ValueError(f"Augment: scale must be a range (lo, hi) with 0 < lo <= hi, got {scale!r}")
            scale = None if lo == hi == 1 else (lo, hi)
        if not isinstance(hflip, (bool, np.bool_)):
            raise TypeError(f"Augment: hflip must be a bool, got {type(hflip).__name__}")
        self.translate = (tx, ty)
        self.rotate = rotate
        self.scale = scale
        self.hflip = bool(hflip)
        self.fill = _real(fill, "fill")

    # -- description ---------------------------------------------------------------------
    def config(self) -> dict:
        """The settings as JSON-ready data (``Augment(**config)`` rebuilds it); checkpoints
        store it, so that a run is resumed with the augmentation it was trained with."""
        return {"translate": list(self.translate), "rotate": self.rotate,
                "scale": None if self.scale is None else list(self.scale), "hflip": self.hflip, "fill": self.fill}

    def __repr__(self) -> str:
        tx, ty = self.translate
        parts = [f"translate={tx!r}" if tx == ty else f"translate={self.translate!r}", f"rotate={self.rotate!r}",
                 f"scale={self.scale!r}", f"hflip={self.hflip!r}", f"fill={self.fill!r}"]
        return f"Augment({', '.join(parts)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Augment) and self.config() == other.config()

    @classmethod
    def parse(cls, text: str) -> Augment:
        """The command line's form: comma-separated settings, e.g.
        ``"translate=2,rotate=10,scale=0.9:1.1,hflip,fill=0"``; ``translate=TX:TY`` sets the
        two directions apart. ValueError, naming the bad item, otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("augment: expected settings such as 'translate=2,rotate=10,scale=0.9:1.1,hflip'")
        kwargs: dict = {}
        for item in text.split(","):
            key, eq, value = (s.strip() for s in item.partition("="))
            if key not in _KEYS:
                raise ValueError(f"augment: unknown setting {key!r} in {text!r}; expected {', '.join(_KEYS)}")
            if key in kwargs:
                raise ValueError(f"augment: {key} is given twice in {text!r}")
            if key == "hflip":
                if eq:
                    raise ValueError(f"augment: hflip takes no value, got {item.strip()!r}")
                kwargs[key] = True
                continue
            if not eq or not value:
                raise ValueError(f"augment: {key} needs a value ({key}=...), got {item.strip()!r}")
            try:
                numbers_ = [float(v) for v in value.split(":")]
            except ValueError:
                raise ValueError(f"augment: {key} must be a number, got {value!r}") from None
            if key == "scale" and len(numbers_) != 2:
                raise ValueError(f"augment: scale must be a range LO:HI, got {value!r}")
            if key in ("rotate", "fill") and len(numbers_) != 1:
                raise ValueError(f"augment: {key} must be one number, got {value!r}")
            if len(numbers_) > 2:
                raise ValueError(f"augment: {key} takes at most two numbers (X:Y), got {value!r}")
            kwargs[key] = numbers_[0] if len(numbers_) == 1 else tuple(numbers_)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e).replace("Augment: ", "augment: ", 1)) from None

    # -- the work ------------------------------------------------------------------------
    def matrices(self, n: int, H: int, W: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 2, 3) float64: for each image, the map from output pixel centres (x = column,
        y = row) to the input points they sample, drawn from ``rng``."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"Augment: rng must be a numpy.random.Generator, got {type(rng).__name__}")
        shift = np.zeros((n, 2))
        angle = np.zeros(n)
        zoom = np.ones(n)
        mirror = np.ones(n)
        if self.translate != (0.0, 0.0):
            shift = rng.uniform(-1.0, 1.0, size=(n, 2)) * np.array(self.translate)
        if self.rotate:
            angle = np.deg2rad(rng.uniform(-self.rotate, self.rotate, size=n))
        if self.scale is not None:
            zoom = rng.uniform(self.scale[0], self.scale[1], size=n)
        if self.hflip:
            mirror = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        # Forward: p_out = c + shift + R(angle) (p_in - c) * zoom, mirrored first. Inverted:
        # p_in = c + A (p_out - c - shift) with A = mirror * R(-angle) / zoom, where R(a) turns
        # counter-clockwise on the screen (y points down).
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        theta = np.empty((n, 2, 3))
        theta[:, 0, 0], theta[:, 0, 1] = mirror * cos, mirror * -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        centre = np.array([(W - 1) / 2, (H - 1) / 2])
        moved = centre + shift  # (n, 2)
        theta[:, :, 2] = centre - np.einsum("nij,nj->ni", theta[:, :, :2], moved)
        return theta

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new batch: each image of ``x`` (N, C, H, W) warped by its own random map."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Augment: x must be a numpy.ndarray, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"Augment: x must be a batch of images (N, C, H, W); got shape {x.shape}")
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"Augment: x must have dtype float32 or float64; got {x.dtype}")
        theta = self.matrices(len(x), x.shape[2], x.shape[3], rng).astype(x.dtype)
        out = np.empty_like(x, order="C")
        backend.kernels().affine_warp_forward(out, x, theta, self.fill)
        return out
