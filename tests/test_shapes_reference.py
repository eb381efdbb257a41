"""Shape-dependent specs (Adafactor, SM3) against references that do not come from optforge.

References
----------
* Adafactor: torch.optim.Adafactor itself (torch 2.13 CPU, the single-tensor implementation,
  `foreach=False`), run on the same weights and gradients. Weights are compared after every step,
  and the factored / full second moments (`row_var`, `col_var`, `variance`, same keepdims shapes
  as torch's) too. Hyperparameter names map as torch lr -> learning_rate, weight_decay -> wd,
  eps=(eps1, eps2) -> eps1, eps2 (eps1=None: the dtype's machine epsilon in both). The torch
  adapter (`optforge.torch.Optimizer(params, "adafactor")`) is checked against the same reference.
* SM3: a plain NumPy float64 reference written here from the paper / optax.sm3 definition, in the
  batched row/col cover the spec documents (a (..., R, C) view; a vector of n is one row, a scalar
  1 x 1). For vectors and matrices a literal transcription of optax's per-axis form
  (`optax.scale_by_sm3` then `-learning_rate`; optax is not installed) is checked to agree with
  the row/col reference, so that there the spec is optax's.

Every optforge class comes from `optforge.load_spec("specs/....opt")` (compiled in memory), never
from generated/. Each NumPy-array check runs on the "numpy" and the "native" backend.
"""
from __future__ import annotations

import functools
import io
import zlib
import warnings
from pathlib import Path

import numpy as np
import pytest

import optforge
from optforge import native

SPECS = Path(__file__).resolve().parents[1] / "specs"
STEPS = 6

BACKENDS = ["numpy", pytest.param("native", marks=pytest.mark.skipif(not native.available(),
                                                                     reason="no C++ compiler for the native backend"))]


def _load(name):
    """The class compiled in memory from specs/<name>.opt, registered under its name (replacing the
    generated one, if any, without the override warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is overriding existing optimizer", category=UserWarning)
        return optforge.load_spec(SPECS / f"{name}.opt")


@pytest.fixture(scope="module")
def Adafactor():
    return _load("adafactor")


@pytest.fixture(scope="module")
def SM3():
    return _load("sm3")


def _seed(*key) -> int:
    """A seed fixed by the test's parameters (str hashes vary between processes)."""
    return zlib.crc32(repr(key).encode())


def _make(cls, backend, **kw):
    opt = cls(**kw)
    opt.backend = backend
    return opt


def _randn(rng, shape, dtype=np.float64, scale=1.0):
    """An ndarray (0-d included: NumPy hands back a scalar for shape ())."""
    return np.asarray(scale * rng.standard_normal(shape), dtype=dtype)


def _grads(rng, shape, dtype=np.float64, steps=STEPS, scale=1.0):
    return [_randn(rng, shape, dtype, scale) for _ in range(steps)]


def _clip(g, c):
    return np.clip(g, -c, c) if c is not None and c > 0 else g


def _ours_run(opt, w0, grads):
    """(weight, {state name: array}) after each update of one parameter through opt.update."""
    w = w0.copy()
    s = opt.create_state(0, w)
    out = []
    for g in grads:
        opt.update(0, w, g.copy(), s)
        out.append((w.copy(), {k: np.array(v, copy=True) for k, v in s.tensors.items()}))
    return out


# ================================================================================================
# Adafactor vs torch.optim.Adafactor
# ================================================================================================
ADAFACTOR_SHAPES = [(7,), (), (5, 6), (3, 4, 5), (2, 1, 3, 4), (1, 9)]

