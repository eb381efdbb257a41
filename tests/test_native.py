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
