"""Callbacks of Trainer.fit: order and arguments of the hooks, records, stopping, errors, resume."""

from __future__ import annotations

import numpy as np
import pytest

from fastlayers import Callback, layers, losses, optim
from fastlayers.checkpoint import CheckpointError
from fastlayers.schedules import StepDecay
from fastlayers.trainer import Trainer

from .test_resume import Crash, assert_identical, bundled, crash_at, inputs, make, state_of  # noqa: F401


def tiny(seed=0, n=50):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    t = rng.integers(0, 3, n)
    model = layers.Sequential(layers.Affine(4, 8, rng=1), layers.ReLU(), layers.Affine(8, 3, rng=2))
    return Trainer(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), seed=seed,
                   verbose=False), x, t


class Log(Callback):
    """Records every hook call as a tuple, into a list it may share with other callbacks."""

    def __init__(self, name="log", calls=None):
        self.name, self.calls = name, [] if calls is None else calls

    def on_fit_begin(self, trainer):
        self.calls.append((self.name, "fit_begin", len(trainer.history)))

    def on_fit_end(self, trainer):
        self.calls.append((self.name, "fit_end", len(trainer.history)))

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append((self.name, "epoch_begin", epoch, trainer.optimizer.steps))

    def on_epoch_end(self, trainer, record):
        assert trainer.history[-1] is record
        self.calls.append((self.name, "epoch_end", record["epoch"], trainer.optimizer.steps))

    def on_batch_begin(self, trainer, step):
        self.calls.append((self.name, "batch_begin", step, trainer.optimizer.steps))

    def on_batch_end(self, trainer, step, loss):
        assert isinstance(loss, float) and np.isfinite(loss)
        self.calls.append((self.name, "batch_end", step, trainer.optimizer.steps))


def test_hooks_run_in_order_with_the_right_arguments():
    trainer, x, t = tiny()
    calls = []
    trainer.fit(x, t, epochs=2, batch_size=20, callbacks=[Log("a", calls), Log("b", calls)])  # 3 steps an epoch
    want = [("fit_begin", 0)]
    for epoch in (1, 2):
        done = 3 * (epoch - 1)
        want.append(("epoch_begin", epoch, done))
        for step in (1, 2, 3):
            want += [("batch_begin", step, done + step - 1), ("batch_end", step, done + step)]
        want.append(("epoch_end", epoch, done + 3))
    want.append(("fit_end", 2))
    # Each hook runs callback a, then b.
    assert calls == [(name, *w) for w in want for name in ("a", "b")]


def test_the_schedule_runs_before_the_other_callbacks():
    trainer, x, t = tiny()
    seen = []

    class SeesRate(Callback):
        def on_epoch_begin(self, trainer, epoch):
            seen.append(trainer.optimizer.lr)

    trainer.fit(x, t, epochs=3, batch_size=25, lr_schedule=StepDecay(0.4, every=1, gamma=0.5), callbacks=[SeesRate()])
    assert seen == [0.4, 0.2, 0.1]


def test_a_callback_can_add_to_the_history_record():
    trainer, x, t = tiny()

    class Norms(Callback):
        def on_epoch_end(self, trainer, record):
            record["w_norm"] = float(np.linalg.norm(trainer.model.layers[0].W.data))

    hist = trainer.fit(x, t, epochs=2, batch_size=25, callbacks=[Norms()])
    assert all("w_norm" in h for h in hist) and hist[0]["w_norm"] != hist[1]["w_norm"]


