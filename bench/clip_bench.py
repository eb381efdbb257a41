"""What global gradient clipping (and the inf/NaN check) costs: an Adam list update with and
without `max_grad_norm`, and the time of one read of all the gradients, measured in the same run.

    python bench/clip_bench.py [--shapes transformer|small|large] [--repeat 21] [--threads N]

It also times step control's norm alone (ops.sum_squares_list, as grad_scale reads the gradients):
the native backend's one call over the list, and the NumPy backend's sweep, tensor by tensor.

The goal (issue #15): clipping costs at most one extra read of the gradients. Prints the median
milliseconds per update call of each contender, the extra time clipping adds, and that extra in
units of one read (a float64-accumulated sum over every gradient with NumPy, and the memory roof:
the bytes of the gradients over the machine's read bandwidth, measured by summing one large buffer).
torch's own clip_grad_norm_ + fused Adam is a column where torch is installed.
"""
import argparse
import os
import statistics
import time

import numpy as np


def _shapes(kind):
    if kind == "small":
        return [(4096,)] * 200
    if kind == "large":
        return [(1 << 24,)]
    # a transformer-shaped mix: 12 blocks of attention and MLP matrices, their biases and norms
    d = 512
    out = [(32000, d)]
    for _ in range(12):
        out += [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,), (d,), (d,)]
    return out


def _median_ms(fn, repeat):
    fn()   # warm up (native libraries, states, threads)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="transformer", choices=["transformer", "small", "large"])
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import optforge
    from optforge import native, ops

    shapes = _shapes(args.shapes)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    n = sum(g.size for g in grads)
    backend = "native" if native.available() else "numpy"
    print(f"{len(shapes)} tensors, {n / 1e6:.1f} M float32 parameters; backend {backend}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}"
          + (f" ({native.openmp_threads(type(optforge.create('adam')))} OpenMP threads)" if backend == "native" else "")
          + f"; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")

    rows = {}
    for label, kw in (("adam", {}), ("adam + max_grad_norm", dict(max_grad_norm=1.0)),
                      ("adam + max_grad_norm + skip_nonfinite", dict(max_grad_norm=1.0, skip_nonfinite=True))):
        opt = optforge.create("adam", learning_rate=1e-3, **kw)
        opt.backend = backend
        ws = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        states = [opt.create_state(i, w) for i, w in enumerate(ws)]
        idx = list(range(len(ws)))
        rows[label] = _median_ms(lambda: opt.update(idx, ws, grads, states), args.repeat)

    read = _median_ms(lambda: sum(ops.sum_squares(g) for g in grads), args.repeat)
    # step control's norm alone, as grad_scale reads it: one native call, or the NumPy backend's sweep
    lib = native.library_for(type(opt)) if backend == "native" else None
    prepass = {"native (one call)": _median_ms(lambda: ops.sum_squares_list(grads, lib), args.repeat),
               "NumPy sweep": _median_ms(lambda: ops.sum_squares_list(grads), args.repeat)}
    big = np.ones(max(n, 1 << 24), np.float32)
    roof = _median_ms(lambda: big.sum(), args.repeat) * n / big.size   # bytes of the grads at the read bandwidth
    try:
        import torch
        params = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s, dtype=np.float32))) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g.copy())
        topt = torch.optim.Adam(params, lr=1e-3, fused=True)
        rows["torch fused Adam"] = _median_ms(topt.step, args.repeat)

        def clipped():
            torch.nn.utils.clip_grad_norm_(params, 1e9)   # (a bound never reached: the grads stay as they are)
            topt.step()
        rows["torch clip_grad_norm_ + fused Adam"] = _median_ms(clipped, args.repeat)
    except ImportError:
        pass
    plain = rows["adam"]
    for label, ms in rows.items():
        print(f"  {label:40s} {ms:9.2f} ms")
    print(f"  one read of the gradients (NumPy, float64 sums)  {read:9.2f} ms; memory roof {roof:.2f} ms")
    for label, ms in prepass.items():
        print(f"  the norm alone, {label:22s} {ms:9.2f} ms = {ms / roof:.2f} x the roof's read")
    for label in ("adam + max_grad_norm", "adam + max_grad_norm + skip_nonfinite"):
        extra = rows[label] - plain
        print(f"  {label}: +{extra:.2f} ms = {extra / read:.2f} reads (NumPy) = {extra / roof:.2f} x the roof's read")


if __name__ == "__main__":
    main()
