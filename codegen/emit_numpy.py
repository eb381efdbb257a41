"""IR -> a Python module: the Optimizer subclass and its NumPy kernel.

Host values (kinds up to REDUCED) are plain Python numbers, so they never widen float32 arrays;
tensor values are NumPy arrays. Weight and states are written in place (`mean[...] = ...`).
"""
from __future__ import annotations

from .errors import InternalError
from .ir import SHAPE_FACTS, Assign, Expr, IfStmt, Kind, Op, Repeat, Role, Spec, Ty
from .lower import Branch, Gather, Host, Program, Stage
from .walk import leaves, nodes, targets

PREC = {Op.OR: 1, Op.AND: 2, Op.NOT: 3, Op.EQ: 4, Op.NE: 4, Op.LT: 4, Op.LE: 4, Op.GT: 4, Op.GE: 4,
        Op.ADD: 5, Op.SUB: 5, Op.MUL: 6, Op.DIV: 6, Op.MOD: 6, Op.NEG: 7, Op.POW: 8}
ATOM = 9

HOST_FUNCS = {Op.SQRT: "math.sqrt({0})", Op.SQUARE: "({0}) ** 2", Op.ABS: "abs({0})", Op.SIGN: "ops.sign({0})",
              Op.EXP: "math.exp({0})", Op.LOG: "math.log({0})", Op.MAXIMUM: "ops.maximum({0}, {1})",
              Op.MINIMUM: "ops.minimum({0}, {1})", Op.CLIP: "ops.clip({0}, {1})"}
TENSOR_FUNCS = {Op.SQRT: "{xp}.sqrt({0})", Op.SQUARE: "{xp}.square({0})", Op.ABS: "{xp}.abs({0})",
                Op.SIGN: "{xp}.sign({0})", Op.EXP: "{xp}.exp({0})", Op.LOG: "{xp}.log({0})",
                Op.MAXIMUM: "{xp}.maximum({0}, {1})", Op.MINIMUM: "{xp}.minimum({0}, {1})",
                Op.CLIP: "ops.clip({0}, {1})"}
REDUCE_FUNCS = {Op.NORM: "ops.norm({0})", Op.SUM: "ops.total({0})", Op.MAX: "ops.total_max({0})",
                Op.MIN: "ops.total_min({0})"}
FUSED_FUNCS = {Op.NORM: "ops.fused_norm({0})", Op.SUM: "ops.fused_total({0})", Op.MAX: "ops.fused_max({0})",
               Op.MIN: "ops.fused_min({0})"}
# reductions along an axis, on arrays in their stored (keepdims) shapes: ops.reduce(x, how, axis, view)
AXIS_FUNCS = {Op.SUM: "sum", Op.MAX: "max", Op.MIN: "min"}


