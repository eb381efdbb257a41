"""Record row-sparse gradient trajectories from real MXNet 1.9.1 optimizers.

Run by hand, never in CI::

    /work/mxvenv/bin/python tools/record_mxnet_sparse.py

Writes ``tests/fixtures/mxnet_sparse/cases.json`` and one ``<case_id>.npz`` per case (no pickle).
Each case is one parameter of shape ``shape`` updated for a few steps by
``opt.update_multi_precision(0, weight, grad, state)`` with a ``row_sparse`` gradient:

* ``weight_stype == "row_sparse"``: the weight (and so MXNet's states) is row-sparse with every
  row stored. This is how MXNet 1.x reaches its lazy row kernels (SGD/LARS/Adam with
  lazy_update=True, Ftrl, AdaGrad's sparse path, LBSGD and NAG through sgd_update).
* ``weight_stype == "default"``: a dense weight with a row-sparse gradient.

The npz holds ``w0`` (dense), per step ``g<s>_data`` and ``g<s>_indices`` (int64, sorted, unique)
and ``w<s>``, the dense weight after step s. ``cases.json`` lists id, optimizer, kwargs, shape,
dtype, weight_stype, steps, nnz per step, tolerance and, for cases MXNet rejects, ``error`` (the
first line of MXNet's message) instead of trajectories. Data is seeded from crc32(case id) and the
npz files are written with fixed timestamps, so rerecording gives identical bytes.

Only numbers and messages produced by MXNet are stored; no MXNet code is copied.
"""
import json
import os
import sys
import warnings
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from record_mxnet import save_npz  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "mxnet_sparse")

TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float16": {"rtol": 2e-3, "atol": 2e-3}}


def _case(cid, opt, kwargs=None, rows=None, dtype="float32", wstype="row_sparse", shape=(10, 3), steps=3):
    """rows: per-step row lists, or an int (that many random rows per step), or "all", or "empty"."""
    return {"id": cid, "optimizer": opt, "kwargs": dict(kwargs or {}), "shape": list(shape), "dtype": dtype,
            "weight_stype": wstype, "steps": steps, "_rows": 4 if rows is None else rows}


# rows per step for the LBSGD accumulation cases: rows held in one call of a macro-batch and not the
# other, and (U6E) an empty gradient inside a macro-batch
U6 = [[1, 4], [4, 7], [2], [5, 8], [0, 1], [3]]
U6E = [[1, 4], [], [4, 7], [2], [5, 8], [8, 9]]


