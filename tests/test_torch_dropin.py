"""The drop-in classes of optforge.torch (Adam, SGD, ...) against torch.optim's own classes.

Each case builds the torch.optim class and the optforge.torch class of the same name with the same
arguments over copies of the same parameters (a matrix, a vector, a 0-d parameter and a batch of
matrices, in two param groups with different learning rates), feeds both the gradients of the same
noisy quadratic at their own current parameters for 30 steps under an LR scheduler, and compares
every parameter after every step: float64 to 1e-12, float32 to 1e-6, on the NumPy and the native
backends. A state_dict taken mid-run and loaded into a fresh drop-in continues bit-exactly.
"""
from __future__ import annotations

import inspect
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import optforge  # noqa: E402
import optforge.torch as ot  # noqa: E402
from optforge.native import available as native_available  # noqa: E402

SHAPES = [(3, 4), (5,), (), (2, 3, 2)]
STEPS = 30
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}
BACKENDS = ["numpy", pytest.param("native", marks=pytest.mark.skipif(not native_available(),
                                                                      reason="no C++ compiler"))]

# (torch class name, constructor keyword arguments): every option that changes the update
CASES = [
    ("SGD", {}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "maximize": True, "weight_decay": 0.1}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "betas": (0.3, 0.9), "maximize": True, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01, "maximize": True, "betas": (0.4, 0.95)}),
    ("NAdam", {}),
    ("NAdam", {"lr": 0.01, "weight_decay": 0.1, "momentum_decay": 0.01}),
    ("NAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}),
    ("RAdam", {}),
    ("RAdam", {"lr": 0.01, "weight_decay": 0.1, "betas": (0.9, 0.9)}),
    ("RAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}),
    ("Adamax", {}),
    ("Adamax", {"lr": 0.01, "weight_decay": 0.1, "eps": 1e-3}),
    ("Adamax", {"lr": 0.01, "maximize": True, "betas": (0.3, 0.9)}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.1}),
    ("Adadelta", {"maximize": True}),
    ("RMSprop", {}),
    ("RMSprop", {"lr": 0.005, "centered": True}),
    ("RMSprop", {"lr": 0.005, "momentum": 0.9, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.005, "momentum": 0.5, "centered": True, "alpha": 0.3, "maximize": True}),
    ("Adagrad", {}),
    ("Adagrad", {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.1, "eps": 1e-6}),
    ("Adagrad", {"lr": 0.05, "initial_accumulator_value": 0.5, "maximize": True}),
    ("Rprop", {}),
    ("Rprop", {"lr": 0.05, "etas": (0.3, 1.5), "step_sizes": (1e-3, 0.2)}),
    ("Rprop", {"lr": 0.05, "maximize": True}),
    ("ASGD", {}),
    ("ASGD", {"lr": 0.05, "lambd": 0.01, "alpha": 0.5, "t0": 10.0, "weight_decay": 0.1}),
    ("ASGD", {"lr": 0.05, "t0": 5.0, "maximize": True}),
]
NAMES = sorted({name for name, _ in CASES})
# float32 cases held to a looser tolerance than 1e-6 (float64 holds them to 1e-12), and why
FLOAT32_LOOSE = {
    # torch keeps mu_product in a float32 tensor (its default dtype); the spec's scalar state is a
    # host float64, and the language has no cast to float32 for it
    "NAdam-lr=0.01-weight_decay=0.1-decoupled_weight_decay=True-maximize=True": 1e-5,
    # sqrt(square_avg - grad_avg^2) with a short memory (alpha 0.3) cancels and the step divides by
    # it: one-ulp differences grow to 1.6e-5 in 30 steps; torch's own float32 run is 3e-4 away from
    # its float64 run there
    "RMSprop-lr=0.005-momentum=0.5-centered=True-alpha=0.3-maximize=True": 1e-4,
}


def _case_id(case):
    name, kw = case
    return name + "".join(f"-{k}={v}" for k, v in kw.items())


def _params(dtype):
    rng = np.random.default_rng(7)
    return [torch.tensor(rng.standard_normal(s), dtype=dtype) for s in SHAPES]


