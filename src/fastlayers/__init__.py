"""fastlayers: the textbook's layers (forward/backward) with fast C++ kernels for CPU training."""

from . import backend, reference
from .backend import build_info, get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "backend",
    "reference",
    "build_info",
    "get_num_threads",
    "set_num_threads",
    "__version__",
]
