"""Syntax tree -> checked IR. Every problem becomes a diagnostic with the culprit's span; all
problems in a spec are reported together. Emitters may assume whatever this file accepts."""
from __future__ import annotations

import hashlib
import keyword
import math
from dataclasses import replace

from . import ast
from .errors import Reporter, Span, did_you_mean
from .ir import (AXIS_WORDS, COMPARE, Assign, Expr, Global, Hyper, IfStmt, Kind, Op, Repeat, Role, ScalarState, Shape,
                 GATHERS, QUANT_MAPS, SHAPE_FACTS, STORAGE, Quant, Sparse, Spec, State, Ty, call_scope)
from .verify import verify
from .walk import exprs as own_exprs_deep, leaves, targets
from .names import (ARITH, BASE_DEFAULTS, BASE_NAMES, BUILTIN_DOCS, BUILTINS, C_KEYWORDS, FUNCTIONS,  # noqa: F401
                    NEGATE, NUMERIC, OPTIMIZER_ATTRS, OPTIONS, REL, RESERVED, RESERVED_PATTERN, SPARSE_BUILTINS,
                    STATE_INITS, STATE_SHAPES, TORCH_BASE, TORCH_FLAGS, VIEWS)

SHAPE_WORDS = {Shape.FULL: "the weight's shape", Shape.ROW: "one value per row (per_row)",
               Shape.COL: "one value per col (per_col)", Shape.BLOCK: "one value per block (per_block)",
               Shape.GRAM_R: "a rows x rows matrix (rows_x_rows)", Shape.GRAM_C: "a cols x cols matrix (cols_x_cols)",
               Shape.TRANS: "a cols x rows matrix (cols_x_rows)"}


class _ShapeClash(Exception):
    """Two operands of an elementwise operation whose shapes do not combine (Shape.joins)."""

    def __init__(self, a: Shape, b: Shape):
        super().__init__(a, b)
        self.a, self.b = a, b


def _shape(*args) -> Shape:
    """The broadcast shape of an elementwise operation's tensor operands."""
    out = None
    for a in args:
        if a.kind is Kind.TENSOR:
            if out is not None and not out.joins(a.shape):
                raise _ShapeClash(out, a.shape)
            out = a.shape if out is None else out.join(a.shape)
    return out or Shape.FULL


def _shape_only(cond: Expr) -> bool:
    """True when `cond` reads nothing but constants, hyperparameters and shape facts (ndim(weight), ...)."""
    return all(n.op not in (Op.BUILTIN, Op.WEIGHT, Op.GRAD, Op.STATE, Op.LOCAL, Op.GLOBAL, Op.SCALAR_STATE)
               for n in cond.walk())


def _reads_only(e: Expr, builtins: set) -> bool:
    """True when `e` reads nothing but constants, hyperparameters and the given builtins."""
    return all(n.op not in (Op.BUILTIN, Op.WEIGHT, Op.GRAD, Op.STATE, Op.LOCAL, Op.GLOBAL, Op.SCALAR_STATE)
               or (n.op is Op.BUILTIN and n.value in builtins) for n in e.walk())


def const(value, span=None) -> Expr:
    ty = Ty.BOOL if isinstance(value, bool) else Ty.INT if isinstance(value, int) else \
        Ty.STR if isinstance(value, str) else Ty.FLOAT
    return Expr(Op.CONST, ty, Kind.CONST, (), value, value is None, span)


def negate(cond: Expr) -> Expr:
    if cond.op in NEGATE:
        return Expr(NEGATE[cond.op], cond.ty, cond.kind, cond.args, None, False, cond.span)
    if cond.op is Op.NOT:
        return cond.args[0]
    return Expr(Op.NOT, Ty.BOOL, cond.kind, (cond,), None, False, cond.span)


def conjuncts(cond: Expr):
    if cond.op is Op.AND:
        for a in cond.args:
            yield from conjuncts(a)
    else:
        yield cond


def _compared_names(cond: Expr) -> set:
    """Optional names a condition proves present: `x > 0` is false when x is none."""
    names = set()
    for c in conjuncts(cond):
        if c.op in COMPARE:
            for a in c.args:
                if a.optional and a.op in (Op.HYPER, Op.BUILTIN, Op.GLOBAL):
                    names.add(a.value)
    return names


class _Scope:
    def __init__(self, guards=(), narrowed=frozenset()):
        self.guards = tuple(guards)
        self.narrowed = frozenset(narrowed)

    def with_cond(self, cond: Expr, narrow: bool = True) -> "_Scope":
        """The scope where `cond` holds. A negated test (an `else`, where()'s second value) narrows
        nothing: `not (c > 0)` holds when c is none."""
        return _Scope(self.guards + tuple(conjuncts(cond)),
                      self.narrowed | (_compared_names(cond) if narrow else frozenset()))


