"""The native CPU backend: each spec's generated C++ (generated/<spec>.cpp) compiled with the
system compiler and OpenMP on first use, cached on disk, loaded with ctypes.

    OPTFORGE_BACKEND=numpy|native|auto   which backend NumPy arrays use (default auto: native when
                                         a C++ compiler works, NumPy otherwise)
    OPTFORGE_CACHE_DIR                   where compiled libraries live (default ~/.cache/optforge)
    OPTFORGE_CXX                         the compiler (default: $CXX, else g++)
    OMP_NUM_THREADS                      the OpenMP threads of a kernel (default: every core). A stage
                                         runs in parallel only on tensors of PARALLEL_MIN elements or
                                         more; a list update's small tensors run in parallel, one per
                                         thread, when there are several.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from . import multi
from .backend import Backend, compute_dtype
from .dtypes import BFLOAT16, FLOAT16

# -fno-trapping-math lets the compiler turn a branch on a scalar (RMSProp's `centered`) into a select,
# so such loops vectorize; NaN and infinity semantics stay IEEE (no -ffast-math).
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast",
         "-shared", "-fPIC", "-std=c++14", "-w"]
_lock = threading.Lock()
_libs: dict[str, "NativeLibrary"] = {}
_compiler_state: dict = {}


class NativeError(RuntimeError):
    """Compiling or loading a native kernel failed; holds the compiler's output and numbered source."""


def compiler() -> str | None:
    """The C++ compiler to use, or None when there is none."""
    if "cxx" not in _compiler_state:
        cxx = os.environ.get("OPTFORGE_CXX") or os.environ.get("CXX") or "g++"
        path = shutil.which(cxx)
        version = None
        if path:
            try:
                version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                path = None
        _compiler_state.update(cxx=path, version=(version or "").splitlines()[:1])
    return _compiler_state["cxx"]


def cache_dir() -> Path:
    return Path(os.environ.get("OPTFORGE_CACHE_DIR") or Path.home() / ".cache" / "optforge")


