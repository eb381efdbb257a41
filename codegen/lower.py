"""Checked IR -> the staged program: the one lowering every target renders.

`lower(spec)` runs once per spec and returns a `Program`. Its `steps` are what a per-parameter
update does, in order:

  Host(stmt)     a statement computed on the host (Python numbers), or a reduction of tensors
  Stage(...)     a run of elementwise statements fused into one pass over the tensors: one read
                 and one write of each tensor; every non-tensor subexpression becomes a scalar
                 argument computed on the host, so kernels never see optionals, strings or Python
  Branch(...)    a host `if` whose branches hold steps
  Loop(...)      a `repeat`: its steps run a host number of times

A matrix product (`a @ b`) is a host step of its own, a library call (BLAS through NumPy, cuBLAS
through CuPy) that writes a scratch array; the elementwise work around it is staged as usual, a
stage over a product's shape (rows x rows, ...) running over that many elements.

The NumPy chunked kernel (codegen/emit_numpy.py), the C++ and CUDA kernels (codegen/emit_c.py) and
their Python driver (codegen/emit_driver.py) all render these steps; the NumPy straight-line and
row kernels render the checked statements as written, and are the reference the others are tested
against (tests/test_differential.py).

The passes, in order:

1. Reductions and products out of elementwise statements. A `norm`/`sum` (or any host value computed from one)
   inside an elementwise statement is assigned to a fresh host local (`_r0`, ...) just before that
   statement, in the same branch, and the statement reads the local. A reduction then always runs
   as a host step at its place in program order and sees the tensors as they are at that
   statement; the same is done inside a reduction's argument (`norm(x / (1 + norm(y)))`). A
   matrix product inside an elementwise statement becomes a tensor local the same way, and so does
   an operand of a product that is not an array already (`(a + b) @ c`): a product reads arrays.
2. Stages. Elementwise statements join the open stage; host `if`s whose branches only do
   elementwise work join it too, as a branch on a scalar argument (SGD's `if momentum != 0`). Host
   statements known before any tensor work (kind <= INDEX) are hoisted in front of the open stage
   when no statement already in it reads what they assign. Reductions and other host `if`s end it.
3. Fused reductions. A reduction is accumulated by the stage that precedes it, from the element
   values at the end of that stage (no second pass over memory), or, with no such stage, by a
   reduction-only stage that reads each tensor once for all the reductions in a row (LARS's two
   norms). The host statement then finishes it from the stage's partial sums (`Host.fused`).
   Backends that cannot fuse (the row-sparse ones, whose stages see only some rows) return no
   partial sums and the driver computes the reduction on the host, so the arrays it reads are
   still materialized.
4. Scratch. A tensor local read outside the stage that computed it (by a host reduction, a later
   stage) lives in a scratch array.
5. Stage tables: the tensors each stage reads and writes in memory, its locals, and its scalar
   arguments, each with the host conditions under which the kernel reads it (a scalar inside
   `if c > 0 { ... }` is computed only when that holds: `c` may be none otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .ir import GATHERS, REDUCTIONS, Assign, Expr, IfStmt, Kind, Op, Repeat, Role, Shape, Spec, Ty, call_scope
from .names import BUILTINS
from .walk import assigns, exprs, host_names_read, nodes, own_exprs, statements, tensor_locals_read

LIFTED_PREFIX = "_r"   # spec names cannot start with `_`
# The factor of the update call's gradients (Step.grad_scale: 1 / loss scale times the global
# clipping coefficient, 1 without step control): every stage reading `grad` takes it as a scalar and
# its kernel reads grad * factor; host code reading `grad` scales it too (runtime/stepcontrol.py).
GRAD_SCALE = Expr(Op.BUILTIN, Ty.FLOAT, Kind.CALL, (), "_grad_scale")
GRAD_SCALE_ARG = "k__grad_scale"
# The seed of this parameter's stochastic rounding (Step.round_seed; 0: round to nearest even): every
# stage that writes the weight takes it, and its kernels' bfloat16 variant stores the weight with it
# (op_store in codegen/templates/_c_common.j2; the other variants ignore it).
ROUND_SEED = Expr(Op.BUILTIN, Ty.FLOAT, Kind.CALL, (), "_round_seed")
ROUND_SEED_ARG = "k__round_seed"


@dataclass
class Scalar:
    """A scalar argument of a stage: its parameter name, the host expression (None: the noise seed)
    and when the kernel reads it: None for always, else alternatives, each a tuple of conditions."""
    name: str
    expr: Expr | None
    guards: tuple | None = None


@dataclass
class Stage:
    name: str
    fn: str = ""                                        # kernel name: optforge_<spec>_<stage>
    stmts: list = field(default_factory=list)           # Assigns and inlined IfStmts, in order
    scratch_writes: set = field(default_factory=set)    # tensor locals stored to scratch at the end
    reductions: list = field(default_factory=list)      # [(Op.NORM | Op.SUM, elementwise argument)], by slot
    reads: list = field(default_factory=list)           # tensors read from memory, in first-use order
    writes: list = field(default_factory=list)          # tensors written to memory
    locals: list = field(default_factory=list)          # tensor locals the stage assigns
    scalars: list = field(default_factory=list)         # [Scalar], in first-use order
    noise: list = field(default_factory=list)           # [(NORMAL node, guards)], in draw order
    domain: Shape = Shape.FULL                          # the elements it runs over (Shape)
    outputs: list = field(default_factory=list)         # axis reductions: [(local, Op.SUM|MAX|MIN, axis, argument)]
    shapes: dict = field(default_factory=dict)          # memory tensor -> Shape

    @property
    def tiled(self) -> bool:
        """Whether the stage needs the blocks x rows x cols loop: it reduces along an axis, runs over
        a smaller shape than the weight's, or reads a tensor of another shape (broadcasting)."""
        return bool(self.outputs) or (self.domain is not Shape.FULL and not self.domain.matrix) or any(
            sh is not self.domain for sh in self.shapes.values()) or any(
            op in (Op.MAX, Op.MIN) for op, _ in self.reductions)

    def exprs(self) -> list:
        """Every expression the stage evaluates: statement values, `if` conditions, reduction arguments."""
        return list(exprs(self.stmts)) + [arg for _, arg in self.reductions] + [o[3] for o in self.outputs]

    def memory(self) -> list:
        """Every tensor the stage reads or writes in memory: reads first, then the other writes."""
        return self.reads + [w for w in self.writes if w not in self.reads]

    def host_reads(self) -> set:
        """Host values the stage's scalar arguments read (a host statement assigning one cannot be
        hoisted in front of it)."""
        return set().union(*(host_names_read(a) for e in self.exprs() for a in scalar_args(e)))


