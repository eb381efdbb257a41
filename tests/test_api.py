"""The public API mirrors mxnet.optimizer: registry, exports, learning rates, multipliers, Updater."""
import warnings

import numpy as np
import pytest

import optforge
from optforge import lr_scheduler

MXNET_CLASSES = ["SGD", "NAG", "Adam", "AdaGrad", "AdaDelta", "Adamax", "Nadam", "RMSProp", "Ftrl", "FTML",
                 "DCASGD", "SGLD", "Signum", "LAMB", "LARS", "LBSGD", "Test", "ccSGD"]


@pytest.mark.parametrize("cls", MXNET_CLASSES)
def test_every_mxnet_class_is_exported_and_registered(cls):
    klass = getattr(optforge, cls)
    assert issubclass(klass, optforge.Optimizer)
    assert type(optforge.create(cls.upper())) is klass          # case-insensitive
    assert type(optforge.Optimizer.create_optimizer(cls.lower())) is klass
    assert "Parameters" in klass.__doc__ or not klass.hyperparams
    assert "Update, as written in the spec" in klass.__doc__


def test_ccsgd_is_sgd():
    assert optforge.ccSGD is optforge.SGD and type(optforge.create("ccsgd")) is optforge.SGD


def test_unknown_optimizer_names_the_closest():
    with pytest.raises(ValueError, match=r"Cannot find optimizer 'adamm'; did you mean 'adam'\?"):
        optforge.create("adamm")


def test_register_custom_subclass_and_override_warning():
    class MySGD(optforge.SGD):
        pass

    assert optforge.register(MySGD) is MySGD
    assert type(optforge.create("mysgd", momentum=0.5)) is MySGD
    with pytest.warns(UserWarning, match="overriding existing optimizer"):
        optforge.Optimizer.register(type("MySGD", (optforge.SGD,), {}))


def test_positional_arguments_follow_mxnet_signatures():
    assert optforge.Adam(0.1).lr == 0.1                      # Adam(learning_rate, beta1, ...)
    f = optforge.Ftrl(0.2, 0.3, 0.4)                          # Ftrl(lamda1, learning_rate, beta)
    assert (f.lamda1, f.lr, f.beta) == (0.2, 0.3, 0.4)
    assert optforge.SGD(0.9).momentum == 0.9
    assert optforge.LBSGD(0.5, True).multi_precision is True  # LBSGD(momentum, multi_precision, ...)


def test_learning_rate_defaults_and_scheduler_overwrite():
    assert optforge.SGD().learning_rate == 0.01
    assert optforge.Adam().learning_rate == 0.001
    sched = lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=1.0)
    with pytest.warns(UserWarning, match="overwritten"):
        opt = optforge.Adam(learning_rate=0.1, lr_scheduler=sched)
    assert sched.base_lr == 0.1
    sched2 = lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=1.0)
    optforge.Ftrl(learning_rate=0.3, lr_scheduler=sched2)      # Ftrl keeps its own learning rate
    assert sched2.base_lr == 1.0
    with pytest.raises(UserWarning, match="LRScheduler"):
        opt.set_learning_rate(0.5)
    plain = optforge.SGD()
    plain.set_learning_rate(0.5)
    assert plain.learning_rate == 0.5


def test_multipliers_by_index_and_name():
    names = {0: "fc_weight", 1: "fc_bias", 2: "bn_gamma"}
    opt = optforge.SGD(learning_rate=1.0, wd=0.1, param_idx2name=names)
    assert opt._get_wds([0, 1, 2]) == [0.1, 0.0, 0.1]          # names not ending _weight/_gamma: wd 0
    opt.set_lr_mult({"fc_bias": 2.0, 0: 3.0})
    assert opt._get_lrs([0, 1, 2]) == [3.0, 2.0, 1.0]
    lars = optforge.LARS(wd=0.1, param_idx2name=names)
    assert lars._get_wds([0, 1, 2]) == [0.1, 0.0, 0.0]         # LARS keeps wd only for _weight


def test_counters_begin_num_update_and_list_counting():
    opt = optforge.Adam(begin_num_update=10)
    ws = [np.zeros(2), np.zeros(3)]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    opt.update([0, 1], ws, [np.ones(2), np.ones(3)], states)
    opt.update(0, ws[0], np.ones(2), states[0])
    assert opt._index_update_count == {0: 12, 1: 11} and opt.num_update == 12


def test_state_unpacks_like_mxnet_tuple():
    opt = optforge.Adam()
    mean, var = opt.create_state(0, np.zeros(3, np.float32))
    assert mean.dtype == np.float32 and var.shape == (3,)
    assert len(optforge.SGD().create_state(0, np.zeros(3))) == 0     # no momentum, no state


def test_updater_creates_states_and_round_trips_bit_exactly():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(5) for _ in range(6)]
    sched = lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.1)

    def run(steps, upd, w):
        for g in steps:
            upd(0, g, w)

    w_a = np.ones(5)
    upd_a = optforge.get_updater(optforge.create("lars", momentum=0.9, eta=0.5, learning_rate=None, lr_scheduler=sched))
    run(grads[:3], upd_a, w_a)
    blob = upd_a.get_states(dump_optimizer=True)
    w_b = w_a.copy()
    run(grads[3:], upd_a, w_a)
    upd_b = optforge.get_updater(optforge.create("sgd"))
    upd_b.set_states(blob)
    assert type(upd_b.optimizer) is optforge.LARS
    run(grads[3:], upd_b, w_b)
    np.testing.assert_array_equal(w_a, w_b)


def test_get_states_never_pickles():
    upd = optforge.get_updater(optforge.create("adam"))
    upd(0, np.ones(3), np.zeros(3))
    blob = upd.get_states()
    assert blob[:2] == b"PK"                                   # a zip (npz), not a pickle stream
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = optforge.get_updater(optforge.create("adam"))
        fresh.set_states(blob)
    np.testing.assert_array_equal(fresh.states[0].tensors["mean"], upd.states[0].tensors["mean"])
    with pytest.raises(ValueError):
        fresh.set_states(b"\x80\x04K\x01.")                    # a pickle is refused, not executed


def test_lamb_list_update_reads_each_learning_rate_after_counting_that_index():
    """MXNet's LAMB list path counts an index, then reads its lr, one index after another; with drifted
    counters and a decaying schedule the two parameters of one list call see different rates."""
    def run(as_list):
        sched = lr_scheduler.FactorScheduler(step=1, factor=0.5, base_lr=0.1)
        opt = optforge.LAMB(learning_rate=None, lr_scheduler=sched)
        ws = [np.ones(4) for _ in range(3)]
        states = [opt.create_state(i, w) for i, w in enumerate(ws)]
        g = np.full(4, 0.3)
        opt.update(1, ws[1], g, states[1])
        opt.update(2, ws[2], g, states[2])
        if as_list:
            opt.update([0, 2], [ws[0], ws[2]], [g, g], [states[0], states[2]])
        else:
            opt.update(0, ws[0], g, states[0])
            opt.update(2, ws[2], g, states[2])
        return ws

    for a, b in zip(run(True), run(False)):
        np.testing.assert_array_equal(a, b)
