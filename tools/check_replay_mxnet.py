"""Check that tests/replay.py reproduces the recorded fixtures when run against MXNet itself.

Run by hand, never in CI::

    /work/mxvenv/bin/python tools/check_replay_mxnet.py

Deterministic cases must match bit for bit. Stochastic (SGLD) cases must match bit for bit with
the recorded seed, pass the statistical check with other seeds, and fail it when the update is
deliberately wrong (no gradient term, or a 1.5x learning rate).
"""
import copy
import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import replay  # noqa: E402


class MXNetLib:
    def __init__(self, mx):
        self.mx = mx

    def create(self, name, **kwargs):
        return self.mx.optimizer.create(name, **kwargs)

    def scheduler(self, type_name, **args):
        return getattr(self.mx.lr_scheduler, type_name)(**args)

    def get_updater(self, opt):
        return self.mx.optimizer.get_updater(opt)

    def to_array(self, a):
        return self.mx.nd.array(a, dtype=a.dtype)  # nd.array alone would make float16 float32

    def to_numpy(self, x):
        return x.asnumpy()

    def seed(self, s):
        self.mx.random.seed(s)


class SeedOffset(MXNetLib):
    def __init__(self, mx, offset):
        super().__init__(mx)
        self.offset = offset

    def seed(self, s):
        self.mx.random.seed(s + self.offset)


def _raises(fn):
    try:
        fn()
    except AssertionError:
        return True
    return False


def check_stochastic_power(mx, case, arrays):
    """Other seeds pass; a missing gradient term or a 1.5x learning rate fail."""
    problems = []
    for off in range(1, 21):
        hist = replay.replay(case, arrays, SeedOffset(mx, off))
        try:
            replay.check_stochastic(case, arrays, hist)
        except AssertionError as e:
            problems.append("seed offset %d fails: %s" % (off, e))
    no_grad = {k: (np.zeros_like(v) if k.startswith("g") else v) for k, v in arrays.items()}
    hist = replay.replay(case, no_grad, SeedOffset(mx, 100))
    if not _raises(lambda: replay.check_stochastic(case, arrays, hist)):
        problems.append("zeroed gradients not detected")
    bad = copy.deepcopy(case)
    if bad["lr_scheduler"] is not None:
        bad["lr_scheduler"]["args"]["base_lr"] *= 1.5
    else:
        bad["kwargs"]["learning_rate"] *= 1.5
    hist = replay.replay(bad, arrays, SeedOffset(mx, 200))
    if not _raises(lambda: replay.check_stochastic(case, arrays, hist)):
        problems.append("1.5x learning rate not detected")
    return problems


def main():
    import mxnet as mx
    warnings.simplefilter("ignore")
    lib = MXNetLib(mx)
    cases = replay.load_cases()
    ids = [c["id"] for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    failed = []
    for case in cases:
        arrays = replay.load_arrays(case)
        try:
            counts = []
            hist = replay.replay(case, arrays, lib, counts)
            replay.check_deterministic(case, arrays, hist, rtol=0, atol=0)
            replay.check_counts(case, counts)
            if case["stochastic"]:
                replay.check_stochastic(case, arrays, hist)
                problems = check_stochastic_power(mx, case, arrays)
                assert not problems, "; ".join(problems)
        except Exception as e:  # noqa: BLE001 - collect everything
            failed.append(case["id"])
            print("FAIL %s: %s: %s" % (case["id"], type(e).__name__, e))
    print("%d/%d cases reproduce MXNet exactly" % (len(cases) - len(failed), len(cases)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
