"""Conformance on a GPU: the recorded MXNet cases replayed on CuPy arrays (the CUDA backend).
Skipped, with the reason, where CuPy or a CUDA device is missing (our CI has neither)."""
import os
import sys

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install optforge[cuda]); GPU tests skipped")
try:
    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no CUDA device", allow_module_level=True)
except Exception as e:  # noqa: BLE001 - no driver, no device
    pytest.skip(f"no usable CUDA device: {e}", allow_module_level=True)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import replay  # noqa: E402
from test_mxnet_fixtures import OptforgeLib  # noqa: E402

CASES = [c for c in replay.load_cases()]


class CupyLib(OptforgeLib):
    def to_array(self, a):
        return cupy.asarray(np.array(a, copy=True))

    def to_numpy(self, x):
        return cupy.asnumpy(x)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_mxnet_on_gpu(case):
    arrays = replay.load_arrays(case)
    history = replay.replay(case, arrays, CupyLib())
    replay.check(case, arrays, history)


def test_list_update_uses_one_launch_per_stage():
    import optforge
    from optforge import cuda
    counts = []
    flush = cuda.MultiTensorLaunches.flush
    cuda.MultiTensorLaunches.flush = lambda self: counts.append(flush(self)) or counts[-1]
    try:
        opt = optforge.create("adam", learning_rate=0.01)
        ws = [cupy.random.standard_normal(4096, dtype=cupy.float32) for _ in range(200)]
        gs = [cupy.random.standard_normal(4096, dtype=cupy.float32) for _ in range(200)]
        states = [opt.create_state(i, w) for i, w in enumerate(ws)]
        ref = [cupy.asnumpy(w) for w in ws]
        opt.update(list(range(200)), ws, gs, states)
    finally:
        cuda.MultiTensorLaunches.flush = flush
    assert counts == [1]
    cpu = optforge.create("adam", learning_rate=0.01)
    cpu.backend = "numpy"
    wc = [w.copy() for w in ref]
    cpu.update(list(range(200)), wc, [cupy.asnumpy(g) for g in gs], [cpu.create_state(i, w) for i, w in enumerate(wc)])
    for a, b in zip(ws, wc):
        np.testing.assert_allclose(cupy.asnumpy(a), b, rtol=1e-5, atol=1e-6)
