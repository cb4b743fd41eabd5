"""L-BFGS: the two-loop kernel against the BFGS inverse Hessian it stands for, the strong
Wolfe line search, the optimizer (its steps, history, tolerances, state and resume) and
training with it through the Trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastlayers
from fastlayers import backend, checkpoint, layers, losses, optim, reference
from fastlayers.backend import _native
from fastlayers.linesearch import C1, C2, strong_wolfe
from fastlayers.parameter import Parameter
from fastlayers.trainer import NonFiniteError, Trainer

from .kernel_table import SPECS, _lbfgs_direction, lbfgs_direction_magnitude, lbfgs_direction_rounding
from .tolerance import gamma as gamma_n
from .tolerance import tiny

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


# ----------------------------------------------------------------------------------------
# The two-loop recursion
# ----------------------------------------------------------------------------------------


def quadratic_pairs(n, K, dtype, seed=0):
    """K pairs (s, y = A s) of a quadratic with Hessian A = diag(a) (a in [0.5, 4]), and a
    gradient g: the curvature y.s is positive, as it is for every pair the optimizer keeps."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 4.0, n)
    s = rng.standard_normal((K, n))
    y = s * a
    s, y = s.astype(dtype), y.astype(dtype)
    ys = np.einsum("kn,kn->k", s.astype(F64), y.astype(F64))
    rho = (1 / ys).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    return g, s, y, rho, a


def bfgs_inverse_hessian(s, y, rho, gamma, first):
    """H built by the BFGS inverse update H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T,
    from H_0 = gamma*I, over the pairs oldest to newest, in float64."""
    K, n = s.shape
    s, y, rho = s.astype(F64), y.astype(F64), rho.astype(F64)
    H = gamma * np.eye(n)
    for j in range(K):
        i = (first + j) % K
        V = np.eye(n) - rho[i] * np.outer(y[i], s[i])
        H = V.T @ H @ V + rho[i] * np.outer(s[i], s[i])
    return H


def direct_rounding(K, n):
    # The direct construction in float64: per pair two n-term matrix products, and forming V
    # and the rank-one term (3 roundings), then the n-term product H g.
    return gamma_n(K * (2 * n + 6) + n + 2, F64)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("K,first", [(0, 0), (1, 0), (3, 0), (3, 2), (5, 3)])
def test_two_loop_recursion_is_the_bfgs_inverse_hessian_times_g(dtype, K, first):
    n = 6
    g, s, y, rho, _ = quadratic_pairs(n, K, dtype, seed=K + first)
    gamma = 0.7
    d = np.empty(n, dtype)
    reference.lbfgs_direction(d, g, s, y, rho, gamma, first)
    want = -bfgs_inverse_hessian(s, y, rho, gamma, first) @ g.astype(F64)
    # Both compute the same polynomial in (g, s, y, rho, gamma): each is within its rounding
    # factor times the recursion run on absolute values (which is also the direct form's).
    mag = lbfgs_direction_magnitude(g, s, y, rho, gamma, first)
    bound = (lbfgs_direction_rounding(K, n, dtype) + direct_rounding(K, n)) * mag + tiny(dtype)
    assert (np.abs(d.astype(F64) - want) <= bound).all(), np.abs(d - want).max()
    if K:
        # The secant equation of the newest pair: H y = s exactly when rho = 1/(y.s), so the
        # direction for g = y is -s. rho here is 1/(y.s) rounded (a float64 dot, a division,
        # the cast to the dtype), and each product of inputs in d holds rho_i at most twice.
        newest = (first + K - 1) % K
        reference.lbfgs_direction(d, y[newest].copy(), s, y, rho, gamma, first)
        mag = lbfgs_direction_magnitude(y[newest], s, y, rho, gamma, first)
        eps_rho = gamma_n(n + 1, F64) + np.finfo(dtype).eps / 2
        bound = (lbfgs_direction_rounding(K, n, dtype) + math.expm1(2 * K * math.log1p(eps_rho))) * mag + tiny(dtype)
        assert (np.abs(d.astype(F64) + s[newest].astype(F64)) <= bound).all()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", [1, 7, 127, 4097, 70001])
