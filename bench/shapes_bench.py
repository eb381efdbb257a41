"""CPU speed of the shaped optimizers (Adafactor, SM3) on large float32 tensors, against torch, a
hand-fused C loop and the memory roof, with the staged program's own bytes stage by stage.

    python bench/shapes_bench.py [--repeat 5] [--only af-matrix,af-vector,sm3-matrix]
                                 [--rows 4096 --cols 4096] [--wd 0] [--no-stages]

Cases (defaults): Adafactor on a 4096 x 4096 weight (factored second moment), Adafactor on a 2^24
vector (full second moment), SM3 on a 4096 x 4096 weight. For each it prints the median ms per step
of

  native  optforge's generated C++ kernels (backend "native"),
  numpy   optforge's generated NumPy kernel (backend "numpy"),
  torch   torch.optim.Adafactor (Adafactor only; torch.set_num_threads(the OpenMP thread count)),
  C       a hand-written fused C reference, compiled in this run, that moves exactly the minimal
          bytes below (3 passes for Adafactor on a matrix, 2 on a vector, 1 for SM3),

the effective bandwidth (minimal bytes / time), the ratio to the memory roof (time / (minimal bytes
/ roof bandwidth): 1.0 is the roof; the roof bandwidth is that of the OpenMP C loop
`a[i] += s * b[i]` bench/cpu_bench.py uses, compiled and measured in this run over the same number
of elements) and the ratio to torch (torch time / ours: above 1 is faster).

Minimal bytes per step (float32, n = rows x cols elements; row/col-sized arrays are counted too,
read and written, but are rows + cols floats: under 0.1%):

  Adafactor, matrix  24n. The update is weight -= alpha / max(1, rms(u) / d) * u with
                     u = g / sqrt(max(R_i C_j / mean(R), eps1^2)), R and C the new row/col means of
                     g^2, alpha from rms(weight) before the step. R and C need every gradient element
                     before any u is known, and rms(u) needs every u before any weight can be
                     written, so a fused implementation makes three passes:
                       1. read grad and weight: row and col sums of g^2, sum of w^2       8n
                       2. read grad: the sum of u^2 (u recomputed from g, R, C)            4n
                       3. read grad and weight, write weight (u recomputed again)         12n
                     Keeping u from pass 2 in a scratch array instead costs 4n written and 4n read
                     against 4n of gradient re-read: more. Weight decay folds into pass 3 (torch
                     takes rms(weight) before the decay). Only a speculative update (write the
                     weight as if unclipped in pass 2, redo it when rms(u) > d) could go lower
                     (20n when no clipping happens); that depends on the data and is not counted.
  Adafactor, vector  32n: pass 1 reads grad, variance and weight and writes variance (rms(u),
                     rms(weight)) 16n; pass 2 reads grad, variance and weight and writes weight 16n.
  SM3, matrix        20n: one pass reads grad, weight, mom and writes mom, weight; nu needs only the
                     old accumulators, and their new row/col maxima are taken in the same pass.

The staged program's bytes ("staged MB") are the sum, over the stages that ran in one native step,
of 4 bytes x the size of every tensor each stage reads or writes (stage.reads / stage.writes of the
spec's lowered Program, codegen/lower.py; full-size tensors count n, per-row ones rows, per-col ones
cols). Unless --no-stages, the native step is also timed stage by stage (each launch through the
native backend timed on the host), with each stage's own bytes and bandwidth. The Program is lowered
from specs/ in this run; a warning is printed when its stages are not the generated module's.

Samples are interleaved (native, numpy, torch, C, roof, then again), every figure is a median, as in
bench/cpu_bench.py. Before timing, every variant runs two steps from the same weight and gradient and
is compared with torch (Adafactor) or the naive NumPy SM3 of bench/cpu_bench.py. Run it with the
OpenBLAS overrides of this machine removed:
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/shapes_bench.py`.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import optforge
from optforge import native

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_bench  # noqa: E402  (machine(), measure(), the naive SM3)

ROOT = Path(__file__).resolve().parent.parent

# ---- C compiled in this run: the roof, the fused references --------------------------------------

C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
/* max without a libm call (fmaxf is not inlined without -ffinite-math-only, and then nothing
   vectorizes); the operands here are never NaN */
static inline float fmx(float a, float b) { return a > b ? a : b; }
static inline float fmn(float a, float b) { return a < b ? a : b; }
extern "C" {
int omp_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
/* the roof: read two arrays, update one in place (12 bytes per float), as bench/cpu_bench.py */
void stream_axpy(int64_t n, float* __restrict__ a, const float* __restrict__ b, float s) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) a[i] += s * b[i];
}
/* Adafactor on a matrix, pass 1 (reads g, w): row sums and col sums of g^2, sum of w^2. Col sums
   per thread, added in thread order. */
void af_stats(int64_t nr, int64_t nc, const float* __restrict__ g, const float* __restrict__ w,
              double* __restrict__ rows, double* __restrict__ cols, double* __restrict__ out) {
    int nt = omp_threads();
    double* part = (double*)calloc((size_t)nt * nc, sizeof(double));
    double* wpart = (double*)calloc((size_t)nt, sizeof(double));
    #pragma omp parallel num_threads(nt)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        double* cp = part + (size_t)tid * nc;
        double ws = 0;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < nr; ++r) {
            const float* gr = g + r * nc;
            const float* wr = w + r * nc;
            double rs = 0;
            #pragma omp simd reduction(+: rs, ws)
            for (int64_t c = 0; c < nc; ++c) {
                const double x = gr[c], y = wr[c];
                rs += x * x;
                cp[c] += x * x;
                ws += y * y;
            }
            rows[r] = rs;
        }
        wpart[tid] = ws;
    }
    for (int64_t c = 0; c < nc; ++c) {
        double s = 0;
        for (int t = 0; t < nt; ++t) s += part[(size_t)t * nc + c];
        cols[c] = s;
    }
    double s = 0;
    for (int t = 0; t < nt; ++t) s += wpart[t];
    out[0] = s;
    free(part);
    free(wpart);
}
/* pass 2 (reads g): sum of u^2, u = g / sqrt(max(a_r C_c, e1^2)), a_r = R_r / max(mean(R), e1) */
void af_rms(int64_t nr, int64_t nc, const float* __restrict__ g, const float* __restrict__ a,
            const float* __restrict__ col, float e1sq, double* __restrict__ out) {
    double s = 0;
    #pragma omp parallel for schedule(static) reduction(+: s)
    for (int64_t r = 0; r < nr; ++r) {
        const float* gr = g + r * nc;
        const float ar = a[r];
        double rs = 0;
        #pragma omp simd reduction(+: rs)
        for (int64_t c = 0; c < nc; ++c) {
            const float u = gr[c] / sqrtf(fmx(ar * col[c], e1sq));
            rs += (double)u * u;
        }
        s += rs;
    }
    out[0] = s;
}
/* pass 3 (reads g, w; writes w): w = w * decay - k * u */
void af_apply(int64_t nr, int64_t nc, float* __restrict__ w, const float* __restrict__ g,
              const float* __restrict__ a, const float* __restrict__ col, float e1sq, float decay, float k) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nr; ++r) {
        float* wr = w + r * nc;
        const float* gr = g + r * nc;
        const float ar = a[r];
        #pragma omp simd
        for (int64_t c = 0; c < nc; ++c)
            wr[c] = wr[c] * decay - k * (gr[c] / sqrtf(fmx(ar * col[c], e1sq)));
    }
}
/* Adafactor on a vector, pass 1 (reads g, v, w; writes v): v += b2t (g^2 - v); sums of u^2, w^2 */
void afv_a(int64_t n, const float* __restrict__ g, float* __restrict__ v, const float* __restrict__ w,
           float b2t, float e1sq, double* __restrict__ out) {
    double su = 0, sw = 0;
    #pragma omp parallel for simd schedule(static) reduction(+: su, sw)
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i];
        const float vi = v[i] + b2t * (gi * gi - v[i]);
        v[i] = vi;
        const float u = gi / sqrtf(fmx(vi, e1sq));
        su += (double)u * u;
        sw += (double)w[i] * w[i];
    }
    out[0] = su;
    out[1] = sw;
}
/* pass 2 (reads g, v, w; writes w) */
void afv_b(int64_t n, float* __restrict__ w, const float* __restrict__ g, const float* __restrict__ v,
           float e1sq, float decay, float k) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) w[i] = w[i] * decay - k * (g[i] / sqrtf(fmx(v[i], e1sq)));
}
/* SM3 on a matrix, one pass (reads g, w, m; writes m, w), beta2 = 1: nu = g^2 + min(row, col);
   the new accumulators are the row and col maxima of nu (nu >= 0), col maxima per thread */
void sm3_fused(int64_t nr, int64_t nc, const float* __restrict__ grad, float* __restrict__ w,
               float* __restrict__ m, float* __restrict__ acc_row, float* __restrict__ acc_col,
               float lr, float mu, float eps, float wd) {
    int nt = omp_threads();
    float* part = (float*)calloc((size_t)nt * nc, sizeof(float));
    #pragma omp parallel num_threads(nt)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float* cp = part + (size_t)tid * nc;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < nr; ++r) {
            float* wr = w + r * nc;
            float* mr = m + r * nc;
            const float* gr = grad + r * nc;
            const float ar = acc_row[r];
            float rmax = 0;
            #pragma omp simd reduction(max: rmax)
            for (int64_t c = 0; c < nc; ++c) {
                const float g = gr[c] + wd * wr[c];
                const float nu = g * g + fmn(ar, acc_col[c]);
                const float s = g / sqrtf(nu + eps);
                const float st = nu > 0 ? s : 0.0f;
                const float mi = mu * mr[c] + (1 - mu) * st;
                mr[c] = mi;
                wr[c] -= lr * mi;
                rmax = fmx(rmax, nu);
                cp[c] = fmx(cp[c], nu);
            }
            acc_row[r] = rmax;
        }
    }
    for (int64_t c = 0; c < nc; ++c) {
        float s = 0;
        for (int t = 0; t < nt; ++t) s = fmx(s, part[(size_t)t * nc + c]);
        acc_col[c] = s;
    }
    free(part);
}
}
"""

FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]


def compile_c():
    cxx = native.compiler() or "g++"
    d = tempfile.mkdtemp(prefix="optforge-shapes-bench-")
    src, lib = os.path.join(d, "ref.cpp"), os.path.join(d, "ref.so")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    subprocess.run([cxx, *FLAGS, src, "-o", lib], check=True)
    so = ctypes.CDLL(lib)
    p, i, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    so.omp_threads.restype = ctypes.c_int
    so.stream_axpy.argtypes = [i, p, p, f]
    so.af_stats.argtypes = [i, i, p, p, p, p, p]
    so.af_rms.argtypes = [i, i, p, p, p, f, p]
    so.af_apply.argtypes = [i, i, p, p, p, p, f, f, f]
    so.afv_a.argtypes = [i, p, p, p, f, f, p]
    so.afv_b.argtypes = [i, p, p, p, f, f, f]
    so.sm3_fused.argtypes = [i, i, p, p, p, p, p, f, f, f, f]
    return so, f"{cxx} {' '.join(FLAGS)}"


# ---- the fused references' host side ---------------------------------------------------------------


class FusedAdafactor:
    """torch.optim.Adafactor's step (default hyperparameters, lr and wd given) with the fused C passes."""

    def __init__(self, so, w, g, lr, wd):
        self.so, self.w, self.g, self.lr, self.wd, self.t = so, w, g, lr, wd, 0
        self.e1 = float(np.finfo(np.float32).eps)
        if w.ndim >= 2:
            self.nr, self.nc = w.shape
            self.R, self.C = np.zeros(self.nr, np.float32), np.zeros(self.nc, np.float32)
            self.rs, self.cs = np.zeros(self.nr), np.zeros(self.nc)
        else:
            self.v = np.zeros(w.shape, np.float32)
        self.out = np.zeros(2)

    def step(self):
        so, w, g, out = self.so, self.w, self.g, self.out
        self.t += 1
        t, n = self.t, w.size
        beta2_t = t ** -0.8
        rho = min(self.lr, 1 / math.sqrt(t))
        decay = 1 - self.lr * self.wd
        if w.ndim >= 2:
            so.af_stats(self.nr, self.nc, g.ctypes.data, w.ctypes.data, self.rs.ctypes.data, self.cs.ctypes.data,
                        out.ctypes.data)
            alpha = max(1e-3, math.sqrt(out[0]) / math.sqrt(n)) * rho
            self.R += np.float32(beta2_t) * ((self.rs / self.nc).astype(np.float32) - self.R)
            self.C += np.float32(beta2_t) * ((self.cs / self.nr).astype(np.float32) - self.C)
            a = (self.R / np.float32(max(float(self.R.mean()), self.e1))).astype(np.float32)
            so.af_rms(self.nr, self.nc, g.ctypes.data, a.ctypes.data, self.C.ctypes.data, self.e1 ** 2, out.ctypes.data)
            clipped = max(1.0, math.sqrt(out[0] / n))
            so.af_apply(self.nr, self.nc, w.ctypes.data, g.ctypes.data, a.ctypes.data, self.C.ctypes.data,
                        self.e1 ** 2, decay, alpha / clipped)
        else:
            so.afv_a(n, g.ctypes.data, self.v.ctypes.data, w.ctypes.data, beta2_t, self.e1 ** 2, out.ctypes.data)
            alpha = max(1e-3, math.sqrt(out[1]) / math.sqrt(n)) * rho
            clipped = max(1.0, math.sqrt(out[0] / n))
            so.afv_b(n, w.ctypes.data, g.ctypes.data, self.v.ctypes.data, self.e1 ** 2, decay, alpha / clipped)


