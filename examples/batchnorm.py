"""Batch normalisation against none, over a range of initial weight scales, as in the notes.

    python examples/batchnorm.py [--out DIR] [--epochs 20] [--threads 1] [--quick]

For each of 16 initial weight standard deviations from 1 down to 1e-4 (log-spaced), two
6-layer MLPs (5 hidden layers of 100 ReLU units) start from the same weights, one with a
BatchNorm after every hidden Affine; both train with SGD (lr 0.01, batch 100) on 1,000
bundled Fashion-MNIST images. batchnorm.png shows their training accuracy per epoch, one
panel per scale: without BatchNorm only initial scales around 0.1-0.3 train at all; with
it every scale from 1 to 1e-4 trains, best between about 0.05 and 0.005.

The figure goes to DIR (default ./out); --quick runs 4 scales for 3 epochs.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from fastlayers import data, init, losses, models, optim, plot, set_num_threads


def scaled_normal(std: float):
    def normal(shape, rng=None, dtype=np.float32, fan_in=None, fan_out=None):
        return init.normal(shape, rng, dtype, std=std)

    return normal


def accuracy(model, x, t) -> float:
    return float(np.mean(np.argmax(model.forward(x, train=False), axis=1) == t))


def train(x, t, std: float, batchnorm: bool, epochs: int, seed: int = 0) -> list[float]:
    """Training accuracy (inference mode, on all of x) after each epoch; epoch 0 is the start."""
    model = models.mlp(input_size=x.shape[1], hidden=[100] * 5, batchnorm=batchnorm, init=scaled_normal(std), seed=seed)
    model.needs_input_grad = False
    opt = optim.SGD(model.parameters(), lr=0.01)
    loss = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    accs = [accuracy(model, x, t)]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 100):
            batch = order[i : i + 100]
            loss.forward(model.forward(x[batch], train=True), t[batch])
            opt.zero_grad()
            model.backward(loss.backward())
            opt.step()
        accs.append(accuracy(model, x, t))
    return accs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out"), help="directory for the PNG file (default: ./out)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs per run (default: 20)")
    ap.add_argument("--quick", action="store_true", help="4 scales, 3 epochs: a check that the script runs")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for the kernels (default: 1; these small MLPs gain little from a second one)")
    args = ap.parse_args(argv)
    set_num_threads(args.threads)
    scales = np.logspace(0, -4, 4 if args.quick else 16)
    epochs = 3 if args.quick else args.epochs
    start = time.perf_counter()

    (x, t), _ = data.load_bundled(flatten=True)
    x, t = x[:1000], t[:1000]
    cols = 4
    rows = math.ceil(len(scales) / cols)
    fig = plot.figure((3.0 * cols, 2.4 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).reshape(-1)
    print(f"{'init std':>9} {'acc, BatchNorm':>14} {'acc, none':>10}")
    for ax, std in zip(axes, scales):
        with_bn = train(x, t, std, True, epochs)
        without = train(x, t, std, False, epochs)
        ax.plot(with_bn, label="BatchNorm")
        ax.plot(without, "--", label="none")
        ax.set_title(f"init std {std:.2g}", fontsize=9)
        ax.set_ylim(0, 1)
        print(f"{std:>9.2g} {with_bn[-1]:>14.4f} {without[-1]:>10.4f}")
    for ax in axes[len(scales):]:
        fig.delaxes(ax)
    axes[0].legend(fontsize=8)
    for ax in axes[::cols]:
        ax.set_ylabel("train accuracy")
    for ax in axes[-cols:]:
        ax.set_xlabel("epoch")
    fig.suptitle(f"MLP 784-100x5-10, SGD lr 0.01, 1,000 images, {epochs} epochs")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "batchnorm.png", dpi=90)
    print(f"training accuracy after {epochs} epochs; figure in {args.out}/ ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
