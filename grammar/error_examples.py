"""Labelled malformed snippets: what a syntax error most likely means, in words.

The parser parses every snippet once, remembers the LALR state it failed in (and the tokens that
state accepts), and labels a real syntax error with the first snippet that failed in the same
state, preferring one whose unexpected token has the same type (Lark's `match_examples` idea,
keyed on the state alone so that nesting depth does not matter).

Each label is (message, hint, anchor). `message` and `hint` may use {found} (the unexpected token,
in words) and {prev} (the token before it); other braces are taken as written. `anchor` puts the caret on the unexpected token
("found") or on the token before it ("prev").
"""

EXAMPLES = [
    (("missing `=` after `{prev}`", "an equation is `name = expression` (or `+=`, `-=`, `*=`, `/=`); "
      "if `{prev}` continues the line above, an operator is missing before it", "prev"),
     ["optimizer X update { m grad }", "optimizer X update { m 1 }", "optimizer X update { m }",
      "optimizer X update { m (1) }", "optimizer X update { m : 1 }"]),
    (("expected an expression after `=`", "an equation is `name = expression`; `==` compares two values "
      "inside an expression", "found"),
     ["optimizer X update { m == 1 }", "optimizer X update { m = = 1 }"]),
    (("missing `=` after `default {prev}`", "write `default NAME = value`", "prev"),
     ["optimizer X default learning_rate 0.1", "optimizer X default wd: 0.1"]),
    (("missing `=` after `state {prev}`", "write `state NAME = zeros` (or `= weight`, or a number)", "prev"),
     ["optimizer X state m zeros", "optimizer X state m update"]),
    (("missing `=` after `global {prev}`", "write `global NAME = expression`", "prev"),
     ["optimizer X global g 1"]),
    (("hyperparameter `{prev}` needs a type", "write `hyper NAME: float = value` (types: float, int, bool, "
      "choice(\"a\", \"b\"); add `?` to allow none)", "found"),
     ["optimizer X hyper beta = 0.9", "optimizer X hyper beta 0.9", "optimizer X hyper beta float"]),
    (("unknown type {found}", "types are float, int, bool and choice(\"a\", \"b\"); add `?` to allow none",
      "found"),
     ["optimizer X hyper beta: double = 0.9", "optimizer X hyper beta: = 0.9", "optimizer X hyper beta: 1"]),
    (("a default value must be a single literal: a number, a string, true, false or none",
      "compute derived values in the update block", "found"),
     ["optimizer X hyper b: float = beta", "optimizer X hyper b: float = (1)", "optimizer X default wd = wd",
      "optimizer X hyper b: float = 1 + 2", "optimizer X hyper b: float = 1 * 2", "optimizer X hyper b: float = -x"]),
    (("a range is written `in [lo, hi]`, with `(` or `)` for an open end", "e.g. `in [0, 1)` or `in (0, inf)`",
      "found"),
     ["optimizer X hyper b: float = 0.5 in 0, 1", "optimizer X hyper b: float = 0.5 in [0 1]",
      "optimizer X hyper b: float = 0.5 in [0, 1", "optimizer X hyper b: float = 0.5 in [x, 1]",
      "optimizer X hyper b: float = 0.5 in [0, 1] ]"]),
    (("an `if` body goes in braces", "write `if condition { ... }`", "found"),
     ["optimizer X update { if x > 0 weight = 1 }", "optimizer X update { if x > 0: weight = 1 }",
      "optimizer X update { if x { } else weight = 1 }", "optimizer X update { if x { } elif y weight = 1 }"]),
    (("write `elif`, not `else if`", None, "found"),
     ["optimizer X update { if x { } else if y { } }"]),
    (("statements belong inside `update { ... }`", "a spec declares optimizer, alias, doc, default, hyper, "
      "state, global, option, sparse and one update block", "found"),
     ["optimizer X weight = 1", "optimizer X m = 1", "optimizer X beta: float = 1", "optimizer X if x { }",
      "optimizer X 1", "optimizer X (", "optimizer X \"text\"", "optimizer X =", "optimizer X -", "optimizer X +="]),
    (("the update block goes in braces", "write `update { ... }`", "found"),
     ["optimizer X update weight = 1", "optimizer X update ( ) "]),
    (("expected the optimizer's name after `optimizer`", "write `optimizer Name`", "found"),
     ["optimizer update { }", "optimizer \"X\"", "optimizer 1"]),
    (("expected an expression after `{prev}`", None, "found"),
     ["optimizer X update { m = }", "optimizer X update { m = * 2 }", "optimizer X update { m = 1 + }",
      "optimizer X update { m = 1 * * 2 }", "optimizer X update { m = f(1, ) }", "optimizer X update { m = (1 + ) }",
      "optimizer X update { m = not }", "optimizer X update { m = 1 < }", "optimizer X update { m = a and }",
      "optimizer X update { m = - }", "optimizer X update { m = + }", "optimizer X update { m += }", "optimizer X update { m = 2 ** }",
      "optimizer X update { if { } }", "optimizer X update { m = a or }", "optimizer X update { m = ( }"]),
    (("comparisons cannot be chained", "write `a < b and b < c`", "found"),
     ["optimizer X update { m = a < b < c }", "optimizer X update { m = a == b == c }",
      "optimizer X update { if a < b < c { } }", "optimizer X update { if 0 < b < 1 { } }",
      "optimizer X update { m = where(a < b < c, 1, 2) }"]),
    (("missing `,` between arguments", None, "found"),
     ["optimizer X update { m = f(a b) }", "optimizer X update { m = f(a 1) }", "optimizer X update { m = f(1 2) }",
      "optimizer X update { m = f(1 a) }", "optimizer X update { m = f(\"a\" b) }", "optimizer X update { m = f(a, 1 2) }",
      "optimizer X update { m = f(a, b c) }", "optimizer X update { m = f((a) b) }", "optimizer X update { m = f(g(a) b) }"]),
    (("option arguments are literals: numbers or strings", "e.g. `option aggregate(4)`", "found"),
     ["optimizer X option aggregate(a)", "optimizer X option aggregate(1 2)", "optimizer X option aggregate(1,"]),
    (("an alias is a string", "write `alias \"name\"`", "found"),
     ["optimizer X alias name", "optimizer X alias \"a\", b"]),
    (("doc text is a string", "write `doc \"\"\"...\"\"\"`", "found"),
     ["optimizer X doc text"]),
    (("`sparse` takes `lazy` or `standard`", "e.g. `sparse lazy if lazy_update`", "found"),
     ["optimizer X sparse yes"]),
]
