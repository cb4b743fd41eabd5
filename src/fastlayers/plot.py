"""Seeing the network: training curves, filters, activation histograms, misclassified images.

Needs matplotlib (``pip install fastlayers[plot]``), imported only when a function here is
called. Every function returns a :class:`matplotlib.figure.Figure`; ``fig.savefig("x.png")``
writes it. A figure is made without pyplot, on the non-interactive Agg canvas, so nothing
here chooses or changes a backend, opens a window or needs closing (a notebook with the
inline backend displays the returned figure). To draw into a figure of your own (a pyplot
one you can ``plt.show()``), pass it as ``fig=plt.figure()``: the function clears it and
draws there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from . import init as _init
from . import layers as _layers
from .trainer import inference

__all__ = [
    "figure",
    "history",
    "filters",
    "layer_outputs",
    "activation_histograms",
    "init_comparison",
    "INIT_SCALES",
    "misclassified",
    "normalized_filters",
    "init_network",
    "predictions",
    "save_figures",
]

_MISSING = "fastlayers.plot needs matplotlib: pip install fastlayers[plot] (or pip install matplotlib)"


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return Figure, FigureCanvasAgg


def _figure(fig, figsize):
    """``fig`` cleared for drawing, or a new figure on an Agg canvas of ``figsize`` inches."""
    Figure, FigureCanvasAgg = _matplotlib()
    if fig is None:
        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        return fig
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure or None, got {type(fig).__name__}")
    fig.clear()
    return fig


def figure(figsize=(6.4, 4.8)):
    """A new empty Figure on the Agg canvas, without pyplot: for drawing your own panels
    (the examples do) and saving them with ``fig.savefig``."""
    return _figure(None, figsize)


def _grid(count: int, columns: int | None) -> tuple[int, int]:
    cols = columns if columns is not None else max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / cols)), cols


def _check_columns(columns, owner: str):
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1):
        raise ValueError(f"{owner}: columns must be a positive int or None, got {columns!r}")


# ----------------------------------------------------------------------------------------
# Training history
# ----------------------------------------------------------------------------------------


def history(history, title: str | None = None, fig=None):
    """Loss and accuracy per epoch from ``Trainer.history`` (or a Trainer).

    Axes: "loss" (training ``loss`` and, when recorded, ``val_loss``), "accuracy"
    (``train_accuracy`` and ``val_accuracy``), and "learning rate" (log scale) only when
    ``lr`` changes between epochs. The x axis is the ``epoch`` number.
    """
    records = getattr(history, "history", history)
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
        raise TypeError(f"history: expected a list of epoch records (Trainer.history), got {type(records).__name__}")
    if not records:
        raise ValueError("history: no epochs recorded")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise TypeError(f"history: record {i} must be a dict, got {type(r).__name__}")
        missing = [k for k in ("epoch", "loss", "train_accuracy") if k not in r]
        if missing:
            raise ValueError(f"history: record {i} lacks {', '.join(missing)}")
    epochs = [r["epoch"] for r in records]
    has_val = all("val_loss" in r and "val_accuracy" in r for r in records)
    lrs = [r["lr"] for r in records if "lr" in r]
    show_lr = len(lrs) == len(records) and len(set(lrs)) > 1

    fig = _figure(fig, (4.2 * (3 if show_lr else 2), 3.4))
    axes = fig.subplots(1, 3 if show_lr else 2, squeeze=False)[0]
    ax = axes[0]
    ax.plot(epochs, [r["loss"] for r in records], "o-", label="train")
    if has_val:
        ax.plot(epochs, [r["val_loss"] for r in records], "s--", label="validation")
    ax.set(title="loss", xlabel="epoch", ylabel="loss")
    ax = axes[1]
    ax.plot(epochs, [r["train_accuracy"] for r in records], "o-", label="train")
    if has_val:
        ax.plot(epochs, [r["val_accuracy"] for r in records], "s--", label="validation")
    ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    if show_lr:
        ax = axes[2]
        ax.plot(epochs, lrs, "o-", label="lr")
        ax.set_yscale("log")
        ax.set(title="learning rate", xlabel="epoch", ylabel="learning rate")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    axes[1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------------------


def _first_conv(model) -> _layers.Conv2d:
    if not isinstance(model, _layers.Layer):
        raise TypeError(f"filters: expected a model or a Conv2d layer, got {type(model).__name__}")
    for m in model.modules():
        if isinstance(m, _layers.Conv2d):
            return m
    raise ValueError(f"filters: {model._tag()} has no Conv2d layer")


def normalized_filters(conv: _layers.Conv2d, channel: int = 0) -> np.ndarray:
    """The filters of ``conv`` for input ``channel``, shape (FN, FH, FW), each mapped to [0, 1]
    by its own minimum and maximum (a constant filter becomes 0.5): what ``filters`` shows."""
    W = conv.W.data
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < W.shape[1]:
        raise ValueError(f"filters: channel must be an int in [0, {W.shape[1]}), got {channel!r}")
    w = W[:, channel].astype(np.float64)
    lo = w.min(axis=(1, 2), keepdims=True)
    span = w.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (w - lo) / np.where(span > 0, span, 1.0), 0.5)


def filters(model, channel: int = 0, columns: int | None = None, cmap: str = "gray", fig=None):
    """The first convolution's filters as a grid of images (one per output channel).

    ``model`` is a model (its first Conv2d in ``modules()`` order is shown) or a Conv2d.
    Each filter is scaled on its own to [0, 1], its minimum black and its maximum white,
    so that the shape of a weak filter is as visible as that of a strong one; the colour
    bar is that scale and each filter's title gives its weight range. A filter of several
    input channels is shown for input ``channel`` (default 0).
    """
    conv = _first_conv(model)
    _check_columns(columns, "filters")
    images = normalized_filters(conv, channel)
    raw = conv.W.data[:, channel]
    n = len(images)
    rows, cols = _grid(n, columns)
    fig = _figure(fig, (1.25 * cols + 1.0, 1.35 * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[n:]:
        fig.delaxes(ax)
    axes = axes[:n]
    im = None
    for i, ax in enumerate(axes):
        im = ax.imshow(images[i], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{i}: [{raw[i].min():.2g}, {raw[i].max():.2g}]", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    FN, C, FH, FW = conv.W.data.shape
    which = f", input channel {channel}" if C > 1 else ""
    fig.suptitle(f"{conv._tag()}: {FN} filters {FH}x{FW}{which}")
    bar = fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.02)
    bar.set_label("per-filter scale: (w - min) / (max - min)")
    return fig


# ----------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------


def _leaves(model, prefix: str = ""):
    if isinstance(model, _layers.Sequential):
        for i, layer in enumerate(model.layers):
            yield from _leaves(layer, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), model


def _is_activation(layer) -> bool:
    return isinstance(layer, (_layers._Activation, _layers.PReLU))


def layer_outputs(model, x: np.ndarray, train: bool = False) -> list[tuple[str, _layers.Layer, np.ndarray]]:
    """Runs a Sequential on ``x`` one layer at a time and returns ``(name, layer, output)`` for
    every layer, nested Sequentials opened (names as in ``state_dict``: "3", "2.1").

    The layers run unfused, each with its own ``forward``, so a ReLU that ``Sequential``
    would fuse into the Affine before it has its own output here (the numbers are the same).
    ``train=False`` (the default) is inference mode: Dropout passes everything, BatchNorm
    uses its running statistics. ``train=True`` is what a training step sees: BatchNorm
    normalises with the batch's statistics and Dropout draws masks; the BatchNorm running
    statistics and the Dropout generators are put back afterwards, so the call leaves the
    model as it was.
    """
    if not isinstance(model, _layers.Sequential):
        raise TypeError(f"layer_outputs: model must be a layers.Sequential, got {type(model).__name__}")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"layer_outputs: x must be a numpy.ndarray, got {type(x).__name__}")
    if len(x) == 0:
        raise ValueError("layer_outputs: x holds no samples")
    leaves = list(_leaves(model))
    if not leaves:
        raise ValueError("layer_outputs: the model has no layers")
    buffers = {name: b.copy() for name, b in model.buffers().items()}
    dropouts = [(m, m.rng.bit_generator.state) for m in model.modules() if isinstance(m, _layers.Dropout)]
    out = []
    try:
        for name, layer in leaves:
            x = layer.forward(x, train=bool(train))
            out.append((name, layer, x))
    finally:
        for name, b in model.buffers().items():
            b[...] = buffers[name]
        for m, state in dropouts:
            m.rng.bit_generator.state = state
    return out


def _select(outputs, layers, owner: str):
    if layers is None:
        chosen = [o for o in outputs if _is_activation(o[1])]
        return chosen or outputs
    names = [o[0] for o in outputs]
    chosen = []
    for key in layers:
        name = str(key)
        if name not in names:
            raise ValueError(f"{owner}: no layer {key!r}; the layers are {', '.join(names)}")
        chosen.append(outputs[names.index(name)])
    if not chosen:
        raise ValueError(f"{owner}: layers is empty")
    return chosen


def _bin_range(arrays, value_range, owner: str) -> tuple[float, float]:
    if value_range is not None:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: range must be a pair of numbers, got {value_range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{owner}: range must be finite with low < high, got {value_range!r}")
        return lo, hi
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        raise ValueError(f"{owner}: no finite activations to histogram")
    lo, hi = min(float(a.min()) for a in finite), max(float(a.max()) for a in finite)
    return (lo, hi) if lo < hi else (lo - 0.5, hi + 0.5)


def _check_bins(bins, owner: str):
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"{owner}: bins must be a positive int, got {bins!r}")


def activation_histograms(model, x: np.ndarray, layers=None, train: bool = False, bins: int = 30,
                          range=None, columns: int | None = None, fig=None):  # noqa: A002 (numpy's name)
    """Histograms of a Sequential's per-layer outputs on ``x`` (see ``layer_outputs`` for how
    the layers run and what ``train`` means).

    ``layers``: the layer names to show (``"3"``, or ints); by default every activation
    layer (ReLU, Sigmoid, Tanh, ..., PReLU), or every layer if there is none. All panels
    share ``bins`` equal bins over ``range``, by default the smallest and largest finite
    value over the panels shown; values outside ``range`` are not counted. Each panel's
    title is the layer's name and type; its y axis counts activations (samples × units).
    """
    _check_bins(bins, "activation_histograms")
    _check_columns(columns, "activation_histograms")
    chosen = _select(layer_outputs(model, x, train=train), layers, "activation_histograms")
    lo, hi = _bin_range([o[2] for o in chosen], range, "activation_histograms")
    rows, cols = _grid(len(chosen), columns if columns is not None else min(len(chosen), 5))
    fig = _figure(fig, (2.6 * cols, 2.3 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).reshape(-1)
    for ax in axes[len(chosen):]:
        fig.delaxes(ax)
    for ax, (name, layer, out) in zip(axes, chosen):
        ax.hist(out.reshape(-1), bins=bins, range=(lo, hi))
        ax.set_title(f"{name} {layer._tag()}", fontsize=9)
        ax.set_xlabel("activation")
    axes[0].set_ylabel("count")
    fig.suptitle(f"activations on {len(x)} samples ({'training' if train else 'inference'} mode)")
    fig.tight_layout()
    return fig


def _std_init(std: float):
    def init(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None):
        return _init.normal(shape, rng, dtype, std=std)

    init.__name__ = f"normal_std_{std:g}"
    return init


def _xavier_textbook(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None):
    return _init.normal(shape, rng, dtype, std=1.0 / math.sqrt(fan_in))


# The notes' four initial scales. "xavier" is theirs, std 1/sqrt(n) with n the previous
# layer's width (for equal widths the same as Glorot's sqrt(2/(n_in + n_out))); "he" is
# sqrt(2/n).
INIT_SCALES = {
    "std=1": _std_init(1.0),
    "std=0.01": _std_init(0.01),
    "xavier": _xavier_textbook,
    "he": _init.he_normal,
}
_ACTIVATIONS = {"sigmoid": _layers.Sigmoid, "relu": _layers.ReLU, "tanh": _layers.Tanh}


def init_initializer(name: str):
    """The initialiser for an ``init_comparison`` row name: a key of ``INIT_SCALES`` or
    ``"std=<number>"``."""
    if not isinstance(name, str):
        raise TypeError(f"init_comparison: an init must be a name, got {type(name).__name__}")
    if name in INIT_SCALES:
        return INIT_SCALES[name]
    if name.startswith("std="):
        try:
            std = float(name[4:])
        except ValueError:
            std = math.nan
        if math.isfinite(std) and std > 0:
            return _std_init(std)
    raise ValueError(f"init_comparison: unknown init {name!r}; expected one of {', '.join(INIT_SCALES)} or 'std=<positive number>'")


def init_network(in_features: int, init: str, activation: str = "sigmoid", hidden: Sequence[int] = (100,) * 5,
                 dtype=np.float32, seed=0) -> _layers.Sequential:
    """The notes' experiment network: per hidden layer an Affine without bias, initialised by
    ``init`` (see ``init_initializer``), then ``activation``."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"init_comparison: unknown activation {activation!r}; expected one of {', '.join(_ACTIVATIONS)}")
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
        raise ValueError(f"init_comparison: hidden must be a non-empty sequence of layer widths, got {hidden!r}")
    fn = init_initializer(init)
    gen = _init.as_generator(seed)
    sizes = [int(in_features), *(int(h) for h in hidden)]
    mods: list[_layers.Layer] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        mods += [_layers.Affine(d_in, d_out, init=fn, bias=False, dtype=dtype, rng=gen), _ACTIVATIONS[activation]()]
    return _layers.Sequential(*mods)


