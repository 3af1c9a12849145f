"""`python -m curation.evaluate`: score a submission against ground truth, or compare the metrics of several runs.

Why: the question after cleaning and fine-tuning is "did the EER move, and for which kind of pair?". This command gives
the same numbers the challenge computed (its EER beside the bob.measure one), writes them where the review app's
Evaluation tab and `--compare` find them, and turns a mis-ordered or broken submission into a clear message instead of
a silently wrong score.

Modes:
- `--scores SUBMISSION.csv --truth TRUTH.csv --out DIR`: `pair_id,similarity` against `pair_id,label[,type]`, joined by
  pair_id. The organisers' scorer paired rows by *position*; when the submission's order differs from the truth's, this
  command says so (the challenge would have scored that file wrongly) and still scores it by pair_id.
- `--pairs PAIRS.csv --model SPEC --root DIR --out DIR`: a model on labelled image pairs (`img1,img2,label[,type]`,
  paths relative to --root, refused when they leave it). Each distinct image is aligned and embedded once through the
  cached embedding pass, pairs are scored by cosine (`curation.scoring.pair_scores.score_pairs`, the scoring
  `curation.predict` uses). Every pair is scored, as the LFW protocol demands: a face-crop photo where no face is found
  is embedded from a centre crop (a weak alignment), a pair with an image that could not be embedded at all
  (missing, unreadable) scores -1, i.e. is rejected. Both kinds are counted, the first few named, all listed in
  DIR/fallback_pairs.csv and counted in metrics.json's source; `--exclude-fallback` leaves them out of the metrics.
- `--compare RUN ...`: one table of several runs' metrics (folders holding metrics.json, or training run folders holding
  performance_history.json, whose best validation is used unless `--pick last`).

Every mode that scores pairs ends in `evaluate_scores(scores, labels, out_dir, ...)`, which writes DIR/metrics.json,
DIR/scores.csv and the ROC, DET and score plots.

Example:
    >>> result = evaluate_scores(scores, labels, Path("eval/run1"), types=types, ids=pd.DataFrame({"pair_id": ids}))
    >>> print(result.report.describe())
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from curation.cli import RESUME_HINT, add_embedding_options, build_embedder, check_embedding_options, embed_options
from curation.scoring import plots
from curation.scoring.compare import compare_table, format_table
from curation.scoring.evaluate import COMMAND, EvaluationOutput, evaluate_scores
from curation.scoring.metrics import Curve
from curation.scoring.pair_scores import read_pairs, score_pairs
from curation.scoring.tables import join_by_pair_id, read_labels, read_submission, read_truth
from labels.cli import UserError, command_parser, run_cli
from labels.outputs import OutputFolder

EPILOG = """examples:
  # score a submission with the challenge's metrics (rows joined by pair_id; a warning when the order differs from
  # TRUTH's, as the organisers' scorer paired rows by position); per-type rates when TRUTH has a type column
  python -m curation.evaluate --scores submission.csv --truth test_public_truth.csv --out eval/submission1

  # the same, reporting accuracy and per-type rates at a threshold chosen on validation data
  python -m curation.evaluate --scores submission.csv --truth truth.csv --out eval/s1 --threshold 0.23

  # a model on labelled pairs (img1,img2,label[,type], paths relative to --root): embeds each image once (cached)
  python -m curation.evaluate --pairs pairs.csv --root photos --model ir:ir_101:adaface.ckpt --out eval/pretrained

  # the same with an exported ONNX model on photos that already are ArcFace-template crops, sharing a cache
  python -m curation.evaluate --pairs val.csv --root crops --model onnx:ir101.onnx --aligned --out eval/onnx \\
      --cache work/cache

  # one table of several runs: evaluation folders (metrics.json) and training runs (performance_history.json)
  python -m curation.evaluate --compare eval/pretrained eval/finetuned runs/noisy runs/cleaned

  # ... also written as compare.csv, compare.md and overlaid ROC/DET plots
  python -m curation.evaluate --compare eval/pretrained eval/finetuned --out eval/comparison

