"""Nothing from a spec reaches the generated Python except validated identifiers, numbers and
escaped text: hostile names, doc text, descriptions, choices, aliases, option arguments and file
names are either rejected with a SpecError or compiled to inert text. Each compiled module is
imported; injected code would set a sentinel on `builtins`."""
import ast
import builtins
import importlib.util
import math
import sys

import pytest

from optforge.codegen.compile import load_spec_text, render_module
from optforge.codegen.errors import SpecError

SENTINEL = "OPTFORGE_INJECTED"
CODE = f"__import__('builtins').{SENTINEL} = 1"
PAYLOADS = [
    f'"""\n{CODE}\n"""', f"'''\n{CODE}\n'''", f'"\n{CODE}\n#', f"'\n{CODE}\n#", f"\n{CODE}\n",
    f"\\\n{CODE}", "\\", "ends with a backslash \\", 'ends with a quote "', "ends with quotes \"\"", '"', '""""""',
    f"*/ {CODE} /*", f"// {CODE}", f"\x00{CODE}", f"\r{CODE}", f"\u2028{CODE}", f"\x0c{CODE}", f"\x1b[2J{CODE}",
    f"{{{{ {CODE} }}}}", f"{{% raw %}}{CODE}", f"%s {CODE} %(x)s", f"{{{CODE}}}", f"\t\t{CODE}\t",
    f"# {CODE}", f"\\N{{LATIN SMALL LETTER A}} {CODE}", "\ud7ff \uffff", f"\\x00 \\n \\' {CODE}",
]


