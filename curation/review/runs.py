"""Training and evaluation runs under the work folder: their histories and metrics as tables and figures."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from curation.scoring import metrics, plots
from curation.scoring.compare import compare_table
from curation.scoring.evaluate import METRICS_NAME
from curation.training import run_folder
from curation.training.run_folder import HISTORY_NAME
from curation.workfolder import WorkFolder
from labels.cli import UserError


HISTORY_FILE = HISTORY_NAME  # written by `python -m curation.train_on_clean --out RUN`
METRICS_FILE = METRICS_NAME  # written by `python -m curation.evaluate --out DIR`
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
    (`per_type.own_fake`, `tar_at_far.0.001`). Raises UserError naming the file."""
    path = run / HISTORY_FILE
    frame = pd.json_normalize([{k: v for k, v in r.items() if k != "curve"} for r in run_folder.read_history(path)])
    if len(frame) and "step" not in frame:
        raise UserError(f"{path}: records have no 'step'")
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
    """Loss, EER (all pairs and real-only, with the learning rate) and per-type error-rate curves against the step
    (the own_fake curve is the deepfake FAR at the EER threshold); {} for no records."""
    figs: dict[str, go.Figure] = {}
    if history.empty:
        return figs
    if "train_loss" in history:
        figs["loss"] = go.Figure(go.Scatter(x=history.step, y=history.train_loss, mode="lines+markers", name="loss"))
        figs["loss"].update_layout(title="Training loss", xaxis_title="step", yaxis_title="loss")
    if "eer" in history:
        fig = go.Figure(go.Scatter(x=history.step, y=history.eer, mode="lines+markers", name="validation EER"))
        if "eer_real" in history:  # same vs different person only: what deepfake training must not cost
            fig.add_scatter(x=history.step, y=history.eer_real, mode="lines+markers", name="real-only EER")
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
        return compare_table(list(runs))
    except UserError as exc:
        raise UserError(str(exc)) from exc


def evaluation_figures(runs: dict[str, dict]) -> dict[str, go.Figure]:
    """ROC and DET (curation.scoring.plots, overlaid, EER points marked) and error rates per pair type, for named metrics."""
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