class Checker:
    def __init__(self, decls, path: str, source: str, file_stem: str | None = None):
        self.decls, self.path, self.source, self.file_stem = decls, path, source, file_stem
        self.r = Reporter(path, source)
        self.hypers: dict[str, Hyper] = {}
        self.states: dict[str, State] = {}
        self.scalar_states: dict[str, ScalarState] = {}
        self.globals: dict[str, Global] = {}
        self.locals: dict[str, Expr] = {}       # name -> a representative leaf (type, kind)
        self.pending_locals: set[str] = set()   # names assigned somewhere later in the body
        self.scalar_kinds: dict[str, Kind] = {}  # scalar states assigned values known only after a reduction
        self.failed: set[str] = set()           # locals whose assignment had an error (reported there)
        self.nesting = 0                        # how many `if`s and `repeat`s enclose the statement checked
        self.shared: set[str] = set()           # locals holding values the same for every parameter (call_scope)
        self.loop_locals: set[str] = set()      # names assigned inside a `repeat`
        self.used: set[str] = set()
        self.uses_random = False
        self.draws = 0
        self._unused_spans = []
        self._extra_builtins: dict = {}         # names only a `sparse` declaration may read

    # ---- entry --------------------------------------------------------------------------
    def run(self) -> Spec:
        by_kind: dict[str, list] = {}
        for d in self.decls:
            by_kind.setdefault(d.what, []).append(d)
        name, name_span = self._optimizer_name(by_kind)
        aliases = self._aliases(by_kind, name)
        doc = self._single(by_kind, "doc", "doc text")
        defaults = self._defaults(by_kind)
        for d in by_kind.get("hyper", []):
            self._hyper(d)
        options = self._options(by_kind)
        view = self._view(by_kind)
        for d in by_kind.get("state", []):
            self._state(d)
        for d in by_kind.get("global", []):
            self._global(d)
        sparse = self._sparse(by_kind)
        self._carry_rows(by_kind, options, sparse)
        self._torch(by_kind, options)
        updates = by_kind.get("update", [])
        body: tuple = ()
        update_text = ""
        if not updates:
            self.r.error(Span(1, 1, 1, 2), "the spec has no `update { ... }` block")
        else:
            for extra in updates[1:]:
                self.r.error(extra.span, "a spec has one `update` block", "merge the two blocks")
            upd = updates[0]
            self._collect_assigned(upd.body)
            body = self._block(upd.body, _Scope())
            lines = self.source.splitlines()
            update_text = "\n".join(lines[upd.span.line - 1: upd.span.end_line])
        self._unused(options)
        if self.uses_random and "seed" not in self.hypers:
            self.hypers["seed"] = Hyper("seed", "int", None, True, 0.0, math.inf, True, True, (),
                                        "Seed of this optimizer's random generator (None: fresh entropy).", None)
        self.r.raise_if_errors()
        if options.get("host_arithmetic", False):
            body = _host_arithmetic(body)
        prologue, per_index, exports = self._split(body)
        self.r.raise_if_errors()
        return Spec(
            name=name, path=self.path, source=self.source,
            source_hash=hashlib.sha256(self.source.encode()).hexdigest()[:16], aliases=aliases,
            doc=(doc.text if doc else "").strip("\n"), defaults=defaults, hypers=tuple(self.hypers.values()),
            states=tuple(self.states.values()), scalar_states=tuple(self.scalar_states.values()),
            globals=tuple(self.globals.values()), options=options, sparse=sparse, prologue=prologue,
            body=per_index, prologue_exports=exports, update_text=update_text, uses_random=self.uses_random,
            view=view,
            signature=tuple(d.name for d in self.decls if d.what in ("default", "hyper")
                            and (d.name in defaults or d.name in self.hypers))
            + (("seed",) if self.uses_random and not any(d.name == "seed" for d in self.decls) else ()))

    # ---- declarations ---------------------------------------------------------------------
    def _single(self, by_kind, what, label):
        items = by_kind.get(what, [])
        for extra in items[1:]:
            self.r.error(extra.span, f"duplicate {label}", f"the first one is on line {items[0].span.line}")
        return items[0] if items else None

    def _optimizer_name(self, by_kind):
        d = self._single(by_kind, "optimizer", "`optimizer` declaration")
        if not self.path.isprintable():
            self.r.error(Span(0, 0, 0, 0), "the spec's path contains a control character",
                         "rename the file: its path is written into the generated module")
        if d is None:
            self.r.error(Span(1, 1, 1, 2), "missing `optimizer NAME` declaration", "start the spec with `optimizer Name`")
            return "Unnamed", None
        self._check_identifier(d.name, d.name_span, "optimizer name")
        if self.file_stem is not None and self.file_stem != d.name.lower():
            self.r.error(d.name_span, f"file name `{self.file_stem}.opt` does not match optimizer `{d.name}`",
                         f"rename the file to `{d.name.lower()}.opt`")
        return d.name, d.name_span

    def _aliases(self, by_kind, name):
        aliases = [name.lower()]
        for d in by_kind.get("alias", []):
            for text, span in d.args:
                if not text.isidentifier() or not text.isascii():
                    self.r.error(span, f"alias {text!r} is not a valid identifier")
                elif text.lower() in [a.lower() for a in aliases]:
                    self.r.error(span, f"duplicate alias {text!r}")
                elif keyword.iskeyword(text) or text.startswith("_"):
                    self.r.error(span, f"alias {text!r} is reserved")
                else:
                    aliases.append(text)
        return tuple(aliases)

    def _check_identifier(self, name, span, what) -> bool:
        if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in C_KEYWORDS:
            self.r.error(span, f"{what} `{name}` is a reserved word in Python or C", "choose another name")
            return False
        if name.startswith("_"):
            self.r.error(span, f"{what} `{name}` may not start with `_`", "names starting with `_` are kept for generated code")
            return False
        if name in RESERVED or RESERVED_PATTERN.search(name):
            self.r.error(span, f"{what} `{name}` clashes with a name the generated code uses", "choose another name")
            return False
        return True

    def _literal(self, node):
        if isinstance(node, ast.Num):
            return node.value
        if isinstance(node, (ast.Str, ast.Bool)):
            return node.value
        if isinstance(node, ast.NoneLit):
            return None
        self.r.error(node.span, "expected a literal value")
        return None

    def _defaults(self, by_kind):
        out = {}
        for d in by_kind.get("default", []):
            if d.name not in BASE_DEFAULTS:
                self.r.error(d.name_span, f"`default` can only set a base argument ({', '.join(sorted(BASE_DEFAULTS))}), not `{d.name}`",
                             did_you_mean(d.name, BASE_DEFAULTS) or "declare your own with `hyper`")
                continue
            if d.name in out:
                self.r.error(d.span, f"duplicate default for `{d.name}`")
                continue
            value = self._literal(d.value)
            ty, optional = BASE_DEFAULTS[d.name]
            if value is None and not optional:
                self.r.error(d.value.span, f"`{d.name}` cannot be none")
            elif value is not None and not self._fits(value, "bool" if ty is Ty.BOOL else "float"):
                self.r.error(d.value.span, f"default for `{d.name}` must be a {ty.value}")
            out[d.name] = float(value) if isinstance(value, int) and ty is Ty.FLOAT and not isinstance(value, bool) else value
        return out

    @staticmethod
    def _fits(value, type_name, choices=()):
        if type_name == "float":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if type_name == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if type_name == "bool":
            return isinstance(value, bool)
        if type_name == "choice":
            return value in choices
        return False

    def _declared(self, name):
        return name in self.hypers or name in self.states or name in self.scalar_states or name in self.globals

    def _dup(self, name, span) -> bool:
        if name in BUILTINS or name in BASE_NAMES:
            self.r.error(span, f"`{name}` is already defined by the base optimizer", "choose another name")
            return True
        if self._declared(name):
            self.r.error(span, f"duplicate definition of `{name}`")
            return True
        self._check_identifier(name, span, "name")   # reported; the declaration still counts
        return False

    def _hyper(self, d):
        if self._dup(d.name, d.name_span):
            return
        if d.name in OPTIMIZER_ATTRS:
            self.r.error(d.name_span, f"hyperparameter `{d.name}` clashes with the optimizer attribute `{d.name}`",
                         "choose another name")
        t = d.type
        for c in t.choices:
            if not c.isascii() or not c.isprintable():
                self.r.error(t.span, f"choice {c!r} must be printable ASCII text")
        if t.kind == "choice" and len(set(t.choices)) != len(t.choices):
            self.r.error(t.span, "duplicate choice")
        default = self._literal(d.value) if d.value is not None else None
        if d.value is None and not t.optional:
            self.r.error(d.span, f"hyperparameter `{d.name}` needs a default value", "write `= value` after the type")
        elif default is None and d.value is not None and not t.optional:
            self.r.error(d.value.span, f"`{d.name}` is not optional and cannot default to none",
                         f"declare it as `{t.kind}?` to allow none" if t.kind in ("float", "int") else None)
        elif default is not None and not self._fits(default, t.kind, t.choices):
            want = f"one of {', '.join(repr(c) for c in t.choices)}" if t.kind == "choice" else \
                f"{'an' if t.kind == 'int' else 'a'} {t.kind}"
            self.r.error(d.value.span, f"default {_shown(d.value, default)} of `{d.name}` is not {want}")
            default = None
        if t.kind == "float" and isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        lo = hi = None
        lo_closed = hi_closed = True
        if d.range is not None:
            rspan, lo_closed, lo_node, hi_node, hi_closed = d.range
            if t.kind not in ("float", "int"):
                self.r.error(rspan, f"a range only applies to numbers, not to a {t.kind}")
            lo, hi = float(lo_node.value), float(hi_node.value)
            if lo > hi or (lo == hi and not (lo_closed and hi_closed)):
                self.r.error(rspan, "empty range")
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                below = default < lo or (default == lo and not lo_closed)
                above = default > hi or (default == hi and not hi_closed)
                if below or above:
                    self.r.error(d.value.span, f"default {_shown(d.value, default)} of `{d.name}` is outside its range "
                                 f"{'[' if lo_closed else '('}{lo_node.text}, {hi_node.text}{']' if hi_closed else ')'}")
        self.hypers[d.name] = Hyper(d.name, t.kind, default, t.optional, lo, hi, lo_closed, hi_closed, t.choices,
                                    (d.text or "").strip(), d.span)

    def _options(self, by_kind):
        out = {}
        for d in by_kind.get("option", []):
            if d.name not in OPTIONS:
                self.r.error(d.name_span, f"unknown option `{d.name}`", did_you_mean(d.name, OPTIONS)
                             or f"options: {', '.join(sorted(OPTIONS))}")
                continue
            if d.name in out:
                self.r.error(d.span, f"duplicate option `{d.name}`")
                continue
            nargs, argty, _ = OPTIONS[d.name]
            values = [self._literal(a) for a in d.args]
            if nargs is not None and len(values) != nargs:
                self.r.error(d.span, f"option `{d.name}` takes {nargs} argument(s), got {len(values)}")
                continue
            if argty is str and not all(isinstance(v, str) and v.isprintable() and v.isascii() for v in values):
                self.r.error(d.span, f"option `{d.name}` takes text arguments")
                continue
            if argty is int and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                self.r.error(d.span, f"option `{d.name}` takes a positive integer")
                continue
            out[d.name] = tuple(values) if nargs is None else values[0] if nargs == 1 else True
            if d.name == "unused":
                self._unused_spans = [(v, a.span) for v, a in zip(values, d.args)]
        return out

    def _view(self, by_kind):
        d = self._single(by_kind, "view", "`view` declaration")
        if d is None:
            return "batched"
        if d.name not in VIEWS:
            self.r.error(d.name_span, f"unknown view `{d.name}`", did_you_mean(d.name, VIEWS)
                         or f"views: {', '.join(VIEWS)}")
            return "batched"
        return d.name

    def _state(self, d):
        if self._dup(d.name, d.name_span):
            return
        self._state_decl(d)
        if d.storage is not None:
            self._storage(d)
        if d.name not in self.states and d.name not in self.scalar_states:
            self.failed.add(d.name)   # reported at its declaration: its uses are not errors of their own

    def _storage(self, d):
        """`state m = zeros as bf16`: the tensor state is stored in that type whatever the weight's."""
        if d.scalar:
            self.r.error(d.storage_span, "a scalar state is a host number: it has no storage type",
                         "`as bf16` stores a tensor state")
            self.scalar_states.pop(d.name, None)
            return
        if d.storage in ("int8", "uint8"):
            quant = self._quant(d)
            if quant is None:
                self.states.pop(d.name, None)
            elif d.name in self.states:
                state = self.states[d.name]
                if state.shape is not Shape.FULL:
                    self.r.error(d.storage_span, f"an 8-bit state is shaped like the weight, not {state.shape.value}",
                                 "store per-row, per-col and matrix states as `bf16`, `f16` or `f32`")
                    self.states.pop(d.name)
                else:
                    self.states[d.name] = replace(state, quant=quant)
            return
        if d.storage not in STORAGE:
            self.r.error(d.storage_span, f"unknown storage type `{d.storage}`",
                         did_you_mean(d.storage, tuple(STORAGE) + ("int8", "uint8"))
                         or "a tensor state is stored as `bf16` (bfloat16), `f16` (float16), `f32` (float32), "
                         "or 8-bit blockwise as `int8(block)` / `uint8(block)`")
            self.states.pop(d.name, None)
            return
        if d.storage_args:
            self.r.error(d.storage_args[0].span, f"`{d.storage}` takes no arguments")
        if d.name in self.states:
            self.states[d.name] = replace(self.states[d.name], storage=STORAGE[d.storage])

    def _quant(self, d):
        """`int8(block = 256, map = "dynamic")`, positional literals: the block size (a power of two from 16
        to 4096) and the code map."""
        args = d.storage_args
        block, qmap = 256, "dynamic"
        if len(args) > 2:
            self.r.error(args[2].span, f"`{d.storage}` takes at most two arguments: the block size and the map")
            return None
        if args:
            a = args[0]
            value = getattr(a, "value", None)
            if not isinstance(a, ast.Num) or value != int(value) or not 16 <= value <= 4096 or int(value) & (int(value) - 1):
                self.r.error(a.span, "the block size of an 8-bit state is a power of two from 16 to 4096",
                             "bitsandbytes' blockwise optimizers use 256")
                return None
            block = int(value)
        if len(args) > 1:
            a = args[1]
            if not isinstance(a, ast.Str) or a.value not in QUANT_MAPS:
                self.r.error(a.span, "the code map of an 8-bit state is \"dynamic\" or \"linear\"",
                             did_you_mean(a.value, QUANT_MAPS) if isinstance(a, ast.Str) else None)
                return None
            qmap = a.value
        return Quant(d.storage == "int8", block, qmap)

    def _state_decl(self, d):
        scope = _Scope()
        cond = None
        shape = Shape.FULL
        if d.shape is not None and not d.scalar:
            if d.shape not in STATE_SHAPES:
                self.r.error(d.shape_span, f"unknown state shape `{d.shape}`", did_you_mean(d.shape, STATE_SHAPES + ("scalar",))
                             or "a state is `scalar` (one host number), `per_row`, `per_col`, `per_block`, "
                             "`rows_x_rows`, `cols_x_cols`, or, without `: shape`, shaped like the weight")
                return
            shape = Shape(d.shape)
        if d.cond is not None:
            cond = self._expr(d.cond, scope)
            if cond is not None:
                if cond.ty is not Ty.BOOL:
                    self.r.error(d.cond.span, "a state condition must be true or false")
                elif cond.kind > Kind.HYPER and not (cond.kind <= Kind.INDEX and _shape_only(cond)):
                    self.r.error(d.cond.span, "a state condition may only use hyperparameters and the weight's "
                                 "shape (ndim, numel, size)", "states are created before the first update")
        if d.scalar:
            init = self._expr(d.value, scope)
            if init is not None and (not _creation_value(init) or init.ty not in NUMERIC + (Ty.BOOL,)):
                self.r.error(d.value.span, "a scalar state starts from a number computed from hyperparameters, "
                             "`lr`, `wd` and `learning_rate`", "states are created before the first update")
            if cond is not None:
                self.r.error(d.cond.span, "scalar states cannot be conditional")
            if init is not None:
                self.scalar_states[d.name] = ScalarState(d.name, init, d.span)
            return
        v = d.value
        eye = _eye_start(v)
        if eye is not None:
            if not shape.matrix:
                self.r.error(v.span, "`eye` (the identity) starts a `rows_x_rows` or `cols_x_cols` state",
                             f"declare it `state {d.name}: rows_x_rows = ...`" if shape is Shape.FULL else None)
            else:
                self.states[d.name] = State(d.name, "eye", eye, cond, d.span, shape)
        elif isinstance(v, ast.Name) and v.id == "weight" and shape is not Shape.FULL:
            self.r.error(v.span, f"a {shape.value} state cannot start as a copy of the weight",
                         "start it as `zeros` or a number")
        elif isinstance(v, ast.Name) and v.id in STATE_INITS:
            self.states[d.name] = State(d.name, v.id, 0.0, cond, d.span, shape)
        elif isinstance(v, ast.Num) or (isinstance(v, ast.UnOp) and v.op == "-" and isinstance(v.operand, ast.Num)):
            value = v.value if isinstance(v, ast.Num) else -v.operand.value
            self.states[d.name] = State(d.name, "fill", float(value), cond, d.span, shape)
        elif isinstance(v, ast.Name) and not self._declared(v.id) and v.id not in BUILTINS:
            self.r.error(v.span, "a tensor state starts as `zeros`, `weight` (a copy), a number computed from "
                         "hyperparameters, `lr`, `wd` and `learning_rate`, or (a matrix state) `eye` or "
                         "`NUMBER * eye`", did_you_mean(v.id, STATE_INITS + tuple(self.hypers))
                         or "for a per-parameter number write `state NAME: scalar = value`")
        else:
            init = self._expr(v, scope)
            if init is None:
                return
            if init.kind is Kind.TENSOR or init.ty not in NUMERIC or not _creation_value(init):
                self.r.error(v.span, "a tensor state starts as `zeros`, `weight` (a copy), a number computed from "
                             "hyperparameters, `lr`, `wd` and `learning_rate`, or (a matrix state) `eye` or "
                             "`NUMBER * eye`", "states are created before the first update; for a per-parameter "
                             "number write `state NAME: scalar = value`")
            elif init.optional:
                self.r.error(v.span, "a state cannot start from an optional hyperparameter: it may be none",
                             "give the hyperparameter a default, or test it in the state's condition")
            else:
                self.states[d.name] = State(d.name, "fill", 0.0, cond, d.span, shape, init)

    def _global(self, d):
        if self._dup(d.name, d.name_span):
            return
        init = self._expr(d.value, _Scope())
        if init is not None and init.kind > Kind.CALL:
            self.r.error(d.value.span, "a global starts from a value known once per update call",
                         "it may use hyperparameters, learning_rate and num_update")
        if init is not None:
            self.globals[d.name] = Global(d.name, init, d.span)

    def _sparse(self, by_kind):
        d = self._single(by_kind, "sparse", "`sparse` declaration")
        if d is None:
            return None
        cond = requires = None
        # the condition may also ask whether this parameter updates a float32 master copy (fp16 +
        # multi_precision); `requires` may read the parameter's weight decay `wd` too
        self._extra_builtins = dict(SPARSE_BUILTINS)
        try:
            if d.cond is not None:
                cond = self._expr(d.cond, _Scope())
                if cond is not None and (cond.ty is not Ty.BOOL or not _reads_only(cond, {"master_copy"})):
                    self.r.error(d.cond.span, "the sparse condition must be a true/false test of hyperparameters",
                                 "it may also read `master_copy`")
            if d.value is not None:
                requires = self._expr(d.value, _Scope())
                if requires is not None and (requires.ty is not Ty.BOOL or
                                             not _reads_only(requires, {"master_copy", "wd"})):
                    self.r.error(d.value.span, "a sparse `requires` clause must be a true/false test of "
                                 "hyperparameters, `wd` and `master_copy`")
        finally:
            self._extra_builtins = {}
        if d.name == "standard" and d.value is not None:
            self.r.error(d.value.span, "`requires` applies to `sparse lazy` only")
        return Sparse(d.name, cond, requires, d.text)

    def _carry_rows(self, by_kind, options, sparse):
        """`option carry_rows("state")`: the state must be a whole-tensor state of a `sparse lazy` spec."""
        name = options.get("carry_rows")
        if name is None:
            return
        d = next(d for d in by_kind["option"] if d.name == "carry_rows")
        if sparse is None or sparse.mode != "lazy":
            self.r.error(d.span, "option `carry_rows` needs a `sparse lazy` declaration",
                         "it carries the rows of one lazy update into the next")
        elif name not in self.states:
            self.r.error(d.args[0].span, f"option `carry_rows` names `{name}`, which is not a tensor state",
                         did_you_mean(name, self.states) or "name the state that accumulates the gradient")

    def _torch(self, by_kind, options):
        """`option torch("Adam", "lr", "betas", ..., "*", ...)`: every argument names `lr`,
        `weight_decay`, a hyperparameter, a `torch_pairs` name or a torch flag, once; every
        hyperparameter is reachable from it. `torch_pairs` comes in triples of names."""
        decl = {d.name: d for d in by_kind.get("option", [])}
        pairs = options.get("torch_pairs", ())
        if "torch_pairs" in options and "torch" not in options:
            self.r.error(decl["torch_pairs"].span, "option `torch_pairs` needs an `option torch` signature")
        if len(pairs) % 3:
            self.r.error(decl["torch_pairs"].span, "option `torch_pairs` takes triples: torch name, first "
                         "hyperparameter, second", 'e.g. option torch_pairs("betas", "beta1", "beta2")')
            return
        packed = {}
        for i in range(0, len(pairs), 3):
            for j, member in enumerate(pairs[i + 1:i + 3], i + 1):
                if member not in self.hypers:
                    self.r.error(decl["torch_pairs"].args[j].span, f"option `torch_pairs` names `{member}`, which "
                                 "is not a hyperparameter", did_you_mean(member, self.hypers))
            packed[pairs[i]] = pairs[i + 1:i + 3]
        if "torch" not in options:
            return
        d = decl["torch"]
        args = options["torch"]
        if not args or not args[0].isidentifier():
            self.r.error(d.span, "option `torch` starts with the torch.optim class name", 'e.g. option torch("Adam", ...)')
            return
        seen: set = set()
        for a, node in zip(args[1:], d.args[1:]):
            if a == "*":
                if "*" in seen:
                    self.r.error(node.span, "option `torch` has a second `*`")
                seen.add(a)
                continue
            known = a in TORCH_BASE or a in TORCH_FLAGS or a in packed or (a in self.hypers and a not in TORCH_BASE.values())
            if not known:
                self.r.error(node.span, f"option `torch` names `{a}`, which is not lr, weight_decay, a hyperparameter, "
                             "a torch_pairs name or a torch flag", did_you_mean(a, [*self.hypers, *packed, *TORCH_FLAGS]))
            elif a in seen:
                self.r.error(node.span, f"option `torch` names `{a}` twice")
            seen.add(a)
        reached = seen | {m for name, members in packed.items() if name in seen for m in members}
        for name, members in packed.items():
            if name not in seen:
                self.r.error(d.span, f"option `torch` does not list the pair `{name}`")
        for h in self.hypers:
            if h not in reached:
                self.r.error(d.span, f"option `torch` does not reach hyperparameter `{h}`",
                             "list it, or pack it with `torch_pairs`: the drop-in class could not set it")

    # ---- statements -------------------------------------------------------------------------
    def _collect_assigned(self, body):
        for s in body:
            if isinstance(s, ast.Assign):
                self.pending_locals.add(s.target)
            elif isinstance(s, ast.If):
                for _, b in s.branches:
                    self._collect_assigned(b)
                self._collect_assigned(s.orelse or ())
            elif isinstance(s, ast.Repeat):
                self._collect_assigned(s.body)
                self.loop_locals.update(a.target for a in _ast_assigns(s.body))

    def _block(self, body, scope) -> tuple:
        out = []
        for s in body:
            r = self._stmt(s, scope)
            if r is not None:
                out.append(r)
        return tuple(out)

    def _stmt(self, s, scope):
        if isinstance(s, (ast.If, ast.Repeat)):
            self.nesting += 1
            try:
                return self._if(s, scope) if isinstance(s, ast.If) else self._repeat(s, scope)
            finally:
                self.nesting -= 1
        value = s.value
        if s.op != "=":
            value = ast.BinOp(s.span, s.op[0], ast.Name(s.target_span, s.target), s.value)
        v = self._expr(value, scope)
        name, span = s.target, s.target_span
        if name in BUILTINS and name != "weight":
            self.r.error(span, f"`{name}` is a read-only input", "assign the result to a new name" if name == "grad" else None)
            return None
        if name in self.hypers or name in BASE_NAMES:
            self.r.error(span, f"cannot assign to hyperparameter `{name}`", "hyperparameters are fixed during an update; use a new name")
            return None
        if name in self.states or name in self.scalar_states:
            self.used.add(name)
        if v is None:
            self.failed.add(name)   # its later uses are not errors of their own
            return None
        if v.ty not in NUMERIC:
            if not (v.ty is Ty.BOOL and name not in self.states and name != "weight" and name not in self.scalar_states and name not in self.globals):
                self.r.error(s.value.span, f"`{name}` must be a number, not a {v.ty.value}")
                return None
        if name == "weight":
            role = Role.WEIGHT
        elif name in self.states:
            role = Role.STATE
            self.used.add(name)
            self._require_state(name, span, scope)
            want = self.states[name].shape
            if v.kind is Kind.TENSOR and not v.shape.within(want):
                if v.shape.matrix or want.matrix:
                    hint = ("a rows x rows value is a product such as x @ transpose(x); a cols x cols one "
                            "transpose(x) @ x" if want.matrix else None)
                elif v.shape is Shape.FULL or not (want.rows or want.cols):
                    axis = -1 if v.shape.cols and not want.cols else -2
                    hint = f"reduce it along {AXIS_WORDS[axis]} first, e.g. mean(x, {axis})"
                else:   # a per-col value for a per-row state, or the other way round
                    axis = -1 if want.rows else -2
                    hint = (f"this value was reduced along the other axis: a {want.value} value comes from "
                            f"reducing along {AXIS_WORDS[axis]}, e.g. mean(x, {axis})")
                self.r.error(s.value.span, f"state `{name}` holds {SHAPE_WORDS[want]}; this value has "
                             f"{SHAPE_WORDS[v.shape]}", hint)
                return None
        elif name in self.scalar_states:
            role = Role.SCALAR_STATE
            if v.kind > Kind.REDUCED:
                self.r.error(s.value.span, f"scalar state `{name}` holds one number per parameter; this value is a tensor",
                             "reduce it to a number first, e.g. norm(x) or mean(x)")
                return None
            # read after this statement, the state holds what it was assigned (a reduction is known only then)
            self.scalar_kinds[name] = max(self.scalar_kinds.get(name, Kind.INDEX), v.kind)
        elif name in self.globals:
            role = Role.GLOBAL
            if v.kind > Kind.CALL and not (v.kind is Kind.GATHERED and call_scope(v, self.shared)):
                self.r.error(s.value.span, f"global `{name}` is shared by all parameters; it can only take values "
                             "known once per update call", "it cannot depend on lr, wd, t or tensors, except through "
                             "an optimizer-wide reduction such as global_sum(x)")
                return None
            if self.nesting and v.kind is Kind.GATHERED:
                self.r.error(s.span, f"global `{name}` is assigned a value of an optimizer-wide reduction inside an "
                             "`if` or a `repeat`", "assign it at the top level of `update` (choose with where)")
                return None
        else:
            role = Role.LOCAL
            if v.kind is Kind.GATHERED and call_scope(v, self.shared) and not self.nesting:
                self.shared.add(name)
            else:
                self.shared.discard(name)
            old = self.locals.get(name)
            if old is not None and old.kind is Kind.TENSOR and v.kind is Kind.TENSOR and old.shape is not v.shape:
                self.r.error(s.value.span, f"`{name}` has {SHAPE_WORDS[old.shape]} above; this value has "
                             f"{SHAPE_WORDS[v.shape]}", "a tensor local keeps one shape: use a new name")
                return None
            ok = name in self.locals or self._check_identifier(name, span, "name")
            self.locals[name] = Expr(Op.LOCAL, v.ty, v.kind, (), name, v.optional, span, v.shape)
            if not ok:
                return None
        return Assign(name, role, v, s.span, s.span.line)

    def _if(self, s, scope):
        branches = []
        inner = scope
        defined_sets = []
        before = dict(self.locals)
        bad = False   # a bad condition is reported; its body and the other branches are still checked
        for cond_node, body in s.branches:
            cond = self._expr(cond_node, inner)
            if cond is not None and cond.ty is not Ty.BOOL:
                self.r.error(cond_node.span, f"an `if` condition must be true or false, not a {cond.ty.value}")
                cond = None
            elif cond is not None and cond.kind > Kind.INDEX:
                self.r.error(cond_node.span, "an `if` condition must be known on the host before tensor work",
                             "use where(cond, a, b) for values computed from tensors")
                cond = None
            bad = bad or cond is None
            self.locals = dict(before)
            stmts = self._block(body, inner if cond is None else inner.with_cond(cond))
            defined_sets.append(self.locals)
            if cond is not None:
                branches.append((cond, stmts))
                inner = inner.with_cond(negate(cond), narrow=False)
        self.locals = dict(before)
        orelse = self._block(s.orelse or (), inner)
        defined_sets.append(self.locals)
        # a local is defined after the `if` only when every path defines it (an `else` is needed)
        merged = dict(before)
        if s.orelse is not None:
            common = set.intersection(*(set(d) for d in defined_sets))
            for n in common - set(before):
                kinds = [d[n] for d in defined_sets]
                rep = max(kinds, key=lambda e: e.kind)
                shapes = {e.shape for e in kinds if e.kind is Kind.TENSOR}
                if len(shapes) > 1:
                    self.r.error(s.span, f"`{n}` is assigned values of different shapes in the branches of this `if`",
                                 "a tensor local keeps one shape: use a name per shape")
                merged[n] = rep
        for n in set(before):
            reps = [d.get(n, before[n]) for d in defined_sets]
            merged[n] = max(reps, key=lambda e: e.kind)
        self.locals = merged
        return None if bad else IfStmt(tuple(branches), orelse, s.span)

    def _repeat(self, s, scope):
        """`repeat n { ... }`. The body is checked twice: the first pass finds what its locals hold at
        the end of an iteration (a loop reads in its next iteration what it assigned in this one),
        the second, reported, sees them so. After the loop only the locals assigned before it are
        known: it may run zero times."""
        count = self._expr(s.count, scope)
        if count is not None:
            if count.ty is not Ty.INT:
                self.r.error(s.count.span, f"a `repeat` count is an integer, not a {count.ty.value}",
                             "e.g. an `int` hyperparameter")
                count = None
            elif count.optional:
                self.r.error(s.count.span, f"`{count.value}` may be none here", "a `repeat` count must be a number")
                count = None
            elif count.kind > Kind.INDEX:
                self.r.error(s.count.span, "a `repeat` count must be known on the host before tensor work",
                             "use a hyperparameter, a constant or a host value")
                count = None
        before = dict(self.locals)
        reporter, failed, draws = self.r, set(self.failed), self.draws
        self.r = Reporter(self.path, self.source)   # the first pass reports nothing
        try:
            self._block(s.body, scope)
        finally:
            self.r, self.failed, self.draws = reporter, failed, draws
        after = self.locals
        clash = False
        for n, old in before.items():
            new = after.get(n, old)
            if (old.kind is Kind.TENSOR) != (new.kind is Kind.TENSOR):
                self.r.error(s.span, f"`{n}` is {'a tensor' if old.kind is Kind.TENSOR else 'a number'} before this "
                             f"`repeat` and {'a tensor' if new.kind is Kind.TENSOR else 'a number'} after its body",
                             "a local a loop assigns keeps what it is: start it as a tensor (e.g. 0 * grad) "
                             "or use a new name")
                clash = True
        self.locals = {n: max((old, after.get(n, old)), key=lambda e: e.kind) for n, old in before.items()}
        body = self._block(s.body, scope)
        self.locals = {n: max((e, self.locals.get(n, e)), key=lambda x: x.kind) for n, e in before.items()}
        if count is None or clash:
            return None
        return Repeat(count, body, s.span)

    def _require_state(self, name, span, scope):
        st = self.states.get(name)
        if st is None or st.cond is None:
            return
        if st.cond in scope.guards:
            return
        if all(c in scope.guards for c in conjuncts(st.cond)):
            return
        cond_text = self._text(st.cond.span)
        self.r.error(span, f"state `{name}` exists only if {cond_text}",
                     f"use it inside `if {cond_text} {{ ... }}`")

    def _text(self, span):
        lines = self.source.split("\n")
        if span is None or span.line == 0 or span.line > len(lines):
            return "its condition holds"
        if span.line == span.end_line:
            return lines[span.line - 1][span.col - 1: span.end_col - 1]
        return lines[span.line - 1][span.col - 1:]

    # ---- expressions --------------------------------------------------------------------------
    def _expr(self, node, scope) -> Expr | None:
        try:
            return self._e(node, scope)
        except _Bail:
            return None

    def _e(self, node, scope) -> Expr:
        if isinstance(node, ast.Num):
            return const(node.value, node.span)
        if isinstance(node, ast.Str):
            return const(node.value, node.span)
        if isinstance(node, ast.Bool):
            return const(node.value, node.span)
        if isinstance(node, ast.NoneLit):
            self.r.error(node.span, "`none` can only be a default value")
            raise _Bail
        if isinstance(node, ast.Name):
            return self._name(node, scope)
        if isinstance(node, ast.UnOp):
            a = self._e(node.operand, scope)
            if node.op == "not":
                self._want(a, (Ty.BOOL,), node.operand.span, "`not`")
                return Expr(Op.NOT, Ty.BOOL, a.kind, (a,), None, False, node.span, a.shape)
            self._want_number(a, node.operand.span, "`-`", scope)
            return Expr(Op.NEG, a.ty, a.kind, (a,), None, False, node.span, a.shape)
        try:
            if isinstance(node, ast.BinOp):
                return self._binop(node, scope)
            if isinstance(node, ast.Call):
                return self._call(node, scope)
        except _ShapeClash as c:
            self.r.error(node.span, f"cannot combine {SHAPE_WORDS[c.a]} and {SHAPE_WORDS[c.b]} elementwise",
                         "a matrix product's value combines elementwise only with values of its own shape "
                         "and with numbers")
            raise _Bail
        raise AssertionError(node)  # pragma: no cover

    def _all(self, nodes, scope) -> list:
        """Check every node, so that an error in one does not hide errors in the others."""
        out = []
        for n in nodes:
            try:
                out.append(self._e(n, scope))
            except _Bail:
                out.append(None)
        if any(e is None for e in out):
            raise _Bail
        return out

    def _name(self, node, scope) -> Expr:
        n = node.id
        self.used.add(n)
        if n in BUILTINS or n in self._extra_builtins:
            op, ty, kind, optional = BUILTINS.get(n) or self._extra_builtins[n]
            return Expr(op, ty, kind, (), n, optional and n not in scope.narrowed, node.span)
        if n in self.hypers:
            h = self.hypers[n]
            ty = {"float": Ty.FLOAT, "int": Ty.INT, "bool": Ty.BOOL, "choice": Ty.STR}[h.type]
            return Expr(Op.HYPER, ty, Kind.HYPER, (), n, h.optional and n not in scope.narrowed, node.span)
        if n in self.states:
            self._require_state(n, node.span, scope)
            return Expr(Op.STATE, Ty.FLOAT, Kind.TENSOR, (), n, False, node.span, self.states[n].shape)
        if n in self.scalar_states:
            init = self.scalar_states[n].init
            return Expr(Op.SCALAR_STATE, init.ty, self.scalar_kinds.get(n, Kind.INDEX), (), n, False, node.span)
        if n in self.globals:
            return Expr(Op.GLOBAL, self.globals[n].init.ty, Kind.CALL, (), n, False, node.span)
        if n in self.locals:
            rep = self.locals[n]
            return Expr(Op.LOCAL, rep.ty, rep.kind, (), n, rep.optional, node.span, rep.shape)
        if n in self.failed:
            raise _Bail
        if n in self.pending_locals and n in self.loop_locals:
            self.r.error(node.span, f"`{n}` is used before it is assigned",
                         "it is assigned later, or inside a `repeat`, which may run zero times: assign it before "
                         "the loop too")
            raise _Bail
        if n in self.pending_locals:
            self.r.error(node.span, f"`{n}` is used before it is assigned",
                         "it is assigned later, or only on some paths through an `if`")
            raise _Bail
        if n in BASE_NAMES:
            self.r.error(node.span, f"`{n}` cannot be used in equations",
                         "use lr, wd, learning_rate, rescale_grad or clip_gradient")
            raise _Bail
        candidates = set(BUILTINS) | set(self.hypers) | set(self.states) | set(self.scalar_states) | \
            set(self.globals) | set(self.locals)
        self.r.error(node.span, f"unknown name `{n}`", did_you_mean(n, candidates))
        raise _Bail

    def _want(self, e, tys, span, what):
        if e.ty not in tys:
            self.r.error(span, f"{what} needs a {' or '.join(t.value for t in tys)}, got a {e.ty.value}")
            raise _Bail

    def _want_number(self, e, span, what, scope):
        if e.ty is Ty.BOOL:
            self.r.error(span, f"a bool used as a number in {what}", "use where(cond, a, b) to choose between numbers")
            raise _Bail
        if e.ty is Ty.STR:
            self.r.error(span, f"a string used as a number in {what}", "compare it with == instead")
            raise _Bail
        if e.optional:
            name = e.value if e.op in (Op.HYPER, Op.BUILTIN, Op.LOCAL, Op.GLOBAL) else "this value"
            self.r.error(span, f"`{name}` may be none here",
                         f"test it first, e.g. `if {name} > 0 {{ ... }}` or where({name} > 0, ..., ...)")
            raise _Bail

    def _binop(self, node, scope) -> Expr:
        op = node.op
        if op == "@":
            return self._matmul(node, scope)
        if op in ("and", "or"):
            a = self._e(node.left, scope)
            self._want(a, (Ty.BOOL,), node.left.span, f"`{op}`")
            inner = scope.with_cond(a) if op == "and" else scope
            b = self._e(node.right, inner)
            self._want(b, (Ty.BOOL,), node.right.span, f"`{op}`")
            return Expr(Op.AND if op == "and" else Op.OR, Ty.BOOL, max(a.kind, b.kind), (a, b), None, False, node.span,
                        _shape(a, b))
        a, b = self._all((node.left, node.right), scope)
        kind = max(a.kind, b.kind)
        if op in REL:
            if a.ty is Ty.STR or b.ty is Ty.STR:
                if op not in ("==", "!=") or a.ty is not b.ty:
                    self.r.error(node.span, "text can only be compared to text with == or !=")
                    raise _Bail
                for x, y in ((a, b), (b, a)):
                    if x.op is Op.HYPER and y.op is Op.CONST:
                        choices = self.hypers[x.value].choices
                        if y.value not in choices:
                            self.r.error(y.span, f"{y.value!r} is not a choice of `{x.value}`",
                                         did_you_mean(y.value, choices) or f"choices: {', '.join(map(repr, choices))}")
                            raise _Bail
                return Expr(REL[op], Ty.BOOL, kind, (a, b), None, False, node.span)
            if a.ty is Ty.BOOL or b.ty is Ty.BOOL:
                if op not in ("==", "!=") or a.ty is not b.ty:
                    self.r.error(node.span, "a bool can only be compared to a bool with == or !=")
                    raise _Bail
                return Expr(REL[op], Ty.BOOL, kind, (a, b), None, False, node.span, _shape(a, b))
            return Expr(REL[op], Ty.BOOL, kind, (a, b), None, False, node.span, _shape(a, b))
        self._want_number(a, node.left.span, f"`{op}`", scope)
        self._want_number(b, node.right.span, f"`{op}`", scope)
        if op in ("/", "%") and b.op is Op.CONST and b.value == 0:
            self.r.error(node.right.span, f"`{op}` by zero", "every update would divide by zero here")
            raise _Bail
        ty = Ty.INT if a.ty is Ty.INT and b.ty is Ty.INT and op in "+-*%" else Ty.FLOAT
        return Expr(ARITH[op], ty, kind, (a, b), None, False, node.span, _shape(a, b))

    def _matmul(self, node, scope) -> Expr:
        """`a @ b`: the product of the blocks' matrices. An operand is a tensor of the weight's shape or a
        product's; `transpose(x)` reads x transposed (no copy is made)."""
        sides = []
        for side in (node.left, node.right):
            flip = isinstance(side, ast.Call) and side.func == "transpose"
            if flip and len(side.args) != 1:
                self.r.error(side.span, f"`transpose` takes 1 argument, got {len(side.args)}")
                raise _Bail
            inner = side.args[0] if flip else side
            x = self._e(inner, scope)
            self._want_number(x, inner.span, "`@`", scope)
            text = self._text(inner.span)
            if x.kind is not Kind.TENSOR:
                self.r.error(inner.span, f"`@` multiplies matrices; `{text}` is a single number", "scale with `*`")
                raise _Bail
            dims = x.shape.dims
            if dims is None:
                self.r.error(inner.span, f"`{text}` has {SHAPE_WORDS[x.shape]}: `@` multiplies matrices (the "
                             "weight's shape, or a product's)", "broadcast it with `*` instead")
                raise _Bail
            if flip:
                dims = dims[::-1]
                x = Expr(Op.TRANSPOSE, Ty.FLOAT, Kind.TENSOR, (x,), None, False, side.span, Shape.of_dims(*dims))
            sides.append((x, dims, self._text(side.span)))
        (a, da, ta), (b, db, tb) = sides
        if da[1] != db[0]:
            self.r.error(node.span, f"`{ta}` is {da[0]} x {da[1]} and `{tb}` is {db[0]} x {db[1]}: a product needs "
                         f"the {da[1]} of the first to meet the {db[0]} of the second",
                         f"transpose one of them, e.g. transpose({ta}) @ {tb}" if da[0] == db[0] else
                         f"transpose one of them, e.g. {ta} @ transpose({tb})")
            raise _Bail
        return Expr(Op.MATMUL, Ty.FLOAT, Kind.TENSOR, (a, b), None, False, node.span, Shape.of_dims(da[0], db[1]))

    def _call(self, node, scope) -> Expr:
        f = node.func
        if f not in FUNCTIONS:
            self.r.error(node.func_span, f"unknown function `{f}`", did_you_mean(f, FUNCTIONS)
                         or f"functions: {', '.join(sorted(FUNCTIONS))}")
            raise _Bail
        op, arity = FUNCTIONS[f]
        lo, hi = arity if isinstance(arity, tuple) else (arity, arity)
        if not lo <= len(node.args) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            self.r.error(node.span, f"`{f}` takes {want} argument{'s' if hi != 1 else ''}, got {len(node.args)}")
            raise _Bail
        if op is Op.WHERE:
            c = self._e(node.args[0], scope)
            self._want(c, (Ty.BOOL,), node.args[0].span, "where()'s condition")
            a = self._e(node.args[1], scope.with_cond(c))
            b = self._e(node.args[2], scope.with_cond(negate(c), narrow=False))
            for x, n in ((a, node.args[1]), (b, node.args[2])):
                self._want_number(x, n.span, "where()", scope)
            ty = Ty.INT if a.ty is Ty.INT and b.ty is Ty.INT else Ty.FLOAT
            return Expr(Op.WHERE, ty, max(c.kind, a.kind, b.kind), (c, a, b), None, False, node.span, _shape(c, a, b))
        if op in REDUCTION_OPS or op in (Op.NDIM, Op.NUMEL, Op.SIZE):
            return self._reduction(f, op, node, scope)
        if op in GATHERS:
            if self.nesting or scope.guards:
                self.r.error(node.span, f"`{f}` reduces over every parameter of the update call, so every parameter "
                             "must reach it: it cannot be inside an `if`, a `repeat` or a side of `where`",
                             "compute it at the top level of `update`; its value may be used anywhere")
                raise _Bail
            x = self._e(node.args[0], scope)
            self._want_number(x, node.args[0].span, f"{f}()", scope)
            return Expr(op, Ty.FLOAT, Kind.GATHERED, (x,), None, False, node.span)
        if op is Op.EYE:
            x = self._e(node.args[0], scope)
            if x.kind is not Kind.TENSOR or x.shape not in (Shape.GRAM_R, Shape.GRAM_C):
                what = f"has {SHAPE_WORDS[x.shape]}" if x.kind is Kind.TENSOR else "is a single number"
                self.r.error(node.args[0].span, f"eye(x) is the identity of a square matrix value (rows_x_rows or "
                             f"cols_x_cols); `{self._text(node.args[0].span)}` {what}",
                             "e.g. eye(l) for a state l: rows_x_rows")
                raise _Bail
            side = Expr(Op.SIZE, Ty.INT, Kind.INDEX, (), -1, False, node.span, x.shape)
            return Expr(Op.EYE, Ty.FLOAT, Kind.TENSOR, (side,), None, False, node.span, x.shape)
        if op is Op.TRANSPOSE:
            self.r.error(node.span, "transpose(x) is an operand of `@`: the product reads x transposed",
                         "write e.g. transpose(x) @ y; a transposed copy on its own is not needed")
            raise _Bail
        args = self._all(node.args, scope)
        if op is Op.ENDSWITH:
            for a, n in zip(args, node.args):
                self._want(a, (Ty.STR,), n.span, "endswith()")
            return Expr(op, Ty.BOOL, max(a.kind for a in args), tuple(args), None, False, node.span)
        if op is Op.CLIP:
            x, bound = args
            self._want_number(x, node.args[0].span, "clip()", scope)
            if bound.ty not in NUMERIC:
                self._want_number(bound, node.args[1].span, "clip()'s bound", scope)
            if bound.kind > Kind.INDEX:
                self.r.error(node.args[1].span, "clip()'s bound must be known on the host")
                raise _Bail
            return Expr(op, Ty.FLOAT, x.kind, (x, bound), None, False, node.span, x.shape)
        for a, n in zip(args, node.args):
            self._want_number(a, n.span, f"{f}()", scope)
        if op is Op.NORMAL:
            if any(a.kind > Kind.INDEX for a in args):
                self.r.error(node.span, "normal(mean, std) takes host numbers; it draws one value per element")
                raise _Bail
            self.uses_random = True
            self.draws += 1   # each call site is a draw of its own: equal-looking calls are not one value
            return Expr(op, Ty.FLOAT, Kind.TENSOR, tuple(args), self.draws, False, node.span)
        ty = Ty.INT if op in (Op.ABS, Op.MAXIMUM, Op.MINIMUM) and all(a.ty is Ty.INT for a in args) else Ty.FLOAT
        return Expr(op, ty, max(a.kind for a in args), tuple(args), None, False, node.span, _shape(*args))

    def _axis(self, f, node) -> int:
        """The axis argument of a reduction or `size`: the literal -1 (along the cols) or -2 (along the rows)."""
        a = node.args[1]
        if isinstance(a, ast.UnOp) and a.op == "-" and isinstance(a.operand, ast.Num) and a.operand.value in (1, 2) \
                and isinstance(a.operand.value, int):
            return -a.operand.value
        self.r.error(a.span, f"the axis of `{f}` is the literal -1 (along the cols) or -2 (along the rows)",
                     "the weight is viewed as blocks x rows x cols (see `view`)" +
                     ("; without an axis a reduction reduces the whole tensor" if f != "size" else ""))
        raise _Bail

    def _reduction(self, f, op, node, scope) -> Expr:
        """Reductions (whole-tensor or along an axis) and shape facts. mean and rms are sums and norms
        divided by the element count; norm along an axis is the root of a sum of squares, so that the
        kernels only accumulate sums, maxima and minima."""
        axis = self._axis(f, node) if len(node.args) == 2 else None
        x = self._e(node.args[0], scope)
        span = node.span
        if op is not Op.NDIM:
            self._want_number(x, node.args[0].span, f"{f}()", scope)
        if x.kind is not Kind.TENSOR:
            self.r.error(node.args[0].span, f"{f}() {'reduces' if op in REDUCTION_OPS else 'reads the shape of'} "
                         "a tensor; this is a single number")
            raise _Bail
        if op is Op.NDIM:
            return Expr(Op.NDIM, Ty.INT, Kind.INDEX, (), None, False, span)
        if op is Op.SIZE:
            return Expr(Op.SIZE, Ty.INT, Kind.INDEX, (), axis, False, span, x.shape)
        if op is Op.NUMEL:
            return Expr(Op.NUMEL, Ty.INT, Kind.INDEX, (), None, False, span, x.shape)
        if axis is not None and x.shape.matrix:
            arg = self._text(node.args[0].span)
            self.r.error(node.args[0].span, f"`{arg}` has {SHAPE_WORDS[x.shape]}: a product's value is reduced "
                         "whole, not along an axis", f"e.g. {f}({arg})")
            raise _Bail
        if axis is not None and not (x.shape.cols if axis == -1 else x.shape.rows):
            arg = self._text(node.args[0].span)
            self.r.error(node.args[1].span, f"`{f}({arg}, {axis})` reduces along {AXIS_WORDS[axis]}, but `{arg}` has "
                         f"{SHAPE_WORDS[x.shape]}: it does not vary along {AXIS_WORDS[axis]}",
                         f"reduce along {-3 - axis}, or the whole tensor with {f}({arg})")
            raise _Bail
        out = x.shape.reduced(axis) if axis is not None else Shape.FULL
        kind = Kind.TENSOR if axis is not None else Kind.REDUCED

        def red(o, arg):
            args = (arg,) if axis is None else (arg, const(axis, node.args[1].span))
            return Expr(o, Ty.FLOAT, kind, args, None, False, span, out)

        def div(a, b):
            return Expr(Op.DIV, Ty.FLOAT, max(a.kind, b.kind), (a, b), None, False, span, out)

        def sqrt(a):
            return Expr(Op.SQRT, Ty.FLOAT, a.kind, (a,), None, False, span, out)

        count = (Expr(Op.NUMEL, Ty.INT, Kind.INDEX, (), None, False, span, x.shape) if axis is None
                 else Expr(Op.SIZE, Ty.INT, Kind.INDEX, (), axis, False, span, x.shape))
        if op is Op.MEAN:
            return div(red(Op.SUM, x), count)
        if op is Op.RMS:
            if axis is None:
                return div(red(Op.NORM, x), sqrt(count))
            return sqrt(div(red(Op.SUM, Expr(Op.SQUARE, Ty.FLOAT, x.kind, (x,), None, False, span, x.shape)), count))
        if op is Op.NORM and axis is not None:
            return sqrt(red(Op.SUM, Expr(Op.SQUARE, Ty.FLOAT, x.kind, (x,), None, False, span, x.shape)))
        return red(op, x)

    # ---- whole-spec checks -----------------------------------------------------------------------
    def _unused(self, options):
        quiet = set(options.get("unused", ()))
        for name, span in self._unused_spans:
            if name not in self.hypers:
                self.r.error(span, f"option `unused` names `{name}`, which is not a hyperparameter")
        for name, h in self.hypers.items():
            if name in quiet:
                if name in self.used:
                    self.r.warning(h.span, f"hyperparameter `{name}` is listed as unused but the update reads it")
                continue
            if name not in self.used:
                self.r.warning(h.span, f"hyperparameter `{name}` is never used")
        for name, st in list(self.states.items()) + list(self.scalar_states.items()):
            if name not in self.used:
                self.r.warning(st.span, f"state `{name}` is never used")

    def _split(self, body):
        """Hoist the leading statements known once per call into the prologue."""
        prologue, per_index = [], []
        gathered = False   # from the first optimizer-wide reduction on, statements keep their places
        for s in body:
            gathered = gathered or any(n.kind is Kind.GATHERED for e in own_exprs_deep([s]) for n in e.walk())
            (prologue if s.kind <= Kind.CALL and not gathered else per_index).append(s)
        in_prologue = {id(s) for s in prologue}
        # a per-index statement that precedes a global's assignment must not read that global
        assigned_later = set()
        seen_index = []
        for s in body:
            if id(s) in in_prologue:
                for g in targets([s], Role.GLOBAL):
                    for early in seen_index:
                        if g in leaves([early], {Op.GLOBAL}):
                            self.r.error(early.span, f"this statement reads global `{g}` before a later statement "
                                         "assigns it once per call", "move the assignment of the global after its uses")
                assigned_later.update(targets([s], Role.GLOBAL))
            else:
                seen_index.append(s)
        pro_locals = set()
        for s in prologue:
            pro_locals.update(targets([s], Role.LOCAL))
        exports = sorted(pro_locals & leaves(per_index, {Op.LOCAL}))
        return tuple(prologue), tuple(per_index), tuple(exports)


