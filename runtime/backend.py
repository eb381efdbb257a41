"""The backend protocol: what a generated driver (`_kernel_staged`, `_kernel_phases`; see
codegen/emit_driver.py) calls to run the staged program of its spec.

    xp                          the array module of the arrays (numpy or cupy)
    scratch(like, name, shape=None)
                                an array for tensor local `name`, shaped like `like` (or `shape`: a
                                per-row, per-col or per-block local), in compute precision
    seed(rng)                   a noise seed for a stage's `normal()` draws, from the optimizer's generator
    launch(fn, arrays, scalars, reduce=0, stores=True, dims=None, axes=(), hows=None)
                                run stage kernel `fn` (a name from the program, `optforge_<spec>_<stage>`)
                                over `arrays` (None: an absent conditional state) with `scalars`;
                                with `reduce`, return the partial sums of that many fused reductions,
                                or None where this backend leaves them to the host; a tiled stage
                                (codegen/lower.py: Stage.tiled) gets `dims`, the (blocks, rows, cols)
                                it runs over, and its axis reductions' outputs after its arrays;
                                `axes` says how each output combines ((sum|max|min, -1|-2)) and
                                `hows` how the fused reductions do, for a backend that combines
                                partial tables itself (CUDA; the C++ kernels finish their own)

`Backend` holds what every implementation shares. They are: `native.NativeBackend` and
`native.NativeRowsBackend` (C++ on the CPU), `cuda.CudaBackend` and `cuda.CudaRowsBackend`, and
the recorder of `multi.MultiTensorLaunches` that defers launches of a list update. The NumPy backend
runs the generated `_kernel_numpy` / `_kernel_rows` instead and needs none of this.
"""
from __future__ import annotations

import numpy as np

from .dtypes import BFLOAT16, FLOAT16, FLOAT32, FLOAT64

# the kernels' dtype variants: weight/states and gradient of one dtype (float16 and bfloat16: stored
# in 16 bits, computed in float32), or (mp16, mpbf16; CUDA) a float32 master with a 16-bit gradient
# and a 16-bit copy of the weight written in the same pass
SUFFIX = {FLOAT32: "f32", FLOAT64: "f64", FLOAT16: "f16", BFLOAT16: "bf16"}
MASTER_SUFFIX = {FLOAT16: "mp16", BFLOAT16: "mpbf16"}   # float32 master, 16-bit gradient and weight


def variant(weight_dtype, grad_dtype, low_precision: bool) -> str:
    """The kernel variant suffix for a weight (or master) and gradient dtype."""
    w, g = np.dtype(weight_dtype), np.dtype(grad_dtype)
    if low_precision:
        if w != np.float32 or g not in MASTER_SUFFIX:
            raise TypeError("multi-precision update needs a float32 master and a float16 or bfloat16 gradient")
        return MASTER_SUFFIX[g]
    if w != g or w not in SUFFIX:
        raise TypeError(f"no kernel for weight {w} with gradient {g}")
    return SUFFIX[w]


def compute_dtype(dtype):
    """The dtype kernels compute in: float64 for float64 storage, float32 otherwise."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


class Backend:
    xp = np

    def scratch(self, like, name, shape=None):
        return self.xp.empty(like.shape if shape is None else shape, compute_dtype(like.dtype))

    def seed(self, rng) -> float:
        return float(rng.integers(0, 2 ** 53))

    def launch(self, fn: str, arrays, scalars, reduce: int = 0, stores: bool = True, dims=None, axes=(),
               hows=None):  # pragma: no cover
        raise NotImplementedError
