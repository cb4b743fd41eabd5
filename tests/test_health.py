"""Training health (fastlayers.health): the kernels against their oracle, the figures on
networks built to be dead, saturated or healthy, the update ratio against SGD's, fused
against unfused models, training unchanged by watching it, resumed runs, layers.observe and
the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fastlayers import backend, cli, health, layers as L, losses, optim, reference
from fastlayers.backend import _native
from fastlayers.checkpoint import CheckpointError
from fastlayers.trainer import Trainer

from .tolerance import assert_close_reduction

F32, F64 = np.float32, np.float64


# ----------------------------------------------------------------------------------------
# Kernels: native against the oracle
# ----------------------------------------------------------------------------------------

SHAPES = [(1, 1), (3, 5), (17, 1), (2, 17, 1), (5, 3, 7, 11), (1, 16, 13), (40, 3, 33, 33), (2000, 17), (0, 4),
          (3, 0, 5), (4, 2, 0)]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape", SHAPES)
def test_count_outside_native_equals_oracle(shape, dtype):
    rng = np.random.default_rng(len(shape) * 100 + sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    if x.size:
        x.reshape(-1)[:: 7] = 0.0  # ReLU-like zeros on the bound
        x.reshape(-1)[3:: 11] = np.nan
    for low, high in ((-math.inf, 0.0), (0.01, 0.99), (-0.99, 0.99), (-1e300, 1e300), (0.5, 0.5)):
        start = rng.integers(0, 5, size=shape[1]).astype(np.int64)
        got, want = start.copy(), start.copy()
        _native.count_outside(got, x, low, high)
        reference.count_outside(want, x, low, high)
        np.testing.assert_array_equal(got, want, err_msg=f"{shape} {low} {high}")
        # The plain definition: NaN never counts, the bounds rounded to the dtype.
        with np.errstate(over="ignore", invalid="ignore"):
            lo, hi = np.array(low).astype(dtype), np.array(high).astype(dtype)
            plain = ((x < lo) | (x > hi)).sum(axis=tuple(i for i in range(x.ndim) if i != 1))
        np.testing.assert_array_equal(got - start, plain)


def test_count_outside_rounds_bounds_to_the_dtype():
    # 0.99 as a float32 is 0.99000001: the float32 0.99 itself is not above it.
    x = np.array([[np.float32(0.99), np.float32(0.99) + np.float32(1e-7)]], F32).T.copy()
    for impl in (_native, reference):
        counts = np.zeros(1, np.int64)
        impl.count_outside(counts, x, 0.01, 0.99)
        assert counts[0] == 1


def test_count_outside_same_for_one_and_two_threads():
    x = np.random.default_rng(1).standard_normal((64, 9, 31, 7)).astype(F32)
    threads = backend.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            backend.set_num_threads(n)
            c = np.zeros(9, np.int64)
            _native.count_outside(c, x, -0.3, 0.2)
            out.append(c)
    finally:
        backend.set_num_threads(threads)
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 5, 100_003])
def test_sum_squares_diff_native_equals_oracle(n, dtype):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(dtype)
    b = (a + 1e-3 * rng.standard_normal(n)).astype(dtype)
    got, want = _native.sum_squares_diff(a, b), reference.sum_squares_diff(a, b)
    assert isinstance(got, float) and isinstance(want, float)
    d = a.astype(F64) - b.astype(F64)
    # Terms formed with at most two roundings in float64, then n additions.
    assert_close_reduction(got, want, float((d * d).sum()), n + 2, F64, "sum_squares_diff")
    assert _native.sum_squares_diff(a, a) == 0.0


def test_sum_squares_diff_same_for_one_and_two_threads():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(300_001).astype(F32), rng.standard_normal(300_001).astype(F32)
    threads = backend.get_num_threads()
    try:
        values = []
        for n in (1, 2):
            backend.set_num_threads(n)
            values.append(_native.sum_squares_diff(a, b))
    finally:
        backend.set_num_threads(threads)
    assert values[0] == values[1]


# ----------------------------------------------------------------------------------------
# layers.observe
# ----------------------------------------------------------------------------------------


def test_observe_reports_every_unit_with_its_layers_and_output():
    inner = L.Sequential(L.Affine(6, 5), L.ReLU(), L.Sigmoid())
    model = L.Sequential(L.Conv2d(1, 2, 3), L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Affine(8, 6), inner)
    x = np.random.default_rng(0).random((3, 1, 6, 6), dtype=F32)
    seen = []
    with L.observe(model, lambda name, layers, y: seen.append((name, tuple(type(l).__name__ for l in layers), y))):
        out = model.forward(x)
    names = [(n, t) for n, t, _ in seen]
    assert names == [("0", ("Conv2d", "ReLU", "MaxPool2d")), ("3", ("Flatten",)), ("4", ("Affine",)),
                     ("5.0", ("Affine", "ReLU")), ("5.2", ("Sigmoid",)), ("5", ("Sequential",))]
    assert seen[-1][2] is out
    np.testing.assert_array_equal(seen[0][2], model[:3].forward(x))
    # Observing changed nothing, and is over with the block.
    np.testing.assert_array_equal(model.forward(x), out)
    assert all("_observer" not in vars(s) for s in (model, inner))
    with L.observe(model, lambda *a: None):
        with pytest.raises(RuntimeError, match="already being observed"):
            with L.observe(model, lambda *a: None):
                pass


# ----------------------------------------------------------------------------------------
# The figures
# ----------------------------------------------------------------------------------------


def mlp(bias_of_second=0.0, fuse=True, seed=0, act=L.ReLU, init="he_normal", dtype=F32):
    rng = np.random.default_rng(seed)
    model = L.Sequential(L.Affine(20, 30, init=init, rng=rng, dtype=dtype), act(),
                         L.Affine(30, 25, init=init, rng=rng, dtype=dtype), act(),
                         L.Affine(25, 4, rng=rng, dtype=dtype), fuse=fuse)
    model[2].b.data[...] = bias_of_second
    return model


def test_a_layer_forced_dead_reports_every_unit_dead_and_the_others_none():
    x = np.random.default_rng(1).standard_normal((64, 20)).astype(F32)
    figs = health.inspect(mlp(bias_of_second=-1e4), x)
    assert figs["3"] == {"layer": "ReLU", "units": 25, "dead": 1.0, "zero": 1.0}
    assert figs["1"]["dead"] == 0.0 and 0.2 < figs["1"]["zero"] < 0.8
    assert set(figs) == {"1", "3"}
    assert health.flags(figs["3"]) == ["over 50% of its units dead"] and health.flags(figs["1"]) == []


def test_dead_counts_a_unit_positive_for_any_sample():
    model = L.Sequential(L.ReLU())
    x = -np.ones((5, 4, 3), F32)
    x[4, 1, 2] = 0.5  # unit 1 is alive through one sample at one position
    x[:, 3] = 0.0
    figs = health.inspect(model, x)["0"]
    assert figs["units"] == 4 and figs["dead"] == 0.75 and figs["zero"] == 1 - 1 / 60


@pytest.mark.parametrize("act", [L.Sigmoid, L.Tanh])
def test_saturation_with_huge_weights_and_none_with_small(act):
    x = np.random.default_rng(2).standard_normal((50, 20)).astype(F32)
    big = mlp(act=act, init="normal")
    for layer in (big[0], big[2]):
        layer.W.data *= 1e5
    small = mlp(act=act, init="normal")
    for layer in (small[0], small[2]):
        layer.W.data[...] = np.random.default_rng(3).normal(0, 0.01, layer.W.data.shape)
    hot, cold = health.inspect(big, x), health.inspect(small, x)
    assert hot["1"]["saturated"] > 0.98 and hot["3"]["saturated"] > 0.98
    assert cold["1"]["saturated"] == 0.0 and cold["3"]["saturated"] == 0.0
    assert cold["1"]["saturated_units"] == 0.0 and hot["1"]["layer"] == act.__name__


def test_saturation_thresholds_are_settings():
    y = np.array([[0.005, 0.5, 0.995, 0.95]], F32)
    model = L.Sequential(L.Sigmoid())
    x = np.log(y / (1 - y)).astype(F32)
    assert health.inspect(model, x)["0"]["saturated"] == 0.5
    loose = health.Settings(sigmoid=(0.1, 0.9))
    assert health.inspect(model, x, settings=loose)["0"]["saturated"] == 0.75
    with pytest.raises(ValueError, match="sigmoid"):
        health.Settings(sigmoid=(0.9, 0.1))


def sgd_trainer(dtype, lr=0.1, fuse=True, seed=0, h=True):
    model = mlp(fuse=fuse, seed=seed, dtype=dtype)
    every = health.Settings(ratio_every=1)
    return Trainer(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=lr), verbose=False,
                   health=every if h else False)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_update_ratio_is_lr_times_gradient_over_weight_for_sgd(dtype):
    tr = sgd_trainer(dtype)
    rng = np.random.default_rng(4)
    expected = {name: [] for name in ("0.W", "2.W", "4.W")}
    bounds = {name: [] for name in expected}
    u = float(np.finfo(dtype).eps) / 2
    for _ in range(3):
        x, t = rng.standard_normal((16, 20)).astype(dtype), rng.integers(0, 4, 16)
        before = {name: p.data.astype(F64) for name, p in tr.model.named_parameters()}
        tr.train_step(x, t)
        for name in expected:
            p = dict(tr.model.named_parameters())[name]
            w, g = np.linalg.norm(before[name]), np.linalg.norm(p.grad.astype(F64))
            expected[name].append(0.1 * g / w)
            # param = fl(w - fl(lr*g)) elementwise: off from w - lr*g by at most
            # u*|lr*g| + u*|w - fl(lr*g)|, so the update's norm by u*(2*lr*|g| + |w|)
            # (plus u² terms); the float64 norms and division add a few float64 roundings.
            bounds[name].append(u * (2.1 * 0.1 * g + 1.01 * w) / w + 1e-13 * expected[name][-1])
    ratios = tr.health.record()["layers"]
    for name, want in expected.items():
        path, _, pname = name.partition(".")
        got = ratios[path]["update_ratio"][pname]
        assert abs(got - np.mean(want)) <= np.mean(bounds[name]) + 1e-15, (name, got, np.mean(want))
    assert set(ratios["0"]["update_ratio"]) == {"W"}  # weights only, not biases


def test_fused_and_unfused_models_give_the_same_figures(im2col_path):
    # im2col: there the fused kernels give the unfused ones' bits (the direct path's pooled
    # backward sums other terms than the unfused dense one).
    def cnn(fuse):
        rng = np.random.default_rng(5)
        return L.Sequential(L.Conv2d(1, 4, 3, rng=rng), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                            L.Affine(4 * 4 * 4, 12, rng=rng), L.BatchNorm(12), L.ReLU(), L.Affine(12, 3, rng=rng),
                            fuse=fuse)

    x = np.random.default_rng(6).standard_normal((40, 1, 10, 10)).astype(F32)
    t = np.random.default_rng(7).integers(0, 3, 40)
    records = []
    for fuse in (True, False):
        model = cnn(fuse)
        model[4].b.data[:6] = -50.0  # half the BatchNorm's inputs constant: its output is 0 there
        tr = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), verbose=False,
                     health=health.Settings(ratio_every=1))
        tr.fit(x, t, epochs=1, batch_size=8)
        records.append(tr.history[0]["health"])
    fused, plain = records
    assert fused["steps"] == plain["steps"] == 5
    # The pooled block: dead is the same figure; its zero fraction exists only unfused.
    assert fused["layers"]["1"]["dead"] == plain["layers"]["1"]["dead"]
    assert fused["layers"]["1"]["zero"] is None and plain["layers"]["1"]["zero"] is not None
    plain["layers"]["1"]["zero"] = None
    assert fused == plain


def test_health_does_not_change_the_trained_weights():
    x = np.random.default_rng(8).standard_normal((90, 20)).astype(F32)
    t = np.random.default_rng(9).integers(0, 4, 90)
    runs = []
    for h in (False, True):
        tr = sgd_trainer(F32, h=h)
        tr.fit(x, t, epochs=2, batch_size=16)
        runs.append(tr)
    a, b = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    strip = [[{k: v for k, v in h.items() if k not in ("seconds", "health")} for h in r.history] for r in runs]
    assert strip[0] == strip[1]
    assert "health" not in runs[0].history[0] and runs[1].history[1]["health"]["steps"] == 6


def test_a_refused_step_adds_nothing():
    tr = sgd_trainer(F32)
    x, t = np.ones((4, 20), F32), np.zeros(4, np.int64)
    tr.train_step(x, t)
    before = tr.health.record()
    with pytest.raises(FloatingPointError):
        tr.train_step(np.full((4, 20), np.inf, F32), t)
    assert tr.health.record() == before


def test_every_samples_steps_of_the_epoch():
    x = np.random.default_rng(10).standard_normal((70, 20)).astype(F32)
    t = np.zeros(70, np.int64)
    model = mlp()
    tr = Trainer(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters()), verbose=False,
                 health=health.Settings(every=3, ratio_every=5))
    tr.fit(x, t, epochs=1, batch_size=10)  # steps 0..6: activations at 0, 3, 6; ratios at 0, 5
    assert tr.history[0]["health"]["steps"] == 3
    assert tr.health.record()["steps"] == 0  # reset after the epoch


# ----------------------------------------------------------------------------------------
# Checkpoints: resumed runs give the same history, health included
# ----------------------------------------------------------------------------------------


def resume_setup(seed):
    model = L.Sequential(L.Affine(20, 16, rng=np.random.default_rng(seed)), L.BatchNorm(16), L.ReLU(),
                         L.Dropout(0.2), L.Affine(16, 8, rng=np.random.default_rng(seed + 1)), L.Tanh(),
                         L.Affine(8, 4, rng=np.random.default_rng(seed + 2)))
    return Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=seed, verbose=False,
                   health=health.Settings(ratio_every=2))


def _data():
    rng = np.random.default_rng(11)
    return rng.standard_normal((57, 20)).astype(F32), rng.integers(0, 4, 57)


def _state(tr):
    hist = [{k: v for k, v in h.items() if k != "seconds"} for h in tr.history]
    return hist, tr.model.state_dict()


def _same(a, b):
    assert a[0] == b[0]
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])


def test_resume_gives_the_same_history_with_health(tmp_path):
    x, t = _data()
    straight = resume_setup(0)
    straight.fit(x, t, epochs=2, batch_size=10)
    want = _state(straight)
    assert want[0][1]["health"]["steps"] == 6

    path = tmp_path / "run.safetensors"
    first = resume_setup(0)
    first.fit(x, t, epochs=1, batch_size=10, checkpoint=path)
    second = resume_setup(5)
    second.fit(x, t, epochs=2, batch_size=10, checkpoint=path, resume=True)
    _same(_state(second), want)

    # From inside an epoch: stop after 3 steps of the second epoch (the checkpoint is written
    # every 3 steps; the interruption is simulated by an exception from the fourth step).
    path2 = tmp_path / "inside.safetensors"
    inside = resume_setup(0)
    calls = {"n": 0}
    real = inside.train_step

    def interrupted(xb, tb):
        calls["n"] += 1
        if calls["n"] == 10:  # the fourth step of the second epoch
            raise KeyboardInterrupt
        return real(xb, tb)

    inside.train_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        inside.fit(x, t, epochs=2, batch_size=10, checkpoint=path2, checkpoint_every=3)
    resumed = resume_setup(7)
    resumed.fit(x, t, epochs=2, batch_size=10, checkpoint=path2, resume=True)
    _same(_state(resumed), want)


def test_a_damaged_health_state_is_refused(tmp_path):
    from fastlayers.checkpoint import _write, read

    x, t = _data()
    path = tmp_path / "run.safetensors"
    tr = resume_setup(0)
    calls = {"n": 0}
    real = tr.train_step

    def interrupted(xb, tb):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(xb, tb)

    tr.train_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        tr.fit(x, t, epochs=1, batch_size=10, checkpoint=path, checkpoint_every=2)
    contents = read(path)
    state = contents.json("trainer")
    assert state["run"]["health"]["steps"] == 2
    arrays = contents.trainer_arrays()
    bad = json.loads(json.dumps(state))
    bad["run"]["health"]["activations"]["2"]["kind"] = "sigmoid"
    _write(path, tr.model, tr.optimizer, trainer=(bad, arrays))
    fresh = resume_setup(0)
    before = fresh.model.state_dict()
    with pytest.raises(CheckpointError, match="health"):
        fresh.fit(x, t, epochs=1, batch_size=10, checkpoint=path, resume=True)
    after = fresh.model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------
# Command line and log
# ----------------------------------------------------------------------------------------


def test_cli_train_health_prints_a_line_per_epoch(capsys):
    assert cli.main(["train", "--model", "mlp", "--limit", "300", "--epochs", "2", "--health", "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "health" in line]
    assert len(lines) == 2 and lines[0].startswith("epoch 1 health (3 steps): ")
    assert "ReLU dead" in lines[0] and "|dW|/|W|" in lines[0]


def test_verbose_fit_prints_health_under_the_epoch(capsys):
    x, t = _data()
    tr = resume_setup(0)
    tr.verbose = True
    tr.fit(x, t, epochs=1, batch_size=10)
    err = capsys.readouterr().err
    assert "epoch 1 | loss" in err and "\n  health (6 steps): 0 Affine(20->16) |dW|/|W| " in err
    assert "| 2 ReLU dead " in err and "| 5 Tanh saturated " in err
