"""The checked intermediate representation every emitter renders.

An expression is a frozen `Expr`: an `Op`, its value type `Ty`, where it lives (`Kind`), its
operands and a span back into the spec. Equal subexpressions compare equal, so emitters can
cache on them. Statements are `Assign` (its target's `Role`), `IfStmt` and `Repeat`. A `Spec` holds the declarations plus the
update split in two: `prologue` (once per update call) and `body` (once per parameter).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .errors import Span


class Kind(enum.IntEnum):
    """Where a value is known; a value's kind is the max of its operands'."""
    CONST = 0     # a literal
    HYPER = 1     # fixed per optimizer: hyperparameters
    CALL = 2      # once per update call: learning_rate, num_update, optimizer-wide globals
    INDEX = 3     # once per parameter per step, on the host: lr, wd, t, scalar states
    GATHERED = 4  # known once every parameter of the call has reached it: optimizer-wide reductions
    REDUCED = 5   # one number per parameter, computed from tensors (norm, sum)
    TENSOR = 6    # elementwise over the parameter


class Shape(enum.Enum):
    """Which axes of the weight's matrix view a tensor value varies along. Every parameter is viewed
    as `blocks x rows x cols` (the spec's `view`: batched, the default, takes the last two dimensions
    as rows and cols and the leading ones as blocks, as torch.optim.Adafactor; flat takes the last
    dimension as cols and all the others as rows; matrix takes the first as rows and all the others
    as cols, as Muon views a conv kernel); a value varies along the blocks always, and along the rows
    and the cols as its shape says. Shapes broadcast like NumPy's with keepdims.

    Matrix products make three more shapes, each a matrix per block: rows x rows and cols x cols
    (Gram matrices such as G G^T, Shampoo's preconditioners) and cols x rows (a transposed product).
    They combine elementwise only with values of their own shape and with host numbers."""
    FULL = "full"            # the weight's shape: rows x cols
    ROW = "per_row"          # one value per row: reduced along the cols (axis -1)
    COL = "per_col"          # one value per col: reduced along the rows (axis -2)
    BLOCK = "per_block"      # one value per block: reduced along both
    GRAM_R = "rows_x_rows"   # a rows x rows matrix per block
    GRAM_C = "cols_x_cols"   # a cols x cols matrix per block
    TRANS = "cols_x_rows"    # a cols x rows matrix per block

    @property
    def rows(self) -> bool:
        return self in (Shape.FULL, Shape.ROW)

    @property
    def cols(self) -> bool:
        return self in (Shape.FULL, Shape.COL)

    @property
    def matrix(self) -> bool:
        """A shape only matrix products make (not the weight's nor one reduced from it)."""
        return self in (Shape.GRAM_R, Shape.GRAM_C, Shape.TRANS)

    @property
    def dims(self) -> tuple | None:
        """A matrix operand's (first, second) dimensions, each "rows" or "cols"; None for a value that
        is no matrix of the view (per_row, per_col, per_block)."""
        return _DIMS.get(self)

    @staticmethod
    def of_dims(first: str, second: str) -> "Shape":
        return next(s for s, d in _DIMS.items() if d == (first, second))

    @staticmethod
    def of(rows: bool, cols: bool) -> "Shape":
        return {(True, True): Shape.FULL, (True, False): Shape.ROW, (False, True): Shape.COL,
                (False, False): Shape.BLOCK}[(rows, cols)]

    def joins(self, other: "Shape") -> bool:
        """Whether values of both shapes combine elementwise (a matrix product's shape only with itself)."""
        return self is other or not (self.matrix or other.matrix)

    def join(self, other: "Shape") -> "Shape":
        """The shape of an elementwise operation on values of both shapes (broadcasting; `joins`)."""
        if self.matrix or other.matrix:
            return self
        return Shape.of(self.rows or other.rows, self.cols or other.cols)

    def within(self, other: "Shape") -> bool:
        """Whether a value of this shape broadcasts to `other` without being reduced."""
        if self.matrix or other.matrix:
            return self is other
        return (other.rows or not self.rows) and (other.cols or not self.cols)

    def reduced(self, axis: int) -> "Shape":
        """The shape after reducing along `axis` (-1: the cols, -2: the rows)."""
        return Shape.of(self.rows and axis != -2, self.cols and axis != -1)


_DIMS = {Shape.FULL: ("rows", "cols"), Shape.TRANS: ("cols", "rows"), Shape.GRAM_R: ("rows", "rows"),
         Shape.GRAM_C: ("cols", "cols")}


AXIS_WORDS = {-1: "the cols", -2: "the rows"}


class Ty(enum.Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"


class Op(enum.Enum):
    # leaves
    CONST = "const"; HYPER = "hyper"; BUILTIN = "builtin"; GLOBAL = "global"   # noqa: E702
    SCALAR_STATE = "scalar_state"; STATE = "state"; WEIGHT = "weight"; GRAD = "grad"; LOCAL = "local"  # noqa: E702
    # arithmetic
    ADD = "+"; SUB = "-"; MUL = "*"; DIV = "/"; MOD = "%"; POW = "**"; NEG = "neg"  # noqa: E702
    # comparisons and logic
    EQ = "=="; NE = "!="; LT = "<"; LE = "<="; GT = ">"; GE = ">="  # noqa: E702
    AND = "and"; OR = "or"; NOT = "not"  # noqa: E702
    # elementwise functions
    SQRT = "sqrt"; SQUARE = "square"; ABS = "abs"; SIGN = "sign"; EXP = "exp"; LOG = "log"  # noqa: E702
    MAXIMUM = "maximum"; MINIMUM = "minimum"; CLIP = "clip"; WHERE = "where"  # noqa: E702
    # reductions: of the whole tensor (one number per parameter), or along an axis (a tensor local
    # of a smaller shape: args (x, axis))
    NORM = "norm"; SUM = "sum"; MEAN = "mean"; RMS = "rms"; MAX = "max"; MIN = "min"  # noqa: E702
    # reductions over every parameter of an update call: arg (one number per parameter, after lowering)
    GSUM = "global_sum"; GNORM = "global_norm"; GMAX = "global_max"; GMIN = "global_min"  # noqa: E702
    # arg computed on the host (option host_arithmetic: hyperparameter arithmetic in double, not in the kernel)
    HOST = "host"
    # shape facts of a tensor, host numbers known per parameter before any tensor work
    NDIM = "ndim"; NUMEL = "numel"; SIZE = "size"  # noqa: E702
    # matrix products of the blocks x rows x cols view: args (a, b); an operand may be TRANSPOSE(x)
    MATMUL = "@"; TRANSPOSE = "transpose"  # noqa: E702
    # the identity of a square matrix value's shape: args (its side, a host integer)
    EYE = "eye"
    # random
    NORMAL = "normal"
    # host-only string test
    ENDSWITH = "endswith"


LEAVES = {Op.CONST, Op.HYPER, Op.BUILTIN, Op.GLOBAL, Op.SCALAR_STATE, Op.STATE, Op.WEIGHT, Op.GRAD, Op.LOCAL}
BINARY = {Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MOD, Op.POW}
COMPARE = {Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE}
UNARY_FUNCS = {Op.SQRT, Op.SQUARE, Op.ABS, Op.SIGN, Op.EXP, Op.LOG}
REDUCTIONS = {Op.NORM, Op.SUM, Op.MEAN, Op.RMS, Op.MAX, Op.MIN}
# optimizer-wide reductions -> the per-parameter reduction of a tensor argument that feeds them
GATHERS = {Op.GSUM: Op.SUM, Op.GNORM: Op.NORM, Op.GMAX: Op.MAX, Op.GMIN: Op.MIN}


def call_scope(e, shared=frozenset()) -> bool:
    """Whether a host value is the same for every parameter of an update call: it reads only
    constants, hyperparameters, once-per-call values, globals, optimizer-wide reductions and the
    locals in `shared` (assigned such values); never lr, wd, t, a scalar state, a shape fact or a
    tensor."""
    if e.op in GATHERS:
        return True
    if e.op is Op.LOCAL:
        return e.value in shared or e.kind <= Kind.CALL
    if not e.args:
        return e.kind <= Kind.CALL
    if e.op in (Op.NDIM, Op.NUMEL, Op.SIZE) or e.op in REDUCTIONS:
        return False
    return all(call_scope(a, shared) for a in e.args)
SHAPE_FACTS = {Op.NDIM, Op.NUMEL, Op.SIZE}


@dataclass(frozen=True)
class Expr:
    op: Op
    ty: Ty
    kind: Kind
    args: tuple = ()
    value: Any = None          # CONST: the literal; leaves: the name
    optional: bool = False     # may be None at run time (optional hyperparameter)
    span: Span = field(default=None, compare=False, repr=False)
    shape: Shape = Shape.FULL  # a tensor value's shape (ignored for host values)

    @property
    def axis(self) -> int | None:
        """A reduction's axis (-1 or -2), or None for a whole-tensor reduction."""
        return self.args[1].value if self.op in REDUCTIONS and len(self.args) == 2 else None

    def walk(self):
        yield self
        for a in self.args:
            yield from a.walk()


class Role(enum.Enum):
    """What an assignment's target is."""
    WEIGHT = "weight"               # the parameter, in place
    STATE = "state"                 # a tensor state, in place
    SCALAR_STATE = "scalar_state"   # a per-parameter number kept on the host
    GLOBAL = "global"               # an optimizer-wide number
    LOCAL = "local"                 # a value of this update only

    @property
    def in_place(self) -> bool:
        """A tensor kept from step to step (the weight, a state): written in place."""
        return self in (Role.WEIGHT, Role.STATE)


@dataclass(frozen=True)
class Assign:
    target: str
    role: Role
    value: Expr
    span: Span = field(compare=False, repr=False)
    line: int = 0              # source line, for comments in generated code

    @property
    def kind(self) -> Kind:
        return self.value.kind


@dataclass(frozen=True)
class IfStmt:
    branches: tuple            # ((cond Expr, body tuple of statements), ...)
    orelse: tuple              # statements, possibly empty
    span: Span = field(compare=False, repr=False)

    @property
    def kind(self) -> Kind:
        kinds = [c.kind for c, _ in self.branches]
        for body in [b for _, b in self.branches] + [self.orelse]:
            kinds.extend(s.kind for s in body)
        return max(kinds)


@dataclass(frozen=True)
class Repeat:
    """`repeat count { body }`: the body runs `count` times (a host integer; none or fewer than one:
    not at all)."""
    count: Expr
    body: tuple
    span: Span = field(compare=False, repr=False)

    @property
    def kind(self) -> Kind:
        return max([self.count.kind] + [s.kind for s in self.body])


@dataclass(frozen=True)
class Hyper:
    name: str
    type: str                  # float int bool choice
    default: Any
    optional: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True
    choices: tuple = ()
    doc: str = ""
    span: Span = field(default=None, compare=False, repr=False)

    def range_text(self) -> str:
        if self.lo is None:
            return ""
        lo = "-inf" if self.lo == float("-inf") else repr(self.lo)
        hi = "inf" if self.hi == float("inf") else repr(self.hi)
        return f"{'[' if self.lo_closed else '('}{lo}, {hi}{']' if self.hi_closed else ')'}"


@dataclass(frozen=True)
class State:
    name: str
    init: str                  # zeros | weight | fill | eye (fill times the identity)
    fill: float = 0.0
    cond: Expr | None = None   # hyperparameters and the weight's shape facts
    span: Span = field(default=None, compare=False, repr=False)
    shape: Shape = Shape.FULL
    value: Expr | None = None  # fill: the start computed from hyperparameters, lr, wd (None: `fill`)
    storage: str | None = None  # `as bf16`: stored as bfloat16 / float16 / float32 (STORAGE), else the weight's type
    quant: Quant | None = None  # `as int8(...)` / `as uint8(...)`: 8-bit blockwise codes and scales


# `state m = zeros as NAME`: the storage types a tensor state may declare (spelling -> canonical name, the
# NumPy dtype's name), and their C types (codegen/templates: optforge_bf16 and optforge_f16 on both targets)
STORAGE = {"bf16": "bfloat16", "bfloat16": "bfloat16", "f16": "float16", "float16": "float16",
           "f32": "float32", "float32": "float32"}
STORAGE_C = {"bfloat16": "optforge_bf16", "float16": "optforge_f16", "float32": "float"}
QUANT_MAPS = ("dynamic", "linear")


@dataclass(frozen=True)
class Quant:
    """`state m = zeros as int8(block, map)` / `uint8(...)`: 8-bit blockwise quantisation. A state of n
    elements is stored as n one-byte codes, indices into a sorted table of 256 values in [-1, 1]
    (signed, int8) or [0, 1] (uint8), and one float32 scale per block of `block` consecutive
    elements, the block's largest magnitude (absmax): element i is table[code[i]] * absmax[i / block].
    A stored block's codes are the table entries nearest to its values over its new absmax.
    `map`: "dynamic" (dynamic tree quantisation, Dettmers et al. 2022, bitsandbytes' code) or
    "linear" (256 evenly spaced values)."""
    signed: bool
    block: int = 256
    map: str = "dynamic"

    @property
    def name(self) -> str:
        return f"{'int8' if self.signed else 'uint8'}({self.block}, {self.map!r})"


@dataclass(frozen=True)
class ScalarState:
    name: str
    init: Expr
    span: Span = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Global:
    name: str
    init: Expr
    span: Span = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Sparse:
    """A `sparse` declaration: how a row-sparse gradient updates the parameter."""
    mode: str                       # lazy | standard
    cond: Expr | None = None        # lazy only when this holds (hyperparameters, master_copy)
    requires: Expr | None = None    # checked before a lazy update ...
    message: str | None = None      # ... raising ValueError(message) when false

    @property
    def lazy(self) -> bool:
        return self.mode == "lazy"


@dataclass(frozen=True)
class Spec:
    name: str
    path: str
    source: str
    source_hash: str
    aliases: tuple
    doc: str
    defaults: dict
    hypers: tuple
    states: tuple
    scalar_states: tuple
    globals: tuple
    options: dict
    sparse: Sparse | None
    prologue: tuple            # statements run once per update call
    body: tuple                # statements run once per parameter
    prologue_exports: tuple    # prologue locals the body reads
    update_text: str           # the update block as written, for docs
    uses_random: bool = False
    signature: tuple = ()     # constructor arguments in declaration order
    view: str = "batched"     # how a parameter is viewed as blocks x rows x cols (Shape)

    @property
    def shaped(self) -> bool:
        """Whether the update uses shapes: a state or a value other than the weight's shape."""
        return any(st.shape is not Shape.FULL for st in self.states) or any(
            (n.op in REDUCTIONS and len(n.args) == 2) or n.op is Op.MATMUL for s in self.body for n in _nodes(s))

    @property
    def matrix(self) -> bool:
        """Whether the update multiplies matrices."""
        return any(n.op is Op.MATMUL for s in self.body for n in _nodes(s))

    @property
    def module_name(self) -> str:
        return self.name.lower()


def _nodes(s):
    if isinstance(s, Assign):
        yield from s.value.walk()
    elif isinstance(s, Repeat):
        yield from s.count.walk()
        for x in s.body:
            yield from _nodes(x)
    else:
        for c, body in s.branches:
            yield from c.walk()
            for x in body:
                yield from _nodes(x)
        for x in s.orelse:
            yield from _nodes(x)
