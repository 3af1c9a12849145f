"""How close does a reviewer's small sample get to the true precision of the open flags? (issue 15's target: 60 answers,
within 5 points, on the planted-noise demo)

For each planted-noise work folder (made by `python -m curation.clean --from DIR --workdir W --seed S`: W-data/truth.json
holds the truth), a simulated reviewer answers BUDGET flags exactly as the truth says (curation.review.simulate) and
the estimate it gets for the flags left open is set beside their true precision. Orders compared:
- information: the queue's information order, answering the sample flag of each identity it opens (the default);
- information+identity: the same, but answering every open flag of each identity it opens;
- worth: worth order, every open flag of each identity (how a reviewer fixing errors works: the estimate is a by-product);
- random: flags drawn at random one by one (the textbook simple random sample).
Each (folder, order) is simulated with DRAWS seeds of the within-band draws.

    python benchmarks/review_sample.py /work/demo0 /work/demo1                      # existing planted work folders
    python benchmarks/review_sample.py --from ../shared/faces/lfw --seeds 0 1 2 --scratch /tmp/rs   # make them first
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import review as rv  # noqa: E402
from curation.flagging import noise  # noqa: E402
from labels.store import LabelStore  # noqa: E402

ORDERS = {"information": ("information", False), "information+identity": ("information", True),
          "worth": ("worth", False), "random": ("random", False)}


def make_demos(source: Path, seeds: list[int], scratch: Path) -> list[Path]:
    """Run the demo once per seed (the first run's embedding cache is copied to the others: same photos)."""
    works = []
    for seed in seeds:
        work = scratch / f"demo{seed}"
        if not (work / "report.json").is_file():
            if works and not (work / "cache").exists():
                shutil.copytree(works[0] / "cache", work / "cache")
            subprocess.run([sys.executable, "-m", "curation.clean", "--from", str(source), "--workdir", str(work),
                            "--seed", str(seed), "--no-progress"], check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
        works.append(work)
    return works


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="*", type=Path, help="planted-noise work folders (W-data/truth.json beside)")
    parser.add_argument("--from", dest="source", type=Path, help="make demo work folders from this folder first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="planting seeds for --from (0)")
    parser.add_argument("--scratch", type=Path, default=Path("review_sample_work"), help="where --from puts them")
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--draws", type=int, default=20, help="within-band draws per folder and order (20)")
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=list(ORDERS))
    args = parser.parse_args(argv)
    works = list(args.workdirs) + (make_demos(args.source, args.seeds, args.scratch) if args.source else [])
    if not works:
        parser.error("give planted work folders, or --from DIR")
    errors: dict[str, list[float]] = {o: [] for o in args.orders}
    covered: dict[str, list[bool]] = {o: [] for o in args.orders}
    widths: dict[str, list[float]] = {o: [] for o in args.orders}
    print(f"budget {args.budget} answers, {args.draws} draws per folder and order; error = estimate - truth (points)")
    for work in works:
        truth = json.loads((Path(str(work) + "-data") / noise.TRUTH_NAME).read_text())
        with LabelStore.open(work) as store:
            flags = store.flags()
        right = noise.flag_truth(flags, truth)
        summary = rv.summarize_report(rv.read_report(rv.WorkFolder.open(work)))
        print(f"\n{work}: {len(flags)} flags, {right.mean():.1%} right")
        for name in args.orders:
            order, whole = ORDERS[name]
            sims = [rv.simulate_review(flags, right, summary, budget=args.budget, order=order, seed=seed,
                                       whole_identities=whole) for seed in range(args.draws)]
            err = np.array([100 * s.error for s in sims])
            errors[name] += err.tolist()
            covered[name] += [s.covered for s in sims]
            widths[name] += [100 * (s.estimate.high - s.estimate.low) for s in sims]
            first = sims[0]
            print(f"  {name:<21} draw 0: estimate {100 * first.estimate.precision:5.1f}% "
                  f"[{100 * first.estimate.low:.1f}, {100 * first.estimate.high:.1f}] vs truth {100 * first.truth:5.1f}%"
                  f" | over draws: mean error {err.mean():+.2f}, mean |error| {np.abs(err).mean():.2f}, "
                  f"max |error| {np.abs(err).max():.1f}, within 5 points {np.mean(np.abs(err) <= 5):.0%}")
    print(f"\nall {len(works)} folder(s):")
    for name in args.orders:
        err = np.array(errors[name])
        print(f"  {name:<21} mean error {err.mean():+.2f}  rmse {np.sqrt(np.mean(err ** 2)):.2f}  "
              f"max |error| {np.abs(err).max():.1f}  within 5 points {np.mean(np.abs(err) <= 5):.1%}  "
              f"95% interval covers the truth {np.mean(covered[name]):.1%} (mean width {np.mean(widths[name]):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
