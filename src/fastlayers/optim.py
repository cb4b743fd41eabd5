"""Optimizers: the textbook's update rules, applied to a list of Parameters.

Each ``step()`` runs one update kernel (``backend.kernels().adam_update`` and friends; see
docs/kernels.md) per *group* of parameters, not per parameter: the optimizer moves its
parameters into a few flat buffers (see :class:`Optimizer`), then applies the optional
max-norm constraint. Weight decay, L1 and max-norm apply to parameters with
``regularize=True`` only, or to every parameter with ``regularize="all"``. Gradient clipping
(``clip_norm``, ``clip_value``) acts on every parameter's gradient before the update. A
typical loop::

    opt = fastlayers.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for x, t in batches:
        opt.zero_grad()
        loss = criterion.forward(model.forward(x), t) + opt.penalty()
        model.backward(criterion.backward())
        opt.step()
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import backend
from .parameter import Parameter

__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "LBFGS", "get", "NAMES"]

_REGULARIZE = ("weights", "all")
# Settings a state dict may lack because it was saved before they existed.
_OPTIONAL_HYPER = ("clip_norm", "clip_value")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _real(owner: str, name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(v).__name__}")
    try:
        return float(v)
    except OverflowError:
        raise ValueError(f"{owner}: {name} is out of range, got an int of {int(v).bit_length()} bits") from None


# Rates, penalties, eps and max_norm must be finite: an infinite one turns every weight into
# inf or NaN at the first step (or, for eps and max_norm, silently does nothing), and the
# kernels refuse it anyway, at the first step rather than here.


def _at_least(owner: str, name: str, v, low: float) -> float:
    v = _real(owner, name, v)
    if not (v >= low and math.isfinite(v)):  # also refuses NaN
        raise ValueError(f"{owner}: {name} must be a finite number >= {low:g}, got {v}")
    return v


def _positive(owner: str, name: str, v) -> float:
    v = _real(owner, name, v)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {v}")
    return v


def _fraction(owner: str, name: str, v) -> float:
    v = _real(owner, name, v)
    if not 0 <= v < 1:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {v}")
    return v


class _Group:
    """Parameters of one dtype and one regularization setting, packed into flat buffers.

    ``data`` and ``grad`` are 1-D slabs holding every member's array back to back;
    ``state`` maps each state name to its slab; ``max_norm`` lists the 2-D views (and
    the axis) that the max-norm constraint rescales.
    """

    __slots__ = ("regularized", "data", "grad", "state", "max_norm")

    def __init__(self, regularized: bool, data: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray]):
        self.regularized = regularized
        self.data = data
        self.grad = grad
        self.state = state
        self.max_norm: list[tuple[np.ndarray, int]] = []


def _max_norm_view(data: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The 2-D view and axis max-norm rescales: the columns of a 2-D weight (the incoming
    weights of one unit), the flattened filters of a 4-D convolution weight."""
    if data.size == 0:
        return None
    if data.ndim == 2:
        return data, 0
    if data.ndim == 4:
        # A C-contiguous reshape is a view, so the kernel rescales the filters in place.
        return data.reshape(data.shape[0], -1), 1
    return None


def _check_writeable(owner: str, i: int, p: Parameter) -> None:
    # Packing would copy a read-only array into a writeable buffer and rebind the parameter to
    # it: the "frozen" weights would then be trained without a word.
    if isinstance(p.data, np.ndarray) and not p.data.flags.writeable:
        raise ValueError(
            f"{owner}: params[{i}] ({p.name!r}) is read-only; an optimizer updates its parameters in place "
            "(leave a frozen parameter out of the list)"
        )


