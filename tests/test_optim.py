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


# ---------------------------------------------------------------------------------------
# Flat buffers: the optimizer packs its parameters into one buffer per group


def _mixed_params(seed=0):
    """Weights (2-D and 4-D), biases, BatchNorm-like vectors, a float64 pair and an empty one."""
    rng = np.random.default_rng(seed)

    def P(shape, name, reg, dtype=np.float32):
        return Parameter(rng.standard_normal(shape).astype(dtype), name, regularize=reg)

    return [
        P((5, 4), "W1", True), P((4,), "b1", False), P((3, 2, 3, 3), "conv", True), P((3,), "cb", False),
        P((4,), "gamma", False), P((4,), "beta", False), P((4, 3), "W2", True),
        P((3, 2), "W64", True, np.float64), P((2,), "b64", False, np.float64),
        P((0, 3), "empty", True), P((6, 0), "empty_bias", False),
    ]


def _fill_grads(params, rng):
    for p in params:
        p.grad += (rng.standard_normal(p.shape) * 0.5).astype(p.dtype)


def _groups_by_base(params, attr="data"):
    bases: dict[int, list[str]] = {}
    for p in params:
        a = getattr(p, attr)
        assert a.base is not None, f"{p.name}.{attr} is not a view"
        bases.setdefault(id(a.base), []).append(p.name)
    return sorted(sorted(v) for v in bases.values())


EXPECTED_GROUPS = sorted(sorted(g) for g in (
    ["W1", "conv", "W2", "empty"], ["b1", "cb", "gamma", "beta", "empty_bias"], ["W64"], ["b64"]))


@pytest.mark.parametrize("name", optim.NAMES)
def test_params_become_views_of_one_buffer_per_group(name):
    params = _mixed_params()
    before = [(p.data.copy(), p.grad.copy(), p.data.dtype, p.shape) for p in params]
    opt = optim.get(name, params, weight_decay=0.1)
    for p, (data, grad, dtype, shape) in zip(params, before):
        assert p.data.dtype == dtype and p.shape == shape and p.grad.shape == shape
        assert p.data.flags.c_contiguous and p.data.flags.writeable
        np.testing.assert_array_equal(p.data, data)  # values carried over
        np.testing.assert_array_equal(p.grad, grad)
    assert _groups_by_base(params, "data") == EXPECTED_GROUPS
    assert _groups_by_base(params, "grad") == EXPECTED_GROUPS
    # The segments tile each buffer exactly, back to back, with no overlap.
    for p in params:
        assert p.data.base.size == sum(q.data.size for q in params if q.data.base is p.data.base)
        assert not np.shares_memory(p.data, p.grad)
    for i, p in enumerate(params):
        for s in opt.state[i].values():
            assert s.base is not None and s.shape == p.shape and not np.shares_memory(s, p.data)
    # regularize="all" puts weights and biases of one dtype together.
    params = _mixed_params()
    optim.get(name, params, regularize="all")
    assert len({id(p.data.base) for p in params}) == 2