def define_cases():
    mom, lz = {"momentum": 0.9}, {"lazy_update": False}
    wdc = {"wd": 0.1, "clip_gradient": 0.5, "rescale_grad": 2.0}
    c = [
        _case("sgd-lazy", "sgd", {"learning_rate": 0.1}),
        _case("sgd-lazy-wd-clip-rescale", "sgd", {"learning_rate": 0.1, **wdc}),
        _case("sgd-mom-lazy", "sgd", {"learning_rate": 0.1, **mom}),
        _case("sgd-mom-lazy-wd-clip-rescale", "sgd", {"learning_rate": 0.1, **mom, **wdc}),
        _case("sgd-std-wd", "sgd", {"learning_rate": 0.1, "wd": 0.1, **lz}),
        _case("sgd-mom-std-wd", "sgd", {"learning_rate": 0.1, "wd": 0.1, **mom, **lz}),
        _case("sgd-mom-lazy-dense-weight", "sgd", {"learning_rate": 0.1, "wd": 0.1, **mom}, wstype="default"),
        _case("sgd-lazy-dense-weight", "sgd", {"learning_rate": 0.1, "wd": 0.1}, wstype="default"),
        _case("sgd-mom-lazy-empty", "sgd", {"learning_rate": 0.1, "wd": 0.1, **mom}, rows="empty"),
        _case("sgd-mom-lazy-all-rows", "sgd", {"learning_rate": 0.1, "wd": 0.1, **mom}, rows="all"),
        _case("sgd-mom-lazy-fp16-mp", "sgd", {"learning_rate": 0.1, "wd": 0.1, "multi_precision": True, **mom},
              dtype="float16"),
        _case("sgd-lazy-fp16-mp", "sgd", {"learning_rate": 0.1, "wd": 0.1, "multi_precision": True},
              dtype="float16"),
        _case("ccsgd-mom-lazy", "ccsgd", {"learning_rate": 0.1, "wd": 0.1, **mom}),
        _case("lars-mom-lazy", "lars", {"learning_rate": 0.1, "wd": 0.01, "eta": 0.5, **mom}),
        _case("lars-lazy-clip-rescale", "lars", {"learning_rate": 0.1, "wd": 0.01, "eta": 0.5,
                                                 "clip_gradient": 0.5, "rescale_grad": 2.0}),
        _case("lars-mom-std", "lars", {"learning_rate": 0.1, "wd": 0.01, "eta": 0.5, **mom, **lz}),
        _case("adam-lazy", "adam", {"learning_rate": 0.05}),
        _case("adam-lazy-wd-clip-rescale", "adam", {"learning_rate": 0.05, **wdc}),
        _case("adam-std-wd", "adam", {"learning_rate": 0.05, "wd": 0.1, **lz}),
        _case("adam-lazy-empty", "adam", {"learning_rate": 0.05, "wd": 0.1}, rows=[[1, 4], [], [4, 7]]),
        _case("adam-lazy-all-rows", "adam", {"learning_rate": 0.05, "wd": 0.1}, rows="all"),
        _case("adam-lazy-fp16-mp", "adam", {"learning_rate": 0.05, "wd": 0.1, "multi_precision": True},
              dtype="float16"),
        _case("adam-lazy-dense-weight", "adam", {"learning_rate": 0.05, "wd": 0.1}, wstype="default"),
        _case("nag-lazy", "nag", {"learning_rate": 0.1, "wd": 0.1}),
        _case("nag-mom-std", "nag", {"learning_rate": 0.1, "wd": 0.1, **mom}, wstype="default"),
        _case("lbsgd-lazy", "lbsgd", {"learning_rate": 0.1, "wd": 0.1}),
        _case("lbsgd-mom", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, **mom}),
        # batch_scale > 1: lazy over the union of the rows summed since the last applied step
        _case("lbsgd-bs2-lazy-union", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, "batch_scale": 2}, rows=U6, steps=6),
        _case("lbsgd-bs2-mom-lazy-union", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, "batch_scale": 2, **mom},
              rows=U6, steps=6),
        _case("lbsgd-bs3-mom-lazy-union-clip-rescale", "lbsgd", {"learning_rate": 0.1, "batch_scale": 3, **mom, **wdc},
              rows=U6E, steps=6),
        _case("lbsgd-bs2-lars-mom-lazy-union", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, "batch_scale": 2,
                                                         "warmup_strategy": "lars", **mom}, rows=U6, steps=6),
        _case("lbsgd-bs2-mom-lazy-union-dense-weight", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, "batch_scale": 2,
                                                                 **mom}, rows=U6, steps=6, wstype="default"),
        # float16 + multi_precision: lazy on the float32 master copy
        _case("lbsgd-lazy-fp16-mp", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, "multi_precision": True},
              dtype="float16", rows=U6, steps=6),
        _case("lbsgd-mom-lazy-fp16-mp", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, "multi_precision": True, **mom},
              dtype="float16", rows=U6, steps=6),
        _case("lbsgd-bs2-mom-lazy-union-fp16-mp", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, "batch_scale": 2,
                                                            "multi_precision": True, **mom},
              dtype="float16", rows=U6, steps=6),
        _case("lbsgd-mom-lazy-fp16", "lbsgd", {"learning_rate": 0.1, "wd": 0.1, **mom}, dtype="float16", rows=U6,
              steps=6),
        _case("ftrl-lazy", "ftrl", {"learning_rate": 0.1, "wd": 0.1, "lamda1": 0.01}),
        _case("ftrl-lazy-clip-rescale", "ftrl", {"learning_rate": 0.1, "clip_gradient": 0.5, "rescale_grad": 2.0}),
        _case("adagrad-lazy", "adagrad", {"learning_rate": 0.1}),
        _case("adagrad-lazy-clip-rescale", "adagrad", {"learning_rate": 0.1, "clip_gradient": 0.5,
                                                       "rescale_grad": 2.0}),
        _case("adagrad-lazy-wd", "adagrad", {"learning_rate": 0.1, "wd": 0.1}),
        _case("rmsprop-std", "rmsprop", {"learning_rate": 0.01, "wd": 0.1}, wstype="default"),
        _case("adamax-std", "adamax", {"learning_rate": 0.01, "wd": 0.1}, wstype="default"),
        _case("signum-std", "signum", {"learning_rate": 0.01, "wd": 0.1}, wstype="default"),
    ]
    for case in c:
        case["multi_precision"] = bool(case["kwargs"].get("multi_precision", False))
        case["tolerance"] = TOL[case["dtype"]]
    return c


