"""Every kernel at the shapes one training step uses, timed against this machine's ceilings.

    python bench/kernels.py                             # the three networks of bench/train_step.py
    python bench/kernels.py --network deep_cnn --threads 1
    python bench/kernels.py --network mlp_bn --batch 1000  # the same layers at another batch
    python bench/kernels.py --quick --json kernels.json   # a few seconds; every code path runs

The shape sets are bench/shapes.py's: each layer of simple_cnn, deep_cnn and mlp_bn at batch
100 (or --batch), float32, with the kernel calls that layer makes in a training step (fused layer+ReLU
kernels, the loss, dropout, and Adam over the optimizer's flat buffers).

Validation first: each native kernel call, from the same inputs as the NumPy oracle, must
give the oracle's outputs within the float32 rounding bound of its longest sum, or the
timings are not timing the right computation. Then the ceilings, measured in the same run:
compute is a 2048^3 float32 GEMM through the native ``affine_forward`` (the project's BLAS
seam), bandwidth a 256 MiB copy through the native ``identity_forward`` (std::memcpy in one
chunk per thread of the OpenMP pool), and the floor of one native call (``relu_forward`` on
one float); beside them the cores' float32 FMA peak (independent AVX-512 multiply-adds on
every thread, nothing loaded or stored), which no kernel can pass while a small GEMM in
cache can pass the sgemm ceiling (the percentages stay those of the sgemm and copy
ceilings). Then the table: median ms per call, the interquartile range as a percentage of
the median, GFLOP/s for the GEMM kernels (affine, conv2d) or GB/s for the rest, and that
rate as a percentage of its ceiling; the NumPy oracle's median and the speed-up over it come
last and are timed after every native kernel (NumPy's own OpenBLAS threads keep spinning
after a matrix product and would slow whatever ran next).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time

import numpy as np

import fastlayers
from fastlayers import backend

import shapes
from machine import OtherLoad


def kernel_table(name: str):
    with backend.use(name):
        return backend.kernels()


NATIVE, ORACLE = kernel_table("native"), kernel_table("numpy")


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------


def fill(arr: shapes.Arr, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(arr.dtype)
    if arr.init == "labels":
        return rng.integers(0, arr.high, arr.shape, dtype=dtype)
    if dtype.kind != "f" or arr.init == "zeros":
        return np.zeros(arr.shape, dtype)
    if arr.init == "ones":
        return np.ones(arr.shape, dtype)
    values = rng.standard_normal(arr.shape)
    return (values * values if arr.init == "square" else values).astype(dtype)


def prepare(shape_set: shapes.ShapeSet, seed: int = 0) -> dict[str, np.ndarray]:
    """Every array of a shape set, after its forward calls ran on the oracle: the backward
    then reads what the forward produced (argmax, masks, batch statistics, ReLU outputs).
    Nothing reads what a backward or an update writes, so those need not run."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for call in shape_set.calls():
        for arr in call.arrays():
            if arr.name not in state:
                state[arr.name] = fill(arr, rng)
    for call in shape_set.forward():
        getattr(ORACLE, call.kernel)(*arguments(call, state))
    return state


def arguments(call: shapes.Call, state: dict[str, np.ndarray]) -> tuple:
    return tuple(state[a.name] if isinstance(a, shapes.Arr) else a for a in call.args)


# ----------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------

EPS = float(np.finfo(np.float32).eps)
# Element-wise functions (exp, sqrt, division) may differ by a few ulps between libm and NumPy.
ELEMENTWISE_ULPS = 8


def rounding_bound(n: int) -> float:
    """Relative bound for two float32 evaluations of an n-term sum: 2*gamma_n, gamma_n =
    n*u/(1 - n*u) (Higham 3.1), u = eps/2, taken relative to the largest output entry; a
    wrong computation is off by order one."""
    nu = n * EPS / 2
    return max(2 * nu / (1 - nu), ELEMENTWISE_ULPS * EPS)


def compare(native, oracle, n: int) -> tuple[float, float]:
    """(error, bound) of one output; integer outputs (argmax, masks) must match exactly."""
    native, oracle = np.asarray(native), np.asarray(oracle)
    if oracle.dtype.kind != "f":
        return (0.0 if np.array_equal(native, oracle) else float("inf")), 0.0
    a, b = native.astype(np.float64), oracle.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf"), 0.0
    ok = ~np.isnan(b)
    if not ok.any():
        return 0.0, 0.0
    err = float(np.max(np.abs(a[ok] - b[ok])))
    bound = rounding_bound(n) * float(np.max(np.abs(b[ok]))) + float(np.finfo(np.float32).tiny)
    return err, bound