class NumpyEmitter:
    """Renders expressions and statements of one spec as Python source lines."""

    def __init__(self, spec: Spec, xp: str = "np"):
        self.spec = spec
        self.file = spec.path.rsplit("/", 1)[-1]
        self.xp = xp   # the array module tensor expressions use: numpy, or `xp` chosen at run time
        # reduction node -> (variable, slot): the driver's fused reductions (lower.py), finished from a
        # stage's partial sums when the backend returned them, else computed here
        self.fused: dict = {}
        self.grad_name = "grad"   # the driver's host code reads the scaled gradient `_grad`

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
        if op is Op.HOST:   # (computed on the host anyway: Python numbers in double)
            return self._e(e.args[0])
        tensor = e.kind is Kind.TENSOR
        if op is Op.CONST:
            return repr(e.value), ATOM if not (isinstance(e.value, (int, float)) and e.value < 0) else PREC[Op.NEG]
        if op in (Op.HYPER, Op.BUILTIN, Op.SCALAR_STATE, Op.STATE, Op.LOCAL, Op.GLOBAL):
            return e.value, ATOM
        if op is Op.WEIGHT:
            return "weight", ATOM
        if op is Op.GRAD:
            return self.grad_name, ATOM
        if op in (Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MOD):
            p = PREC[op]
            return f"{self._wrap(e.args[0], p)} {op.value} {self._wrap(e.args[1], p, right=True)}", p
        if op is Op.POW:
            if not tensor and all(a.ty is Ty.INT for a in e.args):
                # Python's int ** int is exact and unbounded: 2 ** (2 ** 63) would never finish
                return f"ops.power({self.expr(e.args[0])}, {self.expr(e.args[1])})", ATOM
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
            if tensor:   # a host test picks one side: it has the value's shape (a reduction counts it so)
                sides = [self._side(x, e) for x in (a, b)]
                return f"{sides[0]} if {self._wrap(c, 1)} else {sides[1]}", 0
            return f"{self._wrap(a, 1)} if {self._wrap(c, 1)} else {self._wrap(b, 1)}", 0
        if op in SHAPE_FACTS:   # `_shape`: the weight's shape, bound by step_bindings
            view = self.spec.view
            if op is Op.NDIM:
                return "len(_shape)", ATOM
            if op is Op.NUMEL:
                return f"ops.numel(_shape, {e.shape.value!r}, {view!r})", ATOM
            if e.shape.matrix:
                return f"ops.size(_shape, {e.value}, {view!r}, {e.shape.value!r})", ATOM
            return f"ops.size(_shape, {e.value}, {view!r})", ATOM
        if op is Op.MATMUL:
            return self.matmul(e), ATOM
        if op is Op.EYE:
            return (f"ops.eye(ops.state_shape(_shape, {e.shape.value!r}, {self.spec.view!r}), 1, weight.dtype, "
                    f"{self.xp})"), ATOM
        if e.axis is not None:
            return f"ops.reduce({self.expr(e.args[0])}, {AXIS_FUNCS[op]!r}, {e.axis}, {self.spec.view!r})", ATOM
        if op in REDUCE_FUNCS:
            plain = REDUCE_FUNCS[op].format(self.expr(e.args[0]))
            if e not in self.fused:
                return plain, ATOM
            var, slot = self.fused[e]
            finish = FUSED_FUNCS[op].format(f"{var}[{slot}]")
            return f"{finish} if {var} is not None else {plain}", 0
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

    def matmul(self, e: Expr, out: str | None = None) -> str:
        """`ops.matmul` of a product's operands (an operand may be read transposed)."""
        sides = [(a.args[0], True) if a.op is Op.TRANSPOSE else (a, False) for a in e.args]
        kinds = tuple(x.shape.value for x, _ in sides) + (e.shape.value,)
        trans = tuple(t for _, t in sides)
        tail = f", out={out}" if out else ""
        return (f"ops.matmul({self.expr(sides[0][0])}, {self.expr(sides[1][0])}, {kinds!r}, {trans!r}, "
                f"_shape, {self.spec.view!r}{tail})")

    widen_numbers = True   # the row kernel keeps a number side a number (its tensors are some rows)

    def _side(self, x: Expr, e: Expr) -> str:
        """One side of a `where` on a host test, as an array of the whole `where`'s shape."""
        if (x.kind is Kind.TENSOR and x.shape is e.shape) or (x.kind is not Kind.TENSOR and not self.widen_numbers):
            return self._wrap(x, 1)
        return f"ops.widen({self.expr(x)}, weight, {e.shape.value!r}, {self.spec.view!r})"

    # ---- statements ------------------------------------------------------------------------------
    def block(self, stmts, indent: int) -> list[str]:
        pad = "    " * indent
        out: list[str] = []
        for s in stmts:
            if isinstance(s, Assign):
                out += [pad + ln for ln in self.assign_lines(s)]
            elif isinstance(s, IfStmt):
                out += if_lines(s.branches, s.orelse, pad, self.expr, lambda body: self.block(body, indent + 1))
            elif isinstance(s, Repeat):
                out += repeat_lines(s.count, pad, self.expr, self.block(s.body, indent + 1))
            else:  # pragma: no cover
                raise InternalError(f"no numpy rule for statement {type(s).__name__}")
        return out

    def assign_lines(self, s: Assign) -> list[str]:
        """The lines of one assignment (a row kernel adds the scatter of the rows it changed)."""
        value = self.expr(s.value)
        comment = f"  # {self.file}:{s.line}"
        if s.role.in_place:
            return [f"{s.target}[...] = {value}{comment}"]
        if s.role is Role.GLOBAL:
            return [f"G[{s.target!r}] = {value}{comment}"]
        if s.role is Role.LOCAL and s.value.kind is Kind.TENSOR and _may_alias(s.value):
            return [f"{s.target} = {self.xp}.array({value}){comment}"]  # a private copy: weight/states change in place
        return [f"{s.target} = {value}{comment}"]


