"""Training checkpoints: Trainer.fit(checkpoint=PATH, resume=True) continues a run bit for bit.

A run of two epochs straight and a run that stops after one epoch (or inside an epoch) and
is resumed by a new process-like setup (a fresh model, optimizer and trainer, even with
other seeds) end with identical weights, BatchNorm statistics, optimizer state, history
and random generators.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import fastlayers
from fastlayers import checkpoint, data, layers, losses, models, optim
from fastlayers.augment import Augment
from fastlayers.checkpoint import CheckpointError
from fastlayers.trainer import Trainer, _rng_from_state, _rng_state, step_decay


@pytest.fixture(scope="module")
def bundled():
    (x, t), _ = data.load_bundled()
    return x[:500], t[:500]


def small_cnn(seed):
    rng = np.random.default_rng(seed)
    model = layers.Sequential(
        layers.Conv2d(1, 4, 5, rng=rng), layers.BatchNorm(4), layers.ReLU(), layers.MaxPool2d(2), layers.Flatten(),
        layers.Dropout(0.3), layers.Affine(4 * 12 * 12, 10, rng=rng))
    model.set_rng(rng)
    return model


BUILDERS = {
    "mlp": lambda seed: models.mlp(input_size=784, hidden=[32, 32], batchnorm=True, dropout=0.2, seed=seed),
    "cnn": small_cnn,
}


def make(name, seed=0, opt=optim.Adam):
    model = BUILDERS[name](seed)
    return Trainer(model, losses.SoftmaxCrossEntropy(), opt(model.parameters()), seed=seed, verbose=False)


def fit_args(**kw):
    args = dict(batch_size=64, validation_split=0.2, patience=4, lr_schedule=step_decay(2e-3, every=1, gamma=0.5))
    args.update(kw)
    return args


def inputs(name, bundled):
    x, t = bundled
    return (x.reshape(len(x), -1) if name == "mlp" else x), t


def state_of(trainer: Trainer) -> dict:
    """Every number a resumed run must reproduce: weights and buffers, optimizer state, the
    history without its timings, the stop reason and every generator's state."""
    out = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    out.update({f"optimizer/{k}": v for k, v in trainer.optimizer.state_dict().items()})
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in trainer.history]
    out["stop_reason"] = trainer.stop_reason
    out["rng"] = {name: _rng_state(g) for name, g in trainer._generators().items()}
    return out


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, np.ndarray):
            assert v.dtype == b[k].dtype and v.tobytes() == b[k].tobytes(), f"{k} differs"
        else:
            assert v == b[k], f"{k}: {v!r} != {b[k]!r}"


class Crash(Exception):
    pass


def crash_at(trainer: Trainer, call: int) -> None:
    """Makes the trainer's ``call``-th training step from now raise, as a killed process would stop."""
    real, count = trainer.train_step, [0]

    def step(x, t):
        count[0] += 1
        if count[0] == call:
            raise Crash(f"step {call}")
        return real(x, t)

    trainer.train_step = step


def trainer_section(path) -> dict:
    with safe_open(str(path), framework="numpy") as f:
        return json.loads(f.metadata()["trainer"])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_two_epochs_straight_equal_one_epoch_then_a_resumed_one(tmp_path, bundled, name):
    x, t = inputs(name, bundled)
    path = tmp_path / "run.safetensors"
    straight = make(name)
    straight.fit(x, t, epochs=2, **fit_args())

    first = make(name)
    first.fit(x, t, epochs=1, checkpoint=path, **fit_args())
    assert trainer_section(path)["run"]["epoch"] is None  # written between epochs
    # A new model, optimizer and trainer, with other seeds: everything comes from the file.
    resumed = make(name, seed=7)
    assert not np.array_equal(resumed.model.state_dict()["0.W"], straight.model.state_dict()["0.W"])
    history = resumed.fit(x, t, epochs=2, checkpoint=path, resume=True, **fit_args())
    assert [h["epoch"] for h in history] == [1, 2]
    assert_identical(state_of(straight), state_of(resumed))
    # The checkpoint now holds the end of epoch 2; a larger ``epochs`` extends the run.
    longer = make(name)
    longer.fit(x, t, epochs=3, **fit_args())
    resumed.fit(x, t, epochs=3, checkpoint=path, resume=True, **fit_args())
    assert_identical(state_of(longer), state_of(resumed))


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("crash", [6, 13])  # inside epoch 1 and inside epoch 2
def test_resuming_from_inside_an_epoch_is_exact(tmp_path, bundled, name, crash):
    x, t = inputs(name, bundled)  # 400 training samples in batches of 64: 7 steps an epoch
    path = tmp_path / "run.safetensors"
    straight = make(name)
    straight.fit(x, t, epochs=3, **fit_args())

    first = make(name)
    crash_at(first, crash)
    with pytest.raises(Crash):
        first.fit(x, t, epochs=3, checkpoint=path, checkpoint_every=3, **fit_args())
    run = trainer_section(path)["run"]
    # The last checkpoint before the crash: optimizer step 3 (epoch 1, step 3) or 12 (epoch 2, step 5).
    assert (run["epoch"], run["step"]) == ((1, 3) if crash == 6 else (2, 5))
    resumed = make(name, seed=11)
    resumed.fit(x, t, epochs=3, checkpoint=path, checkpoint_every=3, resume=True, **fit_args())
    assert_identical(state_of(straight), state_of(resumed))


