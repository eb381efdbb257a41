"""Text -> syntax tree. Lark does the parsing; this file turns its trees and errors into ours.

Syntax errors become one SpecError with the expected tokens in words, a label from
grammar/error_examples.py where a snippet there failed the same way, and the opening bracket
itself when a `(`, `[` or `{` is never closed. Bad literals (an escape Python would not know, a
number that overflows) are diagnostics too, all reported together.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from lark import Lark, Transformer, Token, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast
from .errors import Reporter, Span, SpecError

GRAMMAR_DIR = Path(__file__).resolve().parent.parent / "grammar"
_parser = None
_examples = None
MAX_DEPTH = 100            # deepest expression accepted; deeper ones would exhaust Python's stack later
INT_MAX = 2 ** 63 - 1

TOKEN_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LPAR": "`(`", "RPAR": "`)`",
    "LBRACE": "`{`", "RBRACE": "`}`", "EQUAL": "`=`", "COLON": "`:`", "COMMA": "`,`",
    "ADDOP": "`+`", "MULOP": "`*`", "COMPOP": "a comparison", "AUGOP": "`+=`",
    "LSQB": "`[`", "RSQB": "`]`", "MINUS": "`-`", "PLUS": "`+`", "INF": "`inf`",
"SPARSE_MODE": "`lazy` or `standard`", "OPT": "`?`", "__ANON_0": "`**`",
    "$END": "the end of the file",
}
DECL_KEYWORDS = {"OPTIMIZER", "ALIAS", "DOC", "DEFAULT", "HYPER", "STATE", "GLOBAL", "OPTION", "SPARSE", "UPDATE", "VIEW"}
EXPR_START = {"NUMBER", "STRING", "NAME", "LPAR", "TRUE", "FALSE", "NONE", "NOT", "MINUS", "PLUS"}
CLOSERS = {")": "(", "]": "[", "}": "{"}
_BRACKETS = re.compile(r'"""(?:.|\n)*?"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*|\bin\b|[][(){}]')
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}


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


def _unescape(tok: Token, reporter: Reporter) -> str:
    r"""The value of a string literal. Triple-quoted text is taken as written; "..." knows the
    escapes \\, \", \', \n, \t, \r, \xHH and \uHHHH, and any other is a diagnostic."""
    text = str(tok)
    if text.startswith('"""'):
        return text[3:-3]
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        width = {"x": 2, "u": 4}.get(esc)
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 2
        elif width and re.fullmatch(r"[0-9a-fA-F]{%d}" % width, body[i + 2:i + 2 + width]):
            out.append(chr(int(body[i + 2:i + 2 + width], 16)))
            i += 2 + width
        else:
            col = tok.column + 1 + i
            shown = esc if esc.isprintable() else repr(esc)[1:-1]
            reporter.error(Span(tok.line, col, tok.line, col + 2), f"unknown escape `\\{shown}` in a string",
                           "known escapes: \\\\ \\\" \\n \\t \\r \\xHH \\uHHHH; "
                           "triple-quoted text takes backslashes as written")
            out.append(esc)
            i += 2
    return "".join(out)


def _number(tok: Token, reporter: Reporter):
    text = str(tok)
    if not any(c in text for c in ".eE"):
        if len(text.lstrip("0")) > 19 or int(text) > INT_MAX:
            reporter.error(_tok_span(tok), f"integer {_short(text)} is too large",
                           f"integers go up to {INT_MAX}; write a float such as 1e30 for a larger number")
            return 0
        return int(text)
    value = float(text)
    if math.isinf(value):
        reporter.error(_tok_span(tok), f"number {_short(text)} is too large for a float (it would be infinite)",
                       "a range bound can be `inf`; a hyperparameter declared `float?` can default to none")
        return 0.0
    if value == 0.0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):
        reporter.error(_tok_span(tok), f"number {_short(text)} is too small for a float (it would be 0)",
                       "write 0 if you mean zero")
    return value


def _short(text: str) -> str:
    return text if len(text) <= 24 else text[:10] + "..." + text[-10:]


