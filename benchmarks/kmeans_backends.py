"""Compare k-means backends on random-cluster data: seconds and inertia relative to scikit-learn.

    python benchmarks/kmeans_backends.py [--scale 0.1] [--k 50] [--iters 25] [--seed 0]

Datasets: 50,000 x 576 (SmolLM2-135M prompt width) and 200,000 x 2,048 (Llama-3.2-1B width);
``--scale`` multiplies the number of points (0.1 for a quick run). Rows of the table:

* ``sklearn KMeans`` — ``sklearn.cluster.KMeans(k, init="k-means++", n_init=1, max_iter=iters)``:
  the reference (inertia ratio 1.000);
* ``kmeans[<backend>]`` — :func:`puma_lightning.selection.kmeans` on each available backend
  (greedy k-means++ seeds, every point, no subsampling), seconds include the seeding;
* ``faiss.Kmeans defaults`` — FAISS as usually called (random init, subsampling to 256 points per
  centroid), to show what the project's wrapper fixes.

The table is printed under a ``machine: ...`` line naming the CPU, threads, GPU and library versions.
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from puma_lightning.machine import describe_machine

DATASETS = ((50_000, 576), (200_000, 2_048))


def make_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """float32 [n, d]: ``k`` Gaussian clusters with random centres and unequal sizes and spreads."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (k, d)).astype(np.float32)
    sizes = rng.dirichlet(np.full(k, 2.0))
    labels = rng.choice(k, size=n, p=sizes)
    spread = rng.uniform(0.5, 1.5, k).astype(np.float32)
    x = centers[labels] + rng.standard_normal((n, d), dtype=np.float32) * spread[labels, None]
    return x


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances to the nearest centroid (float64), for any method's centroids."""
    from puma_lightning.selection.kmeans import inertia as labelled_inertia

    c = np.asarray(centroids, dtype=np.float32)
    sq = np.einsum("ij,ij->i", c, c)
    labels = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], 8192):
        labels[s : s + 8192] = np.argmin(sq[None, :] - 2.0 * x[s : s + 8192] @ c.T, axis=1)
    return labelled_inertia(x, c, labels)


def bench(x: np.ndarray, k: int, iters: int, seed: int) -> list[tuple[str, float, float]]:
    """(method, seconds, inertia) for every method available here."""
    from sklearn.cluster import KMeans

    from puma_lightning.selection.kmeans import default_faiss_threads, faiss_gpu_available, faiss_module, kmeans

    out = []
    t = time.perf_counter()
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=iters, random_state=seed).fit(x)
    out.append(("sklearn KMeans", time.perf_counter() - t, inertia(x, km.cluster_centers_)))
    backends = ["sklearn"] + (["faiss-cpu"] if faiss_module() is not None else []) + (["faiss-gpu"] if faiss_gpu_available() else [])
    for backend in backends:
        t = time.perf_counter()
        res = kmeans(x, k, seed=seed, n_iter=iters, backend=backend)
        out.append((f"kmeans[{backend}]", time.perf_counter() - t, res.inertia))
    faiss = faiss_module()
    if faiss is not None:
        threads = default_faiss_threads()
        previous = faiss.omp_get_max_threads()
        if threads:
            faiss.omp_set_num_threads(threads)
        try:
            t = time.perf_counter()
            fk = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, verbose=False)
            fk.train(x)
            out.append(("faiss.Kmeans defaults", time.perf_counter() - t, inertia(x, fk.centroids)))
        finally:
            faiss.omp_set_num_threads(previous)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of points (e.g. 0.1)")
    p.add_argument("--k", type=int, default=50, help="clusters (default 50)")
    p.add_argument("--iters", type=int, default=25, help="Lloyd iterations (default 25)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lines = ["| data (N x D) | k | method | seconds | inertia | ratio to sklearn |", "|---|---|---|---|---|---|"]
    for n, d in DATASETS:
        n = max(int(round(n * args.scale)), args.k)
        x = make_data(n, d, args.k, args.seed)
        rows = bench(x, args.k, args.iters, args.seed)
        ref = rows[0][2]
        for name, secs, inert in rows:
            lines.append(f"| {n:,} x {d:,} | {args.k} | {name} | {secs:.2f} | {inert:.6g} | {inert / ref:.4f} |")
    print(describe_machine(None))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
