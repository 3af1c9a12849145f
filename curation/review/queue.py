"""The review queue: which identities to look at first, a page of it at a time, and where each reviewer left off.

Two orders, because a reviewer's time is the scarce resource and is spent for one of two ends:
- "worth": fix the most damaging errors first. A split or a merge relabels a whole identity, a wrong photo usually
  belongs to someone else; the queue puts the flags whose answer changes the most training pairs first, and ranks
  within a kind by how far the score lies past its threshold (the clean's report gives the thresholds).
- "information": learn how right the remaining flags are with as few answers as possible, then apply the rest with a
  known error rate (`export --unreviewed apply`). The identity first in line holds a flag of the score band whose
  answer would narrow the estimate of the open flags' precision most (labels.estimate.band_priorities), picked at
  random within the band so the answers stay a fair sample; once every band is known well enough, worth order.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from labels.estimate import band_priorities, with_bands
from labels.store import LabelStore
from labels.vocab import FLAG_KINDS

ORDERS = ("worth", "information")


# Thresholds that are cosines (drawn on the similarity histogram); curation.clean's merge threshold is a share of
# cross pairs joined by an edge and its split threshold a ratio of component sizes, so they are not drawn there.
COSINE_THRESHOLDS = ("edge", "duplicate")


@dataclass(frozen=True)
class ReportSummary:
    """What the overview and the queue need from report.json, whatever else the report holds."""

    thresholds: dict[str, float]  # edge, duplicate, merge (density share), split (size ratio), as the clean used them
    how: dict[str, str]  # threshold -> how it was chosen, in words
    noise_rate: float | None
    histogram: pd.DataFrame | None  # columns: left, right, same, cross (counts per bin)
    impostor_spread: float  # standard deviation of cross-identity similarity: the scale of "near the threshold"


def summarize_report(report: dict) -> ReportSummary:
    """Pick thresholds, the estimated noise rate and the similarity histogram out of report.json.

    Thresholds may be plain numbers or objects (`value`, or `ratio` for split, with a description or method).
    """
    thresholds, how = {}, {}
    for name, value in (report.get("thresholds") or {}).items():
        if isinstance(value, dict):
            how[str(name)] = str(value.get("description") or value.get("method") or "")
            value = value.get("value", value.get("ratio"))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            thresholds[str(name)] = float(value)
    noise = report.get("noise_rate")
    if isinstance(noise, dict):
        noise = noise.get("overall")
    noise = float(noise) if isinstance(noise, (int, float)) else None
    histogram, spread = None, 0.1
    hist = report.get("similarity_histogram") or {}
    edges, same, cross = hist.get("bin_edges"), hist.get("same_identity"), hist.get("cross_identity")
    if edges and same is not None and cross is not None and len(edges) == len(same) + 1 == len(cross) + 1:
        edges = np.asarray(edges, dtype=float)
        histogram = pd.DataFrame(
            {"left": edges[:-1], "right": edges[1:], "same": np.asarray(same, float), "cross": np.asarray(cross, float)}
        )
        if histogram.cross.sum() > 0:
            centres = (histogram.left + histogram.right) / 2
            mean = np.average(centres, weights=histogram.cross)
            spread = float(np.sqrt(np.average((centres - mean) ** 2, weights=histogram.cross))) or spread
    return ReportSummary(thresholds, how, noise, histogram, spread)


# How much a reviewer's look is worth when the flag is right: split/merge relabel whole identities, a minority photo
# usually belongs to someone else (a wrong positive pair in training), a duplicate or an unreadable file is mechanical.
SEVERITY: dict[str, float] = {
    "split": 3.0,
    "merge": 3.0,
    "minority": 2.0,
    "outlier": 1.5,
    "fake_mismatch": 1.0,
    "duplicate": 1.0,
    "no_face": 0.5,
    "weak_alignment": 0.5,
    "unreadable": 0.25,
}
# Which report threshold a flag's score is compared with (see curation.flagging for what each score is); kinds not
# listed compare their cosine with the edge threshold. Scores of RELATIVE kinds are not cosines: their distance to the
# threshold is measured in units of half the threshold instead of the impostor spread.
KIND_THRESHOLD: dict[str, str] = {"merge": "merge", "duplicate": "duplicate", "split": "split",
                                  "outlier": "mislabel", "minority": "mislabel"}  # P(wrong identity) vs the flag level
RELATIVE: tuple[str, ...] = ("merge", "split", "outlier", "minority")
assert set(SEVERITY) == set(FLAG_KINDS), "every flag kind needs a severity"


def flag_worth(flags: pd.DataFrame, summary: ReportSummary) -> np.ndarray:
    """Worth of each open flag (rows with kind and score): severity x uncertainty.

    uncertainty = 1 / (1 + ((score - t) / scale)^2) floored at 0.05: 1 when the score sits on its threshold t, 0.5 one
    scale away (the impostor spread for cosines, t/2 for RELATIVE kinds), so sure flags still come, but last. A flag
    without a score or threshold counts 0.5: it needs a look, after the borderline ones.
    """
    edge = summary.thresholds.get("edge")
    t_of = {k: summary.thresholds.get(name, edge) for k, name in KIND_THRESHOLD.items()}
    # a report from before probabilities scored outlier/minority by a cosine: those compare with the edge as cosines
    relative = set(RELATIVE) - ({"outlier", "minority"} if "mislabel" not in summary.thresholds else set())

    def per_kind(k: str) -> tuple[float, float, float]:  # severity, threshold, scale^2 (None -> NaN)
        t = t_of.get(k, edge)
        s2 = ((t / 2) ** 2 if t else None) if k in relative else summary.impostor_spread**2
        return SEVERITY.get(k, 1.0), t, s2

    codes, kinds = pd.factorize(flags.kind)
    sev, t, s2 = np.array([per_kind(k) for k in kinds], dtype=float).reshape(-1, 3)[codes].T
    score = flags.score.to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.maximum(0.05, 1.0 / (1.0 + (score - t) * (score - t) / s2))
    return sev * np.where(np.isnan(u), 0.5, u)


def _ranked(flags: pd.DataFrame, summary: ReportSummary) -> pd.DataFrame:
    """identity, worth (sum over its open flags), n_open; ordered by worth desc, then identity."""
    frame = flags.assign(worth=flag_worth(flags, summary)).groupby("identity", as_index=False, sort=False).agg(
        worth=("worth", "sum"), n_open=("kind", "size")
    )
    return _order(frame)


def draw(flag_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per flag id: the order within a band that keeps a sample fair, the same
    in every session (so a page reload does not reshuffle) and different per seed (for simulations)."""
    x = (np.asarray(flag_ids, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B9)) * np.uint64(2654435761)
    return (x % np.uint64(2**32)).astype(float) / 2**32