class FusedSM3:
    def __init__(self, so, w, g, lr, wd, momentum=0.9, eps=1e-8):
        self.so, self.w, self.g, self.lr, self.wd, self.mu, self.eps = so, w, g, lr, wd, momentum, eps
        self.m = np.zeros_like(w)
        self.row, self.col = np.zeros(w.shape[0], np.float32), np.zeros(w.shape[1], np.float32)

    def step(self):
        self.so.sm3_fused(self.w.shape[0], self.w.shape[1], self.g.ctypes.data, self.w.ctypes.data,
                          self.m.ctypes.data, self.row.ctypes.data, self.col.ctypes.data,
                          self.lr, self.mu, self.eps, self.wd)


# ---- the staged program: its bytes, and its stages timed -------------------------------------------


def program_of(cls):
    from optforge.codegen.compile import load_spec_text
    from optforge.codegen.lower import lower
    path = ROOT / cls.spec_path
    spec, _ = load_spec_text(path.read_text(), str(path))
    return lower(spec)


def stage_bytes(prog, stage, shape) -> int:
    """4 bytes x the size of every tensor the stage reads or writes, for a float32 weight of `shape`."""
    from optforge import ops
    rows_cols = ops.view_dims(shape, "batched")
    size = {"full": math.prod(shape), "per_row": rows_cols[0] * rows_cols[1],
            "per_col": rows_cols[0] * rows_cols[2], "per_block": rows_cols[0]}
    names = list(stage.reads) + list(stage.writes)
    return sum(4 * size[prog.shapes[name].value] for name in names)