@dataclass
class Host:
    stmt: object
    fused: dict = field(default_factory=dict)   # reduction node -> (stage name, slot) that accumulates it


@dataclass
class Branch:
    branches: list      # [(cond, [steps])]
    orelse: list


@dataclass
class Loop:
    count: Expr         # a host integer
    steps: list


@dataclass
class Gather:
    """A point every parameter of an update call reaches before any goes on: each parameter's
    `slots` values (one number per parameter: `(target, Op.GSUM | GNORM | GMAX | GMIN, value)`) are
    combined over all of them into `target`, then the `interlude` (statements the same for every
    parameter: optimizer-wide reductions' uses, globals assigned from them) runs once, and every
    parameter resumes. `exports` are the names the interlude assigns (kept in the call's values)."""
    index: int
    slots: list
    interlude: list
    exports: list = field(default_factory=list)


@dataclass
class Program:
    """What `lower` returns: the statements after pass 1, the steps, the stages (in order) and the
    tensor locals that live in scratch arrays."""
    spec: Spec
    body: tuple
    steps: list
    stages: list
    scratch: list
    shapes: dict = field(default_factory=dict)   # every tensor (weight, grad, states, tensor locals) -> Shape
    gathers: list = field(default_factory=list)  # [Gather], in order
    straight: list = field(default_factory=list)  # the per-parameter statements after pass 1, Gathers between

    @property
    def phased(self) -> bool:
        """Whether the driver is a generator: some stage accumulates fused reductions, or the update
        reduces over all parameters."""
        return any(st.reductions for st in self.stages) or bool(self.gathers)

    @property
    def multi_tensor(self) -> bool:
        """Whether a list update can defer every launch (no reduction read on the host, no tiled stage)."""
        return not host_reductions(self.steps) and not any(st.tiled for st in self.stages) and not self.spec.matrix \
            and not any(s.quant for s in self.spec.states)   # (8-bit states: blocks per tensor, not per launch)


IN_KERNEL = {Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.NEG}


def _in_kernel(e: Expr) -> bool:
    """Arithmetic on constants and hyperparameters alone is done in the kernel, in its compute type,
    from the hyperparameters themselves: `1 - beta2` in float32 is what MXNet's kernels compute
    (0.00099998713 for beta2 = 0.999), where a host double rounded to float32 gives 0.001."""
    return e.op in IN_KERNEL and e.kind <= Kind.HYPER and all(
        (a.op in (Op.CONST, Op.HYPER) and a.ty.value in ("int", "float") and not a.optional) or _in_kernel(a)
        for a in e.args)


def is_host(e: Expr) -> bool:
    """A value a kernel takes as a scalar argument (computed on the host)."""
    return e.kind is not Kind.TENSOR and not _in_kernel(e)


def scalar_args(e: Expr) -> list:
    """The maximal non-tensor subexpressions of a tensor expression, in first-use order (arithmetic on
    hyperparameters alone stays in the kernel: its leaves are the arguments)."""
    if is_host(e):
        return [e]
    out = []
    for a in e.args:
        for x in scalar_args(a):
            if x not in out:
                out.append(x)
    return out


def _not(c: Expr) -> Expr:
    """`not c`, literally: false where c is true, true otherwise (an optional compared is false when
    none, so `not (c > 0)` holds for none where `c <= 0` would not)."""
    return Expr(Op.NOT, Ty.BOOL, c.kind, (c,), None, False, c.span)


