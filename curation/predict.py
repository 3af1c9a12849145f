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
could not be embedded; header only when there was none), both written atomically. The pair-scoring step itself,
`score_pairs`, is shared with `python -m curation.evaluate --model ... --pairs ...`.

Example:
    >>> pred = predict_pairs("test_public", "ir:ir_101:adaface_ir101_webface12m.ckpt", cache_dir=Path("cache"))
    >>> pred.scores.head(2)          # pair_id, similarity
    >>> pred.problems                # pair_id, image, status of every image that got its pair the fallback score
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from curation.evaluate import InputError, read_csv_table

if TYPE_CHECKING:
    from embeddings.embedders import Embedder

# torch and the models are imported where they are used: `curation.evaluate` builds its parser from this module, and
# scoring a submission file (`--scores`) should not pay for loading torch.

FALLBACK_SCORE = 0.0
PAIR_FILES = ("0.jpg", "1.jpg")
_CHUNK = 65536  # pairs per cosine batch: bounds the memory of the gathered embedding rows

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


# --------------------------------------------------------------------------------------------------- scoring pairs


@dataclass
class PairScores:
    """What `score_pairs` measured. similarity: float64 [P], NaN where img1 or img2 has no embedding. problems: one row
    per (pair, image) that could not be embedded: `pair` (row index), `image` (name as given), `status` (the embedding
    pass's). summary: the embedding pass in one line. cache_id: the embedding cache folder (embedder @ alignment)."""

    similarity: np.ndarray
    problems: pd.DataFrame
    summary: str
    cache_id: str

    def describe_problems(self, limit: int = 3) -> str:
        """One line for a person, '' when every pair was scored: how many pairs lack an embedding, why, which images.

        Example: '2 of 12 pair(s) have an image without an embedding (2 image(s): 1 unreadable, 1 no_face), e.g.
        images/00000003/1.jpg (unreadable: not an image); ...'
        """
        if self.problems.empty:
            return ""
        images = self.problems.drop_duplicates("image")
        kinds = Counter(s.split(":", 1)[0] for s in images["status"])
        examples = "; ".join(f"{r.image} ({r.status})" for r in images.head(limit).itertuples())
        return (f"{self.problems['pair'].nunique():,} of {len(self.similarity):,} pair(s) have an image without an "
                f"embedding ({len(images):,} image(s): {', '.join(f'{n:,} {k}' for k, n in kinds.most_common())}), "
                f"e.g. {examples}{'; ...' if len(images) > limit else ''}")


