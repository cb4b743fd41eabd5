"""gradcheck: it passes correct models, catches a wrong backward and refuses vacuous checks."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers
from fastlayers import layers, losses, models


class BrokenReLU(layers.ReLU):
    """A ReLU whose backward is off by a factor of 1.5: gradcheck must notice."""

    def backward(self, dout):
        return 1.5 * super().backward(dout)


def data(n=3, d=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def test_correct_model_passes_and_original_is_untouched(capsys):
    model = models.mlp(input_size=6, hidden=[5, 4], classes=4, batchnorm=True, dropout=0.3, seed=1)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x, t = data()
    errors = fastlayers.gradcheck(model, x, t, max_entries=None)
    names = [name for name, _ in model.named_parameters()]
    assert list(errors) == names + ["input"]
    assert max(errors.values()) < 1e-6, errors
    assert "relative error" in capsys.readouterr().out
    for k, v in model.state_dict().items():
        assert v.dtype == np.float32 and np.array_equal(v, before[k]), k


def test_catches_a_wrong_backward():
    model = layers.Sequential(layers.Affine(6, 5, rng=0), BrokenReLU(), layers.Affine(5, 4, rng=1))
    x, t = data()
    x[np.abs(x) < 0.1] = 0.5  # keep away from the ReLU kink
    errors = fastlayers.gradcheck(model, x, t, verbose=False)
    assert errors["0.W"] > 0.1 and errors["input"] > 0.1
    assert errors["2.W"] < 1e-6  # the layer after the fault is still right


def test_mse_loss_and_conv_model():
    model = models.simple_cnn(input_shape=(1, 8, 8), conv=2, kernel=3, hidden=4, classes=3, seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 8, 8))
    t = rng.standard_normal((2, 3))
    errors = fastlayers.gradcheck(model, x, t, loss=losses.MeanSquaredError(), max_entries=8, verbose=False)
    assert max(errors.values()) < 1e-6, errors


def test_refuses_batchnorm_batch_of_one():
    model = models.mlp(input_size=6, hidden=[5], classes=4, batchnorm=True)
    x, t = data(n=1)
    with pytest.raises(ValueError, match="batch of one"):
        fastlayers.gradcheck(model, x, t)
