"""IR -> the lazy row kernel `_kernel_rows`: the same equations as `_kernel_numpy`, on the rows
of a row-sparse gradient only.

The row kernel receives the full `weight` and state tensors, `rows` (sorted unique row indices)
and `grad` holding just those rows. It renders the spec's update with three changes:

* elementwise reads of `weight` and of each state read gathered rows (`weight_rows`, taken once at
  the top with `ops.gather`, which also widens float16 to float32);
* each write to `weight` or a state rebinds its `*_rows` value and scatters it back at once
  (`mean[rows] = mean_rows`), so every other row stays bit-identical and later reads see it;
* a reduction (`norm`, `sum`) whose argument reads `weight` or a state directly runs over the whole
  tensor (LARS: the norm of the full weight, as MXNet's lazy path uses), and any other reduction
  (of `grad` or of locals) runs over the gathered rows, i.e. over the gradient's stored rows
  (LARS: MXNet's norm of the row-sparse gradient's data). An argument mixing both has no row
  meaning and is a compile error for a spec that declares `sparse lazy`.

Work is proportional to the rows touched except for whole-tensor reductions the spec asks for.
"""
from __future__ import annotations

from .emit_numpy import ATOM, REDUCE_FUNCS, NumpyEmitter
from .errors import InternalError
from .verify import full_tensor_reduction
from .ir import Assign, Expr, Kind, Op, Role, Spec
from .walk import assigns, exprs, leaves, nodes

ROWS_SUFFIX = "_rows"


class RowsEmitter(NumpyEmitter):
    """NumpyEmitter with gathered-row leaves, full-tensor reductions and scattering writes."""
    widen_numbers = False

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self._full = False          # rendering a reduction of weight/states: leaves are whole tensors

    def _e(self, e: Expr) -> tuple[str, int]:
        if e.op in (Op.WEIGHT, Op.STATE):
            name = "weight" if e.op is Op.WEIGHT else e.value
            return (name if self._full else name + ROWS_SUFFIX), ATOM
        if e.op in REDUCE_FUNCS:
            arg = e.args[0]
            full = full_tensor_reduction(arg)   # codegen/verify.py: a lazy reduction is one or the other
            saved, self._full = self._full, full
            try:
                return REDUCE_FUNCS[e.op].format(self.expr(arg)), ATOM
            finally:
                self._full = saved
        if e.op is Op.NORMAL:
            return (f"ops.normal(self._rng, {self.expr(e.args[0])}, {self.expr(e.args[1])}, "
                    f"weight{ROWS_SUFFIX})"), ATOM
        return super()._e(e)

    def assign_lines(self, s: Assign) -> list[str]:
        if s.role.in_place:   # rebind the rows, then scatter them back at once
            return [f"{s.target}{ROWS_SUFFIX} = {self.expr(s.value)}  # {self.file}:{s.line}",
                    f"{s.target}[rows] = {s.target}{ROWS_SUFFIX}"]
        if s.role is Role.LOCAL and s.value.kind is Kind.TENSOR:
            # locals are fresh values; rows values are rebound, never written in place
            return [f"{s.target} = {self.expr(s.value)}  # {self.file}:{s.line}"]
        return super().assign_lines(s)

    def kernel_lines(self) -> list[str]:
        """The body of `_kernel_rows` after the hyperparameter and call bindings."""
        spec = self.spec
        clash = {n for n in leaves(spec.body, {Op.LOCAL}) if n.endswith(ROWS_SUFFIX)}
        if clash:
            raise InternalError(f"row kernel: local names ending in {ROWS_SUFFIX!r} clash: {sorted(clash)}")
        read = _elementwise_reads(spec.body)
        blocked = row_blocked(spec)
        pad = "    " if blocked else ""
        lines = []
        if blocked:
            # rows are independent: run the equations on blocks of rows, so temporaries stay small
            # (cache-sized, reused by the allocator) whatever the number of rows
            lines.append("for rows, grad in ops.row_blocks(rows, grad):")
        if "weight" in read:
            lines.append(f"{pad}weight{ROWS_SUFFIX} = ops.gather(weight, rows)")
        for st in spec.states:
            if st.name in read:
                lines.append(f"{pad}{st.name}{ROWS_SUFFIX} = ops.gather({st.name}, rows, weight)")
        return lines + self.block(spec.body, 1 if blocked else 0)


def row_blocked(spec: Spec) -> bool:
    """True when the update treats every row on its own: no reductions, no per-parameter numbers or
    globals written, no random draws. Then the row kernel may run block by block."""
    if any(s.role in (Role.SCALAR_STATE, Role.GLOBAL) for s in assigns(spec.body)):
        return False
    return not any(n.op in REDUCE_FUNCS for n in nodes(spec.body)) and not spec.uses_random


def _elementwise_reads(stmts) -> set:
    """Names of weight/states read outside reductions anywhere in `stmts` (a draw reads the weight's
    rows for its shape)."""
    out = set()

    def visit(e):
        if e.op in REDUCE_FUNCS:
            return
        if e.op in (Op.WEIGHT, Op.NORMAL):
            out.add("weight")
        elif e.op is Op.STATE:
            out.add(e.value)
        for a in e.args:
            visit(a)

    for e in exprs(stmts):
        visit(e)
    return out