def _is_tensor_stmt(s: Assign) -> bool:
    return s.role.in_place or s.value.kind is Kind.TENSOR


def is_product(s) -> bool:
    """An `Assign` of a matrix product to a tensor local (after pass 1, a statement of its own)."""
    return isinstance(s, Assign) and s.value.op is Op.MATMUL


def _inlinable(s) -> bool:
    """A host `if` whose branches only do elementwise work stays inside the kernel, as a branch on a
    scalar argument, instead of ending the stage (SGD's `if momentum != 0`)."""
    if not isinstance(s, IfStmt) or any(c.kind > Kind.INDEX for c, _ in s.branches):
        return False
    bodies = [b for _, b in s.branches] + [s.orelse]
    # (a reduction along an axis lifted under a `where`'s host test is a stage's output, not a statement)
    return all((isinstance(x, Assign) and _is_tensor_stmt(x) and x.value.axis is None and not is_product(x))
               or _inlinable(x) for b in bodies for x in b)


def _writes_tensors(s) -> bool:
    return any(_is_tensor_stmt(a) for a in assigns([s]))


def _targets(s) -> set:
    """What a statement, a host step or a branch (of statements or of steps) assigns."""
    if isinstance(s, Assign):
        return {s.target}
    if isinstance(s, Host):
        return _targets(s.stmt)
    if isinstance(s, Gather):
        return {t for t, _, _ in s.slots} | set().union(*(_targets(x) for x in s.interlude))
    if isinstance(s, (Repeat, Loop)):
        out = set()
        for x in (s.body if isinstance(s, Repeat) else s.steps):
            out |= _targets(x)
        return out
    out = set()
    for _, body in s.branches:
        for x in body:
            out |= _targets(x)
    for x in s.orelse:
        out |= _targets(x)
    return out


def _host_only(item) -> bool:
    """A step that launches nothing: a host statement, or a host `if` of host statements."""
    if isinstance(item, (Host, Gather)):
        return True
    if isinstance(item, Branch):
        return all(_host_only(x) for _, body in item.branches for x in body) and all(_host_only(x) for x in item.orelse)
    return False


def _has_reduction(e: Expr) -> bool:
    return any(n.op in REDUCTIONS or n.op in GATHERS for n in e.walk())


def _conj(conds) -> Expr:
    test = conds[0]
    for c in conds[1:]:
        test = Expr(Op.AND, Ty.BOOL, max(test.kind, c.kind), (test, c), None, False, c.span)
    return test


def is_axis_reduction(s) -> bool:
    """An `Assign` of a reduction along an axis (after pass 1, a statement of its own)."""
    return isinstance(s, Assign) and s.value.axis is not None


# ---- pass 1: reductions out of elementwise statements ------------------------------------------------
class _Lifter:
    def __init__(self):
        self.count = 0

    def block(self, stmts) -> tuple:
        out = []
        for s in stmts:
            if isinstance(s, Repeat):
                out.append(Repeat(s.count, self.block(s.body), s.span))
            elif isinstance(s, Assign):
                pre = []
                if _own_product(s):   # `a = x @ y`: the statement is the product
                    value = replace(s.value, args=tuple(self._operand(o, s, pre) for o in s.value.args))
                elif s.value.kind is Kind.TENSOR:
                    value = self._tensor(s.value, s, pre)
                else:
                    value = self._host(s.value, s, pre)
                out += pre
                out.append(s if value is s.value else replace(s, value=value))
            else:
                branches = tuple((c, self.block(b)) for c, b in s.branches)
                out.append(IfStmt(branches, self.block(s.orelse), s.span))
        return tuple(out)

    def _temp(self, value: Expr, s: Assign, pre: list, guard=()) -> Expr:
        name = f"{LIFTED_PREFIX}{self.count}"
        self.count += 1
        stmt = Assign(name, Role.LOCAL, value, s.span, s.line)
        if guard:   # only where its side of a `where` is taken (it may read a conditional state)
            stmt = IfStmt(((_conj(guard), (stmt,)),), (), s.span)
        pre.append(stmt)
        return Expr(Op.LOCAL, value.ty, value.kind, (), name, value.optional, value.span, value.shape)

    def _tensor(self, e: Expr, s, pre, guard=()) -> Expr:
        """An elementwise expression whose host parts hold no reduction. Under a host test that picks
        a side of a `where` (`guard`), the lifted value is computed only when that side is taken: it
        may read a state that exists only then."""
        if is_host(e):
            if not _has_reduction(e):
                return e
            value = self._host(e, s, pre)
            if guard:
                test = _conj(guard)
                zero = Expr(Op.CONST, value.ty, Kind.CONST, (), 0, False, value.span)
                value = Expr(Op.WHERE, value.ty, value.kind, (test, value, zero), None, False, value.span)
            return self._temp(value, s, pre)
        if e.op is Op.MATMUL:   # a product: its own statement, a tensor local of its shape
            value = replace(e, args=tuple(self._operand(o, s, pre, guard) for o in e.args))
            return self._temp(value, s, pre, guard)
        if e.axis is not None:   # a reduction along an axis: its own statement, a tensor local of its shape
            arg = self._tensor(e.args[0], s, pre, guard)
            value = e if arg is e.args[0] else replace(e, args=(arg, e.args[1]))
            return self._temp(value, s, pre, guard)
        if e.op is Op.WHERE and is_host(e.args[0]):
            c, a, b = e.args
            args = (self._tensor(c, s, pre, guard), self._tensor(a, s, pre, guard + (c,)),
                    self._tensor(b, s, pre, guard + (_not(c),)))
        else:
            args = tuple(self._tensor(a, s, pre, guard) for a in e.args)
        return e if all(x is y for x, y in zip(args, e.args)) else replace(e, args=args)

    def _operand(self, o: Expr, s, pre, guard=()) -> Expr:
        """A product's operand as an array: the weight, the gradient, a state or a tensor local, read
        transposed or not; any other value is computed into a local first."""
        inner = o.args[0] if o.op is Op.TRANSPOSE else o
        if inner.op in (Op.WEIGHT, Op.GRAD, Op.STATE, Op.LOCAL) and inner.kind is Kind.TENSOR:
            return o
        value = self._tensor(inner, s, pre, guard)
        local = value if value.op is Op.LOCAL else self._temp(value, s, pre, guard)   # (a product: lifted already)
        return replace(o, args=(local,)) if o.op is Op.TRANSPOSE else local

    def _host(self, e: Expr, s, pre) -> Expr:
        """A host expression whose reductions reduce expressions without reductions."""
        if not _has_reduction(e):
            return e
        if e.op in GATHERS:   # per parameter, a number (a reduction of a tensor); then over all of them
            arg = e.args[0]
            if arg.kind is Kind.TENSOR:
                part = Expr(GATHERS[e.op], Ty.FLOAT, Kind.REDUCED, (self._tensor(arg, s, pre),), None, False,
                            e.span)
            else:
                part = self._host(arg, s, pre)
            return self._temp(replace(e, args=(self._temp(part, s, pre),)), s, pre)
        if e.op in REDUCTIONS:
            arg = self._tensor(e.args[0], s, pre)
            return e if arg is e.args[0] else replace(e, args=(arg,) + e.args[1:])
        args = tuple(self._host(a, s, pre) for a in e.args)
        return e if all(x is y for x, y in zip(args, e.args)) else replace(e, args=args)