def spec_literal(text: str) -> str:
    """`text` written as a spec "..." string: backslash, quote and control characters escaped."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f or ch in "\u2028\u2029":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def import_generated(source: str, tmp_path, name="injected_mod"):
    path = tmp_path / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # the runtime finds a class's module by name
    spec.loader.exec_module(module)
    return module


def compile_and_import(text, tmp_path, path="specs/victim.opt"):
    """None when the spec is rejected; otherwise the imported generated module."""
    try:
        spec, _ = load_spec_text(text, path)
    except SpecError as e:
        assert e.errors and str(e)
        return None
    source = render_module(spec)
    names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    assert not names & {"inf", "nan", "__import__", "exec", "eval", "builtins"}, names
    module = import_generated(source, tmp_path, "injected_" + tmp_path.name.replace("-", "_").replace(".", "_"))
    assert not hasattr(builtins, SENTINEL), "code from the spec ran on import"
    return module


@pytest.fixture(autouse=True)
def _no_sentinel():
    assert not hasattr(builtins, SENTINEL)
    yield
    injected = hasattr(builtins, SENTINEL)
    if injected:
        delattr(builtins, SENTINEL)
    assert not injected, "code from the spec ran"


def victim(doc="\"Doc.\"", desc="\"Description.\"", choices=('"a"', '"b"'), alias=None, option=None, suffix='"_b"'):
    lines = ["optimizer Victim"]
    if alias is not None:
        lines.append(f"alias {alias}")
    lines.append(f"doc {doc}")
    lines.append(f"hyper mode: choice({', '.join(choices)}) = {choices[0]}  {desc}")
    lines.append("hyper beta: float = 0.5 in [-inf, inf)  \"Plain.\"")
    if option is not None:
        lines.append(f"option {option}")
    lines.append("update {")
    lines.append(f"    if mode == {choices[-1]} and endswith(param_name, {suffix}) {{")
    lines.append("        weight -= lr * beta * grad")
    lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_doc_text_is_inert(payload, tmp_path):
    mod = compile_and_import(victim(doc=spec_literal(payload)), tmp_path)
    assert mod is not None, "any text is fine in a doc string"
    assert (CODE in payload) <= (CODE in mod.Victim.__doc__), "the text is kept, as text"


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_triple_quoted_doc_is_inert(payload, tmp_path):
    mod = compile_and_import(victim(doc='"""' + payload + '"""'), tmp_path)
    if mod is not None:
        assert mod.Victim.spec_name == "Victim"


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_hyper_description_is_inert(payload, tmp_path):
    mod = compile_and_import(victim(desc=spec_literal(payload)), tmp_path)
    assert mod is not None
    (mode,) = [h for h in mod.Victim.hyperparams if h.name == "mode"]
    assert mode.doc == payload.strip()


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_choices_and_string_constants_are_inert(payload, tmp_path):
    lit = spec_literal(payload)
    mod = compile_and_import(victim(choices=('"a"', lit), suffix=lit), tmp_path)
    if mod is not None:   # printable ASCII choices are accepted, as written
        (mode,) = [h for h in mod.Victim.hyperparams if h.name == "mode"]
        assert mode.choices == ("a", payload)
        opt = mod.Victim(mode=payload)
        assert opt.mode == payload


@pytest.mark.parametrize("payload", PAYLOADS + ["ok", "Victim2", "x y", "class", "_private", "a.b"],
                         ids=range(len(PAYLOADS) + 6))
def test_alias_is_an_identifier_or_rejected(payload, tmp_path):
    mod = compile_and_import(victim(alias=spec_literal(payload)), tmp_path)
    if mod is not None:
        assert payload.isidentifier() and payload in mod.Victim.aliases


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_option_arguments_are_inert(payload, tmp_path):
    mod = compile_and_import(victim(option=f"decay_suffixes({spec_literal(payload)}, \"_w\")"), tmp_path)
    if mod is not None:
        assert mod.Victim.options["decay_suffixes"] == (payload, "_w")
    compile_and_import(victim(option=f"unused({spec_literal(payload)})"), tmp_path)
    compile_and_import(victim(option=f"aggregate({spec_literal(payload)})"), tmp_path)


@pytest.mark.parametrize("name", [f"X\n{CODE}", f"X; {CODE}", "X(", "Ω", "class", "__init__", "np", "Optimizer"])
def test_optimizer_name_is_a_safe_identifier(name, tmp_path):
    assert compile_and_import(f"optimizer {name}\nupdate {{ weight -= lr * grad }}\n", tmp_path) is None


@pytest.mark.parametrize("path", [f"specs/x\n{CODE}\n.opt", "specs/x\r.opt", "specs/x\x00.opt", "specs/x\u2028.opt"])
def test_spec_path_with_control_characters_is_rejected(path, tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec_text("optimizer X\nupdate { weight -= lr * grad }\n", path)
    assert "control character" in str(info.value)
    assert "\n" + CODE not in str(info.value)


def test_quotes_and_backslashes_in_a_path_are_inert(tmp_path):
    mod = compile_and_import("optimizer X\nupdate { weight -= lr * grad }\n", tmp_path, path="specs/a'b\"c\\d\"\"\".opt")
    assert mod.X.spec_path == "specs/a'b\"c\\d\"\"\".opt"


@pytest.mark.parametrize("number", ["1e999", "1e400", "-1e999", "99999999999999999999", "1e-400", "nan", "inf",
                                    "1" * 5000, "1e" + "9" * 50])
@pytest.mark.parametrize("where", ["default", "expr", "range", "option", "state"])
def test_numbers_are_finite_or_rejected(number, where, tmp_path):
    decl = {"default": f"hyper h: float = {number}", "expr": "hyper h: float = 1.0",
            "range": f"hyper h: float = 1.0 in [0, {number}]", "option": "hyper h: float = 1.0",
            "state": "hyper h: float = 1.0"}[where]
    extra = {"option": f"option aggregate({number})", "state": f"state s = {number}"}.get(where, "")
    use = f"h * {number}" if where == "expr" else "h"
    use += " * s" if where == "state" else ""
    text = f"optimizer X\n{decl}\n{extra}\nupdate {{ weight -= lr * {use} * grad }}\n"
    mod = compile_and_import(text, tmp_path)
    if mod is None:
        return
    for h in mod.X.hyperparams:
        assert not (isinstance(h.default, float) and (math.isnan(h.default) or math.isinf(h.default)))
        assert not math.isnan(h.lo) and not math.isnan(h.hi)
    mod.X()   # constructs: the defaults pass their own range checks


def test_infinite_range_bounds_render_as_float_inf(tmp_path):
    mod = compile_and_import(victim(), tmp_path)
    (beta,) = [h for h in mod.Victim.hyperparams if h.name == "beta"]
    assert beta.lo == -math.inf and beta.hi == math.inf


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_no_spec_text_reaches_the_cpp_and_cuda_sources(payload, tmp_path):
    """The C++ and CUDA emitters write numbers, identifiers and `file:line` comments only: doc text,
    descriptions, choices and string constants stay on the host side."""
    from optforge.codegen.emit_c import CpuEmitter, CudaEmitter
    text = victim(doc=spec_literal(payload), desc=spec_literal(payload),
                  choices=(spec_literal(payload), '"b"'), suffix=spec_literal(payload))
    try:
        spec, _ = load_spec_text(text, "specs/victim.opt")
    except SpecError:
        return
    for emitter in (CpuEmitter, CudaEmitter):
        source = emitter(spec).render()
        assert SENTINEL not in source and "Doc." not in source and "Description." not in source


def test_cpp_source_of_a_hostile_spec_compiles(tmp_path):
    import shutil
    import subprocess
    from optforge.codegen.emit_c import CpuEmitter
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    spec, _ = load_spec_text(victim(doc=spec_literal(PAYLOADS[0]), desc=spec_literal(PAYLOADS[2])),
                             "specs/victim.opt")
    src = tmp_path / "victim.cpp"
    src.write_text(CpuEmitter(spec).render())
    r = subprocess.run([cxx, "-fsyntax-only", "-std=c++14", "-fopenmp", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("folder", ['evil\nimport os; os.system("touch PWNED")\n#', "evil\rraise SystemExit #",
                                    "evil\u2028y\x1bz"])
def test_a_spec_folder_name_reaches_generated_code_only_escaped(folder, tmp_path, monkeypatch):
    """The generated headers name the spec by its folder and file: a folder whose name holds a newline
    (or any other unprintable character) is written escaped, so importing the package runs nothing."""
    from optforge.codegen import cli
    src = tmp_path / folder
    src.mkdir()
    (src / "tiny.opt").write_text("optimizer Tiny\nupdate {\n    weight -= lr * grad\n}\n")
    monkeypatch.chdir(src)   # the spec's own path is then printable; its folder's name is not
    assert cli.main(["tiny.opt", "-o", str(tmp_path / "pkg_inj")]) == 0
    for f in ("tiny.py", "tiny.cpp", "tiny.cu"):
        text = (tmp_path / "pkg_inj" / f).read_text()
        first = text.splitlines()[0]
        assert first.startswith(("# Generated by opt-compile from evil", "// Generated by opt-compile from evil"))
        assert "tiny.opt (sha256" in first, first
    ast.parse((tmp_path / "pkg_inj" / "tiny.py").read_text())
    spec = importlib.util.spec_from_file_location("pkg_inj", tmp_path / "pkg_inj" / "__init__.py",
                                                  submodule_search_locations=[str(tmp_path / "pkg_inj")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pkg_inj"] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop("pkg_inj", None)
        sys.modules.pop("pkg_inj.tiny", None)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("where", ['doc """a \ud800 b"""', 'hyper h: float = 1.0 "x \udfff"', 'alias "a\udc80"'])
def test_a_lone_surrogate_is_a_spec_error_not_a_broken_module(where):
    """Text no file can hold (a lone surrogate, e.g. from an escape in a notebook string) is refused
    with its position, by the compiler and by load_spec, instead of compiling into a module that fails."""
    import optforge
    text = f"optimizer Sur\n{where}\nupdate {{\n    weight -= lr * grad\n}}\n"
    for compile_ in (lambda: load_spec_text(text, "sur.opt"), lambda: optforge.load_spec(text, register=False)):
        with pytest.raises(SpecError, match=r":2:\d+: error: the spec holds a lone surrogate character"):
            compile_()


def test_a_symlinked_spec_folder_is_named_by_its_target_escaped(tmp_path, monkeypatch):
    """A spec folder reached through a symlink: the header names the folder the link resolves to,
    escaped like any other name, and the compiled package imports without running anything."""
    from optforge.codegen import cli
    target = tmp_path / 'real\nimport os; os.system("touch PWNED")\n#'
    target.mkdir()
    (target / "tiny.opt").write_text("optimizer Tiny\nupdate {\n    weight -= lr * grad\n}\n")
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["link", "-o", str(tmp_path / "pkg_link")]) == 0
    first = (tmp_path / "pkg_link" / "tiny.py").read_text().splitlines()[0]
    assert first.startswith("# Generated by opt-compile from real\\nimport os") and first.endswith(")."), first
    ast.parse((tmp_path / "pkg_link" / "tiny.py").read_text())
    assert not (tmp_path / "PWNED").exists()
