"""Dispatch: which generated kernel runs each parameter of one update call, on which backend.

`Optimizer._update` validates, counts and computes each parameter's `Step`; `run` then picks, per
parameter: the CUDA kernels for CuPy arrays, the native C++ kernels or the NumPy kernel for NumPy
arrays (`backend`, chosen once per call), the lazy row kernels for a row-sparse gradient of a spec
that declares `sparse lazy`, and float32 compute for float16 and bfloat16 weights (with or without a
master copy; without one, the native and CUDA kernels load and store the 16-bit arrays themselves, the
NumPy backend updates float32 copies and stores them back rounded).
A list update defers launches to one multi-tensor launch per stage where it can (runtime/multi.py):
every parameter on CUDA, the small tensors on the native backend.
"""
from __future__ import annotations

import numpy as np

from . import chunks, cuda, native, ops
from .dtypes import is_low
from .multi import MultiTensorLaunches, run_lockstep
from .sparse import RowSparse


def run(opt, weights, grads, states, steps, backend: str, done: list) -> None:
    """Run every parameter's update; `done` receives the position of each one completed (a deferred
    list update completes all its parameters at once, when its launches have run)."""
    if getattr(opt, "gathers", 0):
        _run_meeting(opt, weights, grads, states, steps, backend)
        done.extend(range(len(weights)))
        return
    multi = _multi(opt, weights, grads, backend)
    phases = []   # deferred drivers with fused reductions: they run in lockstep
    with np.errstate(all="ignore"):
        for k, (w, g, s, step) in enumerate(zip(weights, grads, states, steps)):
            if multi is not None and (multi.xp is not np or native.batchable(w, g, s.master)):
                gen = _deferred(opt, w, g, s, step, multi)
                if gen is not None:
                    phases.append(gen)
            else:
                step_one(opt, w, g, s, step, backend)
                done.append(k)
        if multi is not None:
            run_lockstep(multi, phases)
            finished = set(done)
            done.extend(k for k in range(len(weights)) if k not in finished)


def _multi(opt, weights, grads, backend):
    """The deferred launches of a list update, or None: on CUDA every parameter's, on the native
    backend the small tensors' (one call per stage, in parallel over tensors). Not on the native
    backend with a reduce hook: deferring only the small tensors would reorder the hook's calls, and
    sharded ranks, whose slices differ in size, must all-reduce in the same order."""
    if len(weights) < 2 or not opt.multi_tensor:
        return None
    if all(cuda.is_cupy(w) and cuda.is_cupy(g) for w, g in zip(weights, grads)):
        import cupy
        return MultiTensorLaunches(cuda.MultiLauncher(cuda.module_for(type(opt), weights[0].device.id)),
                                   cupy, opt.kernel_stages)
    if backend == "native" and ops.current_reduce_hook() is None:
        return MultiTensorLaunches(native.MultiLauncher(native.library_for(type(opt))), np, opt.kernel_stages)
    return None


def _run_meeting(opt, weights, grads, states, steps, backend: str) -> None:
    """A spec that reduces over all parameters (`global_sum`, ...): every parameter's update is a
    generator, and all of them run together: each runs up to its next meeting point (`ops.Gather`),
    where the runner combines their numbers and runs the interlude once, then all go on. Launches
    deferred to a multi-tensor launch (CUDA lists, the native backend's small tensors) are flushed
    whenever every parameter waits on one or on a meeting point."""
    run_meeting_calls([(opt, weights, grads, states, steps, backend)])


def run_meeting_calls(calls) -> None:
    """`_run_meeting` for the calls of several optimizers that are one update call together
    (optimizer.update_together): all their parameters meet at each point."""
    multis = []
    gens = []
    with np.errstate(all="ignore"):
        for opt, weights, grads, states, steps, backend in calls:
            multi = _multi(opt, weights, grads, backend)
            if multi is not None:
                multis.append(multi)
            # each parameter keeps its own scratch arrays: they live across the meeting points
            caches = opt.__dict__.setdefault("_meeting_scratch", {})
            gens += [_param_phases(opt, w, g, s, step, backend, multi, caches.setdefault(k, {}))
                     for k, (w, g, s, step) in enumerate(zip(weights, grads, states, steps))]
        try:
            run_lockstep(_Flushes(multis) if multis else None, gens)
        finally:
            for gen in gens:
                gen.close()


class _Flushes:
    """The deferred launches of several optimizers, flushed together."""
    def __init__(self, multis):
        self.multis = multis

    def flush(self):
        for m in self.multis:
            m.flush()


