"""Label-noise patterns planted on an embedded clean dataset, and the scores of flags against them (no files touched).

Why on embeddings: every pattern the cleaner must survive can be made by changing labels only (the photos stay what
they are), so one embedding pass of a clean dataset serves all patterns and seeds in seconds; the files-level demo
(curation.flagging.noise) covers what needs new files (copies, deepfakes). The patterns:

- `random10`, `random25`: that share of the photos moved to a random other identity (a source keeps >= 60%);
- `lookalike`: 10% moved to the identity nearest to their own by centroid (the most similar-looking person);
- `cluster`: a quarter of the folders each get 3-5 photos of one random other person;
- `lookalike_cluster`: a quarter of the folders each get 2-4 photos of their nearest identity;
- `small`: every identity cut to 6 photos or fewer, 10% moved at random;
- `outsiders`: a tenth of the identities leave the dataset, and 8% of photos (of those people) are put into the
  remaining folders: their right answer is "not in this dataset";
- any pattern on aligned crops (glint24) is the same code on other embeddings.

`score_flags` gives precision / recall / F1 of the photo flags against the planted truth, how often the suggested
identity is the photo's person, and how often a person who is in no folder is called "not in this dataset";
`oracle_baseline` the one-line baseline (cosine to the folder's leave-one-out mean below a threshold) with its threshold
tuned on the truth of the same run, i.e. the best that baseline can do.

Example:
    >>> noisy = plant_pattern(identity, emb, "lookalike", seed=0)
    >>> res = flag_embeddings(emb[noisy.rows], noisy.given)
    >>> score_flags(noisy, flagged_rows, suggestions)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PATTERNS = ("random10", "random25", "lookalike", "small", "cluster", "lookalike_cluster", "outsiders")
KEEP_SHARE = 0.6  # a source identity keeps at least this share of its photos


@dataclass
class Planted:
    """rows: the rows of the clean arrays in the noisy set; given: their (noisy) identity; person: who they show;
    in_dataset: whether that person has a folder in the noisy set."""

    pattern: str
    rows: np.ndarray
    given: np.ndarray
    person: np.ndarray
    in_dataset: np.ndarray

    @property
    def wrong(self) -> np.ndarray:
        return self.given != self.person


def centroids(emb: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Unit mean embedding per code."""
    sums = np.zeros((k, emb.shape[1]))
    np.add.at(sums, codes, np.asarray(emb, np.float64))
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def _move(rng, codes: np.ndarray, share: float, target_of) -> np.ndarray:
    """Move ~share of the rows: target_of(source codes) -> target codes; a source keeps KEEP_SHARE of its photos."""
    given = codes.copy()
    counts = np.bincount(codes)
    moved = np.zeros(len(counts), np.int64)
    for r in rng.permutation(len(codes))[: int(round(share * len(codes))) * 2]:
        if (given != codes).sum() >= round(share * len(codes)):
            break
        c = codes[r]
        if moved[c] + 1 > (1 - KEEP_SHARE) * counts[c]:
            continue
        given[r] = target_of(c)
        moved[c] += 1
    return given


