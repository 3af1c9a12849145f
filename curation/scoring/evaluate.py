"""`evaluate_scores`: the one seam every way of scoring pairs ends in (a submission, a model on pairs, a training run).

Why one function: the numbers a user compares across runs (EER in both conventions, TAR@FAR, per-type error rates)
must come from the same code and land in the same files, which the review app's Evaluation page and
`python -m curation.evaluate --compare` read back.

Example:
    >>> result = evaluate_scores(scores, labels, Path("eval/run1"), types=types, ids=pd.DataFrame({"pair_id": ids}))
    >>> print(result.report.describe())
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from curation.scoring import plots
from curation.scoring.metrics import DEFAULT_FARS, VerificationReport, verification_report
from labels.outputs import OutputFolder

METRICS_NAME = "metrics.json"
COMMAND = "curation.evaluate"  # the output folders it writes belong to that command (labels.outputs)


@dataclass
class EvaluationOutput:
    """What `evaluate_scores` measured and wrote, and notes for the user (e.g. a skipped PNG)."""

    report: VerificationReport
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def evaluate_scores(
    scores,
    labels,
    out_dir: Path,
    *,
    types=None,
    ids: pd.DataFrame | None = None,
    threshold: float | None = None,
    fars=DEFAULT_FARS,
    source: dict | None = None,
) -> EvaluationOutput:
    """Measure scored pairs and write the evaluation folder: the one seam every scoring mode ends in.

    Inputs: per-pair `scores` and 0/1 `labels` (same order), optional per-pair `types` names, optional `ids` (a table of
    identifying columns, e.g. pair_id or img1,img2, one row per pair, written in front of scores.csv), an operating
    `threshold` (default: the EER threshold), target FARs, and `source` (what was scored; stored in metrics.json).
    Output: EvaluationOutput. Writes `out_dir/metrics.json` (VerificationReport.to_dict() + source + time),
    `scores.csv`, and `roc`, `det`, `scores` plots (.html, .png where kaleido works), each listed in out_dir's
    manifest. Raises ValueError for bad arrays, OutputFolderError when out_dir is not absent, empty or an evaluation
    folder (labels.outputs).

    Example:
        >>> out = evaluate_scores([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], Path("eval/demo"))
        >>> out.report.eer, [p.name for p in out.files][:2]
        (0.5, ['metrics.json', 'scores.csv'])
    """
    report = verification_report(scores, labels, types, threshold=threshold, fars=fars)
    out_dir = Path(out_dir)
    owned = OutputFolder.claim(out_dir, COMMAND)
    record = report.to_dict()
    record["source"] = source or {}
    record["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    metrics_path = owned.write(METRICS_NAME, json.dumps(record, indent=1, allow_nan=False) + "\n")

    table = pd.DataFrame({"similarity": np.asarray(scores, dtype=np.float64), "label": np.asarray(labels).astype(int)})
    if types is not None:
        table["type"] = np.asarray(types)
    if ids is not None:
        table = pd.concat([ids.reset_index(drop=True), table], axis=1)
    scores_path = owned.write("scores.csv", lambda tmp: table.to_csv(tmp, index=False))

    files, notes = [metrics_path, scores_path], []
    name = out_dir.resolve().name
    mark = {name: (report.eer_far, report.eer_frr)}
    for stem, fig in (
        ("roc", plots.roc_figure({name: report.curve}, marks=mark)),
        ("det", plots.det_figure({name: report.curve}, marks=mark)),
        ("scores", plots.score_histogram(scores, labels, types, threshold=report.threshold)),
    ):
        written, note = plots.save_figure(fig, out_dir / stem, owned)
        files += written
        if note and note not in notes:
            notes.append(note)
    return EvaluationOutput(report, files, notes)