@pytest.mark.parametrize("K", [0, 1, 2, 10])
def test_direction_native_matches_oracle(dtype, n, K):
    g, s, y, rho, _ = quadratic_pairs(n, K, dtype, seed=n + K)
    first = K // 3
    args = {"d": np.full(n, np.nan, dtype), "g": g, "s": s, "y": y, "rho": rho, "gamma": 1.3, "first": first}
    got, want = np.full(n, np.nan, dtype), np.full(n, np.nan, dtype)
    _native.lbfgs_direction(got, g, s, y, rho, 1.3, first)
    reference.lbfgs_direction(want, g, s, y, rho, 1.3, first)
    _lbfgs_direction(SPECS["lbfgs_direction"], args, {"d": got}, {"d": want}, None, None, dtype)


def test_flat_vector_kernels_give_the_same_bits_for_any_thread_count():
    n = 3 * 32768 + 17  # beyond the single-thread grain, so two threads really split it
    g, s, y, rho, _ = quadratic_pairs(n, 4, F32, seed=1)
    saved = backend.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            backend.set_num_threads(threads)
            d, z = np.empty(n, F32), np.empty(n, F32)
            _native.lbfgs_direction(d, g, s, y, rho, 0.9, 1)
            _native.add_scaled_forward(z, g, s[0], -0.3)
            out[threads] = (d.tobytes(), z.tobytes(), _native.dot(s[1], y[2]), _native.max_abs(d))
    finally:
        backend.set_num_threads(saved)
    assert out[1] == out[2]


def test_dot_and_max_abs_agree_with_numpy():
    x = np.array([3.0, -7.5, np.inf, 1.0])
    assert _native.max_abs(x) == reference.max_abs(x) == math.inf
    assert math.isnan(_native.max_abs(np.array([1.0, np.nan, 5.0], F32)))
    assert _native.max_abs(np.empty(0, F32)) == reference.max_abs(np.empty(0, F32)) == 0.0
    a = np.arange(10.0, dtype=F32)
    assert _native.dot(a, a) == reference.dot(a, a) == 285.0


# ----------------------------------------------------------------------------------------
# The line search
# ----------------------------------------------------------------------------------------


def wolfe_ok(res, c1=C1, c2=C2):
    return res.f <= res.f0 + c1 * res.t * res.slope0 and abs(res.slope) <= c2 * abs(res.slope0)


# Scalar functions with phi'(0) < 0: a quadratic whose minimiser lies far beyond t0 (so the
# search must extrapolate), one far short of it (zoom), and N&W's tests 1 and 2 of Moré &
# Thuente (a slope that flattens out, and a steep then flat function).
SCALARS = {
    "far quadratic": (lambda t: ((t - 40.0) ** 2, 2 * (t - 40.0)), 1.0),
    "near quadratic": (lambda t: ((t - 0.01) ** 2, 2 * (t - 0.01)), 1.0),
    "more-thuente 1": (lambda t: (-t / (t * t + 2.0), (t * t - 2.0) / (t * t + 2.0) ** 2), 1e-3),
    "more-thuente 2": (lambda t: ((t + 0.004) ** 5 - 2 * (t + 0.004) ** 4, 5 * (t + 0.004) ** 4 - 8 * (t + 0.004) ** 3),
                       1e-3),
}


@pytest.mark.parametrize("name", sorted(SCALARS))
def test_line_search_finds_a_strong_wolfe_step(name):
    phi, t0 = SCALARS[name]
    calls = []

    def counted(t):
        calls.append(t)
        return phi(t)

    f0, g0 = phi(0.0)
    res = strong_wolfe(counted, f0, g0, t0)
    assert res.converged and res.t > 0 and wolfe_ok(res)
    assert res.evaluations == len(calls) <= 25
    assert res.last == (calls[-1] == res.t)
    assert (res.f, res.slope) == phi(res.t)


