"""Spec files -> generated modules. The one place that ties parser, checker and emitters together."""
from __future__ import annotations

import os
import re
from pathlib import Path

import jinja2

from . import quantmap
from .check import check
from .emit_c import CpuEmitter, CudaEmitter
from .emit_driver import _host_reads_grad, driver_lines
from .emit_numpy import NumpyEmitter, chunkable, kernel_lines, step_bindings
from .emit_sparse import RowsEmitter
from .errors import SpecError, printable
from .ir import GATHERS, REDUCTIONS, SHAPE_FACTS, Assign, IfStmt, Op, Role, Shape, Spec
from .lower import Program, lower
from .parser import parse
from .walk import leaves, nodes, targets

TEMPLATES = Path(__file__).resolve().parent / "templates"


def pyrepr(value) -> str:
    """A Python literal for a value from a spec: only numbers, text, bools, None and tuples/dicts of them."""
    if isinstance(value, float):
        if value != value:
            return "float('nan')"
        if value in (float("inf"), float("-inf")):
            return "float('inf')" if value > 0 else "-float('inf')"
        return repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(pyrepr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{pyrepr(k)}: {pyrepr(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no literal for {type(value).__name__}")


def docstring(text: str, indent: str = "    ") -> str:
    """A triple-quoted docstring that can hold any text and executes nothing: backslashes and any
    run of three or more quotes are escaped, other control characters written as escapes."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\n\t" or (ch.isprintable() and ch != "\x7f"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    body = re.sub(r'"{3,}', lambda m: '\\"' * len(m.group()), "".join(out))
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    lines = body.split("\n")
    body = "\n".join(lines[:1] + [(indent + ln) if ln.strip() else "" for ln in lines[1:]])
    return f'"""{body}\n{indent}"""'


_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,
                          keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
_env.filters["pyrepr"] = pyrepr
_env.filters["printable"] = printable


def load_spec_text(text: str, path: str) -> tuple[Spec, list]:
    return check(parse(text, path), path, text)


def _doc_text(spec: Spec) -> str:
    parts = [spec.doc.strip() or f"The {spec.name} optimizer."]
    parts.append("Update, as written in the spec (`" + spec.path.rsplit("/", 1)[-1] + "`)::\n\n" +
                 "\n".join("    " + ln.rstrip() for ln in _dedent(spec.update_text).splitlines()))
    if spec.hypers:
        lines = ["Parameters", "----------"]
        for h in spec.hypers:
            tname = {"choice": "str"}.get(h.type, h.type) + (", optional" if h.optional else "")
            extra = []
            if h.choices:
                extra.append("one of " + ", ".join(repr(c) for c in h.choices))
            if h.range_text():
                extra.append("in " + h.range_text())
            extra.append(f"default {h.default!r}")
            lines.append(f"{h.name} : {tname}")
            lines.append("    " + (h.doc + " " if h.doc else "") + "(" + "; ".join(extra) + ")")
        parts.append("\n".join(lines))
    stored = [s for s in spec.states if s.storage is not None]
    if stored:
        parts.append("State storage: " + ", ".join(f"``{s.name}`` as {s.storage}" for s in stored) +
                     " (computed in the weight's type, rounded to nearest even when stored).")
    quant = [s for s in spec.states if s.quant is not None]
    if quant:
        parts.append("8-bit states: " + ", ".join(f"``{s.name}`` as {s.quant.name}" for s in quant) +
                     " (one-byte codes and a float32 absmax per block, decoded and re-encoded by the kernels).")
    parts.append("Also accepts the arguments of :class:`optforge.Optimizer` (learning_rate, wd, rescale_grad,\n"
                 "clip_gradient, lr_scheduler, param_idx2name, begin_num_update, multi_precision).")
    return "\n\n".join(parts)


def _dedent(text: str) -> str:
    import textwrap
    lines = text.splitlines()
    if len(lines) <= 1:
        return text
    return lines[0] + "\n" + textwrap.dedent("\n".join(lines[1:]))


def render_module(spec: Spec, spec_path: str | None = None, program: Program | None = None) -> str:
    program = program or lower(spec)
    em = NumpyEmitter(spec)
    spec_path = spec_path or spec.path
    hyper_names = [h.name for h in spec.hypers]
    hyper_defaults = {h.name: h.default for h in spec.hypers}
    signature = "".join(f"{n}={pyrepr(spec.defaults[n] if n in spec.defaults else hyper_defaults[n])}, "
                        for n in spec.signature)
    hyper_dict = ", ".join(f"{n!r}: {n}" for n in hyper_names)
    base_pass = "".join(f"{n}={n}, " for n in spec.defaults)

    # state layout: per parameter shape (a state may exist only for some shapes, and have its own)
    layout = ["layout = []"]
    hyper_bind = lambda names: [f"{n} = self.{n}" for n in sorted(names)]  # noqa: E731
    cond_hypers = set()
    for st in spec.states:
        if st.cond is not None:
            cond_hypers |= {n.value for n in st.cond.walk() if n.op is Op.HYPER}
    layout[:0] = hyper_bind(cond_hypers)
    if any(n.op in SHAPE_FACTS for st in spec.states if st.cond is not None for n in st.cond.walk()):
        layout[:0] = ["if shape is None:",
                      f"    raise TypeError('the states of {spec.name} depend on the weight\\'s shape: pass it')",
                      "_shape = tuple(shape)"]
    starts = [st.value for st in spec.states if st.value is not None]
    layout[:0] = _start_bind(starts, hyper_bind, cond_hypers)
    for st in spec.states:
        shp = "shape" if st.shape is Shape.FULL else f"ops.state_shape(shape, {st.shape.value!r}, {spec.view!r})"
        if st.shape is not Shape.FULL:
            shp = f"None if shape is None else {shp}"
        fill = pyrepr(st.fill) if st.value is None else f"float({em.expr(st.value)})"
        entry = f"layout.append(({st.name!r}, {st.init!r}, {fill}, {shp}))"
        if st.cond is not None:
            layout.append(f"if {em.expr(st.cond)}:")
            layout.append("    " + entry)
        else:
            layout.append(entry)
    layout.append("return layout")

    scalar_init = _start_bind([ss.init for ss in spec.scalar_states], hyper_bind, set()) + ["return {" + ", ".join(
        f"{ss.name!r}: {em.expr(ss.init)}" for ss in spec.scalar_states) + "}"]

    sparse_lines, requires_lines = [], []
    if spec.sparse:
        cond, requires, message = spec.sparse.cond, spec.sparse.requires, spec.sparse.message
        if not spec.sparse.lazy:
            sparse_lines = ["return False"]
        elif cond is None:
            sparse_lines = ["return True"]
        else:
            hs = {n.value for n in cond.walk() if n.op is Op.HYPER}
            sparse_lines = hyper_bind(hs) + [f"return bool({em.expr(cond)})"]
        if requires is not None:
            hs = {n.value for n in requires.walk() if n.op is Op.HYPER}
            requires_lines = hyper_bind(hs) + [f"if not ({em.expr(requires)}):", f"    return {message!r}",
                                               "return None"]

    # prologue: once per call
    pro = []
    pro_hypers = leaves(spec.prologue, {Op.HYPER}) | {n.value for g in spec.globals for n in g.init.walk() if n.op is Op.HYPER}
    pro += hyper_bind(pro_hypers)
    builtins = leaves(spec.prologue, {Op.BUILTIN}) | {n.value for g in spec.globals for n in g.init.walk() if n.op is Op.BUILTIN}
    pro += [f"{b} = self.{b}" for b in sorted(builtins & {"rescale_grad", "clip_gradient"})]
    if spec.globals:
        pro.append("G = self._globals")
        for g in spec.globals:
            pro.append(f"if {g.name!r} not in G:")
            pro.append(f"    G[{g.name!r}] = {em.expr(g.init)}")
        read = leaves(spec.prologue, {Op.GLOBAL})
        pro += [f"{n} = G[{n!r}]" for n in sorted(read)]
    body = em.block(spec.prologue, 0)
    # reads of a global after its assignment inside the prologue must see the new value
    pro += _rebind_globals(body, spec)
    pro.append("return {" + ", ".join(f"{n!r}: {n}" for n in spec.prologue_exports) + "}")

    # kernel: once per parameter; the gradient as the call scales it (loss unscaling, global clipping)
    ker = ["if _step.grad_scale != 1:", "    grad = grad * _step.grad_scale"] if leaves(spec.body, {Op.GRAD}) else []
    kh = leaves(spec.body, {Op.HYPER})
    ker += hyper_bind(kh)
    kb = leaves(spec.body, {Op.BUILTIN})
    ker += [f"{b} = self.{b}" for b in sorted(kb & {"rescale_grad", "clip_gradient"})]
    ker += step_bindings(spec.body, spec.prologue_exports)
    for g in sorted(leaves(spec.body, {Op.GLOBAL})):
        ker.append(f"{g} = self._globals[{g!r}]")
    used_states = leaves(spec.body, {Op.STATE}) | targets(spec.body, Role.STATE)
    for st in spec.states:
        if st.name in used_states:
            ker.append(f"{st.name} = tensors.get({st.name!r})" if st.cond is not None else f"{st.name} = tensors[{st.name!r}]")
    used_scalars = leaves(spec.body, {Op.SCALAR_STATE}) | targets(spec.body, Role.SCALAR_STATE)
    for ss in spec.scalar_states:
        if ss.name in used_scalars:
            ker.append(f"{ss.name} = scalars[{ss.name!r}]")
    ker_head = list(ker)
    ker += kernel_lines(em, program)   # straight-line for small tensors, chunked stages for large ones
    tail = [f"scalars[{ss.name!r}] = {ss.name}" for ss in spec.scalar_states
            if ss.name in targets(spec.body, Role.SCALAR_STATE)]
    ker += tail
    if not spec.body:
        ker.append("pass")
    # lazy row kernel: the same equations on the gradient's rows (codegen/emit_sparse.py)
    rows_lines = []
    if spec.sparse and spec.sparse.lazy:
        rows_lines = ker_head + RowsEmitter(spec).kernel_lines() + tail

    staged = driver_lines(spec, program)
    interludes = [interlude_lines(spec, program, g, em, hyper_bind) for g in program.gathers]

    tmpl = _env.get_template("numpy_module.py.j2")
    return tmpl.render(
        spec=spec, spec_path=spec_path, docstring=docstring(_doc_text(spec)),
        tensor_states=tuple(st.name for st in spec.states),
        state_storage={st.name: st.storage for st in spec.states if st.storage is not None},
        state_quant={st.name: {"block": st.quant.block, "signed": st.quant.signed, "map": st.quant.map,
                               "codes": tuple(quantmap.table(st.quant.signed, st.quant.map))}
                     for st in spec.states if st.quant is not None},
        scalar_state_names=tuple(s.name for s in spec.scalar_states),
        global_names=tuple(g.name for g in spec.globals),
        sparse_mode=spec.sparse.mode if spec.sparse else None,
        signature=signature, hyper_dict=hyper_dict, base_pass=base_pass,
        layout_lines=layout, scalar_init_lines=scalar_init, sparse_lines=sparse_lines,
        requires_lines=requires_lines, rows_lines=rows_lines,
        prologue_lines=pro, kernel_lines=ker, staged_lines=staged, interludes=interludes,
        phased=program.phased, multi_tensor=program.multi_tensor,
        # 16-bit arrays may enter the chunked kernel as they are (widened a chunk at a time) only when
        # its host code reduces no tensor expression (it would compute it in 16 bits)
        chunked=chunkable(spec, program) and not any(n.op in REDUCTIONS or n.op in GATHERS for n in nodes(spec.body)),
        host_reads_grad=_host_reads_grad(program.steps),
        kernel_stages=tuple(st.fn for st in program.stages))


def interlude_lines(spec, program, g, em, hyper_bind) -> list[str]:
    """The body of `_interlude_K`: the statements of meeting point K that are the same for every
    parameter, run once; it reads the call's values (`_step.call`: the prologue's, the earlier
    interludes'), the globals and the combined reductions, and adds what it assigns to the call's values."""
    stmts = g.interlude
    out = hyper_bind(leaves(stmts, {Op.HYPER}))
    builtins = leaves(stmts, {Op.BUILTIN})
    out += [f"{b} = _step.{b}" for b in sorted(builtins & {"learning_rate", "num_update"})]
    out += [f"{b} = self.{b}" for b in sorted(builtins & {"rescale_grad", "clip_gradient"})]
    known = set(spec.prologue_exports) | {n for h in program.gathers[:g.index] for n in h.exports}
    slot_names = [t for t, _, _ in g.slots]
    globals_ = {x.name for x in spec.globals}
    out += [f"{n} = _step.call[{n!r}]" for n in sorted(leaves(stmts, {Op.LOCAL}) & known - set(slot_names))]
    if leaves(stmts, {Op.GLOBAL}) or targets(stmts, Role.GLOBAL):
        out.append("G = self._globals")
        out += [f"{n} = G[{n!r}]" for n in sorted(leaves(stmts, {Op.GLOBAL}))]
    if slot_names:
        out.append(f"{', '.join(slot_names)}, = _values")
    out += _rebind_globals(em.block(stmts, 0), spec)
    sure = set(slot_names) | _sure_targets(stmts)   # (a name assigned on some paths only is not read after)
    shared = [n for n in g.exports if n not in globals_ and n in sure]
    if shared:
        out.append("_step.call.update({" + ", ".join(f"{n!r}: {n}" for n in shared) + "})")
    return out or ["pass"]


def _sure_targets(stmts) -> set:
    """The names statements assign on every path (an `if` counts when all its branches and its
    `else` assign them)."""
    out = set()
    for s in stmts:
        if isinstance(s, Assign):
            out.add(s.target)
        elif isinstance(s, IfStmt) and s.orelse:
            paths = [_sure_targets(b) for _, b in s.branches] + [_sure_targets(s.orelse)]
            out |= set.intersection(*paths)
    return out


def _start_bind(starts, hyper_bind, bound) -> list[str]:
    """Bindings for the starts of states (created before the first update): their hyperparameters, and
    `lr`, `wd`, `learning_rate` as they are for the parameter when its state is created."""
    hypers = {n.value for e in starts for n in e.walk() if n.op is Op.HYPER} - bound
    out = hyper_bind(hypers)
    rates = sorted({n.value for e in starts for n in e.walk() if n.op is Op.BUILTIN})
    if rates:
        out.append("lr, wd, learning_rate = self._start_rates(index)")
    return out


def _rebind_globals(lines, spec):
    """Prologue statements assign globals through G[...]; later reads use a local refreshed after it."""
    out = []
    for ln in lines:
        out.append(ln)
        stripped = ln.lstrip()
        if stripped.startswith("G["):
            name = stripped[3:stripped.index("]") - 1]
            out.append(ln[: len(ln) - len(stripped)] + f"{name} = G[{name!r}]")
    return out


def render_package_init(modules: list[tuple[str, str, tuple]]) -> str:
    lines = ["# Generated by opt-compile. Do not edit: run `opt-compile` again.",
             '"""Optimizers compiled from specs; importing this package registers them."""']
    names = []
    for mod, cls, _ in modules:
        lines.append(f"from .{mod} import {cls}")
        names.append(cls)
    for mod, cls, aliases in modules:
        for a in aliases:
            if a != a.lower() and a != cls:   # a spelled alias (ccSGD) is exported as a name too
                lines.append(f"{a} = {cls}")
                names.append(a)
    lines.append("")
    lines.append("__all__ = [" + ", ".join(repr(c) for c in names) + "]")
    lines.append("")
    lines.append("from optforge.registry import register as _register")
    lines.append("")
    lines.append("for _cls in (" + "".join(f"{c}, " for _, c, _ in modules) + "):")
    lines.append("    _register(_cls)")
    return "\n".join(lines) + "\n"


def spec_files(sources) -> list[Path]:
    files = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files.extend(sorted(p.glob("*.opt")))
        else:
            files.append(p)
    return files


def render_files(spec: Spec, shown: str) -> dict[str, str]:
    """One checked spec's files: its Python module and the C++/CUDA sources the native and CUDA
    backends load from beside it ({module}.py, .cpp, .cu)."""
    program = lower(spec)   # the one staged program every target renders
    return {f"{spec.module_name}.py": render_module(spec, shown, program),
            f"{spec.module_name}.cpp": CpuEmitter(spec, program).render(shown),
            f"{spec.module_name}.cu": CudaEmitter(spec, program).render(shown)}


_HEADER = re.compile(r"# Generated by opt-compile from (.*) \(sha256 [0-9a-f]+\)\.$")


def kept_modules(out_dir, sources, produced) -> list[tuple[str, str, tuple]]:
    """Modules already in `out_dir` that this run does not produce and must keep: compiled earlier from
    specs outside this run's folders (their header names the spec as folder/file.opt). They stay, and
    the package's __init__ keeps registering them. (module, class, aliases) of each."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    scope = {p.resolve().name if p.is_dir() else p.resolve().parent.name for p in map(Path, sources)}
    kept = []
    for py in sorted(out.glob("*.py")):
        if py.name == "__init__.py" or py.name in produced:
            continue
        try:
            text = py.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        m = _HEADER.match(text.split("\n", 1)[0])
        if m is None or m.group(1).rsplit("/", 1)[0] in scope:
            continue   # not ours, or a spec of this run's folders that no longer exists
        info = _module_info(text)
        if info is not None:
            kept.append((py.stem, *info))
    return kept


def _module_info(text: str):
    """(class name, aliases) of a generated module, read from its source without running it."""
    import ast
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.Assign) and [getattr(t, "id", None) for t in item.targets] == ["aliases"]:
                    try:
                        return node.name, tuple(ast.literal_eval(item.value))
                    except ValueError:
                        return None
    return None


def build(sources, out_dir) -> tuple[dict[str, str], list, list]:
    """Compile every spec. Returns ({relative file: text}, errors, warnings); nothing is written. The
    package's __init__ also registers the modules of `out_dir` this run keeps (`kept_modules`)."""
    outputs: dict[str, str] = {}
    errors, warnings = [], []
    modules = []
    seen = {}
    for f in spec_files(sources):
        rel = os.path.relpath(f).replace(os.sep, "/") if not Path(f).is_absolute() else str(f)
        try:
            text = Path(f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            errors.append(f"{rel}: error: cannot read spec: {e}")
            continue
        try:
            spec, warns = check(parse(text, rel), rel, text, file_stem=Path(f).stem)
        except SpecError as e:
            errors.extend(d.render() for d in e.diagnostics if d.severity == "error")
            warnings.extend(d.render() for d in e.diagnostics if d.severity != "error")
            continue
        warnings.extend(d.render() for d in warns)
        if spec.module_name in seen:
            errors.append(f"{rel}:1:1: error: optimizer `{spec.name}` is also defined in {seen[spec.module_name]}")
            continue
        seen[spec.module_name] = rel
        # the header names the spec the same way wherever opt-compile runs: folder/file.opt
        outputs.update(render_files(spec, f"{Path(f).resolve().parent.name}/{Path(f).name}"))
        modules.append((spec.module_name, spec.name, spec.aliases))
    kept = kept_modules(out_dir, sources, outputs) if out_dir is not None else []
    names = {m for m, _, _ in modules}
    outputs["__init__.py"] = render_package_init(sorted(modules + [k for k in kept if k[0] not in names]))
    return outputs, errors, warnings
