"""End to end: SimpleConvNet learns the bundled Fashion-MNIST on both backends, identically."""

from __future__ import annotations

import numpy as np
import pytest

from fastlayers import backend, data, losses, models, optim
from fastlayers.trainer import Trainer

from .tolerance import gamma

# Measured after one epoch of 20 Adam steps: 0.768, 0.764 and 0.720 for seeds 0, 1 and 2,
# identical on both backends. Chance is 0.10 and a model predicting the majority class scores about
# 0.11 on this balanced split, so 0.55 is clearly above chance while leaving room for the
# run-to-run effect of a different BLAS build.
ACCURACY_THRESHOLD = 0.55


@pytest.fixture(scope="module")
def bundled():
    (x_train, t_train), test = data.load_bundled()
    return (x_train[:2000], t_train[:2000]), test


def make_trainer(seed=0):
    model = models.simple_cnn(seed=seed)
    return Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=seed, verbose=False)


@pytest.mark.parametrize("name", ["native", "numpy"])
def test_simple_cnn_one_epoch_beats_chance_clearly(bundled, name):
    (x, t), (x_test, t_test) = bundled
    with backend.use(name):
        trainer = make_trainer()
        hist = trainer.fit(x, t, epochs=1, batch_size=100)
        result = trainer.evaluate(x_test, t_test)
    assert len(x_test) == 2000
    assert result["accuracy"] > ACCURACY_THRESHOLD, (name, result, hist)


# For each model, the longest float32 reduction on the path from the weights to the loss:
# the first Affine's dot product (SimpleConvNet 30*12*12 = 4320; DeepConvNet 64*4*4 = 1024;
# the MLP's 784 inputs).
TRAJECTORY_MODELS = {
    "simple-cnn": (lambda: models.simple_cnn(seed=0), 4320),
    "deep-cnn": (lambda: models.deep_cnn(seed=0), 1024),
    "mlp-bn": (lambda: models.mlp(input_size=784, hidden=[100] * 5, batchnorm=True, seed=0), 784),
}


def _trajectories(build, x, t) -> dict[str, np.ndarray]:
    trajectories = {}
    for name in ("native", "numpy"):
        with backend.use(name):
            model = build()
            trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=0, verbose=False)
            trajectories[name] = np.array(
                [trainer.train_step(x[i * 100 : (i + 1) * 100], t[i * 100 : (i + 1) * 100])[0] for i in range(20)]
            )
    return trajectories


@pytest.mark.parametrize("model_name", list(TRAJECTORY_MODELS))
def test_backends_agree_over_twenty_steps(bundled, model_name):
    (x, t), _ = bundled
    build, n = TRAJECTORY_MODELS[model_name]
    if model_name == "mlp-bn":
        x = x.reshape(len(x), -1)
    # The comparison is of summation orders, so the native convolutions run im2col here:
    # Winograd (the default for deep-cnn's 32- and 64-channel layers) rounds differently,
    # and under Adam, whose first updates are about lr * sign(gradient), a near-zero
    # gradient component that rounds to the other sign moves its weight by a whole step.
    # tests/test_native_winograd.py bounds the Winograd kernels instead.
    saved = backend.get_conv_algorithm()
    backend.set_conv_algorithm("im2col")
    try:
        trajectories = _trajectories(build, x, t)
    finally:
        backend.set_conv_algorithm(saved)
    native, oracle = trajectories["native"], trajectories["numpy"]
    assert oracle[-5:].mean() < oracle[:5].mean(), oracle  # it is learning, so the comparison means something
    # The backends differ only in the order of float32 sums. Each step's loss may differ by
    # the rounding bound of the longest such sum, and twenty steps compound at most linearly.
    rtol = 20 * 2 * gamma(n, np.float32)
    np.testing.assert_allclose(native, oracle, rtol=rtol)
