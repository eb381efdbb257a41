"""IR -> a Python module: the Optimizer subclass and its NumPy kernel.

Host values (kinds up to REDUCED) are plain Python numbers, so they never widen float32 arrays;
tensor values are NumPy arrays. Weight and states are written in place (`mean[...] = ...`).
"""
from __future__ import annotations

from .errors import InternalError
from .ir import Assign, Expr, IfStmt, Kind, Op, Spec

PREC = {Op.OR: 1, Op.AND: 2, Op.NOT: 3, Op.EQ: 4, Op.NE: 4, Op.LT: 4, Op.LE: 4, Op.GT: 4, Op.GE: 4,
        Op.ADD: 5, Op.SUB: 5, Op.MUL: 6, Op.DIV: 6, Op.MOD: 6, Op.NEG: 7, Op.POW: 8}
ATOM = 9

HOST_FUNCS = {Op.SQRT: "math.sqrt({0})", Op.SQUARE: "({0}) ** 2", Op.ABS: "abs({0})", Op.SIGN: "ops.sign({0})",
              Op.EXP: "math.exp({0})", Op.LOG: "math.log({0})", Op.MAXIMUM: "max({0}, {1})",
              Op.MINIMUM: "min({0}, {1})", Op.CLIP: "ops.clip({0}, {1})"}
TENSOR_FUNCS = {Op.SQRT: "{xp}.sqrt({0})", Op.SQUARE: "{xp}.square({0})", Op.ABS: "{xp}.abs({0})",
                Op.SIGN: "{xp}.sign({0})", Op.EXP: "{xp}.exp({0})", Op.LOG: "{xp}.log({0})",
                Op.MAXIMUM: "{xp}.maximum({0}, {1})", Op.MINIMUM: "{xp}.minimum({0}, {1})",
                Op.CLIP: "ops.clip({0}, {1})"}
REDUCE_FUNCS = {Op.NORM: "ops.norm({0})", Op.SUM: "ops.total({0})"}


