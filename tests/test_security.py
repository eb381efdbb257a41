"""Data safety and untrusted inputs (issue 18): what a cache entry, a concurrent caller or a missing
compiler can and cannot do. Each test reproduces one class of fault and checks that it is now a clear
error or a correct result with nothing lost."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import optforge
from optforge import native, specload

SPEC = """optimizer Sentinel{n}
state m = zeros
update {{
    m = 0.5 * m + grad
    weight -= lr * m
}}
"""


def _fresh(n):
    """A spec text no other test has loaded (its own cache entry and class)."""
    return SPEC.format(n=n)


def test_concurrent_updates_of_one_optimizer_are_refused_and_change_nothing():
    opt = optforge.create("lamb", learning_rate=0.1)
    w = np.ones(10, np.float32)
    s = opt.create_state(0, w)
    assert opt._updating.acquire(blocking=False)     # as if another thread were inside update()
    try:
        with pytest.raises(RuntimeError, match="being updated from another thread"):
            opt.update(0, w, np.ones(10, np.float32), s)
    finally:
        opt._updating.release()
    assert np.all(w == 1) and opt.num_update == 0 and not opt._index_update_count
    opt.update(0, w, np.ones(10, np.float32), s)      # and it works again afterwards
    assert opt.num_update == 1


def test_two_threads_never_corrupt_each_others_weights():
    """Run as users do: two threads hammering one optimizer. Each update either runs alone or is
    refused; no weight ever receives the other thread's update."""
    opt = optforge.create("lamb", learning_rate=0.1)
    shape = (1 << 16,)
    ws = [np.full(shape, k + 1.0, np.float32) for k in range(2)]
    states = [opt.create_state(k, w) for k, w in enumerate(ws)]
    done = [0, 0]

    def worker(k):
        g = np.full(shape, 0.01 * (k + 1), np.float32)
        for _ in range(40):
            try:
                opt.update(k, ws[k], g, states[k])
                done[k] += 1
            except RuntimeError:
                pass

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):   # the same values as `done[k]` single-threaded updates of that parameter
        ref_opt = optforge.create("lamb", learning_rate=0.1)
        ref = np.full(shape, k + 1.0, np.float32)
        rs = ref_opt.create_state(k, ref)
        for _ in range(done[k]):
            ref_opt.update(k, ref, np.full(shape, 0.01 * (k + 1), np.float32), rs)
        np.testing.assert_allclose(ws[k], ref, rtol=1e-6)


def test_a_tampered_spec_cache_entry_is_replaced_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    text = _fresh(1)
    cls = optforge.load_spec(text, register=False)
    folder = next((tmp_path / "cache" / "specs").glob("sentinel1-*"))
    assert oct(os.stat(tmp_path / "cache" / "specs").st_mode & 0o777) == "0o700"
    module = folder / "sentinel1.py"
    module.write_text("import builtins\nbuiltins.OPTFORGE_PWNED = True\n" + module.read_text())
    specload._loaded.clear()
    for name in [m for m in sys.modules if m.startswith("_optforge_spec_sentinel1")]:
        del sys.modules[name]
    again = optforge.load_spec(text, register=False)
    import builtins
    assert not hasattr(builtins, "OPTFORGE_PWNED")
    assert "OPTFORGE_PWNED" not in module.read_text()      # the entry was rewritten from the spec
    assert again is not cls and again.spec_hash == cls.spec_hash


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to make a folder of another user")
def test_a_cache_folder_of_another_user_is_never_used(tmp_path, monkeypatch):
    """Another local user's folder (or a shared one) could hand us code: a planted entry is ignored and
    the files go to a private folder of this process instead of a predictable shared one."""
    foreign = tmp_path / "foreign"
    (foreign / "specs").mkdir(parents=True)
    os.chown(foreign / "specs", 65534, 65534)
    monkeypatch.setenv("OPTFORGE_CACHE_DIR", str(foreign))
    cls = optforge.load_spec(_fresh(2), register=False)
    where = sys.modules[cls.__module__].__file__
    assert not where.startswith(str(foreign)) and os.path.basename(os.path.dirname(os.path.dirname(where))) \
        .startswith("optforge-specs-")
    assert oct(os.stat(os.path.dirname(os.path.dirname(where))).st_mode & 0o777) == "0o700"


RUN = textwrap.dedent("""
    import numpy as np, optforge, sys
    from pathlib import Path
    from optforge import native
    opt = optforge.create("adam", learning_rate=0.1)
    opt.backend = "native"
    w = np.ones(8, np.float32); s = opt.create_state(0, w)
    try:
        opt.update(0, w, np.ones(8, np.float32), s)
        print("updated", opt.num_update, float(w[0]))
    except native.NativeError as e:
        print("refused", opt.num_update, float(w[0]), "has no kernel" in str(e))
""")


def _run(cache):
    env = {**os.environ, "OPTFORGE_CACHE_DIR": str(cache)}
    r = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, env=env, timeout=300)
    return r.returncode, r.stdout.strip(), r.stderr


@pytest.mark.skipif(not native.available(), reason="no C++ compiler")
def test_a_damaged_or_foreign_kernel_library_is_never_loaded(tmp_path):
    cache = tmp_path / "cache"
    rc, out, err = _run(cache)
    assert rc == 0 and out.startswith("updated 1"), out + err
    lib = next(cache.glob("adam-*.so"))
    data = lib.read_bytes()
    lib.write_bytes(data[:1000])                       # truncated (once: SIGBUS in every later process)
    rc, out, err = _run(cache)
    assert rc == 0 and out.startswith("updated 1"), out + err   # rebuilt from the source
    assert len(lib.read_bytes()) > 1000 and native._verified(lib)
    # a valid library of another spec, with a matching checksum: refused before anything is counted
    other = optforge.create("sgd")
    other_lib = native._build(open(sys.modules[type(other).__module__].__file__[:-3] + ".cpp").read(), "sgd")
    lib.write_bytes(other_lib.read_bytes())
    lib.with_suffix(".sha256").write_text(native._digest(lib) + "\n")
    rc, out, err = _run(cache)
    assert rc == 0 and out == "refused 0 1.0 True", out + err