# (id, our keyword arguments, scale of the initial weights)
ADAFACTOR_CASES = [
    ("defaults", {}, 1.0),
    ("lr-wd", dict(learning_rate=0.05, wd=0.1), 1.0),
    ("lr-1", dict(learning_rate=1.0), 1.0),                     # rho_t = 1 / sqrt(t) < lr from step 2
    ("eps1-large", dict(eps1=0.3, eps2=1e-2), 1.0),             # eps1^2 floors some variance estimates
    ("eps1-tiny-eps2-floor", dict(eps1=1e-30, eps2=1e-2), 1e-3),  # rms(weight) < eps2: the floor is used
    ("d-1.2", dict(d=1.2), 1.0),                                # a larger clipping threshold
    ("d-2", dict(d=2.0), 1.0),
    ("beta2_decay", dict(beta2_decay=-0.5), 1.0),
    ("maximize", dict(maximize=True, learning_rate=0.02), 1.0),
    ("rescale-clip", dict(rescale_grad=0.5, clip_gradient=0.4), 1.0),  # torch gets clip(0.5 g, 0.4)
]


def _torch_kwargs(kw):
    """torch.optim.Adafactor's arguments for our keyword arguments, the `d` to set after construction
    (torch rejects d < 1 in its constructor; its update is defined for any d > 0), and the
    gradient transform (rescale_grad, clip_gradient: optforge-only) applied before torch sees it."""
    kw = dict(kw)
    tkw = {"foreach": False}
    if "learning_rate" in kw:
        tkw["lr"] = kw.pop("learning_rate")
    if "wd" in kw:
        tkw["weight_decay"] = kw.pop("wd")
    if "eps1" in kw or "eps2" in kw:
        tkw["eps"] = (kw.pop("eps1", None), kw.pop("eps2", 1e-3))
    d_after = None
    if "d" in kw:
        d = kw.pop("d")
        if d >= 1:
            tkw["d"] = d
        else:
            d_after = d
    for k in ("beta2_decay", "maximize"):
        if k in kw:
            tkw[k] = kw.pop(k)
    rescale, clip = kw.pop("rescale_grad", 1.0), kw.pop("clip_gradient", None)
    assert not kw, f"no torch mapping for {sorted(kw)}"
    return tkw, d_after, (lambda g: _clip(rescale * g, clip))


def _torch_adafactor_run(w0, grads, kw):
    """(weight, {state name: array}) after each torch.optim.Adafactor step."""
    torch = pytest.importorskip("torch")
    tkw, d_after, transform = _torch_kwargs(kw)
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = torch.optim.Adafactor([p], **tkw)
    if d_after is not None:
        opt.param_groups[0]["d"] = d_after
    out = []
    for g in grads:
        p.grad = torch.from_numpy(np.array(transform(g), dtype=g.dtype).reshape(g.shape))
        opt.step()
        state = {k: v.detach().numpy().copy() for k, v in opt.state[p].items() if k != "step"}
        out.append((p.detach().numpy().copy(), state))
    return out


def _compare_runs(ours, ref, rtol, atol, what=""):
    assert len(ours) == len(ref)
    for t, ((w, s), (rw, rs)) in enumerate(zip(ours, ref), 1):
        np.testing.assert_allclose(w, rw, rtol=rtol, atol=atol, err_msg=f"{what} weight after step {t}")
        assert set(s) == set(rs), f"{what} state names {sorted(s)} vs torch's {sorted(rs)}"
        for k in rs:
            assert s[k].shape == rs[k].shape, f"{what} {k}: shape {s[k].shape} vs torch's {rs[k].shape}"
            np.testing.assert_allclose(s[k], rs[k], rtol=rtol, atol=atol, err_msg=f"{what} {k} after step {t}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw, wscale", ADAFACTOR_CASES, ids=[c[0] for c in ADAFACTOR_CASES])
@pytest.mark.parametrize("shape", ADAFACTOR_SHAPES, ids=str)
def test_adafactor_matches_torch_float64(Adafactor, shape, case, kw, wscale, backend):
    pytest.importorskip("torch")
    rng = np.random.default_rng(_seed(shape, case))
    w0 = _randn(rng, shape, scale=wscale)
    grads = _grads(rng, shape)
    ours = _ours_run(_make(Adafactor, backend, **kw), w0, grads)
    ref = _torch_adafactor_run(w0, grads, kw)
    _compare_runs(ours, ref, rtol=1e-10, atol=1e-14, what=f"{shape} {case} {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw", [("defaults", {}), ("lr-wd", dict(learning_rate=0.05, wd=0.1)),
                                      ("d-1.2", dict(d=1.2))], ids=["defaults", "lr-wd", "d-1.2"])
