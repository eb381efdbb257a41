"""The CUDA backend against the NumPy backend, for every bundled optimizer and every kernel variant
(float32, float64, float16, float16 weight + float32 master), single and list updates, dense and
lazy row-sparse; checkpoints of GPU states; SGLD's device noise; scalars that change without a
recompile. Needs CuPy and a device (or tests/cuda/fakecupy on the host)."""
import os
import sys

import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import require_cupy  # noqa: E402

cupy = require_cupy()
import optforge  # noqa: E402
from optforge import cuda  # noqa: E402
from optforge.multi import MultiTensorLaunches  # noqa: E402

# every bundled optimizer, with the options that take its less common paths
CONFIGS = {
    "sgd": {"momentum": 0.9, "clip_gradient": 0.8},
    "nag": {"momentum": 0.9},
    "adam": {"clip_gradient": 1.5},
    "adagrad": {"eps": 1e-6},
    "adadelta": {"rho": 0.9},
    "adamax": {},
    "nadam": {},
    "rmsprop": {"centered": True, "clip_weights": 2.0},
    "ftrl": {"lamda1": 0.01},
    "ftml": {},
    "dcasgd": {"momentum": 0.9},
    "sgld": {},
    "signum": {"momentum": 0.9, "wd_lh": 0.01},
    "lamb": {"lower_bound": 0.1, "upper_bound": 5.0},
    "lars": {"momentum": 0.9, "eta": 0.5},
    "lbsgd": {"momentum": 0.9, "batch_scale": 2, "warmup_strategy": "linear", "warmup_epochs": 2},
    "test": {},
    "ccsgd": {"momentum": 0.5},
    "adafactor": {"maximize": True},
    "sm3": {"momentum": 0.5, "beta2": 0.9},
    "muon": {"nesterov": False, "ns_steps": 3, "adjust_lr_fn": "match_rms_adamw"},
    "shampoo": {"epsilon": 0.1, "root": 2, "root_iters": 10},
    "prodigy": {"d0": 0.5, "beta3": 0.9},   # (d0 ** 2 * (1 - beta2) * g ** 2 must not underflow float16)
    "adamw": {},
    "adabelief": {},
    "lion": {"beta2": 0.9},
    # torch.optim's semantics (every option that adds a state or a branch)
    "torchsgd": {"momentum": 0.9, "nesterov": True, "maximize": True},
    "torchadam": {"amsgrad": True, "decoupled_weight_decay": True},
    "torchadamw": {"amsgrad": True, "beta1": 0.3},
    "torchnadam": {"decoupled_weight_decay": True},
    "torchradam": {"beta2": 0.9},
    "torchadamax": {"maximize": True},
    "torchadadelta": {"rho": 0.8},
    "torchrmsprop": {"centered": True, "momentum": 0.5},
    "torchadagrad": {"initial_accumulator_value": 0.1, "lr_decay": 0.01},
    "torchrprop": {"etaplus": 1.5},
    "torchasgd": {"t0": 1.0, "lambd": 0.01},
    "adam8bit": {},
}
CONFIGS.update({f"torch_{name[5:]}": dict(CONFIGS[name]) for name in list(CONFIGS) if name.startswith("torch")})  # aliases
BF16 = np.dtype(ml_dtypes.bfloat16)
VARIANTS = {"f32": (np.float32, False), "f64": (np.float64, False), "f16": (np.float16, False),
            "mp16": (np.float16, True), "bf16": (BF16, False), "mpbf16": (BF16, True),
            "bf16sr": (BF16, False)}   # (bf16sr: stochastic rounding, the same random bits as NumPy's)
SHAPES = [(5, 6), (7,), (2, 3, 4), (300,)]


