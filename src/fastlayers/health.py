"""Training health: dead ReLU units, saturated sigmoid and tanh units, and the size of each
update relative to its weights, so that dead units and vanishing or exploding updates show
while a network trains.

``Trainer(..., health=True)`` adds a ``"health"`` entry to every epoch's history record and,
when verbose, prints it under the epoch's line. Outside the trainer, ``inspect(model, x)``
gives the activation figures of one batch (for comparing initialisations, say), and
:class:`Monitor` accumulates them over any training loop of your own.

The figures, per layer (keyed by the layer's path in the model, "3" or "2.1"):

- a **ReLU** (alone or fused into the Affine, Conv2d or BatchNorm before it): ``units``, the
  size of axis 1 of its output (the features of ``(N, D)``, the channels of ``(N, C, H,
  W)``: a convolution's unit is a whole channel); ``dead``, the fraction of units whose
  output was zero for every sample and position of every observed batch (the usual
  definition of a dead unit); ``zero``, the fraction of all output entries that were zero.
  For a Conv2d + ReLU + MaxPool2d block run as one kernel the ReLU's output never exists:
  ``dead`` is read from the pooled output (a channel whose pooled outputs are all zero had
  only zeros in every pooling window, so it is the same figure as unfused wherever the
  windows cover the plane, as they do for the usual 2x2 stride 2 pooling of an even
  plane) and ``zero`` is None;
- a **Sigmoid** or **Tanh**: ``saturated``, the fraction of outputs in the flat regions
  (sigmoid outside [0.01, 0.99], tanh with |y| > 0.99, by default; see :class:`Settings`),
  and ``saturated_units``, the fraction of units saturated on every entry;
- every layer with **weights** (parameters with ``regularize=True``: Affine and Conv2d
  ``W``, Maxout's pieces) that the optimizer updates: ``update_ratio``, by parameter name,
  the mean over the observed steps of ||W_after - W_before|| / ||W_before||, the size of
  the optimizer's whole update (penalties and max-norm included) against the weights
  (CS231n's rule of thumb: about 1e-3). A step where ||W|| is 0 has no ratio and is
  left out of the mean.

All counting is done by kernels (``count_outside`` for the activations, ``sum_squares`` and
``sum_squares_diff`` for the update), on the outputs that the forward pass has already
computed, and only after the step has been accepted: a step refused by the trainer's
finiteness check adds nothing.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from . import backend
from .layers import Layer, ReLU, Sigmoid, Tanh, observe

__all__ = ["Settings", "Monitor", "inspect", "format_health", "flags"]


@dataclass(frozen=True)
class Settings:
    """What counts as saturated, how often to look, and what the log flags.

    ``sigmoid = (low, high)``: a sigmoid output below ``low`` or above ``high`` is saturated.
    ``tanh = t``: a tanh output with ``|y| > t`` is. ``every = k`` counts the activations of
    the first step of each epoch and every k-th after it (1, the default: every step, as the
    definition of a dead unit asks); ``ratio_every = k`` does the same for the update ratios
    (10 by default: they cost a copy and two reductions over every weight, several times the
    activation counts, and change slowly). The log flags a layer with more than
    ``dead_flag`` of its units dead, more than ``saturated_flag`` of its outputs saturated,
    or an update ratio outside ``ratio_range``.
    """

    sigmoid: tuple[float, float] = (0.01, 0.99)
    tanh: float = 0.99
    every: int = 1
    ratio_every: int = 10
    dead_flag: float = 0.5
    saturated_flag: float = 0.5
    ratio_range: tuple[float, float] = (1e-4, 1e-2)

    def __post_init__(self):
        low, high = (float(v) for v in self.sigmoid)
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"Settings: sigmoid must be (low, high) with 0 <= low < high <= 1, got {self.sigmoid!r}")
        if not 0.0 <= float(self.tanh) <= 1.0:
            raise ValueError(f"Settings: tanh must be in [0, 1], got {self.tanh!r}")
        for name in ("every", "ratio_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Settings: {name} must be an int >= 1, got {v!r}")
        lo, hi = (float(v) for v in self.ratio_range)
        if not 0.0 <= lo < hi:
            raise ValueError(f"Settings: ratio_range must be (low, high) with 0 <= low < high, got {self.ratio_range!r}")


# What a unit's output is watched for: kind -> the observed layer class.
_KINDS = ("relu", "relu_pooled", "sigmoid", "tanh")


def _path_key(name: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _shifted(name: str, by: int) -> str:
    """The path of the layer ``by`` places after ``name`` in the same container."""
    prefix, _, last = name.rpartition(".")
    return f"{prefix}.{int(last) + by}" if prefix else str(int(last) + by)


def _tag(layer: Layer | None) -> str:
    return "?" if layer is None else layer._tag()


def _layer_at(model: Layer, path: str) -> Layer | None:
    from .layers import Sequential

    layer = model
    for part in path.split("."):
        if not (isinstance(layer, Sequential) and part.isdigit() and int(part) < len(layer.layers)):
            return None
        layer = layer.layers[int(part)]
    return layer


class _Counts:
    """Per-unit counts of one watched output over the observed steps."""

    __slots__ = ("kind", "counts", "entries")

    def __init__(self, kind: str, units: int):
        self.kind = kind
        self.counts = np.zeros(units, np.int64)  # relu: positive entries; sigmoid/tanh: saturated ones
        self.entries = 0  # entries counted per unit, summed over the steps


class Monitor:
    """Accumulates the health figures of ``model`` over training steps.

    A step is observed as::

        with monitor.watch():                # records the activations the forward computes
            scores = model.forward(x, train=True)
            ...                              # loss, backward
            monitor.before_update()          # keeps a copy of the weights
            optimizer.step()
            monitor.after_update()           # update ratios; the step's figures count from here

    An exception before ``after_update`` discards the step. ``record()`` returns the figures
    since the last ``reset()`` (``{"steps": n, "layers": {path: {...}}}``, ``n`` the steps
    whose activations were counted); ``optimizer`` may be None (activations only).
    """

    def __init__(self, model: Layer, optimizer=None, settings: Settings | None = None):
        if settings is not None and not isinstance(settings, Settings):
            raise TypeError(f"Monitor: settings must be a fastlayers.health.Settings, got {type(settings).__name__}")
        self.model, self.optimizer = model, optimizer
        self.settings = settings or Settings()
        self._pending: list | None = None
        self._watching = False
        self._with_ratios = self._with_activations = True
        self._before: dict[int, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Forgets everything observed (the trainer calls it at the start of every epoch)."""
        self.steps = 0
        self._acts: dict[str, _Counts] = {}
        self._ratios: dict[str, list] = {}  # parameter name -> [sum of ratios, steps with a ratio]

    # -- observing ---------------------------------------------------------------------------
    def _weights(self) -> list[tuple[str, object]]:
        if self.optimizer is None:
            return []
        held = {id(p) for p in self.optimizer.params}
        out, seen = [], set()
        for name, p in self.model.named_parameters():
            if p.regularize is True and id(p) in held and id(p) not in seen:
                seen.add(id(p))
                out.append((name, p))
        return out

    def wants(self, step: int | None) -> tuple[bool, bool]:
        """Whether step ``step`` of an epoch (0-based; None: outside an epoch, always) gets its
        activations counted and its update ratios taken, by ``every`` and ``ratio_every``."""
        if step is None:
            return True, True
        s = self.settings
        return step % s.every == 0, step % s.ratio_every == 0

    def _see(self, name: str, layers: tuple, output: np.ndarray) -> None:
        for j, layer in enumerate(layers):
            if type(layer) is ReLU or (j == 0 and isinstance(layer, ReLU)):
                pooled = j + 1 < len(layers)
                self._pending.append((_shifted(name, j), "relu_pooled" if pooled else "relu", output))
        if len(layers) == 1 and isinstance(layers[0], (Sigmoid, Tanh)):
            self._pending.append((name, "sigmoid" if isinstance(layers[0], Sigmoid) else "tanh", output))

    @contextlib.contextmanager
    def watch(self, activations: bool = True, ratios: bool = True):
        """Records the outputs of the watched layers during the block's forward passes (unless
        ``activations`` is False); they are counted by ``after_update`` (or ``commit``) and
        dropped if the block raises. ``ratios=False``: the update ratios of this step are not
        taken (``before_update`` and ``after_update`` skip them)."""
        if self._watching:
            raise RuntimeError("Monitor.watch: already watching a step")
        self._watching, self._with_ratios, self._with_activations, self._pending = True, bool(ratios), bool(activations), []
        try:
            if activations:
                with observe(self.model, self._see):
                    yield self
            else:
                yield self
        finally:
            self._watching, self._with_ratios, self._with_activations, self._pending = False, True, True, None

    def before_update(self) -> None:
        """Copies the weights the optimizer is about to update."""
        if not self._with_ratios:
            return
        for _, p in self._weights():
            buf = self._before.get(id(p))
            if buf is None or buf.shape != p.data.shape or buf.dtype != p.data.dtype:
                buf = self._before[id(p)] = np.empty_like(p.data)
            np.copyto(buf, p.data)

    def after_update(self) -> None:
        """Adds the step: the update ratio of every weight and the recorded activations."""
        k = backend.kernels()
        for name, p in self._weights() if self._with_ratios else ():
            before = self._before[id(p)]
            w2 = k.sum_squares(before)
            if w2 > 0.0:
                acc = self._ratios.setdefault(name, [0.0, 0])
                acc[0] += math.sqrt(k.sum_squares_diff(p.data, before) / w2)
                acc[1] += 1
        self.commit()

    def commit(self) -> None:
        """Counts the activations recorded since ``watch`` began (or the last commit) as one step."""
        if not self._watching:
            raise RuntimeError("Monitor.commit: not watching a step")
        k = backend.kernels()
        s = self.settings
        for key, kind, y in self._pending:
            if y.ndim < 2:
                y = y.reshape(len(y), 1) if y.ndim == 1 else y.reshape(1, 1)
            acc = self._acts.get(key)
            if acc is None or acc.kind != kind or acc.counts.shape[0] != y.shape[1]:
                acc = self._acts[key] = _Counts(kind, y.shape[1])
            if kind in ("relu", "relu_pooled"):
                k.count_outside(acc.counts, y, -math.inf, 0.0)
            elif kind == "sigmoid":
                k.count_outside(acc.counts, y, *s.sigmoid)
            else:
                k.count_outside(acc.counts, y, -s.tanh, s.tanh)
            acc.entries += y.size // max(y.shape[1], 1)
        self._pending.clear()
        if self._with_activations:
            self.steps += 1

    # -- report ------------------------------------------------------------------------------
    def record(self) -> dict:
        """``{"steps": n, "layers": {path: figures}}``, JSON-ready, layers in model order."""
        layers: dict[str, dict] = {}
        for key, acc in self._acts.items():
            units = int(acc.counts.shape[0])
            fig: dict = {"layer": _tag(_layer_at(self.model, key)), "units": units}
            total = acc.entries * units
            hits = int(acc.counts.sum())
            if acc.kind.startswith("relu"):
                fig["dead"] = int(np.count_nonzero(acc.counts == 0)) / units if units else 0.0
                fig["zero"] = None if acc.kind == "relu_pooled" or not total else 1.0 - hits / total
            else:
                fig["saturated"] = hits / total if total else 0.0
                full = int(np.count_nonzero(acc.counts == acc.entries)) if acc.entries else 0
                fig["saturated_units"] = full / units if units else 0.0
            layers[key] = fig
        for name, (total, n) in self._ratios.items():
            path, _, pname = name.rpartition(".")
            layer = _layer_at(self.model, path) if path else self.model
            fig = layers.setdefault(path, {"layer": _tag(layer)})
            fig.setdefault("update_ratio", {})[pname] = total / n
        return {"steps": self.steps, "layers": dict(sorted(layers.items(), key=lambda kv: _path_key(kv[0])))}

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        """The accumulators as (JSON-ready data, int64 arrays by name), for a checkpoint."""
        acts = {key: {"kind": a.kind, "entries": a.entries} for key, a in self._acts.items()}
        ratios = {name: list(v) for name, v in self._ratios.items()}
        return {"steps": self.steps, "activations": acts, "ratios": ratios}, \
            {key: a.counts.copy() for key, a in self._acts.items()}

    def parse_state(self, data, arrays: dict, fail) -> tuple:
        """Checks saved accumulators against this model without changing anything; returns
        what ``load_state`` takes. ``fail(message)`` raises."""
        if not isinstance(data, dict) or set(data) != {"steps", "activations", "ratios"}:
            fail("health state must be an object with keys ['activations', 'ratios', 'steps']")
        steps, acts, ratios = data["steps"], data["activations"], data["ratios"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            fail(f"health.steps must be an int >= 0, got {steps!r:.100}")
        if not isinstance(acts, dict) or set(acts) != set(arrays):
            fail("health.activations must name exactly the tensors trainer/health/*")
        parsed_acts = {}
        for key, a in acts.items():
            layer = _layer_at(self.model, key)
            ok = isinstance(a, dict) and set(a) == {"kind", "entries"} and a["kind"] in _KINDS
            ok = ok and isinstance(a["entries"], int) and not isinstance(a["entries"], bool) and a["entries"] >= 0
            want = {"relu": ReLU, "relu_pooled": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}.get(a.get("kind")) if ok else None
            if not ok or not isinstance(layer, want):
                fail(f"health.activations[{key!r}] does not describe a watched layer of the model: {a!r:.100}")
            counts = arrays[key]
            if counts.ndim != 1 or counts.dtype != np.int64 or (counts < 0).any() or (counts > a["entries"]).any():
                fail(f"tensor trainer/health/{key} must be 1-D int64 counts in [0, {a['entries']}]")
            parsed_acts[key] = (a["kind"], counts.copy(), a["entries"])
        weights = {name for name, _ in self._weights()}
        if not isinstance(ratios, dict):
            fail("health.ratios must be an object")
        parsed_ratios = {}
        for name, v in ratios.items():
            ok = name in weights and isinstance(v, list) and len(v) == 2
            ok = ok and isinstance(v[0], (int, float)) and not isinstance(v[0], bool) and math.isfinite(v[0])
            ok = ok and isinstance(v[1], int) and not isinstance(v[1], bool) and 0 <= v[1] <= steps
            if not ok:
                fail(f"health.ratios[{name!r}] must be [sum, count] for a weight the optimizer updates, got {v!r:.100}")
            parsed_ratios[name] = [float(v[0]), v[1]]
        return steps, parsed_acts, parsed_ratios

    def load_state(self, parsed: tuple) -> None:
        """Puts accumulators from ``parse_state`` in place."""
        steps, acts, ratios = parsed
        self.reset()
        self.steps = steps
        for key, (kind, counts, entries) in acts.items():
            acc = self._acts[key] = _Counts(kind, counts.shape[0])
            acc.counts[...] = counts
            acc.entries = entries
        self._ratios = {name: list(v) for name, v in ratios.items()}


def inspect(model: Layer, x: np.ndarray, train: bool = False, settings: Settings | None = None) -> dict:
    """The activation figures of one forward pass of ``model`` on the batch ``x``, by layer
    path: ``{"1": {"layer": "ReLU", "units": 100, "dead": 0.0, "zero": 0.49}, "3":
    {"layer": "Sigmoid", "units": 100, "saturated": 0.9, "saturated_units": 0.1}, ...}``.

    ``train=False`` (the default) runs in inference mode: BatchNorm uses its running
    statistics and nothing moves (no running averages, no dropout masks drawn); with
    ``train=True`` the forward is a training one, with those effects."""
    monitor = Monitor(model, None, settings)
    with monitor.watch():
        model.forward(x, train=train)
        monitor.commit()
    return monitor.record()["layers"]


def flags(fig: dict, settings: Settings | None = None) -> list[str]:
    """What is wrong with one layer's figures, in words (empty when nothing is)."""
    s = settings or Settings()
    out = []
    if fig.get("dead") is not None and fig["dead"] > s.dead_flag:
        out.append(f"over {s.dead_flag:.0%} of its units dead")
    if fig.get("saturated") is not None and fig["saturated"] > s.saturated_flag:
        out.append(f"over {s.saturated_flag:.0%} saturated")
    lo, hi = s.ratio_range
    for name, r in (fig.get("update_ratio") or {}).items():
        if r < lo:
            out.append(f"{name} updates {r:.1e} of its size (below {lo:g}: barely learning)")
        elif r > hi:
            out.append(f"{name} updates {r:.1e} of its size (above {hi:g}: too fast)")
    return out


def format_health(health: dict, settings: Settings | None = None) -> str:
    """One line for an epoch's ``record["health"]``: each watched layer's figures, "!" after
    each flagged one and the reasons at the end."""
    parts, problems = [], []
    for path, fig in health["layers"].items():
        bits = []
        if "dead" in fig:
            bits.append(f"dead {fig['dead']:.0%}" + ("" if fig["zero"] is None else f" zero {fig['zero']:.0%}"))
        if "saturated" in fig:
            bits.append(f"saturated {fig['saturated']:.0%}")
        for name, r in (fig.get("update_ratio") or {}).items():
            bits.append(f"|d{name}|/|{name}| {r:.1e}")
        bad = flags(fig, settings)
        parts.append(f"{path} {fig['layer']} " + ", ".join(bits) + ("!" if bad else ""))
        problems += [f"{path} {fig['layer']}: {b}" for b in bad]
    line = f"health ({health['steps']} steps): " + " | ".join(parts)
    return line + ("  << " + "; ".join(problems) if problems else "")
