"""The generated CUDA sources, verified without a GPU.

(a) every generated/<spec>.cu compiles for sm_80 and sm_90 with nvcc (skipped, with the reason,
    where nvcc is absent);
(b) the kernels' arithmetic runs on the host: each .cu is compiled with g++ under a small shim
    header (tests/cuda/shim) that defines the CUDA built-ins and a one-thread launch, loaded with
    ctypes, and driven by the same generated driver as on a GPU; results must equal the NumPy
    backend for every spec and every kernel variant (f32, f64, f16, mp16).
"""
import ctypes
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import optforge
from optforge.optimizer import Step  # noqa: E402
from optforge import cuda as ofcuda
from optforge.multi import MultiTensorLaunches, run_lockstep

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"
SHIM = Path(__file__).resolve().parent / "cuda" / "shim"
NAMES = sorted({c.__name__.lower() for c in optforge.registered().values()})
NVCC = shutil.which("nvcc")
CXX = shutil.which(os.environ.get("CXX", "g++"))


def _nvrtc():
    """libnvrtc from the nvidia-cuda-nvrtc wheel (what CuPy compiles with), or from a CUDA install."""
    import glob
    import importlib.util
    candidates = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidates += sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
    candidates += sorted(glob.glob("/usr/local/cuda/lib64/libnvrtc.so*"))
    for path in candidates:
        if "builtins" not in path:
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


NVRTC = _nvrtc()
CUDA_INCLUDE = next((p for p in ("/usr/local/cuda/include", os.environ.get("CUDA_PATH", "") + "/include")
                     if os.path.exists(os.path.join(p, "cuda_fp16.h"))), None)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: cannot compile CUDA sources for sm_80/sm_90")
def test_every_cuda_source_compiles_for_sm80_and_sm90_with_nvcc(tmp_path):
    if NVRTC is not None and CUDA_INCLUDE is not None:
        pytest.skip("NVRTC is available: the sources are compiled the way CuPy compiles them instead")
    def build(name):
        r = subprocess.run([NVCC, "-std=c++14", "-gencode", "arch=compute_80,code=sm_80", "-gencode",
                            "arch=compute_90,code=sm_90", "-c", str(GENERATED / f"{name}.cu"), "-o",
                            str(tmp_path / f"{name}.o")], capture_output=True, text=True)
        return name, r.returncode, r.stderr
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(build, NAMES))
    failed = [f"{n}: {err}" for n, rc, err in results if rc != 0]
    assert not failed, "\n".join(failed)


def _stored_cu():
    """The CUDA source of a spec whose states declare their storage (`as bf16`, `as f16`, `as f32`),
    which no bundled spec does."""
    from optforge.codegen.compile import load_spec_text, render_files
    spec, _ = load_spec_text("""
optimizer Stored
state m = zeros as bf16
state v = zeros as f16
state r: per_row = zeros as f32
update {
    rn = 0.5 * r + mean(square(grad), -1)
    mn = 0.9 * m + grad
    vn = 0.99 * v + square(grad)
    weight -= lr * mn / (sqrt(vn) + sqrt(rn) + 1e-8)
    r = rn
    m = mn
    v = vn
}
""", "stored.opt")
    return render_files(spec, "stored.opt")["stored.cu"]


STORED_CU = _stored_cu()


@pytest.mark.skipif(NVRTC is None or CUDA_INCLUDE is None,
                    reason="NVRTC (pip install nvidia-cuda-nvrtc) or the CUDA headers (cuda_fp16.h) not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_cuda_source_compiles_with_nvrtc(arch):
    """The sources compile the way CuPy's RawModule compiles them: NVRTC, no C library headers
    (the generated .cu files, and the runtime's own sum-of-squares kernel)."""
    def build(name):
        prog = ctypes.c_void_p()
        src = ofcuda.SUM_SQUARES_SOURCE.encode() if name == "sum_squares" else STORED_CU.encode() \
            if name == "stored" else (GENERATED / f"{name}.cu").read_bytes()
        assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), src, f"{name}.cu".encode(), 0, None, None) == 0
        opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++14", f"-I{CUDA_INCLUDE}".encode()]
        rc = NVRTC.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        log = ""
        if rc != 0:
            size = ctypes.c_size_t()
            NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            NVRTC.nvrtcGetProgramLog(prog, buf)
            log = f"{name}: {buf.value.decode(errors='replace')}"
        NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))
        return log
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:   # ctypes releases the GIL
        failed = [log for log in pool.map(build, NAMES + ["sum_squares", "stored"]) if log]
    assert not failed, "\n".join(failed)


