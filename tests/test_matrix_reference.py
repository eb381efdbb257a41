"""Muon (specs/muon.opt, matrix products in the language) against torch.optim.Muon / torch.optim.AdamW.

References
----------
* Matrices: torch.optim.Muon itself (torch 2.13 CPU), run on the same weights and gradients.
  torch runs Newton-Schulz in bfloat16 (`grad.bfloat16()` in `_zeropower_via_newtonschulz`);
  optforge runs it in the parameter's dtype. The reference therefore runs torch's own class with
  `torch.Tensor.bfloat16` patched to `clone()` (`_torch_without_bf16`), so that torch's whole
  algorithm runs in the parameter's dtype: float64 agrees to ~1e-12 relative, float32 to ~1e-5.
  One test runs torch unpatched and documents how far its bfloat16 iteration is from ours.
  Hyperparameter names map as learning_rate -> lr, wd -> weight_decay, (ns_a, ns_b, ns_c) ->
  ns_coefficients; rescale_grad / clip_gradient (optforge-only) transform the gradient before torch
  sees it; a parameter's lr_mult / wd_mult become torch's lr / weight_decay for it.
* A parameter of 3+ dims is compared with torch.optim.Muon on its (dim0, rest) view (torch refuses
  anything but 2-D; this is Keller Jordan's flattening, which the spec documents).
* Vectors and scalars: torch.optim.AdamW(lr, betas=(beta1, beta2), eps=adam_eps,
  weight_decay=wd, foreach=False).
* The torch adapter (`optforge.torch.Optimizer(params, "muon", ...)`) on a small MLP: torch Muon on
  its weight matrices plus torch AdamW on its biases.

Every optforge class comes from `optforge.load_spec("specs/muon.opt")` (compiled in memory), never
from generated/. Each NumPy-array check runs on the "numpy" and the "native" backend, and on the
CUDA backend (CuPy arrays) where CuPy and a device are present; without them the CUDA cases run on
the host stand-in tests/cuda/fakecupy through a pytest subprocess (as tests/test_cuda_runtime_host.py
runs tests/gpu).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

import optforge
from optforge import native

HERE = Path(__file__).resolve().parent
SPECS = HERE.parent / "specs"
FAKE_CUPY = HERE / "cuda" / "fakecupy"
STEPS = 10


def _find_cupy():
    """CuPy with a usable device (or the host stand-in, when it is first on the path), else None."""
    try:
        import cupy
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # noqa: BLE001 - not installed, no driver, no device
        return None


cupy = _find_cupy()

NATIVE = pytest.param("native", marks=pytest.mark.skipif(not native.available(),
                                                         reason="no C++ compiler for the native backend"))
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(cupy is None, reason="no CuPy / CUDA device (the host "
                                                                         "stand-in runs these cases)"))
BACKENDS = ["numpy", NATIVE, CUDA]
CPU_BACKENDS = ["numpy", NATIVE]   # the torch adapter's (CPU tensors)


def _load(name):
    """The class compiled in memory from specs/<name>.opt, registered under its name (replacing the
    generated one, if any, without the override warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is overriding existing optimizer", category=UserWarning)
        return optforge.load_spec(SPECS / f"{name}.opt")


@pytest.fixture(scope="module")
def Muon():
    return _load("muon")


def _seed(*key) -> int:
    """A seed fixed by the test's parameters (str hashes vary between processes)."""
    return zlib.crc32(repr(key).encode())


def _make(cls, backend, **kw):
    opt = cls(**kw)
    if backend != "cuda":          # the CUDA backend is chosen by the arrays (CuPy)
        opt.backend = backend
    return opt


def _randn(rng, shape, dtype=np.float64, scale=1.0):
    """An ndarray (0-d included: NumPy hands back a scalar for shape ())."""
    return np.asarray(scale * rng.standard_normal(shape), dtype=dtype)


def _grads(rng, shape, dtype=np.float64, steps=STEPS, scale=1.0):
    return [_randn(rng, shape, dtype, scale) for _ in range(steps)]


def _clip(g, c):
    return np.clip(g, -c, c) if c is not None and c > 0 else g


def _dev(a, backend):
    """`a` where the backend updates it: a CuPy copy for "cuda", a NumPy copy otherwise."""
    return cupy.asarray(a) if backend == "cuda" else np.array(a, copy=True)


def _host(a):
    """A NumPy copy of a NumPy or CuPy array."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy.asnumpy(a)
    return np.array(a, copy=True)


def _ours_run(opt, w0, grads, backend, index=0):
    """(weight, {state name: array}) after each update of one parameter through opt.update."""
    w = _dev(w0, backend)
    s = opt.create_state(index, w)
    out = []
    for g in grads:
        opt.update(index, w, _dev(g, backend), s)
        out.append((_host(w), {k: _host(v) for k, v in s.tensors.items()}))
    return out


# ---- the torch reference ---------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_without_bf16(torch):
    """torch.optim.Muon with its Newton-Schulz iteration in the input's dtype: `Tensor.bfloat16`
    (its only cast) becomes a copy while the context is open."""
    original = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self.clone()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = original


def _torch_kwargs(kw, ndim, lr_mult=1.0, wd_mult=1.0):
    """(torch class name, its keyword arguments, the gradient transform) for our keyword arguments
    and a parameter of `ndim` dimensions: Muon for matrices, AdamW for the rest."""
    kw = dict(kw)
    lr = kw.pop("learning_rate", 0.001) * lr_mult
    wd = kw.pop("wd", 0.1) * wd_mult
    rescale, clip = kw.pop("rescale_grad", 1.0), kw.pop("clip_gradient", None)
    muon_keys = ("momentum", "nesterov", "ns_a", "ns_b", "ns_c", "ns_steps", "eps", "adjust_lr_fn")
    adam_keys = ("beta1", "beta2", "adam_eps")
    muon = {k: kw.pop(k) for k in muon_keys if k in kw}
    adam = {k: kw.pop(k) for k in adam_keys if k in kw}
    assert not kw, f"no torch mapping for {sorted(kw)}"
    transform = lambda g: _clip(rescale * g, clip)  # noqa: E731
    if ndim >= 2:
        tkw = dict(lr=lr, weight_decay=wd)
        coeffs = (muon.pop("ns_a", 3.4445), muon.pop("ns_b", -4.7750), muon.pop("ns_c", 2.0315))
        tkw["ns_coefficients"] = coeffs
        tkw.update(muon)
        return "Muon", tkw, transform
    tkw = dict(lr=lr, weight_decay=wd, betas=(adam.get("beta1", 0.9), adam.get("beta2", 0.999)),
               eps=adam.get("adam_eps", 1e-8), foreach=False)
    return "AdamW", tkw, transform


def _torch_run(w0, grads, kw, lr_mult=1.0, wd_mult=1.0, bf16=False):
    """(weight, {state name: array}) after each step of torch.optim.Muon (a parameter of 2+ dims, as
    its (dim0, rest) view) or torch.optim.AdamW (fewer dims); states in the weight's shape."""
    torch = pytest.importorskip("torch")
    name, tkw, transform = _torch_kwargs(kw, w0.ndim, lr_mult, wd_mult)
    shape = w0.shape
    view = (shape[0], int(np.prod(shape[1:]))) if w0.ndim >= 2 else shape
    p = torch.nn.Parameter(torch.from_numpy(w0.reshape(view).copy()))
    opt = getattr(torch.optim, name)([p], **tkw)
    out = []
    ctx = contextlib.nullcontext() if bf16 else _torch_without_bf16(torch)
    with ctx:
        for g in grads:
            p.grad = torch.from_numpy(np.array(transform(g), dtype=g.dtype).reshape(view))
            opt.step()
            state = {k: v.detach().numpy().reshape(shape).copy() for k, v in opt.state[p].items() if k != "step"}
            out.append((p.detach().numpy().reshape(shape).copy(), state))
    return out


def _compare_runs(ours, ref, rtol, atol, what=""):
    assert len(ours) == len(ref)
    for t, ((w, s), (rw, rs)) in enumerate(zip(ours, ref), 1):
        assert np.all(np.isfinite(w)), f"{what} non-finite weight after step {t}"
        np.testing.assert_allclose(w, rw, rtol=rtol, atol=atol, err_msg=f"{what} weight after step {t}")
        assert set(s) == set(rs), f"{what} state names {sorted(s)} vs torch's {sorted(rs)}"
        for k in rs:
            assert s[k].shape == rs[k].shape, f"{what} {k}: shape {s[k].shape} vs torch's {rs[k].shape}"
            np.testing.assert_allclose(s[k], rs[k], rtol=rtol, atol=atol, err_msg=f"{what} {k} after step {t}")


def _moved(ours, ref, w0):
    """The largest relative difference of our total displacement w_T - w_0 from torch's."""
    d_ours, d_ref = ours - w0.astype(np.float64), ref - w0.astype(np.float64)
    return float(np.linalg.norm(d_ours - d_ref) / np.linalg.norm(d_ref))


# ================================================================================================
# Matrices vs torch.optim.Muon
# ================================================================================================
# tall, wide, square, larger, a row and a column (1 x n / n x 1: Gram matrices of one element)
MATRIX_SHAPES = [(16, 7), (7, 16), (9, 9), (64, 32), (1, 9), (9, 1)]

# (id, our keyword arguments, scale of the gradients)
MUON_CASES = [
    ("defaults", {}, 1.0),                                                      # lr 1e-3, wd 0.1
    ("lr-wd0", dict(learning_rate=0.02, wd=0.0), 1.0),
    ("no-nesterov", dict(learning_rate=0.02, nesterov=False), 1.0),
    ("match_rms_adamw", dict(learning_rate=0.02, wd=0.05, adjust_lr_fn="match_rms_adamw"), 1.0),
    ("momentum0", dict(learning_rate=0.02, momentum=0.0), 1.0),
    ("momentum0.5-no-nesterov-rms", dict(learning_rate=0.02, momentum=0.5, nesterov=False,
                                         adjust_lr_fn="match_rms_adamw"), 1.0),
    ("ns0", dict(learning_rate=0.02, ns_steps=0), 1.0),                         # X = U / ||U||
    ("ns1", dict(learning_rate=0.02, ns_steps=1, nesterov=False), 1.0),
    ("ns-coeffs", dict(learning_rate=0.02, ns_a=2.0, ns_b=-1.5, ns_c=0.5, ns_steps=3), 1.0),
    ("eps-floor", dict(learning_rate=0.02, eps=1e-3), 1e-5),                    # ||U|| < eps: the floor
    ("rescale-clip", dict(learning_rate=0.02, rescale_grad=0.5, clip_gradient=0.4), 1.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw, gscale", MUON_CASES, ids=[c[0] for c in MUON_CASES])
@pytest.mark.parametrize("shape", MATRIX_SHAPES, ids=str)
def test_muon_matches_torch_float64(Muon, shape, case, kw, gscale, backend):
    pytest.importorskip("torch")
    rng = np.random.default_rng(_seed(shape, case))
    w0 = _randn(rng, shape)
    grads = _grads(rng, shape, scale=gscale)
    ours = _ours_run(_make(Muon, backend, **kw), w0, grads, backend)
    ref = _torch_run(w0, grads, kw)
    _compare_runs(ours, ref, rtol=1e-12, atol=1e-14, what=f"{shape} {case} {backend}")
    assert _moved(ours[-1][0], ref[-1][0], w0) < 1e-12   # the steps themselves, not just the weights


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(16, 7), (1, 9), (5,)], ids=str)
def test_muon_lr_mult_wd_mult(Muon, shape, backend):
    """Per-parameter multipliers: parameter 3 gets lr * 2.5 and wd * 0.4 (torch: that lr and that
    weight decay), parameter 4 the plain ones; both through one optimizer."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(_seed("mult", shape))
    kw = dict(learning_rate=0.02, wd=0.2, adjust_lr_fn="match_rms_adamw")
    opt = _make(Muon, backend, **kw)
    opt.set_lr_mult({3: 2.5})
    opt.set_wd_mult({3: 0.4})
    for index, (lm, wm) in [(3, (2.5, 0.4)), (4, (1.0, 1.0))]:
        w0 = _randn(rng, shape)
        grads = _grads(rng, shape)
        ours = _ours_run(opt, w0, grads, backend, index=index)
        _compare_runs(ours, _torch_run(w0, grads, kw, lr_mult=lm, wd_mult=wm), rtol=1e-12, atol=1e-14,
                      what=f"{shape} index {index} {backend}")
        # and the multipliers are not a no-op: the plain torch run is far from parameter 3's
        if index == 3:
            plain = _torch_run(w0, grads, kw)
            assert _moved(ours[-1][0], plain[-1][0], w0) > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw", [("defaults", {}), ("lr-no-nesterov", dict(learning_rate=0.02, nesterov=False)),
                                      ("rms-ns3", dict(learning_rate=0.02, adjust_lr_fn="match_rms_adamw",
                                                       ns_steps=3))],
                         ids=["defaults", "lr-no-nesterov", "rms-ns3"])
@pytest.mark.parametrize("shape", [(16, 7), (7, 16), (9, 9), (64, 32)], ids=str)
def test_muon_matches_torch_float32(Muon, shape, case, kw, backend):
    """float32 weights, products accumulated in float32, vs torch's Muon in float32 (no bfloat16)."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(_seed("f32", shape, case))
    w0 = _randn(rng, shape, np.float32)
    grads = _grads(rng, shape, np.float32)
    ours = _ours_run(_make(Muon, backend, **kw), w0, grads, backend)
    assert all(w.dtype == np.float32 and all(v.dtype == np.float32 for v in s.values()) for w, s in ours)
    ref = _torch_run(w0, grads, kw)
    assert ref[-1][0].dtype == np.float32
    _compare_runs(ours, ref, rtol=1e-5, atol=1e-6, what=f"float32 {shape} {case} {backend}")
    # the steps too (bounded by float32's rounding of weights of ~1 moved by ~1e-2)
    assert _moved(ours[-1][0], ref[-1][0], w0) < 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(16, 7), (7, 16), (9, 9), (64, 32)], ids=str)
