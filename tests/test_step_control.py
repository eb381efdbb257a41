"""Step control any spec gets without writing it (runtime/optimizer.py `grad_scale`): global
gradient-norm clipping (`max_grad_norm`), loss unscaling (`loss_scale`, torch.amp.GradScaler's
grad_scale) and skipping a step whose gradients hold inf/NaN (`skip_nonfinite`, GradScaler's
found_inf). References: torch.nn.utils.clip_grad_norm_ applied to the gradients before an
unclipped update; an unscaled run (a power-of-two loss scale unscales exactly); and for a skipped
step, the arrays and counters as they were, bit for bit."""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import optforge
from optforge import native

torch = pytest.importorskip("torch")

SHAPES = [(6, 5), (7,), (), (40, 300)]   # the last takes the chunked, multi-threaded paths
BACKENDS = ["numpy"] + (["native"] if native.available() else [])


def _problem(seed=0, steps=4, dtype=np.float64, scale=3.0):
    rng = np.random.default_rng(seed)
    ws = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    gs = [[np.asarray(rng.standard_normal(s) * scale, dtype) for s in SHAPES] for _ in range(steps)]
    return ws, gs


def _clipped(gs, max_norm):
    """torch's clip_grad_norm_ over the call's gradients (the reference)."""
    ts = [torch.tensor(g.copy()) for g in gs]
    for t in ts:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_norm_(ts, max_norm)
    return [t.grad.numpy() for t in ts]


def _run(name, ws, steps, backend, **kw):
    opt = optforge.create(name, **kw)
    opt.backend = backend
    ws = [w.copy() for w in ws]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    for gs in steps:
        opt.update(list(range(len(ws))), ws, gs, states)
    return ws, states, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, kw", [("adam", dict(learning_rate=0.01, wd=0.01)), ("lamb", dict(learning_rate=0.01)),
                                      ("sgd", dict(learning_rate=0.1, momentum=0.9)), ("prodigy", dict(d0=1e-3))])
def test_max_grad_norm_clips_as_clip_grad_norm(name, kw, backend):
    ws, steps = _problem()
    max_norm = 2.5
    got, _, opt = _run(name, ws, steps, backend, max_grad_norm=max_norm, **kw)
    want, _, _ = _run(name, ws, [_clipped(gs, max_norm) for gs in steps], backend, **kw)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # gradients below the bound are left alone
    small = [[np.asarray(g * 1e-3) for g in gs] for gs in steps]
    got, _, _ = _run(name, ws, small, backend, max_grad_norm=max_norm, **kw)
    want, _, _ = _run(name, ws, small, backend, **kw)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_in_float32_is_torchs(backend):
    ws, steps = _problem(dtype=np.float32)
    got, _, _ = _run("adam", ws, steps, backend, learning_rate=0.01, max_grad_norm=1.0)
    want, _, _ = _run("adam", ws, [_clipped(gs, 1.0) for gs in steps], backend, learning_rate=0.01)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _snapshot(opt, ws, states):
    return (copy.deepcopy([w.copy() for w in ws]), copy.deepcopy([{k: v.copy() for k, v in s.tensors.items()}
                                                                  for s in states]),
            copy.deepcopy([dict(s.scalars) for s in states]), dict(opt._index_update_count), opt.num_update,
            copy.deepcopy(opt._globals))


def _same(a, b):
    wa, ta, sa, ca, na, ga = a
    wb, tb, sb, cb, nb, gb = b
    for x, y in zip(wa, wb):
        assert x.tobytes() == y.tobytes()
    for x, y in zip(ta, tb):
        assert x.keys() == y.keys() and all(x[k].tobytes() == y[k].tobytes() for k in x)
    assert sa == sb and ca == cb and na == nb and ga == gb


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam", "lars", "prodigy", "nadam"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_nonfinite_gradient_skips_the_whole_step(name, backend, bad):
    ws, steps = _problem(steps=3)
    opt = optforge.create(name, skip_nonfinite=True, max_grad_norm=10.0)
    opt.backend = backend
    ws = [w.copy() for w in ws]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    opt.update(list(range(len(ws))), ws, steps[0], states)
    before = _snapshot(opt, ws, states)
    poisoned = [g.copy() for g in steps[1]]
    poisoned[3].reshape(-1)[1234] = bad   # one element of the large parameter
    opt.update(list(range(len(ws))), ws, poisoned, states)
    _same(_snapshot(opt, ws, states), before)
    assert opt.skipped_steps == 1
    opt.update(list(range(len(ws))), ws, steps[2], states)   # and training goes on
    assert opt.num_update == 2 and all(np.all(np.isfinite(w)) for w in ws)