def init_comparison(x: np.ndarray, activations=("sigmoid", "relu"), inits=("std=1", "std=0.01", "xavier", "he"),
                    hidden: Sequence[int] = (100,) * 5, bins: int = 30, seed: int = 0, fig=None):
    """The notes' weight-initialisation experiment as one grid of histograms.

    For every activation in ``activations`` and init in ``inits`` (one row each: sigmoid
    with std 1, std 0.01, Xavier, He, then ReLU with the same) a network of ``hidden``
    bias-free Affine layers with that activation (``init_network``) is built with ``seed``
    and run on ``x`` (2-D, ``(N, features)``, float32 or float64; the notes use 1,000
    samples of 100 standard-normal features); the columns are the hidden layers'
    activation outputs. Sigmoid rows are binned over [0, 1] as in the notes; other rows over
    [0, the row's largest value]. In a ReLU row the y axis ends a little above the tallest
    bar after the first, whose exact zeros are given as a share in each panel. With std 1 the sigmoid outputs pile up at 0 and 1
    (vanishing gradients), with std 0.01 they collapse around 0.5 (every unit alike);
    Xavier keeps them spread, and for ReLU so does He.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype not in (np.float32, np.float64):
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"init_comparison: x must be a 2-D float32 or float64 array (N, features), got {got}")
    if len(x) == 0 or x.shape[1] == 0:
        raise ValueError(f"init_comparison: x must hold samples and features, got shape {x.shape}")
    _check_bins(bins, "init_comparison")
    if isinstance(activations, str):
        activations = (activations,)
    if isinstance(inits, str):
        inits = (inits,)
    if not activations or not inits:
        raise ValueError("init_comparison: activations and inits must not be empty")
    rows = [(a, i, init_network(x.shape[1], i, a, hidden, x.dtype, seed)) for a in activations for i in inits]
    cols = len(hidden)
    fig = _figure(fig, (2.2 * cols + 0.6, 1.7 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (act, name, net) in enumerate(rows):
        outs = [o for o in layer_outputs(net, x) if _is_activation(o[1])]
        hi = 1.0 if act == "sigmoid" else max(float(np.nanmax(o[2])) for o in outs)
        lo = 0.0 if act in ("sigmoid", "relu") else min(float(np.nanmin(o[2])) for o in outs)
        if not hi > lo:
            hi = lo + 1.0
        tallest = 0.0
        for c, (_, _, out) in enumerate(outs):
            ax = axes[r, c]
            counts, _, _ = ax.hist(out.reshape(-1), bins=bins, range=(lo, hi))
            tallest = max(tallest, float(counts[1:].max(initial=0)))
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {c + 1}")
            if act == "relu":
                ax.text(0.97, 0.9, f"{np.mean(out == 0):.0%} at 0", transform=ax.transAxes, ha="right", va="top",
                        fontsize=7)
        if act == "relu" and tallest > 0:
            # The bar of exact zeros (about half of every ReLU layer) would flatten the rest;
            # it is cut off at the top and its share written instead.
            for ax in axes[r]:
                ax.set_ylim(0, 1.15 * tallest)
        axes[r, 0].set_ylabel(f"{act}\n{name}", rotation=0, ha="right", va="center")
    fig.suptitle(f"activation distributions, {len(x)} samples, {cols} layers of {', '.join(map(str, hidden))}"
                 if len(set(hidden)) > 1 else
                 f"activation distributions, {len(x)} samples, {cols} layers of {hidden[0]} units")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# Misclassified images
# ----------------------------------------------------------------------------------------


def predictions(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Arg-max class of ``model`` on ``x`` in inference mode, batch by batch; the model's
    train/eval modes are left as they were."""
    return np.argmax(inference(model, x, batch_size), axis=1)


