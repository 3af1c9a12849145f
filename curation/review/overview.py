"""The overview page: totals, flag counts, what the answers so far say about the open flags (confirmed rates per kind
x score band, the estimated precision of the open flags and how many real errors they hold), reviewer throughput and
the similarity histogram."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from curation.review.queue import COSINE_THRESHOLDS, ReportSummary, summarize_report
from labels.estimate import PrecisionEstimate, band_rates, estimate_precision, with_bands
from labels.store import LabelStore
from labels.vocab import FLAG_KINDS

BREAK = timedelta(minutes=5)  # a longer pause between two decisions is a break, not review time


@dataclass(frozen=True)
class Overview:
    """Numbers for the overview page."""

    flag_counts: pd.DataFrame  # kind, open, resolved (every kind of the vocabulary, zeros included)
    n_photos: int
    n_identities: int
    n_decisions: int
    n_removed: int
    summary: ReportSummary
    estimate: PrecisionEstimate  # of the open flags, from the answers so far (labels.estimate)
    rates: pd.DataFrame  # labels.estimate.band_rates: confirmed rate per kind x score band
    throughput: pd.DataFrame  # see `throughput`

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
    with store.snapshot():
        flags = with_bands(store.flag_answers())
        times = store.decision_times()
    return Overview(
        counts.rename_axis("kind").reset_index(), totals["photos"], totals["identities"], totals["decisions"],
        totals["removed"], summarize_report(report), estimate_precision(flags), band_rates(flags), throughput(times),
    )


def throughput(times: pd.DataFrame, *, now: datetime | None = None) -> pd.DataFrame:
    """Decisions per minute of review time, per reviewer, today (local date) and overall.

    times: reviewer, ts (ISO timestamps with a zone) of every decision (`LabelStore.decision_times`). Review time is
    the sum of the pauses between a reviewer's consecutive decisions that are no longer than BREAK; the rate is the
    number of those pauses per minute of it (a single decision, or one after a break, has no measurable pace).
    Columns: reviewer, decisions_today, per_minute_today, decisions, per_minute, minutes (review time overall);
    per_minute is NaN without review time.
    """
    cols = ["reviewer", "decisions_today", "per_minute_today", "decisions", "per_minute", "minutes"]
    if times.empty:
        return pd.DataFrame(columns=cols)
    now = (now or datetime.now().astimezone()).astimezone()
    ts = pd.to_datetime(times.ts, utc=True, format="ISO8601").dt.tz_convert(now.tzinfo)
    frame = pd.DataFrame({"reviewer": times.reviewer.to_numpy(), "ts": ts})
    rows = []
    for reviewer, part in frame.sort_values("ts", kind="stable").groupby("reviewer", sort=True):
        today = part[part.ts.dt.date == now.date()]
        n_today, rate_today, _ = _pace(today.ts)
        n, rate, minutes = _pace(part.ts)
        rows.append((reviewer, n_today, rate_today, n, rate, minutes))
    return pd.DataFrame(rows, columns=cols)


def _pace(ts: pd.Series) -> tuple[int, float, float]:
    gaps = ts.diff().dropna()
    worked = gaps[gaps <= BREAK]
    minutes = worked.dt.total_seconds().sum() / 60
    return len(ts), (len(worked) / minutes if minutes > 0 else np.nan), float(minutes)


def rates_figure(ov: Overview) -> go.Figure | None:
    """Confirmed rate per kind x score band with its Wilson interval, for the bands something was answered in."""
    r = ov.rates[ov.rates.n_answered > 0]
    if r.empty:
        return None
    names = [f"{k} {_band_name(b, lo, hi)}" for k, b, lo, hi in zip(r.kind, r.band, r.score_low, r.score_high)]
    fig = go.Figure(go.Bar(
        x=names, y=r.rate, marker_color="#2ca02c",
        error_y={"type": "data", "symmetric": False, "array": r.rate_high - r.rate, "arrayminus": r.rate - r.rate_low},
        customdata=np.stack([r.n_confirmed, r.n_answered], axis=1),
        hovertemplate="%{x}<br>%{y:.0%} confirmed (%{customdata[0]} of %{customdata[1]})<extra></extra>",
    ))
    fig.update_layout(title="Confirmed by reviewers, per kind and score band (95% Wilson intervals)",
                      yaxis={"title": "share confirmed", "range": [0, 1.05], "tickformat": ".0%"}, height=340,
                      margin={"t": 50, "b": 10})
    return fig


def _band_name(band: int, low: float, high: float) -> str:
    return "(no score)" if band < 0 else f"{low:.3g}-{high:.3g}"


def rates_table(ov: Overview) -> pd.DataFrame:
    """The rates as a table a person reads: kind, score range, flags, open, answered, confirmed, rate, interval."""
    r = ov.rates
    return pd.DataFrame({
        "kind": r.kind,
        "scores": [_band_name(b, lo, hi) for b, lo, hi in zip(r.band, r.score_low, r.score_high)],
        "flags": r.n_flags, "open": r.n_open, "answered": r.n_answered, "confirmed": r.n_confirmed,
        "rate": r.rate,
        "95% interval": [f"{lo:.0%}-{hi:.0%}" if n else "-" for lo, hi, n in zip(r.rate_low, r.rate_high, r.n_answered)],
    })


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
