"""Row-sparse tensors: a few rows of a large matrix, as MXNet's ``row_sparse`` storage holds them.

    >>> import numpy as np, optforge
    >>> g = optforge.RowSparse(np.ones((2, 3), np.float32), [1, 4], shape=(6, 3))
    >>> g.nnz_rows, g.shape, g.dtype
    (2, (6, 3), dtype('float32'))
    >>> g.todense()[:, 0].tolist()
    [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]

A gradient given as a ``RowSparse`` updates a dense weight in one of two ways, chosen by the spec's
``sparse`` declaration and the optimizer's hyperparameters (``Optimizer._sparse_lazy``):

* lazy: only the rows in ``indices`` of the weight and of every state tensor change; the rest stay
  bit-identical. The generated row kernel gathers those rows, applies the spec's equations and
  scatters them back, so a step costs O(nnz_rows), never O(num_rows) (reductions of the weight
  or a state, such as LARS's weight norm, read the whole tensor, as MXNet does).
* standard: exactly the dense update with a gradient that is zero outside ``indices``.

The arrays are NumPy arrays; the array module is looked up from ``data`` (``xp``), so that a CuPy
backend can pass CuPy arrays through the same class.
"""
from __future__ import annotations

import numbers

import numpy as np

from .dtypes import FLOATS as FLOAT_DTYPES, NAMES as FLOAT_NAMES


def array_module(a):
    """The array module (NumPy, or CuPy when given CuPy arrays) that owns `a`."""
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        import cupy
        return cupy
    return np


class RowSparse:
    """`shape[0]` rows of which only `indices` are stored, in `data` (one row of `data` per index).

    data : array of shape ``(len(indices), *shape[1:])`` and a float dtype (float16/32/64).
    indices : 1-D integer array (or sequence), strictly increasing, each in ``[0, shape[0])``.
    shape : the dense shape, at least 1-D.

    Everything is checked on construction (TypeError for wrong types, ValueError for wrong values,
    each naming the problem), so an update never starts with a malformed gradient. ``indices`` is
    copied (int64, read-only) before it is checked; ``data`` is kept as given.
    """
    __slots__ = ("data", "indices", "shape", "xp")

    def __init__(self, data, indices, shape):
        xp = array_module(data)
        if not isinstance(data, xp.ndarray):
            raise TypeError(f"RowSparse data must be an array, got {type(data).__name__}")
        if np.dtype(data.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"RowSparse data has dtype {data.dtype}; expected {FLOAT_NAMES}")
        if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, (tuple, list)) or not shape or not all(
                isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ValueError(f"RowSparse shape must be a non-empty tuple of non-negative ints, got {shape!r}")
        shape = tuple(int(n) for n in shape)
        if not isinstance(indices, xp.ndarray):
            indices = xp.asarray(indices if len(indices) else np.zeros(0, np.int64))
        if indices.dtype.kind not in "iu":
            raise TypeError(f"RowSparse indices must be integers, got dtype {indices.dtype}")
        if indices.dtype.kind == "u" and indices.size and int(indices.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"RowSparse index {int(indices.max())} is out of range for {shape[0]} rows")
        # a private, read-only copy, checked below: changing the caller's array afterwards cannot move
        # an update out of bounds (the row kernels index memory with these)
        indices = xp.array(indices, dtype=xp.int64, copy=True)
        if xp is np:
            indices.flags.writeable = False
        if indices.ndim != 1:
            raise ValueError(f"RowSparse indices must be 1-D, got shape {tuple(indices.shape)}")
        expected = (indices.shape[0],) + shape[1:]
        if tuple(data.shape) != expected:
            raise ValueError(f"RowSparse data has shape {tuple(data.shape)}, expected {expected} "
                             f"({indices.shape[0]} indices, dense shape {shape})")
        n = indices.shape[0]
        if n:
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= shape[0]:
                bad = lo if lo < 0 else hi
                raise ValueError(f"RowSparse index {bad} is out of range for {shape[0]} rows")
            if n > 1 and not bool((indices[1:] > indices[:-1]).all()):
                dup = bool((indices[1:] == indices[:-1]).any())
                raise ValueError("RowSparse indices must be " + ("unique (a row appears twice)" if dup else
                                                                  "sorted in increasing order"))
        self.data = data
        self.indices = indices
        self.shape = shape
        self.xp = xp

    @classmethod
    def from_dense(cls, dense, rows=None):
        """The rows `rows` of `dense` (default: its rows that hold a non-zero)."""
        xp = array_module(dense)
        if rows is None:
            flat = dense.reshape(dense.shape[0], -1) if dense.ndim > 1 else dense.reshape(-1, 1)
            rows = xp.nonzero((flat != 0).any(axis=1))[0]
        rows = xp.asarray(rows, dtype=xp.int64)
        return cls(dense[rows], rows, dense.shape)

    @property
    def nnz_rows(self) -> int:
        return int(self.indices.shape[0])

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def todense(self):
        """A new dense array: `data` in the rows `indices`, zeros elsewhere."""
        out = self.xp.zeros(self.shape, dtype=self.data.dtype)
        out[self.indices] = self.data
        return out

    def __repr__(self):
        return f"RowSparse({self.nnz_rows} of {self.shape[0]} rows, shape={self.shape}, dtype={self.dtype})"
