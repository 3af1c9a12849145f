"""Flagging on plain arrays: embeddings + identity per row in, proposals in the label store's vocabulary out.

This is the whole cleaning method, independent of files, stores and embedders (curation.clean feeds it; the scale
benchmark feeds it synthetic arrays):
1. calibrate the edge threshold from cross-identity pairs (curation.flagging.calibrate), unless the user set one;
2. per identity, a similarity graph of its real photos (curation.flagging.graph): two big components -> `split`; a
   deepfake whose best similarity to the main component is below the threshold -> `fake_mismatch`;
   per photo, evidence (curation.flagging.evidence) and P(wrong identity) (curation.flagging.mislabel): at >= 0.6 the
   photo is flagged `outlier` (no edge in its graph) or `minority`, with the nearest other identity as suggestion or
   none ("not in this dataset"); flagged photos of one folder with the same nearest identity are one group;
3. across identities, faiss over identity centroids (curation.flagging.search): the most likely true identity of every
   outlier/minority photo (`suggested_identity`), near-identical photos under two identities -> `duplicate`, and
   identity pairs whose photos match like one person's -> `merge`. The candidates come from the evidence's own
   searches (each identity's nearest identities, each doubtful photo's); only photos it did not judge (single-photo
   identities') are searched again, among the main components' centroids, in an index with the evidence index's lists.

Why duplicates are searched this way: a photo copied into a wrong identity is (a) an outlier or minority there, or
(b) in an identity that is the same person as its twin's (a merge candidate). So the copies are found by comparing every
flagged photo (and every single-photo identity) with the main photos of its nearest identities, and the two sides of
every merge candidate with each other: exact cosines on a few rows each, instead of a million-row photo index.

`score` per flag kind (higher is not always "more sure"; the unit is a cosine unless said):
outlier / minority: P(wrong identity) (the evidence, e.g. own_cosine, z, nearest_identity, in `details`);
fake_mismatch: best cosine to a main-component photo; split: size of the 2nd component / size of the largest;
merge: share of cross pairs joined by an edge; duplicate: cosine of the two photos.

Memory past ten million photos: `emb` may be a read-only memory map (`np.load(path, mmap_mode="r")`, float16 kept as
float16). It is read in passes that each hold a bounded part of it: norms in slices, the graphs in chunks of
identities (`FlagConfig.chunk_rows`, see curation.flagging.graph), centroid sums in slices, flagged photos in batches. What
stays in memory is the per-row output (~100 bytes a photo with the nodes table), one chunk, and the centroid index
(2 x identities x D float32). Embeddings that are not unit length are normalised into a temporary file, not into RAM,
when they come as a memory map.

Example:
    >>> res = flag_embeddings(emb, identities, is_fake)
    >>> res.flags.head()        # row, identity, flag, component, suggested_identity, score, details
    >>> res = flag_embeddings(np.load("emb.npy", mmap_mode="r"), identities)   # a file larger than RAM
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from curation.flagging.calibrate import (
    DEFAULT_TARGET_FMR,
    calibrate_threshold,
    duplicate_threshold,
    hist_quantile,
    identity_sums,
    rowwise_dot,
)
from curation.flagging.graph import (
    CHUNK_ROWS,
    HIST_EDGES,
    STREAM_BUDGET,
    best_match,
    build_graphs,
    cross_segments,
    gather,
    one_thread,
    scratch_array,
    segments,
    slice_rows,
    take_rows,
)
from curation.flagging.evidence import photo_evidence
from curation.flagging.mislabel import fit_model, outsider_features
from curation.flagging.search import DEFAULT_NPROBE, EXACT_MAX, build_index, knn
from embeddings.device import pick_device
from labels.cli import UserError


class FlagError(UserError):
    """The arrays cannot be flagged at all (e.g. a single identity and no --threshold); the message says why."""


@dataclass
class FlagConfig:
    """Knobs of the method; the defaults are what benchmarks/planted_noise.py measured (see the report)."""

    threshold: float | None = None  # edge threshold; None = calibrated at target_fmr
    target_fmr: float = DEFAULT_TARGET_FMR
    split_ratio: float = 0.25  # 2nd component >= this share of the largest ...
    split_min_size: int = 3  # ... and at least this many photos -> split
    merge_min_density: float | None = None  # None = half the median edge density inside identities
    merge_ratio: float = 0.8  # (cross mean - impostor mean) / (own mean - impostor mean), see the merge step
    duplicate_threshold: float | None = None  # None = calibrated from the genuine median (curation.flagging.calibrate)
    suggest_k: int = 2  # nearest other identities (<= 3) a flagged photo is searched for a duplicate in
    merge_k: int = 5  # nearest identities checked per identity for merges (at most evidence.NEIGHBOURS)
    nprobe: int = DEFAULT_NPROBE
    exact_max: int = EXACT_MAX
    faiss_index: str | None = None  # faiss index_factory string for the centroids, e.g. "HNSW32"; None = by size
    chunk_rows: int = CHUNK_ROWS  # photos per chunk of identities in the graph pass (memory, not results)
    # a photo is flagged outlier/minority at this P(wrong identity) (curation.flagging.mislabel). P reads high (its
    # mean is ~1.3x the planted share of wrong photos, from a long tail of small P on genuine ones), so borderline
    # genuine photos sit at 0.5-0.6. benchmarks/planted_noise.py, LFW seeds 0-3, F1 at 0.5 -> 0.6: random 25%
    # 0.982-0.987 -> 0.990-0.991, one wrong person 0.955-0.966 -> 0.958-0.969, glint24 crops 0.952-0.973 ->
    # 0.952-0.979, lookalikes 0.955-0.979 -> 0.953-0.980, lookalike groups 0.922-0.953 -> 0.922-0.949, outsiders
    # 0.955-0.970 -> 0.955-0.969, random 10% and small equal
    flag_probability: float = 0.6
    merge_fit_z: float = -2.0  # a photo this typical of its folder is not flagged for looking like its merge partner
    # a flagged photo is "not in this dataset" at this P (curation.flagging.mislabel). benchmarks/planted_noise.py at
    # 0.5 / 0.6 / 0.7: outsiders called so 0.95-0.97 / 0.92-0.94 / 0.87-0.90 (LFW, seeds 0-3); moved photos suggested
    # their person, worst LFW pattern 0.967 / 0.969 / 0.975 (seeds 0-1), glint24 crops 0.87-0.89 / 0.90 / 0.93
    outsider_probability: float = 0.6
    match_quantile: float = 0.01  # ... unless one photo of its nearest identity matches it as well as this quantile of
    # the photos' best match in their own folder (then it is that person, whatever the centroids say)
    seed: int = 0


@dataclass
class FlagResult:
    """flags: one row per flag (`row` = input row, -1 for identity-level flags).
    nodes: one row per input row (component, degree, sim_to_main, best_to_main, suggested_identity, flags).
    identities: one row per identity (sizes, components, noise estimate).
    thresholds / histogram / noise: what report.json records. messages: things the user should read.
    """

    flags: pd.DataFrame
    nodes: pd.DataFrame
    identities: pd.DataFrame
    thresholds: dict
    histogram: dict
    noise: dict
    messages: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


@one_thread
def _normalised(emb: np.ndarray, valid: np.ndarray, messages: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mark NaN/inf/zero rows invalid; renormalise rows only if the input is not unit length already.

    Works slice by slice; a copy (other dtypes -> float32, or renormalised rows) goes to a temporary file when `emb`
    is a memory map, so a file larger than RAM never has to fit in it.
    """
    on_disk = isinstance(emb, np.memmap)
    emb = np.asarray(emb)
    step = slice_rows(emb.shape[1] if emb.ndim == 2 else 1, STREAM_BUDGET)
    norms = np.empty(len(emb), dtype=np.float32)
    for s in range(0, len(emb), step):
        part = gather(emb, np.arange(s, min(s + step, len(emb))), torch.device("cpu"), torch.float32)
        norms[s : s + step] = torch.linalg.vector_norm(part, dim=1).numpy()
    bad = valid & ~(np.isfinite(norms) & (norms > 1e-6))
    if bad.any():
        messages.append(f"{int(bad.sum())} embedding row(s) hold NaN, inf or zeros: left out of the graphs")
    valid = valid & ~bad
    renormalise = bool(valid.any() and np.abs(norms[valid] - 1).max() > 1e-2)
    if renormalise:
        messages.append("embeddings were not unit length: normalised them (cosine similarity is what is compared)")
    if renormalise or emb.dtype not in (np.float16, np.float32):
        dtype = emb.dtype if emb.dtype in (np.float16, np.float32) else np.dtype(np.float32)
        out = scratch_array(emb.shape, dtype, on_disk)
        safe = np.where(valid, norms, 1.0).astype(np.float32)[:, None]
        for s in range(0, len(emb), step):
            part = np.asarray(emb[s : s + step], dtype=np.float32)
            out[s : s + step] = np.nan_to_num(part) / safe[s : s + step] if renormalise else part
        emb = out
    return emb, valid