def test_a_nonfinite_row_sparse_gradient_skips_too():
    opt = optforge.create("adam", skip_nonfinite=True)
    w = np.ones((6, 3))
    s = opt.create_state(0, w)
    data = np.ones((2, 3))
    data[1, 2] = np.nan
    opt.update(0, w, optforge.RowSparse(data, np.array([1, 4]), (6, 3)), s)
    assert np.all(w == 1) and opt.num_update == 0 and opt.skipped_steps == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_loss_scale_is_divided_out_exactly(backend):
    ws, steps = _problem()
    want, want_states, _ = _run("adam", ws, steps, backend, learning_rate=0.01)
    opt = optforge.create("adam", learning_rate=0.01)
    opt.backend = backend
    opt.loss_scale = 2.0 ** 14
    got = [w.copy() for w in ws]
    states = [opt.create_state(i, w) for i, w in enumerate(got)]
    for gs in steps:
        opt.update(list(range(len(got))), got, [np.asarray(g * 2.0 ** 14) for g in gs], states)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_the_updater_and_checkpoints_keep_step_control():
    opt = optforge.create("adam", max_grad_norm=1.5, skip_nonfinite=True)
    upd = optforge.get_updater(opt)
    w = np.ones(4)
    upd(0, np.array([np.inf, 0, 0, 0]), w)
    upd(0, np.full(4, 3.0), w)
    back = optforge.get_updater(optforge.create("adam"))
    back.set_states(upd.get_states(dump_optimizer=True))
    assert (back.optimizer.max_grad_norm, back.optimizer.skip_nonfinite, back.optimizer.skipped_steps) == (1.5, True, 1)


@pytest.mark.parametrize("kw, error", [(dict(max_grad_norm=0.0), ValueError), (dict(max_grad_norm=-1), ValueError),
                                       (dict(max_grad_norm=float("inf")), ValueError),
                                       (dict(skip_nonfinite="yes"), TypeError)])
def test_bad_step_control_arguments_are_refused(kw, error):
    with pytest.raises(error):
        optforge.create("adam", **kw)


def test_a_bad_loss_scale_is_refused_before_anything_changes():
    opt = optforge.create("adam")
    w = np.ones(3)
    s = opt.create_state(0, w)
    for bad in (0.0, -2.0, float("nan")):
        opt.loss_scale = bad
        with pytest.raises(ValueError, match="loss_scale"):
            opt.update(0, w, np.ones(3), s)
    assert opt.num_update == 0 and np.all(w == 1)


# ---- through optforge.torch --------------------------------------------------------------------------
def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (32,), generator=g)


def _loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_max_grad_norm_covers_every_param_group(backend):
    from optforge.torch import Optimizer
    x, y = _data()
    a, b = _model(), _model()
    groups = lambda m: [{"params": [m[0].weight, m[2].weight]},  # noqa: E731
                        {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0}]
    opt_a = Optimizer(groups(a), "adam", lr=0.05, weight_decay=0.01, backend=backend, max_grad_norm=0.3)
    opt_b = Optimizer(groups(b), "adam", lr=0.05, weight_decay=0.01, backend=backend)
    for _ in range(5):
        for m, o, clip in ((a, opt_a, False), (b, opt_b, True)):
            o.zero_grad()
            _loss(m, x, y).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(m.parameters(), 0.3)
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_grad_scaler_unscales_once_and_skips_inf_steps(backend):
    from optforge.torch import Optimizer
    x, y = _data()
    plain, scaled, unscaled = _model(), _model(), _model()
    opt_p = Optimizer(plain.parameters(), "adam", lr=0.05, backend=backend)
    opt_s = Optimizer(scaled.parameters(), "adam", lr=0.05, backend=backend)
    opt_u = Optimizer(unscaled.parameters(), "adam", lr=0.05, backend=backend)
    scaler_s = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000)
    scaler_u = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000)
    for step in range(4):
        opt_p.zero_grad()
        _loss(plain, x, y).backward()
        opt_p.step()
        # scaler.step: the scaler hands its scale to the optimizer, which divides it out in its kernels
        opt_s.zero_grad()
        scaler_s.scale(_loss(scaled, x, y)).backward()
        scaler_s.step(opt_s)
        scaler_s.update()
        # unscale_ first (e.g. to clip): the optimizer must not unscale again
        opt_u.zero_grad()
        scaler_u.scale(_loss(unscaled, x, y)).backward()
        scaler_u.unscale_(opt_u)
        scaler_u.step(opt_u)
        scaler_u.update()
    for p, q, r in zip(plain.parameters(), scaled.parameters(), unscaled.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)   # a power-of-two scale unscales exactly
    # an inf gradient: GradScaler's found_inf skips the step, nothing changes, the scale backs off
    before = [p.detach().clone() for p in scaled.parameters()]
    state_before = copy.deepcopy(opt_s.state_dict())
    opt_s.zero_grad()
    scaler_s.scale(_loss(scaled, x, y)).backward()
    next(scaled.parameters()).grad[0, 0] = float("inf")
    scale = scaler_s.get_scale()
    scaler_s.step(opt_s)
    scaler_s.update()
    assert opt_s.skipped_steps == 1 and scaler_s.get_scale() == scale * 0.5
    for p, b in zip(scaled.parameters(), before):
        assert torch.equal(p, b)
    after = opt_s.state_dict()
    assert after["optforge"]["groups"] == state_before["optforge"]["groups"]
    for k, entry in state_before["state"].items():
        for name, v in entry.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, after["state"][k][name])


