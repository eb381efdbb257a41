"""bfloat16 weights (issue #16, part 1) and float16 storage on the native kernels: rounding to nearest
even as ml_dtypes (an independent implementation) rounds, stochastic rounding checked against its
definition (each value rounds to one of its two bfloat16 neighbours, up with probability equal to its
distance from the lower one), the same bits on the NumPy and native backends, a float32 master copy
equal to a float32 run, checkpoints that resume bit-exactly, and the torch adapter against
torch.optim on bfloat16 parameters."""
import io
import math
import warnings

import ml_dtypes
import numpy as np
import pytest

import optforge
from optforge import native, ops

BF16 = np.dtype(ml_dtypes.bfloat16)
needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler")
BACKENDS = ["numpy", pytest.param("native", marks=needs_native)]


def _neighbours(x):
    """The bfloat16 values just below and above float32 x (truncation of its bits, and the next
    value away from zero), written from the format: a bfloat16 is the top 16 bits of a float32."""
    u = np.asarray(x, np.float32).view(np.uint32)
    low = (u >> 16).astype(np.uint16)
    high = low + np.uint16(1)
    exact = (u & 0xFFFF) == 0
    high = np.where(exact, low, high)
    return low.view(BF16).astype(np.float32), high.view(BF16).astype(np.float32)


def test_nearest_even_is_ml_dtypes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40], np.float32)])
    got = ops.round_to(BF16, x, 0.0)
    np.testing.assert_array_equal(got.view(np.uint16), x.astype(BF16).view(np.uint16))


def test_stochastic_rounding_is_unbiased_and_stays_between_neighbours():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(2000) * 3).astype(np.float32)
    lo, hi = _neighbours(x)
    p_up = np.where(hi != lo, (np.abs(x) - np.abs(lo)) / np.where(hi != lo, np.abs(hi) - np.abs(lo), 1), 0)
    trials = 400
    ups = np.zeros(x.size)
    for seed in range(1, trials + 1):
        r = ops.round_to(BF16, x, float(seed * 7919)).astype(np.float32)
        assert np.all((r == lo) | (r == hi))
        ups += r == hi
    # each value rounds up with its probability: binomial, 5 standard deviations
    sigma = np.sqrt(trials * p_up * (1 - p_up)) + 0.5
    assert np.all(np.abs(ups - trials * p_up) <= 5 * sigma)
    # and overall the rounding error averages out
    assert abs((ups / trials - p_up).mean()) < 0.01


def test_stochastic_rounding_keeps_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -2.5, 3.3895314e38], np.float32)
    r = ops.round_to(BF16, x, 12345.0).astype(np.float32)
    assert np.isnan(r[0])
    np.testing.assert_array_equal(r[1:7], x[1:7])   # values bfloat16 holds exactly stay
    assert np.isfinite(r[7]) or np.isinf(r[7])


def _run(name, backend, dtype, steps=3, shapes=((6, 7), (33,), (2, 3, 4)), sr=False, mp=False, lists=False,
         seed=0, **hyper):
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optforge.create(name, learning_rate=0.01, stochastic_rounding=sr, multi_precision=mp, **hyper)
        opt.backend = backend
        opt._rng = np.random.default_rng(99)
        ws = [rng.standard_normal(s).astype(dtype) for s in shapes]
        states = [opt.create_state_multi_precision(i, w) for i, w in enumerate(ws)]
    for _ in range(steps):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        if lists:
            opt.update_multi_precision(list(range(len(ws))), ws, gs, states)
        else:
            for i, (w, g, s) in enumerate(zip(ws, gs, states)):
                opt.update_multi_precision(i, w, g, s)
    return opt, ws, states


# specs whose weight is written once, from values computed in float32 on both backends
SINGLE_PASS = ["adam", "sgd", "rmsprop", "adagrad", "nag", "signum", "ftml", "torch_adamw", "lion"]


def _same_bits(a, b, what):
    """bfloat16 arrays equal but where float32 arithmetic itself differs (the native kernels contract
    a * b + c into one rounding, NumPy rounds twice): at most one unit in the last place, rarely."""
    assert a.dtype == b.dtype == BF16
    d = np.abs(a.view(np.uint16).astype(np.int64) - b.view(np.uint16).astype(np.int64))
    assert d.max() <= 1 and np.mean(d == 0) >= 0.9, f"{what}: {np.count_nonzero(d)} of {d.size} differ"


