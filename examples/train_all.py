"""Train a small MLP on scikit-learn's 8x8 digits with every optimizer; print a table, plot the curves.

    python examples/train_all.py [--steps 300] [--seed 0] [--only adam lion] [--plot out/train_all.png]

Every optimizer registered in optforge (the bundled MXNet classes, Adafactor and SM3) plus the three specs in
examples/specs/ (AdamW, AdaBelief, Lion, compiled in-process with `optforge.load_spec`) trains the
same 64-64-10 tanh MLP from the same initial weights on the same mini-batches, through
`optforge.get_updater`, as an MXNet 1.x training loop drives `mxnet.optimizer`. Forward and
backward are NumPy. The data (1797 digit images, 8x8 grey levels) ships inside scikit-learn.

A second, row-sparse problem compares Adam's lazy and standard updates: a click model whose
input is a bag of token ids, embedded by a 50,000 x 16 table whose gradient is an
`optforge.RowSparse` holding only the rows of the tokens in the batch.

Needs the `demo` extra: `pip install -e ".[demo]"` (scikit-learn, matplotlib).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import optforge
from optforge import native

HERE = Path(__file__).resolve().parent

# Per-optimizer settings for this problem (learning rates from a small sweep on the digits MLP).
SETTINGS = {
    "sgd": dict(learning_rate=0.1, momentum=0.9),
    "nag": dict(learning_rate=0.1, momentum=0.9),
    "adam": dict(learning_rate=0.01),
    "adamw": dict(learning_rate=0.01, wd=0.01),
    "adabelief": dict(learning_rate=0.01, wd=0.01),
    "lion": dict(learning_rate=0.003, wd=0.1),
    "adagrad": dict(learning_rate=0.1),
    "adadelta": dict(rho=0.9, epsilon=1e-4),
    "adamax": dict(learning_rate=0.02),
    "nadam": dict(learning_rate=0.01),
    "rmsprop": dict(learning_rate=0.003),
    "ftrl": dict(learning_rate=1.0, lamda1=1e-4),
    "ftml": dict(learning_rate=0.02),
    "dcasgd": dict(learning_rate=0.1, momentum=0.9),
    "sgld": dict(learning_rate=2e-4, rescale_grad=1347.0, seed=0),  # rescale to the summed log-likelihood (1347 images)
    "signum": dict(learning_rate=0.003, momentum=0.9),
    "lamb": dict(learning_rate=0.01),
    "lars": dict(learning_rate=1.0, momentum=0.9, eta=0.01),
    "lbsgd": dict(learning_rate=0.1, momentum=0.9, batch_scale=2, warmup_epochs=1, updates_per_epoch=50),
    "adafactor": dict(learning_rate=0.1),            # torch's relative step: min(lr, 1 / sqrt(t)) * rms(weight)
    "sm3": dict(learning_rate=0.3, momentum=0.9),
    "muon": dict(learning_rate=0.02),                # torch.optim.Muon's recipe: lr 0.02 on the matrices, the biases' AdamW shares it
    "shampoo": dict(learning_rate=1.0, epsilon=1e-3),     # (L + eps I)^(-1/4) G (R + eps I)^(-1/4): a unit-scale step
    "test": dict(rescale_grad=-0.05),   # Test adds rescale_grad * grad: a negative one descends
}
COMMON = dict(wd=1e-4)
NAMES = {0: "fc1_weight", 1: "fc1_bias", 2: "fc2_weight", 3: "fc2_bias"}


# ---- progress bar ---------------------------------------------------------------------------------

class Progress:
    """One line per task, redrawn in place on a terminal; only the finished line otherwise."""

    def __init__(self, label: str, total: int, width: int = 24):
        self.label, self.total, self.width = label, total, width
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, note: str = "") -> None:
        now = time.perf_counter()
        if done < self.total and (not self.tty or now - self.last < 0.05):
            return
        self.last = now
        fill = int(self.width * done / self.total)
        line = (f"\r{self.label:<16} |{'█' * fill}{'·' * (self.width - fill)}| {done:>4}/{self.total} "
                f"{now - self.t0:5.1f}s {note}")
        if self.tty:
            sys.stderr.write(line + "\x1b[K" + ("\n" if done >= self.total else ""))
        elif done >= self.total:
            sys.stderr.write(line[1:] + "\n")
        sys.stderr.flush()


# ---- the digits MLP ------------------------------------------------------------------------------

def load_digits_data(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return (xtr, ytr), (xte, yte)


def init_params(rng, d=64, h=64, classes=10):
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
    bar = Progress(name, steps)
    losses, update_time = [], 0.0
    for step in range(steps):
        idx = batches.integers(0, len(ytr), batch)
        loss, grads = forward_backward(params, xtr[idx], ytr[idx])
        losses.append(loss)
        t0 = time.perf_counter()
        updater(list(range(4)), grads, params)
        update_time += time.perf_counter() - t0
        bar.update(step + 1, f"loss {np.mean(losses[-20:]):.3f}")
    final, _ = forward_backward(params, xtr, ytr)
    return {"optimizer": name, "backend": opt.backend, "train_loss": final, "test_acc": accuracy(params, xte, yte),
            "ms_per_step": 1000 * update_time / steps, "curve": losses}


# ---- the row-sparse click model ------------------------------------------------------------------

def make_clicks(rng, n=20000, vocab=50000, bag=20, dim=16):
    """Bags of Zipf-distributed token ids; a click when a hidden linear score of the bag is high."""
    ids = np.minimum(rng.zipf(1.3, (n, bag)) - 1, vocab - 1).astype(np.int64)
    teacher = rng.standard_normal((vocab, dim)).astype(np.float32)
    score = teacher[ids].mean(1) @ rng.standard_normal(dim).astype(np.float32)
    y = (score + 0.3 * rng.standard_normal(n) > 0).astype(np.float32)
    split = int(0.8 * n)
    return (ids[:split], y[:split]), (ids[split:], y[split:]), vocab


def click_forward_backward(params, ids, y):
    """Mean-pooled embeddings -> logistic regression. The table's gradient is RowSparse."""
    emb, w, b = params
    rows, inverse = np.unique(ids, return_inverse=True)
    pooled = emb[ids].mean(1)
    z = pooled @ w + b[0]
    p = 1 / (1 + np.exp(-z))
    loss = float(-(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)).mean())
    dz = (p - y) / len(y)
    d_pooled = np.outer(dz, w) / ids.shape[1]
    d_rows = np.zeros((len(rows), emb.shape[1]), np.float32)
    np.add.at(d_rows, inverse.reshape(ids.shape), d_pooled[:, None, :])
    grads = [optforge.RowSparse(d_rows, rows, emb.shape), (pooled.T @ dz).astype(np.float32),
             np.array([dz.sum()], np.float32)]
    return loss, grads


