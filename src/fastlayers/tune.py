"""Random hyper-parameter search with automatic narrowing of the ranges.

The textbook's recipe (validate hyper-parameters on data held out from the training set,
never on the test set; draw them at random from wide ranges, on a log scale for learning
rates and weight decay; train each candidate briefly; then narrow the ranges to where the
best candidates lie and draw again) as one call::

    from fastlayers import losses, models, optim, tune

    def build(params):                      # top level of a module: worker processes import it
        model = models.mlp(hidden=[100] * 5, seed=0)
        opt = optim.SGD(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
        return model, losses.SoftmaxCrossEntropy(), opt

    space = {"lr": tune.loguniform(1e-6, 1e-2), "weight_decay": tune.loguniform(1e-8, 1e-4)}
    result = tune.random_search(build, space, x_train, t_train, trials=20, rounds=3, epochs=5)
    print(result.table())
    result.best.params                      # {'lr': ..., 'weight_decay': ...}

Narrowing, after every round: all trials so far (every round's) are ranked by validation
accuracy, highest first; ties by validation loss, lowest first, then by round and trial
index. Trials that failed or diverged (a non-finite loss or gradient) rank last. The best
quantile is the first ``k = max(1, ceil(keep * n))`` of the ``n`` trials so far, of which only
those that succeeded count (a failed trial has no score, so its parameters say nothing about
where the good values are). Each range then becomes the span of its parameter over that
best quantile:

- ``loguniform`` and ``uniform``: ``[min, max]`` of the best trials' values. For
  ``loguniform`` the next round draws uniformly in the logarithm of that span.
- ``randint``: ``[min, max]`` of the best trials' integers, inclusive.
- ``choice``: the options that some best trial used, in their original order.
- a plain value (not a range) stays as it is.

When the span has no width (one best trial, or all of them at the same value) while the
range had some, the new range is a window around that value: ``keep`` times the width of
the range just searched (in log space for ``loguniform``), centred on the value and shifted
to lie inside the original range, so it always contains the value and never leaves the
original range (for ``randint`` the window is rounded inwards to integers, keeping the
value). When no trial has succeeded yet the ranges stay as they are.

The best quantile is taken over all trials so far, so a new range always lies inside the
original one and contains the best trial so far, but it may reach beyond the range of the
round just run when an earlier round's trial is among the best.

Reproducibility: the validation split is drawn once from ``seed``; trial ``i`` of round
``r`` draws each parameter from its own generator seeded by ``(seed, r, i, CRC-32 of the
parameter's name)`` (so adding a parameter to the space leaves the others' draws unchanged)
and trains with ``Trainer(seed=...)`` from a seed derived from ``(seed, r, i)``. The ranges
of a round depend only on earlier results, and every native kernel gives the same bits for
any thread count, so the whole search is the same for any ``processes``.

Processes: with ``processes > 1`` the trials run in that many worker processes, one thread
each (the cores are used by running trials side by side rather than by splitting each
small GEMM over threads). The workers are started with the ``spawn`` method: a fresh
interpreter per worker. ``fork`` would copy a parent whose OpenMP (libgomp) thread pool may
already be running, and libgomp is not fork-safe (the child can hang in its first parallel
region); ``spawn`` inherits no threads and no locks. The cost is that ``build_fn`` travels
to the workers by pickling: it must be a function (or an instance of a class) defined at
the top level of an importable module or script, not a lambda, a nested function or
something defined in an interactive session, and a script must keep its own top-level work
under ``if __name__ == "__main__":`` (each worker imports it). ``processes=1`` runs the
trials one after another in the calling process, with its thread setting, and needs no
pickling.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import signal
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LogUniform",
    "Uniform",
    "RandInt",
    "Choice",
    "loguniform",
    "uniform",
    "randint",
    "choice",
    "ModelBuilder",
    "Trial",
    "SearchResult",
    "SearchInterrupted",
    "narrow",
    "rank",
    "random_search",
]


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return repr(v) if isinstance(v, str) else str(v)


# -- the ranges ---------------------------------------------------------------------------


class _Range:
    """What the ranges share: ``sample(rng)``, ``narrow(values, original, keep)``, ``as_dict()``,
    ``describe()`` and ``in``; equal when their ``as_dict()`` are."""

    kind = ""

    def __eq__(self, other):
        return type(self) is type(other) and self.as_dict() == other.as_dict()

    def __hash__(self):
        return hash(json.dumps(self.as_dict(), sort_keys=True, default=repr))


class _Interval(_Range):
    """A closed interval [low, high], sampled uniformly in ``_to`` space (log or linear)."""

    log = False

    def __init__(self, low, high):
        name = type(self).__name__.lower()
        for arg, v in (("low", low), ("high", high)):
            if not _is_real(v):
                raise TypeError(f"{name}: {arg} must be a real number, got {type(v).__name__} {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{name}: {arg} must be finite, got {v!r}")
        if self.log and not low > 0:
            raise ValueError(f"{name}: low must be > 0 for a log-uniform range, got {low!r}")
        if not low <= high:
            raise ValueError(f"{name}: low must be <= high, got low={low!r}, high={high!r}")
        self.low, self.high = self._cast(low), self._cast(high)

    def _cast(self, v):
        return float(v)

    def _to(self, v: float) -> float:
        return math.log(v) if self.log else float(v)

    def _from(self, u: float) -> float:
        return math.exp(u) if self.log else float(u)

    def width(self) -> float:
        return self._to(self.high) - self._to(self.low)

    def __contains__(self, v) -> bool:
        return _is_real(v) and self.low <= v <= self.high

    def _window(self, v, original: _Interval, keep: float) -> tuple[float, float]:
        # Width keep * the searched range's, centred on v, slid inside the original range.
        w = keep * self.width()
        lo_lim, hi_lim = original._to(original.low), original._to(original.high)
        w = min(w, hi_lim - lo_lim)
        a = self._to(v) - w / 2
        a = min(max(a, lo_lim), hi_lim - w)
        return a, a + w

    def narrow(self, values, original, keep):
        lo, hi = min(values), max(values)
        if lo == hi and self.width() > 0:
            a, b = self._window(lo, original, keep)
            # Rounding in exp/log may move an end past the value by an ulp: the value stays in.
            return type(self)(min(self._from(a), lo), max(self._from(b), lo))
        return type(self)(lo, hi)

    def sample(self, rng):
        u = rng.uniform(self._to(self.low), self._to(self.high))
        # exp(log(x)) can land an ulp outside [low, high].
        return min(max(self._from(u), self.low), self.high)

    def as_dict(self):
        return {"kind": self.kind, "low": self.low, "high": self.high}

    def __repr__(self):
        return f"{self.kind}({self.low!r}, {self.high!r})"

    def describe(self) -> str:
        return f"{self.kind}[{_fmt(self.low)}, {_fmt(self.high)}]"


class LogUniform(_Interval):
    """Real values whose logarithm is uniform on [log(low), log(high)]; 0 < low <= high."""

    kind = "loguniform"
    log = True


class Uniform(_Interval):
    """Real values uniform on [low, high]."""

    kind = "uniform"


class RandInt(_Interval):
    """Integers in [low, high], both included; ``log=True`` makes them log-uniform
    (each integer k with weight log((k+1)/k), so small values are drawn as often per
    decade as large ones), for sizes such as a layer's width."""

    kind = "randint"

    def __init__(self, low, high, log: bool = False):
        if not isinstance(log, bool):
            raise TypeError(f"randint: log must be a bool, got {type(log).__name__}")
        self.log = log
        for arg, v in (("low", low), ("high", high)):
            if not _is_int(v):
                raise TypeError(f"randint: {arg} must be an int, got {type(v).__name__} {v!r}")
        super().__init__(low, high)

    def _cast(self, v):
        return int(v)

    def width(self) -> float:
        return self._to(self.high + 1) - self._to(self.low)

    def __contains__(self, v) -> bool:
        return _is_int(v) and self.low <= v <= self.high

    def sample(self, rng):
        if not self.log:
            return int(rng.integers(self.low, self.high, endpoint=True))
        u = rng.uniform(math.log(self.low), math.log(self.high + 1))
        return int(min(max(math.floor(math.exp(u)), self.low), self.high))

    def narrow(self, values, original, keep):
        lo, hi = min(values), max(values)
        if lo == hi and self.width() > 0:
            a, b = self._window(lo, original, keep)
            new_lo, new_hi = math.ceil(self._from(a)), math.floor(self._from(b))
            # A window narrower than one integer (or rounding) keeps at least the value itself.
            return RandInt(min(new_lo, lo), max(new_hi, lo), log=self.log)
        return RandInt(lo, hi, log=self.log)

    def as_dict(self):
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log}

    def __repr__(self):
        return f"randint({self.low}, {self.high}{', log=True' if self.log else ''})"

    def describe(self) -> str:
        return f"randint{'(log)' if self.log else ''}[{self.low}, {self.high}]"


