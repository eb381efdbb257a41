"""Storage precision (issue #16): bytes of optimizer state per parameter, bytes moved per step and time
per step of an Adam update, float32 vs bfloat16 layouts, against each layout's memory roof.

    python bench/storage_bench.py [--log2n 24] [--repeat 11] [--backend native]

Layouts (n parameters, one tensor):

  fp32            weight, gradient, both moments float32: 28 bytes moved per parameter (read g, w, m, v;
                  write w, m, v), 8 bytes of state
  bf16            weight, gradient and moments bfloat16, rounded to nearest: 14 bytes moved, 4 of state
  bf16 + SR       the same with the weight rounded stochastically (the hash of its random bits is the
                  extra work): 14 bytes, 4 of state
  bf16 + master   bfloat16 weight and gradient, float32 master and moments (multi_precision): a fused
                  step needs 30 bytes (read g 2, master 4, m 4, v 4; write master, m, v and the
                  bfloat16 weight); 12 bytes of state
  bf16 states     float32 weight and gradient, moments `as bf16` (a spec declaring them): 20 bytes, 4
  8-bit states    float32 weight and gradient, the bundled Adam8bit's 8-bit moments: 16 bytes moved
                  (plus 2 x 4 bytes read and written per 256 for the block scales), 2.03 of state

The roof of each layout is its bytes over the bandwidth of a streaming OpenMP loop (`a[i] += s * b[i]`,
12 bytes per element) compiled and timed in this run at the same n; time/roof is the step's median
over that. The goal: within 1.3x of its roof at 2^24 (native).
"""
import argparse
import os
import statistics
import sys
import time
import warnings

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_bench import compile_reference_kernels, machine  # noqa: E402

import optforge  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
LAYOUTS = [  # name, optimizer, weight dtype, options, bytes moved per parameter, state bytes per parameter
    ("fp32", "adam", np.float32, {}, 28, 8),
    ("bf16", "adam", BF16, {}, 14, 4),
    ("bf16 + SR", "adam", BF16, {"stochastic_rounding": True}, 14, 4),
    ("bf16 + master", "adam", BF16, {"multi_precision": True}, 30, 12),
    ("bf16 states", "adam_bf16_states", np.float32, {}, 20, 4),
    ("8-bit states", "adam8bit", np.float32, {}, 16 + 16 / 256, 2 + 8 / 256),
]
BF16_STATES = """
optimizer Adam_bf16_states
state mean = zeros as bf16
state var = zeros as bf16
update {
    g = grad * rescale_grad + wd * weight
    mean = 0.9 * mean + 0.1 * g
    var = 0.999 * var + 0.001 * square(g)
    weight -= lr * sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * mean / (sqrt(var) + 1e-8)
}
"""


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--backend", default="native", choices=["native", "numpy"])
    args = ap.parse_args()
    n = 1 << args.log2n
    so, flags = compile_reference_kernels()
    print(machine())
    print(f"reference kernels: {flags}")
    a, b = np.zeros(n, np.float32), np.ones(n, np.float32)
    roof_ms = median_ms(lambda: so.stream_axpy(n, a.ctypes.data, b.ctypes.data, 1e-3), args.repeat)
    bandwidth = 12 * n / (roof_ms * 1e-3)
    print(f"n = 2^{args.log2n}; streaming roof {bandwidth / 1e9:.1f} GB/s ({roof_ms:.2f} ms for 12 bytes x n); "
          f"backend {args.backend}; medians of {args.repeat}")
    print(f"{'layout':<15}{'state B/param':>14}{'moved B/param':>14}{'ms/step':>10}{'roof ms':>9}{'time/roof':>10}")
    rng = np.random.default_rng(0)
    optforge.load_spec(BF16_STATES)   # (registers it)
    for name, spec, dtype, options, moved, state_bytes in LAYOUTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = optforge.create(spec, learning_rate=1e-3, **options)
        opt.backend = args.backend
        w = rng.standard_normal(n, dtype=np.float32).astype(dtype)
        g = (rng.standard_normal(n, dtype=np.float32) * 1e-2).astype(dtype)
        s = opt.create_state_multi_precision(0, w)
        held = sum(t.nbytes for t in s.tensors.values()) + (s.master.nbytes if s.master is not None else 0)
        assert abs(held - state_bytes * n) < 16, (name, held / n)
        ms = median_ms(lambda: opt.update_multi_precision(0, w, g, s), args.repeat)
        roof = moved * n / bandwidth * 1e3
        print(f"{name:<15}{held / n:>14.2f}{moved:>14.2f}{ms:>10.2f}{roof:>9.2f}{ms / roof:>10.2f}")


if __name__ == "__main__":
    main()