def score_pairs(
    root: Path,
    img1: Sequence[str],
    img2: Sequence[str],
    embedder: Embedder,
    *,
    cache_dir: Path,
    detector: str = "dlib",
    aligned: bool = False,
    batch_size: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> PairScores:
    """Cosine similarity of image pairs, each distinct image aligned and embedded once through the cached pass.

    Why one function: `curation.predict` and `curation.evaluate --pairs` must score pairs identically.
    Inputs: `root` and per-pair image names relative to it (trusted: names from a user's file go through
    `read_pairs` first, which keeps them inside root); an embedder (`embeddings.embedders.make_embedder`); the cache
    folder and the options of `embeddings.pipeline.embed_images`.
    Output: PairScores (NaN similarity, and rows in `problems`, for pairs with an image that could not be embedded:
    missing, unreadable, no face found; never an exception for those).

    Example:
        >>> s = score_pairs(Path("lfw"), ["a/1.jpg"], ["a/2.jpg"], make_embedder("dlib"), cache_dir=Path("cache"))
        >>> float(s.similarity[0]), s.describe_problems()
        (0.93, '')
    """
    from embeddings.pipeline import embed_images

    img1, img2 = [str(n) for n in img1], [str(n) for n in img2]
    if len(img1) != len(img2):
        raise ValueError(f"got {len(img1)} first images for {len(img2)} second images")
    names = list(dict.fromkeys(img1 + img2))
    index = {name: i for i, name in enumerate(names)}
    result = embed_images([Path(root) / n for n in names], embedder, cache_dir=Path(cache_dir), detector=detector,
                          aligned=aligned, batch_size=batch_size, workers=workers, progress=progress)
    a = np.fromiter((index[n] for n in img1), np.int64, len(img1))
    b = np.fromiter((index[n] for n in img2), np.int64, len(img2))
    emb = result.embeddings  # unit rows; NaN rows for images without an embedding, so their pairs come out NaN
    similarity = np.empty(len(a), np.float64)
    for start in range(0, len(a), _CHUNK):
        end = start + _CHUNK
        similarity[start:end] = np.einsum("ij,ij->i", emb[a[start:end]], emb[b[start:end]])
    failed = np.array([s != "ok" for s in result.status], bool)
    rows = [(int(p), names[side[p]], result.status[side[p]]) for side in (a, b) for p in np.flatnonzero(failed[side])]
    problems = pd.DataFrame(rows, columns=["pair", "image", "status"])
    problems = problems.sort_values("pair", kind="stable").reset_index(drop=True)  # img1 before img2 within a pair
    return PairScores(similarity, problems, result.summary(), result.cache_id)


# ----------------------------------------------------------------------------------------------------- reading pairs


def _outside(root: Path, name: str) -> str | None:
    """Why the user-written image path `name` may not be read below the resolved `root`, or None when it may."""
    if not name:
        return "is empty"
    if Path(name).is_absolute() or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return f"is an absolute path (paths must be relative to {root})"
    if not (root / name).resolve().is_relative_to(root):
        return f"points outside {root}"
    return None


def read_pairs(csv_path: Path, root: Path, required: tuple[str, ...], *, id_column: str | None = "pair_id"
               ) -> pd.DataFrame:
    """A pairs CSV (all columns as stripped text) whose `img1` and `img2` stay inside `root`.

    `required` columns must include img1 and img2; `id_column` must then be unique and non-empty (None: no id column).
    Raises InputError naming the CSV and the line (the header is line 1) of the first path that is absolute or resolves
    outside root (`..`, or a symbolic link leading out), or any problem `read_csv_table` finds.

    Example:
        >>> read_pairs(Path("pairs.csv"), Path("photos"), ("img1", "img2", "label"), id_column=None).columns.tolist()
        ['img1', 'img2', 'label']
    """
    if not Path(root).is_dir():
        raise InputError(f"{root}: {'not a folder' if Path(root).exists() else 'no such folder'}")
    df = read_csv_table(csv_path, required, id_column=id_column)
    real_root = Path(root).resolve()
    verdicts: dict[str, str | None] = {}
    for column in ("img1", "img2"):
        for i, name in enumerate(df[column]):
            if name not in verdicts:
                verdicts[name] = _outside(real_root, name)
            if verdicts[name]:
                raise InputError(f"{csv_path}: line {i + 2}: {column} {name!r} {verdicts[name]}")
    return df


def challenge_pairs(test_dir: Path) -> pd.DataFrame:
    """`pair_id,img1,img2` (names relative to test_dir) of the challenge layout `test_dir/images/<pair_id>/{0,1}.jpg`.

    Every non-hidden folder under images/ is a pair, whatever it holds (a missing 0.jpg or 1.jpg is the embedding
    pass's to report). Sorted by pair_id: numerically when all ids are digits, else as text.
    """
    images = Path(test_dir) / "images"
    if not images.is_dir():
        raise InputError(f"{test_dir}: no images/ folder (expected the test layout TEST_DIR/images/<pair_id>/"
                         f"{{{','.join(PAIR_FILES)}}}, or give --pairs PAIRS.csv)")
    try:
        ids = [e.name for e in os.scandir(images) if e.is_dir() and not e.name.startswith(".")]
    except OSError as exc:
        raise InputError(f"{images}: cannot list folder ({exc.strerror or exc})") from None
    if not ids:
        raise InputError(f"{images}: no pair folders (expected images/<pair_id>/{{{','.join(PAIR_FILES)}}})")
    ids.sort(key=(lambda i: (int(i), i)) if all(i.isdigit() for i in ids) else None)
    return pd.DataFrame({"pair_id": ids, "img1": [f"images/{i}/{PAIR_FILES[0]}" for i in ids],
                         "img2": [f"images/{i}/{PAIR_FILES[1]}" for i in ids]})


def build_embedder(spec: str, device: str = "auto") -> Embedder:
    """`make_embedder(spec, device)` with its errors (bad spec, missing or unusable model, unknown device) as
    InputError: the user's mistake, one line."""
    from embeddings.embedders import make_embedder

    try:
        return make_embedder(spec, device=device)
    except ValueError as exc:
        raise InputError(str(exc)) from None


# -------------------------------------------------------------------------------------------------------- predicting


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
    aligned: bool = False,
    detector: str = "dlib",
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 2,
    fallback_score: float = FALLBACK_SCORE,
    progress: bool = True,
) -> Prediction:
    """Cosine similarity of every test pair, with a fallback score for pairs that cannot be scored.

    Inputs: `test_dir` in the challenge layout (`images/<pair_id>/{0.jpg,1.jpg}`), or any folder with `pairs_csv`
    (`pair_id,img1,img2`, paths relative to test_dir; refused when they leave it); `model`, an embedder spec
    ("dlib" | "ir:<arch>:<ckpt>" | "onnx:<file>", built on `device`) or an Embedder; `cache_dir` and the options of
    `embeddings.pipeline.embed_images` (aligned: the photos already are 112x112 ArcFace-template crops).
    Output: Prediction. Rows are in pair_id order for the layout and in the CSV's order for pairs_csv; a pair whose
    image is missing, unreadable or has no face found gets `fallback_score` and its images are in `problems`.
    Raises InputError for an unusable input folder, CSV or model spec, DetectorError for a bad detector.

    Example:
        >>> pred = predict_pairs("test_public", "onnx:ir101.onnx", cache_dir=Path("cache"), aligned=True)
        >>> pred.scores.to_csv("submission.csv", index=False)
        >>> len(pred.problems), pred.problem_summary
        (0, '')
    """
    if not math.isfinite(fallback_score):
        raise InputError(f"the fallback score must be a finite number, got {fallback_score}")
    test_dir = Path(test_dir)
    if pairs_csv is not None:
        pairs = read_pairs(Path(pairs_csv), test_dir, ("pair_id", "img1", "img2"))
    else:
        pairs = challenge_pairs(test_dir)
    embedder = build_embedder(model, device) if isinstance(model, str) else model
    scored = score_pairs(test_dir, pairs["img1"], pairs["img2"], embedder, cache_dir=cache_dir, detector=detector,
                         aligned=aligned, batch_size=batch_size, workers=workers, progress=progress)
    similarity = np.where(np.isnan(scored.similarity), fallback_score, scored.similarity)
    ids = pairs["pair_id"].reset_index(drop=True)
    problems = pd.DataFrame({"pair_id": ids.to_numpy()[scored.problems["pair"].to_numpy(np.int64)],
                             "image": scored.problems["image"], "status": scored.problems["status"]})
    return Prediction(pd.DataFrame({"pair_id": ids, "similarity": similarity}), problems, float(fallback_score),
                      f"embedding ({scored.cache_id}): {scored.summary}", scored.describe_problems())