@v_args(meta=True)
class _Build(Transformer):
    def __init__(self, reporter: Reporter):
        super().__init__()
        self.r = reporter
        self.depth: dict[int, int] = {}   # id(node) -> nesting depth of an expression
        self.too_deep = False

    def _nest(self, node, *children):
        d = 1 + max((self.depth.get(id(ch), 1) for ch in children), default=0)
        self.depth[id(node)] = d
        if d > MAX_DEPTH and not self.too_deep:
            self.too_deep = True
            self.r.error(node.span, f"expression nested more than {MAX_DEPTH} levels deep",
                         "split it into several equations")
        return node

    def _str(self, tok):
        return _unescape(tok, self.r)

    # ---- literals and names
    def number(self, meta, c):
        return ast.Num(_span(meta), _number(c[0], self.r), str(c[0]))

    def neg_number(self, meta, c):
        return ast.Num(_span(meta), -_number(c[0], self.r), "-" + str(c[0]))

    def string(self, meta, c):
        return ast.Str(_span(meta), self._str(c[0]))

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
        return self._nest(ast.Call(_span(meta), str(c[0]), args, _tok_span(c[0])), *args)

    # ---- operators
    def _fold(self, meta, op, c):
        node = c[0]
        for right in c[1:]:
            node = self._nest(ast.BinOp(Span(node.span.line, node.span.col, right.span.end_line, right.span.end_col),
                                        op, node, right), node, right)
        return node

    def or_(self, meta, c):
        return self._fold(meta, "or", c)

    def and_(self, meta, c):
        return self._fold(meta, "and", c)

    def not_(self, meta, c):
        return self._nest(ast.UnOp(_span(meta), "not", c[0]), c[0])

    def neg(self, meta, c):
        return self._nest(ast.UnOp(_span(meta), "-", c[0]), c[0])

    def binop(self, meta, c):
        return self._nest(ast.BinOp(_span(meta), str(c[1]), c[0], c[2]), c[0], c[2])

    compare = binop

    def pow_(self, meta, c):
        return self._nest(ast.BinOp(_span(meta), "**", c[0], c[1]), c[0], c[1])

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

    def repeat_stmt(self, meta, c):
        return ast.Repeat(_span(meta), c[0], c[1])

    # ---- types and ranges
    def t_float(self, meta, c):
        return ast.TypeRef(_span(meta), "float", c[0] is not None)

    def t_int(self, meta, c):
        return ast.TypeRef(_span(meta), "int", c[0] is not None)

    def t_bool(self, meta, c):
        return ast.TypeRef(_span(meta), "bool")

    def t_choice(self, meta, c):
        return ast.TypeRef(_span(meta), "choice", False, tuple(self._str(s) for s in c))

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
        return ast.Decl(_span(meta), "alias", args=tuple((self._str(s), _tok_span(s)) for s in c))

    def doc_decl(self, meta, c):
        return ast.Decl(_span(meta), "doc", text=self._str(c[0]))

    def default_decl(self, meta, c):
        return ast.Decl(_span(meta), "default", str(c[0]), _tok_span(c[0]), value=c[1])

    def hyper_decl(self, meta, c):
        name, typ, default, rng, desc = c
        return ast.Decl(_span(meta), "hyper", str(name), _tok_span(name), type=typ, value=default,
                        range=rng, text=self._str(desc) if desc is not None else None)

    def state_decl(self, meta, c):
        name, shape, value, storage, cond = c   # shape: `scalar`, `per_row`, ...; storage: `bf16`, ... (check.py)
        kind, args = storage if storage is not None else (None, ())
        return ast.Decl(_span(meta), "state", str(name), _tok_span(name), value=value, cond=cond,
                        shape=str(shape) if shape is not None else None,
                        shape_span=_tok_span(shape) if shape is not None else None,
                        storage=str(kind) if kind is not None else None,
                        storage_span=_tok_span(kind) if kind is not None else None, storage_args=args)

    def storage(self, meta, c):
        return c[0], tuple(a for a in c[1:] if a is not None)

    def view_decl(self, meta, c):
        return ast.Decl(_span(meta), "view", str(c[0]), _tok_span(c[0]))

    def global_decl(self, meta, c):
        return ast.Decl(_span(meta), "global", str(c[0]), _tok_span(c[0]), value=c[1])

    def option_decl(self, meta, c):
        args = tuple(a for a in c[1:] if a is not None)
        return ast.Decl(_span(meta), "option", str(c[0]), _tok_span(c[0]), args=args)

    def sparse_decl(self, meta, c):
        mode, cond, requires, message = c   # `requires` expr "message": checked at update time
        return ast.Decl(_span(meta), "sparse", str(mode), _tok_span(mode), cond=cond, value=requires,
                        text=self._str(message) if message is not None else None)

    def update_decl(self, meta, c):
        return ast.Decl(_span(meta), "update", body=c[0])

    def start(self, meta, c):
        return tuple(c)


