"""faiss nearest-neighbour search across identities: the index is chosen by size so it scales past ten million photos.

Why faiss: comparing every identity with every other one is quadratic (10^10 cosines of 512 numbers for 100,000
identities). Below `EXACT_MAX` rows an exact inner-product index (IndexFlatIP) is cheap enough and gives the true
neighbours; above it an inverted-file index (IVF, ~4 * sqrt(n) lists, `nprobe` of them scanned per query) trades a little
recall for a ~100x smaller scan, with its rows stored as float16 (`SQfp16`: half the bytes to scan; see below); above
`SQ8_MIN` rows as 8-bit scalars (4x less memory than float32).
What cleaning searches are identity centroids (one per identity), so ten million photos mean ~1,000,000 indexed rows.

Why IVF and not HNSW by default: cleaning runs one big batch of queries (every centroid, every flagged photo) and then
throws the index away, so what counts is build time + batch search time + recall, not the latency of one query.
Measured with `benchmarks/bench_flagging.py --compare-indexes` (512-d; 2 shared cores; recall against exact search):
  100,020 centroids   IVF1265,Flat  build 10.5 s, merge batch 6.2 s, 100k photo queries 17.0 s, photo recall@1 1.000
                      HNSW32        build 24.0 s, merge batch 25.3 s, 100k photo queries 61.9 s, photo recall@1 0.883
  1,000,020 centroids IVF4000,Flat  build 65 s, merge batch 140 s, 100k photo queries 24 s, photo recall@1 1.000
                      IVF4000,SQ8   build 63 s, merge batch 70 s, 100k photo queries 12.5 s, photo recall@1 1.000
                      HNSW32        build 218 s, merge batch 107 s, 100k photo queries 31 s, photo recall@1 0.656
HNSW's random walks over 512-d rows cost more than IVF's contiguous scans at the recall cleaning needs, it keeps 256
more bytes per row of graph links, and faiss has no GPU HNSW; IVF runs on the GPU and shards across GPUs. HNSW stays
one factory string away (`factory="HNSW32"`, or `FlagConfig.faiss_index`), with efSearch set from `nprobe` (see
`set_search_effort`). IVF+SQ8 scans 4x fewer bytes, which is what the batch search is bound by on a CPU: at a million
centroids `FlagConfig(faiss_index="IVF4000,SQ8")` halves the search time for the same recall.

Why float16 rows by default: the batch searches of a clean are bound by the bytes they scan, and a centroid's cosines
need no more than float16's 11 bits (the embeddings themselves usually come as float16). Measured on the whole
`clean --embeddings` (`benchmarks/bench_flagging.py --photos 1000000 --full`, 100,020 centroids of 512 numbers, the two
kinds alternating, twice, on 2 cores shared with other work): IVF1265,Flat 105.0 / 59.3 s, IVF1265,SQfp16 71.5 / 49.1 s
(evidence stage 60.0 / 28.8 -> 40.6 / 21.8 s); flags.csv kept every flag and suggestion, 10 of its 49,994 rows differ
in P(wrong) from the 4th decimal on (precision, recall and suggestions scored the same). IVF1265,SQ8 was slower here
(194.7 s, one loaded run) and changed a suggestion. `--faiss-index IVF1265,Flat` (any factory string) keeps float32 rows.

On a CUDA machine (`use_gpu`) the index moves to the GPU, and with several GPUs it is sharded across them (each GPU
holds 1/n of the rows and searches its part for every query), so the centroid index is bounded by the sum of the GPUs'
memory rather than one GPU's.

Example:
    >>> index = build_index(centroids)                # [K, D] float32, unit rows
    >>> sims, ids = knn(index, queries, k=5)         # ids == -1 where fewer than k neighbours exist
    >>> index = build_index(centroids, factory="HNSW32")   # a graph index instead (CPU only)
    >>> trained = train_index(centroids)              # empty, trained: the lists of ...
    >>> other = build_index(other_centroids, trained=trained)   # ... an index over similar rows, with no k-means
"""
from __future__ import annotations

import math

import faiss
import numpy as np

EXACT_MAX = 10_000  # rows; exact search costs queries x rows x 512 multiply-adds: 10k x 10k takes ~2 s on two cores
SQ8_MIN = 4_000_000  # rows; from here float32 vectors (2 KB each at 512-d) would crowd memory
DEFAULT_NPROBE = 16
HNSW_EF_PER_PROBE = 4  # efSearch = this x nprobe (64 at the default): the same "search effort" knob for both kinds


