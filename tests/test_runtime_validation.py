"""The runtime rejects bad input before it touches anything.

One table of bad calls (update, update_multi_precision, list updates, the Updater, constructors
and setters), each with the exception type and a message regex naming the argument. Every case
runs on a partly trained optimizer; after the exception, weights, state tensors, state scalars,
master copies, counters, num_update, globals, the RNG, multipliers, the scheduler and the
Updater's stored states must all be bit-identical to before.
"""
import copy
import warnings

import numpy as np
import pytest

import optforge
from optforge.lr_scheduler import FactorScheduler


class Env:
    """A partly trained optimizer with its Updater, weights, grads and states."""

    def __init__(self, name="adam", n=3, shape=(4, 3), dtype=np.float32, steps=2, sched=True, **kwargs):
        kwargs.setdefault("learning_rate", 0.1)
        if sched:
            kwargs["lr_scheduler"] = FactorScheduler(step=1, factor=0.9, base_lr=kwargs["learning_rate"])
        self.opt = optforge.create(name, **kwargs)
        self.upd = optforge.get_updater(self.opt)
        rng = np.random.default_rng(0)
        self.w = [rng.standard_normal(shape).astype(dtype) for _ in range(n)]
        self.g = [rng.standard_normal(shape).astype(dtype) for _ in range(n)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(steps):
                self.upd(list(range(n)), self.g, self.w)
        self.s = [self.upd.states[i] for i in range(n)]

    def snapshot(self):
        opt = self.opt

        def state(s):
            return (s.owner, s.shape, s.dtype, {k: _bits(v) for k, v in s.tensors.items()},
                    copy.deepcopy(s.scalars), None if s.master is None else _bits(s.master))
        return {
            "weights": [_bits(w) for w in self.w],
            "grads": [_bits(g) for g in self.g],
            "states": {k: state(s) for k, s in self.upd.states.items()},
            "synced": dict(self.upd.states_synced),
            "counts": copy.deepcopy(opt._all_index_update_counts),
            "num_update": opt.num_update,
            "globals": copy.deepcopy(opt._globals),
            "rng": opt._rng.bit_generator.state,
            "lr": opt.lr, "lr_mult": dict(opt.lr_mult), "wd_mult": dict(opt.wd_mult),
            "scheduler": opt.lr_scheduler.get_config() if opt.lr_scheduler is not None else None,
            "hyper": opt.hyperparameters(),
        }


def _bits(a):
    return (a.dtype.str, a.shape, a.tobytes())


def _other_state(name, w, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optforge.create(name, **kwargs).create_state_multi_precision(0, w)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _strided(a):
    big = np.zeros(a.shape + (2,), a.dtype)
    big[..., 0] = a
    return big[..., 0]


def _tampered(s, tensors=None, scalars=None, master=None):
    """A copy of state `s` (sharing its arrays) with some parts replaced."""
    return optforge.OptState(s.owner, s.shape, s.dtype, {**s.tensors, **(tensors or {})},
                             dict(s.scalars) if scalars is None else scalars,
                             s.master if master is None else master)


def _bad_sched_base(e):
    """A bad hyperparameter next to a scheduler: the scheduler's base_lr must not be overwritten."""
    sched = FactorScheduler(step=1, base_lr=1.0)
    try:
        optforge.create("adam", learning_rate=0.5, lr_scheduler=sched, beta1=1.5)
    finally:
        assert sched.base_lr == 1.0


def _updater_new_then_bad(e):
    """A new index whose call fails must not leave a state behind."""
    e.w.append(np.zeros((4, 3), np.float32))
    e.g.append(np.zeros((4, 4), np.float32))
    try:
        e.upd(3, e.g[3], e.w[3])
    finally:
        assert 3 not in e.upd.states
        e.w.pop(), e.g.pop()


def _aggregate_late_bad(e):
    """SGD aggregates 4 per call: a bad grad in the second chunk must stop the first chunk too."""
    ws = e.w + [np.ones((4, 3), np.float32) for _ in range(3)]
    gs = e.g + [np.ones((4, 3), np.float32), np.ones((4, 3), np.float32), np.ones((3, 4), np.float32)]
    before = [w.copy() for w in ws]
    try:
        e.upd(list(range(6)), gs, ws)
    finally:
        assert all(np.array_equal(a, b) for a, b in zip(before, ws))
        assert set(e.upd.states) == {0, 1, 2}


def _aggregate_late_bad_index(e):
    ws = e.w + [np.ones((4, 3), np.float32) for _ in range(3)]
    try:
        e.upd([0, 1, 2, 3, 4, 5.0], e.g + [np.ones((4, 3), np.float32)] * 3, ws)
    finally:
        assert set(e.upd.states) == {0, 1, 2}


def _shared_buffer(e):
    flat = np.zeros(24, np.float32)
    a, b = flat[:12].reshape(4, 3), flat[6:18].reshape(4, 3)
    e.opt.update([0, 1], [a, b], e.g[:2], e.s[:2])


def _grad_shifted_view_of_weight(e):
    """A gradient that is a shifted view of the weight's buffer: the update would read values it writes."""
    flat = np.ones(14, np.float32)
    w, g = flat[:12].reshape(4, 3), flat[2:14].reshape(4, 3)
    e.opt.update(0, w, g, e.opt.create_state(0, w))


class _NoneAfterTwo(FactorScheduler):
    """A broken schedule: no learning rate after two updates."""

    def __call__(self, num_update):
        return 0.1 if num_update <= 2 else None


F32 = np.float32
# id, Env kwargs, the bad call, exception type, message regex
CASES = [
    # ---- weights, grads and states of a single update
    ("grad-shape", {}, lambda e: e.opt.update(0, e.w[0], np.zeros((3, 4), F32), e.s[0]), ValueError, r"grad.*shape"),
    ("grad-dtype", {}, lambda e: e.opt.update(0, e.w[0], e.g[0].astype(np.float64), e.s[0]), TypeError, r"grad.*dtype"),
    ("grad-int-dtype", {}, lambda e: e.opt.update(0, e.w[0], e.g[0].astype(np.int32), e.s[0]), TypeError, r"grad has dtype int32"),
    ("grad-list", {}, lambda e: e.opt.update(0, e.w[0], e.g[0].tolist(), e.s[0]), TypeError, r"grad must be a numpy.ndarray"),
    ("grad-none", {}, lambda e: e.opt.update(0, e.w[0], None, e.s[0]), TypeError, r"grad must be a numpy.ndarray"),
    ("weight-list", {}, lambda e: e.opt.update(0, e.w[0].tolist(), e.g[0], e.s[0]), TypeError, r"weight must be a numpy.ndarray"),
    ("weight-int", {}, lambda e: e.opt.update(0, e.w[0].astype(np.int64), e.g[0], e.s[0]), TypeError, r"weight has dtype int64"),
    ("weight-readonly", {}, lambda e: e.opt.update(0, _readonly(e.w[0]), e.g[0], e.s[0]), ValueError, r"weight is read-only"),
    ("weight-noncontiguous", {}, lambda e: e.opt.update(0, _strided(e.w[0]), e.g[0], e.s[0]), ValueError, r"weight is not C-contiguous"),
    ("weight-transposed", {"shape": (3, 3)}, lambda e: e.opt.update(0, e.w[0].T, e.g[0], e.s[0]), ValueError, r"weight is not C-contiguous"),
    ("state-other-optimizer", {}, lambda e: e.opt.update(0, e.w[0], e.g[0], _other_state("sgd", e.w[0], momentum=0.9)), ValueError, r"state belongs to a SGD optimizer"),
    ("state-other-shape", {}, lambda e: e.opt.update(0, e.w[0], e.g[0], _other_state("adam", np.zeros(12, F32))), ValueError, r"state was created for shape \(12,\)"),
    ("state-other-dtype", {}, lambda e: e.opt.update(0, e.w[0], e.g[0], _other_state("adam", e.w[0].astype(np.float64))), TypeError, r"state was created for dtype float64"),
    ("state-other-config", {"name": "sgd", "momentum": 0.9}, lambda e: e.opt.update(0, e.w[0], e.g[0], _other_state("sgd", e.w[0])), ValueError, r"state holds \[\] but this configuration of SGD needs \['mom'\]"),
    ("state-tuple", {}, lambda e: e.opt.update(0, e.w[0], e.g[0], tuple(e.s[0])), TypeError, r"state must come from this optimizer's create_state"),
    ("state-none", {}, lambda e: e.opt.update(0, e.w[0], e.g[0], None), TypeError, r"state must come from"),
    ("state-tensor-readonly", {}, lambda e: e.opt.update(0, e.w[0], e.g[0], _tampered(e.s[0], {"mean": _readonly(e.s[0].tensors["mean"])})), ValueError, r"state tensor 'mean' is read-only"),
    ("state-tensor-dtype", {}, lambda e: e.opt.update(1, e.w[1], e.g[1], _tampered(e.s[1], {"var": e.s[1].tensors["var"].astype(np.float64)})), ValueError, r"state tensor 'var' is float64"),
    ("state-missing-scalar", {"name": "nadam"}, lambda e: e.opt.update(0, e.w[0], e.g[0], _tampered(e.s[0], scalars={})), ValueError, r"scalars \[\] but Nadam needs \['m_schedule'\]"),
    ("weight-is-state", {}, lambda e: e.opt.update(0, e.s[0].tensors["mean"], e.g[0], e.s[0]), ValueError, r"shares memory"),
    ("master-for-float32", {"dtype": np.float16, "multi_precision": True}, lambda e: e.opt.update_multi_precision(0, e.w[0].astype(F32), e.g[0].astype(F32), e.s[0]), TypeError, r"state was created for dtype float16, weight is float32"),
    ("master-readonly", {"dtype": np.float16, "multi_precision": True}, lambda e: e.opt.update_multi_precision(0, e.w[0], e.g[0], _tampered(e.s[0], master=_readonly(e.s[0].master))), ValueError, r"master copy is read-only"),
    # ---- indices
    ("index-float", {}, lambda e: e.opt.update(0.0, e.w[0], e.g[0], e.s[0]), TypeError, r"index must be an int or a str, got float"),
    ("index-bool", {}, lambda e: e.opt.update(True, e.w[0], e.g[0], e.s[0]), TypeError, r"index must be an int or a str, got bool"),
    ("index-none", {}, lambda e: e.opt.update(None, e.w[0], e.g[0], e.s[0]), TypeError, r"index must be an int or a str, got NoneType"),
    ("index-bytes", {}, lambda e: e.opt.update(b"w", e.w[0], e.g[0], e.s[0]), TypeError, r"index must be an int or a str, got bytes"),
    # ---- list updates
    ("list-lengths", {}, lambda e: e.opt.update([0, 1, 2], e.w, e.g[:2], e.s), ValueError, r"3 indices but 2 grads"),
    ("list-weight-not-list", {}, lambda e: e.opt.update([0], e.w[0], [e.g[0]], [e.s[0]]), TypeError, r"weight must be a list too"),
    ("list-duplicate-index", {}, lambda e: e.opt.update([0, 1, 0], e.w, e.g, e.s), ValueError, r"duplicate index 0 .*index\[2\]"),
    ("list-last-grad-bad", {}, lambda e: e.opt.update([0, 1, 2], e.w, e.g[:2] + [np.zeros(3, F32)], e.s), ValueError, r"grad\[2\] has shape"),
    ("list-last-index-bad", {}, lambda e: e.opt.update([0, 1, [2]], e.w, e.g, e.s), TypeError, r"index\[2\] must be an int or a str, got list"),
    ("list-weight-twice", {}, lambda e: e.opt.update([0, 1], [e.w[0], e.w[0]], e.g[:2], e.s[:2]), ValueError, r"weight\[1\] shares memory with weight\[0\]"),
    ("list-shared-buffer", {}, _shared_buffer, ValueError, r"weight\[1\] shares memory with weight\[0\]"),
    ("grad-is-weight", {}, lambda e: e.opt.update(0, e.w[0], e.w[0], e.s[0]), ValueError, r"shares memory with .*writes one while reading the other"),
    ("grad-shifted-view-of-weight", {}, _grad_shifted_view_of_weight, ValueError, r"grad shares memory with weight|weight shares memory with grad"),
    ("grad-is-a-state", {}, lambda e: e.opt.update(0, e.w[0], e.s[0].tensors["mean"], e.s[0]), ValueError, r"shares memory"),
    ("list-grad-is-other-weight", {}, lambda e: e.opt.update([0, 1], e.w[:2], [e.g[0], e.w[0]], e.s[:2]), ValueError, r"grad\[1\] shares memory with weight\[0\]|weight\[0\] shares memory with grad\[1\]"),
    ("list-swapped-states", {"n": 2, "name": "adam"}, lambda e: e.opt.update([0, 1], e.w, e.g, [e.s[0], _other_state("adam", np.zeros(5, F32))]), ValueError, r"state\[1\] was created for shape"),
    ("scheduler-returns-none", {"sched": False, "lr_scheduler": _NoneAfterTwo(step=1, base_lr=0.1)}, lambda e: e.upd([0, 1, 2], e.g, e.w), TypeError, r"lr_scheduler returned None for num_update=3"),
    ("scheduler-returns-none-lbsgd", {"name": "lbsgd", "sched": False, "lr_scheduler": _NoneAfterTwo(step=1, base_lr=0.1)}, lambda e: e.opt.update([0, 1, 2], e.w, e.g, e.s), TypeError, r"lr_scheduler returned None for num_update=3"),
    # ---- the Updater
    ("updater-aggregate-late-grad", {"name": "sgd", "momentum": 0.9}, _aggregate_late_bad, ValueError, r"grad\[5\] has shape"),
    ("updater-aggregate-late-index", {"name": "lars", "momentum": 0.9}, _aggregate_late_bad_index, TypeError, r"index\[5\] must be an int or a str"),
    ("updater-new-index-bad-grad", {}, _updater_new_then_bad, ValueError, r"grad has shape \(4, 4\)"),
    ("updater-list-lengths", {}, lambda e: e.upd([0, 1, 2], e.g[:2], e.w), ValueError, r"3 indices but 2 grads"),
    ("updater-grad-not-list", {}, lambda e: e.upd([0, 1, 2], e.g[0], e.w), TypeError, r"grad must be a list too"),
    ("updater-duplicate", {}, lambda e: e.upd([0, 1, 1], e.g, e.w), ValueError, r"duplicate index 1"),
    ("updater-weight-readonly", {}, lambda e: e.upd([0, 1, 7], e.g, e.w[:2] + [_readonly(e.w[2])]), ValueError, r"weight\[2\] is read-only"),
    ("updater-last-weight-float-index", {}, lambda e: e.upd([0, 1, 2.5], e.g, e.w), TypeError, r"index\[2\] must be an int or a str"),
    ("updater-weight-shape-changed", {}, lambda e: e.upd(0, np.zeros(12, F32), np.zeros(12, F32)), ValueError, r"state was created for shape \(4, 3\)"),
    ("updater-no-optimizer", {}, lambda e: optforge.get_updater("adam"), TypeError, r"needs an optforge Optimizer"),
    # ---- constructors (nothing may be touched: not even a scheduler passed in)
    ("ctor-unknown-kwarg", {}, lambda e: optforge.create("adam", beta_1=0.9), TypeError, r"unexpected keyword argument 'beta_1'; did you mean 'beta1'\?"),
    ("ctor-unknown-base-kwarg", {}, lambda e: optforge.create("sgd", learning_rat=0.1), TypeError, r"did you mean 'learning_rate'\?"),
    ("ctor-beta1-one", {}, lambda e: optforge.create("adam", beta1=1.0), ValueError, r"Invalid beta1 value: 1.0 \(must be in \[0.0, 1.0\)\)"),
    ("ctor-beta1-negative", {}, lambda e: optforge.create("adam", beta1=-0.1), ValueError, r"Invalid beta1 value: -0.1"),
    ("ctor-epsilon-negative", {}, lambda e: optforge.create("adam", epsilon=-1e-8), ValueError, r"Invalid epsilon value"),
    ("ctor-momentum-nan", {}, lambda e: optforge.create("sgd", momentum=float("nan")), ValueError, r"Invalid momentum value: nan"),
    ("ctor-bool-for-float", {}, lambda e: optforge.create("adam", beta1=True), TypeError, r"beta1 must be a number, got True"),
    ("ctor-str-for-float", {}, lambda e: optforge.create("sgd", momentum="0.9"), TypeError, r"momentum must be a number"),
    ("ctor-float-for-int", {}, lambda e: optforge.create("lbsgd", batch_scale=2.5), TypeError, r"batch_scale must be an integer"),
    ("ctor-bad-choice", {}, lambda e: optforge.create("lbsgd", warmup_strategy="linaer"), ValueError, r"Invalid warmup_strategy .*did you mean 'linear'\?"),
    ("ctor-lr-bool", {}, lambda e: optforge.create("sgd", learning_rate=True), TypeError, r"learning_rate must be a number"),
    ("ctor-lr-inf", {}, lambda e: optforge.create("sgd", learning_rate=float("inf")), ValueError, r"Invalid learning_rate value: inf \(must be finite\)"),
    ("ctor-wd-str", {}, lambda e: optforge.create("sgd", wd="0"), TypeError, r"wd must be a number"),
    ("ctor-rescale-nan", {}, lambda e: optforge.create("sgd", rescale_grad=float("nan")), ValueError, r"Invalid rescale_grad value: nan"),
    ("ctor-lr-scheduler-str", {}, lambda e: optforge.create("sgd", lr_scheduler="cosine"), TypeError, r"lr_scheduler must be an LRScheduler"),
    ("ctor-lr-scheduler-func", {}, lambda e: optforge.create("sgd", lr_scheduler=lambda n: 0.1), TypeError, r"lr_scheduler must be an LRScheduler"),
    ("ctor-idx2name-list", {}, lambda e: optforge.create("sgd", param_idx2name=["fc_weight"]), TypeError, r"param_idx2name should be a dict"),
    ("ctor-idx2name-value", {}, lambda e: optforge.create("sgd", param_idx2name={0: 3}), TypeError, r"param_idx2name\[0\] must be a str"),
    ("ctor-idx2name-key", {}, lambda e: optforge.create("sgd", param_idx2name={0.5: "w"}), TypeError, r"param_idx2name: key 0.5"),
    ("ctor-begin-num-update", {}, lambda e: optforge.create("sgd", begin_num_update=-1), ValueError, r"Invalid begin_num_update value: -1"),
    ("ctor-multi-precision-str", {}, lambda e: optforge.create("sgd", multi_precision="yes"), TypeError, r"multi_precision must be a bool"),
    ("ctor-param-dict", {}, lambda e: optforge.create("sgd", param_dict={0: object()}), TypeError, r"param_dict\[0\].lr_mult must be a number"),
    ("ctor-scheduler-untouched", {}, _bad_sched_base, ValueError, r"Invalid beta1 value: 1.5"),
    ("ctor-unknown-optimizer", {}, lambda e: optforge.create("adamm"), ValueError, r"Cannot find optimizer 'adamm'; did you mean 'adam'\?"),
    # ---- setters
    ("lr-mult-not-dict", {}, lambda e: e.opt.set_lr_mult([("w", 2.0)]), TypeError, r"args_lr_mult must be a dict"),
    ("lr-mult-value", {}, lambda e: e.opt.set_lr_mult({0: "2"}), TypeError, r"args_lr_mult\[0\] must be a number"),
    ("lr-mult-inf", {}, lambda e: e.opt.set_lr_mult({0: float("inf")}), ValueError, r"args_lr_mult\[0\].*must be finite"),
    ("wd-mult-key", {}, lambda e: e.opt.set_wd_mult({1.5: 1.0}), TypeError, r"args_wd_mult: key 1.5"),
    ("set-learning-rate-bool", {"sched": False}, lambda e: e.opt.set_learning_rate(False), TypeError, r"learning_rate must be a number"),
    ("set-learning-rate-with-scheduler", {}, lambda e: e.opt.set_learning_rate(0.5), UserWarning, r"LRScheduler of the optimizer has already been defined"),
]


def test_gradients_may_share_memory_with_each_other():
    """Read-only arrays may overlap (one gradient buffer for two parameters); only writes may not."""
    e = Env()
    g = np.ones((4, 3), np.float32)
    before = [w.copy() for w in e.w[:2]]
    e.opt.update([0, 1], e.w[:2], [g, g], e.s[:2])
    assert all(not np.array_equal(a, b) for a, b in zip(before, e.w[:2]))


def test_table_is_large_and_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25


@pytest.mark.parametrize("case_id,env_kwargs,call,exc,regex", CASES, ids=[c[0] for c in CASES])
def test_bad_input_rejected_and_nothing_changed(case_id, env_kwargs, call, exc, regex):
    env = Env(**env_kwargs)
    before = env.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=regex):
            call(env)
    env.s = [env.upd.states[i] for i in range(len(env.s))]
    after = env.snapshot()
    assert after == before


@pytest.mark.parametrize("name", ["sgd", "lars", "lamb", "adam", "nadam", "lbsgd", "sgld"])
def test_rejected_call_does_not_change_the_trajectory(name):
    """A run with a rejected list update in the middle equals the same run without it."""
    kwargs = {"seed": 3} if name == "sgld" else {"momentum": 0.9} if name in ("sgd", "lars", "lbsgd") else {}
    a, b = Env(name, n=6, **kwargs), Env(name, n=6, **kwargs)
    bad_grads = b.g[:5] + [np.zeros((2, 2), F32)]
    with pytest.raises(ValueError, match=r"grad\[5\]"):
        b.upd(list(range(6)), bad_grads, b.w)
    for env in (a, b):
        for _ in range(3):
            env.upd(list(range(6)), env.g, env.w)
    sa, sb = a.snapshot(), b.snapshot()
    if name != "sgld":  # unseeded generators differ between instances; only SGLD draws from its own
        del sa["rng"], sb["rng"]
    assert sa == sb


def test_valid_calls_still_work():
    """The checks accept what MXNet accepts: int and str indices, numpy ints, views that are
    contiguous, disjoint slices of one flat buffer, float16 with and without multi_precision."""
    opt = optforge.create("sgd", learning_rate=0.1, momentum=0.9)
    upd = optforge.get_updater(opt)
    flat = np.ones(24, np.float32)
    a, b = flat[:12].reshape(4, 3), flat[12:].reshape(4, 3)
    upd([np.int64(0), "b"], [np.ones((4, 3), np.float32)] * 2, [a, b])
    assert np.all(flat < 1)
    opt16 = optforge.create("adam", multi_precision=True)
    w16 = np.ones(3, np.float16)
    s16 = opt16.create_state_multi_precision(0, w16)
    opt16.update_multi_precision(0, w16, np.ones(3, np.float16), s16)
    assert s16.master is not None and np.all(w16 < 1)
