"""Every optimizer against a plain float64 reference written here from the published update rules
(and MXNet 1.x's documented behaviour), over randomized hyperparameters. Independent of the
recorded MXNet fixtures: these references were written separately from the specs."""
import math

import numpy as np
import pytest

import optforge

STEPS = 5


def clipg(g, c):
    return np.clip(g, -c, c) if c is not None and c > 0 else g


def ref_sgd(w, gs, lr, wd, rescale, clip, momentum=0.0):
    mom = np.zeros_like(w)
    for g in gs:
        g = clipg(rescale * g, clip)
        if momentum:
            mom = momentum * mom - lr * wd * w - lr * g
            w = w + mom
        else:
            w = (1 - lr * wd) * w - lr * g
        yield w


def ref_nag(w, gs, lr, wd, rescale, clip, momentum=0.0):
    mom = np.zeros_like(w)
    for g in gs:
        g = clipg(rescale * g, clip)
        if momentum:
            mom = momentum * mom
            w = w + momentum * mom - (1 + momentum) * lr * (g + wd * w)
            mom = mom - lr * (g + wd * w)
        else:
            w = (1 - lr * wd) * w - lr * g
        yield w


def ref_adam(w, gs, lr, wd, rescale, clip, beta1=0.9, beta2=0.999, epsilon=1e-8):
    m = v = np.zeros_like(w)
    for t, g in enumerate(gs, 1):
        g = clipg(rescale * g + wd * w, clip)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t) * m / (np.sqrt(v) + epsilon)
        yield w


def ref_adagrad(w, gs, lr, wd, rescale, clip, eps=1e-7):
    h = np.zeros_like(w)
    for g in gs:
        g = clipg(rescale * g, clip)
        h = h + g * g
        w = w - lr * (g / np.sqrt(h + eps) + wd * w)
        yield w


def ref_adadelta(w, gs, lr, wd, rescale, clip, rho=0.9, epsilon=1e-5):
    ag = ad = np.zeros_like(w)
    for g in gs:
        g = clipg(rescale * g, clip)
        ag = rho * ag + (1 - rho) * g * g
        d = np.sqrt(ad + epsilon) / np.sqrt(ag + epsilon) * g
        ad = rho * ad + (1 - rho) * d * d
        w = w - d - wd * w
        yield w


def ref_adamax(w, gs, lr, wd, rescale, clip, beta1=0.9, beta2=0.999):
    m = u = np.zeros_like(w)
    for t, g in enumerate(gs, 1):
        g = clipg(rescale * g + wd * w, clip)
        m = beta1 * m + (1 - beta1) * g
        u = np.maximum(beta2 * u, np.abs(g))
        w = w - lr / (1 - beta1 ** t) * m / u
        yield w


def ref_nadam(w, gs, lr, wd, rescale, clip, beta1=0.9, beta2=0.999, epsilon=1e-8, schedule_decay=0.004):
    m = v = np.zeros_like(w)
    sched = 1.0
    for t, g in enumerate(gs, 1):
        g = clipg(rescale * g + wd * w, clip)
        mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * schedule_decay))
        mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * schedule_decay))
        sched *= mu_t
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_bar = (1 - mu_t) * g / (1 - sched) + mu_next * m / (1 - sched * mu_next)
        w = w - lr * m_bar / (np.sqrt(v / (1 - beta2 ** t)) + epsilon)
        yield w


def ref_rmsprop(w, gs, lr, wd, rescale, clip, gamma1=0.9, gamma2=0.9, epsilon=1e-8, centered=False,
                clip_weights=None):
    n = ga = delta = np.zeros_like(w)
    for g in gs:
        g = clipg(rescale * g + wd * w, clip)
        n = (1 - gamma1) * g * g + gamma1 * n
        if centered:
            ga = (1 - gamma1) * g + gamma1 * ga
            delta = gamma2 * delta - lr * g / np.sqrt(n - ga * ga + epsilon)
            w = w + delta
        else:
            w = w - lr * g / np.sqrt(n + epsilon)
        if clip_weights:
            w = np.clip(w, -clip_weights, clip_weights)
        yield w


def ref_ftrl(w, gs, lr, wd, rescale, clip, lamda1=0.01, beta=1.0):
    z = n = np.zeros_like(w)
    for g in gs:
        g = clipg(rescale * g, clip)
        z = z + g - (np.sqrt(n + g * g) - np.sqrt(n)) * w / lr
        n = n + g * g
        w = (np.sign(z) * lamda1 - z) / ((beta + np.sqrt(n)) / lr + wd) * (np.abs(z) > lamda1)
        yield w