def _param_phases(opt, weight, grad, state, step, backend, multi, cache):
    """One parameter's update as a generator (the variants of `step_one`)."""
    if isinstance(grad, RowSparse):
        grad = grad.todense()   # (a lazy update has no meeting points: codegen/verify.py)
    if multi is not None and (multi.xp is not np or native.batchable(weight, grad, state.master)):
        target = state.master if state.master is not None else weight
        be = multi.param(target, grad, weight_lp=weight if state.master is not None else None)
        yield from opt._kernel_phases(be, step, target, grad, state.tensors, state.scalars)
    elif cuda.is_cupy(weight):
        module = cuda.module_for(type(opt), weight.device.id)
        if state.master is not None:
            be = cuda.CudaBackend(module, state.master, grad, weight_lp=weight)
            yield from opt._kernel_phases(be, step, state.master, grad, state.tensors, state.scalars)
        else:
            yield from opt._kernel_phases(cuda.CudaBackend(module, weight, grad), step, weight, grad,
                                          state.tensors, state.scalars)
    elif state.master is not None and _master_kernels(opt, backend, weight):
        # native: the mp16 / mpbf16 kernels read the 16-bit gradient, update the master and write the
        # 16-bit weight in the same pass
        be = native.NativeBackend(native.library_for(type(opt), low=True), np.float32, cache, weight_lp=weight)
        yield from opt._kernel_phases(be, step, state.master, np.ascontiguousarray(grad), state.tensors, state.scalars)
    elif state.master is not None:
        master = state.master
        yield from _dense_phases(opt, step, master, grad.astype(np.float32), state.tensors, state.scalars, backend, cache)
        weight[...] = master
    elif is_low(weight.dtype) and backend != "native" and not _in_chunks(opt, weight, grad, state, step):
        # NumPy: the update of float32 copies, stored back rounded (the native kernels load and
        # store the 16-bit arrays themselves; so does the chunked NumPy kernel, a chunk at a time)
        w32 = weight.astype(np.float32)
        t32 = _widened(opt, state.tensors, np.float32, copy=True)
        yield from _dense_phases(opt, step, w32, grad.astype(np.float32), t32, state.scalars, backend, cache)
        _store_low(opt, weight, w32, t32, state.tensors, step)
    else:
        yield from _dense_phases(opt, step, weight, grad, state.tensors, state.scalars, backend, cache)


def _master_kernels(opt, backend, weight) -> bool:
    """Whether a 16-bit weight's master-copy update runs the native mp16 / mpbf16 kernels: the
    native backend, a NumPy weight, and a driver that never reads the gradient on the host (which
    would then see it in 16 bits)."""
    return backend == "native" and isinstance(weight, np.ndarray) and not opt.host_reads_grad


def _raw_arrays(opt, weight, grad, tensors, step) -> bool:
    """Whether the NumPy kernel takes 16-bit arrays (weight, gradient, stored states) as they are and
    widens them a chunk at a time (runtime/chunks.py): a large contiguous parameter of a spec whose
    chunked kernel allows it (`chunked`), no 8-bit state, and no gradient factor on a 16-bit
    gradient (it would be applied in 16 bits)."""
    return (opt.chunked and not opt.state_quant and (step.grad_scale == 1 or not is_low(grad.dtype))
            and chunks.use(weight, grad, *tensors.values()))


def _in_chunks(opt, weight, grad, state, step) -> bool:
    """`_raw_arrays` for a 16-bit weight without a master copy, unless it is rounded stochastically
    (that needs the whole float32 weight)."""
    return not step.round_seed and _raw_arrays(opt, weight, grad, state.tensors, step)


def _store_low(opt, weight, w32, t32, tensors, step):
    """The float32 results of a 16-bit parameter's NumPy update stored back: the weight rounded with
    its seed (stochastically when it has one, as the kernels' op_store), the states to nearest even
    (8-bit ones re-encoded)."""
    weight[...] = ops.round_to(weight.dtype, w32, step.round_seed)
    _narrowed(opt, tensors, t32)


def _dense_phases(opt, step, weight, grad, tensors, scalars, backend, cache):
    if not grad.flags.c_contiguous:
        grad = np.ascontiguousarray(grad)
    if backend == "native":
        be = native.NativeBackend(native.library_for(type(opt), low=is_low(weight.dtype)), weight.dtype, cache,
                                  seeded=bool(step.round_seed))
        yield from opt._kernel_phases(be, step, weight, grad, tensors, scalars)
    else:
        wide = tensors if _raw_arrays(opt, weight, grad, tensors, step) else _widened(opt, tensors, weight.dtype)
        yield from opt._kernel_numpy(step, weight, grad, wide, scalars)
        _narrowed(opt, tensors, wide)


