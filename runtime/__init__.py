"""optforge: optimizers written as specs, compiled to kernels, with MXNet 1.x's optimizer API.

    >>> import numpy as np, optforge
    >>> opt = optforge.create("adam", learning_rate=0.1)
    >>> w, g = np.ones(3, np.float32), np.full(3, 0.5, np.float32)
    >>> state = opt.create_state_multi_precision(0, w)
    >>> opt.update_multi_precision(0, w, g, state)
    >>> w.round(4).tolist()
    [0.9, 0.9, 0.9]
"""
from . import lr_scheduler
from .optimizer import Optimizer, OptState
from .sparse import RowSparse
from .registry import create, register, registered
from .specload import load_spec
from .updater import Updater, get_updater, load_states, save_states
from .generated import *  # noqa: F401,F403  - every compiled spec, registered on import
from .generated import __all__ as _generated

create_optimizer = create

__all__ = ["Optimizer", "OptState", "RowSparse", "Updater", "create", "create_optimizer", "get_updater", "load_spec", "load_states",
           "lr_scheduler", "register", "registered", "save_states"] + list(_generated)
__version__ = "0.1.0"