def test_line_search_shortens_a_step_into_non_finite_values():
    def phi(t):
        if t > 0.3:
            return math.inf, math.nan
        return (t - 0.2) ** 2, 2 * (t - 0.2)

    res = strong_wolfe(phi, 0.04, -0.4, 1.0)
    assert res.converged and 0 < res.t <= 0.3 and wolfe_ok(res)


def test_line_search_without_any_decrease_returns_zero():
    # Rounding noise only: phi never drops below phi(0) although phi'(0) says it should.
    res = strong_wolfe(lambda t: (1.0, 1.0), 1.0, -1.0, 1.0, max_evaluations=6)
    assert res.t == 0.0 and not res.converged and res.evaluations == 6


def test_line_search_settings_are_checked():
    phi = SCALARS["far quadratic"][0]
    with pytest.raises(ValueError, match="c2"):
        strong_wolfe(phi, 1600.0, -80.0, c1=0.5, c2=0.4)
    with pytest.raises(ValueError, match="phi'"):
        strong_wolfe(phi, 1600.0, 80.0)


# ----------------------------------------------------------------------------------------
# The optimizer
# ----------------------------------------------------------------------------------------


def rosenbrock(x):
    f = float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))
    g = np.zeros_like(x)
    g[:-1] += -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return f, g