def if_lines(branches, orelse, pad: str, cond_text, body_lines) -> list[str]:
    """A Python `if`/`elif`/`else` over branches of anything `body_lines` renders (statements, steps)."""
    out = []
    for k, (cond, body) in enumerate(branches):
        out.append(f"{pad}{'if' if k == 0 else 'elif'} {cond_text(cond)}:")
        out += body_lines(body) or [pad + "    pass"]
    if orelse:
        out.append(f"{pad}else:")
        out += body_lines(orelse)
    return out


def repeat_lines(count, pad: str, cond_text, body: list) -> list[str]:
    """A Python loop running `body` (rendered lines) `count` times."""
    return [f"{pad}for _ in range({cond_text(count)}):"] + (body or [pad + "    pass"])


def gather_lines(em, g: Gather, pad: str, needed: set, spec) -> list[str]:
    """Where every parameter of the call meets (lower.Gather): this parameter's numbers go to the
    runner (`ops.Gather`), which combines them over all parameters, runs the interlude once and
    resumes each parameter; the names it assigned that this parameter reads next are bound again
    (globals from the optimizer, locals from the call's values)."""
    slots = "".join(f"({op.value!r}, {em.expr(value)}), " for _, op, value in g.slots)
    lines = [f"{pad}yield ops.Gather(self._interlude_{g.index}, _step, ({slots.rstrip(', ')}{',' if len(g.slots) == 1 else ''}))"]
    names = {x.name for x in spec.globals}
    for n in g.exports:
        if n in needed:
            lines.append(f"{pad}{n} = self._globals[{n!r}]" if n in names else f"{pad}{n} = _step.call[{n!r}]")
    return lines


def per_parameter_reads(program: Program) -> set:
    """The names the per-parameter statements and the meeting points' own numbers read (not the
    interludes)."""
    stmts = [s for s in program.straight if not isinstance(s, Gather)]
    slots = {n.value for g in program.gathers for _, _, v in g.slots for n in v.walk() if n.op in (Op.LOCAL, Op.GLOBAL)}
    return leaves(stmts, {Op.LOCAL, Op.GLOBAL}) | slots


STEP_FIELDS = ("lr", "wd", "t", "param_name", "learning_rate", "num_update")   # optforge.optimizer.Step


def step_bindings(body, exports) -> list[str]:
    """A kernel's first lines: the fields of its `_step` record the update reads, the weight's shape
    (`_shape`) where a shape fact reads it and its type's machine epsilon."""
    used = leaves(body, {Op.BUILTIN})
    out = [f"{n} = _step.{n}" for n in STEP_FIELDS if n in used] + [f"{n} = _step.call[{n!r}]" for n in exports]
    if any(n.op in SHAPE_FACTS or n.op in (Op.MATMUL, Op.EYE) for n in nodes(body)):
        out.append("_shape = weight.shape")
    if "dtype_eps" in used:
        out.append("dtype_eps = ops.dtype_eps(weight)")
    return out


def _may_alias(e: Expr) -> bool:
    if e.op in (Op.WEIGHT, Op.STATE):
        return True
    if e.op is Op.WHERE and e.args[0].kind is not Kind.TENSOR:
        return _may_alias(e.args[1]) or _may_alias(e.args[2])
    if e.op is Op.CLIP:   # ops.clip returns its argument itself when the bound is off (none, <= 0)
        return _may_alias(e.args[0])
    return False


# ---- the chunked kernel: large tensors in cache-sized chunks, in place, on every core -------------
#
# `_kernel_numpy` keeps the straight-line code above for small tensors and renders, for large ones,
# the staged program (codegen/lower.py) that the compiled backends run too. Host steps are plain
# statements on full tensors (a reduction reads them as they are at that point); each stage becomes
# a nested function of one chunk: its parameters are the chunk slices of the arrays it reads and
# writes (same names as the full tensors; scratch locals are full-size arrays made once,
# `chunks.empty`), then its other tensor locals and `tmpN` registers (cache-sized buffers owned by
# optforge.chunks); every operation writes with `out=`. A stage's `normal` draws are made at full
# size before it, in program order and under the conditions that guard them, so the random stream
# is the straight-line kernel's.

