"""A training step whose loss or gradients are not finite is refused before the update.

The error names the step and the first parameter (in the model's order) whose gradient is
not finite, and every array of the model and the optimizer is bit-identical to what it was
before the step: parameters, optimizer state and step count, BatchNorm running statistics.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastlayers import layers, losses, models, optim
from fastlayers.parameter import Parameter
from fastlayers.trainer import NonFiniteError, Trainer


def snapshot(trainer: Trainer) -> dict:
    """Copies of every array the step must not change, and the optimizer's step count."""
    state = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    for k, v in trainer.optimizer.state_dict().items():
        state[f"optimizer/{k}"] = v.copy() if isinstance(v, np.ndarray) else v
    return state


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            assert v.dtype == after[k].dtype and v.tobytes() == after[k].tobytes(), f"{k} changed"
        else:
            assert v == after[k], f"{k}: {v!r} became {after[k]!r}"


class Recording(Trainer):
    """Keeps a snapshot taken just before each training step."""

    def train_step(self, x, t):
        self.before = snapshot(self)
        return super().train_step(x, t)


def bn_mlp(seed=0):
    return models.mlp(input_size=12, hidden=[16, 8], classes=3, batchnorm=True, dropout=0.2, seed=seed)


def data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 12)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("profile", [False, True])
def test_an_infinite_input_stops_fit_at_its_step_with_nothing_changed(profile):
    x, t = data()
    x[45, 3] = np.inf  # with shuffle=False and batches of 10: epoch 2, step 5
    x_clean = x.copy()
    x_clean[45, 3] = 0
    model = bn_mlp()
    trainer = Recording(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), verbose=False,
                        profile=profile)
    trainer.fit(x_clean, t, epochs=1, batch_size=10, shuffle=False)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(x, t, epochs=1, batch_size=10, shuffle=False)
    e = info.value
    assert isinstance(e, FloatingPointError)
    assert (e.epoch, e.step, e.optimizer_step) == (2, 5, 11)
    assert not np.isfinite(e.loss)
    # The first layer's weights meet the infinity first, and they come first in the model.
    assert e.parameter == "0.W" and e.layer == "Affine(12->16)"
    assert "epoch 2, step 5" in str(e) and "'0.W'" in str(e) and "Affine(12->16)" in str(e)
    assert_same(trainer.before, snapshot(trainer))
    assert len(trainer.history) == 1
    if profile:
        assert trainer.profile.steps == 10  # the refused step is not profiled


def test_a_huge_learning_rate_is_caught_with_the_weights_of_the_last_good_step():
    x, t = data(n=200)
    model = bn_mlp(seed=1)
    trainer = Recording(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=1e30), verbose=False)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(x, t, epochs=5, batch_size=20)
    e = info.value
    assert e.epoch == 1 and e.step >= 2  # the first step is finite; its update is what explodes
    assert_same(trainer.before, snapshot(trainer))
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    # The parameter named is the first one, in the model's order, whose gradient is not finite.
    named = model.named_parameters()
    first_bad = next(n for n, p in named if not np.isfinite(p.grad).all())
    assert e.parameter == first_bad
    assert f"{e.parameter!r}" in str(e)


def test_a_finite_loss_with_an_overflowing_gradient_is_refused():
    # y = (x W1) W2 = 1e38 is a finite float32 and its squared error a finite double, but
    # dW2 = (x W1)^T dy = 1e19 * 1e38 overflows float32.
    model = layers.Sequential(layers.Affine(1, 1, rng=0), layers.Affine(1, 1, rng=1))
    model[0].W.data[...] = 1.0
    model[1].W.data[...] = 1e19
    trainer = Trainer(model, losses.MeanSquaredError(), optim.Momentum(model.parameters()), verbose=False)
    before = snapshot(trainer)
    x, t = np.full((2, 1), 1e19, np.float32), np.zeros((2, 1), np.float32)
    with pytest.raises(NonFiniteError) as info:
        trainer.train_step(x, t)
    e = info.value
    assert np.isfinite(e.loss)
    assert (e.epoch, e.step, e.optimizer_step) == (None, None, 1)
    assert e.parameter == "0.W"
    assert "optimizer step 1" in str(e) and "is finite" not in str(e)
    assert_same(before, snapshot(trainer))


