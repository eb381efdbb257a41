"""GPU speed of the CUDA backend (needs CuPy and a CUDA device; run on a GPU machine, not in CI).

    python bench/gpu_bench.py [--log2 26] [--repeat 30] [--json out.json]

1. The device copy bandwidth (cupy.copyto of 2^N float32, 8 bytes per element read + written),
   measured in this run: the roof.
2. Every bundled optimizer on 2^N float32 elements: ms per step and effective bandwidth (weight and
   every state tensor read and written, the gradient read: Adam 28 bytes per element) as a share
   of the copy bandwidth. Steps run back to back between two device events (the way a training
   loop issues them), so the host's Python work overlaps the kernels; Adam is also timed as the
   bare kernel launch, and with float16 weights + float32 master copies (multi_precision).
   Target: Adam >= 85% of copy.
3. torch's fused Adam (and its foreach Adam) on the same size, when torch with CUDA is installed.
4. A 200-tensor model step (200 x 4,096 float32), Adam and LAMB: one list update (multi-tensor
   kernels, launches counted; LAMB's norms come back in one transfer) vs a loop of 200 single
   updates, and torch's fused Adam over the same 200 tensors.
5. Row-sparse: lazy Adam on a 1,000,000 x 64 embedding with 1% of its rows in the gradient, vs the
   dense step.
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

MOMENTUM = {"sgd", "nag", "signum", "dcasgd", "lars", "lbsgd", "ccsgd"}


def timed(fn, repeat, inner=1):
    """Median ms per call over `repeat` samples, each `inner` calls back to back between events."""
    import cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / inner)
    return statistics.median(times)


def bytes_per_element(opt, w) -> int:
    st = opt.create_state(0, w)
    return (3 + 2 * len(st.tensors)) * w.itemsize


def main():
    import cupy

    import optforge
    from optforge import cuda
    from optforge.multi import MultiTensorLaunches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2", type=int, default=26)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--tensors", type=int, default=200, help="tensors in the many-small-tensors step")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the row-sparse embedding")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    n, rep = 1 << args.log2, args.repeat
    dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    report = {"device": dev["name"].decode(), "n": n, "cupy": cupy.__version__}
    print(f"device: {report['device']}  (CuPy {cupy.__version__}); sizes 2^{args.log2} float32")

    a = cupy.random.standard_normal(n, dtype=cupy.float32)
    b = cupy.empty_like(a)
    copy_ms = timed(lambda: cupy.copyto(b, a), rep, 10)
    copy_gbs = 8 * n / copy_ms / 1e6
    a = b = None   # free before the optimizers allocate
    report["copy"] = {"ms": copy_ms, "GB/s": copy_gbs}
    print(f"\n{'':24}{'ms/step':>9}{'GB/s':>9}{'of copy':>9}")
    print(f"{'copy (roof)':24}{copy_ms:9.3f}{copy_gbs:9.0f}{'100%':>9}")

    def row(label, ms, nbytes):
        gbs = nbytes / ms / 1e6
        print(f"{label:24}{ms:9.3f}{gbs:9.0f}{gbs / copy_gbs:9.0%}")
        report.setdefault("rows", []).append({"what": label, "ms": ms, "GB/s": gbs, "of_copy": gbs / copy_gbs})

    names = sorted(name for name, cls in optforge.registry.registered().items()
                   if cls.__module__.startswith("optforge.generated"))
    for name in names:
        kw = {"momentum": 0.9} if name in MOMENTUM else {}
        opt = optforge.create(name, learning_rate=1e-3, wd=1e-4, **kw)
        w = cupy.random.standard_normal(n, dtype=cupy.float32)
        g = cupy.random.standard_normal(n, dtype=cupy.float32) * 1e-2
        st = opt.create_state(0, w)
        row(name, timed(lambda: opt.update(0, w, g, st), rep, 5), bytes_per_element(opt, w) * n)
        if name == "adam":
            # the bare kernel, launched with the same arguments the driver passes
            module = cuda.module_for(type(opt), w.device.id)
            fn = module.get_function("optforge_adam_s0_f32")
            blocks = max(1, min((n + cuda.THREADS - 1) // cuda.THREADS, 65535))
            kargs = (np.int64(n), g, w, st.tensors["mean"], st.tensors["var"], np.uint64(0),
                     *[np.float64(x) for x in (1.0, 0.0, 0.0, 0.9, 0.999, 1e-3, 1e-8)])
            row("adam (kernel alone)", timed(lambda: fn((blocks,), (cuda.THREADS,), kargs), rep, 5), 28 * n)
            w16 = w.astype(cupy.float16)
            g16 = g.astype(cupy.float16)
            mp = optforge.create("adam", learning_rate=1e-3, multi_precision=True)
            st16 = mp.create_state_multi_precision(0, w16)
            # read grad16 + master + mean + var, write master + mean + var + weight16
            row("adam fp16 + master", timed(lambda: mp.update_multi_precision(0, w16, g16, st16), rep, 5), 28 * n)

    try:
        import torch
        has_torch = torch.cuda.is_available()
    except ImportError:
        has_torch = False
    if has_torch:
        for label, kw in (("torch Adam fused", {"fused": True}), ("torch Adam foreach", {"foreach": True})):
            p = torch.nn.Parameter(torch.randn(n, device="cuda"))
            p.grad = torch.randn(n, device="cuda") * 1e-2
            topt = torch.optim.Adam([p], lr=1e-3, **kw)
            row(label, timed(topt.step, rep, 5), 28 * n)
        torch.cuda.empty_cache()
    else:
        print("torch with CUDA is not installed: no torch comparison")

    # many small tensors
    m, size = args.tensors, 4096
    ws = [cupy.random.standard_normal(size, dtype=cupy.float32) for _ in range(m)]
    gs = [cupy.random.standard_normal(size, dtype=cupy.float32) for _ in range(m)]
    idx = list(range(m))
    print()
    for name in ("adam", "lamb"):
        launches = []
        flush = MultiTensorLaunches.flush
        MultiTensorLaunches.flush = lambda self: launches.append(flush(self)) or launches[-1]
        opt = optforge.create(name, learning_rate=1e-3)
        states = [opt.create_state(i, x) for i, x in enumerate(ws)]
        list_ms = timed(lambda: opt.update(idx, ws, gs, states), rep, 5)
        MultiTensorLaunches.flush = flush
        per_step = sum(launches) // (1 + 5 * rep)

        def loop():
            for i in idx:
                opt.update(i, ws[i], gs[i], states[i])
        loop_ms = timed(loop, max(5, rep // 3), 1)
        print(f"{m} x {size} float32 {name} step: list update {list_ms:.3f} ms ({per_step} launch(es)), "
              f"{m} single updates {loop_ms:.3f} ms")
        report[f"many_{name}"] = {"list_ms": list_ms, "launches": per_step, "loop_ms": loop_ms}
    if has_torch:
        ps = [torch.nn.Parameter(torch.randn(size, device="cuda")) for _ in range(m)]
        for p in ps:
            p.grad = torch.randn(size, device="cuda")
        topt = torch.optim.Adam(ps, lr=1e-3, fused=True)
        t_ms = timed(topt.step, rep, 5)
        print(f"  torch fused Adam on the same 200 tensors: {t_ms:.3f} ms")
        report["many_adam"]["torch_fused_ms"] = t_ms

    # row-sparse
    rows_n, cols = args.rows, 64
    opt = optforge.create("adam", learning_rate=1e-3)
    w = cupy.random.standard_normal((rows_n, cols), dtype=cupy.float32)
    st = opt.create_state(0, w)
    rows = cupy.asarray(np.sort(np.random.default_rng(0).choice(rows_n, rows_n // 100, replace=False)))
    grad = optforge.RowSparse(cupy.random.standard_normal((len(rows), cols), dtype=cupy.float32), rows, w.shape)
    dense = grad.todense()
    lazy_ms = timed(lambda: opt.update(0, w, grad, st), rep, 5)
    dense_ms = timed(lambda: opt.update(0, w, dense, st), rep, 5)
    print(f"row-sparse Adam, {rows_n:,} x {cols}, 1% rows: lazy {lazy_ms:.3f} ms, dense {dense_ms:.3f} ms "
          f"= {dense_ms / lazy_ms:.1f}x")
    report["sparse"] = {"lazy_ms": lazy_ms, "dense_ms": dense_ms}

    adam = next(r for r in report["rows"] if r["what"] == "adam")
    print(f"\nAdam: {adam['of_copy']:.0%} of the copy bandwidth (target >= 85%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
