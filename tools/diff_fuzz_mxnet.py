"""Differential fuzzing: optforge against real MXNet 1.9.1 on random configurations.

Run by hand in the MXNet venv, never in CI::

    /work/mxvenv/bin/pip install lark jinja2      # optforge's own dependencies
    /work/mxvenv/bin/python tools/diff_fuzz_mxnet.py -n 3000
    /work/mxvenv/bin/python tools/diff_fuzz_mxnet.py --replay SEED     # one configuration
    /work/mxvenv/bin/python tools/diff_fuzz_mxnet.py --in-order --only lamb

optforge is imported from this source tree without installing it (see import_optforge); NumPy 1.x
gets a shim for numpy.lib.array_utils.

Each configuration draws an optimizer (every 1.x optimizer but SGLD, which is stochastic),
random values for every option it accepts, wd / rescale_grad / clip_gradient / learning_rate
(including None) / begin_num_update, one of the four schedulers (warmup included), parameter names
with varied suffixes, lr/wd multipliers by index and by name, 1-5 parameters of random shapes,
float32 / float64 / float16 (with and without multi_precision), a mode (``single`` direct calls,
``list`` direct calls for the optimizers MXNet lets aggregate, ``updater`` with single-index or
list calls), 3-10 rounds in which parameters may come in a shuffled order or be skipped (so the
per-index counters diverge), and sometimes all-zero weights or gradients. Both libraries get the
same inputs; the weights are compared after every call.

The MXNet bugs that optforge fixes on purpose (/work/shared/reference/mxnet-1.x-behaviour.md) are
never generated: clip_gradient=0, Nadam with more than one parameter, DCASGD momentum > 0,
single-index float16 + multi_precision LAMB outside the updater, Signum momentum 0 with wd_lh.
Configurations that MXNet itself rejects (exceptions, non-finite results) are counted and skipped.

Output: one line per mismatching configuration (``--verbose`` prints the configuration) and a
summary grouped by optimizer / mode / dtype. ``--replay SEED`` reruns one configuration verbosely.
A mismatch in float32/float16 also reports how far optforge itself moves when the same data is run
in float64: a gap to MXNet of the same size means rounding noise (typically MXNet's float32
hyperparameters or its all-float16 arithmetic), not a different algorithm.
Tolerances: rtol 1e-4 / atol 1e-5 (float32, float64), 1e-3 (float16 + multi_precision), 1e-2
(plain float16), as in tests/fixtures/mxnet/README.md.
No MXNet code is copied here; MXNet is only called.
"""
import argparse
import collections
import copy
import json
import os
import sys
import traceback
import types
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# optforge's runtime imports numpy.lib.array_utils (NumPy >= 2); the MXNet venv has NumPy 1.23.
if not hasattr(np.lib, "array_utils"):
    _shim = types.ModuleType("numpy.lib.array_utils")
    _shim.byte_bounds = np.byte_bounds
    sys.modules["numpy.lib.array_utils"] = _shim


def import_optforge(root=ROOT):
    """Import optforge from the source tree without installing it: the package is runtime/, and
    its subpackages codegen/, generated/, grammar/ are found through a second search location
    (a temporary folder of symlinks). An installed or PYTHONPATH optforge is used if present."""
    try:
        import optforge
        return optforge
    except ImportError:
        pass
    import importlib.util
    import tempfile
    extra = tempfile.mkdtemp(prefix="optforge-path-")
    for sub in ("codegen", "generated", "grammar"):
        os.symlink(os.path.join(root, sub), os.path.join(extra, sub))
    spec = importlib.util.spec_from_file_location(
        "optforge", os.path.join(root, "runtime", "__init__.py"),
        submodule_search_locations=[os.path.join(root, "runtime"), extra])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["optforge"] = mod
    spec.loader.exec_module(mod)
    return mod

AGGREGATING = ("sgd", "ccsgd", "lars", "lamb")   # MXNet accepts list updates only for these
FP32_ONLY = ("adagrad", "adadelta", "rmsprop", "ftrl")  # states forced to float32 in MXNet
SUFFIXES = ("_weight", "_bias", "_gamma", "_beta", "_running_mean", "gamma", "_weight_", "bias",
            "_moving_var", "")
ALL = ("sgd", "ccsgd", "nag", "adam", "adagrad", "adadelta", "adamax", "nadam", "rmsprop", "ftrl",
       "ftml", "dcasgd", "signum", "lamb", "lars", "lbsgd", "test")