def private_dir(path: Path) -> bool:
    """Make `path` (and its parents) if needed, mode 0700; True when it is a folder of this user that
    nobody else can write (a cache anyone else can write could hand us code to run)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not hasattr(os, "getuid"):   # pragma: no cover - not POSIX
        return path.is_dir()
    st = path.lstat()
    if not path.is_dir() or path.is_symlink() or st.st_uid != os.getuid():
        return False
    if st.st_mode & 0o022:
        try:
            os.chmod(path, st.st_mode & ~0o077)
        except OSError:
            return False
    return True


_private_build_dir: list = []


def _library_dir() -> Path:
    """The cache folder of compiled libraries: this user's and nobody else's to write (0700), or a
    private folder of this process where it is not."""
    out_dir = cache_dir()
    try:
        if private_dir(out_dir):
            return out_dir
    except OSError:
        pass
    if not _private_build_dir:
        _private_build_dir.append(Path(tempfile.mkdtemp(prefix="optforge-build-")))
    return _private_build_dir[0]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(lib: Path) -> bool:
    """Whether a cached library is whole: its sha256 is the one recorded beside it when it was built
    (a truncated or replaced file is never loaded: dlopen of a damaged file can kill the process)."""
    sidecar = lib.with_suffix(".sha256")
    try:
        return lib.is_file() and not lib.is_symlink() and sidecar.read_text().strip() == _digest(lib)
    except OSError:
        return False


def _build(source: str, name: str) -> Path:
    cxx = compiler()
    if cxx is None:
        raise NativeError("no C++ compiler found (set OPTFORGE_CXX or install g++)")
    from . import __version__
    key = hashlib.sha256("\n".join([source, " ".join(FLAGS), str(_compiler_state["version"]), __version__,
                                    sys.platform]).encode()).hexdigest()[:24]
    out_dir = _library_dir()
    lib = out_dir / f"{name}-{key}.so"
    if _verified(lib):
        return lib
    fd, src_path = tempfile.mkstemp(dir=out_dir, prefix=f".{name}-", suffix=".cpp")
    tmp_lib = src_path[:-4] + ".so"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(source)
        r = subprocess.run([cxx, *FLAGS, src_path, "-o", tmp_lib], capture_output=True, text=True)
        if r.returncode != 0:
            numbered = "\n".join(f"{i + 1:5d}  {ln}" for i, ln in enumerate(source.splitlines()))
            raise NativeError(f"compiling {name} failed ({cxx} {' '.join(FLAGS)}):\n{r.stderr}\n{numbered}")
        with open(tmp_lib, "rb") as f:   # on disk before it is published: a crash leaves no torn file
            os.fsync(f.fileno())
        _write_synced(lib.with_suffix(".sha256"), _digest(Path(tmp_lib)) + "\n")
        os.replace(tmp_lib, lib)   # atomic: a half-written library is never picked up
    finally:
        for p in (src_path, tmp_lib):
            if os.path.exists(p):
                os.unlink(p)
    if os.environ.get("OPTFORGE_DEBUG", "0") >= "3":
        print(f"optforge: compiled {name} -> {lib}", file=sys.stderr)
    return lib


def _write_synced(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class NativeLibrary:
    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.funcs: dict = {}

    def func(self, name: str, n_arrays: int = None, n_scalars: int = None, out: bool = False, n_sizes: int = 1):
        f = self.funcs.get(name)
        if f is None:
            f = getattr(self.lib, name)
            f.restype = None
            if n_arrays is not None:   # typed: ctypes converts ints and floats in C, not in Python
                f.argtypes = [ctypes.c_int64] * n_sizes + [ctypes.c_void_p] * n_arrays + \
                    [ctypes.c_double] * n_scalars + [ctypes.c_void_p] * out
            self.funcs[name] = f
        return f


# the source's switch for its float16 and bfloat16 variants (codegen/templates/cpu_kernels.cpp.j2)
LOW_PRECISION_DEFINE = "#define OPTFORGE_LOW_PRECISION 1\n"


def library_for(cls, low: bool = False) -> NativeLibrary:
    """The compiled library of an optimizer class (its module's .cpp beside the .py). With `low`, the
    build that also has the float16 and bfloat16 variants: a second library, built the first time a
    16-bit weight meets the native backend, so that float32 and float64 users never compile them."""
    module = sys.modules[cls.__module__]
    key = f"{cls.__module__}:{cls.spec_hash}:{'low' if low else ''}"
    lib = _libs.get(key)
    if lib is None:
        with _lock:
            lib = _libs.get(key)
            if lib is None:
                src = Path(module.__file__).with_suffix(".cpp")
                if not src.exists():
                    raise NativeError(f"{src} is missing; run opt-compile")
                source, name = src.read_text(), cls.__module__.rsplit(".", 1)[-1]
                if low:
                    source, name = LOW_PRECISION_DEFINE + source, name + "-low"
                path = _build(source, name)
                try:
                    lib = NativeLibrary(path)
                except OSError:   # not loadable after all: build it again
                    path.unlink(missing_ok=True)
                    lib = NativeLibrary(_build(source, name))
                # a library that lacks a stage kernel of this spec is refused now, before any update
                # has counted anything
                for fn in getattr(cls, "kernel_stages", ()):
                    for suffix in ([*_LOW_SUFFIX.values(), *_MASTER_SUFFIX.values(), "bf16sr"] if low else _SUFFIX.values()):
                        if not hasattr(lib.lib, f"{fn}_{suffix}"):
                            raise NativeError(f"{path} has no kernel {fn}_{suffix}: not built from {src}")
                _libs[key] = lib
    return lib


# the generated kernels' OPTFORGE_PARALLEL_MIN (codegen/templates/cpu_kernels.cpp.j2)
PARALLEL_MIN = 65536


def openmp_threads(cls) -> int:
    """How many OpenMP threads the compiled kernels of optimizer class `cls` use (their OpenMP
    runtime's omp_get_max_threads: OMP_NUM_THREADS, else one per core); 1 without OpenMP."""
    get = getattr(library_for(cls).lib, "omp_get_max_threads", None)
    if get is None:
        return 1
    get.restype, get.argtypes = ctypes.c_int, []
    return int(get())


def available() -> bool:
    return compiler() is not None


_unusable: dict = {}


def usable(cls) -> bool:
    """Whether the native backend works for an optimizer class: a compiler exists and its library
    builds and loads. A failure is reported once, as a warning, and that class then uses NumPy."""
    if not available():
        if not _unusable.get("no compiler") and backend_choice() == "auto":
            _unusable["no compiler"] = True
            import warnings
            warnings.warn("optforge: no C++ compiler found (tried $OPTFORGE_CXX, $CXX, g++); updates use the "
                          "slower NumPy backend. Install g++ for the native kernels, or set OPTFORGE_BACKEND=numpy "
                          "to choose NumPy and silence this", RuntimeWarning, stacklevel=3)
        return False
    key = (cls.__module__, getattr(cls, "spec_hash", None))
    if key in _unusable:
        return False
    try:
        library_for(cls)
        return True
    except (NativeError, OSError, AttributeError) as e:
        _unusable[key] = str(e)
        import warnings
        warnings.warn(f"optforge: the native backend is unavailable for {cls.__name__} ({str(e).splitlines()[0]}); "
                      "using NumPy", RuntimeWarning, stacklevel=3)
        return False


_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_LOW_SUFFIX = {**_SUFFIX, FLOAT16: "f16", BFLOAT16: "bf16"}   # library_for(cls, low=True)
_MASTER_SUFFIX = {FLOAT16: "mp16", BFLOAT16: "mpbf16"}         # the same library: a float32 master copy


class NativeBackend(Backend):
    """The backend protocol (runtime/backend.py) for NumPy arrays, with the compiled C++ kernels."""

    def __init__(self, lib: NativeLibrary, dtype, cache: dict | None = None, weight_lp=None, seeded=False):
        """`weight_lp`: a float16 / bfloat16 weight whose float32 master copy the kernels update
        (the library_for(cls, low=True) variants mp16 / mpbf16 write it in the same pass). `seeded`:
        a bfloat16 weight rounded stochastically (the variant bf16sr; bf16 rounds to nearest)."""
        self.lib = lib
        self.suffix = _MASTER_SUFFIX[weight_lp.dtype] if weight_lp is not None else \
            "bf16sr" if seeded and np.dtype(dtype) == BFLOAT16 else _LOW_SUFFIX[np.dtype(dtype)]
        self.weight_lp = weight_lp
        self.cache = cache

    def scratch(self, like, name, shape=None):
        """A scratch array shaped like `like` (or `shape`). With a cache (the optimizer's), one buffer
        per scratch name and dtype, as large as the largest parameter seen, is reused from step to
        step: a fresh large array costs a page fault per 4 KiB on first touch, as much time as the
        stage itself."""
        shape = like.shape if shape is None else tuple(shape)
        size = math.prod(shape)
        dtype = np.dtype(compute_dtype(like.dtype))   # (a 16-bit weight's scratch is float32)
        if self.cache is None:
            return np.empty(shape, dtype)
        key = (name, dtype.str)
        buf = self.cache.get(key)
        if buf is None or buf.size < size:
            buf = self.cache[key] = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    def launch(self, fn: str, arrays, scalars, reduce: int = 0, stores: bool = True, dims=None, axes=(),
               hows=None):
        """Run a stage. With `reduce`, the stage also accumulates that many fused reductions and
        their sums come back as a list of floats. A tiled stage runs over `dims` (blocks, rows, cols);
        its kernel combines its reductions itself (`axes`, `hows` are for backends that do not)."""
        sizes = (_size(arrays),) if dims is None else tuple(dims)
        lp = () if self.weight_lp is None else (self.weight_lp,)   # (after the arrays, as the kernels take it)
        f = self.lib.func(f"{fn}_{self.suffix}", len(arrays) + len(lp), len(scalars), out=bool(reduce), n_sizes=len(sizes))
        # an absent conditional state (None) is a null pointer; the kernel never touches it
        pointers = [a.ctypes.data if a is not None else None for a in (*arrays, *lp)]
        if not reduce:
            f(*sizes, *pointers, *scalars)
            return None
        out = np.zeros(reduce, np.float64)
        f(*sizes, *pointers, *scalars, out.ctypes.data)
        return out.tolist()


# tensors below this many elements are batched into one multi-tensor call per stage in a list update
# (the kernels' OPTFORGE_PARALLEL_MIN: a larger one is parallel inside and its own call costs little)
BATCH_MAX = 65536


def batchable(weight, grad, master) -> bool:
    """Whether a parameter of a list update joins the native multi-tensor call: a small, dense,
    float32 or float64 NumPy parameter without a master copy (the `_mt` kernels' variants)."""
    return (master is None and type(weight) is np.ndarray and type(grad) is np.ndarray and weight.size < BATCH_MAX
            and weight.dtype == grad.dtype and weight.dtype in _SUFFIX and grad.flags.c_contiguous)


class MultiLauncher:
    """Runs a recorded multi-tensor launch (`multi.MultiTensorLaunches`) with a stage's `_mt` CPU
    kernel: one call for all the tensors, in parallel over them, with a table of their sizes, one
    of their pointers (ptrs[k * count + t]: pointer k of tensor t) and one of their scalars; a stage
    with reductions returns each tensor's sums into its `Pending`."""

    def __init__(self, lib: NativeLibrary):
        self.lib = lib

    def __call__(self, name, items):
        count = len(items)
        width = max(1, len(items[0][1]))
        sizes = np.array([next(a.size for a in arrays if a is not None) for arrays, _, _, _ in items], np.int64)
        ptrs = np.ascontiguousarray(np.array([[_address(a) for a in arrays] for arrays, _, _, _ in items],
                                             np.uint64).T)
        scalars = np.array([values + (0.0,) * (width - len(values)) for _, values, _, _ in items], np.float64)
        reduce = multi.reductions(items)
        f = self.lib.funcs.get(name)
        if f is None:
            f = self.lib.func(name)
            f.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * (4 if reduce else 3)
        if not reduce:
            f(count, sizes.ctypes.data, ptrs.ctypes.data, scalars.ctypes.data)
            return
        out = np.zeros((count, reduce), np.float64)
        f(count, sizes.ctypes.data, ptrs.ctypes.data, scalars.ctypes.data, out.ctypes.data)
        multi.resolve(items, out.tolist())


def _address(a) -> int:
    """The address of an array's data (0 for an absent state). Through a ctypes view of a writable
    buffer when possible: several times cheaper than `a.ctypes.data`."""
    if a is None:
        return 0
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):   # read-only or empty
        return a.ctypes.data


# step control's global norm (optforge_sum_squares_list, codegen/templates/_c_sum_squares.j2)
NORM_PARALLEL_MIN = 1 << 20   # its OPTFORGE_NORM_PARALLEL_MIN: in parallel from this many elements in all
_NORM_KIND = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, BFLOAT16: 3}