def rank_by_information(
    flags: pd.DataFrame, summary: ReportSummary, kinds: Sequence[str] | None = None, seed: int = 0
) -> pd.DataFrame:
    """Identities with open flags (of `kinds`), in the "information" order (see the module docstring).

    flags: every flag, banded (labels.estimate.with_bands), with id, identity, kind, score, status (and image_id).
    Returns identity, worth, n_open, priority (of the identity's most informative open flag, the *sample*; 0 once its
    band is tight), reason (the sample's kind and band), flag_id and image_id (the sample's). The estimate stays fair
    when the reviewer answers the sample (the identity page marks it): the other flags of an identity come with it,
    not at random, and answering them all leans the sample towards identities with many flags.
    """
    cols = ["identity", "worth", "n_open", "priority", "reason", "flag_id", "image_id"]
    prio = band_priorities(flags)
    open_ = flags[flags.status.eq("open")]
    if kinds is not None and set(kinds) != set(FLAG_KINDS):
        open_ = open_[open_.kind.isin(list(kinds))]
    if open_.empty:
        return pd.DataFrame(columns=cols)
    by_band = pd.Series(prio.priority.to_numpy(dtype=float), index=pd.MultiIndex.from_frame(prio[["kind", "band"]]))
    p = by_band.reindex(pd.MultiIndex.from_arrays([open_.kind, open_.band])).fillna(0.0).to_numpy()
    d = np.where(p > 0, draw(open_.id.to_numpy(), seed), 0.0)
    codes, names = pd.factorize(open_.identity)
    worth = np.bincount(codes, weights=flag_worth(open_, summary), minlength=len(names))
    n_open = np.bincount(codes, minlength=len(names))
    order = np.lexsort((d, -p))  # most informative first, at random within a band
    _, first = np.unique(codes[order], return_index=True)
    best = order[first]  # per identity code (np.unique sorts the codes): its sample flag's row
    kind, band = open_.kind.to_numpy()[best], open_.band.to_numpy()[best]
    frame = pd.DataFrame({
        "identity": names, "worth": worth, "n_open": n_open, "priority": p[best], "draw": d[best],
        "reason": [f"{k} band {b}" if b >= 0 else f"{k} (no score)" for k, b in zip(kind, band)],
        "flag_id": open_.id.to_numpy()[best],
        "image_id": open_.image_id.to_numpy()[best] if "image_id" in open_ else None,
    })
    frame = frame.sort_values(["priority", "draw", "worth", "identity"], ascending=[False, True, False, True],
                              kind="stable")
    return frame[cols].reset_index(drop=True)