def test_no_compiler_is_said_once_not_silently(tmp_path):
    code = "import numpy as np, optforge; o = optforge.create('adam'); w = np.ones(3); " \
           "o.update(0, w, w * 0 + 1, o.create_state(0, w)); o.update(0, w, w * 0 + 1, o.create_state(1, w)); " \
           "print(o.backend)"
    env = {**os.environ, "OPTFORGE_CXX": str(tmp_path / "no-such-compiler")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "numpy", r.stderr
    assert r.stderr.count("no C++ compiler found") == 1, r.stderr


def test_an_integer_power_of_any_size_takes_no_time_and_divisions_by_zero_are_compile_errors():
    from optforge.codegen.errors import SpecError
    cls = optforge.load_spec("optimizer Hugepow\nupdate {\n    h = 2 ** 9223372036854775807\n"
                             "    weight -= lr * grad / (1 + h)\n}\n", register=False)
    for backend in ["numpy"] + (["native"] if native.available() else []):
        opt = cls(learning_rate=0.5)
        opt.backend = backend
        w = np.ones(3)
        opt.update(0, w, np.ones(3), opt.create_state(0, w))   # 2 ** (2 ** 63 - 1) is inf: the step is 0
        np.testing.assert_array_equal(w, 1.0)
    for op in ("/", "%"):
        with pytest.raises(SpecError, match=f"`{op}` by zero"):
            optforge.load_spec(f"optimizer Dz\nupdate {{\n    weight -= lr * grad {op} 0\n}}\n", register=False)


NAN_INF = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("name", sorted(n for n in optforge.registered() if n not in ("ccsgd", "sgld")))
def test_nan_and_inf_in_a_gradient_give_the_same_result_on_every_backend(name):
    """The NaN/inf policy (SECURITY.md): IEEE arithmetic on every backend, nothing sanitised; where a
    gradient holds NaN or inf, every backend leaves the same elements finite, with the same values."""
    if not native.available():
        pytest.skip("no C++ compiler")
    out = {}
    for backend in ("numpy", "native"):
        opt = optforge.create(name, learning_rate=0.1)
        opt.backend = backend
        rng = np.random.default_rng(0)
        w = rng.uniform(-1, 1, 12)
        s = opt.create_state(0, w)
        for step in range(3):
            g = rng.uniform(-1, 1, 12)
            g[[step, 5 + step]] = NAN_INF[step], NAN_INF[(step + 1) % 3]
            with np.errstate(all="ignore"):
                opt.update(0, w, g, s)
        out[backend] = [w] + [np.asarray(t) for t in s.tensors.values()]
    for a, b in zip(out["native"], out["numpy"]):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
        np.testing.assert_allclose(a[np.isfinite(b)], b[np.isfinite(b)], rtol=1e-12, atol=1e-15)


FAILS_FOR_SMALL_LR = """optimizer Failing
global calls = 0
update {
    calls = calls + 1
    h = sqrt(lr - 0.05)
    weight -= h * grad
}
"""


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_failed_update_counts_only_the_parameters_it_updated(backend):
    """A host computation of the spec that fails (here sqrt of a negative number, for the parameter
    whose lr multiplier makes lr small) raises; only the parameters updated before it are counted,
    and with none updated the once-per-call work on the globals is undone too."""
    if backend == "native" and not native.available():
        pytest.skip("no C++ compiler")
    cls = optforge.load_spec(FAILS_FOR_SMALL_LR, register=False)
    opt = cls(learning_rate=0.1)
    opt.backend = backend
    opt.set_lr_mult({1: 0.1})
    ws = [np.ones(4), np.ones(4)]
    ss = [opt.create_state(k, w) for k, w in enumerate(ws)]
    with pytest.raises(ValueError, match="math domain error"):
        opt.update(1, ws[1], np.ones(4), ss[1])
    assert opt._index_update_count == {} and opt.num_update == 0 and opt._globals == {}
    with pytest.raises(ValueError, match="math domain error"):
        opt.update([0, 1], ws, [np.ones(4), np.ones(4)], ss)
    if backend == "numpy":   # parameter by parameter: the first was updated and counted
        assert opt._index_update_count == {0: 1} and opt.num_update == 1 and opt._globals == {"calls": 1}
        assert not np.array_equal(ws[0], np.ones(4))
    else:   # small tensors of a native list update launch together, after every driver ran: nothing was
        assert opt._index_update_count == {} and opt.num_update == 0 and opt._globals == {}
        assert np.array_equal(ws[0], np.ones(4))
    assert np.array_equal(ws[1], np.ones(4))


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_strided_gradient_costs_one_contiguous_copy(backend):
    """Peak memory of an Adam step on a strided gradient: one extra float32 tensor (its contiguous
    copy), on either backend; NumPy used to allocate four (the straight-line kernel's temporaries)."""
    import tracemalloc
    if backend == "native" and not native.available():
        pytest.skip("no C++ compiler")
    n = 1 << 18
    opt = optforge.create("adam", learning_rate=0.01)
    opt.backend = backend
    w = np.ones(n, np.float32)
    s = opt.create_state(0, w)
    g = np.ones(2 * n, np.float32)[::2]
    opt.update(0, w, g, s)   # warm: scratch buffers
    tracemalloc.start()
    try:
        opt.update(0, w, g, s)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 1.25 * 4 * n, peak / (4 * n)
