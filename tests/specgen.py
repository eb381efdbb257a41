"""Random well-typed specs for the differential tests (tests/test_differential.py and, on CuPy or
its host stand-in, tests/gpu/test_differential_cuda.py).

`specs()` is a hypothesis strategy of spec texts written the way a new user writes them: locals,
states (one of them conditional), in-place weight updates, `norm`/`sum` nested anywhere in
elementwise expressions, in host statements and in `if`/`elif` conditions and bodies, host `if`s
on hyperparameters and on an optional (`float?`) hyperparameter that may be none, `where`, `clip`,
a scalar state, a global, and `sparse lazy` where the spec allows it. Expressions are built so
that values stay finite and well away from overflow over a few steps (denominators are `1 + |x|`,
`exp` only of `-|x|`), so that any difference between backends larger than rounding is a bug.

`run(cls, backend, ...)` runs a few steps of one compiled spec on a fixed set of parameters and
returns every array and number the update left behind, for comparison with `assert_same`.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings

import numpy as np
import hypothesis
from hypothesis import HealthCheck, Phase, strategies as st

import optforge
from optforge.codegen.errors import SpecError
from optforge.sparse import RowSparse

REL = 1e-12
STEPS = 3
EXAMPLES = int(os.environ.get("OPTFORGE_DIFF_EXAMPLES", "200"))
SEED = int(os.environ.get("OPTFORGE_DIFF_SEED", "0"))
# hypothesis settings of the differential tests: a fixed campaign unless a seed is given; shrinking
# recompiles every candidate, so it is off unless asked for (OPTFORGE_DIFF_SHRINK=1)
SETTINGS = dict(max_examples=EXAMPLES, deadline=None, derandomize=SEED == 0, database=None,
                phases=list(Phase) if os.environ.get("OPTFORGE_DIFF_SHRINK") else [Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


# shaped specs (their own, smaller campaign: OPTFORGE_DIFF_SHAPED_EXAMPLES)
SHAPED_SETTINGS = dict(SETTINGS, max_examples=int(os.environ.get("OPTFORGE_DIFF_SHAPED_EXAMPLES", "40")))
# matrix specs (OPTFORGE_DIFF_MATRIX_EXAMPLES)
MATRIX_SETTINGS = dict(SETTINGS, max_examples=int(os.environ.get("OPTFORGE_DIFF_MATRIX_EXAMPLES", "30")))


def seeded(test):
    """The test with OPTFORGE_DIFF_SEED as hypothesis's seed, when one is given."""
    return hypothesis.seed(SEED)(test) if SEED else test


