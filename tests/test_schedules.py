"""Learning-rate schedules: closed forms, reduce-on-plateau, their place in the loop, resume, CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from fastlayers import Callback, cli, layers, losses, optim, schedules
from fastlayers.checkpoint import CheckpointError
from fastlayers.schedules import CosineAnnealing, ExponentialDecay, ReduceOnPlateau, StepDecay
from fastlayers.trainer import Trainer, step_decay

from .test_resume import (  # noqa: F401 - bundled is a fixture
    Crash, assert_identical, bundled, crash_at, inputs, make, rewrite, state_of, trainer_section)


# -- closed forms -----------------------------------------------------------------------


def test_step_decay_values():
    s = StepDecay(0.5, every=3, gamma=0.2)
    assert [s(n) for n in (1, 2, 3, 4, 6, 7, 10)] == [0.5, 0.5, 0.5, 0.5 * 0.2, 0.5 * 0.2, 0.5 * 0.2**2, 0.5 * 0.2**3]
    assert step_decay(0.5, 3, 0.2)(7) == s(7) and isinstance(step_decay(0.5, 3), StepDecay)
    # The old home of step_decay still works.
    from fastlayers.trainer import step_decay as old

    assert old is schedules.step_decay


def test_exponential_values():
    s = ExponentialDecay(0.1, gamma=0.9)
    assert s(1) == 0.1 and s(2) == 0.1 * 0.9 and s(11) == 0.1 * 0.9**10


@pytest.mark.parametrize("min_lr", [0.0, 0.01])
def test_cosine_values_without_warmup_follow_pytorch(min_lr):
    lr, total = 0.1, 8
    s = CosineAnnealing(lr, total, min_lr=min_lr)
    for n in range(1, total + 4):
        e = n - 1  # PyTorch's epoch counter, from 0
        want = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * min(e, total) / total)) / 2
        assert s(n) == pytest.approx(want, rel=4e-16, abs=1e-18), n
    assert s(1) == lr
    assert s(total + 1) == min_lr and s(total + 100) == min_lr
    assert s(total // 2 + 1) == pytest.approx((lr + min_lr) / 2, rel=4e-16)


def test_cosine_warmup():
    lr, total, warmup, min_lr = 0.2, 10, 4, 0.02
    s = CosineAnnealing(lr, total, min_lr=min_lr, warmup=warmup)
    assert [s(n) for n in (1, 2, 3, 4)] == [lr * 1 / 4, lr * 2 / 4, lr * 3 / 4, lr]
    assert s(5) == lr  # the first unit after the warm-up starts the cosine at its top
    # Halfway through the annealing part (t - warmup = 3 of 6):
    assert s(8) == pytest.approx((lr + min_lr) / 2, rel=4e-16)
    assert s(11) == min_lr and s(50) == min_lr
    # Monotone: non-decreasing in the warm-up, non-increasing after.
    rates = [s(n) for n in range(1, 13)]
    assert all(a <= b for a, b in zip(rates[:4], rates[1:5]))
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


@pytest.mark.parametrize("make_bad, match", [
    (lambda: StepDecay(0.1, 0), "every must be an int >= 1"),
    (lambda: StepDecay(0.1, 2.0), "every must be an int >= 1"),
    (lambda: StepDecay(-0.1, 2), "lr must be a finite number >= 0"),
    (lambda: StepDecay(0.1, 2, gamma=0), "gamma must be a finite number > 0"),
    (lambda: ExponentialDecay(0.1, gamma=float("nan")), "gamma must be a finite number > 0"),
    (lambda: ExponentialDecay(float("inf"), 0.9), "lr must be a finite number >= 0"),
    (lambda: CosineAnnealing(0.1, 0), "total must be an int >= 1"),
    (lambda: CosineAnnealing(0.1, 5, warmup=5), "warmup must be < total"),
    (lambda: CosineAnnealing(0.1, 5, warmup=-1), "warmup must be an int >= 0"),
    (lambda: CosineAnnealing(0.1, 5, min_lr=0.2), "min_lr must be <= lr"),
    (lambda: CosineAnnealing(0.1, 5, per_step=1), "per_step must be a bool"),
    (lambda: ReduceOnPlateau(factor=1.0), r"factor must be in \(0, 1\)"),
    (lambda: ReduceOnPlateau(patience=0), "patience must be an int >= 1"),
    (lambda: ReduceOnPlateau(cooldown=-1), "cooldown must be an int >= 0"),
    (lambda: ReduceOnPlateau(threshold=-1e-4), "threshold must be a finite number >= 0"),
    (lambda: ReduceOnPlateau(threshold_mode="relative"), "threshold_mode must be 'rel' or 'abs'"),
    (lambda: ReduceOnPlateau(mode="up"), "mode must be 'auto', 'min' or 'max'"),
    (lambda: ReduceOnPlateau(min_lr=float("nan")), "min_lr must be a finite number >= 0"),
    (lambda: ReduceOnPlateau(monitor=3), "monitor must be a key"),
    (lambda: StepDecay(0.1, 2)(0), "epoch or step number must be an int >= 1"),
])
def test_bad_arguments_are_refused_clearly(make_bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_bad()


# -- reduce on plateau on scripted metrics ------------------------------------------------


class FakeOptimizer:
    def __init__(self, lr):
        self.lr = lr


def run_plateau(values, **kw):
    """The rate after each epoch whose monitored value is values[i], starting from 1.0."""
    p, opt = ReduceOnPlateau(**kw), FakeOptimizer(1.0)
    out = []
    for v in values:
        p.step(v, opt)
        out.append(opt.lr)
    return out


def test_plateau_reduces_after_patience_epochs_without_improvement():
    # Best 1.0 at epoch 1; epochs 2 and 3 are no better: with patience 2 the rate drops after epoch 3.
    assert run_plateau([1.0, 1.0, 1.2, 1.1, 1.3], patience=2, factor=0.5) == [1, 1, 0.5, 0.5, 0.25]
    # An improvement resets the count.
    assert run_plateau([1.0, 1.1, 0.9, 1.0, 1.0], patience=2, factor=0.5) == [1, 1, 1, 1, 0.5]


def test_plateau_threshold_rel_and_abs():
    # 0.99995 is better than 1.0 by 5e-5 < 1e-4 relative: not an improvement.
    assert run_plateau([1.0, 0.99995], patience=1, factor=0.5) == [1, 0.5]
    assert run_plateau([1.0, 0.9998], patience=1, factor=0.5) == [1, 1]
    # Absolute threshold 0.1: 0.95 is not enough, 0.85 is.
    assert run_plateau([1.0, 0.95], patience=1, factor=0.5, threshold=0.1, threshold_mode="abs") == [1, 0.5]
    assert run_plateau([1.0, 0.85], patience=1, factor=0.5, threshold=0.1, threshold_mode="abs") == [1, 1]


def test_plateau_max_mode_for_accuracy():
    kw = dict(monitor="val_accuracy", patience=1, factor=0.5, threshold=0.0)
    assert ReduceOnPlateau(**kw).mode == "max"
    assert run_plateau([0.5, 0.6, 0.6, 0.7, 0.65], **kw) == [1, 1, 0.5, 0.5, 0.25]


def test_plateau_cooldown():
    # patience 1, cooldown 2: after the reduction at epoch 2, epochs 3 and 4 are not counted;
    # epoch 5 reduces again and starts a new cooldown, so epoch 6 does not.
    got = run_plateau([1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0], patience=1, cooldown=2, factor=0.5)
    assert got == [1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    # Without cooldown every bad epoch reduces.
    assert run_plateau([1.0, 2.0, 2.0, 2.0], patience=1, factor=0.5) == [1, 0.5, 0.25, 0.125]


def test_plateau_min_lr_floor_and_nan():
    got = run_plateau([1.0, 2, 2, 2, 2], patience=1, factor=0.1, min_lr=0.005)
    assert got == [1, 0.1, 0.1 * 0.1, 0.005, 0.005]
    # NaN never improves (and is never taken as the best).
    p, opt = ReduceOnPlateau(patience=1, factor=0.5), FakeOptimizer(1.0)
    p.step(float("nan"), opt)
    assert p.best is None and opt.lr == 0.5
    p.step(3.0, opt)
    assert p.best == 3.0


def test_plateau_state_round_trips_and_is_validated():
    p, opt = ReduceOnPlateau(patience=3, cooldown=2), FakeOptimizer(1.0)
    for v in (1.0, 1.5, 1.5):
        p.step(v, opt)
    q = ReduceOnPlateau(patience=3, cooldown=2)
    q.load_state_dict(json.loads(json.dumps(p.state_dict())))
    assert q.state_dict() == p.state_dict() == {"best": 1.0, "bad_epochs": 2, "cooldown_left": 0}
    for bad in ({"best": 1.0}, {"best": "x", "bad_epochs": 0, "cooldown_left": 0},
                {"best": None, "bad_epochs": -1, "cooldown_left": 0}, [1, 2]):
        with pytest.raises(ValueError):
            q.load_state_dict(bad)
        assert q.state_dict() == p.state_dict()


# -- in the training loop ---------------------------------------------------------------


def tiny(seed=0, n=60, opt=optim.SGD, **opt_kw):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    t = rng.integers(0, 3, n)
    model = layers.Sequential(layers.Affine(4, 8, rng=1), layers.ReLU(), layers.Affine(8, 3, rng=2))
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), opt(model.parameters(), **opt_kw), seed=seed, verbose=False)
    return trainer, x, t


def test_per_epoch_schedule_sets_the_rate_before_each_epoch_and_the_record_keeps_it():
    trainer, x, t = tiny(lr=1.0)
    s = CosineAnnealing(0.3, total=4, min_lr=0.01, warmup=1)
    hist = trainer.fit(x, t, epochs=5, batch_size=20, lr_schedule=s)
    assert [h["lr"] for h in hist] == [s(n) for n in range(1, 6)]


def test_per_step_schedule_sets_the_rate_before_every_step():
    trainer, x, t = tiny(lr=1.0)
    s = CosineAnnealing(0.3, total=9, min_lr=0.01, warmup=2, per_step=True)
    seen = []
    real_step = trainer.optimizer.step

    def step():
        seen.append(trainer.optimizer.lr)
        real_step()

    trainer.optimizer.step = step
    hist = trainer.fit(x, t, epochs=4, batch_size=20, lr_schedule=s)  # 3 steps an epoch
    assert seen == [s(n) for n in range(1, 13)]
    # The record's lr is the rate of the epoch's last step.
    assert [h["lr"] for h in hist] == [s(3), s(6), s(9), s(12)]


def test_plateau_in_fit_reduces_after_the_record_and_falls_back_to_the_training_loss():
    trainer, x, t = tiny(lr=0.5)
    p = ReduceOnPlateau(patience=1, factor=0.5, threshold=0.0)
    # Scripted training losses: the record's loss is replaced by a callback placed before the schedule.

    class ScriptLoss(Callback):
        def __init__(self, values):
            self.values = values

        def on_epoch_end(self, trainer, record):
            record["loss"] = self.values[record["epoch"] - 1]

    hist = trainer.fit(x, t, epochs=5, batch_size=20, callbacks=[ScriptLoss([3.0, 2.0, 2.5, 2.0, 1.0]), p])
    # The epoch that triggers the reduction still records the rate it trained with.
    assert [h["lr"] for h in hist] == [0.5, 0.5, 0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="monitor 'speed' is not in the epoch's record"):
        tiny()[0].fit(x, t, epochs=1, lr_schedule=ReduceOnPlateau(monitor="speed"))


# -- resume -----------------------------------------------------------------------------


def fit_args(schedule_factory, **kw):
    args = dict(batch_size=64, validation_split=0.2, lr_schedule=schedule_factory())
    args.update(kw)
    return args


SCHEDULES = {
    # The validation losses of this small run fall steadily; a large threshold makes the
    # plateau schedule reduce within two epochs, so that its state matters after the resume.
    "plateau": lambda: ReduceOnPlateau(patience=1, factor=0.5, threshold=0.5, cooldown=1),
    "cosine per step": lambda: CosineAnnealing(3e-3, total=14, min_lr=1e-4, warmup=3, per_step=True),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_two_epochs_straight_equal_one_plus_a_resumed_one(tmp_path, bundled, name):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"
    straight = make("mlp")
    schedule = SCHEDULES[name]()
    straight.fit(x, t, epochs=3, **fit_args(lambda: schedule))
    rates = [h["lr"] for h in straight.history]
    assert rates[2] < rates[1] <= rates[0], rates  # the schedule lowered the rate after the resume point

    make("mlp").fit(x, t, epochs=1, checkpoint=path, **fit_args(SCHEDULES[name]))
    resumed = make("mlp", seed=7)
    fresh = SCHEDULES[name]()
    resumed.fit(x, t, epochs=3, checkpoint=path, resume=True, **fit_args(lambda: fresh))
    assert_identical(state_of(straight), state_of(resumed))
    assert fresh.state_dict() == schedule.state_dict()
    if name == "plateau":
        assert trainer_section(path)["callbacks"] == [{"type": "ReduceOnPlateau", "state": schedule.state_dict()}]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_resuming_from_inside_an_epoch_is_exact(tmp_path, bundled, name):
    x, t = inputs("mlp", bundled)  # 400 training samples in batches of 64: 7 steps an epoch
    path = tmp_path / "run.safetensors"
    straight = make("mlp")
    straight.fit(x, t, epochs=3, **fit_args(SCHEDULES[name]))
    first = make("mlp")
    crash_at(first, 13)
    with pytest.raises(Crash):
        first.fit(x, t, epochs=3, checkpoint=path, checkpoint_every=3, **fit_args(SCHEDULES[name]))
    resumed = make("mlp", seed=11)
    resumed.fit(x, t, epochs=3, checkpoint=path, checkpoint_every=3, resume=True, **fit_args(SCHEDULES[name]))
    assert_identical(state_of(straight), state_of(resumed))


def test_resume_refuses_another_stateful_schedule_and_a_bad_state(tmp_path, bundled):
    x, t = inputs("mlp", bundled)
    path = tmp_path / "run.safetensors"
    make("mlp").fit(x, t, epochs=1, checkpoint=path, **fit_args(SCHEDULES["plateau"]))
    trainer = make("mlp", seed=2)
    before = state_of(trainer)
    with pytest.raises(CheckpointError, match=r"callbacks with state are \['ReduceOnPlateau'\], this call's \[\]"):
        trainer.fit(x, t, epochs=2, checkpoint=path, resume=True, **fit_args(lambda: step_decay(1e-3, 1)))
    assert_identical(before, state_of(trainer))

    def damage(section):
        section["callbacks"][0]["state"]["bad_epochs"] = -3

    bad = rewrite(path, tmp_path / "bad.safetensors", damage)
    p = SCHEDULES["plateau"]()
    with pytest.raises(CheckpointError, match="state of callback ReduceOnPlateau does not fit.*bad_epochs"):
        trainer.fit(x, t, epochs=2, checkpoint=bad, resume=True, **fit_args(lambda: p))
    assert p.state_dict() == {"best": None, "bad_epochs": 0, "cooldown_left": 0}
    assert_identical(before, state_of(trainer))


# -- command line -----------------------------------------------------------------------


def cli_history(capsys, *extra):
    args = ["train", "--model", "mlp", "--epochs", "3", "--limit", "300", "--batch-size", "100", "--json", "--quiet",
            "--lr", "0.01", *extra]
    assert cli.main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("extra, rates", [
    (["--lr-step", "2", "--lr-gamma", "0.5"], [0.01, 0.01, 0.005]),
    (["--lr-schedule", "step", "--lr-step", "1", "--lr-gamma", "0.5"], [0.01, 0.005, 0.0025]),
    (["--lr-schedule", "exponential", "--lr-gamma", "0.5"], [0.01, 0.005, 0.0025]),
    (["--lr-schedule", "cosine", "--lr-min", "0.001"], [CosineAnnealing(0.01, 3, 0.001)(n) for n in (1, 2, 3)]),
    (["--lr-schedule", "cosine", "--lr-warmup", "1"], [CosineAnnealing(0.01, 3, 0.0, 1)(n) for n in (1, 2, 3)]),
    # Three steps an epoch: the record shows the rate of each epoch's last step.
    (["--lr-schedule", "cosine", "--lr-per-step"], [CosineAnnealing(0.01, 9, per_step=True)(n) for n in (3, 6, 9)]),
])
def test_cli_schedules(capsys, extra, rates):
    result = cli_history(capsys, *extra)
    assert [h["lr"] for h in result["history"]] == pytest.approx(rates, rel=1e-15)


def test_cli_plateau(capsys):
    result = cli_history(capsys, "--lr-schedule", "plateau", "--lr-patience", "1", "--lr-gamma", "0.5",
                         "--validation-split", "0.2")
    assert result["lr_schedule"].startswith("ReduceOnPlateau(monitor='val_loss', factor=0.5, patience=1")
    assert result["history"][0]["lr"] == 0.01


@pytest.mark.parametrize("extra, match", [
    (["--lr-schedule", "step"], "--lr-step goes with --lr-schedule step"),
    (["--lr-schedule", "cosine", "--lr-step", "2"], "--lr-step goes with --lr-schedule step"),
    (["--lr-schedule", "step", "--lr-step", "2", "--lr-warmup", "1"],
     "--lr-warmup does not apply to --lr-schedule step"),
    (["--lr-patience", "2"], r"--lr-patience does not apply to --lr-schedule \(none\)"),
    (["--lr-schedule", "plateau", "--lr-per-step"], "--lr-per-step does not apply"),
    (["--lr-schedule", "cosine", "--lr-warmup", "5"], "warmup must be < total"),
    (["--lr-schedule", "exponential", "--lr-gamma", "0"], "gamma must be a finite number > 0"),
])
def test_cli_refuses_inconsistent_schedule_options(capsys, extra, match):
    args = ["train", "--model", "mlp", "--epochs", "3", "--limit", "100", "--quiet", *extra]
    assert cli.main(args) == 2
    assert re.search(match, capsys.readouterr().err)
