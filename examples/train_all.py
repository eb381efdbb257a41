"""Train the same small MLP with every bundled optimizer and print a results table.

    python examples/train_all.py [--steps 300] [--seed 0]

Data: a synthetic 3-class problem (points from a random teacher network, with label noise),
split into train and test. Model: 20 -> 64 (tanh) -> 3 softmax, forward and backward in NumPy.
Each optimizer trains from the same initial weights on the same mini-batches, through
`optforge.get_updater`, as an MXNet 1.x training loop would drive `mxnet.optimizer`.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import optforge

# Per-optimizer settings for this problem (learning rates picked by a small sweep).
SETTINGS = {
    "sgd": dict(learning_rate=0.1, momentum=0.9),
    "nag": dict(learning_rate=0.1, momentum=0.9),
    "adam": dict(learning_rate=0.01),
    "adagrad": dict(learning_rate=0.1),
    "adadelta": dict(rho=0.9, epsilon=1e-4),
    "adamax": dict(learning_rate=0.02),
    "nadam": dict(learning_rate=0.01),
    "rmsprop": dict(learning_rate=0.003),
    "ftrl": dict(learning_rate=0.5, lamda1=1e-4),
    "ftml": dict(learning_rate=0.02),
    "dcasgd": dict(learning_rate=0.1),
    "sgld": dict(learning_rate=5e-5, rescale_grad=2400.0, seed=0),  # rescale: gradient of the summed log-likelihood
    "signum": dict(learning_rate=0.003, momentum=0.9),
    "lamb": dict(learning_rate=0.02),
    "lars": dict(learning_rate=1.0, momentum=0.9, eta=0.02),
    "lbsgd": dict(learning_rate=0.1, momentum=0.9, batch_scale=2, warmup_epochs=1, updates_per_epoch=50),
    "test": dict(rescale_grad=-0.05),   # Test adds rescale_grad * grad: a negative one descends
}
COMMON = dict(wd=1e-4)
NAMES = {0: "fc1_weight", 1: "fc1_bias", 2: "fc2_weight", 3: "fc2_bias"}


def make_data(rng, n=3000, d=20, classes=3):
    x = rng.standard_normal((n, d)).astype(np.float32)
    teacher = rng.standard_normal((d, 16)) / np.sqrt(d), rng.standard_normal((16, classes))
    y = np.argmax(np.tanh(x @ teacher[0]) @ teacher[1], axis=1)
    flip = rng.random(n) < 0.05
    y[flip] = rng.integers(0, classes, flip.sum())
    split = int(0.8 * n)
    return (x[:split], y[:split]), (x[split:], y[split:])


def init_params(rng, d=20, h=64, classes=3):
    return [(rng.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32), np.zeros(h, np.float32),
            (rng.standard_normal((h, classes)) / np.sqrt(h)).astype(np.float32), np.zeros(classes, np.float32)]


def forward_backward(params, x, y):
    w1, b1, w2, b2 = params
    h = np.tanh(x @ w1 + b1)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    d_logits = p
    d_logits[np.arange(n), y] -= 1
    d_logits /= n
    d_h = (d_logits @ w2.T) * (1 - h * h)
    grads = [x.T @ d_h, d_h.sum(0), h.T @ d_logits, d_logits.sum(0)]
    return loss, [g.astype(np.float32) for g in grads]


def accuracy(params, x, y):
    w1, b1, w2, b2 = params
    return float((np.argmax(np.tanh(x @ w1 + b1) @ w2 + b2, axis=1) == y).mean())


def train(name, data, steps, seed, batch=64):
    (xtr, ytr), (xte, yte) = data
    params = init_params(np.random.default_rng(seed + 1))
    opt = optforge.create(name, param_idx2name=NAMES, **{**COMMON, **SETTINGS.get(name, {})})
    updater = optforge.get_updater(opt)
    batches = np.random.default_rng(seed + 2)
    losses, update_time = [], 0.0
    for _ in range(steps):
        idx = batches.integers(0, len(ytr), batch)
        loss, grads = forward_backward(params, xtr[idx], ytr[idx])
        losses.append(loss)
        t0 = time.perf_counter()
        updater(list(range(4)), grads, params)
        update_time += time.perf_counter() - t0
    final, _ = forward_backward(params, xtr, ytr)
    return {"optimizer": name, "train_loss": final, "test_acc": accuracy(params, xte, yte),
            "ms_per_step": 1000 * update_time / steps, "curve": losses}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="optimizer names (default: every registered optimizer)")
    args = ap.parse_args(argv)
    data = make_data(np.random.default_rng(args.seed))
    names = args.only or sorted({cls.__name__.lower() for cls in optforge.registered().values()})
    init_loss, _ = forward_backward(init_params(np.random.default_rng(args.seed + 1)), *data[0])
    print(f"MLP 20-64-3 on {len(data[0][1])} train / {len(data[1][1])} test points, {args.steps} steps of "
          f"batch 64; loss before training {init_loss:.3f}\n")
    print(f"{'optimizer':<10} {'train loss':>10} {'test acc':>9} {'ms/step':>8}")
    print("-" * 40)
    results = []
    for name in names:
        r = train(name, data, args.steps, args.seed)
        results.append(r)
        print(f"{r['optimizer']:<10} {r['train_loss']:>10.4f} {r['test_acc']:>9.3f} {r['ms_per_step']:>8.3f}")
    bad = [r["optimizer"] for r in results if not r["train_loss"] < init_loss]
    print(f"\n{len(results) - len(bad)}/{len(results)} optimizers reduced the training loss"
          + (f"; not: {', '.join(bad)}" if bad else ""))
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