def _run(name, dtype, multi_precision, on_gpu, mode, steps=3, seed=4, sr=False):
    rng = np.random.default_rng(seed)
    wd = 0.0 if (name, mode) == ("adagrad", "sparse") else 0.01   # MXNet's sparse AdaGrad has no wd
    opt = optforge.create(name, learning_rate=0.05, wd=wd, multi_precision=multi_precision,
                          stochastic_rounding=sr, **CONFIGS[name])
    opt.backend = "numpy"
    opt._rng = np.random.default_rng(seed + 1)   # the same rounding seeds on both runs
    shapes = SHAPES if mode == "list" else SHAPES[:1]
    ws = [rng.standard_normal(s).astype(dtype) for s in shapes]
    if on_gpu:
        ws = [cupy.asarray(w) for w in ws]
    states = [opt.create_state_multi_precision(i, w) for i, w in enumerate(ws)]
    for _ in range(steps):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        if mode == "sparse":
            rows = np.array([0, 3, 4])
            data, idx = gs[0][rows], rows
            if on_gpu:
                data, idx = cupy.asarray(data), cupy.asarray(idx)
            opt.update_multi_precision(0, ws[0], optforge.RowSparse(data, idx, shapes[0]), states[0])
            continue
        if on_gpu:
            gs = [cupy.asarray(g) for g in gs]
        if mode == "list":
            opt.update_multi_precision(list(range(len(ws))), ws, gs, states)
        else:
            for i, (w, g, s) in enumerate(zip(ws, gs, states)):
                opt.update_multi_precision(i, w, g, s)
    return [cupy.asnumpy(w) if on_gpu else w for w in ws]


def test_configs_cover_every_bundled_optimizer():
    bundled = {name for name, cls in optforge.registry.registered().items()
               if cls.__module__.startswith("optforge.generated")}
    assert bundled == set(CONFIGS)


@pytest.fixture
def kernel_launches(monkeypatch):
    """Counts the CUDA kernel launches (single, row-sparse and multi-tensor), so that a test knows
    the update ran the compiled kernels and not, say, the NumPy kernel on CuPy arrays."""
    counts = []
    for cls, attr in ((cuda.CudaBackend, "launch"), (cuda.CudaRowsBackend, "launch"),
                      (cuda.MultiLauncher, "__call__")):
        original = getattr(cls, attr)

        def counted(self, *args, _original=original, _kind=f"{cls.__name__}.{attr}", **kwargs):
            result = _original(self, *args, **kwargs)
            counts.append(_kind + (".fused" if result is not None else ""))
            return result
        monkeypatch.setattr(cls, attr, counted)
    return counts


# Prodigy keeps d^2-scaled moments that float16 cannot hold (rounded at each stage on CUDA, once per
# step by NumPy): it needs multi_precision, which mp16 tests
CASES = [(n, v) for n in sorted(set(CONFIGS) - {"sgld"}) for v in sorted(VARIANTS) if (n, v) != ("prodigy", "f16")]


@pytest.mark.parametrize("mode", ["single", "list", "sparse"])
@pytest.mark.parametrize("name, variant", CASES)
def test_cuda_matches_numpy(name, variant, mode, kernel_launches):
    dtype, mp = VARIANTS[variant]
    sr = variant == "bf16sr"
    want = _run(name, dtype, mp, False, mode, sr=sr)
    assert not kernel_launches
    got = _run(name, dtype, mp, True, mode, sr=sr)
    assert kernel_launches, "no CUDA kernel ran"
    if mode == "list" and optforge.create(name).multi_tensor:
        assert set(kernel_launches) == {"MultiLauncher.__call__"}
    if name in ("lamb", "lars") and mode == "single":   # their norms come from the stages' partial sums
        assert "CudaBackend.launch.fused" in kernel_launches
    # 16-bit storage: CUDA rounds each stage's stores, NumPy its float32 copies once per step
    tol = {"f64": 1e-10, "f32": 2e-5, "bf16": 3e-2, "bf16sr": 3e-2}.get(variant, 3e-3)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=tol, atol=tol,
                                   err_msg=f"{name} {variant} {mode} parameter {k}")