def _image(sample: np.ndarray) -> np.ndarray:
    if sample.ndim == 3:
        if sample.shape[0] == 1:
            return sample[0]
        if sample.shape[0] == 3:
            return np.moveaxis(sample, 0, -1)
        raise ValueError(f"misclassified: images must have 1 or 3 channels (N, C, H, W), got {sample.shape[0]}")
    if sample.ndim == 2:
        return sample
    side = math.isqrt(sample.size)
    if sample.ndim == 1 and side * side == sample.size:
        return sample.reshape(side, side)
    raise ValueError(f"misclassified: cannot show a sample of shape {sample.shape} as an image "
                     "(expected (C, H, W), (H, W) or a square number of features)")


def misclassified(model, x: np.ndarray, t: np.ndarray, classes: Sequence[str] | None = None, limit: int = 25,
                  columns: int | None = None, batch_size: int = 256, fig=None):
    """The images of ``x`` that ``model`` gets wrong, in their order in ``x``, at most ``limit``.

    Each panel is titled "true → predicted" with the class names ``classes`` (default
    ``fastlayers.data.CLASS_NAMES``, Fashion-MNIST's; ``data.MNIST_CLASS_NAMES`` for digits)
    and labelled with the image's index in ``x``; the figure's title gives how many of the
    images are wrong. ``x`` is a batch the model accepts: (N, C, H, W) images with 1 or 3
    channels, or (N, H*W) flattened square ones. Predictions are made in inference mode.
    """
    from .data import CLASS_NAMES

    if not isinstance(model, _layers.Layer):
        raise TypeError(f"misclassified: model must be a Layer, got {type(model).__name__}")
    if not isinstance(x, np.ndarray) or not isinstance(t, np.ndarray):
        raise TypeError("misclassified: x and t must be numpy arrays, got "
                        f"{type(x).__name__} and {type(t).__name__}")
    if t.ndim != 1 or t.dtype.kind not in "iu":
        raise ValueError(f"misclassified: t must be a 1-D array of integer labels, got {t.dtype} of shape {t.shape}")
    if len(x) != len(t):
        raise ValueError(f"misclassified: x has {len(x)} samples but t has {len(t)} labels")
    if len(x) == 0:
        raise ValueError("misclassified: no samples")
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"misclassified: limit must be a positive int, got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"misclassified: batch_size must be a positive int, got {batch_size!r}")
    _check_columns(columns, "misclassified")
    classes = CLASS_NAMES if classes is None else classes
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise TypeError(f"misclassified: classes must be a sequence of names, got {type(classes).__name__}")
    if t.min() < 0 or t.max() >= len(classes):
        raise ValueError(f"misclassified: labels must be in [0, {len(classes)}) for {len(classes)} classes, "
                         f"got {t.min()}..{t.max()}")
    pred = predictions(model, x, batch_size)
    if pred.max() >= len(classes):
        raise ValueError(f"misclassified: the model predicts class {pred.max()} but there are {len(classes)} class names")
    wrong = np.flatnonzero(pred != t)
    shown = wrong[:limit]
    rows, cols = _grid(max(len(shown), 1), columns if columns is not None else min(max(len(shown), 1), 5))
    fig = _figure(fig, (2.0 * cols, 2.2 * rows + 0.6))
    if len(shown):
        axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
        for ax in axes[len(shown):]:
            fig.delaxes(ax)
        for ax, i in zip(axes, shown):
            img = _image(x[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            ax.set_title(f"{classes[t[i]]} \u2192 {classes[pred[i]]}", fontsize=8)
            ax.set_xlabel(f"#{i}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    more = f", the first {len(shown)} shown" if len(shown) < len(wrong) else ""
    fig.suptitle(f"misclassified: {len(wrong)} of {len(x)} ({len(wrong) / len(x):.1%}){more}; true \u2192 predicted")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------


def save_figures(out_dir, model=None, history_records=None, x=None, t=None, classes=None, dpi: int = 100) -> list:
    """Writes what there is to show as PNG files in ``out_dir`` (created if missing):
    ``history.png`` when ``history_records`` is non-empty, ``filters.png`` when ``model`` has
    a Conv2d, ``activations.png`` (histograms of every activation layer's outputs on the
    first 1,000 images of ``x``, inference mode) when ``model`` is a Sequential and ``x`` is
    given, ``misclassified.png`` when ``model``, ``x`` and ``t`` are given. Returns the
    paths written. This is what ``fastlayers train --plots DIR`` and ``fastlayers plot``
    call."""
    from pathlib import Path

    _matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if history_records:
        figures.append(("history.png", history(history_records)))
    if model is not None and any(isinstance(m, _layers.Conv2d) for m in model.modules()):
        figures.append(("filters.png", filters(model)))
    if isinstance(model, _layers.Sequential) and x is not None:
        figures.append(("activations.png", activation_histograms(model, x[:1000])))
    if model is not None and x is not None and t is not None:
        figures.append(("misclassified.png", misclassified(model, x, t, classes=classes)))
    paths = []
    for name, fig in figures:
        fig.savefig(out / name, dpi=dpi)
        paths.append(out / name)
    return paths