class Choice(_Range):
    """One of ``options``, each equally likely; narrowing keeps the options the best trials used."""

    kind = "choice"

    def __init__(self, options):
        if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
            raise TypeError(f"choice: options must be a list or tuple, got {type(options).__name__}")
        options = list(options)
        if not options:
            raise ValueError("choice: options must not be empty")
        for i, a in enumerate(options):
            if any(_same(a, b) for b in options[:i]):
                raise ValueError(f"choice: option {a!r} is given twice")
        self.options = options

    def __contains__(self, v) -> bool:
        return any(_same(v, o) for o in self.options)

    def sample(self, rng):
        return self.options[int(rng.integers(len(self.options)))]

    def narrow(self, values, original, keep):
        return Choice([o for o in self.options if any(_same(o, v) for v in values)])

    def as_dict(self):
        return {"kind": self.kind, "options": [_jsonable(o) for o in self.options]}

    def __repr__(self):
        return f"choice({self.options!r})"

    def describe(self) -> str:
        return "choice{" + ", ".join(_fmt(o) for o in self.options) + "}"


def _same(a, b) -> bool:
    # 1 == 1.0 == True in Python; as options they are different choices.
    return type(a) is type(b) and a == b


def loguniform(low, high) -> LogUniform:
    """A log-uniform range, for learning rates, weight decay and other scales."""
    return LogUniform(low, high)


