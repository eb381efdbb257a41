"""The chunked NumPy kernels (large tensors: cache-sized chunks, in place, threads) equal the
straight-line kernels (small tensors) bit for bit, for every optimizer and the configurations that
change its equations."""
import numpy as np
import pytest

import optforge
from optforge import chunks

CONFIGS = [
    ("sgd", {}), ("sgd", dict(momentum=0.9, clip_gradient=0.05)), ("nag", {}), ("nag", dict(momentum=0.9)),
    ("signum", {}), ("signum", dict(momentum=0.0, wd_lh=0.01)), ("dcasgd", {}), ("dcasgd", dict(momentum=0.9)),
    ("lars", dict(momentum=0.9)), ("lbsgd", dict(momentum=0.9)), ("lbsgd", dict(batch_scale=2, warmup_strategy="lars")),
    ("adam", {}), ("adam", dict(clip_gradient=0.02)), ("adamax", {}), ("nadam", {}), ("adagrad", {}),
    ("adadelta", {}), ("ftml", {}), ("ftrl", {}), ("rmsprop", {}), ("rmsprop", dict(centered=True, clip_weights=0.5)),
    ("lamb", {}), ("lamb", dict(lower_bound=0.1, upper_bound=5.0)), ("sgld", dict(seed=3)), ("test", {}),
]


def _run(name, kwargs, dtype, n, min_size, monkeypatch):
    monkeypatch.setattr(chunks, "MIN_SIZE", min_size)
    rng = np.random.default_rng(7)
    opt = optforge.create(name, learning_rate=0.05, wd=1e-3, **kwargs)
    opt.backend = "numpy"
    w = rng.standard_normal(n).astype(dtype)
    state = opt.create_state(0, w)
    for _ in range(3):
        g = (rng.standard_normal(n) * 0.1).astype(dtype)
        opt.update(0, w, g, state)
    return w, {k: v for k, v in state.tensors.items() if v is not None}


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{'-'.join(k) or 'default'}" for n, k in CONFIGS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_equals_straight_line(name, kwargs, dtype, monkeypatch):
    n = 3 * chunks.CHUNK * 4 + 37          # several chunks, a ragged last one, two threads
    monkeypatch.setattr(chunks, "THREAD_MIN", 2 * chunks.CHUNK)
    w1, s1 = _run(name, kwargs, dtype, n, 1 << 40, monkeypatch)
    w2, s2 = _run(name, kwargs, dtype, n, 1, monkeypatch)
    np.testing.assert_array_equal(w1, w2)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k], err_msg=k)


def test_strided_weight_takes_the_straight_line():
    w = np.zeros((1 << 17, 2), np.float32)[:, 0]
    assert not chunks.use(w, w)
    assert chunks.use(np.zeros(1 << 17, np.float32), None)
