"""Per-photo evidence that a photo is filed under the wrong identity, computed for every photo at once.

Why these numbers: a mislabelled photo (a) fits its own identity worse than that identity's photos usually do, and
(b) often fits another identity better than its own. A graph edge alone misses both a wrong photo with one lucky edge
(single link) and a lookalike that is close to everyone. So, per valid real photo i of identity c:

- `own`: cosine of photo i to the *core centroid* of c, leaving photo i out. The core is the `CORE_FRACTION` of c's
  photos closest to c's mean (chosen twice, the second time against the first core's mean), so a tight group of wrong
  photos, or a quarter of random ones, cannot pull the centroid towards itself and hide in its own mean;
- `z`: `own` relative to the identity's own spread: (own - level[c]) / spread[c], level = median `own` of c,
  spread = its MAD-based standard deviation shrunk towards the dataset's typical spread (an identity of 5 photos has no
  spread of its own worth trusting). A varied identity (two hair styles, two decades) gets a wide spread and is not
  over-flagged;
- `other`, `other_code`: the best cosine to another identity's core centroid (faiss over the centroids), and `second`,
  `second_code` the next one (what would remain if the photo were moved to `other`'s identity).

Everything is vectorised: sums per identity with one `index_add_` per slice, medians per identity with one sort,
faiss for the nearest centroids; no Python loop runs per photo or per identity. Memory: per-row float32 columns plus the
K x D centroids; `emb` is read in slices (a memory map is fine).

Example:
    >>> ev = photo_evidence(emb, codes, real, n_codes)
    >>> ev.z[:5], ev.other_code[:5]        # how unusual each photo is for its folder; the nearest other identity
"""
from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from curation.flagging.calibrate import identity_sums, rowwise_dot
from curation.flagging.graph import STREAM_BUDGET, gather, slice_rows
from curation.flagging.search import build_index, indexed_neighbours, knn, plan_index, train_index

CORE_FRACTION = 0.6  # share of an identity's photos its centroid is made of (robust to 40% contamination)
SPREAD_PRIOR = 5.0  # weight, in photos, of the dataset's typical spread in each identity's spread
MIN_SPREAD = 1e-3  # floor of a spread (all-identical embeddings would otherwise divide by zero)
QUERY_ALL_BUDGET = 4e9  # photos x centroids at or below which every photo is searched, not only the doubtful ones
NEIGHBOUR_Z = -0.5  # past QUERY_ALL_BUDGET: below this fit, compared with the folder's nearest identities ...
DOUBT_Z = -2.0  # ... and below this one, searched among all identities
NEIGHBOURS = 8


@dataclass
class Evidence:
    """Evidence per row (NaN / -1 where a row is not judged: fakes, invalid rows, identities of one photo).

    own, z, other, second, third: float32 [N]; other_code, second_code, third_code: int64 [N] identity codes (-1:
    none) of the three nearest other identities;
    core: bool [N], the rows the centroids are made of; level, spread: float32 [K] per identity code;
    centroids: float32 [Kc, D] unit core centroids of the identities `cent_codes` (int64 [Kc]).
    """

    own: np.ndarray
    z: np.ndarray
    other: np.ndarray
    other_code: np.ndarray
    second: np.ndarray
    second_code: np.ndarray
    third: np.ndarray
    third_code: np.ndarray
    core: np.ndarray
    level: np.ndarray
    spread: np.ndarray
    centroids: np.ndarray
    cent_codes: np.ndarray
    unit: float  # the dataset's typical spread (median over identities): the scale of "a little closer"
    neighbours: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.int64))  # int64 [Kc, m]: the codes of
    # the m nearest identities of each centroid's identity by centroid, nearest first (itself among them; -1: none)
    index_kind: str = "none"  # the faiss factory string of the centroid index ("none": fewer than two centroids)
    trained_index: faiss.Index | None = None  # that index trained and empty: for indexes over other centroids of the
    # same identities to copy (search.build_index(trained=)), with no k-means of their own

    def z_at(self, cosine: np.ndarray, code: np.ndarray) -> np.ndarray:
        """How a cosine to identity `code`'s centroid compares with that identity's own photos (NaN for code -1)."""
        c = np.maximum(code, 0)
        return np.where(code >= 0, (cosine - self.level[c]) / self.spread[c], np.nan).astype(np.float32)


