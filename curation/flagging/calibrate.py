"""Thresholds from the data itself: where two photos count as "the same person" for this embedder on this dataset.

Why: embedders disagree wildly on what a cosine means. dlib's 128-d descriptors put different people at ~0.8 cosine,
AdaFace IR-101 puts them near 0.0, and the MMG team's 0.15 edge belongs to their model alone. A fixed number would be
right for one embedder and silently wrong for every other. Instead the edge threshold is set where a chosen share of
*different-person* pairs (the false-match rate, FMR) would still get an edge: impostor pairs are sampled across
identities, and the threshold is their (1 - FMR) quantile.

A noisy dataset contaminates that sample: a mislabelled photo paired with its true identity's photos is a genuine pair
counted as an impostor one, and with ~10% label noise over a few hundred identities that happens about as often as the
1e-3 target itself. So impostor pairs are drawn only between each identity's *core* photos (the half closest to the
identity's mean embedding), which mislabelled photos almost never reach.

Example:
    >>> scores = impostor_scores(emb, codes, real)
    >>> t = threshold_at_fmr(scores, 1e-3)          # ~0.93 for dlib on LFW, ~0.2 for AdaFace
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from curation.flagging.graph import STREAM_BUDGET, gather, on_threads, slice_rows

# Default target false-match rate of a graph edge, measured with benchmarks/planted_noise.py (the project's dlib
# embedder; the 158 LFW identities with 10+ photos, at most 40 each; 10% of photos moved; seeds 0-2), as precision /
# recall of outlier+minority on the moved photos:
#   FMR 1e-2: 0.97-0.98 / 0.91-0.94   3e-3: 0.97 / 0.97-0.99   1e-3: 0.94-0.96 / 0.98-0.99
#   FMR 3e-4: 0.88-0.90 / 0.99-1.00   1e-4: 0.81-0.85 / 1.00
# A stricter edge (lower FMR) isolates more genuine-but-hard photos (precision falls); a looser one lets a moved photo
# keep an edge to a lookalike (recall falls). 1e-3 keeps recall, the figure a training set most needs, near 0.99 with
# the widest margin over the goals (precision >= 0.90, recall >= 0.95).
DEFAULT_TARGET_FMR = 1e-3


@dataclass
class Threshold:
    """An edge threshold and how it was chosen (written to report.json as is)."""

    value: float
    method: str  # "target_fmr" (calibrated) or "user" (--threshold)
    target_fmr: float | None
    measured_fmr: float | None  # share of the sampled impostor pairs at or above `value`
    n_impostor_pairs: int
    note: str = ""

    def describe(self) -> str:
        if self.method == "user":
            extra = f"; {self.measured_fmr:.2g} of sampled impostor pairs pass it" if self.measured_fmr is not None else ""
            return f"{self.value:.4f} (set with --threshold{extra})"
        return (
            f"{self.value:.4f} (calibrated: false-match rate {self.target_fmr:g} over "
            f"{self.n_impostor_pairs:,} cross-identity pairs)"
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"description": self.describe()}


def identity_sums(emb: np.ndarray, codes: np.ndarray, rows: np.ndarray, n_codes: int) -> np.ndarray:
    """Sum of the embeddings per identity code over `rows` ([n_codes, D] float32; zero rows where none).

    The identities are shared out between threads by code (graph.on_threads): each identity's rows are still added
    in row order, so the sums are bit-identical to one thread's."""
    out = torch.zeros(n_codes, emb.shape[1], dtype=torch.float32)
    step = slice_rows(emb.shape[1], STREAM_BUDGET)
    workers = max(1, torch.get_num_threads())

    def add(share: np.ndarray) -> None:
        for start in range(0, len(share), step):
            part = share[start : start + step]
            out.index_add_(0, torch.from_numpy(codes[part]), gather(emb, part, torch.device("cpu"), torch.float32))

    on_threads([rows[codes[rows] % workers == j] for j in range(workers)], add)
    return out.numpy()


def identity_centroids(emb: np.ndarray, codes: np.ndarray, rows: np.ndarray, n_codes: int) -> np.ndarray:
    """Unit-length mean embedding per identity code over `rows` ([n_codes, D] float32; zero rows where none)."""
    return torch.nn.functional.normalize(torch.from_numpy(identity_sums(emb, codes, rows, n_codes)), dim=1).numpy()


