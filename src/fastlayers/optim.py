"""Optimizers: the textbook's update rules, applied to a list of Parameters.

Each ``step()`` runs one update kernel per parameter (``backend.kernels().adam_update``
and friends; see docs/kernels.md), then the optional max-norm constraint. Weight decay, L1
and max-norm apply to parameters with ``regularize=True`` only, or to every parameter with
``regularize="all"``. A typical loop::

    opt = fastlayers.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for x, t in batches:
        opt.zero_grad()
        loss = criterion.forward(model.forward(x), t) + opt.penalty()
        model.backward(criterion.backward())
        opt.step()
"""

from __future__ import annotations

import numpy as np

from . import backend
from .parameter import Parameter

__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "get", "NAMES"]

_REGULARIZE = ("weights", "all")


def _real(owner: str, name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(v).__name__}")
    return float(v)


def _at_least(owner: str, name: str, v, low: float) -> float:
    v = _real(owner, name, v)
    if not v >= low:  # also refuses NaN
        raise ValueError(f"{owner}: {name} must be >= {low:g}, got {v}")
    return v


def _positive(owner: str, name: str, v) -> float:
    v = _real(owner, name, v)
    if not v > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {v}")
    return v


def _fraction(owner: str, name: str, v) -> float:
    v = _real(owner, name, v)
    if not 0 <= v < 1:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {v}")
    return v


class Optimizer:
    """Base class: parameters, penalties, step counter and (de)serialisation.

    ``params`` is a non-empty list of distinct :class:`Parameter`. ``weight_decay`` adds
    ``weight_decay*W`` to the gradient (the gradient of ``0.5*weight_decay*||W||²``), ``l1``
    adds ``l1*sign(W)``; ``max_norm`` (None: off) rescales, after each update, every column
    of a 2-D weight (the incoming weights of one unit) and every filter of a 4-D
    convolution weight whose L2 norm exceeds it. Parameters of any other ndim are not
    max-norm constrained. ``steps`` counts the calls of ``step()``.

    Subclasses set ``kernel`` (the update kernel's name), ``state_names`` (state arrays,
    one set per parameter, zero-initialised) and ``hyper_names`` (their extra
    hyper-parameters, validated by ``_check_hyper``), and implement ``_update``.
    """

    kernel: str = ""
    state_names: tuple[str, ...] = ()
    hyper_names: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0, l1: float = 0.0,
                 max_norm: float | None = None, regularize: str = "weights"):
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
        self.params: list[Parameter] = params
        self.lr = lr
        self.weight_decay = _at_least(owner, "weight_decay", weight_decay, 0)
        self.l1 = _at_least(owner, "l1", l1, 0)
        self.max_norm = None if max_norm is None else _positive(owner, "max_norm", max_norm)
        if regularize not in _REGULARIZE:
            raise ValueError(f"{owner}: regularize must be 'weights' or 'all', got {regularize!r}")
        self.regularize = regularize
        self.steps = 0
        self.state: list[dict[str, np.ndarray]] = [
            {name: np.zeros_like(p.data) for name in self.state_names} for p in params
        ]

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
        return self.regularize == "all" or p.regularize

    def _update(self, k, p: Parameter, state: dict[str, np.ndarray], weight_decay: float, l1: float) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Zeroes every parameter's gradient (kernels accumulate into it)."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        """One update of every parameter from its current ``grad``."""
        self.steps += 1
        k = backend.kernels()
        for p, state in zip(self.params, self.state):
            reg = self._regularized(p)
            wd, l1 = (self.weight_decay, self.l1) if reg else (0.0, 0.0)
            self._update(k, p, state, wd, l1)
            if reg and self.max_norm is not None:
                self._apply_max_norm(k, p)

    def _apply_max_norm(self, k, p: Parameter) -> None:
        data = p.data
        if data.ndim == 2:
            k.max_norm_update(data, self.max_norm, 0)
        elif data.ndim == 4:
            # A C-contiguous reshape is a view, so the kernel rescales the filters in place.
            k.max_norm_update(data.reshape(data.shape[0], -1), self.max_norm, 1)

    def penalty(self) -> float:
        """Sum over regularized parameters of 0.5*weight_decay*||W||² + l1*sum|W|."""
        k = backend.kernels()
        total = 0.0
        for p in self.params:
            if not self._regularized(p):
                continue
            if self.weight_decay:
                total += 0.5 * self.weight_decay * k.sum_squares(p.data)
            if self.l1:
                total += self.l1 * k.sum_abs(p.data)
        return float(total)

    def hyper_parameters(self) -> dict:
        """The scalar settings, as stored by ``state_dict``."""
        d = {"lr": self.lr, "weight_decay": self.weight_decay, "l1": self.l1,
             "max_norm": self.max_norm, "regularize": self.regularize}
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
        and leaves the optimizer unchanged."""
        owner = type(self).__name__
        if not isinstance(d, dict):
            raise TypeError(f"{owner}: state dict must be a dict, got {type(d).__name__}")
        arrays = {f"state.{i}.{name}": (i, name) for i in range(len(self.params)) for name in self.state_names}
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
            hyper = {name: self._check_hyper(name, d[name]) for name in self.hyper_names}
        except TypeError as e:
            raise ValueError(str(e)) from None
        if d["regularize"] not in _REGULARIZE:
            raise ValueError(f"{owner}: key 'regularize' must be 'weights' or 'all', got {d['regularize']!r}")
        self.lr, self.weight_decay, self.l1, self.max_norm = lr, wd, l1, max_norm
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

    def _update(self, k, p, state, weight_decay, l1):
        k.sgd_update(p.data, p.grad, self.lr, weight_decay, l1)


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

    def _update(self, k, p, state, weight_decay, l1):
        getattr(k, self.kernel)(p.data, p.grad, state["v"], self.lr, self.momentum, weight_decay, l1)


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

    def _update(self, k, p, state, weight_decay, l1):
        k.adagrad_update(p.data, p.grad, state["h"], self.lr, self.eps, weight_decay, l1)


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

    def _update(self, k, p, state, weight_decay, l1):
        k.rmsprop_update(p.data, p.grad, state["h"], self.lr, self.decay, self.eps, weight_decay, l1)


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

    def _update(self, k, p, state, weight_decay, l1):
        k.adam_update(p.data, p.grad, state["m"], state["v"], self.lr, self.beta1, self.beta2,
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
