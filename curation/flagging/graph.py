"""Per-identity similarity graphs: which photos filed under one identity show the same person.

Why a graph: a mislabelled photo looks like nobody else in its folder, so it has no edge (cosine >= threshold) to any
other photo of the identity (an *outlier*), or it sits in a small cluster away from the bulk (a *minority*, e.g. several
photos of one wrong person). The largest connected component is taken to be the identity; an identity whose two largest
components are both big is probably two people under one label (*split*). Deepfakes stay out of the graph and are
compared with the main component afterwards.

How it scales: identities are sorted by size and packed into padded blocks, so one batched matrix multiply (torch, on the
GPU when there is one) computes the cosine matrices of thousands of identities at once. Connected components are
defined by networkx. Calling networkx for 100,000 small identities would still cost seconds of pure Python, so an
identity is sent to networkx only when a vectorised test cannot prove its answer: once isolated vertices are set aside,
a graph on m vertices whose minimum degree is >= (m - 1) / 2 is connected (two non-adjacent vertices then have a common
neighbour), which holds for nearly every clean identity. `tests/test_graph.py` checks the result equals networkx on
random graphs either way.

How it stays within memory past ten million photos: identities are processed in chunks of about `chunk_rows` photos
(an identity is never split), taken in the order their rows sit in the embedding array, and each chunk is read from
it once (one stretch of a memory-mapped file when the file was written identity by identity). Memory then holds one
chunk plus the per-row results (16 bytes a photo), never the whole N x D array; results do not depend on the chunk
size beyond float rounding (`tests/test_flagging.py` checks the flags are the same).

Example:
    >>> codes, names = pd.factorize(identity_per_row)
    >>> g = build_graphs(emb, codes, is_fake, valid, threshold=0.93)
    >>> g.component[:5]          # 0 = main component, 1.. smaller ones by size, -1 isolated, -2 not in a graph
"""
from __future__ import annotations

import functools
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import networkx as nx
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from embeddings.device import pick_device

# Shared bin edges for the similarity histograms in report.json (same-identity vs cross-identity pairs).
HIST_EDGES = np.linspace(-1.0, 1.0, 401)

NOT_IN_GRAPH = -2  # fakes, failed embeddings and rows without an identity
ISOLATED = -1
CHUNK_ROWS = 1_000_000  # photos per chunk: 1 GB of 512-d float16 (read from the file) + the blocks made from it
BIG_IDENTITY = 4096  # photos; a larger identity is compared in slices of rows (16 MB x its size / 4096 a slice)
KNN_LINKS = 16  # links per photo in a large identity's graph (see _big_identity)
IDENTITY_COLUMNS = ["n_real", "n_fake", "n_main", "n_isolated", "n_components", "second_size", "via"]


@dataclass
class GraphResult:
    """Per-row and per-identity results of `build_graphs`.

    component: int32 [N]; 0 = the identity's main (largest) component, 1.. the other components by decreasing size,
        -1 = isolated (no edge), -2 = not in a graph (deepfake, invalid embedding, no identity). An identity with a
        single real photo has that photo as its main component.
    degree: int32 [N], number of edges of each real photo.
    sim_to_main: float32 [N], mean cosine to the main component's photos (itself excluded); NaN when there are none.
    best_to_main: float32 [N], highest cosine to a main-component photo (itself excluded); what decides fake_mismatch.
    identities: one row per identity code: n_real, n_fake, n_main, n_isolated, n_components, second_size and
        `via` ("proof" when the vectorised test settled it, "networkx", "single" for one photo, "none" for no real photo).
    same_identity_hist: counts of all same-identity real-photo pair similarities over HIST_EDGES.
    """

    component: np.ndarray
    degree: np.ndarray
    sim_to_main: np.ndarray
    best_to_main: np.ndarray
    identities: pd.DataFrame
    same_identity_hist: np.ndarray


