"""Markdown documentation from a checked spec: one page per optimizer (docs/optimizers/<name>.md)
and an index, rendered through templates/docs_page.md.j2. The update's equations are rendered as
LaTeX by the same table-driven scheme the code emitters use (OP_TABLE: op -> format function)."""
from __future__ import annotations

import re

from .errors import InternalError
from .ir import Assign, Op, Repeat, Role, Spec

GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "kappa", "lambda", "mu", "nu",
         "xi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega"}
SPELLED = {"lamda": "lambda", "lamda1": "lambda1"}     # MXNet's spelling of lambda (FTRL)
BUILTIN_TEX = {"weight": "w", "grad": r"\nabla_{w}", "lr": r"\eta", "wd": r"\lambda_{wd}", "t": "t",
               "learning_rate": r"\eta_0", "num_update": r"n_{\mathrm{update}}"}

# precedence of the rendered operator: higher binds tighter; atoms are 9
PREC = {Op.OR: 1, Op.AND: 2, Op.NOT: 3, **{op: 4 for op in (Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE)},
        Op.ADD: 5, Op.SUB: 5, Op.MUL: 6, Op.MOD: 6, Op.MATMUL: 6, Op.NEG: 7, Op.POW: 8}


def name_tex(name: str) -> str:
    """`beta1` -> \\beta_{1}, `m_hat` -> \\hat{m}, `lr_t` -> \\eta_{t}, `mom` -> \\mathit{mom}."""
    name = SPELLED.get(name, name)
    if name.endswith("_hat") and len(name) > 4:
        return rf"\hat{{{name_tex(name[:-4])}}}"
    m = re.fullmatch(r"([A-Za-z]+)(\d+)", name) or re.fullmatch(r"([A-Za-z]+)_([A-Za-z0-9]+)", name)
    base, sub = (m.group(1), m.group(2)) if m else (name, None)
    if base == "lr":
        base = r"\eta"
    elif base in GREEK:
        base = "\\" + base
    elif len(base) > 1:
        base = r"\mathit{" + base.replace("_", r"\_") + "}"
    if sub and len(sub) > 1 and not sub.isdigit():
        sub = r"\mathrm{" + sub + "}"
    return base + (f"_{{{sub}}}" if sub else "")


def num_tex(value) -> str:
    if isinstance(value, bool):
        return r"\mathrm{" + str(value).lower() + "}"
    if value is None:
        return r"\mathrm{none}"
    if isinstance(value, str):
        return r'\texttt{"' + value.replace("_", r"\_") + '"}'
    if isinstance(value, float) and value == int(value) and abs(value) < 1e6:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mant, exp = text.split("e")
        return ("" if mant in ("1", "1.0") else mant + r" \cdot ") + f"10^{{{int(exp)}}}"
    return text


def _fn(name):
    return lambda *a: rf"\operatorname{{{name}}}(" + ", ".join(a) + ")"


