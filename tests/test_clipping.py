"""Gradient clipping: the scale_update and clamp_update kernels, the optimizer's clip_norm and
clip_value, their place in the training step, the history and resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fastlayers import backend, cli, layers, losses, models, optim, reference
from fastlayers.backend import _native
from fastlayers.trainer import NonFiniteError, Trainer

from .test_resume import Crash, assert_identical, bundled, crash_at, inputs, make, state_of  # noqa: F401
from .tolerance import gamma, unit_roundoff

DTYPES = [np.float32, np.float64]
# 1, primes, one block of the reductions and one past it, and sizes that split across threads
# (the element-wise kernels take a second thread from 2**15 elements per thread on).
SIZES = [1, 2, 7, 4096, 4097, 3 * 2**15 + 5, 2**17 + 3]


def draw(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, n))).astype(dtype)


# -- kernels ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("alpha", [0.3, -1.7, 1e-3, 2.0**-40])
def test_scale_update_native_equals_oracle_and_rounds_once(dtype, n, alpha):
    x = draw(n, dtype, seed=n)
    got, want = x.copy(), x.copy()
    _native.scale_update(got, alpha)
    reference.scale_update(want, alpha)
    assert got.tobytes() == want.tobytes()
    # One rounding of the exact product: within half an ulp of it (for float64 the product
    # is formed in float64 itself).
    exact = x.astype(np.float64) * alpha
    assert np.all(np.abs(got - exact) <= unit_roundoff(dtype) * np.abs(exact) + np.finfo(dtype).smallest_subnormal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("limit", [0.1, 1.0, 1e6])
def test_clamp_update_native_equals_oracle_and_counts(dtype, n, limit):
    x = draw(n, dtype, seed=n + 1)
    got, want = x.copy(), x.copy()
    count_native = _native.clamp_update(got, limit)
    count_oracle = reference.clamp_update(want, limit)
    assert got.tobytes() == want.tobytes()
    bound = dtype(limit)
    assert count_native == count_oracle == int(np.sum(np.abs(x) > bound))
    assert type(count_native) is int and type(count_oracle) is int
    assert np.all(np.abs(got) <= bound)
    inside = np.abs(x) <= bound
    assert np.array_equal(got[inside], x[inside])
    assert np.array_equal(got[~inside], np.copysign(bound, x[~inside]))


@pytest.mark.parametrize("impl", [_native, reference], ids=["native", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_entries(impl, dtype):
    x = np.array([np.inf, -np.inf, np.nan, 0.5, -0.0, 3.0], dtype)
    y = x.copy()
    assert impl.clamp_update(y, 1.0) == 3  # the infinities and 3.0; NaN stays and is not counted
    np.testing.assert_array_equal(y, np.array([1.0, -1.0, np.nan, 0.5, -0.0, 1.0], dtype))
    assert np.signbit(y[4])
    z = x.copy()
    impl.scale_update(z, 0.5)
    np.testing.assert_array_equal(z, np.array([np.inf, -np.inf, np.nan, 0.25, -0.0, 1.5], dtype))
    # A limit beyond float32's range clamps nothing; one below its smallest number clamps to
    # zero (1e-320 is a float64 subnormal).
    w = x.copy()
    assert impl.clamp_update(w, 1e300) == (0 if dtype == np.float32 else 2)
    v = np.array([2.0, -3.0, 0.0], dtype)
    bound = 0.0 if dtype == np.float32 else 1e-320
    assert impl.clamp_update(v, 1e-320) == 2
    np.testing.assert_array_equal(v, np.array([bound, -bound, 0.0], dtype))


def test_kernels_give_the_same_bits_for_any_thread_count():
    x = draw(5 * 2**15 + 11, np.float32, seed=3)
    out = {}
    saved = backend.get_num_threads()
    try:
        for threads in (1, 2):
            backend.set_num_threads(threads)
            a, b = x.copy(), x.copy()
            _native.scale_update(a, 0.37)
            count = _native.clamp_update(b, 0.01)
            out[threads] = (a.tobytes(), b.tobytes(), count)
    finally:
        backend.set_num_threads(saved)
    assert out[1] == out[2]


@pytest.mark.parametrize("impl", [_native, reference], ids=["native", "numpy"])
def test_kernels_refuse_bad_arguments(impl):
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="scale_update: argument 'alpha'"):
        impl.scale_update(x, float("inf"))
    with pytest.raises(ValueError, match="clamp_update: argument 'limit' must be a finite number > 0"):
        impl.clamp_update(x, 0.0)
    with pytest.raises(TypeError, match="clamp_update"):
        impl.clamp_update(x.astype(np.int64), 1.0)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="scale_update.*'x'"):
        impl.scale_update(x, 0.5)


# -- the optimizer ----------------------------------------------------------------------


def model_and_grads(dtype=np.float32, seed=0, scale=1.0):
    """An MLP (two flat buffers: weights, and biases/BatchNorm) with a gradient from one batch."""
    model = models.mlp(input_size=20, hidden=[17, 13], batchnorm=True, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((9, 20)).astype(dtype) * scale
    t = rng.integers(0, 10, 9)
    return model, x, t


def backprop(model, opt, x, t):
    loss = losses.SoftmaxCrossEntropy()
    opt.zero_grad()
    loss.forward(model.forward(x, train=True), t)
    model.backward(loss.backward())


def all_grads(opt):
    return [p.grad.copy() for p in opt.params]


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_norm_gives_exactly_that_norm_in_the_same_direction(dtype):
    model, x, t = model_and_grads(dtype)
    opt = optim.SGD(model.parameters(), lr=0.0, clip_norm=0.05)
    assert len(opt._groups) == 2  # the norm is global over both buffers
    backprop(model, opt, x, t)
    before = all_grads(opt)
    n = sum(g.size for g in before)
    true_norm = math.sqrt(math.fsum(float(v) ** 2 for g in before for v in g.ravel().astype(np.float64)))
    assert true_norm > 0.05
    opt.step()
    assert opt.rescaled and opt.clamped is None
    # The reported norm is the norm before clipping, to the rounding of a float64 sum of n squares.
    assert abs(opt.grad_norm - true_norm) <= gamma(n + 4, np.float64) * true_norm
    # Every entry is the old one times 0.05/norm, the product rounded once: the direction is kept.
    factor = 0.05 / opt.grad_norm
    for g0, p in zip(before, opt.params):
        assert p.grad.tobytes() == (g0.astype(np.float64) * factor).astype(dtype).tobytes()
    # Hence the norm after clipping: half an ulp per entry, plus the rounding of the norm itself.
    after = math.sqrt(math.fsum(float(v) ** 2 for p in opt.params for v in p.grad.ravel().astype(np.float64)))
    assert abs(after - 0.05) <= (unit_roundoff(dtype) + gamma(n + 8, np.float64)) * 0.05


def test_a_gradient_within_the_norm_is_left_alone():
    model, x, t = model_and_grads()
    opt = optim.SGD(model.parameters(), lr=0.0, clip_norm=1e6)
    backprop(model, opt, x, t)
    before = all_grads(opt)
    opt.step()
    assert not opt.rescaled and 0 < opt.grad_norm < 1e6
    assert all(p.grad.tobytes() == g.tobytes() for g, p in zip(before, opt.params))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_value_bounds_every_entry(dtype):
    model, x, t = model_and_grads(dtype)
    opt = optim.SGD(model.parameters(), lr=0.0, clip_value=0.003)
    backprop(model, opt, x, t)
    before = all_grads(opt)
    opt.step()
    bound = dtype(0.003)
    outside = sum(int(np.sum(np.abs(g) > bound)) for g in before)
    assert 0 < outside == opt.clamped and opt.grad_norm is None
    for g0, p in zip(before, opt.params):
        assert np.all(np.abs(p.grad) <= bound)
        assert np.array_equal(p.grad, np.clip(g0, -bound, bound))


@pytest.mark.parametrize("opt_cls", [optim.SGD, optim.Adam, optim.Momentum])
@pytest.mark.parametrize("clip", [dict(clip_norm=0.02), dict(clip_value=0.002), dict(clip_norm=0.02, clip_value=0.001)])
def test_training_with_clipping_equals_training_with_the_gradient_clipped_by_hand(opt_cls, clip):
    """Clipping happens after backward, before the update, on the gradient of the loss alone:
    weight decay is added inside the update, unclipped. With every parameter in one flat
    buffer (regularize="all") the hand-made global norm sums exactly what the optimizer sums."""
    k = backend.kernels()
    runs = {}
    for by_hand in (False, True):
        model, x, t = model_and_grads(seed=1)
        opt = opt_cls(model.parameters(), lr=0.05, weight_decay=0.01, regularize="all", **({} if by_hand else clip))
        assert len(opt._groups) == 1
        norms = []
        for _ in range(4):
            backprop(model, opt, x, t)
            if by_hand:
                flat = np.concatenate([p.grad.ravel() for p in opt.params])
                norm = math.sqrt(k.sum_squares(flat))
                norms.append(norm)
                if "clip_norm" in clip and norm > clip["clip_norm"]:
                    for p in opt.params:
                        p.grad[...] = (p.grad.astype(np.float64) * (clip["clip_norm"] / norm)).astype(p.grad.dtype)
                if "clip_value" in clip:
                    for p in opt.params:
                        np.clip(p.grad, -np.float32(clip["clip_value"]), np.float32(clip["clip_value"]), out=p.grad)
            opt.step()
            if not by_hand:
                norms.append(opt.grad_norm)
        runs[by_hand] = (model.state_dict(), opt.state_dict(), norms)
    (m0, o0, n0), (m1, o1, n1) = runs[False], runs[True]
    for name in m0:
        assert m0[name].tobytes() == m1[name].tobytes(), name
    for name, v in o0.items():
        if isinstance(v, np.ndarray):
            assert v.tobytes() == o1[name].tobytes(), name
    if "clip_norm" in clip:
        assert n0 == n1


def test_clipping_settings_are_validated_and_saved():
    model, _, _ = model_and_grads()
    for bad, err in ((0.0, ValueError), (-1.0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                     ("1", TypeError), (True, TypeError)):
        for name in ("clip_norm", "clip_value"):
            with pytest.raises(err, match=name):
                optim.Adam(model.parameters(), **{name: bad})
    opt = optim.Adam(model.parameters(), clip_norm=2.5, clip_value=0.5)
    d = opt.state_dict()
    assert d["clip_norm"] == 2.5 and d["clip_value"] == 0.5 and "clip_norm=2.5" in repr(opt)
    other = optim.Adam(model.parameters())
    other.load_state_dict(d)
    assert (other.clip_norm, other.clip_value) == (2.5, 0.5)
    bad = dict(d, clip_norm=-1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        other.load_state_dict(bad)
    # A state saved before clipping existed has no such keys: clipping was off.
    old = {k: v for k, v in d.items() if k not in ("clip_norm", "clip_value")}
    other.load_state_dict(old)
    assert (other.clip_norm, other.clip_value) == (None, None)


# -- the trainer ------------------------------------------------------------------------


def test_the_finite_check_comes_first():
    model, x, t = model_and_grads()
    opt = optim.SGD(model.parameters(), lr=0.1, clip_norm=0.01, clip_value=0.001)
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), opt, verbose=False)
    real = model.backward

    def backward(dout):
        out = real(dout)
        opt.params[2].grad[0] = np.inf
        return out

    model.backward = backward
    weights = model.state_dict()
    with pytest.raises(NonFiniteError, match="1 infinite entries"):
        trainer.train_step(x, t)
    assert opt.steps == 0 and opt.grad_norm is None and opt.clamped is None
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in weights.items())


def small_trainer(**clip):
    model, _, _ = model_and_grads()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((90, 20)).astype(np.float32)
    t = rng.integers(0, 10, 90)
    opt = optim.Adam(model.parameters(), **clip)
    return Trainer(model, losses.SoftmaxCrossEntropy(), opt, verbose=False), x, t


def test_the_history_reports_the_clipping():
    trainer, x, t = small_trainer(clip_norm=1e-3, clip_value=1e-4)
    norms, clamped = [], []
    real = trainer.optimizer.step

    def step():
        real()
        norms.append(trainer.optimizer.grad_norm)
        clamped.append(trainer.optimizer.clamped)

    trainer.optimizer.step = step
    hist = trainer.fit(x, t, epochs=2, batch_size=40)  # 3 steps an epoch
    entries = sum(p.data.size for p in trainer.optimizer.params)
    for e, h in enumerate(hist):
        assert h["grad_norm"] == sum(norms[3 * e : 3 * e + 3]) / 3
        assert h["clipped_steps"] == 1.0  # every norm is far above 1e-3
        assert h["clipped_entries"] == sum(clamped[3 * e : 3 * e + 3]) / (3 * entries)
        assert 0 < h["clipped_entries"] < 1
    plain, x, t = small_trainer()
    assert not {"grad_norm", "clipped_steps", "clipped_entries"} & set(plain.fit(x, t, epochs=1, batch_size=40)[0])
    only_norm, x, t = small_trainer(clip_norm=1e6)
    h = only_norm.fit(x, t, epochs=1, batch_size=40)[0]
    assert h["clipped_steps"] == 0.0 and "clipped_entries" not in h


def test_clipped_runs_resume_exactly_from_inside_an_epoch(tmp_path, bundled):
    x, t = inputs("mlp", bundled)

    def opt(params):
        return optim.Adam(params, clip_norm=0.3, clip_value=0.01)

    path = tmp_path / "run.safetensors"
    kw = dict(batch_size=64, validation_split=0.2)
    straight = make("mlp", opt=opt)
    straight.fit(x, t, epochs=2, **kw)
    assert 0 < straight.history[0]["clipped_steps"] <= 1 and straight.history[0]["clipped_entries"] > 0
    first = make("mlp", opt=opt)
    crash_at(first, 11)
    with pytest.raises(Crash):
        first.fit(x, t, epochs=2, checkpoint=path, checkpoint_every=3, **kw)
    resumed = make("mlp", seed=4)  # an optimizer without clipping: the saved settings win
    resumed.fit(x, t, epochs=2, checkpoint=path, checkpoint_every=3, resume=True, **kw)
    assert resumed.optimizer.clip_norm == 0.3
    assert_identical(state_of(straight), state_of(resumed))


def test_cli_clipping(capsys):
    args = ["train", "--model", "mlp", "--epochs", "1", "--limit", "200", "--batch-size", "100", "--json", "--quiet",
            "--clip-norm", "0.5", "--clip-value", "0.01"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clip_norm"] == 0.5 and result["clip_value"] == 0.01
    h = result["history"][0]
    assert h["grad_norm"] > 0 and 0 <= h["clipped_steps"] <= 1 and 0 < h["clipped_entries"] <= 1
    assert cli.main(["train", "--model", "mlp", "--epochs", "1", "--limit", "100", "--quiet", "--clip-norm", "0"]) == 2
    assert "clip_norm must be a finite number > 0" in capsys.readouterr().err