def step_one(opt, weight, grad, state, step, backend: str) -> None:
    """One parameter, on its own."""
    if isinstance(grad, RowSparse):
        if opt._lazy_rows(state):
            _rows(opt, weight, grad, state, step, backend)
            return
        grad = grad.todense()  # standard semantics: the dense update with zeros in the other rows
    if cuda.is_cupy(weight):
        _cuda(opt, weight, grad, state, step)
    elif state.master is not None and _master_kernels(opt, backend, weight):
        # native: the mp16 / mpbf16 kernels read the 16-bit gradient, update the master and write the
        # 16-bit weight in the same pass
        cache = opt.__dict__.setdefault("_scratch_cache", {})
        be = native.NativeBackend(native.library_for(type(opt), low=True), np.float32, cache, weight_lp=weight)
        opt._kernel_staged(be, step, state.master, np.ascontiguousarray(grad), state.tensors, state.scalars)
    elif state.master is not None:
        master = state.master
        _dense(opt, step, master, grad.astype(np.float32), state.tensors, state.scalars, backend)
        weight[...] = master
    elif is_low(weight.dtype) and backend != "native" and not _in_chunks(opt, weight, grad, state, step):
        # NumPy: compute in float32, store float16 / bfloat16 (MXNet rounds every intermediate to
        # float16); the native kernels load and store the 16-bit arrays themselves, and so does the
        # chunked NumPy kernel, a chunk at a time
        w32 = weight.astype(np.float32)
        t32 = _widened(opt, state.tensors, np.float32, copy=True)
        _dense(opt, step, w32, grad.astype(np.float32), t32, state.scalars, backend)
        _store_low(opt, weight, w32, t32, state.tensors, step)
    else:
        _dense(opt, step, weight, grad, state.tensors, state.scalars, backend)


def _deferred(opt, weight, grad, state, step, multi):
    """Record one parameter's launches for a multi-tensor launch (runtime/multi.py). A driver with
    fused reductions comes back as a generator (`run_lockstep` runs it); any other has recorded
    all its launches and None comes back."""
    target = state.master if state.master is not None else weight
    be = multi.param(target, grad, weight_lp=weight if state.master is not None else None)
    args = (be, step, target, grad, state.tensors, state.scalars)
    phases = getattr(opt, "_kernel_phases", None)
    if phases is not None:
        return phases(*args)
    opt._kernel_staged(*args)
    return None


def _cuda(opt, weight, grad, state, step):
    """CuPy arrays: the spec's CUDA kernels. float16 and bfloat16 weights are read and written in
    their type (float32 arithmetic); with a master copy the kernel updates it and writes the 16-bit
    weight in the same pass."""
    module = cuda.module_for(type(opt), weight.device.id)
    if state.master is not None:
        be = cuda.CudaBackend(module, state.master, grad, weight_lp=weight)
        opt._kernel_staged(be, step, state.master, grad, state.tensors, state.scalars)
    else:
        be = cuda.CudaBackend(module, weight, grad)
        opt._kernel_staged(be, step, weight, grad, state.tensors, state.scalars)


def _dense(opt, step, weight, grad, tensors, scalars, backend):
    """The spec's update of one NumPy parameter with the call's backend."""
    if not grad.flags.c_contiguous:   # one contiguous copy: the kernels then stream it (no temporaries)
        grad = np.ascontiguousarray(grad)
    if backend == "native":
        cache = opt.__dict__.setdefault("_scratch_cache", {})   # reused scratch arrays (native.py)
        be = native.NativeBackend(native.library_for(type(opt), low=is_low(weight.dtype)), weight.dtype, cache,
                                  seeded=bool(step.round_seed))
        opt._kernel_staged(be, step, weight, grad, tensors, scalars)
    else:
        wide = tensors if _raw_arrays(opt, weight, grad, tensors, step) else _widened(opt, tensors, weight.dtype)
        opt._kernel_numpy(step, weight, grad, wide, scalars)
        _narrowed(opt, tensors, wide)


def _widened(opt, tensors, dtype, copy=False):
    """The NumPy kernel computes in the weight's type: states stored in another (`as bf16`) are
    updated as copies in it, 8-bit ones decoded (the compiled kernels convert as they load and
    store). With `copy`, every state is a copy."""
    quant = opt.state_quant
    scales = {k + ".absmax" for k in quant}
    if not copy and all(t is None or t.dtype == dtype for k, t in tensors.items() if k not in scales):
        return tensors
    out = {}
    for k, t in tensors.items():
        if k in scales:
            continue
        if t is not None and k in quant and t.dtype == np.uint8:
            out[k] = ops.dequantize(t, tensors[k + ".absmax"], quant[k], dtype)
        else:
            out[k] = t if t is None or (t.dtype == dtype and not copy) else t.astype(dtype)
    return out


