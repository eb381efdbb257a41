"""Shampoo (specs/shampoo.opt, matrix products and `repeat` loops in the language) against references
written here from the papers, in plain NumPy float64.

References
----------
* Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization" (ICML 2018),
  https://arxiv.org/abs/1802.09568, Algorithm 1 for a matrix: L_t = L_{t-1} + G G^T,
  R_t = R_{t-1} + G^T G, W -= lr L_t^(-1/4) G R_t^(-1/4), with the damping epsilon I added to each
  side (the spec's `root` generalises the 4).
* Anil, Gupta, Koren, Regan & Singer, "Scalable Second Order Optimization for Deep Learning" (2020),
  https://arxiv.org/abs/2002.09018, the coupled Newton iteration for A^(-1/p):
  z = (1 + p) / (2 ||A||_F), M_0 = z A, H_0 = z^(1/p) I, P_k = (1 + 1/p) I - M_k / p,
  H_{k+1} = H_k P_k, M_{k+1} = P_k^p M_k. `_inv_root_newton` writes it as the paper does (P^p by
  np.linalg.matrix_power, not the spec's p products in a loop), so agreement is to rounding
  (~1e-12 relative in float64), not bit-for-bit.
* The exact inverse root, `_inv_root_eigh`: (q * w^(-1/p)) q^T from np.linalg.eigh(A). With
  well-conditioned settings (epsilon 0.1, root_iters 40) optforge's iteration reaches it to ~1e-9
  relative: the spec's iteration really computes the inverse root.
* Vectors and scalars (ndim < 2): diagonal Adagrad, v += g^2, w -= lr g / sqrt(v + epsilon).
* Everywhere: g = clip(rescale_grad * grad, clip_gradient) first; decoupled weight decay
  w *= 1 - lr wd before the step when wd != 0; lr_mult / wd_mult scale lr / wd for their parameter.
* A parameter of 3+ dims is the matrix (dim0, product of the rest): (6, 3, 2, 2) keeps l (6, 6) and
  r (12, 12).
* The torch adapter (`optforge.torch.Optimizer(params, "shampoo", ...)`) on a tiny Linear model
  (a 4 x 5 matrix and a bias): a twin model whose gradients come from torch and whose steps are the
  NumPy reference's.

Every optforge class comes from `optforge.load_spec("specs/shampoo.opt")` (compiled in memory), never
from generated/. Each NumPy-array check runs on the "numpy" and the "native" backend, and on the
CUDA backend (CuPy arrays) where CuPy and a device are present; without them the CUDA cases run on
the host stand-in tests/cuda/fakecupy through a pytest subprocess (as tests/test_matrix_reference.py).
"""
from __future__ import annotations

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
STEPS = 5


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


def _grid(shapes, cases, cuda_per_case):
    """(shape, case id, keyword arguments, backend) for every shape, case and backend, except that
    the CUDA backend (slow on the host stand-in: every stage is a launch) takes `cuda_per_case`
    shapes per case, rotating, so that every shape and every case still runs there."""
    params = []
    for j, (cid, kw) in enumerate(cases):
        on_cuda = {tuple(shapes[(j * cuda_per_case + k) % len(shapes)]) for k in range(cuda_per_case)}
        for shape in shapes:
            for be in BACKENDS:
                name, marks = (be, ()) if isinstance(be, str) else (be.values[0], be.marks)
                if name == "cuda" and tuple(shape) not in on_cuda:
                    continue
                params.append(pytest.param(shape, cid, kw, name, marks=marks, id=f"{shape}-{cid}-{name}"))
    return params


