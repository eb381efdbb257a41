"""Text -> syntax tree. Lark does the parsing; this file turns its trees and errors into ours."""
from __future__ import annotations

import ast as pyast
import math
from pathlib import Path

from lark import Lark, Transformer, Token, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast
from .errors import Reporter, Span, SpecError

GRAMMAR_DIR = Path(__file__).resolve().parent.parent / "grammar"
_parser = None

TOKEN_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LPAR": "`(`", "RPAR": "`)`",
    "LBRACE": "`{`", "RBRACE": "`}`", "EQUAL": "`=`", "COLON": "`:`", "COMMA": "`,`",
    "ADDOP": "`+` or `-`", "MULOP": "`*`, `/` or `%`", "COMPOP": "a comparison", "AUGOP": "`+=`-style operator",
    "LSQB": "`[`", "RSQB": "`]`", "MINUS": "`-`", "PLUS": "`+`", "INF": "`inf`",
    "SCALAR": "`scalar`", "SPARSE_MODE": "`lazy` or `standard`", "OPT": "`?`", "__ANON_0": "`**`",
    "$END": "end of file",
}


def _grammar_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "grammar" / "opt.lark", here / "grammar" / "opt.lark"):
        if candidate.exists():
            return candidate
    try:  # installed: optforge.grammar is package data
        from importlib.resources import files
        return Path(str(files("optforge.grammar") / "opt.lark"))
    except Exception:  # pragma: no cover
        raise FileNotFoundError("grammar/opt.lark not found")


def get_parser() -> Lark:
    global _parser
    if _parser is None:
        _parser = Lark(_grammar_path().read_text(), parser="lalr", propagate_positions=True,
                       maybe_placeholders=True, strict=False)
    return _parser


def _span(meta) -> Span:
    return Span.of(meta)