def test_muon_vs_torch_bfloat16_iteration(Muon, shape, dtype):
    """torch unpatched runs Newton-Schulz in bfloat16 (8 bits of mantissa); optforge runs it in the
    weight's dtype. After 3 steps our total displacement is within 3e-2 (relative) of torch's, and
    torch's own bfloat16 run is that far from its full-precision run too (so the patched reference
    above is the one to compare exactly)."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(_seed("bf16", shape))
    kw = dict(learning_rate=0.02)
    w0 = _randn(rng, shape, dtype)
    grads = _grads(rng, shape, dtype, steps=3)
    ours = _ours_run(_make(Muon, "numpy", **kw), w0, grads, "numpy")[-1][0]
    bf16 = _torch_run(w0, grads, kw, bf16=True)[-1][0]
    full = _torch_run(w0, grads, kw)[-1][0]
    assert bf16.dtype == dtype
    assert _moved(ours, bf16, w0) < 3e-2
    assert _moved(full, bf16, w0) > 1e-4              # bfloat16 really is a different computation
    assert _moved(ours, full, w0) < (1e-3 if dtype == np.float32 else 1e-12)


# ================================================================================================
# Vectors and scalars vs torch.optim.AdamW
# ================================================================================================
ADAMW_CASES = [
    ("defaults", {}),
    ("lr-wd", dict(learning_rate=0.05, wd=0.3)),
    ("betas-eps", dict(learning_rate=0.01, beta1=0.5, beta2=0.9, adam_eps=1e-3, wd=0.0)),
    ("beta1-0", dict(learning_rate=0.01, beta1=0.0, beta2=0.99)),
    ("rescale-clip", dict(learning_rate=0.01, rescale_grad=2.0, clip_gradient=0.5)),
    ("muon-hypers-ignored", dict(learning_rate=0.01, momentum=0.0, nesterov=False, ns_steps=0,
                                 adjust_lr_fn="match_rms_adamw")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw", ADAMW_CASES, ids=[c[0] for c in ADAMW_CASES])
@pytest.mark.parametrize("shape", [(7,), (1,), ()], ids=str)
def test_adamw_fallback_matches_torch_float64(Muon, shape, case, kw, backend):
    pytest.importorskip("torch")
    rng = np.random.default_rng(_seed("adamw", shape, case))
    w0 = _randn(rng, shape)
    grads = _grads(rng, shape, steps=12)
    ours = _ours_run(_make(Muon, backend, **kw), w0, grads, backend)
    ref = _torch_run(w0, grads, kw)
    _compare_runs(ours, ref, rtol=1e-12, atol=1e-14, what=f"{shape} {case} {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_fallback_matches_torch_float32(Muon, backend):
    pytest.importorskip("torch")
    rng = np.random.default_rng(31)
    kw = dict(learning_rate=0.01, wd=0.05)
    w0 = _randn(rng, (11,), np.float32)
    grads = _grads(rng, (11,), np.float32)
    ours = _ours_run(_make(Muon, backend, **kw), w0, grads, backend)
    assert ours[-1][0].dtype == np.float32
    _compare_runs(ours, _torch_run(w0, grads, kw), rtol=1e-5, atol=1e-7, what=f"float32 {backend}")


# ================================================================================================
# Parameters of 3+ dimensions: torch's Muon on the (dim0, rest) view
# ================================================================================================
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw", [("lr", dict(learning_rate=0.02)),
                                      ("rms-no-nesterov", dict(learning_rate=0.02, nesterov=False,
                                                               adjust_lr_fn="match_rms_adamw", wd=0.0))],
                         ids=["lr", "rms-no-nesterov"])
@pytest.mark.parametrize("shape", [(6, 3, 2, 2), (16, 3, 1, 1), (2, 3, 4), (12, 2, 3)], ids=str)
def test_muon_conv_kernels_match_torch_on_the_flattened_view(Muon, shape, case, kw, backend):
    """(6, 3, 2, 2) is a 6 x 12 matrix (wide), (16, 3, 1, 1) 16 x 3 (tall), (2, 3, 4) 2 x 12, (12, 2, 3)
    12 x 6; the ratio comes from the view's shape. The momentum buffer keeps the weight's shape."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(_seed("conv", shape, case))
    w0 = _randn(rng, shape)
    grads = _grads(rng, shape)
    ours = _ours_run(_make(Muon, backend, **kw), w0, grads, backend)
    assert ours[0][1]["momentum_buffer"].shape == shape
    _compare_runs(ours, _torch_run(w0, grads, kw), rtol=1e-12, atol=1e-14, what=f"{shape} {case} {backend}")


