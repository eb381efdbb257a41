"""CPU speed of every bundled optimizer's update step, side by side with the memory roof.

    python bench/cpu_bench.py [--quick] [--sizes 16,20,24] [--repeat 5] [--only adam,sgd]

For each optimizer and float32 size 2^16 ... 2^24 (plus a "many small tensors" step: one list
update of 200 tensors of 4,096 elements) it prints the median milliseconds per step of

  naive   the update written straight from the equations in plain NumPy (below, one full-size
          temporary per operation),
  numpy   optforge's generated NumPy kernel (backend "numpy"),
  native  optforge's generated C++ kernel (backend "native"),

and, for the two optforge backends, the effective bandwidth (bytes / time), the ratio to the memory
roof (the time a streaming kernel would need for those bytes; the roof is the bandwidth of an OpenMP
C loop `a[i] += s * b[i]` compiled and measured in this run, at the same size) and the ratio to the
naive version (naive time / ours: above 1 is faster). For Adam it also times a hand-written fused
C loop (not generated) compiled in this run, and prints the ratio to it.

Bytes per step (float32, n elements per tensor; `min_bytes` below):

  elementwise optimizers   4n (grad read) + 8n (weight read + written) + 2 x bytes of each state
                           (read + written), every tensor counted once. LAMB and LARS read some
                           tensors twice (see docs/performance.md); the table still counts them once.
  SM3 (a matrix)           the same formula: 20n (grad, weight, mom read; weight, mom written) plus
                           the per-row and per-col accumulators at their own size (rows + cols floats,
                           read and written: under 0.1%). One pass suffices: nu needs only
                           the old accumulators and their new maxima are taken in the same pass.
  Adafactor (a matrix)     24n + 2 x 4 x (rows + cols): the minimum a fused implementation must move,
                           not 12n. The whole-tensor rms(u) scales every element of the update and
                           needs the new row/col factors, which need every gradient element first:
                           pass 1 reads grad + weight (row/col sums of g^2, rms(weight)) 8n, pass 2
                           reads grad (rms(u)) 4n, pass 3 reads grad + weight and writes weight 12n.
  Adafactor (a vector)     32n: pass 1 reads grad, variance, weight and writes variance (rms(u),
                           rms(weight)) 16n; pass 2 reads grad, variance, weight and writes weight 16n.

Optforge's staged program moves more than that for Adafactor on a matrix (28n: rms(weight),
the g^2 sums, u to scratch, then the update reading u; 36n with weight decay, which is its own
pass); bench/shapes_bench.py prints those bytes stage by stage. Adafactor and SM3 run on square
matrices (2^(s/2) x 2^(s/2), rounded: 2^20 is 1024 x 1024) and the list step on 200 of 64 x 64, so
their factored states are exercised; every other optimizer runs on vectors.

Samples are interleaved (naive, numpy, native, C, then again) so that other processes on a busy
machine slow all of them alike; every figure is a median. Run it with the OpenBLAS overrides of this
machine removed (`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/cpu_bench.py`).
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import optforge
from optforge import native

# ---- naive references: the equations in plain NumPy, one temporary per operation -----------------


def _clip(x, b):
    return x if b is None or b <= 0 else np.clip(x, -b, b)


def naive_sgd(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    s["mom"][...] = o.momentum * s["mom"] - lr * wd * w - lr * g
    w += s["mom"]


def naive_nag(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    mom = s["mom"]
    mom[...] = o.momentum * mom
    w[...] = w + o.momentum * mom - (1 + o.momentum) * lr * (g + wd * w)
    mom[...] = mom - lr * (g + wd * w)


def naive_signum(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    mom = s["mom"]
    mom[...] = o.momentum * mom - (1 - o.momentum) * (wd * w + g)
    w[...] = (1 - lr * o.wd_lh) * w + lr * np.sign(mom)


def naive_dcasgd(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    step = -lr * (g + wd * w + o.lamda * g * g * (w - s["prev_weight"]))
    s["mom"][...] = o.momentum * s["mom"] + step
    s["prev_weight"][...] = w
    w += s["mom"]


def naive_adam(o, w, g, s, t, lr, wd):
    g = _clip(g * o.rescale_grad + wd * w, o.clip_gradient)
    s["mean"][...] = o.beta1 * s["mean"] + (1 - o.beta1) * g
    s["var"][...] = o.beta2 * s["var"] + (1 - o.beta2) * g ** 2
    lr_t = lr * math.sqrt(1 - o.beta2 ** t) / (1 - o.beta1 ** t)
    w -= lr_t * s["mean"] / (np.sqrt(s["var"]) + o.epsilon)


def naive_adamax(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g + wd * w, o.clip_gradient)
    s["m"][...] = o.beta1 * s["m"] + (1 - o.beta1) * g
    s["u"][...] = np.maximum(o.beta2 * s["u"], np.abs(g))
    w -= lr / (1 - o.beta1 ** t) * s["m"] / s["u"]


def naive_adagrad(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    s["history"] += g ** 2
    w += (g / np.sqrt(s["history"] + o.eps) + w * wd) * -lr


def naive_adadelta(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    acc_g, acc_delta = s["acc_g"], s["acc_delta"]
    acc_g[...] = o.rho * acc_g + (1 - o.rho) * g * g
    delta = np.sqrt(acc_delta + o.epsilon) / np.sqrt(acc_g + o.epsilon) * g
    acc_delta[...] = o.rho * acc_delta + (1 - o.rho) * delta * delta
    w -= delta + wd * w


def naive_ftml(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g + wd * w, o.clip_gradient)
    v, z, d_prev = s["v"], s["z"], s["d_prev"]
    v[...] = o.beta2 * v + (1 - o.beta2) * g ** 2
    d = (1 - o.beta1 ** t) / lr * (np.sqrt(v / (1 - o.beta2 ** t)) + o.epsilon)
    z[...] = o.beta1 * z + (1 - o.beta1) * g - (d - o.beta1 * d_prev) * w
    d_prev[...] = d
    w[...] = -z / d


def naive_ftrl(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    z, n = s["z"], s["n"]
    z += g - (np.sqrt(n + g * g) - np.sqrt(n)) * w / lr
    n += g * g
    w[...] = np.where(np.abs(z) > o.lamda1, (np.sign(z) * o.lamda1 - z) / ((o.beta + np.sqrt(n)) / lr + wd), 0)


def naive_rmsprop(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g + wd * w, o.clip_gradient)
    s["n"][...] = (1 - o.gamma1) * g ** 2 + o.gamma1 * s["n"]
    w -= lr * g / np.sqrt(s["n"] + o.epsilon)
    w[...] = _clip(w, o.clip_weights)


def naive_nadam(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g + wd * w, o.clip_gradient)
    mt = o.beta1 * (1 - 0.5 * 0.96 ** (t * o.schedule_decay))
    mt1 = o.beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * o.schedule_decay))
    sched = s.setdefault("_m_schedule", [1.0])
    sched[0] *= mt
    m, v = s["m"], s["v"]
    m[...] = o.beta1 * m + (1 - o.beta1) * g
    v[...] = o.beta2 * v + (1 - o.beta2) * g * g
    m_bar = (1 - mt) * (g / (1 - sched[0])) + mt1 * (m / (1 - sched[0] * mt1))
    w -= lr * m_bar / (np.sqrt(v / (1 - o.beta2 ** t)) + o.epsilon)


def naive_lamb(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    m, v = s["mean"], s["var"]
    m[...] = o.beta1 * m + (1 - o.beta1) * g
    v[...] = o.beta2 * v + (1 - o.beta2) * g ** 2
    upd = m / (1 - o.beta1 ** t) / (np.sqrt(v / (1 - o.beta2 ** t)) + o.epsilon) + wd * w
    r1, r2 = np.linalg.norm(w), np.linalg.norm(upd)
    ratio = 1.0 if r1 == 0 or r2 == 0 else r1 / r2
    w -= lr * ratio * upd


def naive_lars(o, w, g, s, t, lr, wd):
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g) * o.rescale_grad
    lars_lr = lr * o.eta * w_norm / (g_norm + wd * w_norm + o.eps) if w_norm > 0 and g_norm > 0 else lr
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    s["mom"][...] = o.momentum * s["mom"] - lars_lr * wd * w - lars_lr * g
    w += s["mom"]


def naive_lbsgd(o, w, g, s, t, lr, wd):
    # batch_scale 1: every step updates; the warmup multiplier is a host number
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    s["mom"][...] = o.momentum * s["mom"] - lr * wd * w - lr * g
    w += s["mom"]


def naive_sgld(o, w, g, s, t, lr, wd):
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    w += -lr / 2 * (g + wd * w) + _RNG.normal(0, math.sqrt(lr), w.shape).astype(w.dtype)


def naive_test(o, w, g, s, t, lr, wd):
    w += o.rescale_grad * g
    s["mirror"][...] = w


def naive_adafactor(o, w, g, s, t, lr, wd):
    # torch.optim.Adafactor (torch 2.5 and later) on a matrix or a vector
    g = _clip(o.rescale_grad * g, o.clip_gradient)
    if o.maximize:
        g = -g
    beta2_t = t ** o.beta2_decay
    rho = min(lr, 1 / math.sqrt(t))
    alpha = max(o.eps2, float(np.linalg.norm(w)) / math.sqrt(w.size)) * rho
    if wd != 0:
        w *= 1 - lr * wd
    e1 = o.eps1 if o.eps1 is not None else float(np.finfo(w.dtype).eps)
    if w.ndim >= 2:
        r, c = s["row_var"], s["col_var"]   # (rows, 1) and (1, cols)
        r += beta2_t * (np.mean(g * g, axis=-1, keepdims=True) - r)
        c += beta2_t * (np.mean(g * g, axis=-2, keepdims=True) - c)
        var = r * c / np.maximum(np.mean(r, axis=-2, keepdims=True), e1)
    else:
        v = s["variance"]
        v += beta2_t * (g * g - v)
        var = v
    u = g / np.sqrt(np.maximum(var, e1 * e1))
    clipped = max(1.0, float(np.linalg.norm(u)) / math.sqrt(u.size) / o.d)
    w -= alpha / clipped * u


def naive_sm3(o, w, g, s, t, lr, wd):
    # optax.sm3 on a matrix (a vector is one row), weight decay added to the gradient
    g = _clip(o.rescale_grad * g, o.clip_gradient) + wd * w
    acc_row, acc_col, mom = s["acc_row"], s["acc_col"], s["mom"]
    g2 = g.reshape(-1, g.shape[-1])
    r, c = acc_row.reshape(-1, 1), acc_col.reshape(1, -1)
    nu = (1 if o.beta2 == 1 else 1 - o.beta2) * g2 * g2 + o.beta2 * np.minimum(r, c)
    step = np.where(nu > 0, g2 / np.sqrt(nu + o.eps), 0).reshape(g.shape)
    mom[...] = o.momentum * mom + (1 - o.momentum) * step
    w -= lr * mom
    r[...] = nu.max(axis=-1, keepdims=True)
    c[...] = nu.max(axis=-2, keepdims=True)


_RNG = np.random.default_rng(0)

# (registry name, constructor arguments): momentum on where it adds a state
CONFIGS = [
    ("sgd", dict(momentum=0.9)), ("nag", dict(momentum=0.9)), ("signum", dict(momentum=0.9)),
    ("dcasgd", dict(momentum=0.9)), ("lars", dict(momentum=0.9)), ("lbsgd", dict(momentum=0.9)),
    ("adam", {}), ("adamax", {}), ("nadam", {}), ("adagrad", {}), ("adadelta", {}), ("ftml", {}),
    ("ftrl", {}), ("rmsprop", {}), ("lamb", {}), ("sgld", {}), ("test", {}),
    ("adafactor", {}), ("sm3", {}),
]
NAIVE = {name: globals()[f"naive_{name}"] for name, _ in CONFIGS}
SHAPED = {"adafactor", "sm3"}   # per-row / per-col states: benched on matrices


def bench_shape(name, n):
    """The tensor shape for `n` elements: a vector, or for the shaped optimizers a matrix as square
    as a power of two allows (2^20: 1024 x 1024; 2^21: 1024 x 2048)."""
    if name not in SHAPED or n < 4:
        return (n,)
    rows = 1 << ((n.bit_length() - 1) // 2)
    return (rows, n // rows)


def min_bytes(name, shape, states) -> int:
    """Bytes one step of one tensor must move at least (float32; the module docstring explains)."""
    n = math.prod(shape)
    small = sum(2 * v.nbytes for v in states.values() if v is not None and v.size != n)
    full = sum(2 * v.nbytes for v in states.values() if v is not None and v.size == n)
    if name == "adafactor":
        return (24 if len(shape) >= 2 else 32) * n + small
    return 12 * n + full + small

# ---- C kernels compiled in this run: the streaming roof and a hand-written fused Adam -------------

C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
extern "C" {
/* the roof: read two arrays, update one in place (12 bytes per float) */
void stream_axpy(int64_t n, float* __restrict__ a, const float* __restrict__ b, float s) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) a[i] += s * b[i];
}
/* Adam, fused by hand: 4 reads, 3 writes (28 bytes per float) */
void adam_fused(int64_t n, float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                float* __restrict__ v, float lr_t, float b1, float b2, float eps, float wd, float rescale) {
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        float gi = g[i] * rescale + wd * w[i];
        float mi = b1 * m[i] + c1 * gi;
        float vi = b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] -= lr_t * mi / (sqrtf(vi) + eps);
    }
}
}
"""


