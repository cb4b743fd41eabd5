"""What data augmentation costs per training step.

    python bench/augment.py                   # batch 100 of 28x28 images, simple_cnn
    python bench/augment.py --quick --json out.json

Validation first: the native ``affine_warp_forward`` must equal the NumPy oracle bit for bit
on a Fashion-MNIST-sized batch warped by ``Augment(translate=2, rotate=15, scale=(0.9, 1.1),
hflip=True)``'s matrices (docs/kernels.md: the two perform the same float64 operations).
Then, in the same run: milliseconds per batch of ``Augment.__call__`` (drawing the
parameters, composing the matrices and the kernel) on the native and the NumPy backend, and
a simple_cnn training step (forward, backward, Adam) with and without augmenting its batch
first, taking turns, so that the share of the step is measured rather than added up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import fastlayers
from fastlayers import backend, losses, models, optim
from fastlayers.augment import Augment
from fastlayers.trainer import Trainer

from machine import OtherLoad

AUGMENT = Augment(translate=2, rotate=15, scale=(0.9, 1.1), hflip=True)


def batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def validate(n: int) -> bool:
    x, _ = batch(n)
    theta = AUGMENT.matrices(n, 28, 28, np.random.default_rng(1)).astype(np.float32)
    got, want = np.empty_like(x), np.empty_like(x)
    backend._native.affine_warp_forward(got, x, theta, 0.0)
    fastlayers.reference.affine_warp_forward(want, x, theta, 0.0)
    return bool(np.array_equal(got.view(np.uint32), want.view(np.uint32)))


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(n: int, reps: int, steps: int) -> dict:
    x, t = batch(n)
    rng = np.random.default_rng(2)
    result = {}
    for name in ("native", "numpy"):
        with backend.use(name):
            result[f"{name}_ms"] = median_ms(lambda: AUGMENT(x, rng), reps if name == "native" else max(3, reps // 10))
    model = models.simple_cnn(seed=0)
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=0, verbose=False)
    plain_s, augmented_s = [], []
    for _ in range(2):  # warm-up
        trainer.train_step(AUGMENT(x, rng), t)
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(x, t)
        plain_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer.train_step(AUGMENT(x, rng), t)
        augmented_s.append(time.perf_counter() - start)
    result["step_ms"] = 1e3 * statistics.median(plain_s)
    result["augmented_step_ms"] = 1e3 * statistics.median(augmented_s)
    result["share"] = result["native_ms"] / result["augmented_step_ms"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--reps", type=int, default=200, help="timed calls of the native augmentation (a tenth on NumPy)")
    p.add_argument("--steps", type=int, default=50, help="timed simple_cnn steps of each kind, taking turns")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a few repetitions only: checks that the script runs")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    if args.quick:
        args.reps, args.steps = 10, 3
    if args.threads is not None:
        backend.set_num_threads(args.threads)
    print(f"fastlayers {fastlayers.__version__}, {backend.get_num_threads()} threads; {AUGMENT!r}")

    print(f"\nvalidation: native affine_warp_forward equals the oracle bit for bit on {args.batch} 28x28 images")
    ok = validate(args.batch)
    print(f"  {'ok' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit("validation failed: the native warp differs from the oracle")

    with OtherLoad() as load:
        r = measure(args.batch, args.reps, args.steps)
    print(f"\nbatch {args.batch} of 1x28x28 float32, medians")
    print(f"  augment, native backend   {r['native_ms']:8.3f} ms")
    print(f"  augment, NumPy backend    {r['numpy_ms']:8.3f} ms   ({r['numpy_ms'] / r['native_ms']:.1f}x)")
    print(f"  simple_cnn step           {r['step_ms']:8.3f} ms")
    print(f"  augment + simple_cnn step {r['augmented_step_ms']:8.3f} ms   (augmentation {100 * r['share']:.1f}% of it)")
    print(load.summary())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"validation_passed": True, "batch": args.batch, "threads": backend.get_num_threads(), **r,
                       "other_load_cores": load.cores}, f, indent=1)


if __name__ == "__main__":
    main()