class Optimizer:
    """Base class: parameters, penalties, step counter and (de)serialisation.

    ``params`` is a non-empty list of distinct :class:`Parameter`. ``weight_decay`` adds
    ``weight_decay*W`` to the gradient (the gradient of ``0.5*weight_decay*||W||²``), ``l1``
    adds ``l1*sign(W)``; ``max_norm`` (None: off) rescales, after each update, every column
    of a 2-D weight (the incoming weights of one unit) and every filter of a 4-D
    convolution weight whose L2 norm exceeds it. Parameters of any other ndim are not
    max-norm constrained. ``steps`` counts the calls of ``step()``.

    **Gradient clipping.** ``clip_norm`` (None: off) rescales the gradients of all the
    parameters together, whenever their global L2 norm ``sqrt(sum over every parameter of
    ||grad||²)`` exceeds it, by ``clip_norm / norm``, so that their norm becomes ``clip_norm``
    and their direction is kept; ``clip_value`` (None: off) then clamps every gradient entry
    to ``[-clip_value, clip_value]`` (the limit rounded to the parameter's dtype). Both act on
    ``p.grad`` in place at the start of ``step()``, on the gradient of the loss as backward
    left it: the weight decay and L1 terms are added afterwards, inside the update, and are
    not clipped, and max-norm rescales the weights after the update. The norm is one native
    ``sum_squares`` per flat buffer (float64, a fixed order) and the rescaling one
    ``scale_update`` per buffer (the product in float64, rounded once), the clamping one
    ``clamp_update`` per buffer. A norm that is not finite (a NaN or infinite gradient, which
    ``Trainer`` refuses before the update anyway) leaves the gradient unscaled. After each
    step ``grad_norm`` is the global norm before clipping and ``rescaled`` whether it was
    rescaled (None and False without ``clip_norm``), and ``clamped`` the number of entries
    clamped (None without ``clip_value``).

    **Flat buffers.** On construction the optimizer groups its parameters by dtype and by
    whether the penalties apply to them (typically two groups: the weights, and the
    biases and BatchNorm parameters), allocates for each group one contiguous data
    buffer, one gradient buffer and one buffer per state array, copies the current values
    in, and rebinds every ``p.data`` and ``p.grad`` to a view of its segment (same shape
    and dtype). ``step()`` then makes one kernel call per group, ``zero_grad()`` one
    ``zero_update`` per gradient buffer and ``penalty()`` one reduction per penalised group,
    however many parameters there are. ``state[i][name]`` are views into the state buffers, so
    modify them in place (``load_state_dict`` does).

    Layers reach their arrays through ``p.data`` / ``p.grad`` every time, so the
    rebinding is invisible to them. If something else rebinds ``p.data`` or ``p.grad``
    (``layer.W.data = new_array``), or changes a ``regularize`` setting, the next
    ``step()``, ``zero_grad()`` or ``penalty()`` notices (an identity check per
    parameter), works on the arrays it finds one parameter at a time, as an optimizer
    without buffers would, and then moves them back into new buffers (copying their
    current values; the state carries over). A reference to the old array therefore
    sees that one update and no later ones. Two optimizers over the same parameters take
    turns in the same way: each packs the parameters into its own buffers, and a step of
    one after the other has run updates the live arrays per parameter, then repacks.
    Every step updates the arrays the parameters hold at that moment; only the speed of
    one call per group is lost while they alternate.

    Subclasses set ``kernel`` (the update kernel's name), ``state_names`` (state arrays,
    one set per parameter, zero-initialised) and ``hyper_names`` (their extra
    hyper-parameters, validated by ``_check_hyper``), and implement
    ``_update(k, param, grad, state, weight_decay, l1)``, which applies the kernel to one
    array or one flat buffer (``state`` maps each state name to its array).
    """

    kernel: str = ""
    state_names: tuple[str, ...] = ()
    hyper_names: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0, l1: float = 0.0,
                 max_norm: float | None = None, regularize: str = "weights", clip_norm: float | None = None,
                 clip_value: float | None = None):
        owner = type(self).__name__
        if isinstance(params, (Parameter, np.ndarray)) or not hasattr(params, "__iter__"):
            raise TypeError(f"{owner}: params must be a list of Parameter, got {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(f"{owner}: params is empty; an optimizer needs at least one Parameter")
        seen: set[int] = set()
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{owner}: params[{i}] must be a Parameter, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"{owner}: params[{i}] ({p.name!r}) appears more than once")
            seen.add(id(p))
            _check_writeable(owner, i, p)
        self.params: list[Parameter] = params
        self.lr = lr
        self.weight_decay = _at_least(owner, "weight_decay", weight_decay, 0)
        self.l1 = _at_least(owner, "l1", l1, 0)
        self.max_norm = None if max_norm is None else _positive(owner, "max_norm", max_norm)
        self.clip_norm = None if clip_norm is None else _positive(owner, "clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else _positive(owner, "clip_value", clip_value)
        self.grad_norm: float | None = None
        self.rescaled = False
        self.clamped: int | None = None
        if regularize not in _REGULARIZE:
            raise ValueError(f"{owner}: regularize must be 'weights' or 'all', got {regularize!r}")
        self.regularize = regularize
        self.steps = 0
        self._groups: list[_Group] | None = None
        # (parameter, its data view, its grad view, its regularize flag) as packed.
        self._bound: list[tuple[Parameter, np.ndarray, np.ndarray, object]] = []
        self._packed_regularize = regularize
        self.state: list[dict[str, np.ndarray]] = []
        if not self._pack():
            self.state = [{name: np.zeros_like(p.data) for name in self.state_names} for p in params]

    @property
    def lr(self) -> float:
        """Learning rate; may be changed between steps (schedules)."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _at_least(type(self).__name__, "lr", value, 0)

    def _check_hyper(self, name: str, value) -> float:
        raise ValueError(f"{type(self).__name__}: unknown hyper-parameter {name!r}")

    def _regularized(self, p: Parameter) -> bool:
        return self.regularize == "all" or bool(p.regularize)

    def _update(self, k, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray],
                weight_decay: float, l1: float) -> None:
        raise NotImplementedError

    # -- flat buffers --------------------------------------------------------------------
    def _packable(self) -> bool:
        """Whether every parameter holds a float array with a matching gradient (and state)."""
        for i, p in enumerate(self.params):
            data, grad = p.data, p.grad
            if not (isinstance(data, np.ndarray) and data.dtype in _FLOATS and data.flags.writeable):
                return False
            if not (isinstance(grad, np.ndarray) and grad.shape == data.shape and grad.dtype == data.dtype):
                return False
            if self.state and any(a.shape != data.shape or a.dtype != data.dtype for a in self.state[i].values()):
                return False
        return True

    def _pack(self) -> bool:
        """Moves every parameter (data, grad and state) into flat per-group buffers and
        rebinds ``p.data`` / ``p.grad`` to views of them. When some parameter's arrays
        cannot be packed (not a float array, or a gradient or state of another shape or
        dtype), returns False and leaves every array where it is: the optimizer then runs
        per parameter, where the kernels report what is wrong, and tries again next call."""
        if not self._packable():
            self._groups = None
            return False
        members: dict[tuple[np.dtype, bool], list[int]] = {}
        for i, p in enumerate(self.params):
            members.setdefault((p.data.dtype, self._regularized(p)), []).append(i)
        groups: list[_Group] = []
        new_state: list[dict[str, np.ndarray]] = [{} for _ in self.params]
        views: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for (dtype, regularized), idx in members.items():
            total = sum(self.params[i].data.size for i in idx)
            group = _Group(regularized, np.empty(total, dtype), np.empty(total, dtype),
                           {name: np.zeros(total, dtype) for name in self.state_names})
            offset = 0
            for i in idx:
                p = self.params[i]
                shape, n = p.data.shape, p.data.size
                seg = slice(offset, offset + n)
                data, grad = group.data[seg].reshape(shape), group.grad[seg].reshape(shape)
                data[...] = p.data
                grad[...] = p.grad
                for name, slab in group.state.items():
                    view = slab[seg].reshape(shape)
                    if self.state:
                        view[...] = self.state[i][name]
                    new_state[i][name] = view
                views[i] = data, grad
                if regularized:
                    mn = _max_norm_view(data)
                    if mn is not None:
                        group.max_norm.append(mn)
                offset += n
            groups.append(group)
        # Every value is copied: only now rebind, so a failure above leaves all as it was.
        for i, p in enumerate(self.params):
            p.data, p.grad = views[i]
        self.state = new_state
        self._groups = groups
        self._bound = [(p, p.data, p.grad, p.regularize) for p in self.params]
        self._packed_regularize = self.regularize
        return True

    def _packed(self) -> bool:
        """True while every parameter still holds the views this optimizer gave it."""
        if self._groups is None or self.regularize != self._packed_regularize:
            return False
        for p, data, grad, reg in self._bound:
            if p.data is not data or p.grad is not grad or p.regularize is not reg:
                return False
        return True

    # -- the training-loop interface -------------------------------------------------------
    def zero_grad(self) -> None:
        """Zeroes every parameter's gradient (kernels accumulate into it)."""
        if not self._packed():
            for p in self.params:
                p.zero_grad()
            self._pack()
            return
        k = backend.kernels()
        for group in self._groups:
            k.zero_update(group.grad)

    def step(self) -> None:
        """One update of every parameter from its current ``grad``."""
        k = backend.kernels()
        if not self._packed():
            for i, p in enumerate(self.params):
                _check_writeable(type(self).__name__, i, p)
            self.steps += 1
            self._clip(k, [p.grad for p in self.params])
            self._step_each(k)
            self._pack()
            return
        self.steps += 1
        self._clip(k, [group.grad for group in self._groups])
        max_norm = self.max_norm
        for group in self._groups:
            if group.regularized:
                self._update(k, group.data, group.grad, group.state, self.weight_decay, self.l1)
                if max_norm is not None:
                    for w, axis in group.max_norm:
                        k.max_norm_update(w, max_norm, axis)
            else:
                self._update(k, group.data, group.grad, group.state, 0.0, 0.0)

    def _clip(self, k, grads: list[np.ndarray]) -> None:
        """Clips the gradients (the flat buffers, or each parameter's array) in place."""
        self.grad_norm, self.rescaled, self.clamped = None, False, None
        if self.clip_norm is not None:
            norm = math.sqrt(sum(k.sum_squares(g) for g in grads))
            self.grad_norm = norm
            if math.isfinite(norm) and norm > self.clip_norm:
                factor = self.clip_norm / norm
                for g in grads:
                    k.scale_update(g, factor)
                self.rescaled = True
        if self.clip_value is not None:
            self.clamped = sum(k.clamp_update(g, self.clip_value) for g in grads)

    def _step_each(self, k) -> None:
        """The update one parameter at a time, on whatever arrays the parameters hold."""
        for p, state in zip(self.params, self.state):
            reg = self._regularized(p)
            wd, l1 = (self.weight_decay, self.l1) if reg else (0.0, 0.0)
            self._update(k, p.data, p.grad, state, wd, l1)
            if reg and self.max_norm is not None:
                mn = _max_norm_view(p.data)
                if mn is not None:
                    k.max_norm_update(mn[0], self.max_norm, mn[1])

    def nonfinite_gradient(self) -> int | None:
        """The index in ``params`` of the first parameter whose gradient holds a NaN or an
        infinity, or None when every gradient is finite.

        A float64 sum of absolute values is NaN or infinite when an entry is, so the usual
        case costs one native ``sum_abs`` per group over the flat gradient buffers. The
        converse can fail only by overflow (a float64 gradient's sum can exceed the largest
        double; a float32 one's cannot), so a non-finite sum is confirmed parameter by
        parameter before anything is reported.
        """
        if self._packed():
            k = backend.kernels()
            if all(math.isfinite(k.sum_abs(group.grad)) for group in self._groups):
                return None
        for i, p in enumerate(self.params):
            if not np.isfinite(p.grad).all():
                return i
        return None

    def penalty(self) -> float:
        """Sum over regularized parameters of 0.5*weight_decay*||W||² + l1*sum|W|."""
        wd, l1 = self.weight_decay, self.l1
        if not wd and not l1:
            return 0.0
        k = backend.kernels()
        total = 0.0
        if not self._packed():
            for p in self.params:
                if self._regularized(p):
                    if wd:
                        total += 0.5 * wd * k.sum_squares(p.data)
                    if l1:
                        total += l1 * k.sum_abs(p.data)
            self._pack()
            return float(total)
        for group in self._groups:
            if group.regularized:
                if wd:
                    total += 0.5 * wd * k.sum_squares(group.data)
                if l1:
                    total += l1 * k.sum_abs(group.data)
        return float(total)

    def __getstate__(self) -> dict:
        # A copy (copy.deepcopy, pickle) copies each view on its own, cut off from the
        # copied buffers: it starts unpacked and packs its own at its first call.
        d = self.__dict__.copy()
        d["_groups"], d["_bound"] = None, []
        return d

    def hyper_parameters(self) -> dict:
        """The scalar settings, as stored by ``state_dict``."""
        d = {"lr": self.lr, "weight_decay": self.weight_decay, "l1": self.l1,
             "max_norm": self.max_norm, "regularize": self.regularize, "clip_norm": self.clip_norm,
             "clip_value": self.clip_value}
        d.update({name: getattr(self, name) for name in self.hyper_names})
        return d

    def state_dict(self) -> dict:
        """A flat dict: ``type``, the hyper-parameters and ``step`` as Python scalars, and a
        copy of each state array under ``state.{i}.{name}`` (i the parameter's index)."""
        d: dict = {"type": type(self).__name__, **self.hyper_parameters(), "step": self.steps}
        for i, state in enumerate(self.state):
            for name in self.state_names:
                d[f"state.{i}.{name}"] = state[name].copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restores what ``state_dict`` returned; any mismatch raises ValueError naming the key
        and leaves the optimizer unchanged. ``clip_norm`` and ``clip_value`` may be absent (a
        state saved before clipping existed): they then become None, as they were."""
        owner = type(self).__name__
        if not isinstance(d, dict):
            raise TypeError(f"{owner}: state dict must be a dict, got {type(d).__name__}")
        arrays = {f"state.{i}.{name}": (i, name) for i in range(len(self.params)) for name in self.state_names}
        d = {**dict.fromkeys(_OPTIONAL_HYPER), **d}
        scalars = ("type", *self.hyper_parameters(), "step")
        missing = [key for key in (*scalars, *arrays) if key not in d]
        if missing:
            raise ValueError(f"{owner}: state dict is missing key {missing[0]!r}")
        unexpected = [key for key in d if key not in arrays and key not in scalars]
        if unexpected:
            raise ValueError(f"{owner}: state dict has unexpected key {unexpected[0]!r}")
        if d["type"] != owner:
            raise ValueError(f"{owner}: key 'type' is {d['type']!r}, expected {owner!r}")
        for key, (i, name) in arrays.items():
            a, want = d[key], self.state[i][name]
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{owner}: key {key!r} must be a numpy.ndarray, got {type(a).__name__}")
            if a.shape != want.shape or a.dtype != want.dtype:
                raise ValueError(
                    f"{owner}: key {key!r} has shape {a.shape} and dtype {a.dtype}; "
                    f"expected {want.shape} and {want.dtype}"
                )
        step = d["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"{owner}: key 'step' must be an int >= 0, got {step!r}")
        # Validate every scalar before assigning any of them.
        try:
            lr = _at_least(owner, "lr", d["lr"], 0)
            wd = _at_least(owner, "weight_decay", d["weight_decay"], 0)
            l1 = _at_least(owner, "l1", d["l1"], 0)
            max_norm = None if d["max_norm"] is None else _positive(owner, "max_norm", d["max_norm"])
            clip = {name: None if d[name] is None else _positive(owner, name, d[name]) for name in _OPTIONAL_HYPER}
            hyper = {name: self._check_hyper(name, d[name]) for name in self.hyper_names}
        except TypeError as e:
            raise ValueError(str(e)) from None
        if d["regularize"] not in _REGULARIZE:
            raise ValueError(f"{owner}: key 'regularize' must be 'weights' or 'all', got {d['regularize']!r}")
        self.lr, self.weight_decay, self.l1, self.max_norm = lr, wd, l1, max_norm
        self.clip_norm, self.clip_value = clip["clip_norm"], clip["clip_value"]
        self.regularize = d["regularize"]
        for name, value in hyper.items():
            setattr(self, name, value)
        self.steps = int(step)
        for key, (i, name) in arrays.items():
            np.copyto(self.state[i][name], d[key])

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyper_parameters().items())
        return f"{type(self).__name__}({len(self.params)} params, {hp})"


class SGD(Optimizer):
    """Stochastic gradient descent: ``W -= lr * g``. Default lr = 0.01."""

    kernel = "sgd_update"

    def __init__(self, params, lr: float = 0.01, **kw):
        super().__init__(params, lr, **kw)

    def _update(self, k, param, grad, state, weight_decay, l1):
        k.sgd_update(param, grad, self.lr, weight_decay, l1)


class Momentum(Optimizer):
    """Momentum SGD: ``v = momentum*v - lr*g; W += v``. Defaults lr = 0.01, momentum = 0.9."""

    kernel = "momentum_update"
    state_names = ("v",)
    hyper_names = ("momentum",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, **kw):
        super().__init__(params, lr, **kw)
        self.momentum = self._check_hyper("momentum", momentum)

    def _check_hyper(self, name, value):
        if name == "momentum":
            return _fraction(type(self).__name__, name, value)
        return super()._check_hyper(name, value)

    def _update(self, k, param, grad, state, weight_decay, l1):
        getattr(k, self.kernel)(param, grad, state["v"], self.lr, self.momentum, weight_decay, l1)


class Nesterov(Momentum):
    """Nesterov's accelerated gradient (the momentum form of Bengio et al. 2013).
    Defaults lr = 0.01, momentum = 0.9."""

    kernel = "nesterov_update"


class AdaGrad(Optimizer):
    """AdaGrad: ``h += g²; W -= lr*g/(sqrt(h) + eps)``. Defaults lr = 0.01, eps = 1e-7."""

    kernel = "adagrad_update"
    state_names = ("h",)
    hyper_names = ("eps",)

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-7, **kw):
        super().__init__(params, lr, **kw)
        self.eps = self._check_hyper("eps", eps)

    def _check_hyper(self, name, value):
        if name == "eps":
            return _positive(type(self).__name__, name, value)
        return super()._check_hyper(name, value)

    def _update(self, k, param, grad, state, weight_decay, l1):
        k.adagrad_update(param, grad, state["h"], self.lr, self.eps, weight_decay, l1)


class RMSprop(Optimizer):
    """RMSprop: ``h = decay*h + (1-decay)*g²; W -= lr*g/(sqrt(h) + eps)``.
    Defaults lr = 0.01, decay = 0.99, eps = 1e-7."""

    kernel = "rmsprop_update"
    state_names = ("h",)
    hyper_names = ("decay", "eps")

    def __init__(self, params, lr: float = 0.01, decay: float = 0.99, eps: float = 1e-7, **kw):
        super().__init__(params, lr, **kw)
        self.decay = self._check_hyper("decay", decay)
        self.eps = self._check_hyper("eps", eps)

    def _check_hyper(self, name, value):
        if name == "decay":
            return _fraction(type(self).__name__, name, value)
        if name == "eps":
            return _positive(type(self).__name__, name, value)
        return super()._check_hyper(name, value)

    def _update(self, k, param, grad, state, weight_decay, l1):
        k.rmsprop_update(param, grad, state["h"], self.lr, self.decay, self.eps, weight_decay, l1)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; eps is added outside the square root.
    Defaults lr = 0.001, beta1 = 0.9, beta2 = 0.999, eps = 1e-8."""

    kernel = "adam_update"
    state_names = ("m", "v")
    hyper_names = ("beta1", "beta2", "eps")

    def __init__(self, params, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, **kw):
        super().__init__(params, lr, **kw)
        self.beta1 = self._check_hyper("beta1", beta1)
        self.beta2 = self._check_hyper("beta2", beta2)
        self.eps = self._check_hyper("eps", eps)

    def _check_hyper(self, name, value):
        if name in ("beta1", "beta2"):
            return _fraction(type(self).__name__, name, value)
        if name == "eps":
            return _positive(type(self).__name__, name, value)
        return super()._check_hyper(name, value)

    def _update(self, k, param, grad, state, weight_decay, l1):
        k.adam_update(param, grad, state["m"], state["v"], self.lr, self.beta1, self.beta2,
                      self.eps, self.steps, weight_decay, l1)


_CLASSES: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
}
NAMES: tuple[str, ...] = tuple(_CLASSES)


