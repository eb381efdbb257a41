"""Train a small MLP on scikit-learn's 8x8 digits with every optimizer; print a table, plot the curves.

    python examples/train_all.py [--steps 300] [--seed 0] [--only adam lion] [--plot out/train_all.png]
                                 [--threads N] [--no-sparse]

Every optimizer registered in optforge (the bundled MXNet classes, Adafactor, SM3, Muon, Shampoo, AdamW, Adam8bit,
AdaBelief, Lion, and the torch.optim classes TorchSGD, TorchAdam, ...) trains the
same 64-64-10 tanh MLP from the same initial weights on the same mini-batches, through
`optforge.get_updater`, as an MXNet 1.x training loop drives `mxnet.optimizer`. Forward and
backward are NumPy. The data (1797 digit images, 8x8 grey levels) ships inside scikit-learn.

A second, row-sparse problem compares Adam's lazy and standard updates: a click model whose
input is a bag of token ids, embedded by a 50,000 x 16 table whose gradient is an
`optforge.RowSparse` holding only the rows of the tokens in the batch. It runs with Adam's
default beta1 = 0.9 and with beta1 = 0 (no momentum), which shows where the two updates differ.

ms/step is the median time of one update call (all parameters) over the steps after a warm-up of
10 (the first calls load the kernels and start OpenMP's threads); p90 is its 90th percentile.
The native kernels' OpenMP thread count is printed: one unless set with --threads or OMP_NUM_THREADS
(on a machine busy with other work, more threads than free cores make the timings swing).

Needs the `demo` extra: `pip install -e ".[demo]"` (scikit-learn, matplotlib).
"""
from __future__ import annotations

import argparse
import os
import textwrap
import sys
import time
from pathlib import Path

import numpy as np

import optforge
from optforge import native


# Per-optimizer settings for this problem (learning rates from a small sweep on the digits MLP).
SETTINGS = {
    "sgd": dict(learning_rate=0.1, momentum=0.9),
    "nag": dict(learning_rate=0.1, momentum=0.9),
    "adam": dict(learning_rate=0.01),
    "adamw": dict(learning_rate=0.01, wd=0.01),
    "adam8bit": dict(learning_rate=0.01, wd=0.01),   # AdamW's update, its moments stored in 8 bits
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
    "prodigy": dict(learning_rate=1.0),              # prodigyopt's recipe: lr 1, the step size d is estimated
    # torch.optim's semantics (wd is torch's weight_decay)
    "torchsgd": dict(learning_rate=0.1, momentum=0.9),
    "torchadam": dict(learning_rate=0.01),
    "torchadamw": dict(learning_rate=0.01, wd=0.01),
    "torchnadam": dict(learning_rate=0.01),
    "torchradam": dict(learning_rate=0.01),
    "torchadamax": dict(learning_rate=0.02),
    "torchadadelta": dict(learning_rate=1.0, eps=1e-4),
    "torchrmsprop": dict(learning_rate=0.003),
    "torchadagrad": dict(learning_rate=0.1),
    "torchrprop": dict(learning_rate=0.001, step_size_max=0.01),   # meant for full batches: small steps
    "torchasgd": dict(learning_rate=0.1),
    "test": dict(rescale_grad=-0.05),   # Test adds rescale_grad * grad: a negative one descends
}
COMMON = dict(wd=1e-4)
# One plot panel per family, for this demo's plot only (an optimizer not listed goes to "other").
FAMILIES = {
    "SGD and momentum": ["sgd", "nag", "dcasgd", "lbsgd", "lars", "sgld", "test"],
    "Adam family": ["adam", "adamw", "adam8bit", "adabelief", "adamax", "nadam", "ftml", "lamb", "prodigy"],
    "sign-based": ["signum", "lion"],
    "per-coordinate accumulators": ["adagrad", "adadelta", "rmsprop", "ftrl", "adafactor", "sm3"],
    "torch.optim semantics": ["torchsgd", "torchadam", "torchadamw", "torchnadam", "torchradam", "torchadamax",
                              "torchadadelta", "torchrmsprop", "torchadagrad", "torchrprop", "torchasgd"],
}
WARMUP = 10     # update calls not timed (kernel loading, OpenMP thread start-up)
TAIL = 20       # the plotted curve: mean mini-batch loss of the last TAIL steps
THREADS_SOURCE = "OMP_NUM_THREADS"   # who chose the OpenMP thread count (set by main)
THREADS_REQUESTED = None             # the count main put into OMP_NUM_THREADS
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
    losses, times = [], []
    for step in range(steps):
        idx = batches.integers(0, len(ytr), batch)
        loss, grads = forward_backward(params, xtr[idx], ytr[idx])
        losses.append(loss)
        t0 = time.perf_counter()
        updater(list(range(4)), grads, params)
        times.append(time.perf_counter() - t0)
        bar.update(step + 1, f"loss {np.mean(losses[-TAIL:]):.3f}")
    final, _ = forward_backward(params, xtr, ytr)
    return {"optimizer": name, "backend": opt.backend, "train_loss": final, "test_acc": accuracy(params, xte, yte),
            "curve": losses, **timing(times)}


