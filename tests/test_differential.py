"""Differential test of the whole compiler: random well-typed specs (tests/specgen.py), each run on
every CPU backend, must give what the NumPy straight-line kernel gives (float64, 1e-12 relative, plus
n * eps for an array of n elements, the rounding of a reduction summed in another order):

  NumPy chunked (large-tensor stages, forced here with tiny chunks), native single updates, native
  list updates (small tensors batched into multi-tensor calls, a large one alone), the row kernels
  of `sparse lazy` specs (NumPy and native) against the straight-line kernel on a gradient holding
  every row, and the lazy row kernels of both backends against each other on a subset of rows.

Shaped specs (states per row, col, block; reductions along an axis) have a generator and a test of
their own. CUDA runs the same specs in tests/gpu/test_differential_cuda.py (on a device, or on the host
stand-in through tests/test_cuda_runtime_host.py). Knobs for long campaigns:

    OPTFORGE_DIFF_EXAMPLES=2000 OPTFORGE_DIFF_SEED=7 python -m pytest -q tests/test_differential.py
"""
import numpy as np
import pytest
from hypothesis import given, settings

import optforge
from optforge import chunks, native

from specgen import (GATHER_SETTINGS, MATRIX_SETTINGS, MATRIX_SHAPES, SETTINGS, SHAPED_SETTINGS, SHAPED_SHAPES,
                     STORAGE_SETTINGS, assert_same, compile_spec, gather_specs, hyper_sets, matrix_specs, run, seeded,
                     shaped_specs, specs, storage_specs)

SOME_ROWS = [0, 2, 3, 7, 100, 299]


def check_spec(text, lazy, monkeypatch):
    cls, text, lazy = compile_spec(text, lazy)
    for hyper in hyper_sets():
        want = run(cls, "numpy", hyper, as_list=False)
        with monkeypatch.context() as m:
            m.setattr(chunks, "MIN_SIZE", 1)
            m.setattr(chunks, "CHUNK", 997)
            m.setattr(chunks, "THREAD_MIN", 4096)
            assert_same(run(cls, "numpy", hyper, as_list=False), want, f"numpy chunked {hyper}", text)
        # a list update runs its once-per-call statements (the global) once, not once per parameter
        want_list = run(cls, "numpy", hyper, as_list=True)
        if native.available():
            assert_same(run(cls, "native", hyper, as_list=False), want, f"native single {hyper}", text)
            assert_same(run(cls, "native", hyper, as_list=True), want_list, f"native list {hyper}", text)
        if lazy:
            every = range(400)
            assert_same(run(cls, "numpy", hyper, as_list=False, rows=every), want, f"numpy rows (all) {hyper}", text)
            some = run(cls, "numpy", hyper, as_list=True, rows=SOME_ROWS)
            if native.available():
                assert_same(run(cls, "native", hyper, as_list=False, rows=every), want,
                            f"native rows (all) {hyper}", text)
                assert_same(run(cls, "native", hyper, as_list=True, rows=SOME_ROWS), some,
                            f"native rows (some) vs numpy rows {hyper}", text)


@seeded
@settings(**SETTINGS)
@given(specs())
def test_every_backend_computes_what_the_straight_line_kernel_computes(spec):
    text, lazy = spec
    mp = pytest.MonkeyPatch()
    try:
        check_spec(text, lazy, mp)
    finally:
        mp.undo()


@seeded
@settings(**STORAGE_SETTINGS)
@given(storage_specs())
def test_specs_storing_states_in_other_types_compute_the_same_on_every_backend(spec):
    """States declared `as bf16`, `as f16`, `as f32`, `as int8(16)` / `as uint8(16)` with either code
    table: every backend stores the same values (the kernels convert on load and store, NumPy
    updates copies in float64 and stores them back: in float64 the two round the same numbers), so
    weights, stored states, 8-bit codes and block scales agree as everywhere else."""
    text, lazy = spec
    mp = pytest.MonkeyPatch()
    try:
        check_spec(text, lazy, mp)
    finally:
        mp.undo()