def _recording_table(monkeypatch, calls):
    """Wraps every kernel of both backends so that each call is recorded with its first argument."""
    for backend_name in BACKENDS:
        table = backend._TABLES[backend_name]

        def wrap(name, f):
            def g(*args):
                calls.append((name, args[0]))
                return f(*args)
            return g

        spy = SimpleNamespace(**{n: wrap(n, getattr(table, n)) for n in backend.KERNEL_NAMES})
        monkeypatch.setitem(backend._TABLES, backend_name, spy)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_one_kernel_call_per_group(monkeypatch, backend_name):
    calls = []
    _recording_table(monkeypatch, calls)
    params = _mixed_params()
    opt = optim.Adam(params, weight_decay=0.1, l1=0.01)
    with backend.use(backend_name):
        _fill_grads(params, np.random.default_rng(1))
        opt.zero_grad()
        # One zero_update per gradient buffer, each the whole buffer.
        assert [n for n, _ in calls] == ["zero_update"] * 4
        assert sorted(a.size for _, a in calls) == sorted([2, 6, 4 + 3 + 4 + 4 + 0, 20 + 54 + 12 + 0])
        assert all(not p.grad.any() for p in params)
        calls.clear()
        _fill_grads(params, np.random.default_rng(1))
        opt.step()
        assert [n for n, _ in calls] == ["adam_update"] * 4
        # Each call covers a whole buffer: 5*4 + 3*2*3*3 + 4*3 + 0 float32 weights, and so on.
        assert sorted(a.size for _, a in calls) == sorted([2, 6, 4 + 3 + 4 + 4 + 0, 20 + 54 + 12 + 0])
        calls.clear()
        opt.penalty()
        assert sorted(n for n, _ in calls) == ["sum_abs", "sum_abs", "sum_squares", "sum_squares"]
        calls.clear()
        opt.max_norm = 1.0
        opt.step()
        # max-norm runs per 2-D or 4-D weight (W1, conv, W2, W64; not the empty one).
        names = [n for n, _ in calls]
        assert names.count("adam_update") == 4 and names.count("max_norm_update") == 4


def _per_param_reference(k, name, params, states, kw, step, wd, l1, max_norm):
    """The textbook loop: one kernel call per parameter, weight decay on weights only."""
    for p, st in zip(params, states):
        pw, pl = (wd, l1) if p.regularize else (0.0, 0.0)
        if name == "sgd":
            k.sgd_update(p.data, p.grad, kw["lr"], pw, pl)
        elif name in ("momentum", "nesterov"):
            getattr(k, f"{name}_update")(p.data, p.grad, st["v"], kw["lr"], kw["momentum"], pw, pl)
        elif name == "adagrad":
            k.adagrad_update(p.data, p.grad, st["h"], kw["lr"], kw["eps"], pw, pl)
        elif name == "rmsprop":
            k.rmsprop_update(p.data, p.grad, st["h"], kw["lr"], kw["decay"], kw["eps"], pw, pl)
        else:
            k.adam_update(p.data, p.grad, st["m"], st["v"], kw["lr"], kw["beta1"], kw["beta2"], kw["eps"],
                          step, pw, pl)
        if p.regularize and max_norm is not None and p.data.size:
            if p.data.ndim == 2:
                k.max_norm_update(p.data, max_norm, 0)
            elif p.data.ndim == 4:
                k.max_norm_update(p.data.reshape(p.shape[0], -1), max_norm, 1)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", optim.NAMES)
def test_slab_step_equals_per_parameter_updates(name, backend_name):
    params, ref = _mixed_params(3), _mixed_params(3)
    opt = optim.get(name, params, weight_decay=0.05, l1=0.01, max_norm=2.0, **KW[name])
    ref_state = [{s: np.zeros_like(p.data) for s in opt.state_names} for p in ref]
    rng, ref_rng = np.random.default_rng(4), np.random.default_rng(4)
    with backend.use(backend_name):
        k = backend.kernels()
        for step in range(1, 6):
            opt.zero_grad()
            for p in ref:
                p.zero_grad()
            _fill_grads(params, rng)
            _fill_grads(ref, ref_rng)
            opt.step()
            _per_param_reference(k, name, ref, ref_state, KW[name], step, 0.05, 0.01, 2.0)
            # Element-wise kernels give each element the same operations wherever it sits,
            # so the one call over a buffer equals the calls per parameter bit for bit.
            for p, q in zip(params, ref):
                np.testing.assert_array_equal(p.data, q.data, err_msg=f"{p.name} step {step}")
            for st, rst in zip(opt.state, ref_state):
                for s in opt.state_names:
                    np.testing.assert_array_equal(st[s], rst[s])


