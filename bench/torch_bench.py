"""optforge.torch step time vs torch's own optimizers, same model, same run.

    python bench/torch_bench.py [--width 1024] [--depth 4] [--repeat 15] [--threads N]

Adam: optforge (native and NumPy backends) vs torch.optim.Adam foreach and fused. NAdam, which
torch does not fuse: optforge's Nadam vs torch.optim.NAdam foreach and for-loop (MXNet's Nadam and
torch's NAdam differ in their momentum schedule; they cost the same element-wise work). Gradients
are fixed, so only `optimizer.step()` is timed; the steps are interleaved so that a busy machine
slows every contender alike. Prints the median milliseconds per step and the ratio to torch's
fastest path.
"""
import argparse
import copy
import statistics
import time

import torch

import optforge
import optforge.torch


def _model(width, depth):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.LayerNorm(width)]
    model = torch.nn.Sequential(*layers)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    return model


def _contenders(model, family):
    """(label, optimizer) on fresh copies of `model` (with its gradients)."""
    def fresh():
        m = copy.deepcopy(model)
        for p, q in zip(m.parameters(), model.parameters()):
            p.grad = q.grad.clone()
        return m.parameters()

    if family == "adam":
        out = [("torch Adam foreach", torch.optim.Adam(fresh(), lr=1e-3, foreach=True)),
               ("torch Adam fused", torch.optim.Adam(fresh(), lr=1e-3, fused=True))]
        spec = "adam"
    else:
        out = [("torch NAdam foreach", torch.optim.NAdam(fresh(), lr=1e-3, foreach=True)),
               ("torch NAdam for-loop", torch.optim.NAdam(fresh(), lr=1e-3, foreach=False))]
        spec = "nadam"
    if optforge.native.available():
        out.append((f"optforge {spec} native", optforge.torch.Optimizer(fresh(), spec, lr=1e-3, backend="native")))
    out.append((f"optforge {spec} numpy", optforge.torch.Optimizer(fresh(), spec, lr=1e-3, backend="numpy")))
    return out


def _bench(contenders, repeat, steps):
    for _, opt in contenders:   # warm up: states, native compile
        opt.step()
    times = {label: [] for label, _ in contenders}
    for _ in range(repeat):
        for label, opt in contenders:
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[label].append((time.perf_counter() - t0) * 1e3 / steps)
    return {label: statistics.median(v) for label, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = _model(a.width, a.depth)
    n = sum(p.numel() for p in model.parameters())
    print(f"{a.depth} x (Linear {a.width} + LayerNorm): {len(list(model.parameters()))} tensors, {n / 1e6:.2f} M "
          f"float32 parameters; torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per step "
          f"over {a.repeat} x {a.steps} steps")
    for family in ("adam", "nadam"):
        result = _bench(_contenders(model, family), a.repeat, a.steps)
        best = min(v for k, v in result.items() if k.startswith("torch"))
        for label, ms in result.items():
            print(f"  {label:24s} {ms:8.3f} ms   {ms / best:5.2f}x torch's best")


if __name__ == "__main__":
    main()