def sum_squares_list(lib: NativeLibrary, arrays) -> float:
    """The sum of squares of every element of `arrays` (C-contiguous NumPy float16/32/64 arrays), in
    one native call: blocks of 4,096 elements summed in float32 lanes (float64 for float64 data), the
    lanes and blocks in double, in an order fixed by the sizes alone (the same result on any number
    of threads); inf and NaN propagate."""
    n = len(arrays)
    sizes = np.fromiter([a.size for a in arrays], np.int64, n)
    ptrs = np.fromiter([_address(a) for a in arrays], np.uint64, n)
    kinds = np.fromiter([_NORM_KIND[a.dtype] for a in arrays], np.int64, n)
    out = np.zeros(1, np.float64)
    f = lib.funcs.get("optforge_sum_squares_list")
    if f is None:
        f = lib.func("optforge_sum_squares_list")
        f.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4
    f(n, sizes.ctypes.data, ptrs.ctypes.data, kinds.ctypes.data, out.ctypes.data)
    return float(out[0])


def backend_choice() -> str:
    choice = os.environ.get("OPTFORGE_BACKEND", "auto").lower()
    if choice not in ("auto", "numpy", "native"):
        raise ValueError(f"OPTFORGE_BACKEND={choice!r}: use numpy, native or auto")
    return choice