UFUNCS = {Op.ADD: "np.add", Op.SUB: "np.subtract", Op.MUL: "np.multiply", Op.DIV: "np.divide",
          Op.MOD: "np.remainder", Op.NEG: "np.negative", Op.SQRT: "np.sqrt", Op.SQUARE: "np.square",
          Op.ABS: "np.abs", Op.SIGN: "np.sign", Op.EXP: "np.exp", Op.LOG: "np.log",
          Op.MAXIMUM: "np.maximum", Op.MINIMUM: "np.minimum", Op.CLIP: "chunks.clip"}
TENSOR_LEAVES = (Op.WEIGHT, Op.GRAD, Op.STATE, Op.LOCAL)


class _ChunkExprs(NumpyEmitter):
    """Expressions inside a chunk: a `normal` draw is the stage's pre-drawn noise array."""

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self.noise: dict = {}

    def _e(self, e: Expr) -> tuple[str, int]:
        if e in self.noise:
            return self.noise[e], ATOM
        return super()._e(e)


class ChunkedKernel:
    """Renders the chunked branch of `_kernel_numpy` from the staged program."""

    def __init__(self, spec: Spec, program: Program):
        self.em = _ChunkExprs(spec)
        self.spec, self.program = spec, program
        names = set(leaves(program.body, {Op.LOCAL})) | targets(program.body)
        # role-prefixed helper names that cannot meet a spec name
        self.tmp, self.noise_prefix, self.stage_prefix = (
            p if not any(n.startswith(p) for n in names) else "_" + p for p in ("tmp", "noise", "stage"))
        self.draws = 0

    def lines(self, indent: int) -> list[str]:
        pad = "    " * indent
        out = [f"{pad}{name} = chunks.empty(weight, grad)" for name in self.program.scratch]
        self.needed = per_parameter_reads(self.program)
        return out + self._render(self.program.steps, indent)

    def _render(self, items, indent) -> list[str]:
        pad = "    " * indent
        out: list[str] = []
        for it in items:
            if isinstance(it, Host):
                out += self.em.block([it.stmt], indent)
            elif isinstance(it, Gather):
                out += gather_lines(self.em, it, pad, self.needed, self.spec)
            elif isinstance(it, Branch):
                out += if_lines(it.branches, it.orelse, pad, self.em.expr, lambda sub: self._render(sub, indent + 1))
            elif it.stmts:   # a reduction-only stage: the host computes its reductions
                out += self._stage(it, indent)
        return out

    def _stage(self, st: Stage, indent: int) -> list[str]:
        pad = "    " * indent
        em = self.em
        out = []
        em.noise = {}
        noise = []
        for node, guards in st.noise:
            name = f"{self.noise_prefix}{self.draws}"
            self.draws += 1
            draw = em.expr(node)
            if guards:
                test = " and ".join(em._wrap(c, 2) for c in guards)
                draw = f"{draw} if {test} else None"
            out.append(f"{pad}{name} = {draw}  # {em.file}:{_line(st, node)}")
            em.noise[node] = name
            noise.append(name)
        arrays = st.memory() + noise
        memory = set(st.memory())
        self.free: list[int] = []
        self.count = 0
        body = self._body(st.stmts, 1)
        regs = [n for n in st.locals if n not in memory] + [f"{self.tmp}{i}" for i in range(self.count)]
        fn = f"{self.stage_prefix}{st.name[1:]}"
        out.append(f"{pad}def {fn}({', '.join(arrays + regs)}):")
        out += [pad + ln for ln in body]
        tup = ", ".join(arrays) + ("," if len(arrays) == 1 else "")
        writes = tuple(k for k, a in enumerate(arrays) if a in st.writes)
        out.append(f"{pad}chunks.run({fn}, ({tup}), {len(regs)}, {writes!r}, weight)")
        return out

    def _leaf(self, n: Expr) -> str | None:
        if n.op is Op.NORMAL:
            return self.em.noise.get(n)
        if n.op in TENSOR_LEAVES and n.kind is Kind.TENSOR:
            return "weight" if n.op is Op.WEIGHT else "grad" if n.op is Op.GRAD else n.value
        return None

    def _body(self, items, indent) -> list[str]:
        pad = "    " * indent
        out = []
        for s in items:
            if isinstance(s, Assign):
                out.append(pad + self._assign(s))
            else:
                out += if_lines(s.branches, s.orelse, pad, self.em.expr, lambda body: self._body(body, indent + 1))
        return out

    def _assign(self, s: Assign) -> str:
        comment = f"  # {self.em.file}:{s.line}"
        v = s.value
        leaf = self._leaf(v)
        if leaf:
            return f"chunks.copy({leaf}, {s.target}){comment}"
        if v.kind is Kind.TENSOR and v.op in UFUNCS:
            return self._into(v, s.target) + comment
        return f"{s.target}[...] = {self.em.expr(v)}{comment}"

    def _alloc(self) -> str:
        if self.free:
            self.free.sort()
            i = self.free.pop(0)
        else:
            i = self.count
            self.count += 1
        return f"{self.tmp}{i}"

    def _into(self, e: Expr, dst: str) -> str:
        """`e` computed with its last operation writing into `dst`."""
        texts, held, dst_taken = [], [], False
        # leaves are read when this operation runs, after every operand is computed: `dst` may hold
        # an operand only when no leaf operand and no later operand reads it
        # (an operand rendered as an expression, `s1 if flag else x`, holds its arrays by reference too)
        leaf_reads = {self._leaf(n) for a in e.args
                      for n in ([a] if self._leaf(a) or a.op in UFUNCS else a.walk())}
        for k, a in enumerate(e.args):
            leaf = self._leaf(a)
            if a.kind is not Kind.TENSOR:
                texts.append(self.em.expr(a))
            elif leaf:
                texts.append(leaf)
            elif a.op not in UFUNCS:
                texts.append(self.em.expr(a))
            else:
                later = {self._leaf(n) for b in e.args[k + 1:] for n in b.walk()}
                if not dst_taken and dst not in later and dst not in leaf_reads:
                    reg, dst_taken = dst, True
                else:
                    reg = self._alloc()
                    held.append(reg)
                texts.append(self._into(a, reg))
        for reg in held:
            self.free.append(int(reg[len(self.tmp):]))
        return f"{UFUNCS[e.op]}({', '.join(texts)}, {'out=' if e.op is not Op.CLIP else ''}{dst})"


