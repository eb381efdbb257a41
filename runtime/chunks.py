"""Chunked execution of the generated NumPy kernels on large tensors.

A generated `_kernel_numpy` splits its update into stages (codegen/emit_numpy.py): each stage is a
nested function of one chunk that evaluates the spec's equations on slices with in-place ufuncs
(`out=`) into reusable scratch buffers. `run` calls it over cache-sized chunks, on every core (NumPy
releases the GIL inside ufuncs): the tensor is cut in one contiguous part per thread, and each
thread walks its part chunk by chunk with its own scratch buffers. Tensors below MIN_SIZE take the
straight-line kernel instead, so small tensors never pay for any of this.

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


def empty(*arrays) -> np.ndarray:
    """A full-size array for a tensor local that outlives its stage (read by a reduction or a later
    stage), shaped like the first array, in the dtype the expression would have."""
    return np.empty(arrays[0].shape, np.result_type(*[a for a in arrays if a is not None]))


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


def _scratch(dtype, count):
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    have = bufs.get(dtype)
    if have is None or len(have) < count or have[0].size != CHUNK:   # CHUNK may have been changed
        have = bufs[dtype] = [np.empty(CHUNK, dtype) for _ in range(count)]
    return have[:count]


def _walk(stage, flat, lo, hi, dtype, n_scratch, err):
    with np.errstate(**err):
        scratch = _scratch(dtype, n_scratch)
        for s in range(lo, hi, CHUNK):
            e = min(s + CHUNK, hi)
            regs = scratch if e - s == CHUNK else [b[:e - s] for b in scratch]
            stage(*[None if a is None else a[s:e] for a in flat], *regs)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < workers:
        with _pool_lock:
            if _pool is None or _pool._max_workers < workers:
                _pool = ThreadPoolExecutor(workers, thread_name_prefix="optforge-chunks")
    return _pool


def run(stage, arrays, n_scratch: int) -> None:
    """stage(*chunks of arrays, *n_scratch scratch buffers) over the whole tensors, in chunks."""
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    dtype = np.result_type(*[a for a in flat if a is not None])
    n = next(a.size for a in flat if a is not None)   # a conditional state may be absent (None)
    err = np.geterr()
    parts = min(threads(), max(1, n // (THREAD_MIN // 2)))
    if parts <= 1:
        _walk(stage, flat, 0, n, dtype, n_scratch, err)
        return
    per = -(-n // parts // CHUNK) * CHUNK     # whole chunks per thread
    bounds = [(i * per, min(n, (i + 1) * per)) for i in range(parts) if i * per < n]
    pool = _executor(len(bounds) - 1)
    futures = [pool.submit(_walk, stage, flat, lo, hi, dtype, n_scratch, err) for lo, hi in bounds[1:]]
    try:
        _walk(stage, flat, bounds[0][0], bounds[0][1], dtype, n_scratch, err)
    finally:
        for f in futures:
            f.result()
