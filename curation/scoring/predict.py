"""`predict_pairs`: every pair of a verification test set scored, with a listed fallback for pairs that cannot be.

Why a fallback, not a crash or a gap: one bad photo in 160k must not cost the run, and a submission must have one row
per pair in the ground truth's order. A pair whose image is missing, unreadable or has no face found gets a documented
fallback score and is listed, so the user can look at it.

Example:
    >>> pred = predict_pairs("test_public", "ir:ir_101:adaface_ir101_webface12m.ckpt", cache_dir=Path("cache"))
    >>> pred.scores.head(2)          # pair_id, similarity
    >>> pred.problems                # pair_id, image, status of every image that got its pair the fallback score
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from curation.cli import build_embedder
from curation.scoring.pair_scores import challenge_pairs, read_pairs, score_pairs
from labels.cli import UserError

if TYPE_CHECKING:
    from embeddings.embedders import Embedder
    from embeddings.options import EmbedOptions

FALLBACK_SCORE = 0.0


@dataclass
class Prediction:
    """What `predict_pairs` produced. scores: `pair_id` (text), `similarity` (float64), the submission's rows in
    order. problems: `pair_id`, `image`, `status` of every image without an embedding (its pair got fallback_score).
    summary: the embedding pass in one line. problem_summary: `PairScores.describe_problems()` ('' when none)."""

    scores: pd.DataFrame
    problems: pd.DataFrame
    fallback_score: float
    summary: str
    problem_summary: str


def predict_pairs(
    test_dir: str | Path,
    model: str | Embedder,
    *,
    cache_dir: Path,
    pairs_csv: Path | None = None,
    device: str = "auto",
    options: EmbedOptions | None = None,
    fallback_score: float = FALLBACK_SCORE,
) -> Prediction:
    """Cosine similarity of every test pair, with a fallback score for pairs that cannot be scored.

    Inputs: `test_dir` in the challenge layout (`images/<pair_id>/{0.jpg,1.jpg}`), or any folder with `pairs_csv`
    (`pair_id,img1,img2`, paths relative to test_dir; refused when they leave it); `model`, an embedder spec
    ("dlib" | "ir:<arch>:<ckpt>" | "onnx:<file>", built on `device`) or an Embedder; `cache_dir` and the
    `embeddings.options.EmbedOptions` of the pass (aligned: the photos already are 112x112 ArcFace-template crops).
    Output: Prediction. Rows are in pair_id order for the layout and in the CSV's order for pairs_csv; a pair whose
    image is missing, unreadable or has no face found gets `fallback_score` and its images are in `problems`.
    Raises UserError for an unusable input folder, CSV or model spec, DetectorError for a bad detector.

    Example:
        >>> pred = predict_pairs("test_public", "onnx:ir101.onnx", cache_dir=Path("cache"),
        ...                      options=EmbedOptions(aligned=True))
        >>> pred.scores.to_csv("submission.csv", index=False)
        >>> len(pred.problems), pred.problem_summary
        (0, '')
    """
    if not math.isfinite(fallback_score):
        raise UserError(f"the fallback score must be a finite number, got {fallback_score}")
    test_dir = Path(test_dir)
    if pairs_csv is not None:
        pairs = read_pairs(Path(pairs_csv), test_dir, ("pair_id", "img1", "img2"))
    else:
        pairs = challenge_pairs(test_dir)
    embedder = build_embedder(model, device) if isinstance(model, str) else model
    scored = score_pairs(test_dir, pairs["img1"], pairs["img2"], embedder, cache_dir=cache_dir, options=options)
    similarity = np.where(np.isnan(scored.similarity), fallback_score, scored.similarity)
    ids = pairs["pair_id"].reset_index(drop=True)
    problems = pd.DataFrame({"pair_id": ids.to_numpy()[scored.problems["pair"].to_numpy(np.int64)],
                             "image": scored.problems["image"], "status": scored.problems["status"]})
    return Prediction(pd.DataFrame({"pair_id": ids, "similarity": similarity}), problems, float(fallback_score),
                      f"embedding ({scored.cache_id}): {scored.summary}", scored.describe_problems())


def problems_path(out: Path) -> Path:
    """Where the problems of a submission are listed: submission.csv -> submission.problems.csv."""
    return out.with_name(f"{out.stem}.problems.csv")


def manifest_name(out: Path) -> str:
    """The manifest (labels.outputs) beside a submission, naming the files predict wrote: submission.manifest.json."""
    return f"{out.stem}.manifest.json"