class DocsEmitter:
    """Renders IR expressions and statements as LaTeX (KaTeX/MathJax subset that GitHub renders)."""
    OP_TABLE = {
        Op.ADD: lambda a, b: f"{a} + {b}", Op.SUB: lambda a, b: f"{a} - {b}",
        Op.MUL: lambda a, b: rf"{a} \, {b}", Op.DIV: lambda a, b: rf"\frac{{{a}}}{{{b}}}",
        Op.MOD: lambda a, b: rf"{a} \bmod {b}", Op.POW: lambda a, b: f"{a}^{{{b}}}", Op.NEG: lambda a: f"-{a}",
        Op.EQ: lambda a, b: f"{a} = {b}", Op.NE: lambda a, b: rf"{a} \neq {b}", Op.LT: lambda a, b: f"{a} < {b}",
        Op.LE: lambda a, b: rf"{a} \le {b}", Op.GT: lambda a, b: f"{a} > {b}", Op.GE: lambda a, b: rf"{a} \ge {b}",
        Op.AND: lambda a, b: rf"{a} \land {b}", Op.OR: lambda a, b: rf"{a} \lor {b}", Op.NOT: lambda a: rf"\lnot {a}",
        Op.SQRT: lambda a: rf"\sqrt{{{a}}}", Op.SQUARE: lambda a: f"{a}^{{2}}", Op.ABS: lambda a: rf"\left|{a}\right|",
        Op.SIGN: _fn("sign"), Op.EXP: lambda a: rf"\exp({a})", Op.LOG: lambda a: rf"\log({a})",
        Op.MAXIMUM: lambda a, b: rf"\max({a}, {b})", Op.MINIMUM: lambda a, b: rf"\min({a}, {b})",
        Op.CLIP: _fn("clip"), Op.WHERE: lambda c, a, b: rf"\begin{{cases}} {a} & \text{{if }} {c} \\ {b} & "
                                                        rf"\text{{otherwise}} \end{{cases}}",
        Op.NORM: lambda a: rf"\lVert {a} \rVert_2", Op.SUM: lambda a: rf"\textstyle\sum {a}",
        Op.NORMAL: lambda m, s: rf"\mathcal{{N}}({m}, {s}^{{2}})", Op.ENDSWITH: _fn("endswith"),
        # whole-tensor forms (the checker writes mean and rms as sums and norms over counts; the
        # forms along an axis and the shape facts are rendered in `expr`)
        Op.MAX: lambda a: rf"\max {a}", Op.MIN: lambda a: rf"\min {a}", Op.MEAN: _fn("mean"), Op.RMS: _fn("rms"),
        Op.NDIM: _fn("ndim"), Op.NUMEL: _fn("numel"), Op.SIZE: _fn("size"),
        # matrix products: the operands side by side; a transposed operand with a superscript T
        Op.MATMUL: lambda a, b: f"{a} {b}", Op.TRANSPOSE: lambda a: f"{a}^{{\top}}",
        Op.EYE: lambda n: "I", Op.HOST: lambda a: a,
        # over every parameter p of the update call
        Op.GSUM: lambda a: rf"\textstyle\sum_{{p}} \left({a}\right)",
        Op.GNORM: lambda a: rf"\sqrt{{\textstyle\sum_{{p}} \left({a}\right)^2}}",
        Op.GMAX: lambda a: rf"\max_{{p}} \left({a}\right)", Op.GMIN: lambda a: rf"\min_{{p}} \left({a}\right)",
    }
    # operands that the format already delimits (braces, parentheses) need no parentheses of their own
    DELIMITED = {Op.DIV, Op.SQRT, Op.ABS, Op.SIGN, Op.EXP, Op.LOG, Op.MAXIMUM, Op.MINIMUM, Op.CLIP, Op.WHERE,
                 Op.NORM, Op.NORMAL, Op.ENDSWITH}

    def __init__(self, spec: Spec):
        self.spec = spec

    def expr(self, e, parent_prec: int = 0, right: bool = False) -> str:
        if e.op is Op.HOST:   # where it is computed is not the equation's business
            return self.expr(e.args[0], parent_prec, right)
        if e.op is Op.CONST:
            return num_tex(e.value)
        if e.op in (Op.HYPER, Op.GLOBAL, Op.SCALAR_STATE, Op.STATE, Op.LOCAL):
            return name_tex(e.value)
        if e.op in (Op.BUILTIN, Op.WEIGHT, Op.GRAD):
            return BUILTIN_TEX.get(e.value, r"\mathit{" + str(e.value).replace("_", r"\_") + "}")
        if e.op is Op.NDIM:
            return r"\operatorname{ndim}(" + BUILTIN_TEX["weight"] + ")"
        if e.op is Op.NUMEL:   # how many values: of the weight, or of a per-row (col, block) value
            if e.shape.value == "full":
                return r"\operatorname{numel}(" + BUILTIN_TEX["weight"] + ")"
            return r"\operatorname{numel}_{\text{" + e.shape.value.replace("_", " ") + "}}"
        if e.op is Op.SIZE:
            return r"n_{\text{" + ("cols" if e.value == -1 else "rows") + "}}"
        if e.op is Op.EYE:
            return "I"
        if e.op is Op.TRANSPOSE:
            return self.expr(e.args[0], 9) + r"^{\top}"
        if e.axis is not None:   # along an axis: the sum (max, min) over the cols (rows) of each row (col)
            sym = {Op.SUM: r"\textstyle\sum", Op.MAX: r"\max", Op.MIN: r"\min"}[e.op]
            text = sym + r"_{\text{" + ("cols" if e.axis == -1 else "rows") + "}} " + self.expr(e.args[0], 9)
            return rf"\left({text}\right)" if parent_prec > 0 else text
        if e.op in (Op.MAX, Op.MIN):
            text = (r"\max " if e.op is Op.MAX else r"\min ") + self.expr(e.args[0], 9)
            return rf"\left({text}\right)" if parent_prec > 0 else text
        fmt = self.OP_TABLE.get(e.op)
        if fmt is None:
            raise InternalError(f"no docs rule for {e.op}")
        prec = PREC.get(e.op, 9)
        if e.op in self.DELIMITED:
            args = [self.expr(a, 0) for a in e.args]
        elif e.op is Op.POW:
            args = [self.expr(e.args[0], 9), self.expr(e.args[1], 0)]
        elif e.op is Op.SQUARE:
            args = [self.expr(e.args[0], 9)]
        else:
            args = [self.expr(a, prec, right=i > 0) for i, a in enumerate(e.args)]
        text = fmt(*args)
        # a - (b + c): same precedence on the right of a non-associative operator needs parentheses
        if prec < parent_prec or (right and prec == parent_prec and prec in (5, 6)):
            return rf"\left({text}\right)"
        return text

    def lines(self, stmts, depth: int = 0) -> list[str]:
        out, pad = [], r"\quad " * depth
        for s in stmts:
            if isinstance(s, Assign):
                out.append(rf"&{pad}{self.target(s)} \leftarrow {self.expr(s.value)}")
                continue
            if isinstance(s, Repeat):
                out.append(rf"&{pad}\textbf{{repeat}}\ {self.expr(s.count)}\ \textbf{{times}}:")
                out += self.lines(s.body, depth + 1)
                continue
            for i, (cond, body) in enumerate(s.branches):
                out.append(rf"&{pad}\textbf{{{'if' if i == 0 else 'else if'}}}\ {self.expr(cond)}:")
                out += self.lines(body, depth + 1)
            if s.orelse:
                out.append(rf"&{pad}\textbf{{else}}:")
                out += self.lines(s.orelse, depth + 1)
        return out

    def target(self, s: Assign) -> str:
        return BUILTIN_TEX["weight"] if s.role is Role.WEIGHT else name_tex(s.target)

    def math_block(self) -> str:
        rows = self.lines(self.spec.prologue) + self.lines(self.spec.body)
        return "$$\n\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}\n$$"