def _load(name):
    """The class compiled in memory from specs/<name>.opt, registered under its name (replacing the
    generated one, if any, without the override warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is overriding existing optimizer", category=UserWarning)
        return optforge.load_spec(SPECS / f"{name}.opt")


@pytest.fixture(scope="module")
def Shampoo():
    return _load("shampoo")


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


# ---- the NumPy reference ----------------------------------------------------------------------------
def _inv_root_newton(a, p, iters):
    """A^(-1/p) by the coupled Newton iteration of Anil et al. (2020), as the paper writes it."""
    eye = np.eye(a.shape[0])
    z = (1.0 + p) / (2.0 * np.linalg.norm(a, "fro"))
    m, h = z * a, z ** (1.0 / p) * eye
    for _ in range(iters):
        pk = (1.0 + 1.0 / p) * eye - m / p
        h = h @ pk
        m = np.linalg.matrix_power(pk, p) @ m
    return h


def _inv_root_eigh(a, p):
    """The exact A^(-1/p) of a symmetric positive definite A."""
    w, q = np.linalg.eigh(a)
    return (q * w ** (-1.0 / p)) @ q.T


class _Reference:
    """One parameter's Shampoo (Gupta et al. 2018) in float64, from our keyword arguments; `inv` is
    "newton" (the coupled iteration, root_iters steps) or "eigh" (the exact inverse root)."""

    def __init__(self, shape, kw, lr_mult=1.0, wd_mult=1.0, inv="newton"):
        kw = dict(kw)
        self.lr = kw.pop("learning_rate", 0.1) * lr_mult
        self.wd = kw.pop("wd", 0.0) * wd_mult
        self.rescale, self.clip = kw.pop("rescale_grad", 1.0), kw.pop("clip_gradient", None)
        self.eps = kw.pop("epsilon", 1e-4)
        self.p = kw.pop("root", 4)
        self.iters = kw.pop("root_iters", 25)
        assert not kw, f"the reference has no {sorted(kw)}"
        self.shape, self.inv = tuple(shape), inv
        if len(shape) >= 2:
            self.view = (shape[0], int(np.prod(shape[1:])))
            self.state = {"l": np.zeros((self.view[0],) * 2), "r": np.zeros((self.view[1],) * 2)}
        else:
            self.view = self.shape
            self.state = {"v": np.zeros(self.shape)}

    def _root(self, a):
        a = a + self.eps * np.eye(a.shape[0])
        return _inv_root_newton(a, self.p, self.iters) if self.inv == "newton" else _inv_root_eigh(a, self.p)

    def step(self, w, grad):
        """The updated weight (float64, w's shape) and a copy of the states."""
        w = np.array(w, dtype=np.float64).reshape(self.view)
        g = _clip(self.rescale * np.asarray(grad, dtype=np.float64), self.clip).reshape(self.view)
        if self.wd != 0:
            w = w * (1.0 - self.lr * self.wd)
        if len(self.shape) >= 2:
            self.state["l"] += g @ g.T
            self.state["r"] += g.T @ g
            w = w - self.lr * (self._root(self.state["l"]) @ g @ self._root(self.state["r"]))
        else:
            self.state["v"] += g * g
            w = w - self.lr * g / np.sqrt(self.state["v"] + self.eps)
        return w.reshape(self.shape), {k: v.copy() for k, v in self.state.items()}


def _ref_run(w0, grads, kw, lr_mult=1.0, wd_mult=1.0, inv="newton"):
    """(weight, {state name: array}) after each reference step, all float64."""
    ref = _Reference(np.shape(w0), kw, lr_mult, wd_mult, inv)
    w, out = np.asarray(w0, dtype=np.float64), []
    for g in grads:
        w, s = ref.step(w, g)
        out.append((w, s))
    return out


def _compare_runs(ours, ref, rtol, atol, what=""):
    assert len(ours) == len(ref)
    for t, ((w, s), (rw, rs)) in enumerate(zip(ours, ref), 1):
        assert np.all(np.isfinite(w)), f"{what} non-finite weight after step {t}"
        assert w.shape == rw.shape
        np.testing.assert_allclose(w, rw, rtol=rtol, atol=atol, err_msg=f"{what} weight after step {t}")
        assert set(s) == set(rs), f"{what} state names {sorted(s)} vs the reference's {sorted(rs)}"
        for k in rs:
            assert s[k].shape == rs[k].shape, f"{what} {k}: shape {s[k].shape} vs the reference's {rs[k].shape}"
            np.testing.assert_allclose(s[k], rs[k], rtol=rtol, atol=atol * max(1.0, np.abs(rs[k]).max()),
                                       err_msg=f"{what} {k} after step {t}")


def _moved(ours, ref, w0):
    """The relative difference of our total displacement w_T - w_0 from the reference's."""
    d_ours, d_ref = ours - w0.astype(np.float64), ref - w0.astype(np.float64)
    return float(np.linalg.norm(d_ours - d_ref) / np.linalg.norm(d_ref))


def _rel(a, b):
    """max |a - b| / max |b|."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# ================================================================================================
# Matrices vs the coupled Newton iteration (float64, to rounding)
# ================================================================================================
# tall, wide, square, a row and a column (1 x n / n x 1: Gram matrices of one element), conv kernels
MATRIX_SHAPES = [(8, 5), (5, 8), (6, 6), (1, 7), (7, 1), (6, 3, 2, 2), (4, 2, 3)]

# (id, our keyword arguments)
NEWTON_CASES = [
    ("defaults", {}),                                               # lr 0.1, eps 1e-4, root 4, 25 iters
    ("eps0.1", dict(epsilon=0.1)),
    ("eps1e-8-lr", dict(epsilon=1e-8, learning_rate=0.01)),
    # Newton for the inverse; epsilon 1e-2, as root 1 amplifies rounding by cond(L + eps I) (with
    # epsilon 1e-4 and rank-deficient L, numpy/native differ from the reference by ~5e-12)
    ("root1", dict(root=1, epsilon=1e-2)),
    ("root2", dict(root=2, learning_rate=0.05)),
    ("iters0", dict(root_iters=0)),                                 # H = z^(1/p) I
    ("iters1", dict(root_iters=1)),
    ("root1-iters0", dict(root=1, root_iters=0)),
    ("root2-iters1-eps", dict(root=2, root_iters=1, epsilon=0.01)),
    ("wd", dict(learning_rate=0.05, wd=0.3)),
    ("rescale-clip", dict(rescale_grad=0.5, clip_gradient=0.3)),
    ("rescale-clip-wd-root2", dict(rescale_grad=2.0, clip_gradient=1.0, wd=0.1, root=2)),
]


@pytest.mark.parametrize("shape, case, kw, backend", _grid(MATRIX_SHAPES, NEWTON_CASES, 2))
def test_shampoo_matches_newton_reference_float64(Shampoo, shape, case, kw, backend):
    rng = np.random.default_rng(_seed(shape, case))
    w0 = _randn(rng, shape)
    grads = _grads(rng, shape)
    ours = _ours_run(_make(Shampoo, backend, **kw), w0, grads, backend)
    ref = _ref_run(w0, grads, kw)
    assert ours[0][1]["l"].shape == (shape[0],) * 2 and ours[0][1]["r"].shape == (int(np.prod(shape[1:])),) * 2
    _compare_runs(ours, ref, rtol=1e-12, atol=1e-13, what=f"{shape} {case} {backend}")
    assert _moved(ours[-1][0], ref[-1][0], w0) < 1e-12   # the steps themselves, not just the weights


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(8, 5), (1, 7), (6, 3, 2, 2), (5,)], ids=str)
def test_shampoo_lr_mult_wd_mult(Shampoo, shape, backend):
    """Per-parameter multipliers: parameter 3 gets lr * 2.5 and wd * 0.2, parameter 4 the plain
    ones; both through one optimizer. (wd_mult 0.2, not 0.4: 2.5 * 0.4 = 1 would keep lr * wd, the
    decay, unchanged.)"""
    rng = np.random.default_rng(_seed("mult", shape))
    kw = dict(learning_rate=0.04, wd=0.5, root=2)
    opt = _make(Shampoo, backend, **kw)
    opt.set_lr_mult({3: 2.5})
    opt.set_wd_mult({3: 0.2})
    for index, (lm, wm) in [(3, (2.5, 0.2)), (4, (1.0, 1.0))]:
        w0 = _randn(rng, shape)
        grads = _grads(rng, shape)
        ours = _ours_run(opt, w0, grads, backend, index=index)
        _compare_runs(ours, _ref_run(w0, grads, kw, lr_mult=lm, wd_mult=wm), rtol=1e-12, atol=1e-13,
                      what=f"{shape} index {index} {backend}")
        if index == 3:   # the multipliers are not a no-op
            assert _moved(ours[-1][0], _ref_run(w0, grads, kw)[-1][0], w0) > 0.1


# ================================================================================================
# Matrices vs the exact inverse root (np.linalg.eigh)
# ================================================================================================
@pytest.mark.parametrize("shape, case, root, backend",
                         _grid([(6, 4), (4, 6), (5, 5), (6, 3, 2, 2)], [(f"root{p}", p) for p in (1, 2, 4)], 1))
def test_shampoo_matches_exact_inverse_root(Shampoo, shape, case, root, backend):
    """epsilon 0.1 and 40 iterations: the iteration has converged, and optforge is Shampoo with the
    exact (L + eps I)^(-1/root) and (R + eps I)^(-1/root), to ~1e-9 (measured: ~1e-15)."""
    rng = np.random.default_rng(_seed("eigh", shape, root))
    kw = dict(epsilon=0.1, root_iters=40, root=root, learning_rate=0.05)
    w0 = _randn(rng, shape)
    grads = _grads(rng, shape, steps=4)
    ours = _ours_run(_make(Shampoo, backend, **kw), w0, grads, backend)
    exact = _ref_run(w0, grads, kw, inv="eigh")
    _compare_runs(ours, exact, rtol=1e-9, atol=1e-10, what=f"{shape} root {root} {backend} vs eigh")
    assert _moved(ours[-1][0], exact[-1][0], w0) < 1e-9
    # and the check has teeth: one Newton iteration is far from the exact root
    one = _ours_run(_make(Shampoo, backend, **dict(kw, root_iters=1)), w0, grads, backend)
    assert _moved(one[-1][0], exact[-1][0], w0) > 1e-2


def test_inverse_root_references_agree():
    """The two references themselves: the Newton iteration converges to the eigh root (and
    H^p A = I), so (a) and (b) test the same thing from two sides."""
    rng = np.random.default_rng(11)
    for n, p in [(5, 1), (6, 2), (7, 4), (3, 3)]:
        x = rng.standard_normal((n, n + 2))
        a = x @ x.T + 0.1 * np.eye(n)
        h = _inv_root_newton(a, p, 40)
        np.testing.assert_allclose(h, _inv_root_eigh(a, p), rtol=0, atol=1e-12 * np.abs(h).max())
        np.testing.assert_allclose(np.linalg.matrix_power(h, p) @ a, np.eye(n), rtol=0, atol=1e-11)


# ================================================================================================
# Vectors and scalars vs diagonal Adagrad
# ================================================================================================
ADAGRAD_CASES = [
    ("defaults", {}),
    ("lr-eps", dict(learning_rate=0.03, epsilon=0.5)),
    ("wd", dict(learning_rate=0.05, wd=0.3)),
    ("rescale-clip", dict(rescale_grad=2.0, clip_gradient=0.5)),
    ("matrix-hypers-ignored", dict(root=1, root_iters=0, learning_rate=0.02)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, kw", ADAGRAD_CASES, ids=[c[0] for c in ADAGRAD_CASES])
@pytest.mark.parametrize("shape", [(7,), (1,), ()], ids=str)
def test_adagrad_fallback_matches_reference_float64(Shampoo, shape, case, kw, backend):
    rng = np.random.default_rng(_seed("adagrad", shape, case))
    w0 = _randn(rng, shape)
    grads = _grads(rng, shape, steps=8)
    ours = _ours_run(_make(Shampoo, backend, **kw), w0, grads, backend)
    assert set(ours[0][1]) == {"v"} and ours[0][1]["v"].shape == shape
    _compare_runs(ours, _ref_run(w0, grads, kw), rtol=1e-12, atol=1e-14, what=f"{shape} {case} {backend}")


# ================================================================================================
# float32 vs the float64 reference
# ================================================================================================
F32_CASES = [("defaults", {}), ("eps0.1-iters40", dict(epsilon=0.1, root_iters=40)),
             ("root2-wd", dict(root=2, wd=0.1, learning_rate=0.05))]


@pytest.mark.parametrize("shape, case, kw, backend", _grid([(8, 5), (5, 8), (6, 6), (6, 3, 2, 2), (7,)], F32_CASES, 2))
def test_shampoo_float32_vs_float64_reference(Shampoo, shape, case, kw, backend):
    """float32 weights, the products and the iteration in float32, vs the float64 reference on the
    same (float32) inputs. Measured over 8 steps: weights within ~2e-6 of the largest weight, the
    displacement within ~1e-5; bounds 2e-5 / 1e-4."""
    rng = np.random.default_rng(_seed("f32", shape, case))
    w0 = _randn(rng, shape, np.float32)
    grads = _grads(rng, shape, np.float32, steps=8)
    ours = _ours_run(_make(Shampoo, backend, **kw), w0, grads, backend)
    assert all(w.dtype == np.float32 and all(v.dtype == np.float32 for v in s.values()) for w, s in ours)
    ref = _ref_run(w0, grads, kw)
    for t, ((w, s), (rw, rs)) in enumerate(zip(ours, ref), 1):
        assert _rel(w, rw) < 2e-5, f"weight after step {t}: {_rel(w, rw):.2e}"
        for k in rs:
            assert _rel(s[k], rs[k]) < 2e-6, f"{k} after step {t}: {_rel(s[k], rs[k]):.2e}"
    assert _moved(ours[-1][0], ref[-1][0], w0) < 1e-4


# ================================================================================================
# List updates, multi-precision
# ================================================================================================
LIST_SHAPES = [(8, 5), (7,), (6, 6), (), (6, 3, 2, 2), (5, 8), (1,), (1, 7)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_update_equals_one_by_one_and_reference(Shampoo, backend):
    """One list update of matrices, vectors, a scalar and a conv kernel gives what separate updates
    give (states included), and both are the reference's."""
    rng = np.random.default_rng(3)
    kw = dict(learning_rate=0.05, wd=0.1, epsilon=1e-3, clip_gradient=2.0)
    w0 = [_randn(rng, s) for s in LIST_SHAPES]
    grads = [_grads(rng, s) for s in LIST_SHAPES]
    a, b = _make(Shampoo, backend, **kw), _make(Shampoo, backend, **kw)
    wa, wb = [_dev(w, backend) for w in w0], [_dev(w, backend) for w in w0]
    sa = [a.create_state(i, w) for i, w in enumerate(wa)]
    sb = [b.create_state(i, w) for i, w in enumerate(wb)]
    idx = list(range(len(LIST_SHAPES)))
    refs = [_ref_run(w, g, kw) for w, g in zip(w0, grads)]
    for t in range(STEPS):
        a.update(idx, wa, [_dev(g[t], backend) for g in grads], sa)
        for i in idx:
            b.update(i, wb[i], _dev(grads[i][t], backend), sb[i])
        for i in idx:
            what = f"param {i} {LIST_SHAPES[i]} step {t + 1}"
            np.testing.assert_allclose(_host(wa[i]), _host(wb[i]), rtol=1e-12, atol=0, err_msg=what)
            assert set(sa[i].tensors) == set(sb[i].tensors)
            for k in sb[i].tensors:
                np.testing.assert_allclose(_host(sa[i].tensors[k]), _host(sb[i].tensors[k]), rtol=1e-12, atol=0,
                                           err_msg=f"{what} {k}")
            rw, rs = refs[i][t]
            np.testing.assert_allclose(_host(wa[i]), rw, rtol=1e-12, atol=1e-13, err_msg=f"{what} vs reference")
            assert set(sa[i].tensors) == set(rs)
            for k in rs:
                np.testing.assert_allclose(_host(sa[i].tensors[k]), rs[k], rtol=1e-12,
                                           atol=1e-13 * max(1.0, np.abs(rs[k]).max()),
                                           err_msg=f"{what} {k} vs reference")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (6, 3, 2, 2), (7,)], ids=str)
