"""SGD, Momentum, AdaGrad, RMSprop and Adam compared, as in the notes.

    python examples/optimizer_comparison.py [--out DIR] [--steps 1000] [--threads 1] [--quick]

Two experiments, each optimizer with the library's (the textbook's) default settings
unless noted:

1. optimizer_paths.png: the paths of the five optimizers minimising f(x, y) = x²/20 + y²
   from (-7, 2), 30 steps each, with the notes' learning rates (SGD 0.95, Momentum 0.1,
   AdaGrad 1.5, Adam 0.3; RMSprop 0.1). SGD zig-zags across the steep y direction;
   the others damp it.
2. optimizer_comparison.png: training loss of a 5-layer MLP (4 hidden layers of 100 ReLU
   units, He initial weights, the same for every optimizer) on the bundled Fashion-MNIST
   images, batches of 128 drawn from the same seeded stream for every optimizer. Adam,
   AdaGrad and Momentum end lowest; RMSprop at the textbook's lr 0.01 is too fast for this
   network and spikes.

The figures go to DIR (default ./out); --quick runs 60 steps instead of 1000.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fastlayers import data, losses, models, optim, set_num_threads
from fastlayers.parameter import Parameter

OPTIMIZERS = {
    "SGD": (optim.SGD, {}),
    "Momentum": (optim.Momentum, {}),
    "AdaGrad": (optim.AdaGrad, {}),
    "RMSprop": (optim.RMSprop, {}),
    "Adam": (optim.Adam, {}),
}
PATH_LR = {"SGD": 0.95, "Momentum": 0.1, "AdaGrad": 1.5, "RMSprop": 0.1, "Adam": 0.3}


def paths(steps: int = 30) -> dict[str, np.ndarray]:
    """Each optimizer's positions on f(x, y) = x²/20 + y², from (-7, 2)."""
    out = {}
    for name, (cls, _) in OPTIMIZERS.items():
        p = Parameter(np.array([-7.0, 2.0]), name="xy")
        opt = cls([p], lr=PATH_LR[name])
        trail = [p.data.copy()]
        for _ in range(steps):
            opt.zero_grad()
            p.grad[...] = [p.data[0] / 10.0, 2.0 * p.data[1]]
            opt.step()
            trail.append(p.data.copy())
        out[name] = np.array(trail)
    return out


def train(name: str, x, t, steps: int, batch_size: int = 128, seed: int = 0) -> np.ndarray:
    cls, kw = OPTIMIZERS[name]
    model = models.mlp(input_size=x.shape[1], hidden=[100] * 4, seed=seed)
    model.needs_input_grad = False
    opt = cls(model.parameters(), **kw)
    loss = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    history = np.empty(steps)
    for i in range(steps):
        batch = rng.choice(len(x), batch_size, replace=False)
        history[i] = loss.forward(model.forward(x[batch], train=True), t[batch])
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
    return history, model


def accuracy(model, x, t) -> float:
    return float(np.mean(np.argmax(model.forward(x, train=False), axis=1) == t))


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(y)))
    return np.convolve(y, np.ones(window) / window, mode="valid")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out"), help="directory for the PNG files (default: ./out)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps per optimizer (default: 1000)")
    ap.add_argument("--quick", action="store_true", help="60 steps: a check that the script runs")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for the kernels (default: 1; these small MLPs gain little from a second one)")
    args = ap.parse_args(argv)
    set_num_threads(args.threads)
    steps = 60 if args.quick else args.steps

    from fastlayers.plot import figure

    start = time.perf_counter()
    trails = paths()
    fig = figure((6.5, 4.2))
    ax = fig.add_subplot()
    gx, gy = np.meshgrid(np.linspace(-10, 10, 200), np.linspace(-5, 5, 200))
    ax.contour(gx, gy, gx**2 / 20 + gy**2, levels=15, colors="0.8", linewidths=0.7)
    for name, trail in trails.items():
        ax.plot(trail[:, 0], trail[:, 1], "o-", ms=2.5, lw=1, label=f"{name} (lr {PATH_LR[name]:g})")
    ax.plot(0, 0, "k+", ms=12)
    ax.set(xlim=(-10, 10), ylim=(-5, 5), xlabel="x", ylabel="y", title="f(x, y) = x\u00b2/20 + y\u00b2, 30 steps from (-7, 2)")
    ax.legend(fontsize=8)
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "optimizer_paths.png", dpi=100)

    (x, t), (x_test, t_test) = data.load_bundled(flatten=True)
    curves, rows = {}, []
    for name in OPTIMIZERS:
        curves[name], model = train(name, x, t, steps)
        tail = curves[name][-max(1, steps // 10):]
        dist = np.hypot(*trails[name][-1])
        rows.append((name, curves[name][0], float(tail.mean()), accuracy(model, x_test, t_test), dist))

    fig = figure((7, 4.2))
    ax = fig.add_subplot()
    window = max(1, steps // 40)
    for name, curve in curves.items():
        ax.plot(np.arange(window - 1, steps) + 1, smooth(curve, window), label=name)
    ax.set(xlabel="step", ylabel=f"training loss (mean of {window} steps)", yscale="log",
           title=f"MLP 784-100x4-10 on bundled Fashion-MNIST, batch 128, {steps} steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(args.out / "optimizer_comparison.png", dpi=100)

    print(f"{'optimizer':<10} {'first loss':>10} {'last loss':>10} {'test acc':>9} {'2-D: distance to min':>21}")
    for name, first, last, acc, dist in rows:
        print(f"{name:<10} {first:>10.4f} {last:>10.4f} {acc:>9.4f} {dist:>21.4f}")
    print(f"'last loss' is the mean of the last {max(1, steps // 10)} steps; figures in {args.out}/ "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
