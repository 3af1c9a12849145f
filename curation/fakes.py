"""`python -m curation.fakes DATA --out OUT`: synthetic deepfakes for a dataset that has none (see
`curation.training.fakes` for how they are made, and how weak they are next to real deepfakes)."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from curation.training.fakes import KINDS, make_fakes
from labels.cli import command_parser, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        "python -m curation.fakes",
        "Make synthetic deepfakes (landmark-aligned face swaps and morphs) of every identity of a dataset"
        " that has none, and write the dataset with them (meta.json marks them fake). They are far weaker than"
        " diffusion/GAN deepfakes: good for exercising the pipeline, not for training a deployed model.",
        """examples:
  python -m curation.fakes ~/data/lfw --out ~/data/lfw_fakes
  python -m curation.fakes ~/data/lfw --out ~/data/lfw_fakes --per-identity 2 --kinds swap
  python -m curation.fakes ~/data/lfw --out ~/data/lfw_fakes --kinds morph --morph-weight 0.7

OUT gets images/<identity>/<file> (real photos hard-linked or copied, fakes as fake_<kind>_<k>.jpg), meta.json
(<identity>/<file> -> 0 real, 1 fake) and fakes.csv (which photos each fake was made from). Re-running the same
command after an interruption skips the identities already finished.""",
    )
    parser.add_argument("data", type=Path, help="dataset folder: one folder per identity, or images/ + meta.json")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder (created)")
    parser.add_argument("--per-identity", type=int, default=4, help="fakes per identity (default 4)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, alternated: swap,morph (default)")
    parser.add_argument("--morph-weight", type=float, default=0.65, help="share of the impersonated face in a morph")
    parser.add_argument("--candidates", type=int, default=5, help="other people's photos tried as target (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def run() -> None:
        summary = make_fakes(
            args.data,
            args.out,
            per_identity=args.per_identity,
            kinds=[k.strip() for k in args.kinds.split(",") if k.strip()],
            weight_a=args.morph_weight,
            candidates=args.candidates,
            seed=args.seed,
        )
        print(summary.describe())
        print(f"wrote {args.out} (meta.json marks the fakes); these fakes are weaker than diffusion/GAN deepfakes")

    return run_cli(run, interrupted="run the same command again: identities already finished are skipped")


if __name__ == "__main__":
    sys.exit(main())
