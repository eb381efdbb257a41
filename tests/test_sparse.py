"""Row-sparse gradients: MXNet 1.9.1 sparse fixtures, lazy/standard semantics, RowSparse validation.

Fixtures: tests/fixtures/mxnet_sparse (tools/record_mxnet_sparse.py). Each is replayed with a dense
NumPy weight and an `optforge.RowSparse` gradient.
"""
import json
import os

import numpy as np
import pytest

import optforge
from optforge import RowSparse
from optforge.codegen.compile import load_spec_text, render_module
from optforge.codegen.errors import SpecError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "mxnet_sparse")
with open(os.path.join(FIXTURES, "cases.json")) as _f:
    CASES = json.load(_f)


def _arrays(case):
    with np.load(os.path.join(FIXTURES, case["id"] + ".npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---- MXNet fixtures --------------------------------------------------------------------------------
BACKENDS = ["numpy"] + (["native"] if optforge.native.available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_mxnet_sparse_fixture(case, backend):
    a = _arrays(case)
    opt = optforge.create(case["optimizer"], **case["kwargs"])
    opt.backend = backend
    w = a["w0"].copy()
    state = opt.create_state_multi_precision(0, w)
    shape = tuple(case["shape"])
    for s in range(1, case["steps"] + 1):
        g = RowSparse(a[f"g{s}_data"], a[f"g{s}_indices"], shape)
        if "error" in case:  # MXNet refuses the case: so do we, before touching anything
            with pytest.raises(ValueError, match="weight decay"):
                opt.update_multi_precision(0, w, g, state)
            assert np.array_equal(w, a["w0"]) and opt.num_update == 0
            return
        opt.update_multi_precision(0, w, g, state)
        np.testing.assert_allclose(w.astype(np.float64), a[f"w{s}"].astype(np.float64),
                                   err_msg=f"{case['id']} step {s}", **case["tolerance"])


def test_fixtures_cover_the_semantics():
    ids = {c["id"] for c in CASES}
    for opt in ("sgd", "ccsgd", "lars", "adam", "nag", "lbsgd", "ftrl", "adagrad"):
        assert any(c["optimizer"] == opt and not c.get("untouched_rows_change", True) for c in CASES), opt
    assert {"sgd-std-wd", "adam-std-wd", "adam-lazy-fp16-mp", "adam-lazy-empty", "sgd-mom-lazy-empty",
            "adam-lazy-all-rows", "adagrad-lazy-wd"} <= ids
    # LBSGD: lazy over the union of the rows summed since the last applied step, and on the master copy
    lbsgd = {c["id"]: c for c in CASES if c["optimizer"] == "lbsgd"}
    assert {"lbsgd-bs2-mom-lazy-union", "lbsgd-bs3-mom-lazy-union-clip-rescale", "lbsgd-lazy-fp16-mp",
            "lbsgd-bs2-mom-lazy-union-fp16-mp"} <= set(lbsgd)
    assert not any(c["untouched_rows_change"] for c in lbsgd.values())


def test_lbsgd_accumulated_rows_are_carried_until_the_applied_step():
    """batch_scale 2: the applied step changes the rows of both summed gradients, with momentum and
    weight decay, and nothing else; the step between changes no weight row at all."""
    kw = {"learning_rate": 0.1, "wd": 0.1, "momentum": 0.9, "batch_scale": 2}
    opt, w, state, rng = _setup("lbsgd", kw)
    state.tensors["cum_grad"][...] = 0
    ref_opt, ref_w, ref_state, _ = _setup("lbsgd", kw)
    ref_state.tensors["cum_grad"][...] = 0
    for first, second in (([1, 4], [4, 6]), ([2], [])):
        union = sorted(set(first) | set(second))
        w0, t0, _ = _snapshot(w, state)
        g1 = RowSparse(rng.standard_normal((len(first), 3)).astype(np.float32), first, w.shape)
        opt.update(0, w, g1, state)
        assert np.array_equal(w, w0) and state.carry.tolist() == first
        g2 = RowSparse(rng.standard_normal((len(second), 3)).astype(np.float32), second, w.shape)
        opt.update(0, w, g2, state)
        assert state.carry is None and not state.tensors["cum_grad"].any()
        other = np.setdiff1d(np.arange(w.shape[0]), union)
        assert np.array_equal(w[other], w0[other]) and np.array_equal(state.tensors["mom"][other], t0["mom"][other])
        # the touched rows: the dense update of the sub-matrix with the summed gradient
        sub = ref_opt.create_state(0, ref_w[union])
        sub.tensors["mom"][...] = t0["mom"][union]
        sub.scalars.update(state.scalars, num_cums=state.scalars["num_cums"] - 2)
        dense = [g.todense()[union] for g in (g1, g2)]
        sub_w = w0[union].copy()
        for d in dense:
            ref_opt.update(0, sub_w, d, sub)
        np.testing.assert_allclose(w[union], sub_w, rtol=1e-6, atol=1e-7)


def test_carried_rows_survive_a_checkpoint():
    kw = {"learning_rate": 0.1, "wd": 0.1, "momentum": 0.9, "batch_scale": 2}
    rng = np.random.default_rng(5)
    grads = [RowSparse(rng.standard_normal((2, 3)).astype(np.float32), r, (8, 3)) for r in ([1, 4], [4, 6])]
    w0 = rng.standard_normal((8, 3)).astype(np.float32)
    runs = []
    for restore in (False, True):
        opt = optforge.create("lbsgd", **kw)
        upd = optforge.get_updater(opt)
        w = w0.copy()
        upd(0, grads[0], w)
        if restore:
            blob = upd.get_states(dump_optimizer=True)
            upd = optforge.get_updater(optforge.create("lbsgd", **kw))
            upd.set_states(blob)
            assert upd.states[0].carry.tolist() == [1, 4]
        upd(0, grads[1], w)
        runs.append(w)
    assert not np.array_equal(runs[0][1], w0[1])     # row 1 is only in the first gradient
    np.testing.assert_array_equal(runs[0], runs[1])


# ---- lazy semantics: the dense equations on the touched rows, nothing else --------------------------
LAZY = [
    ("sgd", {"learning_rate": 0.1, "wd": 0.1}),
    ("sgd", {"learning_rate": 0.1, "wd": 0.1, "momentum": 0.9, "clip_gradient": 0.3, "rescale_grad": 2.0}),
    ("ccsgd", {"learning_rate": 0.1, "momentum": 0.5}),
    ("adam", {"learning_rate": 0.05, "wd": 0.1, "clip_gradient": 0.5}),
    ("adagrad", {"learning_rate": 0.1}),
    ("ftrl", {"learning_rate": 0.1, "wd": 0.1}),
    ("nag", {"learning_rate": 0.1, "wd": 0.1}),
    ("lbsgd", {"learning_rate": 0.1, "wd": 0.1, "momentum": 0.9}),
    ("lars", {"learning_rate": 0.1, "wd": 0.01, "momentum": 0.9, "eta": 0.5}),
]
LAZY_IDS = ["-".join([n] + sorted(k for k in kw if k != "learning_rate")) for n, kw in LAZY]


def _setup(name, kw, dtype=np.float32, rows=8, seed=0):
    rng = np.random.default_rng(seed)
    opt = optforge.create(name, **kw)
    w = rng.uniform(0.5, 1.5, (rows, 3)).astype(dtype)
    state = opt.create_state_multi_precision(0, w)
    # give the states non-trivial values so untouched rows have something to keep
    for t in state.tensors.values():
        t[...] = rng.uniform(0.1, 0.5, t.shape)
    return opt, w, state, rng


def _snapshot(w, state):
    return w.copy(), {k: v.copy() for k, v in state.tensors.items()}, dict(state.scalars)


@pytest.mark.parametrize("name,kw", LAZY, ids=LAZY_IDS)
def test_lazy_leaves_untouched_rows_bit_identical(name, kw):
    opt, w, state, rng = _setup(name, kw)
    assert opt._lazy_rows(state)
    w0, t0, _ = _snapshot(w, state)
    rows = np.array([1, 4, 5])
    for _ in range(3):
        opt.update(0, w, RowSparse(rng.standard_normal((3, 3)).astype(np.float32), rows, w.shape), state)
    other = np.setdiff1d(np.arange(w.shape[0]), rows)
    assert np.array_equal(w[other], w0[other])
    for k, v in state.tensors.items():
        assert np.array_equal(v[other], t0[k][other]), k
    assert not np.array_equal(w[rows], w0[rows])


@pytest.mark.parametrize("name,kw", [c for c in LAZY if c[0] != "lars"], ids=[i for i in LAZY_IDS if "lars" not in i])
def test_lazy_equals_dense_update_of_the_touched_rows(name, kw):
    """For specs without whole-tensor reductions, a lazy step on rows R equals the dense step on
    the sub-matrix weight[R] (and states[R]) with the gradient's data (up to rounding: the dense
    step may run on a compiled backend)."""
    opt, w, state, rng = _setup(name, kw)
    ref_opt = optforge.create(name, **kw)
    rows = np.array([0, 3, 7])
    sub_w = w[rows].copy()
    sub_state = ref_opt.create_state(0, sub_w)
    for k, v in state.tensors.items():
        sub_state.tensors[k][...] = v[rows]
    for _ in range(3):
        data = rng.standard_normal((3, 3)).astype(np.float32)
        opt.update(0, w, RowSparse(data, rows, w.shape), state)
        ref_opt.update(0, sub_w, data, sub_state)
    np.testing.assert_allclose(w[rows], sub_w, rtol=1e-6, atol=1e-7)
    for k, v in state.tensors.items():
        np.testing.assert_allclose(v[rows], sub_state.tensors[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("name,kw", LAZY, ids=LAZY_IDS)
def test_lazy_with_every_row_equals_dense(name, kw):
    opt, w, state, rng = _setup(name, kw)
    dopt, dw, dstate, _ = _setup(name, kw)
    for _ in range(3):
        data = rng.standard_normal(w.shape).astype(np.float32)
        opt.update(0, w, RowSparse(data, np.arange(w.shape[0]), w.shape), state)
        dopt.update(0, dw, data, dstate)
    np.testing.assert_allclose(w, dw, rtol=1e-6, atol=1e-7)


def test_lazy_fp16_multi_precision_updates_master_rows_only():
    opt, w, state, rng = _setup("adam", {"learning_rate": 0.05, "multi_precision": True}, dtype=np.float16)
    assert state.master is not None and opt._lazy_rows(state)
    w0, m0 = w.copy(), state.master.copy()
    rows = np.array([2, 6])
    opt.update_multi_precision(0, w, RowSparse(np.ones((2, 3), np.float16), rows, w.shape), state)
    other = np.setdiff1d(np.arange(8), rows)
    assert np.array_equal(w[other], w0[other]) and np.array_equal(state.master[other], m0[other])
    assert np.array_equal(w[rows], state.master[rows].astype(np.float16))


def test_sgd_fp16_multi_precision_is_standard_as_in_mxnet():
    # MXNet's mp_sgd kernels have no row-sparse path: the update falls back to dense
    opt, w, state, _ = _setup("sgd", {"learning_rate": 0.1, "wd": 0.1, "multi_precision": True}, dtype=np.float16)
    assert not opt._lazy_rows(state)


def test_empty_gradient_is_a_noop_but_counts():
    opt, w, state, _ = _setup("adam", {"learning_rate": 0.05, "wd": 0.1})
    w0, t0, _ = _snapshot(w, state)
    opt.update(0, w, RowSparse(np.zeros((0, 3), np.float32), [], w.shape), state)
    assert np.array_equal(w, w0) and all(np.array_equal(v, t0[k]) for k, v in state.tensors.items())
    assert opt._index_update_count[0] == 1


def test_lazy_path_never_densifies(monkeypatch):
    monkeypatch.setattr(RowSparse, "todense", lambda self: pytest.fail("lazy update densified the gradient"))
    opt, w, state, _ = _setup("adam", {"learning_rate": 0.05})
    opt.update(0, w, RowSparse(np.ones((1, 3), np.float32), [2], w.shape), state)


# ---- standard semantics: the dense update with zero rows ------------------------------------------------
STANDARD = [("sgd", {"lazy_update": False, "momentum": 0.9, "wd": 0.1}), ("adam", {"lazy_update": False, "wd": 0.1}),
            ("lars", {"lazy_update": False, "momentum": 0.9}), ("nag", {"momentum": 0.9})] + \
    [(n, {}) for n in ("rmsprop", "adamax", "adadelta", "ftml", "nadam", "signum", "dcasgd", "lamb")]


@pytest.mark.parametrize("name,kw", STANDARD, ids=[n + ("-" + "-".join(sorted(kw)) if kw else "") for n, kw in STANDARD])
def test_standard_semantics_equal_the_densified_update(name, kw):
    opt, w, state, rng = _setup(name, kw)
    dopt, dw, dstate, _ = _setup(name, kw)
    assert not (opt.sparse == "lazy" and opt._lazy_rows(state))
    for _ in range(3):
        g = RowSparse(rng.standard_normal((2, 3)).astype(np.float32), [1, 6], w.shape)
        opt.update(0, w, g, state)
        dopt.update(0, dw, g.todense(), dstate)
    assert np.array_equal(w, dw)


# ---- RowSparse validation, and bad input rejected before anything is touched ----------------------------
BAD_ROWSPARSE = [
    (dict(data=[[1.0]], indices=[0], shape=(2, 1)), TypeError, "data must be an array"),
    (dict(data=np.ones((1, 1), np.int32), indices=[0], shape=(2, 1)), TypeError, "dtype int32"),
    (dict(data=np.ones((1, 1)), indices=np.array([0.0]), shape=(2, 1)), TypeError, "indices must be integers"),
    (dict(data=np.ones((1, 1)), indices=np.array([[0]]), shape=(2, 1)), ValueError, "1-D"),
    (dict(data=np.ones((2, 1)), indices=[0], shape=(2, 1)), ValueError, r"data has shape \(2, 1\), expected \(1, 1\)"),
    (dict(data=np.ones((1, 2)), indices=[0], shape=(2, 1)), ValueError, "expected"),
    (dict(data=np.ones((1, 1)), indices=[2], shape=(2, 1)), ValueError, "index 2 is out of range for 2 rows"),
    (dict(data=np.ones((1, 1)), indices=[-1], shape=(2, 1)), ValueError, "index -1 is out of range"),
    (dict(data=np.ones((2, 1)), indices=[1, 0], shape=(2, 1)), ValueError, "sorted"),
    (dict(data=np.ones((2, 1)), indices=[1, 1], shape=(2, 1)), ValueError, "unique"),
    (dict(data=np.ones((1, 1)), indices=[0], shape=(2, "a")), ValueError, "shape must be"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD_ROWSPARSE, ids=[m for _, _, m in BAD_ROWSPARSE])
def test_rowsparse_validation(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        RowSparse(**kw)


def test_rowsparse_basics():
    g = RowSparse(np.arange(6, dtype=np.float32).reshape(2, 3), [0, 3], (5, 3))
    assert g.nnz_rows == 2 and g.shape == (5, 3) and g.dtype == np.float32 and g.indices.dtype == np.int64
    d = g.todense()
    assert d.shape == (5, 3) and d[3].tolist() == [3.0, 4.0, 5.0] and not d[[1, 2, 4]].any()
    assert np.array_equal(RowSparse.from_dense(d).todense(), d)
    assert RowSparse(np.zeros((0, 3), np.float32), [], (5, 3)).nnz_rows == 0
    assert optforge.RowSparse is RowSparse and "RowSparse" in optforge.__all__


@pytest.mark.parametrize("grad,exc,msg", [
    (RowSparse(np.ones((1, 3), np.float32), [0], (9, 3)), ValueError, "shape"),
    (RowSparse(np.ones((1, 3), np.float64), [0], (8, 3)), TypeError, "dtype"),
], ids=["shape", "dtype"])
def test_mismatched_rowsparse_is_rejected_before_anything_is_touched(grad, exc, msg):
    opt, w, state, _ = _setup("adam", {"learning_rate": 0.05})
    w0, t0, _ = _snapshot(w, state)
    ok = RowSparse(np.ones((1, 3), np.float32), [0], (8, 3))
    w2 = w.copy()
    s2 = opt.create_state(1, w2)
    with pytest.raises(exc, match=msg):
        opt.update([1, 0], [w2, w], [ok, grad], [s2, state])
    assert np.array_equal(w, w0) and np.array_equal(w2, w0) and opt.num_update == 0
    assert all(np.array_equal(v, t0[k]) for k, v in state.tensors.items())


def test_adagrad_row_sparse_requires_zero_wd():
    opt, w, state, _ = _setup("adagrad", {"learning_rate": 0.1, "wd": 0.1})
    w0 = w.copy()
    g = RowSparse(np.ones((1, 3), np.float32), [0], w.shape)
    with pytest.raises(ValueError, match="does not support weight decay"):
        opt.update(0, w, g, state)
    assert np.array_equal(w, w0) and opt.num_update == 0
    opt.set_wd_mult({0: 0.0})          # the parameter's own wd is what counts, as in MXNet
    opt.update(0, w, g, state)
    opt.update(0, w, g.todense(), state)  # dense gradients keep weight decay


# ---- the compiler side ---------------------------------------------------------------------------------
def _spec(sparse_line, update="weight -= lr * grad"):
    return f"optimizer Toy\nhyper flag: bool = true\nstate m = zeros\n{sparse_line}\nupdate {{\n    {update}\n}}\n"


def test_requires_clause_compiles_to_a_check():
    spec, _ = load_spec_text(_spec('sparse lazy if flag and not master_copy requires wd == 0 "no wd"'), "toy.opt")
    text = render_module(spec)
    assert "def _sparse_requires(self, wd, master_copy=False):" in text and "'no wd'" in text
    assert "def _kernel_rows(self, _step, rows, weight, grad" in text


@pytest.mark.parametrize("line,msg", [
    ('sparse lazy if lr > 0', "true/false test of hyperparameters"),
    ('sparse lazy requires lr == 0 "x"', "requires"),
    ('sparse standard requires wd == 0 "x"', "lazy"),
])
def test_bad_sparse_declarations(line, msg):
    with pytest.raises(SpecError, match=msg):
        load_spec_text(_spec(line), "toy.opt")


@pytest.mark.parametrize("lines,msg", [
    ('sparse standard\noption carry_rows("m")', "needs a `sparse lazy` declaration"),
    ('option carry_rows("m")', "needs a `sparse lazy` declaration"),
    ('sparse lazy\noption carry_rows("mm")', "names `mm`, which is not a tensor state"),
    ('sparse lazy\noption carry_rows(3)', "takes text arguments"),
])
def test_bad_carry_rows(lines, msg):
    with pytest.raises(SpecError, match=msg):
        load_spec_text(_spec(lines), "toy.opt")


def test_row_kernel_refuses_mixed_reductions():
    """A compile error (codegen/verify.py) pointing at the reduction, before any emitter runs."""
    with pytest.raises(SpecError, match="cannot reduce over the weight or a state and the gradient together") as e:
        load_spec_text(_spec("sparse lazy", "n = norm(weight - grad)\n    weight -= lr * n * grad"), "toy.opt")
    assert "toy.opt:" in str(e.value) and "^^^^" in str(e.value)


def test_row_kernel_reduces_weight_over_the_full_tensor():
    text = render_module(load_spec_text(_spec("sparse lazy", "n = norm(weight)\n    weight -= lr * n * grad"),
                                        "toy.opt")[0])
    rows = text[text.index("def _kernel_rows"):]
    assert "n = ops.norm(weight)" in rows and "weight[rows] = weight_rows" in rows


def test_row_sparse_keeps_a_checked_copy_of_its_indices():
    """Changing the caller's index array after construction cannot send an update out of bounds (the
    row kernels index memory with it): the gradient holds its own read-only copy."""
    rows = np.array([0, 2], np.int64)
    g = RowSparse(np.ones((2, 3), np.float32), rows, (4, 3))
    rows[1] = 10 ** 9
    assert g.indices.tolist() == [0, 2] and not g.indices.flags.writeable
    for backend in ("numpy", "native"):
        if backend == "native" and not optforge.native.available():
            continue
        opt = optforge.create("sgd", learning_rate=0.5)
        opt.backend = backend
        w = np.zeros((4, 3), np.float32)
        opt.update(0, w, g, opt.create_state(0, w))
        np.testing.assert_array_equal(w[[0, 2]], -0.5)
        np.testing.assert_array_equal(w[[1, 3]], 0)
    with pytest.raises(ValueError, match="index -1 is out of range"):
        RowSparse(np.ones((1, 3), np.float32), [-1], (4, 3))
    with pytest.raises(ValueError, match="out of range"):
        RowSparse(np.ones((1, 3), np.float32), np.array([2 ** 63], np.uint64), (4, 3))
