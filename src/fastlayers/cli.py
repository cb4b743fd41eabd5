"""The ``fastlayers`` command: ``train``, ``profile``, ``tune``, ``gradcheck``, ``plot`` and ``info``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
SCHEDULES = ("step", "exponential", "cosine", "plateau")
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
    t.add_argument("--lr-schedule", choices=SCHEDULES, default=None,
                   help="step: times --lr-gamma every --lr-step epochs; exponential: times --lr-gamma every epoch; "
                   "cosine: cosine annealing to --lr-min over the run, after --lr-warmup; plateau: times --lr-gamma "
                   "after --lr-patience epochs without improvement of the validation loss (training loss without "
                   "--validation-split)")
    t.add_argument("--lr-step", type=int, default=None, metavar="E",
                   help="multiply the learning rate by --lr-gamma every E epochs (step decay; implies "
                   "--lr-schedule step)")
    t.add_argument("--lr-gamma", type=float, default=0.1,
                   help="step, exponential and plateau: the factor (default 0.1)")
    t.add_argument("--lr-min", type=float, default=0.0, help="cosine and plateau: the lowest rate (default 0)")
    t.add_argument("--lr-warmup", type=_count(0), default=None, metavar="N",
                   help="cosine: rise linearly to --lr over the first N epochs (steps with --lr-per-step)")
    t.add_argument("--lr-per-step", action="store_true",
                   help="step, exponential and cosine: count optimizer steps instead of epochs")
    t.add_argument("--lr-patience", type=_count(1), default=None, metavar="K", help="plateau: patience (default 2)")
    t.add_argument("--lr-cooldown", type=_count(0), default=None, metavar="N",
                   help="plateau: epochs after a reduction that are not counted (default 0)")
    t.add_argument("--clip-norm", type=float, default=None, metavar="C",
                   help="rescale the gradient whenever its global L2 norm exceeds C")
    t.add_argument("--clip-value", type=float, default=None, metavar="V",
                   help="clamp every gradient entry to [-V, V]")
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
    t.add_argument("--augment", type=_augment, default=None, metavar="SETTINGS",
                   help="random augmentation of every training batch, comma-separated: translate=PIXELS (or TX:TY), "
                   "rotate=DEGREES, scale=LO:HI, hflip, fill=VALUE; e.g. translate=2,rotate=10,scale=0.9:1.1")
    t.add_argument("--health", action="store_true",
                   help="per epoch: dead ReLU units, saturated sigmoid/tanh outputs and update-to-weight ratios")
    t.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--plots", type=Path, default=None, metavar="DIR",
                   help="after training, write history.png, filters.png (models with a convolution), "
                   "activations.png and misclassified.png (test images) to DIR; needs matplotlib")

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

    tu = sub.add_parser("tune", help="random hyper-parameter search with narrowing, on a validation split",
                        description="Random search in rounds: each round trains --trials short runs with parameters "
                        "drawn from the ranges, scores them on a validation split of the training data (never the "
                        "test set), then narrows every range to the span of the best --keep fraction of all trials "
                        "so far.")
    tu.add_argument("--model", choices=sorted(MODELS), default="mlp")
    tu.add_argument("--batchnorm", action="store_true", help="deep-cnn and mlp: BatchNorm after every hidden layer")
    tu.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    tu.add_argument("--param", action="append", default=[], metavar="NAME=SPEC", type=_tune_param_arg,
                    help="a range to search: NAME=log:LOW:HIGH (log-uniform), uniform:LOW:HIGH, int:LOW:HIGH, "
                    "logint:LOW:HIGH, choice:A,B,C, or a plain value (fixed); NAME is an optimizer argument (lr, "
                    "weight_decay, momentum, ...) or a scalar model argument (dropout, conv, ...). Repeatable; "
                    "default: lr=log:1e-6:1e-2 and weight_decay=log:1e-8:1e-4")
    tu.add_argument("--data", default="bundled", help="as for train (default: bundled)")
    tu.add_argument("--download", action="store_true")
    tu.add_argument("--limit", type=_count(2), default=None, help="search on the first N training images only")
    tu.add_argument("--trials", type=_count(1), default=20, help="trials per round (default: 20)")
    tu.add_argument("--rounds", type=_count(1), default=3, help="(default: 3)")
    tu.add_argument("--epochs", type=_count(1), default=5, help="epochs per trial (default: 5)")
    tu.add_argument("--batch-size", type=_count(1), default=100)
    tu.add_argument("--validation-split", type=float, default=0.2)
    tu.add_argument("--keep", type=float, default=0.2,
                    help="the fraction of best trials whose span becomes the next ranges (default: 0.2)")
    tu.add_argument("--processes", type=_count(1), default=None, help="worker processes (default: the cores)")
    tu.add_argument("--seed", type=int, default=0)
    tu.add_argument("--backend", choices=("native", "numpy"), default=None, help="default: native")
    tu.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every trial and range to PATH")

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
                    help="test images for activations.png and misclassified.png, as for train (default: the data the file names, else bundled)")
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


def _augment(text: str):
    from .augment import Augment

    try:
        return Augment.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


def _schedule(args, lr: float, n_train: int):
    """The --lr-schedule and its options as a schedule (None without one); ValueError naming the
    option that does not fit."""
    from . import schedules

    name = args.lr_schedule or ("step" if args.lr_step is not None else None)
    if (args.lr_step is not None) != (name == "step"):
        raise ValueError("--lr-step goes with --lr-schedule step, which needs it")
    given = {"--lr-warmup": args.lr_warmup is not None, "--lr-patience": args.lr_patience is not None,
             "--lr-cooldown": args.lr_cooldown is not None, "--lr-per-step": args.lr_per_step}
    allowed = {"cosine": {"--lr-warmup", "--lr-per-step"}, "plateau": {"--lr-patience", "--lr-cooldown"},
               "step": {"--lr-per-step"}, "exponential": {"--lr-per-step"}}.get(name, set())
    stray = [option for option, on in given.items() if on and option not in allowed]
    if stray:
        raise ValueError(f"{stray[0]} does not apply to --lr-schedule {name or '(none)'}")
    if name == "step":
        return schedules.StepDecay(lr, args.lr_step, args.lr_gamma, per_step=args.lr_per_step)
    if name == "exponential":
        return schedules.ExponentialDecay(lr, args.lr_gamma, per_step=args.lr_per_step)
    if name == "cosine":
        total = args.epochs * (-(-n_train // args.batch_size) if args.lr_per_step else 1)
        return schedules.CosineAnnealing(lr, max(total, 1), min_lr=args.lr_min, warmup=args.lr_warmup or 0,
                                         per_step=args.lr_per_step)
    if name == "plateau":
        return schedules.ReduceOnPlateau("val_loss", factor=args.lr_gamma, patience=args.lr_patience or 2,
                                         cooldown=args.lr_cooldown or 0, min_lr=args.lr_min)
    return None


def _train(args) -> int:
    from . import backend, optim
    from .checkpoint import CheckpointError, save
    from .data import DatasetError
    from .losses import SoftmaxCrossEntropy
    from .models import get as get_model
    from .trainer import NonFiniteError, Trainer

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
    kwargs.update(clip_norm=args.clip_norm, clip_value=args.clip_value)
    try:
        opt = optim.get(args.optimizer, model.parameters(), **kwargs)
        n_val = 0 if args.validation_split is None else int(round(len(x_train) * args.validation_split))
        schedule = _schedule(args, opt.lr, len(x_train) - n_val)
    except (TypeError, ValueError) as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 2
    lr = opt.lr
    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, seed=args.seed, verbose=False if args.quiet else None,
                      augment=args.augment, health=args.health)
    log = sys.stderr if args.json else sys.stdout
    print(
        f"training {args.model} on {args.data} ({len(x_train)} train / {len(x_test)} test images), "
        f"backend {backend.get_backend()}, {backend.get_num_threads()} threads, {args.optimizer} lr {lr:g}"
        + (f", {args.augment!r}" if args.augment is not None else ""),
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
            lr_schedule=schedule,
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
    if args.health and not trainer._show():
        # A verbose trainer printed these under each epoch's line already.
        from .health import format_health

        for h in history:
            if "health" in h:
                print(f"epoch {h['epoch']} {format_health(h['health'], trainer.health.settings)}", file=log)
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
        "lr_schedule": repr(schedule) if schedule is not None else None,
        "clip_norm": args.clip_norm,
        "clip_value": args.clip_value,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "augment": args.augment.config() if args.augment is not None else None,
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


TUNE_DEFAULTS = ("lr=log:1e-6:1e-2", "weight_decay=log:1e-8:1e-4")
_TUNE_KINDS = {"log": "loguniform", "uniform": "uniform", "int": "randint", "logint": "randint", "choice": "choice"}


def _tune_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _tune_param(text: str):
    """``NAME=SPEC`` as (name, range or fixed value); ValueError or TypeError when malformed."""
    from . import tune

    name, eq, spec = text.partition("=")
    if not eq or not name or not spec:
        raise ValueError(f"expected NAME=SPEC, got {text!r}")
    kind, colon, rest = spec.partition(":")
    if not colon:
        return name, _tune_value(spec)
    if kind not in _TUNE_KINDS:
        raise ValueError(f"{text!r}: unknown kind {kind!r}; expected one of {', '.join(_TUNE_KINDS)}")
    if kind == "choice":
        return name, tune.choice([_tune_value(v) for v in rest.split(",")])
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise ValueError(f"{text!r}: expected {kind}:LOW:HIGH")
    cast = int if kind in ("int", "logint") else float
    try:
        low, high = (cast(b) for b in bounds)
    except ValueError:
        raise ValueError(f"{text!r}: LOW and HIGH must be {'integers' if cast is int else 'numbers'}") from None
    if kind in ("int", "logint"):
        return name, tune.randint(low, high, log=kind == "logint")
    return name, (tune.loguniform if kind == "log" else tune.uniform)(low, high)


def _tune_param_arg(text: str):
    try:
        return _tune_param(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _tune(args) -> int:
    from . import backend, tune
    from .data import DatasetError

    if args.backend:
        backend.set_backend(args.backend)
    space = dict(_tune_param(p) for p in TUNE_DEFAULTS)
    space.update(args.param)
    model_kwargs = {}
    if args.batchnorm:
        if args.model == "simple-cnn":
            print("fastlayers: --batchnorm applies to deep-cnn and mlp, not simple-cnn", file=sys.stderr)
            return 2
        model_kwargs["batchnorm"] = True
    try:
        (x, t), _ = _load_data(args.data, args.download)  # the test split plays no part
    except DatasetError as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        x, t = x[: args.limit], t[: args.limit]
    model_kwargs["input_size" if args.model == "mlp" else "input_shape"] = (
        int(np.prod(x.shape[1:])) if args.model == "mlp" else x.shape[1:])
    build = tune.ModelBuilder(args.model, args.optimizer, seed=args.seed, **model_kwargs)
    try:
        build.check(space)
    except ValueError as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 2
    print(f"tuning {args.model} with {args.optimizer} on {args.data} ({len(x)} training images, "
          f"{args.validation_split:g} held out for validation), backend {backend.get_backend()}", flush=True)
    try:
        result = tune.random_search(
            build, space, x, t, trials=args.trials, rounds=args.rounds, epochs=args.epochs,
            batch_size=args.batch_size, validation_split=args.validation_split, keep=args.keep, seed=args.seed,
            processes=args.processes, verbose=True)
    except tune.SearchInterrupted as e:
        result = e.result
        print(f"interrupted after {len(result.trials)} trials", file=sys.stderr)
    except (TypeError, ValueError) as e:
        print(f"fastlayers: {e}", file=sys.stderr)
        return 2
    best = result.best
    print(f"\nbest of {len(result.trials)} trials in {result.seconds:.1f} s:")
    print(result.table(top=10))
    print("final ranges: " + ", ".join(f"{n} {tune._describe(r)}" for n, r in result.ranges[-1].items()))
    if best is not None:
        print("best: " + ", ".join(f"{n}={tune._fmt(v)}" for n, v in best.params.items())
              + f" (validation accuracy {best.val_accuracy:.4f})")
    if args.json is not None:
        result.to_json(args.json)
    return 130 if result.interrupted else 0


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
    return {"train": _train, "profile": _profile, "tune": _tune, "gradcheck": _gradcheck, "plot": _plot,
            "info": _info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