@pytest.mark.parametrize("shape", [(7,), (5, 6), (3, 4, 5)], ids=str)
def test_adafactor_matches_torch_float32(Adafactor, shape, case, kw, backend):
    """float32 weights: eps1=None is float32's machine epsilon in both."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    w0 = _randn(rng, shape, np.float32)
    grads = _grads(rng, shape, np.float32)
    ours = _ours_run(_make(Adafactor, backend, **kw), w0, grads)
    assert all(w.dtype == np.float32 for w, _ in ours)
    ref = _torch_adafactor_run(w0, grads, kw)
    _compare_runs(ours, ref, rtol=1e-5, atol=1e-7, what=f"float32 {shape} {case} {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_adafactor_list_update_equals_one_by_one(Adafactor, backend):
    """One list update of mixed shapes (vector, scalar, matrix, batch of matrices) gives what
    separate updates give, states included."""
    rng = np.random.default_rng(3)
    shapes = [(7,), (), (5, 6), (3, 4, 5)]
    kw = dict(learning_rate=0.05, wd=0.1, beta2_decay=-0.5)
    w0 = [_randn(rng, s) for s in shapes]
    grads = [_grads(rng, s) for s in shapes]
    a, b = _make(Adafactor, backend, **kw), _make(Adafactor, backend, **kw)
    wa, wb = [w.copy() for w in w0], [w.copy() for w in w0]
    sa = [a.create_state(i, w) for i, w in enumerate(wa)]
    sb = [b.create_state(i, w) for i, w in enumerate(wb)]
    idx = list(range(len(shapes)))
    for t in range(STEPS):
        a.update(idx, wa, [g[t].copy() for g in grads], sa)
        for i in idx:
            b.update(i, wb[i], grads[i][t].copy(), sb[i])
        for i in idx:
            np.testing.assert_allclose(wa[i], wb[i], rtol=1e-12, atol=0, err_msg=f"param {i} step {t + 1}")
            for k in sb[i].tensors:
                np.testing.assert_allclose(sa[i].tensors[k], sb[i].tensors[k], rtol=1e-12, atol=0,
                                           err_msg=f"param {i} {k} step {t + 1}")
    # and the list update is torch's too
    for i, s in enumerate(shapes):
        ref = _torch_adafactor_run(w0[i], grads[i], kw)
        np.testing.assert_allclose(wa[i], ref[-1][0], rtol=1e-10, atol=1e-14, err_msg=f"param {i} vs torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(7,), (5, 6), (2, 3, 4)], ids=str)
def test_adafactor_float16_multi_precision(Adafactor, shape, backend):
    """float16 weights with multi_precision: the float32 master follows torch's float32 Adafactor on
    float32 copies, the state is float32, and the float16 weight is the master rounded."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    w16 = _randn(rng, shape, np.float16)
    g16 = _grads(rng, shape, np.float16)
    kw = dict(learning_rate=0.05, wd=0.1)
    opt = _make(Adafactor, backend, multi_precision=True, **kw)
    state = opt.create_state_multi_precision(0, w16)
    assert state.master is not None and state.master.dtype == np.float32
    assert all(v.dtype == np.float32 for v in state.tensors.values())
    ref = _torch_adafactor_run(w16.astype(np.float32), [g.astype(np.float32) for g in g16], kw)
    for t, (g, (rw, rs)) in enumerate(zip(g16, ref), 1):
        opt.update_multi_precision(0, w16, g.copy(), state)
        np.testing.assert_allclose(state.master, rw, rtol=1e-5, atol=1e-7, err_msg=f"master after step {t}")
        np.testing.assert_array_equal(w16, state.master.astype(np.float16), err_msg=f"float16 weight step {t}")
        for k in rs:
            np.testing.assert_allclose(state.tensors[k], rs[k], rtol=1e-5, atol=1e-7, err_msg=f"{k} step {t}")