def uniform(low, high) -> Uniform:
    """A uniform range, for momentum, dropout ratios and other bounded values."""
    return Uniform(low, high)


def randint(low, high, log: bool = False) -> RandInt:
    """Integers from ``low`` to ``high`` inclusive, uniform or (``log=True``) log-uniform."""
    return RandInt(low, high, log=log)


def choice(options) -> Choice:
    """One of ``options``, uniformly."""
    return Choice(options)


def _check_space(space) -> dict:
    if not isinstance(space, Mapping):
        raise TypeError(f"random_search: space must be a dict of parameter name -> range, got {type(space).__name__}")
    if not space:
        raise ValueError("random_search: space is empty; give at least one parameter")
    for name in space:
        if not isinstance(name, str) or not name:
            raise TypeError(f"random_search: space keys must be non-empty strings, got {name!r}")
    return dict(space)


def _ranges_dict(ranges: Mapping) -> dict:
    return {name: r.as_dict() if isinstance(r, _Range) else {"kind": "fixed", "value": _jsonable(r)}
            for name, r in ranges.items()}


def _describe(r) -> str:
    return r.describe() if isinstance(r, _Range) else f"fixed {_fmt(r)}"


# -- trials and ranking -------------------------------------------------------------------


@dataclass
class Trial:
    """One training run of the search.

    ``status`` is ``"ok"``, ``"diverged"`` (a non-finite loss or gradient stopped training)
    or ``"error"`` (``build_fn`` or training raised; ``error`` holds the exception's type and
    message). ``val_accuracy``, ``val_loss``, ``train_loss`` and ``train_accuracy`` are those of
    the last epoch (``train_*`` as the batches were trained), NaN unless the trial succeeded.
    ``round`` counts from 1, ``index`` from 0 within the round; ``seed`` is the trainer's seed.
    """

    round: int
    index: int
    params: dict
    seed: int
    status: str = "ok"
    val_accuracy: float = math.nan
    val_loss: float = math.nan
    train_accuracy: float = math.nan
    train_loss: float = math.nan
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and math.isfinite(self.val_accuracy)

    def as_dict(self) -> dict:
        return {
            "round": self.round,
            "index": self.index,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "seed": self.seed,
            "status": self.status,
            "val_accuracy": _jsonable(self.val_accuracy),
            "val_loss": _jsonable(self.val_loss),
            "train_accuracy": _jsonable(self.train_accuracy),
            "train_loss": _jsonable(self.train_loss),
            "seconds": self.seconds,
            "error": self.error,
        }