def test_torch_skip_nonfinite_without_a_scaler():
    from optforge.torch import Optimizer
    x, y = _data()
    m = _model()
    opt = Optimizer(m.parameters(), "lamb", lr=0.01, skip_nonfinite=True)
    _loss(m, x, y).backward()
    opt.step()
    before = [p.detach().clone() for p in m.parameters()]
    opt.zero_grad()
    _loss(m, x, y).backward()
    m[2].bias.grad[1] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1 and all(torch.equal(p, b) for p, b in zip(m.parameters(), before))
    sd = opt.state_dict()
    assert sd["optforge"]["skipped_steps"] == 1
    opt2 = Optimizer(_model().parameters(), "lamb", lr=0.01, skip_nonfinite=True)
    opt2.load_state_dict(sd)
    assert opt2.skipped_steps == 1


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_adamw_with_max_grad_norm_is_the_clip_grad_norm_training_loop(backend, dtype, tol):
    """The canonical torch loop, clip_grad_norm_(model.parameters(), 1.0) then torch.optim.AdamW,
    against optforge's drop-in AdamW(max_grad_norm=1.0): the clipped spec against its reference."""
    from optforge.torch import AdamW
    x, y = _data()
    ref, ours = _model().to(dtype), _model().to(dtype)
    t_opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.1, amsgrad=True)
    o_opt = AdamW(ours.parameters(), lr=0.05, weight_decay=0.1, amsgrad=True, backend=backend, max_grad_norm=0.5)
    for _ in range(10):
        for m, o, clip in ((ref, t_opt, True), (ours, o_opt, False)):
            o.zero_grad()
            _loss(m, x.to(dtype), y).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            o.step()
    for p, q in zip(ref.parameters(), ours.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_float16_weights_with_a_float32_master(backend):
    """multi_precision: the float32 master takes the clipped step of the float32 update on the same
    (float16-valued) gradients, clipped by clip_grad_norm_, and the float16 weight is the master rounded."""
    rng = np.random.default_rng(5)
    shapes = [(6, 5), (300,)]
    start = [np.asarray(rng.standard_normal(s), np.float16) for s in shapes]
    steps = [[np.asarray(rng.standard_normal(s) * 4, np.float16) for s in shapes] for _ in range(3)]
    opt = optforge.create("adam", learning_rate=0.01, multi_precision=True, max_grad_norm=1.0)
    opt.backend = backend
    w16 = [w.copy() for w in start]
    states = [opt.create_state_multi_precision(i, w) for i, w in enumerate(w16)]
    for gs in steps:
        opt.update_multi_precision([0, 1], w16, gs, states)
    ref = optforge.create("adam", learning_rate=0.01)
    ref.backend = backend
    masters = [w.astype(np.float32) for w in start]
    rstates = [ref.create_state(i, w) for i, w in enumerate(masters)]
    for gs in steps:
        clipped = [np.asarray(c, np.float32) for c in _clipped([g.astype(np.float64) for g in gs], 1.0)]
        ref.update([0, 1], masters, clipped, rstates)
    for s, m, w in zip(states, masters, w16):
        np.testing.assert_allclose(s.master, m, rtol=2e-6, atol=1e-7)
        np.testing.assert_array_equal(w, s.master.astype(np.float16))


# ---- the native backend's norm: one call over the whole list (native.sum_squares_list) -------------
needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler: no native backend")


def _sum_squares64(arrays):
    """The reference: every element widened to float64, squared and summed."""
    return float(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in arrays))


def _mixed_list(seed=0):
    """float16/32/64, empty tensors, one tensor of several 65,536-element pieces and many tiny ones."""
    rng = np.random.default_rng(seed)
    out = [rng.standard_normal(300_001).astype(np.float32), np.zeros(0, np.float32), np.zeros((0, 3), np.float16)]
    for k in range(300):
        n = int(rng.integers(1, 40))
        dtype = (np.float32, np.float64, np.float16)[k % 3]
        out.append((rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3)).astype(dtype))
    out += [rng.standard_normal((70, 1000)).astype(np.float16), rng.standard_normal((513, 129))]
    return out


