"""The few helpers generated NumPy kernels call that NumPy or `math` do not give directly."""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from .dtypes import BFLOAT16


def sign(x):
    """Host sign: -1.0, 0.0 or 1.0; NaN for NaN (as numpy.sign and the kernels)."""
    return float(x) if x != x else float((x > 0) - (x < 0))


def clip(x, bound):
    """Clip to [-bound, bound]. A bound of None, 0 or below means no clipping (MXNet's clip_gradient)."""
    if bound is None or not bound > 0:
        return x
    if isinstance(x, np.ndarray):
        return np.clip(x, -bound, bound)
    return min(max(x, -bound), bound)


def _xp(x):
    """The array module of `x`: numpy, or cupy for CuPy arrays (imported only then)."""
    if type(x).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


# ---- whole-tensor reductions and the reduce hook ---------------------------------------------------
# A spec's `norm(x)` and `sum(x)` read a whole tensor. When each process holds only a slice of every
# tensor (ZeRO-1 sharding), the partial result of the slice (the sum of squares for a norm, the sum for
# a sum) must be combined across processes before it is used: a reduce hook does that, e.g. an
# all-reduce through torch.distributed. The hook is set for the current thread with `reduce_hook(fn)`
# around an update, so that generated kernels stay unchanged.
_local = threading.local()


@contextlib.contextmanager
def reduce_hook(hook):
    """Within the block, every whole-tensor reduction passes its partial result (a float) through
    `hook` and uses what it returns: `hook(local_sum_of_squares) -> global_sum_of_squares` for norm,
    the same with the plain sum for sum. None means no hook. Every process must run the same updates
    so that the hooks are called in the same order (the generated code computes every reduction
    of a parameter unconditionally)."""
    if hook is not None and not callable(hook):
        raise TypeError(f"reduce hook must be callable, got {type(hook).__name__}")
    previous = getattr(_local, "hook", None)
    _local.hook = hook
    try:
        yield hook
    finally:
        _local.hook = previous


def current_reduce_hook():
    """The reduce hook in force on this thread (None outside `reduce_hook`)."""
    return getattr(_local, "hook", None)


def _reduced(partial: float) -> float:
    hook = getattr(_local, "hook", None)
    return partial if hook is None else float(hook(partial))


_CHUNK = 1 << 16


def sum_squares(x) -> float:
    """Sum of squares of a whole tensor, accumulated in float64, as a Python float. float32 and
    float16 tensors are widened a cache-sized chunk at a time (no full-size float64 copy). NumPy
    arrays avoid BLAS (`np.dot`): its worker threads fight the native kernels' OpenMP threads for the
    cores, which made a small LAMB step 30x slower."""
    xp = _xp(x)
    if xp is not np:
        from . import cuda
        return cuda.sum_squares(x)
    flat = xp.ravel(x)
    if flat.dtype == np.float64:
        return float(np.einsum("i,i->", flat, flat))
    buf = np.empty(min(flat.size, _CHUNK), np.float64)
    total_ = 0.0
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        wide = buf[:part.size]
        wide[...] = part
        total_ += float(np.einsum("i,i->", wide, wide))
    return total_


