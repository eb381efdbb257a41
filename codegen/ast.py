"""Syntax tree of a spec, built by the parser's Transformer. Carries spans; no semantics."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Span


@dataclass(frozen=True)
class Node:
    span: Span = field(compare=False, repr=False)


# ---- expressions -------------------------------------------------------------------------
@dataclass(frozen=True)
class Num(Node):
    value: float | int
    text: str


@dataclass(frozen=True)
class Str(Node):
    value: str


@dataclass(frozen=True)
class Bool(Node):
    value: bool


@dataclass(frozen=True)
class NoneLit(Node):
    pass


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple
    func_span: Span = field(compare=False, repr=False, default=None)


@dataclass(frozen=True)
class BinOp(Node):
    op: str      # + - * / % @ ** == != < <= > >= and or
    left: Node
    right: Node


@dataclass(frozen=True)
class UnOp(Node):
    op: str      # - not
    operand: Node


# ---- statements --------------------------------------------------------------------------
@dataclass(frozen=True)
class Assign(Node):
    target: str
    target_span: Span
    value: Node
    op: str = "="     # = += -= *= /=


@dataclass(frozen=True)
class If(Node):
    branches: tuple   # ((cond, body), ...)
    orelse: tuple | None


@dataclass(frozen=True)
class Repeat(Node):
    count: Node       # a host integer: how many times the body runs
    body: tuple


# ---- declarations ------------------------------------------------------------------------
@dataclass(frozen=True)
class TypeRef(Node):
    kind: str        # float int bool choice
    optional: bool = False
    choices: tuple = ()


@dataclass(frozen=True)
class Decl(Node):
    what: str        # optimizer alias doc default hyper state global option sparse update
    name: str | None = None
    name_span: Span | None = field(compare=False, repr=False, default=None)
    args: tuple = ()
    type: TypeRef | None = None
    value: Node | None = None
    range: tuple | None = None    # (lo_closed, lo, hi, hi_closed), lo/hi float or +-inf
    text: str | None = None
    cond: Node | None = None
    shape: str | None = None      # state: `scalar`, `per_row`, `per_col`, `per_block` (None: the weight's)
    shape_span: Span | None = field(compare=False, repr=False, default=None)
    body: tuple = ()
    storage: str | None = None    # state: `as bf16` (None: the weight's type, or float32 with a master copy)
    storage_span: Span | None = field(compare=False, repr=False, default=None)
    storage_args: tuple = ()      # `as int8(256, "dynamic")`: literal nodes

    @property
    def scalar(self) -> bool:
        return self.shape == "scalar"
