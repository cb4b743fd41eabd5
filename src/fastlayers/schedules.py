"""Learning-rate schedules for ``Trainer.fit(lr_schedule=...)``.

Each schedule is a :class:`~fastlayers.callbacks.Callback` that sets ``optimizer.lr``:

- :class:`StepDecay`, :class:`ExponentialDecay` and :class:`CosineAnnealing` are closed
  forms of a unit count ``n`` (1, 2, ...). By default the unit is the epoch (counted over
  every ``fit`` of the trainer) and the rate is set before each epoch; with
  ``per_step=True`` the unit is the optimizer update (``optimizer.steps + 1``, counted over
  the optimizer's whole life and saved in checkpoints) and the rate is set before every
  training step. ``schedule(n)`` returns the rate of unit ``n``. They hold no state, so a
  resumed run recomputes the same rates.
- :class:`ReduceOnPlateau` divides the rate when a monitored quantity of the epoch's
  record stops improving; its state (best value, epochs waited, cooldown) is saved in
  training checkpoints and restored by ``fit(resume=True)``.

A history record's ``lr`` is the rate of the epoch's last step (with an epoch schedule, the
rate of every step of it); ReduceOnPlateau changes the rate after the record is made, so the
record shows the rate the epoch trained with and the next record the reduced one.

For a per-step schedule over a whole run, count its steps as
``epochs * math.ceil(n_train / batch_size)`` (``n_train``: the training samples after any
``validation_split``).
"""

from __future__ import annotations

import math

from .callbacks import Callback

__all__ = ["Schedule", "StepDecay", "ExponentialDecay", "CosineAnnealing", "ReduceOnPlateau", "step_decay"]


def _real(owner: str, name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(v).__name__}")
    return float(v)


def _rate(owner: str, name: str, v) -> float:
    v = _real(owner, name, v)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {v!r}")
    return v


