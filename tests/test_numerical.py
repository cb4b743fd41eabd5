"""numerical_gradient itself: the yardstick must be right before it measures anything."""

from __future__ import annotations

import numpy as np
import pytest

from fastlayers.numerical import numerical_gradient

from .tolerance import numerical_gradient_rtol


def test_matches_an_analytic_gradient_and_restores_x():
    x = np.random.default_rng(0).standard_normal((3, 4))
    before = x.copy()
    g = numerical_gradient(lambda: float(np.sum(x**3)), x)
    np.testing.assert_allclose(g, 3 * before**2, rtol=numerical_gradient_rtol(), atol=1e-8)
    assert np.array_equal(x, before)


def test_selected_indices_in_order():
    x = np.random.default_rng(1).standard_normal(10)
    g = numerical_gradient(lambda: float(np.sum(np.sin(x))), x, indices=[7, 2, 2])
    np.testing.assert_allclose(g, np.cos(x[[7, 2, 2]]), rtol=numerical_gradient_rtol(), atol=1e-8)


def test_refuses_what_it_cannot_perturb():
    with pytest.raises(TypeError, match="floating"):
        numerical_gradient(lambda: 0.0, np.arange(3))
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        numerical_gradient(lambda: 0.0, ro)
    with pytest.raises(ValueError, match="contiguous"):
        numerical_gradient(lambda: 0.0, np.zeros((4, 4))[:, :3])


def test_textbook_form_f_of_x():
    # The textbook passes f(W) and ignores W, reading the perturbed array through the network.
    x = np.random.default_rng(2).standard_normal(5)
    seen = []

    def loss(w):
        seen.append(w)
        return float(np.sum(w**2))

    np.testing.assert_allclose(numerical_gradient(loss, x), 2 * x, rtol=numerical_gradient_rtol(), atol=1e-8)
    assert all(w is x for w in seen)
    np.testing.assert_allclose(numerical_gradient(lambda w=None: float(np.sum(x**2)), x), 2 * x,
                               rtol=numerical_gradient_rtol(), atol=1e-8)  # callable without arguments: f()
    with pytest.raises(TypeError, match="callable"):
        numerical_gradient(1.0, x)