@pytest.mark.parametrize("hook", ["on_epoch_begin", "on_batch_end", "on_epoch_end"])
def test_stop_training_ends_the_run_after_the_current_epoch(hook):
    trainer, x, t = tiny()

    class StopInEpoch2(Callback):
        pass

    def stop(self, trainer, *args):
        if len(trainer.history) + (hook != "on_epoch_end") == 2:
            trainer.stop_training = True

    setattr(StopInEpoch2, hook, stop)
    log = Log()
    hist = trainer.fit(x, t, epochs=5, batch_size=25, callbacks=[StopInEpoch2(), log])
    assert [h["epoch"] for h in hist] == [1, 2]  # epoch 2 is completed and recorded
    assert trainer.stop_reason == f"stop_training set by StopInEpoch2.{hook} in epoch 2"
    assert log.calls[-1] == ("log", "fit_end", 2)
    # A new fit is a new run.
    trainer.fit(x, t, epochs=1, batch_size=25)
    assert trainer.stop_reason is None and not trainer.stop_training and len(trainer.history) == 3


def test_a_callback_may_give_its_own_stop_reason():
    trainer, x, t = tiny()

    class Budget(Callback):
        def on_batch_end(self, trainer, step, loss):
            if trainer.optimizer.steps == 3:
                trainer.stop_training, trainer.stop_reason = True, "step budget of 3 spent"

    hist = trainer.fit(x, t, epochs=5, batch_size=25, callbacks=[Budget()])
    assert len(hist) == 2 and trainer.stop_reason == "step budget of 3 spent"


class Boom(Exception):
    pass


@pytest.mark.parametrize("hook", ["on_fit_begin", "on_epoch_begin", "on_batch_begin", "on_batch_end", "on_epoch_end"])
def test_an_exception_in_a_callback_propagates_unchanged(hook):
    trainer, x, t = tiny()

    class Raises(Callback):
        pass

    error = Boom("from the callback")

    def raise_(self, trainer, *args):
        raise error

    setattr(Raises, hook, raise_)
    log = Log()
    with pytest.raises(Boom) as info:
        trainer.fit(x, t, epochs=2, batch_size=25, callbacks=[Raises(), log])
    assert info.value is error
    assert all(c[1] != "fit_end" for c in log.calls)
    assert trainer._where is None  # no step is left marked as running
    # The trainer stays usable.
    assert len(trainer.fit(x, t, epochs=1, batch_size=25)) >= 1


def test_bad_callbacks_are_refused():
    trainer, x, t = tiny()
    with pytest.raises(TypeError, match="callbacks must be a list of Callback"):
        trainer.fit(x, t, callbacks=Log())
    with pytest.raises(TypeError, match=r"callbacks\[1\] must be a fastlayers.Callback, got function"):
        trainer.fit(x, t, callbacks=[Log(), lambda trainer: None])
    log = Log()
    with pytest.raises(ValueError, match="the same callback is given twice"):
        trainer.fit(x, t, callbacks=[log, log])
    s = StepDecay(0.1, 1)
    with pytest.raises(ValueError, match="the same callback is given twice"):
        trainer.fit(x, t, lr_schedule=s, callbacks=[s])
    assert trainer.history == []


# -- checkpoints ------------------------------------------------------------------------


class CountSteps(Callback):
    """A callback with state: the steps it has seen, and the record key it adds."""

    def __init__(self):
        self.steps = 0

    def on_batch_end(self, trainer, step, loss):
        self.steps += 1

    def on_epoch_end(self, trainer, record):
        record["steps_seen"] = self.steps

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or not isinstance(state.get("steps"), int):
            raise ValueError(f"bad state {state!r}")
        self.steps = state["steps"]


def args(**kw):
    out = dict(batch_size=64, validation_split=0.2)
    out.update(kw)
    return out


def test_callback_state_resumes_exactly_from_inside_an_epoch(tmp_path, bundled):
    x, t = inputs("mlp", bundled)  # 7 steps an epoch
    path = tmp_path / "run.safetensors"
    straight, counter = make("mlp"), CountSteps()
    straight.fit(x, t, epochs=2, **args(callbacks=[counter]))
    assert [h["steps_seen"] for h in straight.history] == [7, 14]

    first = make("mlp")
    crash_at(first, 10)
    with pytest.raises(Crash):
        first.fit(x, t, epochs=2, checkpoint=path, checkpoint_every=4, **args(callbacks=[CountSteps()]))
    resumed, fresh = make("mlp", seed=3), CountSteps()
    resumed.fit(x, t, epochs=2, checkpoint=path, checkpoint_every=4, resume=True, **args(callbacks=[fresh]))
    assert_identical(state_of(straight), state_of(resumed))
    assert fresh.steps == 14


