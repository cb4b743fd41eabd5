"""Hyper-parameter search with narrowing: the textbook's experiment on the bundled images.

    python examples/hyperparameter_search.py                 # about 35 s of CPU time, over the cores
    python examples/hyperparameter_search.py --out DIR --json search.json   # DIR/hyperparameter_search.png
    python examples/hyperparameter_search.py --quick      # 2 rounds of 4 short trials: checks that it runs

The textbook (chapter 6, "validating hyper-parameters") trains an MLP of six hidden layers
of 100 with SGD on a few hundred images, holds 20% of the *training* images out for
validation, draws the learning rate from 10^U(-6, -2) and the weight decay from
10^U(-8, -4), trains each candidate briefly, and then narrows both ranges by hand to where
the best candidates lie. Here the narrowing is automatic: each round's ranges are the span
of the best fifth of all trials so far. The test images are not loaded.

With matplotlib installed (pip install matplotlib) the script also saves a scatter plot of
validation accuracy against the learning rate and against the weight decay, one colour per
round.
"""

import argparse
import pathlib
import time

from fastlayers import data, losses, models, optim, tune


def build(params):
    # Top level of the script: the worker processes import it from here. The same initial
    # weights for every trial, so trials differ by their hyper-parameters (and batch order).
    model = models.mlp(hidden=[100] * 6, seed=0)
    opt = optim.SGD(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    return model, losses.SoftmaxCrossEntropy(), opt


def plot(result, out) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    rounds = result.settings["rounds"]
    colours = plt.get_cmap("viridis")
    for ax, name in zip(axes, ("lr", "weight_decay")):
        for r in range(1, rounds + 1):
            ok = [t for t in result.trials if t.round == r and t.ok]
            ax.scatter([t.params[name] for t in ok], [t.val_accuracy for t in ok], s=18,
                       color=colours(r / max(rounds, 2) * 0.9), label=f"round {r}")
            lo, hi = result.ranges[r - 1][name].low, result.ranges[r - 1][name].high
            ax.axvspan(lo, hi, color=colours(r / max(rounds, 2) * 0.9), alpha=0.08)
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    axes[0].legend()
    best = result.best
    fig.suptitle(f"{len(result.trials)} trials; best lr {best.params['lr']:.2e}, weight decay "
                 f"{best.params['weight_decay']:.2e}: {best.val_accuracy:.3f}")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "hyperparameter_search.png"
    fig.savefig(path, dpi=120)
    print(f"saved {path}")
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000, help="bundled training images to search on")
    p.add_argument("--trials", type=int, default=30, help="trials per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--keep", type=float, default=0.2)
    p.add_argument("--processes", type=int, default=None, help="default: the cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out"),
                   help="directory for hyperparameter_search.png (needs matplotlib; default ./out)")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="2 rounds of 4 trials of 1 epoch on 300 images")
    args = p.parse_args()
    if args.quick:
        args.images, args.trials, args.rounds, args.epochs = 300, 4, 2, 1

    (x, t), _ = data.load_bundled()  # the test split is not used
    x, t = x[: args.images], t[: args.images]
    space = {"lr": tune.loguniform(1e-6, 1e-2), "weight_decay": tune.loguniform(1e-8, 1e-4)}
    start = time.perf_counter()
    result = tune.random_search(build, space, x, t, trials=args.trials, rounds=args.rounds, epochs=args.epochs,
                                batch_size=100, validation_split=0.2, keep=args.keep, seed=args.seed,
                                processes=args.processes, verbose=True)
    print(f"\n{len(result.trials)} trials in {time.perf_counter() - start:.1f} s; the best ten:")
    print(result.table(top=10))
    for r, ranges in enumerate(result.ranges):
        label = "given" if r == 0 else f"after round {r}"
        print(f"{label:>14}: " + ", ".join(f"{n} [{v.low:.2e}, {v.high:.2e}]" for n, v in ranges.items()))
    if args.json:
        result.to_json(args.json)
    plot(result, args.out)


if __name__ == "__main__":
    main()