class Rosenbrock:
    """A Parameter on Rosenbrock's function, with a closure that records every evaluation."""

    def __init__(self, n=6, **kw):
        start = np.tile([-1.2, 1.0], n // 2)
        self.p = Parameter(start.copy(), "x")
        self.opt = optim.LBFGS([self.p], **kw)
        self.calls = []

    def closure(self):
        self.opt.zero_grad()
        f, g = rosenbrock(self.p.data)
        self.p.grad += g
        self.calls.append((self.p.data.copy(), f, g))
        return f


def teacher_data(n=200, d=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w1, w2 = rng.standard_normal((d, 8)), rng.standard_normal((8, 1))
    t = np.tanh(x @ w1) @ w2 + 0.05 * rng.standard_normal((n, 1))
    return x.astype(dtype), t.astype(dtype)


def tanh_mlp(seed=1, dtype=np.float64, d=5, hidden=16):
    rng = np.random.default_rng(seed)
    return layers.Sequential(layers.Affine(d, hidden, init="glorot_normal", dtype=dtype, rng=rng), layers.Tanh(),
                             layers.Affine(hidden, 1, init="glorot_normal", dtype=dtype, rng=rng))


class Network:
    """A small tanh MLP, full batch, MSE, with a closure that counts and records its calls."""

    def __init__(self, make_opt=None, seed=1, dtype=np.float64):
        self.x, self.t = teacher_data(dtype=dtype)
        self.model = tanh_mlp(seed, dtype)
        self.loss = losses.MeanSquaredError()
        self.opt = make_opt(self.model.parameters()) if make_opt else None
        self.calls = []

    def flat(self, what):
        return np.concatenate([getattr(p, what).reshape(-1) for p in self.model.parameters()]).astype(F64)

    def closure(self):
        self.opt.zero_grad()
        f = self.loss.forward(self.model.forward(self.x, train=True), self.t)
        self.model.backward(self.loss.backward())
        self.calls.append((self.flat("data"), f, self.flat("grad")))
        return f

    def value(self):
        return self.loss.forward(self.model.forward(self.x, train=False), self.t)


def check_strong_wolfe_between(start, end):
    """Both strong Wolfe conditions for the move from ``start`` to ``end`` (each (x, f, g)),
    stated with s = x_end - x_start (= t*d: both conditions scale with t > 0). The parameters
    are x0 + t*d rounded, so s.g carries one rounding of each |x| entry: allowed for."""
    (x0, f0, g0), (x1, f1, g1) = start, end
    s = x1 - x0
    slack0 = np.finfo(F64).eps * float(np.abs(g0) @ np.abs(x1))
    slack1 = np.finfo(F64).eps * float(np.abs(g1) @ np.abs(x1))
    assert float(g0 @ s) < 0
    assert f1 <= f0 + C1 * float(g0 @ s) + C1 * slack0
    assert abs(float(g1 @ s)) <= C2 * abs(float(g0 @ s)) + slack1 + C2 * slack0


@pytest.mark.parametrize("problem", ["rosenbrock", "network"])
def test_every_accepted_step_satisfies_the_strong_wolfe_conditions(problem):
    # One iteration per step: the point before the step and the one after it are the
    # accepted iterates, read from what the closure saw, independently of the optimizer.
    if problem == "rosenbrock":
        prob = Rosenbrock(max_iter=1)
        params = [prob.p]
    else:
        prob = Network(lambda ps: optim.LBFGS(ps, max_iter=1))
        params = prob.model.parameters()
    steps = 0
    for _ in range(40):
        prob.calls.clear()
        prob.opt.step(prob.closure)
        if prob.opt.stop_reason != "max_iter" or not prob.opt.line_searches:
            break
        here = np.concatenate([p.data.reshape(-1) for p in params]).astype(F64)
        accepted = [c for c in prob.calls if np.array_equal(c[0], here)]
        assert accepted, "the parameters are at none of the evaluated points"
        check_strong_wolfe_between(prob.calls[0], accepted[-1])
        res = prob.opt.line_searches[-1]
        assert res.converged and wolfe_ok(res)
        steps += 1
    assert steps >= 20


@pytest.mark.parametrize("problem", ["rosenbrock", "network"])
def test_recorded_line_searches_satisfy_the_strong_wolfe_conditions(problem):
    prob = Rosenbrock(max_iter=200, max_eval=400) if problem == "rosenbrock" else \
        Network(lambda ps: optim.LBFGS(ps, max_iter=60))
    prob.opt.step(prob.closure)
    searches = prob.opt.line_searches
    assert len(searches) >= 30
    assert prob.opt.evaluations == len(prob.calls) == 1 + sum(r.evaluations for r in searches)
    for r in searches:
        assert r.converged and wolfe_ok(r), r
    if problem == "rosenbrock":
        assert rosenbrock(prob.p.data)[0] < 1e-8


def equal_budget_losses(evaluations_budget=120):
    """Final losses of LBFGS and of SGD and Adam at their best learning rates on a grid, each
    given exactly the gradient evaluations LBFGS used."""
    net = Network(lambda ps: optim.LBFGS(ps, max_iter=evaluations_budget, max_eval=evaluations_budget - 25))
    net.opt.step(net.closure)
    used = len(net.calls)
    assert used == net.opt.evaluations
    lbfgs = net.value()
    best = {}
    for name, cls, rates in (("sgd", optim.SGD, (0.03, 0.1, 0.3, 1.0, 3.0)),
                             ("adam", optim.Adam, (1e-3, 3e-3, 1e-2, 3e-2, 1e-1))):
        finals = []
        for lr in rates:
            other = Network(lambda ps, cls=cls, lr=lr: cls(ps, lr=lr))
            for _ in range(used):
                other.closure()
                other.opt.step()
            assert len(other.calls) == used
            finals.append(other.value())
        best[name] = min(f for f in finals if math.isfinite(f))
    return lbfgs, best, used


def test_lbfgs_beats_gradient_descent_and_adam_at_equal_gradient_evaluations():
    lbfgs, best, used = equal_budget_losses()
    assert 70 <= used <= 120
    assert lbfgs < best["sgd"] and lbfgs < best["adam"], (lbfgs, best)


def test_history_holds_the_newest_pairs_and_no_more():
    prob = Rosenbrock(max_iter=1, history_size=3)
    iterates = [prob.p.data.copy()]
    for _ in range(9):
        prob.opt.step(prob.closure)
        iterates.append(prob.p.data.copy())
    opt = prob.opt
    assert opt._pairs == 3 and opt._s.shape == (3, prob.p.data.size)
    # The pair of the step just taken is stored by the next step; the newest 3 stored pairs
    # are those of the moves 6->7, 7->8 (8->9 is stored by the step after).
    rows = [(opt._first + j) % 3 for j in range(3)]
    for row, k in zip(rows, (5, 6, 7)):
        s = iterates[k + 1] - iterates[k]
        bound = 4 * np.finfo(F64).eps * (np.abs(iterates[k + 1]) + np.abs(iterates[k]))
        assert (np.abs(opt._s[row] - s) <= bound).all()
        _, g1 = rosenbrock(iterates[k + 1])
        _, g0 = rosenbrock(iterates[k])
        assert np.allclose(opt._y[row], g1 - g0, rtol=1e-12, atol=0)


def test_tolerances_and_limits_stop_the_iteration():
    prob = Rosenbrock(tolerance_grad=1e6)
    before = prob.p.data.copy()
    prob.opt.step(prob.closure)
    assert prob.opt.stop_reason == "tolerance_grad" and len(prob.calls) == 1
    assert np.array_equal(prob.p.data, before) and prob.opt.iterations == 0

    prob = Rosenbrock(tolerance_change=1e3)
    prob.opt.step(prob.closure)
    assert prob.opt.iterations == 1 and prob.opt.stop_reason.startswith("tolerance_change")

    prob = Rosenbrock(max_iter=7)
    prob.opt.step(prob.closure)
    assert prob.opt.iterations == 7 and prob.opt.stop_reason == "max_iter"

    prob = Rosenbrock(max_iter=100, max_eval=10)
    prob.opt.step(prob.closure)
    assert prob.opt.stop_reason == "max_eval"
    # The limit is checked after each iteration, as PyTorch does: the last line search may pass it.
    last = prob.opt.line_searches[-1].evaluations
    assert 10 <= len(prob.calls) < 10 + last

    prob = Rosenbrock(max_iter=5, line_search=None, lr=1e-3)
    prob.opt.step(prob.closure)
    assert prob.opt.iterations == 5 and len(prob.calls) == 5  # the last step is not evaluated


def test_fixed_steps_that_reach_non_finite_values_are_undone():
    p = Parameter(np.array([1.0, 2.0]), "x")
    opt = optim.LBFGS([p], line_search=None, lr=10.0)

    def closure():
        opt.zero_grad()
        if np.abs(p.data).max() > 5:
            p.grad += np.nan
            return math.inf
        p.grad += 2 * p.data
        return float(p.data @ p.data)

    seen = []
    opt.step(lambda: seen.append(p.data.copy()) or closure())
    # The first step (-g scaled to |g|_1 = 1, times lr) lands at (-7/3, -14/3); the next one,
    # with gamma = y.s/y.y = 1/2 and lr 10, beyond 5, where it is undone.
    assert len(seen) == 3 and np.abs(seen[2]).max() > 5
    assert "undone" in opt.stop_reason and np.array_equal(p.data, seen[1])
    assert np.array_equal(p.grad, 2 * seen[1])


def test_bad_use_is_refused_clearly():
    p32 = Parameter(np.zeros(3, np.float32), "a")
    p64 = Parameter(np.zeros(2), "b")
    with pytest.raises(TypeError, match="one dtype.*float32.*float64"):
        optim.LBFGS([p32, p64])
    opt = optim.LBFGS([p64])
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()
    with pytest.raises(TypeError, match="closure must return the loss"):
        opt.step(lambda: None)
    for bad in ({"lr": 0}, {"history_size": 0}, {"max_iter": 1.5}, {"line_search": "armijo"},
                {"tolerance_grad": -1.0}):
        with pytest.raises((TypeError, ValueError)):
            optim.LBFGS([p64], **bad)

    def nan_closure():
        opt.zero_grad()
        p64.grad[0] = np.nan
        return 1.0

    before = opt.state_dict()
    with pytest.raises(FloatingPointError, match="nothing was changed"):
        opt.step(nan_closure)
    after = opt.state_dict()
    assert all(np.array_equal(before[k], after[k]) if isinstance(before[k], np.ndarray) else before[k] == after[k]
               for k in before)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
        else:
            assert a[k] == b[k], (k, a[k], b[k])


@pytest.mark.parametrize("line_search", ["strong_wolfe", None])
def test_resume_from_a_saved_state_is_bit_identical(tmp_path, line_search):
    lr = 1.0 if line_search else 0.05

    def make():
        return Network(lambda ps: optim.LBFGS(ps, max_iter=4, history_size=3, line_search=line_search, lr=lr))

    straight = make()
    for _ in range(6):
        straight.opt.step(straight.closure)
    first = make()
    for _ in range(2):
        first.opt.step(first.closure)
    path = fastlayers.save(first.model, tmp_path / "lbfgs.safetensors", optimizer=first.opt)
    assert checkpoint.verify(path)["format"] == "fastlayers"
    resumed = Network(lambda ps: optim.LBFGS(ps, lr=0.5), seed=7)  # other weights and settings
    resumed.model.load_state_dict(fastlayers.load(path).state_dict())
    checkpoint.load_optimizer(path, resumed.opt)
    assert_same_state(resumed.opt.state_dict(), first.opt.state_dict())
    for _ in range(4):
        resumed.opt.step(resumed.closure)
    assert_same_state(resumed.opt.state_dict(), straight.opt.state_dict())
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert a.data.tobytes() == b.data.tobytes()
    assert straight.opt._pairs == 3  # the ring wrapped around before and after the save


def test_a_state_that_does_not_fit_is_refused_with_nothing_changed():
    net = Network(lambda ps: optim.LBFGS(ps, max_iter=3))
    net.opt.step(net.closure)
    good = net.opt.state_dict()
    for key, value in (("history.s", good["history.s"][:, :-1].copy()), ("pairs", 11), ("first", 1),
                       ("gamma", 0.0), ("direction", good["direction"].astype(np.float32)), ("line_search", "x")):
        other = Network(lambda ps: optim.LBFGS(ps))
        before = other.opt.state_dict()
        with pytest.raises(ValueError):
            other.opt.load_state_dict({**good, key: value})
        assert_same_state(other.opt.state_dict(), before)
    with pytest.raises(ValueError, match="missing key 'gamma'"):
        net.opt.load_state_dict({k: v for k, v in good.items() if k != "gamma"})


def test_float32_networks_train_too():
    net = Network(lambda ps: optim.LBFGS(ps, max_iter=30), dtype=np.float32)
    start = net.value()
    net.opt.step(net.closure)
    assert net.value() < 0.2 * start
    assert all(r.converged for r in net.opt.line_searches[:10])


def test_numpy_backend_runs_the_same_algorithm():
    nets = {}
    for name in ("native", "numpy"):
        with backend.use(name):
            net = Network(lambda ps: optim.LBFGS(ps, max_iter=8))
            net.opt.step(net.closure)
            nets[name] = net
    # The backends' dot products round differently, so the iterates drift apart slowly.
    assert len(nets["native"].calls) == len(nets["numpy"].calls)
    np.testing.assert_allclose(nets["native"].flat("data"), nets["numpy"].flat("data"), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------
# Training with the Trainer
# ----------------------------------------------------------------------------------------


def classifier(seed, dropout=0.0):
    rng = np.random.default_rng(seed)
    model = layers.Sequential(layers.Affine(5, 12, init="glorot_normal", dtype=np.float64, rng=rng), layers.Softplus(),
                              layers.Dropout(dropout), layers.Affine(12, 3, init="glorot_normal", dtype=np.float64,
                                                                     rng=rng))
    model.set_rng(rng)
    return model


def class_data(n=150, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5))
    t = (np.argmax(x[:, :3] + 0.3 * rng.standard_normal((n, 3)), axis=1)).astype(np.int64)
    return x, t


def lbfgs_trainer(seed=0, dropout=0.0, **kw):
    model = classifier(seed, dropout)
    opt = optim.LBFGS(model.parameters(), max_iter=5, history_size=4, **kw)
    return Trainer(model, losses.SoftmaxCrossEntropy(), opt, seed=seed, verbose=False)


def test_trainer_fits_full_batch_with_lbfgs():
    x, t = class_data()
    trainer = lbfgs_trainer()
    history = trainer.fit(x, t, epochs=4, batch_size=len(x))
    losses_ = [h["loss"] for h in history]
    assert all(b < a for a, b in zip(losses_, losses_[1:])), losses_
    assert trainer.optimizer.steps == 4 and trainer.optimizer.evaluations >= 4 * 5


def test_trainer_replays_the_dropout_masks_within_a_step():
    x, t = class_data()
    trainer = lbfgs_trainer(dropout=0.3)
    trainer.fit(x, t, epochs=2, batch_size=len(x))
    # Every call of a step saw the same function, so every line search met the conditions.
    assert trainer.optimizer.line_searches and all(r.converged for r in trainer.optimizer.line_searches)


def resume_state(trainer):
    out = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    out.update({f"optimizer/{k}": v for k, v in trainer.optimizer.state_dict().items()})
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in trainer.history]
    out["rng"] = {name: g.bit_generator.state for name, g in trainer._generators().items()}
    return out


@pytest.mark.parametrize("batch_size,every", [(150, None), (40, 2)])
def test_trainer_checkpoints_resume_lbfgs_bit_for_bit(tmp_path, batch_size, every):
    """2 epochs straight == 1 epoch, a fresh trainer, resume (mini-batch: also from inside
    an epoch, every 2 steps)."""
    x, t = class_data()
    kw = dict(batch_size=batch_size, checkpoint_every=every)
    straight = lbfgs_trainer(dropout=0.2)
    straight.fit(x, t, epochs=2, checkpoint=tmp_path / "a.safetensors", **kw)
    path = tmp_path / "b.safetensors"
    first = lbfgs_trainer(dropout=0.2)
    first.fit(x, t, epochs=1, checkpoint=path, **kw)
    resumed = lbfgs_trainer(seed=5, dropout=0.2)
    resumed.fit(x, t, epochs=2, checkpoint=path, resume=True, **kw)
    a, b = resume_state(straight), resume_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].tobytes() == b[k].tobytes(), k
        else:
            assert a[k] == b[k], k
    if every is not None:
        # Resume from inside the first epoch: the checkpoint after its 2nd step.
        inner = tmp_path / "c.safetensors"
        first = lbfgs_trainer(dropout=0.2)
        with pytest.raises(KeyboardInterrupt):
            interrupt_after(first, 2)
            first.fit(x, t, epochs=2, checkpoint=inner, **kw)
        resumed = lbfgs_trainer(seed=9, dropout=0.2)
        resumed.fit(x, t, epochs=2, checkpoint=inner, resume=True, **kw)
        b = resume_state(resumed)
        for k in a:
            assert (a[k].tobytes() == b[k].tobytes()) if isinstance(a[k], np.ndarray) else a[k] == b[k], k