@needs_native
@pytest.mark.parametrize("sr", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("name", SINGLE_PASS)
def test_native_bfloat16_bits_equal_numpy(name, sr):
    """The native kernels round each stored value as NumPy rounds its float32 results (and a
    stochastically rounded weight with the same random bits, op_bf16_bits = ops.round_to)."""
    for lists in (False, True):
        _, want, ws = _run(name, "numpy", BF16, sr=sr, lists=lists)
        _, got, gs = _run(name, "native", BF16, sr=sr, lists=lists)
        for a, b in zip(got, want):
            _same_bits(a, b, f"{name} weight lists={lists}")
        for sa, sb in zip(gs, ws):
            for k in sa.tensors:
                _same_bits(sa.tensors[k], sb.tensors[k], f"{name} state {k} lists={lists}")


@needs_native
@pytest.mark.parametrize("name", sorted(n for n, c in optforge.registry.registered().items()
                                        if c.__module__.startswith("optforge.generated") and n != "sgld"
                                        and not n.startswith("torch_")))
def test_every_optimizer_updates_bfloat16_and_float16_weights_natively(name):
    """The native kernels store 16-bit states at each stage; NumPy rounds its float32 copies once:
    they agree to the rounding of the type (and both move the weights)."""
    from test_cuda_source import CONFIGS
    hyper = CONFIGS.get(name, {})
    for dtype, tol in ((BF16, 3e-2), (np.float16, 4e-3)):
        if (name, dtype) == ("prodigy", np.float16):
            continue   # its d^2-scaled moments underflow float16 when stored each stage: it needs a master copy
        _, want, _ = _run(name, "numpy", dtype, **hyper)
        _, got, _ = _run(name, "native", dtype, **hyper)
        _, start, _ = _run(name, "numpy", dtype, steps=0, **hyper)
        for a, b, w0 in zip(got, want, start):
            assert a.dtype == np.dtype(dtype)
            a, b, w0 = (v.astype(np.float64) for v in (a, b, w0))
            assert np.all(np.isfinite(a))
            # (Prodigy's first steps are d0 = 1e-6 sized, Adadelta's sqrt(eps) sized: below the rounding)
            assert name in ("prodigy", "torchadadelta") or not np.array_equal(a, w0)
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{name} {np.dtype(dtype)}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_moves_weights_that_nearest_rounding_freezes(backend):
    """SGD steps of 1e-3 on weights at 1.0 (bfloat16's gap there: 2^-7, so each step is an eighth of
    half a gap): to nearest, the weight never moves; stochastically, it follows the exact sum on
    average (its expectation, step by step, is the float32 update)."""
    n, steps, lr = 4096, 40, 1e-3
    out = {}
    for sr in (False, True):
        opt = optforge.create("sgd", learning_rate=lr, stochastic_rounding=sr)
        opt.backend = backend
        w = np.ones(n, BF16)
        g = np.ones(n, BF16)
        s = opt.create_state(0, w)
        for _ in range(steps):
            opt.update(0, w, g, s)
        out[sr] = w.astype(np.float64)
    assert np.all(out[False] == 1.0)
    exact = 1.0 - steps * lr
    assert abs(out[True].mean() - exact) < 4 * 2 ** -8 / math.sqrt(n) * math.sqrt(steps) + 1e-3
    assert out[True].std() > 0   # different elements round differently


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_master_copy_is_the_float32_update(backend):
    _, ref, _ = _run("adam", backend, np.float32, shapes=((5, 4),), seed=3)
    rng = np.random.default_rng(3)
    w32 = rng.standard_normal((5, 4)).astype(np.float32)
    opt = optforge.create("adam", learning_rate=0.01, multi_precision=True)
    opt.backend = backend
    w = w32.astype(BF16)
    s = opt.create_state_multi_precision(0, w)
    s.master[...] = w32   # start from the same float32 weight as the float32 run
    for _ in range(3):
        g32 = rng.standard_normal((5, 4)).astype(np.float32)
        # the float32 run read the same gradients before rounding; feed bfloat16 ones to both
        opt.update_multi_precision(0, w, g32.astype(BF16), s)
    # the reference with bfloat16-rounded gradients, in float32
    rng = np.random.default_rng(3)
    wr = rng.standard_normal((5, 4)).astype(np.float32)
    ref_opt = optforge.create("adam", learning_rate=0.01)
    ref_opt.backend = backend
    rs = ref_opt.create_state(0, wr)
    for _ in range(3):
        ref_opt.update(0, wr, rng.standard_normal((5, 4)).astype(np.float32).astype(BF16).astype(np.float32), rs)
    np.testing.assert_array_equal(s.master, wr)
    np.testing.assert_array_equal(w.view(np.uint16), wr.astype(BF16).view(np.uint16))
    assert s.tensors["mean"].dtype == np.float32


def test_stochastic_rounding_refuses_float16_weights_and_counts_nothing():
    opt = optforge.create("adam", stochastic_rounding=True)
    w = np.ones(4, np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = opt.create_state_multi_precision(0, w)
    with pytest.raises(TypeError, match="stochastic_rounding rounds bfloat16 weights"):
        opt.update(0, w, np.ones(4, np.float16), s)
    assert opt.num_update == 0 and np.all(w == 1)
    with pytest.raises(TypeError, match="stochastic_rounding must be a bool"):
        optforge.create("adam", stochastic_rounding="yes")


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_resumes_bfloat16_and_its_rounding_bit_exactly(backend):
    rng = np.random.default_rng(4)
    for mp in (False, True):
        opt = optforge.create("adam", learning_rate=0.01, stochastic_rounding=not mp, multi_precision=mp)
        opt.backend = backend
        up = optforge.get_updater(opt)
        w = rng.standard_normal((4, 5)).astype(BF16)
        gs = [rng.standard_normal((4, 5)).astype(BF16) for _ in range(4)]
        up(0, gs[0], w)
        up(0, gs[1], w)
        blob = up.get_states(dump_optimizer=True)
        w2 = w.copy()
        up(0, gs[2], w)
        up(0, gs[3], w)
        up2 = optforge.get_updater(optforge.create("adam"))
        up2.set_states(blob)
        up2.optimizer.backend = backend
        assert up2.optimizer.stochastic_rounding is (not mp)
        up2(0, gs[2], w2)
        up2(0, gs[3], w2)
        np.testing.assert_array_equal(w.view(np.uint16), w2.view(np.uint16))
        st = up2.states[0]
        assert st.tensors["mean"].dtype == (np.float32 if mp else BF16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lazy_rows_of_a_bfloat16_weight_round_as_dense_rows(backend):
    """Lazy Adam on a row-sparse gradient: the rows touched are updated (stochastic rounding at their
    elements' positions in the weight, as the dense kernels would), the others stay."""
    rng = np.random.default_rng(5)
    shape = (10, 6)
    w0 = rng.standard_normal(shape).astype(BF16)
    rows = np.array([1, 4, 7])
    data = rng.standard_normal((3, 6)).astype(BF16)
    out = {}
    for be in ("numpy", backend):
        opt = optforge.create("adam", learning_rate=0.01, lazy_update=True, stochastic_rounding=True)
        opt.backend = be
        opt._rng = np.random.default_rng(7)
        w = w0.copy()
        s = opt.create_state(0, w)
        opt.update(0, w, optforge.RowSparse(data, rows, shape), s)
        out[be] = w
    w = out[backend]
    untouched = np.setdiff1d(np.arange(10), rows)
    np.testing.assert_array_equal(w[untouched].view(np.uint16), w0[untouched].view(np.uint16))
    np.testing.assert_array_equal(w.view(np.uint16), out["numpy"].view(np.uint16))
    # the same rows of a dense gradient with zeros elsewhere, under the same seed, round the same
    opt = optforge.create("adam", learning_rate=0.01, stochastic_rounding=True)
    opt._rng = np.random.default_rng(7)
    dense = w0.copy()
    g = np.zeros(shape, BF16)
    g[rows] = data
    opt.update(0, dense, g, opt.create_state(0, dense))
    np.testing.assert_array_equal(w[rows].view(np.uint16), dense[rows].view(np.uint16))


@needs_native
def test_software_float16_conversions_equal_the_compilers(monkeypatch):
    """Where the compiler has no _Float16, the kernels convert float16 by bit manipulation
    (OPTFORGE_SOFT_FLOAT16): every float16 value round-trips, and updates round as _Float16's do."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    every = every[~np.isnan(every)]
    rng = np.random.default_rng(6)
    grads = rng.standard_normal(every.size).astype(np.float16)
    results = {}
    for soft in (False, True):
        if soft:
            monkeypatch.setattr(native, "LOW_PRECISION_DEFINE",
                                "#define OPTFORGE_LOW_PRECISION 1\n#define OPTFORGE_SOFT_FLOAT16 1\n")
            monkeypatch.setattr(native, "_libs", {})
        for lr in (0.0, 0.37):
            opt = optforge.create("sgd", learning_rate=lr)
            opt.backend = "native"
            w = every.copy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.update(0, w, grads, opt.create_state(0, w))
            results[soft, lr] = w
    np.testing.assert_array_equal(results[True, 0.0].view(np.uint16), every.view(np.uint16))
    np.testing.assert_array_equal(results[False, 0.0].view(np.uint16), every.view(np.uint16))
    np.testing.assert_array_equal(results[True, 0.37].view(np.uint16), results[False, 0.37].view(np.uint16))
    # and both are float32 arithmetic rounded to nearest even, as NumPy rounds
    want = (every.astype(np.float32) - np.float32(0.37) * grads.astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(results[True, 0.37].view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["float16", "bfloat16"])
def test_16_bit_weights_without_a_master_copy_allocate_no_float32_copies(backend, dtype):
    """The native kernels load and store 16-bit arrays themselves, the chunked NumPy kernel widens
    them a chunk at a time (issue #18's peak memory item): an Adam step allocates nothing the size
    of the weight in float32."""
    import tracemalloc
    n = 1 << 20
    opt = optforge.create("adam", learning_rate=0.01)
    opt.backend = backend
    w = np.ones(n, dtype)
    g = np.ones(n, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = opt.create_state_multi_precision(0, w)
    opt.update(0, w, g, s)   # build and warm up
    tracemalloc.start()
    opt.update(0, w, g, s)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < n * 4 // 4, f"peak {peak} bytes for a {n}-element float16 weight"


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("mp", [False, True], ids=["bf16", "master"])
def test_torch_adapter_bfloat16_parameters_against_torch_optim(mp):
    torch = _torch()
    import optforge.torch as ot
    torch.manual_seed(0)
    p = torch.randn(64, 32, dtype=torch.bfloat16, requires_grad=True)
    ref = p.detach().float().clone().requires_grad_(True)
    opt = ot.Adam([p], lr=1e-3, multi_precision=mp)
    ref_opt = torch.optim.Adam([ref], lr=1e-3)
    for _ in range(10):
        g = torch.randn(64, 32).bfloat16()
        p.grad, ref.grad = g, g.float()
        opt.step()
        ref_opt.step()
    assert p.dtype == torch.bfloat16
    if mp:   # the master copy is torch's float32 Adam; the parameter is it rounded
        master = opt.state[p]["master_copy"]
        torch.testing.assert_close(master, ref.detach(), rtol=1e-6, atol=1e-6)
        assert torch.equal(p.detach(), master.bfloat16())
    else:   # bfloat16 states and weight: within the type's rounding of torch's float32 run
        assert opt.state[p]["exp_avg"].dtype == torch.bfloat16
        torch.testing.assert_close(p.detach().float(), ref.detach(), rtol=2e-2, atol=2e-2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    q = p.detach().clone().requires_grad_(True)
    opt2 = ot.Adam([q], lr=1e-3, multi_precision=mp)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    g = torch.randn(64, 32).bfloat16()
    p.grad, q.grad = g, g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(p, q)


def test_torch_adapter_stochastic_rounding_of_bfloat16_parameters():
    torch = _torch()
    import optforge.torch as ot
    p = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
    opt = ot.SGD([p], lr=1e-3, stochastic_rounding=True)
    for _ in range(40):
        p.grad = torch.ones_like(p)
        opt.step()
    mean = p.detach().double().mean().item()
    assert abs(mean - (1 - 40e-3)) < 5e-3
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    q = p.detach().clone().requires_grad_(True)
    opt2 = ot.SGD([q], lr=1e-3, stochastic_rounding=True)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for o, t in ((opt, p), (opt2, q)):
        t.grad = torch.ones_like(t)
        o.step()
    assert torch.equal(p, q)   # the generator's state is in the state_dict: the same rounding