@seeded
@settings(**SHAPED_SETTINGS)
@given(shaped_specs())
def test_shaped_specs_compute_on_every_backend_what_the_straight_line_kernel_computes(spec):
    """States per row, col and block, reductions along an axis, shape facts, both views: native
    single and list updates (tiled stages) against NumPy's broadcasting, on a vector, a 0-d
    parameter, a batch of matrices and matrices larger than a tile in each direction."""
    cls, text, _ = compile_spec(*spec)
    for hyper in hyper_sets():
        want = run(cls, "numpy", hyper, as_list=False, shapes=SHAPED_SHAPES)
        want_list = run(cls, "numpy", hyper, as_list=True, shapes=SHAPED_SHAPES)
        if native.available():
            assert_same(run(cls, "native", hyper, as_list=False, shapes=SHAPED_SHAPES), want, f"native {hyper}", text)
            assert_same(run(cls, "native", hyper, as_list=True, shapes=SHAPED_SHAPES), want_list,
                        f"native list {hyper}", text)


@seeded
@settings(**MATRIX_SETTINGS)
@given(matrix_specs())
def test_matrix_specs_compute_on_every_backend_what_the_straight_line_kernel_computes(spec):
    """Matrix products (library calls into scratch arrays) between fused stages, stages over the
    products' shapes, matrix states from the identity and `repeat` loops: native single and list
    updates against the straight-line NumPy kernel, in every view, on a vector, a 0-d parameter,
    batches of matrices and a matrix."""
    cls, text, _ = compile_spec(*spec)
    for hyper in hyper_sets() + [{"k": 0}, {"k": 3, "flag": False}]:
        want = run(cls, "numpy", hyper, as_list=False, shapes=MATRIX_SHAPES)
        want_list = run(cls, "numpy", hyper, as_list=True, shapes=MATRIX_SHAPES)
        if "max_grad_norm" not in hyper:   # (clipping: a list's norm is over all of it, a single call's its own)
            assert_same(want_list, want, f"numpy list {hyper}", text)
        if native.available():
            assert_same(run(cls, "native", hyper, as_list=False, shapes=MATRIX_SHAPES), want, f"native {hyper}", text)
            assert_same(run(cls, "native", hyper, as_list=True, shapes=MATRIX_SHAPES), want_list,
                        f"native list {hyper}", text)


@seeded
@settings(**GATHER_SETTINGS)
@given(gather_specs())
def test_specs_reducing_over_all_parameters_compute_on_every_backend_what_the_straight_line_kernel_computes(spec):
    """Optimizer-wide reductions (every parameter of a call meets, the interlude runs once): NumPy
    chunked, native single and list updates (small tensors batched, a large one alone) against the
    straight-line kernel, single-parameter calls against single, lists against lists."""
    cls, text, _ = compile_spec(*spec)
    mp = pytest.MonkeyPatch()
    try:
        for hyper in hyper_sets():
            want = run(cls, "numpy", hyper, as_list=False)
            want_list = run(cls, "numpy", hyper, as_list=True)
            with mp.context() as m:
                m.setattr(chunks, "MIN_SIZE", 1)
                m.setattr(chunks, "CHUNK", 997)
                m.setattr(chunks, "THREAD_MIN", 4096)
                assert_same(run(cls, "numpy", hyper, as_list=True), want_list, f"numpy chunked list {hyper}", text)
            if native.available():
                assert_same(run(cls, "native", hyper, as_list=False), want, f"native single {hyper}", text)
                assert_same(run(cls, "native", hyper, as_list=True), want_list, f"native list {hyper}", text)
    finally:
        mp.undo()