def click_eval(params, ids, y):
    emb, w, b = params
    z = emb[ids].mean(1) @ w + b[0]
    p = 1 / (1 + np.exp(-z))
    loss = float(-(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)).mean())
    return loss, float(((z > 0) == (y > 0.5)).mean())


def train_clicks(lazy, data, steps, seed, batch=256):
    (xtr, ytr), (xte, yte), vocab = data
    rng = np.random.default_rng(seed + 3)
    params = [(0.1 * rng.standard_normal((vocab, 16))).astype(np.float32), np.zeros(16, np.float32),
              np.zeros(1, np.float32)]
    opt = optforge.create("adam", learning_rate=0.05, lazy_update=lazy)
    updater = optforge.get_updater(opt)
    batches = np.random.default_rng(seed + 4)
    label = f"adam lazy={lazy}"
    bar = Progress(label, steps)
    losses, update_time, rows = [], 0.0, 0
    for step in range(steps):
        idx = batches.integers(0, len(ytr), batch)
        loss, grads = click_forward_backward(params, xtr[idx], ytr[idx])
        losses.append(loss)
        rows += grads[0].nnz_rows
        t0 = time.perf_counter()
        updater(list(range(3)), grads, params)
        update_time += time.perf_counter() - t0
        bar.update(step + 1, f"loss {np.mean(losses[-20:]):.3f}")
    final, acc = click_eval(params, xtr, ytr)
    _, test_acc = click_eval(params, xte, yte)
    return {"optimizer": label, "backend": f"{opt.backend} (row kernel)" if lazy else opt.backend, "train_loss": final,
            "test_acc": test_acc, "ms_per_step": 1000 * update_time / steps, "curve": losses,
            "rows": rows / steps, "vocab": vocab}


# ---- output ---------------------------------------------------------------------------------------