@pytest.mark.parametrize("name,stages", [("adam", 1), ("lamb", 2), ("lars", 2)])
def test_list_update_launches_once_per_stage_for_all_parameters(monkeypatch, name, stages):
    """Also for specs with reductions: every parameter's driver runs up to its norms, one launch per
    stage covers all parameters and all their sums come back in one transfer (multi.run_lockstep)."""
    launches = []
    flush = MultiTensorLaunches.flush
    monkeypatch.setattr(MultiTensorLaunches, "flush", lambda self: launches.append(flush(self)) or launches[-1])
    opt = optforge.create(name, learning_rate=0.01, wd=0.01, **CONFIGS[name])
    ws = [cupy.random.standard_normal(64 + 5 * k, dtype=cupy.float32) for k in range(12)]
    gs = [cupy.random.standard_normal(w.size, dtype=cupy.float32) for w in ws]
    want = [cupy.asnumpy(w) for w in ws]
    ref = optforge.create(name, learning_rate=0.01, wd=0.01, **CONFIGS[name])
    ref.backend = "numpy"
    ref.update(list(range(12)), want, [cupy.asnumpy(g) for g in gs], [ref.create_state(i, w) for i, w in enumerate(want)])
    opt.update(list(range(12)), ws, gs, [opt.create_state(i, w) for i, w in enumerate(ws)])
    assert sum(launches) == stages, launches
    for a, b in zip(ws, want):
        np.testing.assert_allclose(cupy.asnumpy(a), b, rtol=2e-5, atol=2e-6)


def test_sgld_noise_is_seeded_and_normal():
    """SGLD on the device: the same seed gives the same weights, another seed other weights, and
    the increment has the variance lr (the noise is N(0, sqrt(lr)) per element)."""
    n, lr = 1 << 16, 0.01

    def step(seed):
        opt = optforge.create("sgld", learning_rate=lr, seed=seed)
        w = cupy.zeros(n, dtype=cupy.float32)
        opt.update(0, w, cupy.zeros(n, dtype=cupy.float32), opt.create_state(0, w))
        return cupy.asnumpy(w).astype(np.float64)

    a, b, c = step(7), step(7), step(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert abs(a.mean()) < 5 * np.sqrt(lr / n)
    assert abs(a.std() / np.sqrt(lr) - 1) < 5 * 0.71 / np.sqrt(n)


def test_checkpoint_of_gpu_states_round_trips(tmp_path):
    """Updater states on the device are saved (copied to the host explicitly) and loaded back onto
    the device of the weight at the next update; a CPU checkpoint resumes on the GPU and back."""
    rng = np.random.default_rng(0)
    shapes = [(4, 5), (9,)]
    w0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]

    def train(upd, ws, steps, to_dev):
        for gs in steps:
            for i, (w, g) in enumerate(zip(ws, gs)):
                upd(i, to_dev(g), w)

    on_gpu, on_cpu = cupy.asarray, (lambda a: a)
    ref = optforge.get_updater(optforge.create("adam", learning_rate=0.1, wd=0.01))
    ref.optimizer.backend = "numpy"
    wr = [w.copy() for w in w0]
    train(ref, wr, grads, on_cpu)

    for first, second in ((on_gpu, on_gpu), (on_gpu, on_cpu), (on_cpu, on_gpu)):
        upd = optforge.get_updater(optforge.create("adam", learning_rate=0.1, wd=0.01))
        upd.optimizer.backend = "numpy"
        ws = [first(w.copy()) for w in w0]
        train(upd, ws, grads[:2], first)
        path = tmp_path / "ckpt.states"
        upd.save_states(path)
        resumed = optforge.load_states(path)
        resumed.optimizer.backend = "numpy"
        ws = [second(cupy.asnumpy(w) if first is on_gpu else w) for w in ws]
        train(resumed, ws, grads[2:], second)
        for i, (w, r) in enumerate(zip(ws, wr)):
            got = cupy.asnumpy(w) if second is on_gpu else w
            np.testing.assert_allclose(got, r, rtol=2e-5, atol=2e-6, err_msg=f"parameter {i}")
        kinds = {cuda.is_cupy(t) for s in resumed.states.values() for t in s.tensors.values()}
        assert kinds == {second is on_gpu}


