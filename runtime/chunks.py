"""Chunked execution of the generated NumPy kernels on large tensors.

A generated `_kernel_numpy` splits its update into stages (codegen/emit_numpy.py): each stage is a
nested function of one chunk that evaluates the spec's equations on slices with in-place ufuncs
(`out=`) into reusable scratch buffers. `run` calls it over cache-sized chunks, on every core (NumPy
releases the GIL inside ufuncs): the tensor is cut in one contiguous part per thread, and each
thread walks its part chunk by chunk with its own scratch buffers. Tensors below MIN_SIZE take the
straight-line kernel instead, so small tensors never pay for any of this.

16-bit arrays (float16 and bfloat16 weights, gradients and states, states stored `as bf16`) are
widened a chunk at a time into float32 buffers, the stage computes in float32 as the compiled kernels
do, and the chunks of the arrays it writes are rounded back (to nearest even) after it: no full-size
float32 copy exists, and each stage stores what the native and CUDA stages store.

    OPTFORGE_NUM_THREADS   threads for large tensors (default: the CPUs this process may use)
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK = 1 << 14          # elements per chunk: a stage's slices and scratch stay in L2
MIN_SIZE = 1 << 17       # below: the straight-line kernel
THREAD_MIN = 1 << 18     # below: one thread (a hand-off costs more than it saves)

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def threads() -> int:
    env = os.environ.get("OPTFORGE_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def use(weight, *arrays) -> bool:
    """Whether the chunked kernel applies: a large tensor and every array (None: a state this
    configuration does not keep) a C-contiguous ndarray of the weight's size."""
    if not isinstance(weight, np.ndarray) or weight.size < MIN_SIZE or not weight.flags.c_contiguous:
        return False
    n = weight.size
    for a in arrays:
        if a is not None and (not isinstance(a, np.ndarray) or a.size != n or not a.flags.c_contiguous):
            return False
    return True


def _compute(dtype):
    """The dtype a stage computes in: float64 for float64, float32 for the rest (16-bit storage)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def empty(*arrays) -> np.ndarray:
    """A full-size array for a tensor local that outlives its stage (read by a reduction or a later
    stage), shaped like the first array, in the dtype its stage computes in."""
    present = [a for a in arrays if a is not None]
    wide = any(a.dtype == np.float64 for a in present)
    return np.empty(arrays[0].shape, np.float64 if wide else np.float32)


def clip(x, bound, out):
    """ops.clip into `out`: a bound of None, 0 or below copies."""
    if bound is None or not bound > 0:
        if x is not out:
            np.copyto(out, x)
        return out
    return np.clip(x, -bound, bound, out=out)


def copy(x, out):
    """`out` holding `x` (a tensor local set to a weight or state)."""
    np.copyto(out, x)
    return out


def _scratch(key, count):
    """`count` per-thread buffers of CHUNK elements; `key` a dtype or ("wide", dtype)."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    have = bufs.get(key)
    dtype = key[1] if isinstance(key, tuple) else key
    if have is None or len(have) < count or have[0].size != CHUNK:   # CHUNK may have been changed
        have = bufs[key] = [np.empty(CHUNK, dtype) for _ in range(count)]
    return have[:count]


def _walk(stage, flat, lo, hi, dtype, n_scratch, err, narrow=(), writes=()):
    """The chunks [lo, hi) in order. `narrow`: positions of 16-bit arrays, each chunk of which is
    widened into a buffer of `dtype` first; those in `writes` are rounded back after the stage."""
    with np.errstate(**err):
        scratch = _scratch(dtype, n_scratch)
        wide = _scratch(("wide", dtype), len(narrow)) if narrow else []
        back = [k for k, j in enumerate(narrow) if j in writes]
        for s in range(lo, hi, CHUNK):
            e = min(s + CHUNK, hi)
            regs = scratch if e - s == CHUNK else [b[:e - s] for b in scratch]
            parts = [None if a is None else a[s:e] for a in flat]
            for k, j in enumerate(narrow):
                buf = wide[k][:e - s]
                buf[...] = parts[j]
                parts[j] = buf
            stage(*parts, *regs)
            for k in back:
                flat[narrow[k]][s:e] = wide[k][:e - s]


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < workers:
        with _pool_lock:
            if _pool is None or _pool._max_workers < workers:
                _pool = ThreadPoolExecutor(workers, thread_name_prefix="optforge-chunks")
    return _pool


def run(stage, arrays, n_scratch: int, writes=(), weight=None) -> None:
    """stage(*chunks of arrays, *n_scratch scratch buffers) over the whole tensors, in chunks;
    `writes`: the positions of the arrays the stage writes (16-bit ones are rounded back); the stage
    computes in `weight`'s compute type (float64 for float64, float32 otherwise)."""
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    present = [a for a in flat if a is not None]
    dtype = _compute(weight.dtype if weight is not None else
                     np.result_type(*[a.dtype if a.dtype.kind == "f" else np.float32 for a in present]))
    narrow = tuple(k for k, a in enumerate(flat) if a is not None and a.dtype != dtype)
    n = next(a.size for a in flat if a is not None)   # a conditional state may be absent (None)
    err = np.geterr()
    parts = min(threads(), max(1, n // (THREAD_MIN // 2)))
    if parts <= 1:
        _walk(stage, flat, 0, n, dtype, n_scratch, err, narrow, writes)
        return
    per = -(-n // parts // CHUNK) * CHUNK     # whole chunks per thread
    bounds = [(i * per, min(n, (i + 1) * per)) for i in range(parts) if i * per < n]
    pool = _executor(len(bounds) - 1)
    futures = [pool.submit(_walk, stage, flat, lo, hi, dtype, n_scratch, err, narrow, writes) for lo, hi in bounds[1:]]
    try:
        _walk(stage, flat, bounds[0][0], bounds[0][1], dtype, n_scratch, err, narrow, writes)
    finally:
        for f in futures:
            f.result()
