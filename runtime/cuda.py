"""The CUDA backend: each spec's generated CUDA source (generated/<spec>.cu) loaded through
`cupy.RawModule`, compiled once per process and device (CuPy keeps its own disk cache), launched
with scalars as kernel arguments so nothing recompiles when lr, wd or t change. CuPy arrays select
this backend automatically; importing optforge never imports CuPy.

Kernel variants: f32, f64, f16 and bf16 (16-bit storage, float32 arithmetic), mp16 and mpbf16 (a
float32 master copy updated in place, the 16-bit weight written in the same pass). bfloat16 CuPy
arrays are CuPy 14's (ml_dtypes' dtype).
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from . import multi
from .dtypes import BFLOAT16
from .backend import SUFFIX, Backend, compute_dtype, variant  # noqa: F401 - variant: part of this API

_lock = threading.Lock()
_modules: dict = {}
THREADS = 256
TILE = 32               # tiled stages: a thread's tile is at most TILE rows x TILE cols (the kernels' OPTFORGE_TILE)
REDUCE_BLOCKS = 1024   # stages with fused reductions: a grid about one wave of a large GPU, one partial per thread
MT_REDUCE_BLOCKS = 32  # the same in a multi-tensor launch, per parameter (all parameters' blocks run together)


_SUFFIX = SUFFIX


def _blocks(n: int, cap: int) -> int:
    """Blocks of THREADS threads for n elements, at most `cap` (the kernels loop over the rest)."""
    return max(1, min((n + THREADS - 1) // THREADS, cap))


def is_cupy(x) -> bool:
    t = type(x)
    return t is not np.ndarray and t.__module__.startswith("cupy")


def to_host(a):
    """`a` as a NumPy array: CuPy arrays are copied to the host explicitly, others pass through."""
    return a.get() if is_cupy(a) else a


def move_like(a, like):
    """`a` (a NumPy or CuPy array) where `like` lives: on `like`'s GPU when `like` is a CuPy array,
    on the host otherwise. Returns `a` itself when it is there already."""
    if not is_cupy(like):
        return to_host(a)
    import cupy
    if is_cupy(a) and a.device.id == like.device.id:
        return a
    with cupy.cuda.Device(like.device.id):
        return cupy.asarray(to_host(a))


def module_for(cls, device_id: int):
    """The RawModule of an optimizer class on a device, compiled on first use."""
    import cupy
    key = (cls.__module__, cls.spec_hash, device_id)
    mod = _modules.get(key)
    if mod is None:
        with _lock:
            mod = _modules.get(key)
            if mod is None:
                src = Path(sys.modules[cls.__module__].__file__).with_suffix(".cu")
                mod = cupy.RawModule(code=src.read_text(), options=("--std=c++14",))
                _modules[key] = mod
    return mod


# A whole-tensor sum of squares for reductions the stages do not accumulate themselves (row-sparse
# updates, whose stages see only some rows; a reduction in an `if` condition): one pass, double
# accumulation, per-thread partial sums added in a fixed order; no float64 copy of the tensor.
SUM_SQUARES_SOURCE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
__device__ inline double optforge_wide(float x) { return (double)x; }
__device__ inline double optforge_wide(__nv_bfloat16 x) { return (double)(float)x; }
__device__ inline double optforge_wide(double x) { return x; }
__device__ inline double optforge_wide(__half x) { return (double)(float)x; }
template <typename T>
__device__ inline void optforge_sum_squares(long long n, const T* __restrict__ x, double* __restrict__ partials) {
    double acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x) {
        const double v = optforge_wide(x[i]);
        acc += v * v;
    }
    partials[(long long)blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
extern "C" {
__global__ void optforge_sum_squares_f32(long long n, const float* x, double* p) { optforge_sum_squares(n, x, p); }
__global__ void optforge_sum_squares_f64(long long n, const double* x, double* p) { optforge_sum_squares(n, x, p); }
__global__ void optforge_sum_squares_f16(long long n, const __half* x, double* p) { optforge_sum_squares(n, x, p); }
__global__ void optforge_sum_squares_bf16(long long n, const __nv_bfloat16* x, double* p) { optforge_sum_squares(n, x, p); }
/* step control's norm over a list of small tensors in one launch: blockIdx.y is the tensor, of
   sizes[t] elements at ptrs[t], of kinds[t] 0 (float32), 1 (float64), 2 (float16) or 3 (bfloat16); each thread's
   sum goes to partials[t * stride + thread] */
__global__ void optforge_sum_squares_list(const long long* sizes, const unsigned long long* ptrs,
                                          const long long* kinds, long long stride, double* partials) {
    const long long t = blockIdx.y, k = kinds[t];
    const void* x = (const void*)ptrs[t];
    double* p = partials + t * stride;
    if (k == 0) optforge_sum_squares(sizes[t], (const float*)x, p);
    else if (k == 1) optforge_sum_squares(sizes[t], (const double*)x, p);
    else if (k == 2) optforge_sum_squares(sizes[t], (const __half*)x, p);
    else optforge_sum_squares(sizes[t], (const __nv_bfloat16*)x, p);
}
}
"""
_sum_squares_modules: dict = {}