def test_float16_multi_precision(Shampoo, shape, backend):
    """float16 weights with multi_precision: the float32 master follows a float32 optforge run on
    float32 copies (and the float64 reference, loosely), the state is float32, and the float16
    weight is the master rounded."""
    rng = np.random.default_rng(_seed("mp", shape))
    w16 = _randn(rng, shape, np.float16)
    g16 = _grads(rng, shape, np.float16)
    kw = dict(learning_rate=0.05, wd=0.1)
    opt = _make(Shampoo, backend, multi_precision=True, **kw)
    w = _dev(w16, backend)
    state = opt.create_state_multi_precision(0, w)
    assert state.master is not None and state.master.dtype == np.float32
    assert all(v.dtype == np.float32 for v in state.tensors.values())
    f32 = _ours_run(_make(Shampoo, backend, **kw), w16.astype(np.float32), [g.astype(np.float32) for g in g16],
                    backend)
    ref = _ref_run(w16.astype(np.float32), [g.astype(np.float32) for g in g16], kw)
    for t, (g, (fw, fs), (rw, rs)) in enumerate(zip(g16, f32, ref), 1):
        opt.update_multi_precision(0, w, _dev(g, backend), state)
        master = _host(state.master)
        assert master.dtype == np.float32 and _host(w).dtype == np.float16
        np.testing.assert_allclose(master, fw, rtol=1e-6, atol=1e-7, err_msg=f"master vs float32 run, step {t}")
        np.testing.assert_array_equal(_host(w), master.astype(np.float16), err_msg=f"float16 weight step {t}")
        assert set(state.tensors) == set(fs) == set(rs)
        for k in fs:
            np.testing.assert_allclose(_host(state.tensors[k]), fs[k], rtol=1e-6, atol=1e-7, err_msg=f"{k} step {t}")
        assert _rel(master, rw) < 2e-5, f"master vs float64 reference, step {t}"
    assert _moved(master, ref[-1][0], w16) < 1e-4


