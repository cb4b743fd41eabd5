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


def epoch_digest(name: str, samples: int) -> str:
    """SHA-256 of the weights, buffers, optimizer state and history loss after one epoch of
    ``fit`` (shuffled batches, dropout, BatchNorm) on the first ``samples`` bundled images."""
    import hashlib

    (x, t), _ = data.load_bundled()
    x, t = x[:samples], t[:samples]
    model = MODELS[name]()
    if name == "mlp-bn":
        x = x.reshape(len(x), -1)
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=0, verbose=False)
    history = trainer.fit(x, t, epochs=1, batch_size=100)
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.tobytes())
    for key, value in sorted(trainer.optimizer.state_dict().items()):
        h.update(key.encode())
        h.update(value.tobytes() if isinstance(value, np.ndarray) else repr(value).encode())
    h.update(repr(history[0]["loss"]).encode())
    return h.hexdigest()


EPOCHS = {"mlp-bn": 2000, "simple-cnn": 600}


def test_same_seed_same_weights_after_a_full_epoch_run_after_run():
    import subprocess
    import sys
    from pathlib import Path

    here = {name: epoch_digest(name, n) for name, n in EPOCHS.items()}
    assert here == {name: epoch_digest(name, n) for name, n in EPOCHS.items()}
    # A fresh process (other addresses, other allocation alignment) gives the same bits.
    code = ("from tests.test_reproducibility import EPOCHS, epoch_digest; "
            "print(*(epoch_digest(k, n) for k, n in EPOCHS.items()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == list(here.values())