# ----------------------------------------------------------------------------- configurations
def _u(rng, lo, hi, nd=4):
    return round(float(rng.uniform(lo, hi)), nd)


def _maybe(rng, p):
    return rng.random() < p


def opt_kwargs(rng, name):
    k = {}
    if name in ("sgd", "ccsgd", "lars"):
        if _maybe(rng, 0.7):
            k["momentum"] = rng.choice([0.0, 0.5, 0.9, _u(rng, 0.0, 0.99)])
        if _maybe(rng, 0.3):
            k["lazy_update"] = bool(rng.random() < 0.5)
    if name == "lars":
        if _maybe(rng, 0.8):
            k["eta"] = rng.choice([0.001, _u(rng, 0.01, 1.0)])
        if _maybe(rng, 0.5):
            k["eps"] = rng.choice([0.0, _u(rng, 0.0, 0.5)])
        if _maybe(rng, 0.4):
            k["momentum_correction"] = bool(rng.random() < 0.5)
    if name == "nag" and _maybe(rng, 0.8):
        k["momentum"] = rng.choice([0.0, 0.9, _u(rng, 0.0, 0.99)])
    if name in ("adam", "nadam", "ftml", "lamb", "adamax"):
        if _maybe(rng, 0.5):
            k["beta1"] = _u(rng, 0.0, 0.99)
        if _maybe(rng, 0.5):
            k["beta2"] = rng.choice([0.999, _u(rng, 0.5, 0.9999)])
    if name in ("adam", "nadam", "ftml", "lamb") and _maybe(rng, 0.5):
        k["epsilon"] = float(rng.choice([1e-8, 1e-6, 1e-3, 0.1]))
    if name == "adam" and _maybe(rng, 0.3):
        k["lazy_update"] = bool(rng.random() < 0.5)
    if name == "nadam" and _maybe(rng, 0.5):
        k["schedule_decay"] = rng.choice([0.004, _u(rng, 0.0, 0.3)])
    if name == "lamb":
        if _maybe(rng, 0.4):
            k["lower_bound"] = rng.choice([None, _u(rng, 0.01, 3.0)])
        if _maybe(rng, 0.4):
            k["upper_bound"] = rng.choice([None, _u(rng, 0.5, 5.0)])
        if _maybe(rng, 0.4):
            k["bias_correction"] = bool(rng.random() < 0.5)
    if name == "adagrad" and _maybe(rng, 0.5):
        k["eps"] = float(rng.choice([1e-7, 1e-3, _u(rng, 0.01, 1.0)]))
    if name == "adadelta":
        if _maybe(rng, 0.5):
            k["rho"] = _u(rng, 0.1, 0.99)
        if _maybe(rng, 0.7):
            k["epsilon"] = float(rng.choice([1e-5, 1e-3, 1e-2, 0.1]))
    if name == "rmsprop":
        if _maybe(rng, 0.5):
            k["gamma1"] = _u(rng, 0.1, 0.99)
        if _maybe(rng, 0.5):
            k["gamma2"] = _u(rng, 0.1, 0.99)
        if _maybe(rng, 0.5):
            k["epsilon"] = float(rng.choice([1e-8, 1e-4, 1e-2]))
        if _maybe(rng, 0.5):
            k["centered"] = bool(rng.random() < 0.5)
        if _maybe(rng, 0.3):
            k["clip_weights"] = rng.choice([None, _u(rng, 0.2, 2.0)])
    if name == "ftrl":
        if _maybe(rng, 0.5):
            k["lamda1"] = rng.choice([0.01, 0.0, _u(rng, 0.0, 0.5)])
        if _maybe(rng, 0.5):
            k["beta"] = _u(rng, 0.1, 2.0)
    if name == "dcasgd" and _maybe(rng, 0.7):
        k["lamda"] = rng.choice([0.04, _u(rng, 0.0, 1.0)])
        if _maybe(rng, 0.2):
            k["momentum"] = 0.0
    if name == "signum":
        if _maybe(rng, 0.8):
            k["momentum"] = rng.choice([0.0, 0.9, _u(rng, 0.0, 0.99)])
        if k.get("momentum", 0.9) != 0.0 and _maybe(rng, 0.5):
            k["wd_lh"] = rng.choice([0.0, _u(rng, 0.0, 0.5)])
    if name == "lbsgd":
        if _maybe(rng, 0.6):
            k["momentum"] = rng.choice([0.0, 0.9, _u(rng, 0.0, 0.99)])
        if _maybe(rng, 0.8):
            k["warmup_strategy"] = rng.choice(["linear", "power2", "sqrt", "lars"])
        if _maybe(rng, 0.8):
            k["warmup_epochs"] = int(rng.integers(1, 4))
        if _maybe(rng, 0.8):
            k["batch_scale"] = int(rng.integers(1, 4))
        if _maybe(rng, 0.8):
            k["updates_per_epoch"] = int(rng.integers(1, 5))
        if _maybe(rng, 0.4):
            k["begin_epoch"] = int(rng.integers(0, 3))
        if _maybe(rng, 0.2):
            k["num_epochs"] = int(rng.integers(1, 100))
    return {a: (b.item() if isinstance(b, np.generic) else b) for a, b in k.items()}


