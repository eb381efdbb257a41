"""Rules a checked spec must meet before any emitter sees it, beyond names and types: each is a
property of the whole update that codegen/check.py's expression-by-expression pass cannot see.
Every failure is a diagnostic with the culprit's span; emitters may assume all of them hold.

* The lazy row-sparse update (`sparse lazy`): a reduction runs over the whole tensor when its
  argument reads the weight or a state directly (LARS: the norm of the full weight, as MXNet's
  lazy path uses) and over the gradient's stored rows otherwise (of the gradient, of tensor
  locals). An argument mixing both has no row meaning.
* Shapes have no lazy row-sparse update: a per-col or per-block value and a reduction along an axis
  read every row, and the lazy update sees only the rows a gradient holds. (A per-row state of the
  touched rows would be well defined; it is refused too until the row kernels learn shapes.)
* Matrix products have no lazy row-sparse update either: a product mixes every row.
* Optimizer-wide reductions (`global_sum`, ...) have no lazy row-sparse update yet: the row kernels
  run each parameter to its end on its own.
"""
from __future__ import annotations

from .errors import Reporter
from .ir import GATHERS, REDUCTIONS, Kind, Op, Spec
from .walk import nodes


def full_tensor_reduction(arg) -> bool:
    """Whether a lazy update's reduction of `arg` runs over the whole tensor (it reads the weight or
    a state); otherwise it runs over the gradient's rows."""
    return any(n.op in (Op.WEIGHT, Op.STATE) for n in arg.walk())


def _row_reduction(arg) -> bool:
    return any(n.op is Op.GRAD or (n.op is Op.LOCAL and n.kind is Kind.TENSOR) for n in arg.walk())


def verify(spec: Spec, r: Reporter) -> None:
    """Report (on `r`) every rule of the module doc that `spec` breaks."""
    if spec.sparse and spec.sparse.lazy and spec.matrix:
        where = next(n.span for n in nodes(spec.body) if n.op is Op.MATMUL)
        r.error(where, "a lazy row-sparse update (`sparse lazy`) cannot multiply matrices: a product reads every "
                "row, the lazy update only the rows the gradient holds",
                "drop `sparse lazy`: a row-sparse gradient then updates every row")
        return
    if spec.sparse and spec.sparse.lazy and any(n.op in GATHERS for n in nodes(spec.body)):
        where = next(n.span for n in nodes(spec.body) if n.op in GATHERS)
        r.error(where, "a lazy row-sparse update (`sparse lazy`) cannot reduce over all parameters yet: its row "
                "kernels update each parameter on its own", "drop `sparse lazy`: a row-sparse gradient then "
                "updates every row, through the dense kernels")
        return
    if spec.sparse and spec.sparse.lazy:
        shaped = [st for st in spec.states if st.shape.value != "full"]
        if shaped or spec.shaped:
            where = shaped[0].span if shaped else next(
                n.span for n in nodes(spec.body) if n.op in REDUCTIONS and n.axis is not None)
            r.error(where, "a lazy row-sparse update (`sparse lazy`) cannot keep per-row, per-col or per-block "
                    "values, nor reduce along an axis: they read every row, the lazy update only the rows the "
                    "gradient holds", "drop `sparse lazy`: a row-sparse gradient then updates every row")
            return
        for n in nodes(spec.body):
            if n.op in REDUCTIONS and full_tensor_reduction(n.args[0]) and _row_reduction(n.args[0]):
                r.error(n.span, "a row-sparse (lazy) update cannot reduce over the weight or a state and the "
                        "gradient together", "reduce them separately, or drop `sparse lazy`")
