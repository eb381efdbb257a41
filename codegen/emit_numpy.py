"""IR -> a Python module: the Optimizer subclass and its NumPy kernel.

Host values (kinds up to REDUCED) are plain Python numbers, so they never widen float32 arrays;
tensor values are NumPy arrays. Weight and states are written in place (`mean[...] = ...`).
"""
from __future__ import annotations

from .errors import InternalError
from .ir import Assign, Expr, IfStmt, Kind, Op, Spec, Ty

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
FUSED_FUNCS = {Op.NORM: "ops.fused_norm({0})", Op.SUM: "ops.fused_total({0})"}


class NumpyEmitter:
    """Renders expressions and statements of one spec as Python source lines."""

    def __init__(self, spec: Spec, xp: str = "np"):
        self.spec = spec
        self.file = spec.path.rsplit("/", 1)[-1]
        self.xp = xp   # the array module tensor expressions use: numpy, or `xp` chosen at run time
        # reduction node -> (variable, slot): the driver's fused reductions (lower.py), finished from a
        # stage's partial sums when the backend returned them, else computed here
        self.fused: dict = {}

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


# ---- the chunked kernel: large tensors in cache-sized chunks, in place, on every core -------------
#
# `_kernel_numpy` keeps the straight-line code above for small tensors and adds, for large ones, the
# same statements grouped into stages. A stage is a run of elementwise statements (and host `if`s
# around them); host statements in its span are hoisted in front of it (as codegen/lower.py does),
# and reductions, `normal` draws inside a branch and anything without an in-place rendering end it.
# Each stage becomes a nested function of one chunk: its parameters are the chunk slices of the
# tensors it touches (same names as the full tensors), then its tensor locals and `tmpN` scratch
# registers (cache-sized buffers owned by optforge.chunks); every operation writes with `out=`.
# A tensor local read outside its stage is materialized at full size (`chunks.empty`).

UFUNCS = {Op.ADD: "np.add", Op.SUB: "np.subtract", Op.MUL: "np.multiply", Op.DIV: "np.divide",
          Op.MOD: "np.remainder", Op.NEG: "np.negative", Op.SQRT: "np.sqrt", Op.SQUARE: "np.square",
          Op.ABS: "np.abs", Op.SIGN: "np.sign", Op.EXP: "np.exp", Op.LOG: "np.log",
          Op.MAXIMUM: "np.maximum", Op.MINIMUM: "np.minimum", Op.CLIP: "chunks.clip"}
TENSOR_LEAVES = (Op.WEIGHT, Op.GRAD, Op.STATE, Op.LOCAL)


def _is_tensor_leaf(e: Expr) -> bool:
    return e.op in TENSOR_LEAVES and e.kind is Kind.TENSOR


def _tensor_stmt(s) -> bool:
    return isinstance(s, Assign) and (s.role in ("weight", "state") or s.value.kind is Kind.TENSOR)


def _stmt_exprs(s) -> list:
    return [s.value] if isinstance(s, Assign) else [c for c, _ in s.branches]


def _all_stmts(stmts):
    for s in stmts:
        yield s
        if isinstance(s, IfStmt):
            for _, body in s.branches:
                yield from _all_stmts(body)
            yield from _all_stmts(s.orelse)


class _ChunkExprs(NumpyEmitter):
    """Expressions inside a chunk: a `normal` draw is the stage's pre-drawn noise array."""

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self.noise: dict = {}

    def _e(self, e: Expr) -> tuple[str, int]:
        if e in self.noise:
            return self.noise[e], ATOM
        return super()._e(e)


class Stage:
    def __init__(self, index: int):
        self.index = index
        self.items: list = []         # Assigns and IfStmts, in order
        self.hoisted: list = []       # host statements run before the stage
        self.noise: list = []         # (NORMAL node, name, statement): drawn at full size before the stage
        self.assigned: set = set()    # tensor locals assigned so far
        self.inputs: set = set()      # tensor locals read before the stage assigns them
        self.host_reads: set = set()  # host names the stage's statements read

    def stmts(self):
        return list(_all_stmts(self.items))


