"""k-means with k-means++ initialisation on FAISS (GPU, then CPU) or scikit-learn.

Selection strategies cluster user prompts. FAISS is fast but its ``Kmeans`` defaults hurt quality:
it silently subsamples to 256 points per centroid and starts from random centroids (DESIGN.md §5).
Here every backend starts from the same greedy k-means++ seeds (:func:`kmeans_plusplus`, the
algorithm of scikit-learn's ``kmeans_plusplus`` done in float32: scikit-learn upcasts float32 input
chunk by chunk, which measured 10-30 s for 50,000 x 576, k = 50, on this 2-core machine) and trains
on every point, so backends agree up to floating-point noise and nothing is subsampled.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

BACKENDS = ("auto", "faiss-gpu", "faiss-cpu", "sklearn")


@dataclass(frozen=True)
class KMeansResult:
    """Outcome of :func:`kmeans`."""

    labels: np.ndarray
    """int64 [N] cluster index of each point, in ``[0, k_effective)``."""
    centroids: np.ndarray
    """float32 [k_effective, D]; k is clipped to the number of distinct points."""
    inertia: float
    """Sum of squared distances of points to their assigned centroid (float64 accumulation)."""
    backend: str
    """Backend that actually ran: ``faiss-gpu``, ``faiss-cpu``, ``sklearn``, or ``distinct`` when
    k >= the number of distinct points (each distinct point is its own centroid, no iterations)."""


def faiss_module():
    """Return the faiss module, or None when it cannot be imported."""
    try:
        import faiss  # noqa: PLC0415  (optional dependency, imported lazily)
    except Exception:  # pragma: no cover - depends on the environment
        return None
    return faiss


def faiss_gpu_available() -> bool:
    """True when the GPU build of FAISS is installed and sees at least one GPU."""
    faiss = faiss_module()
    if faiss is None or not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover
        return False


def resolve_backend(backend: str = "auto") -> str:
    """Map ``auto`` to the best available backend; raise if an explicit one is unavailable."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        if faiss_gpu_available():
            return "faiss-gpu"
        return "faiss-cpu" if faiss_module() is not None else "sklearn"
    if backend == "faiss-gpu" and not faiss_gpu_available():
        raise RuntimeError("k-means backend 'faiss-gpu' requested but no GPU FAISS build/GPU is available")
    if backend == "faiss-cpu" and faiss_module() is None:
        raise RuntimeError("k-means backend 'faiss-cpu' requested but faiss cannot be imported")
    return backend


def _has_at_least_distinct(x: np.ndarray, k: int) -> bool:
    """Whether ``x`` has >= k distinct rows; stops as soon as k are seen (usually after k rows)."""
    seen: set[bytes] = set()
    for row in x:
        seen.add((row + np.float32(0.0)).tobytes())  # + 0.0 maps -0.0 to 0.0
        if len(seen) >= k:
            return True
    return False


def kmeans_plusplus(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant with
    ``2 + log(k)`` candidate draws per centre, keeping the one that lowers the potential most).

    Returns the float32 [k, D] initial centroids, rows of ``x``. Distances use the float32
    expansion ``|x|^2 + |c|^2 - 2 x.c``; values below its rounding error are set to 0 so that
    duplicates of a chosen centre are not drawn again.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    sq = np.einsum("ij,ij->i", x, x)
    n_trials = 2 + int(np.log(k))

    def dist_to(idx: np.ndarray) -> np.ndarray:
        d = sq[:, None] + sq[idx][None, :] - 2.0 * (x @ x[idx].T)
        d[d < 4 * np.finfo(np.float32).eps * (sq[:, None] + sq[idx][None, :])] = 0.0
        return d

    chosen = [int(rng.integers(n))]
    closest = dist_to(np.array(chosen))[:, 0]
    for _ in range(1, k):
        cum = np.cumsum(closest, dtype=np.float64)
        cand = np.searchsorted(cum, rng.random(n_trials) * cum[-1], side="right")
        cand = np.minimum(cand, n - 1)
        d = np.minimum(dist_to(cand), closest[:, None])
        pots = d.sum(axis=0, dtype=np.float64)
        best = int(np.argmin(pots))
        chosen.append(int(cand[best]))
        closest = np.ascontiguousarray(d[:, best])
    return x[np.array(chosen)].copy()


def inertia(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, chunk: int = 8192) -> float:
    """Exact sum of squared distances to assigned centroids, accumulated in float64."""
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        diff = x[start : start + chunk] - centroids[labels[start : start + chunk]]
        total += float(np.einsum("ij,ij->i", diff, diff, dtype=np.float64).sum())
    return total


