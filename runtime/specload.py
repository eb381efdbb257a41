"""Compile a spec in-process: `optforge.load_spec(path_or_text)` returns a registered class.

    >>> import optforge
    >>> Lion = optforge.load_spec('''
    ... optimizer Lion
    ... hyper beta1: float = 0.9 in [0, 1]
    ... hyper beta2: float = 0.99 in [0, 1]
    ... state mean = zeros
    ... update {
    ...     c = beta1 * mean + (1 - beta1) * grad
    ...     weight -= lr * (sign(c) + wd * weight)
    ...     mean = beta2 * mean + (1 - beta2) * grad
    ... }''')
    >>> optforge.create("lion", learning_rate=1e-4).spec_name
    'Lion'

Nothing is written into the user's tree. The compiled files (module, C++ and CUDA source) go to
`<cache>/specs/<name>-<hash>/` (the cache is the native backend's: `OPTFORGE_CACHE_DIR`, default
~/.cache/optforge), because the native and CUDA backends read `<module>.cpp` / `.cu` beside the
module file. Directories are named by the hash of what the compiler produced, written atomically,
so a stale or half-written entry is never used. Within a process, the same spec text gives the same
class (keyed by its content hash), compiled once.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path

_lock = threading.Lock()
_loaded: dict[str, type] = {}


def _read(spec) -> tuple[str, str, str | None]:
    """(text, path shown in diagnostics, file stem the optimizer name must match or None)."""
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and "\n" not in spec and spec.strip().endswith(".opt")):
        p = Path(spec)
        try:
            return p.read_text(encoding="utf-8"), str(spec), p.stem
        except (OSError, UnicodeDecodeError) as e:
            raise OSError(f"{spec}: cannot read spec: {e}") from e
    if not isinstance(spec, str):
        raise TypeError(f"load_spec takes a path or the spec's text, got {type(spec).__name__}")
    return spec, "<spec>", None


def _write_dir(files: dict[str, str], name: str) -> Path:
    """The folder holding these files: found by their hash in the cache, or written there atomically."""
    from .native import cache_dir
    digest = hashlib.sha256("\0".join(f"{k}\0{v}" for k, v in sorted(files.items())).encode()).hexdigest()[:16]
    fallback = Path(tempfile.gettempdir()) / f"optforge-specs-{getattr(os, 'getuid', lambda: 0)()}"
    for root in (cache_dir() / "specs", fallback):
        final = root / f"{name}-{digest}"
        try:
            if all((final / k).is_file() and (final / k).read_text(encoding="utf-8") == v for k, v in files.items()):
                return final
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
            for k, v in files.items():
                (tmp / k).write_text(v, encoding="utf-8", newline="\n")
            try:
                os.replace(tmp, final)           # atomic; a folder already there came from the same files
            except OSError:
                if not final.is_dir():
                    raise
                for k in files:
                    (tmp / k).unlink()
                tmp.rmdir()
            return final
        except OSError:
            continue
    raise OSError("load_spec: neither the optforge cache nor the temporary folder is writable")


def load_spec(spec, *, register: bool = True) -> type:
    """Compile a spec (a path to a `.opt` file, or its text) and return the optimizer class,
    registered under its name and aliases unless `register=False`.

    Errors in the spec raise `optforge.codegen.errors.SpecError`, rendered as `opt-compile` renders
    them (path:line:col, the source line, a caret, a hint); checker warnings become `UserWarning`s.
    A name that is already registered is replaced, with the same warning as `optforge.register`.
    """
    text, shown, stem = _read(spec)
    key = hashlib.sha256(f"{stem}\0{text}".encode()).hexdigest()
    with _lock:
        cls = _loaded.get(key)
        if cls is None:
            from .codegen.check import check
            from .codegen.compile import render_files
            from .codegen.parser import parse
            checked, warns = check(parse(text, shown), shown, text, file_stem=stem)
            for w in warns:
                warnings.warn(w.render(), UserWarning, stacklevel=3)
            files = render_files(checked, shown)
            folder = _write_dir(files, checked.module_name)
            modname = f"_optforge_spec_{checked.module_name}_{folder.name.rsplit('-', 1)[1]}"
            mod = sys.modules.get(modname)
            if mod is None:
                mspec = importlib.util.spec_from_file_location(modname, folder / f"{checked.module_name}.py")
                mod = importlib.util.module_from_spec(mspec)
                sys.modules[modname] = mod
                try:
                    mspec.loader.exec_module(mod)
                except BaseException:
                    del sys.modules[modname]
                    raise
            cls = getattr(mod, checked.name)
            _loaded[key] = cls
    if register:
        from .registry import register as _register
        _register(cls)
    return cls
