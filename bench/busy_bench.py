"""A small list step on a busy machine (issue #17, "no stalls"): an Adam update of a 6,858-parameter
MLP (5 tensors) on the native backend, timed over 1,500 steps with 0.5 ms of other work between
them, idle and with two busy processes added.

    OMP_NUM_THREADS=2 python bench/busy_bench.py [--busy]

Prints the median and 90th percentile. The small tensors of a list update go in one multi-tensor
call per stage, which opens a parallel region only when the tensors hold OPTFORGE_PARALLEL_MIN
elements in all: a fork and join for 7,000 elements waited for a descheduled thread on a busy machine.
"""
import sys, time, statistics, subprocess, os
import numpy as np, optforge
busy = "--busy" in sys.argv
procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)] if busy else []
try:
    rng = np.random.default_rng(0)
    shapes = [(64, 64), (64,), (10, 64), (10,)]   # a 64-64-10 MLP's layers: 4,810 parameters... plus a first layer
    shapes = [(64, 32)] + shapes
    ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = optforge.create("adam", learning_rate=1e-3); opt.backend = "native"
    st = [opt.create_state(i, w) for i, w in enumerate(ws)]
    idx = list(range(len(ws)))
    for _ in range(50): opt.update(idx, ws, gs, st)
    ts = []
    for _ in range(1500):
        t0 = time.perf_counter(); opt.update(idx, ws, gs, st); ts.append(time.perf_counter() - t0)
        time.sleep(0.0005)   # a training loop does other work between steps
    ts.sort()
    print(f"{'busy' if busy else 'idle'}: {sum(w.size for w in ws)} params, median {1e3*statistics.median(ts):.3f} ms, p90 {1e3*ts[int(0.9*len(ts))]:.3f} ms, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
finally:
    for p in procs: p.kill()
