"""The review queue: which identities to look at first, a page of it at a time, and where each reviewer left off.

Why ranked by worth: a reviewer's time is the scarce resource. A split or a merge relabels a whole identity, a wrong
photo usually belongs to someone else; the queue puts the flags whose answer changes the most training pairs first,
and ranks within a kind by how far the score lies past its threshold. The clean's report gives the thresholds.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from labels.store import LabelStore
from labels.vocab import FLAG_KINDS


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
    "unreadable": 0.25,
}
# Which report threshold a flag's score is compared with (see curation.flagging for what each score is); kinds not
# listed compare their cosine with the edge threshold. Scores of RELATIVE kinds are not cosines: their distance to the
# threshold is measured in units of half the threshold instead of the impostor spread.
KIND_THRESHOLD: dict[str, str] = {"merge": "merge", "duplicate": "duplicate", "split": "split"}
RELATIVE: tuple[str, ...] = ("merge", "split")
assert set(SEVERITY) == set(FLAG_KINDS), "every flag kind needs a severity"


def _queue_sql(summary: ReportSummary, kinds: Sequence[str], identities: Sequence[str] = ()) -> tuple[str, list]:
    """The queue as one SQL aggregate over the open flags (found through the flags_status_kind index).

    worth of a flag = severity x uncertainty, uncertainty = 1 / (1 + ((score - t) / scale)^2) floored at 0.05: 1 when
    the score sits on its threshold t, 0.5 one scale away (the impostor spread for cosines, t/2 for RELATIVE kinds),
    so sure flags still come, but last. A flag without a score or threshold counts 0.5: it needs a look, after the
    borderline ones.
    """
    edge = summary.thresholds.get("edge")
    t_of = {k: summary.thresholds.get(name, edge) for k, name in KIND_THRESHOLD.items()}
    s2_of = {k: (t_of[k] / 2) ** 2 if t_of[k] else None for k in RELATIVE}
    sev = "CASE kind " + " ".join("WHEN ? THEN ?" for _ in SEVERITY) + " ELSE 1.0 END"
    thr = "CASE kind " + " ".join("WHEN ? THEN ?" for _ in t_of) + " ELSE ? END"
    scale = "CASE kind " + " ".join("WHEN ? THEN ?" for _ in s2_of) + " ELSE ? END"
    params: list = [x for kv in SEVERITY.items() for x in kv]
    params += [x for kv in t_of.items() for x in kv] + [edge]
    params += [x for kv in s2_of.items() for x in kv] + [summary.impostor_spread**2]
    where = _open_flags_where(kinds, identities)
    sql = (
        f"SELECT identity, SUM(sev * CASE WHEN score IS NULL OR t IS NULL OR s2 IS NULL THEN 0.5"
        f" ELSE MAX(0.05, 1.0 / (1.0 + (score - t) * (score - t) / s2)) END) AS worth, COUNT(*) AS n_open"
        f" FROM (SELECT identity, kind, score, {sev} AS sev, {thr} AS t, {scale} AS s2 FROM flags WHERE {where[0]})"
        f" GROUP BY identity"
    )
    return sql, params + where[1]


def _open_flags_where(kinds: Sequence[str], identities: Sequence[str] = ()) -> tuple[str, list]:
    """SQL condition (and parameters) for the open flags of some kinds, optionally of some identities only."""
    sql, params = "status='open'", []
    if set(kinds) != set(FLAG_KINDS):
        sql += f" AND kind IN ({','.join('?' * len(kinds))})"
        params += list(kinds)
    if identities:
        sql += f" AND identity IN ({','.join('?' * len(identities))})"
        params += list(identities)
    return sql, params


@dataclass(frozen=True)
class QueueSnapshot:
    """The whole review queue, ordered, as of one store version; `queue_snapshot(previous=...)` brings it up to date.

    Why a snapshot: ordering every identity with open flags is one pass over all open flags (~0.3 s at 100,000 flags),
    too slow to repeat on every click. A decision only changes the identities whose flags it answered or reopened, so a
    snapshot is refreshed by recomputing just those rows; new flags (a new clean) or another report mean a full pass.
    """

    frame: pd.DataFrame  # identity, worth, n_open; ordered by worth desc, then identity
    kinds: tuple[str, ...]
    version: tuple[int, int, int]  # store_version() when taken
    basis: tuple  # the thresholds and spread the worth was computed with

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
    previous: QueueSnapshot | None = None,
) -> QueueSnapshot:
    """Identities with open flags, most worth reviewing first (sum over their open flags of severity x uncertainty).

    `kinds` limits the queue to those flag kinds. Pass the last snapshot as `previous` to update it incrementally:
    unchanged when the store did not change, only the identities touched by new decisions (and undos) recomputed when
    only decisions were added. Ties are broken by identity name so the order is stable between reruns.
    Example: `snap = queue_snapshot(store, summarize_report(report), kinds=["minority"]); snap.frame.head(25)`.
    """
    kinds = tuple(kinds or FLAG_KINDS)
    version = store_version(store)
    sql, params = _queue_sql(summary, kinds)
    basis = (tuple(sorted(summary.thresholds.items())), summary.impostor_spread)
    same_basis = previous is not None and previous.kinds == kinds and previous.basis == basis
    if same_basis and previous.version == version:
        return previous
    if same_basis and previous.version[1:] == version[1:]:  # only decisions since: recompute what they touched
        touched = store.query(  # flags answered by the new decisions, and reopened by their undos
            "SELECT f.identity FROM decision_flags df JOIN flags f ON f.id=df.flag_id WHERE df.decision_id > ?"
            " UNION SELECT f.identity FROM decision_flags df JOIN flags f ON f.id=df.flag_id"
            " WHERE df.decision_id IN (SELECT undoes FROM decisions WHERE id > ? AND undoes IS NOT NULL)",
            [previous.version[0], previous.version[0]],
        ).identity.tolist()
        fresh = pd.concat(
            [store.query(*_queue_sql(summary, kinds, touched[k : k + 500])) for k in range(0, len(touched), 500)]
            or [previous.frame.iloc[:0]]
        )
        kept = previous.frame[~previous.frame.identity.isin(touched)]
        frame = _insert_ordered(kept, fresh) if len(fresh) else kept.reset_index(drop=True)
    else:
        frame = store.query(f"{sql} ORDER BY worth DESC, identity", params)
    return QueueSnapshot(frame, kinds, version, basis)


@dataclass(frozen=True)
class QueuePage:
    """One page of the review queue and the number of identities in the whole queue."""

    rows: pd.DataFrame  # identity, worth, n_open, n_photos, open_flags (e.g. "2 minority, 1 outlier")
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
    counts = store.query(
        f"SELECT identity, COUNT(*) AS n_photos FROM images WHERE present=1 AND identity IN ({','.join('?' * len(ids))})"
        " GROUP BY identity",
        ids,
    )
    where, params = _open_flags_where(snapshot.kinds, ids)
    per_kind = store.query(f"SELECT identity, kind, COUNT(*) AS n FROM flags WHERE {where} GROUP BY identity, kind", params)
    order = {k: i for i, k in enumerate(FLAG_KINDS)}
    text: dict[str, list[str]] = {}
    for ident, kind, n in sorted(per_kind.itertuples(index=False), key=lambda r: order.get(r[1], 99)):
        text.setdefault(ident, []).append(f"{n} {kind}")
    rows = rows.merge(counts, on="identity", how="left")
    rows["open_flags"] = [", ".join(text.get(i, [])) for i in rows.identity]
    return QueuePage(rows[["identity", "worth", "n_open", "n_photos", "open_flags"]], snapshot.total, offset)


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


def store_version(store: LabelStore) -> tuple[int, int, int]:
    """A cheap cache key for anything derived from the store: (last decision, last flag, number of flags)."""
    row = store.query(
        "SELECT (SELECT IFNULL(MAX(id), 0) FROM decisions) AS d, (SELECT IFNULL(MAX(id), 0) FROM flags) AS f,"
        " (SELECT COUNT(*) FROM flags) AS n"
    ).iloc[0]
    return int(row.d), int(row.f), int(row.n)