def test_scalars_change_without_recompiling():
    opt = optforge.create("adam", learning_rate=0.1)
    w = cupy.asarray(np.ones(8, np.float32))
    st = opt.create_state(0, w)
    opt.update(0, w, cupy.asarray(np.ones(8, np.float32)), st)
    modules = dict(cuda._modules)
    before = cupy.asnumpy(w)
    opt.learning_rate = 0.5
    opt.update(0, w, cupy.asarray(np.ones(8, np.float32)), st)
    assert cuda._modules == modules     # the same compiled module, new scalar arguments
    step = before - cupy.asnumpy(w)
    assert 0.45 < float(step[0]) < 0.55   # Adam's second step with a unit gradient moves ~lr


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_fused_norms_of_a_large_tensor(name):
    """Norms accumulated by the stage kernels (one partial per GPU thread, summed on the device) of a
    tensor far larger than the grid equal the NumPy backend's."""
    rng = np.random.default_rng(9)
    w0 = rng.standard_normal(1 << 18).astype(np.float32)
    grads = [rng.standard_normal(w0.size).astype(np.float32) for _ in range(2)]
    out = []
    for on_gpu in (False, True):
        opt = optforge.create(name, learning_rate=0.01, wd=0.01, **CONFIGS[name])
        opt.backend = "numpy"
        w = cupy.asarray(w0) if on_gpu else w0.copy()
        st = opt.create_state(0, w)
        for g in grads:
            opt.update(0, w, cupy.asarray(g) if on_gpu else g, st)
        out.append(cupy.asnumpy(w) if on_gpu else w)
    np.testing.assert_allclose(out[1], out[0], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_host_side_norms_of_gpu_arrays_are_one_pass_in_double(dtype):
    """ops.norm of a CuPy array (what a row-sparse update or a norm in an `if` uses) runs the
    one-pass sum-of-squares kernel (cuda.SUM_SQUARES_SOURCE) and equals a float64 reference."""
    from optforge import ops
    rng = np.random.default_rng(2)
    for n in (0, 1, 1000, 300_001):
        x = rng.standard_normal(n).astype(dtype)
        want = float(np.sqrt(np.sum(x.astype(np.float64) ** 2)))
        assert ops.norm(cupy.asarray(x)) == pytest.approx(want, rel=1e-12, abs=0)


@pytest.mark.parametrize("name", ["adam", "lamb", "prodigy"])
def test_cuda_step_control_matches_numpy(name, kernel_launches):
    """Global clipping and a skipped inf step on CuPy arrays (list updates), against NumPy."""
    def go(on_gpu):
        rng = np.random.default_rng(3)
        opt = optforge.create(name, learning_rate=0.05, max_grad_norm=0.5, skip_nonfinite=True, **CONFIGS[name])
        opt.backend = "numpy"
        ws = [rng.standard_normal(s) for s in SHAPES]
        xs = [cupy.asarray(w) for w in ws] if on_gpu else ws
        states = [opt.create_state(i, w) for i, w in enumerate(xs)]
        for step in range(4):
            gs = [rng.standard_normal(s) * 3 for s in SHAPES]
            if step == 2:
                gs[1][3] = np.inf
                before = [cupy.asnumpy(x) if on_gpu else x.copy() for x in xs] + [
                    cupy.asnumpy(v) if on_gpu else v.copy() for st in states for v in st.tensors.values()]
            opt.update(list(range(len(xs))), xs, [cupy.asarray(g) for g in gs] if on_gpu else gs, states)
            if step == 2:   # skipped: every weight and state bit for bit as it was
                after = [cupy.asnumpy(x) if on_gpu else x for x in xs] + [
                    cupy.asnumpy(v) if on_gpu else v for st in states for v in st.tensors.values()]
                assert all(a.tobytes() == b.tobytes() for a, b in zip(after, before))
        assert opt.skipped_steps == 1 and opt.num_update == 3
        return [cupy.asnumpy(w) if on_gpu else w for w in xs]
    want = go(False)
    got = go(True)
    assert kernel_launches
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


STORED_SPEC = """
optimizer AdamStoredGpu
hyper beta1: float = 0.9 in [0, 1)
hyper beta2: float = 0.999 in [0, 1)
hyper epsilon: float = 1e-8 in [0, inf)
state mean = zeros as bf16
state var = zeros as f16
sparse lazy
update {
    g = grad * rescale_grad + wd * weight
    mean = beta1 * mean + (1 - beta1) * g
    var = beta2 * var + (1 - beta2) * square(g)
    weight -= lr * sqrt(1 - beta2 ** t) / (1 - beta1 ** t) * mean / (sqrt(var) + epsilon)
}
"""


@pytest.mark.parametrize("mode", ["single", "list", "sparse"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, BF16])
def test_states_stored_as_declared_on_the_device(mode, dtype, kernel_launches):
    """`state m = zeros as bf16`: the CUDA kernels store the declared types (any weight dtype) as the
    NumPy backend does, single, list and lazy row-sparse updates."""
    cls = optforge.load_spec(STORED_SPEC)
    rng = np.random.default_rng(8)
    shapes = SHAPES if mode == "list" else SHAPES[:1]
    host = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    results = []
    for on_gpu in (False, True):
        opt = cls(learning_rate=0.05)
        opt.backend = "numpy"
        ws = [cupy.asarray(w) if on_gpu else w.copy() for w in host]
        states = [opt.create_state(i, w) for i, w in enumerate(ws)]
        for gs in grads:
            if mode == "sparse":
                rows = np.array([0, 3, 4])
                data, idx = gs[0][rows], rows
                if on_gpu:
                    data, idx = cupy.asarray(data), cupy.asarray(idx)
                opt.update(0, ws[0], optforge.RowSparse(data, idx, shapes[0]), states[0])
            else:
                gs = [cupy.asarray(g) for g in gs] if on_gpu else gs
                opt.update(list(range(len(ws))), ws, gs, states)
        results.append(([cupy.asnumpy(w) if on_gpu else w for w in ws],
                        [{k: cupy.asnumpy(v) if on_gpu else v for k, v in s.tensors.items()} for s in states]))
    assert kernel_launches
    (want_w, want_s), (got_w, got_s) = results
    tol = 3e-2 if dtype == BF16 else 1e-3
    for a, b in zip(got_w, want_w):
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=tol, atol=tol)
    for sa, sb in zip(got_s, want_s):
        assert sa["mean"].dtype == BF16 and sa["var"].dtype == np.float16
        for k in sa:
            np.testing.assert_allclose(sa[k].astype(np.float64), sb[k].astype(np.float64), rtol=1e-2, atol=1e-4)

