"""What the trainer's non-finite guard costs per training step.

    python bench/step_guard.py                  # simple-cnn and mlp-bn, batch 100
    python bench/step_guard.py --quick --json out.json

Before every optimizer update ``Trainer.train_step`` copies the BatchNorm running statistics
(one ``numpy.concatenate`` per dtype) and checks that the loss and every gradient are finite
(one native ``sum_abs`` per flat gradient buffer of the optimizer). This script times that
guard on its own (median of many repetitions, which resolves microseconds) and a whole step
without it (forward, backward, Adam: median of interleaved steps), and prints the guard as a
share of the step.

Validation first: training with ``Trainer.train_step`` and with the bare step from the same
weights on the same batches must give bit-identical weights, or the guard is changing the
computation rather than only watching it.
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


def setup(name: str):
    """A trainer, and the same step without the guard, each on its own copy of the model."""
    build, shape = NETWORKS[name]
    pair = []
    for _ in range(2):
        model = build()
        trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=0, verbose=False)
        pair.append(trainer)
    guarded, plain = pair
    model, loss, opt = plain.model, plain.loss, plain.optimizer

    def bare(x, t):
        opt.zero_grad()
        value = loss.forward(model.forward(x, train=True), t) + opt.penalty()
        model.backward(loss.backward())
        opt.step()
        return value

    return guarded, plain, bare, shape


def batches(shape, n: int, count: int):
    rng = np.random.default_rng(0)
    return [(rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n)) for _ in range(count)]


def validate(name: str, batch: int) -> bool:
    guarded, plain, bare, shape = setup(name)
    for x, t in batches(shape, batch, 3):
        guarded.train_step(x, t)
        bare(x, t)
    a, b = guarded.model.state_dict(), plain.model.state_dict()
    return all(np.array_equal(a[k], b[k]) for k in a)


def measure(name: str, batch: int, steps: int, repeats: int) -> dict:
    guarded, _, bare, shape = setup(name)
    data = batches(shape, batch, 4)
    for x, t in data:  # warm-up, and gradients in the buffers for the guard to read
        guarded.train_step(x, t)
        bare(x, t)
    step_s, train_step_s = [], []
    for i in range(steps):
        x, t = data[i % len(data)]
        start = time.perf_counter()
        bare(x, t)
        step_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        guarded.train_step(x, t)
        train_step_s.append(time.perf_counter() - start)
    snapshot, opt = guarded._buffers, guarded.optimizer
    guard_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        snapshot.take()
        opt.nonfinite_gradient()
        guard_s.append(time.perf_counter() - start)
    step_ms, guard_us = 1e3 * statistics.median(step_s), 1e6 * statistics.median(guard_s)
    return {
        "network": name,
        "parameters": int(sum(p.data.size for p in opt.params)),
        "buffers": len(guarded.model.buffers()),
        "step_ms": step_ms,
        "train_step_ms": 1e3 * statistics.median(train_step_s),
        "guard_us": guard_us,
        "guard_share": guard_us / (1e3 * step_ms),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=200, help="interleaved steps timed per network")
    p.add_argument("--repeats", type=int, default=5000, help="timed repetitions of the guard alone")
    p.add_argument("--quick", action="store_true", help="a few steps only: checks that the script runs")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats = 5, 20
    info = fastlayers.build_info()
    print(f"fastlayers {fastlayers.__version__}, {info['threads']} threads, BLAS {info['blas']}")

    print("\nvalidation: Trainer.train_step and the bare step give identical weights")
    valid = {name: validate(name, args.batch) for name in NETWORKS}
    for name, ok in valid.items():
        print(f"  {name:<11} {'ok' if ok else 'MISMATCH'}")
    if not all(valid.values()):
        raise SystemExit("validation failed: the guard changes the computation")

    with OtherLoad() as load:
        rows = [measure(name, args.batch, args.steps, args.repeats) for name in NETWORKS]
    print(f"\nbatch {args.batch}, Adam; step: median of {args.steps} bare steps interleaved with as many "
          f"Trainer.train_step calls; guard: median of {args.repeats} runs on its own")
    print(f"  {'network':<11} {'params':>8} {'buffers':>8} {'step ms':>8} {'train_step ms':>14} "
          f"{'guard us':>9} {'share':>7}")
    for r in rows:
        print(f"  {r['network']:<11} {r['parameters']:>8} {r['buffers']:>8} {r['step_ms']:>8.3f} "
              f"{r['train_step_ms']:>14.3f} {r['guard_us']:>9.1f} {100 * r['guard_share']:>6.2f}%")
    print(load.summary())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"validation_passed": True, "rows": rows, "other_load_cores": load.cores}, f, indent=1)


if __name__ == "__main__":
    main()
