"""Training-step time against batch size and thread count, on the native backend.

    python bench/scaling.py                               # batch 1, 10, 100, 1000; 1 and 2 threads
    python bench/scaling.py --network mlp_bn --batches 100,1000 --threads 1,2,4
    python bench/scaling.py --quick --json scaling.json

The step is bench/train_step.py's (forward, backward, Adam update; fused layer+ReLU kernels),
for simple_cnn, deep_cnn and mlp_bn (the names of bench/shapes.py). The thread count is
changed at run time with ``fastlayers.backend.set_num_threads``, which sets the OpenMP pool
that runs every kernel and every GEMM tile (for the calling thread, like omp_set_num_threads:
kernels called from another Python thread keep the default).

Validation first: two steps from the same weights and batch with each thread count must give
the same losses, bit for bit on an OpenMP build (the kernels promise thread-count-independent
results, docs/kernels.md), or within float32 rounding on a build without OpenMP. The second
step's loss depends on the first step's backward and update, so this covers all three.
Then the table: median ms per step, microseconds per sample, the speed-up from the fewest
to the most threads, and how many cores other processes kept busy while the row was timed
(bench/machine.py). Each (network, batch, threads) is timed in one block after its
warm-up steps: switching the pool's size step by step would leave the larger pool's idle
threads spinning into the smaller one's step.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import fastlayers
from fastlayers import backend

import shapes
import train_step
from machine import BUSY_CORES, OtherLoad


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def time_steps(network: str, batch: int, steps: int, warmup: int, min_time: float) -> dict:
    """Median over at least ``steps`` steps and ``min_time`` seconds: a configuration of a
    fraction of a millisecond a step would otherwise be timed in one short burst, which a
    moment of other work on the machine could fill."""
    step = train_step.step_fn(shapes.STEP_NAMES[network])
    x, t = train_step.batch(batch)
    for _ in range(warmup):
        step(x, t)
    samples = []
    with OtherLoad() as load:
        begin = time.perf_counter()
        while len(samples) < steps or time.perf_counter() - begin < min_time:
            start = time.perf_counter()
            step(x, t)
            samples.append(time.perf_counter() - start)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"ms_per_step": 1e3 * median, "us_per_sample": 1e6 * median / batch,
            "iqr_pct": 100 * (q3 - q1) / median, "steps": len(samples), "other_load_cores": load.cores}


def first_losses(network: str, batch: int) -> list[float]:
    step = train_step.step_fn(shapes.STEP_NAMES[network])
    x, t = train_step.batch(batch)
    return [step(x, t), step(x, t)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default=",".join(shapes.NETWORKS), help="comma-separated (default: %(default)s)")
    p.add_argument("--batches", default="1,10,100,1000", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: %(default)s)")
    p.add_argument("--steps", type=int, help="timed steps per configuration, at least (default 10; --quick 2)")
    p.add_argument("--min-time", type=float, help="seconds per configuration, at least (default 0.5; --quick 0.02)")
    p.add_argument("--warmup", type=int, help="discarded steps first (default 2; --quick 1)")
    p.add_argument("--quick", action="store_true", help="fewer steps: a smoke run")
    p.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    args = p.parse_args()
    networks = [n for n in args.network.split(",") if n]
    unknown = [n for n in networks if n not in shapes.NETWORKS]
    if unknown:
        p.error(f"unknown network {unknown[0]!r}; expected some of {', '.join(shapes.NETWORKS)}")
    batches, thread_counts = ints(args.batches), ints(args.threads)
    if not batches or min(batches) < 1 or not thread_counts or min(thread_counts) < 1:
        p.error("--batches and --threads need positive integers")
    steps = args.steps or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    min_time = args.min_time if args.min_time is not None else (0.02 if args.quick else 0.5)

    info = fastlayers.build_info()
    initial_threads = backend.get_num_threads()
    print(f"fastlayers {fastlayers.__version__}, native backend, BLAS {info['blas']} ({info['blas_core']}, "
          f"{info['blas_threading']}), OpenMP {'on' if info['openmp'] else 'off'}, {initial_threads} threads by default"
          f"{', quick' if args.quick else ''}")

    report = {"tool": "bench/scaling.py", "fastlayers": fastlayers.__version__,
              "build": {k: info[k] for k in ("compiler", "openmp", "blas", "blas_core", "blas_threading")},
              "default_threads": initial_threads,
              "networks": networks, "batches": batches, "threads": thread_counts, "steps": steps,
              "min_time_s": min_time, "warmup": warmup, "quick": args.quick}
    try:
        check_batch = min(max(batches), shapes.BATCH)
        print(f"\nvalidation: losses of two steps at batch {check_batch} with "
              f"{' / '.join(map(str, thread_counts))} threads")
        checks = []
        for network in networks:
            runs = {}
            for n in thread_counts:
                backend.set_num_threads(n)
                if backend.get_num_threads() != n:
                    raise SystemExit(f"set_num_threads({n}) left {backend.get_num_threads()} threads")
                runs[n] = first_losses(network, check_batch)
            ref = runs[thread_counts[0]]
            if info["openmp"]:
                ok = all(r == ref for r in runs.values())
            else:
                # Without OpenMP the count is OpenBLAS's, whose threaded GEMMs round differently.
                ok = all(abs(a - b) <= 1e-5 * abs(b) for r in runs.values() for a, b in zip(r, ref))
            checks.append({"network": network, "batch": check_batch,
                           "losses": {str(n): r for n, r in runs.items()}, "ok": ok})
            shown = "  ".join(f"{n}T {r[0]:.6f} {r[1]:.6f}" for n, r in runs.items())
            print(f"  {network:<11} {shown}  {'ok' if ok else 'MISMATCH'}")
        passed = all(c["ok"] for c in checks)
        report.update(validation=checks, validation_passed=passed)
        if not passed:
            write_json(args.json, report)
            raise SystemExit("validation failed: the thread counts do not compute the same step")

        results = []
        with OtherLoad() as load:
            for network in networks:
                for batch in batches:
                    for n in thread_counts:
                        backend.set_num_threads(n)
                        results.append({"network": network, "batch": batch, "threads": n,
                                        **time_steps(network, batch, steps, warmup, min_time)})
    finally:
        backend.set_num_threads(initial_threads)

    lo, hi = min(thread_counts), max(thread_counts)
    speedups = []
    print(f"\nms per training step (forward, backward, Adam), float32, median of at least {steps} steps and "
          f"{min_time:g} s;\nus/sample = ms per step / batch; speed-up = {lo} -> {hi} threads; busy = cores other "
          f"processes kept busy meanwhile (the most of the row's blocks; above {BUSY_CORES} the row is not to be trusted)")
    cols = "".join(f" {f'{n}T ms':>10} {f'{n}T us/sample':>14}" for n in thread_counts)
    print(f"  {'network':<11} {'batch':>6}{cols} {'speed-up':>9} {'busy':>5}")
    for network in networks:
        for batch in batches:
            row = {r["threads"]: r for r in results if r["network"] == network and r["batch"] == batch}
            cells = "".join(f" {row[n]['ms_per_step']:>10.2f} {row[n]['us_per_sample']:>14.1f}" for n in thread_counts)
            speedup = row[lo]["ms_per_step"] / row[hi]["ms_per_step"]
            speedups.append({"network": network, "batch": batch, "from_threads": lo, "to_threads": hi,
                             "speedup": speedup})
            loads = [row[n]["other_load_cores"] for n in thread_counts]
            busy = "-" if None in loads else f"{max(loads):.2f}"
            print(f"  {network:<11} {batch:>6}{cells} {speedup:>8.2f}x {busy:>5}")

    print(f"\n{load.summary()}")
    report.update(other_load_cores=load.cores, results=results, speedups=speedups)
    write_json(args.json, report)


def write_json(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
