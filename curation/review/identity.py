"""The identity view: one identity's photos grouped by what the clean found, with their flags and similarities.

Why one function returns everything a page shows: the view reads only that identity's rows (store indexes, the
nodes table and a memory-mapped slice of the embeddings), so it stays fast at a million photos.
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from curation.flagging.explain import explain
from curation.workfolder import CleanResult
from labels.cli import UserError
from labels.store import LabelStore


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
      those already answered) as dicts with id, kind, status, suggested_identity, score, sim_to_suggested and why
      (curation.flagging.explain: the evidence that made the flag).
    - similarity: the cosine matrix of the real, kept photos with embeddings, ordered by component (main first),
      limited to `max_heatmap` photos.
    - suggestions: for each identity a flag suggests, up to `suggestion_photos` of its photos, main component first.
    Reads only this identity's rows of the store, nodes and embeddings. Raises UserError for an unknown identity.
    """
    images = store.images(identity=identity)
    if images.empty:
        raise UserError(f"no photos are labelled {identity!r} (it may have been merged or renamed)")
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
                "why": explain(f.kind, f.details, None if pd.isna(f.score) else float(f.score)),
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

    identity_flags = store.identity_flags(identity)
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


def heatmap_figure(view: IdentityView, threshold: float | None = None) -> go.Figure | None:
    """Plotly heatmap of the identity's similarity matrix, with lines between components; None without embeddings.

    threshold: the clean's edge threshold. The colour scale diverges from it (blue above: an edge, same person; red
    below: no edge) and spans the largest distance of an off-diagonal cosine from it on both sides, so same / different
    shows at a glance for any embedder (dlib's cosines all lie in 0.8-1.0). Without a threshold, 0..1 in one hue.
    """
    if view.similarity is None or not len(view.heatmap_ids):
        return None
    photos = view.photos.set_index("image_id").loc[view.heatmap_ids]
    # plotly renders a subset of HTML in labels and titles: names are escaped so they show as they are
    labels = [f"{html.escape(Path(p).name)} (c{'' if pd.isna(c) else int(c)})" for p, c in zip(photos.path, photos.component)]
    sim = view.similarity
    if threshold is None:
        scale = {"zmin": -1 if sim.min() < 0 else 0, "zmax": 1, "colorscale": "Viridis"}
        bar = "cosine"
    else:
        off = sim[~np.eye(len(sim), dtype=bool)]
        reach = float(np.max(np.abs(off - threshold))) if off.size else 0.05
        reach = max(reach, 0.01)
        scale = {"zmin": threshold - reach, "zmax": threshold + reach, "zmid": threshold, "colorscale": "RdBu"}
        bar = f"cosine (edge {threshold:.3f})"
    fig = go.Figure(
        go.Heatmap(
            z=sim, x=labels, y=labels, **scale, colorbar={"title": bar},
            hovertemplate="%{y}<br>%{x}<br>cosine %{z:.3f}<extra></extra>",
        )
    )
    comps = photos.component.fillna(-1).to_numpy()
    for k in np.flatnonzero(comps[1:] != comps[:-1]) + 0.5:
        fig.add_hline(y=k, line={"color": "black", "width": 2})
        fig.add_vline(x=k, line={"color": "black", "width": 2})
    n = len(labels)
    fig.update_layout(
        title=f"{html.escape(view.identity)}: similarity ordered by component", height=min(900, 240 + 14 * n),
        yaxis={"autorange": "reversed", "showticklabels": n <= 40}, xaxis={"showticklabels": n <= 40},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig
