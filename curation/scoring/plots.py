"""Plotly figures of verification results: ROC, DET and score histograms, shared by evaluation, training and the app.

Why here and not in the app: `curation.evaluate` writes these figures as files, training can write them per validation,
and the review app's Evaluation tab shows the same figures from the same metrics files, so each is drawn once.
Figures take `metrics.Curve` points (or the `curve` mapping of a metrics.json via `Curve.from_dict`), never raw 10M-pair
arrays: plotly embeds every point in the page, so curves arrive thinned and histograms arrive binned.

Example:
    >>> report = verification_report(scores, labels)
    >>> fig = roc_figure({"fine-tuned": report.curve}, marks={"fine-tuned": (report.eer_far, report.eer_frr)})
    >>> written, note = save_figure(fig, Path("out/roc"))     # out/roc.html (+ out/roc.png when kaleido works)
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist

import numpy as np
import plotly.graph_objects as go

from curation.scoring.metrics import Curve
from labels.outputs import OutputFolder

# DET axes are normal deviates (as in bob.measure and NIST's DET plots); these error rates get tick labels.
_DET_TICKS = (1e-5, 1e-4, 1e-3, 1e-2, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
_probit = np.frompyfunc(NormalDist().inv_cdf, 1, 1)


def _pct(rate: float) -> str:
    return f"{rate * 100:g}%"


def roc_figure(curves: Mapping[str, Curve], *, marks: Mapping[str, tuple[float, float]] | None = None) -> go.Figure:
    """TAR against FAR (log scale, where face verification is judged), one line per named curve.

    Inputs: name -> Curve; optional name -> (far, frr) operating points to mark (e.g. the EER point).
    Output: a plotly Figure. Points with FAR 0 cannot sit on a log axis and are left out of the line.

    Example:
        >>> roc_figure({"pretrained": a.curve, "fine-tuned": b.curve})
    """
    fig = go.Figure()
    for name, c in curves.items():
        ok = c.far > 0
        fig.add_trace(go.Scatter(
            x=c.far[ok], y=c.tar[ok], mode="lines", name=name, customdata=c.threshold[ok],
            hovertemplate="FAR %{x:.2e}<br>TAR %{y:.4f}<br>threshold %{customdata:.4g}<extra>" + name + "</extra>",
        ))
    for name, (far, frr) in (marks or {}).items():
        fig.add_trace(go.Scatter(x=[far], y=[1 - frr], mode="markers", marker=dict(size=9, symbol="x"),
                                 name=f"{name} EER"))
    fig.update_layout(title="ROC", xaxis_title="false accept rate (FAR)", yaxis_title="true accept rate (TAR)",
                      xaxis_type="log", yaxis_range=[0, 1.01], template="plotly_white")
    return fig


def det_figure(curves: Mapping[str, Curve], *, marks: Mapping[str, tuple[float, float]] | None = None) -> go.Figure:
    """FRR against FAR on normal-deviate axes (a DET plot): good systems are straight lines near the bottom left.

    Points where either rate is 0 or 1 have no normal deviate and are left out.

    Example:
        >>> det_figure({"pretrained": a.curve}, marks={"pretrained": (a.eer_far, a.eer_frr)})
    """
    fig = go.Figure()
    lowest = 0.5
    for name, c in curves.items():
        ok = (c.far > 0) & (c.far < 1) & (c.frr > 0) & (c.frr < 1)
        if ok.any():
            lowest = min(lowest, float(c.far[ok].min()), float(c.frr[ok].min()))
        fig.add_trace(go.Scatter(
            x=_probit(c.far[ok]).astype(float), y=_probit(c.frr[ok]).astype(float), mode="lines", name=name,
            customdata=np.stack([c.far[ok], c.frr[ok], c.threshold[ok]], axis=-1),
            hovertemplate="FAR %{customdata[0]:.2e}<br>FRR %{customdata[1]:.4f}<br>threshold %{customdata[2]:.4g}"
                          "<extra>" + name + "</extra>",
        ))
    for name, (far, frr) in (marks or {}).items():
        if 0 < far < 1 and 0 < frr < 1:
            fig.add_trace(go.Scatter(x=[float(_probit(far))], y=[float(_probit(frr))], mode="markers",
                                     marker=dict(size=9, symbol="x"), name=f"{name} EER"))
    ticks = [t for t in _DET_TICKS if t >= lowest / 2]
    axis = dict(zeroline=False, tickvals=[float(_probit(t)) for t in ticks], ticktext=[_pct(t) for t in ticks],
                range=[float(_probit(max(lowest / 2, 1e-6))), float(_probit(0.6))])
    fig.add_trace(go.Scatter(x=axis["range"], y=axis["range"], mode="lines", line=dict(dash="dot", color="grey"),
                             name="FAR = FRR", hoverinfo="skip"))
    fig.update_layout(title="DET", xaxis=dict(title="false accept rate (FAR)", **axis),
                      yaxis=dict(title="false reject rate (FRR)", **axis), template="plotly_white")
    return fig


def score_histogram(scores, labels, types=None, *, threshold: float | None = None, bins: int = 100) -> go.Figure:
    """Score distributions per pair type (or per label), each normalised to its own size, with the threshold marked.

    Inputs: scores, 0/1 labels, optional per-pair type names; the threshold to draw; the number of bins. Binned with
    numpy first, so 10M scores make a small page.

    Example:
        >>> score_histogram(scores, labels, types, threshold=report.eer_threshold)
    """
    s = np.asarray(scores, dtype=np.float64)
    if types is None:
        groups = np.where(np.asarray(labels).astype(bool), "same person (label 1)", "not the same (label 0)")
    else:
        groups = np.asarray(types).astype(str)
    edges = np.histogram_bin_edges(s, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for name in np.unique(groups):
        part = s[groups == name]
        counts, _ = np.histogram(part, bins=edges)
        fig.add_trace(go.Bar(x=centers, y=counts / len(part), name=f"{name} ({len(part):,})", opacity=0.55,
                             width=float(edges[1] - edges[0]) if len(edges) > 1 else None))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", annotation_text=f"threshold {threshold:.4g}")
    fig.update_layout(title="Scores by pair type", barmode="overlay", xaxis_title="similarity",
                      yaxis_title="share of the type's pairs", template="plotly_white")
    return fig


PLOTLY_JS = "plotly.min.js"  # what include_plotlyjs="directory" writes beside the page


def save_figure(fig: go.Figure, stem: Path, owned: OutputFolder | None = None) -> tuple[list[Path], str | None]:
    """Write `stem.html` (plotly.js beside it, so the page opens offline) and `stem.png` when kaleido is importable.

    owned: the output folder `stem` is in (labels.outputs); the files are listed in its manifest before they are
    written. Output: (written files, a note when the PNG was skipped or failed, else None).
    """
    stem = Path(stem)
    html = stem.with_suffix(".html")
    if owned is not None:
        files = (html, stem.with_suffix(".png"), html.with_name(PLOTLY_JS))
        owned.add(*(p.absolute().relative_to(owned.root).as_posix() for p in files))
    fig.write_html(html, include_plotlyjs="directory")
    written = [html]
    if importlib.util.find_spec("kaleido") is None:
        return written, "PNG skipped: kaleido is not installed (pip install kaleido for PNG plots)"
    try:
        fig.write_image(stem.with_suffix(".png"))
    except Exception as exc:  # kaleido needs a browser it may not find; the HTML is already written
        return written, f"PNG skipped: kaleido failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return written + [stem.with_suffix(".png")], None
