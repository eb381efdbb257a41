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
    if any(st.quant or st.storage for st in spec.states):
        _verify_stored(spec, r)
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


def _verify_stored(spec: Spec, r: Reporter) -> None:
    """States stored in another type (`as bf16`, `as int8(...)`) are rounded as the stage that writes
    them stores them: no later step of the update may read them (it would see the rounding on the
    compiled backends, the value on NumPy's). 8-bit states (`as int8(...)`): their blocks are
    quantised by the stage that writes them, which therefore runs flat over the weight's elements
    without fused reductions; the host never reads their codes (no unfused reduction or product of
    one); one block size per spec; no lazy rows."""
    from .lower import Host, Stage, lower
    stored = {st.name: st for st in spec.states if st.quant is not None or st.storage is not None}
    quant = {st.name: st for st in spec.states if st.quant is not None}
    if not quant:
        _verify_read_after_store(spec, lower(spec), stored, r)
        return
    if len({st.quant.block for st in quant.values()}) > 1:
        st = list(quant.values())[1]
        r.error(st.span, "the 8-bit states of a spec share one block size", f"give `{st.name}` the others' block size")
        return
    if spec.sparse and spec.sparse.lazy:
        st = next(iter(quant.values()))
        r.error(st.span, "a lazy row-sparse update (`sparse lazy`) cannot keep 8-bit states: a block's scale "
                "depends on rows the gradient does not hold", "store it as `bf16`, or drop `sparse lazy`")
        return
    program = lower(spec)
    for item in _walk(program.steps):
        if isinstance(item, Stage):
            written = [n for n in item.writes if n in quant]
            if written and (item.tiled or item.reductions):
                r.error(quant[written[0]].span, f"8-bit state `{written[0]}` is written where the update also "
                        "reduces (a norm, a sum, a value along an axis): its blocks cannot be quantised there yet",
                        "store it as `bf16`, or compute the reduction in another statement's stage")
                return
        elif isinstance(item, Host):
            inside = {id(m) for n in item.fused for m in n.walk()}
            read = sorted({n.value for n in nodes([item.stmt]) if n.op is Op.STATE and n.value in quant
                           and id(n) not in inside})
            if read:
                r.error(quant[read[0]].span, f"8-bit state `{read[0]}` is read on the host (a reduction or a "
                        "product of it): only the kernels decode 8-bit states", "store it as `bf16`")
                return
    _verify_read_after_store(spec, program, stored, r)


def _walk(items):
    """The steps of a staged program in the order they may run: into loops and every branch of a
    host `if` (a step after the `if` may follow any of them)."""
    from .lower import Branch, Loop
    for item in items:
        if isinstance(item, Loop):
            yield from _walk(item.steps)
        elif isinstance(item, Branch):
            for _, steps in item.branches:
                yield from _walk(steps)
            yield from _walk(item.orelse)
        else:
            yield item


def _verify_read_after_store(spec, program, stored, r) -> None:
    from .lower import Host, Stage
    written = set()
    for item in _walk(program.steps):
        if isinstance(item, Stage):
            found = [n for e in item.exprs() for n in e.walk() if n.op is Op.STATE]
            reads = set(item.reads) | {n.value for n in found}
        elif isinstance(item, Host):   # (a reduction too: the NumPy chunked kernel sums the stored values)
            found = [n for n in nodes([item.stmt]) if n.op is Op.STATE]
            reads = {n.value for n in found}
        else:
            found, reads = [], set()
        late = sorted(reads & written)
        if late:
            st = stored[late[0]]
            what = f"as {st.quant.name}" if st.quant is not None else f"as {st.storage}"
            spans = [n.span for n in found if n.value == st.name and getattr(n, "span", None) is not None]
            where = min(spans, key=lambda sp: (sp.line, sp.col)) if spans else None   # (the first read)
            line = f" (line {st.span.line})" if where is not None and st.span is not None else ""
            r.error(where or st.span, f"state `{st.name}` is stored {what}{line} and read here, after the step "
                    "of the update that stores it: the compiled kernels would read its rounding",
                    f"keep the new value in a local (`{st.name}_new = ...`, then `{st.name} = {st.name}_new` "
                    "at the end) and read the local")
            return
        if isinstance(item, Stage):
            written |= {n for n in item.writes if n in stored}