def test_step_control_norm_of_a_gpu_list_is_one_copy_in_double(monkeypatch):
    """grad_scale over a list of CuPy gradients (cuda.sum_squares_list): the small ones in one launch
    over a pointer table, each large one in its own, into one table of partial sums copied back
    once; float16/32/64, empty and non-contiguous tensors, against a float64 reference."""
    from optforge import ops
    rng = np.random.default_rng(6)
    host = [rng.standard_normal(n).astype(d) for n, d in ((7, np.float16), (0, np.float32), (3000, np.float64),
                                                           (cuda.LIST_MAX + 1, np.float32), (40, np.float32))]
    host += [rng.standard_normal((30, 20)).astype(np.float16).T]   # a transposed view
    want = float(sum(np.sum(a.astype(np.float64) ** 2) for a in host))
    xs = [cupy.asarray(a) for a in host]
    xs[-1] = cupy.asarray(host[-1].T).T
    monkeypatch.setattr(cuda, "sum_squares", lambda x: pytest.fail("a per-tensor sum (one copy each)"))
    assert ops.sum_squares_list(xs) == pytest.approx(want, rel=1e-12, abs=0)
    assert ops.sum_squares_list([]) == 0.0 and ops.sum_squares_list(xs[1:2]) == 0.0
    for k in (0, 3, 5):
        bad = [x.copy() for x in xs]
        bad[k][(0,) * bad[k].ndim] = np.nan
        assert np.isnan(ops.sum_squares_list(bad))
        bad[k][(0,) * bad[k].ndim] = -np.inf
        assert ops.sum_squares_list(bad) == np.inf
