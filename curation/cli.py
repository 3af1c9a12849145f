"""What the curation commands share on the command line: the model and embedding-pass options, and building the model.

Why one home: `curation.clean`, `curation.evaluate --pairs` and `curation.predict` run the same embedding pass, so a
user types the same `--model`, `--flip`, `--aligned`, `--detector`, `--device`, `--batch-size`, `--workers`
everywhere and gets the same checks and the same one-line errors. How commands report errors (`UserError`,
`run_cli`) is in `labels.cli`, the bottom of the import graph, because every package raises them.

torch is imported only by `build_embedder`: a command that merely scores a CSV should not pay for loading it.

Example:
    >>> p = argparse.ArgumentParser()
    >>> add_embedding_options(p, "cache/ beside OUT.csv")
    >>> args = p.parse_args(["--model", "onnx:mobilefacenet.onnx", "--aligned"])
    >>> check_embedding_options(args); embedder = build_embedder(args.model, args.device, args.flip)
    >>> embed_images(paths, embedder, cache_dir=Path("cache"), options=embed_options(args))
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from labels.cli import UserError

if TYPE_CHECKING:
    from embeddings.embedders import Embedder
    from embeddings.options import EmbedOptions

RESUME_HINT = "run the same command again to resume (finished crops and embeddings are kept)"


def add_embedding_options(
    parser: argparse.ArgumentParser, cache_default: str | None, *, flip: bool = False
) -> argparse._ArgumentGroup:
    """Add the model and embedding-pass options to `parser`.

    cache_default: where the command puts the cache when --cache is not given, for the help text (None: the command
    has no --cache; its cache lives in its work folder). flip: the command's default for --flip / --no-flip (on where
    a pair's score is the product: evaluation and submissions; off for cleaning, where it would double the pass).
    Returns the group, for a command's own options.
    """
    g = parser.add_argument_group("model and embedding pass")
    g.add_argument("--model", default="dlib", metavar="SPEC",
                   help="embedder: dlib | ir:<arch>:<checkpoint> | onnx:<file.onnx> (default: dlib)")
    g.add_argument("--aligned", action="store_true", help="the photos already are 112x112 ArcFace-template crops")
    g.add_argument("--detector", default="dlib", metavar="SPEC",
                   help="face detector: dlib | scrfd:<file.onnx>, or both as dlib+scrfd:<file.onnx> (the second looks "
                   "where the first finds no face) (default: dlib; unused with --aligned)")
    g.add_argument("--face-crops", choices=("auto", "yes", "no"), default="auto",
                   help="the photos are face crops (one centred face, LFW style): a photo where no face is found is "
                   "then embedded from where faces sit in the others and flagged weak_alignment (default: auto, "
                   "decided from the faces found)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=flip,
                   help="fuse each crop's embedding with its mirror image's: twice the model time; with dlib on LFW "
                   f"View 2 it took the 5-point chip from 98.67%% to 98.98%% (default: {'on' if flip else 'off'})")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    g.add_argument("--batch-size", type=int, default=64, metavar="N", help="crops per model call (default: 64)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes decoding and aligning photos, and embedding them with dlib (default: one per core; "
                   "0 = all in the main process)")
    if cache_default is not None:
        g.add_argument("--cache", type=Path, metavar="DIR",
                       help=f"crop and embedding cache, content-addressed: share it between runs and commands (default: "
                       f"{cache_default})")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return g


def check_embedding_options(args: argparse.Namespace) -> None:
    """UserError for option values argparse lets through."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")


def embed_options(args: argparse.Namespace) -> EmbedOptions:
    """The `EmbedOptions` the parsed command-line options say (after `check_embedding_options`); the engine options
    only where the command has them (clean)."""
    from embeddings.options import EmbedOptions

    return EmbedOptions(detector=args.detector, aligned=args.aligned, face_crops=args.face_crops,
                        batch_size=args.batch_size,
                        workers=args.workers, progress=not args.no_progress,
                        engine=getattr(args, "engine", "local"), ray_address=getattr(args, "ray_address", None))


def build_embedder(spec: str, device: str = "auto", flip: bool = False) -> Embedder:
    """`make_embedder(spec, device, flip)`, with a bad spec, a missing or unusable model file or an unknown device as
    a UserError: the user's mistake, one line."""
    from embeddings.embedders import make_embedder

    try:
        return make_embedder(spec, device=device, flip=flip)
    except ValueError as exc:
        raise UserError(str(exc)) from None