def poison(state: dict[str, np.ndarray], call: shapes.Call) -> None:
    """Fills the pure outputs with values no kernel writes, so an entry left unwritten shows."""
    for arr in call.arrays():
        if arr.role == "out":
            a = state[arr.name]
            a.fill(np.nan if a.dtype.kind == "f" else (255 if a.dtype == np.uint8 else -1))


def validate(shape_set: shapes.ShapeSet, call: shapes.Call, state: dict[str, np.ndarray]) -> dict:
    """One call on each backend from identical copies of the inputs; every output compared."""
    native_state = {k: v.copy() for k, v in state.items()}
    oracle_state = {k: v.copy() for k, v in state.items()}
    poison(native_state, call)
    poison(oracle_state, call)
    native_ret = getattr(NATIVE, call.kernel)(*arguments(call, native_state))
    oracle_ret = getattr(ORACLE, call.kernel)(*arguments(call, oracle_state))
    checks = [(arr.name, *compare(native_state[arr.name], oracle_state[arr.name], call.reduction))
              for arr in call.arrays() if arr.role != "in"]
    if oracle_ret is not None:
        checks.append(("returned", *compare(native_ret, oracle_ret, call.reduction)))
    worst = max(checks, key=lambda c: c[1] / c[2] if c[2] else (0.0 if c[1] == 0 else float("inf")))
    name, err, bound = worst
    ratio = err / bound if bound else (0.0 if err == 0 else float("inf"))
    return {"network": shape_set.network, "shape_set": shape_set.name, "kernel": call.kernel,
            "ok": ratio <= 1.0, "worst_output": name, "error": err, "bound": bound, "ratio": ratio}


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------


def measure(fn, reps: int, warmup: int, min_sample_s: float) -> dict:
    """Median seconds per call over ``reps`` samples, after ``warmup`` discarded calls. A
    sample times enough consecutive calls to last ``min_sample_s`` (0: one call each), so a
    call of a few microseconds is not lost in the timer's resolution and the loop's overhead."""
    for _ in range(warmup):
        fn()
    inner = 1
    while min_sample_s > 0:
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_sample_s or inner >= 1 << 20:
            break
        inner = min(1 << 20, max(2 * inner, int(1.2 * inner * min_sample_s / max(elapsed, 1e-9))))
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"ms": 1e3 * median, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3, "iqr_pct": 100 * (q3 - q1) / median,
            "samples": reps, "calls_per_sample": inner}


def ceilings(args) -> dict:
    rng = np.random.default_rng(0)
    n = args.gemm_size
    x = rng.standard_normal((n, n)).astype(np.float32)
    W = rng.standard_normal((n, n)).astype(np.float32)
    b, out = np.zeros(n, np.float32), np.empty((n, n), np.float32)
    # The same flop count as the affine rows of the table: 2*n^3 for the GEMM, n^2 for the bias.
    flops = shapes.Affine("ceiling/sgemm", N=n, D=n, M=n, relu=False).forward()[0].flops
    gemm = measure(functools.partial(NATIVE.affine_forward, out, x, W, b), args.ceiling_reps, 1, 0.0)
    gemm.update(shape=[n, n, n], flops=flops, gflops=flops / gemm["ms"] / 1e6)

    src = np.ones(args.copy_mib << 18, np.float32)
    dst = np.zeros_like(src)  # zeros, not empty: the pages are mapped before the clock starts
    copy = measure(functools.partial(NATIVE.identity_forward, dst, src), args.ceiling_reps, 1, 0.0)
    copy.update(bytes=2 * src.nbytes, gbps=2 * src.nbytes / copy["ms"] / 1e6)

    one, one_out = np.ones(1, np.float32), np.empty(1, np.float32)
    call = measure(functools.partial(NATIVE.relu_forward, one_out, one), args.reps, args.warmup, 1e-3)
    call["us"] = 1e3 * call["ms"]
    peak = {"gflops": backend._native._peak_fma_gflops(args.fma_iterations, args.ceiling_reps)}
    return {"sgemm": gemm, "memcpy": copy, "call": call, "peak_fma": peak}