def interrupt_after(trainer, steps):
    step = trainer.optimizer.step

    def counting(closure):
        if trainer.optimizer.steps == steps + 1:
            raise KeyboardInterrupt
        return step(closure)

    trainer.optimizer.step = counting


def test_trainer_refuses_a_non_finite_first_evaluation_with_nothing_changed():
    x, t = class_data()
    x[7, 2] = np.nan
    trainer = lbfgs_trainer()
    before = resume_state(trainer)
    with pytest.raises(NonFiniteError, match="update was not applied") as info:
        trainer.fit(x, t, epochs=1, batch_size=len(x))
    assert info.value.optimizer_step == 1
    after = resume_state(trainer)
    for k in before:
        if k.startswith(("model/", "optimizer/")):
            v = before[k]
            assert (v.tobytes() == after[k].tobytes()) if isinstance(v, np.ndarray) else v == after[k], k


def test_trainer_refuses_to_profile_lbfgs():
    model = classifier(0)
    with pytest.raises(TypeError, match="profile"):
        Trainer(model, losses.SoftmaxCrossEntropy(), optim.LBFGS(model.parameters()), profile=True)


def test_trainer_refuses_health_with_lbfgs():
    # A step runs several forward passes: the activations and the update would not be one step's.
    model = classifier(0)
    with pytest.raises(TypeError, match="health"):
        Trainer(model, losses.SoftmaxCrossEntropy(), optim.LBFGS(model.parameters()), health=True)
    Trainer(model, losses.SoftmaxCrossEntropy(), optim.LBFGS(model.parameters()), health=False)
