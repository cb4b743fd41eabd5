"""fastlayers: the textbook's layers (forward/backward) with fast C++ kernels for CPU training."""

__version__ = "0.1.0"

from . import (augment, backend, callbacks, checkpoint, data, init, layers, losses, models, optim, reference,
               schedules, tune)
from .backend import build_info, get_num_threads, set_num_threads
from .callbacks import Callback
from .checkpoint import load, save
from .gradcheck import gradcheck
from .numerical import numerical_gradient
from .parameter import Parameter
from .trainer import Trainer

__all__ = [
    "Callback",
    "Parameter",
    "Trainer",
    "augment",
    "backend",
    "build_info",
    "callbacks",
    "checkpoint",
    "data",
    "get_num_threads",
    "gradcheck",
    "init",
    "layers",
    "load",
    "losses",
    "models",
    "numerical_gradient",
    "optim",
    "reference",
    "save",
    "schedules",
    "set_num_threads",
    "tune",
    "__version__",
]