def default_faiss_threads() -> int | None:
    """OpenMP threads for FAISS CPU k-means: 1 on machines with <= 2 CPUs, else FAISS's default.

    Measured on the 2-vCPU machines here (faiss-cpu 1.15, 50,000 x 576, k = 50, 25 iterations):
    2 OpenMP threads 7.2 s, 1 thread 1.6 s (OMP_WAIT_POLICY=PASSIVE: 1.9 s). libgomp's spinning
    threads fight each other on so few cores; with more cores FAISS's own default is kept.
    """
    return 1 if (os.cpu_count() or 1) <= 2 else None


@contextmanager
def _faiss_threads(faiss, n_threads: int | None):
    """Temporarily set FAISS's OpenMP thread count (restored afterwards)."""
    if n_threads is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n_threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _run_faiss(x: np.ndarray, seeds: np.ndarray, seed: int, n_iter: int, gpu: bool, n_threads: int | None):
    """Lloyd iterations in FAISS from given initial centroids, on all points (no subsampling)."""
    faiss = faiss_module()
    n, d = x.shape
    k = seeds.shape[0]
    km = faiss.Kmeans(
        d,
        k,
        niter=int(n_iter),
        seed=int(seed),
        nredo=1,
        verbose=False,
        # nx > k * max_points_per_centroid triggers silent subsampling: make that impossible.
        max_points_per_centroid=int(-(-n // k) + 1),
        # Only silences FAISS's "please provide at least 39*k points" warning.
        min_points_per_centroid=1,
        gpu=bool(gpu),
    )
    # faiss 1.15 Kmeans.train(x, weights=None, init_centroids=None) copies init_centroids into
    # Clustering.centroids before training; Clustering then skips its random initialisation.
    with _faiss_threads(faiss, n_threads):
        km.train(x, init_centroids=np.ascontiguousarray(seeds, dtype=np.float32))
        _, labels = km.assign(x)
    return labels.astype(np.int64), np.asarray(km.centroids, dtype=np.float32)


def _run_sklearn(x: np.ndarray, seeds: np.ndarray, seed: int, n_iter: int):
    """scikit-learn Lloyd iterations from the same k-means++ seeds."""
    from sklearn.cluster import KMeans  # noqa: PLC0415

    km = KMeans(n_clusters=seeds.shape[0], init=seeds, n_init=1, max_iter=int(n_iter), random_state=seed)
    km.fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    n_iter: int = 25,
    backend: str = "auto",
    n_threads: int | None = -1,
) -> KMeansResult:
    """Cluster the rows of ``x`` into (at most) ``k`` clusters, deterministically for ``seed``.

    Greedy k-means++ seeds (:func:`kmeans_plusplus`) are drawn whatever the backend, then ``n_iter`` Lloyd
    iterations run on FAISS GPU, FAISS CPU or scikit-learn (``backend="auto"`` picks in that
    order). ``k`` is clipped to the number of distinct rows; when that clip binds, each distinct row
    is its own centroid. All points are used: nothing is subsampled. ``n_threads`` sets FAISS's
    OpenMP threads for this call (-1: :func:`default_faiss_threads`; None: leave FAISS's setting).
    """
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans expects a non-empty 2-D array, got shape {x.shape}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"kmeans k must be a positive integer, got {k!r}")
    if n_iter < 1:
        raise ValueError(f"kmeans n_iter must be >= 1, got {n_iter!r}")
    if not np.isfinite(x).all():
        raise ValueError("kmeans input contains NaN or infinite values")
    resolved = resolve_backend(backend)
    k = int(k)

    if not _has_at_least_distinct(x, k):
        uniq, inverse = np.unique(x + np.float32(0.0), axis=0, return_inverse=True)
        return KMeansResult(inverse.reshape(-1).astype(np.int64), uniq.astype(np.float32), 0.0, "distinct")

    seeds = kmeans_plusplus(x, k, seed=int(seed))
    if resolved == "sklearn":
        labels, centroids = _run_sklearn(x, seeds, int(seed), n_iter)
    else:
        threads = default_faiss_threads() if n_threads == -1 else n_threads
        labels, centroids = _run_faiss(x, seeds, int(seed), n_iter, resolved == "faiss-gpu", threads)
    return KMeansResult(labels, centroids, inertia(x, centroids, labels), resolved)
