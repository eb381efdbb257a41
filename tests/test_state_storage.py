"""State storage declared in the spec (`state m = zeros as bf16`, issue #16 part 2): the state is
stored in that type whatever the weight's, computed in the weight's type, rounded to nearest even
when stored. Checked against Adam written here from its paper with bfloat16-rounded moments (ml_dtypes
rounds), on every backend, with checkpoints, master copies, lazy rows and the torch adapter."""
import io
import warnings

import ml_dtypes
import numpy as np
import pytest

import optforge
from optforge import native

BF16 = np.dtype(ml_dtypes.bfloat16)
needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler")
BACKENDS = ["numpy", pytest.param("native", marks=needs_native)]

SPEC = """
optimizer AdamStored
doc "Adam, its moments stored in 16 bits."
hyper beta1: float = 0.9 in [0, 1)
hyper beta2: float = 0.999 in [0, 1)
hyper epsilon: float = 1e-8 in [0, inf)
hyper lazy_update: bool = true
state mean = zeros as {m}
state var = zeros as {v}
sparse lazy if lazy_update
update {{
    g = grad * rescale_grad + wd * weight
    mean = beta1 * mean + (1 - beta1) * g
    var = beta2 * var + (1 - beta2) * square(g)
    weight -= lr * sqrt(1 - beta2 ** t) / (1 - beta1 ** t) * mean / (sqrt(var) + epsilon)
}}
"""
STORED = {"bf16": BF16, "f16": np.dtype(np.float16), "f32": np.dtype(np.float32)}


def _cls(m="bf16", v="bf16"):
    return optforge.load_spec(SPEC.format(m=m, v=v))


def _reference(w, grads, lr, m_dtype, v_dtype, b1=0.9, b2=0.999, eps=1e-8, rows=None):
    """Adam (Kingma & Ba, 2015) in the weight's type, with each moment rounded to its storage type
    after every step: the semantics of a stored state."""
    dt = np.float64 if w.dtype == np.float64 else np.float32
    w = w.astype(dt)
    m = np.zeros_like(w).astype(m_dtype)
    v = np.zeros_like(w).astype(v_dtype)
    for t, g in enumerate(grads, 1):
        g = g.astype(dt)
        sel = slice(None) if rows is None else rows
        mw = dt(b1) * m[sel].astype(dt) + dt(1 - b1) * g[sel]
        vw = dt(b2) * v[sel].astype(dt) + dt(1 - b2) * g[sel] * g[sel]
        m[sel] = mw.astype(m_dtype)
        v[sel] = vw.astype(v_dtype)
        lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        w[sel] = w[sel] - dt(lr_t) * mw / (np.sqrt(vw) + dt(eps))
    return w, m, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,v", [("bf16", "bf16"), ("f16", "f32"), ("bf16", "f32")])
def test_stored_moments_match_adam_with_rounded_moments(backend, weight_dtype, m, v):
    cls = _cls(m, v)
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((9, 13)).astype(weight_dtype)
    grads = [rng.standard_normal((9, 13)).astype(weight_dtype) for _ in range(5)]
    opt = cls(learning_rate=0.01)
    opt.backend = backend
    w = w0.copy()
    s = opt.create_state(0, w)
    assert s.tensors["mean"].dtype == STORED[m] and s.tensors["var"].dtype == STORED[v]
    for g in grads:
        opt.update(0, w, g, s)
    rw, rm, rv = _reference(w0, grads, 0.01, STORED[m], STORED[v])
    # the native kernels contract a * b + c into one rounding: a stored value may differ by one unit
    # in its last place, and the weight by what that changes
    tol = 1e-12 if weight_dtype == np.float64 else 2e-6
    np.testing.assert_allclose(w, rw, rtol=tol, atol=tol)
    for got, want in ((s.tensors["mean"], rm), (s.tensors["var"], rv)):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2 ** -7, atol=1e-30)
        if got.dtype != np.float32:   # 16 bits: the same value but where the last bit of float32 decided
            assert np.mean(got.astype(np.float64) == want.astype(np.float64)) > 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_stored_state_with_a_master_copy_and_with_16_bit_weights(backend):
    cls = _cls("bf16", "bf16")
    rng = np.random.default_rng(1)
    for dtype, mp in ((np.float16, True), (BF16, False), (np.float16, False)):
        opt = cls(learning_rate=0.01, multi_precision=mp)
        opt.backend = backend
        w = rng.standard_normal(300).astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = opt.create_state_multi_precision(0, w)
        assert s.tensors["mean"].dtype == BF16 and (s.master is not None) == mp
        w0 = w.astype(np.float32)
        for _ in range(3):
            opt.update_multi_precision(0, w, rng.standard_normal(300).astype(dtype), s)
        assert np.all(np.isfinite(w.astype(np.float32))) and not np.array_equal(w.astype(np.float32), w0)


