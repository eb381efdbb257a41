"""The walks over statement lists that every pass shares: what a list of statements evaluates,
assigns and reads. Statements are the IR's `Assign`, `IfStmt` and `Repeat` (codegen/ir.py); nothing here
knows about stages or targets."""
from __future__ import annotations

from .ir import Assign, Expr, IfStmt, Kind, Op, Repeat


def statements(stmts):
    """Every statement, `if`s and loops and the statements inside them included, in source order."""
    for s in stmts:
        yield s
        if isinstance(s, Repeat):
            yield from statements(s.body)
        elif isinstance(s, IfStmt):
            for _, body in s.branches:
                yield from statements(body)
            yield from statements(s.orelse)


def assigns(stmts):
    """Every Assign, branches included, in source order."""
    for s in statements(stmts):
        if isinstance(s, Assign):
            yield s


def own_exprs(s) -> list:
    """The expressions a statement evaluates itself: an Assign's value, an `if`'s conditions, a
    loop's count."""
    if isinstance(s, Assign):
        return [s.value]
    if isinstance(s, Repeat):
        return [s.count]
    return [c for c, _ in s.branches]


def exprs(stmts):
    """Every expression a list of statements evaluates, branches included: values and conditions."""
    for s in statements(stmts):
        yield from own_exprs(s)


def nodes(stmts):
    """Every expression node evaluated anywhere in the statements."""
    for e in exprs(stmts):
        yield from e.walk()


def leaves(stmts, ops) -> set:
    """Names of the leaves with one of `ops` (Op.HYPER, Op.STATE, ...) read anywhere."""
    return {n.value for n in nodes(stmts) if n.op in ops}


def targets(stmts, role=None) -> set:
    """Names the statements assign (with one role, or any)."""
    return {s.target for s in assigns(stmts) if role is None or s.role == role}


def uses(stmts, op) -> bool:
    """Whether any expression of the statements contains an `op` node."""
    return any(n.op is op for n in nodes(stmts))


def tensor_locals_read(e: Expr) -> set:
    return {n.value for n in e.walk() if n.op is Op.LOCAL and n.kind is Kind.TENSOR}


def host_names_read(e: Expr) -> set:
    """Host values a (tensor) expression reads that the update itself may assign."""
    return {n.value for n in e.walk()
            if n.op in (Op.LOCAL, Op.SCALAR_STATE, Op.GLOBAL) and n.kind is not Kind.TENSOR}