def compile_reference_kernels():
    cxx = native.compiler() or "g++"
    d = tempfile.mkdtemp(prefix="optforge-bench-")
    src, lib = os.path.join(d, "ref.cpp"), os.path.join(d, "ref.so")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    flags = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]
    subprocess.run([cxx, *flags, src, "-o", lib], check=True)
    so = ctypes.CDLL(lib)
    p = ctypes.c_void_p
    so.stream_axpy.argtypes = [ctypes.c_int64, p, p, ctypes.c_float]
    so.adam_fused.argtypes = [ctypes.c_int64, p, p, p, p] + [ctypes.c_float] * 6
    return so, f"{cxx} {' '.join(flags)}"


# ---- timing ---------------------------------------------------------------------------------------


def timed(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    return (f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()}, numpy {np.__version__}, "
            f"compiler {native._compiler_state.get('version', ['?'])[0] if native.available() else 'none'}, "
            f"OMP_NUM_THREADS {threads}")


class Case:
    """One optimizer at one size: the variants, each a zero-argument step."""

    def __init__(self, name, kwargs, n, count, ref):
        rng = np.random.default_rng(1)
        self.name, self.n, self.count = name, n, count
        self.variants = {}
        shape = self.shape = bench_shape(name, n)
        base_w = [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)]
        grads = [rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01) for _ in range(count)]
        kw = dict(learning_rate=0.01, wd=1e-4, **kwargs)
        self.bytes = 0
        for backend in ("numpy", "native"):
            if backend == "native" and not native.available():
                continue
            opt = optforge.create(name, **kw)
            opt.backend = backend
            ws = [w.copy() for w in base_w]
            states = [opt.create_state(i, w) for i, w in enumerate(ws)]
            idx = list(range(count))
            if count == 1:
                step = (lambda o=opt, w=ws[0], g=grads[0], s=states[0]: o.update(0, w, g, s))
            else:
                step = (lambda o=opt, ws=ws, s=states: o.update(idx, ws, grads, s))
            self.variants[backend] = step
            self.bytes = count * min_bytes(name, shape, states[0].tensors)
        ref_opt = optforge.create(name, **kw)
        naive = NAIVE[name]
        nws = [w.copy() for w in base_w]
        nstates = [{k: v.copy() for k, v in ref_opt.create_state(i, w).tensors.items() if v is not None}
                   for i, w in enumerate(nws)]
        clock = [0]

        def naive_step():
            clock[0] += 1
            for w, g, s in zip(nws, grads, nstates):
                naive(ref_opt, w, g, s, clock[0], kw["learning_rate"], kw["wd"])
        self.variants["naive"] = naive_step
        if name == "adam" and ref is not None:
            cw, cm, cv = [w.copy() for w in base_w], [np.zeros(shape, np.float32) for _ in range(count)], \
                [np.zeros(shape, np.float32) for _ in range(count)]
            cclock = [0]

            def c_step():
                cclock[0] += 1
                t = cclock[0]
                lr_t = 0.01 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
                for w, g, m, v in zip(cw, grads, cm, cv):
                    ref.adam_fused(n, w.ctypes.data, g.ctypes.data, m.ctypes.data, v.ctypes.data,
                                   lr_t, 0.9, 0.999, 1e-8, 1e-4, 1.0)
            self.variants["C"] = c_step
        # the roof at this size: a[i] += s * b[i] over the same number of elements
        a, b = np.ones(n * count, np.float32), np.ones(n * count, np.float32)
        if ref is not None:
            self.variants["stream"] = lambda: ref.stream_axpy(n * count, a.ctypes.data, b.ctypes.data, 1e-7)
        self.stream_bytes = n * count * 12


