"""Trainer: the textbook's training loop, with shuffling, validation, early stopping and checkpoints."""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .callbacks import Callback
from .health import Monitor, Settings, format_health
from .init import as_generator
from .profile import Profile
from .schedules import FunctionOfEpoch, step_decay  # noqa: F401 - step_decay lived here first


def accuracy(scores: np.ndarray, t: np.ndarray) -> float:
    """Fraction of rows whose arg-max matches ``t`` (labels, or one-hot/soft targets)."""
    labels = t if t.ndim == 1 else np.argmax(t, axis=1)
    return float(np.mean(np.argmax(scores, axis=1) == labels)) if len(labels) else math.nan


def inference(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``model``'s outputs for ``x`` in inference mode, ``batch_size`` samples at a time; the
    train/eval mode of every module is put back afterwards."""
    modules = model.modules()
    modes = [m.training for m in modules]
    model.eval()
    try:
        return np.concatenate([model.forward(x[i : i + batch_size], train=False) for i in range(0, len(x), batch_size)])
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


class NonFiniteError(FloatingPointError):
    """A training step whose loss or gradients hold a NaN or an infinity.

    Raised before the optimizer update, so the step changes nothing: the parameters, the
    optimizer state (its step count included) and the BatchNorm running statistics are as
    they were before it. ``epoch`` and ``step`` (1-based, within the epoch) locate the step
    in ``fit`` (None for a direct ``train_step``); ``optimizer_step`` is the update that was
    refused (``optimizer.steps + 1``); ``loss`` is the step's loss; ``parameter`` is the
    state_dict name of the first parameter, in the model's order, whose gradient is not
    finite (None when every gradient is) and ``layer`` the layer that owns it.
    """

    def __init__(self, message: str, *, epoch, step, optimizer_step, loss, parameter, layer):
        super().__init__(message)
        self.epoch, self.step, self.optimizer_step = epoch, step, optimizer_step
        self.loss, self.parameter, self.layer = loss, parameter, layer


class _BufferSnapshot:
    """A copy of the model's buffers (BatchNorm's running statistics), taken before every
    training step so that a refused step can put back what its forward pass moved.

    The buffers are copied with one ``numpy.concatenate`` per dtype into a preallocated
    array, a few microseconds per step however many BatchNorm layers there are."""

    def __init__(self, model):
        by_dtype: dict[np.dtype, list[np.ndarray]] = {}
        for b in model.buffers().values():
            by_dtype.setdefault(b.dtype, []).append(b)
        self._groups = [(arrays, np.empty(sum(a.size for a in arrays), dtype)) for dtype, arrays in by_dtype.items()]

    def take(self) -> None:
        for arrays, flat in self._groups:
            np.concatenate(arrays, axis=None, out=flat)

    def restore(self) -> None:
        for arrays, flat in self._groups:
            offset = 0
            for a in arrays:
                a[...] = flat[offset : offset + a.size].reshape(a.shape)
                offset += a.size


def _layer_of(model, name: str) -> str | None:
    """The layer that owns the parameter ``name`` ("3.W", "2.1.gamma"), as its tag."""
    from .layers import Sequential

    layer = model
    for part in name.split(".")[:-1]:
        if not (isinstance(layer, Sequential) and part.isdigit() and int(part) < len(layer.layers)):
            return None
        layer = layer.layers[int(part)]
    return layer._tag()


def _check_batch_size(batch_size, what: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{what}: batch_size must be an int >= 1, got {batch_size!r}")


def _check_xt(x, t, what: str) -> None:
    if not isinstance(x, np.ndarray) or not isinstance(t, np.ndarray):
        raise TypeError(f"{what}: x and t must be numpy arrays")
    if len(x) != len(t):
        raise ValueError(f"{what}: x has {len(x)} samples but t has {len(t)}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fingerprint(x: np.ndarray, t: np.ndarray) -> dict:
    """Shape, dtype and CRC-32 of the training data, so that a resumed run can tell that it
    is given the same samples (about 10 ms for the bundled 25 MB of images, once per ``fit``)."""

    def one(a):
        a = np.ascontiguousarray(a)
        return {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": zlib.crc32(a.reshape(-1).view(np.uint8))}

    return {"x": one(x), "t": one(t)}


# The bit generators a checkpoint may name; a name is looked up here, never in a module.
_BIT_GENERATORS = {c.__name__: c for c in (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox,
                                           np.random.SFC64, np.random.MT19937)}


def _rng_state(gen: np.random.Generator) -> dict:
    """The generator's state as JSON-ready data (arrays become {"ndarray": [...], "dtype": ...})."""

    def encode(v):
        if isinstance(v, np.ndarray):
            return {"ndarray": v.tolist(), "dtype": v.dtype.name}
        if isinstance(v, dict):
            return {k: encode(item) for k, item in v.items()}
        return int(v) if isinstance(v, np.integer) else v

    return encode(gen.bit_generator.state)


def _rng_from_state(state, where: str) -> np.random.Generator:
    """A new generator in the state ``_rng_state`` recorded; CheckpointError if it is not one."""
    from .checkpoint import CheckpointError

    def decode(v):
        if isinstance(v, dict):
            if set(v) == {"ndarray", "dtype"}:
                if v["dtype"] not in ("uint32", "uint64") or not isinstance(v["ndarray"], list):
                    raise ValueError(f"bad array {v!r:.100}")
                return np.array(v["ndarray"], dtype=v["dtype"])
            return {k: decode(item) for k, item in v.items()}
        return v

    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise CheckpointError(f"{where}: unknown bit generator {name!r}; expected one of {', '.join(_BIT_GENERATORS)}")
    bits = _BIT_GENERATORS[name]()
    try:
        bits.state = decode(state)
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"{where}: not a valid {name} state ({e})") from None
    return np.random.Generator(bits)


