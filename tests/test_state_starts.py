"""States that start from hyperparameters and from the parameter's learning rate and weight decay
(torch's Adagrad `initial_accumulator_value`, Rprop's step sizes `lr`): created before the first
update with the values they have then, per parameter (lr/wd multipliers applied), on every
backend, checkpointed like any state."""
import numpy as np
import pytest

import optforge
from optforge.codegen.errors import SpecError
from optforge.codegen.compile import load_spec_text

SPEC = '''
optimizer StartsFrom
hyper initial_accumulator_value: float = 0.1 in [0, inf)  "start of the accumulator"
hyper eps: float = 1e-10 in [0, inf)                      "denominator guard"
state acc = initial_accumulator_value
state step = 2 * lr + wd
state n: scalar = lr * 3
update {
    acc += square(grad)
    n = n + 1
    weight -= step * grad / (sqrt(acc) + eps) + n * wd * weight
}
'''


@pytest.fixture(scope="module")
def klass():
    return optforge.load_spec(SPEC)


def _reference(w, grads, acc0, step0, n0, wd, eps=1e-10):
    """The update written out by hand from SPEC."""
    acc = np.full_like(w, acc0)
    n = n0
    for g in grads:
        acc = acc + g * g
        n = n + 1
        w = w - (step0 * g / (np.sqrt(acc) + eps) + n * wd * w)
    return w


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_states_start_from_hypers_lr_and_wd(klass, backend):
    opt = klass(learning_rate=0.5, wd=0.01, initial_accumulator_value=0.25)
    opt.backend = backend
    opt.set_lr_mult({0: 2.0})
    opt.set_wd_mult({1: 0.0})
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    assert states[0].tensors["acc"].tolist() == [[0.25] * 4] * 3
    assert np.all(states[0].tensors["step"] == 2 * 1.0 + 0.01)    # lr 0.5 x lr_mult 2, wd 0.01
    assert np.all(states[1].tensors["step"] == 2 * 0.5 + 0.0)     # wd_mult 0
    assert states[0].scalars["n"] == 3.0 and states[1].scalars["n"] == 1.5
    grads = [[rng.standard_normal(w.shape) for _ in range(4)] for w in ws]
    expect = [_reference(ws[0], grads[0], 0.25, 2.01, 3.0, 0.01), _reference(ws[1], grads[1], 0.25, 1.0, 1.5, 0.0)]
    for k in range(4):
        opt.update([0, 1], ws, [grads[0][k], grads[1][k]], states)
    for w, e in zip(ws, expect):
        np.testing.assert_allclose(w, e, rtol=1e-12, atol=1e-12)


def test_a_later_lr_change_does_not_touch_existing_states(klass):
    opt = klass(learning_rate=0.5)
    s0 = opt.create_state(0, np.zeros(2))
    opt.set_learning_rate(0.1)
    s1 = opt.create_state(1, np.zeros(2))
    assert s0.tensors["step"].tolist() == [1.0, 1.0] and s1.tensors["step"].tolist() == [0.2, 0.2]


def test_started_states_round_trip_a_checkpoint(klass):
    opt = klass(learning_rate=0.5)
    upd = optforge.get_updater(opt)
    w = np.ones((2, 2))
    upd(0, np.full((2, 2), 0.5), w)
    data = upd.get_states(dump_optimizer=True)
    back = optforge.get_updater(klass(learning_rate=0.5))
    back.set_states(data)
    np.testing.assert_array_equal(back.states[0].tensors["acc"], upd.states[0].tensors["acc"])
    assert back.states[0].scalars == upd.states[0].scalars


@pytest.mark.parametrize("start, message", [
    ("weight * 2", "a tensor state starts as `zeros`, `weight` (a copy), a number computed from hyperparameters"),
    ("t", "a tensor state starts as `zeros`"),
    ("norm(weight)", "a tensor state starts as `zeros`"),
    ("lo", "a state cannot start from an optional hyperparameter: it may be none"),
])
def test_starts_known_only_later_are_errors(start, message):
    text = ('optimizer Bad\nhyper lo: float? = none "x"\nstate x = ' + start
            + '\nupdate {\n  x = x + grad + where(lo > 0, 1, 0)\n  weight -= lr * x\n}\n')
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "bad.opt")
    text_out = str(info.value)
    assert message in text_out
    assert "used before it is assigned" not in text_out   # the failed state is reported once


NOVOGRAD_LIKE = '''
optimizer NovoLike
hyper beta2: float = 0.98 in [0, 1) "decay of the per-layer second moment"
state v: scalar = 0.0
state m = zeros
update {
    v = where(t == 1, square(norm(grad)), beta2 * v + (1 - beta2) * square(norm(grad)))
    m = 0.9 * m + grad / (sqrt(v) + 1e-8)
    weight -= lr * m
}
'''


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_scalar_state_holds_a_reduction(backend):
    """NovoGrad's per-layer second moment: a per-parameter number assigned from a norm, read by the
    elementwise update that follows (written out by hand below)."""
    klass = optforge.load_spec(NOVOGRAD_LIKE)
    opt = klass(learning_rate=0.1)
    opt.backend = backend
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((40, 300)), rng.standard_normal(7)]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    refs = [(w.copy(), np.zeros_like(w), 0.0) for w in ws]
    for t in range(1, 5):
        gs = [rng.standard_normal(w.shape) for w in ws]
        opt.update([0, 1], ws, gs, states)
        new = []
        for (wr, m, v), g in zip(refs, gs):
            n2 = float(np.sum(g * g))
            v = n2 if t == 1 else 0.98 * v + 0.02 * n2
            m = 0.9 * m + g / (np.sqrt(v) + 1e-8)
            new.append((wr - 0.1 * m, m, v))
        refs = new
    for w, s, (wr, _, v) in zip(ws, states, refs):
        np.testing.assert_allclose(w, wr, rtol=1e-12, atol=1e-13)
        assert s.scalars["v"] == pytest.approx(v, rel=1e-12)
