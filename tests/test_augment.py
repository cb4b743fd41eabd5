"""Data augmentation: the affine_warp_forward kernel (oracle and native) and fastlayers.augment.

The oracle is checked on cases whose answer is known exactly (identity, whole-pixel shifts,
quarter turns, mirrors, the centre of a zoom) and against the defining property of bilinear
interpolation (it reproduces a linear ramp); the native kernel must then equal the oracle bit
for bit, because it performs the same float64 operations in the same order without fused
multiply-adds (docs/kernels.md), so the tolerance that follows from the arithmetic is zero.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastlayers
from fastlayers import backend, losses, optim
from fastlayers.augment import Augment
from fastlayers.backend import _native
from fastlayers.trainer import Trainer, _rng_state

from .tolerance import gamma, unit_roundoff

IMPLS = {"native": _native, "numpy": fastlayers.reference}
DTYPES = [np.float32, np.float64]


def warp(impl, x, theta, fill=0.0):
    out = np.full_like(x, 123.0)
    with np.errstate(all="ignore"):
        IMPLS[impl].affine_warp_forward(out, x, np.asarray(theta, x.dtype), fill)
    return out


def batch_theta(rows, n):
    return np.tile(np.array(rows, np.float64), (n, 1, 1))


def images(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


# ----------------------------------------------------------------------------------------
# The kernel on cases with exact answers
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_returns_the_input_bit_for_bit(impl, dtype):
    x = images((3, 2, 7, 5), dtype)
    x.reshape(-1)[:6] = [-0.0, np.inf, -np.inf, np.nan, np.finfo(dtype).smallest_subnormal, -np.finfo(dtype).max]
    out = warp(impl, x, batch_theta([[1, 0, 0], [0, 1, 0]], 3), fill=np.nan)
    np.testing.assert_array_equal(bits(out), bits(x))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dx,dy", [(2, -1), (-3, 0), (0, 4), (9, 0)])
def test_whole_pixel_shift_moves_pixels_exactly_and_lets_the_fill_in(impl, dtype, dx, dy):
    x = images((2, 3, 6, 8), dtype)
    out = warp(impl, x, batch_theta([[1, 0, -dx], [0, 1, -dy]], 2), fill=0.75)
    want = np.full_like(x, 0.75)
    H, W = x.shape[2:]
    def span(d, n):  # (source, destination) of a shift by d along an axis of n, empty past the edge
        d = max(-n, min(n, d))
        return slice(max(0, -d), n - max(0, d)), slice(max(0, d), n + min(0, d))

    (src_r, dst_r), (src_c, dst_c) = span(dy, H), span(dx, W)
    want[:, :, dst_r, dst_c] = x[:, :, src_r, src_c]
    np.testing.assert_array_equal(bits(out), bits(want))
    assert (out == 0.75).sum() == x.shape[0] * x.shape[1] * (H * W - max(0, H - abs(dy)) * max(0, W - abs(dx)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_quarter_turn_of_a_square_image_is_rot90(impl, dtype):
    x = images((2, 3, 9, 9), dtype)
    W = x.shape[3]
    out = warp(impl, x, batch_theta([[0, -1, W - 1], [1, 0, 0]], 2))
    np.testing.assert_array_equal(out, np.rot90(x, axes=(2, 3)))
    back = warp(impl, x, batch_theta([[0, 1, 0], [-1, 0, W - 1]], 2))
    np.testing.assert_array_equal(back, np.rot90(x, k=-1, axes=(2, 3)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mirror_is_reversed_columns(impl, dtype):
    x = images((3, 2, 5, 8), dtype)
    out = warp(impl, x, batch_theta([[-1, 0, x.shape[3] - 1], [0, 1, 0]], 3))
    np.testing.assert_array_equal(out, x[..., ::-1])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [2.0, 0.5, 4.0])
def test_zoom_about_the_centre_keeps_the_centre_pixel(impl, dtype, s):
    x = images((2, 1, 9, 11), dtype)
    c = np.array([(11 - 1) / 2, (9 - 1) / 2])
    out = warp(impl, x, batch_theta([[1 / s, 0, c[0] - c[0] / s], [0, 1 / s, c[1] - c[1] / s]], 2))
    np.testing.assert_array_equal(out[:, :, 4, 5], x[:, :, 4, 5])
    if s == 2.0:  # an enlargement by 2 puts the pixel one step from the centre two steps away
        np.testing.assert_array_equal(out[:, :, 4, 7], x[:, :, 4, 6])
        np.testing.assert_array_equal(out[:, :, 6, 5], x[:, :, 5, 5])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bilinear_interpolation_reproduces_a_linear_ramp(impl, dtype):
    """Inside the image (all four neighbours present) bilinear interpolation of a + b*row +
    c*col is exact, so each output is the ramp at its source point up to rounding: the
    coordinates (two products and two sums in float64), the weights (three roundings each),
    the four-term sum, and the final rounding to the dtype."""
    H, W = 13, 17
    a, b, c = 3.0, 2.0, -1.0  # integers: the ramp is exact in float32 too
    rows, cols = np.indices((H, W))
    x = np.ascontiguousarray(np.broadcast_to(a + b * rows + c * cols, (6, 1, H, W)), dtype)
    rng = np.random.default_rng(5)
    theta = batch_theta([[1, 0, 0], [0, 1, 0]], 6) + rng.uniform(-0.3, 0.3, (6, 2, 3)) * [[1, 1, 8], [1, 1, 8]]
    theta = theta.astype(dtype).astype(np.float64)
    out = warp(impl, x, theta)
    ys, xs = rows.astype(np.float64), cols.astype(np.float64)
    sx = theta[:, 0, 0, None, None] * xs + theta[:, 0, 1, None, None] * ys + theta[:, 0, 2, None, None]
    sy = theta[:, 1, 0, None, None] * xs + theta[:, 1, 1, None, None] * ys + theta[:, 1, 2, None, None]
    inside = (sx >= 0) & (sx <= W - 1) & (sy >= 0) & (sy <= H - 1)
    assert inside.mean() > 0.5
    want = a + b * sy + c * sx
    u = unit_roundoff(np.float64)
    coord = gamma(3, np.float64) * (np.abs(theta[:, :, :2]).sum(axis=2).max() * max(H, W) + np.abs(theta[:, :, 2]).max())
    vmax = np.abs(x).max()
    bound = (gamma(3 + 4, np.float64) * vmax + coord * (abs(b) + abs(c)) * 2 + u * vmax
             + unit_roundoff(dtype) * np.abs(want))
    err = np.abs(out[:, 0].astype(np.float64) - want)
    assert (err[inside] <= bound[inside]).all(), err[inside].max()


@pytest.mark.parametrize("impl", IMPLS)
def test_points_outside_are_the_fill_and_nan_coordinates_are_nan(impl):
    x = images((1, 2, 4, 4), np.float32)
    theta = np.zeros((4, 2, 3))
    theta[0] = [[1, 0, -4], [0, 1, 0]]  # every source x in [-4, -1]: no pixel reaches the image
    theta[1] = [[1, 0, 0], [0, 1, np.inf]]
    theta[2] = [[1, 0, 0], [0, 1, np.nan]]
    theta[3] = [[1, 0, -0.5], [0, 1, 0]]  # half a pixel: column 0 blends the fill and x
    xs = np.repeat(x, 4, axis=0)
    out = warp(impl, xs, theta, fill=2.0)
    assert (out[0] == 2.0).all() and (out[1] == 2.0).all() and np.isnan(out[2]).all()
    np.testing.assert_array_equal(out[3, :, :, 0], np.float32(0.5) * 2.0 + np.float32(0.5) * x[0, :, :, 0])


def test_fill_is_rounded_to_the_dtype():
    x = images((1, 1, 2, 2), np.float32)
    theta = batch_theta([[1, 0, 10], [0, 1, 0]], 1)
    for impl in IMPLS:
        out = warp(impl, x, theta, fill=0.1)
        assert (out == np.float32(0.1)).all()
        assert np.isinf(warp(impl, x, theta, fill=1e300)).all()


# ----------------------------------------------------------------------------------------
# Native against the oracle
# ----------------------------------------------------------------------------------------

SHAPES = [(1, 1, 1, 1), (1, 1, 7, 5), (3, 2, 13, 11), (5, 3, 17, 17), (2, 1, 1, 31), (7, 4, 3, 2), (2, 1, 29, 28)]


def random_thetas(n, H, W, seed):
    rng = np.random.default_rng(seed)
    theta = Augment(translate=(W / 4, H / 4), rotate=180, scale=(0.5, 2.0), hflip=True).matrices(n, H, W, rng)
    wild = rng.standard_normal((n, 2, 3)) * [[1, 1, W], [1, 1, H]]
    return np.where(rng.random((n, 1, 1)) < 0.25, wild, theta)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("fill", [0.0, -1.5, np.nan])
def test_native_equals_the_oracle_bit_for_bit(dtype, shape, fill):
    x = images(shape, dtype, seed=sum(shape))
    theta = random_thetas(shape[0], shape[2], shape[3], seed=len(shape) + shape[0])
    got, want = warp("native", x, theta, fill), warp("numpy", x, theta, fill)
    np.testing.assert_array_equal(got, want)


def test_native_gives_the_same_bits_on_one_and_two_threads():
    x = images((16, 3, 28, 28), np.float32)
    theta = random_thetas(16, 28, 28, seed=3)
    threads = backend.get_num_threads()
    try:
        backend.set_num_threads(1)
        one = warp("native", x, theta)
        backend.set_num_threads(2)
        two = warp("native", x, theta)
    finally:
        backend.set_num_threads(threads)
    np.testing.assert_array_equal(bits(one), bits(two))


# ----------------------------------------------------------------------------------------
# fastlayers.augment
# ----------------------------------------------------------------------------------------

FULL = dict(translate=2, rotate=15, scale=(0.9, 1.1), hflip=True)


@pytest.mark.parametrize("bk", ["native", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_identity_setting_is_exact_and_draws_nothing(bk, dtype):
    x = images((4, 1, 6, 6), dtype)
    rng = np.random.default_rng(1)
    before = _rng_state(rng)
    with backend.use(bk):
        out = Augment()(x, rng)
    assert out is not x and out.dtype == dtype
    np.testing.assert_array_equal(bits(out), bits(x))
    assert _rng_state(rng) == before
    assert Augment(scale=(1, 1)) == Augment()


def test_hflip_alone_mirrors_some_images_and_keeps_the_others():
    x = images((64, 2, 5, 6), np.float32)
    out = Augment(hflip=True)(x, np.random.default_rng(0))
    flipped = [bool(np.array_equal(o, xi[..., ::-1])) for o, xi in zip(out, x)]
    kept = [bool(np.array_equal(o, xi)) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_centre_pixel_survives_any_zoom(dtype):
    """A zoom maps the centre c to itself up to the rounding of the matrices to the dtype
    (A = I/s and b = c - c/s, each entry rounded once) and of the coordinate arithmetic:
    |sx - c| <= gamma_3 * (|A| c + |b|) with |A| <= 2 and |b| <= c here. A neighbour then
    enters with at most that weight along each axis, times the largest difference of
    neighbouring values (< 1 for data in [1, 2)), and the result is rounded once more."""
    x = (1 + np.random.default_rng(2).random((32, 1, 9, 9))).astype(dtype)
    out = Augment(scale=(0.5, 3.0))(x, np.random.default_rng(4))
    c = 4.0
    coord = 2 * gamma(3, dtype) * (2 * c + c)  # float64 coordinates: gamma of the dtype covers them
    bound = 2 * coord * 1.0 + unit_roundoff(dtype) * 2.0
    err = np.abs(out[:, :, 4, 4].astype(np.float64) - x[:, :, 4, 4])
    assert (err <= bound).all(), (err.max(), bound)
    assert (out[:, :, 4, 5] != x[:, :, 4, 5]).any()  # the zoom did move the other pixels


def test_matrices_compose_about_the_centre_within_their_ranges():
    aug = Augment(translate=(2, 3), rotate=30, scale=(0.8, 1.25), hflip=True)
    theta = aug.matrices(500, 28, 20, np.random.default_rng(0))
    A, b = theta[:, :, :2], theta[:, :, 2]
    det = np.linalg.det(A)  # mirror * 1 / zoom**2
    zoom = 1 / np.sqrt(np.abs(det))
    assert ((zoom > 0.8 - 1e-12) & (zoom < 1.25 + 1e-12)).all()
    assert 150 < (det < 0).sum() < 350
    angle = np.degrees(np.arctan2(A[:, 1, 0], A[:, 1, 1]))
    assert (np.abs(angle) <= 30 + 1e-9).all() and np.abs(angle).max() > 25
    # The shifted centre comes from the centre: c + shift maps to c, and |shift| <= (2, 3).
    c = np.array([(20 - 1) / 2, (28 - 1) / 2])
    shift = np.linalg.solve(A, (c - b)[:, :, None])[:, :, 0] - c
    assert (np.abs(shift) <= [2 + 1e-9, 3 + 1e-9]).all() and (np.abs(shift) > [1.5, 2.5]).any(axis=0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_generator_state_same_batch_and_the_input_is_untouched(dtype):
    x = images((10, 3, 8, 7), dtype)
    keep = x.copy()
    aug = Augment(**FULL, fill=0.5)
    a = aug(x, np.random.default_rng(42))
    b = aug(x, np.random.default_rng(42))
    c = aug(x, np.random.default_rng(43))
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(bits(a), bits(b))
    assert not np.array_equal(a, c) and a.shape == x.shape and a.dtype == dtype
    with backend.use("numpy"):
        np.testing.assert_array_equal(bits(aug(x, np.random.default_rng(42))), bits(a))


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(translate=-1), ValueError, "translate must be >= 0"),
    (dict(translate=(1, 2, 3)), TypeError, "a pair"),
    (dict(translate="2"), TypeError, "a pair"),
    (dict(translate=np.inf), ValueError, "finite"),
    (dict(rotate=200), ValueError, "[0, 180]"),
    (dict(rotate=True), TypeError, "real number"),
    (dict(rotate=np.nan), ValueError, "finite"),
    (dict(scale=(1.2, 0.8)), ValueError, "0 < lo <= hi"),
    (dict(scale=(0, 1)), ValueError, "0 < lo <= hi"),
    (dict(scale=1.1), TypeError, "a pair"),
    (dict(hflip=1), TypeError, "hflip must be a bool"),
    (dict(fill=None), TypeError, "fill must be a real number"),
    (dict(fill=np.inf), ValueError, "finite"),
])
def test_bad_settings_are_refused(kwargs, exc, words):
    with pytest.raises(exc, match=r"^Augment: .*" + re.escape(words)):
        Augment(**kwargs)


def test_bad_batches_are_refused():
    aug, rng = Augment(rotate=5), np.random.default_rng(0)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        aug([[1.0]], rng)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\); got shape \(4, 784\)"):
        aug(np.zeros((4, 784), np.float32), rng)
    with pytest.raises(TypeError, match="float32 or float64; got uint8"):
        aug(np.zeros((1, 1, 2, 2), np.uint8), rng)
    with pytest.raises(TypeError, match="Generator"):
        aug(np.zeros((1, 1, 2, 2), np.float32), 0)
    with pytest.raises(ValueError, match="affine_warp_forward: argument 'x' must be C-contiguous"):
        aug(np.zeros((1, 1, 4, 4), np.float32)[..., ::2], rng)


def test_config_repr_and_parse():
    aug = Augment(translate=(1, 2.5), rotate=10, scale=(0.9, 1.1), hflip=True, fill=-1)
    assert aug.config() == {"translate": [1.0, 2.5], "rotate": 10.0, "scale": [0.9, 1.1], "hflip": True, "fill": -1.0}
    assert Augment(**aug.config()) == aug
    assert repr(aug) == "Augment(translate=(1.0, 2.5), rotate=10.0, scale=(0.9, 1.1), hflip=True, fill=-1.0)"
    assert repr(Augment(translate=2)) == "Augment(translate=2.0, rotate=0.0, scale=None, hflip=False, fill=0.0)"
    assert Augment.parse("translate=1:2.5, rotate=10,scale=0.9:1.1,hflip,fill=-1") == aug
    assert Augment.parse("translate=2") == Augment(translate=2)


@pytest.mark.parametrize("text,words", [
    ("", "expected settings"), ("shear=3", "unknown setting 'shear'"), ("rotate", "rotate needs a value"),
    ("rotate=ten", "must be a number"), ("scale=1.1", "scale must be a range LO:HI"), ("rotate=1:2", "one number"),
    ("hflip=1", "hflip takes no value"), ("translate=1:2:3", "at most two numbers"), ("rotate=1,rotate=2", "twice"),
    ("rotate=400", "augment: rotate must be in [0, 180]"), ("scale=2:1", "0 < lo <= hi"),
])
def test_parse_errors_name_the_problem(text, words):
    with pytest.raises(ValueError) as info:
        Augment.parse(text)
    assert words in str(info.value)


# ----------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    (x, t), _ = fastlayers.data.load_bundled()
    return x[:300], t[:300]


def trainer(augment=None, seed=0):
    model = _small_model(seed)
    return Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=seed, verbose=False,
                   augment=augment)


def _small_model(seed):
    rng = np.random.default_rng(seed)
    model = fastlayers.layers.Sequential(
        fastlayers.layers.Conv2d(1, 4, 5, rng=rng), fastlayers.layers.ReLU(), fastlayers.layers.MaxPool2d(2),
        fastlayers.layers.Flatten(), fastlayers.layers.Dropout(0.3), fastlayers.layers.Affine(4 * 12 * 12, 10, rng=rng))
    model.set_rng(rng)
    return model


def weights(tr):
    return {k: v.copy() for k, v in tr.model.state_dict().items()}


def test_identity_augmentation_changes_nothing_in_a_run(small):
    x, t = small
    plain, ident = trainer(), trainer(Augment())
    plain.fit(x, t, epochs=1, batch_size=64, validation_split=0.2)
    ident.fit(x, t, epochs=1, batch_size=64, validation_split=0.2)
    for k, v in weights(plain).items():
        assert v.tobytes() == weights(ident)[k].tobytes(), k
    assert [h["val_loss"] for h in plain.history] == [h["val_loss"] for h in ident.history]


def test_augmentation_leaves_the_shuffling_and_dropout_streams_alone(small):
    x, t = small
    plain, aug = trainer(), trainer(Augment(**FULL))
    plain.fit(x, t, epochs=1, batch_size=64)
    aug.fit(x, t, epochs=1, batch_size=64)
    gens = aug._generators()
    assert set(gens) == set(plain._generators()) | {"augment"}
    for name, g in plain._generators().items():
        assert _rng_state(g) == _rng_state(gens[name]), name
    assert any(not np.array_equal(v, weights(aug)[k]) for k, v in weights(plain).items())


def test_only_training_batches_are_augmented_and_the_same_seed_gives_the_same_run(small):
    x, t = small
    calls = []

    class Recording(Augment):
        def __call__(self, xb, rng):
            calls.append(len(xb))
            return super().__call__(xb, rng)

    first = trainer(Recording(**FULL))
    first.fit(x, t, epochs=2, batch_size=64, validation_split=0.2)
    assert calls == [64, 64, 64, 48] * 2  # 240 training samples; the 60 held out never pass
    first.evaluate(x, t)
    first.predict(x)
    assert len(calls) == 8
    second = trainer(Augment(**FULL))
    second.fit(x, t, epochs=2, batch_size=64, validation_split=0.2)
    for k, v in weights(first).items():
        assert v.tobytes() == weights(second)[k].tobytes(), k
    other = trainer(Augment(**FULL), seed=1)
    assert _rng_state(other._augment_rng) != _rng_state(trainer(Augment(**FULL))._augment_rng)


def test_trainer_refuses_something_that_is_not_an_augment():
    with pytest.raises(TypeError, match="augment must be a fastlayers.augment.Augment"):
        trainer(augment={"rotate": 10})