# ================================================================================================
# List updates, multi-precision
# ================================================================================================
LIST_SHAPES = [(16, 7), (7,), (9, 9), (), (6, 3, 2, 2), (7, 16), (1,)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_update_equals_one_by_one_and_torch(Muon, backend):
    """One list update of matrices, vectors, a scalar and a conv kernel gives what separate updates
    give (states included), and both are torch's Muon / AdamW."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    kw = dict(learning_rate=0.02, wd=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    w0 = [_randn(rng, s) for s in LIST_SHAPES]
    grads = [_grads(rng, s) for s in LIST_SHAPES]
    a, b = _make(Muon, backend, **kw), _make(Muon, backend, **kw)
    wa, wb = [_dev(w, backend) for w in w0], [_dev(w, backend) for w in w0]
    sa = [a.create_state(i, w) for i, w in enumerate(wa)]
    sb = [b.create_state(i, w) for i, w in enumerate(wb)]
    idx = list(range(len(LIST_SHAPES)))
    refs = [_torch_run(w, g, kw) for w, g in zip(w0, grads)]
    for t in range(STEPS):
        a.update(idx, wa, [_dev(g[t], backend) for g in grads], sa)
        for i in idx:
            b.update(i, wb[i], _dev(grads[i][t], backend), sb[i])
        for i in idx:
            what = f"param {i} {LIST_SHAPES[i]} step {t + 1}"
            np.testing.assert_allclose(_host(wa[i]), _host(wb[i]), rtol=1e-12, atol=0, err_msg=what)
            for k in sb[i].tensors:
                np.testing.assert_allclose(_host(sa[i].tensors[k]), _host(sb[i].tensors[k]), rtol=1e-12, atol=0,
                                           err_msg=f"{what} {k}")
            rw, rs = refs[i][t]
            np.testing.assert_allclose(_host(wa[i]), rw, rtol=1e-12, atol=1e-14, err_msg=f"{what} vs torch")
            assert set(sa[i].tensors) == set(rs)
            for k in rs:
                np.testing.assert_allclose(_host(sa[i].tensors[k]), rs[k], rtol=1e-12, atol=1e-14,
                                           err_msg=f"{what} {k} vs torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(16, 7), (7, 16), (6, 3, 2, 2), (7,)], ids=str)
def test_float16_multi_precision(Muon, shape, backend):
    """float16 weights with multi_precision: the float32 master follows torch's float32 Muon / AdamW
    (no bfloat16) on float32 copies, the state is float32, and the float16 weight is the master
    rounded."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(_seed("mp", shape))
    w16 = _randn(rng, shape, np.float16)
    g16 = _grads(rng, shape, np.float16)
    kw = dict(learning_rate=0.02, wd=0.1)
    opt = _make(Muon, backend, multi_precision=True, **kw)
    w = _dev(w16, backend)
    state = opt.create_state_multi_precision(0, w)
    assert state.master is not None and state.master.dtype == np.float32
    assert all(v.dtype == np.float32 for v in state.tensors.values())
    ref = _torch_run(w16.astype(np.float32), [g.astype(np.float32) for g in g16], kw)
    for t, (g, (rw, rs)) in enumerate(zip(g16, ref), 1):
        opt.update_multi_precision(0, w, _dev(g, backend), state)
        master = _host(state.master)
        np.testing.assert_allclose(master, rw, rtol=1e-5, atol=1e-6, err_msg=f"master after step {t}")
        np.testing.assert_array_equal(_host(w), master.astype(np.float16), err_msg=f"float16 weight step {t}")
        for k in rs:
            np.testing.assert_allclose(_host(state.tensors[k]), rs[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} step {t}")
    assert _moved(master, ref[-1][0], w16) < 1e-3


# ================================================================================================
# Checkpoints and state layouts
# ================================================================================================
def test_state_layout(Muon):
    opt = Muon()
    for shape in [(16, 7), (1, 9), (6, 3, 2, 2), (2, 3, 4)]:
        layout = opt.state_layout(shape)
        assert layout.tensors == ("momentum_buffer",) and layout.shapes == (tuple(shape),)
        assert layout.shape_of("momentum_buffer") == tuple(shape) and layout.scalars == ()
        s = opt.create_state(0, np.zeros(shape))
        assert {k: v.shape for k, v in s.tensors.items()} == {"momentum_buffer": tuple(shape)}
    for shape in [(7,), (1,), ()]:
        layout = opt.state_layout(shape)
        assert layout.tensors == ("exp_avg", "exp_avg_sq") and layout.shapes == (tuple(shape),) * 2
        s = opt.create_state(0, np.zeros(shape))
        assert {k: v.shape for k, v in s.tensors.items()} == {"exp_avg": tuple(shape), "exp_avg_sq": tuple(shape)}
        assert all(not v.any() for v in s.tensors.values())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dump_optimizer", [False, True])
def test_checkpoint_resume(Muon, dump_optimizer, backend):
    """3 steps, checkpoint, a new updater continues 4 steps exactly as the original; the result is
    torch's 7 steps. Without the optimizer in the blob, set_states keeps the new updater's optimizer
    and its counters (as MXNet); the AdamW branch depends on t, so that one starts at
    begin_num_update=3. The backend is a choice of the process, not part of the checkpoint: an
    optimizer restored from the blob follows OPTFORGE_BACKEND (auto) until it is set again."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    shapes = [(16, 7), (7,), (6, 3, 2, 2), (), (7, 16)]
    kw = dict(learning_rate=0.02, wd=0.1, nesterov=False, adjust_lr_fn="match_rms_adamw")
    w0 = [_randn(rng, s) for s in shapes]
    w = [x.copy() for x in w0]
    grads = [_grads(rng, s, steps=7) for s in shapes]
    upd = optforge.get_updater(_make(Muon, backend, **kw))
    idx = list(range(len(shapes)))
    for t in range(3):
        upd(idx, [g[t].copy() for g in grads], w)
    blob = upd.get_states(dump_optimizer=dump_optimizer)
    upd2 = optforge.get_updater(_make(Muon, backend, **kw, begin_num_update=0 if dump_optimizer else 3))
    upd2.set_states(blob)
    upd2.optimizer.backend = backend
    assert set(upd2.states) == set(idx)
    for i, s in enumerate(shapes):
        layout = upd2.optimizer.state_layout(s)
        assert tuple(upd2.states[i].tensors) == layout.tensors
        assert layout.tensors == (("momentum_buffer",) if len(s) >= 2 else ("exp_avg", "exp_avg_sq"))
        for k, v in upd2.states[i].tensors.items():
            assert v.shape == layout.shape_of(k) == s
            np.testing.assert_array_equal(v, upd.states[i].tensors[k])
    w2 = [x.copy() for x in w]
    for t in range(3, 7):
        upd(idx, [g[t].copy() for g in grads], w)
        upd2(idx, [g[t].copy() for g in grads], w2)
    for i in idx:
        np.testing.assert_array_equal(w2[i], w[i], err_msg=f"param {i} after resuming")
        ref = _torch_run(w0[i], grads[i], kw)[-1]
        np.testing.assert_allclose(w2[i], ref[0], rtol=1e-12, atol=1e-14, err_msg=f"param {i} vs torch")
        for k in ref[1]:
            np.testing.assert_allclose(upd2.states[i].tensors[k], ref[1][k], rtol=1e-12, atol=1e-14,
                                       err_msg=f"param {i} {k} vs torch")


# ================================================================================================
# The torch adapter
# ================================================================================================
def _mlp(torch, seed=0, dtype=None):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model.to(dtype or torch.float64)


def _adapter_step(torch, model, opts, x, y):
    for o in opts:
        o.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()
    for o in opts:
        o.step()


def _reference_pair(torch, model, kw):
    """torch Muon on the model's matrices and torch AdamW on the rest, with the adapter's keywords."""
    ours = dict(kw)
    lr, wd = ours.pop("lr", 0.001), ours.pop("weight_decay", 0.1)
    mats = [p for p in model.parameters() if p.ndim >= 2]
    vecs = [p for p in model.parameters() if p.ndim < 2]
    _, mkw, _ = _torch_kwargs(dict(ours, learning_rate=lr, wd=wd), 2)
    _, akw, _ = _torch_kwargs(dict(ours, learning_rate=lr, wd=wd), 1)
    return [torch.optim.Muon(mats, **mkw), torch.optim.AdamW(vecs, **akw)]


ADAPTER_CASES = [("defaults", {}),
                 ("lr-wd-momentum", dict(lr=0.02, weight_decay=0.05, momentum=0.9, nesterov=False)),
                 ("rms-betas", dict(lr=0.01, adjust_lr_fn="match_rms_adamw", ns_steps=3, beta1=0.8, beta2=0.99,
                                    adam_eps=1e-6))]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case, kw", ADAPTER_CASES, ids=[c[0] for c in ADAPTER_CASES])
def test_torch_adapter_matches_torch_muon_and_adamw(Muon, case, kw, backend, dtype):
    torch = pytest.importorskip("torch")
    import optforge.torch as oft
    _load("muon")   # "muon" names the class under test
    tdtype = getattr(torch, dtype)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    ours_model, ref_model = _mlp(torch, dtype=tdtype), _mlp(torch, dtype=tdtype)
    ours = oft.Optimizer(ours_model.parameters(), "muon", backend=backend, **kw)
    assert ours.spec is Muon
    refs = _reference_pair(torch, ref_model, kw)
    gen = torch.Generator().manual_seed(1)
    with _torch_without_bf16(torch):
        for t in range(1, 9):
            x, y = torch.randn(16, 5, generator=gen, dtype=tdtype), torch.randn(16, 3, generator=gen, dtype=tdtype)
            _adapter_step(torch, ours_model, [ours], x, y)
            _adapter_step(torch, ref_model, refs, x, y)
            for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
                assert p.dtype == tdtype
                np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **tol,
                                           err_msg=f"{name} after step {t}")
                ref_state = next(r.state[q] for r in refs if q in r.state)
                rs = {k: v for k, v in ref_state.items() if k != "step"}
                st = {k: v for k, v in ours.state[p].items() if isinstance(v, torch.Tensor)}
                assert set(st) == set(rs), f"{name}: states {sorted(st)} vs torch's {sorted(rs)}"
                for k in rs:
                    assert tuple(st[k].shape) == tuple(rs[k].shape)
                    np.testing.assert_allclose(st[k].numpy(), rs[k].numpy(), **tol, err_msg=f"{name} {k} step {t}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_adapter_state_dict_round_trip(Muon, backend):
    """state_dict through torch.save / torch.load(weights_only=True) into a fresh adapter on a copy of
    the model: both continue bit-identically, and match torch Muon + AdamW."""
    torch = pytest.importorskip("torch")
    import optforge.torch as oft
    _load("muon")
    kw = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    model, ref_model = _mlp(torch), _mlp(torch)
    opt = oft.Optimizer(model.parameters(), "muon", backend=backend, **kw)
    refs = _reference_pair(torch, ref_model, kw)
    gen = torch.Generator().manual_seed(2)
    data = [(torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(16, 3, generator=gen,
                                                                                  dtype=torch.float64))
            for _ in range(7)]
    for x, y in data[:3]:
        _adapter_step(torch, model, [opt], x, y)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    model2 = _mlp(torch, seed=123)
    model2.load_state_dict(model.state_dict())
    opt2 = oft.Optimizer(model2.parameters(), "muon", backend=backend, **kw)
    opt2.load_state_dict(sd)
    for p, q in zip(model.parameters(), model2.parameters()):
        names = {k for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
        assert names == ({"momentum_buffer"} if p.ndim >= 2 else {"exp_avg", "exp_avg_sq"})
        for k in names:
            assert torch.equal(opt2.state[q][k], opt.state[p][k]), k
    for x, y in data[3:]:
        _adapter_step(torch, model, [opt], x, y)
        _adapter_step(torch, model2, [opt2], x, y)
    for (name, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), f"{name} differs after resuming"
    with _torch_without_bf16(torch):
        for x, y in data:
            _adapter_step(torch, ref_model, refs, x, y)
    for (name, p), q in zip(model2.named_parameters(), ref_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=f"{name} vs torch")


# ================================================================================================
# The CUDA cases on the host stand-in
# ================================================================================================
@pytest.mark.skipif(cupy is not None, reason="CuPy is present: the CUDA cases ran in this process")
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to run the CUDA kernels on the host")
def test_gpu_cases_pass_on_the_host_stand_in():
    """This file's CUDA-backend cases under tests/cuda/fakecupy (CuPy's argument and transfer rules,
    the generated .cu kernels run on the host)."""
    pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_CUPY), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore",
                        "-k", "cuda and not host_stand_in", str(Path(__file__))],
                       capture_output=True, text=True, env=env, timeout=600, cwd=HERE.parent)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-5000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 100 and "skipped" not in summary, summary
