"""Checked IR -> a staged program for the compiled backends (native CPU, CUDA).

The per-parameter body becomes a list of steps the generated Python driver runs in order:

  Host(stmt)     a statement computed on the host (Python numbers), or a reduction of tensors
                 (evaluated with the backend's array module)
  Stage(...)     a run of elementwise statements fused into one kernel: one read and one write of
                 each tensor; every non-tensor subexpression becomes a scalar argument computed on
                 the host, so kernels never see optionals, strings or Python semantics
  Branch(...)    a host `if` whose branches hold stages

Reductions and host `if`s split stages. Host statements are hoisted in front of the open stage
when no statement already in that stage reads what they assign. A tensor local read outside the
stage that computed it (a reduction, a later stage) is stored to a scratch array.

Fused reductions: a whole-tensor `norm(x)` / `sum(x)` of an elementwise `x` is accumulated by the
stage that precedes it (its sum of squares, or its sum, from the element values at the end of that
stage: no second pass over memory), or, with no such stage, by a reduction-only stage that reads
each tensor once for all the reductions in a row (LARS's two norms). The host statement then
finishes the reduction from the stage's partial sums (`Host.fused`). Backends that cannot fuse
(the row-sparse ones, whose stages see only some rows) return no partial sums and the driver
computes the reduction on the host as before, so the arrays it reads are still materialized.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .ir import REDUCTIONS, Assign, Expr, IfStmt, Kind, Op, Spec, statement_exprs


@dataclass
class Stage:
    name: str
    stmts: list = field(default_factory=list)       # Assigns, in order
    scratch_writes: set = field(default_factory=set)  # tensor locals stored to scratch at the end
    reductions: list = field(default_factory=list)  # [(Op.NORM | Op.SUM, elementwise argument)], by slot

    def exprs(self) -> list:
        """Every expression the stage evaluates: statement values, `if` conditions, reduction arguments."""
        return list(stage_exprs(self.stmts)) + [arg for _, arg in self.reductions]

    def host_reads(self) -> set:
        out = set()
        for e in self.exprs():
            for a in scalar_args(e):
                for n in a.walk():
                    if n.op in (Op.LOCAL, Op.SCALAR_STATE) and n.kind <= Kind.REDUCED:
                        out.add(n.value)
        return out


@dataclass
class Host:
    stmt: object
    fused: dict = field(default_factory=dict)   # reduction node -> (stage name, slot) that accumulates it


@dataclass
class Branch:
    branches: list      # [(cond, [steps])]
    orelse: list


IN_KERNEL = {Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.NEG}


def _in_kernel(e: Expr) -> bool:
    """Arithmetic on constants and hyperparameters alone is done in the kernel, in its compute type,
    from the hyperparameters themselves: `1 - beta2` in float32 is what MXNet's kernels compute
    (0.00099998713 for beta2 = 0.999), where a host double rounded to float32 gives 0.001."""
    return e.op in IN_KERNEL and e.kind <= Kind.HYPER and all(
        (a.op in (Op.CONST, Op.HYPER) and a.ty.value in ("int", "float") and not a.optional) or _in_kernel(a)
        for a in e.args)


def scalar_args(e: Expr) -> list:
    """The maximal non-tensor subexpressions of a tensor expression, in first-use order (arithmetic on
    hyperparameters alone stays in the kernel: its leaves are the arguments)."""
    if e.kind is not Kind.TENSOR and not _in_kernel(e):
        return [e]
    out = []
    for a in e.args:
        for x in scalar_args(a):
            if x not in out:
                out.append(x)
    return out


def flat_assigns(stmts):
    """Every Assign of a stage, branches included, in source order."""
    for s in stmts:
        if isinstance(s, Assign):
            yield s
        else:
            for _, body in s.branches:
                yield from flat_assigns(body)
            yield from flat_assigns(s.orelse)


stage_exprs = statement_exprs   # every expression a stage evaluates: values and `if` conditions


def _inlinable(s) -> bool:
    """A host `if` whose branches only do elementwise work stays inside the kernel, as a branch on a
    scalar argument, instead of ending the stage (SGD's `if momentum != 0`)."""
    if not isinstance(s, IfStmt) or any(c.kind > Kind.INDEX for c, _ in s.branches):
        return False
    bodies = [b for _, b in s.branches] + [s.orelse]
    return all((isinstance(x, Assign) and _is_tensor_stmt(x)) or _inlinable(x) for b in bodies for x in b)


def _is_tensor_stmt(s: Assign) -> bool:
    return s.role in ("weight", "state") or s.value.kind is Kind.TENSOR


def _writes_tensors(s) -> bool:
    if isinstance(s, Assign):
        return _is_tensor_stmt(s)
    return any(_writes_tensors(x) for _, body in s.branches for x in body) or \
        any(_writes_tensors(x) for x in s.orelse)


def _targets(s) -> set:
    """What a statement, a host step or a branch (of statements or of steps) assigns."""
    if isinstance(s, Assign):
        return {s.target}
    if isinstance(s, Host):
        return _targets(s.stmt)
    out = set()
    for _, body in s.branches:
        for x in body:
            out |= _targets(x)
    for x in s.orelse:
        out |= _targets(x)
    return out


def _host_only(item) -> bool:
    """A step that launches nothing: a host statement, or a host `if` of host statements."""
    if isinstance(item, Host):
        return True
    if isinstance(item, Branch):
        return all(_host_only(x) for _, body in item.branches for x in body) and all(_host_only(x) for x in item.orelse)
    return False


class Lowering:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.count = 0
        self.stages: list[Stage] = []

    def run(self) -> list:
        steps = self._block(self.spec.body)
        self._materialize(steps)
        return steps

    def _new_stage(self) -> Stage:
        st = Stage(f"s{self.count}")
        self.count += 1
        self.stages.append(st)
        return st

    def _block(self, stmts) -> list:
        steps: list = []
        open_stage: Stage | None = None
        for s in stmts:
            # an inlined `if` without `else` would launch a kernel that may do nothing: only join a
            # stage that runs anyway
            if (isinstance(s, Assign) and _is_tensor_stmt(s)) or (
                    _inlinable(s) and (s.orelse or open_stage is not None)):
                if open_stage is None:
                    open_stage = self._new_stage()
                    steps.append(open_stage)
                open_stage.stmts.append(s)
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
                steps.append(self._fuse(Host(s), steps))
            else:
                open_stage = None
                branches = [(cond, self._block(body)) for cond, body in s.branches]
                steps.append(Branch(branches, self._block(s.orelse)))
        return steps

    def _fuse(self, host: Host, steps: list) -> Host:
        """Attach the statement's reductions to the stage before it (see the module doc)."""
        nodes = []
        for n in host.stmt.value.walk():
            if n.op in REDUCTIONS and n not in nodes and not any(a.op is Op.NORMAL for a in n.args[0].walk()):
                nodes.append(n)
        if not nodes:
            return host
        leaves = {a.value for n in nodes for a in n.args[0].walk()
                  if a.op in (Op.LOCAL, Op.SCALAR_STATE, Op.GLOBAL) and a.kind is not Kind.TENSOR}
        target = None
        for item in reversed(steps):
            if isinstance(item, Stage):
                target = item
                break
            # host work since that stage must not assign what the reductions read (it runs after the launch)
            if _host_only(item) and not (_targets(item) & leaves):
                continue
            break
        if target is None:
            target = self._new_stage()
            steps.append(target)
        for n in nodes:
            host.fused[n] = (target.name, len(target.reductions))
            target.reductions.append((n.op, n.args[0]))
        return host

    def _materialize(self, steps) -> None:
        """Tensor locals read outside the stage that assigned them live in scratch arrays."""
        defined_in: dict[str, set] = {}
        need: set = set()

        def scan(stmts, assigned: set, stage: str) -> set:
            for s in stmts:
                if isinstance(s, Assign):
                    for n in s.value.walk():
                        if n.op is Op.LOCAL and n.kind is Kind.TENSOR and n.value not in assigned:
                            need.add(n.value)
                    if s.role == "local":
                        assigned.add(s.target)
                        defined_in.setdefault(s.target, set()).add(stage)
                else:
                    outs = []
                    for cond, body in s.branches:
                        outs.append(scan(body, set(assigned), stage))
                    outs.append(scan(s.orelse, set(assigned), stage))
                    if s.orelse:
                        assigned |= set.intersection(*outs)
            return assigned

        for st in self.stages:
            assigned = scan(st.stmts, set(), st.name)
            for _, arg in st.reductions:   # read at the end of the stage: its own locals are in registers
                for n in arg.walk():
                    if n.op is Op.LOCAL and n.kind is Kind.TENSOR and n.value not in assigned:
                        need.add(n.value)
        def host_reads(items):
            for item in items:
                if isinstance(item, Host):
                    for e in statement_exprs([item.stmt]):
                        for n in e.walk():
                            if n.op is Op.LOCAL and n.kind is Kind.TENSOR:
                                need.add(n.value)
                elif isinstance(item, Branch):
                    for cond, body in item.branches:
                        host_reads(body)
                    host_reads(item.orelse)
        host_reads(steps)
        for st in self.stages:
            st.scratch_writes = {s.target for s in flat_assigns(st.stmts) if s.role == "local" and s.target in need}
        self.scratch = sorted(n for n in need if n in defined_in)


def host_reductions(steps) -> bool:
    """Whether any reduction is left to the host: not fused into a stage (inside an `if` condition, a
    stage's scalar argument, or noise). Such a reduction reads tensors when its statement runs, so
    the stages before it cannot be deferred to a multi-tensor launch."""
    for item in steps:
        if isinstance(item, Host):
            exprs = statement_exprs([item.stmt])
            if any(n.op in REDUCTIONS and n not in item.fused for e in exprs for n in e.walk()):
                return True
        elif isinstance(item, Stage):
            if any(n.op in REDUCTIONS for e in item.exprs() for n in e.walk()):
                return True
        else:
            if any(n.op in REDUCTIONS for cond, _ in item.branches for n in cond.walk()):
                return True
            if any(host_reductions(body) for _, body in item.branches) or host_reductions(item.orelse):
                return True
    return False


def lower(spec: Spec):
    """Returns (steps, stages, scratch names)."""
    low = Lowering(spec)
    steps = low.run()
    return steps, low.stages, low.scratch
