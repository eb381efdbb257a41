"""The few helpers generated NumPy kernels call that NumPy or `math` do not give directly."""
from __future__ import annotations

import math

import numpy as np


def sign(x):
    """Host sign: -1.0, 0.0 or 1.0."""
    return float((x > 0) - (x < 0))


def clip(x, bound):
    """Clip to [-bound, bound]. A bound of None, 0 or below means no clipping (MXNet's clip_gradient)."""
    if bound is None or not bound > 0:
        return x
    if isinstance(x, np.ndarray):
        return np.clip(x, -bound, bound)
    return min(max(x, -bound), bound)


def _xp(x):
    """The array module of `x`: numpy, or cupy for CuPy arrays (imported only then)."""
    if type(x).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def norm(x) -> float:
    """L2 norm of a whole tensor, accumulated in float64, as a Python float."""
    xp = _xp(x)
    flat = xp.ravel(x)
    if flat.dtype != xp.float64:
        flat = flat.astype(xp.float64)
    return math.sqrt(float(xp.dot(flat, flat)))


def total(x) -> float:
    """Sum of a whole tensor as a Python float."""
    return float(_xp(x).sum(x, dtype=np.float64))


def normal(rng: np.random.Generator, mean, std, like: np.ndarray) -> np.ndarray:
    """Gaussian noise shaped like `like`, in its dtype."""
    out = rng.standard_normal(like.shape, dtype=np.float64 if like.dtype == np.float64 else np.float32)
    if std != 1:
        out *= std
    if mean != 0:
        out += mean
    return out


def arg(x) -> float:
    """A host value as a kernel's scalar argument: numbers as float, True/False as 1/0, and none
    (an optional hyperparameter left unset, e.g. a clip bound) as 0."""
    return 0.0 if x is None else float(x)


def gather(x, rows):
    """The rows `rows` of `x` as a new array (float16 widened to float32, as dense updates compute);
    None stays None (a state this configuration does not keep)."""
    if x is None:
        return None
    out = x.take(rows, axis=0)
    return out.astype(np.float32) if out.dtype == np.float16 else out


ROW_BLOCK_ELEMENTS = 1 << 14


def row_blocks(rows, grad):
    """(rows, grad) in consecutive blocks of about ROW_BLOCK_ELEMENTS elements (views, no copies):
    the lazy row kernel of a spec whose rows are independent runs once per block."""
    n = rows.shape[0]
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, grad[:1].size))
    for lo in range(0, n, step):
        yield rows[lo:lo + step], grad[lo:lo + step]