def get(name: str, params, **kw) -> Optimizer:
    """The optimizer called ``name`` (case-insensitive: "sgd", "momentum", "nesterov",
    "adagrad", "rmsprop", "adam") over ``params``; ``kw`` goes to its constructor."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {type(name).__name__}")
    cls = _CLASSES.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(NAMES)}")
    return cls(params, **kw)


def _count(owner: str, name: str, v, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int, got {type(v).__name__}")
    if v < low:
        raise ValueError(f"{owner}: {name} must be >= {low}, got {v}")
    return int(v)


_LINE_SEARCHES = ("strong_wolfe", None)
# A pair whose curvature y.s is not above this is not stored (PyTorch's threshold): BFGS needs
# y.s > 0 to keep H positive definite, and a tiny one would make rho = 1/(y.s) explode.
_MIN_CURVATURE = 1e-10


class LBFGS(Optimizer):
    """L-BFGS (Nocedal & Wright, *Numerical Optimization*, Algorithm 7.5) for full-batch
    training, with PyTorch's interface: ``loss = opt.step(closure)``, where ``closure()``
    zeroes the gradients, runs forward and backward and returns the loss::

        opt = fastlayers.optim.LBFGS(model.parameters(), history_size=10)
        def closure():
            opt.zero_grad()
            loss = criterion.forward(model.forward(x, train=True), t)
            model.backward(criterion.backward())
            return loss
        for _ in range(10):
            opt.step(closure)

    One ``step`` runs up to ``max_iter`` iterations and ``max_eval`` calls of the closure
    (default ``max_iter * 5 // 4``) and returns the loss of its first call. Each iteration
    takes the direction ``d = -H g`` of the two-loop recursion over the last
    ``history_size`` pairs ``s = x_{k+1} - x_k``, ``y = g_{k+1} - g_k`` (H's initial matrix is
    ``gamma*I``, ``gamma = y.s / y.y`` of the newest pair) and a step ``t`` along it: with
    ``line_search="strong_wolfe"`` one that satisfies the strong Wolfe conditions
    (``fastlayers.linesearch``: c1 = 1e-4, c2 = 0.9, first trial ``lr``, at most 25 closure
    calls), with ``line_search=None`` the fixed ``t = lr``. The very first iteration, which
    has no history, steps ``t = lr * min(1, 1/sum|g|)`` along ``-g``. A pair is stored only
    when ``y.s > 1e-10``. The iteration stops early, as PyTorch's does, when
    ``max|g| <= tolerance_grad``, when ``|t| * max|d| <= tolerance_change``, when the loss
    changed by less than ``tolerance_change``, or when ``g.d > -tolerance_change`` (no
    descent left). ``stop_reason`` says which ended the last step, ``line_searches`` holds
    its line searches (:class:`fastlayers.linesearch.LineSearchResult`), ``evaluations``
    counts every closure call and ``iterations`` every iteration since the start.

    The history, the last direction, step and gradient, and the counters carry over from
    one ``step`` to the next and are saved by ``state_dict``, so a run resumed from a
    checkpoint continues bit for bit.

    All parameters are one flat vector (one buffer, one kernel call per operation), so they
    must share one dtype; float64 is the natural choice for L-BFGS. The closure must compute
    the same function every time it is called within a step (the Trainer replays the step's
    dropout masks). Weight decay, L1 and max-norm are not options here: put a penalty into
    the loss the closure returns. A point where the loss or a gradient is not finite is
    never accepted: the line search shortens the step instead, and without a line search
    the iteration is undone and the step ends (``stop_reason`` says so). A closure whose
    first call gives a non-finite loss or gradient makes ``step`` raise
    ``FloatingPointError`` with nothing changed.
    """

    needs_closure = True

    def __init__(self, params, lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 10,
                 line_search: str | None = "strong_wolfe"):
        settings = self._settings(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                                  tolerance_change=tolerance_change, history_size=history_size,
                                  line_search=line_search)
        super().__init__(params, settings.pop("lr"))
        for name, value in settings.items():
            setattr(self, name, value)
        group = self._groups[0]
        self._size, self._dtype = group.data.size, group.data.dtype
        self._x0 = np.empty(self._size, self._dtype)  # the iteration's starting point
        self._y_new = np.empty(self._size, self._dtype)  # g - g_prev, before it is known to be kept
        self._allocate(self.history_size)
        self.line_searches: list = []
        self.stop_reason: str | None = None

    @classmethod
    def _settings(cls, *, lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size, line_search) -> dict:
        owner = cls.__name__
        max_iter = _count(owner, "max_iter", max_iter)
        if line_search not in _LINE_SEARCHES:
            raise ValueError(f"{owner}: line_search must be 'strong_wolfe' or None, got {line_search!r}")
        return {
            "lr": _positive(owner, "lr", lr),
            "max_iter": max_iter,
            "max_eval": max_iter * 5 // 4 if max_eval is None else _count(owner, "max_eval", max_eval),
            "tolerance_grad": _at_least(owner, "tolerance_grad", tolerance_grad, 0),
            "tolerance_change": _at_least(owner, "tolerance_change", tolerance_change, 0),
            "history_size": _count(owner, "history_size", history_size),
            "line_search": line_search,
        }

    def _allocate(self, history_size: int) -> None:
        n, dtype = self._size, self._dtype
        self._s = np.zeros((history_size, n), dtype)  # ring buffers of the pairs
        self._y = np.zeros((history_size, n), dtype)
        self._rho = np.zeros(history_size, dtype)  # 1/(y.s) per row
        self._pairs = 0  # rows in use
        self._first = 0  # the oldest row
        self._d = np.zeros(n, dtype)  # the last direction
        self._g_prev = np.zeros(n, dtype)  # the gradient where it was taken
        self._t = 0.0  # the step taken along it (0: none)
        self._gamma = 1.0
        self.iterations = 0
        self.evaluations = 0

    @property
    def lr(self) -> float:
        """The first trial step of the line search (or the fixed step without one)."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _positive(type(self).__name__, "lr", value)

    def _regularized(self, p: Parameter) -> bool:
        # No penalties here, so the weights and the rest share one buffer.
        return False

    def _pack(self) -> bool:
        owner = type(self).__name__
        dtypes = [(i, p.data.dtype) for i, p in enumerate(self.params) if isinstance(p.data, np.ndarray)]
        other = next(((i, dt) for i, dt in dtypes if dt != dtypes[0][1]), None)
        if other is not None:
            i, dt = other
            raise TypeError(
                f"{owner}: all parameters must share one dtype, as L-BFGS works on them as one flat vector; "
                f"params[0] ({self.params[0].name!r}) is {dtypes[0][1]} but params[{i}] ({self.params[i].name!r}) "
                f"is {dt} (build the model with one dtype, float64 for L-BFGS)"
            )
        if not super()._pack():
            raise TypeError(
                f"{owner}: every parameter must hold a writeable float32 or float64 array and a gradient of the "
                "same shape and dtype"
            )
        return True

    def _group(self) -> _Group:
        """The one flat buffer, repacked first if something rebound a parameter's arrays."""
        if not self._packed():
            self._pack()
        return self._groups[0]

    def zero_grad(self) -> None:
        backend.kernels().zero_update(self._group().grad)

    def hyper_parameters(self) -> dict:
        return {"lr": self.lr, "max_iter": self.max_iter, "max_eval": self.max_eval,
                "tolerance_grad": self.tolerance_grad, "tolerance_change": self.tolerance_change,
                "history_size": self.history_size, "line_search": self.line_search}

    # -- one step --------------------------------------------------------------------------
    @staticmethod
    def _loss_of(loss) -> float:
        if isinstance(loss, bool) or not isinstance(loss, (int, float, np.integer, np.floating)):
            raise TypeError(f"LBFGS: the closure must return the loss as a number, got {type(loss).__name__}")
        return float(loss)

    def _evaluate(self, closure) -> tuple[float, _Group]:
        f = self._loss_of(closure())
        self.evaluations += 1
        return f, self._group()

    def _remember_pair(self, k, g: np.ndarray) -> None:
        """Stores the pair of the last iteration's step (s = t*d, y = g - g_prev) if its
        curvature is positive, dropping the oldest when the history is full."""
        k.add_scaled_forward(self._y_new, g, self._g_prev, -1.0)
        ys = self._t * k.dot(self._y_new, self._d)
        if not ys > _MIN_CURVATURE:
            return
        if self._pairs < len(self._rho):
            row = self._pairs
            self._pairs += 1
        else:
            row = self._first
            self._first = (self._first + 1) % len(self._rho)
        k.scale_forward(self._s[row], self._d, self._t)
        np.copyto(self._y[row], self._y_new)
        self._rho[row] = 1.0 / ys
        self._gamma = ys / k.dot(self._y_new, self._y_new)

    def step(self, closure=None):
        """Up to ``max_iter`` L-BFGS iterations on the loss ``closure()`` returns; returns the
        loss of the first call (at the parameters as they were)."""
        if not callable(closure):
            raise TypeError(
                "LBFGS.step(closure) needs a closure: a function that zeroes the gradients, runs forward and "
                "backward and returns the loss (opt.step(closure), as in PyTorch; see help(LBFGS))"
            )
        k = backend.kernels()
        self._group()
        first_loss = closure()
        f, group = self._loss_of(first_loss), self._group()
        g_max = k.max_abs(group.grad)
        if not (math.isfinite(f) and math.isfinite(g_max)):
            raise FloatingPointError(
                f"LBFGS: the loss ({f}) or the gradient (max |g| = {g_max}) at the current parameters is not "
                "finite; nothing was changed"
            )
        self.evaluations += 1
        self.steps += 1
        self.line_searches = []
        evals = 1
        self.stop_reason = "tolerance_grad"
        if g_max <= self.tolerance_grad:
            return first_loss
        self.stop_reason = "max_iter"
        for n_iter in range(1, self.max_iter + 1):
            self.iterations += 1
            g = group.grad
            if self.iterations == 1:
                k.scale_forward(self._d, g, -1.0)
                self._pairs, self._first, self._gamma = 0, 0, 1.0
            else:
                self._remember_pair(k, g)
                m = self._pairs
                k.lbfgs_direction(self._d, g, self._s[:m], self._y[:m], self._rho[:m], self._gamma, self._first)
            np.copyto(self._g_prev, g)
            prev_loss = f
            t = self.lr * min(1.0, 1.0 / k.sum_abs(g)) if self.iterations == 1 else self.lr
            slope = k.dot(g, self._d)
            if not slope < -self.tolerance_change:
                # No step is taken, so the next pair must not pretend one was.
                self._t = 0.0
                self.stop_reason = "no descent direction (g.d > -tolerance_change)"
                break
            np.copyto(self._x0, group.data)
            if self.line_search is None:
                k.add_scaled_forward(group.data, self._x0, self._d, t)
                self._t = t
                if n_iter == self.max_iter:
                    break  # as PyTorch: the last step is not evaluated
                f_new, group = self._evaluate(closure)
                evals += 1
                if not (math.isfinite(f_new) and math.isfinite(k.max_abs(group.grad))):
                    np.copyto(group.data, self._x0)
                    np.copyto(group.grad, self._g_prev)
                    self._t = 0.0
                    self.stop_reason = "non-finite loss or gradient after the step; the step was undone"
                    break
                f = f_new
            else:
                t, f, group, used = self._line_search(k, closure, t, f, slope)
                evals += used
                if t == 0.0:
                    np.copyto(group.data, self._x0)
                    np.copyto(group.grad, self._g_prev)
                    f = prev_loss
                    self.stop_reason = "line search found no decrease"
                    break
            if n_iter == self.max_iter:
                break
            if evals >= self.max_eval:
                self.stop_reason = "max_eval"
                break
            if k.max_abs(group.grad) <= self.tolerance_grad:
                self.stop_reason = "tolerance_grad"
                break
            if abs(t) * k.max_abs(self._d) <= self.tolerance_change:
                self.stop_reason = "tolerance_change (step)"
                break
            if abs(f - prev_loss) < self.tolerance_change:
                self.stop_reason = "tolerance_change (loss)"
                break
        return first_loss

    def _line_search(self, k, closure, t0: float, f0: float, slope0: float):
        """A strong Wolfe step from the iteration's start x0 along d; leaves the parameters at
        x0 + t*d with their gradient (or at x0 when t = 0). Returns (t, loss, group, calls)."""
        from .linesearch import strong_wolfe

        state = {"group": self._groups[0], "f": f0}

        def phi(t: float) -> tuple[float, float]:
            k.add_scaled_forward(state["group"].data, self._x0, self._d, t)
            state["f"], state["group"] = self._evaluate(closure)
            return state["f"], k.dot(state["group"].grad, self._d)

        # Relative steps closer than the dtype's resolution land on the same parameters.
        res = strong_wolfe(phi, f0, slope0, t0, t_tolerance=float(np.finfo(self._dtype).eps))
        calls = res.evaluations
        if res.t > 0 and not res.last:
            # The search ended on a trial it did not keep: put the parameters and gradient
            # at the step it chose.
            f, slope = phi(res.t)
            calls += 1
            res = dataclasses.replace(res, f=f, slope=slope, evaluations=calls, last=True)
        self._t = res.t
        self.line_searches.append(res)
        return res.t, res.f, state["group"], calls

    # -- state -----------------------------------------------------------------------------
    _ARRAYS = ("history.s", "history.y", "history.rho", "direction", "previous_gradient")
    _COUNTERS = ("step", "iterations", "evaluations", "pairs", "first")

    def state_dict(self) -> dict:
        """``type``, the settings, the counters (``step``, ``iterations``, ``evaluations``),
        the history's ring position (``pairs``, ``first``), ``t`` and ``gamma`` as Python
        scalars; the history (``history.s``, ``history.y`` (history_size, n),
        ``history.rho``), the last direction and the gradient it was taken at as copies."""
        return {"type": type(self).__name__, **self.hyper_parameters(), "step": self.steps,
                "iterations": self.iterations, "evaluations": self.evaluations, "pairs": self._pairs,
                "first": self._first, "t": self._t, "gamma": self._gamma,
                "history.s": self._s.copy(), "history.y": self._y.copy(), "history.rho": self._rho.copy(),
                "direction": self._d.copy(), "previous_gradient": self._g_prev.copy()}

    def load_state_dict(self, d: dict) -> None:
        """Restores what ``state_dict`` returned (the settings included); any mismatch raises
        ValueError naming the key and leaves the optimizer unchanged."""
        owner = type(self).__name__
        if not isinstance(d, dict):
            raise TypeError(f"{owner}: state dict must be a dict, got {type(d).__name__}")
        keys = ("type", *self.hyper_parameters(), *self._COUNTERS, "t", "gamma", *self._ARRAYS)
        missing = [key for key in keys if key not in d]
        if missing:
            raise ValueError(f"{owner}: state dict is missing key {missing[0]!r}")
        unexpected = [key for key in d if key not in keys]
        if unexpected:
            raise ValueError(f"{owner}: state dict has unexpected key {unexpected[0]!r}")
        if d["type"] != owner:
            raise ValueError(f"{owner}: key 'type' is {d['type']!r}, expected {owner!r}")
        try:
            settings = self._settings(**{name: d[name] for name in self.hyper_parameters()})
            counters = {name: _count(owner, name, d[name], 0) for name in self._COUNTERS}
            t = _at_least(owner, "t", d["t"], 0)
            gamma = _positive(owner, "gamma", d["gamma"])
        except TypeError as e:
            raise ValueError(str(e)) from None
        m, n = settings["history_size"], self._size
        shapes = {"history.s": (m, n), "history.y": (m, n), "history.rho": (m,), "direction": (n,),
                  "previous_gradient": (n,)}
        for key, shape in shapes.items():
            a = d[key]
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{owner}: key {key!r} must be a numpy.ndarray, got {type(a).__name__}")
            if a.shape != shape or a.dtype != self._dtype:
                raise ValueError(f"{owner}: key {key!r} has shape {a.shape} and dtype {a.dtype}; "
                                 f"expected {shape} and {self._dtype}")
        pairs, first = counters["pairs"], counters["first"]
        if pairs > m:
            raise ValueError(f"{owner}: key 'pairs' is {pairs}, more than history_size {m}")
        if first >= (m if pairs == m else 1):
            raise ValueError(f"{owner}: key 'first' is {first}; expected 0, or < history_size once the history "
                             f"is full (pairs = {pairs})")
        self.lr = settings.pop("lr")
        for name, value in settings.items():
            setattr(self, name, value)
        self._allocate(m)
        for key, a in zip(self._ARRAYS, (self._s, self._y, self._rho, self._d, self._g_prev)):
            np.copyto(a, d[key])
        self.steps, self.iterations, self.evaluations = counters["step"], counters["iterations"], counters["evaluations"]
        self._pairs, self._first, self._t, self._gamma = pairs, first, t, gamma
