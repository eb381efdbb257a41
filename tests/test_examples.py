"""The bundled AdamW, AdaBelief and Lion (specs/, once examples/specs/), each against its paper's algorithm written here in
float64, on every backend that runs on this machine (NumPy, and native C++ when a compiler works)."""
from pathlib import Path

import numpy as np
import pytest

import optforge
from optforge import native, registry

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BACKENDS = ["numpy", pytest.param("native", marks=pytest.mark.skipif(not native.available(),
                                                                     reason="no C++ compiler"))]


@pytest.fixture(autouse=True)
def _restore_registry():
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


BUNDLED = {"adamw": "AdamW", "adabelief": "AdaBelief", "lion": "Lion"}


def load(name):
    return getattr(optforge, BUNDLED[name])     # the bundled class, generated from specs/{name}.opt


# ---- the papers' algorithms, written independently of the specs ---------------------------------

def adamw_ref(w, grads, learning_rate, wd, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """Loshchilov & Hutter 2019, Algorithm 2 (decay scaled by the learning rate, as PyTorch)."""
    lr, eps = learning_rate, epsilon
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr * (m / (1 - beta1 ** t) / (np.sqrt(v / (1 - beta2 ** t)) + eps) + wd * w)
    return w


def adabelief_ref(w, grads, learning_rate, wd, beta1=0.9, beta2=0.999, epsilon=1e-16):
    """Zhuang et al. 2020, Algorithm 2, with decoupled decay (weight_decouple=True)."""
    lr, eps = learning_rate, epsilon
    m, s = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        w = w * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * (g - m) ** 2 + eps
        m_hat, s_hat = m / (1 - beta1 ** t), s / (1 - beta2 ** t)
        w = w - lr * m_hat / (np.sqrt(s_hat) + eps)
    return w


def lion_ref(w, grads, learning_rate, wd, beta1=0.9, beta2=0.99):
    """Chen et al. 2023, Algorithm 2."""
    lr = learning_rate
    m = np.zeros_like(w)
    for g in grads:
        update = np.sign(beta1 * m + (1 - beta1) * g)
        w = w - lr * (update + wd * w)
        m = beta2 * m + (1 - beta2) * g
    return w


CASES = [  # (spec, reference, kwargs, id)
    ("adamw", adamw_ref, dict(learning_rate=0.01, wd=0.1), "adamw"),
    ("adamw", adamw_ref, dict(learning_rate=0.003, wd=0.0, beta1=0.8, beta2=0.99, epsilon=1e-6), "adamw-nowd-betas"),
    ("adabelief", adabelief_ref, dict(learning_rate=0.01, wd=0.05), "adabelief"),
    ("adabelief", adabelief_ref, dict(learning_rate=0.001, wd=0.0, epsilon=1e-8, beta2=0.99), "adabelief-eps"),
    ("lion", lion_ref, dict(learning_rate=0.001, wd=0.3), "lion"),
    ("lion", lion_ref, dict(learning_rate=0.01, wd=0.0, beta1=0.5, beta2=0.9), "lion-betas"),
]


def run(cls, kwargs, backend, w0, grads, dtype):
    opt = cls(**kwargs)
    opt.backend = backend
    w = w0.astype(dtype)
    state = opt.create_state(0, w)
    for g in grads:
        opt.update(0, w, g.astype(dtype), state)
    return w


def data(seed=0, shape=(7, 9), steps=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), [rng.standard_normal(shape) for _ in range(steps)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,ref,kwargs", [pytest.param(*c[:3], id=c[3]) for c in CASES])
def test_matches_paper_float64(name, ref, kwargs, backend):
    w0, grads = data()
    got = run(load(name), kwargs, backend, w0, grads, np.float64)
    np.testing.assert_allclose(got, ref(w0, grads, **kwargs), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,ref,kwargs", [pytest.param(*c[:3], id=c[3]) for c in CASES])
def test_matches_paper_float32(name, ref, kwargs, backend):
    w0, grads = data(1)
    got = run(load(name), kwargs, backend, w0, grads, np.float32)
    assert got.dtype == np.float32
    expect = ref(w0.astype(np.float32).astype(np.float64), [g.astype(np.float32).astype(np.float64) for g in grads],
                 **kwargs)
    # Lion's sign() can flip where the interpolation is within rounding of 0; none does in this data
    np.testing.assert_allclose(got, expect, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["adamw", "adabelief", "lion"])
def test_backends_agree_and_are_registered(name):
    cls = load(name)
    assert optforge.registered()[name] is cls
    assert optforge.create(name).spec_name == cls.spec_name
    if not native.available():
        pytest.skip("no C++ compiler")
    w0, grads = data(2, shape=(64, 33), steps=5)
    a = run(cls, {"wd": 0.01}, "numpy", w0, grads, np.float32)
    b = run(cls, {"wd": 0.01}, "native", w0, grads, np.float32)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lion_moves_every_coordinate_by_lr():
    w0, grads = data(3)
    w = run(load("lion"), dict(learning_rate=0.01), "numpy", w0, grads[:1], np.float64)
    np.testing.assert_allclose(np.abs(w - w0), 0.01)


def test_hyperparameter_ranges_are_enforced():
    with pytest.raises(ValueError, match=r"Invalid beta1 value: 1\.0 \(must be in \[0\.0, 1\.0\)\)"):
        load("adabelief")(beta1=1.0)
    with pytest.raises(ValueError, match="Invalid beta2 value"):
        load("lion")(beta2=1.5)


# ---- examples/train_all.py (`make demo`), shortened ------------------------------------------------

def _train_all():
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_all", EXAMPLES / "train_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_all_timing_and_curves():
    demo = _train_all()
    t = demo.timing([1.0] * demo.WARMUP + [0.001, 0.003, 0.002] * 10)   # the warm-up is not timed
    assert t == {"ms_per_step": 2.0, "ms_p90": 3.0, "timed": 30}
    curve = np.arange(1.0, 51.0)
    smooth = demo.trailing(curve)
    assert smooth[0] == 1.0 and smooth[-1] == np.mean(curve[-demo.TAIL:])   # the legend quotes this value
    assert demo.family_of("adam") == "Adam family" and demo.family_of("my_new_one") == "other"


def test_train_all_runs_and_plots(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    demo = _train_all()
    png = tmp_path / "plot.png"
    assert demo.main(["--steps", "45", "--only", "adam", "sgd", "lion", "--plot", str(png)]) == 0
    out = " ".join(capsys.readouterr().out.split())    # the notes are wrapped at 100 columns
    assert png.stat().st_size > 10000
    if native.available():   # the count in effect (this process may have started OpenMP before the demo set it)
        n = native.openmp_threads(optforge.registered()["adam"])
        assert f"native kernels: {n} OpenMP thread(s)" in out and "OMP_NUM_THREADS=1: the demo's default" in out
        assert ("not in effect" in out) == (n != 1)
    assert "median time of one update call over 35 steps after 10 warm-up steps" in out
    assert "adam lazy b1=0.9" in out and "adam standard b1=0" in out and "Without momentum (beta1=0)" in out
