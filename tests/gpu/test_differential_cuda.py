"""The differential test of tests/test_differential.py on the CUDA backend: random well-typed specs
(tests/specgen.py) run as CUDA single updates, CUDA list updates (multi-tensor launches, reductions
in lockstep) and, for `sparse lazy` specs, CUDA row kernels, and must give what the NumPy
straight-line kernel gives (float64, 1e-12 relative). Needs CuPy and a device, or the host
stand-in (tests/test_cuda_runtime_host.py runs this folder on it). Knobs as there:
OPTFORGE_DIFF_CUDA_EXAMPLES, OPTFORGE_DIFF_SEED, OPTFORGE_DIFF_SHRINK."""
import os
import sys

import pytest
from hypothesis import given, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpu import require_cupy  # noqa: E402

cupy = require_cupy()
from specgen import (MATRIX_SHAPES, SETTINGS, SHAPED_SHAPES, assert_same, compile_spec, gather_specs,  # noqa: E402
                     hyper_sets, matrix_specs, run, seeded, shaped_specs, specs)

SOME_ROWS = [0, 2, 3, 7, 100, 299]


def _run(cls, backend, hyper, **kw):
    """specgen.run; with step control (max_grad_norm), the CUDA run takes the gradients' factors the
    NumPy run computed: the norm of a CuPy array is summed in another order (1e-16 apart), which a
    random spec may amplify past the kernels' bound; the factor itself is tested against torch
    (tests/test_step_control.py), this test tests the kernels."""
    import optforge.optimizer as base
    if "max_grad_norm" not in hyper:
        return run(cls, backend, hyper, **kw)
    original = base.grad_scale
    cuda_run = kw.get("xp") is cupy
    key = (cls, kw.get("as_list"), str(kw.get("shapes")))   # (all rows of a row-sparse gradient: the dense norm)
    if not cuda_run:
        factors = _FACTORS[key] = []

        def record(*a, **k):
            factors.append(original(*a, **k))
            return factors[-1]
        base.grad_scale = record
    else:
        replay = iter(_FACTORS[key])
        base.grad_scale = lambda *a, **k: next(replay)
    try:
        return run(cls, backend, hyper, **kw)
    finally:
        base.grad_scale = original


_FACTORS: dict = {}
CUDA_SETTINGS = dict(SETTINGS, max_examples=int(os.environ.get("OPTFORGE_DIFF_CUDA_EXAMPLES", "60")))


@seeded
@settings(**CUDA_SETTINGS)
@given(specs())
def test_cuda_computes_what_the_straight_line_kernel_computes(spec):
    cls, text, lazy = compile_spec(*spec)
    for hyper in hyper_sets():
        want = _run(cls, "numpy", hyper, as_list=False)
        assert_same(_run(cls, "numpy", hyper, as_list=False, xp=cupy), want, f"cuda single {hyper}", text)
        want_list = _run(cls, "numpy", hyper, as_list=True)
        assert_same(_run(cls, "numpy", hyper, as_list=True, xp=cupy), want_list, f"cuda list {hyper}", text)
        if lazy:
            every = range(400)
            assert_same(_run(cls, "numpy", hyper, as_list=False, rows=every, xp=cupy), want,
                        f"cuda rows (all) {hyper}", text)
            some = _run(cls, "numpy", hyper, as_list=True, rows=SOME_ROWS)
            assert_same(_run(cls, "numpy", hyper, as_list=True, rows=SOME_ROWS, xp=cupy), some,
                        f"cuda rows (some) vs numpy rows {hyper}", text)


if __name__ == "__main__":   # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@seeded
@settings(**dict(CUDA_SETTINGS, max_examples=max(1, CUDA_SETTINGS["max_examples"] // 2)))
@given(shaped_specs())
def test_cuda_shaped_specs_compute_what_the_straight_line_kernel_computes(spec):
    """Tiled stages on the GPU: per-row/col/block states, reductions along an axis, both views."""
    cls, text, _ = compile_spec(*spec)
    for hyper in hyper_sets():
        want = _run(cls, "numpy", hyper, as_list=False, shapes=SHAPED_SHAPES)
        assert_same(_run(cls, "numpy", hyper, as_list=False, xp=cupy, shapes=SHAPED_SHAPES), want,
                    f"cuda single {hyper}", text)
        want_list = _run(cls, "numpy", hyper, as_list=True, shapes=SHAPED_SHAPES)
        assert_same(_run(cls, "numpy", hyper, as_list=True, xp=cupy, shapes=SHAPED_SHAPES), want_list,
                    f"cuda list {hyper}", text)


@seeded
@settings(**dict(CUDA_SETTINGS, max_examples=max(1, CUDA_SETTINGS["max_examples"] // 3)))
@given(matrix_specs())
def test_cuda_matrix_specs_compute_what_the_straight_line_kernel_computes(spec):
    """Matrix products through CuPy (cuBLAS) between the stage kernels, stages over the products'
    shapes, matrix states and loops."""
    cls, text, _ = compile_spec(*spec)
    for hyper in hyper_sets() + [{"k": 0}]:
        want = _run(cls, "numpy", hyper, as_list=False, shapes=MATRIX_SHAPES)
        assert_same(_run(cls, "numpy", hyper, as_list=False, xp=cupy, shapes=MATRIX_SHAPES), want,
                    f"cuda single {hyper}", text)
        want_list = _run(cls, "numpy", hyper, as_list=True, shapes=MATRIX_SHAPES)
        assert_same(_run(cls, "numpy", hyper, as_list=True, xp=cupy, shapes=MATRIX_SHAPES), want_list,
                    f"cuda list {hyper}", text)


@seeded
@settings(**dict(CUDA_SETTINGS, max_examples=max(1, CUDA_SETTINGS["max_examples"] // 3)))
@given(gather_specs())
def test_cuda_specs_reducing_over_all_parameters_compute_what_the_straight_line_kernel_computes(spec):
    """Optimizer-wide reductions on the GPU: every parameter's driver meets the others (single
    updates: a parameter alone; list updates: multi-tensor launches between the meetings)."""
    cls, text, _ = compile_spec(*spec)
    for hyper in hyper_sets():
        want = _run(cls, "numpy", hyper, as_list=False)
        assert_same(_run(cls, "numpy", hyper, as_list=False, xp=cupy), want, f"cuda single {hyper}", text)
        want_list = _run(cls, "numpy", hyper, as_list=True)
        assert_same(_run(cls, "numpy", hyper, as_list=True, xp=cupy), want_list, f"cuda list {hyper}", text)
