"""`python -m curation.predict`: score the pairs of a verification test set into a submission CSV.

Why: the last step of the product is the file a challenge (or a deployment test) scores: `pair_id,similarity`, one row
per pair, higher = same person. It must come from exactly the alignment and embedding pass the rest of the tool uses
(`embeddings.pipeline.embed_images`: batched, cached by content hash, resumable, with a progress bar), and one bad photo
in 160k must not cost the run: a pair whose image is missing, unreadable or has no face found gets a documented fallback
score and is listed, so the user can look at it instead of discovering a crash at hour three or a silently short file.

Inputs (paths never leave TEST_DIR):
- the challenge's test layout `TEST_DIR/images/<pair_id>/{0.jpg,1.jpg}`: pair_id is the folder name as written (leading
  zeros kept); rows come in pair_id order (numeric order when every id is digits, the order of the challenge's ground
  truth, whose scorer pairs rows by position);
- or `--pairs PAIRS.csv` with columns `pair_id,img1,img2`, image paths relative to TEST_DIR: rows come in the CSV's
  order (the order its ground truth has, presumably).

Outputs: OUT (`pair_id,similarity`) and OUT's `.problems.csv` sibling (`pair_id,image,status`, one row per image that
could not be embedded; header only when there was none), both written atomically, and OUT's `.manifest.json` sibling
(what was scored with what, and the two files: an existing OUT is replaced only when that manifest lists it, so a file
predict did not write is never overwritten; labels.outputs). The pair-scoring step itself,
`score_pairs`, is shared with `python -m curation.evaluate --model ... --pairs ...`.

Example:
    >>> pred = predict_pairs("test_public", "ir:ir_101:adaface_ir101_webface12m.ckpt", cache_dir=Path("cache"))
    >>> pred.scores.head(2)          # pair_id, similarity
    >>> pred.problems                # pair_id, image, status of every image that got its pair the fallback score
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from curation.cli import RESUME_HINT, add_embedding_options, build_embedder, check_embedding_options, embed_options
from curation.scoring.predict import FALLBACK_SCORE, manifest_name, predict_pairs, problems_path
from labels.cli import command_parser, run_command
from labels.outputs import OutputFolder

COMMAND = "curation.predict"

EPILOG = """examples:
  # the challenge's test layout (images/<pair_id>/0.jpg, 1.jpg) with an AdaFace IR-101 checkpoint, on the GPU if any
  python -m curation.predict test_public --model ir:ir_101:adaface_ir101_webface12m.ckpt --out submission.csv

  # an exported ONNX model, photos already aligned to the ArcFace template, the cache shared with a cleaning run
  python -m curation.predict test_public --model onnx:ir101.onnx --aligned --cache work/cache --out sub.csv

  # an explicit list of pairs (pair_id,img1,img2, paths relative to TEST_DIR), SCRFD detection
  python -m curation.predict photos --pairs pairs.csv --detector scrfd:scrfd_2.5g_bnkps.onnx --out sub.csv

output: OUT has pair_id,similarity (cosine, higher = same person). A pair whose image is missing, unreadable, has no
face found (or, with --aligned, is not 112x112) gets --fallback-score (default 0.0: a cosine every usable threshold
rejects, i.e. "not shown to be the same person") and is listed in OUT's .problems.csv (pair_id,image,status) and in
the summary; the run never stops for it. Rows: pair_id order for the test layout, the CSV's order for --pairs.
Exit code 2 means bad input (a message names the file and the reason).
"""


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "python -m curation.predict",
        "Score every pair of a face-verification test set (cosine of the embeddings of its two photos) "
        "into a pair_id,similarity submission CSV.",
        EPILOG,
    )
    p.add_argument("test_dir", type=Path, metavar="TEST_DIR",
                   help="the test set: TEST_DIR/images/<pair_id>/{0.jpg,1.jpg}, or the root of --pairs' paths")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.csv", help="the submission to write")
    p.add_argument("--pairs", type=Path, metavar="PAIRS.csv",
                   help="pair_id,img1,img2 (paths relative to TEST_DIR) instead of the test layout")
    p.add_argument("--fallback-score", type=float, default=FALLBACK_SCORE, metavar="S",
                   help=f"similarity of pairs with an image that cannot be embedded (default: {FALLBACK_SCORE})")
    add_embedding_options(p, "cache/ beside OUT.csv", flip=True)
    return p


def _run(args: argparse.Namespace) -> int:
    check_embedding_options(args)
    listed = problems_path(args.out)
    owned = OutputFolder.claim(args.out.parent, COMMAND, manifest_name=manifest_name(args.out), shared=True)
    owned.check(args.out.name, listed.name)  # refuses, before any work, an OUT this command did not write
    embedder = build_embedder(args.model, args.device, args.flip)
    pred = predict_pairs(
        args.test_dir, embedder, cache_dir=args.cache or args.out.parent / "cache", pairs_csv=args.pairs,
        options=embed_options(args), fallback_score=args.fallback_score,
    )
    owned.write(args.out.name, lambda tmp: pred.scores.to_csv(tmp, index=False))
    owned.write(listed.name, lambda tmp: pred.problems.to_csv(tmp, index=False))
    owned.save(test_dir=str(args.test_dir), pairs=str(args.pairs or ""), model=args.model, n_pairs=len(pred.scores),
               n_fallback=int(pred.problems["pair_id"].nunique()), fallback_score=pred.fallback_score)
    print(pred.summary)
    print(f"scored {len(pred.scores):,} pairs from {args.pairs or args.test_dir}")
    if pred.problem_summary:
        print(f"{pred.problem_summary}: scored {pred.fallback_score:g}, listed in {listed}")
    print(f"wrote {args.out} and {listed}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(_parser(), argv, _run, interrupted=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