def problems_path(out: Path) -> Path:
    """Where the problems of a submission are listed: submission.csv -> submission.problems.csv."""
    return out.with_name(f"{out.stem}.problems.csv")


# ----------------------------------------------------------------------------------------------------------- the CLI


def add_embedding_options(parser: argparse.ArgumentParser, cache_default: str | None) -> argparse._ArgumentGroup:
    """The model and embedding-pass options, shared by `curation.predict`, `curation.evaluate --pairs` and
    `curation.clean`; `cache_default` says where the command puts the cache when --cache is not given (None: the
    command has no --cache, its cache lives in its work folder). Returns the group, for a command's own options."""
    g = parser.add_argument_group("model and embedding pass")
    g.add_argument("--model", default="dlib", metavar="SPEC",
                   help="embedder: dlib | ir:<arch>:<checkpoint> | onnx:<file.onnx> (default: dlib)")
    g.add_argument("--aligned", action="store_true", help="the photos already are 112x112 ArcFace-template crops")
    g.add_argument("--detector", default="dlib", metavar="SPEC",
                   help="face detector: dlib | scrfd:<file.onnx> (default: dlib; unused with --aligned)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    g.add_argument("--batch-size", type=int, default=64, metavar="N", help="crops per model call (default: 64)")
    g.add_argument("--workers", type=int, default=2, metavar="N",
                   help="DataLoader processes decoding and aligning photos (default: 2; 0 = in the main process)")
    if cache_default is not None:
        g.add_argument("--cache", type=Path, metavar="DIR",
                       help=f"crop and embedding cache, content-addressed: share it between runs and commands (default: "
                       f"{cache_default})")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return g


def check_embedding_options(args) -> None:
    """InputError for option values argparse lets through."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m curation.predict",
        description="Score every pair of a face-verification test set (cosine of the embeddings of its two photos) "
        "into a pair_id,similarity submission CSV.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("test_dir", type=Path, metavar="TEST_DIR",
                   help="the test set: TEST_DIR/images/<pair_id>/{0.jpg,1.jpg}, or the root of --pairs' paths")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.csv", help="the submission to write")
    p.add_argument("--pairs", type=Path, metavar="PAIRS.csv",
                   help="pair_id,img1,img2 (paths relative to TEST_DIR) instead of the test layout")
    p.add_argument("--fallback-score", type=float, default=FALLBACK_SCORE, metavar="S",
                   help=f"similarity of pairs with an image that cannot be embedded (default: {FALLBACK_SCORE})")
    add_embedding_options(p, "cache/ beside OUT.csv")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from curation.train_run import atomic_write
    from embeddings.detectors import DetectorError

    args = _parser().parse_args(argv)
    try:
        check_embedding_options(args)
        pred = predict_pairs(
            args.test_dir, args.model, cache_dir=args.cache or args.out.parent / "cache", pairs_csv=args.pairs,
            aligned=args.aligned, detector=args.detector, device=args.device, batch_size=args.batch_size,
            workers=args.workers, fallback_score=args.fallback_score, progress=not args.no_progress,
        )
        atomic_write(args.out, lambda tmp: pred.scores.to_csv(tmp, index=False))
        listed = problems_path(args.out)
        atomic_write(listed, lambda tmp: pred.problems.to_csv(tmp, index=False))
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume (finished embeddings are cached)", file=sys.stderr)
        return 130
    except (InputError, DetectorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # inputs were checked already: this is the output or the cache folder
        print(f"error: {exc.filename or args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(pred.summary)
    print(f"scored {len(pred.scores):,} pairs from {args.pairs or args.test_dir}")
    if pred.problem_summary:
        print(f"{pred.problem_summary}: scored {pred.fallback_score:g}, listed in {listed}")
    print(f"wrote {args.out} and {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