class ChunkedKernel:
    """Plans and renders the chunked branch of `_kernel_numpy`."""

    def __init__(self, spec: Spec):
        self.em = _ChunkExprs(spec)
        self.spec = spec
        names = set()
        for s in _all_stmts(self.spec.body):
            if isinstance(s, Assign):
                names.add(s.target)
            for e in _stmt_exprs(s):
                names |= {n.value for n in e.walk() if isinstance(n.value, str)}
        # role-prefixed helper names that cannot meet a spec name
        self.tmp, self.noise_prefix, self.stage_prefix = (
            p if not any(n.startswith(p) for n in names) else "_" + p for p in ("tmp", "noise", "stage"))

    # ---- planning ------------------------------------------------------------------------------
    def plan(self):
        blocked: set = set()
        while True:
            self.stages: list[Stage] = []
            items = self._plan(self.spec.body, blocked)
            more = set()
            for st, mat in zip(self.stages, self._materialized()):
                st.materialized = mat
                for it in st.items:
                    if isinstance(it, IfStmt) and self._tensor_locals_written([it]) & mat:
                        more.add(id(it))
            if not more:
                return items
            blocked |= more

    def _plan(self, stmts, blocked) -> list:
        """Items: ('host', stmt), ('stage', Stage), ('if', IfStmt, [(cond, items)], else items)."""
        out: list = []
        cur: Stage | None = None

        def close():
            nonlocal cur
            cur = None

        def stage() -> Stage:
            nonlocal cur
            if cur is None:
                cur = Stage(len(self.stages))
                self.stages.append(cur)
                out.append(("stage", cur))
            return cur

        def conflict(rbw, writes) -> bool:
            """A stage may not write a tensor local it also reads from before the stage."""
            if cur is not None and writes & (cur.inputs | (rbw - cur.assigned)):
                close()
            return bool(writes & rbw) if cur is None else False

        for s in stmts:
            if isinstance(s, Assign) and _tensor_stmt(s):
                bare = s.role == "local" and _is_tensor_leaf(s.value)
                if not self._chunkable(s, top=True) or (bare and cur is None):
                    close()    # `avg = grad` outside a stage binds, as written
                    out.append(("host", s))
                    continue
                rbw, writes = self._rw([s])
                if conflict(rbw, writes):
                    out.append(("host", s))
                    continue
                self._add(stage(), s, rbw, writes)
            elif isinstance(s, Assign):
                reduced = any(n.op in REDUCE_FUNCS or n.kind is Kind.TENSOR for n in s.value.walk())
                if reduced or cur is None or s.target in cur.host_reads:
                    close()
                    out.append(("host", s))
                else:
                    cur.hoisted.append(s)
            else:
                # a host `if` joins the open stage (its test runs per chunk); one that would open a
                # stage stays a host `if` around its own stages
                rbw, writes = self._rw([s])
                if cur is not None and id(s) not in blocked and self._eligible_if(s) \
                        and not writes & (cur.inputs | (rbw - cur.assigned)):
                    self._add(cur, s, rbw, writes)
                else:
                    close()
                    out.append(("if", s, [(c, self._plan(b, blocked)) for c, b in s.branches],
                                self._plan(s.orelse, blocked)))
        return out

    def _add(self, st: Stage, s, rbw, writes):
        st.inputs |= rbw - st.assigned
        st.assigned |= writes
        st.items.append(s)
        for x in _all_stmts([s]):
            for e in _stmt_exprs(x):
                for n in e.walk():
                    if n.op in (Op.LOCAL, Op.SCALAR_STATE, Op.GLOBAL) and n.kind is not Kind.TENSOR:
                        st.host_reads.add(n.value)
                    if n.op is Op.NORMAL:
                        st.noise.append((n, f"{self.noise_prefix}{sum(len(t.noise) for t in self.stages)}", x))

    def _chunkable(self, s: Assign, top: bool) -> bool:
        nodes = list(s.value.walk())
        if any(n.op in REDUCE_FUNCS for n in nodes):
            return False
        normals = [n for n in nodes if n.op is Op.NORMAL]
        if normals and (not top or len(normals) > 1 or self._normal_count(normals[0]) > 1):
            return False
        if s.role == "local" and s.value.ty is Ty.BOOL:
            return False
        return True

    def _normal_count(self, node) -> int:
        return sum(1 for x in _all_stmts(self.spec.body) for e in _stmt_exprs(x) for n in e.walk() if n == node)

    def _eligible_if(self, s: IfStmt) -> bool:
        if any(n.op in REDUCE_FUNCS or n.kind is Kind.TENSOR for c, _ in s.branches for n in c.walk()):
            return False
        for x in _all_stmts([b for _, body in s.branches for b in body] + list(s.orelse)):
            if isinstance(x, Assign) and not (_tensor_stmt(x) and self._chunkable(x, top=False)):
                return False
            if isinstance(x, IfStmt) and any(n.op in REDUCE_FUNCS or n.kind is Kind.TENSOR
                                             for c, _ in x.branches for n in c.walk()):
                return False
        return True

    @staticmethod
    def _tensor_locals_written(stmts) -> set:
        return {x.target for x in _all_stmts(stmts) if isinstance(x, Assign) and x.role == "local"}

    def _rw(self, stmts) -> tuple[set, set]:
        """(tensor locals read before written, tensor locals written); branches conservatively."""
        rbw, written = set(), set()
        for x in stmts:
            if isinstance(x, Assign):
                rbw |= {n.value for n in x.value.walk() if n.op is Op.LOCAL and n.kind is Kind.TENSOR} - written
                if x.role == "local":
                    written.add(x.target)
            else:
                for _, body in list(x.branches) + [(None, x.orelse)]:
                    r, w = self._rw(body)
                    rbw |= r - written
                    written |= w
        return rbw, written

    def _materialized(self) -> list[set]:
        """Per stage: the tensor locals it assigns that something outside it reads."""
        owner = {}
        for st in self.stages:
            for x in st.stmts():
                owner[id(x)] = st.index
        reads_outside = [set() for _ in self.stages]
        for x in _all_stmts(self.spec.body):
            here = owner.get(id(x))
            names = {n.value for e in _stmt_exprs(x) for n in e.walk() if n.op is Op.LOCAL and n.kind is Kind.TENSOR}
            for st in self.stages:
                if st.index != here:
                    reads_outside[st.index] |= names & st.assigned
        return reads_outside

    # ---- rendering -----------------------------------------------------------------------------
    def lines(self, indent: int) -> list[str]:
        items = self.plan()
        return self._render(items, indent)

    def _render(self, items, indent) -> list[str]:
        pad = "    " * indent
        out: list[str] = []
        for it in items:
            if it[0] == "host":
                out += self.em.block([it[1]], indent)
            elif it[0] == "if":
                _, s, branches, orelse = it
                for k, (cond, sub) in enumerate(branches):
                    out.append(f"{pad}{'if' if k == 0 else 'elif'} {self.em.expr(cond)}:")
                    out += self._render(sub, indent + 1) or [pad + "    pass"]
                if orelse:
                    out.append(f"{pad}else:")
                    out += self._render(orelse, indent + 1)
            else:
                out += self._stage(it[1], indent)
        return out

    def _stage(self, st: Stage, indent: int) -> list[str]:
        pad = "    " * indent
        em = self.em
        out = em.block(st.hoisted, indent)
        em.noise = {}
        for node, name, stmt in st.noise:
            out.append(f"{pad}{name} = {em.expr(node)}  # {em.file}:{stmt.line}")
            em.noise[node] = name
        arrays: list[str] = []
        for x in st.stmts():
            for e in _stmt_exprs(x):
                for n in e.walk():
                    name = self._leaf(n)
                    if name and name not in arrays and (n.op is not Op.LOCAL or n.value in st.inputs
                                                        or n.value in st.materialized):
                        arrays.append(name)
            if isinstance(x, Assign) and x.role != "local" or getattr(x, "target", None) in st.materialized:
                if x.target not in arrays:
                    arrays.append(x.target)
        locals_ = [n for n in sorted(st.assigned - st.materialized)]
        sources = ", ".join(a for a in arrays if a not in st.materialized)
        for name in sorted(st.materialized):
            out.append(f"{pad}{name} = chunks.empty({sources})")
        self.free: list[int] = []
        self.count = 0
        body = self._body(st.items, 1)
        regs = locals_ + [f"{self.tmp}{i}" for i in range(self.count)]
        fn = f"{self.stage_prefix}{st.index}"
        out.append(f"{pad}def {fn}({', '.join(arrays + regs)}):")
        out += [pad + ln for ln in body]
        tup = ", ".join(arrays) + ("," if len(arrays) == 1 else "")
        out.append(f"{pad}chunks.run({fn}, ({tup}), {len(regs)})")
        return out

    def _leaf(self, n: Expr) -> str | None:
        if n.op is Op.NORMAL:
            return self.em.noise.get(n)
        if _is_tensor_leaf(n):
            return "weight" if n.op is Op.WEIGHT else "grad" if n.op is Op.GRAD else n.value
        return None

    def _body(self, items, indent) -> list[str]:
        pad = "    " * indent
        out = []
        for s in items:
            if isinstance(s, Assign):
                out.append(pad + self._assign(s))
            else:
                for k, (cond, body) in enumerate(s.branches):
                    out.append(f"{pad}{'if' if k == 0 else 'elif'} {self.em.expr(cond)}:")
                    out += self._body(body, indent + 1) or [pad + "    pass"]
                if s.orelse:
                    out.append(f"{pad}else:")
                    out += self._body(s.orelse, indent + 1)
        return out

    def _assign(self, s: Assign) -> str:
        comment = f"  # {self.em.file}:{s.line}"
        v = s.value
        leaf = self._leaf(v)
        if leaf:
            return f"chunks.copy({leaf}, {s.target}){comment}"
        if v.kind is Kind.TENSOR and v.op in UFUNCS:
            return self._into(v, s.target) + comment
        return f"{s.target}[...] = {self._plain(v)}{comment}"

    def _plain(self, e: Expr) -> str:
        """An expression the chunk evaluates with allocating NumPy (chunk-sized temporaries)."""
        return self.em.expr(e)

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
        leaf_reads = {self._leaf(a) for a in e.args}
        for k, a in enumerate(e.args):
            leaf = self._leaf(a)
            if a.kind is not Kind.TENSOR:
                texts.append(self.em.expr(a))
            elif leaf:
                texts.append(leaf)
            elif a.op not in UFUNCS:
                texts.append(self._plain(a))
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

    def state_names(self) -> list[str]:
        used = leaves(self.spec.body, {Op.STATE}) | targets(self.spec.body, "state")
        return [st.name for st in self.spec.states if st.name in used]


def kernel_lines(em: NumpyEmitter) -> list[str]:
    """The body of `_kernel_numpy`: straight-line code for small tensors, stages for large ones."""
    straight = em.block(em.spec.body, 0)
    ck = ChunkedKernel(em.spec)
    chunked = ck.lines(1)
    if not ck.stages:
        return straight
    arrays = ", ".join(["weight", "grad"] + ck.state_names())
    return ([f"if not chunks.use({arrays}):  # small (or strided) tensors: the equations as written"]
            + ["    " + ln for ln in straight]
            + ["else:  # large tensors: cache-sized chunks, in place, on every core"]
            + chunked)