def ref_ftml(w, gs, lr, wd, rescale, clip, beta1=0.6, beta2=0.999, epsilon=1e-8):
    d_prev = v = z = np.zeros_like(w)
    for t, g in enumerate(gs, 1):
        g = clipg(rescale * g + wd * w, clip)
        v = beta2 * v + (1 - beta2) * g * g
        d = (1 - beta1 ** t) / lr * (np.sqrt(v / (1 - beta2 ** t)) + epsilon)
        z = beta1 * z + (1 - beta1) * g - (d - beta1 * d_prev) * w
        d_prev = d
        w = -z / d
        yield w


def ref_dcasgd(w, gs, lr, wd, rescale, clip, momentum=0.0, lamda=0.04):
    prev = w.copy()
    mom = np.zeros_like(w)
    for g in gs:
        g = clipg(rescale * g, clip)
        step = -lr * (g + wd * w + lamda * g * g * (w - prev))
        if momentum:
            mom = momentum * mom + step
            step = mom
        prev = w
        w = w + step
        yield w


def ref_signum(w, gs, lr, wd, rescale, clip, momentum=0.9, wd_lh=0.0):
    mom = np.zeros_like(w)
    for g in gs:
        g = clipg(rescale * g, clip)
        if momentum:
            mom = momentum * mom - (1 - momentum) * (wd * w + g)
            w = (1 - lr * wd_lh) * w + lr * np.sign(mom)
        else:
            w = (1 - lr * (wd + wd_lh)) * w - lr * np.sign(g)
        yield w


def ref_lamb(w, gs, lr, wd, rescale, clip, beta1=0.9, beta2=0.999, epsilon=1e-6, lower_bound=None,
             upper_bound=None, bias_correction=True):
    m = v = np.zeros_like(w)
    for t, g in enumerate(gs, 1):
        g = clipg(rescale * g, clip)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        mh, vh = (m / (1 - beta1 ** t), v / (1 - beta2 ** t)) if bias_correction else (m, v)
        upd = mh / (np.sqrt(vh) + epsilon) + wd * w
        r1 = np.linalg.norm(w)
        if lower_bound:
            r1 = max(r1, lower_bound)
        if upper_bound:
            r1 = min(r1, upper_bound)
        r2 = np.linalg.norm(upd)
        w = w - lr * (r1 / r2 if r1 > 0 and r2 > 0 else 1.0) * upd
        yield w


def ref_lars(w, gs, lr, wd, rescale, clip, momentum=0.0, eta=0.001, eps=0.0):
    mom = np.zeros_like(w)
    for g in gs:
        wn, gn = np.linalg.norm(w), np.linalg.norm(g) * rescale
        llr = lr * eta * wn / (gn + wd * wn + eps) if wn > 0 and gn > 0 else lr
        g = clipg(rescale * g, clip)
        if momentum:
            mom = momentum * mom - llr * wd * w - llr * g
            w = w + mom
        else:
            w = (1 - llr * wd) * w - llr * g
        yield w


def ref_lbsgd(w, gs, lr, wd, rescale, clip, momentum=0.0, batch_scale=1, warmup_strategy="linear",
              warmup_epochs=5, updates_per_epoch=32):
    mom = np.zeros_like(w)
    acc = np.zeros_like(w)
    nwup = warmup_epochs * updates_per_epoch
    for count, g in enumerate(gs, 1):
        acc = acc + g
        if count % batch_scale == 0:
            g, acc = clipg(rescale * acc / batch_scale, clip), np.zeros_like(w)
            if count >= nwup:
                mult = batch_scale
            elif nwup <= 1:
                mult = 1.0
            elif warmup_strategy == "linear":
                mult = 1 + (batch_scale - 1) * count / nwup
            elif warmup_strategy == "power2":
                mult = 1 + (batch_scale - 1) * count ** 2 / nwup ** 2
            else:
                mult = 1 + (batch_scale - 1) * math.sqrt(count / nwup)
            if momentum:
                mom = momentum * mom - lr * mult * (wd * w + g)
                w = w + mom
            else:
                w = (1 - lr * mult * wd) * w - lr * mult * g
        yield w


def ref_test(w, gs, lr, wd, rescale, clip):
    for g in gs:
        w = w + rescale * g
        yield w


