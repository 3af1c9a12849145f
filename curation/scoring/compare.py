"""One table of several runs' metrics: evaluation folders (metrics.json) and training runs (their validation history).

Why: "did cleaning help?" is a comparison across runs; this reads each kind of run folder the project writes and
lines their numbers up in the same columns, so a noisy-label run and a cleaned-label run sit side by side.

Example:
    >>> table, runs = compare_table([Path("eval/pretrained"), Path("runs/cleaned")])
    >>> print(format_table(table))
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from curation.scoring.evaluate import METRICS_NAME
from curation.training.pairs import PAIR_KINDS, SAME
from curation.training.run_folder import HISTORY_NAME, read_history
from labels.cli import UserError


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def load_run(path: Path, pick: str = "best") -> tuple[str, dict]:
    """(display name, metrics mapping) of one run: an evaluation folder or metrics.json, or a training run folder or
    its performance_history.json (the record with the lowest eer for pick="best", the latest for pick="last")."""
    path = Path(path)
    if path.is_dir():
        if (path / METRICS_NAME).is_file():
            path = path / METRICS_NAME
        elif (path / HISTORY_NAME).is_file():
            path = path / HISTORY_NAME
        else:
            raise UserError(f"{path}: neither {METRICS_NAME} nor {HISTORY_NAME} found")
    elif not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    name = path.parent.name or str(path.parent)
    if path.name == HISTORY_NAME:
        records = [r for r in read_history(path) if isinstance(r.get("eer"), (int, float))]
        if not records:
            raise UserError(f"{path}: no validation record with an eer yet")
    else:
        data = _load_json(path)
        if not (isinstance(data, dict) and isinstance(data.get("eer"), (int, float))):
            raise UserError(f"{path}: not a {METRICS_NAME} (no eer), nor a training run's {HISTORY_NAME}")
        return name, data
    if pick == "best":
        rec = min(records, key=lambda r: r["eer"])
    else:
        rec = records[-1]
    return (f"{name} (step {rec['step']}, {pick})" if rec.get("step") is not None else f"{name} ({pick})"), rec


def metrics_row(metrics: dict) -> dict[str, float | int | None]:
    """The comparable numbers of one metrics mapping, as flat table columns (missing ones are simply absent)."""
    row: dict[str, float | int | None] = {}
    if metrics.get("step") is not None:
        row["step"] = metrics["step"]
    for key in ("eer", "eer_threshold", "eer_roc", "accuracy"):
        if key in metrics:
            row[key] = metrics[key]
    for far, tar in (metrics.get("tar_at_far") or {}).items():
        row[f"TAR@FAR={far}"] = tar
    for name, r in (metrics.get("per_type") or {}).items():
        if isinstance(r, dict):
            suffix = {"false_reject": "FRR", "false_accept": "FAR"}.get(r.get("kind"), "error")
            row[f"{name} {suffix}"] = r.get("rate")
        else:  # a plain rate, as training records store them, named by curation.training.pairs' kinds: only "same" is positive
            row[f"{name} {'FRR' if name == PAIR_KINDS[SAME] else 'FAR'}"] = r
    for key in ("n_pos", "n_neg"):
        if key in metrics:
            row[key] = metrics[key]
    return row


def compare_table(paths: list[Path], pick: str = "best") -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per run (index: run name), columns in first-seen order; also name -> the run's metrics mapping."""
    runs: dict[str, dict] = {}
    for p in paths:
        name, metrics = load_run(p, pick)
        if name in runs:
            name = str(p)
        runs[name] = metrics
    rows = {name: metrics_row(m) for name, m in runs.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    # first-seen order, except that the step leads and the pair counts close the row
    rank = {"step": -1, "n_pos": 1, "n_neg": 2}
    table = table[sorted(table.columns, key=lambda c: rank.get(c, 0))]
    table.index.name = "run"
    return table, runs


_COUNT_COLUMNS = ("step", "n_pos", "n_neg")


def _cell(column: str, v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    if column in _COUNT_COLUMNS:
        return f"{int(v):,}"
    return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"


def format_table(table: pd.DataFrame, markdown: bool = False) -> str:
    """The table as aligned text (or markdown): 4 decimals, '-' for values a run lacks."""
    header = [table.index.name or ""] + list(table.columns)
    body = [[str(i)] + [_cell(c, v) for c, v in zip(table.columns, row)]
            for i, row in zip(table.index, table.itertuples(index=False))]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"
    widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header)] + [line(r) for r in body])
