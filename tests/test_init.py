"""Weight initialisers: shapes, dtypes, scales, orthogonality and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastlayers import init

RANDOM = ["normal", "uniform", "glorot_uniform", "glorot_normal", "he_normal", "he_uniform",
          "orthogonal", "truncated_normal"]
ALL = ["zeros", *RANDOM]


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 3, 3), (5, 1)])
@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_and_layout(name, shape):
    f = init.get(name)
    a = f(shape, 0)
    assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous
    b = f(shape, 0, dtype=np.float64)
    assert b.shape == shape and b.dtype == np.float64 and b.flags.c_contiguous
    if name != "zeros":
        assert np.all(np.isfinite(b)) and np.any(b != 0)
    # Drawn in float64, then rounded: one seed gives the same weights in both dtypes.
    np.testing.assert_array_equal(a, b.astype(np.float32))


@pytest.mark.parametrize("name", ALL)
def test_non_float_dtypes_are_refused(name):
    f = init.get(name)
    for dtype in (np.int32, np.float16, np.complex64, "bool"):
        with pytest.raises(TypeError, match="float32 or float64"):
            f((2, 2), 0, dtype=dtype)


def test_zeros_and_empty_shapes():
    assert not init.zeros((3, 2)).any()
    for name in ALL:
        a = init.get(name)((0, 4), 0)
        assert a.shape == (0, 4) and a.dtype == np.float32


# Sample standard deviation of n i.i.d. draws has relative standard error
# sqrt((kurtosis - 1) / (4 n)): 0.29% for a normal (kurtosis 3) and 0.18% for a uniform
# (kurtosis 1.8) at n = 60,000. A 2% tolerance is ~7 standard errors, so a correct
# initialiser essentially never fails, while a wrong formula (e.g. fan_in + fan_out
# instead of fan_in, a missing factor 2 or 3) is off by 10% or more.
N_SHAPE = (300, 200)  # fan_in 300, fan_out 200
CONV_SHAPE = (64, 16, 8, 8)  # fan_in 16*64 = 1024, fan_out 64*64 = 4096; 65,536 draws

TRUNC = math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))


@pytest.mark.parametrize(
    "name,shape,std,limit",
    [
        ("normal", N_SHAPE, 0.01, None),
        ("uniform", N_SHAPE, 0.1 / math.sqrt(12), 0.05),
        ("glorot_uniform", N_SHAPE, math.sqrt(2 / 500), math.sqrt(6 / 500)),
        ("glorot_normal", N_SHAPE, math.sqrt(2 / 500), None),
        ("he_normal", N_SHAPE, math.sqrt(2 / 300), None),
        ("he_uniform", N_SHAPE, math.sqrt(2 / 300), math.sqrt(6 / 300)),
        ("truncated_normal", N_SHAPE, 0.01 * TRUNC, 0.02),
        ("he_normal", CONV_SHAPE, math.sqrt(2 / 1024), None),
        ("glorot_uniform", CONV_SHAPE, math.sqrt(2 / (1024 + 4096)), math.sqrt(6 / (1024 + 4096))),
    ],
)
def test_empirical_std_matches_the_formula(name, shape, std, limit):
    a = init.get(name)(shape, 1234, dtype=np.float64)
    n = a.size
    assert abs(a.std() / std - 1) < 0.02, (a.std(), std)
    assert abs(a.mean()) < 5 * std / math.sqrt(n)
    if limit is not None:
        assert np.abs(a).max() <= limit
        # the bound is approached: the draws are not confined to a narrower range
        assert np.abs(a).max() > 0.99 * limit


def test_truncated_normal_stays_within_two_std():
    a = init.truncated_normal((400, 250), 7, dtype=np.float64, std=0.5, mean=1.0)
    assert np.all(np.abs(a - 1.0) <= 1.0)
    # without truncation, 4.6% of 100,000 draws would lie beyond 2 std
    assert abs(a.mean() - 1.0) < 5 * 0.5 / math.sqrt(a.size)


def test_fan_overrides_and_gain():
    a = init.he_normal((400, 300), 3, dtype=np.float64, fan_in=50)
    assert abs(a.std() / math.sqrt(2 / 50) - 1) < 0.02
    b = init.glorot_normal((400, 300), 3, dtype=np.float64, fan_in=100, fan_out=100)
    assert abs(b.std() / math.sqrt(2 / 200) - 1) < 0.02
    c = init.he_normal((400, 300), 3, dtype=np.float64, gain=3.0)
    np.testing.assert_allclose(c, 3 * init.he_normal((400, 300), 3, dtype=np.float64), rtol=1e-15)
    with pytest.raises(ValueError, match="fan_in"):
        init.he_normal((3, 3), 0, fan_in=0)


@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_orthogonal(dtype, atol):
    tall = init.orthogonal((8, 5), 0, dtype=dtype)
    np.testing.assert_allclose(tall.T @ tall, np.eye(5), atol=atol)
    wide = init.orthogonal((5, 8), 0, dtype=dtype)
    np.testing.assert_allclose(wide @ wide.T, np.eye(5), atol=atol)
    square = init.orthogonal((6, 6), 1, dtype=dtype)
    np.testing.assert_allclose(square.T @ square, np.eye(6), atol=atol)
    np.testing.assert_allclose(square @ square.T, np.eye(6), atol=atol)
    conv = init.orthogonal((4, 2, 3, 3), 0, dtype=dtype).reshape(4, -1)  # (FN, C*FH*FW): wide
    np.testing.assert_allclose(conv @ conv.T, np.eye(4), atol=atol)
    scaled = init.orthogonal((8, 5), 0, dtype=dtype, gain=2.0)
    np.testing.assert_allclose(scaled.T @ scaled, 4 * np.eye(5), atol=4 * atol)


def test_orthogonal_sign_correction():
    # With diag(R) made positive, Q's first column is the first normal column, normalised
    # (Gram-Schmidt), whatever sign convention the QR routine uses.
    q = init.orthogonal((7, 3), 5, dtype=np.float64)
    a = np.random.default_rng(5).standard_normal((7, 3))
    np.testing.assert_allclose(q[:, 0], a[:, 0] / np.linalg.norm(a[:, 0]), rtol=1e-12)
    with pytest.raises(ValueError, match="2 dimensions"):
        init.orthogonal((5,), 0)


@pytest.mark.parametrize("name", RANDOM)
def test_reproducible_from_a_seed(name):
    f = init.get(name)
    a, b = f((6, 5), 42), f((6, 5), 42)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, f((6, 5), 43))
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(f((6, 5), g1), f((6, 5), g2))
    # A Generator is used, not copied: a second draw from it continues its stream.
    assert not np.array_equal(f((6, 5), g1), f((6, 5), 9))


def test_as_generator():
    g = np.random.default_rng(0)
    assert init.as_generator(g) is g
    assert isinstance(init.as_generator(None), np.random.Generator)
    assert init.as_generator(3).random() == np.random.default_rng(3).random()
    assert init.as_generator(np.int64(3)).random() == np.random.default_rng(3).random()
    for bad in (1.5, True, "3", np.random.RandomState(0)):
        with pytest.raises(TypeError):
            init.as_generator(bad)
    with pytest.raises(ValueError):
        init.as_generator(-1)


def test_fans():
    assert init.fans((784, 100)) == (784, 100)
    assert init.fans((30, 1, 5, 5)) == (25, 750)
    assert init.fans((16, 3, 3, 2)) == (18, 96)
    assert init.fans((2, 10, 20)) == (10, 20)
    assert init.fans((7,)) == (7, 7)
    for bad in ((), (1, 2, 3, 4, 5)):
        with pytest.raises(ValueError):
            init.fans(bad)
    with pytest.raises(TypeError):
        init.fans((2.0, 3))
    with pytest.raises(ValueError):
        init.fans((-1, 3))


def test_get_names_aliases_and_errors():
    for name in ALL:
        assert init.get(name) is getattr(init, name)
    assert init.get("xavier_uniform") is init.glorot_uniform
    assert init.get("xavier_normal") is init.glorot_normal
    assert init.get("Xavier") is init.glorot_normal
    assert init.get("he") is init.he_normal
    assert init.get("kaiming_uniform") is init.he_uniform
    assert init.get("HE_NORMAL") is init.he_normal

    def custom(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None):
        return np.full(shape, 0.5, dtype)

    assert init.get(custom) is custom
    with pytest.raises(ValueError, match="unknown initialiser 'lecun'.*he_normal.*xavier_uniform"):
        init.get("lecun")
    with pytest.raises(TypeError):
        init.get(3)


def test_hyper_parameter_errors():
    with pytest.raises(ValueError, match="std"):
        init.normal((2, 2), 0, std=-1.0)
    with pytest.raises(ValueError, match="low"):
        init.uniform((2, 2), 0, low=1.0, high=0.0)
    with pytest.raises(TypeError, match="std"):
        init.truncated_normal((2, 2), 0, std="0.1")
    with pytest.raises(ValueError, match="gain"):
        init.orthogonal((2, 2), 0, gain=float("nan"))
    with pytest.raises(TypeError, match="shape"):
        init.he_normal("3x3", 0)