def group_median(values: np.ndarray, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Median of `values` per code (NaN for codes without values), with one sort.

    Example:
        >>> group_median(np.array([1., 5, 2, 9]), np.array([0, 0, 0, 2]), 3)
        array([ 2., nan,  9.])
    """
    order = np.lexsort((values, codes))
    sc = codes[order]
    counts = np.bincount(sc, minlength=n_codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(n_codes, np.nan, np.float64)
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    sv = values[order].astype(np.float64)
    out[has] = 0.5 * (sv[lo] + sv[hi])
    return out


def loo_cosine(emb: np.ndarray, rows: np.ndarray, codes: np.ndarray, sums: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Cosine of each row to its identity's summed vector `sums[code]`, minus the row itself where `inside` is True.

    With unit rows x and sum S: cos(x, S - x) = (x.S - 1) / |S - x|, |S - x|^2 = |S|^2 - 2 x.S + 1, so one dot
    product per row gives the leave-one-out cosine; no per-identity matrix is built. NaN when nothing is left.
    """
    dot = rowwise_dot(emb, rows, sums, codes[rows]).astype(np.float64)
    sq = np.einsum("ij,ij->i", sums, sums)[codes[rows]].astype(np.float64)
    w = inside.astype(np.float64)
    num = dot - w
    den2 = sq - 2 * w * dot + w
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den2 > 1e-9, num / np.sqrt(np.maximum(den2, 1e-18)), np.nan)
    return out.astype(np.float32)