@needs_native
def test_the_native_norm_of_a_mixed_list_is_the_float64_sum():
    lib = native.library_for(type(optforge.create("adam")))
    arrays = _mixed_list()
    # float32 lanes of 256 elements per block, blocks in double: far inside 1e-6
    assert native.sum_squares_list(lib, arrays) == pytest.approx(_sum_squares64(arrays), rel=1e-6, abs=0)
    for a in arrays[:1] + arrays[-2:]:
        assert native.sum_squares_list(lib, [a]) == pytest.approx(_sum_squares64([a]), rel=1e-6, abs=0)
    assert native.sum_squares_list(lib, []) == 0.0 and native.sum_squares_list(lib, arrays[1:3]) == 0.0
    # every finite float16 value, subnormals included, squared exactly (one at a time: no rounding of a sum)
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    every = every[np.isfinite(every)]
    got = [native.sum_squares_list(lib, [every[i:i + 1]]) for i in range(0, every.size, 61)]
    assert got == [float(v) ** 2 for v in every[::61]]   # an 11-bit significand squared is exact in float32


@needs_native
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_the_native_norm_propagates_inf_and_nan(dtype, bad):
    lib = native.library_for(type(optforge.create("adam")))
    arrays = _mixed_list(1)
    for where in (0, 5, len(arrays) - 2):   # the large tensor's last piece, a tiny one, the float16 matrix
        poisoned = [a.copy() for a in arrays]
        poisoned[where] = poisoned[where].astype(dtype)
        poisoned[where].reshape(-1)[-1] = bad
        got = native.sum_squares_list(lib, poisoned)
        assert (np.isnan(got) if bad != bad else got == np.inf), (where, got)


@needs_native
def test_the_native_norm_does_not_depend_on_the_thread_count():
    """Pieces and blocks are fixed by the sizes: 1 and 2 OpenMP threads give the same bits (the list
    is large enough for the parallel loop)."""
    assert 1_000_003 + 200_000 + 150_001 + 50 * 4096 >= native.NORM_PARALLEL_MIN
    code = ("import numpy as np, optforge; from optforge import native\n"
            "rng = np.random.default_rng(7)\n"
            "xs = [rng.standard_normal(n).astype(d) for n, d in ((1_000_003, np.float32), (200_000, np.float16),"
            " (150_001, np.float64))] + [rng.standard_normal(4096).astype(np.float32) for _ in range(50)]\n"
            "lib = native.library_for(type(optforge.create('adam')))\n"
            "threads = native.openmp_threads(type(optforge.create('adam')))\n"
            "print(float.hex(native.sum_squares_list(lib, xs)), threads)\n")
    out = {}
    for n in ("1", "2"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": n}, timeout=600)
        assert r.returncode == 0, r.stderr
        out[n] = r.stdout.split()
    assert out["1"][1] == "1" and out["2"][1] == "2"
    assert out["1"][0] == out["2"][0]


@needs_native
def test_native_step_control_reads_the_list_in_one_call(monkeypatch):
    """A list update with clipping on the native backend: one native call for the contiguous NumPy
    gradients; a non-contiguous gradient (a view: validation lets gradients be views) and a
    row-sparse one's data are summed as well, and the step is clip_grad_norm_'s."""
    calls = []
    original = native.sum_squares_list
    monkeypatch.setattr(native, "sum_squares_list",
                        lambda lib, arrays: calls.append(len(arrays)) or original(lib, arrays))
    rng = np.random.default_rng(4)
    ws = [rng.standard_normal(s) for s in ((30, 20), (20, 30), (7,), (5000,))]
    steps = [[rng.standard_normal(w.shape) * 3 for w in ws] for _ in range(3)]
    views = [[g[0], np.ascontiguousarray(g[1].T).T, g[2], g[3]] for g in steps]   # grad 1: a transposed view
    assert not views[0][1].flags.c_contiguous
    got, _, _ = _run("adam", ws, views, "native", learning_rate=0.01, max_grad_norm=1.0)
    assert calls == [3, 3, 3]
    want, _, _ = _run("adam", ws, [_clipped(gs, 1.0) for gs in steps], "native", learning_rate=0.01)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # a row-sparse gradient: its rows count (the dense gradient with the other rows zero)
    opt = optforge.create("adam", learning_rate=0.01, max_grad_norm=0.5)
    opt.backend = "native"
    ref = optforge.create("adam", learning_rate=0.01)
    ref.backend = "native"
    w, w_ref = np.ones((6, 3)), np.ones((6, 3))
    s, s_ref = opt.create_state(0, w), ref.create_state(0, w_ref)
    data = rng.standard_normal((2, 3)) * 4
    opt.update(0, w, optforge.RowSparse(data, np.array([1, 4]), (6, 3)), s)
    dense = np.zeros((6, 3))
    dense[[1, 4]] = data
    ref.update(0, w_ref, _clipped([dense], 0.5)[0], s_ref)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12, atol=1e-14)