class _Gen:
    """One spec being written: the names in scope and the statements so far."""

    def __init__(self, draw, shaped=False):
        self.draw = draw
        self.shaped = shaped   # per-row/col/block states, reductions along an axis, shape facts
        self.tensor_locals: list[str] = []
        self.host_locals: list[str] = []
        self.n = 0
        self.uses_cond_state = False

    def fresh(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    # ---- expressions -------------------------------------------------------------------------
    def tensor_leaf(self, scope):
        choices = ["grad", "weight", "s0", "s1"] + list(scope["tensors"])
        if scope["mom"]:
            choices.append("mom")
        if self.shaped:
            choices += ["r0", "c0", "q0"]
        return self.draw(st.sampled_from(choices))

    def tensor(self, scope, depth=0):
        if depth >= 3 or self.draw(st.integers(0, 3)) == 0:
            return self.tensor_leaf(scope)
        a = lambda: self.tensor(scope, depth + 1)  # noqa: E731
        h = lambda: self.host(scope, depth + 1)  # noqa: E731
        form = self.draw(st.integers(0, 22 if self.shaped else 17))
        if form >= 18:   # along an axis (of a full-shaped value: `+ grad`), and outer products
            full = f"({a()} + {self.draw(st.sampled_from(['grad', 'weight']))})"
            if form == 18:
                return f"mean(square({full}), -1)"
            if form == 19:
                return f"max({full}, -2) * {h()}"
            if form == 20:
                return f"{a()} / (1 + rms({full}, {self.draw(st.sampled_from(['-1', '-2']))}))"
            if form == 21:
                return f"(r0 * c0 + min({full}, -1)) / (1 + abs(q0))"
            return f"norm({full}, -2) / (1 + sum(abs({full}), -1))"
        if form == 0:
            return f"({a()} + {a()})"
        if form == 1:
            return f"({a()} - {a()}) * 0.5"
        if form == 2:
            return f"{a()} * {h()}"
        if form == 3:
            return f"{a()} / (1 + abs({a()}))"
        if form == 4:
            return f"sqrt(abs({a()}) + 1)"
        if form == 5:
            return f"where({a()} > {a()}, {a()}, {h()})"
        if form == 6:
            return f"maximum({a()}, {h()})"
        if form == 7:
            return f"clip({a()}, {self.bound(scope)})"
        if form == 8:
            return f"sign({a()}) * exp(-abs({a()}))"
        if form == 9:
            return f"{a()} / (1 + norm({a()}))"
        if form == 10:
            return f"({a()} - sum({a()}) / (1 + abs(sum({a()}))))"
        if form == 11:
            return f"minimum(square({a()}) * 0.25, 2)"
        if form == 12:
            return f"log(1 + abs({a()}))"
        if form == 13:
            return f"{h()} * {a()} + {a()}"
        if form == 14:   # a host test picks a side; `c` is a number only on the first
            if self.draw(st.booleans()):
                return f"where(c > 0.5, {a()} * c, {a()})"
            return f"where(flag, {a()}, {h()} * {a()})"
        if form == 15 and scope["masks"]:
            return f"where({self.draw(st.sampled_from(scope['masks']))}, {a()}, {a()})"
        if form == 16:
            if self.shaped:   # `%` jumps by 0.75: only of a bounded value (an unscaled sum's rounding could cross a jump)
                d = a()
                return f"where({a()} > 0 and not ({a()} < -0.5), {a()} ** 2, ({d} / (1 + abs({d}))) % 0.75)"
            return f"where({a()} > 0 and not ({a()} < -0.5), {a()} ** 2, {a()} % 0.75)"
        return f"{a()} * {h()} / (1 + abs({h()}))"

    def bound(self, scope):
        opts = ["clip_gradient", "0.75", "b"]
        if scope["narrowed"]:
            opts.append("c")
        return self.draw(st.sampled_from(opts))

    def host(self, scope, depth=0, reduce=True):
        """A number known on the host; with `reduce`, possibly computed from tensors."""
        leaves = ["a", "b", "lr", "wd", "0.5", "t", "acc"] + list(scope["hosts"])
        if reduce:
            leaves += scope["reduced"]
        if scope["narrowed"]:
            leaves.append("c")
        if depth >= 3 or self.draw(st.integers(0, 2)) == 0:
            return self.draw(st.sampled_from(leaves))
        h = lambda: self.host(scope, depth + 1, reduce)  # noqa: E731
        form = self.draw(st.integers(2 if not reduce else 0, 11 if self.shaped else 7))
        if form == 8:    # shape facts and the dtype's epsilon: host numbers known before tensor work
            return self.draw(st.sampled_from(["1 / (1 + numel(r0))", "size(weight, -1) * 0.1", "ndim(weight) * 0.25",
                                              "dtype_eps * 1e12", "numel(c0) / (1 + numel(weight))"]))
        if form >= 9 and not reduce:
            form = 3
        if form == 9:
            return f"max({self.tensor(scope, depth + 1)}) / (1 + abs(min({self.tensor(scope, depth + 1)})))"
        if form == 10:
            return f"rms({self.tensor(scope, depth + 1)}) * 0.5"
        if form == 11:
            return f"mean({self.tensor(scope, depth + 1)})"
        if form == 0:
            return f"norm({self.tensor(scope, depth + 1)}) / (1 + norm({self.tensor(scope, depth + 1)}))"
        if form == 1:
            return f"sum({self.tensor(scope, depth + 1)}) * 0.001"
        if form == 2:
            return f"1 / (1 + abs({h()}))"
        if form == 3:
            return f"({h()} * {h()})"
        if form == 4:
            return f"where({self.host_cond(scope, depth + 1, reduce)}, {h()}, {h()})"
        if form == 5:
            return f"maximum({h()}, 0.25)"
        if form == 6:
            return f"sqrt(square({h()}) + 1)"
        return f"({h()} - {h()})"

    def host_cond(self, scope, depth=0, reduce=True):
        """A test known on the host (`if` conditions: without reductions)."""
        form = self.draw(st.integers(0, 6))
        if form == 5 and not reduce:
            form = 3
        if form == 0:
            return "flag"
        if form == 1:
            return f"a > {self.draw(st.sampled_from(['0.25', '0.5', '0.75']))}"
        if form == 2:
            return 'mode == "x"'
        if form == 3:
            return "t > 1"
        if form == 4:
            return "c > 0.5" if not self.shaped or self.draw(st.booleans()) else "ndim(weight) >= 2"
        if form == 5:
            return f"norm({self.tensor(scope, depth + 1)}) > {self.draw(st.sampled_from(['1', '10', '100']))}"
        return f"not flag or {self.host(scope, depth + 1, reduce)} > 0.5"

    # ---- statements --------------------------------------------------------------------------
    @staticmethod
    def inner(scope, **changes):
        """The scope of a branch: names assigned inside it are not visible after it."""
        return dict(scope, tensors=list(scope["tensors"]), hosts=list(scope["hosts"]),
                    reduced=list(scope["reduced"]), masks=list(scope["masks"]), **changes)

    def block(self, scope, n, depth):
        out = []
        for _ in range(n):
            out += self.stmt(scope, depth)
        return out

    def stmt(self, scope, depth):
        pad = "    " * (depth + 1)
        form = self.draw(st.integers(0, 9 if depth < 2 else 6))
        if form <= 1:
            name = self.fresh("u")
            line = f"{pad}{name} = {self.tensor(scope)}"
            scope["tensors"].append(name)
            return [line]
        if form == 2:
            name = self.fresh("h")
            reduce = self.draw(st.booleans())
            line = f"{pad}{name} = {self.host(scope, reduce=reduce)}"
            scope["reduced" if reduce else "hosts"].append(name)
            return [line]
        if form == 3:
            target = self.draw(st.sampled_from(["s0", "s1"] + (["mom"] if scope["mom"] else [])))
            op = self.draw(st.sampled_from(["=", "+="]))
            value = self.tensor(scope)
            if op == "=":
                return [f"{pad}{target} = a * {target} + (1 - a) * ({value})"]
            return [f"{pad}{target} += 0.1 * ({value})"]
        if form == 4:
            op = self.draw(st.sampled_from(["-=", "=", "*="]))
            value = self.tensor(scope)
            if op == "-=":
                return [f"{pad}weight -= lr * ({value})"]
            if op == "*=":
                return [f"{pad}weight *= 1 - lr * wd / (1 + abs({value}))"]
            return [f"{pad}weight = weight - lr * ({value}) - lr * wd * weight"]
        if form == 5:
            if self.shaped and self.draw(st.booleans()):
                return [self.draw(st.sampled_from([
                    f"{pad}r0 = a * r0 + (1 - a) * mean(square({self.tensor(scope)} + grad), -1)",
                    f"{pad}c0 = maximum(c0 * 0.5, max(abs({self.tensor(scope)} + weight), -2))",
                    f"{pad}q0 = 0.5 * q0 + sum(r0, -2) * 0.01 + max(c0, -1) * {self.host(scope)}",
                    f"{pad}r0 += 0.1 * (sqrt(abs(q0) + 1) - r0) * min({self.tensor(scope)} + grad, -1)",
                ]))]
            return [f"{pad}acc = acc * 0.5 + {self.host(scope, reduce=False)} * 0.01"]
        if form == 6:
            if self.draw(st.booleans()):
                name = self.fresh("m")
                line = f"{pad}{name} = {self.tensor(scope)} > {self.tensor(scope)} or grad > 0.5"
                scope["masks"].append(name)
                return [line]
            return [f"{pad}weight = weight / (1 + lr * norm({self.tensor(scope)}))"]
        # an if / elif / else
        kind = self.draw(st.sampled_from(["plain", "plain", "optional", "state"] + (["shape"] if self.shaped else [])))
        lines = []
        if kind == "shape":   # a state that exists for matrices only, used where it exists
            lines.append(f"{pad}if ndim(weight) >= 2 {{")
            lines.append(f"{pad}    v0 = a * v0 + (1 - a) * ({self.tensor(scope)})")
            lines += self.block(self.inner(scope), self.draw(st.integers(0, 2)), depth + 1)
            lines.append(f"{pad}    weight -= lr * 0.1 * v0")
            lines.append(f"{pad}}}")
            return lines
        if kind == "optional":
            inner = self.inner(scope, narrowed=True)
            lines.append(f"{pad}if c > 0 {{")
            lines += self.block(inner, self.draw(st.integers(1, 3)), depth + 1)
            if self.draw(st.booleans()):    # c may be none here
                lines.append(f"{pad}}} else {{")
                lines += self.block(self.inner(scope), self.draw(st.integers(1, 2)), depth + 1)
            lines.append(f"{pad}}}")
            return lines
        if kind == "state":
            self.uses_cond_state = True
            inner = self.inner(scope, mom=True)
            lines.append(f"{pad}if flag {{")
            lines += self.block(inner, self.draw(st.integers(1, 3)), depth + 1)
            lines.append(f"{pad}}}")
            return lines
        n_elif = self.draw(st.integers(0, 1))
        has_else = self.draw(st.booleans())
        for k in range(1 + n_elif):
            inner = self.inner(scope)
            lines.append(f"{pad}{'if' if k == 0 else '} elif'} {self.host_cond(scope, reduce=False)} {{")
            lines += self.block(inner, self.draw(st.integers(1, 3)), depth + 1)
        if has_else:
            inner = self.inner(scope)
            lines.append(f"{pad}}} else {{")
            lines += self.block(inner, self.draw(st.integers(1, 2)), depth + 1)
        lines.append(f"{pad}}}")
        return lines


HEADER = """optimizer {name}
hyper a: float = 0.5 in [0, 1]
hyper b: float = 1.5 in [0, 4]
hyper c: float? = none
hyper flag: bool = true
hyper mode: choice("x", "y") = "x"
state s0 = zeros
state s1 = weight
state mom = zeros if flag
state acc: scalar = 0.25
global seen = learning_rate
"""


SHAPED_HEADER = """state r0: per_row = zeros
state c0: per_col = 0.5
state q0: per_block = zeros
state v0 = zeros if ndim(weight) >= 2
"""


@st.composite
def shaped_specs(draw, name="Rand"):
    """(spec text, False): a random spec with states of other shapes (per row, col, block; one only for
    matrices), reductions along an axis, whole-tensor max/min/mean/rms, shape facts and both views."""
    g = _Gen(draw, shaped=True)
    scope = {"tensors": [], "hosts": [], "reduced": [], "masks": [], "narrowed": False, "mom": False}
    body = g.block(scope, draw(st.integers(2, 7)), 0)
    body.append("    weight -= lr * 0.01 * grad * (r0 + c0)")
    view = draw(st.sampled_from(["", "view batched\n", "view flat\n"]))
    text = HEADER.format(name=name) + SHAPED_HEADER + view + "update {\n" + "\n".join(body) + "\n}\n"
    return text, False


MATRIX_HEADER = """hyper k: int = 2 in [0, 3]
state lm: rows_x_rows = eye
state rm: cols_x_cols = 0.5 * eye
"""


@st.composite
def matrix_specs(draw, name="Rand"):
    """(spec text, False): a random spec with matrix products of every shape (rows x rows, cols x
    cols, transposed operands, operands computed from expressions, chains), matrix states starting
    from the identity, `eye(x)` values, `repeat` loops (a Newton-Schulz-like iteration, a loop updating the weight),
    whole reductions of products, amid the elementwise statements of `specs()`, in all three views.
    Products are scaled by norms, so values stay bounded."""
    g = _Gen(draw)
    scope = {"tensors": [], "hosts": [], "reduced": [], "masks": [], "narrowed": False, "mom": False}
    body = g.block(scope, draw(st.integers(0, 2)), 0)
    pad = "    "

    def x():
        return f"({g.tensor(scope)})"
    for _ in range(draw(st.integers(1, 4))):
        form = draw(st.integers(0, 7))
        if form == 0:
            p = g.fresh("p")
            body += [f"{pad}{p} = {x()} @ transpose({x()})",
                     f"{pad}lm = a * lm + (1 - a) * {p} / (1 + norm({p}))"]
        elif form == 1:
            q = g.fresh("q")
            body += [f"{pad}{q} = transpose({x()}) @ {draw(st.sampled_from(['grad', 'weight', x()]))}",
                     f"{pad}rm = where(flag, 0.5 * rm, a * rm) + {q} / (1 + norm({q}))"]
        elif form == 2:
            u = g.fresh("u")
            body.append(f"{pad}{u} = (lm @ {x()} + {x()} @ rm) / (1 + norm(lm) + sum(abs(rm)))")
            scope["tensors"].append(u)
        elif form == 3:
            v, m = g.fresh("v"), g.fresh("n")
            left = draw(st.booleans())
            body += [f"{pad}{v} = {x()} / (1 + norm(grad) + norm(weight))",
                     f"{pad}repeat k {{",
                     f"{pad}    {m} = {v} @ transpose({v})" if left else f"{pad}    {m} = transpose({v}) @ {v}",
                     f"{pad}    {v} = 1.5 * {v} - 0.5 * ({m} @ {v})" if left else
                     f"{pad}    {v} = 1.5 * {v} - 0.5 * ({v} @ {m})",
                     f"{pad}}}"]
            scope["tensors"].append(v)
        elif form == 4:
            body.append(f"{pad}weight -= lr * 0.1 * (lm @ grad @ rm) / (1 + norm(lm) * norm(rm))")
        elif form == 7:   # an inverse-root-like iteration from the identity (Shampoo's coupled Newton)
            hm, pm = g.fresh("hm"), g.fresh("pm")
            body += [f"{pad}{hm} = 0.5 * eye(lm) + 0.1 * lm / (1 + norm(lm))",
                     f"{pad}repeat k {{",
                     f"{pad}    {pm} = 1.25 * eye(lm) - 0.25 * {hm}",
                     f"{pad}    {hm} = {hm} @ {pm}",
                     f"{pad}}}",
                     f"{pad}rm = rm + 0.01 * eye(rm) * sum({hm}) / (1 + abs(sum({hm})))"]
        elif form == 5:
            h = g.fresh("h")
            body.append(f"{pad}{h} = norm(transpose({x()}) @ lm) / (1 + {g.host(scope)})")
            scope["reduced"].append(h)
        else:
            body += [f"{pad}if k > 1 {{",
                     f"{pad}    repeat k - 1 {{",
                     f"{pad}        weight -= lr * 0.01 * (lm @ weight) / (1 + norm(lm))",
                     f"{pad}        acc = acc * 0.5 + {g.host(scope, reduce=False)} * 0.01",
                     f"{pad}    }}",
                     f"{pad}}}"]
    body.append(f"{pad}weight -= lr * 0.01 * grad * (1 + sum(lm) / (1 + abs(sum(lm))))")
    view = draw(st.sampled_from(["", "view batched\n", "view flat\n", "view matrix\n"]))
    text = HEADER.format(name=name) + MATRIX_HEADER + view + "update {\n" + "\n".join(body) + "\n}\n"
    return text, False


GATHER_SETTINGS = dict(SETTINGS, max_examples=int(os.environ.get("OPTFORGE_DIFF_GATHER_EXAMPLES", "40")))
GATHER_HEADER = """global gd = 0.5
"""


@st.composite
def gather_specs(draw, name="Rand"):
    """(spec text, False): a random spec with reductions over all the parameters of a call
    (`global_sum`, `global_norm`, `global_max`, `global_min` of tensors and of per-parameter numbers),
    values computed once per call from them, a global assigned from them and read before and after
    its assignment, amid the statements of `specs()`. Each reduction is used later, by host and
    elementwise statements, inside `if`s too."""
    g = _Gen(draw)
    scope = {"tensors": [], "hosts": ["gd"], "reduced": [], "masks": [], "narrowed": False, "mom": False}
    pad = "    "
    body = []
    gathered = []
    for _ in range(draw(st.integers(1, 4))):
        body += g.block(scope, draw(st.integers(0, 2)), 0)
        form = draw(st.integers(0, 6))
        n = g.fresh("g")
        if form == 0:
            body.append(f"{pad}{n} = global_sum({g.tensor(scope)}) * 0.001")
        elif form == 1:
            body.append(f"{pad}{n} = global_norm({g.tensor(scope)}) * 0.01")
        elif form == 2:
            body.append(f"{pad}{n} = global_max(abs({g.tensor(scope)}))")
        elif form == 3:
            body.append(f"{pad}{n} = global_min({g.tensor(scope)}) / (1 + abs(global_max({g.tensor(scope)})))")
        elif form == 4:   # of a number per parameter (a reduction, lr, t)
            body.append(f"{pad}{n} = global_sum({g.host(scope)}) / (1 + global_norm(lr * t + {g.host(scope)}))")
        elif form == 5 or not gathered:   # the global, from what the call gathered
            other = draw(st.sampled_from(gathered)) if gathered else "global_norm(grad)"
            body.append(f"{pad}gd = gd * a + (1 - a) * {other} / (1 + abs({other}))")
            continue
        else:   # once per call: a value computed from two of them
            x, y = draw(st.sampled_from(gathered)), draw(st.sampled_from(gathered))
            body.append(f"{pad}{n} = where({x} > {y}, {x} - {y}, b * {y}) / (1 + abs({x}) + abs({y}))")
        gathered.append(n)
        scope["reduced"].append(n)
    body += g.block(scope, draw(st.integers(1, 3)), 0)
    body.append("    seen = seen * 0.5 + learning_rate")
    last = gathered[-1] if gathered else "gd"
    body.append(f"    weight -= lr * seen * 0.01 * grad * (1 + gd) / (1 + abs({last}))")
    text = HEADER.format(name=name) + GATHER_HEADER + "update {\n" + "\n".join(body) + "\n}\n"
    return text, False


@st.composite
def specs(draw, name="Rand"):
    """(spec text, lazy) for a random spec named `name`; `lazy` says it declares `sparse lazy`."""
    g = _Gen(draw)
    scope = {"tensors": [], "hosts": [], "reduced": [], "masks": [], "narrowed": False, "mom": False}
    body = g.block(scope, draw(st.integers(2, 7)), 0)
    body.append("    seen = seen * 0.5 + learning_rate")
    body.append("    weight -= lr * seen * 0.01 * grad")
    lazy = draw(st.booleans())
    # option host_arithmetic: the kernels take hyperparameter arithmetic computed on the host instead
    host = "option host_arithmetic\n" if draw(st.booleans()) else ""
    text = HEADER.format(name=name) + host + ("sparse lazy\n" if lazy else "") + "update {\n" + "\n".join(body) + "\n}\n"
    return text, lazy


STORAGE_SETTINGS = dict(SETTINGS, max_examples=int(os.environ.get("OPTFORGE_DIFF_STORAGE_EXAMPLES", "15")))
STORAGES = ["", " as bf16", " as f16", " as f32", " as int8(16)", " as uint8(16, \"linear\")", " as int8(16, \"linear\")",
            " as uint8(16)"]


@st.composite
def storage_specs(draw, name="Rand"):
    """(spec text, lazy): a spec of `specs()` whose tensor states declare their storage (16-bit
    floats, float32, 8-bit blockwise codes in blocks of 16 with either table). 8-bit states the
    kernels cannot encode where the spec writes them (a stage that also reduces, `sparse lazy`)
    are stored as bfloat16 instead (compile_spec)."""
    text, lazy = draw(specs(name))
    for decl in ("state s0 = zeros", "state s1 = weight", "state mom = zeros"):
        text = text.replace(decl + "\n", decl + draw(st.sampled_from(STORAGES)) + "\n", 1) if decl != "state mom = zeros" \
            else text.replace(decl + " if flag", decl + draw(st.sampled_from(STORAGES)) + " if flag", 1)
    return text, lazy


# ---- running a compiled spec ---------------------------------------------------------------------
def compile_spec(text, lazy):
    """(class, text, lazy): a spec whose reductions have no row meaning drops `sparse lazy` (a
    compile error the generator does not try to avoid)."""
    name = "Rand" + hashlib.sha256(text.encode()).hexdigest()[:10]
    text = text.replace("optimizer Rand", f"optimizer {name}", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return optforge.load_spec(text, register=False), text, lazy
        except SpecError as e:
            stored = re.search(r"state `(\w+)` is stored .* read here, after the step", str(e))
            if stored:   # (storage_specs: a stored state read after its stage stores it keeps the weight's type)
                text = re.sub(rf"(state {stored.group(1)} = \w+) as [^\n]*?( if flag)?\n", r"\1\2\n", text)
                return compile_spec(text, lazy)
            if "8-bit" in str(e):   # (storage_specs: where a block cannot be encoded, bfloat16)
                text = re.sub(r" as u?int8\([^)]*\)", " as bf16", text)
                return compile_spec(text, lazy)
            if not lazy or "row-sparse (lazy)" not in str(e):
                raise
            text = text.replace("sparse lazy\n", "", 1)
            return optforge.load_spec(text, register=False), text, False


def run(cls, backend, hyper, *, as_list, rows=None, xp=np, shapes=None):
    """STEPS updates of every parameter (arrays of `xp`: numpy or cupy); the snapshot of weights,
    states and globals after them."""
    ws, gs = params(xp, shapes=shapes or SHAPES)
    opt = cls(learning_rate=0.05, wd=0.01, **hyper)
    opt.backend = backend
    states = [opt.create_state(k, w) for k, w in enumerate(ws)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in gs:
            g = step if rows is None else [_rowsparse(x, rows) if x.ndim == 2 else x for x in step]
            if as_list:
                opt.update(list(range(len(ws))), ws, g, states)
            else:
                for k in range(len(ws)):
                    opt.update(k, ws[k], g[k], states[k])
    return snapshot(opt, ws, states, to_numpy=np.asarray if xp is np else xp.asnumpy)


def _rowsparse(g, rows):
    xp = optforge.ops._xp(g)
    rows = xp.asarray(np.asarray([r for r in rows if r < g.shape[0]], np.int64))
    return RowSparse(g[rows], rows, g.shape)


SHAPES = [(6, 5), (9,), (4, 3), (300, 250)]   # small ones are batched in native list updates; one large
# shaped specs: a vector, a 0-d parameter, a batch of matrices (blocks), and matrices wider and taller
# than the kernels' tiles (pieces of rows and of cols combined)
SHAPED_SHAPES = [(6, 5), (9,), (2, 3, 4), (), (3, 2100), (300, 250)]
# matrix specs: rows x rows and cols x cols matrices of every parameter stay small
MATRIX_SHAPES = [(6, 5), (9,), (2, 3, 4), (), (3, 7, 2), (40, 30)]


def params(xp=np, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    ws = [rng.uniform(-1, 1, s) for s in shapes]
    gs = [[rng.uniform(-1, 1, s) for s in shapes] for _ in range(3)]
    return [xp.asarray(w) for w in ws], [[xp.asarray(g) for g in step] for step in gs]


def hyper_sets():
    # the last with step control: the gradients clipped to a global norm as every kernel reads them
    return [{}, {"flag": False, "c": 0.8, "mode": "y"}, {"c": 0.3, "clip_gradient": 0.5, "a": 0.9, "max_grad_norm": 0.3}]


def snapshot(opt, weights, states, to_numpy=np.asarray):
    out = {}
    for k, (w, s) in enumerate(zip(weights, states)):
        out[f"w{k}"] = np.array(to_numpy(w))
        for name, v in s.tensors.items():
            out[f"{name}{k}"] = np.array(to_numpy(v))
        for name, v in s.scalars.items():
            out[f"{name}{k}"] = np.array(float(v))
    for name, v in opt._globals.items():
        out[f"global {name}"] = np.array(float(v))
    return out


def assert_same(got: dict, want: dict, what: str, spec: str):
    """Every array equal to the reference to REL relative to its largest value, plus the worst-case
    rounding of a float64 sum over the array (n * eps: backends add a reduction's terms in different
    orders, NumPy pairwise, the kernels in fixed per-thread shares). Any semantic difference (a stale
    tensor, a wrong branch) is orders of magnitude larger."""
    assert got.keys() == want.keys(), (what, sorted(got), sorted(want))
    for k in want:
        a, b = got[k], want[k]
        scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
        finite = np.isfinite(b)
        assert np.array_equal(np.isfinite(a), finite), f"{what}: {k} finite where the reference is not\n{spec}"
        err = float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else 0.0
        bound = (REL + b.size * np.finfo(np.float64).eps) * scale
        assert err <= bound, f"{what}: {k} differs by {err:.3g} (scale {scale:.3g}, bound {bound:.3g})\n{spec}"
