"""One error type for everything wrong in a spec, rendered like a compiler diagnostic.

    specs/adam.opt:12:9: error: unknown name `beta3`
       12 |     mean = beta3 * mean
          |            ^^^^^
    hint: did you mean `beta1`?
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Where a node came from: 1-based line and column, end exclusive."""
    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def of(meta) -> "Span":
        if meta is None or getattr(meta, "empty", True):
            return Span(0, 0, 0, 0)
        return Span(meta.line, meta.column, meta.end_line, meta.end_column)


NOWHERE = Span(0, 0, 0, 0)


@dataclass(frozen=True)
class Diagnostic:
    path: str
    span: Span
    message: str
    hint: str | None = None
    severity: str = "error"
    source: str | None = None

    def render(self) -> str:
        path = printable(self.path)
        where = f"{path}:{self.span.line}:{self.span.col}" if self.span.line > 0 else path
        lines = [f"{where}: {self.severity}: {self.message}"]
        if self.source is not None and self.span.line > 0:
            src_lines = self.source.split("\n")
            if self.span.line <= len(src_lines):
                # one character per column, whatever the line holds (tabs, NUL, other control characters)
                text = "".join(c if c.isprintable() else " " if c in "\t\r\x0c" else "?"
                               for c in src_lines[self.span.line - 1]).rstrip()
                width = len(str(self.span.line))
                start = max(self.span.col - 1, 0)
                if self.span.end_line == self.span.line and self.span.end_col > self.span.col:
                    length = self.span.end_col - self.span.col
                else:
                    length = max(len(text.rstrip()) - start, 1)
                lines.append(f" {self.span.line} | {text}")
                lines.append(f" {' ' * width} | {' ' * start}{'^' * length}")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def printable(text: str) -> str:
    """`text` with every character that is not printable written as its escape (a newline as `\\n`):
    safe inside a comment or a message of one line. Paths and names from the file system reach
    generated code only through this."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)



class SpecError(Exception):
    """Every problem found in one or more specs. `diagnostics` holds them all, in source order:
    the errors, and the warnings found on the way (`errors` has the errors alone)."""

    def __init__(self, diagnostics):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    @property
    def errors(self):
        return [d for d in self.diagnostics if d.severity == "error"]

    def __reduce__(self):
        return (SpecError, (self.diagnostics,))


class InternalError(Exception):
    """A bug in optforge itself (an emitter met an IR it has no rule for)."""


def did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


class Reporter:
    """Collects diagnostics for one spec file so that a run reports all of them at once."""

    def __init__(self, path: str, source: str):
        self.path, self.source = path, source
        self.diagnostics: list[Diagnostic] = []

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        if any(d.span.line == span.line and d.message == message for d in self.diagnostics):
            return   # one report per line: `mom = momentum * mom` reads and writes `mom`
        self.diagnostics.append(Diagnostic(self.path, span, message, hint, "error", self.source))

    def warning(self, span: Span, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(self.path, span, message, hint, "warning", self.source))

    @property
    def errors(self):
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self):
        return [d for d in self.diagnostics if d.severity == "warning"]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise SpecError(sorted(self.diagnostics, key=lambda d: (d.span.line, d.span.col)))
