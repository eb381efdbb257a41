"""Rules a checked spec must meet before any emitter sees it, beyond names and types: each is a
property of the whole update that codegen/check.py's expression-by-expression pass cannot see.
Every failure is a diagnostic with the culprit's span; emitters may assume all of them hold.

* The lazy row-sparse update (`sparse lazy`): a reduction runs over the whole tensor when its
  argument reads the weight or a state directly (LARS: the norm of the full weight, as MXNet's
  lazy path uses) and over the gradient's stored rows otherwise (of the gradient, of tensor
  locals). An argument mixing both has no row meaning.
"""
from __future__ import annotations

from .errors import Reporter
from .ir import REDUCTIONS, Kind, Op, Spec
from .walk import nodes


def full_tensor_reduction(arg) -> bool:
    """Whether a lazy update's reduction of `arg` runs over the whole tensor (it reads the weight or
    a state); otherwise it runs over the gradient's rows."""
    return any(n.op in (Op.WEIGHT, Op.STATE) for n in arg.walk())


def _row_reduction(arg) -> bool:
    return any(n.op is Op.GRAD or (n.op is Op.LOCAL and n.kind is Kind.TENSOR) for n in arg.walk())


def verify(spec: Spec, r: Reporter) -> None:
    """Report (on `r`) every rule of the module doc that `spec` breaks."""
    if spec.sparse and spec.sparse.lazy:
        for n in nodes(spec.body):
            if n.op in REDUCTIONS and full_tensor_reduction(n.args[0]) and _row_reduction(n.args[0]):
                r.error(n.span, "a row-sparse (lazy) update cannot reduce over the weight or a state and the "
                        "gradient together", "reduce them separately, or drop `sparse lazy`")
