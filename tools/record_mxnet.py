"""Record reference trajectories from real MXNet 1.9.1 optimizers.

Run by hand, never in CI::

    /work/mxvenv/bin/python tools/record_mxnet.py

Writes ``tests/fixtures/mxnet/cases.json`` (with ``num_update``, the optimizer's update count after
each step) and one ``<case_id>.npz`` per case. Everything is
seeded, so rerunning produces identical files. See ``tests/fixtures/mxnet/README.md`` for the
format and for the MXNet behaviours that the case table deliberately avoids.

Only numbers produced by MXNet are stored; no MXNet code is copied.
"""
import io
import json
import os
import sys
import warnings
import zipfile
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mxnet_cases import FP16_PLAIN_TOL, define_cases  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "mxnet")


def make_arrays(case):
    rng = np.random.default_rng(zlib.crc32(case["id"].encode()))
    d = case["_data"]
    dt = np.dtype(case["dtype"])
    arrays = {}
    for i, shape in enumerate(case["shapes"]):
        w = rng.standard_normal(shape) * d["wscale"]
        if i in d["zero_params"]:
            w = np.zeros(shape)
        arrays["w0_%d" % i] = w.astype(dt)
    for s in range(1, case["steps"] + 1):
        for i, shape in enumerate(case["shapes"]):
            g = rng.standard_normal(shape) * d["gscale"] + d["goffset"]
            arrays["g%d_%d" % (s, i)] = g.astype(dt)
    return arrays


def _scheduler(mx, spec):
    if spec is None:
        return None
    return getattr(mx.lr_scheduler, spec["type"])(**spec["args"])


def _round_state_fp16(mx, st):
    if st is None:
        return
    if isinstance(st, mx.nd.NDArray):
        st[:] = st.astype("float16").astype(st.dtype)
    elif isinstance(st, (list, tuple)):
        for x in st:
            _round_state_fp16(mx, x)


def run_mx(mx, case, arrays, emulate_fp16=None):
    """Run one case in MXNet. Returns {name: array} of w<s>_<i>.

    emulate_fp16 in (None, "weights", "weights+states"): run an fp16 case in float32 and round
    the stored weights (and optionally states) to float16 after every step. This approximates a
    "compute in float32, store float16" implementation and is used only to choose an honest
    tolerance for the plain float16 cases.
    """
    n = len(case["shapes"])
    dtype = "float32" if emulate_fp16 else case["dtype"]
    kwargs = dict(case["kwargs"])
    sched = _scheduler(mx, case["lr_scheduler"])
    if sched is not None:
        kwargs["lr_scheduler"] = sched
    if case["param_idx2name"] is not None:
        kwargs["param_idx2name"] = {int(k): v for k, v in case["param_idx2name"].items()}
    opt = mx.optimizer.create(case["optimizer"], **kwargs)
    if case["lr_mult"] is not None:
        opt.set_lr_mult({k: v for k, v in case["lr_mult"]})
    if case["wd_mult"] is not None:
        opt.set_wd_mult({k: v for k, v in case["wd_mult"]})
    if case["stochastic"]:
        mx.random.seed(case["mx_seed"])
    ws = [mx.nd.array(arrays["w0_%d" % i], dtype=dtype) for i in range(n)]
    upd = None
    states = None
    if case["mode"] == "updater":
        upd = mx.optimizer.get_updater(opt)
    else:
        states = [opt.create_state_multi_precision(i, ws[i]) for i in range(n)]
    out = {}
    counts = []
    for s in range(1, case["steps"] + 1):
        gs = [mx.nd.array(arrays["g%d_%d" % (s, i)], dtype=dtype) for i in range(n)]
        if case["mode"] == "single":
            for i in range(n):
                opt.update_multi_precision(i, ws[i], gs[i], states[i])
        elif case["mode"] == "list":
            opt.update_multi_precision(list(range(n)), ws, gs, states)
        elif case["mode"] == "updater":
            for i in range(n):
                upd(i, gs[i], ws[i])
        else:
            raise ValueError(case["mode"])
        if emulate_fp16:
            for w in ws:
                w[:] = w.astype("float16").astype("float32")
            if emulate_fp16 == "weights+states":
                _round_state_fp16(mx, states if states is not None else list(upd.states.values()))
        for i in range(n):
            out["w%d_%d" % (s, i)] = ws[i].asnumpy()
        counts.append(int(opt.num_update))
    if not emulate_fp16:
        case["num_update"] = counts
    return out


def _needed_tol(a, b):
    """Smallest t with |a-b| <= t*(1+|b|) elementwise (rtol=atol=t)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(np.max(np.abs(a - b) / (1.0 + np.abs(b))))


def save_npz(path, arrays):
    """np.savez_compressed with fixed zip timestamps, so rerecording gives identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def _movement(w0, w, tol):
    """How far the weights moved, in units of the comparison tolerance (max over elements)."""
    w0 = w0.astype(np.float64)
    w = w.astype(np.float64)
    return float(np.max(np.abs(w - w0) / (tol["atol"] + tol["rtol"] * np.abs(w0))))


def main():
    import mxnet as mx
    warnings.simplefilter("ignore")
    cases = define_cases()
    os.makedirs(OUT_DIR, exist_ok=True)
    for f in os.listdir(OUT_DIR):
        if f.endswith(".npz"):
            os.remove(os.path.join(OUT_DIR, f))
    failures = []
    written = []
    for case in cases:
        arrays = make_arrays(case)
        try:
            res = run_mx(mx, case, arrays)
        except Exception as e:  # noqa: BLE001 - report and drop
            failures.append((case["id"], "%s: %s" % (type(e).__name__, str(e).splitlines()[0])))
            continue
        bad = [k for k, v in res.items() if not np.all(np.isfinite(v))]
        if bad:
            failures.append((case["id"], "non-finite result in %s" % bad[:3]))
            continue
        note = ""
        if case["dtype"] == "float16" and not case["multi_precision"]:
            need = 0.0
            for mode in ("weights", "weights+states"):
                emu = run_mx(mx, case, arrays, emulate_fp16=mode)
                need = max(need, max(_needed_tol(res[k], emu[k].astype(np.float16))
                                     for k in res))
            tol = FP16_PLAIN_TOL
            while tol < 2 * need:
                tol *= 2
            case["tolerance"] = {"rtol": tol, "atol": tol}
            note = " fp16-vs-fp32emu need=%.2g tol=%g" % (need, tol)
            if tol > 0.1:
                failures.append((case["id"], "fp16 deviation too large: %.3g" % need))
                continue
        # how much the weights move compared with the tolerance (is the case discriminating?)
        t = case["tolerance"]
        ratio = min(_movement(arrays["w0_%d" % i], res["w%d_%d" % (case["steps"], i)], t)
                    for i in range(len(case["shapes"])))
        if ratio < 10:
            note += " WEAK(move/tol=%.1f)" % ratio
        arrays.update(res)
        for k, v in arrays.items():
            assert v.dtype == np.dtype(case["dtype"]), (case["id"], k, v.dtype)
        save_npz(os.path.join(OUT_DIR, case["id"] + ".npz"), arrays)
        written.append({k: v for k, v in case.items() if not k.startswith("_")})
        print("%-48s ok%s" % (case["id"], note))
    with open(os.path.join(OUT_DIR, "cases.json"), "w") as f:
        json.dump(written, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT_DIR, f)) for f in os.listdir(OUT_DIR))
    print("\n%d cases written, %d dropped, %.1f KiB total" % (len(written), len(failures),
                                                            total / 1024))
    for cid, why in failures:
        print("DROPPED %s: %s" % (cid, why))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
