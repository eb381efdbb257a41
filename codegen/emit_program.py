"""The staged program (codegen/lower.py) as text: what `opt-compile --emit program` prints. It shows
what every compiled target runs, in order: host steps, stages with the tensors they read and write
in memory, their scalar arguments (with the conditions under which they are computed) and fused
reductions, and host branches."""
from __future__ import annotations

from .ir import Assign, Expr, Op, Repeat
from .lower import Gather, Host, Loop, Program, Stage, is_product

_BINARY = {Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MOD, Op.POW, Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE, Op.AND, Op.OR}


def expr_text(e: Expr, top: bool = True) -> str:
    """An expression in the spec's own syntax (fully parenthesised below the top)."""
    op = e.op
    if op is Op.HOST:
        return expr_text(e.args[0], top)
    if op is Op.CONST:
        return f'"{e.value}"' if isinstance(e.value, str) else str(e.value).lower() if isinstance(e.value, bool) \
            else repr(e.value)
    if op is Op.WEIGHT:
        return "weight"
    if op is Op.GRAD:
        return "grad"
    if op is Op.NDIM:
        return "ndim(weight)"
    if op is Op.NUMEL:
        return "numel(weight)" if e.shape.value == "full" else f"numel(<{e.shape.value}>)"
    if op is Op.SIZE:
        return f"size(weight, {e.value})" if e.shape.value == "full" else f"size(<{e.shape.value}>, {e.value})"
    if op is Op.EYE:
        return f"eye(<{e.shape.value}>)"
    if op is Op.MATMUL:
        text = f"{expr_text(e.args[0], False)} @ {expr_text(e.args[1], False)}"
        return text if top else f"({text})"
    if not e.args:
        return str(e.value)
    if op in _BINARY:
        text = f"{expr_text(e.args[0], False)} {op.value} {expr_text(e.args[1], False)}"
        return text if top else f"({text})"
    if op is Op.NEG:
        return f"-{expr_text(e.args[0], False)}"
    if op is Op.NOT:
        return f"not {expr_text(e.args[0], False)}"
    return f"{op.value}({', '.join(expr_text(a) for a in e.args)})"


def _stmt(s, pad: str) -> list[str]:
    if isinstance(s, Assign):
        return [f"{pad}{s.target} = {expr_text(s.value)}    # line {s.line}"]
    if isinstance(s, Repeat):
        out = [f"{pad}repeat {expr_text(s.count)} {{"]
        for x in s.body:
            out += _stmt(x, pad + "    ")
        return out + [f"{pad}}}"]
    out = []
    for k, (c, body) in enumerate(s.branches):
        out.append(f"{pad}{'if' if k == 0 else 'elif'} {expr_text(c)} {{")
        for x in body:
            out += _stmt(x, pad + "    ")
    if s.orelse:
        out.append(f"{pad}}} else {{")
        for x in s.orelse:
            out += _stmt(x, pad + "    ")
    out.append(f"{pad}}}")
    return out


def _guard(sc) -> str:
    if sc.guards is None:
        return ""
    return "  [when " + " or ".join(" and ".join(expr_text(c) for c in g) for g in sc.guards) + "]"


def _steps(items, pad: str) -> list[str]:
    out = []
    for it in items:
        if isinstance(it, Host) and is_product(it.stmt):
            out.append(f"{pad}product  {it.stmt.target} = {expr_text(it.stmt.value)} ({it.stmt.value.shape.value}; "
                       f"a library call)    # line {it.stmt.line}")
        elif isinstance(it, Loop):
            out.append(f"{pad}repeat {expr_text(it.count)}:")
            out += _steps(it.steps, pad + "    ")
        elif isinstance(it, Gather):
            out.append(f"{pad}meet {it.index}: every parameter of the call waits here; over all of them:")
            for target, op, value in it.slots:
                out.append(f"{pad}    {target} = {op.value}({expr_text(value)})")
            if it.interlude:
                out.append(f"{pad}  then once per call:")
                for x in it.interlude:
                    out += _stmt(x, pad + "    ")
        elif isinstance(it, Host):
            fused = "".join(f"  [{n.op.value} from {st} slot {slot}]" for n, (st, slot) in it.fused.items())
            out += [f"{pad}host  " + ln.lstrip() + fused for ln in _stmt(it.stmt, "")]
        elif isinstance(it, Stage):
            over = "" if it.domain.value == "full" else f" over {it.domain.value}"
            shaped = [f"{n} {sh.value}" for n, sh in it.shapes.items() if sh is not it.domain]
            out.append(f"{pad}stage {it.name} ({it.fn}){over}: reads {', '.join(it.reads) or '-'}; "
                       f"writes {', '.join(it.writes) or '-'}" + (f"; broadcasts {', '.join(shaped)}" if shaped else ""))
            for sc in it.scalars:
                value = "noise seed" if sc.expr is None else expr_text(sc.expr)
                out.append(f"{pad}    scalar {sc.name} = {value}{_guard(sc)}")
            for x in it.stmts:
                out += _stmt(x, pad + "    ")
            for k, (op, arg) in enumerate(it.reductions):
                out.append(f"{pad}    reduce slot {k}: {op.value}({expr_text(arg)})")
            for name, op, axis, arg in it.outputs:
                out.append(f"{pad}    reduce {name} = {op.value}({expr_text(arg)}, {axis})")
        else:
            for k, (c, body) in enumerate(it.branches):
                out.append(f"{pad}{'if' if k == 0 else 'elif'} {expr_text(c)}:")
                out += _steps(body, pad + "    ")
            if it.orelse:
                out.append(f"{pad}else:")
                out += _steps(it.orelse, pad + "    ")
    return out


def render(program: Program) -> str:
    spec = program.spec
    head = [f"# the staged program of {spec.name} ({spec.path}): what the compiled backends and the NumPy",
            "# chunked kernel run for each parameter, in order (codegen/lower.py)",
            f"stages: {len(program.stages)}; scratch arrays: {', '.join(program.scratch) or 'none'}; "
            f"list updates {'defer every launch' if program.multi_tensor else 'run parameter by parameter'}"]
    if spec.prologue:
        head.append("once per update call:")
        for s in spec.prologue:
            head += _stmt(s, "    ")
    head.append("per parameter:")
    return "\n".join(head + _steps(program.steps, "    ")) + "\n"