# ---- syntax errors ------------------------------------------------------------------------------
def _words(types) -> str:
    words = sorted({TOKEN_WORDS.get(t, f"`{t.lower()}`" if t.isupper() and not t.startswith("_") else "a symbol")
                    for t in types})
    if "`+`" in words and "`*`" in words:     # expression operators: say so once, first
        words = ["an operator"] + [w for w in words if w not in ("`+`", "`*`", "`-`", "`**`", "a comparison")]
    if len(words) > 6:
        words = words[:6] + ["..."]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _found(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type == "NAME":
        return f"name `{tok}`"
    if tok.type == "NUMBER":
        return f"number `{_short(str(tok))}`"
    if tok.type == "STRING":
        return "a string"
    return f"`{tok}`"


def _example_table():
    """(LALR state, accepted tokens, token type) -> label, for every snippet in the table."""
    global _examples
    if _examples is None:
        try:
            from optforge.grammar.error_examples import EXAMPLES
        except ImportError:  # running from a checkout without the package installed
            import importlib.util
            spec = importlib.util.spec_from_file_location("_opt_error_examples", _grammar_path().parent / "error_examples.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            EXAMPLES = mod.EXAMPLES
        _examples = []
        for label, snippets in EXAMPLES:
            for s in snippets:
                try:
                    get_parser().parse(s)
                except UnexpectedToken as e:
                    _examples.append((e.state.position, frozenset(e.accepts or e.expected), e.token.type, label))
                except UnexpectedInput:
                    pass
    return _examples


def _label(e: UnexpectedToken):
    key = (e.state.position, frozenset(e.accepts or e.expected))
    same_state = [ex for ex in _example_table() if ex[:2] == key]
    for ex in same_state:
        if ex[2] == e.token.type:
            return ex[3]
    return same_state[0][3] if same_state else None


def _prev_token(e: UnexpectedToken):
    try:
        stack = e.interactive_parser.parser_state.value_stack
    except AttributeError:  # pragma: no cover
        return None
    return stack[-1] if stack and isinstance(stack[-1], Token) else None


def _end_span(source: str) -> Span:
    lines = source.splitlines() or [""]
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)


def _pos_span(source: str, pos: int, length: int = 1) -> Span:
    line = source.count("\n", 0, pos) + 1
    col = pos - (source.rfind("\n", 0, pos) + 1) + 1
    return Span(line, col, line, col + length)


def _bracket_error(source: str, upto: int, at_closer: bool, reporter: Reporter, found: str) -> bool:
    """Report an unclosed or unmatched bracket before offset `upto`, if there is one."""
    stack = []          # (char, offset, closers it accepts)
    in_range = False
    for m in _BRACKETS.finditer(source):
        if m.start() > upto:
            break
        ch = m.group()
        if ch == "in":
            in_range = True
        elif ch in "([{":
            stack.append((ch, m.start(), {")", "]"} if in_range and ch in "([" else {{"(": ")", "[": "]", "{": "}"}[ch]}))
            in_range = False
        elif ch in ")]}":
            if stack and ch in stack[-1][2]:
                if m.start() == upto:
                    return False
                stack.pop()
                continue
            if stack:
                opener, pos, closers = stack[-1]
                reporter.error(_pos_span(source, pos), f"unclosed `{opener}`",
                               f"expected `{sorted(closers)[0]}` before the `{ch}` on line "
                               f"{_pos_span(source, m.start()).line}")
            else:
                reporter.error(_pos_span(source, m.start()), f"unmatched `{ch}`", "there is no opening "
                               f"`{CLOSERS[ch]}` before it")
            return True
    if stack and at_closer:
        opener, pos, closers = stack[-1]
        reporter.error(_pos_span(source, pos), f"unclosed `{opener}`",
                       f"expected `{sorted(closers)[0]}` before {found}")
        return True
    return False


def _power_example(source: str, pos: int) -> str:
    """`a ** b` from the operands around the `^` at offset `pos`, where they are plain names or numbers."""
    left = re.search(r"([A-Za-z_0-9.]+|\))[ \t]*$", source[:pos])
    right = re.match(r"[ \t]*([A-Za-z_0-9.]+|\()", source[pos + 1:])
    if not left or not right:
        return ""
    return f": `{left.group(1)} ** {right.group(1)}`".replace("`) ** ", "`(...) ** ").replace(" ** (`", " ** (...)`")


def _syntax_error(e: UnexpectedInput, source: str, reporter: Reporter) -> None:
    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream if e.pos_in_stream is not None else 0
        ch = source[pos] if pos < len(source) else ""
        span = Span(e.line, e.column, e.line, e.column + 1)
        if pos >= 2 and source.startswith('"""', pos - 2):   # lexed as "" then a lone "
            pos, span = pos - 2, Span(e.line, e.column - 2, e.line, e.column + 1)
        shown = ch if ch.isprintable() and ch not in "`" else repr(ch)[1:-1]
        hint = None
        if ch == "'":
            hint = "strings use double quotes"
        elif source.startswith('"""', pos):
            hint = 'this """...""" text is never closed'
        elif ch == '"':
            hint = "this string is never closed (a \"...\" string ends on its own line; use \"\"\"...\"\"\" for text "
            hint += "over several lines)"
        elif ch in ";":
            hint = "statements end at the end of the line; no `;` needed"
        elif ch == "^":
            hint = "write `**` for a power" + _power_example(source, pos) + "; `^` is not an operator"
        elif ch in "&|!":
            hint = "write `and`, `or`, `not`" + (" (`!=` is not equal)" if ch == "!" else "")
        elif not ch.isascii():
            hint = "names, numbers and operators are ASCII; other text goes in strings"
        elif e.allowed and "..." not in _words(e.allowed):
            hint = f"expected {_words(e.allowed)} here"
        else:   # a list cut short says little: what specs are written with
            hint = ("specs are written with names, numbers, \"strings\", the operators + - * / % @ ** "
                    "== != < <= > >= and ( ) [ ] { } , : = ?")
        unclosed = ch == '"'
        reporter.error(span, "unterminated string" if unclosed else f"unexpected character `{shown}`", hint)
        return
    tok = e.token if isinstance(e, (UnexpectedToken, UnexpectedEOF)) else None
    at_end = tok is None or tok.type == "$END"
    found = "the end of the file" if at_end else _found(tok)
    upto = len(source) if at_end else tok.start_pos
    expected = set(getattr(e, "accepts", None) or e.expected or ())   # accepts: what this context allows
    closing = at_end or tok.type in ("RPAR", "RSQB", "RBRACE") or (
        expected <= {"RPAR", "RSQB", "RBRACE", "COMMA"} and expected & {"RPAR", "RSQB", "RBRACE"})
    if _bracket_error(source, upto, closing, reporter, found):
        return
    span = _end_span(source) if at_end else _tok_span(tok)
    label = _label(e) if isinstance(e, UnexpectedToken) and not at_end else None
    prev = _prev_token(e) if isinstance(e, UnexpectedToken) else None
    if label is not None:
        message, hint, anchor = label
        fill = lambda text: text and text.replace("{found}", found).replace("{prev}", str(prev) if prev else "it")  # noqa: E731
        message, hint = fill(message), fill(hint)
        if anchor == "prev" and prev is not None and prev.line is not None:
            span = _tok_span(prev)
        reporter.error(span, message, hint)
        return
    if expected >= DECL_KEYWORDS - {"OPTIMIZER"}:
        hint = "a spec declares optimizer, alias, doc, default, hyper, state, global, option, sparse and one update block"
        if tok.type in ("NAME", "IF"):
            hint = "statements belong inside `update { ... }`; " + hint
        reporter.error(span, f"unexpected {found}; expected a declaration", hint)
        return
    reporter.error(span, f"unexpected {'end of file' if at_end else found}; expected {_words(expected)}")


# ---- recovery: the independent syntax errors of a file, all reported --------------------------
MAX_SYNTAX_ERRORS = 20
_STMT_START = re.compile(r"\s*(?:(?:optimizer|alias|doc|default|hyper|state|view|global|option|sparse|update|if|"
                         r"elif|else|repeat)\b|[A-Za-z_]\w*\s*(?:=(?!=)|[-+*/]=)|\})")
_CONTINUES = re.compile(r"(?:[-+*/%@=<>,(\[]|\b(?:and|or|not|in))\s*(?:#[^\n]*)?$")   # the line's end says: more follows
_STOP = ("unclosed", "unmatched", "unterminated")   # the rest of the file cannot be read apart from them


def _error_at(e: UnexpectedInput):
    """(line, col) of a syntax error; None at the end of the file. For an unexpected token, the place
    of the token before it when that is on an earlier line (`m = a + (b) grad` then `weight ...` on the
    next line: the statement to skip is the first one)."""
    if isinstance(e, UnexpectedCharacters):
        return e.line, e.column
    tok = getattr(e, "token", None)
    if tok is None or tok.type == "$END" or tok.line is None:
        return None
    try:
        stack = e.interactive_parser.parser_state.value_stack
    except AttributeError:  # pragma: no cover
        stack = []
    top = stack[-1] if stack else None
    if isinstance(top, Token) and top.end_line is not None:
        prev = (top.end_line, top.end_column)
    else:
        meta = getattr(top, "meta", None)
        prev = (meta.end_line, meta.end_column) if meta is not None and not meta.empty else None
    if prev is not None and prev[0] < tok.line:
        return prev[0], max(prev[1] - 1, 1)
    return tok.line, tok.column


def _code(line: str) -> str:
    """The line without strings and comments (for counting brackets)."""
    return re.sub(r'"""(?:.|\n)*?"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*', "", line)


def _bad_statement(lines: list, line: int, col: int):
    """The lines (first, last; 0-based) of the statement holding the error at (line, col): back to the
    line that starts it (and further while the line before ends in an operator), on over the lines
    that continue it; None when blanking them would unbalance the brackets around them."""
    at = line - 1
    first_on_line = not lines[at][:col - 1].strip()
    if first_on_line and lines[at].lstrip().startswith("}") and at > 0:
        at -= 1          # `}` where the statement before it is unfinished: that statement is the bad one
        while at > 0 and not _code(lines[at]).strip():
            at -= 1
    start = at
    while start > 0 and not _STMT_START.match(lines[start]):
        start -= 1
    while start > 0:
        before = start - 1
        while before > 0 and not _code(lines[before]).strip():
            before -= 1
        if not _CONTINUES.search(lines[before].rstrip()):
            break
        start = before
        while start > 0 and not _STMT_START.match(lines[start]):
            start -= 1
    end = at
    while end + 1 < len(lines) and lines[end + 1].strip() and not _STMT_START.match(lines[end + 1]):
        end += 1
    return (start, end) if _balanced("\n".join(lines[start:end + 1])) else None


def _balanced(text: str) -> bool:
    """As many `{` as `}`, and as many `(` or `[` as `)` or `]` (a range `[0, 1)` mixes them)."""
    code = _code(text)
    return code.count("{") == code.count("}") and sum(map(code.count, "([")) == sum(map(code.count, ")]"))


def _more_syntax_errors(e: UnexpectedInput, source: str, reporter: Reporter) -> None:
    """After the first syntax error, blank the statement it is in and parse again, so that the file's
    other, independent mistakes are reported too. Stops at the first error that might be a
    consequence of the blanking: a bracket error, one on the blanked lines or before them."""
    if any(d.message.startswith(_STOP) for d in reporter.errors) or not _balanced(source):
        return   # a missing `{` or `)` somewhere: skipping statements would misread the blocks
    lines = source.split("\n")
    for _ in range(MAX_SYNTAX_ERRORS - 1):
        where = _error_at(e)
        if where is None:
            return
        region = _bad_statement(lines, *where)
        if region is None:
            return
        first, last = region
        for k in range(first, last + 1):
            lines[k] = re.sub(r"[^\r]", " ", lines[k])
        text = "\n".join(lines)
        try:
            get_parser().parse(text)
            return
        except UnexpectedInput as again:
            e = again
        except RecursionError:
            return
        where = _error_at(e)
        if where is not None and where[0] <= last + 1:
            return
        scratch = Reporter(reporter.path, reporter.source)
        _syntax_error(e, text, scratch)
        if not scratch.errors or any(d.message.startswith(_STOP) for d in scratch.errors):
            return
        for d in scratch.errors:
            reporter.error(d.span, d.message, d.hint)


def parse(source: str, path: str = "<spec>") -> tuple:
    """Parse spec text into a tuple of `ast.Decl`. Raises SpecError on any syntax error."""
    reporter = Reporter(path, source)
    bad = next((k for k, ch in enumerate(source) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:   # a lone surrogate: no file can hold it, and no generated module could
        line = source.count("\n", 0, bad) + 1
        col = bad - (source.rfind("\n", 0, bad) + 1) + 1
        reporter.error(Span(line, col, line, col + 1), f"the spec holds a lone surrogate character "
                       f"(U+{ord(source[bad]):04X}), which is not text", "remove it or write a real character")
        reporter.raise_if_errors()
    try:
        tree = get_parser().parse(source)
    except UnexpectedInput as e:
        _syntax_error(e, source, reporter)
        _more_syntax_errors(e, source, reporter)
        reporter.raise_if_errors()
    except RecursionError:
        reporter.error(Span(1, 1, 1, 2), "the spec is nested too deeply to parse", "split long expressions")
        reporter.raise_if_errors()
    builder = _Build(reporter)
    try:
        decls = builder.transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc from None
        if isinstance(e.orig_exc, RecursionError):
            reporter.error(Span.of(getattr(e.obj, "meta", None)), "expression nested too deeply",
                           "split it into several equations")
            reporter.raise_if_errors()
        raise
    except RecursionError:
        reporter.error(Span(1, 1, 1, 2), "the spec is nested too deeply to parse", "split long expressions")
    reporter.raise_if_errors()
    return decls