CASES = [
    ("sgd", ref_sgd, {"momentum": [0.0, 0.9]}),
    ("nag", ref_nag, {"momentum": [0.0, 0.7]}),
    ("adam", ref_adam, {"beta1": [0.9, 0.5], "beta2": [0.999, 0.9], "epsilon": [1e-8, 1e-3]}),
    ("adagrad", ref_adagrad, {"eps": [1e-7, 0.1]}),
    ("adadelta", ref_adadelta, {"rho": [0.9, 0.5], "epsilon": [1e-5, 1e-2]}),
    ("adamax", ref_adamax, {"beta1": [0.9, 0.7], "beta2": [0.999, 0.9]}),
    ("nadam", ref_nadam, {"beta1": [0.9, 0.8], "schedule_decay": [0.004, 0.1]}),
    ("rmsprop", ref_rmsprop, {"centered": [False, True], "gamma1": [0.9, 0.7], "clip_weights": [None, 0.8]}),
    ("ftrl", ref_ftrl, {"lamda1": [0.01, 0.3], "beta": [1.0, 0.5]}),
    ("ftml", ref_ftml, {"beta1": [0.6, 0.9], "epsilon": [1e-8, 1e-3]}),
    ("dcasgd", ref_dcasgd, {"momentum": [0.0, 0.5], "lamda": [0.04, 0.5]}),
    ("signum", ref_signum, {"momentum": [0.0, 0.9], "wd_lh": [0.0, 0.1]}),
    ("lamb", ref_lamb, {"bias_correction": [True, False], "lower_bound": [None, 0.5], "upper_bound": [None, 2.0]}),
    ("lars", ref_lars, {"momentum": [0.0, 0.9], "eta": [0.001, 0.5], "eps": [0.0, 0.1]}),
    ("lbsgd", ref_lbsgd, {"momentum": [0.0, 0.9], "batch_scale": [1, 3],
                          "warmup_strategy": ["linear", "power2", "sqrt"], "updates_per_epoch": [2, 32]}),
    ("test", ref_test, {}),
]


def _configs():
    rng = np.random.default_rng(1234)
    for name, ref, grid in CASES:
        for k in range(6):
            hyper = {key: values[rng.integers(len(values))] for key, values in grid.items()}
            base = {"learning_rate": float(rng.choice([0.01, 0.1, 0.5])), "wd": float(rng.choice([0.0, 0.01, 0.3])),
                    "rescale_grad": float(rng.choice([1.0, 0.5])), "clip_gradient": [None, 0.3][k % 2]}
            yield pytest.param(name, ref, hyper, base, k, id=f"{name}-{k}")


@pytest.mark.parametrize("name,ref,hyper,base,seed", list(_configs()))
def test_matches_reference(name, ref, hyper, base, seed):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(STEPS)]
    opt = optforge.create(name, **hyper, **base)
    w = w0.copy()
    state = opt.create_state(0, w)
    want = list(ref(w0.copy(), grads, base["learning_rate"], base["wd"], base["rescale_grad"],
                    base["clip_gradient"], **hyper))
    for step, (g, expected) in enumerate(zip(grads, want), 1):
        opt.update(0, w, g, state)
        np.testing.assert_allclose(w, expected, rtol=1e-10, atol=1e-12, err_msg=f"step {step}")


@pytest.mark.parametrize("name", sorted({c.__name__.lower() for c in optforge.registered().values()}))
def test_list_update_equals_single_updates(name):
    """A list update of several parameters equals updating them one call each (first step)."""
    rng = np.random.default_rng(7)
    shapes = [(3, 4), (5,), (2, 3, 2)]
    ws = [rng.standard_normal(s) for s in shapes]
    gs = [rng.standard_normal(s) for s in shapes]
    kw = {"seed": 3} if name == "sgld" else {}
    a, b = optforge.create(name, **kw), optforge.create(name, **kw)
    wa, wb = [w.copy() for w in ws], [w.copy() for w in ws]
    sa = [a.create_state(i, w) for i, w in enumerate(wa)]
    sb = [b.create_state(i, w) for i, w in enumerate(wb)]
    a.update(list(range(3)), wa, gs, sa)
    for i in range(3):
        b.update(i, wb[i], gs[i], sb[i])
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted({c.__name__.lower() for c in optforge.registered().values()} - {"sgld"}))
def test_float16_multi_precision_tracks_float32(name):
    """fp16 weights with multi_precision follow the float32 trajectory to fp16 rounding."""
    rng = np.random.default_rng(3)
    w32 = rng.standard_normal((8, 8)).astype(np.float32)
    w16 = w32.astype(np.float16)
    kw = {"learning_rate": 0.01} if name not in ("adadelta", "test") else {}
    o32, o16 = optforge.create(name, **kw), optforge.create(name, multi_precision=True, **kw)
    s32, s16 = o32.create_state_multi_precision(0, w32), o16.create_state_multi_precision(0, w16)
    assert s16.master is not None and s16.master.dtype == np.float32
    w32 = w16.astype(np.float32)  # same start
    s32 = o32.create_state_multi_precision(0, w32)
    for _ in range(4):
        g = rng.standard_normal((8, 8)).astype(np.float32)
        o32.update_multi_precision(0, w32, g, s32)
        o16.update_multi_precision(0, w16, g.astype(np.float16), s16)
    np.testing.assert_allclose(s16.master, w32, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(w16, s16.master.astype(np.float16))
