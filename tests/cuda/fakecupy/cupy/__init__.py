"""A stand-in for CuPy that runs the generated CUDA kernels on the host (tests only).

It is as strict as CuPy where CuPy is strict, so that code which passes here does not fail on a
GPU for want of an explicit transfer:

* `ndarray` is not a NumPy array. `np.asarray(x)` and anything else that would copy it to the
  host implicitly raise TypeError, as CuPy's `__array__` does; `.get()` and `cupy.asnumpy` copy.
* Arithmetic, ufuncs, `__setitem__` and the module's functions reject `numpy.ndarray` operands
  (CuPy: "Unsupported type <class 'numpy.ndarray'>"); Python and NumPy scalars are fine. NumPy
  functions called on these arrays dispatch here through `__array_function__` /
  `__array_ufunc__` and fail when this module has no such function, as with CuPy.
* Reductions return 0-d arrays, not Python numbers; `float(x)`, `int(x)`, `bool(x)` convert.
* `RawModule` compiles the .cu source with g++ under tests/cuda/shim and launches a kernel through
  ctypes with CuPy's argument rules: arrays by device pointer, NumPy scalars as their own type,
  Python int / float / bool as long long / double / bool; anything else raises TypeError. Launch
  geometry is checked against CUDA's limits; small launches run every (block, thread) of the grid
  with the real `gridDim` / `blockDim`, large ones one thread per block row (the grid-stride loops
  then cover the whole range).

`cupy.random`, `cupy.cuda.runtime.getDeviceCount`, `cupy.cuda.Device` and `cupy.cuda.Event` cover
what the tests and benchmarks touch.
"""
import ctypes
import hashlib
import numbers
import os
import subprocess
import tempfile

import numpy as _np
from numpy.lib.mixins import NDArrayOperatorsMixin

SHIM = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shim")