def source_of(spec: Spec, node) -> str:
    """The spec text an IR node came from (conditions are shown as written)."""
    sp = node.span
    lines = spec.source.split("\n")
    if sp is None or sp.line <= 0:
        return "?"
    if sp.line == sp.end_line:
        return lines[sp.line - 1][sp.col - 1:sp.end_col - 1]
    return " ".join([lines[sp.line - 1][sp.col - 1:]] + lines[sp.line:sp.end_line - 1] +
                    [lines[sp.end_line - 1][:sp.end_col - 1]]).strip()


def markdown_doc(text: str) -> str:
    """The spec's doc text (reST-flavoured plain text) as Markdown: `.. warning::` becomes a quote."""
    out, in_warning = [], False
    for ln in text.strip().splitlines():
        if ln.startswith(".. warning::"):
            out.append("> **Warning:** " + ln[len(".. warning::"):].strip())
            in_warning = True
        elif in_warning and ln.startswith("   ") and ln.strip():
            out.append("> " + ln.strip())
        else:
            in_warning = False
            out.append(ln)
    return "\n".join(out)


def hyper_rows(spec: Spec) -> list[tuple]:
    rows = []
    for h in spec.hypers:
        ty = " \\| ".join(f'`"{c}"`' for c in h.choices) if h.choices else f"`{h.type}{'?' if h.optional else ''}`"
        default = "none" if h.default is None else str(h.default).lower() if isinstance(h.default, bool) else repr(h.default)
        rows.append((f"`{h.name}`", ty, f"`{default}`", f"`{h.range_text()}`" if h.range_text() else "", h.doc))
    return rows


def state_rows(spec: Spec) -> list[tuple]:
    init = {"zeros": "zeros", "weight": "a copy of the weight"}
    what = {"full": "tensor, like the weight", "per_row": "tensor, one value per row",
            "per_col": "tensor, one value per col", "per_block": "tensor, one value per block",
            "rows_x_rows": "rows x rows matrix per block", "cols_x_cols": "cols x cols matrix per block"}

    def start(s):
        if s.value is not None:
            return f"`{source_of(spec, s.value)}`"
        if s.init == "eye":
            return "the identity" if s.fill == 1.0 else f"`{s.fill!r}` times the identity"
        return init.get(s.init, f"filled with `{s.fill!r}`")
    rows = [(f"`{s.name}`", what[s.shape.value] + (f", stored as {s.storage}" if s.storage else ""), start(s),
             f"`{source_of(spec, s.cond)}`" if s.cond is not None else "always") for s in spec.states]
    rows += [(f"`{s.name}`", "number per parameter (host)", f"`{source_of(spec, s.init)}`", "always")
             for s in spec.scalar_states]
    rows += [(f"`{g.name}`", "number per optimizer (host)", f"`{source_of(spec, g.init)}` at the first update", "always")
             for g in spec.globals]
    return rows


def sparse_text(spec: Spec) -> str:
    if not spec.sparse:
        return ("No `sparse` declaration: an `optforge.RowSparse` gradient runs the dense update with zero rows "
                "(MXNet's standard update).")
    mode, cond, requires, message = spec.sparse.mode, spec.sparse.cond, spec.sparse.requires, spec.sparse.message
    if mode == "standard":
        return "`sparse standard`: a row-sparse gradient runs the dense update with zero rows."
    text = "Lazy: an `optforge.RowSparse` gradient updates only the rows it holds (weight and every state)"
    text += f", when `{source_of(spec, cond)}`" if cond is not None else ""
    text += "; otherwise the dense update runs with zero rows." if cond is not None else "."
    if requires is not None:
        text += f" A lazy update requires `{source_of(spec, requires)}`, else raises `ValueError: {message}`."
    return text