def _own_product(s: Assign) -> bool:
    """`a = x @ y` into a local that neither operand reads: the product writes the local itself."""
    return s.value.op is Op.MATMUL and s.role is Role.LOCAL and s.target not in _reads(s.value)


def is_gather(s) -> bool:
    """`_rN = global_sum(_rM)` (after pass 1): the combination over all parameters."""
    return isinstance(s, Assign) and s.value.op in GATHERS


def _names_read(s) -> set:
    return {n.value for e in exprs([s]) for n in e.walk() if n.op in (Op.LOCAL, Op.GLOBAL, Op.STATE, Op.WEIGHT,
                                                                        Op.SCALAR_STATE)}


def place_gathers(body) -> tuple[list, list]:
    """Pass 1b: the optimizer-wide reductions of the update (top-level statements after pass 1).
    Each parameter computes its number where the spec writes the reduction; the combination over
    all parameters waits until a per-parameter statement needs it (or what is computed from it), so
    that the reductions met on the way are combined in one round (Prodigy's two sums). The
    statements the same for every parameter after the first reduction (`call_scope`: its uses,
    globals assigned from it) run once, in the interlude of the round before the statement that
    first needs them, in their order. A per-parameter statement that assigns what a waiting
    statement reads starts the round first: the order of the spec is kept.
    Returns the per-parameter items (statements and Gathers) and the Gathers."""
    items, gathers = [], []
    slots, interlude, waiting, reads = [], [], set(), set()
    deferred: list = []   # tensor locals computed only after the meeting (fused into the stage after it)
    since_reads, since_targets = set(), set()   # of the per-parameter statements after the last meeting
    shared: set = set()
    started = False
    # each parameter's own numbers of the reductions: computed per parameter, never in an interlude
    partials = {s.value.args[0].value for s in body if is_gather(s) and s.value.args[0].op is Op.LOCAL}

    def flush():
        nonlocal slots, interlude, waiting, reads, deferred, since_reads, since_targets
        g = Gather(len(gathers), slots, interlude)
        g.exports = sorted({t for t, _, _ in slots} | set().union(*(_targets(x) for x in interlude)))
        late = set(g.exports)
        if any(_names_read(x) & late for x in deferred):   # it reads what the interlude changes: keep it before
            items.extend(deferred)
            deferred = []
        gathers.append(g)
        items.append(g)
        items.extend(deferred)   # per-parameter statements after the meeting
        since_reads = set().union(*(_names_read(x) for x in deferred))
        since_targets = set().union(*(_targets(x) for x in deferred))
        slots, interlude, waiting, reads, deferred = [], [], set(), set(), []

    for s in body:
        if is_gather(s):
            started = True
            slots.append((s.target, s.value.op, s.value.args[0]))
            waiting.add(s.target)
            shared.add(s.target)
            continue
        if started and all(call_scope(e, shared) for e in exprs([s])) and not _writes_tensors(s) and (
                isinstance(s, Assign) or s.kind <= Kind.CALL) and not (_targets(s) & partials):
            if not slots and not interlude and gathers and not (
                    _targets(s) & since_reads or _names_read(s) & since_targets):
                # nothing waits: it joins the last meeting's interlude (no meeting of its own) when the
                # per-parameter statements since then neither read what it assigns nor assign what it reads
                g = gathers[-1]
                g.interlude.append(s)
                g.exports = sorted(set(g.exports) | _targets(s))
                shared |= _targets(s)
                continue
            interlude.append(s)
            targets = _targets(s)
            waiting |= targets
            shared |= {t for t in targets}
            reads |= _names_read(s)
            continue
        if (waiting or interlude) and (_names_read(s) & waiting or _targets(s) & (reads | waiting)):
            flush()
        elif (waiting or interlude) and isinstance(s, Assign) and s.role is Role.LOCAL and s.value.kind is Kind.TENSOR:
            # a tensor local nothing waits for: computed after the meeting, in the stage that reads it
            deferred.append(s)
            continue
        if deferred and (_names_read(s) & set().union(*(_targets(x) for x in deferred))
                         or _targets(s) & set().union(*(_names_read(x) | _targets(x) for x in deferred))):
            items.extend(deferred)
            deferred = []
        items.append(s)
        if not (slots or interlude):
            since_reads |= _names_read(s)
            since_targets |= _targets(s)
    if slots or interlude:
        flush()
    items.extend(deferred)
    return items, gathers