class NumpyEmitter:
    """Renders expressions and statements of one spec as Python source lines."""

    def __init__(self, spec: Spec, xp: str = "np"):
        self.spec = spec
        self.file = spec.path.rsplit("/", 1)[-1]
        self.xp = xp   # the array module tensor expressions use: numpy, or `xp` chosen at run time

    # ---- expressions ----------------------------------------------------------------------------
    def expr(self, e: Expr) -> str:
        return self._e(e)[0]

    def _wrap(self, e: Expr, parent_prec: int, right: bool = False) -> str:
        text, prec = self._e(e)
        if prec < parent_prec or (right and prec == parent_prec):
            return f"({text})"
        return text

    def _e(self, e: Expr) -> tuple[str, int]:
        op = e.op
        tensor = e.kind is Kind.TENSOR
        if op is Op.CONST:
            return repr(e.value), ATOM if not (isinstance(e.value, (int, float)) and e.value < 0) else PREC[Op.NEG]
        if op in (Op.HYPER, Op.BUILTIN, Op.SCALAR_STATE, Op.STATE, Op.LOCAL, Op.GLOBAL):
            return e.value, ATOM
        if op is Op.WEIGHT:
            return "weight", ATOM
        if op is Op.GRAD:
            return "grad", ATOM
        if op in (Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MOD):
            p = PREC[op]
            return f"{self._wrap(e.args[0], p)} {op.value} {self._wrap(e.args[1], p, right=True)}", p
        if op is Op.POW:
            p = PREC[op]
            return f"{self._wrap(e.args[0], p + 1)} ** {self._wrap(e.args[1], PREC[Op.NEG])}", p
        if op is Op.NEG:
            return f"-{self._wrap(e.args[0], PREC[Op.NEG])}", PREC[Op.NEG]
        if op in (Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE):
            p = PREC[op]
            text = f"{self._wrap(e.args[0], p + 1)} {op.value} {self._wrap(e.args[1], p + 1)}"
            optional = [a for a in e.args if a.optional]
            if optional:  # a comparison with none is false
                guard = " and ".join(f"{a.value} is not None" for a in optional)
                return f"{guard} and {text}", PREC[Op.AND]
            return text, p
        if op in (Op.AND, Op.OR):
            if tensor:
                fn = f"{self.xp}.logical_and" if op is Op.AND else f"{self.xp}.logical_or"
                return f"{fn}({self.expr(e.args[0])}, {self.expr(e.args[1])})", ATOM
            p = PREC[op]
            return f"{self._wrap(e.args[0], p)} {op.value} {self._wrap(e.args[1], p, right=True)}", p
        if op is Op.NOT:
            if tensor:
                return f"{self.xp}.logical_not({self.expr(e.args[0])})", ATOM
            return f"not {self._wrap(e.args[0], PREC[Op.NOT])}", PREC[Op.NOT]
        if op is Op.WHERE:
            c, a, b = e.args
            if c.kind is Kind.TENSOR:
                return f"{self.xp}.where({self.expr(c)}, {self.expr(a)}, {self.expr(b)})", ATOM
            return f"{self._wrap(a, 1)} if {self._wrap(c, 1)} else {self._wrap(b, 1)}", 0
        if op in REDUCE_FUNCS:
            return REDUCE_FUNCS[op].format(self.expr(e.args[0])), ATOM
        if op is Op.NORMAL:
            return f"ops.normal(self._rng, {self.expr(e.args[0])}, {self.expr(e.args[1])}, weight)", ATOM
        if op is Op.ENDSWITH:
            suffixes = ", ".join(self.expr(a) for a in e.args[1:])
            return f"{self._wrap(e.args[0], ATOM)}.endswith(({suffixes},))", ATOM
        table = TENSOR_FUNCS if tensor else HOST_FUNCS
        if op in table:
            args = [self.expr(a) for a in e.args]
            text = table[op].format(*args, xp=self.xp)
            return text, ATOM if not text.endswith("** 2") else PREC[Op.POW]
        raise InternalError(f"no numpy rule for {op}")

    # ---- statements ------------------------------------------------------------------------------
    def block(self, stmts, indent: int, prologue: bool = False) -> list[str]:
        pad = "    " * indent
        out: list[str] = []
        for s in stmts:
            if isinstance(s, Assign):
                out.append(pad + self.assign(s, prologue))
            elif isinstance(s, IfStmt):
                for i, (cond, body) in enumerate(s.branches):
                    out.append(f"{pad}{'if' if i == 0 else 'elif'} {self.expr(cond)}:")
                    out.extend(self.block(body, indent + 1, prologue) or [pad + "    pass"])
                if s.orelse:
                    out.append(f"{pad}else:")
                    out.extend(self.block(s.orelse, indent + 1, prologue))
            else:  # pragma: no cover
                raise InternalError(f"no numpy rule for statement {type(s).__name__}")
        return out

    def assign(self, s: Assign, prologue: bool) -> str:
        value = self.expr(s.value)
        comment = f"  # {self.file}:{s.line}"
        if s.role in ("weight", "state"):
            return f"{s.target}[...] = {value}{comment}"
        if s.role == "global":
            return f"G[{s.target!r}] = {value}{comment}"
        if s.role == "local" and s.value.kind is Kind.TENSOR and _may_alias(s.value):
            return f"{s.target} = {self.xp}.array({value}){comment}"  # a private copy: weight/states change in place
        return f"{s.target} = {value}{comment}"


def _may_alias(e: Expr) -> bool:
    if e.op in (Op.WEIGHT, Op.STATE):
        return True
    if e.op is Op.WHERE and e.args[0].kind is not Kind.TENSOR:
        return _may_alias(e.args[1]) or _may_alias(e.args[2])
    return False


def leaves(stmts, ops) -> set:
    out = set()
    for s in stmts:
        if isinstance(s, Assign):
            exprs = [s.value]
        else:
            exprs = [c for c, _ in s.branches]
            out |= leaves([x for _, b in s.branches for x in b] + list(s.orelse), ops)
        for e in exprs:
            for n in e.walk():
                if n.op in ops:
                    out.add(n.value)
    return out


def targets(stmts, role) -> set:
    out = set()
    for s in stmts:
        if isinstance(s, Assign):
            if s.role == role:
                out.add(s.target)
        else:
            out |= targets([x for _, b in s.branches for x in b] + list(s.orelse), role)
    return out