def rowwise_dot(emb_a: np.ndarray, a: np.ndarray, emb_b: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of pairs (emb_a[a[i]], emb_b[b[i]]), computed in small slices (see graph.STREAM_BUDGET), the slices
    shared out between threads (graph.on_threads)."""
    out = np.empty(len(a), dtype=np.float32)
    cpu = torch.device("cpu")
    chunk = slice_rows(emb_a.shape[1], STREAM_BUDGET)

    def dot(s: int) -> None:
        x = gather(emb_a, a[s : s + chunk], cpu, torch.float32)
        y = gather(emb_b, b[s : s + chunk], cpu, torch.float32)
        out[s : s + chunk] = (x * y).sum(1).numpy()

    on_threads(range(0, len(a), chunk), dot)
    return out


def _core(emb: np.ndarray, codes: np.ndarray, rows: np.ndarray, fraction: float):
    """(core rows, centroids over all `rows` [K, D], cosine of each core row to its own centroid)."""
    n_codes = int(codes[rows].max()) + 1
    cent = identity_centroids(emb, codes, rows, n_codes)
    sim = rowwise_dot(emb, rows, cent, codes[rows])
    order = np.lexsort((-sim, codes[rows]))  # by identity, most central first
    grouped = codes[rows][order]
    starts = np.searchsorted(grouped, grouped, side="left")
    rank = np.arange(len(order)) - starts
    counts = np.bincount(grouped, minlength=n_codes)[grouped]
    keep = order[rank < np.maximum(1, np.ceil(counts * fraction))]
    keep = keep[np.argsort(rows[keep])]
    return rows[keep], cent, sim[keep]


def core_rows(emb: np.ndarray, codes: np.ndarray, rows: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """The rows closest to their identity's mean embedding: the top `fraction` of each identity (at least one photo)."""
    return _core(emb, codes, rows, fraction)[0] if len(rows) else rows


def impostor_scores(
    emb: np.ndarray,
    codes: np.ndarray,
    rows: np.ndarray,
    *,
    n_photos: int = 3000,
    core_fraction: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Cosines of all cross-identity pairs among up to `n_photos` core photos (drawn at random when there are more).

    emb: [N, D] unit rows; codes: identity code per row; rows: the rows to draw from (valid real photos).
    One matrix multiply gives n_photos^2 / 2 pairs (4.5 million for 3,000 photos: ~4,500 beyond a 1e-3 threshold),
    far cheaper than gathering as many random pairs; a small dataset gets every core pair, with no sampling at all.
    Pairs of identities whose centroids are as close to each other as a typical photo is to its own identity's centroid
    are left out: they are probably one person under two labels (a merge to flag), and on a small dataset one such pair
    of identities would otherwise put genuine scores right in the tail that sets the threshold.
    Returns float32 [n_pairs] (empty if there are fewer than two identities).
    """
    ids = np.unique(codes[rows])
    if len(rows) < 2 or len(ids) < 2:
        return np.empty(0, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if len(ids) > 2 * n_photos:  # a million photos: find the core of a random 2 * n_photos identities only
        rows = rows[np.isin(codes[rows], rng.choice(ids, 2 * n_photos, replace=False))]
    core, cent, own = _core(emb, codes, rows, core_fraction)
    if len(core) > n_photos:
        core = np.sort(rng.choice(core, n_photos, replace=False))
    cpu = torch.device("cpu")
    x = gather(emb, core, cpu, torch.float32)
    c = torch.from_numpy(cent[codes[core]])
    sims = x @ x.T
    k = torch.from_numpy(codes[core])
    cross = (k[:, None] != k[None, :]).triu(1)
    keep = cross & ((c @ c.T) < float(np.median(own)))
    if not keep.any():  # every identity looks like every other (identical photos): nothing to leave out
        keep = cross
    return sims[keep].numpy()


def distinct_impostor_pairs(codes: np.ndarray, rows: np.ndarray, core_fraction: float = 0.5) -> int:
    """How many different cross-identity core pairs exist: below ~100 / FMR the tail quantile is only a rough guess."""
    counts = np.ceil(np.bincount(codes[rows]) * core_fraction)
    counts = counts[counts > 0]
    total = counts.sum()
    return int((total * total - (counts * counts).sum()) // 2)


def threshold_at_fmr(scores: np.ndarray, target_fmr: float) -> float:
    """The smallest cosine t such that at most `target_fmr` of the impostor scores are >= t (just above that quantile)."""
    if not 0 < target_fmr < 1:
        raise ValueError(f"target false-match rate must be between 0 and 1, got {target_fmr}")
    if len(scores) == 0:
        raise ValueError("no cross-identity pairs to calibrate on (the data needs at least two identities)")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    allowed = int(np.floor(target_fmr * len(s)))  # this many impostor pairs may pass
    if allowed == 0:
        return float(np.nextafter(s[-1], np.inf))
    return float(np.nextafter(s[len(s) - allowed - 1], np.inf))


def calibrate_threshold(
    emb: np.ndarray,
    codes: np.ndarray,
    rows: np.ndarray,
    *,
    target_fmr: float = DEFAULT_TARGET_FMR,
    override: float | None = None,
    seed: int = 0,
) -> tuple[Threshold, np.ndarray]:
    """The edge threshold: `override` when given (user's --threshold), else calibrated at `target_fmr`.

    Returns the Threshold and the impostor scores it was measured on (also used for report.json's histogram).
    """
    scores = impostor_scores(emb, codes, rows, seed=seed)
    note = ""
    distinct = distinct_impostor_pairs(codes, rows)
    if override is not None:
        measured = float(np.mean(scores >= override)) if len(scores) else None
        return Threshold(float(override), "user", None, measured, len(scores)), scores
    if distinct < 100 / target_fmr:
        note = (
            f"only {distinct:,} distinct cross-identity pairs exist, too few to measure a false-match rate of "
            f"{target_fmr:g} well: the threshold is a rough estimate (pass --threshold to set it)"
        )
    value = threshold_at_fmr(scores, target_fmr)
    return Threshold(value, "target_fmr", target_fmr, float(np.mean(scores >= value)), len(scores), note), scores


def duplicate_threshold(genuine_median: float, edge_threshold: float, closeness: float = 0.9) -> float:
    """Cosine above which two photos count as the same picture, not just the same person.

    A re-encoded or resized copy of a photo scores almost 1 with any embedder, while two different photos of one person
    score around the genuine median, which differs per embedder (~0.95 for dlib, ~0.6 for AdaFace). The threshold sits
    `closeness` of the way from that median to 1, and never below the edge threshold.
    """
    g = float(np.clip(genuine_median, -1.0, 1.0))
    return float(max(edge_threshold, g + (1.0 - g) * closeness))


def hist_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Quantile of a histogram (linear inside the bin), e.g. the genuine median from the graph pass's histogram."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q * total))
    before = cum[i - 1] if i else 0
    frac = (q * total - before) / max(counts[i], 1)
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))