class _Problem:
    """Gradients of a noisy quadratic 0.5 * a * (w - c)^2 at the parameters' current values."""

    def __init__(self, dtype):
        rng = np.random.default_rng(11)
        self.a = [torch.tensor(rng.uniform(0.5, 2.0, s), dtype=dtype) for s in SHAPES]
        self.c = [torch.tensor(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
        self.noise = [[torch.tensor(rng.standard_normal(s) * 0.3, dtype=dtype) for s in SHAPES] for _ in range(STEPS)]

    def grads(self, params, step):
        for p, a, c, n in zip(params, self.a, self.c, self.noise[step]):
            p.grad = a * (p.detach() - c) + n


def _build(cls, params, kw, **extra):
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": kw.get("lr", _default_lr(cls)) * 0.5}]
    opt = cls(groups, **kw, **extra)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.7)


def _default_lr(cls):
    return inspect.signature(cls).parameters["lr"].default


def _same_states(ours, ref, params_ours, params_ref, tol, step):
    """The state tensors torch and the spec name alike (exp_avg, momentum_buffer, ax, ...), in float64,
    to `tol` relative to the largest element (a state's scale is not the weights'). float32 states
    are checked through the weights only: torch's CPU kernels fuse `self + alpha * other` (one
    rounding, FMA), the spec's compute it in two, and a momentum buffer near 0 shows the ulps as 1e-5
    relative after 26 steps. (The hyperparameter arithmetic itself agrees: the torch specs declare
    `option host_arithmetic`, so 1 - beta2 reaches the kernels computed in double, as torch's.)"""
    if params_ref[0].dtype != torch.float64:
        return
    for i, (po, pr) in enumerate(zip(params_ours, params_ref)):
        for key, theirs in ref.state[pr].items():
            mine = ours.state[po].get(key)
            if isinstance(theirs, torch.Tensor) and theirs.shape == po.shape and isinstance(mine, torch.Tensor):
                scale = max(float(theirs.abs().max()), 1e-30) if theirs.numel() else 1.0
                torch.testing.assert_close(mine, theirs, rtol=tol, atol=tol * scale,
                                           msg=lambda m: f"step {step}, param {i}, state {key!r}: {m}")


def _run(opt, sched, params, problem, steps):
    for step in steps:
        problem.grads(params, step)
        opt.step()
        sched.step()
        yield step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dropin_matches_torch(case, dtype, backend):
    name, kw = case
    before = torch.get_default_dtype()
    # torch keeps NAdam's mu_product in the default dtype: float64 parameters are compared with
    # a float64 default, where torch's arithmetic is float64 throughout
    torch.set_default_dtype(dtype)
    try:
        _compare(name, kw, dtype, backend)
    finally:
        torch.set_default_dtype(before)


def _compare(name, kw, dtype, backend):
    tol = TOL[dtype]
    if dtype == torch.float32:
        tol = FLOAT32_LOOSE.get(_case_id((name, kw)), tol)
    problem = _Problem(dtype)
    ref_params, our_params = _params(dtype), _params(dtype)
    ref, ref_sched = _build(getattr(torch.optim, name), ref_params, kw, foreach=False)
    ours, our_sched = _build(getattr(ot, name), our_params, kw, backend=backend)
    assert isinstance(ours, torch.optim.Optimizer)
    half = STEPS // 2
    for step, _ in zip(_run(ref, ref_sched, ref_params, problem, range(half)),
                       _run(ours, our_sched, our_params, problem, range(half))):
        for i, (r, o) in enumerate(zip(ref_params, our_params)):
            torch.testing.assert_close(o, r, rtol=tol, atol=tol, msg=lambda m: f"step {step}, param {i}: {m}")
        _same_states(ours, ref, our_params, ref_params, tol, step)
    # mid-run checkpoint: a fresh drop-in over copies of the parameters continues bit-exactly
    buf = io.BytesIO()
    torch.save({"opt": ours.state_dict(), "sched": our_sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed_params = [p.detach().clone() for p in our_params]
    resumed, resumed_sched = _build(getattr(ot, name), resumed_params, kw, backend=backend)
    resumed.load_state_dict(saved["opt"])
    resumed_sched.load_state_dict(saved["sched"])
    rest = range(half, STEPS)
    for step, _, _ in zip(_run(ref, ref_sched, ref_params, problem, rest),
                          _run(ours, our_sched, our_params, problem, rest),
                          _run(resumed, resumed_sched, resumed_params, problem, rest)):
        for i, (r, o, c) in enumerate(zip(ref_params, our_params, resumed_params)):
            torch.testing.assert_close(o, r, rtol=tol, atol=tol, msg=lambda m: f"step {step}, param {i}: {m}")
            assert torch.equal(c, o), f"resumed run differs at step {step}, param {i}"
        _same_states(ours, ref, our_params, ref_params, tol, step)
    assert [g["lr"] for g in ours.param_groups] == pytest.approx([g["lr"] for g in ref.param_groups], rel=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_torchs(name):
    """Same parameters, order, kinds and defaults as torch.optim's class (plus optforge's backend,
    reduce_hook and step control); lr may be given positionally, as in torch."""
    ours = inspect.signature(getattr(ot, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    assert list(ours)[len(theirs):] == ["backend", "reduce_hook", "max_grad_norm", "skip_nonfinite", "multi_precision",
                                        "stochastic_rounding"]
    for key, p in theirs.items():
        assert ours[key].kind == p.kind, key
        if p.default is not inspect.Parameter.empty:
            assert ours[key].default == p.default, key
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = getattr(ot, name)(params, 0.125)
    assert opt.param_groups[0]["lr"] == 0.125
    # param groups hold torch's keys (torch's AdamW adds a constant decoupled_weight_decay=True)
    assert set(theirs) - {"params"} <= set(opt.defaults)


@pytest.mark.parametrize("name", NAMES)
def test_flags(name):
    """foreach and fused have no effect; capturable and differentiable set to true say why they
    cannot be; an argument torch does not know is a TypeError, as in torch."""
    params = [torch.nn.Parameter(torch.ones(3))]
    cls = getattr(ot, name)
    sig = inspect.signature(cls).parameters
    for flag in ("foreach", "fused"):
        if flag in sig:
            cls(params, **{flag: False})
            cls(params, **{flag: None})
    if "capturable" in sig:
        with pytest.raises(ValueError, match="capturable=True is not supported: optforge kernels run outside CUDA graphs"):
            cls(params, capturable=True)
    with pytest.raises(ValueError, match="differentiable=True is not supported: .*outside autograd"):
        cls(params, differentiable=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'beta3'"):
        cls(params, beta3=0.5)


def test_betas_is_a_param_group_key():
    """Param groups hold torch's keys (betas, not beta1/beta2): a group may set its own betas and an
    edit of group['betas'] (what OneCycleLR's cycle_momentum does) takes effect at the next step."""
    problem = _Problem(torch.float64)
    ref_params, our_params = _params(torch.float64), _params(torch.float64)
    groups = lambda ps: [{"params": ps[:2], "betas": (0.5, 0.9)}, {"params": ps[2:]}]  # noqa: E731
    ref = torch.optim.Adam(groups(ref_params), lr=0.01, foreach=False)
    ours = ot.Adam(groups(our_params), lr=0.01)
    assert ours.param_groups[0]["betas"] == (0.5, 0.9) and "beta1" not in ours.param_groups[0]
    for step in range(12):
        if step == 6:
            for opt in (ref, ours):
                opt.param_groups[1]["betas"] = (0.7, 0.95)
        for opt, params in ((ref, ref_params), (ours, our_params)):
            problem.grads(params, step)
            opt.step()
        for r, o in zip(ref_params, our_params):
            torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="betas must be a pair"):
        ot.Adam([torch.nn.Parameter(torch.ones(2))], betas=0.9)


def test_validation_before_state():
    """The spec's ranges reject what torch rejects."""
    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match="beta1"):
        ot.Adam(params, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="eps"):
        ot.AdamW(params, eps=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        ot.SGD(params, momentum=-0.5)


def test_model_training_loop():
    """A drop-in in an ordinary loop over a module's parameters (named ones too)."""
    torch.manual_seed(0)
    ref_model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    our_model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    our_model.load_state_dict(ref_model.state_dict())
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=0.01, foreach=False)
    ours = ot.AdamW(our_model.named_parameters(), lr=0.01)
    for _ in range(20):
        for model, opt in ((ref_model, ref), (our_model, ours)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for r, o in zip(ref_model.parameters(), our_model.parameters()):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


def test_flag_tables_agree():
    """The compiler's and the adapter's lists of torch flags are the same."""
    from optforge.codegen.names import TORCH_FLAGS as checked
    assert {k: v for k, v in checked.items()} == {k: v[0] for k, v in ot.TORCH_FLAGS.items()}


def test_spec_without_torch_signature():
    with pytest.raises(ValueError, match="declares no `option torch"):
        ot.dropin("lamb")


@pytest.mark.parametrize("name", ["torch_sgd", "torch_adam", "torch_adamw", "torch_nadam", "torch_radam",
                                  "torch_adamax", "torch_adadelta", "torch_rmsprop", "torch_adagrad", "torch_rprop", "torch_asgd",
                                  "adamw", "lion", "adabelief"])
def test_registered_names(name):
    """The specs are registered for the MXNet-style API too: create, a NumPy update in place."""
    opt = optforge.create(name, learning_rate=0.01)
    w, g = np.ones(4, np.float64), np.full(4, 0.5, np.float64)
    state = opt.create_state(0, w)
    opt.update(0, w, g, state)
    assert np.all(w < 1) and np.all(np.isfinite(w))


BAD_SIGNATURE = """
optimizer Mine
hyper beta1: float = 0.9
hyper beta2: float = 0.99
hyper eps: float = 1e-8
option torch("Mine", "lr", {args})
{pairs}
state m = zeros
update {{
    m = beta1 * m + (1 - beta2) * grad
    weight -= lr * m / (eps + 1)
}}
"""


@pytest.mark.parametrize("args, pairs, message", [
    ('"betas", "epsilon"', 'option torch_pairs("betas", "beta1", "beta2")',
     "option `torch` names `epsilon`, which is not lr, weight_decay, a hyperparameter"),
    ('"betas"', 'option torch_pairs("betas", "beta1", "beta2")', "option `torch` does not reach hyperparameter `eps`"),
    ('"beta1", "eps"', "", "option `torch` does not reach hyperparameter `beta2`"),
    ('"betas", "eps"', 'option torch_pairs("betas", "beta1")', "option `torch_pairs` takes triples"),
    ('"betas", "eps"', 'option torch_pairs("betas", "beta1", "beta3")',
     "option `torch_pairs` names `beta3`, which is not a hyperparameter"),
    ('"beta1", "beta2", "eps", "eps"', "", "option `torch` names `eps` twice"),
    ('"beta1", "*", "beta2", "*", "eps"', "", "option `torch` has a second `*`"),
])
def test_signature_mistakes_are_compile_errors(args, pairs, message):
    from optforge.codegen.compile import load_spec_text
    from optforge.codegen.errors import SpecError
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec_text(BAD_SIGNATURE.format(args=args, pairs=pairs), "mine.opt")


def test_host_arithmetic_hands_the_kernels_hyperparameter_arithmetic_done_in_double():
    """`option host_arithmetic` (the torch specs): `1 - beta2` is a scalar argument computed on the
    host, so a float32 kernel uses float(1 - 0.999) = 0.001f as torch does, not 1 - 0.999f; without
    the option (MXNet's specs) the kernel computes it in its type."""
    from optforge.codegen.compile import load_spec_text
    from optforge.codegen.emit_program import render
    from optforge.codegen.lower import lower
    text = """optimizer Arith
hyper beta2: float = 0.999 in [0, 1)   "decay"
{option}
state v = zeros
update {{
    v = beta2 * v + (1 - beta2) * square(grad)
    weight -= lr * v
}}
"""
    host = render(lower(load_spec_text(text.format(option="option host_arithmetic"), "arith.opt")[0]))
    kernel = render(lower(load_spec_text(text.format(option=""), "arith.opt")[0]))
    assert "scalar k1 = 1 - beta2" in host and "1 - beta2" not in "".join(
        ln for ln in kernel.splitlines() if "scalar" in ln)
    # and the numbers: one float32 step of the native kernel against the double-computed weight
    if not native_available():
        return
    def step(option):
        klass = optforge.load_spec(text.format(option=option).replace("Arith", "Arith" + str(len(option))),
                                   register=False)
        opt = klass(learning_rate=1.0)
        opt.backend = "native"
        w = np.zeros(8, np.float32)
        opt.update(0, w, np.full(8, 3.0, np.float32), opt.create_state(0, w))
        return w[0]
    assert step("option host_arithmetic") == -(np.float32(1 - 0.999) * np.float32(9.0))   # torch's
    assert step("") == -((np.float32(1) - np.float32(0.999)) * np.float32(9.0))         # MXNet's