def plan_index(n: int, *, exact_max: int = EXACT_MAX, sq8_min: int = SQ8_MIN) -> str:
    """faiss index_factory string for n rows: 'Flat', 'IVF{nlist},SQfp16' or 'IVF{nlist},SQ8'."""
    if n <= exact_max:
        return "Flat"
    nlist = int(min(65536, n // 39, max(16, 4 * math.sqrt(n))))  # faiss wants >= 39 training rows per list
    return f"IVF{nlist},{'SQ8' if n >= sq8_min else 'SQfp16'}"


def to_gpus(index: faiss.Index) -> faiss.Index:
    """The index on every GPU faiss sees: one GPU as is, several as shards (rows split evenly); unchanged without GPUs.

    Call it on a trained, empty index and add the rows afterwards, so the GPUs also do the assignment of rows to lists.
    Graph indexes (HNSW) have no GPU version in faiss: they stay on the CPU.
    """
    n_gpus = faiss.get_num_gpus()
    if n_gpus == 0 or "HNSW" in type(index).__name__:
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = n_gpus > 1
    return faiss.index_cpu_to_all_gpus(index, co=options)


def train_index(vectors: np.ndarray, *, factory: str | None = None, seed: int = 0) -> faiss.Index:
    """An empty inner-product index (on the CPU) for rows like `vectors` ([n, d], unit rows), trained on them if its
    kind needs training; `build_index(..., trained=)` fills copies of it.

    factory: a faiss index_factory string; by default `plan_index(n)`. IVF indexes are trained on at most 40 rows per
    list (k-means, 10 iterations), which is what keeps training at a million rows to seconds.
    Why apart from build_index: a clean indexes two sets of centroids of the same identities (see
    curation.flagging.core); the second copies the first one's lists instead of running k-means again (at a million
    centroids, a minute of the clean).
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    index = faiss.index_factory(d, factory or plan_index(n), faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = 40
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, min(n, 40 * ivf.nlist), replace=False))]
        index.train(sample)
    return index


def build_index(
    vectors: np.ndarray,
    *,
    factory: str | None = None,
    nprobe: int = DEFAULT_NPROBE,
    use_gpu: bool = False,
    seed: int = 0,
    trained: faiss.Index | None = None,
) -> faiss.Index:
    """An inner-product index over `vectors` ([n, d], unit rows; converted to float32).

    factory, seed: what `train_index` trains; trained: an empty trained index (`train_index`) to copy instead, whose
    kind and lists the new index then has (factory is not used).
    use_gpu: move the index to the GPU(s) when faiss sees any (see `to_gpus`); a no-op otherwise.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = train_index(x, factory=factory, seed=seed) if trained is None else faiss.clone_index(trained)
    if use_gpu:
        index = to_gpus(index)
    set_search_effort(index, nprobe)
    index.add(x)
    return index


def set_search_effort(index: faiss.Index, nprobe: int) -> None:
    """How hard searches look: `nprobe` lists for IVF indexes, efSearch = 4 x nprobe for HNSW; nothing for exact ones.

    faiss's ParameterSpace reaches through GPU copies and shards; the GPU variant also knows the GPU IVF classes.
    """
    space = faiss.GpuParameterSpace() if faiss.get_num_gpus() else faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", HNSW_EF_PER_PROBE * nprobe)):
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:  # the index has no such knob (exact search, or the other kind)
            pass


def knn(
    index: faiss.Index, queries: np.ndarray, k: int, *, nprobe: int | None = None, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar indexed rows of each query: (sims float32 [q, k], ids int64 [q, k], -1 = none).

    queries: [q, d], any float dtype (a float16 memory map is fine: it is widened to float32 one chunk at a time).
    nprobe: search effort for these queries (default: what the index was built with); queries that are near copies
    of indexed rows need few lists, queries from farther away need more.
    """
    if nprobe is not None:
        set_search_effort(index, nprobe)
    k = max(1, min(k, index.ntotal))
    sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for s in range(0, len(queries), chunk):
        q = np.ascontiguousarray(queries[s : s + chunk], dtype=np.float32)
        sims[s : s + chunk], ids[s : s + chunk] = index.search(q, k)
    sims[ids < 0] = -np.inf
    return sims, ids


def indexed_neighbours(
    index: faiss.Index, vectors: np.ndarray, k: int, *, nprobe: int | None = None, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """knn(index, vectors, k) for the rows the index was built from (`vectors`, in the order they were added): the k
    most similar indexed rows of every indexed row (itself among them).

    Why: a batch search over IVF lists is bound by memory traffic, not arithmetic (at 100,000 centroids two threads
    searched no faster than one), and rows searched in the order of their lists find their neighbours' lists in the
    cache. An IVF index says which list holds each row, so the order costs nothing; every query is searched on its own,
    so the results are faiss's, bit for bit. Other indexes: knn as is.
    """
    order = _list_order(index)
    if order is None:
        return knn(index, vectors, k, nprobe=nprobe)
    k = max(1, min(k, index.ntotal))
    sims, ids = np.empty((len(order), k), np.float32), np.empty((len(order), k), np.int64)
    for s in range(0, len(order), chunk):
        rows = order[s : s + chunk]  # a chunk's rows gathered at a time: no reordered copy of all of `vectors`
        sims[rows], ids[rows] = knn(index, vectors[rows], k, nprobe=nprobe, chunk=chunk)
    return sims, ids


def _list_order(index: faiss.Index) -> np.ndarray | None:
    """The ids of an IVF index on the CPU list by list (all of them, each once); None for any other index."""
    if not isinstance(index, faiss.IndexIVF):
        return None
    invlists = index.invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(j), invlists.list_size(j)).copy()
             for j in range(index.nlist) if invlists.list_size(j)]
    order = np.concatenate(parts) if parts else np.empty(0, np.int64)
    return order if len(order) == index.ntotal else None
