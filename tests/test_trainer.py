"""Trainer: sampling without replacement, partial batches, seeds, validation, early stopping."""

from __future__ import annotations

import numpy as np
import pytest

from fastlayers import layers, losses, optim
from fastlayers.trainer import Trainer, accuracy, step_decay


class Recorder(layers.Identity):
    """Passes x through and remembers the sample ids (column 0) of every training batch."""

    def __init__(self):
        super().__init__()
        self.batches: list[np.ndarray] = []

    def forward(self, x, train=None):
        if self.training if train is None else train:
            self.batches.append(x[:, 0].astype(np.int64).copy())
        return super().forward(x, train)


def make(seed=0, n=250, d=4, classes=3):
    rng = np.random.default_rng(123)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, 0] = np.arange(n)  # the sample id rides along in the first feature
    t = rng.integers(0, classes, n)
    rec = Recorder()
    model = layers.Sequential(rec, layers.Affine(d, classes, rng=7))
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=1e-4), seed=seed, verbose=False)
    return trainer, rec, x, t


def test_each_epoch_visits_every_sample_once_with_a_partial_last_batch():
    trainer, rec, x, t = make(n=250)
    trainer.fit(x, t, epochs=3, batch_size=100)
    assert [len(b) for b in rec.batches] == [100, 100, 50] * 3
    epochs = [np.concatenate(rec.batches[i : i + 3]) for i in range(0, 9, 3)]
    for order in epochs:
        assert np.array_equal(np.sort(order), np.arange(250))  # without replacement
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    assert not np.array_equal(epochs[0], np.arange(250))


def test_shuffle_false_keeps_the_given_order():
    trainer, rec, x, t = make(n=250)
    trainer.fit(x, t, epochs=2, batch_size=100, shuffle=False)
    assert [len(b) for b in rec.batches] == [100, 100, 50] * 2
    assert np.array_equal(np.concatenate(rec.batches), np.tile(np.arange(250), 2))


def test_same_seed_same_run_different_seed_different_order():
    a, rec_a, x, t = make(seed=5)
    b, rec_b, _, _ = make(seed=5)
    c, rec_c, _, _ = make(seed=6)
    for tr in (a, b, c):
        tr.fit(x, t, epochs=2, batch_size=64)
    assert all(np.array_equal(p, q) for p, q in zip(rec_a.batches, rec_b.batches))
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (_, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert np.array_equal(p.data, q.data)
    assert not np.array_equal(rec_a.batches[0], rec_c.batches[0])


def test_history_and_validation_split():
    trainer, rec, x, t = make(n=200)
    hist = trainer.fit(x, t, epochs=2, batch_size=50, validation_split=0.25)
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:
        assert set(h) == {"epoch", "loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
        assert 0 <= h["train_accuracy"] <= 1 and 0 <= h["val_accuracy"] <= 1 and h["seconds"] > 0
    seen = np.concatenate(rec.batches[:3])
    assert len(seen) == 150 and len(np.unique(seen)) == 150  # 50 held out, never trained on
    # The held-out samples are the same in every epoch.
    assert np.array_equal(np.sort(seen), np.sort(np.concatenate(rec.batches[3:6])))


def test_fit_rejects_bad_arguments():
    trainer, _, x, t = make()
    with pytest.raises(ValueError, match="samples"):
        trainer.fit(x, t[:-1])
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit(x, t, batch_size=0)
    with pytest.raises(ValueError, match="validation_split"):
        trainer.fit(x, t, validation_split=1.5)
    with pytest.raises(ValueError, match="not both"):
        trainer.fit(x, t, validation=(x, t), validation_split=0.1)
    with pytest.raises(ValueError, match="fit: the validation data holds no samples"):
        trainer.fit(x, t, validation=(x[:0], t[:0]))
    assert trainer.history == []  # refused before the first epoch


@pytest.mark.parametrize("method", ["predict", "evaluate"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_inference_refuses_a_bad_batch_size(method, bad):
    trainer, _, x, t = make()
    args = (x,) if method == "predict" else (x, t)
    with pytest.raises(ValueError, match=f"{method}: batch_size must be an int >= 1, got {bad!r}"):
        getattr(trainer, method)(*args, batch_size=bad)


def test_early_stopping_restores_the_best_weights(monkeypatch):
    trainer, _, x, t = make()
    scripted = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99])
    snapshots = []

    def fake_evaluate(xv, tv, batch_size=256):
        snapshots.append(trainer.model.state_dict())
        return {"loss": next(scripted), "accuracy": 0.0}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    hist = trainer.fit(x, t, epochs=7, batch_size=50, validation=(x[:10], t[:10]), patience=2)
    assert len(hist) == 4  # best at epoch 2, then `patience` epochs without improvement
    assert trainer.stop_reason == "no improvement of val_loss for 2 epochs"
    best = snapshots[1]
    assert not all(np.array_equal(best[k], snapshots[-1][k]) for k in best)
    for k, v in trainer.model.state_dict().items():
        assert np.array_equal(v, best[k]), k


def test_predict_and_evaluate_use_inference_mode():
    rng = np.random.default_rng(0)
    model = layers.Sequential(layers.Affine(6, 5, rng=1), layers.Dropout(0.5), layers.Affine(5, 3, rng=2))
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters()), verbose=False)
    x = rng.standard_normal((23, 6)).astype(np.float32)
    t = rng.integers(0, 3, 23)
    s1, s2 = trainer.predict(x, batch_size=4), trainer.predict(x, batch_size=100)
    assert s1.shape == (23, 3)
    np.testing.assert_array_equal(s1, s2)  # no dropout noise, batch-independent
    res = trainer.evaluate(x, t, batch_size=5)
    assert res["accuracy"] == accuracy(s2, t)
    assert model.training  # put back into training mode


def test_accuracy_accepts_labels_and_one_hot():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(scores, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert accuracy(scores, np.eye(2)[[1, 0, 0]]) == pytest.approx(2 / 3)


def test_predict_restores_each_layers_mode():
    model = layers.Sequential(layers.Affine(4, 3, rng=0), layers.Dropout(0.5), layers.Affine(3, 2, rng=1))
    model[1].eval()
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters()), verbose=False)
    trainer.predict(np.zeros((5, 4), np.float32))
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_the_trainer_turns_off_the_input_gradient():
    trainer, rec, x, t = make(n=50)
    assert trainer.model.needs_input_grad is False
    assert trainer.model.layers[0].needs_input_grad is False
    trainer.fit(x, t, epochs=1, batch_size=25)
    assert trainer.model.backward(np.ones((25, 3), np.float32)) is None


def test_lr_schedule_sets_the_rate_before_each_epoch():
    trainer, rec, x, t = make(n=50)
    hist = trainer.fit(x, t, epochs=5, batch_size=25, lr_schedule=step_decay(0.5, every=2, gamma=0.1))
    assert [h["lr"] for h in hist] == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005])
    assert trainer.optimizer.lr == pytest.approx(0.005)
    # Epochs count on over a second fit.
    assert trainer.fit(x, t, epochs=1, batch_size=25, lr_schedule=step_decay(0.5, every=2))[-1]["lr"] == pytest.approx(
        0.005
    )
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="every"):
            step_decay(0.1, bad)
    with pytest.raises(ValueError, match="gamma"):
        step_decay(0.1, 2, gamma=0)
    with pytest.raises(TypeError, match="lr_schedule"):
        trainer.fit(x, t, epochs=1, lr_schedule=0.01)
    with pytest.raises(ValueError, match="lr"):
        trainer.fit(x, t, epochs=1, lr_schedule=lambda epoch: -1.0)