def _sum_squares_module(device: int):
    mod = _sum_squares_modules.get(device)
    if mod is None:
        import cupy
        with _lock:
            mod = _sum_squares_modules.get(device)
            if mod is None:
                mod = _sum_squares_modules[device] = cupy.RawModule(code=SUM_SQUARES_SOURCE, options=("--std=c++14",))
    return mod


def _sum_squares_into(mod, flat, partials) -> None:
    """Launch the sum of squares of one contiguous flat array into `partials` (len: its blocks x THREADS)."""
    mod.get_function(f"optforge_sum_squares_{_SUFFIX[flat.dtype]}")((len(partials) // THREADS,), (THREADS,),
                                                                   (np.int64(flat.size), flat, partials))


def sum_squares(x) -> float:
    """The sum of squares of a CuPy array, in double (see SUM_SQUARES_SOURCE)."""
    import cupy
    flat = cupy.ascontiguousarray(x).ravel()
    if flat.size == 0:
        return 0.0
    partials = cupy.zeros(_blocks(flat.size, REDUCE_BLOCKS) * THREADS, dtype=np.float64)
    _sum_squares_into(_sum_squares_module(flat.device.id), flat, partials)
    return float(partials.sum())


_NORM_KIND = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, BFLOAT16: 3}
LIST_MAX = MT_REDUCE_BLOCKS * THREADS * 8   # larger tensors of a list get their own launch (a full grid)


def sum_squares_list(arrays) -> float:
    """The sum of squares of a list of CuPy arrays on one device, in double, with one device-to-host
    copy for the whole list: the small tensors (at most LIST_MAX elements) in one launch over a table
    of their pointers, each larger one in its own launch, all into one table of per-thread partial
    sums summed on the device."""
    import cupy
    flats = [cupy.ascontiguousarray(a).ravel() for a in arrays]
    with cupy.cuda.Device(flats[0].device.id):
        mod = _sum_squares_module(flats[0].device.id)
        small = [f for f in flats if 0 < f.size <= LIST_MAX]
        large = [f for f in flats if f.size > LIST_MAX]
        groups = [small[i:i + 65535] for i in range(0, len(small), 65535)]   # gridDim.y <= 65535
        list_blocks = [_blocks(max(f.size for f in g), MT_REDUCE_BLOCKS) for g in groups]
        large_blocks = [_blocks(f.size, REDUCE_BLOCKS) for f in large]
        lengths = [len(g) * b * THREADS for g, b in zip(groups, list_blocks)] + [b * THREADS for b in large_blocks]
        if not lengths:
            return 0.0
        partials = cupy.zeros(sum(lengths), dtype=np.float64)
        offset, tables = 0, []   # the tables stay allocated until every launch reading them is done
        for g, blocks in zip(groups, list_blocks):
            n = len(g)
            host = np.empty(3 * n, np.uint64)
            host[:n] = [f.size for f in g]
            host[n:2 * n] = [f.data.ptr for f in g]
            host[2 * n:] = [_NORM_KIND[f.dtype] for f in g]
            dev = cupy.asarray(host)
            tables.append(dev)
            stride = blocks * THREADS
            mod.get_function("optforge_sum_squares_list")(
                (blocks, n), (THREADS,), (dev[:n].view(np.int64), dev[n:2 * n], dev[2 * n:].view(np.int64),
                                          np.int64(stride), partials[offset:offset + n * stride]))
            offset += n * stride
        for f, blocks in zip(large, large_blocks):
            _sum_squares_into(mod, f, partials[offset:offset + blocks * THREADS])
            offset += blocks * THREADS
        return float(partials.sum())