def _tok_span(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _string_value(tok: Token) -> str:
    text = str(tok)
    if text.startswith('"""'):
        return text[3:-3]
    return pyast.literal_eval(text)  # only a double-quoted literal with escapes reaches here


def _number(tok: Token):
    text = str(tok)
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


@v_args(meta=True)
class _Build(Transformer):
    # ---- literals and names
    def number(self, meta, c):
        return ast.Num(_span(meta), _number(c[0]), str(c[0]))

    def neg_number(self, meta, c):
        return ast.Num(_span(meta), -_number(c[0]), "-" + str(c[0]))

    def string(self, meta, c):
        return ast.Str(_span(meta), _string_value(c[0]))

    def true(self, meta, c):
        return ast.Bool(_span(meta), True)

    def false(self, meta, c):
        return ast.Bool(_span(meta), False)

    def none(self, meta, c):
        return ast.NoneLit(_span(meta))

    def name(self, meta, c):
        return ast.Name(_span(meta), str(c[0]))

    def call(self, meta, c):
        args = tuple(a for a in c[1:] if a is not None)
        return ast.Call(_span(meta), str(c[0]), args, _tok_span(c[0]))

    # ---- operators
    def _fold(self, meta, op, c):
        node = c[0]
        for right in c[1:]:
            node = ast.BinOp(Span(node.span.line, node.span.col, right.span.end_line, right.span.end_col), op, node, right)
        return node

    def or_(self, meta, c):
        return self._fold(meta, "or", c)

    def and_(self, meta, c):
        return self._fold(meta, "and", c)

    def not_(self, meta, c):
        return ast.UnOp(_span(meta), "not", c[0])

    def neg(self, meta, c):
        return ast.UnOp(_span(meta), "-", c[0])

    def binop(self, meta, c):
        return ast.BinOp(_span(meta), str(c[1]), c[0], c[2])

    compare = binop

    def pow_(self, meta, c):
        return ast.BinOp(_span(meta), "**", c[0], c[1])

    # ---- statements
    def assign(self, meta, c):
        return ast.Assign(_span(meta), str(c[0]), _tok_span(c[0]), c[1])

    def aug_assign(self, meta, c):
        return ast.Assign(_span(meta), str(c[0]), _tok_span(c[0]), c[2], str(c[1]))

    def block(self, meta, c):
        return tuple(c)

    def elif_clause(self, meta, c):
        return (c[0], c[1])

    def if_stmt(self, meta, c):
        # c = [cond, block, *elif_clauses, else_block_or_None]
        return ast.If(_span(meta), ((c[0], c[1]),) + tuple(c[2:-1]), c[-1])

    # ---- types and ranges
    def t_float(self, meta, c):
        return ast.TypeRef(_span(meta), "float", c[0] is not None)

    def t_int(self, meta, c):
        return ast.TypeRef(_span(meta), "int", c[0] is not None)

    def t_bool(self, meta, c):
        return ast.TypeRef(_span(meta), "bool")

    def t_choice(self, meta, c):
        return ast.TypeRef(_span(meta), "choice", False, tuple(_string_value(s) for s in c))

    def closed(self, meta, c):
        return True

    def open(self, meta, c):
        return False

    def inf_bound(self, meta, c):
        return ast.Num(_span(meta), math.inf, "inf")

    def neg_inf_bound(self, meta, c):
        return ast.Num(_span(meta), -math.inf, "-inf")

    def range(self, meta, c):
        lo_closed, hi_closed = c[0], c[3]
        return (_span(meta), lo_closed, c[1], c[2], hi_closed)

    # ---- declarations
    def optimizer_decl(self, meta, c):
        return ast.Decl(_span(meta), "optimizer", str(c[0]), _tok_span(c[0]))

    def alias_decl(self, meta, c):
        return ast.Decl(_span(meta), "alias", args=tuple((_string_value(s), _tok_span(s)) for s in c))

    def doc_decl(self, meta, c):
        return ast.Decl(_span(meta), "doc", text=_string_value(c[0]))

    def default_decl(self, meta, c):
        return ast.Decl(_span(meta), "default", str(c[0]), _tok_span(c[0]), value=c[1])

    def hyper_decl(self, meta, c):
        name, typ, default, rng, desc = c
        return ast.Decl(_span(meta), "hyper", str(name), _tok_span(name), type=typ, value=default,
                        range=rng, text=_string_value(desc) if desc is not None else None)

    def state_decl(self, meta, c):
        name, scalar, value, cond = c
        return ast.Decl(_span(meta), "state", str(name), _tok_span(name), value=value, cond=cond,
                        scalar=scalar is not None)

    def global_decl(self, meta, c):
        return ast.Decl(_span(meta), "global", str(c[0]), _tok_span(c[0]), value=c[1])

    def option_decl(self, meta, c):
        args = tuple(a for a in c[1:] if a is not None)
        return ast.Decl(_span(meta), "option", str(c[0]), _tok_span(c[0]), args=args)

    def sparse_decl(self, meta, c):
        return ast.Decl(_span(meta), "sparse", str(c[0]), _tok_span(c[0]), cond=c[1])

    def update_decl(self, meta, c):
        return ast.Decl(_span(meta), "update", body=c[0])

    def start(self, meta, c):
        return tuple(c)


def _expected_words(expected) -> str:
    words = sorted({TOKEN_WORDS.get(e, f"`{e.lower()}`" if e.isupper() else e) for e in expected})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


def parse(source: str, path: str = "<spec>") -> tuple:
    """Parse spec text into a tuple of `ast.Decl`. Raises SpecError on any syntax error."""
    reporter = Reporter(path, source)
    try:
        tree = get_parser().parse(source)
    except UnexpectedCharacters as e:
        span = Span(e.line, e.column, e.line, e.column + 1)
        ch = source[e.pos_in_stream] if e.pos_in_stream is not None and e.pos_in_stream < len(source) else "?"
        hint = None
        if ch == "'":
            hint = "strings use double quotes"
        elif ch == '"':
            hint = "unterminated string"
        reporter.error(span, f"unexpected character {ch!r}", hint)
        reporter.raise_if_errors()
    except UnexpectedEOF as e:
        lines = source.splitlines() or [""]
        span = Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
        reporter.error(span, f"unexpected end of file; expected {_expected_words(e.expected)}",
                       "is a `}` or `)` missing?")
        reporter.raise_if_errors()
    except UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            lines = source.splitlines() or [""]
            span = Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
            reporter.error(span, f"unexpected end of file; expected {_expected_words(e.expected)}",
                           "is a `}` or `)` missing?")
        else:
            span = _tok_span(tok) if tok.line is not None else Span(e.line, e.column, e.line, e.column + 1)
            hint = None
            if "EQUAL" in e.expected and tok.type != "EQUAL":
                hint = "missing `=`?"
            elif "RPAR" in e.expected:
                hint = "unclosed `(`?"
            reporter.error(span, f"unexpected {str(tok)!r}; expected {_expected_words(e.expected)}", hint)
        reporter.raise_if_errors()
    except UnexpectedInput as e:  # pragma: no cover - other Lark errors
        reporter.error(Span(getattr(e, "line", 1), getattr(e, "column", 1), 0, 0), "syntax error")
        reporter.raise_if_errors()
    try:
        return _Build().transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc from None
        if isinstance(e.orig_exc, (ValueError, SyntaxError)):  # e.g. a bad string escape
            meta = getattr(e.obj, "meta", None)
            reporter.error(Span.of(meta), f"invalid literal: {e.orig_exc}")
            reporter.raise_if_errors()
        raise
