"""opt-compile: compile .opt specs into importable Python modules.

    opt-compile specs/                 # write generated/ (one module per spec + __init__.py)
    opt-compile specs/ --check         # exit 1 naming every stale or missing file
    opt-compile my_specs/ -o mypkg/    # any output folder
    opt-compile --emit ir|numpy specs/adam.opt
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .compile import build, load_spec_text, render_module
from .errors import SpecError


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _emit(kind: str, path: str) -> int:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"{path}: error: cannot read spec: {e}", file=sys.stderr)
        return 1
    try:
        spec, warnings = load_spec_text(text, path)
    except SpecError as e:
        print(str(e), file=sys.stderr)
        return 1
    for w in warnings:
        print(w.render(), file=sys.stderr)
    if kind == "numpy":
        sys.stdout.write(render_module(spec))
    else:
        from .ir import Assign
        def show(stmts, depth, tag):
            for s in stmts:
                if isinstance(s, Assign):
                    print(f"{'  ' * depth}[{tag}] {s.role} {s.target} <- {s.value.kind.name} {s.value.ty.value}  (line {s.line})")
                else:
                    for c, b in s.branches:
                        print(f"{'  ' * depth}[{tag}] if ({c.kind.name}) line {c.span.line}")
                        show(b, depth + 1, tag)
                    if s.orelse:
                        print(f"{'  ' * depth}[{tag}] else")
                        show(s.orelse, depth + 1, tag)
        print(f"optimizer {spec.name} aliases={list(spec.aliases)} hypers={[h.name for h in spec.hypers]}")
        print(f"states={[s.name for s in spec.states]} scalar_states={[s.name for s in spec.scalar_states]} "
              f"globals={[g.name for g in spec.globals]} options={spec.options} sparse={spec.sparse and spec.sparse[0]}")
        show(spec.prologue, 0, "call")
        show(spec.body, 0, "param")
    return 0


def _generated_files(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for ext in ("*.py", "*.cpp", "*.cu") for p in out.glob(ext))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="opt-compile", description="Compile optimizer specs (.opt) into Python modules.")
    ap.add_argument("sources", nargs="+", help="spec files or folders of *.opt files")
    ap.add_argument("-o", "--output", default="generated", help="output folder (default: generated)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if any output is stale or missing")
    ap.add_argument("--emit", choices=["ir", "numpy"], help="print one stage for a single spec instead of writing")
    args = ap.parse_args(argv)
    if args.emit:
        if len(args.sources) != 1 or Path(args.sources[0]).is_dir():
            ap.error("--emit takes exactly one spec file")
        return _emit(args.emit, args.sources[0])
    for s in args.sources:
        if not Path(s).exists():
            print(f"opt-compile: error: {s}: no such file or folder", file=sys.stderr)
            return 1
    outputs, errors, warnings = build(args.sources, args.output)
    for w in warnings:
        print(w, file=sys.stderr)
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        print(f"opt-compile: {len(errors)} error{'s' if len(errors) != 1 else ''}; nothing written", file=sys.stderr)
        return 1
    out = Path(args.output)
    if args.check:
        stale = []
        for name, text in outputs.items():
            p = out / name
            if not p.exists():
                stale.append(f"{p}: missing")
            elif p.read_text(encoding="utf-8") != text:
                stale.append(f"{p}: stale")
        for p in _generated_files(out):
            if p.name not in outputs:
                stale.append(f"{p}: not produced by any spec (remove it)")
        for s in stale:
            print(s, file=sys.stderr)
        if stale:
            print(f"opt-compile --check: {len(stale)} file(s) out of date; run `opt-compile {' '.join(args.sources)}"
                  f"{'' if args.output == 'generated' else ' -o ' + args.output}`", file=sys.stderr)
            return 1
        print(f"opt-compile --check: {len(outputs)} files up to date")
        return 0
    written = 0
    for name, text in outputs.items():
        p = out / name
        if not p.exists() or p.read_text(encoding="utf-8") != text:
            _write_atomic(p, text)
            written += 1
    for p in _generated_files(out):
        if p.name not in outputs:
            first = p.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
            if first and first[0].lstrip("#/ ").startswith("Generated by opt-compile"):
                p.unlink()
    count = sum(1 for n in outputs if n.endswith(".py") and n != "__init__.py")
    print(f"opt-compile: {count} optimizer(s) compiled into {out}/ ({written} file(s) changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
