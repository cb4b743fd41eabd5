"""The ready-made networks: architecture, shapes, parameter counts, gradients, a few SGD steps."""

from __future__ import annotations

import numpy as np
import pytest

from fastlayers import backend, models
from fastlayers import layers as L
from fastlayers import losses
from fastlayers.numerical import numerical_gradient
from tests.tolerance import numerical_gradient_rtol


def n_params(model) -> int:
    return sum(p.data.size for p in model.parameters())


def test_simple_cnn_is_the_textbook_simpleconvnet():
    m = models.simple_cnn(seed=0)
    assert [type(layer) for layer in m] == [L.Conv2d, L.ReLU, L.MaxPool2d, L.Affine, L.ReLU, L.Affine]
    conv = m[0]
    assert (conv.W.shape, conv.stride, conv.padding) == ((30, 1, 5, 5), 1, 0)
    assert (m[2].kernel_size, m[2].stride) == ((2, 2), 2)
    assert m[3].W.shape == (30 * 12 * 12, 100) and m[5].W.shape == (100, 10)
    sizes = [p.data.size for p in m.parameters()]
    assert sizes == [30 * 1 * 5 * 5, 30, 4320 * 100, 100, 100 * 10, 10]
    assert n_params(m) == 780 + 432100 + 1010
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    y = m.forward(x)
    assert y.shape == (3, 10) and y.dtype == np.float32
    assert m.backward(np.ones_like(y)).shape == x.shape


def test_simple_cnn_other_input_shapes():
    m = models.simple_cnn(input_shape=(3, 32, 32), conv=8, kernel=3, hidden=20, classes=4, seed=0)
    assert m[3].W.shape == (8 * 15 * 15, 20)
    assert m.forward(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 4)
    with pytest.raises(ValueError, match="input too small"):
        models.simple_cnn(input_shape=(1, 5, 5))


DEEP_CONV_SHAPES = [(16, 1), (16, 16), (32, 16), (32, 32), (64, 32), (64, 64)]
DEEP_PADS = [1, 1, 1, 2, 1, 1]


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "batchnorm"])
def test_deep_cnn_is_the_textbook_deepconvnet(batchnorm):
    m = models.deep_cnn(batchnorm=batchnorm, seed=0)
    convs = [layer for layer in m if isinstance(layer, L.Conv2d)]
    assert [c.W.shape[:2] for c in convs] == DEEP_CONV_SHAPES
    assert [c.padding for c in convs] == DEEP_PADS and all(c.kernel_size == (3, 3) for c in convs)
    affines = [layer for layer in m if isinstance(layer, L.Affine)]
    assert [a.W.shape for a in affines] == [(64 * 4 * 4, 50), (50, 10)]
    assert sum(isinstance(layer, L.MaxPool2d) for layer in m) == 3
    assert [layer.p for layer in m if isinstance(layer, L.Dropout)] == [0.5, 0.5]
    assert isinstance(m[-1], L.Dropout) and isinstance(m[-2], L.Affine)
    bns = [layer for layer in m if isinstance(layer, L.BatchNorm)]
    expected = 160 + 2320 + 4640 + 9248 + 18496 + 36928 + 51250 + 510
    if batchnorm:
        assert [b.num_features for b in bns] == [16, 16, 32, 32, 64, 64, 50]
        # Each BatchNorm sits between its conv/affine and the ReLU.
        for i, layer in enumerate(m):
            if isinstance(layer, L.BatchNorm):
                assert isinstance(m[i - 1], (L.Conv2d, L.Affine)) and isinstance(m[i + 1], L.ReLU)
        # BatchNorm adds gamma and beta per channel; its conv/affine drops the now-redundant bias.
        assert all(c.b is None for c in convs) and affines[0].b is None and affines[1].b is not None
        expected += 2 * (16 + 16 + 32 + 32 + 64 + 64 + 50) - (16 + 16 + 32 + 32 + 64 + 64 + 50)
    else:
        assert bns == []
    assert n_params(m) == expected
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    for train in (True, False):
        y = m.forward(x, train=train)
        assert y.shape == (2, 10) and np.isfinite(y).all()
    m.forward(x, train=True)
    assert m.backward(np.ones((2, 10), np.float32)).shape == x.shape


def test_deep_cnn_he_initialisation():
    m = models.deep_cnn(seed=0)
    w = m[5].W.data  # conv 32 <- 16, fan_in 16*3*3
    assert abs(w.std() / np.sqrt(2 / 144) - 1) < 0.05


