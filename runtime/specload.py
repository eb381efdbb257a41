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
~/.cache/optforge, made 0700 and used only when it belongs to this user and nobody else can write
it), because the native and CUDA backends read `<module>.cpp` / `.cu` beside the module file.
Directories are named by the hash of what the compiler produced, written atomically, and every file
of an entry is compared with what it must hold before it is used: a stale, half-written or tampered
entry is replaced, and the module runs from the text just generated. Where the cache cannot be
used, a private folder of this process (`tempfile.mkdtemp`) holds the files. Within a process, the same spec text gives the same
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


_private_root: list = []   # this process's fallback folder, made once by mkdtemp (0700, unpredictable)


def _write_dir(files: dict[str, str], name: str) -> Path:
    """The folder holding exactly these files: found by their hash in the cache (every file compared
    with what it must hold), or written there atomically. A damaged or tampered entry is replaced.
    Where the cache cannot be used, a private folder of this process (mkdtemp) holds them."""
    from .native import cache_dir, private_dir
    digest = hashlib.sha256("\0".join(f"{k}\0{v}" for k, v in sorted(files.items())).encode()).hexdigest()[:16]

    def intact(folder: Path) -> bool:
        try:
            return all((folder / k).is_file() and not (folder / k).is_symlink()
                       and (folder / k).read_text(encoding="utf-8") == v for k, v in files.items())
        except (OSError, UnicodeDecodeError):
            return False

    roots = [cache_dir() / "specs"]
    if _private_root:
        roots.append(_private_root[0])
    for root in roots:
        final = root / f"{name}-{digest}"
        try:
            if not private_dir(root):
                continue
            if intact(final):
                return final
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
            for k, v in files.items():
                (tmp / k).write_text(v, encoding="utf-8", newline="\n")
            if final.exists() or final.is_symlink():   # damaged or tampered: set it aside
                os.replace(final, Path(tempfile.mkdtemp(dir=root, prefix=".stale-")) / "entry")
            try:
                os.replace(tmp, final)           # atomic
            except OSError:
                return tmp                       # another process won the race: our copy is as good
            return final if intact(final) else tmp
        except OSError:
            continue
    if not _private_root:
        _private_root.append(Path(tempfile.mkdtemp(prefix="optforge-specs-")))
        return _write_dir(files, name)
    raise OSError("load_spec: neither the optforge cache nor a private temporary folder is writable")


def load_spec(spec, *, register: bool = True) -> type:
    """Compile a spec (a path to a `.opt` file, or its text) and return the optimizer class,
    registered under its name and aliases unless `register=False`.

    Errors in the spec raise `optforge.codegen.errors.SpecError`, rendered as `opt-compile` renders
    them (path:line:col, the source line, a caret, a hint); checker warnings become `UserWarning`s.
    A name that is already registered is replaced, with the same warning as `optforge.register`.
    """
    text, shown, stem = _read(spec)
    key = hashlib.sha256(f"{stem}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()
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
                # run the module from the text just generated, not from what the file holds by now
                path = folder / f"{checked.module_name}.py"
                mspec = importlib.util.spec_from_loader(modname, loader=None, origin=str(path))
                mod = importlib.util.module_from_spec(mspec)
                mod.__file__ = str(path)
                sys.modules[modname] = mod
                try:
                    exec(compile(files[f"{checked.module_name}.py"], str(path), "exec"), mod.__dict__)
                except BaseException:
                    del sys.modules[modname]
                    raise
            cls = getattr(mod, checked.name)
            _loaded[key] = cls
    if register:
        from .registry import register as _register
        _register(cls)
    return cls