def _jsonable(v):
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _rank_key(trial: Trial):
    if not trial.ok:
        return (1, 0.0, 0.0, trial.round, trial.index)
    loss = trial.val_loss if math.isfinite(trial.val_loss) else math.inf
    return (0, -trial.val_accuracy, loss, trial.round, trial.index)


def rank(trials: Sequence[Trial]) -> list[Trial]:
    """``trials`` best first: validation accuracy descending, then validation loss
    ascending, then round and index; failed and diverged trials last."""
    return sorted(trials, key=_rank_key)


def narrow(ranges: Mapping, trials: Sequence[Trial], keep: float, original: Mapping | None = None) -> dict:
    """The ranges for the next round: each one the span of its parameter over the best
    ``keep`` quantile of ``trials`` (see the module's documentation for the exact rule).

    ``ranges`` are those of the round just run, ``original`` the space as first given (the
    bound for the window around a single best value; default ``ranges``)."""
    _check_keep(keep, "narrow")
    original = ranges if original is None else original
    best = _best(trials, keep)
    if not best:
        return dict(ranges)
    out = {}
    for name, r in ranges.items():
        out[name] = r.narrow([t.params[name] for t in best], original[name], keep) if isinstance(r, _Range) else r
    return out


def _best(trials: Sequence[Trial], keep: float) -> list[Trial]:
    k = max(1, math.ceil(keep * len(trials)))
    return [t for t in rank(trials)[:k] if t.ok]


def _check_keep(keep, where: str) -> None:
    if not _is_real(keep) or not 0 < keep <= 1:
        raise ValueError(f"{where}: keep must be a fraction in (0, 1], got {keep!r}")


# -- the result ---------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What ``random_search`` found.

    ``trials``: every trial, in the order run (round, then index). ``ranges``: the ranges of
    every round, ``ranges[0]`` the space as given, ``ranges[r]`` those round ``r + 1`` drew
    from, and the last entry the ranges narrowed after the final round. ``best``: the best
    trial (see ``rank``), or None if none succeeded. ``validation_indices``: the rows of ``x``
    held out for validation (the same for every trial).
    """

    trials: list[Trial]
    ranges: list[dict]
    settings: dict
    validation_indices: np.ndarray | None = None
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def best(self) -> Trial | None:
        ranked = rank(self.trials)
        return ranked[0] if ranked and ranked[0].ok else None

    def ranked(self, round: int | None = None) -> list[Trial]:
        return rank([t for t in self.trials if round is None or t.round == round])

    def table(self, round: int | None = None, top: int | None = None) -> str:
        """The trials (of one round, or all) as a text table, best first."""
        trials = self.ranked(round)
        if top is not None:
            trials = trials[:top]
        names = list(self.ranges[0]) if self.ranges else []
        return _table(trials, names)

    def as_dict(self) -> dict:
        """Everything as JSON-ready values (NaN and infinities become None)."""
        best = self.best
        return {
            "settings": self.settings,
            "ranges": [_ranges_dict(r) for r in self.ranges],
            "trials": [t.as_dict() for t in self.trials],
            "best": best.as_dict() if best is not None else None,
            "validation_size": None if self.validation_indices is None else int(len(self.validation_indices)),
            "seconds": self.seconds,
            "interrupted": self.interrupted,
        }

    def to_json(self, path=None, indent: int | None = 1) -> str:
        """The ``as_dict()`` object as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.as_dict(), indent=indent, allow_nan=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text