def _groups(rng, codes: np.ndarray, sizes: tuple[int, int], source_of) -> np.ndarray:
    """A quarter of the folders get a group of `sizes` photos of source_of(folder)."""
    given = codes.copy()
    counts = np.bincount(codes)
    taken = np.zeros(len(counts), np.int64)
    for folder in rng.permutation(len(counts))[: max(1, len(counts) // 4)]:
        src = source_of(folder)
        free = np.flatnonzero((codes == src) & (given == codes))
        size = int(rng.integers(sizes[0], sizes[1] + 1))
        size = min(size, len(free), int((1 - KEEP_SHARE) * counts[src]) - taken[src])
        if size < 2:
            continue
        given[rng.choice(free, size, replace=False)] = folder
        taken[src] += size
    return given


def plant_pattern(identity, emb: np.ndarray, pattern: str, *, seed: int = 0, min_photos: int = 10,
                  max_photos: int = 40) -> Planted:
    """Plant `pattern` (see PATTERNS) in clean labels `identity` (one per row of `emb`).

    Identities with >= min_photos photos are used (the first max_photos of each); `small` uses every identity with
    >= 5, cut to 6 photos.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    rng = np.random.default_rng(seed)
    ident = pd.Series(np.asarray(identity, dtype=object))
    rank = ident.groupby(ident).cumcount().to_numpy()
    size = ident.map(ident.value_counts()).to_numpy()
    lo, hi = (5, 6) if pattern == "small" else (min_photos, max_photos)
    rows = np.flatnonzero((size >= lo) & (rank < hi))
    codes, names = pd.factorize(ident.iloc[rows])
    k = len(names)
    cent = centroids(np.asarray(emb)[rows], codes, k)
    sims = cent @ cent.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(1)

    def random_other(c):
        return (c + rng.integers(1, k)) % k

    in_dataset = np.ones(len(rows), bool)
    if pattern in ("random10", "random25", "small"):
        given = _move(rng, codes, {"random25": 0.25}.get(pattern, 0.10), random_other)
    elif pattern == "lookalike":
        given = _move(rng, codes, 0.10, lambda c: nearest[c])
    elif pattern == "cluster":
        given = _groups(rng, codes, (3, 5), random_other)
    elif pattern == "lookalike_cluster":
        nearest_to = np.argsort(-sims, axis=0)[0]  # folder f gets photos of the identity nearest to it
        given = _groups(rng, codes, (2, 4), lambda f: nearest_to[f])
    else:  # outsiders
        gone = rng.permutation(k)[: max(1, k // 10)]
        out = np.isin(codes, gone)
        stay = np.setdiff1d(np.arange(k), gone)
        picked = rng.permutation(np.flatnonzero(out))[: int(round(0.08 * (~out).sum()))]
        given = codes.copy()
        given[picked] = stay[rng.integers(0, len(stay), len(picked))]
        keep = ~out | np.isin(np.arange(len(rows)), picked)
        rows, codes, given, in_dataset = rows[keep], codes[keep], given[keep], ~out[keep]
    return Planted(pattern, rows, np.asarray(names, dtype=object)[given], np.asarray(names, dtype=object)[codes],
                   in_dataset)


def prf(flagged: np.ndarray, wrong: np.ndarray) -> dict:
    """precision, recall, F1 of bool flags against bool truth."""
    tp = int((flagged & wrong).sum())
    p = tp / max(int(flagged.sum()), 1)
    r = tp / max(int(wrong.sum()), 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12), "flagged": int(flagged.sum()),
            "wrong": int(wrong.sum())}


def score_flags(planted: Planted, flagged: np.ndarray, suggested: np.ndarray) -> dict:
    """P/R/F1 of `flagged` (bool per planted row) and the suggestions' accuracy.

    suggested: per row, the suggested identity (None/NaN = "not in this dataset"). suggested_right: share of the
    flagged wrong photos whose person has a folder that are suggested that folder; not_in_dataset: share of the
    flagged wrong photos whose person has no folder that get no suggestion.
    """
    out = prf(flagged, planted.wrong)
    hit = flagged & planted.wrong
    sugg = pd.Series(suggested, dtype=object)
    has = sugg.notna().to_numpy()
    inside, outside = hit & planted.in_dataset, hit & ~planted.in_dataset
    out["suggested_right"] = float((sugg.to_numpy()[inside] == planted.person[inside]).mean()) if inside.any() else None
    out["not_in_dataset"] = float((~has[outside]).mean()) if outside.any() else None
    return out


def loo_centroid_cosine(emb: np.ndarray, identity) -> np.ndarray:
    """Cosine of each row to the mean of the other rows of its identity (NaN for identities of one row)."""
    codes, _ = pd.factorize(pd.Series(np.asarray(identity, dtype=object)))
    x = np.asarray(emb, np.float64)
    sums = np.zeros((codes.max() + 1, x.shape[1]))
    np.add.at(sums, codes, x)
    rest = sums[codes] - x
    norm = np.linalg.norm(rest, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 1e-9, (x * rest).sum(1) / norm, np.nan)


def oracle_baseline(emb: np.ndarray, planted: Planted) -> dict:
    """The baseline at its best: flag cos(photo, folder's leave-one-out mean) < t, t tuned on this run's truth."""
    cos = loo_centroid_cosine(emb, planted.given)
    ok = np.isfinite(cos)
    cand = np.unique(cos[ok])
    wrong = planted.wrong
    order = np.argsort(cos[ok])
    w_sorted = wrong[ok][order]
    tp = np.cumsum(w_sorted)  # flagging the i+1 lowest
    n_flag = np.arange(1, len(tp) + 1)
    f1 = 2 * tp / (n_flag + wrong.sum())
    best = int(np.argmax(f1)) if len(f1) else 0
    t = float(cos[ok][order][best]) if len(cand) else float("nan")
    return prf(ok & (cos <= t), wrong) | {"threshold": t}