# ---- passes 2-5 -------------------------------------------------------------------------------------
class Lowering:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.count = 0
        self.stages: list[Stage] = []
        self.state_shapes = {st.name: st.shape for st in spec.states}
        self.remat: dict = {}

    def run(self) -> Program:
        body = _Lifter().block(self.spec.body)
        straight, gathers = place_gathers(body)
        # (not in a lazy row-sparse update: there a reduction of a local runs over the gradient's rows,
        # of the local's definition over the whole tensor; codegen/verify.py)
        self.remat = {} if self.spec.sparse and self.spec.sparse.lazy else _rematerializable(body)
        steps = self._block(straight)
        for st in self.stages:
            _drop_dead(st, self.remat)
        empty = {id(st) for st in self.stages if not (st.stmts or st.reductions or st.outputs)}
        if empty:   # all a stage did was compute rematerialized locals: nothing to launch
            self.stages = [st for st in self.stages if id(st) not in empty]
            steps = _without(steps, empty)
        scratch = self._materialize(steps)
        optional = {h.name for h in self.spec.hypers if h.optional} | {
            n for n, (_, _, _, opt) in BUILTINS.items() if opt}
        shapes = {"weight": Shape.FULL, "grad": Shape.FULL, **self.state_shapes}
        for a in assigns(body):
            if a.role is Role.LOCAL and a.value.kind is Kind.TENSOR:
                shapes[a.target] = a.value.shape
        for st in self.stages:
            st.fn = f"optforge_{self.spec.module_name}_{st.name}"
            _tables(st, scratch, optional)
            st.shapes = {name: shapes[name] for name in st.memory()}
        return Program(self.spec, body, steps, self.stages, scratch, shapes, gathers, straight)

    def _new_stage(self, domain: Shape = Shape.FULL) -> Stage:
        st = Stage(f"s{self.count}", domain=domain)
        self.count += 1
        self.stages.append(st)
        return st

    def _shape(self, s) -> Shape | None:
        """The elements a tensor statement (or an inlined `if`) runs over: its target's shape; None for
        an `if` whose statements disagree."""
        if isinstance(s, Assign):
            if s.role is Role.WEIGHT:
                return Shape.FULL
            if s.role is Role.STATE:
                return self.state_shapes[s.target]
            return s.value.shape
        found = {self._shape(a) for a in assigns([s])}
        return found.pop() if len(found) == 1 else None

    def _inline(self, s, avoid=frozenset()):
        """The statement with the rematerializable locals it reads (and that are not in registers: not
        in `avoid`) replaced by their definitions."""
        if not self.remat:
            return s
        if isinstance(s, Assign):
            value = _substitute(s.value, self.remat, avoid)
            return s if value is s.value else replace(s, value=value)
        if isinstance(s, Repeat):
            return Repeat(s.count, tuple(self._inline(x, avoid) for x in s.body), s.span)
        branches = tuple((c, tuple(self._inline(x, avoid) for x in b)) for c, b in s.branches)
        return IfStmt(branches, tuple(self._inline(x, avoid) for x in s.orelse), s.span)

    def _block(self, stmts) -> list:
        steps: list = []
        open_stage: Stage | None = None
        for s in stmts:
            if isinstance(s, Gather):   # every parameter's stages before it are complete
                open_stage = None
                steps.append(s)
                continue
            if isinstance(s, Repeat):
                open_stage = None
                steps.append(Loop(s.count, self._block(s.body)))
                continue
            if is_product(s):   # a library call: the stages before it are complete, the ones after new
                open_stage = None
                steps.append(Host(s))
                continue
            if is_axis_reduction(s):
                s = self._inline(s)
                target = self._lookback(steps, s.value.args[0].shape, _reads(s.value.args[0]))
                if target is None:
                    target = self._new_stage(s.value.args[0].shape)
                    steps.append(target)
                target.outputs.append((s.target, s.value.op, s.value.axis, s.value.args[0]))
                if target is open_stage or target is steps[-1]:
                    open_stage = None   # its output is complete only after the whole stage
                continue
            # an inlined `if` without `else` would launch a kernel that may do nothing: only join a
            # stage that runs anyway
            shape = self._shape(s) if (isinstance(s, Assign) and _is_tensor_stmt(s)) or _inlinable(s) else None
            if shape is not None and ((isinstance(s, Assign) and _is_tensor_stmt(s)) or (
                    s.orelse or (open_stage is not None and open_stage.domain is shape))):
                if open_stage is None or open_stage.domain is not shape:
                    open_stage = self._new_stage(shape)
                    steps.append(open_stage)
                open_stage.stmts.append(self._inline(s, frozenset(_targets_of(open_stage.stmts))))
            elif s.kind <= Kind.INDEX and not _writes_tensors(s):
                # pure host work: hoist in front of the open stage unless the stage already reads it
                if open_stage is not None and _targets(s) & open_stage.host_reads():
                    open_stage = None
                if open_stage is not None:
                    steps.insert(steps.index(open_stage), Host(s))
                else:
                    steps.append(Host(s))
            elif isinstance(s, Assign):  # a reduction (or a number computed from one)
                open_stage = None
                steps.append(self._fuse(Host(self._inline(s)), steps))
            else:
                open_stage = None
                branches = [(cond, self._block(body)) for cond, body in s.branches]
                steps.append(Branch(branches, self._block(s.orelse)))
        return steps

    def _lookback(self, steps: list, domain: Shape, reads: set):
        """The latest stage over `domain` that a reduction reading `reads` can join: only host work
        and stages that assign none of `reads` may come after it (the reduction then runs before
        them, which changes nothing). None: a reduction-only stage is needed."""
        for item in reversed(steps):
            if isinstance(item, Stage):
                if {o[0] for o in item.outputs} & reads:
                    return None   # it reduces what this one reads: complete only after it
                if item.domain is domain:
                    return item
                if _targets_of(item.stmts) & reads:
                    return None
                continue
            if _host_only(item) and not (_targets(item) & reads):
                continue
            return None
        return None

    def _fuse(self, host: Host, steps: list) -> Host:
        """Attach the statement's reductions to a stage before it (see the module doc)."""
        found = []
        for n in host.stmt.value.walk():
            if n.op in REDUCTIONS and n not in found and not any(a.op is Op.NORMAL for a in n.args[0].walk()):
                found.append(n)
        new: dict = {}   # reduction-only stages made here, by domain
        for n in found:
            domain = n.args[0].shape if n.args[0].kind is Kind.TENSOR else Shape.FULL
            target = new.get(domain) or self._lookback(steps, domain, _reads(n.args[0]))
            if target is None:
                target = new[domain] = self._new_stage(domain)
                steps.append(target)
            host.fused[n] = (target.name, len(target.reductions))
            target.reductions.append((n.op, n.args[0]))
        return host

    def _materialize(self, steps) -> list:
        """Tensor locals read outside the stage that assigned them live in scratch arrays, and so do
        the results of reductions along an axis."""
        defined: set = set()
        need: set = set()

        def scan(stmts, assigned: set) -> set:
            for s in stmts:
                if isinstance(s, Assign):
                    need.update(tensor_locals_read(s.value) - assigned)
                    if s.role is Role.LOCAL:
                        assigned.add(s.target)
                        defined.add(s.target)
                else:
                    outs = [scan(body, set(assigned)) for _, body in s.branches]
                    outs.append(scan(s.orelse, set(assigned)))
                    if s.orelse:
                        assigned |= set.intersection(*outs)
            return assigned

        for st in self.stages:
            assigned = scan(st.stmts, set())
            for _, arg in st.reductions:   # read at the end of the stage: its own locals are in registers
                need.update(tensor_locals_read(arg) - assigned)
            for name, _, _, arg in st.outputs:
                need.update(tensor_locals_read(arg) - assigned)
                need.add(name)
                defined.add(name)

        def host_reads(items):
            for item in items:
                if isinstance(item, Host):
                    for e in own_exprs(item.stmt):
                        need.update(tensor_locals_read(e))
                    if is_product(item.stmt):   # the product writes its own array
                        need.add(item.stmt.target)
                        defined.add(item.stmt.target)
                elif isinstance(item, Loop):
                    host_reads(item.steps)
                elif isinstance(item, Branch):
                    for _, body in item.branches:
                        host_reads(body)
                    host_reads(item.orelse)
        host_reads(steps)
        for st in self.stages:
            st.scratch_writes = {s.target for s in assigns(st.stmts) if s.role is Role.LOCAL and s.target in need}
        return sorted(n for n in need if n in defined)