def components_networkx(adj: np.ndarray) -> np.ndarray:
    """Component labels of one identity's graph, as networkx defines them.

    adj: bool [n, n] symmetric adjacency (the diagonal is ignored).
    Returns int32 [n]: -1 for isolated vertices, 0 for the largest component, 1.. for the others by decreasing size
    (ties broken by the smallest member index, so the result is deterministic).

    Example:
        >>> components_networkx(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], bool))
        array([ 0,  0, -1], dtype=int32)
    """
    n = adj.shape[0]
    rows, cols = np.nonzero(np.triu(adj, 1))
    graph = nx.Graph()
    graph.add_edges_from(zip(rows.tolist(), cols.tolist()))  # isolated vertices never enter the graph: they are dropped
    comps = sorted(nx.connected_components(graph), key=lambda c: (-len(c), min(c)))
    labels = np.full(n, ISOLATED, dtype=np.int32)
    for k, members in enumerate(comps):
        labels[list(members)] = k
    return labels


STREAM_BUDGET = 1 << 20  # numbers per slice of a streaming pass (gather, widen, multiply, reduce; 4 MB as float32)


def slice_rows(dim: int, budget: int = 1 << 24) -> int:
    """Rows per slice for passes that read the whole array: `budget` numbers (64 MB as float32) whatever the width.

    Passes that only stream rows through a few elementwise steps (sums per identity, row-wise dot products, norms) use
    `STREAM_BUDGET`: their temporaries then stay small enough for the allocator to reuse them from slice to slice,
    where a 64 MB temporary is mapped afresh (and page-faulted in) every time; measured at 1M x 512 float16 rows,
    a row-wise dot product took 6.1 s in 200,000-row chunks and 0.6 s in 2,048-row ones, with bit-identical results
    (each row's reduction does not depend on how many rows share the slice).
    """
    return max(1024, budget // max(1, dim))


_F = TypeVar("_F", bound=Callable)


def one_thread(pass_function: _F) -> _F:
    """Run a streaming pass (gather, widen, multiply and reduce a small slice at a time) with one torch thread.

    Why: such a pass is bound by memory, not arithmetic, and each of its thousands of small torch ops ends at a barrier
    of torch's thread pool. On a machine other processes use too (an embedding job, a test run), each barrier waits
    for a thread the kernel has descheduled. Measured at 1M x 512 float16 rows on 2 cores with two other busy
    processes: identity sums 3.9-10.9 s with two threads, 0.7-0.8 s with one; row-wise dot products 7.7-8.2 s vs 0.9 s.
    Not for passes that call faiss: its searches ran 1.5x slower with torch set to one thread (measured, not explained).
    """

    @functools.wraps(pass_function)
    def run(*args, **kwargs):
        with torch_threads(1):
            return pass_function(*args, **kwargs)

    return run  # type: ignore[return-value]


def on_threads(items: Sequence, work: Callable) -> None:
    """work(item) for every item, on as many Python threads as torch has intra-op threads, each with one torch thread.

    For streaming passes whose items write disjoint outputs: both cores work without a thread-pool barrier per small
    op (see `one_thread`), and every item computes exactly what it would alone, so results are bit-identical.
    """
    workers = min(torch.get_num_threads(), len(items))
    with torch_threads(1), ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(work, items))


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` inside, the caller's number again after (also on an exception)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def scratch_array(shape: tuple[int, ...], dtype, on_disk: bool) -> np.ndarray:
    """An uninitialised array to write a derived copy into: a temporary file (deleted when the array goes) when
    `on_disk`, so that a copy of a memory-mapped file larger than RAM never has to fit in RAM; else plain memory."""
    if on_disk:
        return np.memmap(tempfile.TemporaryFile(), dtype=dtype, mode="w+", shape=shape)
    return np.empty(shape, dtype)


def take_rows(emb: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """emb[rows], copied slice by slice: into `out` if given (e.g. np.lib.format.open_memmap to write a .npy), else
    into a `scratch_array` (on disk when `emb` is a memory map). All rows in order: `emb` itself, nothing copied.

    Example:
        >>> sub = take_rows(np.load("emb.npy", mmap_mode="r"), kept_rows)     # never more than a slice in RAM
    """
    rows = np.asarray(rows, dtype=np.int64)
    if out is None and len(rows) == len(emb) and np.array_equal(rows, np.arange(len(emb))):
        return emb
    if out is None:
        out = scratch_array((len(rows), *emb.shape[1:]), emb.dtype, isinstance(emb, np.memmap))
    step = slice_rows(int(np.prod(emb.shape[1:])))
    for s in range(0, len(rows), step):
        out[s : s + step] = emb[rows[s : s + step]]
    return out


def gather(emb: np.ndarray, rows: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """emb[rows] as a tensor on `device`: torch gathers and widens float16 rows several times faster than numpy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only memory map: it is only ever read
        src = torch.from_numpy(emb) if isinstance(emb, np.ndarray) else torch.as_tensor(np.asarray(emb))
    return src[torch.from_numpy(np.asarray(rows, dtype=np.int64))].to(device=device, dtype=dtype)


def segments(codes: np.ndarray, rows: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by identity code: (rows sorted by code, start offset per code, count per code)."""
    order = rows[np.argsort(codes[rows], kind="stable")]
    counts = np.bincount(codes[rows], minlength=n_codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def padded_rows(order: np.ndarray, starts: np.ndarray, counts: np.ndarray, ids: np.ndarray, side: int):
    """[B, side] row indices of the given identities (padding points at row 0) and the mask of real entries."""
    ar = np.arange(side)
    mask = ar[None, :] < counts[ids][:, None]
    pos = np.where(mask, starts[ids][:, None] + ar[None, :], 0)
    rows = order[pos] if len(order) else np.zeros_like(pos)
    return np.where(mask, rows, 0), mask


def cross_segments(emb, left, lids, right, rids, threshold: float, device: torch.device, budget: int = 1 << 24):
    """For identity-segment pairs (left[lids[i]], right[rids[i]]): edge density, mean cosine, best cosine, its two rows
    (a row is not paired with itself).

    left/right: (rows sorted by segment, start per segment, count per segment) as from segments(). Pairs are compared
    in padded batches of at most `budget` numbers. Returns float32 density, mean, best [P] and int64 rows [P] x 2.
    """
    p = len(lids)
    mean = np.zeros(p, np.float32)
    density = np.zeros(p, np.float32)
    best = np.full(p, -np.inf, np.float32)
    arg_l = np.full(p, -1, np.int64)
    arg_r = np.full(p, -1, np.int64)
    if p == 0:
        return density, mean, best, arg_l, arg_r
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    size = np.maximum(left[2][lids], right[2][rids])
    order = np.argsort(size, kind="stable")
    d = emb.shape[1]
    start = 0
    while start < p:
        sl, sr = int(left[2][lids[order[start]]]), int(right[2][rids[order[start]]])
        end = start + 1
        while end < p:
            a, b = max(sl, left[2][lids[order[end]]]), max(sr, right[2][rids[order[end]]])
            if (end - start + 1) * (a * b + (a + b) * d) > budget:
                break
            sl, sr, end = int(a), int(b), end + 1
        sel = order[start:end]
        lrows, lmask = padded_rows(*left, lids[sel], sl)
        rrows, rmask = padded_rows(*right, rids[sel], sr)
        x = gather(emb, lrows.ravel(), device, dtype).view(len(sel), sl, d)
        y = gather(emb, rrows.ravel(), device, dtype).view(len(sel), sr, d)
        sims = torch.bmm(x, y.transpose(1, 2)).float()
        ok = torch.from_numpy(lmask[:, :, None] & rmask[:, None, :] & (lrows[:, :, None] != rrows[:, None, :]))
        ok = ok.to(device)  # a row is never paired with itself
        edges = ((sims >= threshold) & ok).sum((1, 2)).double()
        n_pairs = ok.sum((1, 2)).clamp(min=1)
        density[sel] = (edges / n_pairs).cpu().numpy()
        mean[sel] = ((sims * ok).sum((1, 2)) / n_pairs).cpu().numpy()
        masked = torch.where(ok, sims, torch.tensor(-torch.inf, device=device)).flatten(1)
        val, pos = masked.max(1)
        pos = pos.cpu().numpy()
        best[sel] = val.cpu().numpy()
        arg_l[sel] = lrows[np.arange(len(sel)), pos // sr]
        arg_r[sel] = rrows[np.arange(len(sel)), pos % sr]
        start = end
    return density, mean, best, arg_l, arg_r


def best_match(emb, rows: np.ndarray, to: np.ndarray, seg, threshold: float, device: torch.device) -> np.ndarray:
    """Per row, its best cosine to the rows of segment `to[i]` of `seg` (-inf where that segment is empty): how
    well a photo matches its closest photo of an identity."""
    one_each = (rows, np.arange(len(rows)), np.ones(len(rows), np.int64))
    return cross_segments(emb, one_each, np.arange(len(rows)), seg, to, threshold, device)[2]


def _blocks(n_real: np.ndarray, n_fake: np.ndarray, ids: np.ndarray, dim: int, block_elems: int):
    """Split identities (already sorted by size) into blocks whose padded tensors stay under `block_elems` numbers."""
    out, start = [], 0
    while start < len(ids):
        end = start + 1
        side, fside = n_real[ids[start]], n_fake[ids[start]]
        while end < len(ids):
            s, f = max(side, n_real[ids[end]]), max(fside, n_fake[ids[end]])
            if (end - start + 1) * ((s + f) * (s + dim)) > block_elems:
                break
            side, fside, end = s, f, end + 1
        out.append((ids[start:end], int(side), int(fside)))
        start = end
    return out


def identity_chunks(
    codes: np.ndarray, rows: np.ndarray, n_codes: int, chunk_rows: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The identities of `rows` in chunks of about `chunk_rows` rows, an identity never split: [(codes, rows), ...].

    rows: ascending row numbers (e.g. the valid ones); codes: identity code per row of the whole array.
    Identities are grouped once (an argsort over their codes) and ordered by their median row, i.e. by where they sit
    in the array, so a chunk of a file written identity by identity is read as one stretch even when mislabelled
    photos gave some identity an early first appearance. Each chunk's codes and rows come back in ascending order.

    Example:
        >>> identity_chunks(np.array([0, 0, 1, 1, 2]), np.arange(5), 3, chunk_rows=3)
        [(array([0, 1]), array([0, 1, 2, 3])), (array([2]), array([4]))]
    """
    order, starts, counts = segments(codes, rows, n_codes)
    ids = np.flatnonzero(counts)
    if len(ids) == 0:
        return []
    ids = ids[np.argsort(order[starts[ids] + counts[ids] // 2], kind="stable")]
    before = np.cumsum(counts[ids]) - counts[ids]  # rows of the identities ahead of each one
    chunk_of = np.zeros(n_codes, np.int64)
    chunk_of[ids] = np.unique(before // max(1, chunk_rows), return_inverse=True)[1]
    by_chunk = rows[np.argsort(chunk_of[codes[rows]], kind="stable")]
    bounds = np.cumsum(np.bincount(chunk_of[codes[by_chunk]]))[:-1]
    return [(np.unique(codes[part]), part) for part in np.split(by_chunk, bounds)]


def build_graphs(
    emb: np.ndarray,
    codes: np.ndarray,
    is_fake: np.ndarray,
    valid: np.ndarray,
    threshold: float,
    *,
    device: str | torch.device = "auto",
    block_elems: int = 1 << 24,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = False,
) -> GraphResult:
    """Build every identity's similarity graph and find its components.

    emb: [N, D] float16/float32, L2-normalised rows (rows where `valid` is False are never read); a memory map is fine.
    codes: int [N] identity code per row (0..K-1; negative = no identity), e.g. from `pandas.factorize`.
    is_fake, valid: bool [N]. Only valid real photos enter the graphs; valid fakes are scored against the main component.
    threshold: cosine at or above which two photos are joined by an edge (see curation.flagging.calibrate).
    block_elems: memory budget per batched multiply, in numbers (2**24 float32 = 64 MB plus the embeddings gathered).
    chunk_rows: photos read from `emb` per chunk of identities (see the module docstring); one chunk reads it in place.
    """
    n = len(codes)
    codes = np.asarray(codes, dtype=np.int64)
    n_codes = int(codes.max()) + 1 if n and codes.max() >= 0 else 0
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    valid = np.asarray(valid, bool) & (codes >= 0)
    is_fake = np.asarray(is_fake, bool)
    chunks = identity_chunks(codes, np.flatnonzero(valid), n_codes, chunk_rows)
    if len(chunks) <= 1:
        return _graphs(emb, codes, n_codes, is_fake, valid, threshold, dev, block_elems, progress)

    component = np.full(n, NOT_IN_GRAPH, dtype=np.int32)
    degree = np.zeros(n, dtype=np.int32)
    sim_to_main = np.full(n, np.nan, dtype=np.float32)
    best_to_main = np.full(n, np.nan, dtype=np.float32)
    ident = {c: np.zeros(n_codes, np.int64) for c in IDENTITY_COLUMNS[:-1]} | {"via": np.full(n_codes, "none", object)}
    hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
    local = np.full(n_codes, -1, dtype=np.int64)
    stored = torch.float16 if emb.dtype == np.float16 else torch.float32
    for ids, part in tqdm(chunks, desc="graphs", unit="chunk", disable=not progress):
        local[ids] = np.arange(len(ids))
        x = gather(emb, part, torch.device("cpu"), stored).numpy()  # the chunk's rows, read in file order
        g = _graphs(x, local[codes[part]], len(ids), is_fake[part], np.ones(len(part), bool), threshold, dev,
                    block_elems, False)
        component[part], degree[part] = g.component, g.degree
        sim_to_main[part], best_to_main[part] = g.sim_to_main, g.best_to_main
        for c in IDENTITY_COLUMNS:
            ident[c][ids] = g.identities[c].to_numpy()
        hist += g.same_identity_hist
    return GraphResult(component, degree, sim_to_main, best_to_main, pd.DataFrame(ident), hist)


def _big_identity(emb, rows, frows, threshold, dev, dtype, block_elems):
    """One identity of more than BIG_IDENTITY photos, in slices of rows (never its n x n matrix at once).

    Degrees, histogram, mean and best cosine to the main component are exact; the components are those of the graph
    of each photo's KNN_LINKS nearest photos above the threshold (a subgraph of the threshold graph with the same
    isolated photos: a large identity's main component stays one component in practice).
    Returns (labels, degree, sim_to_main, best_to_main, fakes' sim_to_main, fakes' best_to_main, histogram).
    """
    n = len(rows)
    x = gather(emb, rows, dev, dtype)
    step = max(1, block_elems // n)
    degree = np.zeros(n, np.int32)
    hist = torch.zeros(len(HIST_EDGES) - 1, dtype=torch.float64)
    k = min(KNN_LINKS, n - 1)
    links = []
    for s in range(0, n, step):
        sims = (x[s : s + step] @ x.T).float()
        ar = torch.arange(s, min(s + step, n), device=dev)
        sims[torch.arange(len(ar), device=dev), ar] = -torch.inf
        degree[s : s + step] = (sims >= threshold).sum(1).cpu().numpy()
        upper = torch.arange(n, device=dev)[None, :] > ar[:, None]
        # each pair once: the rest is moved out of the histogram's range (histc ignores it), nothing is copied out
        hist += torch.histc(sims.clamp(-1, 1).masked_fill_(~upper, 3.0), bins=len(HIST_EDGES) - 1, min=-1,
                            max=1).double().cpu()
        val, idx = sims.topk(k, dim=1)
        keep = (val >= threshold).cpu().numpy()
        src = np.repeat(ar.cpu().numpy()[:, None], k, 1)
        links.append(np.stack([src[keep], idx.cpu().numpy()[keep]], 1))
    edges = np.concatenate(links) if links else np.empty((0, 2), np.int64)
    graph = nx.Graph()
    graph.add_edges_from(map(tuple, edges.tolist()))
    comps = sorted(nx.connected_components(graph), key=lambda c: (-len(c), min(c)))
    labels = np.full(n, ISOLATED, np.int32)
    for j, members in enumerate(comps):
        labels[list(members)] = j
    main = torch.from_numpy(labels == 0).to(dev)
    n_main = int(main.sum())
    main_sum = (x * main[:, None].to(x.dtype)).sum(0).float()
    own = main.float()
    sim_main = ((x.float() @ main_sum) - own) / torch.clamp(n_main - own, min=1)
    sim_main = torch.where(n_main - own > 0, sim_main, torch.nan).cpu().numpy()
    best = np.full(n, np.nan, np.float32)
    xm = x[main]
    for s in range(0, n, step):
        sims = (x[s : s + step] @ xm.T).float()
        self_col = torch.cumsum(main.long(), 0)[s : s + step] - 1  # a main photo's own column in xm
        is_main = main[s : s + step]
        sims[torch.nonzero(is_main).flatten(), self_col[is_main]] = -torch.inf
        v = sims.max(1).values if n_main else torch.full((len(sims),), -torch.inf)
        best[s : s + step] = torch.where(torch.isinf(v), torch.nan, v).cpu().numpy()
    f_mean = np.full(len(frows), np.nan, np.float32)
    f_best = np.full(len(frows), np.nan, np.float32)
    if len(frows) and n_main:
        y = gather(emb, frows, dev, dtype)
        f_mean[:] = ((y.float() @ main_sum) / n_main).cpu().numpy()
        for s in range(0, len(frows), step):
            f_best[s : s + step] = (y[s : s + step] @ xm.T).float().max(1).values.cpu().numpy()
    return labels, degree, sim_main.astype(np.float32), best, f_mean, f_best, hist


def _graphs(
    emb: np.ndarray,
    codes: np.ndarray,
    n_codes: int,
    is_fake: np.ndarray,
    valid: np.ndarray,
    threshold: float,
    dev: torch.device,
    block_elems: int,
    progress: bool,
) -> GraphResult:
    """build_graphs on one chunk: `emb` is read in place, identity codes are 0..n_codes-1, `valid` excludes code < 0."""
    n = len(codes)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32  # fp16 matmuls are slow on CPUs
    real_rows = np.flatnonzero(valid & ~is_fake)
    fake_rows = np.flatnonzero(valid & is_fake)
    r_order, r_starts, n_real = segments(codes, real_rows, n_codes)
    f_order, f_starts, n_fake = segments(codes, fake_rows, n_codes)

    component = np.full(n, NOT_IN_GRAPH, dtype=np.int32)
    degree = np.zeros(n, dtype=np.int32)
    sim_to_main = np.full(n, np.nan, dtype=np.float32)
    best_to_main = np.full(n, np.nan, dtype=np.float32)
    ident = pd.DataFrame(
        {
            "n_real": n_real,
            "n_fake": n_fake,
            "n_main": 0,
            "n_isolated": 0,
            "n_components": 0,
            "second_size": 0,
            "via": np.where(n_real == 0, "none", "proof"),
        }
    )
    n_main_arr = np.zeros(n_codes, np.int64)
    n_iso_arr = np.zeros(n_codes, np.int64)
    n_comp_arr = np.zeros(n_codes, np.int64)
    second_arr = np.zeros(n_codes, np.int64)
    via_arr = ident["via"].to_numpy(dtype=object)
    hist = torch.zeros(len(HIST_EDGES) - 1, dtype=torch.float64)

    ids_sorted = np.flatnonzero(n_real > 0)
    ids_sorted = ids_sorted[np.argsort(n_real[ids_sorted], kind="stable")]
    for c in ids_sorted[n_real[ids_sorted] > BIG_IDENTITY]:  # too large for one n x n matrix: in slices
        rows_c = r_order[r_starts[c] : r_starts[c] + n_real[c]]
        frows_c = f_order[f_starts[c] : f_starts[c] + n_fake[c]]
        big = _big_identity(emb, rows_c, frows_c, threshold, dev, dtype, block_elems)
        component[rows_c], degree[rows_c], sim_to_main[rows_c], best_to_main[rows_c] = big[:4]
        sim_to_main[frows_c], best_to_main[frows_c] = big[4:6]
        hist += big[6]
        labels_c = big[0]
        n_main_arr[c], n_iso_arr[c] = int((labels_c == 0).sum()), int((labels_c == ISOLATED).sum())
        n_comp_arr[c], second_arr[c] = int(labels_c.max()) + 1, int((labels_c == 1).sum())
        via_arr[c] = "networkx"
    ids_sorted = ids_sorted[n_real[ids_sorted] <= BIG_IDENTITY]
    dim = emb.shape[1] if emb.ndim == 2 else 0
    # Blocks are independent (each writes its own identities' rows): on the CPU, as many go at once as torch has
    # threads, each on one thread (the same blocks as one at a time: bit-identical results, one block's memory per
    # thread). One block at a time on all threads ends every op at a thread-pool barrier, which waits for a
    # descheduled thread whenever other processes share the cores: 1M photos, load ~3.5, 9.4-10.0 s vs 3.5-3.9 s.
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    blocks = _blocks(n_real, n_fake, ids_sorted, dim, block_elems)

    def block_pass(block: tuple[np.ndarray, int, int]) -> torch.Tensor:
        """One block's graphs, written into the arrays above; returns its histogram of same-identity pairs."""
        ids, side, fside = block
        rows, mask = padded_rows(r_order, r_starts, n_real, ids, side)
        m = torch.from_numpy(mask).to(dev)
        x = gather(emb, rows.ravel(), dev, dtype).view(len(ids), side, -1)
        x = x * m[..., None]
        sims = torch.bmm(x, x.transpose(1, 2)).float()
        eye = torch.eye(side, dtype=torch.bool, device=dev)
        pair_ok = m[:, :, None] & m[:, None, :] & ~eye
        upper = pair_ok & torch.ones(side, side, dtype=torch.bool, device=dev).triu(1)
        block_hist = torch.histc(sims[upper].clamp(-1, 1).double().cpu(), bins=len(HIST_EDGES) - 1, min=-1, max=1)
        adj = (sims >= threshold) & pair_ok
        deg = adj.sum(-1)

        # Vectorised proof of connectivity (see the module docstring); unproven identities go to networkx.
        linked = (deg > 0) & m
        n_linked = linked.sum(1)
        min_deg = torch.where(linked, deg, torch.full_like(deg, side)).min(1).values
        proven = (2 * min_deg >= n_linked - 1) | (n_linked == 0)
        labels = torch.where(linked, 0, ISOLATED).to(torch.int32)
        single = m.sum(1) == 1
        labels[single] = torch.where(m[single], 0, ISOLATED).to(torch.int32)  # one photo: it is the identity
        unproven = torch.nonzero(~proven).flatten().tolist()
        if unproven:
            adj_cpu = adj[unproven].cpu().numpy()
            for j, b in enumerate(unproven):
                k = int(n_real[ids[b]])
                labels[b, :k] = torch.from_numpy(components_networkx(adj_cpu[j, :k, :k]))
                via_arr[ids[b]] = "networkx"
        via_arr[ids[single.cpu().numpy()]] = "single"

        main = (labels == 0) & m
        main_f = main.to(sims.dtype)
        n_main = main.sum(1)
        others = n_main[:, None] - main.long()  # main members other than the photo itself
        total = (sims * main_f[:, None, :]).sum(-1) - torch.diagonal(sims, dim1=1, dim2=2) * main_f
        mean_main = torch.where(others > 0, total / others.clamp(min=1), torch.nan)
        neg = torch.tensor(-torch.inf, device=dev)
        best = torch.where(main[:, None, :] & ~eye, sims, neg).max(-1).values
        best = torch.where(torch.isinf(best), torch.nan, best)

        flat_rows = rows[mask]
        mask_t = m
        component[flat_rows] = labels[mask_t].cpu().numpy()
        degree[flat_rows] = deg[mask_t].cpu().numpy()
        sim_to_main[flat_rows] = mean_main[mask_t].cpu().numpy()
        best_to_main[flat_rows] = best[mask_t].cpu().numpy()

        lab_np = labels.cpu().numpy()
        n_main_arr[ids] = n_main.cpu().numpy()
        n_iso_arr[ids] = ((lab_np == ISOLATED) & mask).sum(1)
        n_comp_arr[ids] = lab_np.max(1) + 1
        second_arr[ids] = ((lab_np == 1) & mask).sum(1)

        if fside:
            frows, fmask = padded_rows(f_order, f_starts, n_fake, ids, fside)
            y = gather(emb, frows.ravel(), dev, dtype)
            fs = torch.bmm(y.view(len(ids), fside, -1), x.transpose(1, 2)).float()
            fsum = (fs * main_f[:, None, :]).sum(-1)
            fmean = torch.where(n_main[:, None] > 0, fsum / n_main.clamp(min=1)[:, None], torch.nan)
            fbest = torch.where(main[:, None, :], fs, neg).max(-1).values
            fbest = torch.where(torch.isinf(fbest), torch.nan, fbest)
            fm = torch.from_numpy(fmask).to(dev)
            sim_to_main[frows[fmask]] = fmean[fm].cpu().numpy()
            best_to_main[frows[fmask]] = fbest[fm].cpu().numpy()
        return block_hist

    with ThreadPoolExecutor(workers) as pool, torch_threads(1 if workers > 1 else torch.get_num_threads()):
        for block_hist in tqdm(pool.map(block_pass, blocks), total=len(blocks), desc="graphs", unit="block",
                               disable=not progress):
            hist += block_hist  # in block order, as one at a time would add them
    ident["n_main"] = n_main_arr
    ident["n_isolated"] = n_iso_arr
    ident["n_components"] = n_comp_arr
    ident["second_size"] = second_arr
    ident["via"] = via_arr
    return GraphResult(component, degree, sim_to_main, best_to_main, ident, hist.numpy().astype(np.int64))