def page_context(spec: Spec, shown: str) -> dict:
    em = DocsEmitter(spec)
    names = [spec.name.lower()] + [a.lower() for a in spec.aliases if a.lower() != spec.name.lower()]
    base = [(f"`{k}`", f"`{v!r}`") for k, v in spec.defaults.items()]
    options = [f"`{k}`" + ("" if v is True else f" = `{v!r}`") for k, v in spec.options.items()]
    return dict(spec=spec, shown=shown, names=names, doc=markdown_doc(spec.doc) if spec.doc.strip() else
                f"The {spec.name} optimizer.", summary=summary(spec), math=em.math_block(),
                update=_dedent(spec.update_text), hypers=hyper_rows(spec), base=base, states=state_rows(spec),
                sparse=sparse_text(spec), options=options, lazy=bool(spec.sparse and spec.sparse.lazy),
                view=view_text(spec))


def view_text(spec: Spec) -> str:
    """How a shaped spec sees a parameter (empty for one without shapes)."""
    from .names import VIEWS
    if not spec.shaped:
        return ""
    if not any(st.shape.value in ("per_row", "per_col", "per_block") for st in spec.states):
        return (f"Each parameter is viewed as blocks x rows x cols (`view {spec.view}`: {VIEWS[spec.view]}); "
                "matrix products multiply the matrix of each block.")
    return (f"Each parameter is viewed as blocks x rows x cols (`view {spec.view}`: {VIEWS[spec.view]}). A per-row "
            "state has the parameter's shape with its cols reduced to 1 (a (4, 5) weight: (4, 1)), a per-col one "
            "with its rows reduced to 1 ((1, 5)), a per-block one with both; they are checkpointed and validated "
            "with those shapes.")


def summary(spec: Spec) -> str:
    first = spec.doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    return first or f"The {spec.name} optimizer."


def _dedent(text: str) -> str:
    import textwrap
    lines = text.splitlines()
    return text if len(lines) <= 1 else lines[0] + "\n" + textwrap.dedent("\n".join(lines[1:]))


def render_page(spec: Spec, shown: str) -> str:
    from .compile import _env
    return _env.get_template("docs_page.md.j2").render(**page_context(spec, shown)).rstrip("\n") + "\n"


def render_index(specs: list[tuple[Spec, str]]) -> str:
    """docs/optimizers/README.md: one row per optimizer, linking its page."""
    lines = ["<!-- Generated by opt-compile --docs. Do not edit: change the specs and run it again. -->",
             "# Optimizers", "",
             "One page per spec, generated from it: description, update equations, parameters, state, "
             "sparse support, backends. How to write your own: [the spec language](../spec-language.md).", "",
             "| optimizer | registered as | state | sparse | summary |", "| --- | --- | --- | --- | --- |"]
    for spec, shown in sorted(specs, key=lambda p: p[0].module_name):
        names = ", ".join(f"`{n}`" for n in dict.fromkeys([spec.name.lower()] + [a.lower() for a in spec.aliases]))
        states = ", ".join(f"`{s.name}`" for s in spec.states) or "—"
        sparse = spec.sparse.mode if spec.sparse else "standard"
        text = summary(spec).replace("|", "\\|")
        lines.append(f"| [{spec.name}]({spec.module_name}.md) | {names} | {states} | {sparse} | {text} |")
    return "\n".join(lines) + "\n"


def build_docs(sources) -> tuple[dict[str, str], list, list]:
    """({file: Markdown}, errors, warnings) for every spec in `sources`: <name>.md each, README.md."""
    from pathlib import Path

    from .check import check
    from .compile import spec_files
    from .errors import SpecError
    from .parser import parse
    outputs, errors, warnings, specs = {}, [], [], []
    for f in spec_files(sources):
        shown = f"{Path(f).resolve().parent.name}/{Path(f).name}"
        try:
            text = Path(f).read_text(encoding="utf-8")
            spec, warns = check(parse(text, str(f)), str(f), text, file_stem=Path(f).stem)
        except (OSError, UnicodeDecodeError) as e:
            errors.append(f"{f}: error: cannot read spec: {e}")
            continue
        except SpecError as e:
            errors.extend(d.render() for d in e.diagnostics if d.severity == "error")
            continue
        warnings.extend(d.render() for d in warns)
        if f"{spec.module_name}.md" in outputs:
            errors.append(f"{f}:1:1: error: optimizer `{spec.name}` is defined twice")
            continue
        outputs[f"{spec.module_name}.md"] = render_page(spec, shown)
        specs.append((spec, shown))
    outputs["README.md"] = render_index(specs)
    return outputs, errors, warnings