REDUCTION_OPS = {Op.NORM, Op.SUM, Op.MEAN, Op.RMS, Op.MAX, Op.MIN}


class _Bail(Exception):
    pass


def _ast_assigns(body):
    for s in body:
        if isinstance(s, ast.Assign):
            yield s
        elif isinstance(s, ast.If):
            for _, b in s.branches:
                yield from _ast_assigns(b)
            yield from _ast_assigns(s.orelse or ())
        elif isinstance(s, ast.Repeat):
            yield from _ast_assigns(s.body)


def _eye_start(v) -> float | None:
    """The scale of a state start `eye` or `NUMBER * eye` (the identity), else None."""
    if isinstance(v, ast.Name) and v.id == "eye":
        return 1.0
    if isinstance(v, ast.BinOp) and v.op == "*" and isinstance(v.right, ast.Name) and v.right.id == "eye":
        k = v.left
        if isinstance(k, ast.Num):
            return float(k.value)
        if isinstance(k, ast.UnOp) and k.op == "-" and isinstance(k.operand, ast.Num):
            return -float(k.operand.value)
    return None


CREATION_BUILTINS = {"lr", "wd", "learning_rate"}


def _creation_value(e: Expr) -> bool:
    """Whether a state's start is known when states are created, before the first update:
    constants, hyperparameters, and the parameter's `lr` and `wd` and the `learning_rate` then."""
    return all(n.op not in (Op.BUILTIN, Op.SCALAR_STATE, Op.GLOBAL, Op.LOCAL, Op.STATE, Op.WEIGHT, Op.GRAD)
               or (n.op is Op.BUILTIN and n.value in CREATION_BUILTINS)
               for n in e.walk()) and not any(n.op in REDUCTION_OPS or n.op in SHAPE_FACTS for n in e.walk())