def test_checkpointing_changes_nothing_in_the_run(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    plain, saved = make("mlp"), make("mlp")
    plain.fit(x, t, epochs=2, **fit_args())
    saved.fit(x, t, epochs=2, checkpoint=tmp_path / "c.safetensors", checkpoint_every=2, **fit_args())
    assert_identical(state_of(plain), state_of(saved))
    # The file holds the final state: fastlayers.load and load_optimizer read it.
    back = fastlayers.load(tmp_path / "c.safetensors")
    for k, v in plain.model.state_dict().items():
        assert np.array_equal(back.state_dict()[k], v), k
    opt = optim.Adam(back.parameters())
    checkpoint.load_optimizer(tmp_path / "c.safetensors", opt)
    assert opt.steps == plain.optimizer.steps == 14


def scripted(trainer: Trainer, losses_by_epoch: list[float]) -> None:
    """Validation losses chosen per epoch, so that early stopping happens where a test wants."""

    def evaluate(xv, tv, batch_size=256):
        return {"loss": losses_by_epoch[len(trainer.history)], "accuracy": 0.5}

    trainer.evaluate = evaluate


def test_resume_carries_the_early_stopping_state(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"
    script = [1.0, 0.5, 0.7, 0.8, 0.9]  # best at epoch 2, stop after epoch 4 with patience 2
    straight = make("mlp")
    scripted(straight, script)
    straight.fit(x, t, epochs=5, **fit_args(patience=2))
    assert len(straight.history) == 4 and straight.stop_reason == "no improvement of val_loss for 2 epochs"

    first = make("mlp")
    scripted(first, script)
    crash_at(first, 7 * 3 + 1)  # the first step of epoch 4: the checkpoint is the end of epoch 3
    with pytest.raises(Crash):
        first.fit(x, t, epochs=5, checkpoint=path, **fit_args(patience=2))
    section = trainer_section(path)
    assert section["run"]["waited"] == 1 and section["run"]["best_value"] == 0.5
    resumed = make("mlp", seed=3)
    scripted(resumed, script)
    resumed.fit(x, t, epochs=5, checkpoint=path, resume=True, **fit_args(patience=2))
    assert_identical(state_of(straight), state_of(resumed))  # the weights of epoch 2, restored

    # The run stopped early and stays stopped: resuming it again trains nothing.
    again = make("mlp", seed=4)
    scripted(again, script)
    again.fit(x, t, epochs=5, checkpoint=path, resume=True, **fit_args(patience=2))
    assert_identical(state_of(straight), state_of(again))


def test_resume_without_a_file_starts_the_run(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "new" / "run.safetensors"
    plain, started = make("mlp"), make("mlp")
    plain.fit(x, t, epochs=1, **fit_args())
    started.fit(x, t, epochs=1, checkpoint=path, resume=True, **fit_args())
    assert path.exists()
    assert_identical(state_of(plain), state_of(started))


def test_generators_of_every_kind_round_trip():
    for bits in (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64, np.random.MT19937):
        g = np.random.Generator(bits(123))
        g.integers(10, size=7)
        g.random()  # leaves a buffered half-word in some generators
        state = json.loads(json.dumps(_rng_state(g)))
        h = _rng_from_state(state, "here")
        assert type(h.bit_generator) is bits
        assert np.array_equal(g.integers(2**62, size=50), h.integers(2**62, size=50)), bits.__name__
    with pytest.raises(CheckpointError, match="unknown bit generator 'os.system'"):
        _rng_from_state({"bit_generator": "os.system", "state": {}}, "here")
    with pytest.raises(CheckpointError, match="not a valid PCG64 state"):
        _rng_from_state({"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}, "has_uint32": 0,
                         "uinteger": 0}, "here")


def test_a_model_with_a_non_default_generator_resumes_exactly(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"

    def philox_trainer(seed):
        trainer = make("mlp", seed=seed)
        trainer.model.set_rng(np.random.Generator(np.random.Philox(seed)))
        return trainer

    straight = philox_trainer(0)
    straight.fit(x, t, epochs=2, **fit_args())
    philox_trainer(0).fit(x, t, epochs=1, checkpoint=path, **fit_args())
    resumed = philox_trainer(9)
    resumed.fit(x, t, epochs=2, checkpoint=path, resume=True, **fit_args())
    assert_identical(state_of(straight), state_of(resumed))


# -- refusals ------------------------------------------------------------------------------


@pytest.fixture
def one_epoch(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"
    make("mlp").fit(x, t, epochs=1, checkpoint=path, **fit_args())
    return path, x, t


def refused(trainer, path, x, t, match, **kw):
    """Resuming raises CheckpointError matching ``match`` and leaves the trainer as it was."""
    before = state_of(trainer)
    args = fit_args()
    args.update(kw)
    with pytest.raises(CheckpointError, match=match):
        trainer.fit(x, t, epochs=2, checkpoint=path, resume=True, **args)
    assert_identical(before, state_of(trainer))


def test_resume_refuses_a_different_run(one_epoch):
    path, x, t = one_epoch
    other = x.copy()
    other[0, 0] += 1
    refused(make("mlp", seed=2), path, other, t, "training data differ")
    refused(make("mlp", seed=2), path, x[:-1], t[:-1], "training data differ")
    refused(make("mlp", seed=2), path, x, t, "validation_split is 0.25", validation_split=0.25)
    refused(make("mlp", seed=2), path, x, t, "monitors 'val_loss', this call 'val_accuracy'", monitor="val_accuracy")


def test_resume_refuses_another_batch_size_inside_an_epoch(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"
    first = make("mlp")
    crash_at(first, 5)
    with pytest.raises(Crash):
        first.fit(x, t, epochs=2, checkpoint=path, checkpoint_every=2, **fit_args())
    refused(make("mlp", seed=2), path, x, t, "inside an epoch trained with batch_size 64; got batch_size 32",
            batch_size=32)


def test_resume_refuses_another_model_or_optimizer(one_epoch):
    path, x, t = one_epoch
    wider = models.mlp(input_size=784, hidden=[33, 32], batchnorm=True, dropout=0.2, seed=0)
    trainer = Trainer(wider, losses.SoftmaxCrossEntropy(), optim.Adam(wider.parameters()), verbose=False)
    refused(trainer, path, x, t, "architecture differs")
    # The optimizer is loaded first, so a mismatch there leaves the model untouched too.
    refused(make("mlp", seed=2, opt=optim.SGD), path, x, t, "optimizer state does not fit: SGD")


def test_resume_refuses_a_model_checkpoint(tmp_path, one_epoch):
    _, x, t = one_epoch
    trainer = make("mlp")
    path = fastlayers.save(trainer.model, tmp_path / "model.safetensors", optimizer=trainer.optimizer)
    refused(make("mlp", seed=2), path, x, t, "holds no training state")


def rewrite(path, out, meta=None, tensors=None):
    """Copies the checkpoint at ``path`` to ``out`` with its trainer section or tensors changed
    (and the checksum recomputed, so that the damage is the only thing wrong)."""
    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    if meta is not None:
        section = json.loads(metadata["trainer"])
        meta(section)
        metadata["trainer"] = json.dumps(section)
    if tensors is not None:
        tensors(arrays)
    metadata["tensors_crc32"] = checkpoint._crc32((k, a.reshape(-1).view(np.uint8)) for k, a in arrays.items())
    save_file(arrays, str(out), metadata=metadata)
    return out


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(section):
        d = section
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return change


def _drop(*keys):
    def change(section):
        d = section
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return change


TRAINER_DAMAGE = {
    "run missing": (_drop("run"), None, "must be an object with keys"),
    "unknown run key": (_set("run", "extra", 1), None, "must be an object with keys"),
    "batch size zero": (_set("run", "batch_size", 0), None, "batch_size must be an int >= 1"),
    "epoch from the future": (_set("run", "epoch", 7), None, "run.epoch must be null or 2"),
    "first epoch from the future": (_set("run", "first_epoch", 5), None, "first_epoch must be an int in"),
    "position without an epoch": (_set("run", "step", 3), None, "position inside an epoch but no epoch"),
    "loss sum not a number": (_set("run", "loss_sum", "1.0"), None, "loss_sum must be a number"),
    "bad monitor": (_set("run", "key", "speed"), None, "monitored quantity"),
    "history not a list": (_set("history", {"epoch": 1}), None, "history must be a list"),
    "generator missing": (_drop("rng", "shuffle"), None, r"trainer.rng must be an object"),
    "foreign bit generator": (_set("rng", "shuffle", "bit_generator", "subprocess"), None, "unknown bit generator"),
    "broken generator state": (_set("rng", "seed", "state", "state", -5), None, "not a valid PCG64 state"),
    "split not a permutation": (None, lambda a: a.__setitem__("trainer/split", np.zeros_like(a["trainer/split"])),
                                "trainer/split must be a permutation"),
    "split missing": (None, lambda a: a.pop("trainer/split"), "trainer/split is missing"),
    "stray trainer tensor": (None, lambda a: a.__setitem__("trainer/extra", np.zeros(2, np.int64)),
                             "unexpected tensor trainer/extra"),
    "best weights of the wrong shape": (None, lambda a: a.__setitem__("trainer/best/0.W", np.zeros((2, 2), np.float32)),
                                        r"trainer/best/0.W is float32 \(2, 2\)"),
}


@pytest.mark.parametrize("case", list(TRAINER_DAMAGE))
def test_a_damaged_training_state_is_refused_with_nothing_changed(tmp_path, one_epoch, case):
    path, x, t = one_epoch
    meta, tensors, match = TRAINER_DAMAGE[case]
    bad = rewrite(path, tmp_path / "bad.safetensors", meta, tensors)
    refused(make("mlp", seed=2), bad, x, t, match)


def test_resume_needs_a_checkpoint_path(bundled):
    x, t = inputs("mlp", bundled)
    trainer = make("mlp")
    with pytest.raises(ValueError, match="need checkpoint=PATH"):
        trainer.fit(x, t, resume=True)
    with pytest.raises(ValueError, match="need checkpoint=PATH"):
        trainer.fit(x, t, checkpoint_every=5)
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
        trainer.fit(x, t, checkpoint="c.safetensors", checkpoint_every=0)
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        trainer.fit(x, t, checkpoint=3)


def test_an_augmented_run_resumes_exactly(tmp_path, bundled):
    """The augmentation generator is saved and restored: 2 epochs straight equal 1 epoch, a
    fresh setup with another seed, and 1 resumed epoch, bit for bit; and from inside an epoch."""
    x, t = inputs("cnn", bundled)
    aug = Augment(translate=2, rotate=10, scale=(0.9, 1.1), hflip=True)

    def build(seed=0, augment=aug):
        model = small_cnn(seed)
        return Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=seed, verbose=False,
                       augment=augment)

    path = tmp_path / "run.safetensors"
    straight = build()
    straight.fit(x, t, epochs=2, **fit_args())
    build().fit(x, t, epochs=1, checkpoint=path, **fit_args())
    assert "augment" in trainer_section(path)["rng"]
    resumed = build(seed=7)
    resumed.fit(x, t, epochs=2, checkpoint=path, resume=True, **fit_args())
    assert_identical(state_of(straight), state_of(resumed))
    assert "augment" in state_of(resumed)["rng"]

    inside = tmp_path / "inside.safetensors"
    first = build()
    crash_at(first, 10)
    with pytest.raises(Crash):
        first.fit(x, t, epochs=2, checkpoint=inside, checkpoint_every=3, **fit_args())
    again = build(seed=3)
    again.fit(x, t, epochs=2, checkpoint=inside, checkpoint_every=3, resume=True, **fit_args())
    assert_identical(state_of(straight), state_of(again))

    # The run must be continued with the augmentation it was trained with.
    for other in (None, Augment(translate=1)):
        with pytest.raises(CheckpointError, match="trained with augment"):
            build(augment=other).fit(x, t, epochs=2, checkpoint=path, resume=True, **fit_args())
