"""Planted-noise benchmark on real photos: how well do the flags find known label errors?

Takes the LFW identities with 10+ photos (at most 40 each) from ../shared/faces/lfw (or --src), plants noise with
curation.flagging.noise (10% moved photos, two people merged into one folder, one person split over two folders, copies,
deepfake stand-ins), runs the full `python -m curation.clean` (default: the offline dlib embedder) and prints
precision/recall of outlier+minority against the planted errors, suggested-identity accuracy and whether the merge and
split were caught. Several --target-fmr values reuse the cached embeddings, so a sweep costs one embedding pass.

    python benchmarks/planted_noise.py                               # goal: precision >= 0.90, recall >= 0.95, top-1 >= 0.80
    python benchmarks/planted_noise.py --target-fmr 1e-2 3e-3 1e-3 3e-4 1e-4 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation import clean  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(REPO.parent / "shared" / "faces" / "lfw"), help="clean identity folders")
    p.add_argument("--out", default=None, help="folder for the noisy copies and work folders (default: a temp dir)")
    p.add_argument("--model", default="dlib")
    p.add_argument("--target-fmr", type=float, nargs="+", default=[None])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="planted-noise-"))
    rows = []
    for seed in args.seeds:
        for fmr in args.target_fmr:
            work = out / f"work-seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            shared_cache = out / "cache"  # the seeds' noisy copies hold the same photos: embed each photo once
            shared_cache.mkdir(exist_ok=True)
            if not (work / "cache").exists():
                (work / "cache").symlink_to(shared_cache.resolve(), target_is_directory=True)
            argv = [args.src, "--plant-noise", "--demo-identities", "100000", "--workdir", str(work), "--seed", str(seed),
                    "--noisy-dir", str(out / f"noisy-seed{seed}"), "--model", args.model, "--no-progress"]
            if fmr is not None:
                argv += ["--target-fmr", str(fmr)]
            t0 = time.perf_counter()
            if clean.main(argv) != 0:
                sys.exit(f"the clean failed for seed {seed}, target FMR {fmr}")
            report = json.loads((work / "report.json").read_text())
            s = report["planted_noise"]
            rows.append((seed, report["thresholds"]["edge"]["target_fmr"], report["thresholds"]["edge"]["value"],
                         s["precision"], s["recall_moved"], s["suggested_top1_moved"], s["split_caught"],
                         s["merge_caught"], s["merge_flags"], s["split_flags"], time.perf_counter() - t0))
    print("\nseed  target_fmr  threshold  precision  recall_moved  top1  split_caught  merge_caught  merges  splits  seconds")
    for r in rows:
        print(f"{r[0]:>4}  {r[1]:>10g}  {r[2]:>9.4f}  {r[3]:>9.3f}  {r[4]:>12.3f}  {r[5]:>4.3f}  {str(r[6]):>12}  "
              f"{str(r[7]):>12}  {r[8]:>6}  {r[9]:>6}  {r[10]:>7.1f}")
    print(f"(work folders in {out})")


if __name__ == "__main__":
    main()