def _core(own: np.ndarray, codes_r: np.ndarray, n_codes: int, fraction: float) -> np.ndarray:
    """The top `fraction` of each identity's rows by `own` (at least one; NaN counts as worst)."""
    order = np.lexsort((-np.nan_to_num(own, nan=-9.0), codes_r))
    grouped = codes_r[order]
    counts = np.bincount(codes_r, minlength=n_codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[grouped]
    keep = np.zeros(len(own), bool)
    keep[order[rank < np.maximum(1, np.ceil(counts[grouped] * fraction))]] = True
    return keep


def photo_evidence(
    emb: np.ndarray,
    codes: np.ndarray,
    real: np.ndarray,
    n_codes: int,
    *,
    use_gpu: bool = False,
    nprobe: int = 16,
    exact_max: int = 10_000,
    factory: str | None = None,
    seed: int = 0,
) -> Evidence:
    """The evidence of every valid real row (see the module docstring).

    emb: [N, D] unit rows (float16/float32, a memory map is fine); codes: int64 [N] identity codes (< 0: none);
    real: bool [N], the valid real photos judged; n_codes: number of identity codes.
    """
    n = len(codes)
    rows = np.flatnonzero(real & (codes >= 0))
    cr = codes[rows]
    n_per = np.bincount(cr, minlength=n_codes)
    judged = n_per[cr] >= 2
    own = np.full(n, np.nan, np.float32)
    core = np.zeros(n, bool)
    sums = identity_sums(emb, codes, rows, n_codes)
    own_r = loo_cosine(emb, rows, codes, sums, np.ones(len(rows), bool))
    for _ in range(2):  # core against the plain mean, then against the first core's mean
        in_core = _core(own_r, cr, n_codes, CORE_FRACTION)
        sums = identity_sums(emb, codes, rows[in_core], n_codes)
        own_r = loo_cosine(emb, rows, codes, sums, in_core)
    own[rows] = np.where(judged, own_r, np.nan)
    core[rows] = in_core

    jr = rows[judged]
    level = group_median(own[jr], codes[jr], n_codes)
    dev = np.abs(own[jr] - level[codes[jr]])
    mad_sd = 1.4826 * group_median(dev, codes[jr], n_codes)
    n_j = np.bincount(codes[jr], minlength=n_codes).astype(np.float64)
    typical = float(np.nanmedian(mad_sd)) if np.isfinite(mad_sd).any() else MIN_SPREAD
    typical = max(typical, MIN_SPREAD)
    spread = np.sqrt((n_j * np.nan_to_num(mad_sd) ** 2 + SPREAD_PRIOR * typical**2) / (n_j + SPREAD_PRIOR))
    spread = np.maximum(spread, MIN_SPREAD)
    level = np.nan_to_num(level, nan=1.0)
    z = np.full(n, np.nan, np.float32)
    z[jr] = (own[jr] - level[codes[jr]]) / spread[codes[jr]]

    norms = np.linalg.norm(sums, axis=1)
    cent_codes = np.flatnonzero(norms > 1e-6)
    cent = (sums[cent_codes] / norms[cent_codes, None]).astype(np.float32)
    nan, none = (lambda: np.full(n, np.nan, np.float32)), (lambda: np.full(n, -1, np.int64))
    ev = Evidence(own, z, nan(), none(), nan(), none(), nan(), none(), core, level.astype(np.float32), spread.astype(np.float32), cent, cent_codes, typical)
    if len(cent_codes) < 2:
        return ev
    ev.index_kind = factory or plan_index(len(cent_codes), exact_max=exact_max)
    ev.trained_index = train_index(cent, factory=ev.index_kind, seed=seed)
    index = build_index(cent, nprobe=nprobe, use_gpu=use_gpu, trained=ev.trained_index)
    # the identities nearest each identity: where a lookalike's person is, and the merge candidates (core.py)
    _, nb = indexed_neighbours(index, cent, min(NEIGHBOURS + 1, len(cent_codes)), nprobe=nprobe)
    ev.neighbours = np.where(nb >= 0, cent_codes[np.maximum(nb, 0)], -1)
    if len(rows) * len(cent_codes) <= QUERY_ALL_BUDGET:
        best_others(ev, emb, rows, codes, index, nprobe)
        return ev
    # Past the budget, two cheaper paths: every photo that fits its folder less than usual is compared exactly with
    # the centroids of its folder's NEIGHBOURS nearest identities (where a lookalike's person is), and only the
    # clearly doubtful ones are searched among all identities (a random move's person is anywhere)
    _neighbour_others(ev, emb, rows[z[rows] < NEIGHBOUR_Z], codes)
    best_others(ev, emb, rows[z[rows] < DOUBT_Z], codes, index, nprobe)
    return ev


def _merge_top(ev: Evidence, part: np.ndarray, cos: np.ndarray, code: np.ndarray) -> None:
    """Keep, per row of `part`, the three best of its current other/second/third and the new candidates."""
    slots = ((ev.other, ev.other_code), (ev.second, ev.second_code), (ev.third, ev.third_code))
    allc = np.concatenate([np.stack([np.nan_to_num(c[part], nan=-np.inf) for c, _ in slots], 1), cos], 1)
    allk = np.concatenate([np.stack([k[part] for _, k in slots], 1), code], 1)
    allc = np.where(allk >= 0, allc, -np.inf)
    # the same identity may come twice (found by both paths): sort by code, drop repeats, then by cosine
    by_code = np.argsort(allk, axis=1, kind="stable")
    sk, sc = np.take_along_axis(allk, by_code, 1), np.take_along_axis(allc, by_code, 1)
    repeat = np.zeros_like(sk, bool)
    repeat[:, 1:] = sk[:, 1:] == sk[:, :-1]
    sc = np.where(repeat, -np.inf, sc)
    top = np.argsort(-sc, axis=1, kind="stable")[:, :3]
    for j, (c, k) in enumerate(slots):
        v = np.take_along_axis(sc, top[:, j : j + 1], 1)[:, 0]
        c[part] = np.where(np.isfinite(v), v, np.nan)
        k[part] = np.where(np.isfinite(v), np.take_along_axis(sk, top[:, j : j + 1], 1)[:, 0], -1)


def _neighbour_others(ev: Evidence, emb: np.ndarray, rows: np.ndarray, codes: np.ndarray) -> None:
    """Exact cosines of `rows` to the centroids of their identity's NEIGHBOURS nearest identities (ev.neighbours)."""
    if len(rows) == 0:
        return
    m = ev.neighbours.shape[1]
    row_of = np.full(len(ev.level), -1, np.int64)  # identity code -> its centroid's row
    row_of[ev.cent_codes] = np.arange(len(ev.cent_codes))
    step = max(1, slice_rows(emb.shape[1], STREAM_BUDGET) // m)  # [step, m, D] candidates: small (graph.STREAM_BUDGET)
    cent = torch.from_numpy(ev.centroids)
    for s in range(0, len(rows), step):
        part = rows[s : s + step]
        own_c = row_of[codes[part]]
        cand_code = np.where(own_c[:, None] >= 0, ev.neighbours[np.maximum(own_c, 0)], -1)  # own among them
        cand_code = np.where(cand_code == codes[part][:, None], -1, cand_code)
        x = gather(emb, part, torch.device("cpu"), torch.float32)
        cand = torch.from_numpy(np.maximum(row_of[np.maximum(cand_code, 0)], 0))
        cos = torch.einsum("nd,nmd->nm", x, cent[cand]).numpy()
        _merge_top(ev, part, np.where(cand_code >= 0, cos, -np.inf), cand_code)


def best_others(ev: Evidence, emb: np.ndarray, query: np.ndarray, codes: np.ndarray, index, nprobe: int) -> None:
    """Fill ev.other/second/third (and their codes) for the `query` rows: their three nearest identity centroids
    other than their own (faiss; the own identity is searched for too and dropped)."""
    k = min(4, len(ev.cent_codes))
    step = slice_rows(emb.shape[1])
    for s in range(0, len(query), step):
        part = query[s : s + step]
        x = gather(emb, part, torch.device("cpu"), torch.float32).numpy()
        sims, ids = knn(index, x, k, nprobe=nprobe)
        cc = np.where(ids >= 0, ev.cent_codes[np.maximum(ids, 0)], -1)
        mine = cc == codes[part][:, None]
        cc = np.where(mine, -1, cc)
        sims = np.where(mine | (cc < 0), -np.inf, sims)
        _merge_top(ev, part, sims, cc)