def _without(items, ids) -> list:
    out = []
    for it in items:
        if isinstance(it, Stage) and id(it) in ids:
            continue
        if isinstance(it, Loop):
            it = Loop(it.count, _without(it.steps, ids))
        if isinstance(it, Branch):
            it = Branch([(c, _without(b, ids)) for c, b in it.branches], _without(it.orelse, ids))
        out.append(it)
    return out


def _drop_dead(st: Stage, remat: dict) -> None:
    """Remove the definitions of rematerialized locals that nothing in their stage reads (every
    other stage computes them again), last first: the stage does no work for them."""
    later = [a for _, a in st.reductions] + [o[3] for o in st.outputs]
    read: set = set().union(*(tensor_locals_read(e) for e in later)) if later else set()
    keep = []
    for s in reversed(st.stmts):
        if isinstance(s, Assign) and s.role is Role.LOCAL and s.value.kind is Kind.TENSOR and \
                s.target in remat and s.target not in read:
            continue
        keep.append(s)
        read |= set().union(*(tensor_locals_read(e) for e in own_exprs(s)))
        if not isinstance(s, Assign):
            read |= set().union(*(tensor_locals_read(e) for e in exprs([s])))
    st.stmts = keep[::-1]


def _targets_of(stmts) -> set:
    out = set()
    for s in stmts:
        out |= _targets(s)
    return out


