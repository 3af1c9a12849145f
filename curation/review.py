"""Everything the review app does, as plain functions: the Streamlit pages only lay out what these return.

Why here and not in the UI: a reviewer's decision must mean the same thing whether it is made in the app, in a test or
in a script, and every function below must stay fast on a work folder of 1,000,000 photos (the app calls them on every
rerun). So:
- the queue and the identity view query the label store through its indexes and read only one identity's rows of the
  last clean (`WORK/clean/nodes.parquet`, `WORK/clean/embeddings.npy` memory-mapped), never the whole table per page;
- every action is one `LabelStore.decide` / `undo`, written at once, in `strict` mode: a decision that a second reviewer
  (or a double click) already made is refused with the reason instead of being recorded twice;
- images are served only from inside the dataset root or the work folder, by image id, never by a path from a request.

Example:
    >>> work = WorkFolder.open("WORK")
    >>> store = LabelStore.open(work.root)
    >>> clean = load_clean(work)
    >>> queue = queue_snapshot(store, summarize_report(read_report(work)))
    >>> view = identity_view(store, clean, queue.frame.identity.iloc[0])
    >>> apply_action(store, "remove", reviewer="ana", image_ids=view.flagged_ids()[:1]).message
    '#1: removed 1 photo(s)'
"""
from __future__ import annotations

import io
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from curation import evaluate, metrics, plots
from embeddings import cache
from labels.imagefile import ImageError, read_rgb
from labels.store import STORE_NAME, LabelStore, StoreError, check_identity_name
from labels.vocab import FLAG_KINDS


class ReviewError(Exception):
    """Something the app cannot show or do; the message is meant for the reviewer, not a traceback."""


# ---- the work folder ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkFolder:
    """The paths of a work folder (see ARCHITECTURE.md), checked to hold a label store."""

    root: Path

    @classmethod
    def open(cls, path: str | Path) -> WorkFolder:
        """Resolve `path` and check it holds `labels.sqlite`; raises ReviewError saying how to create one."""
        root = Path(path).expanduser().resolve()
        if not (root / STORE_NAME).is_file():
            raise ReviewError(
                f"{root} holds no label store ({STORE_NAME}): run `python -m curation.clean DATA --workdir {root}` first"
            )
        return cls(root)

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def nodes(self) -> Path:
        return self.root / "clean" / "nodes.parquet"

    @property
    def embeddings(self) -> Path:
        return self.root / "clean" / "embeddings.npy"


