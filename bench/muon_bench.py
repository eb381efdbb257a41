"""CPU speed of one Muon step (specs/muon.opt) on float32 matrices, against torch.optim.Muon, with the
share of optforge's step that is spent outside the BLAS products.

    python bench/muon_bench.py [--repeat 5] [--only square,wide,tall] [--ns-steps 5] [--quick]
                               [--no-profile]

Cases (defaults): a 1024 x 1024 weight (square), 256 x 1024 (wide: the iteration runs on the
256 x 256 Gram matrix X X^T) and 1024 x 256 (tall: on X^T X). For each it prints the median ms per
step of

  native     optforge's generated C++ stages between NumPy (OpenBLAS) products (backend "native"),
  numpy      optforge's straight-line NumPy kernel (backend "numpy"),
  torch      torch.optim.Muon as shipped: Newton-Schulz in bfloat16 (`grad.bfloat16()`),
  torch32    torch.optim.Muon with float32 Newton-Schulz: torch.Tensor.bfloat16 is patched, for this
             column only, to return a float32 copy (`self.clone()`) of the tensor, so the iteration
             runs in the parameter's type as optforge's does (a copy, not the tensor itself: without
             nesterov the momentum buffer would otherwise be divided in place),
  BLAS       the products of one optforge step alone: 3 np.matmul calls per Newton-Schulz step x
             ns_steps, of the same shapes, in the same order and with the same `out=` arrays as the
             native step (ops.matmul reshapes to (1, r, c) and calls np.matmul(..., out=)),
  torch mm   the same products with torch.mm (MKL) in float32, for comparison of the two BLAS,

the ratios optforge/torch (above 1: optforge is slower) against both torch columns, and the share of
optforge's step outside the BLAS products: 1 - BLAS / step. Unless --no-profile, the native step is
also timed piece by piece (every ops.matmul call and every stage launch timed on the host, inside
the real step), which splits the outside-BLAS time into the stages' share and the rest (Python,
ctypes, the driver).

All columns run with the same thread count: torch.set_num_threads(the OpenMP thread count of the
process), OpenBLAS's own pool as NumPy loads it; the header prints OMP_NUM_THREADS,
torch.get_num_threads(), the OpenMP runtimes loaded (threadpoolctl, when installed) and OpenBLAS's
threads. Samples are interleaved (native, numpy, torch, torch32, BLAS, torch mm, then again); every
figure is a median, as in bench/cpu_bench.py, and each sample starts after --settle seconds of sleep
(0.2 by default), long enough for the worker threads of the previous column (libgomp's, OpenBLAS's)
to stop spin-waiting: on a machine with as many cores as threads, spinning workers of one pool halve
the next column's cores. Before timing, every variant runs two warm-up steps
from the same weight and gradient, and optforge's weights are compared with torch32's. Run it with the
OpenBLAS overrides of this machine removed:
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/muon_bench.py`.

The native column depends on OMP_WAIT_POLICY: the native step alternates OpenMP stages (libgomp,
whose idle workers spin by default) with OpenBLAS products (whose idle workers spin too, for up to
2^OPENBLAS_THREAD_TIMEOUT cycles), so with 2 threads of each pool on 2 cores each pool's spinning
workers take cores from the other's running ones, stage after product. Run it a second time with
`OMP_WAIT_POLICY=passive` (or GOMP_SPINCOUNT=0) to see the step without that contention; the header
prints the setting.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np

import optforge
from optforge import native, ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_bench  # noqa: E402  (machine())
from shapes_bench import loadavg, timed_launches  # noqa: E402

CASES = {
    "square": (1024, 1024),
    "wide": (256, 1024),
    "tall": (1024, 256),
}
LR, WD = 0.02, 0.1


@contextlib.contextmanager
def float32_newton_schulz():
    """torch.Tensor.bfloat16 returns a float32 copy within the block (torch.optim.Muon's
    `grad.bfloat16()` then starts a float32 iteration)."""
    import torch
    original = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self.clone()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = original


def product_shapes(rows, cols):
    """The (a, b, out) arrays and transposes of the products of one Newton-Schulz step, as the staged
    program runs them (`opt-compile specs/muon.opt --emit program`)."""
    if rows > cols:   # a = x^T x (cols x cols); _r1 = a a; _r2 = x b
        k = cols
        return [((rows, cols), True, (rows, cols), False, (k, k)),
                ((k, k), False, (k, k), False, (k, k)),
                ((rows, cols), False, (k, k), False, (rows, cols))]
    k = rows          # a_t = x x^T (rows x rows); _r3 = a_t a_t; _r4 = b_t x
    return [((rows, cols), False, (rows, cols), True, (k, k)),
            ((k, k), False, (k, k), False, (k, k)),
            ((k, k), False, (rows, cols), False, (rows, cols))]


class Case:
    def __init__(self, key, shape, ns_steps):
        import torch
        self.key, self.shape, self.ns_steps = key, shape, ns_steps
        rng = np.random.default_rng(1)
        self.base_w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        self.g = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
        self.variants, self.weights = {}, {}
        self.native_step = None
        for backend in ("native", "numpy"):
            if backend == "native" and not native.available():
                continue
            opt = optforge.create("muon", learning_rate=LR, wd=WD, ns_steps=ns_steps)
            opt.backend = backend
            w = self.base_w.copy()
            state = opt.create_state(0, w)
            self.weights[backend] = w
            self.variants[backend] = (lambda o=opt, w=w, s=state: o.update(0, w, self.g, s))
        for key32 in ("torch", "torch32"):
            w = self.base_w.copy()
            p = torch.nn.Parameter(torch.from_numpy(w))
            p.grad = torch.from_numpy(self.g)
            topt = torch.optim.Muon([p], lr=LR, weight_decay=WD, ns_steps=ns_steps)
            self.weights[key32] = w
            if key32 == "torch":
                self.variants[key32] = topt.step
            else:
                def step32(topt=topt):
                    with float32_newton_schulz():
                        topt.step()
                self.variants[key32] = step32
        # the products alone, NumPy (OpenBLAS) and torch (MKL), same shapes, out= arrays reused
        prods, tprods = [], []
        for ashape, ta, bshape, tb, oshape in product_shapes(*shape):
            a0 = rng.standard_normal(ashape, dtype=np.float32)
            b0 = rng.standard_normal(bshape, dtype=np.float32)
            a, b = a0.reshape(1, *ashape), b0.reshape(1, *bshape)
            prods.append((np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b,
                          np.empty((1, *oshape), np.float32)))
            ta0, tb0 = torch.from_numpy(a0), torch.from_numpy(b0)
            tprods.append((ta0.T if ta else ta0, tb0.T if tb else tb0, torch.empty(oshape)))

        def blas():
            for _ in range(ns_steps):
                for a, b, out in prods:
                    np.matmul(a, b, out=out)
        self.variants["BLAS"] = blas

        def torch_mm():
            for _ in range(ns_steps):
                for a, b, out in tprods:
                    torch.mm(a, b, out=out)
        self.variants["torch mm"] = torch_mm

    def check(self) -> str:
        """Two steps of every variant from the same start (the warm-up), then max |w - w_torch32| /
        max |w_torch32 - w0|: optforge against torch's float32 iteration, and torch's bf16 one."""
        for fn in self.variants.values():
            fn()
            fn()
        ref = self.weights["torch32"]
        scale = float(np.abs(ref - self.base_w).max())
        parts = [f"{k} {float(np.abs(w - ref).max()) / scale:.1e}" for k, w in self.weights.items() if k != "torch32"]
        return (f"# check {self.key} {'x'.join(map(str, self.shape))} after 2 steps, max|w - w_torch32| / max|step|: "
                + ", ".join(parts))


def measure(case: Case, repeat: int, sample_ms: float, settle: float) -> dict:
    one = {k: cpu_bench.timed(fn, 1) for k, fn in case.variants.items()}
    reps = {k: max(1, min(100, int(sample_ms / max(ms, 1e-3)))) for k, ms in one.items()}
    samples = {k: [] for k in case.variants}
    for _ in range(repeat):
        for k, fn in case.variants.items():
            time.sleep(settle)   # the previous column's spinning worker threads go to sleep first
            samples[k].append(cpu_bench.timed(fn, reps[k]))
    return {k: statistics.median(v) for k, v in samples.items()}


def profile_native(case: Case, steps: int):
    """(median ms of the step, of its products, of its stage launches) over `steps` native steps, each
    ops.matmul call and stage launch timed on the host inside the step."""
    step = case.variants["native"]
    mm: list = []
    original = ops.matmul

    def matmul(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        mm.append(time.perf_counter() - t0)
        return out

    totals, mms, launches = [], [], []
    record: list = []
    ops.matmul = matmul
    try:
        with timed_launches(record):
            for _ in range(steps):
                m0, l0 = len(mm), len(record)
                t0 = time.perf_counter()
                step()
                totals.append((time.perf_counter() - t0) * 1e3)
                mms.append(sum(mm[m0:]) * 1e3)
                launches.append(sum(s for _, s in record[l0:]) * 1e3)
                assert len(mm) - m0 == 3 * case.ns_steps
    finally:
        ops.matmul = original
    return statistics.median(totals), statistics.median(mms), statistics.median(launches)


def thread_settings(torch) -> list[str]:
    lines = [f"OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}, "
             f"OPENBLAS_NUM_THREADS {os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
             f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
             f"torch.get_num_threads() {torch.get_num_threads()} (set_num_threads), "
             f"torch matmul: {'MKL' if torch.backends.mkl.is_available() else 'no MKL'}"]
    try:
        import threadpoolctl
        for info in threadpoolctl.threadpool_info():
            lines.append(f"  {info['user_api']}/{info['internal_api']} {os.path.basename(info['filepath'])}: "
                         f"{info['num_threads']} threads")
    except ImportError:
        lines.append("  (threadpoolctl not installed: OpenBLAS's and the OpenMP runtimes' threads not listed)")
    return lines


def omp_threads() -> int:
    """omp_get_max_threads() of the libgomp the process has loaded (the native kernels' and torch's:
    one libgomp.so.1 by soname, whichever was loaded first)."""
    import ctypes
    try:
        return int(ctypes.CDLL("libgomp.so.1").omp_get_max_threads())
    except OSError:
        return os.cpu_count() or 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated cases: " + ",".join(CASES))
    ap.add_argument("--repeat", type=int, default=5, help="samples per figure (median; default 5)")
    ap.add_argument("--quick", action="store_true", help="3 samples, shorter samples, short profile")
    ap.add_argument("--ns-steps", type=int, default=5, help="Newton-Schulz steps (default 5, torch's)")
    ap.add_argument("--sample-ms", type=float, default=100.0, help="a sample lasts at least one step or ~this")
    ap.add_argument("--settle", type=float, default=0.2,
                    help="seconds of sleep before each sample (default 0.2), so that the previous column's "
                         "idle OpenMP / OpenBLAS threads have stopped spinning")
    ap.add_argument("--no-profile", action="store_true", help="skip timing the native step piece by piece")
    a = ap.parse_args()
    repeat = 3 if a.quick else a.repeat
    sample_ms = 40.0 if a.quick else a.sample_ms
    import torch

    keys = [k for k in CASES if not a.only or k in a.only.split(",")]
    cases, checks, results, profiles = [], [], [], {}
    t_start = time.perf_counter()
    for key in keys:
        case = Case(key, CASES[key], a.ns_steps)
        if key == keys[0]:
            # the native library is loaded by the first step (its libgomp with it); one thread count
            # for everyone
            if native.available():
                probe = optforge.create("muon")
                probe.backend = "native"
                pw = np.ones((4, 4), np.float32)
                probe.update(0, pw, pw.copy(), probe.create_state(0, pw))
            threads = omp_threads()
            torch.set_num_threads(threads)
            print(f"# {cpu_bench.machine()}, torch {torch.__version__}")
            print(f"# threads: native kernels (OpenMP omp_get_max_threads) {threads}; "
                  + "\n#   ".join(thread_settings(torch)))
            print(f"# medians of {repeat} interleaved samples (each >= 1 step, ~{sample_ms:.0f} ms), after 2 "
                  f"warm-up steps, {a.settle} s of sleep before each; ns_steps {a.ns_steps}; lr {LR}, wd {WD}; load average at start {loadavg()} "
                  "(a shared machine: other work may run alongside)")
            print("# torch32: torch.optim.Muon with torch.Tensor.bfloat16 patched to a float32 copy "
                  "(float32 Newton-Schulz); torch: as shipped (bfloat16 Newton-Schulz)")
            print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
        checks.append(case.check())
        ms = measure(case, repeat, sample_ms, a.settle)
        results.append((case, ms))
        if "native" in case.variants and not a.no_profile:
            profiles[key] = profile_native(case, 3 if a.quick else max(3, repeat))
        del case

    for line in checks:
        print(line)
    hdr = ("| case | shape | native ms | numpy ms | torch ms (bf16 NS) | torch32 ms (fp32 NS) | BLAS ms | torch mm ms "
           "| native/torch | native/torch32 | numpy/torch | numpy/torch32 | native outside BLAS | numpy outside BLAS "
           "| BLAS/torch mm |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for case, ms in results:
        f = (lambda k: f"{ms[k]:.2f}" if k in ms else "-")
        r = (lambda k, d: f"{ms[k] / ms[d]:.2f}" if k in ms and d in ms else "-")
        out = (lambda k: f"{1 - ms['BLAS'] / ms[k]:.0%}" if k in ms else "-")
        cols = [case.key, "x".join(map(str, case.shape)), f("native"), f("numpy"), f("torch"), f("torch32"),
                f("BLAS"), f("torch mm"), r("native", "torch"), r("native", "torch32"), r("numpy", "torch"),
                r("numpy", "torch32"), out("native"), out("numpy"), r("BLAS", "torch mm")]
        print("| " + " | ".join(cols) + " |")
    if profiles:
        print()
        print("Native step piece by piece (every ops.matmul call and stage launch timed on the host inside the "
              "step; medians):")
        print()
        hdr = "| case | step ms | products ms | stages ms | rest ms (driver, Python) | outside products |"
        print(hdr)
        print("|" + "---|" * (hdr.count("|") - 1))
        for key, (step_ms, mm_ms, st_ms) in profiles.items():
            print(f"| {key} | {step_ms:.2f} | {mm_ms:.2f} | {st_ms:.2f} | {step_ms - mm_ms - st_ms:.2f} "
                  f"| {1 - mm_ms / step_ms:.0%} |")
    print(f"# load average at end {loadavg()}; {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
