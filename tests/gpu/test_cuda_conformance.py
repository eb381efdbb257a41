"""Conformance on a GPU: the recorded MXNet cases replayed on CuPy arrays (the CUDA backend).
Skipped, with the reason, where CuPy or a CUDA device is missing (our CI has neither)."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gpu import require_cupy  # noqa: E402

cupy = require_cupy()
import replay  # noqa: E402
from test_mxnet_fixtures import OptforgeLib  # noqa: E402

CASES = [c for c in replay.load_cases()]
SPARSE_DIR = os.path.join(os.path.dirname(replay.FIXTURE_DIR), "mxnet_sparse")
with open(os.path.join(SPARSE_DIR, "cases.json")) as _f:
    SPARSE_CASES = json.load(_f)


def _sparse_arrays(case):
    with np.load(os.path.join(SPARSE_DIR, case["id"] + ".npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


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


@pytest.mark.parametrize("case", SPARSE_CASES, ids=[c["id"] for c in SPARSE_CASES])
def test_matches_mxnet_sparse_on_gpu(case):
    """The recorded row-sparse cases: a CuPy weight and a RowSparse of CuPy arrays (the lazy
    `_rows` kernels, or the densified standard update)."""
    import optforge
    a = _sparse_arrays(case)
    opt = optforge.create(case["optimizer"], **case["kwargs"])
    w = cupy.asarray(a["w0"])
    state = opt.create_state_multi_precision(0, w)
    shape = tuple(case["shape"])
    for s in range(1, case["steps"] + 1):
        g = optforge.RowSparse(cupy.asarray(a[f"g{s}_data"]), cupy.asarray(a[f"g{s}_indices"]), shape)
        if "error" in case:  # refused before anything is touched
            with pytest.raises(ValueError, match="weight decay"):
                opt.update_multi_precision(0, w, g, state)
            assert np.array_equal(cupy.asnumpy(w), a["w0"]) and opt.num_update == 0
            return
        opt.update_multi_precision(0, w, g, state)
        np.testing.assert_allclose(cupy.asnumpy(w).astype(np.float64), a[f"w{s}"].astype(np.float64),
                                   err_msg=f"{case['id']} step {s}", **case["tolerance"])


def test_list_update_uses_one_launch_per_stage():
    import optforge
    from optforge.multi import MultiTensorLaunches
    counts = []
    flush = MultiTensorLaunches.flush
    MultiTensorLaunches.flush = lambda self: counts.append(flush(self)) or counts[-1]
    try:
        opt = optforge.create("adam", learning_rate=0.01)
        ws = [cupy.random.standard_normal(4096, dtype=cupy.float32) for _ in range(200)]
        gs = [cupy.random.standard_normal(4096, dtype=cupy.float32) for _ in range(200)]
        states = [opt.create_state(i, w) for i, w in enumerate(ws)]
        ref = [cupy.asnumpy(w) for w in ws]
        opt.update(list(range(200)), ws, gs, states)
    finally:
        MultiTensorLaunches.flush = flush
    assert counts == [1]
    cpu = optforge.create("adam", learning_rate=0.01)
    cpu.backend = "numpy"
    wc = [w.copy() for w in ref]
    cpu.update(list(range(200)), wc, [cupy.asnumpy(g) for g in gs], [cpu.create_state(i, w) for i, w in enumerate(wc)])
    for a, b in zip(ws, wc):
        np.testing.assert_allclose(cupy.asnumpy(a), b, rtol=1e-5, atol=1e-6)