def _narrowed(opt, tensors, wide):
    """The copies of `_widened` stored back: rounded to nearest even, 8-bit states re-encoded."""
    if wide is tensors:
        return
    quant = opt.state_quant
    for k, t in wide.items():
        target = tensors[k]
        if t is target or target is None:
            continue
        if k in quant and target.dtype == np.uint8:
            ops.quantize(t, quant[k], codes=target, absmax=tensors[k + ".absmax"])
        else:
            target[...] = t


def _rows(opt, weight, grad, state, step, backend):
    """The lazy update: the generated row kernel changes only the rows `grad.indices` of the weight
    and of every state tensor (16-bit rows are computed in float32 by ops.gather). With the spec's
    `option carry_rows("acc")`, the rows earlier lazy updates left in the state `acc` join them (with
    zero gradient rows), until an update leaves `acc` zero in all of them (LBSGD: the rows summed since
    the last applied step, as MXNet's lazy sgd_update of the summed row-sparse gradient)."""
    carry = opt.options.get("carry_rows")
    acc = state.tensors.get(carry) if carry is not None else None
    if acc is not None and state.carry is not None:
        grad = with_rows(grad, state.carry)
    _rows_kernel(opt, weight, grad, state, step, backend)
    if acc is not None:
        xp = grad.xp
        rows = grad.indices
        pending = rows.size and bool(xp.any(acc[rows] != 0))
        state.carry = rows if pending else None


def with_rows(grad, extra):
    """`grad` over the rows `grad.indices` and `extra` (sorted, unique), zero in the rows it lacks."""
    xp = grad.xp
    rows = xp.union1d(grad.indices, extra)
    if rows.shape[0] == grad.indices.shape[0]:
        return grad
    data = xp.zeros((rows.shape[0],) + tuple(grad.shape[1:]), dtype=grad.data.dtype)
    data[xp.searchsorted(rows, grad.indices)] = grad.data
    return RowSparse(data, rows, grad.shape)


def _rows_kernel(opt, weight, grad, state, step, backend):
    rows, data = grad.indices, grad.data
    target = state.master if state.master is not None else weight
    if cuda.is_cupy(weight):
        module = cuda.module_for(type(opt), weight.device.id)
        lp = weight if state.master is not None else None
        be = cuda.CudaRowsBackend(module, target, data, rows, weight_lp=lp)
        opt._kernel_staged(be, step, target, data, state.tensors, state.scalars)
        return
    if backend == "native" and isinstance(target, np.ndarray):
        # compiled row kernels, parallel over the gradient's elements (16-bit rows loaded and stored
        # by the kernels)
        data = np.ascontiguousarray(data, dtype=target.dtype)
        be = native.NativeRowsBackend(native.library_for(type(opt), low=is_low(target.dtype)), target.dtype, rows, data,
                                      seeded=bool(step.round_seed))
        opt._kernel_staged(be, step, target, data, state.tensors, state.scalars)
        if state.master is not None:
            weight[rows] = state.master.take(rows, axis=0)
        return
    if state.master is not None:
        opt._kernel_rows(step, rows, state.master, data.astype(np.float32), state.tensors, state.scalars)
        weight[rows] = state.master.take(rows, axis=0)
    elif step.round_seed:
        # a bfloat16 weight rounded stochastically (NumPy): the row kernel on float32 copies (whole:
        # a spec's reductions read every row), the rows it changed stored back, the weight's with the
        # seed at their elements' positions in the weight. The native and CUDA row kernels do this
        # in place.
        rows = np.asarray(rows)
        w32 = weight.astype(np.float32)
        t32 = {k: v.astype(np.float32) for k, v in state.tensors.items()}
        opt._kernel_rows(step, rows, w32, data.astype(np.float32), t32, state.scalars)
        cols = w32[0].size if w32.ndim else 0
        index = rows[:, None] * cols + np.arange(cols)
        weight[rows] = ops.round_to(weight.dtype, w32[rows].reshape(rows.size, cols), step.round_seed,
                                    index).reshape((rows.size,) + weight.shape[1:])
        for k, v in state.tensors.items():
            v[rows] = t32[k][rows]
    else:
        if is_low(data.dtype):
            data = data.astype(np.float32)
        opt._kernel_rows(step, rows, weight, data, state.tensors, state.scalars)