@needs_native
def test_native_and_numpy_store_the_same_bits():
    cls = _cls("bf16", "f16")
    out = {}
    for backend in ("numpy", "native"):
        rng = np.random.default_rng(2)
        opt = cls(learning_rate=0.01)
        opt.backend = backend
        ws = [rng.standard_normal(s).astype(np.float32) for s in ((40,), (6, 7), (70000,))]
        ss = [opt.create_state(i, w) for i, w in enumerate(ws)]
        for _ in range(3):
            opt.update(list(range(3)), ws, [rng.standard_normal(w.shape).astype(np.float32) for w in ws], ss)
        out[backend] = ws, ss
    for (wa, sa), (wb, sb) in zip(zip(*out["numpy"]), zip(*out["native"])):
        # (a last bit of a stored moment moves the step by up to 2^-8 of itself: lr 0.01 -> 4e-5)
        np.testing.assert_allclose(wa, wb, rtol=0, atol=5e-5)
        for k in ("mean", "var"):
            a, b = sa.tensors[k], sb.tensors[k]
            d = np.abs(a.view(np.uint16).astype(np.int64) - b.view(np.uint16).astype(np.int64))
            assert d.max() <= 4 and np.mean(d == 0) > 0.95   # (a few units where float16 is subnormal)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lazy_rows_of_stored_states(backend):
    cls = _cls("bf16", "bf16")
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((10, 5)).astype(np.float32)
    rows = np.array([2, 5, 9])
    grads = []
    opt = cls(learning_rate=0.01)
    opt.backend = backend
    w = w0.copy()
    s = opt.create_state(0, w)
    for _ in range(3):
        data = rng.standard_normal((3, 5)).astype(np.float32)
        full = np.zeros((10, 5), np.float32)
        full[rows] = data
        grads.append(full)
        opt.update(0, w, optforge.RowSparse(data, rows, (10, 5)), s)
    rw, rm, _ = _reference(w0, grads, 0.01, BF16, BF16, rows=rows)
    np.testing.assert_allclose(w, rw, rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(w[[0, 1, 3]], w0[[0, 1, 3]])
    assert s.tensors["mean"].dtype == BF16


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoints_keep_stored_types_and_resume_bit_exactly(backend):
    cls = _cls("bf16", "f16")
    rng = np.random.default_rng(4)
    opt = cls(learning_rate=0.01)
    opt.backend = backend
    up = optforge.get_updater(opt)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    gs = [rng.standard_normal((4, 6)).astype(np.float32) for _ in range(4)]
    up(0, gs[0], w)
    blob = up.get_states(dump_optimizer=True)
    w2 = w.copy()
    up(0, gs[1], w)
    up2 = optforge.get_updater(cls(learning_rate=0.01))
    up2.set_states(blob)
    up2.optimizer.backend = backend
    assert up2.states[0].tensors["mean"].dtype == BF16 and up2.states[0].tensors["var"].dtype == np.float16
    up2(0, gs[1], w2)
    np.testing.assert_array_equal(w, w2)
    # a checkpoint of another storage is refused, naming the tensor
    other = optforge.get_updater(_cls("f32", "f16")(learning_rate=0.01))
    with pytest.raises(ValueError, match="'mean' is stored as bfloat16"):
        other.set_states(up.get_states(dump_optimizer=False), allow_spec_change=True)


def test_a_state_of_the_wrong_storage_is_refused_before_anything_changes():
    cls = _cls("bf16", "bf16")
    opt = cls(learning_rate=0.01)
    w = np.ones(8, np.float32)
    s = opt.create_state(0, w)
    s.tensors["mean"] = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="expected bfloat16"):
        opt.update(0, w, np.ones(8, np.float32), s)
    assert opt.num_update == 0 and np.all(w == 1)


def test_torch_adapter_keeps_stored_states_in_their_type():
    torch = pytest.importorskip("torch")
    import optforge.torch as ot
    cls = _cls("bf16", "bf16")
    torch.manual_seed(0)
    p = torch.randn(32, 16, requires_grad=True)
    opt = ot.Optimizer([p], cls, lr=0.01)
    w0 = p.detach().numpy().copy()
    grads = [torch.randn(32, 16) for _ in range(3)]
    for g in grads:
        p.grad = g
        opt.step()
    assert opt.state[p]["mean"].dtype == torch.bfloat16
    rw, _, _ = _reference(w0, [g.numpy() for g in grads], 0.01, BF16, BF16)
    np.testing.assert_allclose(p.detach().numpy(), rw, rtol=2e-6, atol=2e-6)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    q = p.detach().clone().requires_grad_(True)
    opt2 = ot.Optimizer([q], cls, lr=0.01)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.state[q]["var"].dtype == torch.bfloat16
    g = torch.randn(32, 16)
    p.grad, q.grad = g, g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(p, q)


def test_state_storage_is_part_of_the_class_and_its_docs():
    cls = _cls("bf16", "f32")
    assert cls.state_storage == {"mean": "bfloat16", "var": "float32"}
    assert "``mean`` as bfloat16, ``var`` as float32" in cls.__doc__
