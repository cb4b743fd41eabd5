"""Update kernels against scalar arithmetic, and the optimizers built on them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from fastlayers import backend, optim
from fastlayers.parameter import Parameter

BACKENDS = ("numpy", "native")


@pytest.fixture(params=BACKENDS)
def kern(request):
    with backend.use(request.param):
        yield backend.kernels()


# ---------------------------------------------------------------------------------------
# Scalar references: one element at a time in Python floats, written from the rules in
# docs/kernels.md independently of the vectorised oracle.


def _sign(x: float) -> float:
    return (x > 0) - (x < 0)


def _g(p, g, wd, l1):
    return g + wd * p + l1 * _sign(p)


def ref_sgd(p, g, st, lr, wd, l1):
    return p - lr * _g(p, g, wd, l1), st


def ref_momentum(p, g, st, lr, mom, wd, l1):
    v = mom * st[0] - lr * _g(p, g, wd, l1)
    return p + v, (v,)


def ref_nesterov(p, g, st, lr, mom, wd, l1):
    v_prev = st[0]
    v = mom * v_prev - lr * _g(p, g, wd, l1)
    return p - mom * v_prev + (1 + mom) * v, (v,)


def ref_adagrad(p, g, st, lr, eps, wd, l1):
    g = _g(p, g, wd, l1)
    h = st[0] + g * g
    return p - lr * g / (math.sqrt(h) + eps), (h,)


def ref_rmsprop(p, g, st, lr, decay, eps, wd, l1):
    g = _g(p, g, wd, l1)
    h = decay * st[0] + (1 - decay) * g * g
    return p - lr * g / (math.sqrt(h) + eps), (h,)


def ref_adam(p, g, st, lr, b1, b2, eps, step, wd, l1):
    g = _g(p, g, wd, l1)
    m = b1 * st[0] + (1 - b1) * g
    v = b2 * st[1] + (1 - b2) * g * g
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    return p - lr * m_hat / (math.sqrt(v_hat) + eps), (m, v)


# name -> (scalar reference, number of state arrays, hyper-parameters after lr, before wd/l1)
RULES = {
    "sgd_update": (ref_sgd, 0, ()),
    "momentum_update": (ref_momentum, 1, (0.9,)),
    "nesterov_update": (ref_nesterov, 1, (0.9,)),
    "adagrad_update": (ref_adagrad, 1, (1e-7,)),
    "rmsprop_update": (ref_rmsprop, 1, (0.9, 1e-7)),
    "adam_update": (ref_adam, 2, (0.9, 0.999, 1e-8)),
}

P0 = [1.0, -2.0, 0.0, 0.5]
GRADS = ([0.5, 0.25, -1.0, 0.0], [-0.3, 0.75, 0.1, 2.0])


def _run_kernel(k, name, dtype, lr, wd, l1):
    """Two steps of kernel ``name`` from P0 with GRADS; returns param and the state arrays."""
    _, n_state, hyper = RULES[name]
    param = np.array(P0, dtype)
    state = [np.zeros_like(param) for _ in range(n_state)]
    for step, grad in enumerate(GRADS, start=1):
        grad = np.array(grad, dtype)
        args = list(hyper) + ([step] if name == "adam_update" else [])
        getattr(k, name)(param, grad, *state, lr, *args, wd, l1)
    return param, state


def _run_scalar(name, lr, wd, l1):
    ref, n_state, hyper = RULES[name]
    params, states = [], []
    for i, p in enumerate(P0):
        st = (0.0,) * n_state
        for step, grads in enumerate(GRADS, start=1):
            args = list(hyper) + ([step] if name == "adam_update" else [])
            p, st = ref(p, grads[i], st, lr, *args, wd, l1)
        params.append(p)
        states.append(st)
    return np.array(params), [np.array([s[j] for s in states]) for j in range(n_state)]


# float64 runs the same operations as the scalar loop up to association (~1e-16 each);
# float32 rounds every one of the ~12 operations (and the hyper-parameters) to 2**-24
# relative, so 1e-5 (~170 ulps) is a loose but still bug-revealing bound: a wrong rule
# or a missed term changes these values by 1e-3 or more.
RTOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("wd,l1", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.2), (0.1, 0.03)])
@pytest.mark.parametrize("name", list(RULES))
def test_update_kernels_two_steps_match_scalar_rules(kern, name, dtype, wd, l1):
    param, state = _run_kernel(kern, name, dtype, 0.1, wd, l1)
    want_p, want_state = _run_scalar(name, 0.1, wd, l1)
    assert param.dtype == dtype
    np.testing.assert_allclose(param, want_p, rtol=RTOL[dtype], atol=RTOL[dtype] * 1e-2)
    for got, want in zip(state, want_state):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * 1e-2)


def test_sgd_by_hand(kern):
    p = np.array([1.0, -2.0])
    g = np.array([0.5, 0.25])
    kern.sgd_update(p, g, 0.1, 0.0, 0.0)
    np.testing.assert_allclose(p, [0.95, -2.025], rtol=1e-15)
    kern.sgd_update(p, g, 0.1, 0.0, 0.0)
    np.testing.assert_allclose(p, [0.9, -2.05], rtol=1e-15)
    # weight decay 0.5: g = [0.5 + 0.5, 0.25 - 1.0] = [1.0, -0.75]
    p = np.array([1.0, -2.0])
    kern.sgd_update(p, g, 0.1, 0.5, 0.0)
    np.testing.assert_allclose(p, [0.9, -1.925], rtol=1e-15)
    # l1 0.2: g = [0.5 + 0.2, 0.25 - 0.2] = [0.7, 0.05]; a zero weight gets no l1 push
    p = np.array([1.0, -2.0, 0.0])
    kern.sgd_update(p, np.array([0.5, 0.25, 0.0]), 0.1, 0.0, 0.2)
    np.testing.assert_allclose(p, [0.93, -2.005, 0.0], rtol=1e-15)


def test_momentum_and_nesterov_by_hand(kern):
    # p=1, g=0.5, lr=0.1, momentum=0.9.
    # Momentum: v1 = -0.05, p1 = 0.95; v2 = 0.9*(-0.05) - 0.05 = -0.095, p2 = 0.855.
    p, v = np.array([1.0]), np.zeros(1)
    kern.momentum_update(p, np.array([0.5]), v, 0.1, 0.9, 0.0, 0.0)
    np.testing.assert_allclose([p[0], v[0]], [0.95, -0.05], rtol=1e-15)
    kern.momentum_update(p, np.array([0.5]), v, 0.1, 0.9, 0.0, 0.0)
    np.testing.assert_allclose([p[0], v[0]], [0.855, -0.095], rtol=1e-15)
    # Nesterov: p1 = 1 - 0.9*0 + 1.9*(-0.05) = 0.905; p2 = 0.905 + 0.045 + 1.9*(-0.095) = 0.7695.
    p, v = np.array([1.0]), np.zeros(1)
    kern.nesterov_update(p, np.array([0.5]), v, 0.1, 0.9, 0.0, 0.0)
    np.testing.assert_allclose([p[0], v[0]], [0.905, -0.05], rtol=1e-15)
    kern.nesterov_update(p, np.array([0.5]), v, 0.1, 0.9, 0.0, 0.0)
    np.testing.assert_allclose([p[0], v[0]], [0.7695, -0.095], rtol=1e-14)


def test_adaptive_rules_by_hand(kern):
    # AdaGrad, g = 0.5 then 0.5: h = 0.25, then 0.5.
    p, h = np.array([1.0]), np.zeros(1)
    kern.adagrad_update(p, np.array([0.5]), h, 0.1, 1e-7, 0.0, 0.0)
    kern.adagrad_update(p, np.array([0.5]), h, 0.1, 1e-7, 0.0, 0.0)
    assert h[0] == 0.5
    np.testing.assert_allclose(p, [1 - 0.05 / (0.5 + 1e-7) - 0.05 / (0.5**0.5 + 1e-7)], rtol=1e-15)
    # RMSprop decay 0.5, g = 2: h1 = 0.5*4 = 2, h2 = 0.5*2 + 0.5*4 = 3.
    p, h = np.array([1.0]), np.zeros(1)
    kern.rmsprop_update(p, np.array([2.0]), h, 0.1, 0.5, 1e-7, 0.0, 0.0)
    kern.rmsprop_update(p, np.array([2.0]), h, 0.1, 0.5, 1e-7, 0.0, 0.0)
    assert h[0] == 3.0
    np.testing.assert_allclose(p, [1 - 0.2 / (2**0.5 + 1e-7) - 0.2 / (3**0.5 + 1e-7)], rtol=1e-15)
    # Adam, beta1=0.5, beta2=0.75, g = 2 then -2 (eps 1e-8 outside the square root):
    # m1 = 1, v1 = 1, m̂1 = 2, v̂1 = 4 -> step 0.1*2/(2+eps);
    # m2 = -0.5, v2 = 0.75 + 1 = 1.75, m̂2 = -0.5/0.75, v̂2 = 1.75/0.4375 = 4 -> step 0.1*(-2/3)/(2+eps).
    p, m, v = np.array([1.0]), np.zeros(1), np.zeros(1)
    kern.adam_update(p, np.array([2.0]), m, v, 0.1, 0.5, 0.75, 1e-8, 1, 0.0, 0.0)
    np.testing.assert_allclose([m[0], v[0]], [1.0, 1.0], rtol=1e-15)
    kern.adam_update(p, np.array([-2.0]), m, v, 0.1, 0.5, 0.75, 1e-8, 2, 0.0, 0.0)
    np.testing.assert_allclose([m[0], v[0]], [-0.5, 1.75], rtol=1e-15)
    np.testing.assert_allclose(p, [1 - 0.2 / (2 + 1e-8) + (0.2 / 3) / (2 + 1e-8)], rtol=1e-15)


def test_adam_eps_is_outside_the_square_root(kern):
    # With a zero gradient m = v = 0 and the step is 0/(0 + eps) = 0 exactly; with eps inside
    # the root a tiny gradient would give a different step: g=1e-6 -> m̂=1e-6, sqrt(v̂)=1e-6.
    p, m, v = np.array([0.0]), np.zeros(1), np.zeros(1)
    kern.adam_update(p, np.array([1e-6]), m, v, 1.0, 0.9, 0.999, 1e-6, 1, 0.0, 0.0)
    np.testing.assert_allclose(p, [-1e-6 / (1e-6 + 1e-6)], rtol=1e-12)  # -0.5, not -1/sqrt(2)


def test_weight_decay_and_l1_with_zero_gradient(kern):
    p = np.array([2.0, -4.0, 0.0])
    kern.sgd_update(p, np.zeros(3), 0.1, 0.5, 0.0)
    np.testing.assert_allclose(p, [2.0 * 0.95, -4.0 * 0.95, 0.0], rtol=1e-15)
    p = np.array([2.0, -4.0, 0.0])
    kern.sgd_update(p, np.zeros(3), 0.1, 0.0, 0.5)
    np.testing.assert_allclose(p, [1.95, -3.95, 0.0], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_max_norm_rescales_only_slices_over_the_limit(kern, dtype):
    w = np.array([[3.0, 0.3, 0.0], [4.0, 0.4, 0.0]], dtype)
    kern.max_norm_update(w, 1.0, 0)
    np.testing.assert_allclose(w[:, 0], [0.6, 0.8], rtol=4 * np.finfo(dtype).eps)
    # Columns under the limit (norm 0.5, and 0) are left bit for bit.
    np.testing.assert_array_equal(w[:, 1:], np.array([[0.3, 0.0], [0.4, 0.0]], dtype))

    w = np.array([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]], dtype)
    kern.max_norm_update(w, 2.0, 1)
    np.testing.assert_allclose(w[0], [1.2, 1.6], rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(w[1], np.array([0.3, 0.4], dtype))
    np.testing.assert_allclose(w[2], [1.2, 1.6], rtol=4 * np.finfo(dtype).eps)


def test_sum_squares_and_sum_abs(kern):
    x = np.array([[1.0, -2.0], [3.0, 0.0]])
    assert kern.sum_squares(x) == 14.0 and type(kern.sum_squares(x)) is float
    assert kern.sum_abs(x) == 6.0 and type(kern.sum_abs(x)) is float
    # (1 + 2**-12)² = 1 + 2**-11 + 2**-24 needs 25 bits: float32 squares lose the last
    # term, float64 accumulation keeps it exactly.
    y = np.full(3, 1 + 2.0**-12, np.float32)
    assert kern.sum_squares(y) == 3 * (1 + 2.0**-12) ** 2
    # 2**24 + 1 is not a float32: the sum must not be accumulated in float32.
    z = np.ones(2**24 + 1, np.float32)
    assert kern.sum_abs(z) == 2.0**24 + 1


@pytest.mark.parametrize("name", list(RULES))
def test_update_is_in_place_and_grad_is_read_only(kern, name):
    _, n_state, hyper = RULES[name]
    buf = np.zeros(8)
    param = buf[2:6]  # a contiguous view: the update must land in buf
    param[:] = P0
    grad = np.array(GRADS[0])
    grad_before = grad.copy()
    state = [np.zeros(4) for _ in range(n_state)]
    args = list(hyper) + ([1] if name == "adam_update" else [])
    assert getattr(kern, name)(param, grad, *state, 0.1, *args, 0.01, 0.01) is None
    want_p, want_state = _run_scalar_one_step(name)
    np.testing.assert_allclose(buf[2:6], want_p, rtol=1e-12)
    assert (buf[:2] == 0).all() and (buf[6:] == 0).all()
    np.testing.assert_array_equal(grad, grad_before)
    for got, want in zip(state, want_state):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def _run_scalar_one_step(name):
    ref, n_state, hyper = RULES[name]
    out_p, out_s = [], []
    for p, g in zip(P0, GRADS[0]):
        args = list(hyper) + ([1] if name == "adam_update" else [])
        p, st = ref(p, g, (0.0,) * n_state, 0.1, *args, 0.01, 0.01)
        out_p.append(p)
        out_s.append(st)
    return np.array(out_p), [np.array([s[j] for s in out_s]) for j in range(n_state)]


def _call(k, name, param=None, grad=None, state=None, lr=0.1, hyper=None, step=1, wd=0.0, l1=0.0):
    _, n_state, default_hyper = RULES[name]
    param = np.ones(3) if param is None else param
    grad = np.ones_like(param) if grad is None else grad
    state = [np.zeros_like(param) for _ in range(n_state)] if state is None else state
    hyper = list(default_hyper) if hyper is None else hyper
    args = hyper + ([step] if name == "adam_update" else [])
    getattr(k, name)(param, grad, *state, lr, *args, wd, l1)


@pytest.mark.parametrize("name", list(RULES))
def test_update_argument_errors(kern, name):
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param"):
        _call(kern, name, param=ro)
    with pytest.raises(TypeError, match="grad"):
        _call(kern, name, grad=np.ones(3, np.float32))
    with pytest.raises(TypeError):
        _call(kern, name, param=np.ones(3, np.int64), grad=np.ones(3, np.int64))
    with pytest.raises(ValueError, match="grad"):
        _call(kern, name, grad=np.ones(4))
    with pytest.raises(ValueError):
        _call(kern, name, param=np.ones((3, 4))[:, ::2].copy().T)  # non-contiguous
    with pytest.raises(ValueError, match="lr"):
        _call(kern, name, lr=-0.1)
    with pytest.raises(ValueError, match="lr"):
        _call(kern, name, lr=float("nan"))
    with pytest.raises(TypeError, match="lr"):
        _call(kern, name, lr="0.1")
    with pytest.raises(ValueError, match="weight_decay"):
        _call(kern, name, wd=-1.0)
    with pytest.raises(ValueError, match="l1"):
        _call(kern, name, l1=-1.0)
    _, n_state, _ = RULES[name]
    if n_state:
        with pytest.raises(ValueError):
            _call(kern, name, state=[np.zeros(2) for _ in range(n_state)])
        with pytest.raises(TypeError):
            _call(kern, name, state=[np.zeros(3, np.float32) for _ in range(n_state)])
        ro_state = [np.zeros(3) for _ in range(n_state)]
        ro_state[-1].flags.writeable = False
        with pytest.raises(ValueError):
            _call(kern, name, state=ro_state)


def test_hyper_parameter_ranges(kern):
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="momentum"):
            _call(kern, "momentum_update", hyper=[bad])
        with pytest.raises(ValueError, match="momentum"):
            _call(kern, "nesterov_update", hyper=[bad])
        with pytest.raises(ValueError, match="decay"):
            _call(kern, "rmsprop_update", hyper=[bad, 1e-7])
        with pytest.raises(ValueError, match="beta1"):
            _call(kern, "adam_update", hyper=[bad, 0.999, 1e-8])
        with pytest.raises(ValueError, match="beta2"):
            _call(kern, "adam_update", hyper=[0.9, bad, 1e-8])
    for bad in (0.0, -1e-8):
        with pytest.raises(ValueError, match="eps"):
            _call(kern, "adagrad_update", hyper=[bad])
        with pytest.raises(ValueError, match="eps"):
            _call(kern, "rmsprop_update", hyper=[0.9, bad])
        with pytest.raises(ValueError, match="eps"):
            _call(kern, "adam_update", hyper=[0.9, 0.999, bad])
    with pytest.raises(ValueError, match="step"):
        _call(kern, "adam_update", step=0)
    with pytest.raises(TypeError, match="step"):
        _call(kern, "adam_update", step=1.0)
    w = np.ones((2, 2))
    with pytest.raises(ValueError, match="max_norm"):
        kern.max_norm_update(w, 0.0, 0)
    with pytest.raises(ValueError, match="axis"):
        kern.max_norm_update(w, 1.0, 2)
    with pytest.raises(TypeError, match="axis"):
        kern.max_norm_update(w, 1.0, 0.0)
    with pytest.raises(ValueError, match="w"):
        kern.max_norm_update(np.ones(4), 1.0, 0)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="w"):
        kern.max_norm_update(w, 1.0, 0)
    with pytest.raises(TypeError):
        kern.sum_squares(np.ones(3, np.int32))
    with pytest.raises(TypeError):
        kern.sum_abs([1.0, 2.0])


def test_lr_zero_leaves_param_unchanged(kern):
    for name in RULES:
        p = np.array(P0)
        _call(kern, name, param=p, lr=0.0, wd=0.3, l1=0.1)
        np.testing.assert_array_equal(p, P0)


# ---------------------------------------------------------------------------------------
# Optimizers

A = np.array([[3.0, 1.0], [1.0, 2.0]])
B = np.array([1.0, -1.0])
W_STAR = np.linalg.solve(A, B)


def _quadratic_grad(p: Parameter) -> None:
    """grad of 0.5*||A w - b||²: A^T (A w - b), accumulated as a layer would."""
    p.grad += A.T @ (A @ p.data - B)


# Initial learning rates, divided by 10 after 500 and 1000 steps: the adaptive methods
# (RMSprop, Adam) take steps of about lr regardless of the gradient's size, so with a
# constant lr they hover around the optimum at a distance of order lr.
LR0 = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.5, "rmsprop": 0.01, "adam": 0.01}


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", optim.NAMES)
def test_optimizers_minimise_a_quadratic(name, backend_name):
    p = Parameter(np.zeros(2), "w")
    opt = optim.get(name, [p], lr=LR0[name])
    with backend.use(backend_name):
        for i in range(1500):
            if i in (500, 1000):
                opt.lr = opt.lr / 10
            opt.zero_grad()
            _quadratic_grad(p)
            opt.step()
    assert opt.steps == 1500
    np.testing.assert_allclose(p.data, W_STAR, atol=1e-8)


def test_classes_defaults_and_get():
    p = [Parameter(np.zeros(3), "w")]
    expect = {
        "sgd": (optim.SGD, {"lr": 0.01}),
        "momentum": (optim.Momentum, {"lr": 0.01, "momentum": 0.9}),
        "nesterov": (optim.Nesterov, {"lr": 0.01, "momentum": 0.9}),
        "adagrad": (optim.AdaGrad, {"lr": 0.01, "eps": 1e-7}),
        "rmsprop": (optim.RMSprop, {"lr": 0.01, "decay": 0.99, "eps": 1e-7}),
        "adam": (optim.Adam, {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    }
    assert set(expect) == set(optim.NAMES)
    for name, (cls, defaults) in expect.items():
        opt = optim.get(name, p)
        assert type(opt) is cls
        assert type(optim.get(name.upper(), p)) is cls
        for key, value in defaults.items():
            assert getattr(opt, key) == value, (name, key)
        assert opt.weight_decay == 0.0 and opt.l1 == 0.0 and opt.max_norm is None
    assert optim.get("adam", p, lr=0.5, beta2=0.9).beta2 == 0.9
    with pytest.raises(ValueError, match="adam"):
        optim.get("adamw", p)
    with pytest.raises(TypeError):
        optim.get(optim.SGD, p)


def test_constructor_errors():
    w = Parameter(np.zeros(3), "w")
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([])
    with pytest.raises(TypeError):
        optim.SGD(w)
    with pytest.raises(TypeError, match=r"params\[1\]"):
        optim.SGD([w, np.zeros(3)])
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([w, w])
    with pytest.raises(ValueError, match="lr"):
        optim.SGD([w], lr=-1)
    with pytest.raises(ValueError, match="momentum"):
        optim.Momentum([w], momentum=1.0)
    with pytest.raises(ValueError, match="decay"):
        optim.RMSprop([w], decay=1.5)
    with pytest.raises(ValueError, match="eps"):
        optim.Adam([w], eps=0)
    with pytest.raises(ValueError, match="max_norm"):
        optim.SGD([w], max_norm=0)
    with pytest.raises(ValueError, match="regularize"):
        optim.SGD([w], regularize="bias")
    with pytest.raises(TypeError, match="weight_decay"):
        optim.SGD([w], weight_decay="1")
    opt = optim.SGD([w])
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -0.5
    assert opt.lr == 0.01


def _model(dtype=np.float64):
    W = Parameter(np.array([[1.0, -2.0], [3.0, 0.0]], dtype), "W", regularize=True)
    b = Parameter(np.array([5.0, -1.0], dtype), "b", regularize=False)
    return W, b


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_regularize_flag_and_penalty(backend_name):
    with backend.use(backend_name):
        W, b = _model()
        opt = optim.SGD([W, b], lr=0.1, weight_decay=0.1, l1=0.01)
        # 0.5*0.1*(1 + 4 + 9) + 0.01*(1 + 2 + 3) = 0.7 + 0.06; b is not regularized
        assert opt.penalty() == pytest.approx(0.76, rel=1e-15)
        assert type(opt.penalty()) is float
        opt.step()  # zero gradients: only the penalties move W
        np.testing.assert_allclose(W.data, [[1 - 0.01 - 0.001, -2 + 0.02 + 0.001], [3 - 0.03 - 0.001, 0.0]], rtol=1e-15)
        np.testing.assert_array_equal(b.data, [5.0, -1.0])

        W, b = _model()
        opt = optim.SGD([W, b], lr=0.1, weight_decay=0.1, l1=0.01, regularize="all")
        # + 0.5*0.1*(25 + 1) + 0.01*(5 + 1)
        assert opt.penalty() == pytest.approx(0.76 + 1.3 + 0.06, rel=1e-15)
        opt.step()
        np.testing.assert_allclose(b.data, [5 - 0.05 - 0.001, -1 + 0.01 + 0.001], rtol=1e-15)

        assert optim.Adam(list(_model())).penalty() == 0.0


def test_max_norm_in_optimizer_applies_to_weights_only():
    W = Parameter(np.array([[3.0, 0.1], [4.0, 0.1]]), "W", regularize=True)
    conv = Parameter(np.zeros((3, 2, 2, 2)), "conv", regularize=True)
    conv.data[0] = 1.0  # norm sqrt(8) > 2
    conv.data[1] = 0.5  # norm sqrt(2) < 2
    b = Parameter(np.array([30.0, 40.0]), "b")
    bias2d = Parameter(np.array([[30.0], [40.0]]), "b2")
    opt = optim.SGD([W, conv, b, bias2d], lr=0.1, max_norm=2.0)
    opt.step()
    np.testing.assert_allclose(W.data[:, 0], [1.2, 1.6], rtol=1e-15)
    np.testing.assert_array_equal(W.data[:, 1], [0.1, 0.1])
    np.testing.assert_allclose(conv.data[0], np.full((2, 2, 2), 2 / math.sqrt(8)), rtol=1e-15)
    np.testing.assert_array_equal(conv.data[1], 0.5)
    np.testing.assert_array_equal(b.data, [30.0, 40.0])
    np.testing.assert_array_equal(bias2d.data, [[30.0], [40.0]])


def test_zero_grad_and_step_counter():
    W, b = _model()
    W.grad[:] = 1.0
    b.grad[:] = 2.0
    opt = optim.Momentum([W, b])
    opt.step()
    opt.step()
    assert opt.steps == 2
    opt.zero_grad()
    assert not W.grad.any() and not b.grad.any()


def test_arrays_are_read_through_the_attributes_each_step():
    p = Parameter(np.array([1.0, 2.0]), "w")
    opt = optim.Adam([p], lr=0.1)
    flat = np.zeros(4)
    flat[:2] = p.data
    p.data = flat[:2]  # rebound, e.g. into one contiguous buffer
    p.grad = flat[2:]
    flat[2:] = [1.0, -1.0]
    opt.step()
    np.testing.assert_allclose(flat[:2], [0.9, 2.1], rtol=1e-6)


def test_step_dispatches_through_the_backend(monkeypatch):
    calls = []
    numpy_table = backend._TABLES["numpy"]

    def recording(name):
        def f(*args):
            calls.append(name)
            return getattr(numpy_table, name)(*args)
        return f

    spy = SimpleNamespace(**{n: recording(n) for n in backend.KERNEL_NAMES})
    monkeypatch.setitem(backend._TABLES, "numpy", spy)
    W, b = _model()
    opt = optim.Adam([W, b], weight_decay=0.1, max_norm=10.0)
    with backend.use("numpy"):
        opt.step()
        opt.penalty()
    assert calls == ["adam_update", "max_norm_update", "adam_update", "sum_squares"]


def _trajectory(opt, params, steps):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        for p in params:
            p.grad += np.sin(3 * p.data) + 0.5 * p.data  # a fixed, state-independent gradient field
        opt.step()
        out.append([p.data.copy() for p in params])
    return out


KW = {
    "sgd": {"lr": 0.05},
    "momentum": {"lr": 0.05, "momentum": 0.8},
    "nesterov": {"lr": 0.05, "momentum": 0.7},
    "adagrad": {"lr": 0.1, "eps": 1e-6},
    "rmsprop": {"lr": 0.01, "decay": 0.9, "eps": 1e-6},
    "adam": {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", optim.NAMES)
def test_state_dict_round_trip_continues_bitwise(name, dtype):
    W, b = _model(dtype)
    opt = optim.get(name, [W, b], weight_decay=0.01, l1=0.001, max_norm=3.0, **KW[name])
    _trajectory(opt, [W, b], 3)
    sd = opt.state_dict()
    saved = [W.data.copy(), b.data.copy()]
    expected = _trajectory(opt, [W, b], 4)

    # The dict holds copies: continuing the first optimizer did not change it.
    assert sd["step"] == 3 and type(sd["step"]) is int
    assert sd["type"] == type(opt).__name__
    for key, value in sd.items():
        if key.startswith("state."):
            assert isinstance(value, np.ndarray) and value.dtype == dtype
            assert not any(np.shares_memory(value, s) for st in opt.state for s in st.values())
        else:
            assert value is None or isinstance(value, (int, float, str))
    n_arrays = sum(key.startswith("state.") for key in sd)
    assert n_arrays == 2 * len(opt.state_names)

    W2, b2 = Parameter(saved[0].copy(), "W", True), Parameter(saved[1].copy(), "b")
    # Different settings on purpose: load_state_dict must restore them all.
    opt2 = optim.get(name, [W2, b2], lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.steps == 3 and opt2.hyper_parameters() == opt.hyper_parameters()
    got = _trajectory(opt2, [W2, b2], 4)
    for e_step, g_step in zip(expected, got):
        for e, g in zip(e_step, g_step):
            np.testing.assert_array_equal(g, e)
    assert W2.data.tobytes() == W.data.tobytes()


def test_load_state_dict_errors_name_the_key_and_change_nothing():
    W, b = _model()
    opt = optim.Adam([W, b], lr=0.01)
    W.grad[:] = 1.0
    opt.step()
    good = opt.state_dict()
    before = opt.state_dict()

    def bad(mutate, match):
        d = dict(good)
        mutate(d)
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(d)
        after = opt.state_dict()
        assert after.keys() == before.keys()
        for key in before:
            if isinstance(before[key], np.ndarray):
                np.testing.assert_array_equal(after[key], before[key])
            else:
                assert after[key] == before[key]

    bad(lambda d: d.pop("state.1.v"), "'state.1.v'")
    bad(lambda d: d.pop("beta1"), "'beta1'")
    bad(lambda d: d.update({"state.2.m": np.zeros(2)}), "'state.2.m'")
    bad(lambda d: d.update({"state.0.m": np.zeros((2, 3))}), "'state.0.m'")
    bad(lambda d: d.update({"state.0.m": np.zeros((2, 2), np.float32)}), "'state.0.m'")
    bad(lambda d: d.update({"state.0.m": [[0.0, 0.0], [0.0, 0.0]]}), "'state.0.m'")
    bad(lambda d: d.update({"type": "SGD"}), "'type'")
    bad(lambda d: d.update({"step": -1}), "'step'")
    bad(lambda d: d.update({"step": 1.5}), "'step'")
    bad(lambda d: d.update({"lr": -1.0, "state.0.m": np.ones((2, 2))}), "lr")
    bad(lambda d: d.update({"beta2": 1.0}), "beta2")
    bad(lambda d: d.update({"regularize": "none"}), "'regularize'")
    with pytest.raises(TypeError):
        opt.load_state_dict([("lr", 0.1)])
    other = optim.Adam([Parameter(np.zeros(3), "x"), Parameter(np.zeros(2), "y")])
    with pytest.raises(ValueError, match="'state.0.m'"):
        other.load_state_dict(good)