@pytest.mark.parametrize("dump_optimizer", [False, True])
def test_adafactor_checkpoint_resume(Adafactor, dump_optimizer):
    """3 steps, checkpoint, a new updater continues 2 steps exactly as the original.

    Without the optimizer in the blob, set_states keeps the new updater's optimizer and its counters
    (as MXNet); Adafactor's update depends on t, so that optimizer starts at begin_num_update=3."""
    rng = np.random.default_rng(5)
    shapes = [(7,), (5, 6), (3, 4, 5), ()]
    kw = dict(learning_rate=0.05, wd=0.1, beta2_decay=-0.5)
    w = [_randn(rng, s) for s in shapes]
    grads = [_grads(rng, s, steps=5) for s in shapes]
    upd = optforge.get_updater(Adafactor(**kw))
    idx = list(range(len(shapes)))
    for t in range(3):
        upd(idx, [g[t].copy() for g in grads], w)
    blob = upd.get_states(dump_optimizer=dump_optimizer)
    upd2 = optforge.get_updater(Adafactor(**kw, begin_num_update=0 if dump_optimizer else 3))
    upd2.set_states(blob)
    assert set(upd2.states) == set(idx)
    for i, s in enumerate(shapes):
        layout = upd2.optimizer.state_layout(s)
        assert tuple(upd2.states[i].tensors) == layout.tensors
        for k, v in upd2.states[i].tensors.items():
            assert v.shape == layout.shape_of(k)
            np.testing.assert_array_equal(v, upd.states[i].tensors[k])
    w2 = [x.copy() for x in w]
    for t in range(3, 5):
        upd(idx, [g[t].copy() for g in grads], w)
        upd2(idx, [g[t].copy() for g in grads], w2)
    for i in idx:
        np.testing.assert_array_equal(w2[i], w[i], err_msg=f"param {i} after resuming")


# ---- the torch adapter ----------------------------------------------------------------------------
ADAPTER_CASES = [("defaults", {}), ("lr-wd-decay", dict(lr=0.05, weight_decay=0.1, beta2_decay=-0.5)),
                 ("eps-d-maximize", dict(lr=0.02, eps1=1e-30, eps2=1e-2, d=2.0, maximize=True))]


def _adapter_to_torch(kw):
    kw = dict(kw)
    if "eps1" in kw or "eps2" in kw:
        kw["eps"] = (kw.pop("eps1", None), kw.pop("eps2", 1e-3))
    return kw


