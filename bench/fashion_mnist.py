"""Training on the full Fashion-MNIST set: fastlayers against PyTorch, epoch by epoch.

    python bench/fashion_mnist.py --model simple-cnn --epochs 10
    python bench/fashion_mnist.py --model deep-cnn --batchnorm --epochs 15 --target 0.93
    python bench/fashion_mnist.py --model deep-cnn --batchnorm --epochs 20 --augment translate=2,hflip
    python bench/fashion_mnist.py --quick          # 2,000 training images, 1 epoch: checks that it works

Both libraries train the same network from the same initial weights with Adam (lr 1e-3,
times --lr-gamma every --lr-step epochs when given, or annealed to 0 with --cosine), batch 100, the same shuffled order, on the same number of threads, one after the other.
With ``--augment`` every training batch of both is warped by ``fastlayers.augment.Augment``
(the native kernel, inside each library's timed loop; fastlayers through
``Trainer(augment=...)``, PyTorch from a generator of its own: the same distribution, not
the same draws, as the dropout masks also differ). After every epoch each is evaluated on the 10,000 test images. The table gives training
time (evaluation excluded) and test accuracy per epoch, and the training time each needed
to first reach ``--target`` test accuracy. Data: ``fastlayers.data.load_fashion_mnist``
(Debian's ``dataset-fashion-mnist`` package, or ``--download``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("simple-cnn", "deep-cnn", "mlp"), default="simple-cnn")
    p.add_argument("--batchnorm", action="store_true", help="deep-cnn, mlp: BatchNorm after each conv / hidden affine")
    p.add_argument("--dropout", type=float, default=None, help="deep-cnn, mlp: dropout ratio (default: the model's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--target", type=float, default=0.90, help="test accuracy whose time-to-reach is reported")
    p.add_argument("--lr-step", type=int, default=None, metavar="E", help="lr x --lr-gamma every E epochs (both)")
    p.add_argument("--lr-gamma", type=float, default=0.1)
    p.add_argument("--cosine", action="store_true",
                   help="cosine annealing of the lr from 1e-3 to 0 over the epochs (both), instead of --lr-step")
    p.add_argument("--augment", default=None, metavar="SETTINGS",
                   help="augment every training batch, as fastlayers train --augment (e.g. translate=2,hflip)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--download", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--quick", action="store_true", help="2,000 training images, 1 epoch")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.batchnorm and args.model == "simple-cnn":
        p.error("--batchnorm applies to deep-cnn and mlp")
    if args.cosine and args.lr_step:
        p.error("--cosine and --lr-step are two schedules: choose one")
    if args.quick:
        args.epochs = 1
    return args


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

import fastlayers  # noqa: E402
from fastlayers import backend, data, losses, models, optim  # noqa: E402
from fastlayers.augment import Augment  # noqa: E402
from fastlayers.schedules import CosineAnnealing  # noqa: E402
from fastlayers.trainer import Trainer, step_decay  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer import torch, torch_model  # noqa: E402


def build(args):
    kw = {"seed": args.seed}
    if args.batchnorm:
        kw["batchnorm"] = True
    if args.dropout is not None:
        kw["dropout"] = args.dropout
    if args.model == "mlp":
        kw["hidden"] = [100] * 5
    return models.get(args.model, **kw)


def schedule(args):
    if args.cosine:
        return CosineAnnealing(1e-3, args.epochs)
    return step_decay(1e-3, args.lr_step, args.lr_gamma) if args.lr_step else (lambda epoch: 1e-3)


def augmenter(args):
    return Augment.parse(args.augment) if args.augment else None


def run_fastlayers(args, x, t, xt, tt, orders):
    model = build(args)
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-3), seed=args.seed,
                      verbose=False, augment=augmenter(args))
    rows, total = [], 0.0
    for epoch, order in enumerate(orders, 1):
        # The same shuffled order as the PyTorch run.
        record = trainer.fit(x[order], t[order], epochs=1, batch_size=100, shuffle=False, lr_schedule=schedule(args))
        total += record[-1]["seconds"]
        acc = trainer.evaluate(xt, tt)["accuracy"]
        rows.append({"epoch": epoch, "seconds": total, "test_accuracy": acc})
        print(f"  fastlayers epoch {epoch:>2}: {total:7.1f} s  test accuracy {acc:.4f}", flush=True)
    return rows


def run_torch(args, x, t, xt, tt, orders):
    torch.manual_seed(args.seed)
    net = torch_model(build(args))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    X, T = torch.from_numpy(x), torch.from_numpy(t.astype(np.int64))
    XT = torch.from_numpy(xt)
    augment, aug_rng = augmenter(args), np.random.default_rng([args.seed, 1])
    rows, total = [], 0.0
    for epoch, order in enumerate(orders, 1):
        for group in opt.param_groups:
            group["lr"] = schedule(args)(epoch)
        net.train()
        idx = torch.from_numpy(order)
        start = time.perf_counter()
        for s in range(0, len(order), 100):
            b = idx[s : s + 100]
            xb = X[b] if augment is None else torch.from_numpy(augment(x[order[s : s + 100]], aug_rng))
            opt.zero_grad()
            loss_fn(net(xb), T[b]).backward()
            opt.step()
        total += time.perf_counter() - start
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(XT[i : i + 1000]).argmax(1) for i in range(0, len(xt), 1000)]).numpy()
        acc = float(np.mean(pred == tt))
        rows.append({"epoch": epoch, "seconds": total, "test_accuracy": acc})
        print(f"  PyTorch    epoch {epoch:>2}: {total:7.1f} s  test accuracy {acc:.4f}", flush=True)
    return rows


def first_reaching(rows, target):
    return next((r for r in rows if r["test_accuracy"] >= target), None)


def main(args):
    backend.set_num_threads(args.threads)
    use_torch = torch is not None and not args.no_torch
    if use_torch:
        torch.set_num_threads(args.threads)
    x, t = data.load_fashion_mnist("train", download=args.download)
    xt, tt = data.load_fashion_mnist("test", download=args.download)
    if args.quick:
        x, t = x[:2000], t[:2000]
    rng = np.random.default_rng(args.seed)
    orders = [rng.permutation(len(x)) for _ in range(args.epochs)]
    name = args.model + (" + BatchNorm" if args.batchnorm else "") + (
        f", dropout {args.dropout:g}" if args.dropout is not None else "")
    print(f"{name} on Fashion-MNIST ({len(x)} train / {len(xt)} test), Adam lr 1e-3"
          + (f" x {args.lr_gamma:g} every {args.lr_step} epochs" if args.lr_step else "")
          + (" annealed to 0 (cosine)" if args.cosine else "")
          + f", batch 100, {args.epochs} epochs, "
          + (f"augment {args.augment}, " if args.augment else "")
          + f"{args.threads} threads; fastlayers {fastlayers.__version__}"
          + (f", PyTorch {torch.__version__}" if use_torch else ", PyTorch not measured"))
    results = {"model": args.model, "batchnorm": args.batchnorm, "threads": args.threads, "target": args.target,
               "lr_step": args.lr_step, "lr_gamma": args.lr_gamma, "cosine": args.cosine, "dropout": args.dropout, "augment": args.augment,
               "fastlayers": run_fastlayers(args, x, t, xt, tt, orders)}
    if use_torch:
        results["torch"] = run_torch(args, x, t, xt, tt, orders)
    print(f"\n{'':<11}{'training s':>12}{'final acc':>11}{'best acc':>10}   first reaching {args.target:.0%}")
    for lib in ("fastlayers", "torch"):
        if lib not in results:
            continue
        rows = results[lib]
        hit = first_reaching(rows, args.target)
        reach = f"epoch {hit['epoch']} after {hit['seconds']:.1f} s" if hit else "not reached"
        best = max(r["test_accuracy"] for r in rows)
        label = "PyTorch" if lib == "torch" else lib
        print(f"{label:<11}{rows[-1]['seconds']:>12.1f}{rows[-1]['test_accuracy']:>11.4f}{best:>10.4f}   {reach}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(ARGS)