@pytest.mark.parametrize("name", optim.NAMES)
def test_rebinding_data_is_noticed_and_repacked(name):
    params, ref = _mixed_params(5), _mixed_params(5)
    opt = optim.get(name, params, weight_decay=0.05, **KW[name])
    ref_state = [{s: np.zeros_like(p.data) for s in opt.state_names} for p in ref]
    rng, ref_rng = np.random.default_rng(6), np.random.default_rng(6)
    k = backend.kernels()

    def both_steps(step):
        _fill_grads(params, rng)
        _fill_grads(ref, ref_rng)
        opt.step()
        _per_param_reference(k, name, ref, ref_state, KW[name], step, 0.05, 0.0, None)

    both_steps(1)
    # A user replaces a weight array (e.g. loading values by assignment) and a gradient.
    new_w = np.full((5, 4), 0.25, np.float32)
    params[0].data = new_w
    ref[0].data = new_w.copy()
    new_g = np.full(3, -1.0, np.float32)
    params[3].grad = new_g
    ref[3].grad = new_g.copy()
    opt.zero_grad()  # notices: zeroes the arrays the parameters now hold, then repacks
    assert not new_g.any()
    for p in ref:
        p.zero_grad()
    assert _groups_by_base(params) == EXPECTED_GROUPS
    assert not np.shares_memory(params[0].data, new_w)
    for step in (2, 3):
        both_steps(step)
    params[0].data = np.full((5, 4), -0.5, np.float32)
    ref[0].data = np.full((5, 4), -0.5, np.float32)
    both_steps(4)  # the step itself notices, updates the new array, then repacks
    assert _groups_by_base(params) == EXPECTED_GROUPS
    both_steps(5)
    for p, q in zip(params, ref):
        np.testing.assert_array_equal(p.data, q.data, err_msg=p.name)
    for st, rst in zip(opt.state, ref_state):  # the state carried over every repack
        for s in opt.state_names:
            np.testing.assert_array_equal(st[s], rst[s])