class _Schema:
    """Checks of the trainer section of a checkpoint, each failure a CheckpointError naming the file."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, message: str):
        from .checkpoint import CheckpointError

        raise CheckpointError(f"{self.path}: {message}")

    def obj(self, value, where: str, keys: set[str], optional: frozenset[str] = frozenset()) -> dict:
        """``value`` as an object with ``keys``, and perhaps some of ``optional`` (keys that
        checkpoints written before they existed lack)."""
        if not isinstance(value, dict) or not keys <= set(value) <= keys | optional:
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            want = sorted(keys) + [f"{k} (optional)" for k in sorted(optional)]
            self.fail(f"{where} must be an object with keys {want}, got {got}")
        return value

    def check(self, ok: bool, where: str, want: str, value) -> None:
        if not ok:
            self.fail(f"{where} must be {want}, got {value!r:.100}")

    def permutation(self, arrays: dict, name: str) -> np.ndarray:
        a = arrays.pop(name, None)
        if a is None:
            self.fail(f"tensor trainer/{name} is missing")
        if a.ndim != 1 or a.dtype != np.int64 or not np.array_equal(np.sort(a), np.arange(len(a))):
            self.fail(f"tensor trainer/{name} must be a permutation of 0..n-1 as 1-D int64")
        return a


@dataclass
class _Run:
    """The state of one ``fit`` run that a checkpoint carries beyond the model, optimizer,
    generators and history: its first epoch, the validation split, the early-stopping
    state and, inside an epoch, the position (the epoch's order, the steps done, the
    running sums of its history record)."""

    first_epoch: int
    key: str
    validation_split: float | None
    split: np.ndarray | None
    data: dict | None
    batch_size: int
    best_value: float | None = None
    waited: int = 0
    best_state: dict | None = None
    epoch: int | None = None
    order: np.ndarray | None = None
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    # The epoch's gradient-clipping sums: [sum of pre-clip norms, steps measured, steps
    # rescaled, entries clamped, steps clamped].
    clip: list = field(default_factory=lambda: [0.0, 0, 0, 0, 0])
    # The health monitor's accumulators of the epoch, as saved (None: none saved) and as
    # parsed against the model when resuming (see Trainer._resume).
    health: dict | None = None
    health_arrays: dict | None = None

    _SCALARS = ("first_epoch", "key", "validation_split", "data", "batch_size", "best_value", "waited",
                "epoch", "step", "loss_sum", "correct", "seen", "seconds", "clip", "health")
    # Written since gradient clipping and training health exist; older checkpoints lack them.
    _OPTIONAL = frozenset({"clip", "health"})

    def start_epoch(self, epoch: int, order: np.ndarray) -> None:
        self.epoch, self.order = epoch, order
        self.step, self.loss_sum, self.correct, self.seen, self.seconds = 0, 0.0, 0, 0, 0.0
        self.clip = [0.0, 0, 0, 0, 0]

    def end_epoch(self) -> None:
        self.start_epoch(None, None)

    def state(self) -> dict:
        # The health accumulators live in the trainer's monitor; _save_checkpoint adds them.
        return {**{name: getattr(self, name) for name in self._SCALARS}, "health": None}

    def count_clipping(self, optimizer) -> None:
        """Adds the last optimizer step's clipping to the epoch's sums."""
        if optimizer.grad_norm is not None:
            self.clip[0] += optimizer.grad_norm
            self.clip[1] += 1
            self.clip[2] += int(optimizer.rescaled)
        if optimizer.clamped is not None:
            self.clip[3] += optimizer.clamped
            self.clip[4] += 1

    def clip_record(self, entries: int) -> dict:
        """The history keys of the epoch's clipping: ``grad_norm`` (the mean global gradient
        norm before clipping), ``clipped_steps`` (the fraction of steps rescaled by clip_norm)
        and ``clipped_entries`` (the fraction of gradient entries clamped by clip_value)."""
        norm_sum, norm_steps, rescaled, clamped, value_steps = self.clip
        out = {}
        if norm_steps:
            out["grad_norm"], out["clipped_steps"] = norm_sum / norm_steps, rescaled / norm_steps
        if value_steps:
            out["clipped_entries"] = clamped / (value_steps * entries)
        return out

    @classmethod
    def from_state(cls, bad: _Schema, d, arrays: dict, model_state: dict, epochs_done: int) -> _Run:
        d = bad.obj(d, "trainer.run", set(cls._SCALARS) - cls._OPTIONAL, cls._OPTIONAL)
        d = {"clip": [0.0, 0, 0, 0, 0], "health": None, **d}
        arrays = dict(arrays)
        health_arrays = {k[len("health/") :]: arrays.pop(k) for k in list(arrays) if k.startswith("health/")}
        c = bad.check
        c(_is_int(d["first_epoch"]) and 1 <= d["first_epoch"] <= epochs_done + 1, "trainer.run.first_epoch",
          f"an int in [1, {epochs_done + 1}]", d["first_epoch"])
        c(d["key"] in ("val_loss", "val_accuracy", "loss", "train_accuracy"), "trainer.run.key", "a monitored quantity",
          d["key"])
        vs = d["validation_split"]
        c(vs is None or (_is_real(vs) and 0 < vs < 1), "trainer.run.validation_split", "null or in (0, 1)", vs)
        c(d["data"] is None or isinstance(d["data"], dict), "trainer.run.data", "an object", d["data"])
        c(_is_int(d["batch_size"]) and d["batch_size"] >= 1, "trainer.run.batch_size", "an int >= 1", d["batch_size"])
        c(d["best_value"] is None or _is_real(d["best_value"]), "trainer.run.best_value", "null or a number",
          d["best_value"])
        c(_is_int(d["waited"]) and d["waited"] >= 0, "trainer.run.waited", "an int >= 0", d["waited"])
        epoch = d["epoch"]
        c(epoch is None or epoch == epochs_done + 1, "trainer.run.epoch", f"null or {epochs_done + 1}", epoch)
        for name in ("step", "correct", "seen"):
            c(_is_int(d[name]) and d[name] >= 0, f"trainer.run.{name}", "an int >= 0", d[name])
        for name in ("loss_sum", "seconds"):
            c(_is_real(d[name]), f"trainer.run.{name}", "a number", d[name])
        clip = d["clip"]
        c(isinstance(clip, list) and len(clip) == 5 and _is_real(clip[0])
          and all(_is_int(v) and v >= 0 for v in clip[1:]) and clip[2] <= clip[1], "trainer.run.clip",
          "[a number, then four ints >= 0]", clip)
        run = cls(**{name: d[name] for name in cls._SCALARS}, split=None)
        if run.health is not None and epoch is None:
            bad.fail("trainer.run holds health accumulators but no epoch")
        if run.health is None and health_arrays:
            bad.fail(f"unexpected tensor trainer/health/{sorted(health_arrays)[0]}")
        run.health_arrays = health_arrays
        if vs is not None:
            run.split = bad.permutation(arrays, "split")
        if epoch is not None:
            run.order = bad.permutation(arrays, "order")
            c(run.correct <= run.seen <= len(run.order), "trainer.run.seen", f"in [correct, {len(run.order)}]", run.seen)
        elif run.step or run.seen or run.correct or run.loss_sum or any(run.clip):
            bad.fail("trainer.run holds a position inside an epoch but no epoch")
        best = {k[len("best/") :]: arrays.pop(k) for k in list(arrays) if k.startswith("best/")}
        if best:
            if best.keys() != model_state.keys():
                bad.fail("the tensors trainer/best/* do not name the model's parameters and buffers")
            for k, a in best.items():
                if a.shape != model_state[k].shape or a.dtype != model_state[k].dtype:
                    bad.fail(f"tensor trainer/best/{k} is {a.dtype} {a.shape}, expected "
                             f"{model_state[k].dtype} {model_state[k].shape}")
            run.best_state = best
        if arrays:
            bad.fail(f"unexpected tensor trainer/{sorted(arrays)[0]}")
        return run


class Trainer:
    """Fits ``model`` (a Layer) to data with ``loss`` and ``optimizer``.

    ``seed`` drives every random choice of training (the shuffling order, the validation
    split and the dropout masks) through ``numpy.random.Generator`` objects; two trainers
    with the same seed, model weights and data produce the same run. ``verbose`` shows a
    tqdm progress bar with the running loss and accuracy; ``None`` (the default) shows it
    only when standard error is a terminal.

    ``history`` holds one dict per epoch: ``epoch``, ``loss`` (mean training loss including
    the weight penalty), ``train_accuracy`` (on the batches as they were trained),
    ``val_loss`` and ``val_accuracy`` (when there is validation data), ``lr`` (the optimizer's
    learning rate at the epoch's last step) and ``seconds``; with gradient clipping also
    ``grad_norm``, ``clipped_steps`` and ``clipped_entries`` (see ``fit``), and whatever keys
    callbacks add. ``stop_training``, set by a callback, ends ``fit`` after the current epoch.

    ``health=True`` (or a :class:`fastlayers.health.Settings`) adds to every epoch's record a
    ``health`` entry: per layer, the fraction of dead ReLU units, of saturated sigmoid and
    tanh outputs, and each weight's mean update-to-weight ratio over the epoch's steps
    (``fastlayers.health``); a verbose ``fit`` prints it under the epoch's line, flagging
    layers with over half their units dead or saturated and update ratios outside [1e-4,
    1e-2]. ``trainer.health`` is then the :class:`fastlayers.health.Monitor`. It changes no
    trained number, and a resumed run's figures equal the uninterrupted run's.

    ``profile=True`` times every training step layer by layer (``fastlayers.profile``):
    ``trainer.profile`` then accumulates per-layer forward and backward times, FLOP rates and
    im2col workspace over all steps of ``fit`` (``trainer.profile.table()``,
    ``.as_dict()``), and a verbose ``fit`` prints the table at the end. The numbers trained
    are the same either way. Without it ``trainer.profile`` is None.

    The trainer sets ``model.needs_input_grad = False``: nothing uses the gradient with
    respect to the input images, so the first layer does not compute it.

    Every training step checks, before the optimizer update, that its loss and every
    gradient are finite, and otherwise raises :class:`NonFiniteError` naming the step and the
    first parameter whose gradient is not, with the update not applied and the BatchNorm
    running statistics put back: the model and optimizer are exactly as before the step.
    (The step's dropout masks have been drawn, so the generators have moved on.) The check
    reads every gradient once: about 2% of a step of the BatchNorm MLP and 0.8% of one of
    SimpleConvNet (``bench/step_guard.py``); ``check_finite=False`` turns it off, and then only a
    non-finite loss is reported, after the update has been applied.

    ``augment=Augment(...)`` (``fastlayers.augment``) warps every training batch of ``fit``
    with random shifts, rotations, scalings and flips before its step; validation data,
    ``evaluate``, ``predict`` and a direct ``train_step`` see the images as given. Its
    parameters come from a generator of their own, derived from ``seed`` without drawing
    from the others, so turning augmentation on leaves the shuffling and dropout streams as
    they were; checkpoints save that generator and the settings, and resume continues both.
    """

    def __init__(
        self, model, loss, optimizer, seed: int | None = 0, verbose: bool | None = None, profile: bool = False,
        check_finite: bool = True, augment=None, health: bool | Settings = False,
    ):
        from .augment import Augment

        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(
                f"Trainer: augment must be a fastlayers.augment.Augment or None, got {type(augment).__name__}"
            )
        self.model = model
        # For a CNN the input gradient is a whole GEMM and col2im per step that nobody reads.
        model.needs_input_grad = False
        self.loss = loss
        self.optimizer = optimizer
        self.verbose = verbose
        if profile and getattr(optimizer, "needs_closure", False):
            raise TypeError(f"Trainer: profile=True times one forward and backward per step, and a "
                            f"{type(optimizer).__name__} step runs several; train without profile")
        self.profile: Profile | None = Profile(model, loss, optimizer) if profile else None
        if not isinstance(health, (bool, Settings)):
            raise TypeError(f"Trainer: health must be a bool or a fastlayers.health.Settings, got {type(health).__name__}")
        if health and getattr(optimizer, "needs_closure", False):
            raise TypeError(f"Trainer: health=True observes one forward pass and one update per step, and a "
                            f"{type(optimizer).__name__} step runs several forward passes; train without health")
        self.health: Monitor | None = (
            Monitor(model, optimizer, health if isinstance(health, Settings) else None) if health else None)
        self.history: list[dict] = []
        self.rng = as_generator(seed)
        # Dropout masks come from their own stream so that changing the batch order
        # does not change which masks are drawn and vice versa.
        shuffle_seed, dropout_seed = self.rng.integers(2**63, size=2)
        self._shuffle_rng = np.random.default_rng(int(shuffle_seed))
        model.set_rng(np.random.default_rng(int(dropout_seed)))
        self.augment = augment
        # Seeded from both draws above rather than by a third draw, which would move self.rng.
        self._augment_rng = np.random.default_rng([int(shuffle_seed), int(dropout_seed)])
        self.stop_reason: str | None = None
        # Set by a callback to end the run after the current epoch; _stop_by names who set it.
        self.stop_training = False
        self._stop_by: str | None = None
        self._callbacks: list[Callback] = []
        self.check_finite = bool(check_finite)
        self._buffers = _BufferSnapshot(model)
        self._where: tuple[int, int] | None = None  # (epoch, step) while fit runs a step

    # -- one step ------------------------------------------------------------------------
    def train_step(self, x: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
        """Forward, backward and one optimizer update on one batch; returns (loss, scores).

        Raises :class:`NonFiniteError`, with nothing updated, when the loss or a gradient is
        not finite. With ``check_finite=False`` only the loss is checked, after the update."""
        if getattr(self.optimizer, "needs_closure", False):
            return self._closure_step(x, t)
        health = self.health
        activations, ratios = (False, False) if health is None else health.wants(
            None if self._where is None else self._where[1] - 1)
        if not (activations or ratios):
            return self._step(x, t, None)
        with health.watch(activations, ratios):
            return self._step(x, t, health)

    def _step(self, x, t, health: Monitor | None):
        checked = self.check_finite
        if checked:
            self._buffers.take()

        def before_update(loss):
            if checked:
                self._check_finite(loss)
            if health is not None:
                health.before_update()

        if self.profile is not None:
            loss, scores = self.profile.train_step(x, t, before_update=before_update)
        else:
            loss, scores = self._forward_backward(x, t)
            before_update(loss)
            self.optimizer.step()
        if health is not None:
            health.after_update()
        if not checked and not math.isfinite(loss):
            raise FloatingPointError(
                f"the training loss is {loss} at {self._at()}; the update has been applied (check_finite=False)"
            )
        return loss, scores

    def _forward_backward(self, x, t) -> tuple[float, np.ndarray]:
        """Zeroed gradients, then the forward pass, the loss with the weight penalty and the
        backward pass of one batch; returns (loss, scores)."""
        self.optimizer.zero_grad()
        scores = self.model.forward(x, train=True)
        loss = self.loss.forward(scores, t) + self.optimizer.penalty()
        self.model.backward(self.loss.backward())
        return loss, scores

    def _closure_step(self, x, t):
        """One step of an optimizer that evaluates the batch's loss several times (LBFGS):
        its ``step`` gets a closure running forward and backward on the batch. The loss and
        scores returned are those of the first call, before any update, which is also the
        one the non-finite check reads (LBFGS itself never accepts a non-finite point). Every
        call runs with the first call's dropout masks, so the closure is one function of the
        weights; the generators end where one forward pass leaves them."""
        gens = [g for name, g in self._generators().items() if name.startswith("module.")]
        start = [g.bit_generator.state for g in gens]
        first: dict = {}
        if self.check_finite:
            self._buffers.take()

        def closure():
            if first:
                for g, state in zip(gens, start):
                    g.bit_generator.state = state
            loss, scores = self._forward_backward(x, t)
            if not first:
                first["scores"] = scores
                if self.check_finite:
                    self._check_finite(loss)
            return loss

        loss = self.optimizer.step(closure)
        return float(loss), first["scores"]

    def _at(self) -> str:
        if self._where is None:
            return f"optimizer step {self.optimizer.steps + 1}"
        return f"epoch {self._where[0]}, step {self._where[1]}"

    def _check_finite(self, loss: float) -> None:
        loss_ok = math.isfinite(loss)
        bad = self.optimizer.nonfinite_gradient()
        if loss_ok and bad is None:
            return
        self._buffers.restore()
        name = layer = None
        if bad is not None:
            p = self.optimizer.params[bad]
            names = {id(q): n for n, q in self.model.named_parameters()}
            name = names.get(id(p))
            layer = _layer_of(self.model, name) if name is not None else None
            g = p.grad
            nan, inf = int(np.isnan(g).sum()), int(np.isinf(g).sum())
            if name is None:
                what = f"optimizer.params[{bad}] ({p.name!r}, not in the model)"
            else:
                what = f"parameter {name!r}" + (f" of {layer}" if layer else "")
            grads = f"the gradient of {what} has {nan} NaN and {inf} infinite entries of {g.size}"
        else:
            grads = "every gradient is finite"
        epoch, step = self._where if self._where is not None else (None, None)
        raise NonFiniteError(
            f"non-finite training step at {self._at()}: the loss is {loss}"
            f"{'' if loss_ok else ' (not finite)'} and {grads}; the update was not applied, so the "
            "weights, optimizer state and BatchNorm statistics are those from before this step "
            "(lower the learning rate, or look for NaN or infinity in the inputs)",
            epoch=epoch, step=step, optimizer_step=self.optimizer.steps + 1, loss=loss, parameter=name, layer=layer,
        )

    # -- the loop ------------------------------------------------------------------------
    def fit(
        self,
        x: np.ndarray,
        t: np.ndarray,
        epochs: int = 1,
        batch_size: int = 100,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        validation_split: float | None = None,
        patience: int | None = None,
        restore_best: bool = True,
        monitor: str = "val_loss",
        shuffle: bool = True,
        lr_schedule=None,
        checkpoint=None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        callbacks=None,
    ) -> list[dict]:
        """Trains for ``epochs`` passes over ``(x, t)``; returns ``history``.

        Each epoch visits every sample exactly once in a fresh random order (the textbook
        samples batches with replacement instead); the last batch holds the remainder when
        ``batch_size`` does not divide the sample count; ``shuffle=False`` keeps the given
        order instead (for comparisons that must feed identical batches). ``lr_schedule`` is a
        schedule of ``fastlayers.schedules`` (``StepDecay``, ``ExponentialDecay``,
        ``CosineAnnealing``, per epoch or per step, or ``ReduceOnPlateau``) or a function of
        the epoch number (1, 2, ...; counted over every ``fit`` of this trainer) that sets
        ``optimizer.lr`` before each epoch, e.g. ``step_decay(1e-3, every=10)``; each history
        record keeps the ``lr`` of the epoch's last step. ``validation_split`` holds out that
        fraction of ``(x, t)`` (chosen at random, once) as validation data.

        ``callbacks``: a list of ``fastlayers.Callback`` whose hooks run at the start and end of
        the fit, of each epoch and of each step (see ``fastlayers.callbacks``); the
        ``lr_schedule`` runs first, as if it led the list. A callback may add keys to the
        epoch's record and end the run after the current epoch with
        ``trainer.stop_training = True``. With an optimizer that clips gradients, each record
        also holds ``grad_norm`` and ``clipped_steps`` (``clip_norm``: the epoch's mean global
        gradient norm before clipping, the fraction of its steps rescaled) and
        ``clipped_entries`` (``clip_value``: the fraction of gradient entries clamped).

        Early stopping: with ``patience`` set, training stops once that many consecutive
        epochs bring no improvement of ``monitor`` (``"val_loss"`` or ``"val_accuracy"``; without
        validation data, the training loss or accuracy) and, with ``restore_best``, the
        model is put back to the weights of its best epoch.

        Checkpoints: with ``checkpoint=PATH`` the whole training state is written (atomically,
        see ``fastlayers.checkpoint``) at the end of every epoch, and also after every
        ``checkpoint_every`` optimizer steps inside an epoch if that is set: the model, the
        optimizer, every random generator, the position in the run (epoch, step, the epoch's
        order of samples, the running loss and accuracy), the validation split, the history,
        the early-stopping state and the state of every callback that has one (the
        ``ReduceOnPlateau`` schedule's included). ``resume=True`` continues from that file when it exists
        (and starts afresh when it does not, so the same call serves the first run and every
        restart): the model, optimizer and generators are overwritten with the saved ones, and
        the run goes on exactly as if it had not been interrupted, bit for bit (the optimizer's
        settings, its learning rate included, are the saved ones; an ``lr_schedule`` sets the
        rate again from the next epoch on). ``epochs``
        then counts the whole run, the epochs done before the checkpoint included: the
        same call finishes the run, and a larger ``epochs`` extends it. A run that stopped
        early stays stopped. The data must be the same (checked with a CRC-32 of ``x`` and
        ``t``), as must ``validation_split`` and ``monitor``, and ``batch_size`` when the
        checkpoint is from inside an epoch. A damaged file, one that does not fit the model or
        the optimizer, or a call that does not continue its run raises ``CheckpointError``
        (a ``ValueError``) with nothing changed.
        """
        _check_xt(x, t, "fit")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"fit: epochs must be an int >= 0, got {epochs!r}")
        _check_batch_size(batch_size, "fit")
        if validation is not None and validation_split is not None:
            raise ValueError("fit: pass validation or validation_split, not both")
        if validation_split is not None:
            if not 0 < validation_split < 1:
                raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split}")
            n_val = int(round(len(x) * validation_split))
            if n_val < 1 or n_val >= len(x):
                raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves an empty set")
        if validation is not None:
            _check_xt(*validation, "fit validation")
            if len(validation[0]) == 0:
                raise ValueError("fit: the validation data holds no samples")
        if len(x) == 0:
            raise ValueError("fit: no training samples")
        if lr_schedule is not None and not callable(lr_schedule) and not isinstance(lr_schedule, Callback):
            raise TypeError(f"fit: lr_schedule must be a schedule or a function of the epoch number, got "
                            f"{type(lr_schedule).__name__}")
        if callbacks is None:
            callbacks = []
        if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"fit: callbacks must be a list of Callback, got {type(callbacks).__name__}")
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks[{i}] must be a fastlayers.Callback, got {type(cb).__name__}")
        if lr_schedule is not None:
            callbacks = [lr_schedule if isinstance(lr_schedule, Callback) else FunctionOfEpoch(lr_schedule),
                         *callbacks]
        if len({id(cb) for cb in callbacks}) != len(callbacks):
            raise ValueError("fit: the same callback is given twice (in callbacks, or as lr_schedule and in callbacks)")
        if monitor not in ("val_loss", "val_accuracy"):
            raise ValueError(f"fit: monitor must be 'val_loss' or 'val_accuracy', got {monitor!r}")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"fit: patience must be an int >= 1 or None, got {patience!r}")
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"fit: checkpoint must be a path, got {type(checkpoint).__name__}")
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1
        ):
            raise ValueError(f"fit: checkpoint_every must be an int >= 1 or None, got {checkpoint_every!r}")
        if checkpoint is None and (resume or checkpoint_every is not None):
            raise ValueError("fit: resume and checkpoint_every need checkpoint=PATH")

        key = monitor if validation is not None or validation_split is not None else (
            "loss" if monitor == "val_loss" else "train_accuracy")
        # The buffers may have been replaced since the trainer was built.
        self._buffers = _BufferSnapshot(self.model)
        path = Path(checkpoint) if checkpoint is not None else None
        data = _fingerprint(x, t) if path is not None else None
        self._callbacks = list(callbacks)
        run = None
        if resume and path.exists():
            run = self._resume(path, data, len(x), batch_size, validation_split, key)
        if run is None:
            split = self._shuffle_rng.permutation(len(x)).astype(np.int64) if validation_split is not None else None
            run = _Run(first_epoch=len(self.history) + 1, key=key, validation_split=validation_split, split=split,
                       data=data, batch_size=batch_size)
            self.stop_reason = None
            self.stop_training, self._stop_by = False, None
        if run.split is not None:
            n_val = int(round(len(x) * run.validation_split))
            validation = (x[run.split[:n_val]], t[run.split[:n_val]])
            x, t = x[run.split[n_val:]], t[run.split[n_val:]]
        run.batch_size = batch_size
        better = (lambda a, b: a < b) if key.endswith("loss") else (lambda a, b: a > b)
        last_epoch = run.first_epoch + epochs - 1
        first = run.epoch if run.epoch is not None else len(self.history) + 1

        self._hook("on_fit_begin")
        for epoch in range(first, last_epoch + 1):
            if self.stop_reason is not None:
                break
            if run.epoch is None:
                self._hook("on_epoch_begin", epoch)
                order = self._shuffle_rng.permutation(len(x)) if shuffle else np.arange(len(x))
                run.start_epoch(epoch, order.astype(np.int64, copy=False))
                if self.health is not None:
                    self.health.reset()
            record = self._train_epoch(x, t, run, last_epoch, path, checkpoint_every)
            if validation is not None:
                val = self.evaluate(*validation, batch_size=max(batch_size, 256))
                record["val_loss"], record["val_accuracy"] = val["loss"], val["accuracy"]
            self.history.append(record)
            self._hook("on_epoch_end", record)
            self._report(record)
            if patience is not None:
                value = record[key]
                if run.best_value is None or better(value, run.best_value):
                    run.best_value, run.waited = value, 0
                    if restore_best:
                        run.best_state = self.model.state_dict()
                else:
                    run.waited += 1
                    if run.waited >= patience:
                        self.stop_reason = f"no improvement of {key} for {run.waited} epochs"
                        if run.best_state is not None:
                            self.model.load_state_dict(run.best_state)
            if self.stop_training and self.stop_reason is None:
                self.stop_reason = f"stop_training set by {self._stop_by or 'a callback'} in epoch {epoch}"
            if path is not None:
                self._save_checkpoint(path, run)
        self._hook("on_fit_end")
        if self.profile is not None and self._show():
            print(self.profile.table(), file=sys.stderr)
        return self.history

    def _train_epoch(self, x, t, run: _Run, last_epoch: int, path: Path | None, every: int | None) -> dict:
        """The steps of ``run``'s current epoch from ``run.step`` on; returns its history record."""
        batch_size, order, epoch = run.batch_size, run.order, run.epoch
        steps = -(-len(x) // batch_size)
        bar = self._progress(steps, f"epoch {epoch}/{last_epoch}", run.step)
        start = time.perf_counter()
        self.model.train()
        for s in range(run.step, steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            xb, tb = x[idx], t[idx]
            self._hook("on_batch_begin", s + 1)
            if self.augment is not None:
                xb = self.augment(xb, self._augment_rng)
            self._where = (epoch, s + 1)
            try:
                loss, scores = self.train_step(xb, tb)
            finally:
                self._where = None
            run.loss_sum += loss * len(idx)
            run.correct += int(round(accuracy(scores, tb) * len(idx)))
            run.seen += len(idx)
            run.step = s + 1
            run.count_clipping(self.optimizer)
            self._hook("on_batch_end", s + 1, loss)
            if bar is not None:
                bar.set_postfix(loss=f"{run.loss_sum / run.seen:.4f}", acc=f"{run.correct / run.seen:.3f}", refresh=False)
                bar.update(1)
            # The last step of an epoch is followed by the epoch's own checkpoint.
            if every is not None and s + 1 < steps and self.optimizer.steps % every == 0:
                now = time.perf_counter()
                run.seconds += now - start
                start = now
                self._save_checkpoint(path, run)
        run.seconds += time.perf_counter() - start
        if bar is not None:
            bar.close()
        record = {"epoch": epoch, "loss": float(run.loss_sum / run.seen), "train_accuracy": run.correct / run.seen,
                  "lr": self.optimizer.lr, "seconds": run.seconds}
        record.update(run.clip_record(sum(p.data.size for p in self.optimizer.params)))
        if self.health is not None:
            record["health"] = self.health.record()
            self.health.reset()
        run.end_epoch()
        return record

    def _hook(self, name: str, *args) -> None:
        """Calls hook ``name`` of every callback in order, noting which one asks to stop."""
        for cb in self._callbacks:
            getattr(cb, name)(self, *args)
            if self.stop_training and self._stop_by is None:
                self._stop_by = f"{type(cb).__name__}.{name}"

    # -- checkpoints ---------------------------------------------------------------------
    def _generators(self) -> dict[str, np.random.Generator]:
        """Every random generator of the run, by the name a checkpoint stores it under."""
        gens = {"seed": self.rng, "shuffle": self._shuffle_rng}
        if self.augment is not None:
            gens["augment"] = self._augment_rng
        for i, m in enumerate(self.model.modules()):
            if isinstance(getattr(m, "rng", None), np.random.Generator):
                gens[f"module.{i}"] = m.rng
        return gens

    def _save_checkpoint(self, path: Path, run: _Run) -> None:
        from .checkpoint import _write

        state = {
            "rng": {name: _rng_state(g) for name, g in self._generators().items()},
            "history": self.history,
            "stop_reason": self.stop_reason,
            "run": run.state(),
            "callbacks": [{"type": type(cb).__name__, "state": st} for cb, st in self._callback_states()],
            "stop_training": (self._stop_by or "a callback") if self.stop_training else None,
        }
        if self.augment is not None:
            state["augment"] = self.augment.config()
        arrays = {}
        if run.order is not None:
            arrays["order"] = run.order
            if self.health is not None:
                state["run"]["health"], counts = self.health.state()
                arrays.update({"health/" + key: a for key, a in counts.items()})
        if run.split is not None:
            arrays["split"] = run.split
        if run.best_state is not None:
            arrays.update({"best/" + name: a for name, a in run.best_state.items()})
        _write(path, self.model, self.optimizer, trainer=(state, arrays))

    def _callback_states(self) -> list[tuple[Callback, object]]:
        """The callbacks that have state, with it."""
        out = []
        for cb in self._callbacks:
            st = cb.state_dict()
            if st is not None:
                # A copy: a callback may hand out its own objects, which loading would then change.
                out.append((cb, copy.deepcopy(st)))
        return out

    def _resume(self, path: Path, data: dict, samples: int, batch_size: int, validation_split, key: str) -> _Run:
        """Reads the training checkpoint at ``path``, checks all of it against this trainer and
        this call of ``fit``, and only then puts it in place; returns the run to continue."""
        from .checkpoint import CheckpointError, read

        contents = read(path)
        state = contents.json("trainer")
        if state is None:
            raise CheckpointError(
                f"{path}: holds no training state (it was written by fastlayers.save, not by Trainer.fit(checkpoint=...))"
            )
        if contents.architecture() != self.model.config():
            raise CheckpointError(f"{path}: the checkpoint's architecture differs from the trainer's model")
        model_state = contents.check_model_state(self.model)
        optimizer_state = contents.optimizer_state()
        if optimizer_state is None:
            raise CheckpointError(f"{path}: holds no optimizer state")
        bad = _Schema(path)
        # Checkpoints written before callbacks and augmentation existed lack those keys and
        # still load; only an augmented run writes "augment".
        state = bad.obj(state, "trainer", {"rng", "history", "stop_reason", "run"},
                        frozenset({"callbacks", "stop_training", "augment"}))
        augment = self.augment.config() if self.augment is not None else None
        if state.get("augment") != augment:
            raise CheckpointError(
                f"fit: resume from {path}: the run was trained with augment {state.get('augment')!r}, this trainer "
                f"has {augment!r}"
            )
        gens = self._generators()
        saved = bad.obj(state["rng"], "trainer.rng", set(gens))
        new_gens = {name: _rng_from_state(saved[name], f"{path}: trainer.rng.{name}") for name in gens}
        history = state["history"]
        if not (isinstance(history, list) and all(isinstance(h, dict) and _is_int(h.get("epoch")) for h in history)):
            raise CheckpointError(f"{path}: trainer.history must be a list of epoch records")
        stop_reason = state["stop_reason"]
        if stop_reason is not None and not isinstance(stop_reason, str):
            raise CheckpointError(f"{path}: trainer.stop_reason must be a string or null")
        run = _Run.from_state(bad, state["run"], contents.trainer_arrays(), model_state, len(history))
        saved_callbacks = state.get("callbacks", [])
        if not (isinstance(saved_callbacks, list)
                and all(isinstance(e, dict) and set(e) == {"type", "state"} for e in saved_callbacks)):
            raise CheckpointError(f"{path}: trainer.callbacks must be a list of {{type, state}} objects")
        stop_training = state.get("stop_training")
        if stop_training is not None and not isinstance(stop_training, str):
            raise CheckpointError(f"{path}: trainer.stop_training must be a string or null")

        # The call must continue the same run.
        if run.data != data:
            raise CheckpointError(
                f"fit: resume from {path}: the training data differ from the run's (checkpoint {run.data}, "
                f"given {data})"
            )
        if run.validation_split != validation_split:
            raise CheckpointError(
                f"fit: resume from {path}: validation_split is {validation_split!r} but the run used "
                f"{run.validation_split!r}"
            )
        if run.key != key:
            raise CheckpointError(
                f"fit: resume from {path}: the run's early stopping monitors {run.key!r}, this call {key!r}"
            )
        if run.split is not None and len(run.split) != samples:
            raise CheckpointError(f"{path}: trainer/split holds {len(run.split)} indices for {samples} samples")
        n_train = samples - (int(round(samples * validation_split)) if validation_split is not None else 0)
        if run.order is not None:
            if len(run.order) != n_train:
                raise CheckpointError(f"{path}: trainer/order holds {len(run.order)} indices for {n_train} samples")
            if batch_size != run.batch_size:
                raise CheckpointError(
                    f"fit: resume from {path}: the checkpoint is inside an epoch trained with batch_size "
                    f"{run.batch_size}; got batch_size {batch_size}"
                )
            if run.seen != min(run.step * batch_size, n_train):
                raise CheckpointError(f"{path}: trainer.run.seen ({run.seen}) does not match its step ({run.step})")

        mine = self._callback_states()
        if [type(cb).__name__ for cb, _ in mine] != [e["type"] for e in saved_callbacks]:
            raise CheckpointError(
                f"fit: resume from {path}: the run's callbacks with state are "
                f"{[e['type'] for e in saved_callbacks]}, this call's {[type(cb).__name__ for cb, _ in mine]}"
            )

        health = None
        if self.health is not None and run.order is not None:
            if run.health is None:
                # The run was saved without health: the figures of this epoch will cover the
                # steps from here on (their "steps" says how many).
                health = (0, {}, {})
            else:
                health = self.health.parse_state(run.health, run.health_arrays, bad.fail)

        # Everything is checked; the callbacks and the optimizer validate themselves, so they go
        # first, and the callbacks are put back if any of them, or the optimizer, refuses.
        loaded = []
        try:
            for (cb, before), entry in zip(mine, saved_callbacks):
                try:
                    cb.load_state_dict(entry["state"])
                except (TypeError, ValueError, KeyError, NotImplementedError) as e:
                    raise CheckpointError(f"{path}: the state of callback {entry['type']} does not fit: {e}") from None
                loaded.append((cb, before))
            try:
                self.optimizer.load_state_dict(optimizer_state)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: optimizer state does not fit: {e}") from None
        except CheckpointError:
            for cb, before in loaded:
                cb.load_state_dict(before)
            raise
        self.model.load_state_dict(model_state)
        self.rng, self._shuffle_rng = new_gens.pop("seed"), new_gens.pop("shuffle")
        if self.augment is not None:
            self._augment_rng = new_gens.pop("augment")
        modules = self.model.modules()
        for name, g in new_gens.items():
            modules[int(name.split(".")[1])].rng = g
        self.history = history
        self.stop_reason = stop_reason
        self.stop_training, self._stop_by = stop_training is not None, stop_training
        if health is not None:
            self.health.load_state(health)
        return run

    def _show(self) -> bool:
        return sys.stderr.isatty() if self.verbose is None else bool(self.verbose)

    def _progress(self, steps: int, desc: str, initial: int = 0):
        if not self._show():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=steps, initial=initial, desc=desc, unit="batch", leave=True, dynamic_ncols=True)

    def _report(self, record: dict) -> None:
        if not self._show():
            return
        parts = [f"epoch {record['epoch']}", f"loss {record['loss']:.4f}", f"train acc {record['train_accuracy']:.4f}"]
        if "val_accuracy" in record:
            parts += [f"val loss {record['val_loss']:.4f}", f"val acc {record['val_accuracy']:.4f}"]
        parts.append(f"{record['seconds']:.1f} s")
        print(" | ".join(parts), file=sys.stderr)
        if "health" in record and self.health is not None:
            print("  " + format_health(record["health"], self.health.settings), file=sys.stderr)

    # -- inference -----------------------------------------------------------------------
    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores (pre-softmax outputs) for ``x``, in inference mode, batch by batch; the model's
        own train/eval modes are restored afterwards."""
        _check_batch_size(batch_size, "predict")
        if len(x) == 0:
            raise ValueError("predict: no samples")
        return inference(self.model, x, batch_size)

    def evaluate(self, x: np.ndarray, t: np.ndarray, batch_size: int = 256) -> dict:
        """Mean loss (without the weight penalty) and accuracy on ``(x, t)`` in inference mode."""
        _check_xt(x, t, "evaluate")
        _check_batch_size(batch_size, "evaluate")
        scores = self.predict(x, batch_size)
        total = 0.0
        for i in range(0, len(x), batch_size):
            sl = slice(i, i + batch_size)
            total += self.loss.forward(scores[sl], t[sl]) * len(scores[sl])
        return {"loss": total / len(x), "accuracy": accuracy(scores, t)}
