"""GPU benchmark (needs CuPy and a CUDA device; run on the device machine, not in CI).

    python bench/gpu_bench.py [--log2 26]

1. Adam on 2^N float32 elements: ms per step and effective bandwidth (28 bytes per element: read
   weight, grad, mean, var; write weight, mean, var) against the device copy bandwidth measured in
   the same run (a cupy copy: 8 bytes per element); target >= 85% of copy bandwidth. Side by side
   with torch's fused Adam when torch with CUDA is installed.
2. A 200-tensor model step (200 x 4096 float32, one list update): ms per step and kernel launches
   (one per stage for all tensors with the multi-tensor kernels).
"""
import argparse
import statistics

import numpy as np


def timed(fn, repeat=20):
    import cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    fn()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def main():
    import cupy

    import optforge
    from optforge import cuda

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2", type=int, default=26)
    n = 1 << ap.parse_args().log2
    dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    print(f"device: {dev['name'].decode()}; Adam on 2^{n.bit_length() - 1} float32 elements")
    a = cupy.random.standard_normal(n, dtype=cupy.float32)
    b = cupy.empty_like(a)
    copy_ms = timed(lambda: cupy.copyto(b, a))
    copy_gbs = 8 * n / copy_ms / 1e6
    opt = optforge.create("adam", learning_rate=1e-3)
    w = cupy.random.standard_normal(n, dtype=cupy.float32)
    g = cupy.random.standard_normal(n, dtype=cupy.float32)
    st = opt.create_state(0, w)
    adam_ms = timed(lambda: opt.update(0, w, g, st))
    adam_gbs = 28 * n / adam_ms / 1e6
    print(f"  copy            {copy_ms:8.3f} ms  {copy_gbs:7.1f} GB/s")
    print(f"  optforge Adam   {adam_ms:8.3f} ms  {adam_gbs:7.1f} GB/s  = {adam_gbs / copy_gbs:.0%} of copy (target >= 85%)")
    try:
        import torch
        if torch.cuda.is_available():
            p = torch.nn.Parameter(torch.randn(n, device="cuda"))
            p.grad = torch.randn(n, device="cuda")
            topt = torch.optim.Adam([p], lr=1e-3, fused=True)
            topt.step()
            torch.cuda.synchronize()
            t_ms = timed(lambda: topt.step())
            print(f"  torch fused Adam {t_ms:7.3f} ms  {28 * n / t_ms / 1e6:7.1f} GB/s")
    except ImportError:
        print("  torch not installed: no fused-Adam comparison")

    counts = []
    flush = cuda.MultiTensorLaunches.flush
    cuda.MultiTensorLaunches.flush = lambda self: counts.append(flush(self)) or counts[-1]
    ws = [cupy.random.standard_normal(4096, dtype=cupy.float32) for _ in range(200)]
    gs = [cupy.random.standard_normal(4096, dtype=cupy.float32) for _ in range(200)]
    states = [opt.create_state(i, x) for i, x in enumerate(ws)]
    step_ms = timed(lambda: opt.update(list(range(200)), ws, gs, states))
    cuda.MultiTensorLaunches.flush = flush
    print(f"200-tensor step (200 x 4096 float32): {step_ms:.3f} ms, {counts[-1]} kernel launch(es) per step")


if __name__ == "__main__":
    main()
