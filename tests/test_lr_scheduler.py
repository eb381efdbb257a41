"""optforge.lr_scheduler against rates recorded from MXNet 1.x (tools/record_mxnet_schedulers.py)."""
import doctest
import json
import pathlib
import re

import pytest

from optforge import lr_scheduler

FIXTURE = json.loads((pathlib.Path(__file__).parent / "fixtures" / "mxnet" / "schedulers.json")
                     .read_text())
CASES = FIXTURE["cases"]
ERRORS = FIXTURE["errors"]


def build(case):
    """The scheduler of a recorded case, with ``base_lr`` overwritten as the optimizer does."""
    sched = getattr(lr_scheduler, case["cls"])(**case["kwargs"])
    lr = case["optimizer_lr"]
    if lr is not None and sched.base_lr != lr:
        sched.base_lr = lr
    return sched


def assert_rates(got, want):
    assert got == pytest.approx(want, rel=1e-12, abs=0)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_mxnet(case):
    sched = build(case)
    assert_rates([sched(n) for n in case["calls"]], case["lrs"])
    for key, value in case["final_state"].items():
        assert getattr(sched, key) == pytest.approx(value, rel=1e-12, abs=0), key


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_config_round_trip_mid_training(case):
    calls = case["calls"]
    for split in range(len(calls) + 1):
        original = build(case)
        head = [original(n) for n in calls[:split]]
        cfg = json.loads(json.dumps(original.get_config()))
        rebuilt = lr_scheduler.from_config(cfg)
        assert type(rebuilt) is type(original)
        assert rebuilt.get_config() == cfg
        tail = [rebuilt(n) for n in calls[split:]]
        assert tail == [original(n) for n in calls[split:]]
        assert_rates(head + tail, case["lrs"])


def test_config_shape():
    sched = lr_scheduler.PolyScheduler(max_update=10, base_lr=0.5, pwr=3, warmup_steps=2)
    sched.base_lr = 0.2  # as the optimizer does
    assert sched.get_config() == {
        "type": "PolyScheduler",
        "args": {"max_update": 10, "pwr": 3, "final_lr": 0, "base_lr": 0.5, "warmup_steps": 2,
                 "warmup_begin_lr": 0, "warmup_mode": "linear"},
        "state": {"base_lr": 0.2},
    }


def test_from_config_without_state_is_fresh():
    cfg = {"type": "MultiFactorScheduler", "args": {"step": [2, 4], "factor": 0.5, "base_lr": 1.0}}
    sched = lr_scheduler.from_config(cfg)
    assert [sched(n) for n in range(6)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("err", ERRORS, ids=[f"{e['cls']}-{e['arg']}-{i}"
                                             for i, e in enumerate(ERRORS)])
def test_rejects_what_mxnet_rejects(err):
    # MXNet raises ValueError or a bare AssertionError; we raise ValueError naming the argument
    with pytest.raises(ValueError, match=re.escape(err["arg"])):
        getattr(lr_scheduler, err["cls"])(**err["kwargs"])


@pytest.mark.parametrize("cls", [lr_scheduler.PolyScheduler, lr_scheduler.CosineScheduler])
@pytest.mark.parametrize("warmup_steps", [10, 11])
def test_rejects_warmup_not_shorter_than_max_update(cls, warmup_steps):
    # deliberate: MXNet accepts these, then divides by zero (==) or never decays (>)
    with pytest.raises(ValueError, match="max_update"):
        cls(max_update=10, warmup_steps=warmup_steps)


GOOD = {"type": "FactorScheduler", "args": {"step": 3, "factor": 0.5},
        "state": {"base_lr": 0.01, "count": 0}}


@pytest.mark.parametrize("cfg, message", [
    ([], "must be a dict"),
    ({"type": "StepLR", "args": {}}, "unknown scheduler type 'StepLR'"),
    ({"type": "LRScheduler", "args": {}}, "unknown scheduler type"),
    ({"args": {"step": 3}}, r"missing key\(s\) \['type'\]"),
    ({**GOOD, "extra": 1}, r"unknown key\(s\) \['extra'\]"),
    ({**GOOD, "args": {"factor": 0.5}}, r"missing key\(s\) \['step'\]"),
    ({**GOOD, "args": {"step": 3, "pwr": 2}}, r"unknown key\(s\) \['pwr'\]"),
    ({**GOOD, "args": {"step": 0}}, "step"),
    ({**GOOD, "state": {"base_lr": 0.1}}, r"missing key\(s\) \['count'\]"),
    ({**GOOD, "state": {"base_lr": 0.1, "count": 0, "lr": 1}}, r"unknown key\(s\) \['lr'\]"),
    ({**GOOD, "state": {"base_lr": "0.1", "count": 0}}, "state base_lr"),
    ({"type": "MultiFactorScheduler", "args": {"step": [2, 4]},
      "state": {"base_lr": 0.1, "count": 0, "cur_step_ind": 3}}, "state cur_step_ind"),
], ids=lambda x: None)
def test_from_config_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        lr_scheduler.from_config(cfg)


def test_warmup_lr_outside_warmup():
    sched = lr_scheduler.FactorScheduler(step=2, warmup_steps=3)
    assert sched.get_warmup_lr(2) == pytest.approx(0.01 * 2 / 3)
    with pytest.raises(ValueError, match="warmup"):
        sched.get_warmup_lr(3)


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        lr_scheduler.LRScheduler()(0)


def test_docstring_examples():
    assert doctest.testmod(lr_scheduler).failed == 0