def timing(times):
    """Median and 90th percentile of the update times after the warm-up, in ms."""
    timed = np.asarray(times[WARMUP:] if len(times) > WARMUP else times) * 1000
    return {"ms_per_step": float(np.median(timed)), "ms_p90": float(np.percentile(timed, 90)), "timed": len(timed)}


def trailing(curve, k=TAIL):
    """The mean of the last k values at every step (fewer at the start): the plotted curve."""
    c = np.cumsum(np.concatenate([[0.0], np.asarray(curve, np.float64)]))
    n = np.arange(1, len(curve) + 1)
    lo = np.maximum(n - k, 0)
    return (c[n] - c[lo]) / (n - lo)


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


def train_clicks(lazy, data, steps, seed, beta1=0.9, batch=256):
    (xtr, ytr), (xte, yte), vocab = data
    rng = np.random.default_rng(seed + 3)
    params = [(0.1 * rng.standard_normal((vocab, 16))).astype(np.float32), np.zeros(16, np.float32),
              np.zeros(1, np.float32)]
    opt = optforge.create("adam", learning_rate=0.05, beta1=beta1, lazy_update=lazy)
    updater = optforge.get_updater(opt)
    batches = np.random.default_rng(seed + 4)
    label = f"adam {'lazy' if lazy else 'standard'} b1={beta1:g}"
    bar = Progress(label, steps)
    losses, times, rows = [], [], 0
    for step in range(steps):
        idx = batches.integers(0, len(ytr), batch)
        loss, grads = click_forward_backward(params, xtr[idx], ytr[idx])
        losses.append(loss)
        rows += grads[0].nnz_rows
        t0 = time.perf_counter()
        updater(list(range(3)), grads, params)
        times.append(time.perf_counter() - t0)
        bar.update(step + 1, f"loss {np.mean(losses[-TAIL:]):.3f}")
    final, acc = click_eval(params, xtr, ytr)
    _, test_acc = click_eval(params, xte, yte)
    return {"optimizer": label, "lazy": lazy, "beta1": beta1,
            "backend": f"{opt.backend} (row kernel)" if lazy else opt.backend, "train_loss": final,
            "test_acc": test_acc, "curve": losses, "rows": rows / steps, "vocab": vocab, **timing(times)}


# ---- output ---------------------------------------------------------------------------------------

def family_of(name):
    return next((f for f, names in FAMILIES.items() if name in names), "other")


def table(results, title, family=False, footnote=True):
    print(f"\n{title}")
    head = f"{'optimizer':<20} " + (f"{'family':<15} " if family else "") + f"{'backend':<19} {'train loss':>10} " \
        f"{'last-20':>8} {'test acc':>8} {'ms/step':>8} {'p90':>7}"
    print(head)
    print("-" * len(head))
    for r in results:
        fam = f"{family_of(r['optimizer']).split()[0]:<15} " if family else ""
        print(f"{r['optimizer']:<20} {fam}{r['backend']:<19} {r['train_loss']:>10.4f} {np.mean(r['curve'][-TAIL:]):>8.4f} "
              f"{r['test_acc']:>8.3f} {r['ms_per_step']:>8.3f} {r['ms_p90']:>7.3f}")
    if footnote:
        note(f"train loss: on the whole training set after the last step; last-{TAIL}: mean mini-batch loss of the "
             f"last {TAIL} steps (the plotted curve's end); ms/step: median time of one update call over "
             f"{results[0]['timed']} steps after {WARMUP} warm-up steps; p90: its 90th percentile")