class CudaBackend(Backend):
    """The backend protocol (runtime/backend.py) for CuPy arrays."""

    def __init__(self, module, weight, grad, weight_lp=None):
        import cupy
        self.xp = cupy
        self.module = module
        self.suffix = variant(weight.dtype, grad.dtype, weight_lp is not None)
        self.weight_lp = weight_lp
        self.funcs: dict = {}

    def launch(self, fn: str, arrays, scalars, reduce: int = 0, stores: bool = True, dims=None, axes=(),
               hows=None):
        """Launch a stage. With `reduce`, the stage also accumulates that many fused reductions: each
        thread's partial sums land in a table that is summed here, in a fixed order (the result does
        not depend on scheduling), and come back as a list of floats (one device-to-host copy)."""
        name = f"{fn}_{self.suffix}"
        f = self.funcs.get(name)
        if f is None:
            f = self.funcs[name] = self.module.get_function(name)
        if dims is not None:
            return self._launch_tiled(f, arrays, scalars, reduce, dims, axes, hows or ("sum",) * reduce)
        n = next(a.size for a in arrays if a is not None)
        args = (np.int64(n), *_pointers(arrays), _pointer(self.weight_lp), *[np.float64(s) for s in scalars])
        if not reduce:
            f((_blocks(n, 65535),), (THREADS,), args)
            return None
        blocks = _blocks(n, REDUCE_BLOCKS)
        partials = self.xp.zeros(blocks * THREADS * reduce, dtype=np.float64)
        f((blocks,), (THREADS,), (*args, partials))
        return [float(x) for x in self.xp.asnumpy(partials.reshape(-1, reduce).sum(axis=0))]


    def _launch_tiled(self, f, arrays, scalars, reduce, dims, axes, hows):
        """A tiled stage (codegen/lower.py): one thread per tile of at most TILE x TILE elements; the
        pieces of its reductions along an axis come back in tables combined here in piece order,
        into the outputs (the last len(axes) arrays)."""
        xp = self.xp
        nb, nr, nc = (int(d) for d in dims)
        tr, tc = max(1, min(nr, TILE)), max(1, min(nc, TILE))
        nrc, ncc = -(-nr // tr), -(-nc // tc)
        tiles = nb * nrc * ncc
        outs = arrays[len(arrays) - len(axes):]
        memory = arrays[:len(arrays) - len(axes)]
        parts = [xp.empty(((ncc, nb * nr) if axis == -1 else (nrc, nb * nc)), np.float64) for _, axis in axes]
        partials = xp.empty(max(tiles, 1) * max(reduce, 1), np.float64)
        if tiles:
            args = (np.int64(nb), np.int64(nr), np.int64(nc), np.int64(tr), np.int64(tc), *_pointers(memory),
                    _pointer(self.weight_lp), *parts, *[np.float64(s) for s in scalars])
            f((_blocks(tiles, 65535),), (THREADS,), (*args, partials) if reduce else args)
        for out, part, (how, _) in zip(outs, parts, axes):
            out[...] = _combine(xp, part, how).reshape(out.shape).astype(out.dtype)
        if not reduce:
            return None
        table = partials[:tiles * reduce].reshape(tiles, reduce)
        init = {"sum": 0.0, "max": -np.inf, "min": np.inf}
        return [float(_combine(xp, table[:, k], how)) if tiles else init[how] for k, how in enumerate(hows)]


def _combine(xp, table, how):
    """A table of partial reductions (pieces x values) combined along its pieces, in order."""
    return table.sum(axis=0) if how == "sum" else table.max(axis=0) if how == "max" else table.min(axis=0)


class CudaRowsBackend(CudaBackend):
    """Lazy row-sparse update on the GPU: every stage runs its `_rows` kernel, one thread per gradient
    element (not per row, which would leave most of a wide GPU idle for few, long rows)."""

    def __init__(self, module, weight, grad_data, rows, weight_lp=None):
        super().__init__(module, weight, grad_data, weight_lp)
        self.rows = self.xp.ascontiguousarray(rows, dtype=np.int64)
        self.n = grad_data.size
        self.cols = grad_data.size // max(len(rows), 1)
        self.grad_shape = grad_data.shape

    def scratch(self, like, name, shape=None):
        return self.xp.empty(self.grad_shape, compute_dtype(like.dtype))

    def launch(self, fn: str, arrays, scalars, reduce: int = 0, stores: bool = True):
        """A stage's row kernel; its reductions are left to the host (they need every row), and a
        stage that only reduces is skipped."""
        if self.n == 0 or not stores:
            return None
        name = f"{fn}_rows_{self.suffix}"
        f = self.funcs.get(name)
        if f is None:
            f = self.funcs[name] = self.module.get_function(name)
        f((_blocks(self.n, 65535),), (THREADS,), (np.int64(self.n), np.int64(self.cols), self.rows, *_pointers(arrays),
                                  _pointer(self.weight_lp), *[np.float64(s) for s in scalars]))


def _pointer(a):
    """A kernel's pointer argument: the array, or a null pointer for an absent (conditional) state."""
    return a if a is not None else np.uint64(0)


def _pointers(arrays):
    return [_pointer(a) for a in arrays]


class MultiLauncher:
    """Runs a recorded multi-tensor launch (`multi.MultiTensorLaunches`) with the `_mt` kernels: the
    size, pointer and scalar tables packed into ONE host buffer and copied to the device in one
    transfer; the kernel gets views into it. A stage with reductions also gets a table of per-thread
    partial sums, summed per parameter on the device and copied back in one transfer into the
    parameters' `Pending`s."""

    def __init__(self, module):
        self.module = module

    def __call__(self, name, items):
        import cupy

        f = self.module.get_function(name)
        n, ntab = len(items), len(items[0][0])
        width = max(1, len(items[0][1]))
        host = np.zeros((2 + ntab) * n + width * n, dtype=np.uint64)
        sizes = [next(a.size for a in arrays if a is not None) for arrays, _, _, _ in items]
        host[:n] = sizes
        for k in range(ntab):
            host[(1 + k) * n:(2 + k) * n] = [arrays[k].data.ptr if arrays[k] is not None else 0
                                             for arrays, _, _, _ in items]
        host[(1 + ntab) * n:(2 + ntab) * n] = [w.data.ptr if w is not None else 0 for _, _, w, _ in items]
        scalars = host[(2 + ntab) * n:].view(np.float64).reshape(n, width)
        for row, (_, s, _, _) in zip(scalars, items):
            row[:len(s)] = s
        dev = cupy.asarray(host)
        tables = [dev[k * n:(k + 1) * n] for k in range(2 + ntab)]
        args = (tables[0].view(np.int64), *tables[1:], dev[(2 + ntab) * n:].view(np.float64))
        reduce = multi.reductions(items)
        if not reduce:
            f((_blocks(max(sizes), 1024), n), (THREADS,), args)   # sizes known on the host: no read-back
            return
        # fewer blocks per parameter: the partial-sum table holds one entry per thread and parameter
        blocks = _blocks(max(sizes), MT_REDUCE_BLOCKS)
        stride = blocks * THREADS
        partials = cupy.zeros(n * stride * reduce, dtype=np.float64)
        f((blocks, n), (THREADS,), (*args, np.int64(stride), partials))
        multi.resolve(items, cupy.asnumpy(partials.reshape(n, stride, reduce).sum(axis=1)).tolist())
