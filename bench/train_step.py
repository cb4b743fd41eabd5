"""Milliseconds per training step (forward, backward, Adam update) on each backend.

    python bench/train_step.py                       # simple-cnn, deep-cnn, mlp-bn
    python bench/train_step.py --models simple-cnn --steps 50

Validation first: one step from the same weights and batch on both backends must give the
same loss within float32 rounding, or the timings are not comparing the same computation.
Then the table: the NumPy backend is the baseline, measured in the same run, next to the
native backend with and without the fused layer+ReLU kernels (``Sequential(fuse=...)``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastlayers
from fastlayers import backend, losses, models, optim

NETWORKS = {
    "simple-cnn": lambda: models.simple_cnn(seed=0),
    "deep-cnn": lambda: models.deep_cnn(seed=0),
    "mlp-bn": lambda: models.mlp(hidden=[100] * 5, batchnorm=True, seed=0),
}


def batch(n: int):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def step_fn(name: str, fuse: bool = True):
    model = NETWORKS[name]()
    model.needs_input_grad = False  # as Trainer does: the input's gradient is never used
    model.fuse = fuse
    model.set_rng(np.random.default_rng(0))
    loss, opt = losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters())

    def step(x, t):
        opt.zero_grad()
        value = loss.forward(model.forward(x, train=True), t)
        model.backward(loss.backward())
        opt.step()
        return value

    return step


def time_interleaved(configs: dict, x, t, steps: int, warmup: int) -> dict[str, float]:
    """Median ms per step of each (backend, step) config, timed in turn step by step so that
    a slow moment of the machine hits them all alike."""
    for backend_name, step in configs.values():
        with backend.use(backend_name):
            for _ in range(warmup):
                step(x, t)
    times: dict[str, list[float]] = {label: [] for label in configs}
    for _ in range(steps):
        for label, (backend_name, step) in configs.items():
            with backend.use(backend_name):
                start = time.perf_counter()
                step(x, t)
                times[label].append(time.perf_counter() - start)
    return {label: 1e3 * statistics.median(v) for label, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(NETWORKS))
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    names = args.models.split(",")
    x, t = batch(args.batch)
    info = fastlayers.build_info()
    print(f"fastlayers {fastlayers.__version__}, {info['threads']} threads, BLAS {info['blas']}, "
          f"{len(info['native_kernels'])}/{len(backend.coverage())} kernels native")

    print("\nvalidation: first-step loss, native vs numpy")
    for name in names:
        losses_ = {}
        for b in ("native", "numpy"):
            with backend.use(b):
                losses_[b] = step_fn(name)(x, t)
        rel = abs(losses_["native"] - losses_["numpy"]) / abs(losses_["numpy"])
        ok = rel < 1e-4
        print(f"  {name:<11} native {losses_['native']:.6f}  numpy {losses_['numpy']:.6f}  rel diff {rel:.1e}  {'ok' if ok else 'MISMATCH'}")
        if not ok:
            raise SystemExit("validation failed: the backends do not compute the same step")

    print(f"\nms per training step, batch {args.batch}, float32 (median of {args.steps}; the native configurations interleaved)")
    print(f"  {'model':<11} {'numpy (baseline)':>17} {'native unfused':>15} {'native':>9} {'speed-up':>9}")
    for name in names:
        # The NumPy backend is timed on its own: NumPy's matrix products run on NumPy's own
        # OpenBLAS threads, which keep spinning after each call and would slow whatever runs
        # next on the same cores, so interleaving it with the native steps measures that
        # interference rather than either backend.
        with backend.use("numpy"):
            ms = time_interleaved({"numpy": ("numpy", step_fn(name))}, x, t, args.steps, args.warmup)
        with backend.use("native"):
            native = {"unfused": ("native", step_fn(name, False)), "native": ("native", step_fn(name, True))}
        ms.update(time_interleaved(native, x, t, args.steps, args.warmup))
        print(f"  {name:<11} {ms['numpy']:>17.1f} {ms['unfused']:>15.1f} {ms['native']:>9.1f} "
              f"{ms['numpy'] / ms['native']:>8.2f}x")


if __name__ == "__main__":
    main()
