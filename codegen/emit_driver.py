"""Staged program -> the Python driver of the compiled backends.

The driver is a method of the generated class, `_kernel_staged(be, ...)`: it runs the host
statements in Python (array work through `xp`, NumPy or CuPy), allocates scratch arrays for
materialized locals, and launches each stage through the backend `be` with its pointers and
scalar arguments. The native CPU and CUDA backends share it; they differ only in `be`.

With fused reductions the driver is a generator, `_kernel_phases(be, ...)`: a launch whose partial
sums it needs is yielded, and the driver resumes with its value. `_kernel_staged` runs it to the end
with a backend that answers at once (`ops.drive`); a CUDA list update runs every parameter's
generator in lockstep instead, so that each stage is one multi-tensor launch for all parameters and
all their reductions come back in one transfer (`multi.run_lockstep`).
"""
from __future__ import annotations

import re

from .emit_numpy import NumpyEmitter, gather_lines, if_lines, per_parameter_reads, repeat_lines, step_bindings
from .ir import Op, Role, Shape
from .emit_c import AXIS_HOW
from .lower import GRAD_SCALE_ARG, ROUND_SEED_ARG, Gather, Host, Loop, Program, Stage, is_product
from .walk import leaves, own_exprs, statements, targets


def driver_lines(spec, program: Program) -> list[str]:
    em = NumpyEmitter(spec, xp="xp")
    out = ["xp = be.xp"]
    body = program.body
    out += [f"{h} = self.{h}" for h in sorted(leaves(body, {Op.HYPER}))]
    out += [f"{b} = self.{b}" for b in sorted(leaves(body, {Op.BUILTIN}) & {"rescale_grad", "clip_gradient"})]
    out += step_bindings(body, spec.prologue_exports)
    out += [f"{g} = self._globals[{g!r}]" for g in sorted(leaves(body, {Op.GLOBAL}))]
    used_states = leaves(body, {Op.STATE}) | targets(body, Role.STATE)
    for st in spec.states:
        if st.name in used_states:
            out.append(f"{st.name} = tensors.get({st.name!r})" if st.cond is not None else f"{st.name} = tensors[{st.name!r}]")
            if st.quant is not None:   # an 8-bit state's block scales travel with its codes
                out.append(f"{st.name}__absmax = tensors.get({st.name + '.absmax'!r})")
    used_scalars = leaves(body, {Op.SCALAR_STATE}) | targets(body, Role.SCALAR_STATE)
    out += [f"{s.name} = scalars[{s.name!r}]" for s in spec.scalar_states if s.name in used_scalars]
    # the call's gradient factor (lower.GRAD_SCALE): the stages scale what they read; host code that reads
    # the gradient (a product's operand, a reduction the backend did not fuse) reads a scaled copy
    if _host_reads_grad(program.steps):
        out += ["_grad_scale = _step.grad_scale", "_grad = grad if _grad_scale == 1 else grad * _grad_scale"]
        em.grad_name = "_grad"
    elif any(sc.name == GRAD_SCALE_ARG for st in program.stages for sc in st.scalars):
        out.append("_grad_scale = _step.grad_scale")
    if any(sc.name == ROUND_SEED_ARG for st in program.stages for sc in st.scalars):
        out.append("_round_seed = _step.round_seed")
    if any(st.tiled for st in program.stages):   # the blocks x rows x cols the tiled stages run over
        out.append(f"_B, _R, _C = ops.view_dims(weight.shape, {spec.view!r})")
    scratch = set(program.scratch)

    def alloc(name, pad):
        shape = program.shapes.get(name, Shape.FULL)
        if shape is Shape.FULL:
            return f"{pad}{name} = be.scratch(weight, {name!r})"
        return (f"{pad}{name} = be.scratch(weight, {name!r}, ops.state_shape(weight.shape, {shape.value!r}, "
                f"{spec.view!r}))")

    def steps(items, depth, ready=frozenset()):
        """The lines of `items`; a scratch array is made at the start of the innermost branch that
        holds all its uses (not for the parameters that take another branch), outside any loop."""
        pad = "    " * depth
        here = sorted(set().union(*(_refs(it, scratch) for it in items)) - ready) if items else []
        inner = set()
        for it in items:
            if isinstance(it, (Host, Stage, Loop, Gather)):
                continue
            bodies = [b for _, b in it.branches] + [it.orelse]
            for name in here:
                holders = [b for b in bodies if any(name in _refs(x, scratch) for x in b)]
                others = [x for x in items if x is not it and name in _refs(x, scratch)]
                if len(holders) == 1 and not others:
                    inner.add(name)
        lines = [alloc(n, pad) for n in here if n not in inner]
        ready = ready | {n for n in here if n not in inner}
        for item in items:
            if isinstance(item, Host) and is_product(item.stmt):   # a library call into its scratch array
                s = item.stmt
                lines.append(f"{pad}{em.matmul(s.value, out=s.target)}  # {em.file}:{s.line}")
            elif isinstance(item, Loop):
                lines += repeat_lines(item.count, pad, em.expr, steps(item.steps, depth + 1, ready | scratch))
            elif isinstance(item, Gather):
                lines += gather_lines(em, item, pad, needed, spec)
            elif isinstance(item, Host):
                em.fused = {n: (f"_red_{stage}", slot) for n, (stage, slot) in item.fused.items()}
                lines += em.block([item.stmt], depth)
                em.fused = {}
            elif isinstance(item, Stage):
                quant = {s.name for s in spec.states if s.quant is not None}
                ptrs = ", ".join([p for name in item.memory() for p in ((name, f"{name}__absmax") if name in quant else (name,))]
                                 + [o[0] for o in item.outputs])
                args = [_scalar(em, sc) for sc in item.scalars]
                call = f"be.launch({item.fn!r}, ({ptrs},), ({''.join(a + ', ' for a in args)})"
                if item.tiled:
                    dims = (f"_B, {'_R' if item.domain.rows else 1}, {'_C' if item.domain.cols else 1}")
                    call += f", dims=({dims})"
                    if item.outputs:   # how the axis reductions combine, for backends that finish them
                        call += f", axes={tuple((AXIS_HOW[o[1]], o[2]) for o in item.outputs)!r}"
                    if any(op in (Op.MAX, Op.MIN) for op, _ in item.reductions):
                        call += f", hows={tuple(AXIS_HOW[op] for op, _ in item.reductions)!r}"
                if item.reductions:   # partial sums of the fused reductions, or None where not fused
                    lines.append(f"{pad}_red_{item.name} = yield {call}, reduce={len(item.reductions)}"
                                 f"{'' if item.stmts else ', stores=False'})")
                else:
                    lines.append(f"{pad}{call})")
            else:
                lines += if_lines(item.branches, item.orelse, pad, em.expr, lambda sub: steps(sub, depth + 1, ready))
        return lines

    needed = per_parameter_reads(program)
    out += steps(program.steps, 0)
    for s in spec.scalar_states:
        if s.name in targets(body, Role.SCALAR_STATE):
            out.append(f"scalars[{s.name!r}] = {s.name}")
    if not any(re.search(r"\bxp\b", line) for line in out[1:]):
        out = out[1:]   # no array work on the host: no array module
    return out or ["pass"]