REPRO = """optimizer NormAfterStep
update {
    weight -= lr * grad
    weight = weight / norm(weight)
}
"""


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_norm_sees_the_weight_as_it_is_at_that_statement(backend):
    if backend == "native" and not native.available():
        pytest.skip("no C++ compiler")
    cls = optforge.load_spec(REPRO, register=False)
    opt = cls(learning_rate=0.1)
    opt.backend = backend
    w, g = np.linspace(1, 2, 5), np.linspace(-1, 3, 5)
    opt.update(0, w, g, opt.create_state(0, w))
    step = np.linspace(1, 2, 5) - 0.1 * np.linspace(-1, 3, 5)     # the reference, from the spec's two lines
    np.testing.assert_allclose(w, step / np.sqrt(np.sum(step ** 2)), rtol=1e-14)
    np.testing.assert_allclose(w, [0.34741654, 0.39479153, 0.44216651, 0.48954149, 0.53691648], rtol=1e-7)


WHERE_AXIS = """optimizer WhereAxis
hyper c: float? = none
state r: per_row = zeros
update {
    r = 0.5 * r
    r += 0.1 * where(c > 0.5, r * c, min(grad + weight, -1))
    weight -= lr * r * grad
}
"""


@pytest.mark.parametrize("c", [None, 0.8])
def test_a_reduction_along_an_axis_under_a_host_test_is_not_inlined_into_a_stage(c):
    """Found by a 120-spec campaign: the lifted reduction, guarded by the `where`'s test, joined the
    stage as an inlined `if` and reached the C emitter."""
    from specgen import SHAPED_SHAPES
    cls = optforge.load_spec(WHERE_AXIS, register=False)
    want = run(cls, "numpy", {"c": c}, as_list=False, shapes=SHAPED_SHAPES)
    if native.available():
        assert_same(run(cls, "native", {"c": c}, as_list=False, shapes=SHAPED_SHAPES), want, "native", WHERE_AXIS)


CLIP_ALIAS = """optimizer ClipAlias
state s0 = zeros
update {
    u = clip(s0, clip_gradient)
    s0 += 0.1 * grad
    weight -= lr * u
}
"""


@pytest.mark.parametrize("clip", [None, 0.05])
def test_a_local_clipped_from_a_state_keeps_the_value_it_had(clip):
    """Found by the CUDA campaign: with the bound off, ops.clip returns the state itself, so the
    straight-line kernel's `u` followed the state's later in-place update (the kernels keep a copy)."""
    cls = optforge.load_spec(CLIP_ALIAS, register=False)
    for backend in ["numpy"] + (["native"] if native.available() else []):
        opt = cls(learning_rate=0.1, clip_gradient=clip)
        opt.backend = backend
        w, s = np.zeros(4), None
        s = opt.create_state(0, w)
        g = np.array([1.0, -2.0, 3.0, 0.5])
        opt.update(0, w, g, s)     # u = clip(0) = 0: the weight stays 0
        assert np.all(w == 0), backend
        opt.update(0, w, g, s)     # u = clip(0.1 * g)
        want = -0.1 * (0.1 * g if clip is None else np.clip(0.1 * g, -clip, clip))
        np.testing.assert_allclose(w, want, rtol=1e-15)


WHERE_STATE = """optimizer WhereState
hyper a: float = 0.5 in [0, 1]
hyper flag: bool = true
state s0 = zeros
state s1 = weight
update {
    s1 = a * s1 + (1 - a) * (where(flag, s1, sum(weight) * 0.001) / (1 + abs(s0)))
    weight -= lr * s1
}
"""


def test_the_chunked_kernel_keeps_a_state_a_where_reads_by_reference(monkeypatch):
    """Found by a 120-spec campaign: the chunked kernel wrote `1 + abs(s0)` into s1 before the division
    read s1 through `s1 if flag else ...`."""
    cls = optforge.load_spec(WHERE_STATE, register=False)
    want = run(cls, "numpy", {}, as_list=False)
    monkeypatch.setattr(chunks, "MIN_SIZE", 1)
    monkeypatch.setattr(chunks, "CHUNK", 997)
    assert_same(run(cls, "numpy", {}, as_list=False), want, "numpy chunked", WHERE_STATE)
