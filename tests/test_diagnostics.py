"""Every mistake in a spec is a diagnostic: `path:line:col: error: message`, the source line, a
caret under the culprit and a hint where one helps — never a traceback.

tests/bad_specs/NAME.opt is a small bad spec; NAME.expected is exactly what `opt-compile` prints
for it (run from the repository root). After an intended change in wording, rewrite them with
    OPTFORGE_REGEN_EXPECTED=1 python -m pytest -q tests/test_diagnostics.py
and review the diff.
"""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from optforge.codegen import cli
from optforge.codegen.compile import load_spec_text
from optforge.codegen.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).resolve().parent / "bad_specs"
CASES = sorted(p.stem for p in BAD.glob("*.opt"))
REGEN = os.environ.get("OPTFORGE_REGEN_EXPECTED") == "1"


def _compile(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rc = cli.main(args + ["-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_diagnostics_match_expected(name, tmp_path, monkeypatch, capsys):
    rc, out, err = _compile([f"tests/bad_specs/{name}.opt"], tmp_path, monkeypatch, capsys)
    expected = BAD / f"{name}.expected"
    if REGEN:
        expected.write_text(err, encoding="utf-8")
    assert rc == 1
    assert out == ""
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing is written when a spec has errors"
    assert err == expected.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [c for c in CASES if c != "name_mismatch"])
def test_api_raises_one_spec_error_with_every_error(name):
    path = f"tests/bad_specs/{name}.opt"
    text = (BAD / f"{name}.opt").read_text(encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec_text(text, path)
    err = info.value
    assert err.errors, "a SpecError carries at least one error"
    expected = (BAD / f"{name}.expected").read_text(encoding="utf-8")
    for d in err.errors:        # the API and the CLI report the same errors
        assert d.render() in expected
    # opt-compile also checks the file's name against the optimizer's; the API has no file name
    assert len(err.errors) == expected.count(": error: ") - expected.count("does not match optimizer")
    lines = [(d.span.line, d.span.col) for d in err.diagnostics]
    assert lines == sorted(lines), "diagnostics come in source order"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


def test_cli_reports_every_file_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """All errors of all files in one run, the error count at the end, exit 1, no output written."""
    rc, out, err = _compile(["tests/bad_specs/"], tmp_path, monkeypatch, capsys)
    assert rc == 1
    assert not (tmp_path / "out").exists()
    assert "Traceback" not in err
    total = 0
    for name in CASES:
        expected = (BAD / f"{name}.expected").read_text(encoding="utf-8")
        total += expected.count(": error: ")
        for block in expected.split("\n" + f"tests/bad_specs/{name}.opt:"):
            assert block.splitlines()[0].split(": ", 1)[-1] in err
    assert err.rstrip().endswith(f"opt-compile: {total} errors; nothing written")


def test_good_and_bad_specs_together_write_nothing(tmp_path, monkeypatch, capsys):
    rc, _, err = _compile(["specs/", "tests/bad_specs/wrong_arity.opt"], tmp_path, monkeypatch, capsys)
    assert rc == 1
    assert "wrong_arity.opt:6:20: error: `sqrt` takes 1 argument, got 2" in err
    assert not (tmp_path / "out").exists()


def test_console_script_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "optforge.codegen.cli", "tests/bad_specs/", "-o", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "tests/bad_specs/unknown_names.opt:6:21: error: unknown name `gard`" in r.stderr


def test_unreadable_file_is_a_diagnostic(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "latin1.opt"
    bad.write_bytes(b"optimizer latin1\n# caf\xe9\nupdate { weight -= lr * grad }\n")
    rc, _, err = _compile([str(bad)], tmp_path, monkeypatch, capsys)
    assert rc == 1 and "cannot read spec" in err and "Traceback" not in err


def test_a_warning_alone_does_not_fail(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "lonely.opt"
    spec.write_text("optimizer Lonely\nstate m = zeros\nupdate {\n    weight -= lr * grad\n}\n")
    rc, _, err = _compile([str(spec)], tmp_path, monkeypatch, capsys)
    assert rc == 0
    assert "lonely.opt:2:1: warning: state `m` is never used" in err


def test_diagnostic_shows_control_characters_as_one_column_each():
    text = "optimizer X\nupdate {\n    weight -= lr\t* gard\x01\n}\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "x.opt")
    rendered = str(info.value)
    assert "\x01" not in rendered and "\t" not in rendered
    assert "x.opt:3:24: error: unexpected character `\\x01`\n 3 |     weight -= lr * gard?\n   |" \
        "                        ^" in rendered


def test_checker_names_cover_the_runtime_optimizer():
    """A hyperparameter is stored as an attribute: it must not shadow anything the base class has."""
    import numpy as np  # noqa: F401
    from optforge.codegen.check import BASE_NAMES, OPTIMIZER_ATTRS, RESERVED
    from optforge.optimizer import Optimizer
    public = {n for n in dir(Optimizer) if not n.startswith("_")}
    public |= {n for n in vars(Optimizer()) if not n.startswith("_")}
    missing = public - OPTIMIZER_ATTRS - BASE_NAMES - RESERVED
    assert not missing, f"add to OPTIMIZER_ATTRS in codegen/check.py: {sorted(missing)}"


@pytest.mark.parametrize("name", ["chunks", "i", "gi", "C", "T", "k_lr", "k3", "p_mean", "red0", "H0", "B1",
                                  "op_max", "u_rows", "xp", "be", "rows", "fabs"])
def test_locals_named_like_the_generated_codes_own_names_are_refused(name):
    """A local that the NumPy or C++ kernels would confuse with their own names is a compile error."""
    from optforge.codegen.compile import load_spec_text
    from optforge.codegen.errors import SpecError
    text = f"optimizer Clash\nupdate {{\n    {name} = grad * 2\n    weight -= lr * {name}\n}}\n"
    with pytest.raises(SpecError, match=f"name `{name}` clashes with a name the generated code uses"):
        load_spec_text(text, "clash.opt")


@pytest.mark.parametrize("name, candidates, expected", [
    ("betal", ["beta1", "beta2", "epsilon"], ["beta1"]),         # `l` for `1`: a look-alike is half a typo
    ("beta3", ["beta1", "beta2"], ["beta1", "beta2"]),           # equally near: both, in order
    ("Beta1", ["beta1", "beta2"], ["beta1"]),                    # the same letter in the other case
    ("mom", ["moms", "mon"], ["mon"]),                           # one typo each: the same length first
    ("vra", ["var", "vr"], ["var"]),                             # two neighbours swapped is one typo
    ("momentum", ["mean", "var"], []),                           # nothing similar: no suggestion
])
def test_suggestions_prefer_the_nearest_name(name, candidates, expected):
    from optforge.codegen.errors import close_names, did_you_mean
    assert close_names(name, candidates) == expected
    hint = did_you_mean(name, candidates)
    if not expected:
        assert hint is None
    else:
        assert hint == "did you mean " + " or ".join(f"`{c}`" for c in expected) + "?"


def test_state_initialised_from_a_hyperparameter_has_no_false_diagnostics():
    """`state m = init` (a hyperparameter): no `used before it is assigned`, no `never used`."""
    text = ("optimizer Init\nhyper init: float = 0.1\nstate m = init\nstate n: scalar = init\n"
            "update {\n    m = m + grad\n    n = n * 2\n    weight -= lr * n * m\n}\n")
    spec, warnings = load_spec_text(text, "init.opt")
    assert [w.render() for w in warnings] == []
    assert [s.name for s in spec.states] == ["m"] and [s.name for s in spec.scalar_states] == ["n"]


@pytest.mark.parametrize("body, messages", [
    # independent mistakes: each reported, at its own line
    ("  m = a +\n  weight -= 1\n  y = = 2\n", [(4, "expected an expression after `-`"), (5, "expected an expression after `=`")]),
    ("  m = 1; n = 2\n  k = 3 $ 4\n", [(3, "unexpected character `;`"), (4, "unexpected character `$`")]),
    ("  m = 1 ^ 2\n  weight -= lr * grad\n  n = (1 - 2) grad\n",
     [(3, "unexpected character `^`"), (5, "missing `=` after `grad`")]),
    # the file's blocks cannot be told apart: the first error only, no guesses after it
    ("  if x > 0 weight = 1\n  }\n  weight = 2\n", [(3, "an `if` body goes in braces")]),
    ("  m = 0.9 * (m + grad\n  weight -= lr * m\n  x = = 3\n", [(3, "unclosed `(`")]),
])
def test_syntax_recovery_reports_independent_errors_only(body, messages):
    text = "optimizer X\nupdate {\n" + body + "}\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "x.opt")
    assert [(d.span.line, d.message) for d in info.value.errors] == messages


def test_power_with_a_caret_hints_at_two_stars():
    with pytest.raises(SpecError) as info:
        load_spec_text("optimizer X\nupdate {\n    weight -= lr * beta1 ^ t * grad\n}\n", "x.opt")
    (d,) = info.value.errors
    assert (d.span.line, d.span.col, d.message) == (3, 26, "unexpected character `^`")
    assert d.hint == "write `**` for a power: `beta1 ** t`; `^` is not an operator"