def _reads(e: Expr) -> set:
    """Every name an expression reads: tensors in memory or registers, host values."""
    return {"weight" if n.op is Op.WEIGHT else "grad" if n.op is Op.GRAD else n.value
            for n in e.walk() if n.op in (Op.WEIGHT, Op.GRAD, Op.STATE, Op.LOCAL, Op.SCALAR_STATE, Op.GLOBAL)}


def _rematerializable(body) -> dict:
    """Tensor locals cheaper to compute again than to keep in a scratch array, name -> definition:
    assigned once, from the gradient, tensors and host values that nothing assigns after that
    definition (MXNet's `g = clip(rescale_grad * grad, clip_gradient)`; Adafactor's update `u`,
    from the factors just updated). A stage that reads one without computing it computes it again:
    a read of its inputs instead of a write and a read of a full-size scratch array. (A local
    assigned once inside an `if` is read only after it in that branch: the checker sees to it.)"""
    order = list(assigns(body))
    counts: dict = {}
    last: dict = {}   # name -> position of its last assignment
    for k, a in enumerate(order):
        counts[a.target] = counts.get(a.target, 0) + 1
        last[a.target] = k
    for loop in (s for s in statements(body) if isinstance(s, Repeat)):
        for a in assigns(loop.body):   # assigned once per iteration
            counts[a.target] += 1
    # a product reads arrays: what it reads is kept
    operands = set().union(*(tensor_locals_read(a.value) for a in order if a.value.op is Op.MATMUL)) if order else set()
    axis_outputs = {a.target for a in order if a.value.axis is not None}
    out: dict = {}
    for k, s in enumerate(order):
        if not (s.role is Role.LOCAL and s.value.kind is Kind.TENSOR and counts[s.target] == 1
                and s.value.axis is None and s.target not in operands):
            continue
        ok = True
        for n in s.value.walk():
            if n.op in REDUCTIONS or n.op in (Op.NORMAL, Op.MATMUL):
                ok = False
            elif n.op in (Op.WEIGHT, Op.STATE, Op.SCALAR_STATE, Op.GLOBAL):
                ok = ok and last.get("weight" if n.op is Op.WEIGHT else n.value, -1) < k
            elif n.op is Op.LOCAL:
                ok = ok and (n.value in out or n.value in axis_outputs if n.kind is Kind.TENSOR
                             else counts.get(n.value, 0) == 1)
        if ok:
            out[s.target] = _substitute(s.value, out, frozenset())
    return out


def _substitute(e: Expr, table: dict, avoid) -> Expr:
    if e.op is Op.LOCAL and e.kind is Kind.TENSOR and e.value in table and e.value not in avoid:
        return table[e.value]
    if not e.args:
        return e
    args = tuple(_substitute(a, table, avoid) for a in e.args)
    return e if all(x is y for x, y in zip(args, e.args)) else replace(e, args=args)


def memory_key(n: Expr, scratch) -> str | None:
    """The array a node reads from memory (weight, grad, a state, a scratch local), or None."""
    if n.op is Op.WEIGHT:
        return "weight"
    if n.op is Op.GRAD:
        return "grad"
    if n.op is Op.STATE or (n.op is Op.LOCAL and n.kind is Kind.TENSOR and n.value in scratch):
        return n.value
    return None


# host operations that can fail (ZeroDivisionError, a math domain error, an overflow) where the
# spec's tests keep them from running
_PARTIAL = {Op.DIV, Op.MOD, Op.POW, Op.SQRT, Op.LOG, Op.EXP}


