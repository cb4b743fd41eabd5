"""Full-batch training with L-BFGS against gradient descent and Adam, at equal numbers of
gradient evaluations.

A small tanh network (784 -> 32 -> 10, float64) is fitted to 500 of the bundled Fashion-MNIST
images, the whole set as one batch. Each optimizer gets the same budget of closure calls
(forward + backward on the 500 images); gradient descent and Adam get their best learning
rate from a small grid. Prints the training loss after 25, 50, 100 and 200 evaluations and
the accuracy on 2,000 held-out images, and draws the curves when matplotlib is installed.

    python examples/lbfgs.py [--budget 200] [--out DIR]     # the figure: DIR/lbfgs.png (default ./out)
    python examples/lbfgs.py --quick                        # 30 evaluations each: checks that it runs
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from fastlayers import data, layers, losses, optim
from fastlayers.trainer import accuracy


def network(seed: int = 0):
    rng = np.random.default_rng(seed)
    return layers.Sequential(layers.Affine(784, 32, init="glorot_normal", dtype=np.float64, rng=rng), layers.Tanh(),
                             layers.Affine(32, 10, init="glorot_normal", dtype=np.float64, rng=rng))


def run(make_optimizer, x, t, budget: int):
    """Trains a fresh network until ``budget`` closure calls; returns the loss after each call
    (the loss at the parameters the call was made at) and the model."""
    model = network()
    loss = losses.SoftmaxCrossEntropy()
    opt = make_optimizer(model.parameters())
    curve = []

    def closure():
        opt.zero_grad()
        value = loss.forward(model.forward(x, train=True), t)
        model.backward(loss.backward())
        curve.append(value)
        return value

    stop = None
    if isinstance(opt, optim.LBFGS):
        while len(curve) < budget:
            opt.max_eval = budget - len(curve)
            opt.step(closure)
            if opt.stop_reason.startswith(("tolerance", "no descent", "line search")):
                stop = opt.stop_reason
                break
    else:
        while len(curve) < budget:
            closure()
            opt.step()
    return curve[:budget], model, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=200, help="gradient evaluations per optimizer")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out"),
                        help="directory for lbfgs.png, the loss curves (needs matplotlib; default ./out)")
    parser.add_argument("--quick", action="store_true", help="30 evaluations each: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.budget = 30

    (x_train, t_train), (x_test, t_test) = data.load_bundled(flatten=True)
    x, t = x_train[:500].astype(np.float64), t_train[:500]
    x_test, t_test = x_test.astype(np.float64), t_test

    contenders = {"L-BFGS (history 10, strong Wolfe)": [lambda ps: optim.LBFGS(ps, max_iter=1000)]}
    contenders["gradient descent"] = [lambda ps, lr=lr: optim.SGD(ps, lr=lr) for lr in (0.1, 0.3, 1.0)]
    contenders["Adam"] = [lambda ps, lr=lr: optim.Adam(ps, lr=lr) for lr in (3e-3, 1e-2, 3e-2)]

    results = {}
    for name, makers in contenders.items():
        start = time.perf_counter()
        runs = [run(make, x, t, args.budget) for make in makers]
        best = int(np.argmin([r[0][-1] if np.isfinite(r[0][-1]) else np.inf for r in runs]))
        curve, model, stop = runs[best]
        lr = makers[best](network().parameters()).lr
        scores = model.forward(x_test, train=False)
        results[name] = (curve, lr, accuracy(scores, t_test), time.perf_counter() - start, stop)

    marks = [m for m in (25, 50, 100, 200, 400, 800) if m <= args.budget]
    print("training loss on 500 images (full batch, float64) after N gradient evaluations; best lr of each grid")
    header = f"{'optimizer':<36} {'lr':>6} " + " ".join(f"{'N=' + str(m):>9}" for m in marks) + f" {'test acc':>9}"
    print(header)
    print("-" * len(header))
    for name, (curve, lr, acc, seconds, stop) in results.items():
        cells = " ".join(f"{curve[m - 1]:9.4f}" if m <= len(curve) else f"{curve[-1]:8.4f}*" for m in marks)
        print(f"{name:<36} {lr:6g} {cells} {acc:9.4f}")
        if stop is not None:
            print(f"  * converged: stopped by {stop} after {len(curve)} evaluations")
    print(f"(test accuracy on 2,000 held-out images; {sum(r[3] for r in results.values()):.1f} s in all)")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (curve, lr, *_) in results.items():
        ax.semilogy(np.arange(1, len(curve) + 1), curve, label=f"{name} (lr {lr:g})")
    ax.set_xlabel("gradient evaluations")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.legend()
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "lbfgs.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