@dataclass(frozen=True)
class QueueSnapshot:
    """The whole review queue, ordered, as of one store version; `queue_snapshot(previous=...)` brings it up to date.

    Why a snapshot: ordering every identity with open flags is one pass over all open flags (~0.3 s at 100,000 flags),
    too slow to repeat on every click. A decision only changes the identities whose flags it answered or reopened, so a
    snapshot is refreshed by recomputing just those rows; new flags (a new clean) or another report mean a full pass.
    """

    frame: pd.DataFrame  # identity, worth, n_open (+ priority, reason in information order); in queue order
    kinds: tuple[str, ...]
    version: tuple[int, int, int]  # LabelStore.version() when taken
    basis: tuple  # the order, and the thresholds and spread the worth was computed with
    order: str = "worth"

    @property
    def total(self) -> int:
        return len(self.frame)


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["worth", "identity"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _insert_ordered(kept: pd.DataFrame, fresh: pd.DataFrame) -> pd.DataFrame:
    """Insert a few rows into an already ordered queue without re-sorting it (a string sort of 100,000 rows is slow)."""
    kept, fresh = kept.reset_index(drop=True), _order(fresh)
    neg_worth, names = -kept.worth.to_numpy(dtype=float), kept.identity.to_numpy(dtype=object)
    slots = []
    for worth, name in zip(fresh.worth, fresh.identity):
        lo, hi = np.searchsorted(neg_worth, -worth, "left"), np.searchsorted(neg_worth, -worth, "right")
        slots.append(lo + np.searchsorted(names[lo:hi], name) - 0.5)  # ties on worth: by name
    order = np.argsort(np.concatenate([np.arange(len(kept), dtype=float), slots]), kind="stable")
    return pd.concat([kept, fresh], ignore_index=True).iloc[order].reset_index(drop=True)


def queue_snapshot(
    store: LabelStore,
    summary: ReportSummary,
    *,
    kinds: Sequence[str] | None = None,
    order: str = "worth",
    previous: QueueSnapshot | None = None,
) -> QueueSnapshot:
    """Identities with open flags, in `order`: "worth" (most worth reviewing first: sum over their open flags of
    severity x uncertainty) or "information" (`rank_by_information`).

    `kinds` limits the queue to those flag kinds. Pass the last snapshot as `previous` to update it: unchanged when the
    store did not change; in worth order only the identities touched by new decisions (and undos) are recomputed when
    only decisions were added (in information order every answer moves every band's priority: a full pass). Ties are
    broken by identity name so the order is stable between reruns.
    Example: `snap = queue_snapshot(store, summarize_report(report), kinds=["minority"]); snap.frame.head(25)`.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    kinds = tuple(kinds or FLAG_KINDS)
    version = store.version()
    basis = (order, tuple(sorted(summary.thresholds.items())), summary.impostor_spread)
    same_basis = previous is not None and previous.kinds == kinds and previous.basis == basis
    if same_basis and previous.version == version:
        return previous
    if order == "information":
        frame = rank_by_information(with_bands(store.flag_answers()), summary, kinds)
    elif same_basis and previous.version[1:] == version[1:]:  # only decisions since: recompute what they touched
        touched = store.identities_answered_since(previous.version[0])
        fresh = _ranked(store.open_flag_scores(kinds=kinds, identities=touched), summary)
        kept = previous.frame[~previous.frame.identity.isin(touched)]
        frame = _insert_ordered(kept, fresh) if len(fresh) else kept.reset_index(drop=True)
    else:
        frame = _ranked(store.open_flag_scores(kinds=kinds), summary)
    return QueueSnapshot(frame, kinds, version, basis, order)


@dataclass(frozen=True)
class QueuePage:
    """One page of the review queue and the number of identities in the whole queue."""

    rows: pd.DataFrame  # identity, worth, n_open, n_photos, open_flags (e.g. "2 minority, 1 outlier") [, reason]
    total: int
    offset: int


def queue_page(store: LabelStore, snapshot: QueueSnapshot, *, offset: int = 0, limit: int = 25) -> QueuePage:
    """One page of the queue with what a reviewer scans before opening an identity: photo counts and flag kinds."""
    offset = max(0, int(offset))
    rows = snapshot.frame.iloc[offset : offset + limit]
    if rows.empty:
        return QueuePage(pd.DataFrame(columns=["identity", "worth", "n_open", "n_photos", "open_flags"]),
                         snapshot.total, offset)
    ids = rows.identity.tolist()
    counts = store.photo_counts(ids)
    per_kind = store.open_flag_counts(ids, kinds=snapshot.kinds)
    order = {k: i for i, k in enumerate(FLAG_KINDS)}
    text: dict[str, list[str]] = {}
    for ident, kind, n in sorted(per_kind.itertuples(index=False), key=lambda r: order.get(r[1], 99)):
        text.setdefault(ident, []).append(f"{n} {kind}")
    rows = rows.assign(n_photos=[counts.get(i, np.nan) for i in rows.identity])
    rows["open_flags"] = [", ".join(text.get(i, [])) for i in rows.identity]
    extra = ["reason"] if "reason" in rows else []  # information order: why the identity is here (its sample)
    return QueuePage(rows[["identity", "worth", "n_open", "n_photos", "open_flags", *extra]], snapshot.total, offset)


def next_identity(snapshot: QueueSnapshot, current: str | None, rank: int) -> tuple[str | None, int]:
    """The identity to review after `current`, and its rank, given the rank `current` had when it was opened.

    While `current` still sits at (or next to) its rank the next one follows it; once its flags are answered it leaves
    the queue (or sinks) and the identity that moved up into its old rank is next. (None, rank) at the end of the queue.
    """
    rank = max(0, int(rank))
    start = max(0, rank - 1)
    window = snapshot.frame.identity.iloc[start : start + 3].tolist()
    if current in window:
        rank = start + window.index(current) + 1
    return (window[rank - start], rank) if rank - start < len(window) else (None, rank)


def previous_identity(snapshot: QueueSnapshot, current: str | None, rank: int) -> tuple[str | None, int]:
    """The identity before `current` in the queue, and its rank (the counterpart of `next_identity`).

    While `current` still sits at (or next to) its rank, the one before it; once it left the queue, the one before
    the rank it had. (None, 0) at the head of the queue.
    """
    rank = max(0, int(rank))
    start = max(0, rank - 1)
    window = snapshot.frame.identity.iloc[start : start + 3].tolist()
    at = start + window.index(current) if current in window else rank
    if at == 0 or not len(snapshot.frame):
        return None, 0
    at = min(at, len(snapshot.frame))
    return snapshot.frame.identity.iloc[at - 1], at - 1


def save_position(store: LabelStore, reviewer: str, position: dict) -> None:
    """Remember where a reviewer is (view, identity, queue rank and filter) so a new session resumes there."""
    store.set_meta(**{f"review_position:{reviewer}": json.dumps(position, sort_keys=True)})


def load_position(store: LabelStore, reviewer: str) -> dict:
    """The position saved by `save_position` for this reviewer, or {}."""
    try:
        value = json.loads(store.get_meta(f"review_position:{reviewer}", "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
