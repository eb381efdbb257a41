"""The floating-point types optforge stores weights, gradients and states in.

float16 and bfloat16 (ml_dtypes' NumPy dtype, which JAX, CuPy 14 and torch's NumPy interop share)
are storage types: kernels widen them to float32 on load and round on store. float32 and float64
compute in their own type. A 16-bit weight can have a float32 master copy (`multi_precision`), and a
bfloat16 one without a master copy can be rounded stochastically (`stochastic_rounding`).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

FLOAT16 = np.dtype(np.float16)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)

LOW = (FLOAT16, BFLOAT16)             # 16-bit storage, float32 arithmetic
FLOATS = (FLOAT16, BFLOAT16, FLOAT32, FLOAT64)
FLOAT_SET = frozenset(FLOATS)
NAMES = "float16, bfloat16, float32 and float64"


def is_low(dtype) -> bool:
    """Whether arrays of `dtype` are 16-bit storage (computed in float32)."""
    return np.dtype(dtype) in LOW


def is_float(dtype) -> bool:
    return np.dtype(dtype) in FLOAT_SET


def by_name(name: str):
    """A dtype from its name as checkpoints record it (`str(dtype)`: 'bfloat16', 'float32', ...)."""
    for d in FLOATS:
        if str(d) == name:
            return d
    raise KeyError(name)
