"""fastlayers.plot: each figure holds the data it was given, and bad input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

import fastlayers  # noqa: E402
from fastlayers import cli, data, layers, losses, optim, plot  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def records(n=4, lr=None, val=True):
    out = []
    for e in range(1, n + 1):
        r = {"epoch": e, "loss": 2.0 / e, "train_accuracy": 0.5 + 0.1 * e, "lr": 0.01 if lr is None else lr[e - 1],
             "seconds": 0.1}
        if val:
            r.update(val_loss=2.5 / e, val_accuracy=0.45 + 0.1 * e)
        out.append(r)
    return out


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


# -- history ---------------------------------------------------------------------------------


def test_history_curves_hold_the_losses_and_accuracies():
    h = records()
    fig = plot.history(h, title="run")
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]  # lr constant: no third panel
    assert fig._suptitle.get_text() == "run"
    loss, acc = (lines_by_label(ax) for ax in fig.axes)
    epochs = [r["epoch"] for r in h]
    np.testing.assert_array_equal(loss["train"].get_xdata(), epochs)
    np.testing.assert_array_equal(loss["train"].get_ydata(), [r["loss"] for r in h])
    np.testing.assert_array_equal(loss["validation"].get_ydata(), [r["val_loss"] for r in h])
    np.testing.assert_array_equal(acc["train"].get_ydata(), [r["train_accuracy"] for r in h])
    np.testing.assert_array_equal(acc["validation"].get_ydata(), [r["val_accuracy"] for r in h])
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)


def test_history_shows_a_changing_learning_rate_and_no_validation_when_absent():
    lrs = [0.1, 0.1, 0.01, 0.001]
    fig = plot.history(records(lr=lrs, val=False))
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    assert set(lines_by_label(fig.axes[0])) == {"train"}
    np.testing.assert_array_equal(fig.axes[2].get_lines()[0].get_ydata(), lrs)
    assert fig.axes[2].get_yscale() == "log"


def test_history_of_a_real_trainer():
    (x, t), _ = data.load_bundled()
    model = fastlayers.models.mlp(hidden=[20], seed=0)
    trainer = fastlayers.Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), verbose=False)
    trainer.fit(x[:300], t[:300], epochs=2, batch_size=100, validation_split=0.2)
    fig = plot.history(trainer)  # a Trainer stands for its history
    loss = lines_by_label(fig.axes[0])
    np.testing.assert_array_equal(loss["validation"].get_ydata(), [r["val_loss"] for r in trainer.history])


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ([], ValueError, "no epochs"),
        ("loss", TypeError, "list of epoch records"),
        ({"loss": 1.0}, TypeError, "list of epoch records"),
        ([1.0], TypeError, "record 0 must be a dict"),
        ([{"epoch": 1, "loss": 1.0}], ValueError, "record 0 lacks train_accuracy"),
    ],
)
def test_history_refuses_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        plot.history(bad)


def test_fig_argument_draws_into_the_given_figure():
    mine = Figure()
    mine.add_subplot().plot([1, 2, 3])
    assert plot.history(records(), fig=mine) is mine
    assert [ax.get_title() for ax in mine.axes] == ["loss", "accuracy"]  # cleared first
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        plot.history(records(), fig="figure.png")


# -- filters ---------------------------------------------------------------------------------


def expected_filters(W, channel=0):
    out = []
    for w in W[:, channel].astype(np.float64):
        span = w.max() - w.min()
        out.append((w - w.min()) / span if span > 0 else np.full_like(w, 0.5))
    return np.array(out)


def test_filters_grid_shows_each_filter_normalised():
    model = fastlayers.models.simple_cnn(seed=0)
    conv = model.layers[0]
    fig = plot.filters(model)
    images = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert len(images) == 30 and len(fig.axes) == 31  # 30 filters and the colour bar
    want = expected_filters(conv.W.data)
    for i, ax in enumerate(images):
        im = ax.get_images()[0]
        np.testing.assert_allclose(im.get_array(), want[i], rtol=0, atol=1e-12)
        assert im.get_clim() == (0.0, 1.0)
        assert ax.get_title().startswith(f"{i}: [")
    assert "per-filter" in fig.axes[-1].get_ylabel()
    assert "30 filters 5x5" in fig._suptitle.get_text()


def test_filters_of_a_conv_layer_with_channels_and_a_constant_filter():
    conv = layers.Conv2d(3, 5, kernel_size=3, rng=1)
    conv.W.data[2] = 0.25  # every channel of filter 2 constant
    fig = plot.filters(conv, channel=1, columns=2)
    images = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert len(images) == 5 and len(fig.axes) == 6  # the sixth grid cell is removed
    np.testing.assert_allclose(np.array(images), expected_filters(conv.W.data, 1), atol=1e-12)
    assert np.all(images[2] == 0.5)
    assert "input channel 1" in fig._suptitle.get_text()


def test_filters_refuses_bad_input():
    with pytest.raises(ValueError, match="no Conv2d"):
        plot.filters(fastlayers.models.mlp(hidden=[4]))
    with pytest.raises(TypeError, match="model or a Conv2d"):
        plot.filters(np.zeros((3, 1, 5, 5)))
    with pytest.raises(ValueError, match=r"channel must be an int in \[0, 1\)"):
        plot.filters(layers.Conv2d(1, 2, 3), channel=1)
    with pytest.raises(ValueError, match="columns"):
        plot.filters(layers.Conv2d(1, 2, 3), columns=0)


# -- activation histograms -------------------------------------------------------------------


def bn_dropout_mlp():
    model = layers.Sequential(
        layers.Affine(12, 7, rng=0), layers.BatchNorm(7), layers.ReLU(), layers.Dropout(0.3),
        layers.Sequential(layers.Affine(7, 5, rng=1), layers.Sigmoid()), layers.Affine(5, 3, rng=2))
    model.set_rng(np.random.default_rng(5))
    return model


def test_layer_outputs_run_unfused_and_end_at_the_models_output():
    model = fastlayers.models.mlp(input_size=12, hidden=[9, 9], seed=0)
    x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
    outs = plot.layer_outputs(model, x)
    assert [name for name, _, _ in outs] == [str(i) for i in range(len(model.layers))]
    assert isinstance(outs[1][1], layers.ReLU)  # fused into the Affine by Sequential, separate here
    np.testing.assert_array_equal(outs[1][2], np.maximum(outs[0][2], 0))
    np.testing.assert_array_equal(outs[-1][2], model.forward(x, train=False))


def test_layer_outputs_in_training_mode_leave_the_model_unchanged():
    model = bn_dropout_mlp()
    x = np.random.default_rng(1).standard_normal((8, 12)).astype(np.float32)
    buffers = {k: v.copy() for k, v in model.buffers().items()}
    drop = model.layers[3]
    state = drop.rng.bit_generator.state
    outs = plot.layer_outputs(model, x, train=True)
    assert [n for n, _, _ in outs] == ["0", "1", "2", "3", "4.0", "4.1", "5"]
    bn = outs[1][2]  # batch statistics: each feature has mean 0 over the batch
    np.testing.assert_allclose(bn.mean(axis=0), 0, atol=1e-5)
    assert np.count_nonzero(outs[3][2] == 0) > np.count_nonzero(outs[2][2] == 0)  # dropout dropped some
    for k, v in model.buffers().items():
        np.testing.assert_array_equal(v, buffers[k])
    assert drop.rng.bit_generator.state == state
    again = plot.layer_outputs(model, x, train=True)
    np.testing.assert_array_equal(again[3][2], outs[3][2])  # same generator state, same mask


def test_activation_histograms_count_every_activation():
    model = bn_dropout_mlp()
    x = np.random.default_rng(2).standard_normal((40, 12)).astype(np.float32)
    fig = plot.activation_histograms(model, x, bins=12)
    assert [ax.get_title() for ax in fig.axes] == ["2 ReLU", "4.1 Sigmoid"]  # the activation layers
    outs = dict((n, o) for n, _, o in plot.layer_outputs(model, x))
    for ax, name in zip(fig.axes, ["2", "4.1"]):
        heights = [p.get_height() for p in ax.patches]
        assert len(heights) == 12 and sum(heights) == outs[name].size
    lo, hi = min(outs["2"].min(), outs["4.1"].min()), max(outs["2"].max(), outs["4.1"].max())
    assert fig.axes[0].patches[0].get_x() == pytest.approx(lo)
    assert fig.axes[0].patches[-1].get_x() + fig.axes[0].patches[-1].get_width() == pytest.approx(hi)
    assert "inference mode" in fig._suptitle.get_text()


def test_activation_histograms_of_chosen_layers_and_range():
    model = bn_dropout_mlp()
    x = np.random.default_rng(3).standard_normal((10, 12)).astype(np.float32)
    fig = plot.activation_histograms(model, x, layers=[0, "4.1"], range=(0, 1), bins=4, train=True)
    assert [ax.get_title() for ax in fig.axes] == ["0 Affine(12->7)", "4.1 Sigmoid"]
    out0 = plot.layer_outputs(model, x, train=True)[0][2]
    inside = np.count_nonzero((out0 >= 0) & (out0 <= 1))
    assert sum(p.get_height() for p in fig.axes[0].patches) == inside  # values outside the range not counted
    assert sum(p.get_height() for p in fig.axes[1].patches) == 50


def test_activation_histograms_refuse_bad_input():
    model = bn_dropout_mlp()
    x = np.zeros((4, 12), np.float32)
    with pytest.raises(TypeError, match="Sequential"):
        plot.activation_histograms(layers.ReLU(), x)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        plot.activation_histograms(model, x.tolist())
    with pytest.raises(ValueError, match="no samples"):
        plot.activation_histograms(model, x[:0])
    with pytest.raises(ValueError, match="no layer '9'"):
        plot.activation_histograms(model, x, layers=["9"])
    with pytest.raises(ValueError, match="bins"):
        plot.activation_histograms(model, x, bins=0)
    with pytest.raises(ValueError, match="range"):
        plot.activation_histograms(model, x, range=(1, 0))
    with pytest.raises(TypeError, match="float64"):  # the model's own dtype check, not a silent cast
        plot.activation_histograms(model, x.astype(np.float64))


def test_init_comparison_reproduces_the_notes_experiment():
    x = np.random.default_rng(0).standard_normal((1000, 100)).astype(np.float32)
    fig = plot.init_comparison(x, bins=10)
    axes = np.array(fig.axes).reshape(8, 5)
    rows = [ax.get_ylabel() for ax in axes[:, 0]]
    assert rows == [f"{a}\n{i}" for a in ("sigmoid", "relu") for i in ("std=1", "std=0.01", "xavier", "he")]
    assert [ax.get_title() for ax in axes[0]] == [f"layer {i}" for i in range(1, 6)]
    counts = np.array([[[p.get_height() for p in ax.patches] for ax in row] for row in axes])
    assert counts.shape == (8, 5, 10) and np.all(counts.sum(axis=2) == 1000 * 100)
    # The notes' observations, on the last layer: sigmoid with std 1 piles up at 0 and 1,
    # with std 0.01 everything sits within 0.1 of 0.5; Xavier spreads over the middle.
    last = counts[:, 4]
    assert last[0, [0, -1]].sum() > 0.5 * 1e5
    assert last[1, 4] + last[1, 5] == 1e5  # the two bins either side of 0.5
    assert np.count_nonzero(last[2]) >= 5 and last[2, [0, -1]].sum() < 0.05 * 1e5
    # ReLU with std 0.01: the activations of layer 5 are all within the first bin of the
    # range set by the largest; He keeps units active in every layer.
    assert np.count_nonzero(counts[7, :, 1:].sum(axis=1)) == 5


def test_init_network_uses_the_notes_scales():
    net = plot.init_network(400, "xavier", "relu", hidden=[300, 200], seed=0)
    W0, W1 = net.layers[0].W.data, net.layers[2].W.data
    assert W0.shape == (400, 300) and net.layers[0].bias is False
    assert W0.std() == pytest.approx(1 / np.sqrt(400), rel=0.02)
    assert W1.std() == pytest.approx(1 / np.sqrt(300), rel=0.03)
    he = plot.init_network(400, "he", hidden=[300], seed=0).layers[0].W.data
    assert he.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert plot.init_network(400, "std=0.5", hidden=[300]).layers[0].W.data.std() == pytest.approx(0.5, rel=0.02)


def test_init_comparison_refuses_bad_input():
    x = np.zeros((5, 4), np.float32)
    with pytest.raises(TypeError, match="2-D float32 or float64"):
        plot.init_comparison(np.zeros((5, 1, 2, 2), np.float32))
    with pytest.raises(TypeError, match="2-D float32 or float64"):
        plot.init_comparison(np.zeros((5, 4), np.int64))
    with pytest.raises(ValueError, match="unknown init 'lecun'"):
        plot.init_comparison(x, inits=["lecun"])
    with pytest.raises(ValueError, match="unknown init 'std=-1'"):
        plot.init_comparison(x, inits=["std=-1"])
    with pytest.raises(ValueError, match="unknown activation 'elu'"):
        plot.init_comparison(x, activations="elu")
    with pytest.raises(ValueError, match="hidden"):
        plot.init_comparison(x, hidden=[])


# -- misclassified ---------------------------------------------------------------------------


def pixel_argmax_model():
    """Predicts the index of the brightest of the first three pixels of a 1x2x2 image."""
    affine = layers.Affine(4, 3, init="zeros", rng=0)
    affine.W.data[:3] = np.eye(3, dtype=np.float32)
    return layers.Sequential(layers.Flatten(), affine)


def images_for(predicted):
    x = np.zeros((len(predicted), 1, 2, 2), np.float32)
    for i, p in enumerate(predicted):
        x[i, 0].reshape(-1)[p] = 1.0
    return x


def test_misclassified_shows_exactly_the_wrong_ones_in_order():
    pred = np.array([0, 1, 2, 2, 1, 0, 1, 2])
    t = np.array([0, 2, 2, 0, 1, 1, 1, 1])  # wrong: 1, 3, 5, 7
    x = images_for(pred)
    model = pixel_argmax_model()
    model.train()
    classes = ["zero", "one", "two"]
    fig = plot.misclassified(model, x, t, classes=classes)
    assert len(fig.axes) == 4
    assert [ax.get_xlabel() for ax in fig.axes] == ["#1", "#3", "#5", "#7"]
    assert [ax.get_title() for ax in fig.axes] == ["two \u2192 one", "zero \u2192 two", "one \u2192 zero",
                                                   "one \u2192 two"]
    for ax, i in zip(fig.axes, [1, 3, 5, 7]):
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), x[i, 0])
    assert "4 of 8" in fig._suptitle.get_text()
    assert all(m.training for m in model.modules())  # modes restored after predicting in inference mode
    limited = plot.misclassified(model, x, t, classes=classes, limit=3, columns=2)
    assert [ax.get_xlabel() for ax in limited.axes] == ["#1", "#3", "#5"]
    assert "the first 3 shown" in limited._suptitle.get_text()


def test_misclassified_with_none_wrong_and_flattened_images():
    x = images_for([2, 0, 1])
    fig = plot.misclassified(pixel_argmax_model(), x, np.array([2, 0, 1]), classes=["a", "b", "c"])
    assert fig.axes == [] and "0 of 3" in fig._suptitle.get_text()
    flat = layers.Sequential(pixel_argmax_model().layers[1])
    fig = plot.misclassified(flat, x.reshape(3, 4), np.array([0, 0, 0]), classes=["a", "b", "c"])
    assert [ax.get_xlabel() for ax in fig.axes] == ["#0", "#2"]
    assert fig.axes[0].get_images()[0].get_array().shape == (2, 2)


def test_misclassified_defaults_to_fashion_mnist_names():
    (x, t), _ = data.load_bundled()
    model = fastlayers.models.mlp(hidden=[10], seed=0)  # untrained: most are wrong
    fig = plot.misclassified(model, x[:50], t[:50], limit=6)
    pred = np.argmax(model.forward(x[:50], train=False), axis=1)
    wrong = np.flatnonzero(pred != t[:50])[:6]
    assert [ax.get_title() for ax in fig.axes] == [
        f"{data.CLASS_NAMES[t[i]]} \u2192 {data.CLASS_NAMES[pred[i]]}" for i in wrong]


def test_misclassified_refuses_bad_input():
    model, x, t = pixel_argmax_model(), images_for([0, 1]), np.array([0, 1])
    cases = [
        ((model, x, t.astype(np.float32)), ValueError, "integer labels"),
        ((model, x, t[:1]), ValueError, "2 samples but t has 1"),
        ((model, x[:0], t[:0]), ValueError, "no samples"),
        ((model, x.tolist(), t), TypeError, "numpy arrays"),
        ((x, x, t), TypeError, "model must be a Layer"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            plot.misclassified(*args, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        plot.misclassified(model, x, np.array([0, 2]), classes=["a", "b"])
    with pytest.raises(ValueError, match="predicts class 2 but there are 2 class names"):
        plot.misclassified(model, images_for([2, 2]), t, classes=["a", "b"])
    with pytest.raises(TypeError, match="sequence of names"):
        plot.misclassified(model, x, t, classes="abc")
    with pytest.raises(ValueError, match="limit"):
        plot.misclassified(model, x, t, classes=["a", "b", "c"], limit=0)
    with pytest.raises(ValueError, match="cannot show a sample of shape"):
        plot.misclassified(layers.Sequential(layers.Affine(3, 3, rng=0)), np.eye(3, dtype=np.float32), np.array([1, 1, 1]),
                           classes=["a", "b", "c"])


# -- files and the command line --------------------------------------------------------------


def assert_png(path):
    raw = path.read_bytes()
    assert len(raw) > len(PNG) and raw.startswith(PNG), path


def test_train_plots_writes_pngs(tmp_path, capsys):
    out = tmp_path / "plots"
    args = ["train", "--epochs", "2", "--limit", "300", "--quiet", "--json", "--plots", str(out), "--lr-step", "1"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    names = ["history.png", "filters.png", "activations.png", "misclassified.png"]
    assert result["plots"] == [str(out / n) for n in names]
    for n in names:
        assert_png(out / n)


def test_train_plots_of_an_mlp_have_no_filters_and_plot_command_redraws(tmp_path, capsys):
    out, saved = tmp_path / "mlp", tmp_path / "mlp.safetensors"
    args = ["train", "--model", "mlp", "--epochs", "1", "--limit", "200", "--quiet", "--plots", str(out),
            "--save", str(saved)]
    assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["activations.png", "history.png", "misclassified.png"]
    capsys.readouterr()
    again = tmp_path / "again"
    assert cli.main(["plot", str(saved), "--out", str(again)]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["activations.png", "misclassified.png"]  # no history in it
    assert_png(again / "misclassified.png")


def test_plot_command_reads_a_training_checkpoints_history(tmp_path, capsys):
    ckpt, out = tmp_path / "run.safetensors", tmp_path / "out"
    assert cli.main(["train", "--epochs", "1", "--limit", "200", "--quiet", "--checkpoint", str(ckpt)]) == 0
    assert cli.main(["plot", str(ckpt), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["activations.png", "filters.png", "history.png", "misclassified.png"]
    for p in out.iterdir():
        assert_png(p)


def test_plot_command_refuses_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert cli.main(["plot", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