def scheduler_spec(rng):
    t = rng.choice(["FactorScheduler", "MultiFactorScheduler", "PolyScheduler", "CosineScheduler"])
    base = _u(rng, 0.01, 0.5)
    a = {"base_lr": base}
    if t == "FactorScheduler":
        a["step"] = int(rng.integers(1, 5))
        a["factor"] = _u(rng, 0.1, 1.0)
        if _maybe(rng, 0.3):
            a["stop_factor_lr"] = _u(rng, 0.0, base / 2, 6)
    elif t == "MultiFactorScheduler":
        k = int(rng.integers(1, 4))
        a["step"] = sorted(int(x) for x in rng.choice(np.arange(1, 12), size=k, replace=False))
        a["factor"] = _u(rng, 0.1, 1.0)
    else:
        a["max_update"] = int(rng.integers(1, 15))
        if _maybe(rng, 0.6):
            a["final_lr"] = _u(rng, 0.0, base / 2, 6)
        if t == "PolyScheduler" and _maybe(rng, 0.6):
            a["pwr"] = rng.choice([1, 2, 3, 0.5])
    if _maybe(rng, 0.4):
        ws = int(rng.integers(1, 5))
        if t in ("PolyScheduler", "CosineScheduler"):
            # optforge rejects max_update <= warmup_steps on purpose (MXNet divides by zero)
            ws = min(ws, a["max_update"] - 1)
        if ws > 0:
            a["warmup_steps"] = ws
            a["warmup_begin_lr"] = _u(rng, 0.0, base, 6)
            if _maybe(rng, 0.4):
                a["warmup_mode"] = rng.choice(["linear", "constant"])
    a = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in a.items()}
    return {"type": str(t), "args": a}