def read_report(work: WorkFolder) -> dict:
    """The last clean's report.json as a dict ({} before the first clean); ReviewError when it is unreadable."""
    if not work.report.is_file():
        return {}
    try:
        report = json.loads(work.report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{work.report}: not readable JSON ({exc})") from exc
    if not isinstance(report, dict):
        raise ReviewError(f"{work.report}: expected a JSON object")
    return report


@dataclass(frozen=True)
class CleanResult:
    """The last clean's per-image table (indexed by image_id) and its embeddings, memory-mapped (read on demand)."""

    nodes: pd.DataFrame
    embeddings: np.ndarray | None


_NODE_COLUMNS = ("image_id", "identity", "is_fake", "component", "sim_to_main", "emb_row")


def load_clean(work: WorkFolder) -> CleanResult | None:
    """Read nodes.parquet (only the columns the app needs) and memory-map embeddings.npy; None before the first clean.

    Loading 1,000,000 nodes takes a fraction of a second and ~50 MB, so the app does it once per file version
    (cache it keyed by `clean_version(work)`); the embeddings stay on disk and only an identity's rows are read.
    """
    if not work.nodes.is_file():
        return None
    try:
        schema = pq.read_schema(work.nodes)
        missing = [c for c in _NODE_COLUMNS if c not in schema.names]
        if missing:
            raise ReviewError(f"{work.nodes}: missing column(s) {', '.join(missing)}; re-run `python -m curation.clean`")
        optional = [c for c in ("best_to_main",) if c in schema.names]  # what decides fake_mismatch
        nodes = pq.read_table(work.nodes, columns=[*_NODE_COLUMNS, *optional]).to_pandas()
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a corrupt file
        raise ReviewError(f"{work.nodes}: not a readable parquet file ({exc})") from exc
    nodes = nodes.set_index("image_id").sort_index()
    nodes["emb_row"] = nodes["emb_row"].where(nodes["emb_row"] >= 0)  # -1 or null: no embedding (unreadable, no face)
    embeddings = None
    if work.embeddings.is_file():
        try:
            embeddings = np.load(work.embeddings, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ReviewError(f"{work.embeddings}: not a readable .npy file ({exc})") from exc
        rows = nodes["emb_row"].dropna()
        if embeddings.ndim != 2 or (len(rows) and int(rows.max()) >= embeddings.shape[0]):
            raise ReviewError(
                f"{work.embeddings}: shape {embeddings.shape} does not match nodes.parquet (emb_row up to"
                f" {int(rows.max()) if len(rows) else '-'}); re-run `python -m curation.clean`"
            )
    return CleanResult(nodes, embeddings)


def clean_version(work: WorkFolder) -> tuple:
    """A cache key that changes whenever a clean rewrites its outputs (modification times and sizes)."""
    out = []
    for p in (work.nodes, work.embeddings, work.report):
        st = p.stat() if p.exists() else None
        out.append((st.st_mtime_ns, st.st_size) if st else None)
    return tuple(out)


def store_version(store: LabelStore) -> tuple[int, int, int]:
    """A cheap cache key for anything derived from the store: (last decision, last flag, number of flags)."""
    row = store.query(
        "SELECT (SELECT IFNULL(MAX(id), 0) FROM decisions) AS d, (SELECT IFNULL(MAX(id), 0) FROM flags) AS f,"
        " (SELECT COUNT(*) FROM flags) AS n"
    ).iloc[0]
    return int(row.d), int(row.f), int(row.n)


# ---- the report -----------------------------------------------------------------------------------------------------
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


# ---- the queue ------------------------------------------------------------------------------------------------------
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


# ---- the identity view ----------------------------------------------------------------------------------------------
SECTIONS: dict[str, str] = {
    "main": "Main component",
    "component": "Other component",
    "isolated": "Isolated photos (no edge to any other photo)",
    "unembedded": "Not compared (no embedding: unreadable, or no face found)",
    "new": "Not in this identity at the last clean (moved here since, or new)",
    "fake": "Deepfakes",
    "removed": "Removed",
}


@dataclass
class IdentityView:
    """What the identity page draws. `photos` is in display order (section, then component, then similarity)."""

    identity: str
    photos: pd.DataFrame  # image_id, path, sha256, is_fake, removed, problem, section, component, sim_to_main,
    #                       best_to_main, emb_row, flag_list
    identity_flags: pd.DataFrame  # open identity-level flags naming this identity on either side (split, merge)
    suggestions: dict[str, pd.DataFrame]  # suggested identity -> a few of its photos (main component first)
    similarity: np.ndarray | None  # cosine matrix of the heatmap photos, in `heatmap_ids` order
    heatmap_ids: list[int]
    notes: list[str] = field(default_factory=list)

    def flagged_ids(self) -> list[int]:
        """Photos with at least one open flag, in display order."""
        return [int(i) for i, f in zip(self.photos.image_id, self.photos.flag_list) if any(x["status"] == "open" for x in f)]

    def open_flag_ids(self, image_ids: Sequence[int]) -> list[int]:
        """The open flags shown on these photos: what a 'keep' on them rejects."""
        chosen = set(int(i) for i in image_ids)
        return sorted(
            x["id"] for i, f in zip(self.photos.image_id, self.photos.flag_list) if i in chosen for x in f
            if x["status"] == "open"
        )


def _section(row) -> str:
    if row.removed:
        return "removed"
    if row.is_fake:
        return "fake"
    if isinstance(row.problem, str) and row.problem:
        return "unembedded"
    if pd.isna(row.component) or row.clean_identity != row.identity:
        return "new"
    if row.component == 0:
        return "main"
    if row.component == -1:
        return "isolated"
    return "unembedded" if row.component < 0 or pd.isna(row.emb_row) else "component"


_SECTION_ORDER = {s: i for i, s in enumerate(SECTIONS)}


def _with_nodes(images: pd.DataFrame, clean: CleanResult | None) -> pd.DataFrame:
    """Join the last clean's component and similarity onto store images (NaN where the clean did not see them)."""
    out = images.copy()
    cols = ["component", "sim_to_main", "best_to_main", "emb_row", "clean_identity"]
    if clean is None or out.empty:
        for c in cols:
            out[c] = np.nan
        return out
    nodes = clean.nodes.reindex(out.id.to_numpy())
    out["component"] = nodes["component"].to_numpy()
    out["sim_to_main"] = nodes["sim_to_main"].to_numpy()
    out["best_to_main"] = nodes["best_to_main"].to_numpy() if "best_to_main" in nodes else np.nan
    out["emb_row"] = nodes["emb_row"].to_numpy()
    out["clean_identity"] = nodes["identity"].to_numpy()
    return out


def _embedding_rows(clean: CleanResult | None, rows: Sequence[float]) -> np.ndarray | None:
    """Float32 rows of the memory-mapped embeddings (reads only those rows from disk)."""
    if clean is None or clean.embeddings is None or not len(rows):
        return None
    idx = np.asarray(rows, dtype=np.int64)
    order = np.argsort(idx)  # sorted reads are sequential on disk
    out = np.empty((len(idx), clean.embeddings.shape[1]), dtype=np.float32)
    out[order] = clean.embeddings[idx[order]]
    return out


def identity_view(
    store: LabelStore,
    clean: CleanResult | None,
    identity: str,
    *,
    max_heatmap: int = 150,
    suggestion_photos: int = 4,
) -> IdentityView:
    """Gather one identity's photos (current labels), grouped as the last clean saw them, with their flags.

    - photos: every present photo now labelled `identity`; `section` says where it is drawn (main component, other
      components, isolated, moved here since the clean, deepfakes, removed) and `flag_list` lists its flags (open ones and
      those already answered) as dicts with id, kind, status, suggested_identity, score and sim_to_suggested.
    - similarity: the cosine matrix of the real, kept photos with embeddings, ordered by component (main first),
      limited to `max_heatmap` photos.
    - suggestions: for each identity a flag suggests, up to `suggestion_photos` of its photos, main component first.
    Reads only this identity's rows of the store, nodes and embeddings. Raises ReviewError for an unknown identity.
    """
    images = store.images(identity=identity)
    if images.empty:
        raise ReviewError(f"no photos are labelled {identity!r} (it may have been merged or renamed)")
    photos = _with_nodes(images, clean)
    photos["section"] = [_section(r) for r in photos.itertuples()]
    photos["section_rank"] = photos.section.map(_SECTION_ORDER)
    photos["component_rank"] = photos.component.where(photos.component >= 0, np.inf).fillna(np.inf)
    photos = photos.sort_values(
        ["section_rank", "component_rank", "sim_to_main", "id"], ascending=[True, True, False, True], na_position="last"
    ).reset_index(drop=True)
    notes = [] if clean is not None else ["no clean yet: components and similarities appear after `curation.clean`"]

    flags = store.flags(image_ids=photos.id.tolist())
    suggested = sorted(set(flags.loc[flags.status.eq("open"), "suggested_identity"].dropna()) - {identity})
    previews = {s: identity_preview(store, clean, s, 50) for s in suggested}  # similarity: mean over up to 50
    sugg_emb = {s: _embedding_rows(clean, df.emb_row.dropna().tolist()) for s, df in previews.items()}
    suggestions = {s: df.head(suggestion_photos) for s, df in previews.items()}
    own_emb = dict(zip(photos.id, photos.emb_row))
    per_image: dict[int, list[dict]] = {int(i): [] for i in photos.id}
    for f in flags.itertuples():
        sim = None
        target = sugg_emb.get(f.suggested_identity)
        row = own_emb.get(f.image_id)
        if target is not None and len(target) and row is not None and not pd.isna(row):
            sim = float((_embedding_rows(clean, [row]) @ target.T).mean())
        per_image[int(f.image_id)].append(
            {
                "id": int(f.id),
                "kind": f.kind,
                "status": f.status,
                "suggested_identity": None if pd.isna(f.suggested_identity) else str(f.suggested_identity),
                "score": None if pd.isna(f.score) else float(f.score),
                "sim_to_suggested": sim,
            }
        )
    photos["flag_list"] = [per_image[int(i)] for i in photos.id]
    photos = photos.rename(columns={"id": "image_id"})

    heat = photos[photos.section.isin(["main", "component", "isolated"]) & photos.emb_row.notna()]
    if len(heat) > max_heatmap:
        notes.append(f"the heatmap shows the first {max_heatmap} of {len(heat)} photos")
        heat = heat.iloc[:max_heatmap]
    emb = _embedding_rows(clean, heat.emb_row.tolist())
    similarity = None if emb is None else np.clip(emb @ emb.T, -1.0, 1.0)

    cols = "id, kind, identity, suggested_identity, component, score, details"
    identity_flags = store.query(  # two indexed lookups, not an OR that scans every flag
        f"SELECT {cols} FROM flags WHERE status='open' AND image_id IS NULL AND identity=?"
        f" UNION SELECT {cols} FROM flags WHERE status='open' AND kind='merge' AND suggested_identity=? ORDER BY id",
        [identity, identity],
    )
    keep = ["image_id", "path", "sha256", "is_fake", "removed", "problem", "section", "component", "sim_to_main",
            "best_to_main", "emb_row", "flag_list"]
    return IdentityView(
        identity, photos[keep], identity_flags, suggestions, similarity, heat.image_id.astype(int).tolist(), notes
    )


def identity_preview(store: LabelStore, clean: CleanResult | None, identity: str, n: int = 4) -> pd.DataFrame:
    """Up to n photos that show who an identity is: real, kept, its main component first, most typical first."""
    images = store.images(identity=identity, include_removed=False)
    images = images[images.is_fake == 0]
    photos = _with_nodes(images, clean)
    photos["main"] = (photos.component == 0) & (photos.clean_identity == identity)
    photos = photos.sort_values(["main", "sim_to_main", "id"], ascending=[False, False, True], na_position="last")
    return photos.head(n).rename(columns={"id": "image_id"}).reset_index(drop=True)


def heatmap_figure(view: IdentityView) -> go.Figure | None:
    """Plotly heatmap of the identity's similarity matrix, with lines between components; None without embeddings."""
    if view.similarity is None or not len(view.heatmap_ids):
        return None
    photos = view.photos.set_index("image_id").loc[view.heatmap_ids]
    labels = [f"{Path(p).name} (c{'' if pd.isna(c) else int(c)})" for p, c in zip(photos.path, photos.component)]
    fig = go.Figure(
        go.Heatmap(
            z=view.similarity, x=labels, y=labels, zmin=-1 if view.similarity.min() < 0 else 0, zmax=1,
            colorscale="Viridis", colorbar={"title": "cosine"},
            hovertemplate="%{y}<br>%{x}<br>cosine %{z:.3f}<extra></extra>",
        )
    )
    comps = photos.component.fillna(-1).to_numpy()
    for k in np.flatnonzero(comps[1:] != comps[:-1]) + 0.5:
        fig.add_hline(y=k, line={"color": "white", "width": 2})
        fig.add_vline(x=k, line={"color": "white", "width": 2})
    n = len(labels)
    fig.update_layout(
        title=f"{view.identity}: similarity ordered by component", height=min(900, 240 + 14 * n),
        yaxis={"autorange": "reversed", "showticklabels": n <= 40}, xaxis={"showticklabels": n <= 40},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


# ---- actions --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """A decision just recorded, with the line to show the reviewer."""

    decision_id: int
    message: str


_VERBS = {
    "remove": "removed", "restore": "restored", "mark_fake": "marked fake", "mark_real": "marked real",
    "move": "moved", "keep": "kept", "merge": "merged", "split": "split off",
}


def apply_action(
    store: LabelStore,
    action: str,
    *,
    reviewer: str,
    image_ids: Sequence[int] = (),
    flag_ids: Sequence[int] | None = None,
    identity: str | None = None,
    target_identity: str | None = None,
) -> Outcome:
    """Record one reviewer decision, at once, as one `LabelStore.decide` in strict mode.

    action: remove | restore | mark_fake | mark_real | move (target_identity) | keep (flag_ids: the flags shown, which
    it rejects) on `image_ids`; merge (identity into target_identity); split (image_ids of a component of `identity`
    go to the new identity target_identity, answering the identity's open split flags).
    flag_ids defaults to the open flags on the photos (the store's rule). A decision another reviewer already made
    meanwhile is refused with ReviewError naming that decision, so two sessions never record it twice.
    Example: `apply_action(store, "move", reviewer="ana", image_ids=[7], target_identity="Hugh Laurie")`.
    """
    store_action = "move" if action == "split" else action
    try:
        if action == "split":
            identity = check_identity_name(identity or "")
            target_identity = check_identity_name(target_identity or "")
            exists = store.query("SELECT 1 FROM images WHERE identity=? LIMIT 1", [target_identity])
            if not exists.empty:
                raise ReviewError(f"{target_identity!r} already exists: pick a new name, or move the photos instead")
            split_flags = store.flags(status="open", kind="split", identity=identity)
            photo_flags = store.flags(status="open", image_ids=list(image_ids)) if len(image_ids) else split_flags[:0]
            flag_ids = sorted({*split_flags.id.tolist(), *photo_flags.id.tolist()})
        did = store.decide(
            store_action, reviewer=reviewer, image_ids=image_ids, identity=identity, target_identity=target_identity,
            flag_ids=flag_ids, note="split" if action == "split" else "", strict=True,
        )
    except (StoreError, ValueError) as exc:
        raise ReviewError(str(exc)) from exc
    n = len(image_ids)
    n_flags = int(store.query("SELECT COUNT(*) AS n FROM decision_flags WHERE decision_id=?", [did]).n.iloc[0])
    what = {
        "merge": f"merged {identity} into {target_identity}",
        "keep": f"kept {n} photo(s), rejecting {n_flags} flag(s)" if n else f"rejected {n_flags} flag(s)",
        "move": f"moved {n} photo(s) to {target_identity}",
        "split": f"split {n} photo(s) off {identity} into {target_identity}",
    }.get(action, f"{_VERBS.get(action, action)} {n} photo(s)")
    return Outcome(did, f"#{did}: {what}")


def undo_decision(store: LabelStore, decision_id: int, *, reviewer: str) -> Outcome:
    """Reverse one decision with a new one; ReviewError (with the reason) when the store refuses."""
    try:
        did = store.undo(int(decision_id), reviewer=reviewer)
    except StoreError as exc:
        raise ReviewError(str(exc)) from exc
    return Outcome(did, f"#{did}: undid #{decision_id}")


def split_name(store: LabelStore, identity: str, component: int) -> str:
    """A free identity name for a component split off `identity`: `<identity>_split<component>[_<n>]`."""
    base = f"{identity}_split{component}"
    name, n = base, 1
    while not store.query("SELECT 1 FROM images WHERE identity=? LIMIT 1", [name]).empty:
        n += 1
        name = f"{base}_{n}"
    return name


def history_lines(store: LabelStore, *, limit: int = 15, identity: str | None = None) -> list[dict]:
    """Recent decisions for the history panel: id, text, and whether an undo button makes sense."""
    return [
        {"id": d.id, "text": d.describe(), "undoable": d.action != "undo" and d.undone_by is None}
        for d in store.history(limit=limit, identity=identity)
    ]


# ---- search ---------------------------------------------------------------------------------------------------------
def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def find_identities(store: LabelStore, text: str, *, limit: int = 20) -> list[str]:
    """Identity names starting with `text` (through the identity index), then containing it (case-insensitive)."""
    text = text.strip()
    if not text:
        return []
    prefix = store.query(
        "SELECT DISTINCT identity FROM images WHERE identity >= ? AND identity < ? ORDER BY identity LIMIT ?",
        [text, text + "\U0010ffff", limit],
    ).identity.tolist()
    if len(prefix) >= limit:
        return prefix
    more = store.query(
        "SELECT DISTINCT identity FROM images WHERE identity LIKE ? ESCAPE '\\' ORDER BY identity LIMIT ?",
        [_like(text), limit],
    ).identity.tolist()
    return (prefix + [m for m in more if m not in prefix])[:limit]


def search(store: LabelStore, text: str, *, limit: int = 50) -> pd.DataFrame:
    """Identities and files matching `text` (identity name or file path, case-insensitive substring).

    Returns rows of: match ('identity' | 'file'), identity, path (files only), image_id (files only), n_open_flags.
    """
    text = text.strip()
    cols = ["match", "identity", "path", "image_id", "n_open_flags"]
    if not text:
        return pd.DataFrame(columns=cols)
    names = find_identities(store, text, limit=limit)
    ident = pd.DataFrame({"match": "identity", "identity": names, "path": None, "image_id": None})
    files = store.query(
        "SELECT 'file' AS match, identity, path, id AS image_id FROM images WHERE present=1 AND path LIKE ? ESCAPE '\\'"
        " ORDER BY id LIMIT ?",
        [_like(text), limit],
    )
    out = pd.concat([ident, files], ignore_index=True) if len(files) else ident
    wanted = out.identity.unique().tolist()
    if not wanted:
        return pd.DataFrame(columns=cols)
    n_open = store.query(
        f"SELECT identity, COUNT(*) AS n_open_flags FROM flags WHERE status='open' AND identity IN"
        f" ({','.join('?' * len(wanted))}) GROUP BY identity",
        wanted,
    )
    out = out.merge(n_open, on="identity", how="left").fillna({"n_open_flags": 0})
    out["n_open_flags"] = out.n_open_flags.astype(int)
    return out[cols]


# ---- overview -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overview:
    """Numbers for the overview page."""

    flag_counts: pd.DataFrame  # kind, open, resolved (every kind of the vocabulary, zeros included)
    n_photos: int
    n_identities: int
    n_decisions: int
    n_removed: int
    summary: ReportSummary

    @property
    def n_open(self) -> int:
        return int(self.flag_counts.open.sum())

    @property
    def n_reviewed(self) -> int:
        return int(self.flag_counts.resolved.sum())


def overview(store: LabelStore, report: dict) -> Overview:
    """Counts per flag kind (open / answered), photos, identities and decisions, plus the report's numbers."""
    counts = store.flag_counts().pivot_table(index="kind", columns="status", values="n", aggfunc="sum", fill_value=0)
    counts = counts.reindex(index=list(FLAG_KINDS), columns=["open", "resolved"], fill_value=0).fillna(0).astype(int)
    totals = store.query(
        "SELECT COUNT(*) AS n, IFNULL(SUM(removed), 0) AS removed FROM images WHERE present=1"
    ).iloc[0]
    n_ids = store.query("SELECT COUNT(DISTINCT identity) AS n FROM images WHERE present=1 AND removed=0").n.iloc[0]
    n_dec = store.query("SELECT COUNT(*) AS n FROM decisions").n.iloc[0]
    return Overview(
        counts.rename_axis("kind").reset_index(), int(totals.n), int(n_ids), int(n_dec), int(totals.removed),
        summarize_report(report),
    )


def flag_counts_figure(ov: Overview) -> go.Figure:
    """Stacked bars of open and answered flags per kind."""
    fc = ov.flag_counts
    fig = go.Figure(
        [
            go.Bar(name="open", x=fc.kind, y=fc.open, marker_color="#d62728"),
            go.Bar(name="answered", x=fc.kind, y=fc.resolved, marker_color="#2ca02c"),
        ]
    )
    fig.update_layout(barmode="stack", title="Flags per kind", yaxis_title="flags", height=320,
                      margin={"t": 40, "b": 10})
    return fig


def similarity_histogram_figure(summary: ReportSummary) -> go.Figure | None:
    """Same-identity vs cross-identity similarity (as densities, so both show at any imbalance) with the thresholds."""
    h = summary.histogram
    if h is None:
        return None
    width = (h.right - h.left).to_numpy()
    fig = go.Figure()
    for col, name, colour in (("same", "same identity", "#1f77b4"), ("cross", "cross identity", "#ff7f0e")):
        total = h[col].sum()
        fig.add_bar(
            x=(h.left + h.right) / 2, y=h[col] / (total * width) if total else h[col], width=width, name=name,
            marker_color=colour, opacity=0.6,
        )
    cosines = {k: v for k, v in summary.thresholds.items() if k in COSINE_THRESHOLDS}
    for i, (name, value) in enumerate(sorted(cosines.items(), key=lambda kv: kv[1])):
        fig.add_vline(x=value, line_dash="dash", annotation_text=f"{name} {value:.3f}",
                      annotation_position="top left" if i % 2 == 0 else "top right")
    fig.update_layout(barmode="overlay", title="Similarity: same identity vs cross identity", xaxis_title="cosine",
                      yaxis_title="density", height=360, margin={"t": 50, "b": 10})
    return fig


# ---- thumbnails -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thumbnail:
    """Encoded image bytes ready for st.image; `reason` says why a placeholder was drawn instead of the photo."""

    data: bytes
    reason: str | None = None


def crop_align_id(report: dict) -> str | None:
    """The alignment id of the last clean's cached crops (WORK/cache/crops/<align_id>/), as its report names it."""
    value = report.get("align_id")
    return value if isinstance(value, str) and value and "/" not in value and value not in (".", "..") else None


def photo_source(
    store: LabelStore, work: WorkFolder, photo: pd.Series | dict, align_id: str | None = None
) -> tuple[Path | None, str | None]:
    """Which file to show for a photo: its aligned crop when the last clean cached one, else the original.

    `photo` is a row of `IdentityView.photos` (path, sha256). Returns (path, None) or (None, reason); the path is built
    from the store (the crop cache's content key, or the ingested path resolved inside the dataset root), never taken
    from a request.
    """
    sha = photo.get("sha256")
    if align_id and isinstance(sha, str) and sha:
        crop = cache.crop_path(work.root / "cache", align_id, sha)
        if crop.is_file():
            return crop, None
    try:
        return store.resolve(photo["path"]), None
    except StoreError as exc:
        return None, str(exc)


def allowed_roots(store: LabelStore, work: WorkFolder) -> tuple[Path, ...]:
    """The only folders images are served from: the work folder and the dataset root (when something was ingested)."""
    roots = [work.root]
    try:
        roots.append(store.dataset_root.resolve())
    except StoreError:
        pass
    return tuple(roots)


def load_thumbnail(path: Path | str, roots: Sequence[Path], *, size: int = 160) -> Thumbnail:
    """A JPEG thumbnail (at most size x size) of a photo inside one of `roots`, or a placeholder naming the reason.

    Never raises for a bad file: missing, unreadable, not an image, outside the allowed folders all give a placeholder.
    Decoding goes through labels.imagefile.read_rgb, so the app agrees with ingest on what is readable.
    """
    full = Path(path).resolve()
    if not any(full.is_relative_to(r) for r in roots):
        return placeholder("outside the dataset and work folder", size)
    try:
        rgb = read_rgb(full)
    except ImageError as exc:
        return placeholder(exc.reason, size)
    im = Image.fromarray(rgb)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return Thumbnail(buf.getvalue())


def placeholder(reason: str, size: int = 160) -> Thumbnail:
    """A grey square with the reason written on it, for photos that cannot be shown."""
    im = Image.new("RGB", (size, size), (70, 70, 70))
    draw = ImageDraw.Draw(im)
    lines = textwrap.wrap(reason, width=max(8, size // 7))[:6]
    draw.multiline_text((6, 6), "\n".join(["cannot show:", *lines]), fill=(235, 235, 235), spacing=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return Thumbnail(buf.getvalue(), reason)


# ---- folders typed by the reviewer ----------------------------------------------------------------------------------
def contained_folder(text: str, *, work: WorkFolder, cwd: Path | None = None) -> Path:
    """Resolve a folder typed in the app; only folders under the work folder or the current directory are accepted.

    Relative paths are taken from the current directory. Raises ReviewError for anything else, so a text box cannot
    make the app read or write elsewhere on the machine.
    """
    cwd = (cwd or Path.cwd()).resolve()
    text = (text or "").strip()
    if not text:
        raise ReviewError("type a folder")
    full = (cwd / Path(text).expanduser()).resolve()
    if not (full.is_relative_to(work.root) or full.is_relative_to(cwd)):
        raise ReviewError(f"{full} is outside the work folder ({work.root}) and the current directory ({cwd})")
    return full


# ---- training and evaluation runs -----------------------------------------------------------------------------------
HISTORY_FILE = evaluate.HISTORY_NAME  # written by `python -m curation.train_on_clean --out RUN`
METRICS_FILE = evaluate.METRICS_NAME  # written by `python -m curation.evaluate --out DIR`
SCORES_PLOT_LIMIT = 100_000_000  # bytes of scores.csv read for the score histogram; larger runs have DIR/scores.html


def find_runs(work: WorkFolder, marker: str, subdir: str) -> list[Path]:
    """Run folders under WORK/<subdir> (and that folder itself) holding `marker`, newest first."""
    base = work.root / subdir
    if not base.is_dir():
        return []
    found = [p.parent for p in [base / marker, *base.glob(f"*/{marker}")] if p.is_file()]
    return sorted(found, key=lambda p: (p / marker).stat().st_mtime, reverse=True)


def read_history(run: Path) -> pd.DataFrame:
    """RUN/performance_history.json as one row per validation, ordered by step, nested fields flattened
    (`per_type.own_fake.rate`, or `metrics.eer` lifted to `eer` when a record nests its metrics).

    Accepts a list of records or an object holding one under `history`/`records`. Raises ReviewError naming the file.
    """
    path = run / HISTORY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReviewError(f"{path}: not found (written by `python -m curation.train_on_clean`)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{path}: not readable JSON ({exc})") from exc
    if isinstance(data, dict):
        data = data.get("history", data.get("records"))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ReviewError(f"{path}: expected a list of validation records")
    data = [{**r, **r["metrics"]} if isinstance(r.get("metrics"), dict) else r for r in data]
    frame = pd.json_normalize([{k: v for k, v in r.items() if k not in ("metrics", "curve")} for r in data])
    if len(frame) and "step" not in frame:
        raise ReviewError(f"{path}: records have no 'step'")
    return frame.sort_values("step").reset_index(drop=True) if len(frame) else frame


def _per_type_columns(frame: pd.DataFrame) -> dict[str, str]:
    """pair type -> its error-rate column (`per_type.<type>.rate`, or a plain `per_type.<type>`)."""
    out = {}
    for c in frame.columns:
        parts = c.split(".")
        if parts[0] == "per_type" and (len(parts) == 2 or parts[2:] == ["rate"]):
            if pd.api.types.is_numeric_dtype(frame[c]):
                out[parts[1]] = c
    return out


def training_figures(history: pd.DataFrame) -> dict[str, go.Figure]:
    """Loss, EER (with the learning rate) and per-type error-rate curves against the step; {} for no records."""
    figs: dict[str, go.Figure] = {}
    if history.empty:
        return figs
    if "train_loss" in history:
        figs["loss"] = go.Figure(go.Scatter(x=history.step, y=history.train_loss, mode="lines+markers", name="loss"))
        figs["loss"].update_layout(title="Training loss", xaxis_title="step", yaxis_title="loss")
    if "eer" in history:
        fig = go.Figure(go.Scatter(x=history.step, y=history.eer, mode="lines+markers", name="validation EER"))
        if "lr" in history:
            fig.add_scatter(x=history.step, y=history.lr, name="learning rate", yaxis="y2", line={"dash": "dot"})
            fig.update_layout(yaxis2={"title": "lr", "overlaying": "y", "side": "right", "type": "log"})
        fig.update_layout(title="Validation EER", xaxis_title="step", yaxis_title="EER")
        figs["eer"] = fig
    cols = _per_type_columns(history)
    if cols:
        fig = go.Figure([go.Scatter(x=history.step, y=history[c], mode="lines", name=name) for name, c in cols.items()])
        fig.update_layout(title="Error rate per pair type", xaxis_title="step", yaxis_title="error rate")
        figs["per_type"] = fig
    for fig in figs.values():
        fig.update_layout(height=340, margin={"t": 40, "b": 10}, template="plotly_white")
    return figs


def evaluation_table(runs: Sequence[Path]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row of metrics per evaluation run (curation.evaluate's own comparison table) and name -> metrics."""
    try:
        return evaluate.compare_table(list(runs))
    except evaluate.InputError as exc:
        raise ReviewError(str(exc)) from exc


def evaluation_figures(runs: dict[str, dict]) -> dict[str, go.Figure]:
    """ROC and DET (curation.plots, overlaid, EER points marked) and error rates per pair type, for named metrics."""
    curves = {n: metrics.Curve.from_dict(m["curve"]) for n, m in runs.items() if isinstance(m.get("curve"), dict)}
    marks = {n: (m["eer_far"], m["eer_frr"]) for n, m in runs.items() if n in curves and "eer_far" in m}
    figs = {}
    if curves:
        figs["roc"] = plots.roc_figure(curves, marks=marks)
        figs["det"] = plots.det_figure(curves, marks=marks)
    bars = []
    for name, m in runs.items():
        rates = {t: (r.get("rate") if isinstance(r, dict) else r) for t, r in (m.get("per_type") or {}).items()}
        rates = {t: float(v) for t, v in rates.items() if isinstance(v, (int, float))}
        if rates:
            bars.append(go.Bar(name=name, x=list(rates), y=list(rates.values()), text=[f"{v:.4f}" for v in rates.values()]))
    if bars:
        figs["per_type"] = go.Figure(bars)
        figs["per_type"].update_layout(title="Error rate per pair type (at each run's operating threshold)",
                                       yaxis_title="error rate", barmode="group", template="plotly_white")
    return figs


def scores_figure(run: Path, threshold: float | None = None) -> go.Figure | None:
    """The score histogram per pair type from DIR/scores.csv (None when absent, unreadable or too large to read here)."""
    path = run / "scores.csv"
    if not path.is_file() or path.stat().st_size > SCORES_PLOT_LIMIT:
        return None
    try:
        table = pd.read_csv(path)
        return plots.score_histogram(table.similarity, table.label, table.get("type"), threshold=threshold)
    except (OSError, ValueError, KeyError, AttributeError):
        return None
