"""optforge optimizers against trajectories recorded from MXNet 1.9.1 (tools/record_mxnet.py).

Each case replays the recorded gradients through ``optforge.create(...)`` exactly as the recorder
drove ``mxnet.optimizer`` and compares the weights after every step (statistics for SGLD) and
``num_update`` after every step.
The fixture format and the MXNet behaviours left out on purpose: tests/fixtures/mxnet/README.md.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replay  # noqa: E402

CASES = replay.load_cases()
OPTIMIZERS = {"sgd", "ccsgd", "nag", "adam", "adagrad", "adadelta", "adamax", "nadam", "rmsprop",
              "ftrl", "ftml", "dcasgd", "sgld", "signum", "lamb", "lars", "lbsgd", "test"}


class OptforgeLib:
    """replay() adapter: optforge works on plain NumPy arrays updated in place."""

    def __init__(self):
        import optforge
        self.optforge = optforge

    def create(self, name, **kwargs):
        return self.optforge.create(name, **kwargs)

    def scheduler(self, type_name, **args):
        return getattr(self.optforge.lr_scheduler, type_name)(**args)

    def get_updater(self, opt):
        return self.optforge.get_updater(opt)

    def to_array(self, a):
        return np.array(a, copy=True)

    def to_numpy(self, x):
        return np.asarray(x)

    def seed(self, s):
        np.random.seed(s)
        rnd = getattr(self.optforge, "random", None)
        if rnd is not None and hasattr(rnd, "seed"):
            rnd.seed(s)


BACKENDS = ["numpy"] + (["native"] if __import__("optforge").native.available() else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Every case runs on each CPU backend (the native one needs a C++ compiler)."""
    monkeypatch.setenv("OPTFORGE_BACKEND", request.param)
    return request.param


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_mxnet(case, backend):
    arrays = replay.load_arrays(case)
    counts = []
    history = replay.replay(case, arrays, OptforgeLib(), counts)
    replay.check(case, arrays, history)
    replay.check_counts(case, counts)


# ---------------------------------------------------------------- the fixtures themselves


def test_case_ids_unique_and_every_optimizer_covered():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    assert {c["optimizer"] for c in CASES} == OPTIMIZERS


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_fixture_well_formed(case):
    arrays = replay.load_arrays(case)
    n, steps = len(case["shapes"]), case["steps"]
    names = {"w0_%d" % i for i in range(n)}
    names |= {"%s%d_%d" % (p, s, i) for p in "gw" for s in range(1, steps + 1) for i in range(n)}
    assert set(arrays) == names
    for name, a in arrays.items():
        assert a.dtype == np.dtype(case["dtype"]), name
        assert list(a.shape) == case["shapes"][int(name.split("_")[1])], name
        assert np.all(np.isfinite(a)), name
    assert case["mode"] in ("single", "list", "updater")
    assert len(case["num_update"]) == steps and all(isinstance(n, int) for n in case["num_update"])
    assert case["multi_precision"] == bool(case["kwargs"].get("multi_precision", False))


def test_test_optimizer_never_counts():
    """MXNet's Test never counts its updates (test-begin-num-update: num_update stays 7)."""
    case = next(c for c in CASES if c["id"] == "test-begin-num-update")
    assert case["num_update"] == [7] * case["steps"]
    assert next(c for c in CASES if c["id"] == "sgd-basic")["num_update"] == [1, 2, 3, 4]