def _host_arithmetic(body) -> tuple:
    """`option host_arithmetic`: every subexpression the kernels would compute from hyperparameters
    and constants alone (lower._in_kernel: `1 - beta2`) is marked to be computed on the host instead."""
    from .lower import _in_kernel

    def ex(e):
        if e is None:
            return None
        if _in_kernel(e):
            return Expr(Op.HOST, e.ty, e.kind, (e,), None, e.optional, e.span, e.shape)
        if not e.args:
            return e
        args = tuple(ex(a) for a in e.args)
        return e if all(x is y for x, y in zip(args, e.args)) else Expr(e.op, e.ty, e.kind, args, e.value,
                                                                       e.optional, e.span, e.shape)

    def st(s):
        if isinstance(s, Assign):
            return Assign(s.target, s.role, ex(s.value), s.span, s.line)
        if isinstance(s, Repeat):
            return Repeat(ex(s.count), tuple(st(x) for x in s.body), s.span)
        return IfStmt(tuple((ex(c), tuple(st(x) for x in b)) for c, b in s.branches),
                      tuple(st(x) for x in s.orelse), s.span)
    return tuple(st(s) for s in body)


def _shown(node, value) -> str:
    """A literal as the spec wrote it."""
    return node.text if isinstance(node, ast.Num) else repr(value)


def check(decls, path: str, source: str, file_stem: str | None = None) -> tuple[Spec, list]:
    """Returns the checked spec and its warnings; raises SpecError listing every error (and, with
    them, the warnings). With `file_stem`, the optimizer's name must match the file's name."""
    c = Checker(decls, path, source, file_stem)
    try:
        spec = c.run()
        verify(spec, c.r)
        c.r.raise_if_errors()
    except RecursionError:
        c.r.error(Span(1, 1, 1, 2), "the spec is nested too deeply to check", "split long expressions")
        c.r.raise_if_errors()
    return spec, c.r.warnings