class NativeRowsBackend(NativeBackend):
    """The lazy row-sparse update on the native backend: every stage runs its `_rows` kernel, parallel
    over the gradient's elements; weight and states are indexed through `rows`, the gradient data and
    scratch arrays are rows x cols. Work is proportional to the rows touched."""

    def __init__(self, lib: NativeLibrary, dtype, rows: np.ndarray, grad_data: np.ndarray, seeded=False):
        super().__init__(lib, dtype, seeded=seeded)
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.n = grad_data.size
        self.cols = grad_data.size // max(len(self.rows), 1)
        self.grad_shape = grad_data.shape

    def scratch(self, like, name, shape=None):
        return np.empty(self.grad_shape, compute_dtype(like.dtype))

    def launch(self, fn: str, arrays, scalars, reduce: int = 0, stores: bool = True):
        """Run a stage's row kernel. Its reductions would see only the rows given: none are
        returned (the driver computes them on the host), and a stage that only reduces is skipped."""
        if self.n == 0 or not stores:
            return None
        f = self.lib.func(f"{fn}_rows_{self.suffix}")
        f(ctypes.c_int64(self.n), ctypes.c_int64(self.cols), ctypes.c_void_p(self.rows.ctypes.data),
          *[ctypes.c_void_p(a.ctypes.data if a is not None else None) for a in arrays],
          *[ctypes.c_double(s) for s in scalars])


def _size(arrays) -> int:
    """Elements per launch: the size of the first array present (weight, grad and states agree)."""
    return next(a.size for a in arrays if a is not None)