__version__ = "0+host-stand-in"
float16, float32, float64 = _np.float16, _np.float32, _np.float64
int8, int16, int32, int64 = _np.int8, _np.int16, _np.int32, _np.int64
uint8, uint32, uint64, bool_ = _np.uint8, _np.uint32, _np.uint64, _np.bool_
dtype = _np.dtype


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _u(x):
    """An operand of a device operation: this module's arrays and scalars only."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        raise _unsupported(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_u(v) for v in x)
    return x


def _w(x):
    """Wrap a NumPy result: arrays and NumPy scalars become (0-d) device arrays."""
    if isinstance(x, _np.ndarray):
        return ndarray(_a=x)
    if isinstance(x, _np.generic):
        return ndarray(_a=_np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_w(v) for v in x)
    return x


class _Pointer:
    def __init__(self, ptr):
        self.ptr = ptr


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class ndarray(NDArrayOperatorsMixin):
    """A host NumPy array behind CuPy's interface (see the module doc)."""
    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, shape=None, dtype=float, *, _a=None):
        self._a = _np.empty(shape, dtype) if _a is None else _a

    # --- what CuPy refuses ------------------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = tuple(_u(o) for o in kwargs["out"])
        return _w(getattr(ufunc, method)(*(_u(x) for x in inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        mine = globals().get(func.__name__)
        if mine is None or not callable(mine) or func.__name__.startswith("_"):
            return NotImplemented
        return mine(*args, **kwargs)

    # --- attributes ---------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    data = property(lambda self: _Pointer(self._a.ctypes.data))
    device = property(lambda self: Device(0))
    T = property(lambda self: ndarray(_a=self._a.T))

    # --- methods ------------------------------------------------------------------------------------
    def get(self, stream=None, order="C", out=None):
        return _np.array(self._a, copy=True, order=order)

    def copy(self, order="C"):
        return ndarray(_a=self._a.copy(order=order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return ndarray(_a=self._a.astype(dtype, order=order, copy=copy))

    def reshape(self, *shape, order="C"):
        return ndarray(_a=self._a.reshape(*shape, order=order))

    def ravel(self, order="C"):
        return ndarray(_a=self._a.ravel(order))

    def view(self, dtype=None):
        return ndarray(_a=self._a.view() if dtype is None else self._a.view(dtype))

    def fill(self, value):
        if isinstance(value, (_np.ndarray, ndarray)) and _np.ndim(_u(value)) > 0:
            raise ValueError("non-scalar array cannot be used for fill")
        self._a.fill(_u(value))

    def take(self, indices, axis=None, out=None):
        return _w(self._a.take(_u(indices), axis=axis))

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __getitem__(self, key):
        return _w(self._a[_u(key)])

    def __setitem__(self, key, value):
        self._a[_u(key)] = _u(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_w(v) for v in self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        return bool(self._a)

    def __repr__(self):
        return repr(self._a)

    def __getattr__(self, name):
        # reductions and the like: the same method of the array, its arguments checked, result wrapped
        if name in _METHODS:
            method = getattr(self._a, name)
            return lambda *a, **k: _w(method(*(_u(x) for x in a), **{n: _u(v) for n, v in k.items()}))
        raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")


_METHODS = {"sum", "max", "min", "mean", "any", "all", "dot", "argmax", "argmin", "prod", "std", "var",
            "nonzero", "transpose", "squeeze", "flatten", "clip"}
ndarray.__module__ = "cupy"


# --- creation: host data may come in (an explicit copy to the device) ----------------------------------
def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(obj, ndarray):
        obj = obj._a
    return ndarray(_a=_np.array(obj, dtype=dtype, copy=copy, order=order, ndmin=ndmin))


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray) and (dtype is None or _np.dtype(dtype) == a.dtype):
        return a
    return ndarray(_a=_np.array(a._a if isinstance(a, ndarray) else a, dtype=dtype, order=order or "K"))


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray):
        return ndarray(_a=_np.ascontiguousarray(a._a, dtype=dtype))
    return ndarray(_a=_np.ascontiguousarray(a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(order=order)
    return _np.asarray(a, order=order)


def _creator(name):
    fn = getattr(_np, name)

    def make(*args, **kwargs):
        return _w(fn(*(_u(a) for a in args), **{k: _u(v) for k, v in kwargs.items()}))
    make.__name__ = name
    return make


# device functions: operands must already be on the device
for _name in ("zeros", "empty", "full", "ones", "arange", "zeros_like", "empty_like", "ones_like", "full_like",
              "ravel", "dot", "vdot", "sum", "prod", "square", "sqrt", "abs", "absolute", "sign", "exp", "log",
              "maximum", "minimum", "where", "logical_and", "logical_or", "logical_not", "nonzero", "concatenate",
              "stack", "isfinite", "isnan", "all", "any", "max", "min", "amax", "amin", "mean", "clip", "einsum",
              "count_nonzero", "reshape", "take", "linalg_norm", "matmul", "swapaxes", "union1d", "searchsorted"):
    if hasattr(_np, _name):
        globals()[_name] = _creator(_name)


def copyto(dst, src, casting="same_kind", where=True):
    _np.copyto(_u(dst), _u(src), casting=casting, where=_u(where))


def get_array_module(*args):
    import sys
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else _np


class _Random:
    def __init__(self):
        self._rng = _np.random.default_rng(0)

    def seed(self, seed=None):
        self._rng = _np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=float):
        return ndarray(_a=_np.asarray(self._rng.standard_normal(size)).astype(dtype))

    def random(self, size=None, dtype=float):
        return ndarray(_a=_np.asarray(self._rng.random(size)).astype(dtype))


random = _Random()


# --- kernels -----------------------------------------------------------------------------------------
class _Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


_SCALARS = {_np.dtype(t): c for t, c in ((_np.bool_, ctypes.c_bool), (_np.int8, ctypes.c_int8),
                                          (_np.int16, ctypes.c_int16), (_np.int32, ctypes.c_int32),
                                          (_np.int64, ctypes.c_int64), (_np.uint8, ctypes.c_uint8),
                                          (_np.uint16, ctypes.c_uint16), (_np.uint32, ctypes.c_uint32),
                                          (_np.uint64, ctypes.c_uint64), (_np.float32, ctypes.c_float),
                                          (_np.float64, ctypes.c_double))}


def _arg(a):
    """One kernel argument, converted as CuPy converts it."""
    if isinstance(a, ndarray):
        return ctypes.c_void_p(a._a.ctypes.data)
    if isinstance(a, _np.generic):
        if a.dtype not in _SCALARS:
            raise TypeError(f"Unsupported type {type(a)}")
        return _SCALARS[a.dtype](a.item())
    if isinstance(a, bool):
        return ctypes.c_bool(a)
    if isinstance(a, int):
        return ctypes.c_longlong(a)
    if isinstance(a, float):
        return ctypes.c_double(a)
    raise _unsupported(a)


def _dim3(d, what):
    d = (d,) if isinstance(d, numbers.Integral) else tuple(d)
    if not 1 <= len(d) <= 3 or not all(isinstance(v, numbers.Integral) and int(v) >= 1 for v in d):
        raise ValueError(f"invalid {what} dimensions {d!r}")
    d = tuple(int(v) for v in d) + (1,) * (3 - len(d))
    return d


class _Function:
    SIMULATE_LIMIT = 8192   # launches with at most this many threads run every (block, thread)

    def __init__(self, lib, name):
        self.name = name
        self.f = getattr(lib, name)
        self.f.restype = None
        self.dims = {k: _Dim3.in_dll(lib, k) for k in ("blockIdx", "threadIdx", "blockDim", "gridDim")}

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid, block = _dim3(grid, "grid"), _dim3(block, "block")
        if grid[0] > 2 ** 31 - 1 or grid[1] > 65535 or grid[2] > 65535:
            raise ValueError(f"{self.name}: grid {grid} exceeds CUDA's limits")
        if block[0] * block[1] * block[2] > 1024 or block[2] > 64:
            raise ValueError(f"{self.name}: block {block} exceeds CUDA's limits")
        if not isinstance(args, tuple):
            raise TypeError("kernel arguments must be a tuple")
        converted = [_arg(a) for a in args]
        d = self.dims
        full = grid[0] * block[0] <= self.SIMULATE_LIMIT
        bx, tx = (grid[0], block[0]) if full else (1, 1)
        d["gridDim"].x, d["gridDim"].y, d["gridDim"].z = bx, grid[1], 1
        d["blockDim"].x, d["blockDim"].y, d["blockDim"].z = tx, 1, 1
        try:
            for y in range(grid[1]):
                d["blockIdx"].y = y
                for b in range(bx):
                    d["blockIdx"].x = b
                    for t in range(tx):
                        d["threadIdx"].x = t
                        self.f(*converted)
        finally:
            for k in ("blockIdx", "threadIdx"):
                d[k].x = d[k].y = d[k].z = 0
            for k in ("blockDim", "gridDim"):
                d[k].x = d[k].y = d[k].z = 1


_built = {}


class RawModule:
    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 name_expressions=None, jitify=False):
        if code is None:
            with open(path) as f:
                code = f.read()
        key = hashlib.sha256(code.encode()).hexdigest()[:16]
        if key not in _built:
            tmp = tempfile.mkdtemp(prefix="fakecupy-")
            src, lib = os.path.join(tmp, "k.cu"), os.path.join(tmp, "k.so")
            with open(src, "w") as f:
                f.write(code)
            subprocess.run(["g++", "-x", "c++", "-std=c++14", "-O1", "-shared", "-fPIC", "-I", SHIM, src, "-o", lib],
                           check=True, capture_output=True)
            _built[key] = ctypes.CDLL(lib)
        self.lib = _built[key]

    def get_function(self, name):
        return _Function(self.lib, name)


class _Runtime:
    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDeviceProperties(device):
        return {"name": b"fakecupy host"}


class _Event:
    def record(self, stream=None):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed(start, end):
    return (end.t - start.t) * 1e3


class cuda:  # noqa: N801 - mirrors cupy.cuda
    runtime = _Runtime
    Device = Device
    Event = _Event
    get_elapsed_time = staticmethod(_elapsed)