_host_libs = {}


def _ptr(a):
    return ctypes.c_void_p(a.ctypes.data if a is not None else None)


def host_library(name, tmp_dir):
    if name not in _host_libs:
        src = GENERATED / f"{name}.cu"
        out = tmp_dir / f"{name}_host.so"
        r = subprocess.run([CXX, "-x", "c++", "-std=c++14", "-O1", "-shared", "-fPIC", "-I", str(SHIM),
                            str(src), "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        _host_libs[name] = ctypes.CDLL(str(out))
    return _host_libs[name]


class HostCudaBackend:
    """The CUDA backend's launch protocol, executed by the host-compiled .cu."""
    xp = np

    def __init__(self, lib, weight, grad, weight_lp=None):
        self.lib = lib
        self.suffix = ofcuda.variant(weight.dtype, grad.dtype, weight_lp is not None)
        self.weight_lp = weight_lp
        self.launched = []

    def scratch(self, like, name, shape=None):
        return np.empty(like.shape if shape is None else shape, np.float64 if like.dtype == np.float64 else np.float32)

    def seed(self, rng):
        return float(rng.integers(0, 2 ** 53))

    def launch(self, fn, arrays, scalars, reduce=0, stores=True, dims=None, axes=(), hows=None):
        for a in arrays:
            assert a is None or a.flags.c_contiguous
        f = getattr(self.lib, f"{fn}_{self.suffix}")
        f.restype = None
        lp = ctypes.c_void_p(self.weight_lp.ctypes.data if self.weight_lp is not None else 0)
        if dims is not None:   # a tiled stage, as cuda.CudaBackend launches it: tiles of TILE x TILE
            nb, nr, nc = dims
            tr, tc = max(1, min(nr, ofcuda.TILE)), max(1, min(nc, ofcuda.TILE))
            nrc, ncc = -(-nr // tr), -(-nc // tc)
            tiles = nb * nrc * ncc
            outs, memory = arrays[len(arrays) - len(axes):], arrays[:len(arrays) - len(axes)]
            parts = [np.full((ncc, nb * nr) if axis == -1 else (nrc, nb * nc), np.nan) for _, axis in axes]
            partials = np.full(max(tiles * reduce, 1), np.nan)
            f(*[ctypes.c_int64(v) for v in (nb, nr, nc, tr, tc)], *[_ptr(a) for a in memory], lp, *[_ptr(p) for p in parts],
              *[ctypes.c_double(s) for s in scalars], *([_ptr(partials)] if reduce else []))
            self.launched.append(fn)
            pick = {"sum": np.sum, "max": np.max, "min": np.min}
            for out, part, (how, _) in zip(outs, parts, axes):
                out[...] = pick[how](part, axis=0).reshape(out.shape)
            hows = hows or ("sum",) * reduce
            return [float(pick[h](partials.reshape(tiles, reduce)[:, k])) for k, h in enumerate(hows)] if reduce else None
        n = next(a.size for a in arrays if a is not None)
        # one host thread (blockDim = gridDim = 1) walks every element and writes the first partials
        partials = np.zeros(max(reduce, 1), np.float64)
        f(ctypes.c_int64(n), *[_ptr(a) for a in arrays], lp, *[ctypes.c_double(s) for s in scalars],
          *([_ptr(partials)] if reduce else []))
        self.launched.append(fn)
        return partials.tolist() if reduce else None


CONFIGS = {"sgd": dict(momentum=0.9, wd=0.01, clip_gradient=0.5), "nag": dict(momentum=0.9, wd=0.01),
           "rmsprop": dict(centered=True, clip_weights=0.8), "lamb": dict(lower_bound=0.1, wd=0.01),
           "lars": dict(momentum=0.9, eta=0.5, wd=0.01), "lbsgd": dict(momentum=0.9, batch_scale=2),
           "signum": dict(wd_lh=0.01), "dcasgd": dict(lamda=0.5), "ftrl": dict(lamda1=0.05),
           # float16 statistics of a rank-deficient G^T G round to slightly indefinite matrices: a damping
           # well above float16's rounding keeps the inverse root defined (real runs keep a float32 master)
           "shampoo": dict(epsilon=0.1)}


def run(name, dtype, be_factory, steps=3, mp=False):
    """Three update steps of one (3, 7) parameter; returns the weight and state tensors."""
    rng = np.random.default_rng(11)
    opt = optforge.create(name, learning_rate=0.05, multi_precision=mp, **CONFIGS.get(name, {}))
    w = rng.standard_normal((3, 7)).astype(dtype)
    state = opt.create_state_multi_precision(0, w)
    for _ in range(steps):
        g = rng.standard_normal((3, 7)).astype(dtype)
        if be_factory is None:
            opt.backend = "numpy"
            opt.update_multi_precision(0, w, g, state)
            continue
        opt._update_count(0)
        base = opt.learning_rate
        call = opt._prologue(base, opt.num_update)
        t = opt._index_update_count[0]
        with np.errstate(all="ignore"):
            if state.master is not None:
                be = be_factory(state.master, g, weight_lp=w)
                opt._kernel_staged(be, Step(call, base, opt.wd, t, "0", base, opt.num_update), state.master, g,
                                   state.tensors, state.scalars)
            else:
                be = be_factory(w, g)
                opt._kernel_staged(be, Step(call, base, opt.wd, t, "0", base, opt.num_update), w, g, state.tensors,
                                   state.scalars)
    return w, state


@pytest.mark.skipif(CXX is None, reason="no C++ compiler to run CUDA kernels on the host")
@pytest.mark.parametrize("variant", ["f32", "f64", "f16", "mp16"])
@pytest.mark.parametrize("name", NAMES)
def test_cuda_kernels_on_host_match_numpy(name, variant, tmp_path_factory):
    if name == "sgld":
        pytest.skip("SGLD draws its noise from a different generator on each backend (checked statistically)")
    if name == "prodigy" and variant == "f16":   # d^2-scaled moments underflow float16 without a master copy
        variant = "mp16"
    lib = host_library(name, tmp_path_factory.getbasetemp())
    dtype = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "mp16": np.float16}[variant]
    mp = variant == "mp16"
    want_w, want_s = run(name, dtype, None, mp=mp)
    got_w, got_s = run(name, dtype, lambda *a, **k: HostCudaBackend(lib, *a, **k), mp=mp)
    tol = {"f32": 1e-5, "f64": 1e-12, "f16": 2e-3, "mp16": 2e-3}[variant]
    np.testing.assert_allclose(got_w.astype(np.float64), want_w.astype(np.float64), rtol=tol, atol=tol)
    for k in want_s.tensors:
        np.testing.assert_allclose(got_s.tensors[k].astype(np.float64), want_s.tensors[k].astype(np.float64),
                                   rtol=tol, atol=tol, err_msg=k)
    if mp:
        np.testing.assert_array_equal(got_w, got_s.master.astype(np.float16))


@pytest.mark.skipif(CXX is None, reason="no C++ compiler to run CUDA kernels on the host")
def test_sgld_noise_on_host_is_gaussian_with_variance_lr(tmp_path_factory):
    lib = host_library("sgld", tmp_path_factory.getbasetemp())
    opt = optforge.create("sgld", learning_rate=0.01, seed=5)
    w = np.zeros(200_000, np.float32)
    state = opt.create_state(0, w)
    opt._update_count(0)
    be = HostCudaBackend(lib, w, np.zeros_like(w))
    opt._kernel_staged(be, Step({}, 0.01, 0.0, 1, "0", 0.01, 1), w, np.zeros_like(w), state.tensors, state.scalars)
    assert abs(w.mean()) < 5 * 0.1 / np.sqrt(w.size)
    assert abs(w.std() - 0.1) < 0.002


def test_importing_optforge_never_imports_cupy():
    code = "import sys, optforge; optforge.create('adam'); assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class HostCudaRowsBackend(HostCudaBackend):
    def __init__(self, lib, weight, grad_data, rows, weight_lp=None):
        super().__init__(lib, weight, grad_data, weight_lp)
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.grad_shape = grad_data.shape

    def scratch(self, like, name):
        return np.empty(self.grad_shape, np.float64 if like.dtype == np.float64 else np.float32)

    def launch(self, fn, arrays, scalars, reduce=0, stores=True):
        if not stores:   # a reduction-only stage: row kernels leave reductions to the host
            return None
        f = getattr(self.lib, f"{fn}_rows_{self.suffix}")
        f.restype = None
        n = int(np.prod(self.grad_shape))
        lp = ctypes.c_void_p(self.weight_lp.ctypes.data if self.weight_lp is not None else 0)
        f(ctypes.c_int64(n), ctypes.c_int64(n // len(self.rows)), ctypes.c_void_p(self.rows.ctypes.data),
          *[_ptr(a) for a in arrays], lp, *[ctypes.c_double(s) for s in scalars])


LAZY = [n for n in NAMES if optforge.registered()[n].sparse == "lazy"]


@pytest.mark.skipif(CXX is None, reason="no C++ compiler to run CUDA kernels on the host")
@pytest.mark.parametrize("variant", ["f32", "f64", "mp16"])
@pytest.mark.parametrize("name", LAZY)
def test_cuda_row_kernels_on_host_match_numpy_rows(name, variant, tmp_path_factory):
    """The lazy row-sparse CUDA kernels (parallel over gradient elements) equal the NumPy row kernel,
    and rows the gradient does not hold stay bit-identical."""
    lib = host_library(name, tmp_path_factory.getbasetemp())
    dtype = np.float16 if variant == "mp16" else {"f32": np.float32, "f64": np.float64}[variant]
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((9, 6)).astype(dtype)
    rows = np.array([1, 4, 5, 8])
    rows_configs = {**CONFIGS, "nag": {}, "lbsgd": {"momentum": 0.9}}   # the lazy configurations
    kw = dict(learning_rate=0.05, multi_precision=variant == "mp16", **rows_configs.get(name, {}))
    kw.pop("wd", None)   # AdaGrad's lazy update requires wd == 0
    grads = [rng.standard_normal((4, 6)).astype(dtype) for _ in range(3)]
    results = []
    for host in (False, True):
        opt = optforge.create(name, **kw)
        if not opt._lazy_rows(opt.create_state_multi_precision(0, w0.copy())):
            pytest.skip(f"{name} with {kw} is not lazy")
        w = w0.copy()
        state = opt.create_state_multi_precision(0, w)
        for data in grads:
            if not host:
                opt.backend = "numpy"
                opt.update_multi_precision(0, w, optforge.RowSparse(data, rows, w.shape), state)
                continue
            opt._update_count(0)
            target = state.master if state.master is not None else w
            be = HostCudaRowsBackend(lib, target, data, rows, weight_lp=w if state.master is not None else None)
            step = Step(opt._prologue(0.05, opt.num_update), 0.05, opt.wd, opt._index_update_count[0], "0", 0.05,
                        opt.num_update)
            opt._kernel_staged(be, step, target, data, state.tensors, state.scalars)
        results.append(w)
    tol = {"f32": 1e-5, "f64": 1e-12, "mp16": 2e-3}[variant]
    np.testing.assert_allclose(results[1].astype(np.float64), results[0].astype(np.float64), rtol=tol, atol=tol)
    untouched = np.setdiff1d(np.arange(9), rows)
    np.testing.assert_array_equal(results[1][untouched], w0[untouched])


class _Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


def host_multi_launcher(lib):
    """Runs a recorded multi-tensor launch on the host: blockIdx.y walks the parameters."""
    block = _Dim3.in_dll(lib, "blockIdx")
    count = []

    def launch(name, items):
        f = getattr(lib, name)
        f.restype = None
        sizes = np.array([next(a.size for a in arrays if a is not None) for arrays, _, _, _ in items], dtype=np.int64)
        tables = [np.array([arrays[k].ctypes.data if arrays[k] is not None else 0 for arrays, _, _, _ in items],
                           dtype=np.uint64)
                  for k in range(len(items[0][0]))]
        lp = np.array([w.ctypes.data if w is not None else 0 for _, _, w, _ in items], dtype=np.uint64)
        width = max(1, len(items[0][1]))
        scalars = np.array([list(s) + [0.0] * (width - len(s)) for _, s, _, _ in items], dtype=np.float64)
        reduce = items[0][3][0] if items[0][3] is not None else 0
        partials = np.zeros((len(items), max(reduce, 1)), np.float64)   # one host thread per parameter: stride 1
        for t in range(len(items)):
            block.y = t
            f(ctypes.c_void_p(sizes.ctypes.data), *[ctypes.c_void_p(tb.ctypes.data) for tb in tables],
              ctypes.c_void_p(lp.ctypes.data), ctypes.c_void_p(scalars.ctypes.data),
              *([ctypes.c_int64(1), ctypes.c_void_p(partials.ctypes.data)] if reduce else []))
        block.y = 0
        for (_, _, _, red), row in zip(items, partials):
            if red is not None:
                red[1].value = row.tolist()
        count.append(name)
    return launch, count


@pytest.mark.skipif(CXX is None, reason="no C++ compiler to run CUDA kernels on the host")
@pytest.mark.parametrize("name", [n for n in NAMES if optforge.registered()[n].multi_tensor and n != "sgld"])
def test_multi_tensor_kernels_on_host_match_numpy(name, tmp_path_factory):
    """A 200-tensor list update through the `_mt` kernels: one launch per stage (and variant) for all
    parameters, equal to the NumPy backend; float32 and float16 + master copies mixed in one call."""
    lib = host_library(name, tmp_path_factory.getbasetemp())
    rng = np.random.default_rng(2)
    shapes = [(int(rng.integers(1, 40)),) for _ in range(200)]
    dtypes = [np.float32 if k % 3 else np.float16 for k in range(200)]
    w0 = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    grads = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    kw = dict(learning_rate=0.05, multi_precision=True, **CONFIGS.get(name, {}))
    ref = optforge.create(name, **kw)
    ref.backend = "numpy"
    wr = [w.copy() for w in w0]
    sr = [ref.create_state_multi_precision(i, w) for i, w in enumerate(wr)]
    ref.update_multi_precision(list(range(200)), wr, grads, sr)

    opt = optforge.create(name, **kw)
    wm = [w.copy() for w in w0]
    sm = [opt.create_state_multi_precision(i, w) for i, w in enumerate(wm)]
    launcher, launches = host_multi_launcher(lib)
    multi = MultiTensorLaunches(launcher, np, opt.kernel_stages)
    opt._update_count(list(range(200)))
    call = opt._prologue(opt.learning_rate, opt.num_update)
    phases = []   # specs with fused reductions: the drivers run in lockstep (multi.run_lockstep)
    for i, (w, g, s) in enumerate(zip(wm, grads, sm)):
        target = s.master if s.master is not None else w
        be = multi.param(target, g, weight_lp=w if s.master is not None else None)
        args = (be, Step(call, 0.05, opt.wd, opt._index_update_count[i], str(i), 0.05, opt.num_update), target, g,
                s.tensors, s.scalars)
        if hasattr(opt, "_kernel_phases"):
            phases.append(opt._kernel_phases(*args))
        else:
            opt._kernel_staged(*args)
    run_lockstep(multi, phases)
    assert launches and len(launches) == len(set(launches))   # one launch per (stage, variant)
    assert {n.rsplit("_", 1)[1] for n in launches} == {"f32", "mp16"}
    for a, b in zip(wm, wr):
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=2e-3, atol=2e-3)