def test_rebinding_is_noticed_by_penalty_and_by_regularize_changes():
    W, b = _model()
    opt = optim.SGD([W, b], lr=0.1, weight_decay=1.0)
    assert opt.penalty() == 7.0  # 0.5 * (1 + 4 + 9)
    W.data = np.array([[2.0, 0.0], [0.0, 0.0]])
    assert opt.penalty() == 2.0
    assert W.data.base is not None  # repacked
    b.regularize = True  # b joins the penalised group at the next call
    assert opt.penalty() == 2.0 + 0.5 * (25 + 1)
    assert W.data.base is b.data.base
    opt.regularize = "weights"
    b.regularize = False
    opt.step()  # zero gradients: weight decay shrinks W only
    np.testing.assert_array_equal(W.data, [[1.8, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(b.data, [5.0, -1.0])


def test_two_optimizers_over_the_same_parameters_update_the_live_arrays():
    W, b = _model()
    first = optim.SGD([W, b], lr=0.1)
    second = optim.Momentum([W, b], lr=0.1, momentum=0.5)  # packs them into its own buffers
    want_w, want_b = W.data.copy(), b.data.copy()
    v_w, v_b = np.zeros_like(want_w), np.zeros_like(want_b)
    for i in range(4):
        opt = (first, second)[i % 2]
        opt.zero_grad()
        W.grad += 1.0
        b.grad += 2.0
        opt.step()
        if opt is first:
            want_w -= 0.1 * 1.0
            want_b -= 0.1 * 2.0
        else:
            v_w = 0.5 * v_w - 0.1 * 1.0
            v_b = 0.5 * v_b - 0.1 * 2.0
            want_w += v_w
            want_b += v_b
        np.testing.assert_allclose(W.data, want_w, rtol=1e-14)
        np.testing.assert_allclose(b.data, want_b, rtol=1e-14)
        # The one that stepped last owns the arrays again (W and b: two groups).
        assert {id(W.data.base), id(b.data.base)} == {id(g.data) for g in opt._groups}


def test_shared_parameter_empty_parameter_and_float64_group():
    from fastlayers import layers, losses

    a = layers.Affine(3, 3, dtype=np.float64, rng=np.random.default_rng(0))
    c = layers.Affine(3, 3, dtype=np.float64, rng=np.random.default_rng(1))
    c.W = a.W  # one Parameter object used by two layers
    model = layers.Sequential(a, layers.ReLU(), c)
    params = model.parameters()
    assert len(params) == 3  # a.W once, a.b, c.b
    empty = Parameter(np.zeros((0, 4), np.float64), "empty", regularize=True)
    opt = optim.Adam(params + [empty], lr=0.01, weight_decay=0.01, max_norm=10.0)
    assert a.W is c.W and a.W.data.base is not None
    x = np.random.default_rng(2).standard_normal((4, 3))
    t = np.array([0, 1, 2, 0])
    loss = losses.SoftmaxCrossEntropy()
    w0 = a.W.data.copy()
    losses_seen = []
    for _ in range(3):
        opt.zero_grad()
        losses_seen.append(loss.forward(model.forward(x, train=True), t) + opt.penalty())
        model.backward(loss.backward())
        opt.step()
    assert losses_seen[-1] < losses_seen[0]
    assert empty.data.shape == (0, 4) and empty.grad.shape == (0, 4)
    # Both layers see the one updated weight.
    assert c.W.data is a.W.data and not np.array_equal(a.W.data, w0)
    sd = opt.state_dict()
    opt2 = optim.Adam(params + [empty])
    opt2.load_state_dict(sd)
    for i, st in enumerate(opt2.state):
        for s, arr in st.items():
            np.testing.assert_array_equal(arr, sd[f"state.{i}.{s}"])
            assert arr.base is not None  # loaded into the state buffers, not rebound


def test_state_dict_arrays_are_copies_of_the_buffers_and_load_writes_into_them():
    W, b = _model(np.float32)
    opt = optim.Adam([W, b], lr=0.1)
    W.grad[:] = 1.0
    opt.step()
    sd = opt.state_dict()
    bases = [s.base for st in opt.state for s in st.values()]
    sd["state.0.m"][:] = 7.0  # the dict owns its arrays
    assert not (opt.state[0]["m"] == 7.0).any()
    opt.load_state_dict(sd)
    assert (opt.state[0]["m"] == 7.0).all()
    assert [s.base for st in opt.state for s in st.values()] == bases


def test_deep_copy_of_model_and_optimizer_trains_independently():
    import copy

    W, b = _model()
    opt = optim.Momentum([W, b], lr=0.1)
    W.grad[:] = 1.0
    opt.step()
    (W2, b2), opt2 = copy.deepcopy(((W, b), opt))
    before = W.data.copy()
    for _ in range(2):
        opt2.zero_grad()
        W2.grad += 1.0
        opt2.step()
    np.testing.assert_array_equal(W.data, before)  # the original is untouched
    # v: -0.1, then 0.9*(-0.1) - 0.1 = -0.19, then 0.9*(-0.19) - 0.1 = -0.271 (cumulative)
    np.testing.assert_allclose(W2.data, before - 0.19 - 0.271, rtol=1e-14)
    assert W2.data.base is opt2._groups[0].data or W2.data.base is opt2._groups[1].data


def test_unpackable_rebinding_falls_back_to_the_kernels_errors():
    W, b = _model()
    opt = optim.Adam([W, b], lr=0.1)
    W.data = np.zeros((3, 3))  # no longer the shape of its state
    W.grad = np.zeros((3, 3))
    opt.zero_grad()  # zeroes what is there; cannot repack
    with pytest.raises(ValueError, match="'m'"):
        opt.step()  # the kernel names the mismatching state array, as before buffers existed
    W.data, W.grad = np.ones((2, 2)), np.ones((2, 2))
    opt.step()  # packable again: per parameter this once, then back into buffers
    assert W.data.base is not None and W.data.base is not b.data.base
