"""Training is bit-for-bit reproducible: run to run, and across thread counts.

Every native kernel partitions its work independently of the thread count and reduces in a
fixed order (docs/kernels.md, "Reproducibility"), and dropout masks come from a counter-based
generator, so the same seed gives the same weights whether one or two threads ran the step.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers
from fastlayers import backend, data, losses, models, optim
from fastlayers.trainer import Trainer

MODELS = {
    "simple-cnn": lambda: models.simple_cnn(seed=0),
    "deep-cnn": lambda: models.deep_cnn(seed=0, batchnorm=True),
    "mlp-bn": lambda: models.mlp(input_size=784, hidden=[100] * 5, batchnorm=True, dropout=0.2, seed=0),
}


@pytest.fixture(scope="module")
def batches():
    (x, t), _ = data.load_bundled()
    return [(x[i * 100 : (i + 1) * 100], t[i * 100 : (i + 1) * 100]) for i in range(3)]


def train(build, batches, threads: int) -> tuple[list[float], dict[str, np.ndarray]]:
    previous = backend.get_num_threads()
    backend.set_num_threads(threads)
    try:
        model = build()
        trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=0, verbose=False)
        trajectory = [trainer.train_step(x, t)[0] for x, t in batches]
        return trajectory, model.state_dict()
    finally:
        backend.set_num_threads(previous)


@pytest.mark.skipif(
    not fastlayers.build_info()["openmp"],
    reason="without OpenMP the thread count is OpenBLAS's, whose threaded GEMMs round differently",
)
@pytest.mark.parametrize("name", list(MODELS))
def test_one_and_two_threads_give_identical_weights(batches, name):
    loss1, w1 = train(MODELS[name], batches, 1)
    loss2, w2 = train(MODELS[name], batches, 2)
    assert loss1 == loss2
    for key in w1:
        assert np.array_equal(w1[key], w2[key]), f"{name}: {key} differs between 1 and 2 threads"


def test_same_seed_same_weights_run_to_run(batches):
    _, a = train(MODELS["deep-cnn"], batches, 2)
    _, b = train(MODELS["deep-cnn"], batches, 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
