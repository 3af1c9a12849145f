"""The overview page: totals, flag counts, the similarity histogram, and a cheap cache key for what derives from the store."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from curation.review.queue import COSINE_THRESHOLDS, ReportSummary, summarize_report
from labels.store import LabelStore
from labels.vocab import FLAG_KINDS


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
    totals = store.totals()
    return Overview(
        counts.rename_axis("kind").reset_index(), totals["photos"], totals["identities"], totals["decisions"],
        totals["removed"], summarize_report(report),
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