def _table(trials: Sequence[Trial], names: Sequence[str]) -> str:
    head = ["rank", "round", "trial", "val_acc", "val_loss", "train_acc", "seconds", *names, "status"]
    rows = []
    for i, t in enumerate(trials, 1):
        def num(v, spec):
            return format(v, spec) if math.isfinite(v) else "-"
        status = t.status if t.error is None else f"{t.status}: {t.error}"
        if len(status) > 100:  # the whole message is in trial.error and the JSON
            status = status[:99] + "…"
        rows.append([str(i), str(t.round), str(t.index), num(t.val_accuracy, ".4f"), num(t.val_loss, ".4f"),
                     num(t.train_accuracy, ".4f"), f"{t.seconds:.2f}", *(_fmt(t.params.get(n, "")) for n in names),
                     status])
    widths = [max(len(h), *(len(r[j]) for r in rows)) if rows else len(h) for j, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) if j < len(head) - 1 else h for j, (h, w) in enumerate(zip(head, widths)))]
    lines += ["  ".join(c.rjust(w) if j < len(head) - 1 else c for j, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines)


class SearchInterrupted(KeyboardInterrupt):
    """Raised by ``random_search`` on Ctrl-C once the workers are stopped; ``result``
    holds the trials that finished (``result.interrupted`` is True)."""

    def __init__(self, result: SearchResult):
        super().__init__("hyper-parameter search interrupted")
        self.result = result


# -- running trials -----------------------------------------------------------------------

_STATE: dict = {}  # in a worker process: the data and build_fn, set once by _worker_init


def _unpack(built):
    if not (isinstance(built, tuple) and len(built) == 3):
        raise TypeError(
            "build_fn must return a tuple (model, loss, optimizer), got "
            + (f"a tuple of {len(built)}" if isinstance(built, tuple) else type(built).__name__)
        )
    return built


def _train(build_fn, params: dict, seed: int, data, epochs: int, batch_size: int) -> dict:
    from .trainer import Trainer

    x_train, t_train, x_val, t_val = data
    start = time.perf_counter()
    out = {"status": "ok", "error": None}
    try:
        model, loss, optimizer = _unpack(build_fn(dict(params)))
        trainer = Trainer(model, loss, optimizer, seed=seed, verbose=False)
        history = trainer.fit(x_train, t_train, epochs=epochs, batch_size=batch_size, validation=(x_val, t_val))
        last = history[-1]
        out.update(val_accuracy=float(last["val_accuracy"]), val_loss=float(last["val_loss"]),
                   train_accuracy=float(last["train_accuracy"]), train_loss=float(last["loss"]))
    except FloatingPointError as e:  # NonFiniteError included: the run diverged
        out.update(status="diverged", error=f"{type(e).__name__}: {_first_line(e)}")
    except Exception as e:
        out.update(status="error", error=f"{type(e).__name__}: {_first_line(e)}")
    out["seconds"] = time.perf_counter() - start
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _worker_init(build_bytes: bytes, data, backend_name: str, conv_algorithm: str) -> None:
    # The parent stops the workers itself on Ctrl-C; a worker dying of the terminal's
    # SIGINT on its own would only add tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from . import backend

    backend.set_num_threads(1)
    backend.set_backend(backend_name)
    backend.set_conv_algorithm(conv_algorithm)
    _STATE["data"] = data
    try:
        _STATE["build_fn"] = pickle.loads(build_bytes)
    except Exception as e:
        _STATE["load_error"] = f"{type(e).__name__}: {e}"


def _worker_ready() -> int:
    return os.getpid()


def _worker_trial(params: dict, seed: int, epochs: int, batch_size: int) -> dict:
    if "load_error" in _STATE:
        return {"status": "load_error", "error": _STATE["load_error"], "seconds": 0.0}
    return _train(_STATE["build_fn"], params, seed, _STATE["data"], epochs, batch_size)


@contextlib.contextmanager
def _environment(**values):
    # Spawned workers read these when their OpenMP and OpenBLAS libraries load, before any
    # code of ours runs in them: NumPy's own OpenBLAS is kept to one thread too.
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Pool:
    """Worker processes, started with ``spawn`` (see the module's documentation)."""

    def __init__(self, processes: int, build_bytes: bytes, data):
        import multiprocessing

        from . import backend

        self.processes = processes
        self.executor = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(build_bytes, data, backend.get_backend(), backend.get_conv_algorithm()),
        )
        # A spawn executor launches all its workers at the first submit: do it now, under
        # the one-thread environment.
        try:
            with _environment(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1"):
                self.executor.submit(_worker_ready).result()
        except BaseException:
            self.close(kill=True)
            raise

    def submit(self, params, seed, epochs, batch_size):
        return self.executor.submit(_worker_trial, params, seed, epochs, batch_size)

    def close(self, kill: bool = False) -> None:
        if self.executor is None:
            return
        if kill:
            stop = getattr(self.executor, "terminate_workers", None)  # Python >= 3.14
            if stop is not None:
                stop()
            else:
                for p in list((getattr(self.executor, "_processes", None) or {}).values()):
                    p.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = None


def _check_picklable(build_fn) -> bytes:
    hint = ("define it at the top level of a module or script (not a lambda, a nested function or a method of a "
            "local class), or pass processes=1 to run the trials in this process")
    owner = getattr(build_fn, "__module__", None) or getattr(type(build_fn), "__module__", None)
    if owner == "__main__" and not getattr(sys.modules.get("__main__"), "__file__", None):
        raise TypeError(
            "random_search: build_fn is defined in an interactive session, which worker processes cannot import; "
            + hint)
    try:
        return pickle.dumps(build_fn)
    except Exception as e:
        raise TypeError(f"random_search: build_fn must be picklable to run in worker processes ({e}); {hint}") from None


# -- a build_fn for the ready-made models --------------------------------------------------


_NOT_TUNABLE = {"input_size", "input_shape", "classes", "seed", "dtype", "params", "self"}


def _model_args(model: str) -> set[str]:
    import inspect

    from .models import MODELS

    sig = inspect.signature(MODELS[model])
    # Sequence-valued arguments (mlp's hidden sizes) take no single drawn value.
    return {n for n, p in sig.parameters.items()
            if n not in _NOT_TUNABLE and not isinstance(p.default, (tuple, list))}


def _optimizer_args(optimizer: str) -> set[str]:
    import inspect

    from . import optim

    cls = optim._CLASSES[optimizer]
    names = set(inspect.signature(optim.Optimizer.__init__).parameters)
    names |= set(inspect.signature(cls.__init__).parameters)
    return {n for n in names if n not in _NOT_TUNABLE and n != "kw"}


class ModelBuilder:
    """A picklable ``build_fn`` for the models of ``fastlayers.models``, trained with
    softmax cross-entropy: ``ModelBuilder("mlp", "sgd", seed=0, hidden=[100] * 5)``.

    Each parameter of a trial goes to the model's constructor when it is one of its scalar
    arguments (``dropout``, ``batchnorm``, ``activation`` for mlp; ``conv``, ``kernel``,
    ``hidden`` for simple-cnn; ...) and otherwise to the optimizer's (``lr``,
    ``weight_decay``, ``momentum``, ``beta1``, ...). ``model_kwargs`` are fixed model
    arguments; ``seed`` fixes the initial weights, the same for every trial."""

    def __init__(self, model: str, optimizer: str = "sgd", seed: int = 0, **model_kwargs):
        from . import optim
        from .models import MODELS

        if model not in MODELS:
            raise ValueError(f"ModelBuilder: unknown model {model!r}; expected one of {', '.join(MODELS)}")
        if not isinstance(optimizer, str) or optimizer.lower() not in optim.NAMES:
            raise ValueError(f"ModelBuilder: unknown optimizer {optimizer!r}; expected one of {', '.join(optim.NAMES)}")
        self.model, self.optimizer, self.seed, self.model_kwargs = model, optimizer.lower(), seed, model_kwargs

    def parameter_names(self) -> tuple[set[str], set[str]]:
        """The names a space may use: (model arguments, optimizer arguments)."""
        return _model_args(self.model) - set(self.model_kwargs), _optimizer_args(self.optimizer)

    def check(self, space: Mapping) -> None:
        """Raises ValueError naming any parameter of ``space`` that neither takes."""
        model_names, opt_names = self.parameter_names()
        unknown = [n for n in space if n not in model_names | opt_names]
        if unknown:
            raise ValueError(
                f"unknown parameter {unknown[0]!r} for {self.model} with {self.optimizer}; the model takes "
                f"{', '.join(sorted(model_names))}; the optimizer takes {', '.join(sorted(opt_names))}")

    def __call__(self, params: dict):
        from . import optim
        from .losses import SoftmaxCrossEntropy
        from .models import get

        model_names, _ = self.parameter_names()
        model_params = {k: v for k, v in params.items() if k in model_names}
        opt_params = {k: v for k, v in params.items() if k not in model_names}
        model = get(self.model, seed=self.seed, **self.model_kwargs, **model_params)
        return model, SoftmaxCrossEntropy(), optim.get(self.optimizer, model.parameters(), **opt_params)


# -- the search ---------------------------------------------------------------------------


def _check_count(v, name: str, minimum: int) -> int:
    if not _is_int(v) or v < minimum:
        raise ValueError(f"random_search: {name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def _trial_seeds(seed: int, round_: int, index: int, names) -> tuple[dict, int]:
    draws = {name: np.random.default_rng([seed, round_, index, zlib.crc32(name.encode())]) for name in names}
    state = np.random.SeedSequence([seed, round_, index]).generate_state(2, dtype=np.uint32)
    return draws, int(state[0]) << 32 | int(state[1])


def _sample(ranges: Mapping, seed: int, round_: int, index: int) -> tuple[dict, int]:
    draws, train_seed = _trial_seeds(seed, round_, index, ranges)
    params = {name: r.sample(draws[name]) if isinstance(r, _Range) else r for name, r in ranges.items()}
    return params, train_seed


def _split(x, t, validation_split, validation, seed):
    if validation is not None:
        if validation_split is not None:
            raise ValueError("random_search: pass validation or validation_split, not both")
        if not (isinstance(validation, tuple) and len(validation) == 2
                and all(isinstance(a, np.ndarray) for a in validation)):
            raise TypeError("random_search: validation must be a tuple (x_val, t_val) of numpy arrays")
        if len(validation[0]) != len(validation[1]) or len(validation[0]) == 0:
            raise ValueError("random_search: validation must hold the same number (> 0) of inputs and targets, got "
                             f"{len(validation[0])} and {len(validation[1])}")
        return (x, t) + tuple(validation), None
    if not _is_real(validation_split) or not 0 < validation_split < 1:
        raise ValueError(f"random_search: validation_split must be in (0, 1), got {validation_split!r}")
    n_val = int(round(len(x) * validation_split))
    if n_val < 1 or n_val >= len(x):
        raise ValueError(f"random_search: validation_split={validation_split} of {len(x)} samples leaves an empty set")
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (x[train], t[train], x[val], t[val]), val


def random_search(
    build_fn: Callable[[dict], tuple],
    space: Mapping,
    x: np.ndarray,
    t: np.ndarray,
    trials: int = 20,
    rounds: int = 3,
    epochs: int = 5,
    batch_size: int = 100,
    validation_split: float | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    keep: float = 0.2,
    seed: int = 0,
    processes: int | None = None,
    verbose: bool = False,
) -> SearchResult:
    """Random search over ``space`` in ``rounds`` rounds of ``trials`` short trainings each,
    narrowing every range after each round to the span of the best ``keep`` quantile.

    ``build_fn(params)`` gets a dict of one value per parameter of ``space`` and returns
    ``(model, loss, optimizer)``; the trial trains it with ``fastlayers.Trainer`` (seeded from
    ``(seed, round, trial)``) for ``epochs`` epochs of ``batch_size`` on ``(x, t)`` minus the
    validation rows, and is scored on those rows. Seed the model's initialisation inside
    ``build_fn`` (``models.mlp(seed=0)``): every trial then starts from the same weights and
    trials differ only by their parameters and their batch order and dropout masks.

    ``space`` maps names to ``loguniform(lo, hi)``, ``uniform(lo, hi)``, ``randint(lo, hi)``,
    ``choice([...])`` or a plain value (passed unchanged). ``validation_split`` (default 0.2)
    holds out that fraction of ``(x, t)``, drawn once from ``seed`` and the same for every
    trial; or pass ``validation=(x_val, t_val)`` instead. Pass only training data: the test
    set must play no part in choosing hyper-parameters.

    ``processes`` (default: the number of usable cores; never more than ``trials``) worker
    processes run the trials, one thread each; ``1`` runs them here. A trial whose ``build_fn`` or
    training raises is recorded with its error (status ``"error"``; ``"diverged"`` for a
    non-finite loss or gradient) and the search goes on. Ctrl-C stops the workers and raises
    ``SearchInterrupted`` (a ``KeyboardInterrupt``) whose ``result`` holds the finished trials.
    ``verbose`` prints each round's table and the narrowed ranges.
    """
    if not callable(build_fn):
        raise TypeError(f"random_search: build_fn must be callable, got {type(build_fn).__name__}")
    space = _check_space(space)
    if not isinstance(x, np.ndarray) or not isinstance(t, np.ndarray):
        raise TypeError(f"random_search: x and t must be numpy arrays, got {type(x).__name__} and {type(t).__name__}")
    if len(x) != len(t):
        raise ValueError(f"random_search: x and t hold different numbers of samples: {len(x)} and {len(t)}")
    trials = _check_count(trials, "trials", 1)
    rounds = _check_count(rounds, "rounds", 1)
    epochs = _check_count(epochs, "epochs", 1)
    batch_size = _check_count(batch_size, "batch_size", 1)
    seed = _check_count(seed, "seed", 0)
    _check_keep(keep, "random_search")
    if processes is None:
        processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = min(_check_count(processes, "processes", 1), trials)
    if not isinstance(verbose, bool):
        raise TypeError(f"random_search: verbose must be a bool, got {type(verbose).__name__}")
    if validation is None and validation_split is None:
        validation_split = 0.2
    data, val_rows = _split(x, t, validation_split, validation, seed)
    build_bytes = _check_picklable(build_fn) if processes > 1 else None

    settings = {"trials": trials, "rounds": rounds, "epochs": epochs, "batch_size": batch_size,
                "validation_split": validation_split, "keep": keep, "seed": seed, "processes": processes,
                "train_size": int(len(data[0])), "validation_size": int(len(data[2]))}
    result = SearchResult(trials=[], ranges=[space], settings=settings, validation_indices=val_rows)
    start = time.perf_counter()
    pool = None
    try:
        ranges = space
        for r in range(1, rounds + 1):
            if processes > 1 and (pool is None or pool.executor is None):
                pool = _Pool(processes, build_bytes, data)
            if verbose:
                print(f"round {r}/{rounds}: {trials} trials, {processes} process{'es' if processes > 1 else ''}; "
                      + ", ".join(f"{n} {_describe(v)}" for n, v in ranges.items()), flush=True)
            jobs = [(i, *_sample(ranges, seed, r, i)) for i in range(trials)]
            done = _run_round(pool, build_fn, jobs, data, epochs, batch_size, r, result)
            result.trials.extend(sorted(done, key=lambda tr: tr.index))
            ranges = narrow(ranges, result.trials, keep, original=space)
            result.ranges.append(ranges)
            if verbose:
                print(result.table(round=r), flush=True)
                best = _best(result.trials, keep)
                print(f"narrowed to the best {len(best)} of {len(result.trials)} trials: "
                      + ", ".join(f"{n} {_describe(v)}" for n, v in ranges.items()), flush=True)
    except KeyboardInterrupt:
        if pool is not None:
            pool.close(kill=True)
            pool = None
        result.seconds = time.perf_counter() - start
        result.interrupted = True
        raise SearchInterrupted(result) from None
    finally:
        if pool is not None:
            pool.close()
    result.seconds = time.perf_counter() - start
    return result


def _run_round(pool, build_fn, jobs, data, epochs, batch_size, round_, result) -> list[Trial]:
    done: list[Trial] = []

    def record(i, params, seed, out):
        done.append(Trial(round=round_, index=i, params=params, seed=seed, status=out["status"],
                          val_accuracy=out.get("val_accuracy", math.nan), val_loss=out.get("val_loss", math.nan),
                          train_accuracy=out.get("train_accuracy", math.nan),
                          train_loss=out.get("train_loss", math.nan), seconds=out["seconds"], error=out["error"]))

    try:
        if pool is None:
            for i, params, seed in jobs:
                record(i, params, seed, _train(build_fn, params, seed, data, epochs, batch_size))
            return done
        def died(e):
            # One trial killed its worker (a crash, or the kernel's OOM killer); the pool is
            # unusable and cannot tell which trial it was.
            return {"status": "error", "seconds": 0.0,
                    "error": f"a worker process died abruptly while this round ran ({e})"}

        futures = {}
        for i, params, seed in jobs:
            try:
                futures[pool.submit(params, seed, epochs, batch_size)] = (i, params, seed)
            except BrokenProcessPool as e:  # a trial submitted earlier has already killed its worker
                record(i, params, seed, died(e))
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                i, params, seed = futures[f]
                try:
                    out = f.result()
                except BrokenProcessPool as e:
                    out = died(e)
                if out["status"] == "load_error":
                    raise RuntimeError(
                        f"random_search: the worker processes could not load build_fn: {out['error']}. "
                        "Each worker imports the module that defines it: it must be importable, and a script must "
                        "keep its top-level work under `if __name__ == '__main__':`")
                record(i, params, seed, out)
        if any(t.error and t.error.startswith("a worker process died") for t in done):
            pool.close(kill=True)
        return done
    except KeyboardInterrupt:
        result.trials.extend(sorted(done, key=lambda tr: tr.index))
        raise
    except BaseException:
        if pool is not None:
            pool.close(kill=True)
        raise