def _linear(torch, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(5, 3).double()


def _adapter_step(torch, model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw", ADAPTER_CASES, ids=[c[0] for c in ADAPTER_CASES])
def test_adafactor_torch_adapter_matches_torch(Adafactor, case, kw, backend):
    torch = pytest.importorskip("torch")
    import optforge.torch as oft
    _load("adafactor")   # "adafactor" names the class under test
    ours_model, ref_model = _linear(torch), _linear(torch)
    ours = oft.Optimizer(ours_model.parameters(), "adafactor", backend=backend, **kw)
    assert ours.spec is Adafactor
    ref = torch.optim.Adafactor(ref_model.parameters(), foreach=False, **_adapter_to_torch(kw))
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 6):
        x, y = torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(16, 3, generator=gen,
                                                                                    dtype=torch.float64)
        _adapter_step(torch, ours_model, ours, x, y)
        _adapter_step(torch, ref_model, ref, x, y)
        for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-10, atol=1e-14,
                                       err_msg=f"{name} after step {t}")
            rs = {k: v for k, v in ref.state[q].items() if k != "step"}
            st = {k: v for k, v in ours.state[p].items() if isinstance(v, torch.Tensor)}
            assert set(st) == set(rs), f"{name}: states {sorted(st)} vs torch's {sorted(rs)}"
            for k in rs:
                assert tuple(st[k].shape) == tuple(rs[k].shape)
                np.testing.assert_allclose(st[k].numpy(), rs[k].numpy(), rtol=1e-10, atol=1e-14,
                                           err_msg=f"{name} {k} after step {t}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_adafactor_torch_adapter_state_dict_round_trip(Adafactor, backend):
    """state_dict through torch.save / torch.load(weights_only=True) into a fresh adapter on a copy of
    the model: both continue bit-identically."""
    torch = pytest.importorskip("torch")
    import optforge.torch as oft
    _load("adafactor")
    kw = dict(lr=0.05, weight_decay=0.1, beta2_decay=-0.5)
    model = _linear(torch)
    opt = oft.Optimizer(model.parameters(), "adafactor", backend=backend, **kw)
    gen = torch.Generator().manual_seed(2)
    data = [(torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(16, 3, generator=gen,
                                                                                  dtype=torch.float64))
            for _ in range(5)]
    for x, y in data[:3]:
        _adapter_step(torch, model, opt, x, y)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    model2 = _linear(torch, seed=123)
    model2.load_state_dict(model.state_dict())
    opt2 = oft.Optimizer(model2.parameters(), "adafactor", backend=backend, **kw)
    opt2.load_state_dict(sd)
    for p, q in zip(model.parameters(), model2.parameters()):
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(opt2.state[q][k], v), k
    for x, y in data[3:]:
        _adapter_step(torch, model, opt, x, y)
        _adapter_step(torch, model2, opt2, x, y)
    for (name, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), f"{name} differs after resuming"


# ================================================================================================
# SM3 vs a NumPy reference (paper / optax.sm3)
# ================================================================================================
def _sm3_view(shape):
    """The (..., rows, cols) view of a parameter: a vector of n is one row, a scalar 1 x 1."""
    return tuple(shape) if len(shape) >= 2 else (1, shape[0]) if len(shape) == 1 else (1, 1)


def sm3_ref(w, grads, lr, momentum, beta2, eps, wd=0.0, rescale=1.0, clip=None):
    """SM3 with one accumulator per row and per col of the (..., R, C) view (float64).
    Yields (weight, {"acc_row", "acc_col", "mom"}) in the view's shapes (mom: the weight's)."""
    shape = w.shape
    view = _sm3_view(shape)
    w = w.reshape(view).astype(np.float64)
    acc_row = np.zeros(view[:-1] + (1,))
    acc_col = np.zeros(view[:-2] + (1, view[-1]))
    mom = np.zeros(view)
    c = 1.0 if beta2 == 1 else 1.0 - beta2
    for g in grads:
        g = _clip(rescale * g.reshape(view), clip) + wd * w
        nu = c * g * g + beta2 * np.minimum(acc_row, acc_col)
        with np.errstate(all="ignore"):
            step = np.where(nu > 0, g / np.sqrt(nu + eps), 0.0)
        mom = momentum * mom + (1 - momentum) * step
        w = w - lr * mom
        acc_row = nu.max(axis=-1, keepdims=True)
        acc_col = nu.max(axis=-2, keepdims=True)
        yield w.reshape(shape), {"acc_row": acc_row, "acc_col": acc_col, "mom": mom.reshape(shape)}


def sm3_optax_ref(w, grads, lr, b1, b2, eps):
    """optax.sm3 (scale_by_sm3(b1, b2, eps) then scale(-lr)) transcribed literally to NumPy: one
    accumulator per dimension. For vectors and matrices only (optax has no accumulator for a scalar)."""
    assert w.ndim in (1, 2)
    w = w.astype(np.float64)
    mu = [np.zeros([s]) for s in w.shape]
    nu = np.zeros_like(w)

    def expanded_shape(shape, axis):
        return [1] * axis + [shape[axis]] + [1] * (len(shape) - axis - 1)

    def other_axes(idx, ndim):
        return tuple(list(range(idx)) + list(range(idx + 1, ndim)))

    for g in grads:
        mu_e = [np.reshape(mu[i], expanded_shape(g.shape, i)) for i in range(g.ndim)]
        coeffs = ((1.0 - b2) if b2 != 1.0 else 1.0, b2)
        if g.ndim < 2:
            accum = coeffs[0] * g ** 2 + coeffs[1] * mu_e[0]
        else:
            accum = coeffs[0] * g ** 2 + coeffs[1] * functools.reduce(np.minimum, mu_e)
        with np.errstate(all="ignore"):
            accum_inv_sqrt = np.where(accum > 0, 1.0 / np.sqrt(accum + eps), 0.0)
        up = g * accum_inv_sqrt
        nu = b1 * nu + (1 - b1) * up               # optax.update_moment(up, nu, b1, 1)
        w = w - lr * nu                             # optax.scale(-learning_rate)
        mu = [accum if g.ndim < 2 else np.max(accum, axis=other_axes(i, g.ndim)) for i in range(g.ndim)]
        yield w


SM3_SHAPES = [(6,), (4, 5), (2, 3, 4), ()]

# (id, our keyword arguments)
SM3_CASES = [
    ("mom0.9-beta1", dict(learning_rate=0.1, momentum=0.9, beta2=1.0)),
    ("mom0-beta1", dict(learning_rate=0.1, momentum=0.0, beta2=1.0)),
    ("mom0.9-beta0.95", dict(learning_rate=0.1, momentum=0.9, beta2=0.95)),
    ("mom0-beta0.95", dict(learning_rate=0.05, momentum=0.0, beta2=0.95)),
    ("eps0", dict(learning_rate=0.1, momentum=0.9, beta2=1.0, eps=0.0)),   # nu == 0 takes the where's 0
    ("wd-rescale-clip", dict(learning_rate=0.1, momentum=0.9, beta2=0.95, wd=0.01, rescale_grad=0.5,
                             clip_gradient=0.3)),
]


def _sm3_ref_kwargs(kw):
    return dict(lr=kw.get("learning_rate", 0.1), momentum=kw.get("momentum", 0.9), beta2=kw.get("beta2", 1.0),
                eps=kw.get("eps", 1e-8), wd=kw.get("wd", 0.0), rescale=kw.get("rescale_grad", 1.0),
                clip=kw.get("clip_gradient"))


def _sm3_grads(rng, shape):
    """Random gradients; in the first, the first row and the first col of every block are zero, so
    some second moments are exactly 0 (the `where(nu > 0, ...)` branch) and accumulators stay 0."""
    grads = _grads(rng, shape)
    g0 = grads[0].reshape(_sm3_view(shape))   # a view of grads[0]
    g0[..., 0, :] = 0
    g0[..., :, 0] = 0
    return grads


def _expected_sm3_shapes(shape):
    if len(shape) >= 2:
        return tuple(shape[:-1]) + (1,), tuple(shape[:-2]) + (1, shape[-1])
    if len(shape) == 1:
        return (1,), tuple(shape)
    return (), ()


@pytest.mark.parametrize("case, kw", [c for c in SM3_CASES if "wd" not in c[1]],
                         ids=[c[0] for c in SM3_CASES if "wd" not in c[1]])
@pytest.mark.parametrize("shape", [(6,), (4, 5), (1, 7), (3, 1)], ids=str)
def test_sm3_reference_is_optax_for_vectors_and_matrices(shape, case, kw):
    """The row/col reference equals optax's per-axis form where optax's cover is rows and cols."""
    rng = np.random.default_rng(17)
    w0 = _randn(rng, shape)
    grads = _sm3_grads(rng, shape)
    r = _sm3_ref_kwargs(kw)
    ours_ref = [w for w, _ in sm3_ref(w0, grads, **r)]
    optax = list(sm3_optax_ref(w0, grads, r["lr"], r["momentum"], r["beta2"], r["eps"]))
    for t, (a, b) in enumerate(zip(ours_ref, optax), 1):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15, err_msg=f"step {t}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw", SM3_CASES, ids=[c[0] for c in SM3_CASES])
