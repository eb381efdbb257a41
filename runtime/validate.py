"""Validation of an update's arguments before anything is touched: an update either applies to
every parameter or raises (ValueError / TypeError naming the argument) having changed nothing."""
from __future__ import annotations

import math
import numbers

import numpy as np
try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # NumPy < 2
    byte_bounds = np.byte_bounds

from . import cuda
from .sparse import RowSparse
from .state import OptState

from .dtypes import FLOAT_SET, FLOATS as FLOAT_DTYPES, NAMES as FLOAT_NAMES, is_low  # noqa: F401 - FLOAT_DTYPES: updater.py


def is_index(i) -> bool:
    return isinstance(i, (numbers.Integral, str)) and not isinstance(i, (bool, np.bool_))


def gather(opt, index, weight, grad, state):
    """Normalise to lists and validate everything before anything is touched: an update either
    applies to every parameter or raises (ValueError/TypeError naming the argument) having
    changed nothing."""
    is_list = isinstance(index, (list, tuple))
    if is_list:
        for what, seq in (("weight", weight), ("grad", grad), ("state", state)):
            if not isinstance(seq, (list, tuple)):
                raise TypeError(f"index is a list, so {what} must be a list too, got {type(seq).__name__}")
            if len(seq) != len(index):
                raise ValueError(f"{len(index)} indices but {len(seq)} {what}s")
        indices, weights, grads, states = list(index), list(weight), list(grad), list(state)
    else:
        indices, weights, grads, states = [index], [weight], [grad], [state]
    layout, seen = None, set()
    written = []  # (array, what): everything the update writes, which must not overlap
    for k, (i, w, g, s) in enumerate(zip(indices, weights, grads, states)):
        where = f"[{k}]" if is_list else ""
        check_index(i, "index" + where)
        if i in seen:
            raise ValueError(f"duplicate index {i!r} in a list update (index{where})")
        seen.add(i)
        check_array(w, "weight" + where, writeable=True)
        if not isinstance(g, RowSparse):   # a RowSparse was checked when it was made
            check_array(g, "grad" + where)
            if array_kind(g) != array_kind(w):
                raise TypeError(f"grad{where} is a {array_kind(g)} array but weight{where} is a "
                                f"{array_kind(w)} array")
        if g.shape != w.shape:
            raise ValueError(f"grad{where} has shape {g.shape} but weight{where} has shape {w.shape}")
        if g.dtype != w.dtype:
            raise TypeError(f"grad{where} has dtype {g.dtype} but weight{where} has dtype {w.dtype}")
        if not isinstance(s, OptState):
            raise TypeError(f"state{where} must come from this optimizer's create_state, got {type(s).__name__}")
        if s.owner != opt.spec_name:
            raise ValueError(f"state{where} belongs to a {s.owner} optimizer, not {opt.spec_name}")
        if s.shape != w.shape:
            raise ValueError(f"state{where} was created for shape {s.shape}, weight{where} has shape {w.shape}")
        if s.dtype != w.dtype:
            raise TypeError(f"state{where} was created for dtype {s.dtype}, weight{where} is {w.dtype}")
        written.append((w, "weight" + where))
        tensor_dtype = w.dtype
        if s.master is not None:
            if not is_low(w.dtype):
                raise TypeError(f"state{where} holds a float32 master copy, but weight{where} is {w.dtype}")
            check_array(s.master, f"state{where} master copy", writeable=True)
            if s.master.dtype != np.float32 or s.master.shape != w.shape:
                raise ValueError(f"state{where} master copy is {s.master.dtype}{list(s.master.shape)}, "
                                 f"expected float32{list(w.shape)}")
            written.append((s.master, f"state{where} master copy"))
            tensor_dtype = np.dtype(np.float32)
        if layout is None or layout[0] != w.shape:
            layout = (w.shape, opt.state_layout(w.shape))
        problem = layout[1].mismatch(s.tensors, s.scalars, opt.spec_name)
        if problem:
            raise ValueError(f"state{where} {problem}")
        for name, t in s.tensors.items():
            what = f"state{where} tensor {name!r}"
            check_array(t, what, writeable=True, codes=name in opt.state_quant)
            want = layout[1].shape_of(name)
            want_dtype = opt.tensor_dtype(name, tensor_dtype)
            if t.shape != want or t.dtype != want_dtype:
                raise ValueError(f"{what} is {t.dtype}{list(t.shape)}, expected {want_dtype}{list(want)}")
            written.append((t, what))
    # a gradient is read while the update writes: it may share no memory with what is written
    _check_no_overlap(written, [g for g in grads if not isinstance(g, RowSparse)], is_list)
    return indices, weights, grads, states