def measure(case: Case, repeat: int) -> dict:
    for fn in case.variants.values():   # warm up: first touch, native compile, thread pool
        fn()
        fn()
    one = {k: timed(fn, 1) for k, fn in case.variants.items()}
    reps = {k: max(1, min(200, int(20.0 / max(ms, 1e-3)))) for k, ms in one.items()}   # ~20 ms a sample
    samples = {k: [] for k in case.variants}
    for _ in range(repeat):
        for k, fn in case.variants.items():
            samples[k].append(timed(fn, reps[k]))
    return {k: statistics.median(v) for k, v in samples.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,17,18,19,20,21,22,23,24",
                    help="comma-separated log2 sizes (default 16..24)")
    ap.add_argument("--quick", action="store_true", help="sizes 16,20,24 and 3 repeats")
    ap.add_argument("--repeat", type=int, default=5, help="samples per figure (median)")
    ap.add_argument("--only", default="", help="comma-separated optimizer names")
    ap.add_argument("--no-small", action="store_true", help="skip the 200 x 4,096 list step")
    a = ap.parse_args()
    sizes = [16, 20, 24] if a.quick else [int(s) for s in a.sizes.split(",") if s]
    repeat = 3 if a.quick else a.repeat
    configs = [c for c in CONFIGS if not a.only or c[0] in a.only.split(",")]

    ref, ref_flags = (compile_reference_kernels() if native.available() else (None, "no compiler"))
    print(f"# {machine()}")
    print(f"# reference C: {ref_flags}; medians of {repeat} interleaved samples")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    hdr = ("| optimizer | size | naive ms | numpy ms | native ms | numpy GB/s | native GB/s | roof GB/s "
           "| numpy/roof | native/roof | naive/numpy | naive/native | numpy/C | native/C |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    steps = [(n, 1) for n in (1 << s for s in sizes)]
    if not a.no_small:
        steps.append((4096, 200))
    for name, kwargs in configs:
        for n, count in steps:
            case = Case(name, kwargs, n, count, ref)
            ms = measure(case, repeat)
            roof = case.stream_bytes / (ms["stream"] * 1e-3) / 1e9 if "stream" in ms else float("nan")
            roof_ms = case.bytes / (roof * 1e9) * 1e3
            label = f"2^{n.bit_length() - 1}" if count == 1 else f"{count}x{n}"
            if len(case.shape) > 1:
                label += " (" + "x".join(map(str, case.shape)) + ")"
            cols = [name, label, f"{ms['naive']:.3f}"]
            cols += [f"{ms[b]:.3f}" if b in ms else "-" for b in ("numpy", "native")]
            cols += [f"{case.bytes / (ms[b] * 1e-3) / 1e9:.1f}" if b in ms else "-" for b in ("numpy", "native")]
            cols.append(f"{roof:.1f}")
            cols += [f"{ms[b] / roof_ms:.2f}" if b in ms else "-" for b in ("numpy", "native")]
            cols += [f"{ms['naive'] / ms[b]:.2f}" if b in ms else "-" for b in ("numpy", "native")]
            cols += [f"{ms[b] / ms['C']:.2f}" if "C" in ms and b in ms else "" for b in ("numpy", "native")]
            print("| " + " | ".join(cols) + " |", flush=True)


if __name__ == "__main__":
    main()
