"""Staged program -> C++ kernels. One C-style emitter; the CPU and CUDA targets differ by tables.

Every stage becomes an element function `optforge_<spec>_<stage>_elem(i, pointers..., scalars...)`
shared by both targets; the CPU wraps it in an OpenMP loop, CUDA in a grid-stride kernel. Types:
T is the storage type of weight and states, G the gradient's, C the compute type (float for
float16/float32 storage, double for float64).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import jinja2

from . import quantmap
from .errors import InternalError, printable
from .ir import STORAGE_C, Assign, Expr, IfStmt, Kind, Op, Shape, Spec
from .lower import GRAD_SCALE_ARG, ROUND_SEED_ARG, Program, Stage, _in_kernel, lower
from .walk import assigns, statements

TEMPLATES = Path(__file__).resolve().parent / "templates"
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,
                          keep_trailing_newline=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True)

PREC = {Op.OR: 1, Op.AND: 2, Op.EQ: 3, Op.NE: 3, Op.LT: 4, Op.LE: 4, Op.GT: 4, Op.GE: 4,
        Op.ADD: 5, Op.SUB: 5, Op.MUL: 6, Op.DIV: 6, Op.MOD: 6, Op.NEG: 7, Op.NOT: 7}
ATOM = 9


MAX_BRANCH_FLAGS = 2
# how the kernels accumulate a reduction along an axis (or a whole-tensor max/min), from what start
AXIS_HOW = {Op.SUM: "sum", Op.MAX: "max", Op.MIN: "min", Op.NORM: "sum"}
AXIS_INIT = {Op.SUM: "0.0", Op.MAX: "-OPTFORGE_INF", Op.MIN: "OPTFORGE_INF", Op.NORM: "0.0"}


def _state_type(state) -> str:
    """A tensor state's C storage: the variant's T (the weight's type), or what `as TYPE` declares."""
    if state.quant is not None:   # 8-bit: one-byte codes (their scales are a pointer of their own)
        return "uint8_t"
    return "T" if state.storage is None else STORAGE_C[state.storage]


def _inline_conditions(stmts):
    """The conditions of the `if`s inside a stage, outermost first."""
    return [c for s in statements(stmts) if isinstance(s, IfStmt) for c, _ in s.branches]


class CStyleEmitter:
    """Renders stage element functions; subclasses set the tables."""
    target = "c"
    template = None
    FUNCS = {Op.SQRT: "sqrt({0})", Op.SQUARE: "op_square({0})", Op.ABS: "fabs({0})", Op.SIGN: "op_sign({0})",
             Op.EXP: "exp({0})", Op.LOG: "log({0})", Op.MAXIMUM: "op_max({0}, {1})",
             Op.MINIMUM: "op_min({0}, {1})", Op.CLIP: "op_clip({0}, {1})", Op.POW: "pow({0}, {1})",
             Op.MOD: "op_mod({0}, {1})", Op.EYE: "op_eye<C>(i, {0})"}
    BINOPS = {Op.ADD: "+", Op.SUB: "-", Op.MUL: "*", Op.DIV: "/", Op.EQ: "==", Op.NE: "!=", Op.LT: "<",
              Op.LE: "<=", Op.GT: ">", Op.GE: ">=", Op.AND: "&&", Op.OR: "||"}

    def __init__(self, spec: Spec, program: Program | None = None):
        self.spec = spec
        self.file = spec.path.rsplit("/", 1)[-1]
        self.program = program or lower(spec)
        self.steps, self.stages, self.scratch = self.program.steps, self.program.stages, self.program.scratch
        self.helpers: set = set()   # the op_* functions the rendered stages call
        # the code tables of the spec's 8-bit states (ir.Quant): (signed, map) -> table number
        self.quant_tables = {}
        for s in spec.states:
            if s.quant is not None:
                self.quant_tables.setdefault((s.quant.signed, s.quant.map), len(self.quant_tables))

    # ---- expressions --------------------------------------------------------------------------
    def expr(self, e: Expr, names: dict) -> str:
        return self._e(e, names)[0]

    def _wrap(self, e, names, prec, right=False):
        text, p = self._e(e, names)
        return f"({text})" if p < prec or (right and p == prec) else text

    def _e(self, e: Expr, names: dict) -> tuple[str, int]:
        if e.kind is not Kind.TENSOR and not _in_kernel(e):
            if e.op is Op.CONST:
                v = e.value
                if isinstance(v, bool):
                    return ("true" if v else "false"), ATOM
                text = repr(float(v)) if isinstance(v, float) else repr(v)
                return f"C({text})", ATOM   # typed, so that op_max(x, 0) deduces one type
            return names[e], ATOM
        op = e.op
        if op in (Op.WEIGHT, Op.GRAD, Op.STATE, Op.LOCAL):
            return ("weight" if op is Op.WEIGHT else "grad" if op is Op.GRAD else e.value), ATOM
        if op in (Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE, Op.AND, Op.OR):
            p = PREC[op]
            return f"{self._wrap(e.args[0], names, p)} {self.BINOPS[op]} {self._wrap(e.args[1], names, p, True)}", p
        if op is Op.NEG:
            return f"-{self._wrap(e.args[0], names, PREC[op])}", PREC[op]
        if op is Op.NOT:
            return f"!{self._wrap(e.args[0], names, PREC[op])}", PREC[op]
        if op is Op.WHERE:
            c, a, b = (self.expr(x, names) for x in e.args)
            return f"({c} ? C({a}) : C({b}))", ATOM
        if op is Op.NORMAL:
            self.helpers.add("op_normal")
            salt = names.setdefault(("salt", e), len([k for k in names if isinstance(k, tuple)]))
            return f"op_normal<C>(k_seed, i, {salt}, {self.expr(e.args[0], names)}, {self.expr(e.args[1], names)})", ATOM
        if op in self.FUNCS:
            if self.FUNCS[op].startswith("op_"):
                self.helpers.add(self.FUNCS[op].split("(")[0].split("<")[0])   # emitted only where used
            return self.FUNCS[op].format(*(self.expr(a, names) for a in e.args)), ATOM
        raise InternalError(f"no {self.target} rule for {op}")

    # ---- stages -------------------------------------------------------------------------------
    def stage(self, st: Stage) -> dict:
        names = {sc.expr: sc.name for sc in st.scalars if sc.expr is not None}
        states = {x.name: x for x in self.spec.states}
        reads, writes, locals_ = st.reads, st.writes, st.locals
        assigned = {s.target for s in assigns(st.stmts)}
        # each element's reduction terms go out through references; the kernel accumulates them
        reduce_lines = [f"red{k} = C({self.expr(arg, names)});" for k, (_, arg) in enumerate(st.reductions)]
        # a reduction of a tensor as it is in memory after the stage (the weight, a state, the gradient, a
        # scratch local; not a conditional state, which may be absent) is summed straight from memory
        direct = []
        for _, arg in st.reductions:
            key = "weight" if arg.op is Op.WEIGHT else "grad" if arg.op is Op.GRAD else arg.value
            in_memory = arg.op in (Op.WEIGHT, Op.GRAD) or (
                arg.op is Op.STATE and states[key].cond is None and states[key].quant is None
                and states[key].storage is None) or (
                arg.op is Op.LOCAL and arg.kind is Kind.TENSOR and (key in st.scratch_writes or
                                                                    (key in self.scratch and key not in assigned)))
            direct.append(f"p_{key}" if in_memory and arg.op is not Op.GRAD else None)   # (grad: scaled first)
        if st.tiled:   # blocks x rows x cols: each tensor at the element of its own shape
            by_shape = {Shape.FULL: "i", Shape.ROW: "_iR", Shape.COL: "_iC", Shape.BLOCK: "_iB"}
            index = lambda name: by_shape[st.shapes[name]]  # noqa: E731
        else:
            index = lambda name: "i" if name == "weight" or name in states else "gi"  # noqa: E731
        pointers, loads, stores = [], [], []
        quant = {name: states[name].quant for name in st.memory() if name in states and states[name].quant}
        for name in st.memory():
            ctype = "G" if name == "grad" else _state_type(states[name]) if name in states else \
                "T" if name == "weight" else "C"
            pointers.append({"name": name, "type": ctype, "const": name not in writes})
            if name in quant:   # an 8-bit state: its codes, then its blocks' scales
                pointers.append({"name": f"{name}__absmax", "type": "float", "const": name not in writes})
        # a conditional state (SGD's mom) may be absent: its pointer is null and no branch taken uses it.
        # Template parameter H<k> says so at compile time (1 present, 0 absent), so that the CPU loops,
        # specialised per case, have no control flow and vectorize; 2 checks the pointer at run time.
        optional = [name for name in reads + writes if name in states and states[name].cond is not None]
        optional = list(dict.fromkeys(optional))
        present = {name: f"(H{k} == 1 || (H{k} == 2 && p_{name}))" for k, name in enumerate(optional)}
        def load(name):
            if name in quant:   # the code's value times its block's scale, in float (as ops.dequantize)
                q = quant[name]
                table = self.quant_tables[(q.signed, q.map)]
                return f"C(optforge_qmap{table}[p_{name}[i]] * p_{name}__absmax[i / {q.block}])"
            return f"C(p_{name}[{index(name)}])"
        for name in reads:
            if name in present:
                loads.append(f"C {name} = {present[name]} ? {load(name)} : C(0);")
            elif name == "grad":   # the call's gradient factor (lower.GRAD_SCALE)
                loads.append(f"C {name} = C(p_{name}[{index(name)}]) * {GRAD_SCALE_ARG};")
            else:
                loads.append(f"C {name} = {load(name)};")
        declare = [n for n in locals_ + writes if n not in reads]
        for name in writes:
            cast = "T" if name == "weight" or name in states else "C"
            if name == "weight":   # the bfloat16 variant rounds it with the parameter's seed (lower.ROUND_SEED)
                line = f"p_{name}[{index(name)}] = op_store<T>({name}, {ROUND_SEED_ARG}, {index(name)});"
            elif name in quant:   # to the block's buffer: quantised when the block is done (op_requant)
                line = f"_q{list(n for n in writes if n in quant).index(name)} = {name};"
            else:
                line = f"p_{name}[{index(name)}] = ({_state_type(states[name]) if name in states else cast})({name});"
            stores.append(f"if {present[name]} {line}" if name in present else line)
        # an `if` inside the stage on a host value (RMSProp's `centered`, SGD's `momentum != 0`) is template
        # parameter B<k> too: 1 true, 0 false, 2 tested at run time; the CPU loops are specialised per
        # case so that no lane computes both branches (at most MAX_BRANCH_FLAGS such conditions)
        branch = []
        for cond in _inline_conditions(st.stmts):
            if cond.kind is not Kind.TENSOR and not _in_kernel(cond) and cond in names \
                    and names[cond] not in branch and len(branch) < MAX_BRANCH_FLAGS:
                branch.append(names[cond])
        cases = []
        for flags in itertools.product((1, 0), repeat=len(optional) + len(branch)):
            tests = [f"p_{n}" if f else f"!p_{n}" for n, f in zip(optional, flags)]
            tests += [f"{n} != 0" if f else f"{n} == 0" for n, f in zip(branch, flags[len(optional):])]
            cases.append((" && ".join(tests) or None, "".join(f", {f}" for f in flags)))
        body = self._body(st.stmts, names, 0, {n: k for k, n in enumerate(branch)})
        nred = len(st.reductions)
        outputs = [{"name": name, "how": AXIS_HOW[op], "axis": axis, "init": AXIS_INIT[op]}
                   for name, op, axis, _ in st.outputs]
        reduce_lines += [f"_ax{k} = C({self.expr(arg, names)});" for k, (_, _, _, arg) in enumerate(st.outputs)]
        if any(o["how"] != "sum" for o in outputs) or any(op in (Op.MAX, Op.MIN) for op, _ in st.reductions):
            self.helpers |= {"op_max", "op_min", "inf"}
        return {"name": st.name, "nred": nred, "reduce": reduce_lines,
                "red_squares": [op is Op.NORM for op, _ in st.reductions], "red_direct": direct,
                "elem_pass": bool(st.stmts) or None in direct, "fn": st.fn, "pointers": pointers,
                "loads": loads, "declare": list(dict.fromkeys(declare)), "body": body, "stores": stores,
                "hparams": "".join(f", int H{k}" for k in range(len(optional))) +
                           "".join(f", int B{k}" for k in range(len(branch))),
                "runtime_h": "".join(", 2" for _ in optional + branch), "cases": cases,
                "flag_names": "".join(f", H{k}" for k in range(len(optional))) + "".join(f", B{k}" for k in range(len(branch))),
                "writes_weight": "weight" in writes, "tiled": st.tiled, "outputs": outputs,
                "red_how": [AXIS_HOW.get(op, "sum") for op, _ in st.reductions],
                # the tiled CPU loop's simd sums (maxima and minima go through lanes: they keep NaN)
                "acc_names": [f"row{k}" for k, o in enumerate(outputs) if o["axis"] == -1 and o["how"] == "sum"] +
                             [f"w{k}" for k, (op, _) in enumerate(st.reductions) if op not in (Op.MAX, Op.MIN)],
                "red_init": [AXIS_INIT.get(op, "0.0") for op, _ in st.reductions],
                # seeds stay double (exact integers below 2^53); the others are in the compute type
                "scalars": [(sc.name, "double" if sc.expr is None or sc.name == ROUND_SEED_ARG else "C")
                            for sc in st.scalars],
                # the 8-bit states it writes: each element's new value goes to its block's buffer, and
                # the block is quantised when all its elements are done (codegen/verify.py: such a stage
                # runs flat, without fused reductions)
                "quant": [{"name": n, "table": self.quant_tables[(quant[n].signed, quant[n].map)],
                           "present": present.get(n)} for n in writes if n in quant],
                "qblock": next((quant[n].block for n in writes if n in quant), 0)}

    def _body(self, stmts, names, depth, branch=None) -> list[str]:
        pad = "    " * depth
        branch = branch or {}
        out = []
        for s in stmts:
            if isinstance(s, Assign):
                value = self.expr(s.value, names)
                if s.value.kind is not Kind.TENSOR:
                    value = f"C({value})"
                out.append(f"{pad}{s.target} = {value};  // {self.file}:{s.line}")
            else:
                for k, (cond, body) in enumerate(s.branches):
                    test = self.expr(cond, names)
                    if test in branch:
                        b = branch[test]
                        test = f"B{b} == 1 || (B{b} == 2 && {test})"
                    out.append(f"{pad}{'if' if k == 0 else '} else if'} ({test}) {{")
                    out += self._body(body, names, depth + 1, branch)
                if s.orelse:
                    out.append(f"{pad}}} else {{")
                    out += self._body(s.orelse, names, depth + 1, branch)
                out.append(f"{pad}}}")
        return out

    def render(self, spec_path: str | None = None) -> str:
        stages = [self.stage(st) for st in self.stages]
        uses_normal = any(n.op is Op.NORMAL for st in self.stages for e in st.exprs() for n in e.walk())
        tables = [{"codes": ", ".join(quantmap.c_float(v) for v in quantmap.table(signed, kind)),
                   "mids": ", ".join(quantmap.c_float(v) for v in quantmap.midpoints(quantmap.table(signed, kind))),
                   "what": f"{'signed' if signed else 'unsigned'} {kind}"}
                  for (signed, kind), _ in sorted(self.quant_tables.items(), key=lambda kv: kv[1])]
        return _env.get_template(self.template).render(
            spec=self.spec, stages=stages, uses_normal=uses_normal, helpers=self.helpers, header=_header(self.spec, spec_path),
            quant_tables=tables,
            quant_refine=max([quantmap.prefix_crowding(quantmap.table(signed, kind)) for signed, kind in self.quant_tables]
                             or [0]),
            lazy_rows=bool(self.spec.sparse and self.spec.sparse.lazy))   # row kernels only where used


class CpuEmitter(CStyleEmitter):
    target = "cpu"
    template = "cpu_kernels.cpp.j2"


class CudaEmitter(CStyleEmitter):
    target = "cuda"
    template = "cuda_kernels.cu.j2"


def _header(spec: Spec, spec_path: str | None) -> str:
    return (f"// Generated by opt-compile from {printable(spec_path or spec.path)} (sha256 {spec.source_hash}).\n"
            "// Do not edit: change the spec and run `opt-compile` again.")
