"""Prodigy (specs/prodigy.opt) against prodigyopt 1.1.2's Prodigy itself, the reference
implementation of the paper: the same parameters and gradients, many steps, every option; float64
to 1e-12, float32 to 1e-5. Prodigy's step size `d` is a sum over all the parameters of an update
call (`global_sum`), so these are list updates: every parameter meets the others once per step."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (make install-torch) is not installed")
prodigyopt = pytest.importorskip("prodigyopt", reason="prodigyopt, the reference (optforge[test]), is not installed")

import optforge  # noqa: E402

SHAPES = [(6, 5), (7,), (), (40, 300)]   # the last takes the chunked and multi-threaded paths

CASES = {
    "defaults": {},
    "weight_decay": dict(weight_decay=0.1),
    "coupled_decay": dict(weight_decay=0.05, decouple=False),
    "no_first_moment": dict(betas=(0.0, 0.99), weight_decay=0.01),
    "bias_correction": dict(use_bias_correction=True),
    "safeguard_warmup": dict(safeguard_warmup=True, lr=0.5),
    "growth_and_coef": dict(growth_rate=1.05, d_coef=0.5, d0=1e-4, beta3=0.9, eps=1e-6),
}


def _ours(kw):
    """prodigyopt's arguments as the spec's."""
    out = {"learning_rate": kw.get("lr", 1.0), "wd": kw.get("weight_decay", 0.0)}
    if "betas" in kw:
        out["beta1"], out["beta2"] = kw["betas"]
    for k in ("beta3", "eps", "decouple", "use_bias_correction", "safeguard_warmup", "d0", "d_coef", "growth_rate"):
        if k in kw:
            out[k] = kw[k]
    return out


class _Problem:
    """A noisy quadratic, 1/2 |w - target|^2 per parameter: gradients point towards the target, so
    that Prodigy's distance estimate d grows. `grads(k, ws)` are those of step k at weights ws."""

    def __init__(self, dtype, seed=0, steps=25):
        rng = np.random.default_rng(seed)
        self.dtype, self.steps = dtype, steps
        self.ws = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        self.targets = [np.asarray(rng.standard_normal(s) * 3, dtype) for s in SHAPES]
        self.noise = [[np.asarray(rng.standard_normal(s) * 0.1, dtype) for s in SHAPES] for _ in range(steps)]

    def grads(self, k, ws):
        return [np.asarray(0.2 * (w - t) + n, self.dtype) for w, t, n in zip(ws, self.targets, self.noise[k])]


def _problem(dtype, seed=0, steps=25):
    return _Problem(dtype, seed, steps)


def _reference(prob, kw, count=None):
    params = [torch.tensor(w.copy()) for w in prob.ws[:count]]
    opt = prodigyopt.Prodigy(params, **kw)
    out, ds = [], []
    for k in range(prob.steps):
        gs = prob.grads(k, [p.detach().numpy() for p in params])
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g)   # (prodigyopt adds coupled decay to the gradient in place)
        opt.step()
        out.append([p.detach().numpy().copy() for p in params])
        ds.append((opt.param_groups[0]["d"], opt.param_groups[0]["d_max"]))
    return out, ds


def _run(prob, kw, backend, count=None, zero=False):
    opt = optforge.create("prodigy", **_ours(kw))
    opt.backend = backend
    ws = [w.copy() for w in prob.ws[:count]]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    out, ds = [], []
    for k in range(prob.steps):
        gs = [np.zeros_like(w) for w in ws] if zero else prob.grads(k, ws)
        opt.update(list(range(len(ws))), ws, gs, states)
        out.append([w.copy() for w in ws])
        ds.append((opt._globals["d"], opt._globals["d_max"]))
    return out, ds


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_float64_matches_prodigyopt(case, backend):
    prob = _problem(np.float64)
    ref, ref_d = _reference(prob, CASES[case])
    got, got_d = _run(prob, CASES[case], backend)
    # d, over every step, to 1e-12; the weights to 1e-12 of their scale over the first 8 steps, then
    # 1e-9: once d is large, a rounding difference of 1e-16 in a sum grows (without momentum the
    # step is nearly sign(g), so a gradient element near 0 flips it)
    np.testing.assert_allclose(np.array(got_d), np.array(ref_d), rtol=1e-12)
    for step, (r, g) in enumerate(zip(ref, got)):
        for a, b in zip(r, g):
            tol = (1e-12 if step < 8 else 1e-9) * max(1.0, float(np.max(np.abs(a))))
            np.testing.assert_allclose(b, a, rtol=0, atol=tol, err_msg=f"step {step + 1}")
    assert ref_d[-1][0] > 5 * CASES[case].get("d0", 1e-6)   # d has grown: the estimate is exercised


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_float32_matches_prodigyopt(backend):
    prob = _problem(np.float32, seed=3, steps=15)
    ref, _ = _reference(prob, dict(weight_decay=0.01))
    got, _ = _run(prob, dict(weight_decay=0.01), backend)
    for r, g in zip(ref, got):
        for a, b in zip(r, g):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_zero_gradients_change_nothing_but_the_moments():
    """Before any gradient (the sum of |s| is 0) prodigyopt returns early: no step, d unchanged."""
    prob = _problem(np.float64, steps=2)
    for backend in ("numpy", "native"):
        got, ds = _run(prob, dict(weight_decay=0.1), backend, zero=True)
        for w, w0 in zip(got[-1], prob.ws):
            np.testing.assert_array_equal(w, w0)
        assert ds[-1] == (1e-6, 1e-6)