def test_a_stop_requested_inside_an_epoch_survives_a_resume(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"

    class StopAtStep2(Callback):
        def on_batch_end(self, trainer, step, loss):
            if trainer.optimizer.steps == 2:
                trainer.stop_training = True

    straight = make("mlp")
    straight.fit(x, t, epochs=3, **args(callbacks=[StopAtStep2()]))
    assert len(straight.history) == 1

    first = make("mlp")
    crash_at(first, 5)  # the checkpoint after step 4 holds the request
    with pytest.raises(Crash):
        first.fit(x, t, epochs=3, checkpoint=path, checkpoint_every=4, **args(callbacks=[StopAtStep2()]))
    resumed = make("mlp", seed=3)
    resumed.fit(x, t, epochs=3, checkpoint=path, resume=True, checkpoint_every=4, **args(callbacks=[StopAtStep2()]))
    assert_identical(state_of(straight), state_of(resumed))
    assert resumed.stop_reason == "stop_training set by StopAtStep2.on_batch_end in epoch 1"


def test_resume_refuses_other_stateful_callbacks_and_puts_loaded_ones_back(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"
    make("mlp").fit(x, t, epochs=1, checkpoint=path, **args(callbacks=[CountSteps(), CountSteps()]))
    trainer = make("mlp", seed=2)
    before = state_of(trainer)
    with pytest.raises(CheckpointError, match=r"\['CountSteps', 'CountSteps'\], this call's \['CountSteps'\]"):
        trainer.fit(x, t, epochs=2, checkpoint=path, resume=True, **args(callbacks=[CountSteps()]))

    class Picky(CountSteps):
        pass

    class Refuses(CountSteps):
        def load_state_dict(self, state):
            raise ValueError("not mine")

    # Same names would be needed; a subclass under another name is another callback.
    with pytest.raises(CheckpointError, match=r"this call's \['CountSteps', 'Picky'\]"):
        trainer.fit(x, t, epochs=2, checkpoint=path, resume=True, **args(callbacks=[CountSteps(), Picky()]))
    Refuses.__name__ = "CountSteps"
    first, second = CountSteps(), Refuses()
    with pytest.raises(CheckpointError, match="state of callback CountSteps does not fit: not mine"):
        trainer.fit(x, t, epochs=2, checkpoint=path, resume=True, **args(callbacks=[first, second]))
    assert first.steps == 0  # loaded (7), then put back
    assert_identical(before, state_of(trainer))


def test_a_checkpoint_without_callback_state_still_resumes(tmp_path, bundled):
    """Files written before callbacks existed lack the trainer's callbacks, stop_training and
    run.clip entries; a run without stateful callbacks resumes from them as before."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import save_file

    from fastlayers import checkpoint

    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"
    straight = make("mlp")
    straight.fit(x, t, epochs=2, **args())
    make("mlp").fit(x, t, epochs=1, checkpoint=path, **args())
    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    section = json.loads(metadata["trainer"])
    del section["callbacks"], section["stop_training"], section["run"]["clip"]
    metadata["trainer"] = json.dumps(section)
    optimizer = json.loads(metadata["optimizer"])
    del optimizer["clip_norm"], optimizer["clip_value"]
    metadata["optimizer"] = json.dumps(optimizer)
    metadata["tensors_crc32"] = checkpoint._crc32((k, a.reshape(-1).view(np.uint8)) for k, a in arrays.items())
    save_file(arrays, str(path), metadata=metadata)
    resumed = make("mlp", seed=5)
    resumed.fit(x, t, epochs=2, checkpoint=path, resume=True, **args())
    assert_identical(state_of(straight), state_of(resumed))