# ================================================================================================
# Checkpoints and state layouts
# ================================================================================================
def test_state_layout(Shampoo):
    opt = Shampoo()
    for shape, rows, cols in [((8, 5), 8, 5), ((5, 8), 5, 8), ((1, 7), 1, 7), ((7, 1), 7, 1),
                              ((6, 3, 2, 2), 6, 12), ((4, 2, 3), 4, 6)]:
        layout = opt.state_layout(shape)
        assert layout.tensors == ("l", "r") and layout.shapes == ((rows, rows), (cols, cols)), (shape, layout)
        assert layout.shape_of("l") == (rows, rows) and layout.shape_of("r") == (cols, cols)
        assert layout.scalars == ()
        s = opt.create_state(0, np.zeros(shape))
        assert {k: v.shape for k, v in s.tensors.items()} == {"l": (rows, rows), "r": (cols, cols)}
        assert all(v.dtype == np.float64 and not v.any() for v in s.tensors.values())
    for shape in [(7,), (1,), ()]:
        layout = opt.state_layout(shape)
        assert layout.tensors == ("v",) and layout.shapes == (tuple(shape),)
        s = opt.create_state(0, np.zeros(shape))
        assert {k: v.shape for k, v in s.tensors.items()} == {"v": tuple(shape)}
        assert not s.tensors["v"].any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dump_optimizer", [False, True])