def test_mlp_structure_and_4d_input():
    m = models.mlp(seed=0)
    assert [type(layer) for layer in m] == [L.Affine, L.ReLU] * 5 + [L.Affine]
    assert n_params(m) == 784 * 100 + 100 + 4 * (100 * 100 + 100) + 100 * 10 + 10
    x = np.random.default_rng(2).random((3, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(m.forward(x.reshape(3, 784)), m.forward(x))
    y = m.forward(x)
    assert y.shape == (3, 10)
    assert m.backward(np.ones_like(y)).shape == x.shape

    m = models.mlp(input_size=6, hidden=[5, 4], classes=3, batchnorm=True, dropout=0.2, activation="tanh", seed=0)
    kinds = [type(layer) for layer in m]
    assert kinds == [L.Affine, L.BatchNorm, L.Tanh, L.Dropout] * 2 + [L.Affine]
    assert [name for name, _ in m.named_parameters()] == [
        "0.W", "1.gamma", "1.beta", "4.W", "5.gamma", "5.beta", "8.W", "8.b"
    ]
    # Xavier for tanh: std sqrt(1/fan_in) ~ sqrt(2/(in+out)) rather than He's sqrt(2/in).
    big = models.mlp(input_size=400, hidden=[400], activation="sigmoid", seed=0)
    assert abs(big[0].W.data.std() / np.sqrt(2 / 800) - 1) < 0.05
    with pytest.raises(ValueError, match="unknown activation"):
        models.mlp(activation="swish")


def test_registry_seed_and_dtype():
    assert set(models.MODELS) == {"simple-cnn", "deep-cnn", "mlp"}
    a = models.get("mlp", hidden=[8], seed=3)
    b = models.get("mlp", hidden=[8], seed=3)
    c = models.get("mlp", hidden=[8], seed=4)
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    assert not np.array_equal(a[0].W.data, c[0].W.data)
    m = models.get("simple-cnn", input_shape=(1, 8, 8), conv=2, hidden=3, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in m.parameters())
    with pytest.raises(TypeError, match="float64"):
        m.forward(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.get("resnet")


def test_seeded_dropout_masks_are_reproducible():
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    y1 = models.deep_cnn(seed=5).forward(x, train=True)
    y2 = models.deep_cnn(seed=5).forward(x, train=True)
    np.testing.assert_array_equal(y1, y2)


def test_model_config_and_state_round_trip():
    m = models.deep_cnn(input_shape=(1, 12, 12), batchnorm=True, seed=1)
    x = np.random.default_rng(3).random((2, 1, 12, 12), dtype=np.float32)
    m.forward(x, train=True)
    copy = L.layer_from_config(m.config())
    copy.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(copy.forward(x, train=False), m.forward(x, train=False))


def sampled_gradcheck(model, loss, x, t, entries, seed=0, h=1e-6):
    """Backprop against central differences on up to ``entries`` random entries of every
    parameter and of the input; returns the number of entries compared."""
    def objective():
        return loss.forward(model.forward(x, train=True), t)

    for p in model.parameters():
        p.zero_grad()
    objective()
    dx = model.backward(loss.backward())
    rng = np.random.default_rng(seed)
    rtol = numerical_gradient_rtol()
    targets = [(name, p.data, p.grad) for name, p in model.named_parameters()] + [("input", x, dx)]
    count = 0
    for name, arr, grad in targets:
        idx = np.arange(arr.size) if arr.size <= entries else rng.choice(arr.size, entries, replace=False)
        num = numerical_gradient(objective, arr, h, indices=idx)
        scale = max(1.0, float(np.abs(num).max()))
        np.testing.assert_allclose(grad.reshape(-1)[idx], num, rtol=rtol, atol=rtol * scale, err_msg=name)
        count += len(idx)
    return count


@pytest.mark.parametrize("backend_name", ["numpy", "native"])
def test_simple_cnn_full_gradient(backend_name):
    with backend.use(backend_name):
        rng = np.random.default_rng(4)
        m = models.simple_cnn(input_shape=(1, 8, 8), conv=3, hidden=5, seed=0, dtype=np.float64)
        x = rng.standard_normal((2, 1, 8, 8))
        t = np.array([3, 7])
        n = sampled_gradcheck(m, losses.SoftmaxCrossEntropy(), x, t, entries=10**6)
        assert n == n_params(m) + x.size


def test_deep_cnn_batchnorm_gradient_sampled():
    # The composition is under test here (every kernel's own gradient is checked on both
    # backends in test_layers), so one backend suffices for this larger model.
    rng = np.random.default_rng(5)
    m = models.deep_cnn(input_shape=(1, 8, 8), batchnorm=True, seed=0, dtype=np.float64)
    for i, layer in enumerate(m):
        if isinstance(layer, L.Dropout):
            layer.seed = 100 + i
    x = rng.standard_normal((3, 1, 8, 8))
    t = np.array([1, 0, 9])
    with backend.use("numpy"):
        sampled_gradcheck(m, losses.SoftmaxCrossEntropy(), x, t, entries=2)


def test_plain_sgd_steps_reduce_the_loss():
    optim = pytest.importorskip("fastlayers.optim", reason="fastlayers.optim (SGD) is not available")
    if not hasattr(optim, "SGD"):
        pytest.skip("fastlayers.optim has no SGD")
    rng = np.random.default_rng(6)
    m = models.simple_cnn(input_shape=(1, 10, 10), conv=4, kernel=3, hidden=16, classes=3, seed=0)
    x = rng.random((8, 1, 10, 10), dtype=np.float32)
    t = rng.integers(0, 3, 8)
    loss = losses.SoftmaxCrossEntropy()
    opt = optim.SGD(m.parameters(), lr=0.1)
    history = []
    for _ in range(10):
        opt.zero_grad()
        history.append(loss.forward(m.forward(x, train=True), t))
        m.backward(loss.backward())
        opt.step()
    final = loss.forward(m.forward(x, train=False), t)
    # A small step on one fixed batch is plain gradient descent: every step lowers the loss.
    assert all(b < a for a, b in zip(history, history[1:] + [final])), (history, final)
    assert final < 0.85 * history[0], (history, final)