def random_config(seed, only=None, no_sched=False, in_order=False):
    """One configuration from its seed. no_sched: never a scheduler; in_order: every round
    updates every parameter in index order (what the recorded fixtures can express)."""
    rng = np.random.default_rng(seed)
    name = str(rng.choice(only or ALL))
    kw = opt_kwargs(rng, name)
    if _maybe(rng, 0.5):
        kw["wd"] = rng.choice([_u(rng, 0.0, 0.2), 0.1])
    if _maybe(rng, 0.4):
        kw["rescale_grad"] = rng.choice([0.5, _u(rng, 0.1, 2.0)])
    if _maybe(rng, 0.35):
        kw["clip_gradient"] = _u(rng, 0.05, 3.0)
    r = rng.random()
    if r < 0.2:
        kw["learning_rate"] = None
    elif r < 0.7:
        kw["learning_rate"] = _u(rng, 0.001, 0.5)
    if _maybe(rng, 0.25):
        kw["begin_num_update"] = int(rng.integers(0, 12))
    sched = scheduler_spec(rng) if _maybe(rng, 0.35) else None
    if no_sched:
        sched = None
    if sched is None and "learning_rate" in kw and kw["learning_rate"] is None:
        kw.pop("learning_rate")   # MXNet needs a learning rate from somewhere
    n = 1 if name == "nadam" else int(rng.integers(1, 6))
    shapes = []
    for _ in range(n):
        nd = int(rng.integers(1, 4))
        shapes.append([int(x) for x in rng.integers(1, 6, size=nd)])
    names = None
    if _maybe(rng, 0.4):
        names = {}
        for i in range(n):
            if _maybe(rng, 0.9):
                names[i] = "p%d%s" % (i, rng.choice(SUFFIXES))
    lr_mult = wd_mult = None
    if _maybe(rng, 0.35):
        lr_mult = []
        for i in range(n + 1):
            if _maybe(rng, 0.4):
                key = i if (names is None or i not in names or _maybe(rng, 0.5)) else names[i]
                lr_mult.append([key, _u(rng, 0.0, 3.0)])
    if _maybe(rng, 0.35):
        wd_mult = []
        for i in range(n + 1):
            if _maybe(rng, 0.4):
                key = i if (names is None or i not in names or _maybe(rng, 0.5)) else names[i]
                wd_mult.append([key, _u(rng, 0.0, 3.0)])
    # dtype
    r = rng.random()
    dtype, mp = "float32", False
    if r < 0.2:
        dtype = "float64"
    elif r < 0.45:
        dtype = "float16"
        mp = bool(rng.random() < 0.6)
    elif r < 0.55:
        mp = True  # multi_precision on float32: a no-op
    if name in FP32_ONLY and dtype != "float32":
        dtype, mp = ("float16", True) if dtype == "float16" else ("float32", False)
    if name == "lamb" and dtype == "float16":
        mp = True  # plain fp16 LAMB: MXNet's all-fp16 norms are far off (not comparable)
    if mp:
        kw["multi_precision"] = True
    # mode
    modes = ["single", "updater"] + (["list", "list"] if name in AGGREGATING else [])
    mode = str(rng.choice(modes))
    if name == "lamb" and dtype == "float16" and mp and mode == "single":
        mode = "updater"   # MXNet's single-index fp16+mp LAMB never updates its master copy
    steps = int(rng.integers(3, 11))
    shuffle = _maybe(rng, 0.4) and not in_order
    skip = _maybe(rng, 0.3) and not in_order
    # list calls through the updater: MXNet groups them for the aggregating optimizers and loops
    # over single-index updates for the others
    upd_lists = mode == "updater" and _maybe(rng, 0.6 if name in AGGREGATING else 0.3)
    rounds = []
    for _ in range(steps):
        idx = list(range(n))
        if shuffle:
            idx = [int(x) for x in rng.permutation(n)]
        if skip and n > 1:
            idx = [i for i in idx if rng.random() > 0.3] or idx[:1]
        if mode == "list" or upd_lists:
            # one call, or the round split into a few list calls
            calls = [idx]
            if len(idx) > 1 and _maybe(rng, 0.3) and not in_order:
                cut = int(rng.integers(1, len(idx)))
                calls = [idx[:cut], idx[cut:]]
            rounds.append(calls)
        else:
            rounds.append([[i] for i in idx])
    gscale = float(rng.choice([1.0, 1.0, 3.0, 0.1, 10.0]))
    zero_w = [i for i in range(n) if _maybe(rng, 0.07)]
    zero_g = [(s, i) for s in range(steps) for i in range(n) if _maybe(rng, 0.03)]
    kw = {a: (b.item() if isinstance(b, np.generic) else b) for a, b in kw.items()}
    return {"seed": seed, "optimizer": name, "kwargs": kw, "lr_scheduler": sched,
            "param_idx2name": names, "lr_mult": lr_mult, "wd_mult": wd_mult, "shapes": shapes,
            "dtype": dtype, "multi_precision": mp, "mode": mode, "list_calls": upd_lists or mode == "list",
            "rounds": rounds, "gscale": gscale, "zero_w": zero_w, "zero_g": zero_g}


def make_data(cfg):
    rng = np.random.default_rng(cfg["seed"] + 1)
    dt = np.dtype(cfg["dtype"])
    w0 = []
    for i, shp in enumerate(cfg["shapes"]):
        w = rng.standard_normal(shp)
        if i in cfg["zero_w"]:
            w[...] = 0
        w0.append(w.astype(dt))
    grads = []
    for s in range(len(cfg["rounds"])):
        gs = []
        for i, shp in enumerate(cfg["shapes"]):
            g = rng.standard_normal(shp) * cfg["gscale"]
            if (s, i) in cfg["zero_g"]:
                g[...] = 0
            gs.append(g.astype(dt))
        grads.append(gs)
    return w0, grads


