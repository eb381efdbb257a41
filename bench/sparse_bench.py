"""Lazy (row-sparse) Adam step vs the dense Adam step on a large embedding.

    python bench/sparse_bench.py [--rows 1000000] [--dim 64] [--frac 0.01] [--repeat 7]

Prints the median time of each step and the ratio dense/lazy. A lazy step gathers the touched
rows of the weight and both Adam states, runs the generated row kernel (`Adam._kernel_rows`) on
them and scatters them back: its cost follows the rows touched, not the table size.
"""
import argparse
import statistics
import time

import numpy as np

import optforge


def _timed_ms(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--frac", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args()

    rng = np.random.default_rng(0)
    shape = (a.rows, a.dim)
    nnz = max(1, int(a.rows * a.frac))
    weight = rng.standard_normal(shape, dtype=np.float32)
    rows = np.sort(rng.choice(a.rows, nnz, replace=False))
    data = rng.standard_normal((nnz, a.dim), dtype=np.float32)
    sparse_grad = optforge.RowSparse(data, rows, shape)
    dense_grad = sparse_grad.todense()

    lazy = optforge.create("adam", learning_rate=1e-3, wd=1e-4)
    lazy_state = lazy.create_state(0, weight)
    dense = optforge.create("adam", learning_rate=1e-3, wd=1e-4)
    dense_state = dense.create_state(0, weight)
    backend = getattr(dense, "backend", "numpy")
    lazy_step = lambda: lazy.update(0, weight, sparse_grad, lazy_state)  # noqa: E731
    dense_step = lambda: dense.update(0, weight, dense_grad, dense_state)  # noqa: E731
    lazy_step(), dense_step()  # warm up: first touch of the states, native compile
    # interleaved, so that a busy machine slows both alike
    lazy_all, dense_all = [], []
    for _ in range(a.repeat):
        lazy_all.append(_timed_ms(lazy_step))
        dense_all.append(_timed_ms(dense_step))
    lazy_ms, dense_ms = statistics.median(lazy_all), statistics.median(dense_all)

    print(f"Adam step on a {a.rows:,} x {a.dim} float32 embedding, {nnz:,} rows touched ({a.frac:.2%}), "
          f"median of {a.repeat} runs")
    print(f"  lazy  (RowSparse grad, row kernel): {lazy_ms:9.3f} ms   runs: {', '.join(f'{t:.2f}' for t in lazy_all)}")
    print(f"  dense (dense grad, {backend} kernel): {dense_ms:9.3f} ms   runs: {', '.join(f'{t:.1f}' for t in dense_all)}")
    print(f"  speedup dense/lazy: {dense_ms / lazy_ms:.1f}x median, {min(dense_all) / min(lazy_all):.1f}x best "
          f"(target >= 20x)")


if __name__ == "__main__":
    main()