def rate(call: shapes.Call, ms: float, ceil: dict) -> tuple[str, float, float]:
    """(unit, rate, percent of the matching ceiling)."""
    if call.flops:
        value = call.flops / ms / 1e6
        return "GFLOP/s", value, 100 * value / ceil["sgemm"]["gflops"]
    value = call.traffic() / ms / 1e6
    return "GB/s", value, 100 * value / ceil["memcpy"]["gbps"]


# ----------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default=",".join(shapes.NETWORKS),
                   help="comma-separated networks (default: %(default)s)")
    p.add_argument("--batch", type=int, default=shapes.BATCH, help="batch size (default: %(default)s)")
    p.add_argument("--threads", type=int, help="threads of the native kernels (default: the library's)")
    p.add_argument("--quick", action="store_true", help="few repetitions and smaller ceilings: a smoke run")
    p.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    p.add_argument("--reps", type=int, help="timed samples per kernel (default 15; --quick 3)")
    p.add_argument("--warmup", type=int, help="discarded calls before timing (default 3; --quick 1)")
    p.add_argument("--no-numpy", action="store_true", help="skip timing the NumPy oracle")
    args = p.parse_args()
    networks = [n for n in args.network.split(",") if n]
    unknown = [n for n in networks if n not in shapes.NETWORKS]
    if unknown:
        p.error(f"unknown network {unknown[0]!r}; expected some of {', '.join(shapes.NETWORKS)}")
    if args.batch < 1:
        p.error("--batch must be at least 1")
    args.reps = args.reps or (3 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.min_sample_s = 2e-4 if args.quick else 2e-3
    # The oracle is much slower (a deep_cnn convolution backward takes a quarter second), so
    # it gets fewer samples; --quick times it once, only to run that path.
    args.numpy_reps = 1 if args.quick else max(3, args.reps // 3)
    args.numpy_warmup = 0 if args.quick else 1
    args.numpy_min_sample_s = 0.0 if args.quick else args.min_sample_s
    args.ceiling_reps = 2 if args.quick else 5
    args.gemm_size = 1024 if args.quick else 2048
    args.copy_mib = 64 if args.quick else 256
    args.fma_iterations = 1_000_000 if args.quick else 20_000_000
    if args.threads is not None:
        backend.set_num_threads(args.threads)

    info = fastlayers.build_info()
    threads = backend.get_num_threads()
    print(f"fastlayers {fastlayers.__version__}, {threads} threads, BLAS {info['blas']} ({info['blas_core']}, "
          f"{info['blas_threading']}), {shapes.DTYPE}, batch {args.batch}{', quick' if args.quick else ''}")

    table = shapes.networks(args.batch)
    sets = [s for n in networks for s in table[n]]
    states = {s.name: prepare(s) for s in sets}
    rows = [(s, c) for s in sets for c in s.calls()]

    print(f"\nvalidation: {len(rows)} kernel calls, native vs numpy oracle, from the same inputs")
    checks = [validate(s, c, states[s.name]) for s, c in rows]
    for network in networks:
        mine = [c for c in checks if c["network"] == network]
        worst = max(mine, key=lambda c: c["ratio"])
        bad = [c for c in mine if not c["ok"]]
        print(f"  {network:<11} {len(mine):>3} calls  worst error {worst['ratio']:.2g} of its bound "
              f"({worst['shape_set']} {worst['kernel']} {worst['worst_output']})  {'ok' if not bad else 'MISMATCH'}")
        for c in bad:
            print(f"    MISMATCH {c['shape_set']} {c['kernel']} {c['worst_output']}: error {c['error']:.3g} > bound {c['bound']:.3g}")
    passed = all(c["ok"] for c in checks)
    report = {
        "tool": "bench/kernels.py",
        "fastlayers": fastlayers.__version__,
        "build": {k: info[k] for k in ("compiler", "openmp", "blas", "blas_config", "blas_core", "blas_threading")},
        "threads": threads,
        "dtype": shapes.DTYPE,
        "batch": args.batch,
        "networks": networks,
        "quick": args.quick,
        "settings": {"reps": args.reps, "warmup": args.warmup, "min_sample_ms": 1e3 * args.min_sample_s,
                     "numpy_reps": 0 if args.no_numpy else args.numpy_reps},
        "validation": checks,
        "validation_passed": passed,
    }
    if not passed:
        write_json(args.json, report)
        raise SystemExit("validation failed: a native kernel does not compute what the oracle computes")

    with OtherLoad() as load:
        # The oracle's matrix products leave NumPy's OpenBLAS threads spinning for a moment;
        # let them go idle before the native timings start.
        time.sleep(0.5)
        ceil = ceilings(args)
        g, m, c = ceil["sgemm"], ceil["memcpy"], ceil["call"]
        print("\nceilings, measured in this run")
        print(f"  compute    {g['gflops']:8.1f} GFLOP/s  sgemm {args.gemm_size}^3 through native affine_forward "
              f"({g['ms']:.1f} ms, iqr {g['iqr_pct']:.0f}%)")
        print(f"  bandwidth  {m['gbps']:8.1f} GB/s     copy of {args.copy_mib} MiB through native identity_forward, "
              f"bytes read + written ({m['ms']:.1f} ms, iqr {m['iqr_pct']:.0f}%)")
        print(f"  call floor {c['us']:8.2f} us       native relu_forward on one float, the least a kernel call costs")
        peak = ceil["peak_fma"]["gflops"]
        print(f"  FMA peak   {peak:8.1f} GFLOP/s  independent float32 FMAs on every thread: no kernel passes it"
              if peak else "  FMA peak        n/a          (no AVX-512 build on this CPU)")

        results = []
        for s, call in rows:
            t = measure(functools.partial(getattr(NATIVE, call.kernel), *arguments(call, states[s.name])),
                        args.reps, args.warmup, args.min_sample_s)
            unit, value, pct = rate(call, t["ms"], ceil)
            results.append({"network": s.network, "shape_set": s.name, "kernel": call.kernel, **t,
                            "flops": call.flops, "bytes": call.traffic(), "unit": unit, "rate": value,
                            "pct_of_ceiling": pct})
        if not args.no_numpy:
            # The same arrays as the native timings, which have accumulated gradients and moved
            # Adam's parameters by then: the values stay of the same size, and the cost of these
            # kernels does not depend on them.
            for r, (s, call) in zip(results, rows):
                t = measure(functools.partial(getattr(ORACLE, call.kernel), *arguments(call, states[s.name])),
                            args.numpy_reps, args.numpy_warmup, args.numpy_min_sample_s)
                r["numpy_ms"], r["speedup"] = t["ms"], t["ms"] / r["ms"]

    print(f"\nms per call, median of {args.reps} samples; iqr: interquartile range / median; "
          f"% ceil: of the compute or bandwidth ceiling above")
    header = f"  {'kernel':<30} {'shape set':<22} {'ms':>8} {'iqr':>5} {'rate':>18} {'% ceil':>7}"
    if not args.no_numpy:
        header += f" {'numpy ms':>9} {'speed-up':>9}"
    print(header)
    totals = {}
    for network in networks:
        mine = [r for r in results if r["network"] == network]
        for r in mine:
            line = (f"  {r['kernel']:<30} {r['shape_set']:<22} {r['ms']:>8.3f} {r['iqr_pct']:>4.0f}% "
                    f"{r['rate']:>10.1f} {r['unit']:<7} {r['pct_of_ceiling']:>6.0f}%")
            if not args.no_numpy:
                line += f" {r['numpy_ms']:>9.3f} {r['speedup']:>8.1f}x"
            print(line)
        totals[network] = {"native_ms": sum(r["ms"] for r in mine)}
        line = f"  {'sum: one training step':<30} {network:<22} {totals[network]['native_ms']:>8.3f}"
        if not args.no_numpy:
            totals[network]["numpy_ms"] = sum(r["numpy_ms"] for r in mine)
            line += f" {'':>5} {'':>18} {'':>7} {totals[network]['numpy_ms']:>9.3f} " \
                    f"{totals[network]['numpy_ms'] / totals[network]['native_ms']:>8.1f}x"
        print(line)

    print(f"\n{load.summary()}")
    report.update(other_load_cores=load.cores, ceilings=ceil, kernels=results, totals=totals)
    write_json(args.json, report)


def finite(value):
    """The report with every non-finite float (an infinite error ratio) as null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(finite(report), f, indent=1, allow_nan=False)
            f.write("\n")


if __name__ == "__main__":
    main()
