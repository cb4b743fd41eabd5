"""What training health (``Trainer(..., health=True)``) costs per training step.

    python bench/health.py                      # simple-cnn and mlp-bn, batch 100
    python bench/health.py --quick --json out.json

Every step (by default) runs the model's plan one unit at a time, so that each unit's output
can be recorded, and after the update runs one ``count_outside`` per watched ReLU, sigmoid
or tanh output; every 10th step also copies the weights before the update and runs one
``sum_squares`` and one ``sum_squares_diff`` per weight after it. This script times that
bookkeeping on its own (medians of many repetitions on the outputs of a real step) and whole
steps of ``Trainer.fit`` with and without health (the median over epochs of 50 steps, the
two trainers taking turns), and prints both as a share of the step.

Validation first: two trainers from the same weights on the same batches, one with health
and one without, must end with bit-identical weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import fastlayers
from fastlayers import losses, models, optim
from fastlayers.trainer import Trainer

from machine import OtherLoad

NETWORKS = {
    "simple-cnn": (lambda: models.simple_cnn(seed=0), (1, 28, 28)),
    "mlp-bn": (lambda: models.mlp(hidden=[100] * 5, batchnorm=True, seed=0), (784,)),
}


def trainer(name: str, health: bool) -> Trainer:
    model = NETWORKS[name][0]()
    return Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=0, verbose=False,
                   health=health)


def batches(shape, n: int, count: int):
    rng = np.random.default_rng(0)
    return [(rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n)) for _ in range(count)]


def validate(name: str, batch: int) -> bool:
    watched, plain = trainer(name, True), trainer(name, False)
    for x, t in batches(NETWORKS[name][1], batch, 3):
        watched.train_step(x, t)
        plain.train_step(x, t)
    a, b = watched.model.state_dict(), plain.model.state_dict()
    return all(np.array_equal(a[k], b[k]) for k in a)


def measure(name: str, batch: int, steps: int, repeats: int) -> dict:
    watched, plain = trainer(name, True), trainer(name, False)
    data = batches(NETWORKS[name][1], batch, 4)
    for x, t in data:  # warm-up
        watched.train_step(x, t)
        plain.train_step(x, t)
    # Whole steps as fit runs them, whose sampling (activations every step, update ratios on
    # the first step of an epoch and every ratio_every-th after it) depends on the step's
    # place in its epoch: epochs of `per_epoch` steps, the two trainers taking turns.
    per_epoch = min(steps, 50)
    x_all = np.concatenate([data[i % len(data)][0] for i in range(per_epoch)])
    t_all = np.concatenate([data[i % len(data)][1] for i in range(per_epoch)])
    plain_s, watched_s = [], []
    for _ in range(max(1, steps // per_epoch)):
        plain_s.append(plain.fit(x_all, t_all, epochs=1, batch_size=batch, shuffle=False)[-1]["seconds"] / per_epoch)
        watched_s.append(
            watched.fit(x_all, t_all, epochs=1, batch_size=batch, shuffle=False)[-1]["seconds"] / per_epoch)
    # The bookkeeping alone, on the outputs one watched forward recorded: the activation
    # counts (every step by default) and the update ratios (every ratio_every-th step).
    monitor = watched.health

    def bookkeeping(ratios: bool) -> float:
        with monitor.watch(activations=True, ratios=ratios):
            watched.model.forward(data[0][0], train=True)
            recorded = list(monitor._pending)
            times = []
            for _ in range(repeats):
                monitor._pending[:] = recorded
                start = time.perf_counter()
                monitor.before_update()
                monitor.after_update()
                times.append(time.perf_counter() - start)
        return 1e6 * statistics.median(times), len(recorded)

    counts_us, outputs = bookkeeping(False)
    ratios_us = bookkeeping(True)[0] - counts_us
    every = monitor.settings.ratio_every
    work_us = counts_us + ratios_us / every
    step_ms = 1e3 * statistics.median(plain_s)
    watched_ms = 1e3 * statistics.median(watched_s)
    return {
        "network": name,
        "watched_outputs": outputs,
        "weights": len(monitor._weights()),
        "step_ms": step_ms,
        "health_step_ms": watched_ms,
        "step_difference_share": (watched_ms - step_ms) / step_ms,
        "counts_us": counts_us,
        "ratios_us": ratios_us,
        "ratio_every": every,
        "bookkeeping_us": work_us,
        "bookkeeping_share": work_us / (1e3 * step_ms),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=200, help="interleaved steps timed per network")
    p.add_argument("--repeats", type=int, default=2000, help="timed repetitions of the bookkeeping alone")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="a few steps only: checks that the script runs")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    if args.threads is not None:
        fastlayers.backend.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.repeats = 5, 20
    info = fastlayers.build_info()
    print(f"fastlayers {fastlayers.__version__}, {fastlayers.backend.get_num_threads()} threads, BLAS {info['blas']}")

    print("\nvalidation: training with and without health gives identical weights")
    valid = {name: validate(name, args.batch) for name in NETWORKS}
    for name, ok in valid.items():
        print(f"  {name:<11} {'ok' if ok else 'MISMATCH'}")
    if not all(valid.values()):
        raise SystemExit("validation failed: health changes the computation")

    with OtherLoad() as load:
        rows = [measure(name, args.batch, args.steps, args.repeats) for name in NETWORKS]
    print(f"\nbatch {args.batch}, Adam; steps: fit's mean step over epochs of up to 50 steps, {args.steps} steps "
          f"each without and with health, taking turns (median of the epochs); bookkeeping: median of "
          f"{args.repeats} runs on its own")
    print("  bookkeeping per step = counts + ratios / ratio_every")
    print(f"  {'network':<11} {'outputs':>8} {'weights':>8} {'step ms':>8} {'health ms':>10} {'diff':>7} "
          f"{'counts us':>10} {'ratios us':>10} {'per step us':>12} {'share':>7}")
    for r in rows:
        print(f"  {r['network']:<11} {r['watched_outputs']:>8} {r['weights']:>8} {r['step_ms']:>8.3f} "
              f"{r['health_step_ms']:>10.3f} {100 * r['step_difference_share']:>6.1f}% {r['counts_us']:>10.1f} "
              f"{r['ratios_us']:>10.1f} {r['bookkeeping_us']:>12.1f} {100 * r['bookkeeping_share']:>6.2f}%")
    print(load.summary())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"validation_passed": True, "rows": rows, "other_load_cores": load.cores}, f, indent=1)


if __name__ == "__main__":
    main()