def table(results, title):
    print(f"\n{title}")
    print(f"{'optimizer':<18} {'backend':<19} {'train loss':>10} {'test acc':>9} {'ms/step':>8}")
    print("-" * 68)
    for r in results:
        print(f"{r['optimizer']:<18} {r['backend']:<19} {r['train_loss']:>10.4f} {r['test_acc']:>9.3f} "
              f"{r['ms_per_step']:>8.3f}")


def smooth(curve, k=15):
    c = np.asarray(curve)
    kernel = np.ones(k) / k
    return np.convolve(np.pad(c, (k // 2, k - 1 - k // 2), mode="edge"), kernel, mode="valid")


def plot(results, sparse, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if sparse:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [2.2, 1]})
    else:
        fig, ax = plt.subplots(figsize=(10.5, 6.5))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(sorted(results, key=lambda r: r["train_loss"])):   # legend in order of final loss
        ax.plot(smooth(r["curve"]), color=colors[i % 10], linestyle=["-", "--", ":"][(i // 10) % 3], linewidth=1.6,
                label=f"{r['optimizer']} ({r['train_loss']:.3f})")
    ax.set_yscale("log")
    lowest = min(float(np.min(smooth(r["curve"]))) for r in results)
    ax.set_ylim(bottom=lowest / 4)        # room for the legend below the curves
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mini-batch, smoothed over 15 steps)")
    ax.set_title("8x8 digits, MLP 64-64-10: one line per optimizer (legend: final train loss)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8.5, ncol=2, loc="lower left", framealpha=0.9)
    if sparse:
        for r, c in zip(sparse, ["tab:blue", "tab:orange"]):
            ax2.plot(smooth(r["curve"]), color=c, linewidth=1.8,
                     label=f"{r['optimizer']}: {r['ms_per_step']:.2f} ms/step")
        ax2.set_xlabel("step")
        ax2.set_ylabel("training loss (smoothed)")
        ax2.set_title(f"row-sparse click model, {sparse[0]['vocab']:,}-row embedding\n"
                      f"(~{sparse[0]['rows']:.0f} rows per batch)")
        ax2.grid(True, alpha=0.3)
        ax2.legend(fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="optimizer names (default: every registered optimizer)")
    ap.add_argument("--plot", default="out/train_all.png", help="where to write the convergence plot")
    ap.add_argument("--no-sparse", action="store_true", help="skip the row-sparse click model")
    args = ap.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as e:
        sys.exit(f"{e.name} is missing: install the demo extra, `pip install -e \".[demo]\"` (or run `make demo`)")

    for spec in sorted((HERE / "specs").glob("*.opt")):       # compiled in memory, registered by name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optforge.load_spec(spec)
    names = args.only or sorted({cls.__name__.lower() for cls in optforge.registered().values()})
    data = load_digits_data(args.seed)

    if native.available() and os.environ.get("OPTFORGE_BACKEND", "auto") != "numpy":
        bar = Progress("native kernels", len(names))          # compiled once, then cached on disk
        for i, name in enumerate(names):
            native.library_for(optforge.registered()[name])
            bar.update(i + 1, f"(cached in {native.cache_dir()})")

    init_loss, _ = forward_backward(init_params(np.random.default_rng(args.seed + 1)), *data[0])
    print(f"MLP 64-64-10 on 8x8 digits: {len(data[0][1])} train / {len(data[1][1])} test images, "
          f"{args.steps} steps of batch 64; loss before training {init_loss:.3f}", file=sys.stderr)
    results = [train(name, data, args.steps, args.seed) for name in names]

    sparse = []
    if not args.no_sparse:
        clicks = make_clicks(np.random.default_rng(args.seed + 5))
        sparse = [train_clicks(lazy, clicks, args.steps, args.seed) for lazy in (True, False)]

    table(results, f"8x8 digits, MLP 64-64-10, {args.steps} steps (loss before training {init_loss:.3f})")
    if sparse:
        table(sparse, f"row-sparse click model: {sparse[0]['vocab']:,} x 16 embedding, "
                      f"~{sparse[0]['rows']:.0f} rows per batch, Adam lazy vs standard update")
        print(f"lazy update: {sparse[1]['ms_per_step'] / sparse[0]['ms_per_step']:.1f}x faster per step")
    path = Path(args.plot)
    plot(results, sparse, path)
    bad = [r["optimizer"] for r in results if not r["train_loss"] < init_loss]
    print(f"\n{len(results) - len(bad)}/{len(results)} optimizers reduced the training loss"
          + (f"; not: {', '.join(bad)}" if bad else "") + f". Convergence plot: {path}")
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
