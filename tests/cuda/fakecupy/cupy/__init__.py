"""A stand-in for CuPy that runs the generated CUDA kernels on the host (tests only).

Arrays are NumPy arrays of a subclass that lives in a module named `cupy`, with `.data.ptr` and
`.device.id`; `RawModule` compiles the .cu source with g++ under tests/cuda/shim and launches each
kernel through ctypes, walking `blockIdx.y` for multi-tensor grids (one thread per block, so every
grid-stride loop covers its whole range). It lets the CUDA backend's Python side (runtime/cuda.py and
the Optimizer's CuPy paths) run end to end without a GPU.
"""
import ctypes
import hashlib
import os
import subprocess
import tempfile

import numpy as _np

SHIM = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shim")


class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class _Device:
    id = 0


class ndarray(_np.ndarray):
    @property
    def data(self):
        return _Ptr(self.ctypes.data)

    @property
    def device(self):
        return _Device()


def _wrap(x):
    if isinstance(x, _np.ndarray) and not isinstance(x, ndarray):
        return x.view(ndarray)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


def _passthrough(name):
    fn = getattr(_np, name)
    return lambda *a, **k: _wrap(fn(*a, **k))


for _name in ("zeros", "empty", "full", "array", "asarray", "ascontiguousarray", "ravel", "dot", "sum", "square",
              "sqrt", "abs", "sign", "exp", "log", "maximum", "minimum", "where", "logical_and", "logical_or",
              "logical_not", "nonzero", "empty_like", "zeros_like", "copyto"):
    globals()[_name] = _passthrough(_name)

float16, float32, float64, int64, uint64, bool_ = _np.float16, _np.float32, _np.float64, _np.int64, _np.uint64, _np.bool_


def asnumpy(x):
    return _np.array(x, copy=True).view(_np.ndarray)


class _Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


def _arg(a):
    if isinstance(a, _np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, _np.int64):
        return ctypes.c_int64(int(a))
    if isinstance(a, _np.uint64):
        return ctypes.c_uint64(int(a))
    if isinstance(a, (_np.float64, float)):
        return ctypes.c_double(float(a))
    if isinstance(a, int):
        return ctypes.c_int64(a)
    raise TypeError(f"fake cupy: unsupported kernel argument {type(a).__name__}")


class _Function:
    def __init__(self, lib, name):
        self.f = getattr(lib, name)
        self.f.restype = None
        self.block_idx = _Dim3.in_dll(lib, "blockIdx")

    def __call__(self, grid, block, args):
        converted = [_arg(a) for a in args]
        for y in range(grid[1] if len(grid) > 1 else 1):
            self.block_idx.y = y
            self.f(*converted)
        self.block_idx.y = 0


_built = {}


class RawModule:
    def __init__(self, code, options=()):
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


class cuda:  # noqa: N801 - mirrors cupy.cuda
    runtime = _Runtime
