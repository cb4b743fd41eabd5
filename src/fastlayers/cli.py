"""The ``fastlayers`` command: ``train``, ``profile``, ``gradcheck``, ``plot`` and ``info``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
GRADCHECK_TOLERANCE = 1e-5


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .models import MODELS

    p = argparse.ArgumentParser(prog="fastlayers", description="Train textbook networks fast on the CPU.")
    p.add_argument("--version", action="version", version=f"fastlayers {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and report its test accuracy")
    t.add_argument("--model", choices=sorted(MODELS), default="simple-cnn")
    t.add_argument(
        "--batchnorm", action="store_true", help="deep-cnn and mlp: BatchNorm after every convolution and hidden affine"
    )
    t.add_argument("--dropout", type=float, default=None, metavar="P",
                   help="deep-cnn and mlp: dropout ratio (deep-cnn's default is the textbook's 0.5, mlp's 0)")
    t.add_argument(
        "--data",
        default="bundled",
        help="bundled (10,000 Fashion-MNIST images inside the package, split 8,000/2,000), "
        "fashion-mnist, mnist, or a directory holding the four IDX files (default: bundled)",
    )
    t.add_argument("--download", action="store_true", help="download fashion-mnist/mnist if not found locally")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's own, 1e-3 for adam)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--lr-step", type=int, default=None, metavar="E",
                   help="multiply the learning rate by --lr-gamma every E epochs (step decay)")
    t.add_argument("--lr-gamma", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--backend", choices=("native", "numpy"), default=None, help="default: native")
    t.add_argument("--threads", type=int, default=None, help="threads for kernels and GEMM (default: all cores)")
    t.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    t.add_argument("--validation-split", type=float, default=None)
    t.add_argument("--patience", type=int, default=None, help="early stopping patience in epochs")
    t.add_argument("--save", type=Path, default=None, help="write the trained model to this .safetensors file")
    t.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                   help="write the whole training state to PATH after every epoch (atomically)")
    t.add_argument("--checkpoint-every", type=_count(1), default=None, metavar="N",
                   help="with --checkpoint: also write it every N training steps")
    t.add_argument("--resume", action="store_true",
                   help="with --checkpoint: continue the run saved there, if the file exists; --epochs counts the "
                   "whole run")
    t.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--plots", type=Path, default=None, metavar="DIR",
                   help="after training, write history.png, filters.png (models with a convolution) and "
                   "misclassified.png (test images) to DIR; needs matplotlib")

    pr = sub.add_parser("profile", help="time training steps layer by layer on random data")
    pr.add_argument("--model", choices=sorted(MODELS), default="simple-cnn")
    pr.add_argument("--batchnorm", action="store_true", help="mlp and deep-cnn: the variant with BatchNorm")
    pr.add_argument("--batch", type=_count(1), default=100, help="samples per step (default: 100)")
    pr.add_argument("--steps", type=_count(1), default=20, help="timed steps (default: 20)")
    pr.add_argument("--warmup", type=_count(0), default=3, help="untimed steps first (default: 3)")
    pr.add_argument("--backend", choices=("native", "numpy"), default=None, help="default: native")
    pr.add_argument("--threads", type=_count(1), default=None, help="threads for kernels and GEMM (default: all cores)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--json", action="store_true", help="print one JSON object with the profile on stdout")

    g = sub.add_parser("gradcheck", help="compare backprop with numerical gradients for a model")
    g.add_argument("--model", choices=sorted(MODELS), default="simple-cnn")
    g.add_argument("--batch", type=int, default=2)
    g.add_argument("--max-entries", type=int, default=16, help="entries checked per parameter (0: all)")
    g.add_argument("--backend", choices=("native", "numpy"), default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true")

    pl = sub.add_parser("plot", help="draw a saved model's filters, misclassified test images and training history")
    pl.add_argument("checkpoint", type=Path, help="a model saved with --save or a training checkpoint")
    pl.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the PNG files")
    pl.add_argument("--data", default=None,
                    help="test images for misclassified.png, as for train (default: the data the file names, else bundled)")
    pl.add_argument("--download", action="store_true", help="download fashion-mnist/mnist if not found locally")

    i = sub.add_parser("info", help="build information and which kernels are native")
    i.add_argument("--json", action="store_true")
    return p


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _load_data(name: str, download: bool):
    from . import data

    if name == "bundled":
        return data.load_bundled()
    if name in ("fashion-mnist", "mnist"):
        loader = data.load_fashion_mnist if name == "fashion-mnist" else data.load_mnist
        return loader("train", download=download), loader("test", download=download)
    path = Path(name)
    if not path.is_dir():
        raise SystemExit(f"fastlayers: --data {name!r} is neither bundled, fashion-mnist, mnist nor a directory")
    return data.load_dir(path)


def _train(args) -> int:
    from . import backend, optim
    from .checkpoint import CheckpointError, save
    from .data import DatasetError
    from .losses import SoftmaxCrossEntropy
    from .models import get as get_model
    from .trainer import NonFiniteError, Trainer, step_decay

    if args.checkpoint is None and (args.resume or args.checkpoint_every is not None):
        print("fastlayers: --resume and --checkpoint-every need --checkpoint PATH", file=sys.stderr)
        return 2
    if args.plots is not None and not _have_matplotlib():
        return 2
    if args.backend:
        backend.set_backend(args.backend)
    if args.threads is not None:
        backend.set_num_threads(args.threads)
    try:
        (x_train, t_train), (x_test, t_test) = _load_data(args.data, args.download)
    except DatasetError as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        x_train, t_train = x_train[: args.limit], t_train[: args.limit]
    shape = x_train.shape[1:]
    size = {"input_size": int(np.prod(shape))} if args.model == "mlp" else {"input_shape": shape}
    if args.batchnorm:
        if args.model == "simple-cnn":
            print("fastlayers: --batchnorm applies to deep-cnn and mlp, not simple-cnn", file=sys.stderr)
            return 2
        size["batchnorm"] = True
    if args.dropout is not None:
        if args.model == "simple-cnn":
            print("fastlayers: --dropout applies to deep-cnn and mlp, not simple-cnn", file=sys.stderr)
            return 2
        size["dropout"] = args.dropout
    model = get_model(args.model, seed=args.seed, **size)
    kwargs = {"weight_decay": args.weight_decay} if args.lr is None else {"lr": args.lr, "weight_decay": args.weight_decay}
    opt = optim.get(args.optimizer, model.parameters(), **kwargs)
    lr = opt.lr
    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, seed=args.seed, verbose=False if args.quiet else None)
    log = sys.stderr if args.json else sys.stdout
    print(
        f"training {args.model} on {args.data} ({len(x_train)} train / {len(x_test)} test images), "
        f"backend {backend.get_backend()}, {backend.get_num_threads()} threads, {args.optimizer} lr {lr:g}",
        file=log,
    )
    start = time.perf_counter()
    try:
        history = trainer.fit(
            x_train,
            t_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_split=args.validation_split,
            patience=args.patience,
            lr_schedule=None if args.lr_step is None else step_decay(lr, args.lr_step, args.lr_gamma),
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
        )
    except CheckpointError as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - start
    test = trainer.evaluate(x_test, t_test)
    result = {
        "model": args.model,
        "batchnorm": bool(args.batchnorm),
        "dropout": args.dropout,
        "data": args.data,
        "backend": backend.get_backend(),
        "threads": backend.get_num_threads(),
        "optimizer": args.optimizer,
        "lr": lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_samples": int(len(x_train)),
        "test_samples": int(len(x_test)),
        "epochs": len(history),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else 0.0,
        "seconds_total": wall,
        "history": history,
    }
    if trainer.stop_reason:
        result["stopped_early"] = trainer.stop_reason
    if args.save:
        save(model, args.save, optimizer=opt, metadata={"data": args.data})
        result["saved"] = str(args.save)
    if args.plots is not None:
        from .plot import save_figures

        paths = save_figures(args.plots, model, history, x_test, t_test, _class_names(args.data))
        result["plots"] = [str(p) for p in paths]
        print(f"plots: {', '.join(result['plots'])}", file=log)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"test accuracy {test['accuracy']:.4f}, test loss {test['loss']:.4f}, "
            f"{result['seconds_per_epoch']:.2f} s per epoch"
            + (f"; saved to {args.save}" if args.save else "")
        )
    return 0


def _profile(args) -> int:
    from . import backend, optim
    from .losses import SoftmaxCrossEntropy
    from .models import get as get_model
    from .profile import Profile

    if args.batchnorm and args.model not in ("mlp", "deep-cnn"):
        raise SystemExit(f"fastlayers: --batchnorm applies to mlp and deep-cnn, not {args.model}")
    if args.backend:
        backend.set_backend(args.backend)
    if args.threads is not None:
        backend.set_num_threads(args.threads)
    # mlp's default is the textbook's five hidden layers of 100; its first Affine flattens the images.
    model = get_model(args.model, seed=args.seed, **({"batchnorm": True} if args.batchnorm else {}))
    model.needs_input_grad = False  # as Trainer: training never reads the input's gradient
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, size=args.batch)
    profile = Profile(model, SoftmaxCrossEntropy(), optim.Adam(model.parameters()))
    for _ in range(args.warmup):
        profile.train_step(x, t)
    profile.reset()
    for _ in range(args.steps):
        profile.train_step(x, t)
    name = args.model + (" with BatchNorm" if args.batchnorm else "")
    if args.json:
        head = {"model": args.model, "batchnorm": args.batchnorm, "batch": args.batch, "warmup": args.warmup,
                "backend": backend.get_backend(), "threads": backend.get_num_threads()}
        print(json.dumps({**head, **profile.as_dict()}))
    else:
        print(f"{name}, batch {args.batch}, Adam, {args.steps} steps after {args.warmup} of warm-up")
        print(profile.table())
    return 0


def _gradcheck(args) -> int:
    from . import backend
    from .gradcheck import format_table, gradcheck
    from .models import get as get_model

    if args.backend:
        backend.set_backend(args.backend)
    model = get_model(args.model, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, 1, 28, 28))
    t = rng.integers(0, 10, size=args.batch)
    errors = gradcheck(model, x, t, max_entries=args.max_entries or None, seed=args.seed, verbose=False)
    worst = max(errors.values())
    ok = worst < GRADCHECK_TOLERANCE
    if args.json:
        print(json.dumps({"model": args.model, "backend": backend.get_backend(), "errors": errors, "ok": ok}))
    else:
        print(format_table(errors))
        print(f"worst relative error {worst:.3e}: {'ok' if ok else 'FAILED'} (tolerance {GRADCHECK_TOLERANCE:g})")
    return 0 if ok else 1


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("fastlayers: plots need matplotlib: pip install fastlayers[plot]", file=sys.stderr)
        return False
    return True


def _class_names(data_name: str):
    from .data import CLASS_NAMES, MNIST_CLASS_NAMES

    if data_name in ("bundled", "fashion-mnist"):
        return CLASS_NAMES
    # A directory's classes are unknown; digits name them by label.
    return MNIST_CLASS_NAMES


def _plot(args) -> int:
    from .checkpoint import CheckpointError, load, read_metadata
    from .data import DatasetError

    if not _have_matplotlib():
        return 2
    try:
        meta = read_metadata(args.checkpoint)
        model = load(args.checkpoint)
    except (CheckpointError, OSError) as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 2
    records = json.loads(meta["trainer"]).get("history") if "trainer" in meta else None
    name = args.data or meta.get("data", "bundled")
    try:
        _, (x_test, t_test) = _load_data(name, args.download)
    except DatasetError as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 2
    from .plot import save_figures

    paths = save_figures(args.out, model, records, x_test, t_test, _class_names(name))
    print(f"plots: {', '.join(str(p) for p in paths)}")
    return 0


def _info(args) -> int:
    from . import __version__, backend

    info = backend.build_info()
    info["version"] = __version__
    if args.json:
        print(json.dumps(info))
        return 0
    cov = backend.coverage()
    for key, value in info.items():
        if key not in ("native_kernels", "numpy_only_kernels"):
            print(f"{key:>16}: {value}")
    print(f"{'native kernels':>16}: {sum(cov.values())} of {len(cov)}")
    for name, native in cov.items():
        print(f"{'':>16}  {'native' if native else 'numpy '}  {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"train": _train, "profile": _profile, "gradcheck": _gradcheck, "plot": _plot,
            "info": _info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
