"""The CUDA backend's Python side end to end, without a GPU: a subprocess puts a stand-in `cupy`
(tests/cuda/fakecupy) first on the path, whose RawModule runs the generated .cu kernels on the host.
Single updates, float16 and float16 + master copies, list updates through the multi-tensor kernels,
and lazy row-sparse updates on "CuPy" arrays must equal the NumPy backend."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SCRIPT = r'''
import numpy as np, cupy, optforge
from optforge import cuda
assert cuda.is_cupy(cupy.zeros(3))

def run(name, kw, dtype, on_gpu, list_update=False, sparse=False, steps=3):
    rng = np.random.default_rng(4)
    opt = optforge.create(name, **kw)
    opt.backend = "numpy"
    shapes = [(5, 6), (7,), (2, 3, 4)] if list_update else [(6, 5)]
    ws = [rng.standard_normal(s).astype(dtype) for s in shapes]
    if on_gpu:
        ws = [cupy.asarray(w) for w in ws]
    states = [opt.create_state_multi_precision(i, w) for i, w in enumerate(ws)]
    for _ in range(steps):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        if sparse:
            rows = np.array([0, 3, 4])
            data = gs[0][rows]
            if on_gpu:
                data, rows = cupy.asarray(data), cupy.asarray(rows)
            g = optforge.RowSparse(data, rows, shapes[0])
            opt.update_multi_precision(0, ws[0], g, states[0])
            continue
        if on_gpu:
            gs = [cupy.asarray(g) for g in gs]
        if list_update:
            opt.update_multi_precision(list(range(len(ws))), ws, gs, states)
        else:
            opt.update_multi_precision(0, ws[0], gs[0], states[0])
    return [cupy.asnumpy(w) if on_gpu else w for w in ws]

launches = []
flush = cuda.MultiTensorLaunches.flush
cuda.MultiTensorLaunches.flush = lambda self: launches.append(flush(self)) or launches[-1]
CASES = [("adam", {}, np.float32), ("adam", {"multi_precision": True}, np.float16), ("adam", {}, np.float16),
         ("sgd", {"momentum": 0.9}, np.float64), ("rmsprop", {"centered": True}, np.float32),
         ("lamb", {"lower_bound": 0.1}, np.float32), ("lars", {"momentum": 0.9, "eta": 0.5}, np.float32),
         ("lbsgd", {"batch_scale": 2, "momentum": 0.9}, np.float32), ("nadam", {"multi_precision": True}, np.float16)]
for name, kw, dtype in CASES:
    for list_update in (False, True):
        want = run(name, kw, dtype, False, list_update)
        got = run(name, kw, dtype, True, list_update)
        tol = 2e-3 if dtype == np.float16 else 1e-5
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=tol, atol=tol,
                                       err_msg=f"{name} {kw} {dtype.__name__} list={list_update}")
for name, kw in [("adam", {}), ("sgd", {"momentum": 0.9}), ("ftrl", {}), ("adam", {"multi_precision": True})]:
    dtype = np.float16 if kw.get("multi_precision") else np.float32
    want = run(name, kw, dtype, False, sparse=True)
    got = run(name, kw, dtype, True, sparse=True)
    np.testing.assert_allclose(got[0].astype(np.float64), want[0].astype(np.float64), rtol=2e-3, atol=2e-3)
assert launches and all(n >= 1 for n in launches), launches
used = {key[0].rsplit(".", 1)[1] for key in cuda._modules}   # every case really ran the CUDA kernels
assert used == {name for name, _, _ in CASES} | {"ftrl"}, used
print("ok", len(launches))
'''


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to run the CUDA kernels on the host")
def test_cuda_backend_end_to_end_on_the_host():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE / "cuda" / "fakecupy"),
                                                         os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok")