@contextlib.contextmanager
def timed_launches(record: list):
    """Within the block, every launch of the native backend appends (kernel, seconds)."""
    original = native.NativeBackend.launch

    def launch(self, fn, arrays, scalars, *args, **kwargs):
        t0 = time.perf_counter()
        out = original(self, fn, arrays, scalars, *args, **kwargs)
        record.append((fn, time.perf_counter() - t0))
        return out

    native.NativeBackend.launch = launch
    try:
        yield record
    finally:
        native.NativeBackend.launch = original


def profile_stages(step, prog, shape, steps: int):
    """(stage rows, staged bytes of one step, median ms of one step): the native step run `steps`
    times with each launch timed."""
    record: list = []
    totals = []
    with timed_launches(record):
        for _ in range(steps):
            mark = len(record)
            t0 = time.perf_counter()
            step()
            totals.append((time.perf_counter() - t0) * 1e3)
            assert len(record) > mark
    by_fn = {st.fn: st for st in prog.stages}
    per: dict = {}
    for fn, sec in record:
        per.setdefault(fn, []).append(sec * 1e3)
    rows = []
    for fn, times in per.items():   # dicts keep first-launch order: program order
        st = by_fn.get(fn)
        if st is None:
            raise SystemExit(f"{fn} ran but the lowered Program has no such stage: regenerate generated/ "
                             "(opt-compile) or run with --no-stages")
        rows.append((st, statistics.median(times), len(times) // steps, stage_bytes(prog, st, shape)))
    staged = sum(b * k for _, _, k, b in rows)
    return rows, staged, statistics.median(totals)


# ---- cases ----------------------------------------------------------------------------------------


class Case:
    def __init__(self, key, name, shape, so, lr, wd, with_torch):
        import torch
        self.key, self.name, self.shape = key, name, shape
        rng = np.random.default_rng(1)
        base_w = rng.standard_normal(shape, dtype=np.float32)
        self.g = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
        self.base_w = base_w
        n = self.n = base_w.size
        self.variants, self.weights, self.steps = {}, {}, {}
        kw = dict(learning_rate=lr, wd=wd)
        self.opts = {}
        for backend in ("native", "numpy"):
            if backend == "native" and not native.available():
                continue
            opt = optforge.create(name, **kw)
            opt.backend = backend
            w = base_w.copy()
            state = opt.create_state(0, w)
            self.opts[backend] = opt
            self.weights[backend] = w
            self.variants[backend] = (lambda o=opt, w=w, s=state: o.update(0, w, self.g, s))
        if with_torch:
            w = base_w.copy()
            p = torch.nn.Parameter(torch.from_numpy(w))
            p.grad = torch.from_numpy(self.g)
            topt = torch.optim.Adafactor([p], lr=lr, weight_decay=wd)
            self.weights["torch"] = w
            self.variants["torch"] = topt.step
        if so is not None:
            w = base_w.copy()
            ref = FusedAdafactor(so, w, self.g, lr, wd) if name == "adafactor" else FusedSM3(so, w, self.g, lr, wd)
            self.weights["C"] = w
            self.variants["C"] = ref.step
            a, b = np.ones(n, np.float32), np.ones(n, np.float32)
            self.variants["roof"] = lambda: so.stream_axpy(n, a.ctypes.data, b.ctypes.data, 1e-7)
        probe = optforge.create(name, **kw).create_state(0, base_w.copy()).tensors
        self.min_bytes = cpu_bench.min_bytes(name, shape, probe)
        self.naive_states = {k: v.copy() for k, v in probe.items() if v is not None}
        self.lr, self.wd = lr, wd

    def check(self) -> str:
        """Two steps of every variant from the same start, against torch (Adafactor) or the naive NumPy
        SM3: max |w - w_ref| / max |w_ref - w0|. The variants then go on stepping while timed."""
        for k, fn in self.variants.items():
            if k != "roof":
                fn()
                fn()
        if "torch" in self.weights:
            ref, against = self.weights["torch"], "torch"
        else:
            ref = self.base_w.copy()
            opt = optforge.create(self.name, learning_rate=self.lr, wd=self.wd)
            for t in (1, 2):
                cpu_bench.NAIVE[self.name](opt, ref, self.g, self.naive_states, t, self.lr, self.wd)
            against = "naive NumPy"
        scale = float(np.abs(ref - self.base_w).max())
        parts = [f"{k} {float(np.abs(w - ref).max()) / scale:.1e}" for k, w in self.weights.items() if w is not ref]
        return f"# check {self.key} after 2 steps, max|w - w_{against}| / max|step|: " + ", ".join(parts)


CASES = {
    "af-matrix": ("adafactor", "matrix", True),
    "af-vector": ("adafactor", "vector", True),
    "sm3-matrix": ("sm3", "matrix", False),
}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated cases: " + ",".join(CASES))
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--vector", type=int, default=1 << 24, help="elements of the vector case (default 2^24)")
    ap.add_argument("--repeat", type=int, default=5, help="samples per figure (median)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--wd", type=float, default=0.0, help="weight decay (default 0, torch's default)")
    ap.add_argument("--no-stages", action="store_true", help="skip timing the native stages one by one")
    a = ap.parse_args()
    import torch

    so, flags = compile_c() if native.available() else (None, "no compiler")
    threads = so.omp_threads() if so is not None else 1
    torch.set_num_threads(threads)
    keys = [k for k in CASES if not a.only or k in a.only.split(",")]
    print(f"# {cpu_bench.machine()}, torch {torch.__version__}")
    print(f"# threads: OpenMP {threads} (omp_get_max_threads of the C compiled here; OMP_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), torch {torch.get_num_threads()} (set_num_threads)")
    print(f"# reference C: {flags}; medians of {a.repeat} interleaved samples; lr {a.lr}, wd {a.wd}; "
          f"load average at start {loadavg()}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    results, stage_rows, checks = [], [], []
    for key in keys:
        name, kind, with_torch = CASES[key]
        shape = (a.rows, a.cols) if kind == "matrix" else (a.vector,)
        case = Case(key, name, shape, so, a.lr, a.wd, with_torch)
        checks.append(case.check())
        ms = cpu_bench.measure(case, a.repeat)
        prog = program_of(type(case.opts["native"])) if "native" in case.opts else None
        if prog is not None and tuple(st.fn for st in prog.stages) != tuple(type(case.opts["native"]).kernel_stages):
            print(f"# warning: the stages lowered from {type(case.opts['native']).spec_path} are not those of "
                  "the generated module (regenerate with opt-compile): staged bytes may be off")
        staged, stages, step_ms = None, [], None
        if prog is not None:
            stages, staged, step_ms = profile_stages(case.variants["native"], prog, shape,
                                                     1 if a.no_stages else max(3, a.repeat))
        results.append((case, ms, staged))
        if not a.no_stages:
            stage_rows.append((case, stages, step_ms, ms))
        del case

    for line in checks:
        print(line)
    hdr = ("| case | shape | native ms | numpy ms | torch ms | fused C ms | roof GB/s | min MB | staged MB "
           "| native GB/s | native/roof | numpy/roof | torch/roof | C/roof | torch/native | torch/numpy |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for case, ms, staged in results:
        roof = case.n * 12 / (ms["roof"] * 1e-3) / 1e9 if "roof" in ms else float("nan")
        roof_ms = case.min_bytes / (roof * 1e9) * 1e3
        f = (lambda k, fmt="{:.2f}": fmt.format(ms[k]) if k in ms else "-")
        cols = [f"{case.name}", "x".join(map(str, case.shape)), f("native"), f("numpy"), f("torch"), f("C")]
        cols += [f"{roof:.1f}", f"{case.min_bytes / 1e6:.0f}", f"{staged / 1e6:.0f}" if staged else "-"]
        cols.append(f"{case.min_bytes / (ms['native'] * 1e-3) / 1e9:.1f}" if "native" in ms else "-")
        cols += [f"{ms[k] / roof_ms:.2f}" if k in ms else "-" for k in ("native", "numpy", "torch", "C")]
        cols += [f"{ms['torch'] / ms[k]:.2f}" if "torch" in ms and k in ms else "-" for k in ("native", "numpy")]
        print("| " + " | ".join(cols) + " |")
    if stage_rows:
        print()
        print("Native step stage by stage (each launch timed on the host; median ms; bytes: 4 x the size of "
              "every tensor the stage reads or writes):")
        print()
        hdr = "| case | stage | over | reads | writes | ms | MB | GB/s | x roof time for its bytes |"
        print(hdr)
        print("|" + "---|" * (hdr.count("|") - 1))
        for case, stages, step_ms, ms in stage_rows:
            roof = case.n * 12 / (ms["roof"] * 1e-3) / 1e9 if "roof" in ms else float("nan")
            for st, t, k, b in stages:
                bw = b / (t * 1e-3) / 1e9 if t > 0 else float("nan")
                cols = [case.name + " " + "x".join(map(str, case.shape)), st.name, st.domain.value,
                        ", ".join(st.reads) or "-", ", ".join(st.writes) or "-", f"{t:.2f}", f"{b / 1e6:.1f}",
                        f"{bw:.1f}", f"{roof / bw:.1f}" if b >= case.n else "-"]
                print("| " + " | ".join(cols) + " |")
            print(f"| {case.name} {'x'.join(map(str, case.shape))} | (step) | | | | {step_ms:.2f} | | | |")
    print(f"# load average at end {loadavg()}")


if __name__ == "__main__":
    main()