def _near_copies(emb, codes, rows, n_codes, dup_t, device, budget=1 << 24):
    """Pairs of `rows` of one identity with cosine >= dup_t: (later row, its earliest copy, cosine) per later row.

    Identities are compared in padded blocks (all candidate rows of an identity against each other); an identity with
    more candidates than fit one block is compared in slices of its rows, so no n x n matrix beyond `budget` numbers.
    """
    order, starts, counts = segments(codes, rows, n_codes)
    ids = np.flatnonzero(counts >= 2)
    out_row, out_twin, out_sim = [], [], []
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    for c in ids:
        part = order[starts[c] : starts[c] + counts[c]]
        x = gather(emb, part, device, dtype)
        step = max(1, budget // max(len(part), 1))
        for s in range(0, len(part), step):
            sims = (x[s : s + step] @ x.T).float()
            ar = torch.arange(s, min(s + step, len(part)), device=device)
            sims[torch.arange(len(ar), device=device), ar] = -torch.inf  # not itself
            earlier = torch.arange(len(part), device=device)[None, :] < ar[:, None]
            hit = torch.where(earlier, sims, torch.tensor(-torch.inf, device=device)).max(1)
            ok = (hit.values >= dup_t).cpu().numpy()
            out_row.append(part[s : s + step][ok])
            out_twin.append(part[hit.indices.cpu().numpy()[ok]])
            out_sim.append(hit.values.cpu().numpy()[ok])
    if not out_row:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(out_row), np.concatenate(out_twin), np.concatenate(out_sim)


def _group_key(codes: np.ndarray, nearest: np.ndarray, n_codes: int) -> np.ndarray:
    """(folder, nearest other identity) as one integer per row: the flagged photos sharing one are a group."""
    return codes * (n_codes + 1) + nearest + 1


def _joins_group(emb, codes, nearest, prob, wrong, judged, n_codes, t, device):
    """Photos the probability left unflagged that belong to a flagged group of their folder.

    A group of 2-4 photos of a lookalike sits in a folder as a small community: each of its photos is closest to the
    others, and the weaker ones, judged one by one, stay just under the flag. A judged photo joins the group when its
    nearest other identity is the group's and its best match among the group's photos is closer than its best match
    among the rest of its folder (its folder mates vouch for it only through the group).
    Returns (rows, their group's mean P(wrong), best cosine to the group, best cosine to the rest of the folder).
    """
    empty = np.empty(0, np.int64), *(np.empty(0, np.float32) for _ in range(3))
    flagged = judged[wrong[judged]]
    if len(flagged) == 0:
        return empty
    key = _group_key(codes, nearest, n_codes)
    gkeys = np.unique(key[flagged])
    rest = judged[~wrong[judged]]
    cand = rest[(nearest[rest] >= 0) & np.isin(key[rest], gkeys)]
    if len(cand) == 0:
        return empty
    gid = np.full(len(codes), -1, np.int64)
    gid[flagged] = np.searchsorted(gkeys, key[flagged])
    cand_gid = np.searchsorted(gkeys, key[cand])
    to_group = best_match(emb, cand, cand_gid, segments(gid, flagged, len(gkeys)), t, device)
    to_folder = best_match(emb, cand, codes[cand], segments(codes, rest, n_codes), t, device)
    join = np.isfinite(to_folder) & (to_group > to_folder)
    group_p = np.bincount(gid[flagged], prob[flagged], len(gkeys)) / np.bincount(gid[flagged], minlength=len(gkeys))
    return cand[join], group_p[cand_gid[join]].astype(np.float32), to_group[join], to_folder[join]


def _groups(codes, nearest, rows, comp, n_codes):
    """Flagged photos of one folder whose nearest other identity is the same: one group (one wrong person, or one
    person's photos filed here by mistake), reviewed together. Returns per row (group number, group size): groups of
    2+ are numbered per identity after its graph components (so the identity page shows each as a component of its
    own); a photo alone keeps size 1.
    """
    n = len(codes)
    number = np.full(n, -1, np.int32)
    size = np.ones(n, np.int64)
    if len(rows) == 0:
        return number, size
    key = _group_key(codes[rows], nearest[rows], n_codes)
    uniq, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    size[rows] = cnt[inv]
    multi = cnt[inv] > 1
    top = np.full(n_codes, 0, np.int64)
    np.maximum.at(top, codes[codes >= 0], np.maximum(comp[codes >= 0], 0))
    g_rows = rows[multi]
    g_key = uniq[inv[multi]]
    first_of = np.unique(g_key)  # groups in key order; rank them within their identity
    g_code = first_of // (n_codes + 1)
    rank = np.arange(len(first_of)) - np.searchsorted(g_code, g_code, side="left")
    number[g_rows] = (top[g_code] + 1 + rank)[np.searchsorted(first_of, g_key)]
    return number, size


def _num(x) -> float | None:
    """A float for details (JSON): None for NaN."""
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _few(names, limit: int = 5) -> str:
    names = [str(x) for x in names]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


FLAG_COLUMNS = ["row", "identity", "flag", "component", "suggested_identity", "score", "details"]


def _finite_rounded(x: np.ndarray) -> list:
    """`_num` of every value, as a list (one pass instead of a call per flag and field)."""
    return [round(v, 4) if math.isfinite(v) else None for v in np.asarray(x, np.float64).tolist()]


def _mislabel_flags(ev, g, codes, names, outlier, minority, merged, merge_fit_z, elsewhere, suggested, shown, prob,
                    z_there, nearest_best, n_main, group_size, joined_best, n_codes) -> dict[str, list]:
    """The outlier and minority flags (in that order, each by row) as columns of FLAG_COLUMNS, with their details;
    sets `suggested` for their rows. Column by column: at ten million photos there are half a million of them."""
    rows = np.concatenate([np.flatnonzero(outlier), np.flatnonzero(minority)])
    kinds = np.repeat(np.array(["outlier", "minority"], dtype=object), [int(outlier.sum()), int(minority.sum())])
    other = ev.other_code[rows]
    if merged:  # it fits its folder and looks like the folder's merge partner: the merge flag covers it
        pairs = np.array(sorted(merged), np.int64)
        covered = (ev.z[rows] >= merge_fit_z) & np.isin(
            _group_key(codes[rows], other, n_codes), _group_key(pairs[:, 0], pairs[:, 1], n_codes)
        )
        rows, kinds, other = rows[~covered], kinds[~covered], other[~covered]
    sugg = np.where(elsewhere[rows], names[other], None)
    suggested[rows] = sugg
    nearest = np.where(other >= 0, names[other], None)
    fields = {
        "own_cosine": _finite_rounded(ev.own[rows]), "z": _finite_rounded(ev.z[rows]),
        "nearest_identity": nearest.tolist(), "nearest_cosine": _finite_rounded(ev.other[rows]),
        "z_nearest": _finite_rounded(z_there[rows]), "nearest_best_photo": _finite_rounded(nearest_best[rows]),
        "not_in_dataset": (~elsewhere[rows]).tolist(), "degree": g.degree[rows].astype(np.int64).tolist(),
        "mean_to_main": _finite_rounded(g.sim_to_main[rows]), "n_main": n_main[codes[rows]].astype(np.int64).tolist(),
        "group_size": group_size[rows].astype(np.int64).tolist(),
    }
    details = [dict(zip(fields, values)) for values in zip(*fields.values())]
    for i in np.flatnonzero(np.isfinite(joined_best[rows, 0])):
        details[i]["joined_group"] = {"best_to_group": _num(joined_best[rows[i], 0]),
                                      "best_to_folder": _num(joined_best[rows[i], 1])}
    return {
        "row": rows.tolist(), "identity": names[codes[rows]].tolist(), "flag": kinds.tolist(),
        "component": shown[rows].astype(np.int64).tolist(), "suggested_identity": sugg.tolist(),
        "score": prob[rows].astype(np.float64).tolist(), "details": details,
    }


def _row_flags(n: int, rows: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Per input row, its flag kinds joined by commas in flag order ("" for none)."""
    out = np.full(n, "", dtype=object)
    photo = rows >= 0
    rows, kinds = rows[photo], kinds[photo]
    once = np.bincount(rows, minlength=n)[rows] == 1
    out[rows[once]] = kinds[once]
    for row, kind in zip(rows[~once].tolist(), kinds[~once].tolist()):  # the few photos with two flags
        out[row] = f"{out[row]},{kind}" if out[row] else kind
    return out


def flag_embeddings(
    emb: np.ndarray,
    identity,
    is_fake=None,
    valid=None,
    *,
    config: FlagConfig | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> FlagResult:
    """Flag likely label errors in an embedded dataset.

    emb: [N, D] float16/float32 embeddings (unit rows preferred; NaN rows = failed embeddings, left out).
    identity: N identity names (None/NaN = no identity). is_fake: N bools (deepfakes; default none).
    valid: N bools, False for rows to ignore (e.g. no face found; default all).
    Returns a FlagResult; raises FlagError when nothing can be flagged (fewer than two identities and no threshold).

    Example:
        >>> res = flag_embeddings(np.load("emb.npy"), pd.read_csv("index.csv").identity)
        >>> res.flags.flag.value_counts()
    """
    cfg = config or FlagConfig()
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    timings: dict[str, float] = {}
    messages: list[str] = []
    t_start = time.perf_counter()
    n = len(emb)
    codes, names = pd.factorize(identity if isinstance(identity, pd.Series) else pd.Series(identity), use_na_sentinel=True)
    codes = codes.astype(np.int64)
    names = np.asarray(names, dtype=object)
    k_ids = len(names)
    is_fake = np.zeros(n, bool) if is_fake is None else np.asarray(is_fake, bool)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool).copy()
    if len(codes) != n or len(is_fake) != n or len(valid) != n:
        raise FlagError(f"{n} embeddings but {len(codes)} identities / {len(is_fake)} fake marks / {len(valid)} valid marks")
    on_disk = isinstance(emb, np.memmap)
    emb, valid = _normalised(emb, valid & (codes >= 0), messages)
    step = slice_rows(emb.shape[1])
    real = valid & ~is_fake
    real_rows = np.flatnonzero(real)
    n_real = np.bincount(codes[real_rows], minlength=k_ids)
    n_fake_all = np.bincount(codes[valid & is_fake], minlength=k_ids)

    timings["prepare"] = time.perf_counter() - t_start
    t0 = time.perf_counter()
    if cfg.threshold is None and len(np.unique(codes[real_rows])) < 2:
        raise FlagError(
            "fewer than two identities with usable real photos: there are no cross-identity pairs to calibrate the "
            "threshold on (pass --threshold to set one)"
        )
    edge, imp = calibrate_threshold(
        emb, codes, real_rows, target_fmr=cfg.target_fmr, override=cfg.threshold, seed=cfg.seed
    )
    if edge.note:
        messages.append(edge.note)
    if edge.method == "target_fmr" and edge.value > 0.999:
        messages.append(
            f"photos of different identities are (nearly) identical to each other (edge threshold {edge.value:.4f}): "
            "all-identical or placeholder images, or an embedder that does not separate faces; the flags are not "
            "meaningful"
        )
    t = edge.value
    timings["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    g = build_graphs(emb, codes, is_fake, valid, t, device=dev, chunk_rows=cfg.chunk_rows, progress=progress)
    timings["graph"] = time.perf_counter() - t0

    ident = g.identities.copy()
    ident.insert(0, "identity", names)
    singles = np.flatnonzero(n_real == 1)
    if len(singles):
        messages.append(
            f"{len(singles)} identit{'y has' if len(singles) == 1 else 'ies have'} a single real photo, nothing to "
            f"compare it with (not flagged): {_few(names[singles])}"
        )
    only_fakes = np.flatnonzero((n_real == 0) & (n_fake_all > 0))
    if len(only_fakes):
        messages.append(
            f"{len(only_fakes)} identit{'y has' if len(only_fakes) == 1 else 'ies have'} only deepfakes, no real photo "
            f"to check them against (not flagged): {_few(names[only_fakes])}"
        )
    no_main = np.flatnonzero((n_real >= 2) & (ident["n_main"].to_numpy() == 0))
    if len(no_main):
        messages.append(
            f"{len(no_main)} identit{'y has' if len(no_main) == 1 else 'ies have'} no two photos alike (every photo "
            f"flagged outlier): {_few(names[no_main])}"
        )

    comp = g.component
    t0 = time.perf_counter()
    ev = photo_evidence(emb, codes, real, k_ids, use_gpu=dev.type == "cuda", nprobe=cfg.nprobe,
                        exact_max=cfg.exact_max, factory=cfg.faiss_index, seed=cfg.seed)
    judged_rows = np.flatnonzero(np.isfinite(ev.own))
    model, p = fit_model(ev, emb, codes, judged_rows, seed=cfg.seed)
    prob = np.full(n, np.nan, np.float32)
    prob[judged_rows] = p
    # all-identical photos (see the message above): no fit means anything, so no photo is called wrong
    wrong = (prob >= cfg.flag_probability) & (edge.method != "target_fmr" or edge.value <= 0.999)
    joined, group_p, to_group, to_folder = _joins_group(emb, codes, ev.other_code, prob, wrong, judged_rows, k_ids, t,
                                                        dev)
    prob[joined] = np.maximum(prob[joined], group_p)  # as likely wrong as the group it sits with
    wrong[joined] = True
    joined_best = np.full((n, 2), np.nan, np.float32)  # per joined photo: best cosine to its group, to its folder
    joined_best[joined] = np.stack([to_group, to_folder], 1)
    outlier = wrong & (comp == -1)
    minority = wrong & (comp != -1)
    flagged_rows = np.flatnonzero(wrong)
    # the suggestion: the nearest other identity, unless the photo fits it like a simulated outsider fits the
    # identity nearest to it rather than like a moved photo fits its own (then: "not in this dataset")
    z_there = ev.z_at(ev.other, ev.other_code)
    p_outside = model.outsider(outsider_features(z_there, ev.other, ev.second, ev.unit))
    elsewhere = np.isfinite(z_there) & (p_outside < cfg.outsider_probability)
    group, group_size = _groups(codes, ev.other_code, flagged_rows, comp, k_ids)
    shown = comp.copy()  # the component a reviewer sees: a group of 2+ flagged photos is one of its own
    shown[flagged_rows] = np.where(group_size[flagged_rows] > 1, group[flagged_rows], comp[flagged_rows])
    timings["evidence"] = time.perf_counter() - t0
    n_main = ident["n_main"].to_numpy()
    second = ident["second_size"].to_numpy()
    split_ids = np.flatnonzero((second >= cfg.split_min_size) & (second >= cfg.split_ratio * np.maximum(n_main, 1)))
    fake_rows = np.flatnonzero(valid & is_fake)
    judged = fake_rows[np.isfinite(g.best_to_main[fake_rows])]
    mismatch_rows = judged[g.best_to_main[judged] < t]

    # ---- across identities: centroids of the main components, faiss ----------------------------------------------
    t0 = time.perf_counter()
    main_rows = np.flatnonzero(real & (comp == 0))
    main_seg = segments(codes, main_rows, k_ids)
    # A centroid blurs a varied identity: a flagged photo whose best match among the main photos of its nearest
    # identity is as close as genuine photos get to their own folder (the match_quantile of the core photos' best
    # match there) shows that person, even when the outsider model doubts it from the centroids alone.
    near_rows = flagged_rows[ev.other_code[flagged_rows] >= 0]
    nearest_best = np.full(n, np.nan, np.float32)
    nearest_best[near_rows] = best_match(emb, near_rows, ev.other_code[near_rows], main_seg, t, dev)
    core_best = g.best_to_main[ev.core & (comp == 0)]
    core_best = core_best[np.isfinite(core_best)]
    if len(core_best):
        elsewhere |= nearest_best >= np.quantile(core_best, cfg.match_quantile)
    cent_codes = np.flatnonzero(main_seg[2] > 0)
    sums = identity_sums(emb, codes, main_rows, k_ids)  # [K, D] float32, normalised in place below (no 2nd copy)
    sum_norm = np.concatenate([np.linalg.norm(sums[s : s + step], axis=1) for s in range(0, k_ids, step)])
    mean_norm = sum_norm / np.maximum(n_main, 1)
    sums /= np.maximum(sum_norm, 1e-12)[:, None]
    # a file-backed emb means a big run: the centroids wait in a temporary file while the index holds its own copy
    cent = take_rows(sums, cent_codes, out=scratch_array((len(cent_codes), emb.shape[1]), np.float32, on_disk))
    del sums
    suggested = np.full(n, None, dtype=object)
    flag_rows_list: list[dict] = []
    genuine_median = hist_quantile(g.same_identity_hist, HIST_EDGES, 0.5)
    dup_t = cfg.duplicate_threshold or duplicate_threshold(genuine_median if np.isfinite(genuine_median) else t, t)
    # near copies inside one identity: every photo whose best match in its main component reaches the duplicate
    # threshold is compared with the other such photos of its identity; of each copy pair the later row is flagged
    near = np.flatnonzero(real & (comp == 0) & (g.best_to_main >= dup_t))
    for row, twin, sim in zip(*_near_copies(emb, codes, near, k_ids, dup_t, dev)):
        flag_rows_list.append(
            dict(row=int(row), identity=names[codes[row]], flag="duplicate", component=0,
                 suggested_identity=names[codes[row]], score=float(sim), details={"duplicate_of_row": int(twin)})
        )
    imp_mean = float(np.mean(imp)) if len(imp) else 0.0
    within = np.full(k_ids, np.nan)
    deg_main = np.bincount(codes[main_rows], weights=g.degree[main_rows], minlength=k_ids)
    ok = n_main >= 2
    within[ok] = deg_main[ok] / (n_main[ok] * (n_main[ok] - 1))
    ident["main_density"] = within
    main_sum = np.bincount(codes[main_rows], weights=np.nan_to_num(g.sim_to_main[main_rows]), minlength=k_ids)
    own_mean = np.where(n_main >= 2, main_sum / np.maximum(n_main, 1), np.nan)  # mean cosine inside the main component
    ident["main_mean_cosine"] = own_mean
    merge_t = cfg.merge_min_density
    if merge_t is None:
        med = np.nanmedian(within) if np.isfinite(within).any() else 1.0
        merge_t = 0.5 * float(med)
    merged: set[tuple[int, int]] = set()  # identity code pairs flagged merge (one person under two labels)
    copies: set[int] = set()  # rows flagged duplicate of a photo in another identity
    if len(cent_codes) >= 2:
        # suggestions (and duplicate candidates) for flagged photos and single-photo identities: the evidence's
        # nearest other identities where it has them (nearly every flagged photo), a search for the rest
        query_rows = np.union1d(flagged_rows, np.flatnonzero(real & np.isin(codes, singles)))
        kq = min(cfg.suggest_k + 1, len(cent_codes))
        if len(query_rows):
            s_codes = np.full((len(query_rows), kq), -1, np.int64)
            near = np.stack([ev.other_code, ev.second_code, ev.third_code], 1)[query_rows, : cfg.suggest_k]
            s_codes[:, : near.shape[1]] = near
            ask = np.flatnonzero(s_codes[:, 0] < 0)
            if len(ask):  # over the main components' centroids, with the evidence index's lists: no second k-means
                # (every identity with a main component has a core centroid, so that index exists)
                index = build_index(cent, nprobe=cfg.nprobe, use_gpu=dev.type == "cuda", trained=ev.trained_index)
            for s in range(0, len(ask), step):
                part = ask[s : s + step]
                qx = gather(emb, query_rows[part], torch.device("cpu"), torch.float32).numpy()
                ids = knn(index, qx, kq, nprobe=cfg.nprobe)[1]
                s_codes[part] = np.where(ids >= 0, cent_codes[np.maximum(ids, 0)], -1)
            suggested[query_rows] = np.where(s_codes[:, 0] >= 0, names[np.maximum(s_codes[:, 0], 0)], None)
            # duplicates: each query photo vs the main photos of its nearest identities other than its own
            pair_q = np.repeat(np.arange(len(query_rows)), kq)
            pair_c = s_codes.ravel()
            keep = (pair_c >= 0) & (pair_c != codes[query_rows][pair_q])
            pair_q, pair_c = pair_q[keep], pair_c[keep]
            single_seg = (query_rows, np.arange(len(query_rows)), np.ones(len(query_rows), np.int64))
            _, _, best, _, arg_r = cross_segments(emb, single_seg, pair_q, main_seg, pair_c, t, dev)
            hit = best >= dup_t
            dup = pd.DataFrame({"q": pair_q[hit], "c": pair_c[hit], "sim": best[hit], "twin": arg_r[hit]})
            dup = dup.sort_values("sim", ascending=False).drop_duplicates("q")
            # two query photos that are copies of each other: only the one in the smaller identity (the later row
            # if the same size) is the copy; the other is its original
            row_q, twin = query_rows[dup.q.to_numpy()], dup.twin.to_numpy()
            found = set(zip(row_q.tolist(), twin.tolist()))
            mutual = np.array([(int(t), int(r)) in found for r, t in zip(row_q, twin)], bool)
            original = mutual & ((n_real[codes[row_q]] > n_real[codes[twin]])
                                 | ((n_real[codes[row_q]] == n_real[codes[twin]]) & (row_q < twin)))
            dup = dup[~original]
            copies.update(row_q[~original].tolist())
            for r in dup.itertuples(index=False):
                row = int(query_rows[r.q])
                flag_rows_list.append(
                    dict(row=row, identity=names[codes[row]], flag="duplicate", component=int(comp[row]),
                         suggested_identity=names[r.c], score=float(r.sim), details={"duplicate_of_row": int(r.twin)})
                )

        # merges: identities whose nearest centroids are close, confirmed on the photos themselves
        timings["search_suggest"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # candidates: each identity's merge_k nearest identities by core centroid, from the evidence's search (no
        # second search, and at the full nprobe: a search of its own at a quarter of it missed a split identity at 10M)
        km = min(cfg.merge_k + 1, ev.neighbours.shape[1])
        a, b = np.repeat(ev.cent_codes, km), ev.neighbours[:, :km].ravel()
        row_of = np.full(k_ids, -1, np.int64)  # identity code -> its main centroid's row in `cent`
        row_of[cent_codes] = np.arange(len(cent_codes))
        keep = (b >= 0) & (b != a) & (row_of[a] >= 0) & (row_of[np.maximum(b, 0)] >= 0)
        ca, cb = a[keep], b[keep]
        # One person under two labels: photos across the two labels are as alike as photos within each (ratio ~1).
        # Lookalikes (dlib's weak spot: it links many East Asian faces) can pass the edge threshold densely too, but
        # their cosines sit between the impostor mean and the identities' own level, so the ratio says it:
        # (cross mean - impostor mean) / (own mean - impostor mean). The mean cosine over all cross pairs is exactly
        # the dot product of the two identities' mean embeddings, so this test needs no photo at all; only the
        # pairs that pass it are compared photo by photo (edge density, duplicates).
        cross_mean = rowwise_dot(cent, row_of[ca], cent, row_of[cb]) * mean_norm[ca] * mean_norm[cb]
        both = np.stack([own_mean[ca], own_mean[cb]])
        seen = np.isfinite(both).sum(0)  # 0: single photos on both sides, nothing to compare with
        own = np.where(seen > 0, np.nansum(both, 0) / np.maximum(seen, 1), cross_mean)
        ratio = (cross_mean - imp_mean) / np.maximum(own - imp_mean, 1e-6)
        sel = ratio >= cfg.merge_ratio
        pairs, first = np.unique(np.sort(np.stack([ca[sel], cb[sel]], 1), axis=1), axis=0, return_index=True)
        ratio = ratio[sel][first]
        ca, cb = pairs[:, 0], pairs[:, 1]
        density, _, best, arg_l, arg_r = cross_segments(emb, main_seg, ca, main_seg, cb, t, dev)
        for i in np.flatnonzero(density >= merge_t):
            merged.update({(int(ca[i]), int(cb[i])), (int(cb[i]), int(ca[i]))})
            small, big = (ca[i], cb[i]) if n_main[ca[i]] <= n_main[cb[i]] else (cb[i], ca[i])
            flag_rows_list.append(
                dict(row=-1, identity=names[small], flag="merge", component=None, suggested_identity=names[big],
                     score=float(density[i]),
                     details={"ratio": float(ratio[i]), "best_cosine": float(best[i]),
                              "n_main": [int(n_main[small]), int(n_main[big])]})
            )
            row = int(arg_l[i] if codes[arg_l[i]] == small else arg_r[i])
            if best[i] >= dup_t and row not in copies:  # a single photo's copy may be found both ways: one flag
                twin = int(arg_r[i] if row == arg_l[i] else arg_l[i])
                flag_rows_list.append(
                    dict(row=row, identity=names[small], flag="duplicate", component=int(comp[row]),
                         suggested_identity=names[big], score=float(best[i]), details={"duplicate_of_row": twin})
                )
        timings["search_merge"] = time.perf_counter() - t0
    t0 = time.perf_counter()

    # ---- assemble -----------------------------------------------------------------------------------------------
    mislabel_rows = _mislabel_flags(
        ev, g, codes, names, outlier, minority, merged, cfg.merge_fit_z, elsewhere, suggested, shown, prob, z_there,
        nearest_best, n_main, group_size, joined_best, k_ids,
    )
    n_before = len(flag_rows_list)  # duplicates and merges come before the mislabel flags, splits and fakes after
    for c in split_ids:
        flag_rows_list.append(
            dict(row=-1, identity=names[c], flag="split", component=1, suggested_identity=None,
                 score=float(second[c] / max(n_main[c], 1)), details={"sizes": [int(n_main[c]), int(second[c])]})
        )
    for row in mismatch_rows:
        flag_rows_list.append(
            dict(row=int(row), identity=names[codes[row]], flag="fake_mismatch", component=None, suggested_identity=None,
                 score=float(g.best_to_main[row]), details={})
        )
    flags = pd.DataFrame(
        {
            c: [r[c] for r in flag_rows_list[:n_before]] + mislabel_rows[c] + [r[c] for r in flag_rows_list[n_before:]]
            for c in FLAG_COLUMNS
        },
        columns=FLAG_COLUMNS,
    )
    flags["row"] = flags["row"].astype(np.int64)
    flags["component"] = flags["component"].astype("Int64")
    row_flags = _row_flags(n, flags.row.to_numpy(), flags.flag.to_numpy(dtype=object))
    nodes = pd.DataFrame(
        {
            "row": np.arange(n),
            "identity": np.where(codes >= 0, names[np.maximum(codes, 0)], None) if k_ids else np.full(n, None),
            "is_fake": is_fake,
            "valid": valid,
            "component": shown,
            "degree": g.degree,
            "sim_to_main": g.sim_to_main,
            "best_to_main": g.best_to_main,
            "p_wrong": prob,
            "suggested_identity": suggested,
            "flags": row_flags,
        }
    )

    noisy = np.bincount(codes[flagged_rows], minlength=k_ids)
    judged_ids = n_real >= 2
    ident["n_flagged"] = noisy
    ident["noise_rate"] = np.where(judged_ids, noisy / np.maximum(n_real, 1), np.nan)
    total_judged = int(n_real[judged_ids].sum())
    noise = {
        "overall": float(noisy[judged_ids].sum() / total_judged) if total_judged else None,
        "method": "share of real photos flagged outlier or minority, over identities with 2+ real photos",
        "per_identity": dict(
            zip(map(str, names[judged_ids]), np.round(ident["noise_rate"].to_numpy()[judged_ids], 4).tolist())
        ),
    }
    cross_hist = np.histogram(np.clip(imp, -1, 1), bins=HIST_EDGES)[0]
    histogram = {
        "bin_edges": [round(float(x), 4) for x in HIST_EDGES],
        "same_identity": g.same_identity_hist.tolist(),
        "cross_identity": cross_hist.tolist(),
        "cross_identity_note": "a random sample of core-photo pairs from different identities (see calibrate.py)",
    }
    thresholds = {
        "edge": edge.to_dict(),
        "duplicate": {
            "value": dup_t,
            "method": "user" if cfg.duplicate_threshold else "0.9 of the way from the genuine median cosine to 1",
            "genuine_median": genuine_median,
        },
        "merge": {
            "value": merge_t,
            "method": "share of cross pairs joined by an edge; user" if cfg.merge_min_density is not None
            else "share of cross pairs joined by an edge, at least half the median edge density inside identities",
            "ratio": cfg.merge_ratio,
            "ratio_method": "(mean cross cosine - impostor mean) / (mean cosine inside the identities - impostor mean)"
            " must reach this",
            "impostor_mean": imp_mean,
        },
        "split": {"ratio": cfg.split_ratio, "min_size": cfg.split_min_size},
        "mislabel": model.to_dict() | {"value": cfg.flag_probability, "flag_probability": cfg.flag_probability,
                                        "method": "P(wrong identity) from curation.flagging.mislabel",
},
        "index": {"kind": ev.index_kind, "rows": int(len(ev.cent_codes)), "nprobe": cfg.nprobe},
        "config": asdict(cfg),
    }
    timings["assemble"] = time.perf_counter() - t0
    return FlagResult(flags, nodes, ident, thresholds, histogram, noise, messages, timings)
