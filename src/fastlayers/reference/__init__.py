"""The NumPy oracle: every kernel of fastlayers, written plainly.

Each function here has the same name and signature as its native twin in
``fastlayers._native`` and is the definition that twin is tested against. See
``docs/kernels.md`` for the conventions (outputs first; activation gradients overwrite,
parameter gradients accumulate) and the shape of every argument.
"""

from . import activations, conv, health, lbfgs, linear, losses, norm, optim, warp
from .activations import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .health import *  # noqa: F401,F403
from .lbfgs import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .warp import *  # noqa: F401,F403

__all__ = [
    *linear.__all__,
    *conv.__all__,
    *norm.__all__,
    *activations.__all__,
    *losses.__all__,
    *optim.__all__,
    *warp.__all__,
    *lbfgs.__all__,
    *health.__all__,
]