files: SUBMISSION.csv has columns pair_id,similarity (higher = same person); TRUTH.csv has pair_id,label (1 same person,
0 not) and optionally type (e.g. same, different, own_fake). PAIRS.csv has img1,img2,label[,type]; every pair is
scored: a face-crop photo where no face is found is embedded from a centre crop (weak alignment), a pair whose image
cannot be embedded (missing, unreadable, no face) scores -1 (rejected); both are counted in the summary and listed in
DIR/fallback_pairs.csv, and --exclude-fallback leaves them out of the metrics instead. Other columns are ignored. --out DIR must be absent, empty or an earlier evaluation folder
(DIR/manifest.json lists every file written there; nothing else in DIR is ever replaced). Exit code 2 means bad input.
"""



def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "python -m curation.evaluate",
        "Score a submission against ground truth, or a model on labelled image pairs (EER in the "
        "bob.measure and the organisers' conventions, TAR@FAR, per-type error rates, ROC/DET plots), or compare "
        "several runs in one table.",
        EPILOG,
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--scores", type=Path, metavar="SUBMISSION.csv",
                      help="pair_id,similarity to score (needs --truth and --out)")
    mode.add_argument("--pairs", type=Path, metavar="PAIRS.csv",
                      help="img1,img2,label[,type] to score with --model (needs --out; paths relative to --root)")
    mode.add_argument("--compare", type=Path, nargs="+", metavar="RUN",
                      help="evaluation folders (metrics.json) or training run folders (performance_history.json)")
    p.add_argument("--truth", type=Path, metavar="TRUTH.csv", help="pair_id,label[,type] for --scores")
    p.add_argument("--root", type=Path, metavar="DIR",
                   help="the folder --pairs' image paths are relative to (default: the CSV's folder)")
    p.add_argument("--out", type=Path, metavar="DIR", help="where to write (required with --scores and --pairs; with "
                   "--compare: compare.csv/.md and overlaid plots)")
    p.add_argument("--exclude-fallback", action="store_true",
                   help="--pairs: leave out of the metrics the pairs with an image that could not be embedded or was "
                   "embedded from a centre-crop fallback (default: every pair is scored)")
    p.add_argument("--threshold", type=float,
                   help="operating threshold for accuracy and per-type rates (default: the EER threshold)")
    p.add_argument("--pick", choices=("best", "last"), default="best",
                   help="which validation of a training run to compare (default: best, the lowest eer)")
    add_embedding_options(p, "DIR/cache inside --out", flip=True)
    return p


def _check_threshold(args) -> None:
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise UserError(f"--threshold must be a finite number, got {args.threshold}")


def _print_evaluation(out: EvaluationOutput) -> None:
    print(out.report.describe())
    print(f"wrote {', '.join(str(f) for f in out.files)}")
    for note in out.notes:
        print(f"note: {note}")


def _run_scores(args) -> int:
    if args.truth is None or args.out is None:
        raise UserError("--scores needs --truth TRUTH.csv and --out DIR")
    _check_threshold(args)
    sub = read_submission(args.scores)
    truth = read_truth(args.truth)
    joined, warning = join_by_pair_id(sub, truth, args.scores, args.truth)
    if warning:
        print(warning, file=sys.stderr)
    try:
        out = evaluate_scores(
            joined["similarity"].to_numpy(), joined["label"].to_numpy(), args.out,
            types=joined["type"].to_numpy() if "type" in joined else None,
            ids=joined[["pair_id"]], threshold=args.threshold,
            source={"mode": "scores", "submission": str(args.scores), "truth": str(args.truth),
                    "order_matches_truth": warning is None},
        )
    except ValueError as exc:  # e.g. the truth holds only one label
        raise UserError(f"{args.truth}: {exc}") from None
    print(f"scored {args.scores} against {args.truth}")
    _print_evaluation(out)
    return 0


FALLBACK_NAME = "fallback_pairs.csv"
UNSCORED = -1.0  # the score of a pair with an image that has no embedding: the lowest cosine, always rejected
FALLBACK_POLICY = (f"every pair is scored: a pair with an image embedded from a centre-crop fallback (weak alignment) "
                   f"by its embedding, a pair with an image that could not be embedded at {UNSCORED:g} (rejected); "
                   f"both are listed in {FALLBACK_NAME}")
EXCLUDED_POLICY = (f"--exclude-fallback: pairs with an image embedded from a centre-crop fallback or not embedded at all "
                   f"are excluded from the metrics and listed in {FALLBACK_NAME}")


def _run_pairs(args) -> int:
    if args.out is None:
        raise UserError("--pairs needs --out DIR")
    _check_threshold(args)
    check_embedding_options(args)
    root = args.root if args.root is not None else args.pairs.parent
    pairs = read_pairs(args.pairs, root, ("img1", "img2", "label"), id_column=None)
    labelled = read_labels(pairs, args.pairs)
    embedder = build_embedder(args.model, args.device, args.flip)
    owned = OutputFolder.claim(args.out, COMMAND)  # before the embedding pass: a refused --out costs nothing
    cache = args.cache or args.out / "cache"
    if cache.absolute().is_relative_to(owned.root):
        owned.manage(cache.absolute().relative_to(owned.root).as_posix())
    scored = score_pairs(root, pairs["img1"], pairs["img2"], embedder, cache_dir=cache, options=embed_options(args))
    print(f"embedding ({scored.cache_id}): {scored.summary}")
    unscored = np.isnan(scored.similarity)
    listed = pd.concat([scored.problems, scored.weak]).sort_values("pair", kind="stable").reset_index(drop=True)
    rows = listed["pair"].to_numpy(np.int64)  # one row per image without an embedding or with a weak alignment
    fallback = pd.concat([pairs[["img1", "img2"]].iloc[rows].reset_index(drop=True),
                          labelled.iloc[rows].reset_index(drop=True), listed[["image", "status"]]], axis=1)
    owned.write(FALLBACK_NAME, lambda tmp: fallback.to_csv(tmp, index=False))
    n_weak, n_fallback = scored.weak["pair"].nunique(), listed["pair"].nunique()
    ok = np.ones(len(pairs), bool)
    if args.exclude_fallback:
        ok[rows] = False
    if n_fallback:
        what = "excluded from the metrics" if args.exclude_fallback else (
            f"scored (not embedded: {UNSCORED:g}, rejected)")
        print(f"{n_fallback:,} of {len(pairs):,} pair(s) used a fallback: {n_weak:,} a weak alignment (no face found, "
              f"centre crop), {int(unscored.sum()):,} an image without an embedding"
              + (f" ({scored.describe_problems()})" if unscored.any() else "") + f"; {what}; listed in "
              f"{args.out / FALLBACK_NAME}")
    source = {"mode": "pairs", "pairs": str(args.pairs), "root": str(root), "model": args.model,
              "embedding": scored.cache_id, "n_pairs": len(pairs), "n_fallback": int(n_fallback),
              "n_weak_alignment": int(n_weak), "n_unscored": int(unscored.sum()), "n_excluded": int((~ok).sum()),
              "fallback_policy": EXCLUDED_POLICY if args.exclude_fallback else FALLBACK_POLICY}
    similarity = np.where(unscored, UNSCORED, scored.similarity)
    try:
        out = evaluate_scores(
            similarity[ok], labelled["label"].to_numpy()[ok], args.out,
            types=labelled["type"].to_numpy()[ok] if "type" in labelled else None,
            ids=pairs.loc[ok, ["img1", "img2"]], threshold=args.threshold, source=source,
        )
    except ValueError as exc:  # e.g. only one label among the pairs left
        raise UserError(f"{args.pairs}: {exc}" + (f" ({int((~ok).sum())} pair(s) excluded)" if not ok.all() else "")
                         ) from None
    print(f"scored {int(ok.sum()):,} pairs of {args.pairs} with {args.model}")
    _print_evaluation(out)
    return 0


def _run_compare(args) -> int:
    table, runs = compare_table(args.compare, args.pick)
    print(format_table(table))
    if args.out is not None:
        owned = OutputFolder.claim(args.out, COMMAND)
        written = [owned.write("compare.csv", lambda tmp: table.to_csv(tmp)),
                   owned.write("compare.md", format_table(table, markdown=True))]
        curves = {name: Curve.from_dict(m["curve"]) for name, m in runs.items() if isinstance(m.get("curve"), dict)}
        notes = []
        if curves:
            marks = {name: (runs[name]["eer_far"], runs[name]["eer_frr"]) for name in curves
                     if "eer_far" in runs[name] and "eer_frr" in runs[name]}
            figures = (("roc", plots.roc_figure(curves, marks=marks)), ("det", plots.det_figure(curves, marks=marks)))
            for stem, fig in figures:
                files, note = plots.save_figure(fig, args.out / stem, owned)
                written += files
                if note and note not in notes:
                    notes.append(note)
        if len(curves) < len(runs):
            notes.append("runs without a stored curve (training histories) are in the table but not in the plots")
        print(f"wrote {', '.join(str(f) for f in written)}")
        for note in notes:
            print(f"note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.scores is not None:
        return run_cli(lambda: _run_scores(args))
    if args.pairs is not None:
        return run_cli(lambda: _run_pairs(args), interrupted=RESUME_HINT)
    return run_cli(lambda: _run_compare(args))


if __name__ == "__main__":
    sys.exit(main())