def test_checkpoint_resume(Shampoo, dump_optimizer, backend):
    """3 steps, checkpoint, a new updater continues 4 steps exactly as the original; the result is
    the reference's 7 steps. The backend is a choice of the process, not part of the checkpoint."""
    rng = np.random.default_rng(5)
    shapes = [(8, 5), (7,), (6, 3, 2, 2), (), (5, 8)]
    kw = dict(learning_rate=0.05, wd=0.1, root=2, epsilon=1e-3)
    w0 = [_randn(rng, s) for s in shapes]
    w = [x.copy() for x in w0]
    grads = [_grads(rng, s, steps=7) for s in shapes]
    upd = optforge.get_updater(_make(Shampoo, backend, **kw))
    idx = list(range(len(shapes)))
    for t in range(3):
        upd(idx, [g[t].copy() for g in grads], w)
    blob = upd.get_states(dump_optimizer=dump_optimizer)
    upd2 = optforge.get_updater(_make(Shampoo, backend, **kw))
    upd2.set_states(blob)
    upd2.optimizer.backend = backend
    assert set(upd2.states) == set(idx)
    for i, s in enumerate(shapes):
        layout = upd2.optimizer.state_layout(s)
        assert tuple(upd2.states[i].tensors) == layout.tensors
        assert layout.tensors == (("l", "r") if len(s) >= 2 else ("v",))
        for k, v in upd2.states[i].tensors.items():
            assert v.shape == layout.shape_of(k)
            np.testing.assert_array_equal(v, upd.states[i].tensors[k])
    w2 = [x.copy() for x in w]
    for t in range(3, 7):
        upd(idx, [g[t].copy() for g in grads], w)
        upd2(idx, [g[t].copy() for g in grads], w2)
    for i in idx:
        np.testing.assert_array_equal(w2[i], w[i], err_msg=f"param {i} after resuming")
        for k in upd.states[i].tensors:
            np.testing.assert_array_equal(upd2.states[i].tensors[k], upd.states[i].tensors[k])
        ref = _ref_run(w0[i], grads[i], kw)[-1]
        np.testing.assert_allclose(w2[i], ref[0], rtol=1e-12, atol=1e-13, err_msg=f"param {i} vs reference")
        for k in ref[1]:
            np.testing.assert_allclose(upd2.states[i].tensors[k], ref[1][k], rtol=1e-12,
                                       atol=1e-13 * max(1.0, np.abs(ref[1][k]).max()),
                                       err_msg=f"param {i} {k} vs reference")


