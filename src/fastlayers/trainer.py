"""Trainer: the textbook's training loop, with shuffling, validation and early stopping."""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from .init import as_generator
from .profile import Profile


def accuracy(scores: np.ndarray, t: np.ndarray) -> float:
    """Fraction of rows whose arg-max matches ``t`` (labels, or one-hot/soft targets)."""
    labels = t if t.ndim == 1 else np.argmax(t, axis=1)
    return float(np.mean(np.argmax(scores, axis=1) == labels)) if len(labels) else math.nan


def step_decay(lr: float, every: int, gamma: float = 0.1):
    """A learning-rate schedule for ``Trainer.fit``: ``lr`` for the first ``every`` epochs,
    then ``lr * gamma``, then ``lr * gamma**2``, ... (PyTorch's StepLR)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"step_decay: every must be an int >= 1, got {every!r}")
    if not (lr >= 0 and gamma > 0):
        raise ValueError(f"step_decay: need lr >= 0 and gamma > 0, got lr={lr!r}, gamma={gamma!r}")
    return lambda epoch: lr * gamma ** ((epoch - 1) // every)


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


def _check_xt(x, t, what: str) -> None:
    if not isinstance(x, np.ndarray) or not isinstance(t, np.ndarray):
        raise TypeError(f"{what}: x and t must be numpy arrays")
    if len(x) != len(t):
        raise ValueError(f"{what}: x has {len(x)} samples but t has {len(t)}")


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
    learning rate during the epoch) and ``seconds``.

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
    (The step's dropout masks have been drawn, so the generators have moved on.)
    """

    def __init__(
        self, model, loss, optimizer, seed: int | None = 0, verbose: bool | None = None, profile: bool = False
    ):
        self.model = model
        # For a CNN the input gradient is a whole GEMM and col2im per step that nobody reads.
        model.needs_input_grad = False
        self.loss = loss
        self.optimizer = optimizer
        self.verbose = verbose
        self.profile: Profile | None = Profile(model, loss, optimizer) if profile else None
        self.history: list[dict] = []
        self.rng = as_generator(seed)
        # Dropout masks come from their own stream so that changing the batch order
        # does not change which masks are drawn and vice versa.
        shuffle_seed, dropout_seed = self.rng.integers(2**63, size=2)
        self._shuffle_rng = np.random.default_rng(int(shuffle_seed))
        model.set_rng(np.random.default_rng(int(dropout_seed)))
        self.stop_reason: str | None = None
        self._buffers = _BufferSnapshot(model)
        self._where: tuple[int, int] | None = None  # (epoch, step) while fit runs a step

    # -- one step ------------------------------------------------------------------------
    def train_step(self, x: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
        """Forward, backward and one optimizer update on one batch; returns (loss, scores).

        Raises :class:`NonFiniteError`, with nothing updated, when the loss or a gradient is
        not finite."""
        self._buffers.take()
        if self.profile is not None:
            return self.profile.train_step(x, t, before_update=self._check_finite)
        self.optimizer.zero_grad()
        scores = self.model.forward(x, train=True)
        loss = self.loss.forward(scores, t) + self.optimizer.penalty()
        self.model.backward(self.loss.backward())
        self._check_finite(loss)
        self.optimizer.step()
        return loss, scores

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
        at = f"epoch {epoch}, step {step}" if epoch is not None else f"optimizer step {self.optimizer.steps + 1}"
        raise NonFiniteError(
            f"non-finite training step at {at}: the loss is {loss}"
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
    ) -> list[dict]:
        """Trains for ``epochs`` passes over ``(x, t)``; returns ``history``.

        Each epoch visits every sample exactly once in a fresh random order (the textbook
        samples batches with replacement instead); the last batch holds the remainder when
        ``batch_size`` does not divide the sample count; ``shuffle=False`` keeps the given
        order instead (for comparisons that must feed identical batches). ``lr_schedule``, a
        function of the epoch number (1, 2, ...; counted over every ``fit`` of this trainer),
        sets ``optimizer.lr`` before each epoch, e.g. ``step_decay(1e-3, every=10)``; each
        history record keeps the ``lr`` it trained with. ``validation_split`` holds out that
        fraction of ``(x, t)`` (chosen at random, once) as validation data.

        Early stopping: with ``patience`` set, training stops once that many consecutive
        epochs bring no improvement of ``monitor`` (``"val_loss"`` or ``"val_accuracy"``; without
        validation data, the training loss or accuracy) and, with ``restore_best``, the
        model is put back to the weights of its best epoch.
        """
        _check_xt(x, t, "fit")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"fit: epochs must be an int >= 0, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"fit: batch_size must be an int >= 1, got {batch_size!r}")
        if validation is not None and validation_split is not None:
            raise ValueError("fit: pass validation or validation_split, not both")
        if validation_split is not None:
            if not 0 < validation_split < 1:
                raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split}")
            n_val = int(round(len(x) * validation_split))
            if n_val < 1 or n_val >= len(x):
                raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves an empty set")
            order = self._shuffle_rng.permutation(len(x))
            validation = (x[order[:n_val]], t[order[:n_val]])
            x, t = x[order[n_val:]], t[order[n_val:]]
        if validation is not None:
            _check_xt(*validation, "fit validation")
        if len(x) == 0:
            raise ValueError("fit: no training samples")
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError(f"fit: lr_schedule must be a function of the epoch number, got {type(lr_schedule).__name__}")
        if monitor not in ("val_loss", "val_accuracy"):
            raise ValueError(f"fit: monitor must be 'val_loss' or 'val_accuracy', got {monitor!r}")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"fit: patience must be an int >= 1 or None, got {patience!r}")

        key = monitor if validation is not None else ("loss" if monitor == "val_loss" else "train_accuracy")
        better = (lambda a, b: a < b) if key.endswith("loss") else (lambda a, b: a > b)
        best_value, best_state, waited = None, None, 0
        # The buffers may have been replaced since the trainer was built.
        self._buffers = _BufferSnapshot(self.model)
        self.stop_reason = None
        first_epoch = len(self.history) + 1

        for epoch in range(first_epoch, first_epoch + epochs):
            if lr_schedule is not None:
                self.optimizer.lr = lr_schedule(epoch)
            record = self._train_epoch(x, t, batch_size, epoch, first_epoch + epochs - 1, shuffle)
            if validation is not None:
                val = self.evaluate(*validation, batch_size=max(batch_size, 256))
                record["val_loss"], record["val_accuracy"] = val["loss"], val["accuracy"]
            self.history.append(record)
            self._report(record)
            if patience is None:
                continue
            value = record[key]
            if best_value is None or better(value, best_value):
                best_value, waited = value, 0
                if restore_best:
                    best_state = self.model.state_dict()
            else:
                waited += 1
                if waited >= patience:
                    self.stop_reason = f"no improvement of {key} for {waited} epochs"
                    break
        if best_state is not None and self.stop_reason is not None:
            self.model.load_state_dict(best_state)
        if self.profile is not None and self._show():
            print(self.profile.table(), file=sys.stderr)
        return self.history

    def _train_epoch(self, x, t, batch_size, epoch, last_epoch, shuffle=True) -> dict:
        n = len(x)
        order = self._shuffle_rng.permutation(n) if shuffle else np.arange(n)
        steps = -(-n // batch_size)
        bar = self._progress(steps, f"epoch {epoch}/{last_epoch}")
        total_loss, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        self.model.train()
        for s in range(steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            xb, tb = x[idx], t[idx]
            self._where = (epoch, s + 1)
            try:
                loss, scores = self.train_step(xb, tb)
            finally:
                self._where = None
            total_loss += loss * len(idx)
            correct += int(round(accuracy(scores, tb) * len(idx)))
            seen += len(idx)
            if bar is not None:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
                bar.update(1)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        return {"epoch": epoch, "loss": total_loss / seen, "train_accuracy": correct / seen, "lr": self.optimizer.lr,
                "seconds": seconds}

    def _show(self) -> bool:
        return sys.stderr.isatty() if self.verbose is None else bool(self.verbose)

    def _progress(self, steps: int, desc: str):
        if not self._show():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=steps, desc=desc, unit="batch", leave=True, dynamic_ncols=True)

    def _report(self, record: dict) -> None:
        if not self._show():
            return
        parts = [f"epoch {record['epoch']}", f"loss {record['loss']:.4f}", f"train acc {record['train_accuracy']:.4f}"]
        if "val_accuracy" in record:
            parts += [f"val loss {record['val_loss']:.4f}", f"val acc {record['val_accuracy']:.4f}"]
        parts.append(f"{record['seconds']:.1f} s")
        print(" | ".join(parts), file=sys.stderr)

    # -- inference -----------------------------------------------------------------------
    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores (pre-softmax outputs) for ``x``, in inference mode, batch by batch; the model's
        own train/eval modes are restored afterwards."""
        if len(x) == 0:
            raise ValueError("predict: no samples")
        modules = self.model.modules()
        modes = [m.training for m in modules]
        self.model.eval()
        try:
            return np.concatenate(
                [self.model.forward(x[i : i + batch_size], train=False) for i in range(0, len(x), batch_size)]
            )
        finally:
            for m, mode in zip(modules, modes):
                m.training = mode

    def evaluate(self, x: np.ndarray, t: np.ndarray, batch_size: int = 256) -> dict:
        """Mean loss (without the weight penalty) and accuracy on ``(x, t)`` in inference mode."""
        _check_xt(x, t, "evaluate")
        scores = self.predict(x, batch_size)
        total = 0.0
        for i in range(0, len(x), batch_size):
            sl = slice(i, i + batch_size)
            total += self.loss.forward(scores[sl], t[sl]) * len(scores[sl])
        return {"loss": total / len(x), "accuracy": accuracy(scores, t)}