def sum_squares_fast(x) -> float:
    """Sum of squares for step control's gradient norm (runtime/optimizer.py grad_scale): float64
    arrays exactly as sum_squares; float32 ones summed in float32 over blocks of 2^18 elements, the
    blocks in float64 (4e-8 relative on 2^24 normal values; about 4x faster than widening each
    element, close to the memory roof); float16 ones widened to float32 a block at a time."""
    if _xp(x) is not np or x.dtype == np.float64:
        return sum_squares(x)
    flat = np.ravel(x)
    block = 1 << 18
    total_ = 0.0
    for start in range(0, flat.size, block):
        part = flat[start:start + block]
        if part.dtype != np.float32:
            part = part.astype(np.float32)
        total_ += float(np.einsum("i,i->", part, part))
    return total_


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix(z):
    """splitmix64's finaliser on a uint64 array (op_mix of codegen/templates/_c_common.j2)."""
    z = z + _MIX[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX[1]
    z = (z ^ (z >> np.uint64(27))) * _MIX[2]
    return z ^ (z >> np.uint64(31))


def round_to(dtype, x, seed: float = 0.0, index=None):
    """float32 values `x` as `dtype`: to nearest even, or for bfloat16 with a nonzero `seed`
    stochastically, bit for bit as the kernels' op_bf16_bits: 16 random bits of (seed, element
    index) added below bfloat16's bits, then truncated (NaN stays NaN). `index`: each element's
    position in its weight (default: 0, 1, 2, ... in order), which the random bits depend on."""
    dtype = np.dtype(dtype)
    if not seed or dtype != BFLOAT16:
        return np.asarray(x).astype(dtype)
    x = np.ascontiguousarray(x, np.float32)
    flat = x.reshape(-1).view(np.uint32)
    index = None if index is None else np.ascontiguousarray(index, np.int64).reshape(-1)
    out = np.empty(flat.size, np.uint16)
    key = np.uint64(int(seed))
    block = 1 << 16
    for lo in range(0, flat.size, block):
        u = flat[lo:lo + block]
        i = np.arange(lo, lo + u.size, dtype=np.uint64) if index is None else index[lo:lo + block].astype(np.uint64)
        noise = (_mix(key ^ _mix(i)) & np.uint64(0xFFFF)).astype(np.uint32)
        bits = ((u + noise) >> np.uint32(16)).astype(np.uint16)
        nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        bits[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
        out[lo:lo + u.size] = bits
    return out.view(BFLOAT16).reshape(x.shape)


def _quant_tables(q):
    """(codes' values, midpoints) of an 8-bit state (`state_quant` entry), as float32 arrays."""
    key = q.get("_tables")
    if key is None:
        values = np.array(q["codes"], np.float32)
        mids = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)
        key = q["_tables"] = (values, mids)
    return key


def dequantize(codes, absmax, q, dtype=np.float32):
    """An 8-bit state's values: each code's value times its block's absmax, in float32 (as the
    kernels' loads), then `dtype`."""
    xp = _xp(codes)
    values, _ = _quant_tables(q)
    values = xp.asarray(values)
    flat = codes.reshape(-1)
    block = q["block"]
    scale = xp.repeat(absmax.astype(np.float32), block)[:flat.size]
    return (values[flat] * scale).reshape(codes.shape).astype(dtype, copy=False)


def quantize(x, q, codes=None, absmax=None):
    """The 8-bit codes and block absmax of values `x`, as the kernels' op_requant stores them:
    per block, absmax = the largest magnitude of the values rounded to float32 (NaN if one is NaN),
    each code the number of midpoints below value * (1 / absmax) clamped to [-1, 1] (0 when absmax
    is 0). Writes into `codes` / `absmax` when given, where a block whose values are those its
    codes hold keeps them (re-encoding is idempotent)."""
    xp = _xp(x)
    _, mids = _quant_tables(q)
    mids = xp.asarray(mids)
    block = q["block"]
    v = xp.asarray(x).reshape(-1).astype(np.float32)
    n = v.size
    nb = -(-n // block)
    pad = xp.zeros(nb * block, np.float32)
    pad[:n] = v
    blocks = pad.reshape(nb, block)
    amax = xp.abs(blocks).max(axis=1) if nb else xp.zeros(0, np.float32)   # (NaN propagates)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = xp.where(amax > 0, np.float32(1) / xp.where(amax > 0, amax, np.float32(1)), np.float32(0))
        scaled = xp.clip(blocks * inv[:, None].astype(np.float32), np.float32(-1), np.float32(1))
    scaled = xp.where(xp.isnan(scaled), np.float32(-np.inf), scaled)   # (C: no midpoint is below NaN)
    out_codes = xp.searchsorted(mids, scaled.reshape(-1), side="left").astype(np.uint8)[:n]
    shape = x.shape
    if codes is None:
        return out_codes.reshape(shape), amax.astype(np.float32)
    values, _ = _quant_tables(q)
    old = xp.zeros(nb * block, np.float32)
    old[:n] = xp.asarray(values)[codes.reshape(-1)] * xp.repeat(absmax.astype(np.float32), block)[:n]
    # (the padding of the last block compares equal: zeros on both sides)
    keep = xp.all(old.reshape(nb, block) == blocks, axis=1) if nb else xp.zeros(0, bool)
    keep_elems = xp.repeat(keep, block)[:n]
    flat_codes = codes.reshape(-1)
    flat_codes[...] = xp.where(keep_elems, flat_codes, out_codes)
    absmax[...] = xp.where(keep, absmax, amax)
    return codes, absmax


def sum_squares_list(arrays, native_lib=None) -> float:
    """Sum of squares of every element of a list of arrays (step control's gradient norm, before the
    reduce hook): CuPy arrays in one launch and one device-to-host copy per device
    (cuda.sum_squares_list); C-contiguous NumPy arrays, given a native library (the native backend),
    in one native call (native.sum_squares_list); other NumPy arrays one by one (sum_squares_fast,
    the NumPy backend's reference). The parts are added in that fixed order."""
    host, devices, rest = [], {}, []
    for a in arrays:
        if type(a) is np.ndarray:
            (host if native_lib is not None and a.flags.c_contiguous else rest).append(a)
        elif _xp(a) is not np:
            devices.setdefault(a.device.id, []).append(a)
        else:
            rest.append(a)
    total_ = 0.0
    if host:
        from . import native
        total_ += native.sum_squares_list(native_lib, host)
    if devices:
        from . import cuda
        for device in sorted(devices):
            total_ += cuda.sum_squares_list(devices[device])
    for a in rest:
        total_ += sum_squares_fast(a)
    return total_


def norm(x) -> float:
    """L2 norm of a whole tensor: sqrt of its sum of squares, after the reduce hook."""
    return math.sqrt(_reduced(sum_squares(x)))


class Gather:
    """What a parameter's update yields where every parameter of the call must meet (a spec's
    `global_sum`, `global_norm`, `global_max`, `global_min`): its own numbers, `slots` = ((how,
    value), ...). The runner (`meet`) combines each slot over all parameters, calls
    `interlude(step, combined)` once (the statements that follow from them, the same for every
    parameter) and resumes every parameter."""
    __slots__ = ("interlude", "step", "slots")

    def __init__(self, interlude, step, slots):
        self.interlude, self.step, self.slots = interlude, step, slots


def _combine(how: str, values: list) -> float:
    """One slot over all parameters, in their order. NaN anywhere gives NaN (max and min too)."""
    values = [float(v) for v in values]
    if how == "global_sum":
        return math.fsum(values) if all(math.isfinite(v) for v in values) else sum(values)
    if how == "global_norm":
        return math.sqrt(math.fsum(v * v for v in values)) if all(math.isfinite(v) for v in values) else \
            math.sqrt(sum(v * v for v in values))
    if any(v != v for v in values):
        return math.nan
    return max(values) if how == "global_max" else min(values)


def meet(points: list) -> None:
    """Every parameter of the call has yielded its `Gather` for the same meeting point: combine and
    run the interlude once per optimizer's call (it stores what it computes in the call's values,
    shared by that call's parameters)."""
    first = points[0]
    n = len(first.slots)
    if any(len(p.slots) != n for p in points):   # pragma: no cover - the generated code guarantees it
        raise RuntimeError("parameters of one update call met at different points")
    combined = tuple(_combine(first.slots[k][0], [p.slots[k][1] for p in points]) for k in range(n))
    called = set()   # once per update call: parameters of several optimizers may meet (update_together)
    for p in points:
        if id(p.step.call) not in called:
            called.add(id(p.step.call))
            p.interlude(p.step, combined)


def drive(phases) -> None:
    """Run a generated driver generator (`_kernel_phases`) to its end, sending each yielded launch
    result (partial sums, or None) straight back: the backend answered at once. A meeting point
    (`Gather`) of a parameter updated on its own combines its numbers over it alone."""
    try:
        value = next(phases)
        while True:
            if isinstance(value, Gather):
                meet([value])
                value = None
            value = phases.send(value)
    except StopIteration:
        return None


def fused_norm(sum_of_squares: float) -> float:
    """The norm from a sum of squares a compiled stage accumulated (after the reduce hook)."""
    return math.sqrt(_reduced(float(sum_of_squares)))


def fused_total(partial: float) -> float:
    """The sum a compiled stage accumulated (after the reduce hook)."""
    return _reduced(float(partial))


def total(x) -> float:
    """Sum of a whole tensor as a Python float (after the reduce hook)."""
    return _reduced(float(_xp(x).sum(x, dtype=np.float64)))


def total_max(x) -> float:
    """Largest element of a whole tensor (NaN if any is NaN), as a Python float."""
    _unhooked("max")
    return float(_xp(x).max(x))


def total_min(x) -> float:
    """Smallest element of a whole tensor (NaN if any is NaN), as a Python float."""
    _unhooked("min")
    return float(_xp(x).min(x))


def fused_max(partial: float) -> float:
    _unhooked("max")
    return float(partial)


def fused_min(partial: float) -> float:
    _unhooked("min")
    return float(partial)


def _unhooked(what: str) -> None:
    if getattr(_local, "hook", None) is not None:
        raise NotImplementedError(f"a whole-tensor {what}() over a sharded tensor: the reduce hook combines "
                                  "sums only")


# ---- shapes: every parameter viewed as blocks x rows x cols (codegen/ir.py: Shape) ------------------
def view_dims(shape, view: str) -> tuple:
    """(blocks, rows, cols) of a parameter of `shape` under the spec's view: `batched` takes the last
    two dimensions as rows x cols and the leading ones as blocks; `flat` the last one as cols and all
    the others as rows; `matrix` the first one as rows and all the others as cols. A vector is one
    row, a 0-d parameter one element."""
    n = len(shape)
    if n == 0:
        return 1, 1, 1
    if view == "matrix" and n >= 2:
        return 1, shape[0], math.prod(shape[1:])
    if view in ("flat", "matrix") or n == 1:
        return 1, math.prod(shape[:-1]), shape[-1]
    return math.prod(shape[:-2]), shape[-2], shape[-1]


# the matrices of matrix products, per block: (first, second) dimension of the view
MATRIX_DIMS = {"rows_x_rows": (1, 1), "cols_x_cols": (2, 2), "cols_x_rows": (2, 1), "full": (1, 2)}


def state_shape(shape, kind: str, view: str) -> tuple:
    """The array shape of a state of `kind` (full, per_row, per_col, per_block) for a parameter of
    `shape`: the parameter's shape with the reduced axes kept as size 1, so that it broadcasts
    against the parameter as NumPy does (torch.optim.Adafactor's row_var and col_var). A matrix
    kind (rows_x_rows, cols_x_cols, cols_x_rows) is that matrix per block: the batched view keeps
    the parameter's leading dimensions, the others have one block."""
    shape = tuple(shape)
    n = len(shape)
    if kind in MATRIX_DIMS and kind != "full":
        dims = view_dims(shape, view)
        lead = shape[:-2] if view == "batched" and n >= 2 else ()
        return lead + tuple(dims[k] for k in MATRIX_DIMS[kind])
    if kind == "full" or n == 0:
        return shape
    rows = kind == "per_row"
    cols = kind == "per_col"
    out = list(shape)
    if not cols:
        out[-1] = 1
    if not rows and n >= 2:
        if view == "flat":
            out[:-1] = [1] * (n - 1)
        else:
            out[-2] = 1
    return tuple(out)


def numel(shape, kind: str, view: str) -> int:
    """How many values a tensor of `kind` holds for a parameter of `shape`."""
    b, r, c = view_dims(shape, view)
    if kind in MATRIX_DIMS:
        return b * math.prod((b, r, c)[k] for k in MATRIX_DIMS[kind])
    return b * (r if kind in ("full", "per_row") else 1) * (c if kind in ("full", "per_col") else 1)


def size(shape, axis: int, view: str, kind: str = "full") -> int:
    """The length along axis -1 (the cols of a value of the weight's shape) or -2 (its rows) of a
    value of `kind` for a parameter of `shape`."""
    dims = view_dims(shape, view)
    if kind in MATRIX_DIMS:
        return dims[MATRIX_DIMS[kind][1 if axis == -1 else 0]]
    return dims[2 if axis == -1 else 1]


def matmul(a, b, kinds: tuple, trans: tuple, shape, view: str, out=None):
    """The product of the blocks' matrices: op(a) @ op(b), a transposed where trans[0] (b where
    trans[1]), a and b of kinds[0] and kinds[1] and the result of kinds[2] (full, rows_x_rows,
    cols_x_cols, cols_x_rows), for a parameter of `shape` under `view`. The library (NumPy's BLAS,
    CuPy's cuBLAS) multiplies in the arrays' type: float32 products accumulate in float32. With `out`
    (a C-contiguous array of the result's shape), the product is written there."""
    if getattr(_local, "hook", None) is not None:
        raise NotImplementedError("a matrix product over a sharded tensor: each process holds a slice of the "
                                  "parameter, and the reduce hook combines sums only")
    dims = view_dims(shape, view)
    xp = _xp(a)

    def mat(x, kind, t):
        d = MATRIX_DIMS[kind]
        m = xp.reshape(x, (dims[0], dims[d[0]], dims[d[1]]))
        return xp.swapaxes(m, -1, -2) if t else m

    x, y = mat(a, kinds[0], trans[0]), mat(b, kinds[1], trans[1])
    if out is None:
        return xp.matmul(x, y).reshape(state_shape(shape, kinds[2], view))
    d = MATRIX_DIMS[kinds[2]]
    xp.matmul(x, y, out=out.reshape(dims[0], dims[d[0]], dims[d[1]]))
    return out


def eye(shape, scale, dtype, xp=np):
    """`scale` times the identity in every block of a matrix state of array `shape` (..., n, n)."""
    out = xp.zeros(shape, dtype=dtype)
    if len(shape) >= 2:
        k = min(shape[-1], shape[-2])
        idx = xp.arange(k)
        out[..., idx, idx] = scale
    return out


def reduce(x, how: str, axis: int, view: str):
    """`how` (sum, max, min) of `x` along the view's cols (-1) or rows (-2), keeping the reduced axes
    (x is shaped like the parameter or one of its states). Sums accumulate in float64 (as the kernels)."""
    n = x.ndim
    if axis == -1:
        axes = (n - 1,) if n >= 1 else ()
    elif view == "flat":
        axes = tuple(range(n - 1)) if n >= 2 else ()
    else:
        axes = (n - 2,) if n >= 2 else ()
    if not axes:
        return x
    xp = _xp(x)
    if how == "sum":
        return xp.sum(x, axis=axes, keepdims=True, dtype=xp.float64).astype(x.dtype)
    return (xp.max if how == "max" else xp.min)(x, axis=axes, keepdims=True)


def widen(x, like, kind: str, view: str):
    """`x` (an array, or a number) broadcast to the shape `kind` has for a parameter like `like`: the
    side a host test picks of a `where` whose other side varies along more axes (a read-only view)."""
    xp = _xp(like)
    return xp.broadcast_to(xp.asarray(x, dtype=like.dtype), state_shape(like.shape, kind, view))


def dtype_eps(weight) -> float:
    """Machine epsilon of the weight's floating type."""
    return float(np.finfo(weight.dtype).eps)


def normal(rng: np.random.Generator, mean, std, like: np.ndarray) -> np.ndarray:
    """Gaussian noise shaped like `like`, in its dtype."""
    out = rng.standard_normal(like.shape, dtype=np.float64 if like.dtype == np.float64 else np.float32)
    if std != 1:
        out *= std
    if mean != 0:
        out += mean
    return out


def maximum(a, b):
    """max of two host numbers, NaN if either is NaN (as numpy.maximum and the kernels)."""
    return a if a != a else b if b != b else (a if a > b else b)


def minimum(a, b):
    """min of two host numbers, NaN if either is NaN (as numpy.minimum and the kernels)."""
    return a if a != a else b if b != b else (a if a < b else b)


def power(a, b) -> float:
    """`a ** b` of two integers on the host, as a float (what the kernels compute): in bounded time
    for any exponent, and infinite where it overflows, as in C."""
    try:
        return float(a) ** b
    except OverflowError:
        return math.copysign(math.inf, a) if b % 2 else math.inf
    except ZeroDivisionError:   # 0 ** -n
        return math.inf


def arg(x) -> float:
    """A host value as a kernel's scalar argument: numbers as float, True/False as 1/0, and none
    (an optional hyperparameter left unset, e.g. a clip bound) as 0."""
    return 0.0 if x is None else float(x)


def gather(x, rows, weight=None):
    """The rows `rows` of `x` as a new array in the type the update computes in (16-bit ones widened
    to float32; a state stored in another type than `weight`'s, to the weight's compute type); None
    stays None (a state this configuration does not keep)."""
    if x is None:
        return None
    out = x.take(rows, axis=0)
    want = np.float64 if (weight if weight is not None else out).dtype == np.float64 else np.float32
    return out.astype(want) if out.dtype != want else out


ROW_BLOCK_ELEMENTS = 1 << 14


def row_blocks(rows, grad):
    """(rows, grad) in consecutive blocks of about ROW_BLOCK_ELEMENTS elements (views, no copies):
    the lazy row kernel of a spec whose rows are independent runs once per block."""
    n = rows.shape[0]
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, grad[:1].size))
    for lo in range(0, n, step):
        yield rows[lo:lo + step], grad[lo:lo + step]
