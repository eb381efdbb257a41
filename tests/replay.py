"""Replay recorded MXNet 1.9.1 optimizer trajectories against any MXNet-compatible library.

The fixtures live in ``tests/fixtures/mxnet`` (format: ``tests/fixtures/mxnet/README.md``). This
module has no pytest dependency: the optforge tests and ``tools/check_replay_mxnet.py`` (which
replays the fixtures in MXNet itself) both use it.

A library is given as an adapter object with::

    create(name, **kwargs)        -> optimizer   (mxnet.optimizer.create semantics)
    scheduler(type_name, **args)  -> lr scheduler
    get_updater(opt)              -> updater, called as upd(index, grad, weight)
    to_array(np_array)            -> a *fresh* array of the library's type, same dtype
    to_numpy(x)                   -> numpy.ndarray
    seed(int)                     -> optional; seeds the library's RNG (stochastic cases)
"""
import json
import math
import os

import numpy as np

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "mxnet")


def load_cases(fixture_dir=FIXTURE_DIR):
    """All case dicts, in recording order."""
    with open(os.path.join(fixture_dir, "cases.json")) as f:
        return json.load(f)


def load_arrays(case, fixture_dir=FIXTURE_DIR):
    """{name: ndarray} for one case: w0_<i>, g<s>_<i> and the recorded w<s>_<i>."""
    with np.load(os.path.join(fixture_dir, case["id"] + ".npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _pairs(pairs):
    # JSON keeps int and str keys apart: [[0, 2.0], ["fc1_bias", 0.5]] -> {0: 2.0, "fc1_bias": 0.5}
    return {k: v for k, v in pairs}


def build_optimizer(case, lib):
    """Construct the case's optimizer exactly as the recorder did (fresh scheduler included)."""
    kwargs = dict(case["kwargs"])
    sched = case["lr_scheduler"]
    if sched is not None:
        kwargs["lr_scheduler"] = lib.scheduler(sched["type"], **sched["args"])
    if case["param_idx2name"] is not None:
        kwargs["param_idx2name"] = {int(k): v for k, v in case["param_idx2name"].items()}
    opt = lib.create(case["optimizer"], **kwargs)
    if case["lr_mult"] is not None:
        opt.set_lr_mult(_pairs(case["lr_mult"]))
    if case["wd_mult"] is not None:
        opt.set_wd_mult(_pairs(case["wd_mult"]))
    return opt


def replay(case, arrays, lib, counts=None):
    """Run one case; return ``history[s-1][i]``, the numpy weight of parameter i after step s.
    ``counts``, a list, receives the optimizer's ``num_update`` after each step.

    Every step gets freshly made gradient arrays (some MXNet optimizers scale the gradient in
    place, and LBSGD keeps a reference to the first gradient of a macro-batch).
    """
    n = len(case["shapes"])
    mode = case["mode"]
    opt = build_optimizer(case, lib)
    if case.get("stochastic") and hasattr(lib, "seed"):
        lib.seed(case["mx_seed"])
    weights = [lib.to_array(arrays["w0_%d" % i]) for i in range(n)]
    if mode == "updater":
        upd = lib.get_updater(opt)
    elif mode in ("single", "list"):
        states = [opt.create_state_multi_precision(i, weights[i]) for i in range(n)]
    else:
        raise ValueError("unknown mode %r in case %s" % (mode, case["id"]))
    history = []
    for s in range(1, case["steps"] + 1):
        grads = [lib.to_array(arrays["g%d_%d" % (s, i)]) for i in range(n)]
        if mode == "single":
            for i in range(n):
                opt.update_multi_precision(i, weights[i], grads[i], states[i])
        elif mode == "list":
            opt.update_multi_precision(list(range(n)), weights, grads, states)
        else:
            for i in range(n):
                upd(i, grads[i], weights[i])
        history.append([np.array(lib.to_numpy(w), copy=True) for w in weights])
        if counts is not None:
            counts.append(int(opt.num_update))
    return history


def check_counts(case, counts):
    """Assert num_update after every step equals the recording (``num_update`` in cases.json)."""
    assert counts == case["num_update"], "%s: num_update per step %s, MXNet %s" % (
        case["id"], counts, case["num_update"])


def expected(case, arrays):
    """The recorded trajectory in the same layout as replay()'s result."""
    n = len(case["shapes"])
    return [[arrays["w%d_%d" % (s, i)] for i in range(n)] for s in range(1, case["steps"] + 1)]


def check_deterministic(case, arrays, history, rtol=None, atol=None):
    """Assert every step's weights match the recording (case tolerance unless given)."""
    tol = case["tolerance"]
    rtol = tol["rtol"] if rtol is None else rtol
    atol = tol["atol"] if atol is None else atol
    want = expected(case, arrays)
    assert len(history) == len(want), "got %d steps, want %d" % (len(history), len(want))
    for s, (got_s, want_s) in enumerate(zip(history, want), start=1):
        for i, (got, ref) in enumerate(zip(got_s, want_s)):
            assert got.shape == ref.shape, "step %d param %d: shape %s != %s" % (
                s, i, got.shape, ref.shape)
            assert got.dtype == ref.dtype, "step %d param %d: dtype %s != %s" % (
                s, i, got.dtype, ref.dtype)
            np.testing.assert_allclose(
                got.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=atol,
                err_msg="%s: weight %d after step %d" % (case["id"], i, s))


# Stochastic (SGLD) cases: compare the distribution of each step's increment d = w_s - w_{s-1}.
# d = deterministic part (same in both runs up to O(lr*wd*noise)) + N(0, lr) noise, n elements.
# * mean: each run's sample mean has standard error <= std(d)/sqrt(n), so two independent runs
#   differ by at most sqrt(2)*std(d)/sqrt(n) per standard deviation; allow Z of those.
# * std: with D = std of the deterministic part and sigma the noise std, the sample variance
#   fluctuates by at most (sqrt(2)*sigma^2 + 2*D*sigma)/sqrt(n) <= 2.1*(D^2+sigma^2)/sqrt(n), so
#   the relative std fluctuation is <= 1.05/sqrt(n), and the difference of two runs
#   <= 1.5/sqrt(n) per standard deviation; allow Z of those.
STOCHASTIC_Z = 5.0


def increment_stats(w_prev, w_next):
    d = (np.asarray(w_next, np.float64) - np.asarray(w_prev, np.float64)).ravel()
    return float(d.mean()), float(d.std()), d.size


def check_stochastic(case, arrays, history, z=STOCHASTIC_Z):
    """Assert each step's increment mean/std match the recording within z standard errors."""
    want = expected(case, arrays)
    n = len(case["shapes"])
    assert len(history) == len(want)
    for s in range(1, case["steps"] + 1):
        for i in range(n):
            ref_prev = arrays["w%d_%d" % (s - 1, i)]
            got_prev = arrays["w0_%d" % i] if s == 1 else history[s - 2][i]
            got = history[s - 1][i]
            assert got.shape == ref_prev.shape and got.dtype == ref_prev.dtype
            assert np.all(np.isfinite(got)), "%s: non-finite weight %d, step %d" % (
                case["id"], i, s)
            m_ref, sd_ref, size = increment_stats(ref_prev, want[s - 1][i])
            m_got, sd_got, _ = increment_stats(got_prev, got)
            mean_tol = z * math.sqrt(2.0) * sd_ref / math.sqrt(size)
            std_rtol = z * 1.5 / math.sqrt(size)
            assert abs(m_got - m_ref) <= mean_tol, (
                "%s: step %d param %d increment mean %.6g, MXNet %.6g (tol %.3g)"
                % (case["id"], s, i, m_got, m_ref, mean_tol))
            assert abs(sd_got - sd_ref) <= std_rtol * sd_ref, (
                "%s: step %d param %d increment std %.6g, MXNet %.6g (rtol %.3g)"
                % (case["id"], s, i, sd_got, sd_ref, std_rtol))


def check(case, arrays, history):
    """The comparison the optforge tests use: statistics for stochastic cases, else allclose."""
    if case.get("stochastic"):
        check_stochastic(case, arrays, history)
    else:
        check_deterministic(case, arrays, history)
