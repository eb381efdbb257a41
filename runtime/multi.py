"""Deferred launches for list updates: each parameter's driver records its stage launches, then one
launch per stage (and kernel variant) runs that stage for every parameter, through a target's
multi-tensor kernels (`_mt`: tables of pointers, sizes and scalars). CUDA uses it for every list
update of CuPy arrays (`cuda.MultiLauncher`), the native CPU backend for the small tensors of a list
update (`native.MultiLauncher`), where one call instead of one per tensor and stage is what counts.

Drivers with fused reductions are generators (codegen/emit_driver.py): `run_lockstep` runs all of
a list's drivers up to their next reduction, flushes, and resumes each with its own sums.
"""
from __future__ import annotations

from .backend import Backend, variant


class Pending:
    """What a deferred launch with fused reductions returns: `value` (the list of sums) is filled in
    by the flush that runs it."""
    __slots__ = ("value",)

    def __init__(self):
        self.value = None


def reductions(items) -> int:
    """How many fused reductions the recorded launches of one stage accumulate (0: none)."""
    return items[0][3][0] if items[0][3] is not None else 0


def resolve(items, sums) -> None:
    """Hand each recorded launch's `Pending` its row of sums (one list per parameter)."""
    for (_, _, _, (_, pending)), row in zip(items, sums):
        pending.value = [float(x) for x in row]


def run_lockstep(multi, phases) -> None:
    """Run the driver generators of a list update's parameters together: each runs up to the launch
    whose reductions it needs next (recorded on `multi`: a `Pending`) or up to a meeting point of
    an optimizer-wide reduction (`ops.Gather`); a launch answered at once is sent straight back.
    When every driver waits, one flush issues every recorded stage (one launch per stage for all
    parameters, one transfer for their sums) and each driver resumes with its own sums; when all
    wait at a meeting point (every parameter reaches each one), their numbers are combined and the
    interlude runs once (`ops.meet`). A final flush issues what was recorded after the last wait."""
    from . import ops

    def advance(gen, value):
        while True:
            try:
                y = gen.send(value)
            except StopIteration:
                return _DONE
            if isinstance(y, (Pending, ops.Gather)):
                return y
            value = y   # a launch the backend answered at once

    waiting = [(g, y) for g, y in ((gen, advance(gen, None)) for gen in phases) if y is not _DONE]
    while waiting:
        if any(isinstance(y, Pending) for _, y in waiting):
            multi.flush()
            waiting = [(g, advance(g, y.value) if isinstance(y, Pending) else y) for g, y in waiting]
        else:
            if len(waiting) != len(phases):   # pragma: no cover - the generated code meets on every path
                raise RuntimeError("some parameters of the update call ended before a meeting point")
            ops.meet([y for _, y in waiting])
            waiting = [(g, advance(g, None)) for g, _ in waiting]
        waiting = [(g, y) for g, y in waiting if y is not _DONE]
    if multi is not None:
        multi.flush()


_DONE = object()


class MultiTensorLaunches:
    """Deferred launches for a list update: each parameter's driver records its stage launches on a
    `param(...)` recorder; `flush()` then issues ONE launch per (stage, variant) for all parameters,
    through the `_mt` kernels' pointer, size and scalar tables. Stages with fused reductions return
    a `Pending` that the flush fills (see `run_lockstep`). Only for specs whose drivers never read
    tensors on the host (`multi_tensor = True`: every reduction fused)."""

    def __init__(self, launcher, xp, order):
        self.pending: dict = {}
        self.xp = xp
        self.launcher = launcher
        self.order = {fn: k for k, fn in enumerate(order)}   # the program's stages, in program order   # launcher(kernel name, [(arrays, scalars, weight_lp, (reduce, Pending) | None)])

    def param(self, weight, grad, weight_lp=None):
        return _Recorder(self, weight, grad, weight_lp)

    def flush(self) -> int:
        """Launch everything recorded, stage by stage (each parameter's stages keep their order).
        Returns the number of kernel launches."""
        launches = 0
        for (fn, suffix), items in sorted(self.pending.items(), key=lambda kv: (self.order[kv[0][0]], kv[0][1])):
            for start in range(0, len(items), 65535):
                self.launcher(f"{fn}_mt_{suffix}", items[start:start + 65535])
                launches += 1
        self.pending.clear()
        return launches


class _Recorder(Backend):
    """The backend protocol (runtime/backend.py) of one parameter of a list update: launches are
    recorded for the flush."""

    def __init__(self, owner: MultiTensorLaunches, weight, grad, weight_lp):
        self.owner = owner
        self.xp = owner.xp
        self.suffix = variant(weight.dtype, grad.dtype, weight_lp is not None)
        self.weight_lp = weight_lp

    def launch(self, fn: str, arrays, scalars, reduce: int = 0, stores: bool = True):
        """Record a launch; with reductions, return the `Pending` the flush fills with their sums."""
        pending = Pending() if reduce else None
        self.owner.pending.setdefault((fn, self.suffix), []).append(
            (tuple(arrays), tuple(scalars), self.weight_lp, (reduce, pending) if reduce else None))
        return pending