# ----------------------------------------------------------------------------- the two sides
class MXSide:
    def __init__(self):
        import mxnet as mx
        self.mx = mx

    def create(self, cfg):
        return _build(cfg, self.mx.optimizer.create,
                      lambda t, a: getattr(self.mx.lr_scheduler, t)(**a))

    def get_updater(self, opt):
        return self.mx.optimizer.get_updater(opt)

    def arr(self, a):
        return self.mx.nd.array(a, dtype=a.dtype)

    def np(self, x):
        return x.asnumpy()


class OFSide:
    def __init__(self):
        self.of = import_optforge()

    def create(self, cfg):
        return _build(cfg, self.of.create, lambda t, a: getattr(self.of.lr_scheduler, t)(**a))

    def get_updater(self, opt):
        return self.of.get_updater(opt)

    def arr(self, a):
        return np.array(a, copy=True)

    def np(self, x):
        return np.array(x, copy=True)


def _build(cfg, create, make_sched):
    kw = copy.deepcopy(cfg["kwargs"])
    if cfg["lr_scheduler"] is not None:   # a fresh scheduler per side: it is stateful
        s = cfg["lr_scheduler"]
        kw["lr_scheduler"] = make_sched(s["type"], copy.deepcopy(s["args"]))
    if cfg["param_idx2name"] is not None:
        kw["param_idx2name"] = {int(k): v for k, v in cfg["param_idx2name"].items()}
    opt = create(cfg["optimizer"], **kw)
    if cfg["lr_mult"] is not None:
        opt.set_lr_mult({k: v for k, v in cfg["lr_mult"]})
    if cfg["wd_mult"] is not None:
        opt.set_wd_mult({k: v for k, v in cfg["wd_mult"]})
    return opt


def run_side(side, cfg, w0, grads):
    """Trajectory: list over calls of (call_description, [weights of all params])."""
    opt = side.create(cfg)
    n = len(cfg["shapes"])
    ws = [side.arr(w) for w in w0]
    mode = cfg["mode"]
    if mode == "updater":
        upd = side.get_updater(opt)
    else:
        states = [opt.create_state_multi_precision(i, ws[i]) for i in range(n)]
    out = []
    for s, calls in enumerate(cfg["rounds"]):
        gs = [side.arr(g) for g in grads[s]]
        for call in calls:
            if mode == "single":
                for i in call:
                    opt.update_multi_precision(i, ws[i], gs[i], states[i])
            elif mode == "list":
                opt.update_multi_precision(list(call), [ws[i] for i in call],
                                           [gs[i] for i in call], [states[i] for i in call])
            elif cfg["list_calls"]:
                upd(list(call), [gs[i] for i in call], [ws[i] for i in call])
            else:
                for i in call:
                    upd(i, gs[i], ws[i])
            out.append(((s, tuple(call)), [side.np(w) for w in ws]))
    return out


def tolerance(cfg):
    if cfg["dtype"] == "float16":
        return (1e-3, 1e-3) if cfg["multi_precision"] else (1e-2, 1e-2)
    return (1e-4, 1e-5)


def compare(cfg, mx_traj, of_traj):
    """None if equal within tolerance, else a description of the first mismatch."""
    rtol, atol = tolerance(cfg)
    for (where, mw), (_, ow) in zip(mx_traj, of_traj):
        for i, (a, b) in enumerate(zip(ow, mw)):
            if a.dtype != b.dtype or a.shape != b.shape:
                return "round %d call %s param %d: dtype/shape %s%s vs MXNet %s%s" % (
                    where[0], list(where[1]), i, a.dtype, a.shape, b.dtype, b.shape)
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            bad = np.abs(a64 - b64) > atol + rtol * np.abs(b64)
            bad |= np.isfinite(a64) != np.isfinite(b64)
            if bad.any():
                j = int(np.argmax(bad.ravel()))
                err = np.max(np.abs(a64 - b64) / (atol + rtol * np.abs(b64)))
                return ("round %d call %s param %d: optforge %.7g MXNet %.7g (%.3g x tol)" % (
                    where[0], list(where[1]), i, a64.ravel()[j], b64.ravel()[j], err))
    return None


