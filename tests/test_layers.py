"""Layers: backward against central differences on both backends, and the Layer API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastlayers import backend, models
from fastlayers import layers as L
from fastlayers import losses
from fastlayers.numerical import numerical_gradient
from tests.tolerance import numerical_gradient_rtol

f64 = np.float64


@pytest.fixture(params=["numpy", "native"])
def backend_name(request):
    with backend.use(request.param):
        yield request.param


def assert_grad_close(analytic, numeric, what):
    """Element-wise relative check; the absolute floor is the same rtol on the gradient's scale,
    because central differences carry an absolute cancellation error, not a relative one."""
    rtol = numerical_gradient_rtol()
    analytic = np.asarray(analytic, f64)
    scale = max(1.0, float(np.abs(numeric).max(initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=rtol * scale, err_msg=what)


def away_from_zero(rng, shape, low=0.1):
    """Values with |x| >= low, so that no kink of ReLU-like functions is within h of an entry."""
    mag = rng.uniform(low, 1.0, size=shape)
    return np.where(rng.random(shape) < 0.5, -mag, mag)


def distinct(rng, shape):
    """A permutation of well-separated values, so that every max has a clear winner."""
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(f64) * 0.05 - n * 0.025).reshape(shape)


def normal(rng, shape):
    return rng.standard_normal(shape)


def frozen_dropout(p, mode):
    layer = L.Dropout(p, mode=mode)
    layer.seed = 1234
    return layer


# (id, layer factory, input factory, input shapes, train flag)
CASES = [
    ("affine", lambda: L.Affine(5, 4, dtype=f64, rng=0), normal, [(1, 5), (3, 5)], True),
    ("affine-nobias", lambda: L.Affine(5, 4, bias=False, dtype=f64, rng=0), normal, [(3, 5)], True),
    ("affine-4d", lambda: L.Affine(8, 3, dtype=f64, rng=0), normal, [(1, 2, 2, 2), (3, 2, 2, 2)], True),
    ("conv-pad1", lambda: L.Conv2d(2, 3, 3, padding=1, dtype=f64, rng=0), normal, [(1, 2, 5, 5), (2, 2, 5, 5)], True),
    ("conv-stride2-rect", lambda: L.Conv2d(1, 2, (2, 3), stride=2, dtype=f64, rng=0), normal, [(2, 1, 6, 7)], True),
    ("maxpool", lambda: L.MaxPool2d(2), distinct, [(1, 2, 4, 4), (2, 2, 4, 4)], True),
    ("maxpool-overlap-pad", lambda: L.MaxPool2d(3, stride=2, padding=1), distinct, [(2, 2, 5, 5)], True),
    ("avgpool", lambda: L.AvgPool2d(2), normal, [(1, 2, 4, 4), (2, 2, 4, 4)], True),
    ("avgpool-overlap-pad", lambda: L.AvgPool2d(3, stride=2, padding=1), normal, [(2, 1, 5, 5)], True),
    ("flatten", lambda: L.Flatten(), normal, [(1, 2, 3, 2), (3, 2, 3, 2)], True),
    ("batchnorm-2d-train", lambda: L.BatchNorm(4, dtype=f64), normal, [(2, 4), (5, 4)], True),
    ("batchnorm-4d-train", lambda: L.BatchNorm(2, dtype=f64), normal, [(3, 2, 3, 3)], True),
    ("batchnorm-2d-eval", lambda: L.BatchNorm(4, dtype=f64), normal, [(1, 4), (3, 4)], False),
    ("batchnorm-4d-eval", lambda: L.BatchNorm(2, dtype=f64), normal, [(2, 2, 3, 3)], False),
    ("dropout-inverted-train", lambda: frozen_dropout(0.3, "inverted"), normal, [(1, 6), (4, 6)], True),
    ("dropout-textbook-train", lambda: frozen_dropout(0.3, "scale_at_inference"), normal, [(2, 2, 3, 3)], True),
    ("dropout-inverted-eval", lambda: L.Dropout(0.3), normal, [(3, 6)], False),
    ("dropout-textbook-eval", lambda: L.Dropout(0.3, mode="scale_at_inference"), normal, [(3, 6)], False),
    ("relu", lambda: L.ReLU(), away_from_zero, [(1, 5), (3, 2, 2, 2)], True),
    ("leaky_relu", lambda: L.LeakyReLU(0.1), away_from_zero, [(1, 5), (3, 5)], True),
    ("prelu-shared", lambda: L.PReLU(dtype=f64), away_from_zero, [(1, 5), (3, 5)], True),
    ("prelu-channels", lambda: L.PReLU(3, init=0.2, dtype=f64), away_from_zero, [(2, 3, 2, 2)], True),
    ("sigmoid", lambda: L.Sigmoid(), normal, [(1, 5), (3, 5)], True),
    ("tanh", lambda: L.Tanh(), normal, [(1, 5), (3, 5)], True),
    ("hardtanh", lambda: L.HardTanh(-0.5, 0.7), lambda r, s: r.choice([-0.9, -0.3, 0.1, 0.5, 0.9], s) + r.uniform(-0.05, 0.05, s), [(1, 5), (3, 5)], True),
    ("softplus", lambda: L.Softplus(), normal, [(1, 5), (3, 5)], True),
    ("identity", lambda: L.Identity(), normal, [(1, 5), (3, 5)], True),
    ("softmax", lambda: L.Softmax(), normal, [(1, 4), (3, 4)], True),
    ("maxout", lambda: L.Maxout(4, 3, pieces=3, dtype=f64, rng=0), normal, [(1, 4), (3, 4)], True),
    ("rbf", lambda: L.RBF(3, 4, dtype=f64, rng=0), normal, [(1, 3), (3, 3)], True),
]

GRAD_PARAMS = [
    pytest.param(make, xfn, shape, train, id=f"{cid}-{'x'.join(map(str, shape))}")
    for cid, make, xfn, shapes, train in CASES
    for shape in shapes
]


def perturb_params(layer, rng):
    """Moves parameters off their initial constants (BatchNorm's ones/zeros, RBF's unit widths)
    so that a backward formula that happens to hold only at those values is caught."""
    for _, p in layer.named_parameters():
        if p.data.ndim == 1 and p.data.size and isinstance(layer, (L.BatchNorm, L.RBF)):
            p.data[...] += rng.uniform(0.2, 0.5, p.data.shape)
    if isinstance(layer, L.BatchNorm):
        layer.running_mean[...] = rng.standard_normal(layer.running_mean.shape)
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.running_var.shape)


@pytest.mark.parametrize("make, xfn, shape, train", GRAD_PARAMS)
def test_backward_matches_numerical_gradient(backend_name, make, xfn, shape, train):
    assert backend.get_backend() == backend_name
    rng = np.random.default_rng(0)
    layer = make()
    perturb_params(layer, rng)
    x = np.ascontiguousarray(xfn(rng, shape), dtype=f64)
    out = layer.forward(x, train=train)
    R = rng.standard_normal(out.shape)
    dout = R.copy()
    for p in layer.parameters():
        p.zero_grad()
    dx = layer.backward(dout)
    assert np.array_equal(dout, R), "backward wrote into dout"
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert not np.shares_memory(dx, dout)

    def f():
        return float(np.sum(layer.forward(x, train=train) * R))

    assert_grad_close(dx, numerical_gradient(f, x), "input gradient")
    for name, p in layer.named_parameters():
        assert_grad_close(p.grad, numerical_gradient(f, p.data), f"gradient of {name}")


PARAM_CASES = [pytest.param(make, xfn, shapes[-1], train, id=cid) for cid, make, xfn, shapes, train in CASES]


@pytest.mark.parametrize("make, xfn, shape, train", PARAM_CASES)
def test_param_grads_accumulate_and_input_grad_can_be_skipped(make, xfn, shape, train):
    rng = np.random.default_rng(1)
    layer = make()
    x = np.ascontiguousarray(xfn(rng, shape), dtype=f64)
    out = layer.forward(x, train=train)
    dout = rng.standard_normal(out.shape)
    for p in layer.parameters():
        p.zero_grad()
    layer.backward(dout)
    once = [p.grad.copy() for p in layer.parameters()]
    layer.backward(dout)
    for g1, p in zip(once, layer.parameters()):
        np.testing.assert_allclose(p.grad, 2 * g1, rtol=1e-12, atol=0)

    for p in layer.parameters():
        p.zero_grad()
    layer.needs_input_grad = False
    assert layer.backward(dout) is None
    for g1, p in zip(once, layer.parameters()):
        np.testing.assert_allclose(p.grad, g1, rtol=1e-12, atol=0)


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        L.Affine(3, 2).backward(np.ones((1, 2), np.float32))


def test_dout_of_wrong_shape_or_dtype_is_refused():
    layer = L.ReLU()
    layer.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"ReLU: dout has shape \(3, 2\)"):
        layer.backward(np.ones((3, 2), np.float32))
    with pytest.raises(TypeError, match="ReLU: dout has dtype float64"):
        layer.backward(np.ones((2, 3), np.float64))


# ---- dtypes and shapes ------------------------------------------------------------------


def test_parameters_default_to_float32_and_follow_dtype():
    for layer in (L.Affine(3, 2), L.Conv2d(1, 2, 3), L.BatchNorm(3), L.PReLU(), L.Maxout(3, 2), L.RBF(3, 2)):
        assert all(p.dtype == np.float32 for p in layer.parameters()), layer
    assert all(b.dtype == np.float32 for b in L.BatchNorm(3).buffers().values())
    assert all(p.dtype == np.float64 for p in L.Conv2d(1, 2, 3, dtype=np.float64).parameters())


@pytest.mark.parametrize(
    "layer, shape",
    [
        (L.Affine(4, 2), (2, 4)),
        (L.Conv2d(1, 2, 3), (1, 1, 4, 4)),
        (L.BatchNorm(4), (2, 4)),
        (L.PReLU(), (2, 4)),
        (L.Maxout(4, 2), (2, 4)),
        (L.RBF(4, 2), (2, 4)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, L.Layer) else None,
)
def test_input_dtype_must_match_parameters(layer, shape):
    with pytest.raises(TypeError) as err:
        layer.forward(np.ones(shape, np.float64))
    msg = str(err.value)
    assert type(layer).__name__ in msg and "float32" in msg and "float64" in msg


def test_parameterless_layers_refuse_non_float_input():
    with pytest.raises(TypeError, match="ReLU: input must have dtype float32 or float64, got int64"):
        L.ReLU().forward(np.ones((2, 2), np.int64))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        L.Sigmoid().forward([[1.0, 2.0]])


def test_shape_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"Conv2d\(3->16\): input has 1 channels"):
        L.Conv2d(3, 16, 3).forward(np.ones((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d\(1->2\): input must be 4-D"):
        L.Conv2d(1, 2, 3).forward(np.ones((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="smaller than the 5x5 filter"):
        L.Conv2d(1, 2, 5).forward(np.ones((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d\(2x2, stride=2, padding=0\): input must be 4-D"):
        L.MaxPool2d(2).forward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"AvgPool2d.*smaller than the 3x3 window"):
        L.AvgPool2d(3).forward(np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"Affine\(10->2\): input has 12 features"):
        L.Affine(10, 2).forward(np.ones((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm\(3\): input has 4 channels"):
        L.BatchNorm(3).forward(np.ones((2, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="padding 2 exceeds half"):
        L.MaxPool2d(3, padding=2)
    with pytest.raises(ValueError, match="Dropout: p must be in"):
        L.Dropout(1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        L.Dropout(0.5, mode="bogus")


def test_affine_flattens_4d_input_like_the_textbook(backend_name):
    rng = np.random.default_rng(2)
    layer = L.Affine(12, 5, rng=3)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    out = layer.forward(x)
    np.testing.assert_allclose(out, x.reshape(4, 12) @ layer.W.data + layer.b.data, rtol=1e-5, atol=1e-6)
    dx = layer.backward(np.ones_like(out))
    assert dx.shape == (4, 3, 2, 2)
    np.testing.assert_allclose(dx, np.broadcast_to(layer.W.data.sum(axis=1).reshape(3, 2, 2), x.shape), rtol=1e-5)


def test_non_contiguous_input_is_accepted():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(L.ReLU().forward(x), np.maximum(x, 0))


# ---- train / eval behaviour ---------------------------------------------------------------


def test_batchnorm_running_statistics(backend_name):
    rng = np.random.default_rng(3)
    bn = L.BatchNorm(3, momentum=0.8, dtype=f64)
    x = rng.standard_normal((6, 3, 2, 2)) * 2 + 1
    bn.forward(x, train=True)
    np.testing.assert_allclose(bn.running_mean, 0.2 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)

    bn.gamma.data[...] = [1.5, 0.5, 2.0]
    bn.beta.data[...] = [0.1, -0.2, 0.3]
    before = bn.state_dict()
    bn.eval()
    y = bn.forward(x)
    shape = (1, 3, 1, 1)
    expect = (x - bn.running_mean.reshape(shape)) / np.sqrt(bn.running_var.reshape(shape) + bn.eps)
    expect = expect * bn.gamma.data.reshape(shape) + bn.beta.data.reshape(shape)
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-14)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"eval forward changed {k}")

    # An explicit flag overrides the mode; training output uses the batch statistics.
    y_train = bn.forward(x, train=True)
    np.testing.assert_allclose(y_train.mean(axis=(0, 2, 3)), bn.beta.data, atol=1e-12)


def test_dropout_inverted_preserves_the_expected_value(backend_name):
    p = 0.4
    d = L.Dropout(p)
    d.set_rng(np.random.default_rng(0))
    x = np.full((200, 500), 2.0, np.float32)
    y = d.forward(x, train=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2.0 / (1 - p), rtol=1e-6)
    # The mean of 1e5 Bernoulli(0.6)/0.6 scaled values has std ~ 0.0026 * 2.
    assert abs(y.mean() - 2.0) < 0.03
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_array_equal(d.forward(x, train=False), x)
    assert not np.shares_memory(d.forward(x, train=False), x)


def test_dropout_scale_at_inference(backend_name):
    p = 0.25
    d = L.Dropout(p, mode="scale_at_inference")
    d.set_rng(1)
    x = np.random.default_rng(4).standard_normal((100, 400)).astype(np.float32)
    y = d.forward(x, train=True)
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(d.eval().forward(x), (1 - p) * x, rtol=1e-6)
    dx = d.backward(np.ones_like(x))
    np.testing.assert_allclose(dx, np.full_like(x, 1 - p), rtol=1e-6)


def test_dropout_masks_fresh_frozen_and_reproducible():
    x = np.ones((10, 50), np.float32)
    d = L.Dropout(0.5)
    d.set_rng(7)
    a, b = d.forward(x, train=True), d.forward(x, train=True)
    assert not np.array_equal(a, b), "two training forwards drew the same mask"
    d.set_rng(7)
    np.testing.assert_array_equal(d.forward(x, train=True), a)
    d.seed = 99
    c1, c2 = d.forward(x, train=True), d.forward(x, train=True)
    np.testing.assert_array_equal(c1, c2)
    # Backward routes through the mask of the last forward.
    np.testing.assert_array_equal(d.backward(np.ones_like(x)) != 0, c2 != 0)


def test_default_training_flag_follows_train_and_eval():
    d = L.Dropout(0.5)
    x = np.ones((4, 100), np.float32)
    assert d.training
    assert (d.forward(x) == 0).any()
    assert d.eval() is d and not d.training
    np.testing.assert_array_equal(d.forward(x), x)
    assert (d.forward(x, train=True) == 0).any()


# ---- Sequential -----------------------------------------------------------------------------


def small_net(rng, dtype=np.float32):
    return L.Sequential(
        L.Conv2d(1, 2, 3, padding=1, dtype=dtype, rng=rng),
        L.BatchNorm(2, dtype=dtype),
        L.ReLU(),
        L.MaxPool2d(2),
        L.Sequential(L.Flatten(), L.Affine(8, 6, dtype=dtype, rng=rng), L.Dropout(0.5)),
        L.PReLU(dtype=dtype),
        L.Affine(6, 3, dtype=dtype, rng=rng),
    )


def test_sequential_structure_and_names():
    net = small_net(0)
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.W", "0.b", "1.gamma", "1.beta", "4.1.W", "4.1.b", "5.alpha", "6.W", "6.b"]
    assert list(net.buffers()) == ["1.running_mean", "1.running_var"]
    assert list(net.state_dict()) == names + ["1.running_mean", "1.running_var"]
    assert len(net) == 7 and isinstance(net[3], L.MaxPool2d) and list(net)[0] is net[0]
    assert isinstance(net[1:3], L.Sequential) and len(net[1:3]) == 2
    assert len(net.modules()) == 1 + 7 + 3
    assert len(net.parameters()) == 9
    text = repr(net)
    assert "(0): Conv2d(" in text and "(4): Sequential(" in text and "(2): Dropout(p=0.5" in text


def test_sequential_forward_backward_chain(backend_name):
    rng = np.random.default_rng(5)
    net = L.Sequential(L.Affine(4, 3, dtype=f64, rng=0), L.Tanh(), L.Affine(3, 2, dtype=f64, rng=1))
    x = rng.standard_normal((3, 4))
    y = net.forward(x)
    manual = net[2].forward(net[1].forward(net[0].forward(x)))
    np.testing.assert_array_equal(y, manual)
    R = rng.standard_normal(y.shape)
    dx = net.backward(R)
    assert_grad_close(dx, numerical_gradient(lambda: float(np.sum(net.forward(x) * R)), x), "input gradient")
    net.needs_input_grad = False
    assert net[0].needs_input_grad is False
    assert net.backward(R) is None


def test_train_eval_and_set_rng_propagate():
    net = small_net(0)
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    two = L.Sequential(L.Dropout(0.5), L.Sequential(L.Dropout(0.5)))
    x = np.ones((4, 64), np.float32)
    two.set_rng(np.random.default_rng(11))
    d0, d1 = two[0], two[1][0]
    assert d0.rng is not d1.rng
    m0, m1 = d0.forward(x, train=True), d1.forward(x, train=True)
    assert not np.array_equal(m0, m1), "both Dropouts got the same stream"
    two.set_rng(np.random.default_rng(11))
    np.testing.assert_array_equal(d0.forward(x, train=True), m0)
    np.testing.assert_array_equal(d1.forward(x, train=True), m1)


def test_state_dict_round_trip_is_bitwise(backend_name):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 1, 4, 4)).astype(np.float32)
    net = small_net(1)
    net.forward(x, train=True)  # moves the running statistics away from their start
    state = net.state_dict()
    state["0.W"][...] = 0  # a copy: the model is untouched
    assert not np.array_equal(net[0].W.data, 0)
    state = net.state_dict()

    other = small_net(2)
    assert not np.array_equal(other[0].W.data, net[0].W.data)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.eval().forward(x), net.eval().forward(x))
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
        assert v.dtype == state[k].dtype


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda s: s.pop("6.b"), ["missing", "'6.b'"]),
        (lambda s: s.pop("1.running_var"), ["missing", "'1.running_var'"]),
        (lambda s: s.__setitem__("7.W", np.zeros(3, np.float32)), ["unexpected", "'7.W'"]),
        (lambda s: s.__setitem__("4.1.W", np.zeros((6, 8), np.float32)), ["'4.1.W'", "(6, 8)", "(8, 6)"]),
        (lambda s: s.__setitem__("5.alpha", np.zeros(1, np.float64)), ["'5.alpha'", "float64", "float32"]),
    ],
    ids=["missing", "missing-buffer", "unexpected", "shape", "dtype"],
)
def test_load_state_dict_is_strict_and_atomic(edit, words):
    net = small_net(3)
    good = net.state_dict()
    bad = small_net(4).state_dict()
    edit(bad)
    with pytest.raises(ValueError) as err:
        net.load_state_dict(bad)
    for w in words:
        assert w in str(err.value)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, good[k], err_msg=f"refused load changed {k}")


ALL_LAYERS = [
    L.Affine(3, 2, init="glorot_uniform", bias=False, dtype=np.float64),
    L.Conv2d(2, 4, (3, 2), stride=2, padding=1, init="he_uniform"),
    L.MaxPool2d(3, stride=2, padding=1),
    L.AvgPool2d((2, 3), stride=1),
    L.Flatten(),
    L.BatchNorm(5, momentum=0.7, eps=1e-3, dtype=np.float64),
    L.Dropout(0.2, mode="scale_at_inference", seed=5),
    L.ReLU(),
    L.LeakyReLU(0.2),
    L.PReLU(4, init=0.1),
    L.Sigmoid(),
    L.Tanh(),
    L.HardTanh(-2.0, 3.0),
    L.Softplus(),
    L.Identity(),
    L.Softmax(),
    L.Maxout(4, 3, pieces=4, init="glorot_normal"),
    L.RBF(3, 6, dtype=np.float64),
    L.Sequential(L.Affine(2, 2), L.Sequential(L.ReLU(), L.Dropout(0.1))),
]


@pytest.mark.parametrize("layer", ALL_LAYERS, ids=[type(v).__name__ for v in ALL_LAYERS])
def test_config_round_trip(layer):
    cfg = layer.config()
    cfg = json.loads(json.dumps(cfg))
    assert cfg == layer.config()
    rebuilt = L.layer_from_config(cfg)
    assert type(rebuilt) is type(layer)
    assert rebuilt.config() == layer.config()
    assert [(n, p.shape, p.dtype) for n, p in rebuilt.named_parameters()] == [
        (n, p.shape, p.dtype) for n, p in layer.named_parameters()
    ]


def test_layer_from_config_errors():
    with pytest.raises(ValueError, match="unknown layer type 'Nope'"):
        L.layer_from_config({"type": "Nope"})
    with pytest.raises(ValueError, match="bad arguments for Affine"):
        L.layer_from_config({"type": "Affine", "in_features": 2})


def test_user_defined_layers_round_trip_through_config():
    class ScaledTanh(L.Tanh):
        pass

    assert type(L.layer_from_config(ScaledTanh().config())) is ScaledTanh

    class ReLU(L.Layer):  # a same-named layer elsewhere must not displace the built-in
        pass

    assert type(L.layer_from_config({"type": "ReLU"})) is L.ReLU


def test_textbook_aliases():
    assert L.Relu is L.ReLU and L.BatchNormalization is L.BatchNorm
    assert L.Convolution is L.Conv2d and L.Pooling is L.MaxPool2d
    assert isinstance(L.layer_from_config({"type": "Relu"}), L.ReLU)


def test_init_seed_makes_weights_reproducible():
    a, b, c = L.Affine(5, 4, rng=3), L.Affine(5, 4, rng=3), L.Affine(5, 4, rng=4)
    np.testing.assert_array_equal(a.W.data, b.W.data)
    assert not np.array_equal(a.W.data, c.W.data)
    # He normal: std sqrt(2 / fan_in).
    big = L.Affine(400, 300, rng=0)
    assert abs(big.W.data.std() - np.sqrt(2 / 400)) < 0.01 * np.sqrt(2 / 400) * 3
    np.testing.assert_array_equal(big.b.data, 0)


# ---- losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["labels", "onehot"])
def test_softmax_cross_entropy(backend_name, target):
    rng = np.random.default_rng(8)
    scores = rng.standard_normal((4, 5))
    labels = np.array([0, 3, 4, 1])
    t = labels if target == "labels" else np.eye(5)[labels]
    loss = losses.SoftmaxCrossEntropy()
    value = loss.forward(scores, t)
    logp = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(value, -logp[np.arange(4), labels].mean(), rtol=1e-12)
    np.testing.assert_allclose(loss.probs, np.exp(logp), rtol=1e-12)
    d = loss.backward()
    assert_grad_close(d, numerical_gradient(lambda: loss.forward(scores, t), scores), "dscores")
    loss.forward(scores, t)
    np.testing.assert_allclose(loss.backward(2.0), 2 * d, rtol=1e-12)
    assert losses.SoftmaxWithLoss is losses.SoftmaxCrossEntropy


def test_softmax_cross_entropy_accepts_int32_labels():
    loss = losses.SoftmaxCrossEntropy()
    scores = np.zeros((2, 3), np.float32)
    assert loss.forward(scores, np.array([1, 2], np.int32)) == pytest.approx(np.log(3), rel=1e-6)


def test_mean_squared_error(backend_name):
    rng = np.random.default_rng(9)
    y, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    loss = losses.MeanSquaredError()
    np.testing.assert_allclose(loss.forward(y, t), 0.5 * np.sum((y - t) ** 2) / 3, rtol=1e-12)
    d = loss.backward()
    assert_grad_close(d, numerical_gradient(lambda: loss.forward(y, t), y), "dy")


def test_loss_config_round_trip():
    for cls in (losses.SoftmaxCrossEntropy, losses.MeanSquaredError):
        cfg = json.loads(json.dumps(cls().config()))
        assert type(losses.loss_from_config(cfg)) is cls
    with pytest.raises(ValueError, match="unknown loss"):
        losses.loss_from_config({"type": "Hinge"})
    with pytest.raises(RuntimeError, match="before forward"):
        losses.MeanSquaredError().backward()


FUSIBLE = {
    "deep_cnn_bn": lambda: models.deep_cnn(seed=0, batchnorm=True, dropout=0.0),
    "deep_cnn": lambda: models.deep_cnn(seed=0, dropout=0.0),
    "simple_cnn": lambda: models.simple_cnn(seed=0),
}


@pytest.mark.parametrize("net", list(FUSIBLE))
@pytest.mark.parametrize("name, algorithm", [("native", "im2col"), ("native", "winograd"), ("numpy", "auto")])
def test_fused_relu_pairs_give_the_unfused_numbers(name, algorithm, net):
    """Sequential(fuse=True) runs Conv2d/Affine/BatchNorm + ReLU (and Conv2d + ReLU + MaxPool2d)
    as one kernel; on the im2col and Winograd paths the fused kernels make the unfused kernels'
    calls inside one, so every number is the same. (The direct and sparse pooled backwards sum
    only the terms that are not zero: tests/test_native_conv_direct.py and
    tests/test_native_conv_pooled.py hold them to the oracle.)"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    dout = rng.standard_normal((3, 10)).astype(np.float32)
    results = {}
    with backend.use(name), backend.conv_algorithm(algorithm):
        for fuse in (True, False):
            model = FUSIBLE[net]()
            if fuse and net != "deep_cnn_bn":
                assert any(len(absorbed) == 2 for _, _, absorbed in model._units())
            model.fuse = fuse
            out = model.forward(x, train=True)
            dx = model.backward(dout)
            grads = {k: p.grad.copy() for k, p in model.named_parameters()}
            model.eval()
            out_eval = model.forward(x)
            results[fuse] = out, dx, grads, out_eval, model.state_dict()
    (o1, dx1, g1, e1, s1), (o2, dx2, g2, e2, s2) = results[True], results[False]
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(e1, e2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k], err_msg=k)


def test_sequential_fuses_only_a_relu_directly_after_a_fusable_layer():
    calls = []
    layers = [L.Affine(4, 3, rng=0), L.ReLU(), L.ReLU(), L.Sigmoid(), L.Affine(3, 2, rng=1), L.LeakyReLU()]
    seq = L.Sequential(*layers)
    for layer in layers:
        for method in ("forward", "forward_relu"):
            if hasattr(layer, method):
                orig = getattr(layer, method)

                def spy(x, train=None, _orig=orig, _layer=layer, _method=method):
                    calls.append((type(_layer).__name__, _method))
                    return _orig(x, train)

                setattr(layer, method, spy)
    seq.forward(np.ones((2, 4), np.float32))
    assert calls == [("Affine", "forward_relu"), ("ReLU", "forward"), ("Sigmoid", "forward"),
                     ("Affine", "forward"), ("LeakyReLU", "forward")]
    assert seq.backward(np.ones((2, 2), np.float32)).shape == (2, 4)
    assert L.layer_from_config(L.Sequential(L.ReLU(), fuse=False).config()).fuse is False


def test_sequential_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        L.Sequential(L.ReLU()).backward(np.ones(3, np.float32))
