"""Initial weights: the notes' activation histograms, then training loss per initialisation.

    python examples/weight_init.py [--out DIR] [--steps 2000] [--threads 1] [--quick]

1. weight_init_histograms.png: 1,000 samples of 100 standard-normal features through five
   bias-free layers of 100 units (``fastlayers.plot.init_comparison``). Rows: sigmoid with
   initial weights of std 1, std 0.01, Xavier (1/sqrt(n)) and He (sqrt(2/n)), then ReLU
   with the same; columns: layers 1-5. The table gives each last layer's spread.
2. weight_init_training.png: a 5-layer ReLU MLP (4 hidden layers of 100) trained with SGD
   (lr 0.01, batch 128) on the bundled Fashion-MNIST images from std 0.01, Xavier and He
   initial weights: with std 0.01 the signal dies out and the loss barely moves.

The figures go to DIR (default ./out); --quick trains 60 steps instead of 2000 and draws
the histograms of 200 samples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fastlayers import data, losses, models, optim, plot, set_num_threads

TRAIN_INITS = ("std=0.01", "xavier", "he")


def train(init_name: str, x, t, steps: int, batch_size: int = 128, seed: int = 0):
    model = models.mlp(input_size=x.shape[1], hidden=[100] * 4, init=plot.INIT_SCALES[init_name], seed=seed)
    model.needs_input_grad = False
    opt = optim.SGD(model.parameters(), lr=0.01)
    loss = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    curve = np.empty(steps)
    for i in range(steps):
        batch = rng.choice(len(x), batch_size, replace=False)
        curve[i] = loss.forward(model.forward(x[batch], train=True), t[batch])
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
    return curve, model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out"), help="directory for the PNG files (default: ./out)")
    ap.add_argument("--steps", type=int, default=2000, help="training steps per initialisation (default: 2000)")
    ap.add_argument("--quick", action="store_true", help="60 steps: a check that the script runs")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for the kernels (default: 1; these small MLPs gain little from a second one)")
    args = ap.parse_args(argv)
    set_num_threads(args.threads)
    steps = 60 if args.quick else args.steps
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    x = np.random.default_rng(0).standard_normal((200 if args.quick else 1000, 100)).astype(np.float32)
    plot.init_comparison(x).savefig(args.out / "weight_init_histograms.png", dpi=80)
    print(f"{'activation':<10} {'init':<9} {'layer-5 mean':>12} {'layer-5 std':>11} {'at 0 or 1':>9}")
    for act in ("sigmoid", "relu"):
        for name in plot.INIT_SCALES:
            net = plot.init_network(100, name, act, seed=0)
            a = plot.layer_outputs(net, x)[-1][2]
            saturated = np.mean((a < 0.01) | (a > 0.99)) if act == "sigmoid" else np.mean(a == 0)
            print(f"{act:<10} {name:<9} {a.mean():>12.4g} {a.std():>11.4g} {saturated:>9.1%}")
    print("('at 0 or 1': sigmoid outputs below 0.01 or above 0.99; for ReLU the share of exact zeros)\n")

    (xt, tt), (x_test, t_test) = data.load_bundled(flatten=True)
    fig = plot.figure((7, 4.2))
    ax = fig.add_subplot()
    print(f"{'init':<9} {'first loss':>10} {'last loss':>10} {'test acc':>9}")
    for name in TRAIN_INITS:
        curve, model = train(name, xt, tt, steps)
        window = max(1, steps // 40)
        ax.plot(np.arange(window, steps + 1), np.convolve(curve, np.ones(window) / window, "valid"), label=name)
        acc = np.mean(np.argmax(model.forward(x_test, train=False), axis=1) == t_test)
        print(f"{name:<9} {curve[0]:>10.4f} {curve[-max(1, steps // 10):].mean():>10.4f} {acc:>9.4f}")
    ax.set(xlabel="step", ylabel=f"training loss (mean of {window} steps)",
           title=f"ReLU MLP 784-100x4-10, SGD lr 0.01, batch 128, {steps} steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(args.out / "weight_init_training.png", dpi=100)
    print(f"'last loss' is the mean of the last {max(1, steps // 10)} steps; figures in {args.out}/ "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