@pytest.mark.parametrize("shape", SM3_SHAPES, ids=str)
def test_sm3_matches_reference(SM3, shape, case, kw, backend):
    rng = np.random.default_rng(_seed(shape, case))
    w0 = _randn(rng, shape)
    grads = _sm3_grads(rng, shape)
    opt = _make(SM3, backend, **kw)
    ours = _ours_run(opt, w0, grads)
    ref = list(sm3_ref(w0, grads, **_sm3_ref_kwargs(kw)))
    row_shape, col_shape = _expected_sm3_shapes(shape)
    for t, ((w, s), (rw, rs)) in enumerate(zip(ours, ref), 1):
        assert np.all(np.isfinite(w)), f"step {t}: non-finite weight"
        np.testing.assert_allclose(w, rw, rtol=1e-10, atol=1e-14, err_msg=f"weight after step {t}")
        assert set(s) == {"acc_row", "acc_col", "mom"}
        assert s["acc_row"].shape == row_shape and s["acc_col"].shape == col_shape and s["mom"].shape == shape
        for k in rs:
            np.testing.assert_allclose(s[k], rs[k].reshape(s[k].shape), rtol=1e-10, atol=1e-14,
                                       err_msg=f"{k} after step {t}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sm3_list_update_equals_reference(SM3, backend):
    rng = np.random.default_rng(23)
    kw = dict(learning_rate=0.1, momentum=0.9, beta2=0.95)
    w = [_randn(rng, s) for s in SM3_SHAPES]
    grads = [_sm3_grads(rng, s) for s in SM3_SHAPES]
    refs = [list(sm3_ref(w0, g, **_sm3_ref_kwargs(kw))) for w0, g in zip(w, grads)]
    opt = _make(SM3, backend, **kw)
    states = [opt.create_state(i, x) for i, x in enumerate(w)]
    idx = list(range(len(w)))
    for t in range(STEPS):
        opt.update(idx, w, [g[t].copy() for g in grads], states)
        for i in idx:
            np.testing.assert_allclose(w[i], refs[i][t][0], rtol=1e-10, atol=1e-14,
                                       err_msg=f"{SM3_SHAPES[i]} after step {t + 1}")


# ================================================================================================
# State shapes
# ================================================================================================
def test_sm3_state_shapes(SM3):
    opt = SM3()
    for shape in [(4, 5), (6,), (), (2, 3, 4), (1, 9)]:
        row_shape, col_shape = _expected_sm3_shapes(shape)
        layout = opt.state_layout(shape)
        assert layout.tensors == ("acc_row", "acc_col", "mom")
        assert layout.shapes == (row_shape, col_shape, tuple(shape))
        s = opt.create_state(0, np.zeros(shape))
        assert {k: v.shape for k, v in s.tensors.items()} == {"acc_row": row_shape, "acc_col": col_shape,
                                                              "mom": tuple(shape)}
    assert opt.state_layout((4, 5)).shape_of("acc_row") == (4, 1)
    assert opt.state_layout((4, 5)).shape_of("acc_col") == (1, 5)


def test_adafactor_state_shapes(Adafactor):
    opt = Adafactor()
    for shape in [(7,), ()]:
        layout = opt.state_layout(shape)
        assert layout.tensors == ("variance",) and layout.shapes == (tuple(shape),)
        s = opt.create_state(0, np.zeros(shape))
        assert list(s.tensors) == ["variance"] and s.tensors["variance"].shape == tuple(shape)
    for shape in [(4, 5), (1, 9), (3, 4, 5), (2, 1, 3, 4)]:
        row = tuple(shape[:-1]) + (1,)
        col = tuple(shape[:-2]) + (1, shape[-1])
        layout = opt.state_layout(shape)
        assert layout.tensors == ("row_var", "col_var") and layout.shapes == (row, col)
        s = opt.create_state(0, np.zeros(shape))
        assert {k: v.shape for k, v in s.tensors.items()} == {"row_var": row, "col_var": col}


def test_adafactor_rejects_a_clipping_threshold_below_one_as_torch_does(Adafactor):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="d"):
        torch.optim.Adafactor([torch.nn.Parameter(torch.zeros(2))], d=0.5)
    with pytest.raises(ValueError, match=r"Invalid d value: 0.5"):
        Adafactor(d=0.5)