class Poison(layers.Layer):
    """Passes its input through, and from the ``at``-th backward on makes its own scale
    parameter's gradient NaN: a gradient that goes bad in the middle of the model."""

    def __init__(self, n, at):
        self.scale = Parameter(np.ones(n, np.float32), "scale")
        self.at, self.calls = at, 0

    def _own_parameters(self):
        return [("scale", self.scale)]

    def forward(self, x, train=None):
        return x

    def backward(self, dout):
        self.calls += 1
        if self.calls >= self.at:
            self.scale.grad[1] = np.nan
        return dout


def test_the_error_names_a_bad_gradient_in_the_middle_of_a_nested_model():
    inner = layers.Sequential(layers.Affine(6, 4, rng=1), layers.BatchNorm(4), Poison(4, at=3))
    model = layers.Sequential(layers.Affine(5, 6, rng=0), inner, layers.ReLU(), layers.Affine(4, 2, rng=2))
    trainer = Recording(model, losses.SoftmaxCrossEntropy(), optim.RMSprop(model.parameters()), verbose=False)
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 2, 40)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(x, t, epochs=1, batch_size=10, shuffle=False)
    e = info.value
    assert (e.epoch, e.step) == (1, 3) and np.isfinite(e.loss)
    assert e.parameter == "1.2.scale" and e.layer == "Poison"
    assert "1 NaN" in str(e)
    # BatchNorm's running statistics moved in the refused step's forward pass; they are back.
    assert_same(trainer.before, snapshot(trainer))
    assert not np.array_equal(inner[1].running_mean, np.zeros(4, np.float32))


def test_nonfinite_gradient_confirms_an_overflowing_float64_sum():
    # Two finite float64 gradients whose absolute sum overflows: nothing is wrong.
    a = Parameter(np.zeros(2, np.float64), "a")
    b = Parameter(np.zeros(3, np.float64), "b")
    opt = optim.SGD([a, b])
    a.grad[...] = 1.5e308
    b.grad[...] = -1.5e308
    assert opt.nonfinite_gradient() is None
    b.grad[2] = -np.inf
    assert opt.nonfinite_gradient() == 1
    a.grad[0] = np.nan
    assert opt.nonfinite_gradient() == 0
    a.grad[...] = 0
    b.grad[...] = 0
    assert opt.nonfinite_gradient() is None


def test_nonfinite_gradient_works_on_parameters_rebound_behind_the_optimizer():
    p = Parameter(np.zeros(4, np.float32), "p")
    opt = optim.Adam([p])
    p.grad = np.array([0, 1, np.inf, 0], np.float32)  # no longer a view of the flat buffer
    assert opt.nonfinite_gradient() == 0
    p.grad = np.zeros(4, np.float32)
    assert opt.nonfinite_gradient() is None


def test_check_finite_false_trains_identically_and_reports_only_the_loss_after_the_update():
    x, t = data(n=200)
    runs = []
    for check in (True, False):
        model = bn_mlp(seed=2)
        trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), verbose=False,
                          check_finite=check)
        trainer.fit(x, t, epochs=2, batch_size=32)
        runs.append(model.state_dict())
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])

    x[7, 0] = np.nan
    model = bn_mlp(seed=2)
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters()), verbose=False,
                      check_finite=False)
    with pytest.raises(FloatingPointError, match="epoch 1, step 1.*has been applied") as info:
        trainer.fit(x, t, epochs=1, batch_size=20, shuffle=False)
    assert not isinstance(info.value, NonFiniteError)
    assert not np.isfinite(model[0].W.data).all()  # what the guard exists to prevent