def _host_reads_grad(items) -> bool:
    """Whether host code of the steps reads the gradient (a Host statement, a condition, a loop count,
    a meeting point's numbers)."""
    def reads(e):
        return any(n.op is Op.GRAD for n in e.walk())
    for it in items:
        if isinstance(it, Host):
            if any(reads(e) for e in own_exprs(it.stmt)) or any(
                    reads(e) for x in statements([it.stmt]) for e in own_exprs(x)):
                return True
        elif isinstance(it, Loop):
            if reads(it.count) or _host_reads_grad(it.steps):
                return True
        elif isinstance(it, Gather):
            if any(reads(v) for _, _, v in it.slots):
                return True
        elif isinstance(it, Stage):
            continue
        else:
            if any(reads(c) for c, _ in it.branches) or any(_host_reads_grad(b) for _, b in it.branches) \
                    or _host_reads_grad(it.orelse):
                return True
    return False


def _refs(item, scratch) -> set:
    """The scratch arrays a step (and the steps inside it) reads or writes."""
    if isinstance(item, Stage):
        return (set(item.memory()) | {o[0] for o in item.outputs}) & scratch
    if isinstance(item, Host):
        return (set(leaves([item.stmt], {Op.LOCAL})) | set(targets([item.stmt]))) & scratch
    if isinstance(item, Loop):
        return set().union(*(_refs(x, scratch) for x in item.steps)) if item.steps else set()
    if isinstance(item, Gather):
        return set()
    out = set()
    for body in [b for _, b in item.branches] + [item.orelse]:
        for x in body:
            out |= _refs(x, scratch)
    return out


def _scalar(em: NumpyEmitter, sc) -> str:
    """A stage's scalar argument, computed only when the kernel reads it (0 otherwise)."""
    if sc.expr is None:
        return "be.seed(self._rng)"
    value = f"ops.arg({em.expr(sc.expr)})"
    if sc.guards is None:
        return value
    alternatives = [" and ".join(em._wrap(c, 2) for c in guard) for guard in sc.guards]
    test = alternatives[0] if len(alternatives) == 1 else " or ".join(f"({a})" for a in alternatives)
    return f"({value} if {test} else 0.0)"