def _int(owner: str, name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, got {v!r}")
    return v


def _unit(owner: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{owner}: the epoch or step number must be an int >= 1, got {n!r}")
    return n


class Schedule(Callback):
    """A closed-form schedule: ``self(n)`` is the rate of epoch ``n`` or, with ``per_step``,
    of optimizer update ``n``. Subclasses implement ``rate(n)``."""

    def __init__(self, per_step: bool = False):
        if not isinstance(per_step, bool):
            raise TypeError(f"{type(self).__name__}: per_step must be a bool, got {type(per_step).__name__}")
        self.per_step = per_step

    def __call__(self, n: int) -> float:
        return self.rate(_unit(type(self).__name__, n))

    def rate(self, n: int) -> float:
        raise NotImplementedError

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        if not self.per_step:
            trainer.optimizer.lr = self(epoch)

    def on_batch_begin(self, trainer, step: int) -> None:
        if self.per_step:
            trainer.optimizer.lr = self(trainer.optimizer.steps + 1)


class StepDecay(Schedule):
    """``lr * gamma ** ((n - 1) // every)``: ``lr`` for the first ``every`` units, then
    ``lr * gamma``, ... (PyTorch's StepLR)."""

    def __init__(self, lr: float, every: int, gamma: float = 0.1, per_step: bool = False):
        super().__init__(per_step)
        owner = type(self).__name__
        self.lr = _rate(owner, "lr", lr)
        self.every = _int(owner, "every", every, 1)
        self.gamma = _real(owner, "gamma", gamma)
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise ValueError(f"{owner}: gamma must be a finite number > 0, got {gamma!r}")

    def rate(self, n: int) -> float:
        return self.lr * self.gamma ** ((n - 1) // self.every)

    def __repr__(self) -> str:
        return f"StepDecay(lr={self.lr!r}, every={self.every!r}, gamma={self.gamma!r}, per_step={self.per_step})"


def step_decay(lr: float, every: int, gamma: float = 0.1) -> StepDecay:
    """``StepDecay(lr, every, gamma)`` per epoch: ``lr`` for the first ``every`` epochs, then
    ``lr * gamma``, then ``lr * gamma**2``, ... (PyTorch's StepLR)."""
    return StepDecay(lr, every, gamma)


class ExponentialDecay(Schedule):
    """``lr * gamma ** (n - 1)`` (PyTorch's ExponentialLR)."""

    def __init__(self, lr: float, gamma: float, per_step: bool = False):
        super().__init__(per_step)
        owner = type(self).__name__
        self.lr = _rate(owner, "lr", lr)
        self.gamma = _real(owner, "gamma", gamma)
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise ValueError(f"{owner}: gamma must be a finite number > 0, got {gamma!r}")

    def rate(self, n: int) -> float:
        return self.lr * self.gamma ** (n - 1)

    def __repr__(self) -> str:
        return f"ExponentialDecay(lr={self.lr!r}, gamma={self.gamma!r}, per_step={self.per_step})"


class CosineAnnealing(Schedule):
    """Cosine annealing from ``lr`` to ``min_lr`` over ``total`` units, after an optional
    linear warm-up of ``warmup`` units. With ``t = n - 1`` the units done before unit ``n``:

    - ``t < warmup``: ``lr * (t + 1) / warmup`` (the warm-up ends at ``lr``, and never trains
      a step at rate 0);
    - ``warmup <= t < total``: ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2``
      (``lr`` at the first unit after the warm-up);
    - ``t >= total``: ``min_lr`` (no restart).

    Without warm-up this is PyTorch's CosineAnnealingLR with ``T_max = total``: the last
    unit of a run of ``total`` units is one step above ``min_lr``, which the rate reaches
    just after it.
    """

    def __init__(self, lr: float, total: int, min_lr: float = 0.0, warmup: int = 0, per_step: bool = False):
        super().__init__(per_step)
        owner = type(self).__name__
        self.lr = _rate(owner, "lr", lr)
        self.total = _int(owner, "total", total, 1)
        self.warmup = _int(owner, "warmup", warmup, 0)
        if self.warmup >= self.total:
            raise ValueError(f"{owner}: warmup must be < total, got warmup={warmup!r}, total={total!r}")
        self.min_lr = _rate(owner, "min_lr", min_lr)
        if self.min_lr > self.lr:
            raise ValueError(f"{owner}: min_lr must be <= lr, got min_lr={min_lr!r}, lr={lr!r}")

    def rate(self, n: int) -> float:
        t = n - 1
        if t < self.warmup:
            return self.lr * (t + 1) / self.warmup
        if t >= self.total:
            return self.min_lr
        progress = (t - self.warmup) / (self.total - self.warmup)
        return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2

    def __repr__(self) -> str:
        return (f"CosineAnnealing(lr={self.lr!r}, total={self.total!r}, min_lr={self.min_lr!r}, "
                f"warmup={self.warmup!r}, per_step={self.per_step})")


class FunctionOfEpoch(Schedule):
    """A plain function of the epoch number used as ``lr_schedule`` (``lambda epoch: ...``)."""

    def __init__(self, fn):
        super().__init__(False)
        self.fn = fn

    def rate(self, n: int) -> float:
        return self.fn(n)

    def __repr__(self) -> str:
        return f"FunctionOfEpoch({self.fn!r})"


_MODES = ("auto", "min", "max")
_THRESHOLD_MODES = ("rel", "abs")


class ReduceOnPlateau(Callback):
    """Multiplies ``optimizer.lr`` by ``factor`` once ``monitor`` has not improved for
    ``patience`` consecutive epochs (as ``fit``'s early stopping counts them; PyTorch's
    ReduceLROnPlateau waits one epoch more), never below ``min_lr``.

    ``monitor`` is a key of the epoch's history record: ``"val_loss"`` (the default),
    ``"val_accuracy"``, ``"loss"``, ``"train_accuracy"`` or one a callback earlier in the list
    adds. Like early stopping, ``"val_loss"`` and ``"val_accuracy"`` fall back to ``"loss"``
    and ``"train_accuracy"`` when ``fit`` has no validation data. ``mode`` is ``"min"``,
    ``"max"`` or ``"auto"`` (``"max"`` for a key holding "accuracy", else ``"min"``).

    An epoch improves when its value beats the best so far by more than ``threshold``:
    ``value < best * (1 - threshold)`` in ``"rel"`` ``threshold_mode`` (``best * (1 +
    threshold)`` for ``"max"``), ``value < best - threshold`` in ``"abs"`` (``best +
    threshold`` for ``"max"``). The first epoch always improves; NaN never does. After a
    reduction, ``cooldown`` epochs pass without counting; then the count starts again from
    zero. Once the rate is at ``min_lr`` it stays there.

    Its state (``best``, ``bad_epochs``, ``cooldown_left``) goes into training checkpoints;
    pass it as ``lr_schedule`` or among ``callbacks`` (it acts at ``on_epoch_end``, after
    validation and after the callbacks before it).
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0, mode: str = "auto"):
        owner = type(self).__name__
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"{owner}: monitor must be a key of the history record (a str), got {monitor!r}")
        self.monitor = monitor
        self.factor = _real(owner, "factor", factor)
        if not 0 < self.factor < 1:
            raise ValueError(f"{owner}: factor must be in (0, 1), got {factor!r}")
        self.patience = _int(owner, "patience", patience, 1)
        self.threshold = _rate(owner, "threshold", threshold)
        if threshold_mode not in _THRESHOLD_MODES:
            raise ValueError(f"{owner}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.threshold_mode = threshold_mode
        self.cooldown = _int(owner, "cooldown", cooldown, 0)
        self.min_lr = _rate(owner, "min_lr", min_lr)
        if mode not in _MODES:
            raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.mode = ("max" if "accuracy" in monitor else "min") if mode == "auto" else mode
        self.best: float | None = None
        self.bad_epochs = 0
        self.cooldown_left = 0

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return value < (self.best * (1 - self.threshold) if rel else self.best - self.threshold)
        return value > (self.best * (1 + self.threshold) if rel else self.best + self.threshold)

    def _value(self, record: dict) -> float:
        key = self.monitor
        if key not in record and key in ("val_loss", "val_accuracy"):
            key = "loss" if key == "val_loss" else "train_accuracy"
        if key not in record:
            raise ValueError(f"ReduceOnPlateau: monitor {self.monitor!r} is not in the epoch's record "
                             f"(it holds {', '.join(sorted(record))})")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"ReduceOnPlateau: record[{key!r}] must be a number, got {type(value).__name__}")
        return float(value)

    def step(self, value: float, optimizer) -> bool:
        """Counts one epoch whose monitored value is ``value``; returns whether it reduced
        ``optimizer.lr``. ``on_epoch_end`` calls this with the record's value."""
        if self._improves(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs < self.patience:
            return False
        self.bad_epochs, self.cooldown_left = 0, self.cooldown
        old = optimizer.lr
        new = max(old * self.factor, self.min_lr)
        if new >= old:
            return False
        optimizer.lr = new
        return True

    def on_epoch_end(self, trainer, record: dict) -> None:
        self.step(self._value(record), trainer.optimizer)

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict) -> None:
        owner = type(self).__name__
        keys = {"best", "bad_epochs", "cooldown_left"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{owner}: state must be a dict with keys {sorted(keys)}, got {got}")
        best = state["best"]
        if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best)):
            raise ValueError(f"{owner}: state 'best' must be null or a number, got {best!r}")
        for name in ("bad_epochs", "cooldown_left"):
            v = state[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{owner}: state {name!r} must be an int >= 0, got {v!r}")
        self.best = None if best is None else float(best)
        self.bad_epochs, self.cooldown_left = state["bad_epochs"], state["cooldown_left"]

    def __repr__(self) -> str:
        return (f"ReduceOnPlateau(monitor={self.monitor!r}, factor={self.factor!r}, patience={self.patience!r}, "
                f"threshold={self.threshold!r}, threshold_mode={self.threshold_mode!r}, cooldown={self.cooldown!r}, "
                f"min_lr={self.min_lr!r}, mode={self.mode!r})")
