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


# characters a typo swaps for each other because they look alike: `betal` for `beta1`
_LOOKALIKE = {frozenset(p) for p in ("l1", "I1", "Il", "O0", "o0", "S5", "Z2", "B8")}


def _typo_distance(a: str, b: str) -> float:
    """Edit distance (insert, delete, substitute, swap two neighbours: 1 each), where substituting a
    look-alike character (l/1, O/0) or the same letter in the other case costs 1/2."""
    prev2, prev = None, [float(j) for j in range(len(b) + 1)]
    for i, ca in enumerate(a, 1):
        row = [float(i)] + [0.0] * len(b)
        for j, cb in enumerate(b, 1):
            if ca == cb:
                sub = 0.0
            elif ca.lower() == cb.lower() or frozenset((ca, cb)) in _LOOKALIKE:
                sub = 0.5
            else:
                sub = 1.0
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + sub)
            if prev2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def close_names(name: str, candidates, cutoff: float = 0.6) -> list[str]:
    """The candidates nearest to `name`: among those difflib finds similar (ratio >= cutoff), the
    fewest typos (`_typo_distance`), then the same length, then the highest ratio; every candidate
    tied on all three (`beta3`: beta1 and beta2), in alphabetical order."""
    scored = []
    for c in sorted(set(candidates)):
        ratio = difflib.SequenceMatcher(None, name, c).ratio()
        if ratio >= cutoff and c != name:
            scored.append(((_typo_distance(name, c), len(c) != len(name), -round(ratio, 9)), c))
    if not scored:
        return []
    best = min(key for key, _ in scored)
    return [c for key, c in scored if key == best]


def did_you_mean(name: str, candidates) -> str | None:
    close = close_names(name, candidates)[:3]
    if not close:
        return None
    shown = [f"`{c}`" for c in close]
    return "did you mean " + (shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]) + "?"


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
