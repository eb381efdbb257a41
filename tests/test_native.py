"""The native CPU backend as a mechanism: on-disk cache, damaged entries, fallback to NumPy."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import optforge
from optforge import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler: the native backend is off")

SCRIPT = """
import numpy as np, optforge
opt = optforge.create("adam", learning_rate=0.1)
w = np.linspace(-1, 1, 7).astype(np.float32)
state = opt.create_state(0, w)
opt.update(0, w, np.full(7, 0.5, np.float32), state)
print(opt.backend, " ".join(repr(float(x)) for x in w))
"""


def run(env):
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    backend, *values = r.stdout.split()
    return backend, np.array([float(v) for v in values]), r.stderr


def test_cache_is_reused_and_a_damaged_entry_is_rebuilt(tmp_path):
    env = {"OPTFORGE_CACHE_DIR": str(tmp_path), "OPTFORGE_BACKEND": "auto"}
    backend, first, _ = run(env)
    assert backend == "native"
    libs = list(Path(tmp_path).glob("adam-*.so"))
    assert len(libs) == 1
    stamp = libs[0].stat().st_mtime_ns
    _, again, _ = run(env)
    assert libs[0].stat().st_mtime_ns == stamp          # second process: no recompilation
    libs[0].write_bytes(b"not a shared library")
    backend, rebuilt, err = run(env)
    assert backend == "native" and "RuntimeWarning" not in err
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, rebuilt)
    assert not list(Path(tmp_path).glob(".*"))           # no temporary files left behind


def test_a_broken_compiler_falls_back_to_numpy_with_a_warning(tmp_path):
    backend, values, err = run({"OPTFORGE_CACHE_DIR": str(tmp_path), "OPTFORGE_CXX": "false",
                                "OPTFORGE_BACKEND": "auto"})
    assert backend == "numpy" and "native backend is unavailable for Adam" in err
    _, numpy_values, _ = run({"OPTFORGE_BACKEND": "numpy"})
    np.testing.assert_array_equal(values, numpy_values)


def test_backend_is_selectable_and_validated():
    opt = optforge.create("sgd")
    opt.backend = "numpy"
    assert opt.backend == "numpy"
    with pytest.raises(ValueError, match="backend must be"):
        opt.backend = "gpu"


def test_native_and_numpy_agree_on_a_large_tensor():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(1 << 18).astype(np.float32)
    grads = [rng.standard_normal(1 << 18).astype(np.float32) for _ in range(3)]
    out = {}
    for backend in ("numpy", "native"):
        opt = optforge.create("lamb", learning_rate=0.01, wd=0.01)
        opt.backend = backend
        w = w0.copy()
        state = opt.create_state(0, w)
        for g in grads:
            opt.update(0, w, g, state)
        out[backend] = w
    np.testing.assert_allclose(out["native"], out["numpy"], rtol=1e-5, atol=1e-6)


# ---- fused reductions (codegen/lower.py): norms and sums accumulated by the stage kernels ----------------
from optforge import ops  # noqa: E402
from optforge.codegen.compile import load_spec_text  # noqa: E402
from optforge.codegen.lower import lower  # noqa: E402

DEPENDENT = """
optimizer Dependent
update {
    d = grad * 2 - weight
    a = sum(d)
    b = norm(d * a)
    c = norm(weight) + sum(square(grad))
    weight -= lr * d * b / (1 + c + abs(a))
}
"""


def _stages(text):
    spec, _ = load_spec_text(text, "x.opt")
    program = lower(spec)
    return {st.name: [op.value for op, _ in st.reductions] for st in program.stages}, program.steps


def test_reductions_are_fused_into_the_stage_before_them_or_one_pass_of_their_own():
    load = load_spec_text
    root = Path(__file__).resolve().parent.parent / "specs"
    for name, want in (("lamb", {"s0": ["norm", "norm"], "s1": []}), ("lars", {"s0": ["norm", "norm"], "s1": []})):
        spec, _ = load((root / f"{name}.opt").read_text(), f"{name}.opt")
        stages = lower(spec).stages
        assert {st.name: [op.value for op, _ in st.reductions] for st in stages} == want, name
        if name == "lars":   # both norms in one reduction-only pass over weight and gradient
            assert not stages[0].stmts
    got, steps = _stages(DEPENDENT)
    # sum(d) rides on the stage computing d; norm(d * a) needs a, known only after that stage: a pass of
    # its own, which also takes norm(weight) and sum(square(grad)) of the next statement
    assert got == {"s0": ["sum"], "s1": ["norm", "norm", "sum"], "s2": []}
    assert [type(s).__name__ for s in steps] == ["Stage", "Host", "Stage", "Host", "Host", "Stage"]


def _run(cls_or_name, backend, n, dtype, steps=3, hook=None, **kw):
    rng = np.random.default_rng(1)
    cls = optforge.registered()[cls_or_name] if isinstance(cls_or_name, str) else cls_or_name
    opt = cls(learning_rate=0.01, wd=0.01, **kw)
    opt.backend = backend
    w = rng.standard_normal(n).astype(dtype)
    st = opt.create_state(0, w)
    with ops.reduce_hook(hook):
        for _ in range(steps):
            opt.update(0, w, rng.standard_normal(n).astype(dtype), st)
    return w


DEPENDENT_CLS = optforge.load_spec(DEPENDENT, register=False)
FUSED = [("lamb", {}), ("lars", {"momentum": 0.9}), ("lbsgd", {"warmup_strategy": "lars", "batch_scale": 2}),
         (DEPENDENT_CLS, {})]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", FUSED, ids=lambda x: getattr(x, "__name__", str(x)))
def test_fused_reductions_match_numpy_at_sizes_that_split_into_threads_and_blocks(name, kw, dtype):
    for n in (7, 2049, (1 << 17) + 3):   # one block; a block and a bit; several threads and blocks
        got, want = _run(name, "native", n, dtype, **kw), _run(name, "numpy", n, dtype, **kw)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=f"n={n}")


@pytest.mark.parametrize("name,kw", FUSED[:2], ids=["lamb", "lars"])
def test_fused_reductions_are_deterministic_and_pass_through_the_reduce_hook(name, kw):
    n = (1 << 17) + 3
    a, b = _run(name, "native", n, np.float32, **kw), _run(name, "native", n, np.float32, **kw)
    assert np.array_equal(a, b)                      # fixed partition: bit-identical runs
    calls = []
    hook = lambda x: calls.append(x) or x + 1e4      # noqa: E731 - as if other shards held more
    got = _run(name, "native", n, np.float32, hook=hook, **kw)
    want = _run(name, "numpy", n, np.float32, hook=lambda x: x + 1e4, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(calls) == 6 and not np.array_equal(got, a)   # 2 norms x 3 steps, and the hook mattered


def test_scratch_arrays_are_reused_between_steps():
    opt = optforge.create("lamb", learning_rate=0.01)
    opt.backend = "native"
    for n in (1000, 5000, 3000):
        w = np.ones(n, np.float32)
        opt.update(0, w, np.ones(n, np.float32), opt.create_state(0, w))
    assert [b.size for b in opt._scratch_cache.values()] == [5000]   # the largest parameter's size, once


# ---- list updates: small tensors in one multi-tensor call per stage (runtime/multi.py) -----------------
LIST_CONFIGS = {"sgd": {"momentum": 0.9}, "nag": {"momentum": 0.9}, "lars": {"momentum": 0.9},
                "lbsgd": {"momentum": 0.9, "batch_scale": 2, "warmup_strategy": "lars"}, "dcasgd": {"momentum": 0.9},
                "rmsprop": {"centered": True}, "signum": {"momentum": 0.9}}


@pytest.mark.parametrize("name", sorted(n for n, c in optforge.registered().items()
                                        if c.__module__.startswith("optforge.generated")))
def test_list_update_batches_small_tensors_and_equals_single_updates(name, monkeypatch):
    calls = []
    launch = native.MultiLauncher.__call__
    monkeypatch.setattr(native.MultiLauncher, "__call__", lambda self, n, items: calls.append(n) or launch(self, n, items))
    rng = np.random.default_rng(3)
    shapes = [(5, 7), (300,), (1,), (70_000,), (33, 2)]   # (70_000,) is large: updated on its own
    dtypes = [np.float32, np.float32, np.float64, np.float32, np.float32]
    w0 = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    grads = [[rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)] for _ in range(3)]
    out = []
    for listed in (False, True):
        opt = optforge.create(name, learning_rate=0.05, wd=0.01, seed=1, **LIST_CONFIGS.get(name, {})) \
            if name == "sgld" else optforge.create(name, learning_rate=0.05, wd=0.01, **LIST_CONFIGS.get(name, {}))
        opt.backend = "native"
        ws = [w.copy() for w in w0]
        st = [opt.create_state(i, w) for i, w in enumerate(ws)]
        for gs in grads:
            if listed:
                opt.update(list(range(len(ws))), ws, gs, st)
            else:
                for i in range(len(ws)):
                    opt.update(i, ws[i], gs[i], st[i])
        out.append(ws)
    for a, b in zip(*out):   # the same kernels, seeds drawn in the same order: bit-identical
        np.testing.assert_array_equal(a, b)
    if not optforge.registered()[name].multi_tensor:   # tiled stages (Adafactor): parameter by parameter
        assert not calls
        return
    # the small float32 and float64 tensors: at most one call per stage and dtype in each of the 3 steps
    module = optforge.registered()[name].__module__.rsplit(".", 1)[1]
    root = Path(__file__).resolve().parent.parent / "specs"
    stages = lower(load_spec_text((root / f"{module}.opt").read_text(), f"{module}.opt")[0]).stages
    assert calls and all(n.endswith(("_mt_f32", "_mt_f64")) for n in calls)
    assert len(calls) <= 3 * 2 * len(stages), calls


def test_reduce_hook_sees_the_parameters_in_order_in_a_list_update():
    """With a reduce hook (sharded training) a list update calls it parameter by parameter, in order,
    as single updates do: ranks whose slices straddle the batching threshold differently must still
    all-reduce the same parameter at the same time."""
    rng = np.random.default_rng(4)
    shapes = [(10,), (70_000,), (7, 3)]
    w0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    seen = []
    for listed in (False, True):
        calls = []
        opt = optforge.create("lamb", learning_rate=0.01)
        opt.backend = "native"
        ws = [w.copy() for w in w0]
        st = [opt.create_state(i, w) for i, w in enumerate(ws)]
        with ops.reduce_hook(lambda x: calls.append(x) or x):
            if listed:
                opt.update([0, 1, 2], ws, g, st)
            else:
                for i in range(3):
                    opt.update(i, ws[i], g[i], st[i])
        seen.append(calls)
    assert len(seen[0]) == 6 and seen[0] == seen[1]


def test_openmp_threads_follow_omp_num_threads():
    code = "import optforge; from optforge import native; print(native.openmp_threads(optforge.registered()['sgd']))"
    for n in ("1", "3"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": n})
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == n


def test_parallel_min_is_the_kernels_threshold():
    template = Path(native.__file__).parent / "codegen" / "templates" / "cpu_kernels.cpp.j2"
    if not template.exists():
        template = Path(__file__).resolve().parent.parent / "codegen" / "templates" / "cpu_kernels.cpp.j2"
    assert f"#define OPTFORGE_PARALLEL_MIN {native.PARALLEL_MIN}\n" in template.read_text()


def test_multi_tensor_kernels_fork_only_for_enough_work():
    """The mechanism behind "no stalls on a busy machine" (issue #17): a list update's small tensors
    go in one `_mt` call per stage, whose parallel region opens only when they hold
    OPTFORGE_PARALLEL_MIN elements in all; a fork and join for a tiny model cost 6 ms on a busy
    2-core machine (bench/busy_bench.py), the work 0.1 ms."""
    import re
    from pathlib import Path
    sources = sorted((Path(__file__).resolve().parents[1] / "generated").glob("*.cpp"))
    assert sources
    seen = 0
    for path in sources:
        text = path.read_text()
        for m in re.finditer(r"void (\w+_mt_\w+)\(.*?\n(.*?)\n}\n", text, re.S):
            pragmas = [ln for ln in m.group(2).splitlines() if "omp parallel" in ln]
            assert pragmas and all("total >= OPTFORGE_PARALLEL_MIN" in ln for ln in pragmas), (path.name, m.group(1))
            seen += 1
    assert seen > 50