def run_config(cfg, mxs, ofs):
    """('ok'|'mxerror'|'mxnonfinite'|'oferror'|'mismatch', detail)."""
    w0, grads = make_data(cfg)
    try:
        mx_traj = run_side(mxs, cfg, w0, grads)
    except Exception as e:  # noqa: BLE001 - MXNet rejects it: not comparable
        return "mxerror", "%s: %s" % (type(e).__name__, str(e).splitlines()[0][:150] if str(e) else "")
    if not all(np.all(np.isfinite(w)) for _, ws in mx_traj for w in ws):
        return "mxnonfinite", ""
    try:
        of_traj = run_side(ofs, cfg, w0, grads)
    except Exception as e:  # noqa: BLE001
        return "oferror", "%s: %s" % (type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
    d = compare(cfg, mx_traj, of_traj)
    if d and cfg["dtype"] != "float64":
        d += noise_note(cfg, w0, grads, mx_traj, of_traj, ofs)
    return ("mismatch", d) if d else ("ok", "")


def noise_note(cfg, w0, grads, mx_traj, of_traj, ofs):
    """How ill-conditioned the trajectory is: rerun optforge in float64 on the same (upcast) data
    and compare the gap optforge(dtype) - MXNet with optforge(dtype) - optforge(float64) at the
    worst element. A ratio near or below 1 means rounding noise, not a different algorithm."""
    c64 = dict(cfg, dtype="float64", multi_precision=False)
    c64["kwargs"] = {k: v for k, v in cfg["kwargs"].items() if k != "multi_precision"}
    try:
        t64 = run_side(ofs, c64, [w.astype(np.float64) for w in w0],
                       [[g.astype(np.float64) for g in gs] for gs in grads])
    except Exception:  # noqa: BLE001
        return ""
    worst = (0.0, 0.0)
    for (_, mw), (_, ow), (_, o64) in zip(mx_traj, of_traj, t64):
        for a, b, c in zip(ow, mw, o64):
            gap = np.abs(a.astype(np.float64) - b)
            if gap.size and gap.max() > worst[0]:
                j = int(np.argmax(gap))
                worst = (float(gap.ravel()[j]), float(abs(a.astype(np.float64).ravel()[j] - c.ravel()[j])))
    return " [gap to MXNet %.3g, optforge %s-vs-float64 %.3g]" % (worst[0], cfg["dtype"], worst[1])


def describe(cfg):
    c = {k: v for k, v in cfg.items() if k not in ("rounds",)}
    c["rounds"] = cfg["rounds"]
    return json.dumps(c)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="number of configurations")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--only", nargs="*", help="restrict to these optimizers")
    ap.add_argument("--no-sched", action="store_true", help="never use an lr scheduler")
    ap.add_argument("--in-order", action="store_true",
                    help="every round updates every parameter in order (fixture-expressible)")
    ap.add_argument("--replay", type=int, help="rerun one seed verbosely")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", help="write mismatching configurations here")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import logging
    logging.disable(logging.CRITICAL)
    mxs, ofs = MXSide(), OFSide()
    if args.replay is not None:
        cfg = random_config(args.replay, args.only, args.no_sched, args.in_order)
        print(describe(cfg))
        print(run_config(cfg, mxs, ofs))
        return 0
    counts = collections.Counter()
    groups = collections.defaultdict(list)
    bad = []
    for seed in range(args.start, args.start + args.n):
        cfg = random_config(seed, args.only, args.no_sched, args.in_order)
        try:
            status, detail = run_config(cfg, mxs, ofs)
        except Exception:  # noqa: BLE001 - a fuzzer bug; report and go on
            status, detail = "harness", traceback.format_exc().splitlines()[-1]
        counts[status] += 1
        if status in ("mismatch", "oferror", "harness"):
            key = (status, cfg["optimizer"], cfg["mode"], cfg["dtype"] + ("+mp" if cfg["multi_precision"] else ""))
            groups[key].append(seed)
            bad.append({"status": status, "detail": detail, "config": cfg})
            print("seed %d %s %s %s %s: %s" % (seed, status, cfg["optimizer"], cfg["mode"],
                                                cfg["dtype"], detail))
            if args.verbose:
                print("   ", describe(cfg))
        elif status == "mxerror" and args.verbose:
            print("seed %d MXNet rejects: %s" % (seed, detail))
    compared = counts["ok"] + counts["mismatch"] + counts["oferror"]
    print("\n%d configurations: %s; %d compared" % (args.n, dict(counts), compared))
    for key in sorted(groups):
        print("  %-9s %-9s %-8s %-12s %4d  seeds %s" % (key + (len(groups[key]),
                                                          groups[key][:8])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bad, f, indent=1, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
