"""Scoring image pairs by cosine, each distinct image embedded once, and reading pair lists that stay inside their root.

Why one module: `curation.predict` (a submission) and `curation.evaluate --pairs` (a model on labelled pairs) must
score pairs identically, through the same cached embedding pass, and must refuse the same unsafe paths.

torch is imported by `score_pairs` only (through the embedding pass), so reading and checking pair files stays cheap.

Example:
    >>> pairs = read_pairs(Path("pairs.csv"), Path("photos"), ("img1", "img2", "label"), id_column=None)
    >>> s = score_pairs(Path("photos"), pairs["img1"], pairs["img2"], make_embedder("dlib"), cache_dir=Path("cache"))
    >>> s.similarity[:2], s.describe_problems()
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from curation.scoring.tables import read_csv_table
from labels.cli import UserError

if TYPE_CHECKING:
    from embeddings.embedders import Embedder
    from embeddings.options import EmbedOptions

PAIR_FILES = ("0.jpg", "1.jpg")
WEAK_STATUS = "weak_alignment: no face found, embedded from where faces sit in the other photos"
_CHUNK = 65536  # pairs per cosine batch: bounds the memory of the gathered embedding rows


@dataclass
class PairScores:
    """What `score_pairs` measured. similarity: float64 [P], NaN where img1 or img2 has no embedding. problems: one row
    per (pair, image) that could not be embedded: `pair` (row index), `image` (name as given), `status` (the embedding
    pass's). summary: the embedding pass in one line. cache_id: the embedding cache folder (embedder @ alignment).
    weak: the same columns for the (pair, image)s embedded from a centre-crop fallback (no face found in a face-crop
    photo, `embeddings.options.EmbedOptions.face_crops`): scored, but from a weak alignment."""

    similarity: np.ndarray
    problems: pd.DataFrame
    summary: str
    cache_id: str
    weak: pd.DataFrame | None = None

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
    options: EmbedOptions | None = None,
) -> PairScores:
    """Cosine similarity of image pairs, each distinct image aligned and embedded once through the cached pass.

    Why one function: `curation.predict` and `curation.evaluate --pairs` must score pairs identically.
    Inputs: `root` and per-pair image names relative to it (trusted: names from a user's file go through
    `read_pairs` first, which keeps them inside root); an embedder (`embeddings.embedders.make_embedder`); the cache
    folder and the pass's `embeddings.options.EmbedOptions`.
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
    result = embed_images([Path(root) / n for n in names], embedder, cache_dir=Path(cache_dir), options=options)
    a = np.fromiter((index[n] for n in img1), np.int64, len(img1))
    b = np.fromiter((index[n] for n in img2), np.int64, len(img2))
    emb = result.embeddings  # unit rows; NaN rows for images without an embedding, so their pairs come out NaN
    similarity = np.empty(len(a), np.float64)
    for start in range(0, len(a), _CHUNK):
        end = start + _CHUNK
        similarity[start:end] = np.einsum("ij,ij->i", emb[a[start:end]], emb[b[start:end]])
    failed = np.array([s != "ok" for s in result.status], bool)
    weak = np.array([m == "center_crop" for m in result.method], bool)

    def listing(images: np.ndarray, status) -> pd.DataFrame:
        rows = [(int(p), names[side[p]], status(side[p])) for side in (a, b) for p in np.flatnonzero(images[side])]
        table = pd.DataFrame(rows, columns=["pair", "image", "status"])
        return table.sort_values("pair", kind="stable").reset_index(drop=True)  # img1 before img2 within a pair

    return PairScores(similarity, listing(failed, lambda i: result.status[i]), result.summary(), result.cache_id,
                      listing(weak, lambda i: WEAK_STATUS))


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
    Raises UserError naming the CSV and the line (the header is line 1) of the first path that is absolute or resolves
    outside root (`..`, or a symbolic link leading out), or any problem `read_csv_table` finds.

    Example:
        >>> read_pairs(Path("pairs.csv"), Path("photos"), ("img1", "img2", "label"), id_column=None).columns.tolist()
        ['img1', 'img2', 'label']
    """
    if not Path(root).is_dir():
        raise UserError(f"{root}: {'not a folder' if Path(root).exists() else 'no such folder'}")
    df = read_csv_table(csv_path, required, id_column=id_column)
    real_root = Path(root).resolve()
    verdicts: dict[str, str | None] = {}
    for column in ("img1", "img2"):
        for i, name in enumerate(df[column]):
            if name not in verdicts:
                verdicts[name] = _outside(real_root, name)
            if verdicts[name]:
                raise UserError(f"{csv_path}: line {i + 2}: {column} {name!r} {verdicts[name]}")
    return df


def challenge_pairs(test_dir: Path) -> pd.DataFrame:
    """`pair_id,img1,img2` (names relative to test_dir) of the challenge layout `test_dir/images/<pair_id>/{0,1}.jpg`.

    Every non-hidden folder under images/ is a pair, whatever it holds (a missing 0.jpg or 1.jpg is the embedding
    pass's to report). Sorted by pair_id: numerically when all ids are digits, else as text.
    """
    images = Path(test_dir) / "images"
    if not images.is_dir():
        raise UserError(f"{test_dir}: no images/ folder (expected the test layout TEST_DIR/images/<pair_id>/"
                         f"{{{','.join(PAIR_FILES)}}}, or give --pairs PAIRS.csv)")
    try:
        ids = [e.name for e in os.scandir(images) if e.is_dir() and not e.name.startswith(".")]
    except OSError as exc:
        raise UserError(f"{images}: cannot list folder ({exc.strerror or exc})") from None
    if not ids:
        raise UserError(f"{images}: no pair folders (expected images/<pair_id>/{{{','.join(PAIR_FILES)}}})")
    ids.sort(key=(lambda i: (int(i), i)) if all(i.isdigit() for i in ids) else None)
    return pd.DataFrame({"pair_id": ids, "img1": [f"images/{i}/{PAIR_FILES[0]}" for i in ids],
                         "img2": [f"images/{i}/{PAIR_FILES[1]}" for i in ids]})