def note(text):
    print(textwrap.fill(text, width=100))


STYLES = ["-", "--", "-.", ":"]


def plot(results, sparse, path, steps):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = {}
    for r in results:
        groups.setdefault(family_of(r["optimizer"]), []).append(r)
    order = [f for f in list(FAMILIES) + ["other"] if f in groups]
    panels = order + ["best of each family"] + (["sparse"] if sparse else [])
    ncols = 3
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(16, 5.2 * nrows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    last = lambda r: float(trailing(r["curve"])[-1])   # noqa: E731 - the value the legend quotes
    dense_axes = []
    for ax, panel in zip(axes.flat, panels):
        if panel == "sparse":
            continue
        members = [min(groups[f], key=last) for f in order] if panel.startswith("best") else groups[panel]
        for i, r in enumerate(sorted(members, key=last)):
            label = r["optimizer"] + (f" ({family_of(r['optimizer'])})" if panel.startswith("best") else "")
            ax.plot(trailing(r["curve"]), color=colors[i % 10], linestyle=STYLES[i % len(STYLES)], linewidth=1.7,
                    label=f"{label}: {last(r):.3f}")
        ax.set_title(f"{panel} ({len(members)})", fontsize=11)
        ax.legend(fontsize=8.5, loc="upper right" if panel.startswith("best") else "lower left", framealpha=0.9)
        dense_axes.append(ax)
    lo = min(float(np.min(trailing(r["curve"]))) for r in results)
    hi = max(float(np.max(trailing(r["curve"]))) for r in results)
    for ax in dense_axes:
        ax.set_yscale("log")
        ax.set_ylim(lo * 0.8, hi * 1.25)       # the same scale in every panel
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("step")
        ax.set_ylabel(f"mini-batch loss, mean of last {TAIL} steps", fontsize=9)
    if sparse:
        ax = axes.flat[len(panels) - 1]
        looks = {(True, True): ("tab:blue", "-", 1.7), (False, True): ("tab:orange", "-", 1.7),
                 (True, False): ("tab:green", "--", 2.4), (False, False): ("tab:red", ":", 2.0)}
        for r in sparse:
            color, style, width = looks[(r["lazy"], r["beta1"] > 0)]
            ax.plot(trailing(r["curve"]), color=color, linestyle=style, linewidth=width,
                    label=f"{'lazy' if r['lazy'] else 'standard'}, beta1={r['beta1']:g}: "
                          f"{last(r):.3f} ({r['ms_per_step']:.2f} ms/step)")
        ax.set_yscale("log")
        from matplotlib.ticker import NullFormatter, ScalarFormatter
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks([0.04, 0.06, 0.1, 0.2, 0.4, 0.7])
        ax.set_xlabel("step")
        ax.set_ylabel(f"mini-batch loss, mean of last {TAIL} steps", fontsize=9)
        ax.set_title(f"row-sparse click model: Adam, lazy vs standard update\n"
                     f"{sparse[0]['vocab']:,}-row embedding, ~{sparse[0]['rows']:.0f} rows per batch", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8.5, loc="upper right", framealpha=0.9)
        ax.text(0.03, 0.04, "lazy moves only the rows in the batch;\nstandard also moves every other row\n"
                "by its momentum. Without momentum\n(beta1=0) the two agree.",
                transform=ax.transAxes, fontsize=8.5, va="bottom",
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.9, edgecolor="0.7"))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"8x8 digits, MLP 64-64-10, {steps} steps of batch 64: training loss per optimizer family "
                 f"(legend: the curve's last value, the mean mini-batch loss of the last {TAIL} steps)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def threads_note(names):
    """What the native kernels run on: OpenMP's thread count, and which updates use more than one."""
    if not (native.available() and os.environ.get("OPTFORGE_BACKEND", "auto") != "numpy"):
        return "backend: NumPy (no native kernels)"
    n = native.openmp_threads(optforge.registered()[names[0]])
    asked = os.environ.get("OMP_NUM_THREADS", "unset")
    late = "" if asked != str(THREADS_REQUESTED) or str(n) == asked else \
        ", set after this process had started OpenMP, so not in effect"
    return (f"native kernels: {n} OpenMP thread(s) of {os.cpu_count()} cores (OMP_NUM_THREADS="
            f"{asked}: {THREADS_SOURCE}{late}); with more than one, a stage runs "
            f"in parallel on tensors of {native.PARALLEL_MIN:,}+ elements (the click model's embedding) and a "
            f"list update's small tensors one per thread")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="optimizer names (default: every registered optimizer)")
    ap.add_argument("--plot", default="out/train_all.png", help="where to write the convergence plot")
    ap.add_argument("--no-sparse", action="store_true", help="skip the row-sparse click model")
    ap.add_argument("--threads", type=int, help="OpenMP threads of the native kernels (sets OMP_NUM_THREADS; "
                                                "default: $OMP_NUM_THREADS, else 1)")
    args = ap.parse_args(argv)
    # before the first native library (and its OpenMP runtime) is loaded. One thread unless asked: on a
    # machine whose cores are busy with other work, OpenMP threads wait for each other at every barrier
    # (LAMB's update measured 15 ms/step with 2 threads on a loaded 2-core machine, 0.4 ms with 1)
    global THREADS_SOURCE, THREADS_REQUESTED
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be at least 1")
        THREADS_REQUESTED, THREADS_SOURCE = args.threads, "--threads"
    elif "OMP_NUM_THREADS" in os.environ:
        THREADS_SOURCE = "OMP_NUM_THREADS"
    else:
        THREADS_REQUESTED, THREADS_SOURCE = 1, "the demo's default; --threads N for more"
    if THREADS_REQUESTED is not None:
        os.environ["OMP_NUM_THREADS"] = str(THREADS_REQUESTED)
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as e:
        sys.exit(f"{e.name} is missing: install the demo extra, `pip install -e \".[demo]\"` (or run `make demo`)")

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
        sparse = [train_clicks(lazy, clicks, args.steps, args.seed, beta1) for beta1 in (0.9, 0.0)
                  for lazy in (True, False)]

    print()
    note(threads_note(names))
    table(results, f"8x8 digits, MLP 64-64-10, {args.steps} steps (loss before training {init_loss:.3f})", family=True)
    if sparse:
        table(sparse, f"row-sparse click model: {sparse[0]['vocab']:,} x 16 embedding, "
                      f"~{sparse[0]['rows']:.0f} rows per batch, Adam lazy vs standard update", footnote=False)
        lz, st, lz0, st0 = sparse
        note(f"lazy update: {st['ms_per_step'] / lz['ms_per_step']:.1f}x faster per step (medians). With momentum the "
             f"two end apart (full-train loss: lazy {lz['train_loss']:.4f}, standard {st['train_loss']:.4f}): "
             f"lazy moves only the ~{lz['rows']:.0f} rows in each batch, while standard Adam also moves every other row by its "
             f"momentum (which decays by beta1=0.9 a step: a row seen once moves about 1/(1-beta1) = 10 times as far "
             f"as under the lazy update). Without momentum (beta1=0) the two agree: lazy "
             f"{lz0['train_loss']:.4f}, standard {st0['train_loss']:.4f}. (No weight decay here; with it, lazy "
             f"would also skip the decay of absent rows.)")
    path = Path(args.plot)
    plot(results, sparse, path, args.steps)
    bad = [r["optimizer"] for r in results if not r["train_loss"] < init_loss]
    print(f"\n{len(results) - len(bad)}/{len(results)} optimizers reduced the training loss"
          + (f"; not: {', '.join(bad)}" if bad else "") + f". Convergence plot: {path}")
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