# ================================================================================================
# The torch adapter
# ================================================================================================
def _tiny(torch, seed=0, dtype=None):
    torch.manual_seed(seed)
    return torch.nn.Linear(5, 4).to(dtype or torch.float64)     # a 4 x 5 matrix and a bias of 4


def _loss_backward(torch, model, x, y):
    model.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()


ADAPTER_CASES = [("defaults", {}),
                 ("lr-wd-root2", dict(lr=0.05, weight_decay=0.1, root=2, epsilon=1e-3)),
                 ("iters-clip", dict(lr=0.02, root_iters=5, clip_gradient=0.1, rescale_grad=3.0))]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case, kw", ADAPTER_CASES, ids=[c[0] for c in ADAPTER_CASES])
def test_torch_adapter_matches_reference(Shampoo, case, kw, backend, dtype):
    """A Linear(5, 4) trained by the adapter and a twin trained by the NumPy reference (on torch's
    gradients of the twin) agree at every step, parameters and states."""
    torch = pytest.importorskip("torch")
    import optforge.torch as oft
    _load("shampoo")   # "shampoo" names the class under test
    tdtype = getattr(torch, dtype)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)
    ours_model, ref_model = _tiny(torch, dtype=tdtype), _tiny(torch, dtype=tdtype)
    ours = oft.Optimizer(ours_model.parameters(), "shampoo", backend=backend, **kw)
    assert ours.spec is Shampoo
    rkw = {("learning_rate" if k == "lr" else "wd" if k == "weight_decay" else k): v for k, v in kw.items()}
    refs = {name: _Reference(tuple(p.shape), rkw) for name, p in ref_model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 7):
        x, y = torch.randn(16, 5, generator=gen, dtype=tdtype), torch.randn(16, 4, generator=gen, dtype=tdtype)
        _loss_backward(torch, ours_model, x, y)
        ours.step()
        _loss_backward(torch, ref_model, x, y)
        ref_states = {}
        with torch.no_grad():
            for name, q in ref_model.named_parameters():
                nw, ref_states[name] = refs[name].step(q.detach().numpy(), q.grad.numpy())
                q.copy_(torch.from_numpy(nw))
        for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
            assert p.dtype == tdtype
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **tol, err_msg=f"{name} after step {t}")
            st = {k: v for k, v in ours.state[p].items() if isinstance(v, torch.Tensor)}
            rs = ref_states[name]
            assert set(st) == set(rs) == ({"l", "r"} if p.ndim >= 2 else {"v"}), f"{name}: states {sorted(st)}"
            for k in rs:
                assert tuple(st[k].shape) == rs[k].shape
                np.testing.assert_allclose(st[k].numpy(), rs[k], rtol=tol["rtol"],
                                           atol=tol["atol"] * max(1.0, np.abs(rs[k]).max()),
                                           err_msg=f"{name} {k} step {t}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_adapter_state_dict_round_trip(Shampoo, backend):
    """state_dict through torch.save / torch.load(weights_only=True) into a fresh adapter on a copy of
    the model: both continue bit-identically."""
    torch = pytest.importorskip("torch")
    import optforge.torch as oft
    _load("shampoo")
    kw = dict(lr=0.05, weight_decay=0.1, root=2)
    model = _tiny(torch)
    opt = oft.Optimizer(model.parameters(), "shampoo", backend=backend, **kw)
    gen = torch.Generator().manual_seed(2)
    data = [(torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(16, 4, generator=gen,
                                                                                  dtype=torch.float64))
            for _ in range(6)]
    for x, y in data[:3]:
        _loss_backward(torch, model, x, y)
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    model2 = _tiny(torch, seed=123)
    model2.load_state_dict(model.state_dict())
    opt2 = oft.Optimizer(model2.parameters(), "shampoo", backend=backend, **kw)
    opt2.load_state_dict(sd)
    for p, q in zip(model.parameters(), model2.parameters()):
        names = {k for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
        assert names == ({"l", "r"} if p.ndim >= 2 else {"v"})
        for k in names:
            assert torch.equal(opt2.state[q][k], opt.state[p][k]), k
    for x, y in data[3:]:
        _loss_backward(torch, model, x, y)
        opt.step()
        _loss_backward(torch, model2, x, y)
        opt2.step()
    for (name, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), f"{name} differs after resuming"


# ================================================================================================
# The CUDA cases on the host stand-in
# ================================================================================================
@pytest.mark.skipif(cupy is not None, reason="CuPy is present: the CUDA cases ran in this process")
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to run the CUDA kernels on the host")
def test_gpu_cases_pass_on_the_host_stand_in():
    """This file's CUDA-backend cases under tests/cuda/fakecupy (CuPy's argument and transfer rules,
    the generated .cu kernels run on the host)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_CUPY), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore",
                        "-k", "cuda and not host_stand_in", str(Path(__file__))],
                       capture_output=True, text=True, env=env, timeout=600, cwd=HERE.parent)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-5000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 57 and "skipped" not in summary, summary