def number(name, value, finite=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if math.isnan(float(value)):
        raise ValueError(f"Invalid {name} value: nan")
    if finite and math.isinf(float(value)):
        raise ValueError(f"Invalid {name} value: {value!r} (must be finite)")


def check_index(i, what):
    if not is_index(i):
        raise TypeError(f"{what} must be an int or a str, got {type(i).__name__}")


def check_array(a, what, writeable=False, codes=False):
    """`codes`: an 8-bit state's uint8 codes are accepted too (their dtype is checked against the
    spec's layout by the caller)."""
    if not isinstance(a, np.ndarray) and not cuda.is_cupy(a):
        raise TypeError(f"{what} must be a numpy.ndarray (or a cupy.ndarray), got {type(a).__name__}")
    if a.dtype not in FLOAT_SET and not (codes and a.dtype == np.uint8):
        raise TypeError(f"{what} has dtype {a.dtype}; optforge updates {FLOAT_NAMES} arrays")
    if writeable:
        flags = a.flags
        if not getattr(flags, "writeable", True):
            raise ValueError(f"{what} is read-only; the update writes it in place")
        if not flags.c_contiguous:
            raise ValueError(f"{what} is not C-contiguous; pass np.ascontiguousarray(...) and copy back, "
                             "or update the base array")


def _check_no_overlap(arrays, read=(), is_list=False):
    """No two of the (C-contiguous) arrays an update writes may share memory: a weight passed
    twice, two views of one buffer, or a weight that is also a state would be updated twice. No
    array it only reads (the gradients, `read`) may share memory with one it writes: its values
    would change under the update, differently on each backend."""
    # only arrays that hang off one buffer can overlap: compare addresses within such groups (an array
    # that owns its memory, the usual case, is a group of its own)
    groups: dict = {}
    kinds = set()
    for a, what in arrays:
        if type(a) is np.ndarray:
            kinds.add("numpy")
            key = id(a) if a.base is None else _buffer_key(a)
        else:
            kinds.add(array_kind(a))
            key = _buffer_key(a)
        if a.nbytes:
            groups.setdefault(key, []).append((a, what, 0))
    if len(kinds) > 1:
        raise TypeError(f"one update mixes {' and '.join(sorted(kinds))} arrays; keep a parameter, its gradient and "
                        "its state on one device")
    for k, g in enumerate(read):   # a gradient joins only a group of written arrays (rarely: a view)
        key = _buffer_key(g) if not (type(g) is np.ndarray and g.base is None) else id(g)
        if key in groups and g.nbytes:
            groups[key].append((g, f"grad{f'[{k}]' if is_list else ''}", 1))
    for members in groups.values():
        if len(members) < 2:
            continue
        spans = sorted(_bounds(a) + (what, role) for a, what, role in members)
        for i, (start, end, first, role) in enumerate(spans):
            for start2, end2, second, role2 in spans[i + 1:]:
                if start2 >= end:
                    break
                if role == 0 or role2 == 0:   # two read-only arrays may share memory
                    raise ValueError(f"{second} shares memory with {first}; an update writes "
                                     + ("each of them once" if role == role2 == 0 else "one while reading the other"))


def _buffer_key(a):
    """The object owning `a`'s memory (the end of its chain of NumPy bases); CuPy arrays share one
    group, compared by address."""
    if cuda.is_cupy(a):
        return "cupy"
    while isinstance(a.base, np.ndarray):
        a = a.base
    return id(a if a.base is None else a.base)


def array_kind(a) -> str:
    return "cupy" if cuda.is_cupy(a) else "numpy"


def _bounds(a) -> tuple:
    if cuda.is_cupy(a):
        return (a.data.ptr, a.data.ptr + a.nbytes)
    return tuple(byte_bounds(a))