def make_arrays(case):
    rng = np.random.default_rng(zlib.crc32(case["id"].encode()))
    shape, dt = tuple(case["shape"]), np.dtype(case["dtype"])
    # no zero entries: MXNet's row-sparse weight must store every row
    w0 = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    arrays = {"w0": w0.astype(dt)}
    spec = case["_rows"]
    for s in range(1, case["steps"] + 1):
        if spec == "all":
            rows = np.arange(shape[0])
        elif spec == "empty":
            rows = np.arange(0)
        elif isinstance(spec, list):
            rows = np.array(spec[s - 1], dtype=np.int64)
        else:
            rows = np.sort(rng.choice(shape[0], spec, replace=False))
        arrays["g%d_indices" % s] = rows.astype(np.int64)
        arrays["g%d_data" % s] = rng.standard_normal((len(rows),) + shape[1:]).astype(dt)
    return arrays


def run_mx(mx, case, arrays):
    shape, dt = tuple(case["shape"]), case["dtype"]
    opt = mx.optimizer.create(case["optimizer"], **case["kwargs"])
    w = mx.nd.array(arrays["w0"], dtype=dt)
    if case["weight_stype"] == "row_sparse":
        w = w.tostype("row_sparse")
        assert w.indices.shape[0] == shape[0]
    state = opt.create_state_multi_precision(0, w)
    out = {}
    for s in range(1, case["steps"] + 1):
        data, idx = arrays["g%d_data" % s], arrays["g%d_indices" % s]
        g = mx.nd.sparse.row_sparse_array((mx.nd.array(data, dtype=dt), mx.nd.array(idx, dtype="int64")),
                                          shape=shape, dtype=dt)
        opt.update_multi_precision(0, w, g, state)
        out["w%d" % s] = w.asnumpy()
    return out


def main():
    import mxnet as mx
    warnings.simplefilter("ignore")
    os.makedirs(OUT_DIR, exist_ok=True)
    for f in os.listdir(OUT_DIR):
        if f.endswith(".npz"):
            os.remove(os.path.join(OUT_DIR, f))
    written = []
    for case in define_cases():
        arrays = make_arrays(case)
        meta = {k: v for k, v in case.items() if not k.startswith("_")}
        meta["nnz_rows"] = [int(arrays["g%d_indices" % s].shape[0]) for s in range(1, case["steps"] + 1)]
        try:
            res = run_mx(mx, case, arrays)
        except Exception as e:  # noqa: BLE001 - MXNet rejecting a case is recorded, not dropped
            msg = str(e).strip().splitlines()
            meta["error"] = next((ln for ln in msg if "Check failed" in ln or "Error" in ln), msg[0])[:300]
            print("%-34s MXNet error: %s" % (case["id"], meta["error"]))
        else:
            assert all(np.all(np.isfinite(v)) for v in res.values()), case["id"]
            arrays.update(res)
            touched = sorted(set().union(*[arrays["g%d_indices" % s].tolist()
                                           for s in range(1, case["steps"] + 1)]))
            untouched = [r for r in range(case["shape"][0]) if r not in touched]
            moved = bool(untouched) and not np.array_equal(res["w%d" % case["steps"]][untouched],
                                                           arrays["w0"][untouched])
            meta["untouched_rows_change"] = moved
            print("%-34s ok  untouched rows change: %s" % (case["id"], moved if untouched else "-"))
        save_npz(os.path.join(OUT_DIR, case["id"] + ".npz"), arrays)
        written.append(meta)
    with open(os.path.join(OUT_DIR, "cases.json"), "w") as f:
        json.dump(written, f, indent=1)
        f.write("\n")
    print("\n%d cases written" % len(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