def _needs_guard(e: Expr, optional: set) -> bool:
    """Whether computing a scalar outside the conditions that guard its use could fail: it divides,
    takes a root, logarithm or power, or reads a value that may be none (narrowed by a test)."""
    return any(n.op in _PARTIAL or (n.op in (Op.HYPER, Op.BUILTIN) and n.value in optional) for n in e.walk())


def _simplify(guards: set):
    """Alternatives of conjunctions, with `p + (c,)` or `p + (not c,)` merged into `p`; None: always."""
    guards = set(guards)
    changed = True
    while changed:
        changed = False
        for g in list(guards):
            if g and g[-1].op is Op.NOT and g[:-1] + (g[-1].args[0],) in guards:
                guards -= {g, g[:-1] + (g[-1].args[0],)}
                guards.add(g[:-1])
                changed = True
                break
        if () in guards:
            return None
    return tuple(sorted(guards, key=repr))


def _tables(st: Stage, scratch, optional) -> None:
    """Pass 5: what the stage reads and writes in memory, its locals, scalars and noise draws."""
    def scan(stmts, assigned: set) -> set:
        for s in stmts:
            if isinstance(s, Assign):
                for n in s.value.walk():
                    key = memory_key(n, scratch)
                    if key and key not in assigned and key not in st.reads:
                        st.reads.append(key)
                if (s.role.in_place or s.target in st.scratch_writes) and s.target not in st.writes:
                    st.writes.append(s.target)
                if s.role is Role.LOCAL and s.target not in st.locals:
                    st.locals.append(s.target)
                assigned.add(s.target)
            else:
                for _, body in s.branches:
                    scan(body, set(assigned))
                scan(s.orelse, set(assigned))
        return assigned

    assigned = scan(st.stmts, set())
    # fused reductions read the element values at the end of the stage: loaded or assigned ones from
    # registers, any other tensor from memory
    for arg in [a for _, a in st.reductions] + [o[3] for o in st.outputs]:
        for n in arg.walk():
            key = memory_key(n, scratch)
            if key and key not in assigned and key not in st.reads:
                st.reads.append(key)

    uses: dict = {}     # host expression -> None (always read) or set of guard tuples

    def use(e, guard):
        if e in uses and uses[e] is None:
            return
        if not guard or not _needs_guard(e, optional):
            uses[e] = None
        else:
            uses.setdefault(e, set()).add(guard)

    def value(e, guard):
        if is_host(e):
            if e.op is not Op.CONST:
                use(e, guard)
            return
        if e.op is Op.NORMAL:
            st.noise.append((e, guard or None))
        if e.op is Op.WHERE and is_host(e.args[0]):   # a host test picks one side: only it is computed
            c, a, b = e.args
            value(c, guard)
            value(a, guard + (c,))
            value(b, guard + (_not(c),))
            return
        for a in e.args:
            value(a, guard)

    def block(stmts, guard):
        for s in stmts:
            if isinstance(s, Assign):
                value(s.value, guard)
                continue
            prior = ()
            for c, body in s.branches:
                value(c, guard + prior)
                block(body, guard + prior + (c,))
                prior += (_not(c),)
            block(s.orelse, guard + prior)

    block(st.stmts, ())
    for arg in [a for _, a in st.reductions] + [o[3] for o in st.outputs]:
        value(arg, ())
    for e, guards in uses.items():
        plain = e.op in (Op.HYPER, Op.BUILTIN, Op.LOCAL, Op.SCALAR_STATE, Op.GLOBAL) and not e.optional
        name = f"k_{e.value}" if plain else f"k{len(st.scalars)}"
        st.scalars.append(Scalar(name, e, None if guards is None else _simplify(guards)))
    if st.noise:
        st.scalars.append(Scalar("k_seed", None))
    if "grad" in st.reads:   # every gradient element read is scaled (loss unscaling, global clipping)
        st.scalars.append(Scalar(GRAD_SCALE_ARG, GRAD_SCALE))
    if "weight" in st.writes:
        st.scalars.append(Scalar(ROUND_SEED_ARG, ROUND_SEED))


def host_reductions(steps) -> bool:
    """Whether any reduction is left to the host: not fused into a stage (noise, or a reduction in
    an `if` condition). Such a reduction reads tensors when its statement runs, so the stages before
    it cannot be deferred to a multi-tensor launch."""
    for item in steps:
        if isinstance(item, Host):
            if any(n.op in REDUCTIONS and n not in item.fused for n in nodes([item.stmt])):
                return True
        elif isinstance(item, Stage):
            if any(n.op in REDUCTIONS for e in item.exprs() for n in e.walk()):
                return True
        elif isinstance(item, Loop):
            if host_reductions(item.steps):
                return True
        elif isinstance(item, Gather):
            continue
        else:
            if any(n.op in REDUCTIONS for cond, _ in item.branches for n in cond.walk()):
                return True
            if any(host_reductions(body) for _, body in item.branches) or host_reductions(item.orelse):
                return True
    return False


def lower(spec: Spec) -> Program:
    return Lowering(spec).run()