def test_d_is_shared_by_the_parameters_of_a_call():
    """One parameter alone estimates its own d; in a list, every parameter steps with the list's."""
    prob = _problem(np.float64, steps=6)
    together, _ = _run(prob, {}, "native")
    alone, _ = _run(prob, {}, "native", count=1)
    assert not np.allclose(together[-1][0], alone[-1][0])
    ref, _ = _reference(prob, {}, count=1)
    np.testing.assert_allclose(alone[-1][0], ref[-1][0], rtol=1e-12)


def test_checkpoint_resumes_d_bit_exactly():
    prob = _problem(np.float64, steps=10)
    opt = optforge.create("prodigy", learning_rate=1.0, wd=0.01)
    upd = optforge.get_updater(opt)
    a = [w.copy() for w in prob.ws]
    for k in range(5):
        upd(list(range(len(a))), prob.grads(k, a), a)
    data = upd.get_states(dump_optimizer=True)
    saved = dict(opt._globals)
    b = [w.copy() for w in a]
    for k in range(5, 10):
        upd(list(range(len(a))), prob.grads(k, a), a)
    back = optforge.get_updater(optforge.create("prodigy"))
    back.set_states(data)
    assert back.optimizer._globals == saved and saved["d"] > 1e-6
    for k in range(5, 10):
        back(list(range(len(b))), prob.grads(k, b), b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_torch_adapter_matches_prodigyopt(backend):
    from optforge.torch import Optimizer
    prob = _problem(np.float64, steps=12)
    ref, _ = _reference(prob, dict(weight_decay=0.02))
    params = [torch.tensor(w.copy()) for w in prob.ws]
    opt = Optimizer(params, "prodigy", lr=1.0, weight_decay=0.02, backend=backend)
    for k in range(prob.steps):
        for p, g in zip(params, prob.grads(k, [p.detach().numpy() for p in params])):
            p.grad = torch.tensor(g)
        opt.step()
    for p, r in zip(params, ref[-1]):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_torch_param_groups_share_d_as_prodigyopt(backend):
    """prodigyopt sums over every param group and keeps one d; optforge.torch runs one optimizer per
    group, and a step is one update call over all of them (optimizer.update_together): every group
    meets the others and steps with the same d."""
    from optforge.torch import Optimizer
    prob = _problem(np.float64, steps=12)
    groups = lambda ps: [{"params": ps[:2], "weight_decay": 0.05}, {"params": ps[2:], "weight_decay": 0.0}]  # noqa: E731
    ref_params = [torch.tensor(w.copy()) for w in prob.ws]
    ref = prodigyopt.Prodigy(groups(ref_params), lr=1.0)
    params = [torch.tensor(w.copy()) for w in prob.ws]
    ours = Optimizer(groups(params), "prodigy", lr=1.0, backend=backend)
    for k in range(prob.steps):
        for ps in (ref_params, params):
            for p, g in zip(ps, prob.grads(k, [p.detach().numpy() for p in ps])):
                p.grad = torch.tensor(g)
        ref.step()
        ours.step()
    d = [o._globals["d"] for o in ours._opts]
    assert d[0] == d[1] and d[0] == pytest.approx(ref.param_groups[0]["d"], rel=1e-12) and d[0] > 1e-5
    for p, r in zip(params, ref_params):
        np.testing.assert_allclose(p.detach().numpy(), r.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_update_together_counts_nothing_unless_every_part_validates():
    from optforge.optimizer import update_together
    a, b = optforge.create("prodigy"), optforge.create("prodigy")
    wa, wb = np.ones(3), np.ones(4)
    sa, sb = a.create_state(0, wa), b.create_state(0, wb)
    with pytest.raises((ValueError, TypeError)):
        update_together([(a, [0], [wa], [np.ones(3)], [sa]), (b, [0], [wb], [np.ones(5)], [sb])])
    assert a.num_update == b.num_update == 0 and a._index_update_count == {} and np.all(wa == 1)
    with pytest.raises(ValueError, match="two parts"):
        update_together([(a, [0], [wa], [np.ones(3)], [sa]), (a, [1], [wb], [np.ones(4)], [sb])])
    update_together([(a, [0], [wa], [np.ones(3)], [sa]), (b, [0], [wb], [np.ones(4)], [sb])])
    assert a.num_update == b.num_update == 1 and a._globals == b._globals
