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


def norm(x) -> float:
    """L2 norm of a whole tensor, accumulated in float64, as a Python float."""
    flat = np.ravel(x)
    return math.sqrt(float(np.dot(flat, flat))) if flat.dtype == np.float64 else \
        math.sqrt(float(np.dot(flat.astype(np.float64), flat.astype(np.float64))))


def total(x) -> float:
    """Sum of a whole tensor as a Python float."""
    return float(np.sum(x, dtype=np.float64))


def normal(rng: np.random.Generator, mean, std, like: np.ndarray) -> np.ndarray:
    """Gaussian noise shaped like `like`, in its dtype."""
    out = rng.standard_normal(like.shape, dtype=np.float64 if like.dtype == np.float64 else np.float32)
    if std != 1:
        out *= std
    if mean != 0:
        out += mean
    return out
