"""faiss nearest-neighbour search across identities: the index is chosen by size so it scales past a million rows.

Why faiss: comparing every identity with every other one is quadratic (10^10 cosines of 512 numbers for 100,000
identities). Below `EXACT_MAX` rows an exact inner-product index (IndexFlatIP) is cheap enough and gives the true
neighbours; above it an inverted-file index (IVF, ~4 * sqrt(n) lists, `nprobe` of them scanned per query) trades a little
recall for a ~100x smaller scan; above `SQ8_MIN` rows the vectors are also stored as 8-bit scalars (4x less memory).
What cleaning searches are identity centroids (one per identity), so a million photos means ~100,000 indexed rows.

On a CUDA machine the index moves to the GPU (faiss-gpu) when `device` says so.

Example:
    >>> index = build_index(centroids)                # [K, D] float32, unit rows
    >>> sims, ids = knn(index, queries, k=5)         # ids == -1 where fewer than k neighbours exist
"""
from __future__ import annotations

import math

import faiss
import numpy as np

EXACT_MAX = 10_000  # rows; exact search costs queries x rows x 512 multiply-adds: 10k x 10k takes ~2 s on two cores
SQ8_MIN = 4_000_000  # rows; from here float32 vectors (2 KB each at 512-d) would crowd memory
DEFAULT_NPROBE = 16


def plan_index(n: int, *, exact_max: int = EXACT_MAX, sq8_min: int = SQ8_MIN) -> str:
    """faiss index_factory string for n rows: 'Flat', 'IVF{nlist},Flat' or 'IVF{nlist},SQ8'."""
    if n <= exact_max:
        return "Flat"
    nlist = int(min(65536, n // 39, max(16, 4 * math.sqrt(n))))  # faiss wants >= 39 training rows per list
    return f"IVF{nlist},{'SQ8' if n >= sq8_min else 'Flat'}"


def build_index(
    vectors: np.ndarray,
    *,
    factory: str | None = None,
    nprobe: int = DEFAULT_NPROBE,
    use_gpu: bool = False,
    seed: int = 0,
) -> faiss.Index:
    """An inner-product index over `vectors` ([n, d], unit rows; converted to float32).

    factory: a faiss index_factory string; by default `plan_index(n)`. IVF indexes are trained on at most 40 rows per
    list (k-means, 10 iterations), which is what keeps training at a million rows to seconds.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    factory = factory or plan_index(n)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = 40
        ivf.nprobe = nprobe
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, min(n, 40 * ivf.nlist), replace=False))]
        index.train(sample)
    if use_gpu and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    return index


def knn(
    index: faiss.Index, queries: np.ndarray, k: int, *, nprobe: int | None = None, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar indexed rows of each query: (sims float32 [q, k], ids int64 [q, k], -1 = none).

    nprobe: lists an IVF index scans for these queries (default: what it was built with); queries that are near copies
    of indexed rows need few, queries from farther away need more.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if nprobe is not None:
        try:
            faiss.extract_index_ivf(index).nprobe = nprobe
        except RuntimeError:  # not an IVF index (exact search): nothing to set
            pass
    k = max(1, min(k, index.ntotal))
    sims = np.full((len(q), k), -np.inf, dtype=np.float32)
    ids = np.full((len(q), k), -1, dtype=np.int64)
    for s in range(0, len(q), chunk):
        sims[s : s + chunk], ids[s : s + chunk] = index.search(q[s : s + chunk], k)
    sims[ids < 0] = -np.inf
    return sims, ids