def _line(st: Stage, node: Expr) -> int:
    from .walk import assigns
    for s in assigns(st.stmts):
        if any(n is node or n == node for n in s.value.walk()):
            return s.line
    return 0


def chunkable(spec, program) -> bool:
    """Whether `_kernel_numpy` has the chunked branch (large tensors in cache-sized chunks)."""
    return any(st.stmts for st in program.stages) and not any(st.tiled for st in program.stages) and not spec.matrix


def kernel_lines(em: NumpyEmitter, program: Program) -> list[str]:
    """The body of `_kernel_numpy`: straight-line code for small tensors, stages for large ones."""
    if program.gathers:   # the statements after pass 1, with the meeting points of the parameters
        needed = per_parameter_reads(program)
        straight = []
        for s in program.straight:
            straight += gather_lines(em, s, "", needed, em.spec) if isinstance(s, Gather) else em.block([s], 0)
    else:
        straight = em.block(em.spec.body, 0)
    if not chunkable(em.spec, program):
        return straight   # (shaped updates: the equations as written, with NumPy's broadcasting)
    ck = ChunkedKernel(em.spec, program)
    chunked = ck.lines(1)
    used = leaves(em.spec.body, {Op.STATE}) | targets(em.spec.body, Role.STATE)
    arrays = ", ".join(["weight", "grad"] + [st.name for st in em.spec.states if st.name in used])
    return ([f"if not chunks.use({arrays}):  # small (or strided) tensors: the equations as written"]
            + ["    " + ln for ln in straight]
            + ["else:  # large tensors: cache-sized chunks, in place, on every core"]
            + chunked)
