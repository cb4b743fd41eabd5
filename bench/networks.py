"""Milliseconds per training step of three networks: fastlayers native, its NumPy backend, PyTorch.

    python bench/networks.py                      # all three networks, 2 threads, batch 100
    python bench/networks.py --threads 1 --batch 32 --json out.json --png out.png
    python bench/networks.py --quick              # a few steps each: proves the script works

One training step is forward + backward + an Adam update, float32, on one fixed random batch.
PyTorch (when ``torch`` can be imported; the column is skipped otherwise) runs the same
architecture, initialised with the same weights, on the same number of threads.

Validation comes first. One step on the native and on the NumPy backend must give the same
loss, and PyTorch's forward pass from the copied weights must give the same loss too
(inference mode for the network with dropout, whose masks differ between libraries), or
the timings would not compare the same computation.

Timing: every configuration first runs ``--warmup`` steps. Then the configurations take turns
in rounds of blocks, so that a slow moment of this shared machine hits them all alike. A
block runs steps back to back for at least ``--block-seconds`` and at least ``--block`` steps,
as a training run does, and keeps only the steps that start in its second half (and never
its first step). Before each block the script sleeps ``--settle`` seconds: the previous
library's idle threads keep spinning on the cores for a while after its last call (NumPy's
OpenBLAS for up to ~0.1 s, PyTorch's OpenMP too), which a training run, one library at a
time, never sees. After that pause every library's steps take a while to reach their
steady speed (this VM's MLP step: 0.63 ms over the first 50 steps, 0.56 ms after 300), which
the kept second half leaves out. The table gives the median and the 10th-90th percentile
spread of the kept steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

NETWORKS = ("simple-cnn", "deep-cnn", "mlp-bn")


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(NETWORKS), help="comma-separated subset of " + ", ".join(NETWORKS))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=8, help="rounds of taking turns (default 8)")
    p.add_argument("--block", type=int, default=6, help="least steps per configuration per round (default 6)")
    p.add_argument("--block-seconds", type=float, default=0.5,
                   help="least seconds per configuration per round; the steps of the first half are discarded")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--settle", type=float, default=0.3,
                   help="seconds of sleep before each block, for the previous library's threads to stop spinning")
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 steps, 1 warm-up step: checks that it works")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--png", metavar="PATH", help="bar chart (needs matplotlib)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.block, args.warmup, args.settle, args.block_seconds = 2, 3, 1, 0.0, 0.0
    bad = [m for m in args.models.split(",") if m not in NETWORKS]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; expected {', '.join(NETWORKS)}")
    if args.threads < 1 or args.batch < 1 or args.rounds < 1 or args.block < 2 or args.warmup < 0:
        p.error("--threads, --batch and --rounds must be >= 1, --block >= 2, --warmup >= 0")
    if not args.block_seconds >= 0:
        p.error("--block-seconds must be >= 0")
    return args


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    # NumPy's OpenBLAS (the NumPy backend's matrix products) reads its thread count when
    # NumPy is first imported, so it is set before that import to honour --threads.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

import fastlayers  # noqa: E402
from fastlayers import backend, layers, losses  # noqa: E402

from peer import torch, torch_model  # noqa: E402
from train_step import NETWORKS as BUILDERS  # noqa: E402
from train_step import batch  # noqa: E402
from train_step import step_fn as fastlayers_step  # noqa: E402


def build(name: str):
    return BUILDERS[name]()


# -- PyTorch peer --------------------------------------------------------------------------
def torch_step(name: str):
    net = torch_model(build(name))
    loss = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step(x, t):
        opt.zero_grad(set_to_none=False)
        value = loss(net(x), t)
        value.backward()
        opt.step()
        return value.item()

    return step


def torch_loss(name: str, x, t) -> float:
    model = build(name)
    net = torch_model(model)
    train = not any(isinstance(layer, layers.Dropout) for layer in model)
    net.train(train)
    with torch.no_grad():
        return float(torch.nn.CrossEntropyLoss()(net(torch.from_numpy(x)), torch.from_numpy(t)))


# -- measurement ---------------------------------------------------------------------------
def validate(names, x, t, use_torch: bool) -> list[dict]:
    print("validation: first-step loss from the same weights and batch")
    out = []
    for name in names:
        row = {"model": name}
        for b in ("native", "numpy"):
            with backend.use(b):
                row[b] = float(fastlayers_step(name)(x, t))
        row["numpy_rel_diff"] = abs(row["native"] - row["numpy"]) / abs(row["numpy"])
        ok = row["numpy_rel_diff"] < 1e-4
        line = f"  {name:<11} native {row['native']:.6f}  numpy {row['numpy']:.6f} (rel diff {row['numpy_rel_diff']:.1e})"
        if use_torch:
            model = build(name)
            train = not any(isinstance(layer, layers.Dropout) for layer in model)
            with backend.use("native"):
                ours = float(losses.SoftmaxCrossEntropy().forward(model.forward(x, train=train), t))
            theirs = torch_loss(name, x, t)
            row["torch_forward"], row["native_forward"] = theirs, ours
            row["torch_rel_diff"] = abs(ours - theirs) / abs(theirs)
            ok = ok and row["torch_rel_diff"] < 1e-4
            line += f"  torch forward {theirs:.6f} (rel diff {row['torch_rel_diff']:.1e})"
        print(line + ("  ok" if ok else "  MISMATCH"))
        if not ok:
            raise SystemExit("validation failed: the configurations do not compute the same step")
        out.append(row)
    return out


def time_rounds(configs: dict, x, t, xt, tt, args) -> dict[str, list[float]]:
    """Kept per-step times (seconds) of each configuration, taking turns in blocks."""
    def run(label, step):
        if label == "torch":
            return step(xt, tt)
        with backend.use(label):
            return step(x, t)

    for label, step in configs.items():
        for _ in range(args.warmup):
            run(label, step)
    kept: dict[str, list[float]] = {label: [] for label in configs}
    for _ in range(args.rounds):
        for label, step in configs.items():
            time.sleep(args.settle)
            began = time.perf_counter()
            half = began + args.block_seconds / 2
            steps = 0
            while steps < args.block or time.perf_counter() - began < args.block_seconds:
                start = time.perf_counter()
                run(label, step)
                if steps and start >= half:
                    kept[label].append(time.perf_counter() - start)
                steps += 1
    return kept


def summary(seconds: list[float]) -> dict:
    ms = sorted(1e3 * s for s in seconds)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p10_ms": q[0], "p90_ms": q[-1], "steps": len(ms)}


def bar_chart(results, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no matplotlib: {path} not written)")
        return
    labels = [r["model"] for r in results]
    configs = [c for c in ("native", "torch", "numpy") if c in results[0]["timings"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(configs)
    for i, c in enumerate(configs):
        values = [r["timings"][c]["median_ms"] for r in results]
        ax.bar([j + i * width for j in range(len(labels))], values, width, label=c)
    ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per training step (log scale)")
    ax.set_title(f"batch {results[0]['batch']}, {results[0]['threads']} threads, float32, Adam")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(args: argparse.Namespace) -> dict:
    names = args.models.split(",")
    use_torch = torch is not None and not args.no_torch
    backend.set_num_threads(args.threads)
    if use_torch:
        torch.set_num_threads(args.threads)
    info = fastlayers.build_info()
    peer = f"PyTorch {torch.__version__}" if use_torch else "PyTorch not measured (not importable)"
    print(f"fastlayers {fastlayers.__version__} ({len(info['native_kernels'])}/{len(backend.coverage())} kernels native, "
          f"BLAS {info['blas']}), NumPy {np.__version__}, {peer}; {args.threads} threads, "
          f"{platform.machine()} with {os.cpu_count()} CPUs")
    x, t = batch(args.batch)
    xt, tt = (torch.from_numpy(x), torch.from_numpy(t)) if use_torch else (None, None)
    validation = validate(names, x, t, use_torch)

    print(f"\nms per training step (forward, backward, Adam), batch {args.batch}, float32: median "
          f"[10th-90th percentile] of the kept steps of {args.rounds} rounds (blocks of >= {args.block_seconds:g} s "
          f"and >= {args.block} steps, the first half discarded)")
    cols = ["native", "numpy"] + (["torch"] if use_torch else [])
    head = f"  {'model':<11}" + "".join(f"{c:>22}" for c in cols) + f"{'numpy/native':>14}"
    print(head + (f"{'torch/native':>14}" if use_torch else ""))
    results = []
    for name in names:
        configs = {"native": fastlayers_step(name), "numpy": fastlayers_step(name)}
        if use_torch:
            configs["torch"] = torch_step(name)
        timings = {label: summary(v) for label, v in time_rounds(configs, x, t, xt, tt, args).items()}
        med = {c: timings[c]["median_ms"] for c in cols}
        row = {"model": name, "batch": args.batch, "threads": args.threads, "timings": timings,
               "numpy_over_native": med["numpy"] / med["native"]}
        cells = ["{:.2f} [{:.2f}-{:.2f}]".format(med[c], timings[c]["p10_ms"], timings[c]["p90_ms"]) for c in cols]
        line = f"  {name:<11}" + "".join(f"{cell:>22}" for cell in cells) + f"{row['numpy_over_native']:>13.2f}x"
        if use_torch:
            row["torch_over_native"] = med["torch"] / med["native"]
            line += f"{row['torch_over_native']:>13.2f}x"
        print(line)
        results.append(row)

    report = {"fastlayers": fastlayers.__version__, "numpy": np.__version__,
              "torch": torch.__version__ if use_torch else None, "threads": args.threads,
              "batch": args.batch, "validation": validation, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    if args.png:
        bar_chart(results, args.png)
    return report


if __name__ == "__main__":
    main(ARGS)
    sys.exit(0)
