"""Overfitting, and what weight decay and dropout do about it, as in the notes.

    python examples/overfitting.py [--out DIR] [--epochs 200] [--threads 1] [--quick]

A deep MLP (6 hidden layers of 100 ReLU units) trains with SGD (lr 0.01, batch 100) on only
300 bundled Fashion-MNIST images, four ways: plain, with weight decay (lambda 0.1, the
penalty ½·lambda·‖W‖² on every weight matrix), with dropout (ratio 0.2 after every hidden
layer) and with both. overfitting.png shows training and test accuracy (inference mode,
on the 300 images and on the 2,000 test images) after every epoch: plain training fits
the 300 images ever better (0.93 after 200 epochs) while test accuracy stalls at 0.73;
weight decay and dropout each narrow the gap (0.08 and 0.12 against 0.20), both together
more (0.06), at the price of a lower accuracy in so short a run.

The figure goes to DIR (default ./out); --quick runs 5 epochs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fastlayers import data, losses, models, optim, plot, set_num_threads

RUNS = {
    "plain": {"weight_decay": 0.0, "dropout": 0.0},
    "weight decay 0.1": {"weight_decay": 0.1, "dropout": 0.0},
    "dropout 0.2": {"weight_decay": 0.0, "dropout": 0.2},
    "both": {"weight_decay": 0.1, "dropout": 0.2},
}


def accuracy(model, x, t) -> float:
    return float(np.mean(np.argmax(model.forward(x, train=False), axis=1) == t))


def train(x, t, x_test, t_test, weight_decay: float, dropout: float, epochs: int, seed: int = 0):
    model = models.mlp(input_size=x.shape[1], hidden=[100] * 6, dropout=dropout, seed=seed)
    model.needs_input_grad = False
    opt = optim.SGD(model.parameters(), lr=0.01, weight_decay=weight_decay)
    loss = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    train_acc, test_acc = [accuracy(model, x, t)], [accuracy(model, x_test, t_test)]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 100):
            batch = order[i : i + 100]
            loss.forward(model.forward(x[batch], train=True), t[batch])
            opt.zero_grad()
            model.backward(loss.backward())
            opt.step()
        train_acc.append(accuracy(model, x, t))
        test_acc.append(accuracy(model, x_test, t_test))
    return train_acc, test_acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out"), help="directory for the PNG file (default: ./out)")
    ap.add_argument("--epochs", type=int, default=200, help="epochs per run (default: 200)")
    ap.add_argument("--quick", action="store_true", help="5 epochs: a check that the script runs")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for the kernels (default: 1; these small MLPs gain little from a second one)")
    args = ap.parse_args(argv)
    set_num_threads(args.threads)
    epochs = 5 if args.quick else args.epochs
    start = time.perf_counter()

    (x, t), (x_test, t_test) = data.load_bundled(flatten=True)
    x, t = x[:300], t[:300]
    fig = plot.figure((3.2 * len(RUNS), 3.4))
    axes = fig.subplots(1, len(RUNS), sharey=True)
    print(f"{'run':<17} {'train acc':>9} {'test acc':>9} {'gap':>7}")
    for ax, (name, kw) in zip(axes, RUNS.items()):
        tr, te = train(x, t, x_test, t_test, epochs=epochs, **kw)
        ax.plot(tr, label="train (300 images)")
        ax.plot(te, label="test (2,000 images)")
        ax.set(title=name, xlabel="epoch", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        print(f"{name:<17} {tr[-1]:>9.4f} {te[-1]:>9.4f} {tr[-1] - te[-1]:>7.4f}")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"MLP 784-100x6-10 on 300 images, SGD lr 0.01, batch 100, {epochs} epochs")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "overfitting.png", dpi=90)
    print(f"accuracy after {epochs} epochs; figure in {args.out}/ ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
