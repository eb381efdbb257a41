"""Fuzzing the compiler: a mutated spec either compiles cleanly or raises SpecError — nothing else.

Each case takes a bundled spec and applies a few token-level mutations (delete, duplicate, swap,
replace or insert tokens, keywords and operators; random characters; truncation). The result must
parse, check and render to a module that Python compiles, or fail with a SpecError. CI runs a short
campaign; a long one:
    OPTFORGE_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz_specs.py
"""
import os
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from optforge.codegen.compile import load_spec_text, render_files
from optforge.codegen.errors import SpecError

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.opt"))
TEXTS = [p.read_text(encoding="utf-8") for p in SPECS]
EXAMPLES = int(os.environ.get("OPTFORGE_FUZZ_EXAMPLES", "300"))
TOKEN = re.compile(r'"""(?:.|\n)*?"""|"(?:[^"\\\n]|\\.)*"|\w+|\*\*|[-+*/=<>!]=|\S')
SNIPPETS = [
    # keywords and declarations
    "optimizer", "alias", "doc", "default", "hyper", "state", "global", "option", "sparse", "update", "if", "elif",
    "else", "in", "and", "or", "not", "true", "false", "none", "inf", "scalar", "lazy", "standard", "zeros",
    "float", "int", "bool", "choice", "float?", "requires",
    # names the checker must treat with care
    "weight", "grad", "lr", "wd", "t", "rescale_grad", "clip_gradient", "learning_rate", "num_update", "param_name",
    "self", "np", "max", "class", "_x", "kwargs", "layout", "G", "update_x", "options", "norm", "sum", "where",
    "clip", "sqrt", "endswith", "normal", "maximum",
    # operators and punctuation
    "=", "+=", "-=", "*=", "/=", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "**", "(", ")", "{", "}",
    "[", "]", ",", ":", "?", "\n", "#",
    # literals, including awkward ones
    "0", "1", "-1", "0.5", "1e308", "1e999", "1e-400", "99999999999999999999", ".5", "1.", "\"x\"", "\"\"",
    "\"\"\"a\"\"\"", "\"a\\\"b\"", "\"\\q\"", "\"\\x00\"", "'a'", "\"\"\"", "\\", "nan",
    # whole fragments
    "norm(weight)", "where(grad > 0, 1, 2)", "if t > 1 {", "state q = zeros", "hyper h: float = 1.0",
    "global g = 0", "option aggregate(4)", "option unused(\"x\")", "m = m", "weight -= lr * grad",
]
CHARS = st.one_of(st.characters(min_codepoint=32, max_codepoint=126), st.characters(max_codepoint=31),
                  st.characters(min_codepoint=127, max_codepoint=0x10FFFF, exclude_categories=("Cs",)))


@st.composite
def mutated_spec(draw):
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        spans = [m.span() for m in TOKEN.finditer(text)]
        if not spans:
            break
        s, e = spans[draw(st.integers(0, len(spans) - 1))]
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert", "char", "truncate"]))
        if kind == "delete":
            text = text[:s] + text[e:]
        elif kind == "duplicate":
            text = text[:e] + " " + text[s:e] + text[e:]
        elif kind == "swap":
            s2, e2 = spans[draw(st.integers(0, len(spans) - 1))]
            (a, b), (c, d) = sorted([(s, e), (s2, e2)])
            if b <= c:
                text = text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
        elif kind == "replace":
            text = text[:s] + draw(st.sampled_from(SNIPPETS)) + text[e:]
        elif kind == "insert":
            text = text[:s] + " " + draw(st.sampled_from(SNIPPETS)) + " " + text[s:]
        elif kind == "char":
            pos = draw(st.integers(0, len(text)))
            text = text[:pos] + draw(CHARS) + text[pos:]
        else:
            text = text[:draw(st.integers(0, len(text)))]
    return text


def compile_or_spec_error(text: str, path: str = "specs/fuzz.opt") -> str:
    """'ok' when the spec compiles to a module Python accepts, 'error' on SpecError; anything else raises."""
    try:
        spec, _ = load_spec_text(text, path)
    except SpecError as e:
        assert e.errors and all(d.render() for d in e.diagnostics)
        return "error"
    files = render_files(spec, path)   # the Python module and the C++ and CUDA sources
    compile(files[f"{spec.module_name}.py"], f"<generated from {path}>", "exec")
    return "ok"


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(mutated_spec())
def test_mutated_specs_compile_or_raise_spec_error(text):
    compile_or_spec_error(text)


def test_bundled_specs_compile():
    assert all(compile_or_spec_error(t) == "ok" for t in TEXTS)


def test_pathological_inputs():
    cases = ["", "\x00", "optimizer", "{" * 5000, "(" * 5000, "optimizer X update { weight = " + "(" * 3000,
             "optimizer X update { weight = " + "-" * 3000 + "1 }", "optimizer X update { weight = " + "1 + " * 3000 + "1 }",
             "optimizer X update { weight = " + "sqrt(" * 500 + "1" + ")" * 500 + " }",
             "optimizer X update { " + "if t > 1 { " * 300 + "}" * 301,
             "optimizer X update { weight = " + "1" * 5000 + " }", "optimizer X update { weight = 1e" + "9" * 5000 + " }",
             "\ufeffoptimizer X update { }", "optimizer X\r\nupdate {\r\n weight -= lr * grad\r\n}\r\n"]
    for text in cases:
        compile_or_spec_error(text)
